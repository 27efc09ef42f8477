//! Iterative magnitude pruning of a saved model with masked fine-tuning; test accuracy before
//! and after, and the per-layer report.
//!
//! `cargo run --release -p hdr-compress --example measure_prune -- MODEL MNIST_DIR SPARSITY STEPS N_TRAIN`

use std::path::Path;

use candle_core::Device;
use hdr_compress::{prune_iteratively, sparsity_report, FineTuneConfig, PruneConfig, Scope};
use hdr_data::{Mnist, Normalize};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let m = hdr_models::load(Path::new(&a[1]), &Device::Cpu)?;
    let mnist = Mnist::from_dir(&a[2])?;
    let (target, steps, n): (f32, usize, usize) = (a[3].parse()?, a[4].parse()?, a[5].parse()?);
    let acc = |m: &hdr_models::LoadedModel| -> anyhow::Result<f64> {
        Ok(hdr_train::loss_and_accuracy(
            m.model.as_ref(),
            &mnist.test,
            500,
            Normalize::UnitRange,
            &Device::Cpu,
        )?
        .1)
    };
    println!("before: test accuracy {:.2}%", 100.0 * acc(&m)?);
    let scope = if a.get(6).map(String::as_str) == Some("global") {
        Scope::Global
    } else {
        Scope::LayerWise
    };
    let cfg = a
        .get(7)
        .map(|v| v.parse())
        .transpose()?
        .map_or_else(FineTuneConfig::default, FineTuneConfig::with_lr);
    let masks = prune_iteratively(
        m.model.as_ref(),
        &m.vars,
        &PruneConfig {
            target,
            scope,
            steps,
            ..PruneConfig::default()
        },
        &mnist.train.head(n),
        &cfg,
    )?;
    println!(
        "after {scope:?} pruning to {:.1}%: test accuracy {:.2}%",
        100.0 * masks.sparsity()?,
        100.0 * acc(&m)?
    );
    for l in sparsity_report(&m.vars)? {
        println!(
            "  {:<24} {:>7} params  {:5.1}% zero  dense {:>7} B  sparse {:>7} B",
            l.name,
            l.params,
            100.0 * l.sparsity(),
            l.dense_bytes,
            l.sparse_bytes
        );
    }
    Ok(())
}
