//! Finds (or downloads) MNIST, verifies it and prints what is in it.
//!
//! `cargo run --release --example dataset -- [--dir PATH] [--no-download] [--show N]`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use hdr::data::{Dataset, Mnist, MnistOptions, SplitConfig};

#[derive(Parser)]
#[command(about = "Find, verify and summarise MNIST")]
struct Args {
    /// Folder holding the four MNIST files (raw or .gz); looked at before HDR_DATA_DIR.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Never download, even if MNIST is nowhere to be found.
    #[arg(long)]
    no_download: bool,
    /// How many test digits to draw in the terminal.
    #[arg(long, default_value_t = 3)]
    show: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = MnistOptions {
        dir: args.dir,
        download: !args.no_download && MnistOptions::default().download,
        ..MnistOptions::default()
    };
    let start = Instant::now();
    let mnist = Mnist::load_with(&opts)?;
    println!(
        "MNIST loaded and verified from {} in {:.2} s",
        mnist.dir.display(),
        start.elapsed().as_secs_f64()
    );
    let (train, val) = mnist.train.split(&SplitConfig::default())?;
    println!();
    println!("{:<22} {:>7}  per digit 0..9", "split", "images");
    for (name, d) in [
        ("train (all)", &mnist.train),
        ("  train (after split)", &train),
        ("  validation", &val),
        ("test", &mnist.test),
    ] {
        println!("{name:<22} {:>7}  {:?}", d.len(), d.class_counts());
    }
    let (mean, std) = pixel_stats(&mnist.train);
    println!("\ntraining pixels in [0,1]: mean {mean:.4}, std {std:.4}");
    for i in 0..args.show.min(mnist.test.len()) {
        println!("\ntest[{i}], label {}:", mnist.test.label(i));
        print!("{}", ascii(mnist.test.image(i), mnist.test.cols()));
    }
    Ok(())
}

fn pixel_stats(d: &Dataset) -> (f64, f64) {
    let n = d.images().len() as f64;
    let (s, s2) = d.images().iter().fold((0f64, 0f64), |(s, s2), &p| {
        let x = p as f64 / 255.0;
        (s + x, s2 + x * x)
    });
    let mean = s / n;
    (mean, (s2 / n - mean * mean).sqrt())
}

fn ascii(image: &[u8], cols: usize) -> String {
    const SHADES: &[u8] = b" .:-=+*#%@";
    image
        .chunks(cols)
        .map(|row| {
            let mut line: String = row
                .iter()
                .map(|&p| SHADES[p as usize * (SHADES.len() - 1) / 255] as char)
                .collect();
            line.push('\n');
            line
        })
        .collect()
}
