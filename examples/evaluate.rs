//! Evaluates a saved or pretrained model on the MNIST test split (or any IDX image/label pair): the
//! classification report, confusion matrix, latency and memory.
//!
//! `cargo run --release --example evaluate -- <model.safetensors | pretrained-name> [--json] [--images F --labels F]`

use std::path::PathBuf;

use candle_core::Device;
use clap::Parser;
use hdr::data::{idx, Mnist, MnistOptions, Normalize};

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
    /// Batch size of the latency measurement.
    #[arg(long, default_value_t = 1)]
    latency_batch: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let loaded = hdr::models::load_or_pretrained(&a.model, &device)?;
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
    let (report, _) = hdr::train::evaluate(
        loaded.model.as_ref(),
        &data,
        &loaded.name,
        &split,
        Normalize::UnitRange,
        &device,
    )?;
    let eff = hdr::train::measure_efficiency(
        loaded.model.as_ref(),
        a.latency_batch,
        50,
        Some(std::path::Path::new(&a.model)).filter(|p| p.is_file()),
        &device,
    )?;
    let report = report.with_efficiency(eff);
    if a.json {
        println!("{}", report.to_json()?);
    } else {
        println!("{}", report.render_text());
    }
    Ok(())
}
