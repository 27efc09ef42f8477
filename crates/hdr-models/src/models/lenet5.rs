//! LeNet-5: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to
//! document recognition", Proc. IEEE 86(11), 1998.
//!
//! C1 6@5x5 (padding 2 stands in for the paper's 32x32 input), S2 pool, C3 16@5x5 (fully connected
//! to S2, as most reimplementations do), S4 pool, C5 120, F6 84, output 10: 61,706 parameters.
//! The paper's scaled tanh and trainable subsampling are replaced by a configurable activation and
//! pooling: [`LeNet5Config::classic`] (tanh, average) or the default (ReLU, max).

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Graph, GraphBuilder, Node};
use crate::layers::{
    apply_linear, apply_linear_act, check_input, dropout, linear, pool, Activation, Conv, ConvSpec,
    Pool, Tracer,
};
use crate::summary::Summary;
use crate::{Classifier, ClassifierOutput, FeatureMap, ModelConfig, Probe};

/// Configuration of [`LeNet5`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeNet5Config {
    /// Non-linearity after every layer but the last.
    pub activation: Activation,
    /// Subsampling layers S2 and S4.
    pub pool: Pool,
    /// Dropout before F6 and the output (training only); 0 in the original.
    pub dropout: f32,
}

impl Default for LeNet5Config {
    /// ReLU and max pooling, the usual modern reading.
    fn default() -> Self {
        Self {
            activation: Activation::Relu,
            pool: Pool::Max,
            dropout: 0.0,
        }
    }
}

impl LeNet5Config {
    /// tanh and average pooling, closest to the 1998 network.
    pub fn classic() -> Self {
        Self {
            activation: Activation::Tanh,
            pool: Pool::Avg,
            dropout: 0.0,
        }
    }
}

/// LeNet-5; see the module documentation.
#[derive(Debug, Clone)]
pub struct LeNet5 {
    c1: Conv,
    c3: Conv,
    f5: Linear,
    f6: Linear,
    out: Linear,
    fused: bool,
    cfg: LeNet5Config,
    summary: Summary,
}

impl LeNet5 {
    /// Builds the network; parameters are `c1`, `c3`, `f5`, `f6`, `out` (`.weight`, `.bias`).
    pub fn new(cfg: &LeNet5Config, vb: VarBuilder<'_>) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(ModelError::InvalidConfig {
                model: "lenet5",
                reason: format!("dropout {}", cfg.dropout),
            });
        }
        let mut t = Tracer::new("lenet5", &[1, 28, 28]);
        let conv = |out, pad| ConvSpec {
            out,
            kernel: 5,
            stride: 1,
            padding: pad,
            groups: 1,
            bias: true,
        };
        let mut c1 = Conv::new(&mut t, conv(6, 2), vb.pp("c1"))?;
        t.pool("s2".into(), cfg.pool, 2, 2, 0)?;
        let mut c3 = Conv::new(&mut t, conv(16, 0), vb.pp("c3"))?;
        t.pool("s4".into(), cfg.pool, 2, 2, 0)?;
        let f5 = linear(&mut t, 120, vb.pp("f5"))?;
        let f6 = linear(&mut t, 84, vb.pp("f6"))?;
        let out = linear(&mut t, 10, vb.pp("out"))?;
        let fused = c1.fuse(cfg.activation) & c3.fuse(cfg.activation);
        Ok(Self {
            c1,
            c3,
            f5,
            f6,
            out,
            fused,
            cfg: cfg.clone(),
            summary: t.finish(),
        })
    }

    fn conv_act(&self, conv: &Conv, x: &Tensor) -> Result<Tensor> {
        let y = conv.forward(x)?;
        if self.fused {
            Ok(y)
        } else {
            self.cfg.activation.apply(&y)
        }
    }

    fn run(&self, x: &Tensor, train: bool, probe: &mut Probe) -> Result<ClassifierOutput> {
        check_input("lenet5", x, 1, 28, 28)?;
        let act = self.cfg.activation;
        let h = self.conv_act(&self.c1, x)?;
        let h = probe.tap("c1", h)?;
        let h = pool(&h, self.cfg.pool, 2, 2, 0)?;
        let h = self.conv_act(&self.c3, &h)?;
        let h = probe.tap("c3", h)?;
        let h = pool(&h, self.cfg.pool, 2, 2, 0)?;
        let h = apply_linear_act(&self.f5, &h.flatten_from(1)?, act)?;
        let h = dropout(&h, self.cfg.dropout, train)?;
        let h = apply_linear_act(&self.f6, &h, act)?;
        let h = dropout(&h, self.cfg.dropout, train)?;
        Ok(ClassifierOutput::main(apply_linear(&self.out, &h)?))
    }
}

impl Classifier for LeNet5 {
    crate::probed_forward!();

    fn graph(&self) -> Graph {
        let (act, pool) = (self.cfg.activation, self.cfg.pool);
        let pool_node = |input| match pool {
            Pool::Max => Node::MaxPool {
                input,
                kernel: 2,
                stride: 2,
            },
            Pool::Avg => Node::AvgPool {
                input,
                kernel: 2,
                stride: 2,
            },
        };
        let mut g = GraphBuilder::new();
        let h = g.conv(0, "c1", true, 1, 2, 1);
        let h = g.act(h, act);
        let h = g.push(pool_node(h));
        let h = g.conv(h, "c3", true, 1, 0, 1);
        let h = g.act(h, act);
        let h = g.push(pool_node(h));
        let h = g.push(Node::Flatten { input: h });
        let h = g.linear(h, "f5");
        let h = g.act(h, act);
        let h = g.linear(h, "f6");
        let h = g.act(h, act);
        g.linear(h, "out");
        g.finish()
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::LeNet5(self.cfg.clone())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
