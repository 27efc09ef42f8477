//! Reads handwritten digits in image files (PNG/JPEG, any size, dark on light or light on dark),
//! preprocessed the way MNIST was made, and prints the top-3 digits with probabilities, flagging
//! low-confidence answers. With `--number`, an image is a row of digits (a postcode, an amount)
//! read left to right.
//!
//! `cargo run --release --example predict -- [--model FILE|NAME] [--json] [--number] <files or folders>...`

use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::Parser;
use hdr::data::preprocess::{load_digit, PreprocessConfig};
use hdr::data::segment::{load_digits, SegmentConfig};
use hdr::models::Prediction;
use rayon::prelude::*;

#[derive(Parser)]
#[command(about = "Recognise handwritten digits in image files")]
struct Args {
    /// A model file (hdr_models::save) or the name of a shipped pretrained model.
    #[arg(long, default_value = "lenet5")]
    model: String,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Each image holds several digits side by side; read them as a number.
    #[arg(long)]
    number: bool,
    /// Below this probability an answer is flagged as unsure.
    #[arg(long, default_value_t = 0.8)]
    min_confidence: f32,
    /// Image files, or folders searched recursively for .png/.jpg/.jpeg.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let loaded = hdr::models::load_or_pretrained(&a.model, &device)?;
    let files = collect(&a.inputs)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no .png/.jpg/.jpeg files in {:?}",
        a.inputs
    );
    let bar = if a.json || files.len() < 64 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(files.len() as u64)
    };
    // Batches of 256 files: preprocessing in parallel, then one model call per batch.
    for chunk in files.chunks(256) {
        let prepared: Vec<(PathBuf, Prepared)> = chunk
            .par_iter()
            .map(|f| {
                let digits = if a.number {
                    load_digits(f, &SegmentConfig::default())
                        .map(|s| s.into_iter().map(|d| d.pixels).collect())
                } else {
                    load_digit(f, &PreprocessConfig::default()).map(|d| vec![d])
                };
                (f.clone(), digits.map_err(|e| e.to_string()))
            })
            .collect();
        let images: Vec<&[u8]> = prepared
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|ds| ds.iter().map(|d| d.as_slice()))
            .collect();
        let mut predictions =
            hdr::models::predict(loaded.model.as_ref(), &images, &device)?.into_iter();
        for (path, digits) in &prepared {
            match digits {
                Err(e) => report_error(path, e, a.json),
                Ok(ds) => {
                    let preds: Vec<Prediction> = predictions.by_ref().take(ds.len()).collect();
                    report(path, &preds, a.min_confidence, a.json, a.number);
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The 28x28 digits found in one file, or why none could be read.
type Prepared = Result<Vec<Vec<u8>>, String>;

fn collect(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(p)?.flatten().map(|e| e.path()).collect();
            entries.sort();
            out.extend(collect(&entries)?.into_iter().filter(|f| is_image(f)));
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn report_error(path: &Path, e: &str, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "path": path, "error": e }));
    } else {
        println!("{}: error: {e}", path.display());
    }
}

fn report(path: &Path, preds: &[Prediction], min_conf: f32, json: bool, number: bool) {
    let unsure = preds.iter().any(|p| p.probability < min_conf);
    if json {
        let top3 = |p: &Prediction| -> Vec<serde_json::Value> {
            p.top3
                .iter()
                .map(|(d, q)| serde_json::json!({"digit": d, "probability": q}))
                .collect()
        };
        let v = if number {
            let text: String = preds
                .iter()
                .map(|p| char::from(b'0' + p.digit as u8))
                .collect();
            serde_json::json!({
                "path": path, "number": text, "unsure": unsure,
                "digits": preds.iter().map(|p| serde_json::json!({"digit": p.digit, "probability": p.probability, "top3": top3(p)})).collect::<Vec<_>>(),
            })
        } else {
            let p = &preds[0];
            serde_json::json!({"path": path, "digit": p.digit, "probability": p.probability, "top3": top3(p), "unsure": unsure})
        };
        println!("{v}");
        return;
    }
    let flag = if unsure { "  (unsure)" } else { "" };
    if number {
        let text: String = preds
            .iter()
            .map(|p| char::from(b'0' + p.digit as u8))
            .collect();
        let conf: Vec<String> = preds
            .iter()
            .map(|p| format!("{:.0}%", 100.0 * p.probability))
            .collect();
        println!("{}: {text}  [{}]{flag}", path.display(), conf.join(" "));
    } else {
        let p = &preds[0];
        let top: Vec<String> = p
            .top3
            .iter()
            .map(|(d, q)| format!("{d} {:.1}%", 100.0 * q))
            .collect();
        println!(
            "{}: {}  ({}){flag}",
            path.display(),
            p.digit,
            top.join(", ")
        );
    }
}
