//! Knowledge distillation: trains a student with and without a teacher, same recipe and seed,
//! and reports both on the test split.
//!
//! `cargo run --release --example distill -- --teacher resnet [--student mobilenet_hdr]`

use std::path::PathBuf;

use candle_core::Device;
use clap::Parser;
use hdr::train::{recipe, teacher_logits, train_and_evaluate, DistillConfig, StudyData, Teacher};

#[derive(Parser)]
#[command(about = "Train a student with and without distillation from a teacher")]
struct Args {
    /// The trained teacher: a model file, or the name of a pretrained model
    /// (`resnet`).
    #[arg(long)]
    teacher: String,
    /// Registered name of the student.
    #[arg(long, default_value = "mobilenet_hdr")]
    student: String,
    /// Softmax temperature.
    #[arg(long, default_value_t = 4.0)]
    temperature: f32,
    /// Weight of the teacher's soft targets.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Use the teacher live on every augmented batch instead of cached logits of clean images.
    #[arg(long)]
    live: bool,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    train_subset: Option<usize>,
    #[arg(long, default_value = "runs/distill")]
    out_dir: PathBuf,
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
    let loaded = hdr::models::load_or_pretrained(&a.teacher, &device)?;
    let teacher = if a.live {
        Teacher::Model(loaded.model.as_ref())
    } else {
        Teacher::Logits(teacher_logits(
            loaded.model.as_ref(),
            &data.train,
            Default::default(),
            None,
            &device,
        )?)
    };
    let config = hdr::models::config(&a.student)?;
    let mut cfg = recipe(&a.student, a.epochs);
    cfg.distill = DistillConfig {
        temperature: a.temperature,
        alpha: a.alpha,
    };
    println!("== {} without distillation", a.student);
    let plain = train_and_evaluate(
        &format!("{}_plain", a.student),
        &config,
        splits,
        &cfg,
        None,
        &a.out_dir,
    )?;
    println!("== {} distilled from {}", a.student, loaded.name);
    let distilled = train_and_evaluate(
        &format!("{}_distilled", a.student),
        &config,
        splits,
        &cfg,
        Some(&teacher),
        &a.out_dir,
    )?;
    let (t_report, _) = hdr::train::evaluate(
        loaded.model.as_ref(),
        &data.test,
        &loaded.name,
        "test",
        Default::default(),
        &device,
    )?;
    let mut table = hdr::train::study_table(&[plain, distilled]);
    table.push(&t_report);
    println!("\n{}", table.render_text());
    Ok(())
}
