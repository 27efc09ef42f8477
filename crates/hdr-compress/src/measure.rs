//! Compressed variants side by side: file size, non-zero parameters, MACs, test accuracy,
//! batch-1 latency and batch-256 throughput, as a text or Markdown table.

use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use hdr_data::{BatchConfig, Dataset, Normalize};
use hdr_metrics::{format_bytes, format_count, format_duration, LatencyStats, MeasureConfig};
use hdr_models::LoadedModel;

use crate::error::{CompressError, Result};
use crate::kernels::Isa;
use crate::model::QuantizedModel;
use crate::structured::StructuredModel;

/// What the comparison needs of a model variant.
pub trait Inference {
    /// Evaluation-mode logits.
    ///
    /// # Shapes
    /// `[batch, 1, 28, 28] -> [batch, 10]`.
    fn logits(&self, x: &Tensor) -> Result<Tensor>;

    /// Stored weights and biases that are not zero (batch-norm scale and shift included,
    /// running statistics not; int8 codes and biases for quantized models).
    fn nonzero_parameters(&self) -> Result<u64>;

    /// Multiply-accumulates per image that inference executes (convolutions and linear layers;
    /// zeros in a dense weight still cost).
    fn macs(&self) -> Result<u64>;
}

fn nonzero(t: &Tensor) -> Result<u64> {
    Ok(t.ne(0f32)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as u64)
}

impl Inference for LoadedModel {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.model.forward(x)?)
    }

    fn nonzero_parameters(&self) -> Result<u64> {
        let mut n = 0;
        for (name, t) in crate::fold::read_params(&self.vars)? {
            if !(name.ends_with(".running_mean") || name.ends_with(".running_var")) {
                n += nonzero(&t)?;
            }
        }
        Ok(n)
    }

    fn macs(&self) -> Result<u64> {
        crate::structured::graph_macs(&self.model.graph(), &self.vars)
    }
}

impl Inference for StructuredModel {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)
    }

    fn nonzero_parameters(&self) -> Result<u64> {
        StructuredModel::nonzero_parameters(self)
    }

    fn macs(&self) -> Result<u64> {
        StructuredModel::macs(self)
    }
}

impl Inference for QuantizedModel {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)
    }

    fn nonzero_parameters(&self) -> Result<u64> {
        Ok(QuantizedModel::nonzero_parameters(self))
    }

    fn macs(&self) -> Result<u64> {
        QuantizedModel::macs(self)
    }
}

/// How [`measure`] times and evaluates.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureSettings {
    /// Untimed runs before each timing.
    pub warmup: usize,
    /// Timed batch-1 runs.
    pub b1_iterations: usize,
    /// Timed batch-256 runs.
    pub b256_iterations: usize,
    /// Input normalisation (the zoo's models use `[0, 1]`).
    pub normalize: Normalize,
}

impl Default for MeasureSettings {
    /// 5 warm-up runs, 200 timed runs at batch 1 and 20 at batch 256, `[0, 1]` inputs.
    fn default() -> Self {
        Self {
            warmup: 5,
            b1_iterations: 200,
            b256_iterations: 20,
            normalize: Normalize::UnitRange,
        }
    }
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantReport {
    /// Variant name, e.g. `int8`.
    pub variant: String,
    /// Bytes of the saved file.
    pub file_bytes: u64,
    /// See [`Inference::nonzero_parameters`].
    pub nonzero_parameters: u64,
    /// See [`Inference::macs`].
    pub macs: u64,
    /// Top-1 accuracy on the evaluated split.
    pub accuracy: f64,
    /// Batch-1 timings.
    pub latency_b1: LatencyStats,
    /// Batch-256 timings (throughput in images per second at the median).
    pub batch256: LatencyStats,
}

/// Top-1 accuracy of `model` on `data` (batches of 256, in order).
pub fn accuracy(model: &dyn Inference, data: &Dataset, normalize: Normalize) -> Result<f64> {
    let cfg = BatchConfig {
        normalize,
        ..BatchConfig::eval(256)
    };
    let (mut right, mut n) = (0usize, 0usize);
    for batch in data.batches(&cfg, 0, &Device::Cpu)? {
        let batch = batch?;
        let pred = model.logits(&batch.images)?.argmax(1)?;
        right += pred
            .eq(&batch.labels)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        n += batch.indices.len();
    }
    if n == 0 {
        return Err(CompressError::InvalidConfig {
            name: "data",
            value: "0 samples".into(),
            reason: "nothing to evaluate",
        });
    }
    Ok(right as f64 / n as f64)
}

/// `batch` images of `data` (cycling when it holds fewer) as one input tensor.
fn images(data: &Dataset, batch: usize, normalize: Normalize) -> Result<Tensor> {
    if data.is_empty() {
        return Err(CompressError::InvalidConfig {
            name: "data",
            value: "0 samples".into(),
            reason: "no images to time inference on",
        });
    }
    let idx: Vec<usize> = (0..batch).map(|i| i % data.len()).collect();
    let cfg = BatchConfig {
        normalize,
        ..BatchConfig::eval(batch)
    };
    let first = data.subset(&idx)?.batches(&cfg, 0, &Device::Cpu)?.next();
    match first {
        Some(b) => Ok(b?.images),
        None => Err(CompressError::InvalidConfig {
            name: "data",
            value: "0 samples".into(),
            reason: "no images to time inference on",
        }),
    }
}

/// Measures one variant: the size of its saved `file`, its parameters and MACs, its accuracy
/// on `test`, and its latency at batch 1 and 256 (on images of `test`).
pub fn measure(
    variant: &str,
    model: &dyn Inference,
    file: &Path,
    test: &Dataset,
    cfg: &MeasureSettings,
) -> Result<VariantReport> {
    let file_bytes = std::fs::metadata(file)
        .map_err(|source| CompressError::Io {
            path: file.into(),
            source,
        })?
        .len();
    let time = |batch: usize, iterations: usize| -> Result<LatencyStats> {
        let x = images(test, batch, cfg.normalize)?;
        LatencyStats::measure(
            &MeasureConfig {
                warmup: cfg.warmup,
                iterations,
                batch_size: batch,
            },
            || model.logits(&x),
        )
    };
    Ok(VariantReport {
        variant: variant.to_string(),
        file_bytes,
        nonzero_parameters: model.nonzero_parameters()?,
        macs: model.macs()?,
        accuracy: accuracy(model, test, cfg.normalize)?,
        latency_b1: time(1, cfg.b1_iterations)?,
        batch256: time(256, cfg.b256_iterations)?,
    })
}

const HEADERS: [&str; 9] = [
    "variant",
    "file",
    "non-zero params",
    "MACs",
    "test accuracy",
    "b1 latency",
    "b1 speed-up",
    "b256 images/s",
    "b256 speed-up",
];

/// The cells of every row; speed-ups are relative to the first row (the baseline).
fn cells(rows: &[VariantReport]) -> Vec<[String; 9]> {
    let base = rows.first();
    rows.iter()
        .map(|r| {
            let up = |base: Option<f64>, this: f64| match base {
                Some(b) if b > 0.0 => format!("{:.2}x", this / b),
                _ => "-".into(),
            };
            [
                r.variant.clone(),
                format_bytes(r.file_bytes),
                format_count(r.nonzero_parameters),
                format_count(r.macs),
                format!("{:.2}%", 100.0 * r.accuracy),
                format_duration(r.latency_b1.median),
                up(
                    base.map(|b| b.latency_b1.throughput),
                    r.latency_b1.throughput,
                ),
                format!("{:.0}", r.batch256.throughput),
                up(base.map(|b| b.batch256.throughput), r.batch256.throughput),
            ]
        })
        .collect()
}

/// An aligned plain-text table (the variant left-aligned, numbers right-aligned).
pub fn render_text(rows: &[VariantReport]) -> String {
    text_table(&HEADERS, &cells(rows))
}

/// The table in GitHub Markdown.
pub fn render_markdown(rows: &[VariantReport]) -> String {
    markdown_table(&HEADERS, &cells(rows))
}

/// `headers` and `body` aligned in columns: the first left-aligned, the others right-aligned.
fn text_table<const N: usize>(headers: &[&str; N], body: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let parts: Vec<String> = cells
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                let pad = " ".repeat(w.saturating_sub(c.chars().count()));
                if i == 0 {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(&mut headers.iter().copied());
    for row in body {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `headers` and `body` as a GitHub Markdown table, numbers right-aligned.
fn markdown_table<const N: usize>(headers: &[&str; N], body: &[[String; N]]) -> String {
    let row = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let cells: Vec<String> = cells.map(|c| c.replace('|', "\\|")).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = row(&mut headers.iter().copied());
    out.push_str("|---|");
    out.push_str(&"---:|".repeat(N - 1));
    out.push('\n');
    for r in body {
        out.push_str(&row(&mut r.iter().map(String::as_str)));
    }
    out
}

/// One model's f32 and int8 variants, for [`int8_summary_text`] and
/// [`int8_summary_markdown`].
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Comparison {
    /// The model's name.
    pub model: String,
    /// Its f32 variant, measured by [`measure`].
    pub f32: VariantReport,
    /// Its int8 variant, measured the same way.
    pub int8: VariantReport,
}

const INT8_HEADERS: [&str; 10] = [
    "model",
    "f32 accuracy",
    "int8 accuracy",
    "change (points)",
    "f32 file",
    "int8 file",
    "smaller",
    "b1 latency int8",
    "b1 speed-up",
    "b256 speed-up",
];

/// The cells of the int8 summary; sizes and speed-ups are int8 against the model's own f32.
fn int8_cells(rows: &[Int8Comparison]) -> Vec<[String; 10]> {
    let ratio = |num: f64, den: f64| {
        if den > 0.0 {
            format!("{:.2}x", num / den)
        } else {
            "-".into()
        }
    };
    rows.iter()
        .map(|r| {
            [
                r.model.clone(),
                format!("{:.2}%", 100.0 * r.f32.accuracy),
                format!("{:.2}%", 100.0 * r.int8.accuracy),
                format!("{:+.2}", 100.0 * (r.int8.accuracy - r.f32.accuracy)),
                format_bytes(r.f32.file_bytes),
                format_bytes(r.int8.file_bytes),
                ratio(r.f32.file_bytes as f64, r.int8.file_bytes as f64),
                format_duration(r.int8.latency_b1.median),
                ratio(r.int8.latency_b1.throughput, r.f32.latency_b1.throughput),
                ratio(r.int8.batch256.throughput, r.f32.batch256.throughput),
            ]
        })
        .collect()
}

/// Several models quantized to int8, one row each, as an aligned text table.
pub fn int8_summary_text(rows: &[Int8Comparison]) -> String {
    text_table(&INT8_HEADERS, &int8_cells(rows))
}

/// Several models quantized to int8, one row each, as a GitHub Markdown table.
pub fn int8_summary_markdown(rows: &[Int8Comparison]) -> String {
    markdown_table(&INT8_HEADERS, &int8_cells(rows))
}

/// The machine in one line ([`hdr_metrics::machine_description`]) and the integer instruction
/// set the int8 kernels use.
pub fn machine_description() -> String {
    format!(
        "{}, integer kernels {:?}",
        hdr_metrics::machine_description(),
        Isa::detect()
    )
}

/// A results section: what was run, where and when, and the table ([`write_results`] puts it
/// into a page).
pub fn results_markdown(
    model: &str,
    rows: &[VariantReport],
    command: &str,
    elapsed: Duration,
) -> String {
    let (b1, b256) = rows
        .first()
        .map_or((0, 0), |r| (r.latency_b1.runs, r.batch256.runs));
    format!(
        "Compression of `{model}`: MNIST test split, CPU only. Non-zero parameters count \
         weights and biases; MACs are those inference executes per image (zeros in a dense \
         weight still cost). Latency is the median of {b1} batch-1 runs; images/s is batch 256 \
         at the median of {b256} runs; speed-ups are against the first row.\n\n\
         - command: `{command}`\n- date: {date}\n- machine: {machine}\n- whole run: {mins:.1} min\n\n\
         {table}",
        date = hdr_train::utc_date_today(),
        machine = machine_description(),
        mins = elapsed.as_secs_f64() / 60.0,
        table = render_markdown(rows),
    )
}

/// A results section for several models quantized to int8 ([`int8_summary_markdown`]), with
/// what was run, where and when; `hdr_train::write_results_section` puts it into a page.
pub fn int8_results_markdown(rows: &[Int8Comparison], command: &str, elapsed: Duration) -> String {
    let (b1, b256) = rows
        .first()
        .map_or((0, 0), |r| (r.int8.latency_b1.runs, r.int8.batch256.runs));
    format!(
        "Post-training static int8 quantization (per-channel weights, activations calibrated on \
         512 training images) of each model, against its own f32 version on the MNIST test \
         split, CPU only, our kernels for both. Latency is the median of {b1} batch-1 runs; the \
         batch-256 speed-up compares images/s at the median of {b256} runs.\n\n\
         - command: `{command}`\n- date: {date}\n- machine: {machine}\n- whole run: {mins:.1} min\n\n\
         {table}",
        date = hdr_train::utc_date_today(),
        machine = machine_description(),
        mins = elapsed.as_secs_f64() / 60.0,
        table = int8_summary_markdown(rows),
    )
}

/// Writes `markdown` (e.g. from [`results_markdown`]) into the section `compress-<model>` of
/// the Markdown page `path` ([`hdr_train::write_results_section`]): created if needed, the rest
/// kept, replaced atomically.
pub fn write_results(path: &Path, model: &str, markdown: &str) -> Result<()> {
    Ok(hdr_train::write_results_section(
        path,
        &format!("compress-{model}"),
        markdown,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, b1_ms: u64, b256_ms: u64) -> VariantReport {
        let stats = |ms: u64, batch: usize| {
            LatencyStats::from_durations(&[Duration::from_millis(ms)], batch).unwrap()
        };
        VariantReport {
            variant: variant.into(),
            file_bytes: 247_000,
            nonzero_parameters: 61_706,
            macs: 416_520,
            accuracy: 0.9912,
            latency_b1: stats(b1_ms, 1),
            batch256: stats(b256_ms, 256),
        }
    }

    #[test]
    fn tables_show_every_column_and_speed_ups_against_the_first_row() {
        let rows = [row("f32", 2, 100), row("int8|x", 1, 25)];
        let text = render_text(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("variant"));
        assert!(lines[1].contains("1.00x") && lines[1].contains("61,706"));
        assert!(lines[1].contains("416,520") && lines[1].contains("99.12%"));
        // Twice as fast at batch 1, four times at batch 256 (10,240 images/s).
        assert!(lines[2].contains("2.00x") && lines[2].contains("4.00x"));
        assert!(lines[2].contains("10240"));
        let md = render_markdown(&rows);
        let md_lines: Vec<&str> = md.lines().collect();
        assert_eq!(md_lines.len(), 4);
        assert_eq!(md_lines[1], "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        assert!(md_lines[3].starts_with("| int8\\|x |"));
        let page = results_markdown("lenet5", &rows, "compress lenet5", Duration::from_secs(90));
        assert!(page.contains("- command: `compress lenet5`"));
        assert!(page.contains("whole run: 1.5 min"));
        assert!(page.ends_with(&md));
    }

    #[test]
    fn int8_summary_compares_each_model_with_its_own_f32() {
        let mut int8 = row("int8", 1, 50);
        int8.file_bytes = 61_750;
        int8.accuracy = 0.9905;
        let rows = [Int8Comparison {
            model: "lenet5".into(),
            f32: row("f32", 4, 100),
            int8,
        }];
        let text = int8_summary_text(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("model"));
        for cell in ["lenet5", "99.12%", "99.05%", "-0.07", "4.00x", "2.00x"] {
            assert!(lines[1].contains(cell), "{cell} missing from {}", lines[1]);
        }
        let md = int8_summary_markdown(&rows);
        assert_eq!(md.lines().count(), 3);
        assert_eq!(
            md.lines().nth(1),
            Some("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        );
    }
}
