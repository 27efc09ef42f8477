//! The main job: finds (or downloads) MNIST, trains the paper's improved MobileNet with
//! augmentation and its auxiliary classifier for a few minutes on the CPU, prints the
//! classification report on the test set and saves the model.
//!
//! `cargo run --release --example quickstart [-- --epochs N --out FILE]`

use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use hdr::data::{Mnist, MnistOptions, Normalize, SplitConfig};

#[derive(Parser)]
#[command(about = "Train MobileNet-HDR on MNIST for a few minutes and report on the test set")]
struct Args {
    /// Training epochs over the 55,000 training images (about 2 minutes each on two AMD EPYC
    /// cores, 2026-12-07).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Images per training step (default: 64, `hdr_train::quick_recipe`).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Where to save the trained model.
    #[arg(long, default_value = "runs/quickstart/mobilenet_hdr.safetensors")]
    out: PathBuf,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist, download).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let mnist = Mnist::load_with(&MnistOptions {
        dir: args.data,
        ..MnistOptions::default()
    })?;
    println!("MNIST from {} (verified)", mnist.dir.display());
    let (train, val) = mnist.train.split(&SplitConfig::default())?;

    let name = "mobilenet_hdr";
    let vars = VarMap::new();
    let model = hdr::models::create(name, VarBuilder::from_varmap(&vars, DType::F32, &device))?;
    hdr::models::init::init(&vars, 0)?;
    let s = model.summary();
    println!(
        "{name}: {} parameters, {} MACs per image",
        s.params(),
        s.macs()
    );

    let mut cfg = hdr::train::quick_recipe(name, args.epochs);
    cfg.batch_size = args.batch_size.unwrap_or(cfg.batch_size);
    let started = std::time::Instant::now();
    let history = hdr::train::fit(model.as_ref(), &vars, name, &train, &val, &cfg, None)?;
    println!(
        "trained {} epochs in {:.0} s",
        history.epochs.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(best) = history.best() {
        // The kept weights are the moving average's when the recipe keeps one.
        let acc = best.ema_val_accuracy.unwrap_or(best.val_accuracy);
        println!(
            "kept epoch {}: validation accuracy {:.2}% ({} held-out images)",
            best.epoch,
            100.0 * acc,
            val.len()
        );
    }

    hdr::models::save(&args.out, name, &model.config(), &vars)?;
    let (report, _) = hdr::train::evaluate(
        model.as_ref(),
        &mnist.test,
        name,
        "test",
        Normalize::UnitRange,
        &device,
    )?;
    let eff = hdr::train::measure_efficiency(model.as_ref(), 1, 50, Some(&args.out), &device)?;
    println!("\n{}", report.with_efficiency(eff).render_text());
    println!("saved {}", args.out.display());
    Ok(())
}
