//! Evaluates saved or pretrained models on the MNIST test split (or any IDX image/label pair):
//! the classification report (with the accuracy's 95% interval), confusion matrix, latency and
//! memory.
//!
//! `cargo run --release --example evaluate -- <model.safetensors | pretrained-name>... [--json] [--images F --labels F] [--chart F.png]`
//!
//! With two or more models, McNemar's exact test then says whether each model after the first
//! really differs from the first on these samples (with Holm's correction when there are
//! several), and `--chart` draws every model's accuracy with its 95% interval.

use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::Parser;
use hdr::data::{idx, Dataset, Mnist, MnistOptions, Normalize};
use hdr::metrics::{format_p_value, holm, ClassificationReport, Evaluator, McNemar};

#[derive(Parser)]
#[command(about = "Evaluate saved models on MNIST's test split or an IDX pair")]
struct Args {
    /// Model files written by `hdr_models::save` (the examples' --out), or names of pretrained
    /// models (`lenet5`, `mobilenet_hdr`, ...). Each after the first is tested against the first.
    #[arg(required = true)]
    models: Vec<String>,
    /// Print one JSON object instead of the text reports: the report for one model;
    /// `{"reports": [...], "mcnemar": [{"a", "b", "test"}, ...]}` for several.
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
    /// Write a PNG of every model's accuracy with its 95% interval.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// A dashed line on the chart at this accuracy in percent (e.g. the paper's 98.8).
    #[arg(long, requires = "chart")]
    reference: Option<f64>,
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
    let mut runs = Vec::new();
    for model in &a.models {
        runs.push(evaluate(&a, model, &data, &split, &device)?);
    }
    let labels = hdr::models::short_labels(&a.models);
    let (first, first_eval) = &runs[0];
    let mut tests = Vec::new();
    for (m, (_, eval)) in labels.iter().zip(&runs).skip(1) {
        tests.push((m, McNemar::from_evaluators(first_eval, eval)?));
    }
    let p_values: Vec<f64> = tests.iter().map(|(_, t)| t.p_value).collect();
    let adjusted = holm(&p_values)?;
    if let Some(path) = &a.chart {
        let rows: Vec<_> = labels
            .iter()
            .cloned()
            .zip(runs.iter().map(|r| &r.0))
            .collect();
        hdr::viz::accuracy_chart(&rows, 0.95, a.reference)?.save_png(path)?;
    }
    if a.json {
        if runs.len() == 1 {
            println!("{}", first.to_json()?);
        } else {
            let reports: Vec<&ClassificationReport> = runs.iter().map(|(r, _)| r).collect();
            let mcnemar: Vec<_> = tests
                .iter()
                .zip(&adjusted)
                .map(|((m, t), p)| serde_json::json!({"a": labels[0], "b": m, "test": t, "p_holm": p}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"reports": reports, "mcnemar": mcnemar})
            );
        }
    } else {
        for (report, _) in &runs {
            println!("{}", report.render_text());
        }
        for (m, t) in &tests {
            println!("{}", t.render_text(&labels[0], m));
        }
        if tests.len() > 1 {
            let list: Vec<String> = tests
                .iter()
                .zip(&adjusted)
                .map(|((m, _), p)| format!("{m}: {}", format_p_value(*p)))
                .collect();
            println!(
                "Holm-adjusted p over these {} tests: {}",
                tests.len(),
                list.join(", ")
            );
        }
        if let Some(path) = &a.chart {
            println!("chart: {}", path.display());
        }
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
        Some(Path::new(model)).filter(|p| p.is_file()),
        device,
    )?;
    Ok((report.with_efficiency(eff), eval))
}
