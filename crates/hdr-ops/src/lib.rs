//! Fast CPU kernels for [candle](https://github.com/huggingface/candle), packaged as candle
//! custom ops so models keep candle's tensors, autograd, `VarMap` and optimisers.
//!
//! Stock candle 0.11 is slow on CPU for the layers of small convnets: grouped/depthwise convs
//! run one conv per group, conv backward goes through a direct `conv_transpose2d` and always
//! computes the input gradient, and max-pool backward is slow (and unsupported for
//! overlapping windows). This crate provides:
//!
//! - [`conv2d`]: im2col + `gemm` (no im2col at all for 1x1 convs), bias and fused ReLU, and a
//!   direct depthwise kernel when `groups == in_channels == out_channels`; the input gradient is
//!   skipped when the input does not track gradients;
//! - [`linear`]: a fully connected layer with bias and optional ReLU as one op (candle takes
//!   three);
//! - [`max_pool2d`], [`avg_pool2d`] for any kernel/stride/padding, and [`global_avg_pool2d`];
//! - [`batch_norm2d`]: training-mode batch norm (+ optional ReLU) as one fused op, and
//!   [`channel_affine2d`], the per-channel scale + shift (+ ReLU) of evaluation-mode batch norm;
//! - [`add_relu`]: the end of a residual block, `relu(a + b)`, as one op.
//!
//! Three process-wide costs of stock candle are handled here rather than left to users: the
//! thread count is computed once (candle's matmul re-reads it on every call); on Linux/glibc
//! [`tune_allocator`] runs on first use so that the fresh buffer every op returns is recycled
//! instead of being page-faulted in from new `mmap`s; and unless `CANDLE_NUM_THREADS` is set,
//! the first op sets it to 1 so that candle's own spin-waiting elementwise thread pool does not
//! compete with rayon's (which runs this crate's kernels) for the cores. Training programs can
//! also call [`single_allocator_arena`] first thing in `main` (the workspace's examples do): the
//! retained buffers are per allocator arena, and training steps run on several threads.
//!
//! [`in_pool`] runs a whole evaluation forward pass on rayon's pool, so that its parallel
//! kernels cost one thread hand-off instead of one each ([`in_pool_for`] keeps small work on the
//! calling thread); `hdr-models` calls it in `Classifier::forward`.
//!
//! The fast paths cover `f32` tensors on the CPU; other devices and dtypes fall back to candle's
//! own ops with the same semantics, so a model written against this crate still runs on CUDA or
//! Metal.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use hdr_ops::{conv2d, max_pool2d, Activation, Conv2dConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let x = Tensor::randn(0f32, 1., (2, 1, 28, 28), &dev)?; // a batch of images: no gradient
//! let w = Var::randn(0f32, 0.1, (6, 1, 5, 5), &dev)?;
//! let b = Var::zeros(6, candle_core::DType::F32, &dev)?;
//! let cfg = Conv2dConfig { padding: 2, activation: Activation::Relu, ..Default::default() };
//! let y = conv2d(&x, &w, Some(&b), &cfg)?; // [2, 6, 28, 28]
//! let y = max_pool2d(&y, 2, 2, 0)?; // [2, 6, 14, 14]
//! assert_eq!(y.dims(), &[2, 6, 14, 14]);
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&w).map(|g| g.dims().to_vec()), Some(vec![6, 1, 5, 5]));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod batch_norm;
mod conv;
mod conv_bn;
mod depthwise;
mod direct;
mod error;
mod linear;
mod pool;
mod residual;
mod util;

pub use batch_norm::{batch_norm2d, channel_affine2d, BatchNormOutput, BatchStats};
pub use conv::{conv2d, Activation, Conv2dConfig};
pub use conv_bn::{conv_bn2d, conv_bn_chain2d, ChainOutput, ConvBnStage};
pub use error::{OpsError, Result};
pub use linear::linear;
pub use pool::{avg_pool2d, global_avg_pool2d, max_pool2d};
pub use residual::add_relu;
pub use util::{
    in_pool, in_pool_for, setup, single_allocator_arena, tune_allocator, IN_POOL_MIN_MACS,
};
