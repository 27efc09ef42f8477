//! The model zoo of the comparative study in "Advancing Handwritten Digit Recognition with AI",
//! on [candle](https://github.com/huggingface/candle) and the fast CPU kernels of `hdr-ops`.
//!
//! - Architectures, each a config struct with named presets and a `new(cfg, vb)` constructor:
//!   [`Mlp`], [`LeNet5`], [`ResNet`], [`DenseNet`], [`MobileNet`] (v1 as published) and
//!   [`MobileNetHdr`] (the paper's improved MobileNet, every modification a switch).
//! - One trait, [`Classifier`]: logits in eval mode, logits and optional auxiliary logits in
//!   training mode. Inputs are `[batch, 1, 28, 28]` f32.
//! - A registry by name ([`list`], [`create`], [`config`]) like timm's `create_model`.
//! - [`Summary`]: per-layer output shapes, parameters and multiply-accumulates.
//! - [`save`] and [`load`]: safetensors files that carry the model's name and configuration;
//!   [`pretrained`]: weights trained by this project; those of `lenet5`, `lenet5_classic`,
//!   `resnet`, `densenet` and `mobilenet_hdr` are embedded in the crate (feature `pretrained`,
//!   on by default), those of `mlp1`-`mlp3`, `mobilenet` and `wide_resnet` are in the
//!   repository only (`weights/`, read from a checkout or a git dependency).
//! - [`Graph`]: each model's evaluation-mode computation as data, for compression and export.
//! - [`init`]: seeded initialisation and dropout, so that training runs are reproducible.
//!
//! Models never read datasets or touch the network.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//!
//! # fn main() -> hdr_models::Result<()> {
//! let vars = VarMap::new();
//! let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
//! let model = hdr_models::create("lenet5", vb)?;
//! let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let logits = model.forward(&x)?; // [2, 10]
//! assert_eq!(logits.dims(), &[2, 10]);
//! assert_eq!(model.summary().params(), 61_706);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

/// `forward_t` and `forward_features` for a model whose inherent
/// `run(&self, x, train, &mut Probe)` does the work.
macro_rules! probed_forward {
    () => {
        fn forward_t(&self, x: &Tensor, train: bool) -> Result<ClassifierOutput> {
            self.run(x, train, &mut Probe::off())
        }

        fn forward_features(&self, x: &Tensor) -> Result<(Tensor, Vec<FeatureMap>)> {
            let mut probe = Probe::on();
            let out = self.run(x, false, &mut probe)?;
            Ok((out.logits, probe.into_maps()))
        }
    };
}
pub(crate) use probed_forward;

mod error;
mod graph;
pub mod init;
mod io;
mod layers;
mod models;
mod predict;
mod pretrained;
mod registry;
mod summary;

use candle_core::{Tensor, Var};

pub use error::{ModelError, Result};
pub use graph::{Graph, Node, NodeId};
pub use io::{load, load_bytes, save, LoadedModel, FORMAT};
pub use layers::{Activation, Pool};
pub use models::densenet::{DenseNet, DenseNetConfig};
pub use models::lenet5::{LeNet5, LeNet5Config};
pub use models::mlp::{Mlp, MlpConfig};
pub use models::mobilenet::{MobileNet, MobileNetConfig, V1_BLOCKS};
pub use models::mobilenet_hdr::{
    AuxClassifierConfig, MobileNetHdr, MobileNetHdrConfig, Modification,
};
pub use models::resnet::{ResNet, ResNetConfig, Stage};
pub use predict::{predict, Prediction};
pub use pretrained::{load_or_pretrained, pretrained, pretrained_names, short_labels};
pub use registry::{config, create, list, models, ModelConfig, ModelInfo};
pub use summary::{LayerSummary, Summary};

/// What a classifier returns.
#[derive(Debug, Clone)]
pub struct ClassifierOutput {
    /// `[batch, classes]` unnormalised scores.
    pub logits: Tensor,
    /// `[batch, classes]` scores of the auxiliary classifier, in training mode when the model has one.
    pub aux_logits: Option<Tensor>,
}

impl ClassifierOutput {
    /// Output of a model without an auxiliary head.
    pub fn main(logits: Tensor) -> Self {
        Self {
            logits,
            aux_logits: None,
        }
    }
}

/// The activation map of one layer, from [`Classifier::forward_features`].
#[derive(Debug, Clone)]
pub struct FeatureMap {
    /// Layer name (its parameter prefix), e.g. `blocks.3`.
    pub name: String,
    /// `[batch, channels, height, width]`.
    pub activation: Tensor,
    /// A zero variable added to the activation on its way to the next layer: after
    /// `backward()` of anything computed from the logits, `grads.get(probe.as_tensor())` is the
    /// gradient with respect to this activation (candle keeps gradients of variables only).
    pub probe: Var,
}

/// Collects feature maps while a model runs, when asked to.
pub(crate) struct Probe(Option<Vec<FeatureMap>>);

impl Probe {
    pub(crate) fn off() -> Self {
        Self(None)
    }

    pub(crate) fn on() -> Self {
        Self(Some(Vec::new()))
    }

    /// Records `t` (when on) and returns what the next layer should consume.
    pub(crate) fn tap(&mut self, name: impl Into<String>, t: Tensor) -> Result<Tensor> {
        match &mut self.0 {
            None => Ok(t),
            Some(maps) => {
                let probe = Var::zeros(t.shape(), t.dtype(), t.device())?;
                let out = (&t + probe.as_tensor())?;
                maps.push(FeatureMap {
                    name: name.into(),
                    activation: t,
                    probe,
                });
                Ok(out)
            }
        }
    }

    pub(crate) fn into_maps(self) -> Vec<FeatureMap> {
        self.0.unwrap_or_default()
    }
}

/// A digit classifier.
pub trait Classifier: Send + Sync + std::fmt::Debug {
    /// Runs the model in training (`train = true`: batch statistics, dropout, auxiliary head) or
    /// evaluation mode.
    ///
    /// # Shapes
    /// `[batch, 1, 28, 28] -> [batch, 10]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<ClassifierOutput>;

    /// Evaluation-mode logits. Unless the batch is small enough for the calling thread, computed
    /// on rayon's pool ([`hdr_ops::in_pool_for`]: one thread hand-off per call instead of one
    /// per layer).
    ///
    /// # Shapes
    /// `[batch, 1, 28, 28] -> [batch, 10]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dims().first().copied().unwrap_or(1) as u64;
        hdr_ops::in_pool_for(self.summary().macs() * batch, || {
            Ok(self.forward_t(x, false)?.logits)
        })
    }

    /// Evaluation-mode logits and the activation maps after each convolutional stage, in
    /// order, still in the autograd graph (for feature-map plots, saliency and Grad-CAM).
    /// Models without convolutions return no maps.
    ///
    /// # Shapes
    /// `[batch, 1, 28, 28] -> [batch, 10]`, maps `[batch, c, h, w]`.
    fn forward_features(&self, x: &Tensor) -> Result<(Tensor, Vec<FeatureMap>)> {
        Ok((self.forward(x)?, Vec::new()))
    }

    /// The evaluation-mode computation as data (no dropout, no auxiliary head), naming the
    /// parameters it reads; [`Graph::run`] reproduces [`Classifier::forward`].
    fn graph(&self) -> Graph;

    /// The configuration that rebuilds this model.
    fn config(&self) -> ModelConfig;

    /// Layer-by-layer shapes, parameters and multiply-accumulates.
    fn summary(&self) -> &Summary;
}
