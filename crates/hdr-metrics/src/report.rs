use serde::{Deserialize, Serialize};

use crate::confusion::ConfusionMatrix;
use crate::efficiency::Efficiency;
use crate::error::{MetricsError, Result};
use crate::format::{
    format_bytes, format_count, format_duration, format_interval, format_percent, md_row,
};
use crate::metrics::{
    Average, AverageMetrics, ClassMetrics, ClassSelection, MetricsConfig, ZeroDivision,
};
use crate::significance::{wilson_interval, Interval};
use crate::topk::TopKAccuracy;

/// How a report is rendered as text or Markdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Decimals of precision, recall and F1. sklearn's default is 2, which cannot tell 0.991
    /// from 0.994; at MNIST accuracy levels 4 is the useful default.
    pub digits: usize,
    /// Whether to append the confusion matrix.
    pub confusion_matrix: bool,
    /// How many of the most confused (true, predicted) pairs to list (0: none).
    pub most_confused: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            digits: 4,
            confusion_matrix: true,
            most_confused: 5,
        }
    }
}

/// A model's evaluation on one dataset split: accuracy, per-class and averaged
/// precision / recall / F1, optional top-k accuracies and efficiency figures, and the confusion
/// matrix they come from.
///
/// Rendered as sklearn-style text ([`render_text`](Self::render_text)), as GFM Markdown
/// ([`render_markdown`](Self::render_markdown)) or as JSON ([`to_json`](Self::to_json)). The
/// JSON object has the fields below under the same names; durations are in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClassificationReport {
    /// Model name.
    pub model: String,
    /// Dataset split (`"test"`, `"validation"`...).
    pub split: String,
    /// Number of samples evaluated.
    pub num_samples: u64,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Unweighted mean over classes.
    pub macro_avg: AverageMetrics,
    /// Support-weighted mean over classes.
    pub weighted_avg: AverageMetrics,
    /// From summed counts (equals accuracy).
    pub micro_avg: AverageMetrics,
    /// One entry per class covered (see [`ClassSelection`]).
    pub per_class: Vec<ClassMetrics>,
    /// Display names of all classes, indexed by class; empty means the class index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// Top-k accuracies, if scores were available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_k: Vec<TopKAccuracy>,
    /// Zero-division convention used.
    pub zero_division: ZeroDivision,
    /// Classes covered by `per_class` and the averages.
    pub classes: ClassSelection,
    /// Speed, size and memory, if measured.
    #[serde(default, skip_serializing_if = "Efficiency::is_empty")]
    pub efficiency: Efficiency,
    /// Counts the metrics were computed from.
    pub confusion_matrix: ConfusionMatrix,
}

impl ClassificationReport {
    /// The report of `model` on `split` from its confusion matrix.
    ///
    /// Error [`MetricsError::Empty`] if the matrix holds no sample.
    pub fn new(
        model: impl Into<String>,
        split: impl Into<String>,
        matrix: &ConfusionMatrix,
        config: &MetricsConfig,
    ) -> Result<Self> {
        let m = matrix.metrics(config)?;
        Ok(Self {
            model: model.into(),
            split: split.into(),
            num_samples: m.num_samples,
            accuracy: m.accuracy,
            macro_avg: m.macro_avg,
            weighted_avg: m.weighted_avg,
            micro_avg: m.micro_avg,
            per_class: m.per_class,
            class_names: Vec::new(),
            top_k: Vec::new(),
            zero_division: m.zero_division,
            classes: m.classes,
            efficiency: Efficiency::default(),
            confusion_matrix: matrix.clone(),
        })
    }

    /// Names the classes (one per class of the matrix) in the rendered tables.
    pub fn with_class_names<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let k = self.confusion_matrix.num_classes();
        if names.len() != k {
            return Err(MetricsError::invalid(
                "class_names.len()",
                names.len(),
                "must equal the number of classes",
            ));
        }
        self.class_names = names;
        Ok(self)
    }

    /// Attaches efficiency figures.
    pub fn with_efficiency(mut self, efficiency: Efficiency) -> Self {
        self.efficiency = efficiency;
        self
    }

    /// Attaches top-k accuracies (for instance from [`crate::top_k_accuracy`]).
    pub fn with_top_k(mut self, top_k: Vec<TopKAccuracy>) -> Self {
        self.top_k = top_k;
        self
    }

    /// The requested average.
    pub fn average(&self, average: Average) -> AverageMetrics {
        match average {
            Average::Macro => self.macro_avg,
            Average::Weighted => self.weighted_avg,
            Average::Micro => self.micro_avg,
        }
    }

    /// The display name of class `class`.
    pub fn class_name(&self, class: usize) -> String {
        self.class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string())
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parses a report written by [`to_json`](Self::to_json).
    pub fn from_json(json: &str) -> Result<Self> {
        Ok(serde_json::from_str(json)?)
    }

    /// The Wilson interval at level `confidence` of the accuracy: where the model's accuracy on
    /// the population the split was drawn from lies, given this finite sample
    /// ([`wilson_interval`](crate::wilson_interval)).
    pub fn accuracy_interval(&self, confidence: f64) -> Result<Interval> {
        wilson_interval(
            self.confusion_matrix.correct(),
            self.confusion_matrix.total(),
            confidence,
        )
    }

    /// The text report with [`RenderOptions::default`].
    pub fn render_text(&self) -> String {
        self.render_text_with(&RenderOptions::default())
    }

    /// A title line, then the per-class table laid out exactly as sklearn's
    /// `classification_report(..., digits=options.digits)`, then top-k, efficiency and
    /// (optionally) the confusion matrix and the most confused pairs.
    pub fn render_text_with(&self, options: &RenderOptions) -> String {
        let mut out = format!(
            "{} on {} ({} samples)\n\n",
            self.model,
            self.split,
            format_count(self.num_samples)
        );
        out.push_str(&self.sklearn_table(options.digits));
        if let Ok(i) = self.accuracy_interval(0.95) {
            out.push_str(&format!(
                "\naccuracy {}, 95% interval {} (Wilson)\n",
                format_percent(self.accuracy),
                format_interval(i)
            ));
        }
        if !self.top_k.is_empty() {
            for t in &self.top_k {
                out.push_str(&format!(
                    "top-{} accuracy: {}\n",
                    t.k,
                    format_percent(t.accuracy)
                ));
            }
        }
        let eff = efficiency_lines(&self.efficiency);
        if !eff.is_empty() {
            out.push('\n');
            for line in eff {
                out.push_str(&line);
                out.push('\n');
            }
        }
        let confused = self.confused_summary(options.most_confused);
        if !confused.is_empty() {
            out.push_str(&format!(
                "\nmost confused (true -> predicted): {confused}\n"
            ));
        }
        if options.confusion_matrix {
            out.push_str("\nconfusion matrix (rows: true class, columns: predicted class)\n");
            out.push_str(&self.confusion_matrix.render_text());
        }
        out
    }

    /// The per-class table in sklearn's exact layout.
    fn sklearn_table(&self, digits: usize) -> String {
        const LAST_HEADING: &str = "weighted avg";
        let names: Vec<String> = self
            .per_class
            .iter()
            .map(|c| self.class_name(c.class))
            .collect();
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(LAST_HEADING.len())
            .max(digits);
        let name = |s: &str| format!("{:>width$} ", s, width = width);
        let row = |label: &str, p: f64, r: f64, f: f64, support: u64| {
            format!(
                "{} {p:>9.digits$} {r:>9.digits$} {f:>9.digits$} {support:>9}\n",
                name(label)
            )
        };
        let mut out = format!(
            "{} {:>9} {:>9} {:>9} {:>9}\n\n",
            name(""),
            "precision",
            "recall",
            "f1-score",
            "support"
        );
        for (c, n) in self.per_class.iter().zip(&names) {
            out.push_str(&row(n, c.precision, c.recall, c.f1, c.support));
        }
        out.push('\n');
        let total: u64 = self.per_class.iter().map(|c| c.support).sum();
        out.push_str(&format!(
            "{} {:>9} {:>9} {:>9.digits$} {:>9}\n",
            name("accuracy"),
            "",
            "",
            self.accuracy,
            total
        ));
        let (m, w) = (self.macro_avg, self.weighted_avg);
        out.push_str(&row("macro avg", m.precision, m.recall, m.f1, total));
        out.push_str(&row(LAST_HEADING, w.precision, w.recall, w.f1, total));
        out
    }

    fn confused_summary(&self, n: usize) -> String {
        self.confusion_matrix
            .most_confused(n)
            .iter()
            .map(|&(t, p, c)| format!("{} -> {} ({c})", self.class_name(t), self.class_name(p)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The Markdown report with [`RenderOptions::default`].
    pub fn render_markdown(&self) -> String {
        self.render_markdown_with(&RenderOptions::default())
    }

    /// A `###` heading, a GFM table of per-class and averaged metrics, then top-k, efficiency
    /// and (optionally) the most confused pairs and the confusion matrix.
    pub fn render_markdown_with(&self, options: &RenderOptions) -> String {
        let d = options.digits;
        let f = |v: f64| format!("{v:.d$}");
        let mut out = format!(
            "### {} ({}, {} samples)\n\n",
            self.model,
            self.split,
            format_count(self.num_samples)
        );
        out.push_str(&md_row(&["class", "precision", "recall", "F1", "support"]));
        out.push_str(&md_row(&["---", "---:", "---:", "---:", "---:"]));
        for c in &self.per_class {
            out.push_str(&md_row(&[
                self.class_name(c.class),
                f(c.precision),
                f(c.recall),
                f(c.f1),
                c.support.to_string(),
            ]));
        }
        let total: u64 = self.per_class.iter().map(|c| c.support).sum();
        out.push_str(&md_row(&[
            "**accuracy**".to_string(),
            String::new(),
            String::new(),
            format!("**{}**", f(self.accuracy)),
            total.to_string(),
        ]));
        for (label, a) in [
            ("**macro avg**", self.macro_avg),
            ("**weighted avg**", self.weighted_avg),
        ] {
            out.push_str(&md_row(&[
                label.to_string(),
                f(a.precision),
                f(a.recall),
                f(a.f1),
                total.to_string(),
            ]));
        }
        if !self.top_k.is_empty() {
            let parts: Vec<String> = self
                .top_k
                .iter()
                .map(|t| format!("top-{} {}", t.k, format_percent(t.accuracy)))
                .collect();
            out.push_str(&format!("\nTop-k accuracy: {}.\n", parts.join(", ")));
        }
        let eff = efficiency_lines(&self.efficiency);
        if !eff.is_empty() {
            out.push('\n');
            for line in eff {
                out.push_str(&format!("- {line}\n"));
            }
        }
        let confused = self.confused_summary(options.most_confused);
        if !confused.is_empty() {
            out.push_str(&format!(
                "\nMost confused (true -> predicted): {confused}.\n"
            ));
        }
        if options.confusion_matrix {
            out.push_str("\nConfusion matrix (rows: true class, columns: predicted class):\n\n");
            out.push_str(&self.confusion_matrix.render_markdown());
        }
        out
    }
}

/// One line per efficiency figure present.
fn efficiency_lines(e: &Efficiency) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(size) = &e.model_size {
        let mut l = format!("parameters: {}", format_count(size.parameters));
        if let Some(b) = size.file_bytes {
            l.push_str(&format!(", file size: {}", format_bytes(b)));
        }
        lines.push(l);
    }
    if let Some(lat) = &e.latency {
        let device = e
            .device
            .as_deref()
            .map(|d| format!(" on {d}"))
            .unwrap_or_default();
        lines.push(format!(
            "latency{device} (batch {}, {} runs): median {}, p90 {}, p99 {}, min {}",
            lat.batch_size,
            lat.runs,
            format_duration(lat.median),
            format_duration(lat.p90),
            format_duration(lat.p99),
            format_duration(lat.min),
        ));
        lines.push(format!(
            "throughput: {} images/s",
            format_count(lat.throughput.round() as u64)
        ));
    } else if let Some(d) = &e.device {
        lines.push(format!("device: {d}"));
    }
    if let Some(rss) = e.peak_rss_bytes {
        lines.push(format!("peak resident memory: {}", format_bytes(rss)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::efficiency::{LatencyStats, ModelSize};

    fn report() -> ClassificationReport {
        let m = ConfusionMatrix::from_predictions(
            3,
            &[0u8, 0, 0, 2, 2, 1, 2],
            &[0u8, 0, 1, 1, 2, 2, 2],
        )
        .unwrap();
        ClassificationReport::new("mlp", "test", &m, &MetricsConfig::default()).unwrap()
    }

    #[test]
    fn text_table_has_sklearn_layout() {
        // sklearn.metrics.classification_report([0,0,1,1,2,2,2], [0,0,0,2,2,1,2]) (digits=2).
        let expected = "              precision    recall  f1-score   support

           0       0.67      1.00      0.80         2
           1       0.00      0.00      0.00         2
           2       0.67      0.67      0.67         3

    accuracy                           0.57         7
   macro avg       0.44      0.56      0.49         7
weighted avg       0.48      0.57      0.51         7
";
        let opts = RenderOptions {
            digits: 2,
            confusion_matrix: false,
            most_confused: 0,
        };
        let text = report().render_text_with(&opts);
        let interval = "accuracy 57.14%, 95% interval 25.05%-84.18% (Wilson)\n";
        assert_eq!(
            text,
            format!("mlp on test (7 samples)\n\n{expected}\n{interval}")
        );
    }

    #[test]
    fn text_includes_extras_when_present() {
        let eff = Efficiency {
            device: Some("cpu".into()),
            latency: Some(LatencyStats::from_durations(&[Duration::from_millis(2)], 4).unwrap()),
            model_size: Some(ModelSize {
                parameters: 235_146,
                file_bytes: Some(940_584),
            }),
            peak_rss_bytes: Some(3 << 20),
        };
        let r = report()
            .with_top_k(vec![TopKAccuracy {
                k: 2,
                accuracy: 6.0 / 7.0,
            }])
            .with_efficiency(eff)
            .with_class_names(["zero", "one", "two"])
            .unwrap();
        let text = r.render_text();
        assert!(text.contains("top-2 accuracy: 85.71%\n"), "{text}");
        // Wilson's formula in Python: 4 of 7 -> (0.250458, 0.841780).
        assert!(
            text.contains("accuracy 57.14%, 95% interval 25.05%-84.18% (Wilson)\n"),
            "{text}"
        );
        assert!(text.contains("parameters: 235,146, file size: 918.54 KiB\n"));
        assert!(text.contains("latency on cpu (batch 4, 1 runs): median 2.000 ms"));
        assert!(text.contains("throughput: 2,000 images/s\n"));
        assert!(text.contains("peak resident memory: 3.00 MiB\n"));
        assert!(text.contains(
            "most confused (true -> predicted): one -> zero (1), one -> two (1), two -> one (1)\n"
        ));
        assert!(text.contains("        zero     0.6667    1.0000    0.8000         2\n"));
        assert!(text.contains("true\\pred  0  1  2\n"));
        assert!(report().with_class_names(["a"]).is_err());
    }

    #[test]
    fn markdown_is_a_gfm_table() {
        let md = report().render_markdown_with(&RenderOptions {
            digits: 3,
            confusion_matrix: true,
            most_confused: 1,
        });
        let expected_head = "### mlp (test, 7 samples)

| class | precision | recall | F1 | support |
| --- | ---: | ---: | ---: | ---: |
| 0 | 0.667 | 1.000 | 0.800 | 2 |
| 1 | 0.000 | 0.000 | 0.000 | 2 |
| 2 | 0.667 | 0.667 | 0.667 | 3 |
| **accuracy** |  |  | **0.571** | 7 |
| **macro avg** | 0.444 | 0.556 | 0.489 | 7 |
| **weighted avg** | 0.476 | 0.571 | 0.514 | 7 |
";
        assert!(md.starts_with(expected_head), "{md}");
        assert!(md.contains("\nMost confused (true -> predicted): 1 -> 0 (1).\n"));
        assert!(md.contains("| true \\ pred | 0 | 1 | 2 |\n"));
    }

    #[test]
    fn json_has_the_documented_fields_and_round_trips() {
        let r = report().with_efficiency(Efficiency {
            peak_rss_bytes: Some(1024),
            ..Efficiency::default()
        });
        let json = r.to_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["model"], "mlp");
        assert_eq!(v["split"], "test");
        assert_eq!(v["num_samples"], 7);
        assert!((v["accuracy"].as_f64().unwrap() - 4.0 / 7.0).abs() < 1e-12);
        for avg in ["macro_avg", "weighted_avg", "micro_avg"] {
            for key in ["precision", "recall", "f1"] {
                assert!(v[avg][key].is_f64(), "{avg}.{key}");
            }
        }
        assert_eq!(v["per_class"][2]["support"], 3);
        assert_eq!(v["per_class"][0]["f1"], 0.8);
        assert_eq!(v["zero_division"], "zero");
        assert_eq!(v["efficiency"]["peak_rss_bytes"], 1024);
        assert!(v.get("top_k").is_none());
        assert_eq!(v["confusion_matrix"]["counts"][1][2], 1);
        assert_eq!(ClassificationReport::from_json(&json).unwrap(), r);
        assert!(matches!(
            ClassificationReport::from_json("{\"model\": 1}"),
            Err(MetricsError::Json(_))
        ));
        // Without efficiency figures the key is left out rather than filled with nulls.
        let bare: serde_json::Value = serde_json::from_str(&report().to_json().unwrap()).unwrap();
        assert!(bare.get("efficiency").is_none());
    }
}
