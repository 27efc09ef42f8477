//! Evaluates a saved or pretrained model on the MNIST test split (or any IDX image/label pair): the
//! classification report, confusion matrix, latency and memory.
//!
//! `cargo run --release --example evaluate -- <model.safetensors | pretrained-name> [--json] [--images F --labels F] [--against <model>]`
//!
//! With `--against`, a second model is evaluated on the same samples and McNemar's exact test
//! says whether the two really differ.

use std::path::PathBuf;

use candle_core::Device;
use clap::Parser;
use hdr::data::{idx, Dataset, Mnist, MnistOptions, Normalize};
use hdr::metrics::{ClassificationReport, Evaluator, McNemar};

#[derive(Parser)]
#[command(about = "Evaluate a saved model on MNIST's test split or an IDX pair")]
struct Args {
    /// A model file written by `hdr_models::save` (the examples' --out), or the name of a
    /// pretrained model (`lenet5`, `mobilenet_hdr`, ...).
    model: String,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// IDX image file to evaluate on instead of MNIST's test split (raw or .gz).
    #[arg(long, requires = "labels")]
    images: Option<PathBuf>,
    /// IDX label file that goes with --images.
    #[arg(long, requires = "images")]
    labels: Option<PathBuf>,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist, download).
    #[arg(long)]
    data: Option<PathBuf>,
    /// A second model (file or pretrained name) to compare with on the same samples: its report,
    /// then McNemar's exact test of the two.
    #[arg(long)]
    against: Option<String>,
    /// Batch size of the latency measurement.
    #[arg(long, default_value_t = 1)]
    latency_batch: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let (data, split) = match (&a.images, &a.labels) {
        (Some(i), Some(l)) => (idx::read_dataset(i, l)?, i.display().to_string()),
        _ => {
            let mnist = Mnist::load_with(&MnistOptions {
                dir: a.data.clone(),
                ..MnistOptions::default()
            })?;
            (mnist.test, "test".to_string())
        }
    };
    let (report, eval) = evaluate(&a, &a.model, &data, &split, &device)?;
    let Some(other) = &a.against else {
        if a.json {
            println!("{}", report.to_json()?);
        } else {
            println!("{}", report.render_text());
        }
        return Ok(());
    };
    let (other_report, other_eval) = evaluate(&a, other, &data, &split, &device)?;
    let test = McNemar::from_misclassified(
        report.num_samples,
        &eval.misclassified_indices(),
        &other_eval.misclassified_indices(),
    )?;
    if a.json {
        let out = serde_json::json!({
            "a": serde_json::from_str::<serde_json::Value>(&report.to_json()?)?,
            "b": serde_json::from_str::<serde_json::Value>(&other_report.to_json()?)?,
            "mcnemar": test,
        });
        println!("{out}");
    } else {
        println!("{}", report.render_text());
        println!("{}", other_report.render_text());
        // The arguments, not the architectures: two runs of one model are the usual question.
        println!("{}", test.render_text(&a.model, other));
    }
    Ok(())
}

/// The report (with latency and memory) of the model file or pretrained name `model` on `data`.
fn evaluate(
    a: &Args,
    model: &str,
    data: &Dataset,
    split: &str,
    device: &Device,
) -> anyhow::Result<(ClassificationReport, Evaluator)> {
    let loaded = hdr::models::load_or_pretrained(model, device)?;
    let (report, eval) = hdr::train::evaluate(
        loaded.model.as_ref(),
        data,
        &loaded.name,
        split,
        Normalize::UnitRange,
        device,
    )?;
    let eff = hdr::train::measure_efficiency(
        loaded.model.as_ref(),
        a.latency_batch,
        50,
        Some(std::path::Path::new(model)).filter(|p| p.is_file()),
        device,
    )?;
    Ok((report.with_efficiency(eff), eval))
}
