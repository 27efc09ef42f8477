//! The ablation study: MobileNet-HDR with all of the paper's modifications, with each one removed
//! in turn, and with all removed (MobileNet v1 at width 0.25), trained with the same budget.
//!
//! `cargo run --release --example ablation -- --teacher resnet [--epochs N]`

use std::path::PathBuf;

use candle_core::Device;
use clap::Parser;
use hdr::models::{MobileNetHdrConfig, ModelConfig, Modification};
use hdr::train::{recipe, train_and_evaluate, StudyData, TeacherSource};

#[derive(Parser)]
#[command(about = "Remove each of MobileNet-HDR's modifications in turn and measure the cost")]
struct Args {
    /// The trained teacher for the variants that distil: a model file (e.g. from the compare
    /// example), or the name of a pretrained model (`resnet`).
    #[arg(long)]
    teacher: String,
    /// Epochs for every variant (default: the mobilenet_hdr recipe's).
    #[arg(long)]
    epochs: Option<usize>,
    /// Train on only the first N training samples (quick trial runs).
    #[arg(long)]
    train_subset: Option<usize>,
    #[arg(long, default_value = "runs/ablation")]
    out_dir: PathBuf,
    /// Markdown page to write the results into (its `ablation` section; the rest is kept).
    #[arg(long)]
    results: Option<PathBuf>,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist, download).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let data = StudyData::load(a.data.clone(), a.train_subset)?;
    let splits = data.splits();
    let teacher = hdr::models::load_or_pretrained(&a.teacher, &device)?;
    let normalize = recipe("mobilenet_hdr", a.epochs).normalize;
    let source = TeacherSource::cached(&[teacher], &data.train, normalize, &device)?;
    let teacher = source.teacher();

    let paper = MobileNetHdrConfig::paper();
    let mut variants = vec![("mobilenet_hdr (all)".to_string(), paper.clone())];
    for m in Modification::ALL {
        variants.push((format!("without {m:?}"), paper.clone().without(m)));
    }
    variants.push((
        "none (MobileNet v1 x0.25)".to_string(),
        MobileNetHdrConfig::original(),
    ));

    let started = std::time::Instant::now();
    let mut outcomes = Vec::new();
    for (label, cfg) in variants {
        println!("\n== {label}");
        let distil = cfg.teacher.is_some().then_some(&teacher);
        let file_label = label.replace([' ', '(', ')', '.'], "_");
        let train_cfg = recipe("mobilenet_hdr", a.epochs);
        let mut o = train_and_evaluate(
            &file_label,
            &ModelConfig::MobileNetHdr(cfg),
            splits,
            &train_cfg,
            distil,
            &a.out_dir,
        )?;
        o.report.model = label.clone();
        o.label = label;
        println!(
            "{}: test accuracy {:.2}%",
            o.label,
            100.0 * o.report.accuracy
        );
        outcomes.push(o);
    }
    let elapsed = started.elapsed();
    println!("\n{}", hdr::train::study_table(&outcomes).render_text());
    println!("{}", hdr::train::training_cost_markdown(&outcomes));
    if let Some(path) = &a.results {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        hdr::train::write_results_section(
            path,
            "ablation",
            &hdr::train::results_markdown(&outcomes, &command, elapsed),
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
