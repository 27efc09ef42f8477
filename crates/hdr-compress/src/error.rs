use std::path::PathBuf;

/// Errors from quantizing, running, saving, loading and pruning models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompressError {
    /// A setting makes no sense.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidConfig {
        /// Setting.
        name: &'static str,
        /// Value given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// The graph holds something the integer path cannot run.
    #[error("graph node {node}: {reason}")]
    Unsupported {
        /// Index of the node in the graph (or of the op in a quantized model).
        node: usize,
        /// What is not supported.
        reason: String,
    },

    /// Structured pruning met a graph whose values do not flow in a single chain.
    #[error("structured pruning supports sequential graphs only: node {node} is {what}")]
    NotSequential {
        /// Index of the node in the graph.
        node: usize,
        /// What it is, in words (e.g. "a residual addition").
        what: String,
    },

    /// A parameter the graph names is not in the variable map.
    #[error("no parameter {name:?} in the variable map")]
    MissingParameter {
        /// Its name.
        name: String,
    },

    /// A parameter has a shape the graph cannot use.
    #[error("parameter {name:?} has shape {found:?}, expected {expected}")]
    BadParameter {
        /// Its name.
        name: String,
        /// What was expected, in words.
        expected: String,
        /// Shape found.
        found: Vec<usize>,
    },

    /// An input tensor has the wrong shape or type.
    #[error("expected input {expected}, got shape {found:?}")]
    BadInput {
        /// What was expected, in words.
        expected: String,
        /// Shape found.
        found: Vec<usize>,
    },

    /// A quantized-model file is malformed.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
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

    /// A shipped int8 model that lives in the repository only (too large for the crates.io
    /// package) was asked for outside a checkout of it.
    #[error(
        "the int8 {name} is not in the crates.io package; it is in the repository \
         (crates/hdr-compress/weights/{name}-int8.safetensors, expected at {}): depend on \
         hdr-compress from git or a checkout, or make it with `cargo run --release --example \
         quantize -- {name}`",
        .path.display()
    )]
    PretrainedNotPackaged {
        /// The model asked for.
        name: String,
        /// Where the file was looked for.
        path: PathBuf,
    },

    /// An error from the model zoo.
    #[error(transparent)]
    Model(#[from] hdr_models::ModelError),

    /// An error from training (fine-tuning after pruning).
    #[error(transparent)]
    Train(#[from] hdr_train::TrainError),

    /// An error from the dataset (fine-tuning and evaluation batches).
    #[error(transparent)]
    Data(#[from] hdr_data::DataError),

    /// An error from measuring (latency statistics).
    #[error(transparent)]
    Metrics(#[from] hdr_metrics::MetricsError),

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`CompressError`].
pub type Result<T> = std::result::Result<T, CompressError>;
