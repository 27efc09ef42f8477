//! Trains any registered model on MNIST with every option on the command line, evaluates it on
//! the test split and saves it.
//!
//! `cargo run --release --example train -- lenet5 --epochs 10 --augment affine --out lenet5.safetensors`

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use clap::{Parser, ValueEnum};
use hdr::data::augment::{Compose, ElasticDistortion, RandomAffine};
use hdr::data::{Augment, Mnist, MnistOptions, Normalize, SplitConfig};
use hdr::train::{
    DistillConfig, EarlyStopping, LrSchedule, OptimizerConfig, OptimizerKind, Schedule, Teacher,
    TrainConfig,
};

#[derive(Clone, Copy, ValueEnum)]
enum Opt {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sched {
    Constant,
    Step,
    Cosine,
    OneCycle,
}

#[derive(Clone, Copy, ValueEnum)]
enum Aug {
    None,
    Affine,
    Elastic,
    Both,
}

#[derive(Parser)]
#[command(about = "Train a registered model on MNIST, evaluate it on the test split, save it")]
struct Args {
    /// Registered model name (see `cargo run --example zoo`).
    model: String,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: Opt,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: Sched,
    /// Warm-up, in epochs (may be fractional).
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Weight of the auxiliary classifier's loss (models that have one).
    #[arg(long, default_value_t = 0.3)]
    aux_weight: f32,
    #[arg(long, value_enum, default_value = "affine")]
    augment: Aug,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999) and
    /// validate, select and save it instead of the raw weights.
    #[arg(long)]
    ema: Option<f64>,
    /// What the moving average does with batch-norm statistics: `copied` from the current
    /// weights, or `averaged` like the weights (as timm's ModelEmaV2).
    #[arg(long, default_value = "copied", requires = "ema")]
    ema_statistics: hdr::train::EmaStatistics,
    /// Early-stopping patience in epochs (off when absent).
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation samples held out of the 60k training set.
    #[arg(long, default_value_t = 5000)]
    validation: usize,
    /// Train on only the first N training samples (after the split), for quick runs.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Teacher model file for knowledge distillation.
    #[arg(long)]
    teacher: Option<PathBuf>,
    #[arg(long, default_value_t = 4.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Folder for checkpoints and history; an interrupted run resumes from it.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Where to save the trained model.
    #[arg(long)]
    out: Option<PathBuf>,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist, download).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let mnist = Mnist::load_with(&MnistOptions {
        dir: a.data.clone(),
        ..MnistOptions::default()
    })?;
    let (mut train, val) = mnist.train.split(&SplitConfig {
        validation: a.validation,
        seed: a.seed,
        stratified: true,
    })?;
    if let Some(n) = a.train_subset {
        train = train.head(n);
    }

    let vars = VarMap::new();
    let model = hdr::models::create(
        &a.model,
        VarBuilder::from_varmap(&vars, DType::F32, &device),
    )?;
    hdr::models::init::init(&vars, a.seed)?;
    println!(
        "{}: {} parameters, {} MACs per image",
        a.model,
        model.summary().params(),
        model.summary().macs()
    );

    let augment: Option<Arc<dyn Augment>> = match a.augment {
        Aug::None => None,
        Aug::Affine => Some(Arc::new(RandomAffine::default())),
        Aug::Elastic => Some(Arc::new(ElasticDistortion::default())),
        Aug::Both => Some(Arc::new(Compose::affine_elastic())),
    };
    let steps_per_epoch = train.len() / a.batch_size;
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer: OptimizerConfig {
            kind: match a.optimizer {
                Opt::Adam => OptimizerKind::Adam,
                Opt::Adamw => OptimizerKind::AdamW,
                Opt::Sgd => OptimizerKind::Sgd {
                    momentum: a.momentum,
                    nesterov: true,
                },
            },
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
            ..OptimizerConfig::default()
        },
        lr: LrSchedule {
            base_lr: a.lr,
            schedule: match a.schedule {
                Sched::Constant => Schedule::Constant,
                Sched::Step => Schedule::Step {
                    every_epochs: (a.epochs / 3).max(1),
                    gamma: 0.1,
                },
                Sched::Cosine => Schedule::Cosine {
                    min_lr: a.lr * 1e-2,
                },
                Sched::OneCycle => Schedule::OneCycle {
                    pct_start: 0.25,
                    div_factor: 25.0,
                    final_div: 1e3,
                },
            },
            warmup_steps: (a.warmup_epochs * steps_per_epoch as f64) as usize,
        },
        label_smoothing: a.label_smoothing,
        aux_weight: a.aux_weight,
        ema: a.ema,
        ema_statistics: a.ema_statistics,
        early_stopping: a.patience.map(|patience| EarlyStopping {
            patience,
            min_delta: 0.0,
        }),
        distill: DistillConfig {
            temperature: a.temperature,
            alpha: a.alpha,
        },
        seed: a.seed,
        augment,
        normalize: Normalize::UnitRange,
        run_dir: a.run_dir.clone(),
        device: device.clone(),
        ..TrainConfig::default()
    };

    let teacher_model = match &a.teacher {
        Some(path) => Some(hdr::models::load(path, &device)?),
        None => None,
    };
    let teacher = teacher_model
        .as_ref()
        .map(|t| Teacher::Model(t.model.as_ref()));
    let history = hdr::train::fit(
        model.as_ref(),
        &vars,
        &a.model,
        &train,
        &val,
        &cfg,
        teacher.as_ref(),
    )?;
    if let Some(best) = history.best() {
        println!(
            "best epoch {}: validation loss {:.4}, accuracy {:.2}%",
            best.epoch,
            best.val_loss,
            100.0 * best.val_accuracy
        );
    }

    if let Some(out) = &a.out {
        hdr::models::save(out, &a.model, &model.config(), &vars)?;
        println!("saved {}", out.display());
    }
    let (report, _) = hdr::train::evaluate(
        model.as_ref(),
        &mnist.test,
        &a.model,
        "test",
        Normalize::UnitRange,
        &device,
    )?;
    let eff = hdr::train::measure_efficiency(model.as_ref(), 1, 50, a.out.as_deref(), &device)?;
    println!("\n{}", report.with_efficiency(eff).render_text());
    Ok(())
}
