//! The comparative study of the paper: MLPs with 1-3 hidden layers, LeNet-5, ResNet, DenseNet,
//! MobileNet and MobileNet-HDR (distilled from the teacher its preset names: reused when the
//! study has already trained it, else trained first), each trained with the study's recipe and
//! evaluated on the MNIST test split; prints the results table and writes it into
//! docs/RESULTS.md. Each model's checkpoints and history go to `<out-dir>/<model>/`, so an
//! interrupted study resumes where it stopped.
//!
//! `cargo run --release --example compare [-- --epochs N --models a,b --results docs/RESULTS.md]`

use std::path::PathBuf;

use candle_core::Device;
use clap::Parser;
use hdr::train::{
    recipe, teacher_logits, train_and_evaluate, StudyData, StudyOutcome, Teacher, TrainConfig,
};

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
    /// An already-trained teacher file to distil from, instead of the study's own.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Run the teacher on every augmented batch instead of caching its logits of the clean
    /// images once (consistent soft targets, at the cost of a teacher forward pass per batch).
    #[arg(long)]
    live_teacher: bool,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist, download).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let device = Device::Cpu;
    let data = StudyData::load(a.data.clone(), a.train_subset)?;
    let splits = data.splits();
    let started = std::time::Instant::now();
    let mut outcomes: Vec<StudyOutcome> = Vec::new();
    let mut teacher: Option<StudyOutcome> = None;
    for name in &a.models {
        // Declared before `distill`, which borrows it when the teacher runs live.
        let live_teacher: hdr::models::LoadedModel;
        let config = hdr::models::config(name)?;
        let wants = match &config {
            hdr::models::ModelConfig::MobileNetHdr(c) => c.teacher.clone(),
            _ => None,
        };
        let distill = match wants {
            Some(t) => {
                let file = if let Some(file) = &a.teacher {
                    file.clone()
                } else if let Some(done) = outcomes.iter().find(|o| o.label == t) {
                    done.file.clone()
                } else {
                    if teacher.is_none() {
                        println!("\n== {t} (teacher)");
                        let cfg = TrainConfig {
                            run_dir: Some(a.out_dir.join(&t)),
                            ..recipe(&t, a.epochs)
                        };
                        teacher = Some(train_and_evaluate(
                            &t,
                            &hdr::models::config(&t)?,
                            splits,
                            &cfg,
                            None,
                            &a.out_dir,
                        )?);
                    }
                    teacher.as_ref().map(|t| t.file.clone()).unwrap_or_default()
                };
                let loaded = hdr::models::load(&file, &device)?;
                println!("distilling from {} ({})", loaded.name, file.display());
                if a.live_teacher {
                    live_teacher = loaded;
                    Some(Teacher::Model(live_teacher.model.as_ref()))
                } else {
                    let cache = a.out_dir.join(format!("{t}.train-logits.safetensors"));
                    let _ = std::fs::remove_file(&cache);
                    let logits = teacher_logits(
                        loaded.model.as_ref(),
                        &data.train,
                        Default::default(),
                        Some(&cache),
                        &device,
                    )?;
                    Some(Teacher::Logits(logits))
                }
            }
            None => None,
        };
        println!(
            "\n== {name}{}",
            if distill.is_some() {
                " (distilled)"
            } else {
                ""
            }
        );
        let cfg = TrainConfig {
            run_dir: Some(a.out_dir.join(name)),
            ..recipe(name, a.epochs)
        };
        let outcome =
            train_and_evaluate(name, &config, splits, &cfg, distill.as_ref(), &a.out_dir)?;
        println!(
            "{name}: test accuracy {:.2}%",
            100.0 * outcome.report.accuracy
        );
        outcomes.push(outcome);
    }
    if let Some(t) = teacher {
        outcomes.push(t);
    }

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
