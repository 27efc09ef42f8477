use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::models::densenet::{DenseNet, DenseNetConfig};
use crate::models::lenet5::{LeNet5, LeNet5Config};
use crate::models::mlp::{Mlp, MlpConfig};
use crate::models::mobilenet::{MobileNet, MobileNetConfig};
use crate::models::mobilenet_hdr::{MobileNetHdr, MobileNetHdrConfig};
use crate::models::resnet::{ResNet, ResNetConfig};
use crate::Classifier;

/// The configuration of any model of the zoo: enough, with the weights, to rebuild it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelConfig {
    /// [`Mlp`].
    Mlp(MlpConfig),
    /// [`LeNet5`].
    #[serde(rename = "lenet5")]
    LeNet5(LeNet5Config),
    /// [`ResNet`].
    #[serde(rename = "resnet")]
    ResNet(ResNetConfig),
    /// [`DenseNet`].
    #[serde(rename = "densenet")]
    DenseNet(DenseNetConfig),
    /// [`MobileNet`].
    #[serde(rename = "mobilenet")]
    MobileNet(MobileNetConfig),
    /// [`MobileNetHdr`].
    #[serde(rename = "mobilenet_hdr")]
    MobileNetHdr(MobileNetHdrConfig),
}

impl ModelConfig {
    /// Builds the model, creating or reading its parameters through `vb`.
    pub fn build(&self, vb: VarBuilder<'_>) -> Result<Box<dyn Classifier>> {
        Ok(match self {
            Self::Mlp(c) => Box::new(Mlp::new(c, vb)?),
            Self::LeNet5(c) => Box::new(LeNet5::new(c, vb)?),
            Self::ResNet(c) => Box::new(ResNet::new(c, vb)?),
            Self::DenseNet(c) => Box::new(DenseNet::new(c, vb)?),
            Self::MobileNet(c) => Box::new(MobileNet::new(c, vb)?),
            Self::MobileNetHdr(c) => Box::new(MobileNetHdr::new(c, vb)?),
        })
    }

    /// The architecture family, e.g. `"resnet"`.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Mlp(_) => "mlp",
            Self::LeNet5(_) => "lenet5",
            Self::ResNet(_) => "resnet",
            Self::DenseNet(_) => "densenet",
            Self::MobileNet(_) => "mobilenet",
            Self::MobileNetHdr(_) => "mobilenet_hdr",
        }
    }
}

/// A registered model: a name, what it is, and its configuration.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo {
    /// Registry name, e.g. `"mobilenet_hdr"`.
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    config: fn() -> ModelConfig,
}

impl ModelInfo {
    /// The model's configuration.
    pub fn config(&self) -> ModelConfig {
        (self.config)()
    }
}

const REGISTRY: &[ModelInfo] = &[
    ModelInfo {
        name: "mlp1",
        description: "MLP 784-800-10, ReLU, dropout 0.2 (Simard et al. 2003)",
        config: || ModelConfig::Mlp(MlpConfig::one_hidden()),
    },
    ModelInfo {
        name: "mlp2",
        description: "MLP 784-800-800-10, ReLU, dropout 0.2",
        config: || ModelConfig::Mlp(MlpConfig::two_hidden()),
    },
    ModelInfo {
        name: "mlp3",
        description: "MLP 784-800-800-800-10, ReLU, dropout 0.2",
        config: || ModelConfig::Mlp(MlpConfig::three_hidden()),
    },
    ModelInfo {
        name: "lenet5",
        description: "LeNet-5 (LeCun et al. 1998) with ReLU and max pooling",
        config: || ModelConfig::LeNet5(LeNet5Config::default()),
    },
    ModelInfo {
        name: "lenet5_classic",
        description: "LeNet-5 with tanh and average pooling, as in 1998",
        config: || ModelConfig::LeNet5(LeNet5Config::classic()),
    },
    ModelInfo {
        name: "resnet",
        description: "ResNet, 3 stages of 2 basic blocks, 16-32-64 channels",
        config: || ModelConfig::ResNet(ResNetConfig::default()),
    },
    ModelInfo {
        name: "wide_resnet",
        description: "wide ResNet, 32-64-128 channels: a larger distillation teacher",
        config: || ModelConfig::ResNet(ResNetConfig::wide()),
    },
    ModelInfo {
        name: "densenet",
        description: "DenseNet-BC, growth 12, blocks 6-6-6, compression 0.5",
        config: || ModelConfig::DenseNet(DenseNetConfig::default()),
    },
    ModelInfo {
        name: "mobilenet",
        description: "MobileNet v1 as published (width 1.0, 3-channel input, 13 blocks)",
        config: || ModelConfig::MobileNet(MobileNetConfig::default()),
    },
    ModelInfo {
        name: "mobilenet_hdr",
        description: "the paper's improved MobileNet: grey input, 2x channels, 3 downsamplings, auxiliary head",
        config: || ModelConfig::MobileNetHdr(MobileNetHdrConfig::paper()),
    },
];

/// Every registered model.
pub fn models() -> &'static [ModelInfo] {
    REGISTRY
}

/// The registered names.
pub fn list() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.name).collect()
}

/// The configuration registered under `name`.
pub fn config(name: &str) -> Result<ModelConfig> {
    REGISTRY
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.config())
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.to_string(),
            known: list(),
        })
}

/// Creates the model registered under `name`, like timm's `create_model`.
pub fn create(name: &str, vb: VarBuilder<'_>) -> Result<Box<dyn Classifier>> {
    config(name)?.build(vb)
}
