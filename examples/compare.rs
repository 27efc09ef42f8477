//! The comparative study of the paper: MLPs with 1-3 hidden layers, LeNet-5, ResNet, DenseNet,
//! MobileNet and MobileNet-HDR (distilled from the teacher its preset names: reused when the
//! study has already trained it, else trained first), each trained with the study's recipe and
//! evaluated on the MNIST test split; prints the results table and writes it into
//! docs/RESULTS.md. Each model's checkpoints and history go to `<out-dir>/<model>/`, so an
//! interrupted study resumes where it stopped.
//!
//! `cargo run --release --example compare [-- --epochs N --models a,b --results docs/RESULTS.md]`

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use clap::Parser;
use hdr::data::augment::{Compose, ElasticDistortion};
use hdr::train::{recipe, train_and_evaluate, StudyData, StudyOutcome, TeacherSource, TrainConfig};

#[derive(Parser)]
#[command(about = "Train and compare the study's models on MNIST")]
struct Args {
    /// Models to compare, in order (default: the paper's study).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mlp1,mlp2,mlp3,lenet5,resnet,densenet,mobilenet,mobilenet_hdr"
    )]
    models: Vec<String>,
    /// Epochs for every model (default: each recipe's own).
    #[arg(long)]
    epochs: Option<usize>,
    /// Train on only the first N training samples (quick trial runs; results not comparable).
    #[arg(long)]
    train_subset: Option<usize>,
    /// Where the trained models go.
    #[arg(long, default_value = "runs/compare")]
    out_dir: PathBuf,
    /// Markdown page to write the results into (its `study` section; the rest is kept).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Teachers to distil from, instead of the one the preset names: trained model files
    /// (`*.safetensors`) or registered names (reused when this study has trained them, else
    /// trained first). Several teachers form an ensemble: their logits are averaged.
    #[arg(long, value_delimiter = ',')]
    teacher: Vec<String>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999) for every
    /// model, validated and selected instead of the raw weights (default: each recipe's own).
    #[arg(long)]
    ema: Option<f64>,
    /// What the moving average does with batch-norm statistics: `copied` from the current
    /// weights (the study's runs), or `averaged` like the weights (as timm's ModelEmaV2).
    #[arg(long, default_value = "copied")]
    ema_statistics: hdr::train::EmaStatistics,
    /// Distillation temperature T (default: the recipe's, 4).
    #[arg(long)]
    temperature: Option<f32>,
    /// Weight of the distillation term, the rest going to the labels (default: the recipe's,
    /// 0.5).
    #[arg(long)]
    alpha: Option<f32>,
    /// Label smoothing of the hard-label term (default: the recipe's, none).
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Peak learning rate of every model's one-cycle schedule (default: the recipe's).
    #[arg(long)]
    lr: Option<f64>,
    /// Images per training step of every model (default: the recipe's, 128).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Weight decay (decoupled for AdamW: each step shrinks weights by lr * wd; default: the
    /// recipe's).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Add elastic distortion (Simard et al. 2003, `ElasticDistortion::default()`) after each
    /// recipe's augmentation, for every model trained.
    #[arg(long)]
    elastic: bool,
    /// Run the teacher on every augmented batch instead of caching its logits of the clean
    /// images once (consistent soft targets, at the cost of a teacher forward pass per batch).
    #[arg(long)]
    live_teacher: bool,
    /// Seed of every model's initialisation, data order, augmentation and dropout (default: the
    /// recipe's, 0). The study is one run at the recipe's seed; others measure the spread.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of stride-2 stages MobileNet-HDR keeps (default: the preset's, 3).
    #[arg(long)]
    downsamplings: Option<usize>,
    /// Train on all 60k training images, the validation split included (a final fit with the
    /// recipe's epochs; the validation figures are then not held out).
    #[arg(long, conflicts_with = "train_subset")]
    refit: bool,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist, download).
    #[arg(long)]
    data: Option<PathBuf>,
}

/// The study's recipe for `name` with the command line's overrides.
fn train_config(name: &str, a: &Args) -> TrainConfig {
    let mut cfg = TrainConfig {
        run_dir: Some(a.out_dir.join(name)),
        ..recipe(name, a.epochs)
    };
    cfg.ema = a.ema.or(cfg.ema);
    cfg.ema_statistics = a.ema_statistics;
    cfg.seed = a.seed.unwrap_or(cfg.seed);
    cfg.distill.temperature = a.temperature.unwrap_or(cfg.distill.temperature);
    cfg.distill.alpha = a.alpha.unwrap_or(cfg.distill.alpha);
    cfg.label_smoothing = a.label_smoothing.unwrap_or(cfg.label_smoothing);
    cfg.lr.base_lr = a.lr.unwrap_or(cfg.lr.base_lr);
    cfg.batch_size = a.batch_size.unwrap_or(cfg.batch_size);
    cfg.optimizer.weight_decay = a.weight_decay.unwrap_or(cfg.optimizer.weight_decay);
    if a.elastic {
        let before = cfg.augment.take().into_iter().collect();
        cfg.augment = Some(Arc::new(
            Compose::new(before).then(ElasticDistortion::default()),
        ));
    }
    cfg
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        !a.live_teacher || a.teacher.len() <= 1,
        "--live-teacher runs one teacher, {} were given",
        a.teacher.len()
    );
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let data = if a.refit {
        StudyData::load_with_validation_in_training(a.data.clone())?
    } else {
        StudyData::load(a.data.clone(), a.train_subset)?
    };
    let splits = data.splits();
    let started = std::time::Instant::now();
    let mut outcomes: Vec<StudyOutcome> = Vec::new();
    let mut teachers: Vec<StudyOutcome> = Vec::new();
    for name in &a.models {
        let mut config = hdr::models::config(name)?;
        if let (hdr::models::ModelConfig::MobileNetHdr(c), Some(d)) = (&mut config, a.downsamplings)
        {
            c.downsamplings = d;
        }
        let wants = match &config {
            hdr::models::ModelConfig::MobileNetHdr(c) => c.teacher.clone(),
            _ => None,
        };
        let cfg = train_config(name, &a);
        let source = match wants {
            Some(preset) => {
                let names = if a.teacher.is_empty() {
                    vec![preset]
                } else {
                    a.teacher.clone()
                };
                let mut loaded = Vec::new();
                for t in &names {
                    let file = if t.ends_with(".safetensors") {
                        PathBuf::from(t)
                    } else if let Some(done) =
                        outcomes.iter().chain(&teachers).find(|o| &o.label == t)
                    {
                        done.file.clone()
                    } else {
                        println!("\n== {t} (teacher)");
                        let teacher_cfg = train_config(t, &a);
                        let outcome = train_and_evaluate(
                            t,
                            &hdr::models::config(t)?,
                            splits,
                            &teacher_cfg,
                            None,
                            &a.out_dir,
                        )?;
                        let file = outcome.file.clone();
                        teachers.push(outcome);
                        file
                    };
                    println!("distilling from {}", file.display());
                    loaded.push(hdr::models::load(&file, &device)?);
                }
                Some(if a.live_teacher {
                    TeacherSource::live(loaded.remove(0))
                } else {
                    TeacherSource::cached(&loaded, &data.train, cfg.normalize, &device)?
                })
            }
            None => None,
        };
        let distill = source.as_ref().map(TeacherSource::teacher);
        println!(
            "\n== {name}{}",
            if distill.is_some() {
                " (distilled)"
            } else {
                ""
            }
        );
        let outcome =
            train_and_evaluate(name, &config, splits, &cfg, distill.as_ref(), &a.out_dir)?;
        println!(
            "{name}: test accuracy {:.2}%",
            100.0 * outcome.report.accuracy
        );
        outcomes.push(outcome);
    }
    outcomes.extend(teachers);

    let elapsed = started.elapsed();
    println!("\n{}", hdr::train::study_table(&outcomes).render_text());
    println!("{}", hdr::train::training_cost_markdown(&outcomes));
    println!("whole study: {:.1} min", elapsed.as_secs_f64() / 60.0);
    if let Some(path) = &a.results {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        hdr::train::write_results_section(
            path,
            "study",
            &hdr::train::results_markdown(&outcomes, &command, elapsed),
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
