use std::path::PathBuf;

/// Errors from training and evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The loss became NaN or infinite: training stops instead of going on with broken weights.
    #[error("non-finite loss {loss} at epoch {epoch}, step {step}: lower the learning rate or enable gradient clipping")]
    NonFinite {
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// The loss value.
        loss: f32,
    },

    /// A setting is out of range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidConfig {
        /// Setting.
        name: &'static str,
        /// Value given.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// A checkpoint cannot be used.
    #[error("{path}: unusable checkpoint: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// Cached teacher logits do not fit the training set.
    #[error("teacher logits have shape {found:?}, the training set needs [{samples}, {classes}]")]
    TeacherShape {
        /// Shape of the cached logits.
        found: Vec<usize>,
        /// Training samples.
        samples: usize,
        /// Classes.
        classes: usize,
    },

    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// From the model zoo.
    #[error(transparent)]
    Model(#[from] hdr_models::ModelError),

    /// From the data pipeline.
    #[error(transparent)]
    Data(#[from] hdr_data::DataError),

    /// From the metrics.
    #[error(transparent)]
    Metrics(#[from] hdr_metrics::MetricsError),

    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
