use std::path::PathBuf;

/// Everything that can go wrong while finding, reading, splitting, batching or preprocessing data.
///
/// Variants carry the file and the offending values so that a message is enough to fix the
/// problem without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The first two bytes of an IDX file must be zero.
    #[error("{path}: not an IDX file (magic bytes {found:02x?}, expected [00, 00, type, ndim])")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The four magic bytes found.
        found: [u8; 4],
    },

    /// The IDX element type is not the one expected (MNIST stores unsigned bytes, code 0x08).
    #[error("{path}: IDX element type 0x{found:02x}, expected 0x{expected:02x} (unsigned byte)")]
    WrongElementType {
        /// The file.
        path: PathBuf,
        /// Type code found.
        found: u8,
        /// Type code expected.
        expected: u8,
    },

    /// The IDX file has the wrong number of dimensions (images have 3, labels 1).
    #[error("{path}: IDX file has {found} dimension(s), expected {expected}")]
    WrongRank {
        /// The file.
        path: PathBuf,
        /// Rank found.
        found: usize,
        /// Rank expected.
        expected: usize,
    },

    /// A dimension has a value that cannot be right (zero-size images, or not the 28x28 required).
    #[error("{path}: bad dimensions {dims:?}: {reason}")]
    BadDimensions {
        /// The file.
        path: PathBuf,
        /// The dimensions in the header.
        dims: Vec<u32>,
        /// What is wrong with them.
        reason: &'static str,
    },

    /// The file holds fewer bytes than its header announces.
    #[error("{path}: truncated: header announces {expected} data bytes, file has {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Data bytes announced by the header.
        expected: u64,
        /// Data bytes present.
        found: u64,
    },

    /// The file holds more bytes than its header announces.
    #[error(
        "{path}: {extra} unexpected byte(s) after the {expected} data bytes the header announces"
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Data bytes announced by the header.
        expected: u64,
        /// Bytes beyond them (at least this many).
        extra: u64,
    },

    /// Image and label files disagree on the number of samples.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// The label file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },

    /// A label is not a digit.
    #[error("{path}: label {label} at index {index} is not a digit 0-9")]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// Position of the first bad label.
        index: usize,
        /// Its value.
        label: u8,
    },

    /// A file's content does not have the checksum of the canonical file.
    #[error("{path}: checksum mismatch: {algorithm} is {found}, expected {expected} (corrupted or not the canonical file)")]
    Checksum {
        /// The file (or URL).
        path: PathBuf,
        /// "md5" or "sha256".
        algorithm: &'static str,
        /// Expected hex digest.
        expected: String,
        /// Digest found.
        found: String,
    },

    /// MNIST was found nowhere and could not be downloaded.
    #[error("{}", not_found_message(.searched, .download))]
    NotFound {
        /// Each place looked at, with what was missing there.
        searched: Vec<(PathBuf, String)>,
        /// What happened with the download (disabled, or each mirror's failure).
        download: Vec<String>,
    },

    /// A download from one mirror failed.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },

    /// No mirror delivered a genuine copy of a file.
    #[error("could not download {file}: {}", .attempts.join("; "))]
    DownloadFailed {
        /// The file name.
        file: String,
        /// What went wrong at each mirror, in order.
        attempts: Vec<String>,
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

    /// An image file could not be decoded.
    #[error("{path}: cannot read image: {source}")]
    ImageRead {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },

    /// An image has no ink at all (every pixel the background colour).
    #[error("{path}: image is blank (no ink found)")]
    EmptyImage {
        /// The file, or `<memory>`.
        path: PathBuf,
    },

    /// An image is too small or too large to be a digit.
    #[error("{path}: image size {width}x{height} is not usable: {reason}")]
    ImageSize {
        /// The file, or `<memory>`.
        path: PathBuf,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Why.
        reason: &'static str,
    },

    /// An error from candle while building tensors.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn not_found_message(searched: &[(PathBuf, String)], download: &[String]) -> String {
    let mut msg = String::from("MNIST not found. Looked in:\n");
    for (place, why) in searched {
        msg.push_str(&format!("  - {}: {why}\n", place.display()));
    }
    if download.is_empty() {
        msg.push_str("Download: not attempted\n");
    } else {
        msg.push_str("Download:\n");
        for d in download {
            msg.push_str(&format!("  - {d}\n"));
        }
    }
    msg.push_str(
        "To fix: pass the folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n\
         t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (raw or .gz), or set HDR_DATA_DIR to it,\n\
         or copy them into datasets/mnist/, or enable the `download` feature and go online.",
    );
    msg
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;
