//! Compression for the `hdr` model zoo: int8 post-training quantization that really runs in
//! integers, and magnitude pruning.
//!
//! - **Quantization** (static, post-training, like PyTorch's prepare -> calibrate -> convert):
//!   [`QuantizedModel::quantize`] takes any zoo model's [`Graph`](hdr_models::Graph), its
//!   variables and a few calibration batches; folds batch norms into convolutions, observes
//!   activation ranges ([`Observer::MinMax`] or [`Observer::Percentile`]), quantizes weights
//!   per output channel (symmetric int8) and activations per tensor (asymmetric u8).
//!   [`QuantizedModel::forward`] then runs u8 x i8 -> i32 kernels with fused bias, ReLU and
//!   fixed-point requantization from the quantized input to the logits.
//! - **Kernels**: [`gemm_u8i8`] uses AVX-512 VNNI or AVX-VNNI (`vpdpbusd`) when the CPU has
//!   them ([`Isa::detect`]), a portable loop otherwise, with bit-identical results; convolution
//!   ([`conv2d`], [`depthwise_conv2d`]), pooling, addition, concatenation and
//!   [`requantize`] are exposed for testing and reuse.
//! - **Files**: [`QuantizedModel::save`] / [`QuantizedModel::load`]: safetensors with `I8`
//!   weights, f32 scales, i32 biases and the op list in the metadata, about 4x smaller.
//! - **Pruning**: [`magnitude`] masks ([`Scope::LayerWise`] or [`Scope::Global`]),
//!   [`fine_tune`] keeping them, [`prune_iteratively`] (Han et al. 2015), [`sparsity_report`].
//!
//! Rounding is half away from zero everywhere (quantization and requantization).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use hdr_compress::{QuantizeConfig, QuantizedModel};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vars = VarMap::new();
//! let model = hdr_models::create("lenet5", VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
//! hdr_models::init::init(&vars, 0)?;
//! let calibration = vec![Tensor::rand(0f32, 1f32, (16, 1, 28, 28), &Device::Cpu)?];
//! let q = QuantizedModel::quantize("lenet5", &model.graph(), &vars, &calibration, &QuantizeConfig::default())?;
//! let logits = q.forward(&calibration[0])?; // integer inference, f32 logits
//! assert_eq!(logits.dims(), &[16, 10]);
//! assert!(q.to_bytes()?.len() < 70_000); // f32: 247 kB
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
mod io;
mod kernels;
mod model;
mod prune;
mod quant;

pub use error::{CompressError, Result};
pub use io::QUANTIZED_FORMAT;
pub use kernels::{
    add, avg_pool, concat, conv2d, depthwise_conv2d, gemm_u8i8, im2col, max_pool, requantize,
    ConvShape, Dims, Isa, OutputStage, PackedWeights, Requant, Rescale, MAX_K,
};
pub use model::{LayerError, QuantizeConfig, QuantizedModel};
pub use prune::{
    fine_tune, magnitude, prunable, prune_iteratively, sparsity_report, FineTuneConfig,
    LayerSparsity, Masks, Scope,
};
pub use quant::{
    dequantize, quantize, quantize_per_channel, Observer, PerChannel, QuantParams, RangeObserver,
};
