//! `hdr`: handwritten digit recognition on [candle](https://github.com/huggingface/candle).
//!
//! This facade re-exports the workspace's library crates so that the bundled examples and
//! benchmarks, and users who want everything, depend on one package:
//!
//! - [`data`] (`hdr-data`): MNIST loading, verified download, splits, batches, augmentation,
//!   preprocessing of real images.
//! - [`metrics`] (`hdr-metrics`): confusion matrix, precision/recall/F1, reports, latency, memory.
//!
//! Library users usually depend on the individual crates instead.
#![warn(missing_docs)]

pub use hdr_data as data;
pub use hdr_metrics as metrics;
