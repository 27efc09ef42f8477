//! `hdr`: handwritten digit recognition on [candle](https://github.com/huggingface/candle).
//!
//! This facade re-exports the workspace's library crates so that the bundled examples and
//! benchmarks, and users who want everything, depend on one package:
//!
//! - [`data`] (`hdr-data`): MNIST loading, verified download, splits, batches, augmentation,
//!   preprocessing of real images.
//! - [`metrics`] (`hdr-metrics`): confusion matrix, precision/recall/F1, reports, latency, memory.
//! - [`models`] (`hdr-models`): the model zoo, its registry, summaries, safetensors files.
//! - [`ops`] (`hdr-ops`): fast CPU kernels as candle custom ops.
//! - [`train`] (`hdr-train`): training loop, optimisers, schedules, distillation, evaluation.
//! - [`compress`] (`hdr-compress`): int8 quantization with integer kernels, pruning.
//! - [`viz`] (`hdr-viz`): feature maps, saliency, Grad-CAM, confusion heat maps, training curves.
//!
//! Library users usually depend on the individual crates instead.
#![warn(missing_docs)]

pub use hdr_compress as compress;
pub use hdr_data as data;
pub use hdr_metrics as metrics;
pub use hdr_models as models;
pub use hdr_ops as ops;
pub use hdr_train as train;
pub use hdr_viz as viz;

/// The README's library example, compiled (not run) as a doctest so that it cannot drift from
/// the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
