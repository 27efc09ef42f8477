//! Pictures of a trained model: feature maps of every convolutional layer for one test digit,
//! saliency and Grad-CAM overlays, the confusion matrix as a heat map, the misclassified test
//! digits, and (given a run's history) the training curves. Writes PNG files and lists them.
//!
//! `cargo run --release --example visualize -- model.safetensors [--index 0] [--history runs/x/history.json] [--out viz]`

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clap::Parser;
use hdr::data::{Mnist, MnistOptions, Normalize};
use hdr::viz::{Captioned, Panel, Series, BLUE, ORANGE};

#[derive(Parser)]
#[command(about = "Write pictures of a trained model into a folder")]
struct Args {
    /// A model file written by `hdr_models::save`, or the name of a pretrained model.
    model: String,
    /// Test digit to explain.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// A run's history.json, for the training curves.
    #[arg(long)]
    history: Option<PathBuf>,
    /// How many misclassified digits to show.
    #[arg(long, default_value_t = 40)]
    misclassified: usize,
    /// Output folder.
    #[arg(long, default_value = "viz")]
    out: PathBuf,
    /// MNIST folder (else HDR_DATA_DIR, datasets/mnist, download).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before anything allocates on rayon's pool: one allocator arena for all threads.
    hdr::ops::single_allocator_arena();
    let device = Device::Cpu;
    let loaded = hdr::models::load_or_pretrained(&a.model, &device)?;
    let model = loaded.model.as_ref();
    let mnist = Mnist::load_with(&MnistOptions {
        dir: a.data.clone(),
        ..MnistOptions::default()
    })?;
    let test = &mnist.test;
    anyhow::ensure!(
        a.index < test.len(),
        "--index {} is past the {} test digits",
        a.index,
        test.len()
    );
    let mut written: Vec<PathBuf> = Vec::new();
    let mut save = |canvas: hdr::viz::Canvas, name: &str| -> anyhow::Result<()> {
        let path = a.out.join(name);
        canvas.save_png(&path)?;
        written.push(path);
        Ok(())
    };

    let digit: Vec<f32> = test
        .image(a.index)
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect();
    let x = Tensor::from_vec(digit.clone(), (1, 1, 28, 28), &device)?;
    let (_, maps) = model.forward_features(&x)?;
    for map in &maps {
        save(
            hdr::viz::feature_map_grid(map, 0, 64)?,
            &format!("feature_maps_{}.png", map.name),
        )?;
    }
    let label = test.label(a.index);
    let s = hdr::viz::saliency(model, &x, None)?;
    let title = format!(
        "saliency: label {label}, predicted {} ({:.1}%)",
        s.class,
        100.0 * s.probability
    );
    save(hdr::viz::overlay(&digit, &s.map, &title)?, "saliency.png")?;
    if !maps.is_empty() {
        let g = hdr::viz::grad_cam(model, &x, None)?;
        let title = format!(
            "grad-cam ({}): predicted {}",
            maps.last().map_or("", |m| m.name.as_str()),
            g.class
        );
        save(hdr::viz::overlay(&digit, &g.map, &title)?, "grad_cam.png")?;
    }

    let (report, eval) = hdr::train::evaluate(
        model,
        test,
        &loaded.name,
        "test",
        Normalize::UnitRange,
        &device,
    )?;
    let title = format!(
        "{} on MNIST test: {:.2}%",
        loaded.name,
        100.0 * report.accuracy
    );
    save(
        hdr::viz::confusion_heatmap(eval.matrix(), &title),
        "confusion_matrix.png",
    )?;
    let wrong: Vec<Captioned> = eval
        .misclassified()
        .iter()
        .take(a.misclassified)
        .map(|m| Captioned {
            pixels: test.image(m.index).to_vec(),
            caption: format!("#{} T{} P{}", m.index, m.label, m.predicted),
        })
        .collect();
    let title = format!(
        "misclassified: {} of {}",
        eval.misclassified().len(),
        test.len()
    );
    save(
        hdr::viz::digit_gallery(&wrong, 10, &title)?,
        "misclassified.png",
    )?;

    if let Some(path) = &a.history {
        save(curves(path)?, "training_curves.png")?;
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}

fn curves(path: &Path) -> anyhow::Result<hdr::viz::Canvas> {
    let h = hdr::train::History::load(path)?;
    let series = |name: &str, color, f: &dyn Fn(&hdr::train::EpochRecord) -> f64| Series {
        name: name.into(),
        color,
        points: h.epochs.iter().map(|e| (e.epoch as f64, f(e))).collect(),
    };
    Ok(hdr::viz::line_charts(&[
        Panel {
            title: "loss".into(),
            series: vec![
                series("train", BLUE, &|e| e.train_loss),
                series("validation", ORANGE, &|e| e.val_loss),
            ],
        },
        Panel {
            title: "accuracy %".into(),
            series: vec![
                series("train", BLUE, &|e| 100.0 * e.train_accuracy),
                series("validation", ORANGE, &|e| 100.0 * e.val_accuracy),
            ],
        },
    ])?)
}
