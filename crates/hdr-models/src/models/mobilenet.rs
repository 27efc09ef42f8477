//! MobileNet v1: A. G. Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
//! Mobile Vision Applications", 2017, as published: 3-channel input (grey replicated), a 3x3
//! stride-2 stem of 32 channels, the 13 depthwise-separable blocks of Table 1 with their stride
//! pattern, global average pooling, a linear head; batch norm and ReLU after every convolution;
//! the width multiplier (alpha) scales every layer's channels.
//!
//! On 28x28 digits the five stride-2 stages take the resolution to 1x1 (28-14-7-4-2-1).

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Graph, GraphBuilder, Node};
use crate::layers::{
    apply_linear, check_input, conv_bn_chain, dropout, global_avg_pool, linear, Activation, ConvBn,
    ConvSpec, Tracer,
};
use crate::summary::Summary;
use crate::{Classifier, ClassifierOutput, FeatureMap, ModelConfig, Probe};

/// Output channels and stride of the 13 depthwise-separable blocks (Howard et al., Table 1).
pub const V1_BLOCKS: [(usize, usize); 13] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
];

/// Channels of the stem convolution before the width multiplier.
pub const V1_STEM: usize = 32;

/// Scales a channel count by the width multiplier (at least 1 channel).
pub(crate) fn scaled(channels: usize, width: f32) -> usize {
    ((channels as f32 * width).round() as usize).max(1)
}

/// Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU.
#[derive(Debug, Clone)]
pub(crate) struct SeparableBlock {
    dw: ConvBn,
    pw: ConvBn,
}

impl SeparableBlock {
    pub fn new(t: &mut Tracer, out: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let (c, _, _) = t.chw()?;
        let dw_spec = ConvSpec {
            groups: c,
            ..ConvSpec::same(c, 3, stride)
        };
        let dw = ConvBn::new(t, dw_spec, Some(Activation::Relu), vb.pp("dw"))?;
        let pw_spec = ConvSpec {
            padding: 0,
            ..ConvSpec::same(out, 1, 1)
        };
        let pw = ConvBn::new(t, pw_spec, Some(Activation::Relu), vb.pp("pw"))?;
        Ok(Self { dw, pw })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        conv_bn_chain(&[&self.dw, &self.pw], x, train)
    }
}

/// Configuration of [`MobileNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MobileNetConfig {
    /// Width multiplier alpha (1.0, 0.75, 0.5 and 0.25 in the paper).
    pub width: f32,
    /// Dropout before the head (training only).
    pub dropout: f32,
    /// Number of classes.
    pub classes: usize,
}

impl Default for MobileNetConfig {
    /// alpha = 1: 32 to 1024 channels, as published.
    fn default() -> Self {
        Self::with_width(1.0)
    }
}

impl MobileNetConfig {
    /// The network at width multiplier `alpha`, no dropout, 10 classes.
    pub fn with_width(alpha: f32) -> Self {
        Self {
            width: alpha,
            dropout: 0.0,
            classes: 10,
        }
    }

    /// "1.0 MobileNet-224" of the paper's Table 6 (4.2M parameters at 1000 classes): 32 to
    /// 1024 channels. The same as [`Default`].
    pub fn alpha_1_0() -> Self {
        Self::with_width(1.0)
    }

    /// "0.75 MobileNet": 24 to 768 channels.
    pub fn alpha_0_75() -> Self {
        Self::with_width(0.75)
    }

    /// "0.5 MobileNet": 16 to 512 channels.
    pub fn alpha_0_5() -> Self {
        Self::with_width(0.5)
    }

    /// "0.25 MobileNet": 8 to 256 channels, the base of [`crate::MobileNetHdrConfig`].
    pub fn alpha_0_25() -> Self {
        Self::with_width(0.25)
    }
}

/// MobileNet v1; see the module documentation.
#[derive(Debug, Clone)]
pub struct MobileNet {
    stem: ConvBn,
    blocks: Vec<SeparableBlock>,
    head: Linear,
    cfg: MobileNetConfig,
    summary: Summary,
}

impl MobileNet {
    /// Builds the network; parameters are `stem`, `blocks.{i}.dw|pw`, `head`.
    pub fn new(cfg: &MobileNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        if !(cfg.width > 0.0 && cfg.width <= 4.0)
            || cfg.classes < 2
            || !(0.0..1.0).contains(&cfg.dropout)
        {
            return Err(ModelError::InvalidConfig {
                model: "mobilenet",
                reason: format!("{cfg:?}"),
            });
        }
        let mut t = Tracer::new("mobilenet", &[3, 28, 28]);
        let stem = ConvBn::new(
            &mut t,
            ConvSpec::same(scaled(V1_STEM, cfg.width), 3, 2),
            Some(Activation::Relu),
            vb.pp("stem"),
        )?;
        let blocks = V1_BLOCKS
            .iter()
            .enumerate()
            .map(|(i, &(c, s))| {
                SeparableBlock::new(
                    &mut t,
                    scaled(c, cfg.width),
                    s,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
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
        let x = if x.dims().get(1) == Some(&1) {
            check_input("mobilenet", x, 1, 28, 28)?;
            x.repeat((1, 3, 1, 1))?
        } else {
            check_input("mobilenet", x, 3, 28, 28)?;
            x.clone()
        };
        let mut h = self.stem.forward_t(&x, train)?;
        h = probe.tap("stem", h)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward_t(&h, train)?;
            h = probe.tap(format!("blocks.{i}"), h)?;
        }
        let h = dropout(&global_avg_pool(&h)?, self.cfg.dropout, train)?;
        Ok(ClassifierOutput::main(apply_linear(&self.head, &h)?))
    }
}

impl Classifier for MobileNet {
    crate::probed_forward!();

    fn graph(&self) -> Graph {
        let mut g = GraphBuilder::new();
        let x = g.push(Node::Repeat3 { input: 0 });
        let h = g.conv_bn(x, "stem", 2, 1, 1, Some(Activation::Relu));
        let strides: Vec<usize> = V1_BLOCKS.iter().map(|b| b.1).collect();
        let h = separable_graph(
            &mut g,
            h,
            scaled(V1_STEM, self.cfg.width),
            self.cfg.width,
            &strides,
        );
        let h = g.push(Node::GlobalAvgPool { input: h });
        g.linear(h, "head");
        g.finish()
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::MobileNet(self.cfg.clone())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}

/// The 13 separable blocks as graph nodes: depthwise 3x3 (groups = channels), pointwise 1x1,
/// each with batch norm and ReLU; `strides[i]` is block i's stride.
pub(crate) fn separable_graph(
    g: &mut GraphBuilder,
    mut h: usize,
    mut c: usize,
    width: f32,
    strides: &[usize],
) -> usize {
    for (i, &(out, _)) in V1_BLOCKS.iter().enumerate() {
        h = g.conv_bn(
            h,
            &format!("blocks.{i}.dw"),
            strides[i],
            1,
            c,
            Some(Activation::Relu),
        );
        h = g.conv_bn(
            h,
            &format!("blocks.{i}.pw"),
            1,
            0,
            1,
            Some(Activation::Relu),
        );
        c = scaled(out, width);
    }
    h
}
