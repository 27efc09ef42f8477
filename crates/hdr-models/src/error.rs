use std::path::PathBuf;

/// Errors from building, running, saving and loading models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No model is registered under this name.
    #[error("unknown model {name:?}; known models: {}", .known.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: Vec<&'static str>,
    },

    /// Trained weights that live in the repository only (too large for the crates.io package)
    /// were asked for outside a checkout of it.
    #[error(
        "the trained weights of {name} are not in the crates.io package; they are in the \
         repository (crates/hdr-models/weights/{name}.safetensors, expected at {}): depend on \
         hdr-models from git or a checkout, or train them with `cargo run --release --example \
         compare`",
        .path.display()
    )]
    PretrainedNotPackaged {
        /// The model asked for.
        name: String,
        /// Where the file was looked for.
        path: PathBuf,
    },

    /// A configuration value makes no sense.
    #[error("invalid {model} configuration: {reason}")]
    InvalidConfig {
        /// Model family.
        model: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// The input tensor does not have the shape the model expects.
    #[error("{model} expects input [batch, {channels}, {height}, {width}], got {found:?}")]
    BadInput {
        /// Model family.
        model: &'static str,
        /// Expected channels.
        channels: usize,
        /// Expected height.
        height: usize,
        /// Expected width.
        width: usize,
        /// Shape found.
        found: Vec<usize>,
    },

    /// A weight file's tensor does not fit the model built from its configuration.
    #[error("{path}: tensor {tensor} has shape {found:?}, the model needs {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Shape the model needs.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },

    /// A tensor the model needs is not in the file.
    #[error("{path}: tensor {tensor} is missing")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
    },

    /// The file has a tensor the model does not use.
    #[error("{path}: unexpected tensor {tensor} (not a parameter of {model})")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Model name from the metadata.
        model: String,
    },

    /// The file's metadata does not say which model it holds, or says it badly.
    #[error("{path}: bad model metadata: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
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

    /// An error from a fast kernel.
    #[error(transparent)]
    Ops(#[from] hdr_ops::OpsError),

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
