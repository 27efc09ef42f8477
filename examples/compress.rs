//! Compresses a trained model and compares the variants on the MNIST test split: f32, int8,
//! unstructured pruned (iterative magnitude pruning with fine-tuning), structured pruned (L1
//! filter pruning to a MAC budget, fine-tuned) and int8 of the structured-pruned model. Each is
//! saved; one table shows file size, non-zero parameters, MACs, accuracy, batch-1 latency and
//! batch-256 throughput.
//!
//! Fine-tuning (unstructured rounds and structured) uses the augmentation the zoo trains with and
//! a learning rate decaying from `--lr` to a hundredth within every run, distilling from
//! `--teacher` if one is named. `--measure-only` measures the variants of an earlier run again.
//!
//! `cargo run --release --example compress -- lenet5 --fine-tune-epochs 1 --structured-epochs 2`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use clap::Parser;
use hdr::compress::{
    inference_sparsity, measure, prune_iteratively, render_text, results_markdown, write_results,
    FineTuneConfig, Inference, MeasureSettings, PruneConfig, PruneSchedule, QuantizeConfig,
    QuantizedModel, Scope, SoftTargets, StructuredConfig, StructuredModel, VariantReport,
};
use hdr::train::{teacher_logits, DistillConfig, StudyData};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(about = "Compress a model (int8, unstructured and structured pruning) and compare")]
struct Args {
    /// A model file written by `hdr_models::save`, or the name of a shipped pretrained model.
    model: String,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Target sparsity of unstructured pruning (fraction of weights removed).
    #[arg(long, default_value_t = 0.9)]
    sparsity: f32,
    /// Fraction of the MACs structured pruning keeps.
    #[arg(long, default_value_t = 0.5)]
    macs: f64,
    /// Fine-tuning epochs after each round of unstructured pruning.
    #[arg(long, default_value_t = 2)]
    fine_tune_epochs: usize,
    /// Fine-tuning epochs after structured pruning (a bigger change: it needs more).
    #[arg(long, default_value_t = 8)]
    structured_epochs: usize,
    /// Rounds of iterative unstructured pruning.
    #[arg(long, default_value_t = 10)]
    prune_steps: usize,
    /// Unstructured pruning: one magnitude threshold over all layers, the same sparsity in
    /// each, or one threshold over layer-adaptive scores (LAMP).
    #[arg(long, value_enum, default_value_t = ScopeArg::Global)]
    scope: ScopeArg,
    /// How unstructured sparsity grows over the rounds: equal relative cuts, or Zhu & Gupta's
    /// cubic schedule (big cuts first, small ones near the target).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Geometric)]
    schedule: ScheduleArg,
    /// Initial Adam learning rate of every fine-tuning run, decayed by cosine to a hundredth.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Keep a moving average of the weights with this decay (e.g. 0.999) over every
    /// fine-tuning run and use it instead of the last step's weights.
    #[arg(long)]
    ema: Option<f64>,
    /// Distil from this teacher while fine-tuning (unstructured rounds and structured): a model
    /// file or the name of a shipped pretrained model, its logits on the training images
    /// computed once.
    #[arg(long)]
    teacher: Option<String>,
    /// Distillation temperature T.
    #[arg(long, default_value_t = 4.0)]
    temperature: f32,
    /// Weight of the distillation term, the rest going to the labels.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Seed of the fine-tuning runs' shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Quantize and prune nothing: measure the variants an earlier run saved in `--out-dir`
    /// again (e.g. on a quiet machine), with the same model and split.
    #[arg(long)]
    measure_only: bool,
    /// Fine-tune without the random affine augmentation the zoo's models are trained with.
    #[arg(long)]
    no_augment: bool,
    /// Fine-tune on the first N training images only (quick runs).
    #[arg(long)]
    train_subset: Option<usize>,
    /// Split the variants are evaluated on: `test`, or `validation` (the 5k images held out of
    /// training) to choose pruning and fine-tuning settings without looking at the test split.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Folder of the saved variants.
    #[arg(long, default_value = "runs/compress")]
    out_dir: PathBuf,
    /// Also write the table, the command, machine and date into this Markdown page (its
    /// `compress-<model>` section; the rest of the page is kept), e.g. docs/RESULTS.md.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Test,
    Validation,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleArg {
    Geometric,
    Cubic,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScopeArg {
    Global,
    LayerWise,
    Lamp,
}

/// Runs `f` behind a spinner that shows `msg` and the elapsed time.
fn step<T>(msg: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")?);
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    let started = Instant::now();
    let out = f();
    bar.finish_and_clear();
    eprintln!("{msg}: {:.1?}", started.elapsed());
    out
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    if matches!(a.split, SplitArg::Validation) && a.markdown.is_some() {
        anyhow::bail!("--markdown records test-split results; drop it with --split validation");
    }
    let started = Instant::now();
    let dev = Device::Cpu;
    let dense = open(&a.model, &dev)?;
    let name = dense.name.clone();
    let data = step("loading MNIST", || {
        Ok(StudyData::load(a.data.clone(), a.train_subset)?)
    })?;
    let file = |variant: &str| a.out_dir.join(format!("{name}-{variant}.safetensors"));
    let folded = StructuredModel::fold(&name, &dense.model.graph(), &dense.vars)?;
    let v = if a.measure_only {
        step(
            &format!("loading the variants in {}", a.out_dir.display()),
            || {
                let sparse = hdr::compress::load_sparse(&file("pruned"), &dev)?;
                if sparse.name != name {
                    anyhow::bail!(
                        "{} holds {}, not {name}",
                        file("pruned").display(),
                        sparse.name
                    );
                }
                Ok(Variants {
                    sparsity: inference_sparsity(sparse.model.as_ref(), &sparse.vars)?,
                    int8: QuantizedModel::load(&file("int8"))?,
                    sparse,
                    structured: StructuredModel::load(&file("structured"), &dev)?,
                    structured_int8: QuantizedModel::load(&file("structured-int8"))?,
                })
            },
        )?
    } else {
        compress(&a, &dense, &folded, &data, &file, &dev)?
    };

    let variants: [(&str, &dyn Inference); 5] = [
        ("f32", &dense),
        ("int8", &v.int8),
        ("pruned", &v.sparse),
        ("structured", &v.structured),
        ("structured-int8", &v.structured_int8),
    ];
    let settings = MeasureSettings::default();
    let (eval, split_name) = match a.split {
        SplitArg::Test => (&data.test, "MNIST test split"),
        SplitArg::Validation => (&data.val, "validation split"),
    };
    let mut rows: Vec<VariantReport> = Vec::new();
    for (variant, model) in variants {
        rows.push(step(&format!("measuring {variant}"), || {
            Ok(measure(variant, model, &file(variant), eval, &settings)?)
        })?);
    }

    println!(
        "\n{name}: unstructured sparsity {:.1}% of the prunable weights",
        100.0 * v.sparsity
    );
    let widths: Vec<String> = folded
        .widths()?
        .iter()
        .zip(v.structured.widths()?)
        .map(|(before, after)| format!("{} {}->{}", before.layer, before.channels, after.channels))
        .collect();
    println!("structured widths: {}", widths.join(", "));
    println!(
        "{split_name} ({} images); variants in {}\n",
        eval.len(),
        a.out_dir.display()
    );
    print!("{}", render_text(&rows));

    if let Some(path) = &a.markdown {
        let command = format!(
            "cargo run --release --example compress -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
        write_results(
            path,
            &name,
            &results_markdown(&name, &rows, &command, started.elapsed()),
        )?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// The compressed variants of one model.
struct Variants {
    int8: QuantizedModel,
    sparse: hdr::models::LoadedModel,
    /// Of the inference weights of `sparse`.
    sparsity: f64,
    structured: StructuredModel,
    structured_int8: QuantizedModel,
}

/// Quantizes and prunes `dense` as `a` says, saving each variant where `file` names.
fn compress(
    a: &Args,
    dense: &hdr::models::LoadedModel,
    folded: &StructuredModel,
    data: &StudyData,
    file: &dyn Fn(&str) -> PathBuf,
    dev: &Device,
) -> anyhow::Result<Variants> {
    let name = &dense.name;
    let calibration = hdr::compress::calibration_batches(&data.train, 512)?;
    let mut tune = FineTuneConfig {
        epochs: a.fine_tune_epochs,
        ema: a.ema,
        seed: a.seed,
        ..FineTuneConfig::with_lr(a.lr)
    };
    if a.no_augment {
        tune.augment = None;
    }
    if let Some(teacher) = &a.teacher {
        let logits = step(
            &format!("teacher {teacher}: logits of the training images"),
            || {
                let t = open(teacher, dev)?;
                Ok(teacher_logits(
                    t.model.as_ref(),
                    &data.train,
                    tune.normalize,
                    None,
                    dev,
                )?)
            },
        )?;
        tune.teacher = Some(SoftTargets {
            logits,
            distill: DistillConfig {
                temperature: a.temperature,
                alpha: a.alpha,
            },
        });
    }

    hdr::models::save(&file("f32"), name, &dense.config, &dense.vars)?;
    let int8 = step("int8: calibrating and quantizing", || {
        let q = QuantizedModel::quantize(
            name,
            &dense.model.graph(),
            &dense.vars,
            &calibration,
            &QuantizeConfig::default(),
        )?;
        q.save(&file("int8"))?;
        Ok(q)
    })?;
    let sparse = open(&a.model, dev)?;
    let masks = step(
        &format!(
            "unstructured: {} rounds of pruning to {:.0}% and fine-tuning",
            a.prune_steps,
            100.0 * a.sparsity
        ),
        || {
            Ok(prune_iteratively(
                sparse.model.as_ref(),
                &sparse.vars,
                &PruneConfig {
                    target: a.sparsity,
                    scope: match a.scope {
                        ScopeArg::Global => Scope::Global,
                        ScopeArg::LayerWise => Scope::LayerWise,
                        ScopeArg::Lamp => Scope::Lamp,
                    },
                    steps: a.prune_steps,
                    schedule: match a.schedule {
                        ScheduleArg::Geometric => PruneSchedule::Geometric,
                        ScheduleArg::Cubic => PruneSchedule::Cubic,
                    },
                },
                &data.train,
                &tune,
            )?)
        },
    )?;
    // Stored as bitmaps and non-zero values: the saving shows in the file size.
    hdr::compress::save_sparse(&file("pruned"), name, &sparse.config, &sparse.vars)?;
    let structured = step(
        &format!(
            "structured: pruning to {:.0}% of the MACs and fine-tuning",
            100.0 * a.macs
        ),
        || {
            let s = folded.prune(&StructuredConfig {
                macs_fraction: a.macs,
            })?;
            s.fine_tune(
                &data.train,
                &FineTuneConfig {
                    epochs: a.structured_epochs,
                    ..tune.clone()
                },
            )?;
            s.save(&file("structured"))?;
            Ok(s)
        },
    )?;
    let structured_int8 = step("structured int8: quantizing", || {
        let q = structured.quantize(&calibration, &QuantizeConfig::default())?;
        q.save(&file("structured-int8"))?;
        Ok(q)
    })?;
    Ok(Variants {
        int8,
        sparse,
        sparsity: masks.sparsity()?,
        structured,
        structured_int8,
    })
}

/// A model file, or the name of a shipped pretrained model.
fn open(model: &str, dev: &Device) -> anyhow::Result<hdr::models::LoadedModel> {
    Ok(if Path::new(model).is_file() {
        hdr::models::load(Path::new(model), dev)?
    } else {
        hdr::models::pretrained(model, dev)?
    })
}
