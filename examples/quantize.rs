//! Quantizes trained models to int8 and compares each with its f32 version on the MNIST test
//! split: accuracy, file size, batch-1 latency and batch-256 throughput, one row per model.
//! The int8 files are written to `--out-dir` as `<model>-int8.safetensors` (the names
//! `hdr_compress::pretrained_int8` ships).
//!
//! `cargo run --release --example quantize -- lenet5 mobilenet_hdr [--markdown docs/MODELS.md]`

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use hdr::compress::{
    int8_results_markdown, int8_summary_text, measure, Int8Comparison, MeasureSettings,
    QuantizeConfig, QuantizedModel,
};
use hdr::train::StudyData;

#[derive(Parser)]
#[command(about = "Quantize models to int8 and compare each with its f32 version")]
struct Args {
    /// Model files written by `hdr_models::save`, or names of shipped pretrained models.
    #[arg(required = true, value_delimiter = ',')]
    models: Vec<String>,
    /// Folder of the f32 copies and the int8 files.
    #[arg(long, default_value = "runs/quantize")]
    out_dir: PathBuf,
    /// Calibration images, the first of the training split.
    #[arg(long, default_value_t = 512)]
    calibration: usize,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also write the table, the command, machine and date into this Markdown page (its `int8`
    /// section; the rest of the page is kept), e.g. docs/MODELS.md.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let started = Instant::now();
    let dev = Device::Cpu;
    let data = StudyData::load(a.data.clone(), None)?;
    let calibration = hdr::compress::calibration_batches(&data.train, a.calibration)?;
    let settings = MeasureSettings::default();
    let mut rows = Vec::new();
    for spec in &a.models {
        let dense = hdr::models::load_or_pretrained(spec, &dev)?;
        let name = dense.name.clone();
        eprintln!("{name}: quantizing and measuring");
        let f32_file = a.out_dir.join(format!("{name}-f32.safetensors"));
        let int8_file = a.out_dir.join(format!("{name}-int8.safetensors"));
        hdr::models::save(&f32_file, &name, &dense.config, &dense.vars)?;
        let int8 = QuantizedModel::quantize(
            &name,
            &dense.model.graph(),
            &dense.vars,
            &calibration,
            &QuantizeConfig::default(),
        )?;
        int8.save(&int8_file)?;
        let row = Int8Comparison {
            model: name,
            f32: measure("f32", &dense, &f32_file, &data.test, &settings)?,
            int8: measure("int8", &int8, &int8_file, &data.test, &settings)?,
        };
        eprint!("{}", int8_summary_text(std::slice::from_ref(&row)));
        rows.push(row);
    }
    println!(
        "\nMNIST test split ({} images); int8 files in {}\n",
        data.test.len(),
        a.out_dir.display()
    );
    print!("{}", int8_summary_text(&rows));
    if let Some(path) = &a.markdown {
        let command = format!(
            "cargo run --release --example quantize -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
        hdr::train::write_results_section(
            path,
            "int8",
            &int8_results_markdown(&rows, &command, started.elapsed()),
        )?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
