//! The crate's error type.

/// Errors returned by the public functions of this crate.
///
/// Shape and configuration problems are reported before any kernel runs, so a bad call never
/// panics or reads out of bounds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// A tensor has the wrong shape (rank, channel count, bias length...).
    #[error("{op}: expected shape {expected}, found {found:?}")]
    ShapeMismatch {
        /// The operation that rejected its input.
        op: &'static str,
        /// What was expected, in words (e.g. `"[b, c, h, w]"`).
        expected: String,
        /// The shape that was passed.
        found: Vec<usize>,
    },
    /// A configuration value is out of range (zero stride, kernel larger than the padded input...).
    #[error("{op}: invalid configuration: {reason}")]
    InvalidConfig {
        /// The operation that rejected its configuration.
        op: &'static str,
        /// Why the configuration is invalid.
        reason: String,
    },
    /// The tensors of one call do not share a dtype.
    #[error("{op}: dtype mismatch: {lhs:?} vs {rhs:?}")]
    DTypeMismatch {
        /// The operation that rejected its input.
        op: &'static str,
        /// The dtype of the first tensor.
        lhs: candle_core::DType,
        /// The dtype of the offending tensor.
        rhs: candle_core::DType,
    },
    /// An error raised by candle itself (allocation, device, fallback op...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, OpsError>;
