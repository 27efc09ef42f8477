//! DenseNet-BC: G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected
//! Convolutional Networks", CVPR 2017, sized for 28x28 digits.
//!
//! Every layer of a dense block sees the concatenation of all earlier feature maps of the block.
//! "B": each layer is BN-ReLU-Conv1x1 (bottleneck of `bottleneck * growth` channels) then
//! BN-ReLU-Conv3x3 (`growth` channels). "C": transitions compress the channels by `compression`
//! (BN-ReLU-Conv1x1, then 2x2 average pooling).

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Graph, GraphBuilder, Node};
use crate::layers::{
    apply_linear, batch_norm, check_input, dropout, global_avg_pool, linear, pool, Activation,
    BatchNorm, Conv, ConvSpec, Pool, Tracer,
};
use crate::summary::Summary;
use crate::{Classifier, ClassifierOutput, FeatureMap, ModelConfig, Probe};

/// Configuration of a [`DenseNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    /// Channels each layer adds (k).
    pub growth: usize,
    /// Layers in each dense block.
    pub blocks: Vec<usize>,
    /// Bottleneck width as a multiple of `growth` (4 in the paper).
    pub bottleneck: usize,
    /// Channel compression of the transitions (theta, 0.5 in the paper).
    pub compression: f32,
    /// Halve the resolution (2x2 average pool) after the stem, before the first block.
    pub stem_pool: bool,
    /// Dropout before the head (training only).
    pub dropout: f32,
    /// Number of classes.
    pub classes: usize,
}

impl Default for DenseNetConfig {
    /// k = 12, three blocks of 6 layers at 14x14, 7x7 and 3x3, theta = 0.5.
    fn default() -> Self {
        Self {
            growth: 12,
            blocks: vec![6, 6, 6],
            bottleneck: 4,
            compression: 0.5,
            stem_pool: true,
            dropout: 0.0,
            classes: 10,
        }
    }
}

impl DenseNetConfig {
    /// The zoo's DenseNet-BC for 28x28 ([`Default`]): k = 12, 3 blocks of 6 layers, about
    /// 176k parameters.
    pub fn small() -> Self {
        Self::default()
    }

    /// A deeper, wider DenseNet-BC: k = 24, 3 blocks of 12 layers, about 1.4M parameters
    /// (a distillation teacher of the DenseNet family).
    pub fn large() -> Self {
        Self {
            growth: 24,
            blocks: vec![12, 12, 12],
            ..Self::default()
        }
    }

    /// DenseNet-BC with depth `L` as in Huang et al.'s CIFAR tables (`L = 6n + 4`: three
    /// blocks of `n` bottleneck layers, e.g. `L = 100, k = 12` is DenseNet-BC-100), sized for
    /// 28x28 (no stem pooling: blocks at 28x28, 14x14 and 7x7).
    pub fn bc(depth: usize, growth: usize) -> Result<Self> {
        if depth < 10 || !(depth - 4).is_multiple_of(6) {
            return Err(ModelError::InvalidConfig {
                model: "densenet",
                reason: format!("DenseNet-BC depth must be 6n + 4 with n >= 1, got {depth}"),
            });
        }
        Ok(Self {
            growth,
            blocks: vec![(depth - 4) / 6; 3],
            stem_pool: false,
            ..Self::default()
        })
    }

    fn validate(&self) -> Result<()> {
        let bad = self.growth == 0
            || self.blocks.is_empty()
            || self.blocks.contains(&0)
            || self.bottleneck == 0
            || !(self.compression > 0.0 && self.compression <= 1.0)
            || self.classes < 2
            || !(0.0..1.0).contains(&self.dropout);
        if bad {
            return Err(ModelError::InvalidConfig {
                model: "densenet",
                reason: format!("{self:?}"),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct DenseLayer {
    bn1: BatchNorm,
    conv1: Conv,
    bn2: BatchNorm,
    conv2: Conv,
}

impl DenseLayer {
    fn new(t: &mut Tracer, cfg: &DenseNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (c_in, h, w) = t.chw()?;
        let bn1 = batch_norm(t, c_in, vb.pp("bn1"))?;
        let spec1 = ConvSpec {
            padding: 0,
            ..ConvSpec::same(cfg.bottleneck * cfg.growth, 1, 1)
        };
        let conv1 = Conv::new(t, spec1, vb.pp("conv1"))?;
        let bn2 = batch_norm(t, cfg.bottleneck * cfg.growth, vb.pp("bn2"))?;
        let conv2 = Conv::new(t, ConvSpec::same(cfg.growth, 3, 1), vb.pp("conv2"))?;
        t.push(
            vb.prefix(),
            "Concat".into(),
            vec![c_in + cfg.growth, h, w],
            0,
            0,
        );
        Ok(Self {
            bn1,
            conv1,
            bn2,
            conv2,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bn1.forward_t(x, train, Some(Activation::Relu))?;
        let h = self.conv1.forward(&h)?;
        let h = self.bn2.forward_t(&h, train, Some(Activation::Relu))?;
        let h = self.conv2.forward(&h)?;
        Ok(Tensor::cat(&[x, &h], 1)?)
    }
}

#[derive(Debug, Clone)]
struct Transition {
    bn: BatchNorm,
    conv: Conv,
}

/// A DenseNet-BC; see the module documentation.
#[derive(Debug, Clone)]
pub struct DenseNet {
    stem: Conv,
    blocks: Vec<(Vec<DenseLayer>, Option<Transition>)>,
    final_bn: BatchNorm,
    head: Linear,
    cfg: DenseNetConfig,
    summary: Summary,
}

impl DenseNet {
    /// Builds the network; parameters are `stem`, `blocks.{i}.{l}.bn1|conv1|bn2|conv2`,
    /// `transitions.{i}.bn|conv`, `final_bn`, `head`.
    pub fn new(cfg: &DenseNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let mut t = Tracer::new("densenet", &[1, 28, 28]);
        let stem = Conv::new(&mut t, ConvSpec::same(2 * cfg.growth, 3, 1), vb.pp("stem"))?;
        if cfg.stem_pool {
            t.pool("stem_pool".into(), Pool::Avg, 2, 2, 0)?;
        }
        let mut blocks = Vec::new();
        for (i, &layers) in cfg.blocks.iter().enumerate() {
            let dense = (0..layers)
                .map(|l| DenseLayer::new(&mut t, cfg, vb.pp(format!("blocks.{i}.{l}"))))
                .collect::<Result<Vec<_>>>()?;
            let transition = if i + 1 < cfg.blocks.len() {
                let (c, _, _) = t.chw()?;
                let vt = vb.pp(format!("transitions.{i}"));
                let bn = batch_norm(&mut t, c, vt.pp("bn"))?;
                let out = ((c as f32 * cfg.compression).floor() as usize).max(1);
                let spec = ConvSpec {
                    padding: 0,
                    ..ConvSpec::same(out, 1, 1)
                };
                let conv = Conv::new(&mut t, spec, vt.pp("conv"))?;
                t.pool(format!("transitions.{i}.pool"), Pool::Avg, 2, 2, 0)?;
                Some(Transition { bn, conv })
            } else {
                None
            };
            blocks.push((dense, transition));
        }
        let (c, _, _) = t.chw()?;
        let final_bn = batch_norm(&mut t, c, vb.pp("final_bn"))?;
        t.push("pool".into(), "GlobalAvgPool".into(), vec![c], 0, 0);
        let head = linear(&mut t, cfg.classes, vb.pp("head"))?;
        Ok(Self {
            stem,
            blocks,
            final_bn,
            head,
            cfg: cfg.clone(),
            summary: t.finish(),
        })
    }

    fn run(&self, x: &Tensor, train: bool, probe: &mut Probe) -> Result<ClassifierOutput> {
        check_input("densenet", x, 1, 28, 28)?;
        let mut h = self.stem.forward(x)?;
        h = probe.tap("stem", h)?;
        if self.cfg.stem_pool {
            h = pool(&h, Pool::Avg, 2, 2, 0)?;
        }
        for (i, (layers, transition)) in self.blocks.iter().enumerate() {
            for layer in layers {
                h = layer.forward_t(&h, train)?;
            }
            h = probe.tap(format!("blocks.{i}"), h)?;
            if let Some(tr) = transition {
                h = tr
                    .conv
                    .forward(&tr.bn.forward_t(&h, train, Some(Activation::Relu))?)?;
                h = pool(&h, Pool::Avg, 2, 2, 0)?;
            }
        }
        let h = self.final_bn.forward_t(&h, train, Some(Activation::Relu))?;
        let h = dropout(&global_avg_pool(&h)?, self.cfg.dropout, train)?;
        Ok(ClassifierOutput::main(apply_linear(&self.head, &h)?))
    }
}

impl Classifier for DenseNet {
    crate::probed_forward!();

    fn graph(&self) -> Graph {
        let cfg = &self.cfg;
        let mut g = GraphBuilder::new();
        let mut h = g.conv(0, "stem", false, 1, 1, 1);
        if cfg.stem_pool {
            h = g.push(Node::AvgPool {
                input: h,
                kernel: 2,
                stride: 2,
            });
        }
        for (i, &layers) in cfg.blocks.iter().enumerate() {
            for l in 0..layers {
                let p = format!("blocks.{i}.{l}");
                let y = g.bn(h, &format!("{p}.bn1"));
                let y = g.act(y, Activation::Relu);
                let y = g.conv(y, &format!("{p}.conv1"), false, 1, 0, 1);
                let y = g.bn(y, &format!("{p}.bn2"));
                let y = g.act(y, Activation::Relu);
                let y = g.conv(y, &format!("{p}.conv2"), false, 1, 1, 1);
                h = g.push(Node::Concat { inputs: vec![h, y] });
            }
            if i + 1 < cfg.blocks.len() {
                let p = format!("transitions.{i}");
                let y = g.bn(h, &format!("{p}.bn"));
                let y = g.act(y, Activation::Relu);
                let y = g.conv(y, &format!("{p}.conv"), false, 1, 0, 1);
                h = g.push(Node::AvgPool {
                    input: y,
                    kernel: 2,
                    stride: 2,
                });
            }
        }
        let h = g.bn(h, "final_bn");
        let h = g.act(h, Activation::Relu);
        let h = g.push(Node::GlobalAvgPool { input: h });
        g.linear(h, "head");
        g.finish()
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::DenseNet(self.cfg.clone())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
