//! MNIST for Rust, the way a training pipeline needs it.
//!
//! - [`idx`]: reading and writing IDX files (raw or `.gz`), with a typed error for every way a file
//!   can be malformed.
//! - [`Mnist`]: the four canonical files, found from an explicit path, `HDR_DATA_DIR`,
//!   `datasets/mnist/` or (feature `download`) the public mirrors, and verified by checksum.
//! - [`Dataset`]: labelled `u8` images; seeded, optionally stratified validation split
//!   ([`SplitConfig`]); per-epoch shuffled [`Batches`] of candle tensors `[b, 1, 28, 28]`.
//! - [`augment`]: random affine warps (rotation, translation, scaling) and elastic distortion,
//!   deterministic per `(seed, epoch, index)` whatever the thread count.
//! - [`preprocess`]: turning a photo or scan of a digit into an MNIST-style 28x28 image;
//!   [`segment`]: splitting a number (a postcode, an amount) into its digits, left to right.
//!
//! ```no_run
//! use hdr_data::{BatchConfig, Mnist, SplitConfig};
//!
//! # fn main() -> hdr_data::Result<()> {
//! let mnist = Mnist::load()?; // HDR_DATA_DIR, datasets/mnist/, or download
//! let (train, val) = mnist.train.split(&SplitConfig::default())?; // 55k / 5k, stratified
//! let cfg = BatchConfig { batch_size: 128, ..BatchConfig::default() };
//! for batch in train.batches(&cfg, 0, &candle_core::Device::Cpu)? {
//!     let batch = batch?; // images [128, 1, 28, 28] f32 in [0, 1], labels [128] u32
//!     # let _ = (&batch, &val);
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod augment;
mod batch;
mod dataset;
#[cfg(feature = "download")]
mod download;
mod error;
mod fsutil;
pub mod idx;
mod mnist;
pub mod preprocess;
pub mod rng;
pub mod segment;
pub mod testing;

pub use augment::{AffineWarp, Augment, Compose, ElasticDistortion, RandomAffine};
pub use batch::{
    epoch_order, fill_inputs, Batch, BatchConfig, Batches, Normalize, MNIST_MEAN, MNIST_STD,
};
pub use dataset::{split_indices, Dataset, SplitConfig, IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES};
#[cfg(feature = "download")]
pub use download::download;
pub use error::{DataError, Result};
pub use mnist::{Mnist, MnistFile, MnistOptions, DATA_DIR_ENV, MIRRORS, MNIST_FILES};
pub use preprocess::{load_digit, preprocess, Invert, PreprocessConfig};
pub use rng::Rng;
