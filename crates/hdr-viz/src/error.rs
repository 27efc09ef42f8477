use std::path::PathBuf;

/// Errors from drawing and explaining.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VizError {
    /// The input does not fit what the picture needs.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was given.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The model has no convolutional feature maps (e.g. an MLP), so Grad-CAM or feature-map
    /// grids do not apply.
    #[error("{model} has no convolutional feature maps")]
    NoFeatureMaps {
        /// Model family.
        model: String,
    },

    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Encoding a PNG failed.
    #[error("{path}: cannot encode PNG: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: image::ImageError,
    },

    /// From the metrics (e.g. an interval of an empty evaluation).
    #[error(transparent)]
    Metrics(#[from] hdr_metrics::MetricsError),

    /// From the model zoo.
    #[error(transparent)]
    Model(#[from] hdr_models::ModelError),

    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`VizError`].
pub type Result<T> = std::result::Result<T, VizError>;
