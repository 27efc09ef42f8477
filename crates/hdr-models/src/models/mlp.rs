//! Multilayer perceptrons: the paper's "ANNs with varying hidden layers".
//!
//! Fully connected layers with a non-linearity and optional dropout between them; with one hidden
//! layer of 800 units this is the 784-800-10 network of Simard et al. (2003).

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Graph, GraphBuilder, Node};
use crate::layers::{
    apply_linear, apply_linear_act, check_input, dropout, linear, Activation, Tracer,
};
use crate::summary::Summary;
use crate::{Classifier, ClassifierOutput, ModelConfig};

/// Configuration of an [`Mlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Widths of the hidden layers; empty gives multinomial logistic regression.
    pub hidden: Vec<usize>,
    /// Non-linearity after each hidden layer.
    pub activation: Activation,
    /// Dropout probability after each hidden layer (training only).
    pub dropout: f32,
    /// Number of classes.
    pub classes: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self::hidden(&[800, 800])
    }
}

impl MlpConfig {
    /// Hidden layers of these widths, ReLU, dropout 0.2, 10 classes.
    pub fn hidden(widths: &[usize]) -> Self {
        Self {
            hidden: widths.to_vec(),
            activation: Activation::Relu,
            dropout: 0.2,
            classes: 10,
        }
    }

    /// One hidden layer of 800 (Simard et al. 2003).
    pub fn one_hidden() -> Self {
        Self::hidden(&[800])
    }

    /// Two hidden layers of 800 (Hinton et al. 2015's distillation student).
    pub fn two_hidden() -> Self {
        Self::hidden(&[800, 800])
    }

    /// Three hidden layers of 800.
    pub fn three_hidden() -> Self {
        Self::hidden(&[800, 800, 800])
    }

    fn validate(&self) -> Result<()> {
        if self.hidden.contains(&0) || self.classes < 2 || !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::InvalidConfig {
                model: "mlp",
                reason: format!(
                    "hidden {:?}, classes {}, dropout {}",
                    self.hidden, self.classes, self.dropout
                ),
            });
        }
        Ok(())
    }
}

/// A multilayer perceptron on flattened 28x28 images.
#[derive(Debug, Clone)]
pub struct Mlp {
    hidden: Vec<Linear>,
    head: Linear,
    cfg: MlpConfig,
    summary: Summary,
}

impl Mlp {
    /// Builds the network; parameters are `fc{i}.weight/bias` and `head.weight/bias`.
    pub fn new(cfg: &MlpConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let mut t = Tracer::new("mlp", &[1, 28, 28]);
        t.set_shape(vec![784]);
        let hidden = cfg
            .hidden
            .iter()
            .enumerate()
            .map(|(i, &w)| linear(&mut t, w, vb.pp(format!("fc{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let head = linear(&mut t, cfg.classes, vb.pp("head"))?;
        Ok(Self {
            hidden,
            head,
            cfg: cfg.clone(),
            summary: t.finish(),
        })
    }
}

impl Classifier for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<ClassifierOutput> {
        check_input("mlp", x, 1, 28, 28)?;
        let mut h = x.flatten_from(1)?;
        for layer in &self.hidden {
            h = apply_linear_act(layer, &h, self.cfg.activation)?;
            h = dropout(&h, self.cfg.dropout, train)?;
        }
        Ok(ClassifierOutput::main(apply_linear(&self.head, &h)?))
    }

    fn graph(&self) -> Graph {
        let mut g = GraphBuilder::new();
        let mut h = g.push(Node::Flatten { input: 0 });
        for i in 0..self.hidden.len() {
            h = g.linear(h, &format!("fc{i}"));
            h = g.act(h, self.cfg.activation);
        }
        g.linear(h, "head");
        g.finish()
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Mlp(self.cfg.clone())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
