use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::format::{
    format_bytes, format_count, format_duration, format_interval, format_percent, md_row,
    text_table, Align,
};
use crate::metrics::Average;
use crate::report::ClassificationReport;
use crate::significance::Interval;

/// One model's line in a [`ComparisonTable`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// Model name.
    pub model: String,
    /// Dataset split.
    pub split: String,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// 95% Wilson interval of the accuracy (absent in tables saved before it was added, and for
    /// an empty split).
    pub accuracy_interval: Option<Interval>,
    /// Precision under the table's [`Average`].
    pub precision: f64,
    /// Recall under the table's [`Average`].
    pub recall: f64,
    /// F1 under the table's [`Average`].
    pub f1: f64,
    /// Parameter count, if known.
    pub parameters: Option<u64>,
    /// Weights file size, if saved.
    pub file_bytes: Option<u64>,
    /// Median latency per batch, if timed.
    #[serde(rename = "latency_median_ms", with = "opt_millis")]
    pub latency: Option<Duration>,
    /// Images per timed batch.
    pub batch_size: Option<usize>,
    /// Images per second at the median latency.
    pub throughput: Option<f64>,
    /// Peak resident memory of the evaluating process.
    pub peak_rss_bytes: Option<u64>,
}

impl ComparisonRow {
    /// The row summarising `report` under `average`.
    pub fn from_report(report: &ClassificationReport, average: Average) -> Self {
        let a = report.average(average);
        let e = &report.efficiency;
        Self {
            model: report.model.clone(),
            split: report.split.clone(),
            accuracy: report.accuracy,
            accuracy_interval: report.accuracy_interval(0.95).ok(),
            precision: a.precision,
            recall: a.recall,
            f1: a.f1,
            parameters: e.model_size.as_ref().map(|s| s.parameters),
            file_bytes: e.model_size.as_ref().and_then(|s| s.file_bytes),
            latency: e.latency.as_ref().map(|l| l.median),
            batch_size: e.latency.as_ref().map(|l| l.batch_size),
            throughput: e.latency.as_ref().map(|l| l.throughput),
            peak_rss_bytes: e.peak_rss_bytes,
        }
    }
}

/// Several reports side by side, as the paper's results table: model, accuracy and its 95%
/// Wilson interval, precision, recall, F1, parameters, file size, median latency, batch size,
/// throughput and peak memory.
///
/// Precision, recall and F1 use one [`Average`] for every row (macro by default, the usual
/// choice for balanced MNIST). Missing figures print as `-`. A `split` column is added only
/// when the rows do not all come from the same split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ComparisonTable {
    /// Average used for precision, recall and F1.
    pub average: Average,
    /// Rows in display order.
    pub rows: Vec<ComparisonRow>,
}

impl ComparisonTable {
    /// An empty table using `average`.
    pub fn new(average: Average) -> Self {
        Self {
            average,
            rows: Vec::new(),
        }
    }

    /// A table of `reports`, in order.
    pub fn from_reports<'a>(
        reports: impl IntoIterator<Item = &'a ClassificationReport>,
        average: Average,
    ) -> Self {
        let mut t = Self::new(average);
        for r in reports {
            t.push(r);
        }
        t
    }

    /// Appends the row of `report`.
    pub fn push(&mut self, report: &ClassificationReport) {
        self.rows
            .push(ComparisonRow::from_report(report, self.average));
    }

    /// Orders rows by decreasing accuracy (stable: equal accuracies keep their order).
    pub fn sort_by_accuracy(&mut self) {
        self.rows.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
    }

    fn show_split(&self) -> bool {
        self.rows
            .first()
            .is_some_and(|first| self.rows.iter().any(|r| r.split != first.split))
    }

    fn headers(&self) -> Vec<String> {
        let avg = match self.average {
            Average::Macro => "macro",
            Average::Weighted => "weighted",
            Average::Micro => "micro",
        };
        let mut h = vec!["model".to_string()];
        if self.show_split() {
            h.push("split".into());
        }
        h.extend([
            "accuracy".to_string(),
            "95% interval".to_string(),
            format!("precision ({avg})"),
            format!("recall ({avg})"),
            format!("F1 ({avg})"),
            "params".into(),
            "size".into(),
            "latency (median)".into(),
            "batch".into(),
            "throughput".into(),
            "peak RSS".into(),
        ]);
        h
    }

    fn cells(&self, r: &ComparisonRow) -> Vec<String> {
        let dash = || "-".to_string();
        let mut c = vec![r.model.clone()];
        if self.show_split() {
            c.push(r.split.clone());
        }
        c.extend([
            format_percent(r.accuracy),
            r.accuracy_interval.map_or_else(dash, format_interval),
            format!("{:.4}", r.precision),
            format!("{:.4}", r.recall),
            format!("{:.4}", r.f1),
            r.parameters.map_or_else(dash, format_count),
            r.file_bytes.map_or_else(dash, format_bytes),
            r.latency.map_or_else(dash, format_duration),
            r.batch_size.map_or_else(dash, |b| b.to_string()),
            r.throughput.map_or_else(dash, |t| {
                format!("{} img/s", format_count(t.round() as u64))
            }),
            r.peak_rss_bytes.map_or_else(dash, format_bytes),
        ]);
        c
    }

    /// An aligned plain-text table (names left-aligned, numbers right-aligned).
    pub fn render_text(&self) -> String {
        let headers = self.headers();
        let rows: Vec<Vec<String>> = self.rows.iter().map(|r| self.cells(r)).collect();
        let text_cols = if self.show_split() { 2 } else { 1 };
        let align: Vec<Align> = (0..headers.len())
            .map(|i| {
                if i < text_cols {
                    Align::Left
                } else {
                    Align::Right
                }
            })
            .collect();
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        text_table(&refs, &rows, &align)
    }

    /// A GitHub-flavoured Markdown table.
    pub fn render_markdown(&self) -> String {
        let headers = self.headers();
        let text_cols = if self.show_split() { 2 } else { 1 };
        let sep: Vec<&str> = (0..headers.len())
            .map(|i| if i < text_cols { "---" } else { "---:" })
            .collect();
        let mut out = md_row(&headers);
        out.push_str(&md_row(&sep));
        for r in &self.rows {
            out.push_str(&md_row(&self.cells(r)));
        }
        out
    }
}

/// Optional durations as float milliseconds (or null) in JSON.
mod opt_millis {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|ms| Duration::try_from_secs_f64(ms / 1e3).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confusion::ConfusionMatrix;
    use crate::efficiency::{Efficiency, LatencyStats, ModelSize};
    use crate::metrics::MetricsConfig;

    fn report(model: &str, split: &str, preds: &[u8], eff: Efficiency) -> ClassificationReport {
        let labels = [0u8, 1, 2, 0, 1, 2, 0, 1];
        let m = ConfusionMatrix::from_predictions(3, preds, &labels).unwrap();
        ClassificationReport::new(model, split, &m, &MetricsConfig::default())
            .unwrap()
            .with_efficiency(eff)
    }

    fn reports() -> Vec<ClassificationReport> {
        let eff = Efficiency {
            latency: Some(
                LatencyStats::from_durations(&[Duration::from_micros(1500)], 64).unwrap(),
            ),
            model_size: Some(ModelSize {
                parameters: 1_199_882,
                file_bytes: Some(4_800_000),
            }),
            peak_rss_bytes: Some(200 << 20),
            device: None,
        };
        vec![
            report(
                "mlp|small",
                "test",
                &[0, 1, 2, 0, 1, 2, 0, 2],
                Efficiency::default(),
            ),
            report("lenet-5", "test", &[0, 1, 2, 0, 1, 2, 0, 1], eff),
        ]
    }

    #[test]
    fn text_table_aligns_and_fills_missing_with_dashes() {
        let mut t = ComparisonTable::from_reports(&reports(), Average::Macro);
        t.sort_by_accuracy();
        let expected = "\
model      accuracy    95% interval  precision (macro)  recall (macro)  F1 (macro)     params      size  latency (median)  batch    throughput    peak RSS
lenet-5     100.00%  67.56%-100.00%             1.0000          1.0000      1.0000  1,199,882  4.58 MiB          1.500 ms     64  42,667 img/s  200.00 MiB
mlp|small    87.50%   52.91%-97.76%             0.8889          0.8889      0.8667          -         -                 -      -             -           -
";
        assert_eq!(t.render_text(), expected);
    }

    #[test]
    fn markdown_escapes_names_and_adds_split_when_mixed() {
        let mut rs = reports();
        rs[1].split = "validation".into();
        let t = ComparisonTable::from_reports(&rs, Average::Weighted);
        let md = t.render_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "| model | split | accuracy | 95% interval | precision (weighted) | recall (weighted) | F1 (weighted) | params | size | latency (median) | batch | throughput | peak RSS |"
        );
        assert_eq!(
            lines[1],
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        assert!(lines[2].starts_with(
            "| mlp\\|small | test | 87.50% | 52.91%-97.76% | 0.9167 | 0.8750 | 0.8750 | - |"
        ));
        assert!(lines[3].starts_with("| lenet-5 | validation | 100.00% |"));
    }

    #[test]
    fn rows_round_trip_through_json() {
        let t = ComparisonTable::from_reports(&reports(), Average::Macro);
        let json = serde_json::to_string(&t).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["rows"][1]["latency_median_ms"], 1.5);
        assert!(v["rows"][0]["latency_median_ms"].is_null());
        let back: ComparisonTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn tables_saved_without_intervals_still_load() {
        let t = ComparisonTable::from_reports(&reports(), Average::Macro);
        let mut v = serde_json::to_value(&t).unwrap();
        assert!(v["rows"][0]["accuracy_interval"]["low"].is_number());
        for row in v["rows"].as_array_mut().unwrap() {
            row.as_object_mut().unwrap().remove("accuracy_interval");
        }
        let back: ComparisonTable = serde_json::from_value(v).unwrap();
        assert!(back.rows.iter().all(|r| r.accuracy_interval.is_none()));
        // lenet-5's row has every other figure, so its dash is the interval's.
        let text = back.render_text();
        let lenet: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(lenet[..4], ["lenet-5", "100.00%", "-", "1.0000"], "{text}");
    }
}
