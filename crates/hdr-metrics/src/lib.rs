//! Classification metrics and evaluation reports, independent of any ML framework.
//!
//! Everything takes plain predictions, labels and (optionally) scores, so any model can be
//! evaluated the same way:
//!
//! - [`ConfusionMatrix`]: counts over `k` classes, built batch by batch and mergeable for
//!   parallel evaluation; accuracy, [`most_confused`](ConfusionMatrix::most_confused) pairs,
//!   text and Markdown grids.
//! - [`Metrics`] (from [`ConfusionMatrix::metrics`]): per-class precision / recall / F1 /
//!   support and their macro, weighted and micro averages, with sklearn's conventions
//!   ([`ZeroDivision`], [`ClassSelection`]).
//! - [`Evaluator`]: the accumulator an evaluation loop feeds with labels and scores; it tracks
//!   top-k accuracy ([`top_k_accuracy`]) and the [`Misclassified`] samples.
//! - [`ClassificationReport`]: all of the above for one model and split, rendered as an
//!   sklearn-style text table, as Markdown, or as JSON.
//! - Efficiency: [`LatencyStats`] (median, p90, p99, throughput), [`ModelSize`], and the
//!   process's OS-measured memory ([`peak_rss_bytes`], [`current_rss_bytes`]), gathered in
//!   [`Efficiency`].
//! - [`ComparisonTable`]: several reports side by side, as a results table (each accuracy with
//!   its 95% Wilson interval);
//!   [`splice_section`] puts a generated table into a hand-written Markdown page.
//! - Significance: [`wilson_interval`] (how far a test-set accuracy can be from the model's
//!   true one) and [`McNemar`]'s exact test (whether two models evaluated on the same samples
//!   really differ), with [`holm`]'s correction when several tests are read together.
//!
//! ```
//! use hdr_metrics::{Evaluator, EvaluatorConfig, MetricsConfig};
//!
//! # fn main() -> hdr_metrics::Result<()> {
//! let mut eval = Evaluator::new(&EvaluatorConfig {
//!     num_classes: 3,
//!     top_k: vec![2],
//!     ..EvaluatorConfig::default()
//! })?;
//! // One batch of two samples: labels and row-major scores [2, 3].
//! eval.add_batch(&[2u32, 0], &[0.1, 0.2, 0.7, 0.3, 0.6, 0.1])?;
//! let report = eval.report("tiny-mlp", "test", &MetricsConfig::default())?;
//! assert_eq!(report.accuracy, 0.5);
//! assert_eq!(eval.misclassified_indices(), vec![1]);
//! println!("{}", report.render_text());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod compare;
mod confusion;
mod efficiency;
mod error;
mod evaluator;
mod format;
mod label;
mod markdown;
mod metrics;
mod report;
mod significance;
mod topk;

pub use compare::{ComparisonRow, ComparisonTable};
pub use confusion::ConfusionMatrix;
pub use efficiency::{
    current_rss_bytes, machine_description, peak_rss_bytes, Efficiency, LatencyStats,
    MeasureConfig, ModelSize,
};
pub use error::{MetricsError, Result};
pub use evaluator::{Evaluator, EvaluatorConfig, Misclassified};
pub use format::{format_bytes, format_count, format_duration, format_interval, format_percent};
pub use label::ClassLabel;
pub use markdown::splice_section;
pub use metrics::{
    accuracy, Average, AverageMetrics, ClassMetrics, ClassSelection, Metrics, MetricsConfig,
    ZeroDivision,
};
pub use report::{ClassificationReport, RenderOptions};
pub use significance::{format_p_value, holm, wilson_interval, Interval, McNemar};
pub use topk::{argmax_rows, top_k_accuracy, TopKAccuracy};
