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
    /// Training epochs over the 55,000 training images (about 100 s each on two cores).
    #[arg(long, default_value_t = 3)]
    epochs: usize,
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

    let cfg = hdr::train::recipe(name, Some(args.epochs));
    let started = std::time::Instant::now();
    let history = hdr::train::fit(model.as_ref(), &vars, name, &train, &val, &cfg, None)?;
    println!(
        "trained {} epochs in {:.0} s",
        history.epochs.len(),
        started.elapsed().as_secs_f64()
    );

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
