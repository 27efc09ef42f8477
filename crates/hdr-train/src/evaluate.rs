//! Evaluation: logits over a dataset, the `hdr-metrics` report, latency and memory.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use hdr_data::{BatchConfig, Dataset, Normalize};
use hdr_metrics::{
    ClassificationReport, Efficiency, Evaluator, EvaluatorConfig, LatencyStats, MeasureConfig,
    MetricsConfig, ModelSize,
};
use hdr_models::Classifier;

use crate::error::{Result, TrainError};
use crate::loss::cross_entropy;

/// Evaluation-mode logits `[n, classes]` of every sample, in dataset order.
pub fn predict_logits(
    model: &dyn Classifier,
    data: &Dataset,
    batch_size: usize,
    normalize: Normalize,
    device: &Device,
) -> Result<Tensor> {
    let cfg = BatchConfig {
        normalize,
        ..BatchConfig::eval(batch_size)
    };
    let mut parts = Vec::new();
    for batch in data.batches(&cfg, 0, device)? {
        parts.push(model.forward(&batch?.images)?.detach());
    }
    if parts.is_empty() {
        return Err(TrainError::InvalidConfig {
            name: "data",
            value: "0 samples".into(),
            reason: "nothing to evaluate",
        });
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Mean cross-entropy and accuracy of the model on `data` (evaluation mode).
pub fn loss_and_accuracy(
    model: &dyn Classifier,
    data: &Dataset,
    batch_size: usize,
    normalize: Normalize,
    device: &Device,
) -> Result<(f64, f64)> {
    let cfg = BatchConfig {
        normalize,
        ..BatchConfig::eval(batch_size)
    };
    let (mut loss, mut correct, mut n) = (0f64, 0usize, 0usize);
    for batch in data.batches(&cfg, 0, device)? {
        let batch = batch?;
        let logits = model.forward(&batch.images)?;
        let b = batch.indices.len();
        loss += cross_entropy(&logits, &batch.labels, 0.0)?.to_scalar::<f32>()? as f64 * b as f64;
        let pred = logits.argmax(1)?;
        correct += pred
            .eq(&batch.labels)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        n += b;
    }
    if n == 0 {
        return Err(TrainError::InvalidConfig {
            name: "data",
            value: "0 samples".into(),
            reason: "nothing to evaluate",
        });
    }
    Ok((loss / n as f64, correct as f64 / n as f64))
}

/// The classification report of `model` on `data`: accuracy, top-2, per-class
/// precision/recall/F1, confusion matrix and misclassified samples.
pub fn evaluate(
    model: &dyn Classifier,
    data: &Dataset,
    model_name: &str,
    split: &str,
    normalize: Normalize,
    device: &Device,
) -> Result<(ClassificationReport, Evaluator)> {
    let logits = predict_logits(model, data, 256, normalize, device)?;
    let scores = logits.flatten_all()?.to_vec1::<f32>()?;
    let mut eval = Evaluator::new(&EvaluatorConfig {
        num_classes: logits.dim(1)?,
        top_k: vec![2],
        ..EvaluatorConfig::default()
    })?;
    eval.add_batch(data.labels(), &scores)?;
    let report = eval.report(model_name, split, &MetricsConfig::default())?;
    Ok((report, eval))
}

/// Latency of `model` at `batch_size` (random inputs), peak memory, and size: the report's
/// efficiency section. `file` is the model's weight file, if it has one.
pub fn measure_efficiency(
    model: &dyn Classifier,
    batch_size: usize,
    iterations: usize,
    file: Option<&Path>,
    device: &Device,
) -> Result<Efficiency> {
    let x = Tensor::rand(0f32, 1f32, (batch_size, 1, 28, 28), device)?;
    let latency = LatencyStats::measure(
        &MeasureConfig {
            warmup: 3,
            iterations,
            batch_size,
        },
        || -> Result<Tensor> { Ok(model.forward(&x)?) },
    )?;
    let params = model.summary().params() as u64;
    let model_size = match file {
        Some(f) => ModelSize::with_file(params, f)?,
        None => ModelSize::new(params),
    };
    Ok(Efficiency {
        device: Some(format!("{device:?}").to_lowercase()),
        latency: Some(latency),
        model_size: Some(model_size),
        peak_rss_bytes: hdr_metrics::peak_rss_bytes().ok(),
    })
}
