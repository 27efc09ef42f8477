//! Every report format of hdr-metrics on two simulated 10-class classifiers (no model, no data
//! download): `cargo run --release -p hdr-metrics --example synthetic_report`.

use hdr_metrics::{
    peak_rss_bytes, Average, ClassificationReport, ComparisonTable, Efficiency, Evaluator,
    EvaluatorConfig, LatencyStats, MeasureConfig, MetricsConfig, ModelSize,
};

/// A tiny deterministic generator so the example prints the same numbers on every run.
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Evaluates a simulated classifier whose logit for the true class gets `margin` extra.
fn evaluate(name: &str, margin: f32, seed: u64) -> anyhow::Result<ClassificationReport> {
    const K: usize = 10;
    let mut rng = Lcg(seed);
    let mut eval = Evaluator::new(&EvaluatorConfig {
        top_k: vec![1, 3],
        ..EvaluatorConfig::default()
    })?;
    for batch in 0..40 {
        let labels: Vec<u32> = (0..250).map(|i| ((batch * 250 + i) % K) as u32).collect();
        let mut scores = vec![0f32; labels.len() * K];
        for (row, &label) in scores.chunks_mut(K).zip(&labels) {
            for s in row.iter_mut() {
                *s = rng.next_f32();
            }
            row[label as usize] += margin;
        }
        eval.add_batch(&labels, &scores)?;
    }

    // A stand-in workload to time: a 784x128 matrix-vector product per image.
    let weights: Vec<f32> = (0..784 * 128).map(|_| rng.next_f32()).collect();
    let input: Vec<f32> = (0..784).map(|_| rng.next_f32()).collect();
    let latency = LatencyStats::measure(
        &MeasureConfig {
            warmup: 2,
            iterations: 20,
            batch_size: 1,
        },
        || {
            let out: Vec<f32> = weights
                .chunks(784)
                .map(|w| w.iter().zip(&input).map(|(a, b)| a * b).sum())
                .collect();
            Ok::<_, anyhow::Error>(out)
        },
    )?;

    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    Ok(eval
        .report(name, "test", &MetricsConfig::default())?
        .with_efficiency(Efficiency {
            device: Some("cpu".into()),
            latency: Some(latency),
            // Any existing file stands in for the saved weights.
            model_size: Some(ModelSize::with_file(784 * 128 + 128, manifest)?),
            peak_rss_bytes: peak_rss_bytes().ok(),
        }))
}

fn main() -> anyhow::Result<()> {
    let weak = evaluate("weak-mlp", 0.45, 1)?;
    let strong = evaluate("strong-cnn", 0.9, 2)?;

    println!("{}", strong.render_text());
    println!("{}", weak.render_markdown());

    let mut table = ComparisonTable::from_reports([&weak, &strong], Average::Macro);
    table.sort_by_accuracy();
    println!("{}", table.render_text());
    println!("{}", table.render_markdown());

    let json = strong.to_json()?;
    println!("JSON report: {} bytes, starts with:", json.len());
    println!("{}", &json[..json.len().min(300)]);
    // A round trip keeps every number.
    assert_eq!(ClassificationReport::from_json(&json)?, strong);
    Ok(())
}
