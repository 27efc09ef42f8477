//! Compression for the `hdr` model zoo: int8 post-training quantization that really runs in
//! integers, magnitude pruning, and structured (channel) pruning.
//!
//! - **Quantization** (static, post-training, like PyTorch's prepare -> calibrate -> convert):
//!   [`QuantizedModel::quantize`] takes any zoo model's [`Graph`](hdr_models::Graph), its
//!   variables and a few calibration batches; folds batch norms into convolutions, observes
//!   activation ranges ([`Observer::MinMax`] or [`Observer::Percentile`]), quantizes weights
//!   per output channel (symmetric int8) and activations per tensor (asymmetric u8).
//!   [`QuantizedModel::forward`] then runs u8 x i8 -> i32 kernels with fused bias, ReLU and
//!   single-precision requantization (XNNPACK's "fp32" scheme, the same IEEE operations on
//!   every ISA) from the quantized input to the logits.
//! - **Kernels**: [`gemm_u8i8`] uses AVX-512 VNNI or AVX-VNNI (`vpdpbusd`) when the CPU has
//!   them, AVX2 (`vpmaddwd`, exact) when it has neither ([`Isa::detect`]), a portable loop
//!   otherwise, with bit-identical results; convolution
//!   ([`conv2d`], [`depthwise_conv2d`]), pooling, addition, concatenation and
//!   [`requantize`] are exposed for testing and reuse.
//! - **Files**: [`QuantizedModel::save`] / [`QuantizedModel::load`]: safetensors with `I8`
//!   weights, f32 scales, i32 biases and the op list in the metadata, about 4x smaller;
//!   [`pretrained_int8`] loads the int8 version of every model `hdr_models::pretrained` has;
//!   as there, the files of `lenet5`, `lenet5_classic`, `resnet`, `densenet` and
//!   `mobilenet_hdr` are embedded in the crate (feature `pretrained`, on by default), those of
//!   `mlp1`-`mlp3`, `mobilenet` and `wide_resnet` are in the repository only (`weights/`, read
//!   from a checkout or a git dependency).
//! - **Pruning**: [`magnitude`] masks ([`Scope::LayerWise`], [`Scope::Global`] or the
//!   layer-adaptive [`Scope::Lamp`]; [`magnitude_for`] leaves training-only heads out),
//!   [`fine_tune`] keeping them, [`prune_iteratively`] (Han et al. 2015; geometric or Zhu &
//!   Gupta's cubic [`PruneSchedule`]), [`sparsity_report`].
//!   [`save_sparse`] / [`load_sparse`] store a pruned model as bitmaps and non-zero values
//!   (90% sparse LeNet-5: 35 kB instead of 247 kB). Fine-tuning ([`FineTuneConfig`]) follows
//!   the zoo's training recipe: random affine augmentation and Adam with a learning rate
//!   decaying (cosine) within every run; it can distil from a stronger model's precomputed
//!   logits ([`SoftTargets`]), which took 90%-sparse LeNet-5 from -0.14 to -0.10 points.
//!   [`inference_sparsity`] measures a pruned model read back from its file.
//! - **Structured pruning** (Li et al. 2017): [`StructuredModel::fold`] folds a model's batch
//!   norms into its convolutions (the folding quantization uses); [`StructuredModel::prune`]
//!   removes whole convolution channels and hidden units by the L1 norm of their filters, the
//!   same fraction per layer, down to a MAC budget ([`StructuredConfig`]), and rebuilds a smaller
//!   dense [`Graph`](hdr_models::Graph) model that runs on the `hdr-ops` kernels, fine-tunes
//!   ([`StructuredModel::fine_tune`]), saves and loads, and quantizes. Sequential graphs only:
//!   residual additions and concatenations give [`CompressError::NotSequential`].
//! - **Comparison**: [`measure`] a variant ([`Inference`]: f32 models, [`QuantizedModel`],
//!   [`StructuredModel`]) for file size, non-zero parameters, MACs, accuracy and latency;
//!   [`render_text`], [`render_markdown`] and [`results_markdown`] tabulate the
//!   [`VariantReport`]s (the `compress` example); [`int8_summary_text`] and
//!   [`int8_results_markdown`] put several models' f32 and int8 side by side (the `quantize`
//!   example).
//!
//! Quantization and the pools' fixed-point rescaling round half away from zero; the output
//! stage of products ([`OutputStage`]) rounds ties to even, as `vcvtps2dq` does.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use hdr_compress::{QuantizeConfig, QuantizedModel, StructuredConfig, StructuredModel};
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
//!
//! let half = StructuredModel::fold("lenet5", &model.graph(), &vars)?
//!     .prune(&StructuredConfig { macs_fraction: 0.5 })?; // fewer channels, still dense
//! assert!(half.macs()? <= model.summary().macs() / 2);
//! assert_eq!(half.forward(&calibration[0])?.dims(), &[16, 10]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
mod fold;
mod io;
mod kernels;
mod measure;
mod model;
mod pretrained;
mod prune;
mod quant;
mod sparse;
mod structured;

pub use error::{CompressError, Result};
pub use io::QUANTIZED_FORMAT;
pub use kernels::{
    add, avg_pool, concat, conv2d, depthwise_conv2d, gemm_u8i8, im2col, max_pool, requantize,
    ConvShape, Dims, Isa, OutputStage, PackedWeights, Requant, Rescale, MAX_K,
};
pub use measure::{
    accuracy, int8_results_markdown, int8_summary_markdown, int8_summary_text, machine_description,
    measure, render_markdown, render_text, results_markdown, write_results, Inference,
    Int8Comparison, MeasureSettings, VariantReport,
};
pub use model::{calibration_batches, LayerError, QuantizeConfig, QuantizedModel};
pub use pretrained::{pretrained_int8, pretrained_int8_names};
pub use prune::{
    fine_tune, inference_sparsity, magnitude, magnitude_for, prunable, prune_iteratively,
    sparsity_report, FineTuneConfig, LayerSparsity, Masks, PruneConfig, PruneSchedule, Scope,
    SoftTargets,
};
pub use quant::{
    dequantize, quantize, quantize_per_channel, Observer, PerChannel, QuantParams, RangeObserver,
};
pub use sparse::{load_sparse, save_sparse, sparse_bytes, sparse_from_bytes, SPARSE_FORMAT};
pub use structured::{
    graph_macs, ChannelSelection, LayerWidth, StructuredConfig, StructuredModel, STRUCTURED_FORMAT,
};
