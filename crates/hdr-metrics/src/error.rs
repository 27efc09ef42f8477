use std::path::PathBuf;

/// Everything that can be wrong with the input of a metric, a report or a measurement.
///
/// Variants carry the offending values (and the position of the first bad sample) so that the
/// message alone is enough to find the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Predictions and labels do not have the same length.
    #[error("{predictions} prediction(s) but {labels} label(s)")]
    LengthMismatch {
        /// Number of predictions.
        predictions: usize,
        /// Number of labels.
        labels: usize,
    },

    /// A true label is not a class index below `num_classes`.
    #[error("label {label} at index {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Position of the first bad label in the batch.
        index: usize,
        /// Its value.
        label: u64,
        /// Number of classes.
        num_classes: usize,
    },

    /// A prediction is not a class index below `num_classes`.
    #[error("prediction {prediction} at index {index} is out of range for {num_classes} classes")]
    PredictionOutOfRange {
        /// Position of the first bad prediction in the batch.
        index: usize,
        /// Its value.
        prediction: u64,
        /// Number of classes.
        num_classes: usize,
    },

    /// There is nothing to compute a metric from (no samples, or no timings).
    #[error("empty input: {what}")]
    Empty {
        /// What was empty.
        what: &'static str,
    },

    /// A score matrix does not have `labels.len() * num_classes` entries.
    #[error(
        "scores hold {scores} value(s), expected {labels} label(s) x {num_classes} classes = {}",
        .labels * .num_classes
    )]
    ScoresShape {
        /// Number of scores given.
        scores: usize,
        /// Number of labels (rows).
        labels: usize,
        /// Number of classes (columns).
        num_classes: usize,
    },

    /// A score is NaN, so classes cannot be ranked.
    #[error("score of class {class} for sample {index} is NaN")]
    NanScore {
        /// Sample (row) in the batch.
        index: usize,
        /// Class (column).
        class: usize,
    },

    /// Two confusion matrices or evaluators over different class counts were combined.
    #[error("cannot combine results over {left} and {right} classes")]
    ClassCountMismatch {
        /// Class count of the receiver.
        left: usize,
        /// Class count of the argument.
        right: usize,
    },

    /// Top-k accuracy was asked for samples that came without scores.
    #[error("top-k accuracy needs scores for every sample: {scored} of {total} had them")]
    MissingScores {
        /// Samples that came with scores.
        scored: u64,
        /// All samples.
        total: u64,
    },

    /// A parameter is out of its valid range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Value given.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The operating system does not report the requested memory figure.
    #[error("memory measurement unavailable: {reason}")]
    MemoryUnavailable {
        /// Why (platform not supported, call failed, unexpected file format).
        reason: String,
    },

    /// A report could not be written to or read from JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl MetricsError {
    pub(crate) fn invalid(name: &'static str, value: impl ToString, reason: &'static str) -> Self {
        Self::InvalidParameter {
            name,
            value: value.to_string(),
            reason,
        }
    }
}

/// `Result` with [`MetricsError`].
pub type Result<T> = std::result::Result<T, MetricsError>;
