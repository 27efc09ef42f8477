//! Residual networks: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
//! Recognition", CVPR 2016, sized for 28x28 digits (the CIFAR-style layout of section 4.2).
//!
//! A 3x3 stem, stages of basic blocks (two 3x3 conv + batch norm, identity shortcut, or a 1x1
//! projection with batch norm when the shape changes), global average pooling, a linear head.
//! [`ResNetConfig::wide`] is the teacher for knowledge distillation (after Zagoruyko & Komodakis,
//! "Wide Residual Networks", 2016).

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Graph, GraphBuilder, Node};
use crate::layers::{
    apply_linear, check_input, dropout, global_avg_pool, linear, Activation, ConvBn, ConvSpec,
    Tracer,
};
use crate::summary::Summary;
use crate::{Classifier, ClassifierOutput, FeatureMap, ModelConfig, Probe};

/// One stage of residual blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Output channels of every block in the stage.
    pub channels: usize,
    /// Number of basic blocks.
    pub blocks: usize,
    /// Stride of the first block (2 halves the resolution).
    pub stride: usize,
}

/// Configuration of a [`ResNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Channels of the 3x3 stem convolution.
    pub stem: usize,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// Dropout before the head (training only).
    pub dropout: f32,
    /// Number of classes.
    pub classes: usize,
}

impl Default for ResNetConfig {
    /// 16-32-64 channels, two blocks per stage (28x28 -> 14x14 -> 7x7): 14 weight layers.
    fn default() -> Self {
        Self {
            stem: 16,
            stages: vec![
                Stage {
                    channels: 16,
                    blocks: 2,
                    stride: 1,
                },
                Stage {
                    channels: 32,
                    blocks: 2,
                    stride: 2,
                },
                Stage {
                    channels: 64,
                    blocks: 2,
                    stride: 2,
                },
            ],
            dropout: 0.0,
            classes: 10,
        }
    }
}

impl ResNetConfig {
    /// A wide residual network (32-64-128 channels, widening factor 2): a larger
    /// distillation teacher than [`ResNetConfig::default`] (the study distils from the latter).
    pub fn wide() -> Self {
        Self {
            stem: 32,
            stages: vec![
                Stage {
                    channels: 32,
                    blocks: 2,
                    stride: 1,
                },
                Stage {
                    channels: 64,
                    blocks: 2,
                    stride: 2,
                },
                Stage {
                    channels: 128,
                    blocks: 2,
                    stride: 2,
                },
            ],
            dropout: 0.2,
            classes: 10,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = self.stem == 0
            || self.stages.is_empty()
            || self
                .stages
                .iter()
                .any(|s| s.channels == 0 || s.blocks == 0 || !(1..=2).contains(&s.stride))
            || self.classes < 2
            || !(0.0..1.0).contains(&self.dropout);
        if bad {
            return Err(ModelError::InvalidConfig {
                model: "resnet",
                reason: format!("{self:?}"),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(t: &mut Tracer, channels: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let (c_in, _, _) = t.chw()?;
        let input_shape = t.shape.clone();
        let conv1 = ConvBn::new(
            t,
            ConvSpec::same(channels, 3, stride),
            Some(Activation::Relu),
            vb.pp("conv1"),
        )?;
        let conv2 = ConvBn::new(t, ConvSpec::same(channels, 3, 1), None, vb.pp("conv2"))?;
        let shortcut = if stride != 1 || c_in != channels {
            let out_shape = t.shape.clone();
            t.set_shape(input_shape);
            let spec = ConvSpec {
                padding: 0,
                ..ConvSpec::same(channels, 1, stride)
            };
            let s = ConvBn::new(t, spec, None, vb.pp("shortcut"))?;
            t.set_shape(out_shape);
            Some(s)
        } else {
            None
        };
        Ok(Self {
            conv1,
            conv2,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self
            .conv2
            .forward_t(&self.conv1.forward_t(x, train)?, train)?;
        let s = match &self.shortcut {
            Some(s) => s.forward_t(x, train)?,
            None => x.clone(),
        };
        Ok(hdr_ops::add_relu(&y, &s)?)
    }
}

/// A residual network; see the module documentation.
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
    head: Linear,
    cfg: ResNetConfig,
    summary: Summary,
}

impl ResNet {
    /// Builds the network; parameters are `stem`, `stages.{s}.{b}.conv1|conv2|shortcut`, `head`.
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let mut t = Tracer::new("resnet", &[1, 28, 28]);
        let stem = ConvBn::new(
            &mut t,
            ConvSpec::same(cfg.stem, 3, 1),
            Some(Activation::Relu),
            vb.pp("stem"),
        )?;
        let mut blocks = Vec::new();
        for (s, stage) in cfg.stages.iter().enumerate() {
            for b in 0..stage.blocks {
                let stride = if b == 0 { stage.stride } else { 1 };
                blocks.push(BasicBlock::new(
                    &mut t,
                    stage.channels,
                    stride,
                    vb.pp(format!("stages.{s}.{b}")),
                )?);
            }
        }
        let (c, _, _) = t.chw()?;
        t.push("pool".into(), "GlobalAvgPool".into(), vec![c], 0, 0);
        let head = linear(&mut t, cfg.classes, vb.pp("head"))?;
        Ok(Self {
            stem,
            blocks,
            head,
            cfg: cfg.clone(),
            summary: t.finish(),
        })
    }

    fn run(&self, x: &Tensor, train: bool, probe: &mut Probe) -> Result<ClassifierOutput> {
        check_input("resnet", x, 1, 28, 28)?;
        let mut h = self.stem.forward_t(x, train)?;
        h = probe.tap("stem", h)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward_t(&h, train)?;
            h = probe.tap(format!("blocks.{i}"), h)?;
        }
        let h = dropout(&global_avg_pool(&h)?, self.cfg.dropout, train)?;
        Ok(ClassifierOutput::main(apply_linear(&self.head, &h)?))
    }
}

impl Classifier for ResNet {
    crate::probed_forward!();

    fn graph(&self) -> Graph {
        let mut g = GraphBuilder::new();
        let mut h = g.conv_bn(0, "stem", 1, 1, 1, Some(Activation::Relu));
        let mut c_in = self.cfg.stem;
        for (s, stage) in self.cfg.stages.iter().enumerate() {
            for b in 0..stage.blocks {
                let stride = if b == 0 { stage.stride } else { 1 };
                let p = format!("stages.{s}.{b}");
                let y = g.conv_bn(
                    h,
                    &format!("{p}.conv1"),
                    stride,
                    1,
                    1,
                    Some(Activation::Relu),
                );
                let y = g.conv_bn(y, &format!("{p}.conv2"), 1, 1, 1, None);
                let skip = if stride != 1 || c_in != stage.channels {
                    g.conv_bn(h, &format!("{p}.shortcut"), stride, 0, 1, None)
                } else {
                    h
                };
                let sum = g.push(Node::Add { a: y, b: skip });
                h = g.act(sum, Activation::Relu);
                c_in = stage.channels;
            }
        }
        let h = g.push(Node::GlobalAvgPool { input: h });
        g.linear(h, "head");
        g.finish()
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::ResNet(self.cfg.clone())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
