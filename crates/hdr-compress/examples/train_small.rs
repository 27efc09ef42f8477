//! Trains a zoo model briefly and saves it (for quantization and pruning measurements).
//!
//! `cargo run --release -p hdr-compress --example train_small -- NAME MNIST_DIR N_TRAIN EPOCHS LR OUT`

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use hdr_data::Mnist;
use hdr_train::{fit, LrSchedule, TrainConfig};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (name, dir, n, epochs, lr, out) = (
        &a[1],
        &a[2],
        a[3].parse()?,
        a[4].parse()?,
        a[5].parse()?,
        &a[6],
    );
    let mnist = Mnist::from_dir(dir)?;
    let vars = VarMap::new();
    let model = hdr_models::create(
        name,
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )?;
    hdr_models::init::init(&vars, 0)?;
    let cfg = TrainConfig {
        epochs,
        lr: LrSchedule {
            base_lr: lr,
            ..LrSchedule::default()
        },
        progress: false,
        ..TrainConfig::default()
    };
    let t = Instant::now();
    let val = mnist.train.subset(&(55_000..56_000).collect::<Vec<_>>())?;
    let h = fit(
        model.as_ref(),
        &vars,
        name,
        &mnist.train.head(n),
        &val,
        &cfg,
        None,
    )?;
    println!(
        "{name}: {:.1?}, best val acc {:?}",
        t.elapsed(),
        h.best().map(|e| e.val_accuracy)
    );
    hdr_models::save(Path::new(out), name, &model.config(), &vars)?;
    Ok(())
}
