//! MobileNet-HDR: the improved MobileNet of A. Agrahari, H. Patel, R. Singh, "Advancing
//! Handwritten Digit Recognition with AI", section III.
//!
//! Starting from MobileNet v1 at width 0.25 (see [`crate::MobileNet`]), each of the paper's
//! modifications is a separate switch, so that the ablation study can remove any one:
//!
//! 1. grey input: the stem takes 1 channel instead of 3 replicated ones;
//! 2. more channels in the depthwise and pointwise convolutions (`channel_boost`);
//! 3. fewer downsampling stages (`downsamplings`), keeping more spatial detail;
//! 4. an auxiliary classifier on an intermediate block (training only; its logits are returned
//!    beside the main ones);
//! 5. knowledge distillation: the training loop's part; `teacher` names the registered model to
//!    distil from.

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Graph, GraphBuilder, Node};
use crate::layers::{
    apply_linear, check_input, dropout, global_avg_pool, linear, Activation, ConvBn, ConvSpec,
    Tracer,
};
use crate::models::mobilenet::{scaled, separable_graph, SeparableBlock, V1_BLOCKS, V1_STEM};
use crate::summary::Summary;
use crate::{Classifier, ClassifierOutput, FeatureMap, ModelConfig, Probe};

/// The auxiliary classifier: 1x1 conv + BN + ReLU, global average pooling, linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuxClassifierConfig {
    /// Index (0-12) of the separable block whose output feeds the auxiliary head.
    pub after_block: usize,
    /// Channels of its 1x1 convolution.
    pub channels: usize,
}

/// One of the paper's modifications, for [`MobileNetHdrConfig::without`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modification {
    /// (1) 1-channel grey input.
    GreyInput,
    /// (2) more channels.
    MoreChannels,
    /// (3) fewer downsampling stages.
    FewerDownsamplings,
    /// (4) auxiliary classifier.
    AuxClassifier,
    /// (5) knowledge distillation.
    Distillation,
}

impl Modification {
    /// All five, in the paper's order.
    pub const ALL: [Self; 5] = [
        Self::GreyInput,
        Self::MoreChannels,
        Self::FewerDownsamplings,
        Self::AuxClassifier,
        Self::Distillation,
    ];
}

/// Downsampling positions of MobileNet v1 in the order they are kept: the stride-2 blocks 1, 3
/// and 5 first, then block 11, then the stem (`usize::MAX` stands for the stem).
const DOWNSAMPLE_PRIORITY: [usize; 5] = [1, 3, 5, 11, usize::MAX];

/// Configuration of [`MobileNetHdr`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MobileNetHdrConfig {
    /// (1) Take the grey image as 1 channel (otherwise replicate it to 3, like the original).
    pub grey_input: bool,
    /// Width multiplier of the underlying MobileNet v1.
    pub width: f32,
    /// (2) Extra factor on every layer's channels (1.0 = unmodified).
    pub channel_boost: f32,
    /// (3) Number of stride-2 stages kept, 0 to 5 (the original has 5).
    pub downsamplings: usize,
    /// (4) The auxiliary classifier, if any.
    pub aux: Option<AuxClassifierConfig>,
    /// (5) Registered name of the teacher to distil from, if distillation is on.
    pub teacher: Option<String>,
    /// Dropout before the head (training only).
    pub dropout: f32,
    /// Number of classes.
    pub classes: usize,
}

impl Default for MobileNetHdrConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl MobileNetHdrConfig {
    /// All five modifications: grey input, channels x2 (16 to 512), three downsamplings
    /// (28-14-7-4), an auxiliary head after block 6, distillation from `resnet` (the study's
    /// most accurate model, with 1.25x the student's MACs; `wide_resnet` is the larger option).
    pub fn paper() -> Self {
        Self {
            grey_input: true,
            width: 0.25,
            channel_boost: 2.0,
            downsamplings: 3,
            aux: Some(AuxClassifierConfig {
                after_block: 6,
                channels: 128,
            }),
            teacher: Some("resnet".into()),
            dropout: 0.1,
            classes: 10,
        }
    }

    /// None of the modifications: MobileNet v1 at width 0.25, the baseline of the ablation.
    pub fn original() -> Self {
        Modification::ALL
            .iter()
            .fold(Self::paper(), |c, &m| c.without(m))
    }

    /// This configuration with one modification removed.
    pub fn without(mut self, m: Modification) -> Self {
        match m {
            Modification::GreyInput => self.grey_input = false,
            Modification::MoreChannels => self.channel_boost = 1.0,
            Modification::FewerDownsamplings => self.downsamplings = 5,
            Modification::AuxClassifier => self.aux = None,
            Modification::Distillation => self.teacher = None,
        }
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = !(self.width > 0.0 && self.width * self.channel_boost <= 4.0)
            || self.channel_boost <= 0.0
            || self.downsamplings > 5
            || self
                .aux
                .is_some_and(|a| a.after_block >= V1_BLOCKS.len() || a.channels == 0)
            || self.classes < 2
            || !(0.0..1.0).contains(&self.dropout);
        if bad {
            return Err(ModelError::InvalidConfig {
                model: "mobilenet_hdr",
                reason: format!("{self:?}"),
            });
        }
        if let Some(teacher) = &self.teacher {
            // The name is resolved by the training loop; catch a typo here, at build time.
            crate::registry::config(teacher)?;
        }
        Ok(())
    }

    fn stride(&self, position: usize) -> usize {
        if DOWNSAMPLE_PRIORITY[..self.downsamplings].contains(&position) {
            2
        } else {
            1
        }
    }
}

#[derive(Debug, Clone)]
struct AuxHead {
    conv: ConvBn,
    fc: Linear,
}

/// MobileNet-HDR; see the module documentation.
#[derive(Debug, Clone)]
pub struct MobileNetHdr {
    stem: ConvBn,
    blocks: Vec<SeparableBlock>,
    aux: Option<(usize, AuxHead)>,
    head: Linear,
    cfg: MobileNetHdrConfig,
    summary: Summary,
}

impl MobileNetHdr {
    /// Builds the network; parameters are `stem`, `blocks.{i}.dw|pw`, `aux.conv|fc`, `head`.
    pub fn new(cfg: &MobileNetHdrConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let w = cfg.width * cfg.channel_boost;
        let c_in = if cfg.grey_input { 1 } else { 3 };
        let mut t = Tracer::new("mobilenet_hdr", &[c_in, 28, 28]);
        let stem = ConvBn::new(
            &mut t,
            ConvSpec::same(scaled(V1_STEM, w), 3, cfg.stride(usize::MAX)),
            Some(Activation::Relu),
            vb.pp("stem"),
        )?;
        let mut blocks = Vec::new();
        let mut aux = None;
        for (i, &(c, _)) in V1_BLOCKS.iter().enumerate() {
            blocks.push(SeparableBlock::new(
                &mut t,
                scaled(c, w),
                cfg.stride(i),
                vb.pp(format!("blocks.{i}")),
            )?);
            if let Some(a) = cfg.aux.filter(|a| a.after_block == i) {
                let main_shape = t.shape.clone();
                let va = vb.pp("aux");
                let spec = ConvSpec {
                    padding: 0,
                    ..ConvSpec::same(a.channels, 1, 1)
                };
                let conv = ConvBn::new(&mut t, spec, Some(Activation::Relu), va.pp("conv"))?;
                t.push(
                    "aux.pool".into(),
                    "GlobalAvgPool".into(),
                    vec![a.channels],
                    0,
                    0,
                );
                let fc = linear(&mut t, cfg.classes, va.pp("fc"))?;
                t.set_shape(main_shape);
                aux = Some((i, AuxHead { conv, fc }));
            }
        }
        let (c, _, _) = t.chw()?;
        t.push("pool".into(), "GlobalAvgPool".into(), vec![c], 0, 0);
        let head = linear(&mut t, cfg.classes, vb.pp("head"))?;
        Ok(Self {
            stem,
            blocks,
            aux,
            head,
            cfg: cfg.clone(),
            summary: t.finish(),
        })
    }

    fn run(&self, x: &Tensor, train: bool, probe: &mut Probe) -> Result<ClassifierOutput> {
        check_input("mobilenet_hdr", x, 1, 28, 28)?;
        let x = if self.cfg.grey_input {
            x.clone()
        } else {
            x.repeat((1, 3, 1, 1))?
        };
        let mut h = self.stem.forward_t(&x, train)?;
        h = probe.tap("stem", h)?;
        let mut aux_logits = None;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward_t(&h, train)?;
            h = probe.tap(format!("blocks.{i}"), h)?;
            match &self.aux {
                Some((at, head)) if train && *at == i => {
                    let a = global_avg_pool(&head.conv.forward_t(&h, train)?)?;
                    aux_logits = Some(apply_linear(&head.fc, &a)?);
                }
                _ => {}
            }
        }
        let h = dropout(&global_avg_pool(&h)?, self.cfg.dropout, train)?;
        Ok(ClassifierOutput {
            logits: apply_linear(&self.head, &h)?,
            aux_logits,
        })
    }
}

impl Classifier for MobileNetHdr {
    crate::probed_forward!();

    fn graph(&self) -> Graph {
        let cfg = &self.cfg;
        let w = cfg.width * cfg.channel_boost;
        let mut g = GraphBuilder::new();
        let x = if cfg.grey_input {
            0
        } else {
            g.push(Node::Repeat3 { input: 0 })
        };
        let h = g.conv_bn(
            x,
            "stem",
            cfg.stride(usize::MAX),
            1,
            1,
            Some(Activation::Relu),
        );
        let strides: Vec<usize> = (0..V1_BLOCKS.len()).map(|i| cfg.stride(i)).collect();
        let h = separable_graph(&mut g, h, scaled(V1_STEM, w), w, &strides);
        let h = g.push(Node::GlobalAvgPool { input: h });
        g.linear(h, "head");
        g.finish()
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::MobileNetHdr(self.cfg.clone())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
