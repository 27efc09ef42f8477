//! A model quantized to int8 and run in integers: built from a [`Graph`], its parameters and
//! calibration batches.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use hdr_models::{Activation, Graph, Node, NodeId};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};
use crate::fold::{folded_conv, missing, read_params, vec_of, BatchNorm};
use crate::kernels::{
    self, ConvShape, Dims, DwWeights, Isa, OutputStage, PackedWeights, Requant, RequantTile,
    Rescale, Threads, SPLIT_MIN_MACS,
};
use crate::quant::{quantize_per_channel, Observer, QuantParams, RangeObserver};

/// How [`QuantizedModel::quantize`] works.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeConfig {
    /// How activation ranges are chosen from the calibration data.
    pub observer: Observer,
    /// Instruction set of the integer matrix product; `None` picks the best available.
    pub isa: Option<Isa>,
    /// Cross-layer equalization (Nagel et al. 2019) of `conv -> [bn] -> relu -> conv` pairs
    /// before quantization: exact in f32, it evens out per-channel ranges so that per-tensor
    /// activation scales waste fewer levels (matters for depthwise-separable models).
    pub equalize: bool,
}

impl Default for QuantizeConfig {
    /// Min/max calibration, best instruction set, cross-layer equalization on.
    fn default() -> Self {
        Self {
            observer: Observer::MinMax,
            isa: None,
            equalize: true,
        }
    }
}

/// Clamp after an op: the fused activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Clamp {
    None,
    Relu,
    Relu6,
}

impl Clamp {
    fn of(a: Activation) -> Option<Self> {
        match a {
            Activation::Relu => Some(Self::Relu),
            Activation::Relu6 => Some(Self::Relu6),
            _ => None,
        }
    }

    /// Code range `[min, max]` for output parameters `p`.
    fn range(self, p: QuantParams) -> (u8, u8) {
        let z = p.zero_point.clamp(0, 255);
        match self {
            Self::None => (0, 255),
            Self::Relu => (z as u8, 255),
            Self::Relu6 => (
                z as u8,
                (z as f32 + (6.0 / p.scale).round()).clamp(z as f32, 255.0) as u8,
            ),
        }
    }
}

/// One integer op; inputs are indices of earlier ops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OpSpec {
    /// Quantize the f32 input.
    Input,
    /// Convolution (batch norm folded in), dense or depthwise, with fused clamp.
    Conv {
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        in_channels: usize,
        out_channels: usize,
        depthwise: bool,
        clamp: Clamp,
    },
    /// Fully connected layer with fused clamp.
    Linear {
        input: usize,
        in_features: usize,
        out_features: usize,
        clamp: Clamp,
    },
    MaxPool {
        input: usize,
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        input: usize,
        kernel: usize,
        stride: usize,
    },
    GlobalAvgPool {
        input: usize,
    },
    /// To NCHW order, `[b, c*h*w]`, as candle flattens.
    Flatten {
        input: usize,
    },
    Repeat3 {
        input: usize,
    },
    /// Stand-alone ReLU / ReLU6 in the input's quantization.
    Clamp {
        input: usize,
        clamp: Clamp,
    },
    /// Tanh or sigmoid through a 256-entry table.
    Lut {
        input: usize,
        activation: Activation,
    },
    Add {
        a: usize,
        b: usize,
        clamp: Clamp,
    },
    Concat {
        inputs: Vec<usize>,
    },
}

impl OpSpec {
    fn inputs(&self) -> Vec<usize> {
        match self {
            Self::Input => vec![],
            Self::Conv { input, .. }
            | Self::Linear { input, .. }
            | Self::MaxPool { input, .. }
            | Self::AvgPool { input, .. }
            | Self::GlobalAvgPool { input }
            | Self::Flatten { input }
            | Self::Repeat3 { input }
            | Self::Clamp { input, .. }
            | Self::Lut { input, .. } => vec![*input],
            Self::Add { a, b, .. } => vec![*a, *b],
            Self::Concat { inputs } => inputs.clone(),
        }
    }
}

/// An op and the quantization of its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpRecord {
    spec: OpSpec,
    out: QuantParams,
    /// The graph node whose value this op produces (for error reports).
    #[serde(default)]
    node: usize,
}

/// Stored int8 parameters of a convolution or linear op.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerWeights {
    /// Codes in the zoo's layout (`[out, in/groups, k, k]` or `[out, in]`).
    pub(crate) codes: Vec<i8>,
    pub(crate) shape: Vec<usize>,
    /// Per output channel.
    pub(crate) scales: Vec<f32>,
    /// Quantized with scale `input scale * weight scale`.
    pub(crate) bias: Vec<i32>,
}

/// What an op needs at run time, derived from the stored form.
#[derive(Debug, Clone)]
enum Prepared {
    None,
    Dense {
        packed: PackedWeights,
        stage: OutputStage,
        /// `stage` laid out for the requantization loop.
        tile: RequantTile,
        /// `input scale * weight scale` per channel, for f32 logits.
        dequant: Vec<f32>,
    },
    Depthwise {
        weights: DwWeights,
        tile: RequantTile,
    },
    Pool(Requant),
    Add(Rescale, Rescale, (u8, u8)),
    Concat(Vec<Rescale>),
    Lut(Box<[u8; 256]>),
    Clamp(u8, u8),
}

/// A u8 NHWC activation.
#[derive(Debug, Clone, Default)]
struct Value {
    data: Vec<u8>,
    dims: Dims,
}

/// Quantization error of one op's output, from [`QuantizedModel::layer_errors`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerError {
    /// Index of the integer op.
    pub op: usize,
    /// Graph node whose value it produces.
    pub node: NodeId,
    /// `|dequantized - f32| / |f32|` over the batch.
    pub relative_error: f64,
}

/// A model in int8: per-channel int8 weights, u8 activations, i32 accumulation, and the
/// integer kernels of this crate from the quantized input to the logits.
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    name: String,
    ops: Vec<OpRecord>,
    weights: Vec<Option<LayerWeights>>,
    prepared: Vec<Prepared>,
    isa: Isa,
    /// Per op, the last op that reads its output (itself when none does).
    last_reader: Vec<usize>,
    /// Per op, how many ops read its output.
    readers: Vec<usize>,
    /// [`QuantizedModel::macs`], or 0 when unknown.
    macs_per_image: u64,
}

/// How [`QuantizedModel::run_inner`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every op's output kept, as its own op.
    Inspect,
    /// Outputs dropped (and their buffers reused) after their last reader, a max pool fused
    /// into the convolution before it.
    Fast,
}

/// Images per chunk of a batch for [`QuantizedModel::run`]: a few chunks per thread, so that
/// work stealing evens out threads slowed down by other processes, and no more than a chunk
/// whose activations stay in a core's cache.
fn images_per_chunk(batch: usize) -> usize {
    const MOST: usize = 16;
    batch
        .div_ceil(4 * rayon::current_num_threads().max(1))
        .clamp(1, MOST)
}

/// The first `n` images of `data` as calibration batches of 128 (`[0, 1]` pixels, on the CPU),
/// for [`QuantizedModel::quantize`].
pub fn calibration_batches(data: &hdr_data::Dataset, n: usize) -> Result<Vec<Tensor>> {
    data.head(n)
        .batches(
            &hdr_data::BatchConfig::eval(128),
            0,
            &candle_core::Device::Cpu,
        )?
        .map(|b| Ok(b?.images))
        .collect()
}

/// Runs `graph` in f32, returning every node's value (for calibration).
fn run_all(graph: &Graph, params: &HashMap<String, Tensor>, x: &Tensor) -> Result<Vec<Tensor>> {
    if let Some(n) = graph.parameters().iter().find(|n| !params.contains_key(*n)) {
        return Err(missing(n));
    }
    let get = |n: &str| {
        params
            .get(n)
            .cloned()
            .ok_or_else(|| hdr_models::ModelError::InvalidConfig {
                model: "graph",
                reason: format!("no parameter {n}"),
            })
    };
    Ok(graph.values_with(x, &get)?)
}

/// Quantizes a bias with scale `s_in * s_w[j]`, saturating well inside i32.
fn quantize_bias(b: &[f32], s_in: f32, s_w: &[f32]) -> Vec<i32> {
    const LIMIT: f64 = (1u64 << 30) as f64;
    b.iter()
        .zip(s_w)
        .map(|(&b, &sw)| {
            (b as f64 / (s_in as f64 * sw as f64))
                .round()
                .clamp(-LIMIT, LIMIT) as i32
        })
        .collect()
}

/// Cross-layer equalization: for every `conv A -> [batch norm] -> ReLU -> conv B` chain (each
/// step the only reader of the previous), scales A's output channel `i` by `1 / s_i` and B's
/// input channel `i` by `s_i`, `s_i = sqrt(r_A(i) / r_B(i))` with `r` the largest weight
/// magnitude of the channel (A's including its batch norm). ReLU is positively homogeneous,
/// so the f32 function is unchanged.
fn equalize(graph: &Graph, params: &mut HashMap<String, Tensor>) -> Result<()> {
    let nodes = &graph.nodes;
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for k in n.inputs() {
            if k < nodes.len() {
                users[k].push(i);
            }
        }
    }
    let only = |k: NodeId| match users[k].as_slice() {
        [u] => Some(*u),
        _ => None,
    };
    let put = |params: &mut HashMap<String, Tensor>,
               name: &str,
               v: Vec<f32>,
               shape: &[usize]|
     -> Result<()> {
        let dev = params
            .get(name)
            .ok_or_else(|| missing(name))?
            .device()
            .clone();
        params.insert(name.to_string(), Tensor::from_vec(v, shape, &dev)?);
        Ok(())
    };
    for (a, node) in nodes.iter().enumerate() {
        let Node::Conv {
            weight: wa,
            bias: ba,
            ..
        } = node
        else {
            continue;
        };
        let mut end = a;
        let mut bn = None;
        if let Some(u) = only(end) {
            if let Node::BatchNorm { prefix, .. } = &nodes[u] {
                bn = Some(prefix.clone());
                end = u;
            }
        }
        let Some(r) = only(end) else { continue };
        if !matches!(
            nodes[r],
            Node::Activation {
                activation: Activation::Relu,
                ..
            }
        ) {
            continue;
        }
        let Some(b) = only(r) else { continue };
        let Node::Conv {
            weight: wb,
            groups: gb,
            ..
        } = &nodes[b]
        else {
            continue;
        };
        let (wav, sa) = vec_of(params, wa)?;
        let (wbv, sb) = vec_of(params, wb)?;
        let c = sa[0];
        let (ob, ipg) = (sb[0], sb[1]);
        let depthwise_b = *gb > 1 && ipg == 1 && ob == c && *gb == c;
        if !(depthwise_b || (*gb == 1 && ipg == c)) || sa.len() != 4 || sb.len() != 4 {
            continue;
        }
        let per_a = wav.len() / c;
        let bn_scale: Vec<f32> = match &bn {
            Some(p) => {
                let bn = BatchNorm::read(params, p)?;
                if bn.len() != c {
                    continue;
                }
                (0..c).map(|j| bn.scale(j).abs()).collect()
            }
            None => vec![1.0; c],
        };
        let kk = sb[2] * sb[3];
        let rb = |i: usize| -> f32 {
            if depthwise_b {
                wbv[i * kk..(i + 1) * kk]
                    .iter()
                    .fold(0f32, |m, x| m.max(x.abs()))
            } else {
                (0..ob)
                    .flat_map(|o| wbv[(o * c + i) * kk..(o * c + i + 1) * kk].iter())
                    .fold(0f32, |m, x| m.max(x.abs()))
            }
        };
        let s: Vec<f32> = (0..c)
            .map(|i| {
                let ra = wav[i * per_a..(i + 1) * per_a]
                    .iter()
                    .fold(0f32, |m, x| m.max(x.abs()))
                    * bn_scale[i];
                let r2 = rb(i);
                let s = (ra / r2).sqrt();
                // Dead or degenerate channels keep their scale.
                if s.is_finite() && s > 1e-6 && s < 1e6 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        match &bn {
            Some(p) => {
                for part in ["weight", "bias"] {
                    let name = format!("{p}.{part}");
                    let (v, sh) = vec_of(params, &name)?;
                    let v = v.iter().zip(&s).map(|(x, s)| x / s).collect();
                    put(params, &name, v, &sh)?;
                }
            }
            None => {
                let v = wav
                    .iter()
                    .enumerate()
                    .map(|(j, x)| x / s[j / per_a])
                    .collect();
                put(params, wa, v, &sa)?;
                if let Some(bname) = ba {
                    let (v, sh) = vec_of(params, bname)?;
                    let v = v.iter().zip(&s).map(|(x, s)| x / s).collect();
                    put(params, bname, v, &sh)?;
                }
            }
        }
        let v = wbv
            .iter()
            .enumerate()
            .map(|(j, x)| {
                let i = if depthwise_b { j / kk } else { (j / kk) % c };
                x * s[i]
            })
            .collect();
        put(params, wb, v, &sb)?;
    }
    Ok(())
}

impl QuantizedModel {
    /// Post-training static quantization: folds batch norms into the convolutions before them,
    /// runs `graph` in f32 on the `calibration` batches (`[b, 1, 28, 28]`) to observe every
    /// activation's range, and quantizes weights per output channel (symmetric int8) and
    /// activations per tensor (asymmetric u8). `name` is recorded (e.g. `"lenet5"`).
    pub fn quantize(
        name: &str,
        graph: &Graph,
        vars: &VarMap,
        calibration: &[Tensor],
        cfg: &QuantizeConfig,
    ) -> Result<Self> {
        if calibration.is_empty() {
            return Err(CompressError::InvalidConfig {
                name: "calibration",
                value: "0 batches".into(),
                reason: "at least one batch is needed to observe activation ranges",
            });
        }
        let mut params = read_params(vars)?;
        if cfg.equalize {
            equalize(graph, &mut params)?;
        }
        let nodes = &graph.nodes;
        if nodes.first() != Some(&Node::Input) {
            return Err(CompressError::Unsupported {
                node: 0,
                reason: "the graph must start with its input".into(),
            });
        }
        let mut obs: Vec<RangeObserver> = (0..nodes.len())
            .map(|_| RangeObserver::new(cfg.observer))
            .collect();
        for x in calibration {
            for (o, v) in obs.iter_mut().zip(run_all(graph, &params, x)?) {
                o.observe(&v.flatten_all()?.to_vec1::<f32>()?);
            }
        }

        let users = graph.readers()?;
        // The single reader of `k`, when there is exactly one.
        let only_user = |k: NodeId| match users[k].as_slice() {
            [u] => Some(*u),
            _ => None,
        };
        let fused_clamp = |end: NodeId| -> Option<(NodeId, Clamp)> {
            let u = only_user(end)?;
            match &nodes[u] {
                Node::Activation { activation, .. } => Clamp::of(*activation).map(|c| (u, c)),
                _ => None,
            }
        };

        let mut slot: Vec<Option<usize>> = vec![None; nodes.len()];
        let mut absorbed = vec![false; nodes.len()];
        let mut ops: Vec<OpRecord> = Vec::new();
        let mut weights: Vec<Option<LayerWeights>> = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if absorbed[i] {
                continue;
            }
            let input_of = |k: NodeId| -> Result<usize> {
                slot[k].ok_or(CompressError::Unsupported {
                    node: i,
                    reason: format!("reads node {k}, which was fused into another op"),
                })
            };
            let in_params = |op: usize| ops[op].out;
            let mut end = i;
            let mut layer = None;
            let spec = match node {
                Node::Input => OpSpec::Input,
                Node::Repeat3 { input } => OpSpec::Repeat3 {
                    input: input_of(*input)?,
                },
                Node::Conv {
                    input,
                    weight,
                    bias,
                    stride,
                    padding,
                    groups,
                } => {
                    let input = input_of(*input)?;
                    let bn = only_user(end).and_then(|u| match &nodes[u] {
                        Node::BatchNorm { prefix, .. } => Some((u, prefix.as_str())),
                        _ => None,
                    });
                    let (w, shape, b) =
                        folded_conv(&params, weight, bias.as_deref(), bn.map(|(_, p)| p))?;
                    if let Some((u, _)) = bn {
                        end = u;
                        absorbed[u] = true;
                    }
                    let bad = |expected: &str| CompressError::BadParameter {
                        name: weight.clone(),
                        expected: expected.into(),
                        found: shape.clone(),
                    };
                    let [o, ipg, k, k2] = shape[..] else {
                        return Err(bad("[out, in / groups, k, k]"));
                    };
                    if k != k2 {
                        return Err(bad("a square kernel"));
                    }
                    let clamp = match fused_clamp(end) {
                        Some((u, c)) => {
                            end = u;
                            absorbed[u] = true;
                            c
                        }
                        None => Clamp::None,
                    };
                    let depthwise = *groups > 1 && ipg == 1 && o == *groups;
                    if *groups != 1 && !depthwise {
                        return Err(CompressError::Unsupported {
                            node: i,
                            reason: format!(
                                "grouped convolution with {groups} groups of {ipg} channels"
                            ),
                        });
                    }
                    let q = quantize_per_channel(&w, o)?;
                    let bias = quantize_bias(&b, in_params(input).scale, &q.scales);
                    layer = Some(LayerWeights {
                        codes: q.values,
                        shape: shape.clone(),
                        scales: q.scales,
                        bias,
                    });
                    OpSpec::Conv {
                        input,
                        kernel: k,
                        stride: *stride,
                        padding: *padding,
                        in_channels: if depthwise { o } else { ipg },
                        out_channels: o,
                        depthwise,
                        clamp,
                    }
                }
                Node::BatchNorm { input, prefix } => {
                    // On its own (pre-activation blocks, after a concatenation): a per-channel
                    // affine map, run as a 1x1 depthwise convolution.
                    let input = input_of(*input)?;
                    let bn = BatchNorm::read(&params, prefix)?;
                    let c = bn.len();
                    let scale: Vec<f32> = (0..c).map(|j| bn.scale(j)).collect();
                    let shift: Vec<f32> = (0..c).map(|j| bn.shift(j)).collect();
                    let clamp = match fused_clamp(end) {
                        Some((u, cl)) => {
                            end = u;
                            absorbed[u] = true;
                            cl
                        }
                        None => Clamp::None,
                    };
                    let q = quantize_per_channel(&scale, c)?;
                    let bias = quantize_bias(&shift, in_params(input).scale, &q.scales);
                    layer = Some(LayerWeights {
                        codes: q.values,
                        shape: vec![c, 1, 1, 1],
                        scales: q.scales,
                        bias,
                    });
                    OpSpec::Conv {
                        input,
                        kernel: 1,
                        stride: 1,
                        padding: 0,
                        in_channels: c,
                        out_channels: c,
                        depthwise: true,
                        clamp,
                    }
                }
                Node::Activation { input, activation } => {
                    let input = input_of(*input)?;
                    match Clamp::of(*activation) {
                        Some(clamp) => OpSpec::Clamp { input, clamp },
                        None => OpSpec::Lut {
                            input,
                            activation: *activation,
                        },
                    }
                }
                Node::MaxPool {
                    input,
                    kernel,
                    stride,
                } => OpSpec::MaxPool {
                    input: input_of(*input)?,
                    kernel: *kernel,
                    stride: *stride,
                },
                Node::AvgPool {
                    input,
                    kernel,
                    stride,
                } => OpSpec::AvgPool {
                    input: input_of(*input)?,
                    kernel: *kernel,
                    stride: *stride,
                },
                Node::GlobalAvgPool { input } => OpSpec::GlobalAvgPool {
                    input: input_of(*input)?,
                },
                Node::Flatten { input } => OpSpec::Flatten {
                    input: input_of(*input)?,
                },
                Node::Linear {
                    input,
                    weight,
                    bias,
                } => {
                    let input = input_of(*input)?;
                    let (w, shape) = vec_of(&params, weight)?;
                    let (b, _) = vec_of(&params, bias)?;
                    let [o, f] = shape[..] else {
                        return Err(CompressError::BadParameter {
                            name: weight.clone(),
                            expected: "[out, in]".into(),
                            found: shape,
                        });
                    };
                    if b.len() != o {
                        return Err(CompressError::BadParameter {
                            name: bias.clone(),
                            expected: format!("[{o}]"),
                            found: vec![b.len()],
                        });
                    }
                    let clamp = match fused_clamp(end) {
                        Some((u, c)) => {
                            end = u;
                            absorbed[u] = true;
                            c
                        }
                        None => Clamp::None,
                    };
                    let q = quantize_per_channel(&w, o)?;
                    let bias = quantize_bias(&b, in_params(input).scale, &q.scales);
                    layer = Some(LayerWeights {
                        codes: q.values,
                        shape: shape.clone(),
                        scales: q.scales,
                        bias,
                    });
                    OpSpec::Linear {
                        input,
                        in_features: f,
                        out_features: o,
                        clamp,
                    }
                }
                Node::Add { a, b } => {
                    let (a, b) = (input_of(*a)?, input_of(*b)?);
                    let clamp = match fused_clamp(end) {
                        Some((u, c)) => {
                            end = u;
                            absorbed[u] = true;
                            c
                        }
                        None => Clamp::None,
                    };
                    OpSpec::Add { a, b, clamp }
                }
                Node::Concat { inputs } => OpSpec::Concat {
                    inputs: inputs.iter().map(|&k| input_of(k)).collect::<Result<_>>()?,
                },
                _ => {
                    return Err(CompressError::Unsupported {
                        node: i,
                        reason: format!("no integer kernel for {node:?}"),
                    })
                }
            };
            // Ops that only move or select codes keep their input's quantization.
            let out = match &spec {
                OpSpec::Repeat3 { input }
                | OpSpec::MaxPool { input, .. }
                | OpSpec::Flatten { input }
                | OpSpec::Clamp { input, .. } => ops[*input].out,
                _ => obs[end].params(),
            };
            slot[end] = Some(ops.len());
            ops.push(OpRecord {
                spec,
                out,
                node: end,
            });
            weights.push(layer);
        }
        if slot.last().copied().flatten() != Some(ops.len() - 1) {
            return Err(CompressError::Unsupported {
                node: nodes.len() - 1,
                reason: "the last node is not the graph's output".into(),
            });
        }
        Self::from_parts(name.to_string(), ops, weights, cfg.isa)
    }

    /// Builds the run-time form (packed weights, multipliers, tables) from the stored form.
    pub(crate) fn from_parts(
        name: String,
        ops: Vec<OpRecord>,
        weights: Vec<Option<LayerWeights>>,
        isa: Option<Isa>,
    ) -> Result<Self> {
        let isa = isa.filter(|i| i.available()).unwrap_or_else(Isa::detect);
        let mut prepared = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let bad = |reason: String| CompressError::Unsupported { node: i, reason };
            for k in op.spec.inputs() {
                if k >= i {
                    return Err(bad(format!("reads op {k}, which does not precede it")));
                }
            }
            let inp = |k: usize| ops[k].out;
            let out = op.out;
            if !(out.scale.is_finite() && out.scale > 0.0 && (0..=255).contains(&out.zero_point)) {
                return Err(bad(format!("bad output quantization {out:?}")));
            }
            let layer = || {
                weights
                    .get(i)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| bad("weights missing".into()))
            };
            let stage = |lw: &LayerWeights,
                         s_in: f32,
                         n: usize,
                         clamp: Clamp|
             -> Result<OutputStage> {
                if lw.scales.len() != n || lw.bias.len() != n || !lw.codes.len().is_multiple_of(n) {
                    return Err(bad("weights do not match the op".into()));
                }
                let (min, max) = clamp.range(out);
                Ok(OutputStage {
                    bias: lw.bias.clone(),
                    scale: lw
                        .scales
                        .iter()
                        // Multipliers below f32 range would be 0: keep them positive.
                        .map(|&sw| {
                            ((s_in as f64 * sw as f64 / out.scale as f64) as f32)
                                .max(f32::MIN_POSITIVE)
                        })
                        .collect(),
                    zero_point: out.zero_point,
                    min,
                    max,
                })
            };
            let p = match &op.spec {
                OpSpec::Conv {
                    input,
                    kernel,
                    in_channels,
                    out_channels,
                    depthwise,
                    clamp,
                    ..
                } => {
                    let (lw, s_in) = (layer()?, inp(*input));
                    let (k, c, o) = (*kernel, *in_channels, *out_channels);
                    let kk = k * k;
                    if lw.codes.len() != o * c * kk && !(*depthwise && lw.codes.len() == o * kk) {
                        return Err(bad("weights do not match the convolution".into()));
                    }
                    let mut st = stage(lw, s_in.scale, o, *clamp)?;
                    if *depthwise {
                        // [c][ky][kx] -> [ky][kx][c]: channels innermost, like the activations.
                        let mut codes = vec![0i8; kk * o];
                        for j in 0..o {
                            for t in 0..kk {
                                codes[t * o + j] = lw.codes[j * kk + t];
                            }
                        }
                        // The input's zero point is what padding taps read.
                        let zero = s_in.zero_point as u8;
                        Prepared::Depthwise {
                            tile: RequantTile::new(&st, o)?,
                            weights: DwWeights::new(&codes, kk, o, zero),
                        }
                    } else {
                        // [o][c][ky][kx] -> [o][ky][kx][c], the order of `im2col` patches.
                        let mut codes = vec![0i8; o * kk * c];
                        for j in 0..o {
                            for ci in 0..c {
                                for t in 0..kk {
                                    codes[(j * kk + t) * c + ci] = lw.codes[(j * c + ci) * kk + t];
                                }
                            }
                        }
                        let packed = PackedWeights::conv(&codes, o, k, c)?;
                        for (b, &s) in st.bias.iter_mut().zip(packed.row_sums()) {
                            // Padding and zero-point correction: the product sums raw codes.
                            *b = (*b as i64 - s_in.zero_point as i64 * s as i64)
                                .clamp(i32::MIN as i64, i32::MAX as i64)
                                as i32;
                        }
                        Prepared::Dense {
                            tile: RequantTile::new(&st, o)?,
                            packed,
                            stage: st,
                            dequant: vec![],
                        }
                    }
                }
                OpSpec::Linear {
                    input,
                    in_features,
                    out_features,
                    clamp,
                } => {
                    let (lw, s_in) = (layer()?, inp(*input));
                    if lw.codes.len() != in_features * out_features {
                        return Err(bad("weights do not match the layer".into()));
                    }
                    let mut st = stage(lw, s_in.scale, *out_features, *clamp)?;
                    let packed = PackedWeights::new(&lw.codes, *out_features, *in_features)?;
                    for (b, &s) in st.bias.iter_mut().zip(packed.row_sums()) {
                        *b = (*b as i64 - s_in.zero_point as i64 * s as i64)
                            .clamp(i32::MIN as i64, i32::MAX as i64)
                            as i32;
                    }
                    let dequant = lw.scales.iter().map(|&sw| sw * s_in.scale).collect();
                    Prepared::Dense {
                        tile: RequantTile::new(&st, *out_features)?,
                        packed,
                        stage: st,
                        dequant,
                    }
                }
                OpSpec::AvgPool { input, kernel, .. } => Prepared::Pool(Requant::new(
                    inp(*input).scale as f64 / ((kernel * kernel) as f64 * out.scale as f64),
                )?),
                // The window is only known at run time; the multiplier is built then.
                OpSpec::GlobalAvgPool { .. } => Prepared::None,
                OpSpec::Add { a, b, clamp } => {
                    let r = |k: usize| {
                        let p = inp(k);
                        Rescale::new(p.scale as f64 / out.scale as f64, p.zero_point)
                    };
                    Prepared::Add(r(*a)?, r(*b)?, clamp.range(out))
                }
                OpSpec::Concat { inputs } => Prepared::Concat(
                    inputs
                        .iter()
                        .map(|&k| {
                            let p = inp(k);
                            Rescale::new(p.scale as f64 / out.scale as f64, p.zero_point)
                        })
                        .collect::<Result<_>>()?,
                ),
                OpSpec::Lut { input, activation } => {
                    let p = inp(*input);
                    let f = |x: f32| match activation {
                        Activation::Tanh => x.tanh(),
                        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                        Activation::Relu => x.max(0.0),
                        Activation::Relu6 => x.clamp(0.0, 6.0),
                    };
                    let mut t = Box::new([0u8; 256]);
                    for (q, y) in t.iter_mut().enumerate() {
                        *y = out.quantize_u8(f(p.dequantize(q as i32)));
                    }
                    Prepared::Lut(t)
                }
                OpSpec::Clamp { clamp, .. } => {
                    let (lo, hi) = clamp.range(out);
                    Prepared::Clamp(lo, hi)
                }
                OpSpec::Input
                | OpSpec::MaxPool { .. }
                | OpSpec::Flatten { .. }
                | OpSpec::Repeat3 { .. } => Prepared::None,
            };
            prepared.push(p);
        }
        if ops.is_empty() || ops[0].spec != OpSpec::Input {
            return Err(CompressError::Unsupported {
                node: 0,
                reason: "a quantized model starts with its input".into(),
            });
        }
        let mut readers = vec![0; ops.len()];
        let mut last_reader: Vec<usize> = (0..ops.len()).collect();
        for (i, op) in ops.iter().enumerate() {
            for k in op.spec.inputs() {
                readers[k] += 1;
                last_reader[k] = i;
            }
        }
        let mut model = Self {
            name,
            ops,
            weights,
            prepared,
            isa,
            last_reader,
            readers,
            macs_per_image: 0,
        };
        // Only a hint for `run` (a model for other image sizes just stays off the pool).
        model.macs_per_image = model.macs().unwrap_or(0);
        Ok(model)
    }

    /// Name of the model this was quantized from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Instruction set of the integer matrix product.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs the integer path with another instruction set (for comparisons; unavailable ones
    /// fall back to the portable path).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = if isa.available() { isa } else { Isa::Portable };
        self
    }

    /// Number of integer ops (after fusion).
    pub fn num_ops(&self) -> usize {
        self.ops.len()
    }

    /// Bytes of the stored parameters: int8 weights, f32 scales and i32 biases.
    pub fn parameter_bytes(&self) -> usize {
        self.weights
            .iter()
            .flatten()
            .map(|w| w.codes.len() + 4 * w.scales.len() + 4 * w.bias.len())
            .sum()
    }

    /// Weight codes and biases that are not zero.
    pub fn nonzero_parameters(&self) -> u64 {
        self.weights
            .iter()
            .flatten()
            .map(|w| {
                (w.codes.iter().filter(|&&c| c != 0).count()
                    + w.bias.iter().filter(|&&b| b != 0).count()) as u64
            })
            .sum()
    }

    /// Multiply-accumulates per `[1, 28, 28]` image in the convolutions and linear layers
    /// (batch norms folded in, so none for them).
    pub fn macs(&self) -> Result<u64> {
        // The spatial sizes come from running one blank image.
        let blank = [0.0; 28 * 28];
        let (_, _, vals) = self.run_inner(&blank, (1, 28, 28, 1), Mode::Inspect, Threads::Pool)?;
        let mut macs = 0u64;
        for (i, op) in self.ops.iter().enumerate() {
            macs += match &op.spec {
                OpSpec::Conv {
                    input,
                    kernel,
                    stride,
                    padding,
                    in_channels,
                    out_channels,
                    depthwise,
                    ..
                } => {
                    let v = vals.get(*input).ok_or_else(|| CompressError::Unsupported {
                        node: i,
                        reason: format!("reads op {input}, which has no value"),
                    })?;
                    let (oh, ow) = ConvShape {
                        batch: 1,
                        height: v.dims.1,
                        width: v.dims.2,
                        in_channels: v.dims.3,
                        out_channels: *out_channels,
                        kernel: *kernel,
                        stride: *stride,
                        padding: *padding,
                    }
                    .output()?;
                    let per_output = if *depthwise { 1 } else { *in_channels };
                    (oh * ow * out_channels * per_output * kernel * kernel) as u64
                }
                OpSpec::Linear {
                    in_features,
                    out_features,
                    ..
                } => (in_features * out_features) as u64,
                _ => 0,
            };
        }
        Ok(macs)
    }

    pub(crate) fn parts(&self) -> (&[OpRecord], &[Option<LayerWeights>]) {
        (&self.ops, &self.weights)
    }

    /// Logits of a batch: quantizes `x` (`[b, c, h, w]` f32) to u8, runs every layer in
    /// integers and dequantizes the final accumulators.
    ///
    /// # Shapes
    /// `[b, 1, 28, 28] -> [b, classes]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[b, c, h, w] = x.dims() else {
            return Err(CompressError::BadInput {
                expected: "[batch, channels, height, width] f32".into(),
                found: x.dims().to_vec(),
            });
        };
        let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (logits, classes) = self.run(&data, (b, h, w, c))?;
        Ok(Tensor::from_vec(logits, (b, classes), x.device())?)
    }

    /// [`QuantizedModel::forward`] on a plain NCHW slice; returns logits and class count.
    pub fn run(&self, x: &[f32], dims: Dims) -> Result<(Vec<f32>, usize)> {
        let (b, h, w, c) = dims;
        let per_image = h * w * c;
        let chunk = images_per_chunk(b);
        if chunk >= b || per_image == 0 || x.len() != b * per_image {
            // Too few images to split: the large ops split each image instead, on the pool
            // (entered once, so that each split costs a hand-off between workers, not a
            // wake-up of the calling thread).
            let (logits, classes, _) =
                if self.macs_per_image.saturating_mul(b as u64) >= hdr_ops::IN_POOL_MIN_MACS {
                    hdr_ops::in_pool(|| {
                        self.run_inner(x, dims, Mode::Fast, Threads::Within(SPLIT_MIN_MACS))
                    })?
                } else {
                    self.run_inner(x, dims, Mode::Fast, Threads::Caller)?
                };
            return Ok((logits, classes));
        }
        // Images are independent: chunks of the batch run through the whole network in
        // parallel, each on one thread, with their activations in that core's cache.
        let parts = x
            .par_chunks(chunk * per_image)
            .map(|xs| {
                let dims = (xs.len() / per_image, h, w, c);
                self.run_inner(xs, dims, Mode::Fast, Threads::Caller)
            })
            .collect::<Result<Vec<_>>>()?;
        let classes = parts.first().map_or(0, |p| p.1);
        let mut logits = Vec::with_capacity(b * classes);
        for (l, _, _) in parts {
            logits.extend_from_slice(&l);
        }
        Ok((logits, classes))
    }

    /// Relative error `|deq(q) - f| / |f|` of every op's output against the f32 graph on `x`
    /// (`graph` and `vars` as given to [`QuantizedModel::quantize`]; the f32 reference uses the
    /// same equalization as `cfg`). Shows which layer loses accuracy.
    pub fn layer_errors(
        &self,
        graph: &Graph,
        vars: &VarMap,
        x: &Tensor,
        cfg: &QuantizeConfig,
    ) -> Result<Vec<LayerError>> {
        let mut params = read_params(vars)?;
        if cfg.equalize {
            equalize(graph, &mut params)?;
        }
        let reference = run_all(graph, &params, x)?;
        let &[b, c, h, w] = x.dims() else {
            return Err(CompressError::BadInput {
                expected: "[batch, channels, height, width] f32".into(),
                found: x.dims().to_vec(),
            });
        };
        let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (_, _, vals) = self.run_inner(&data, (b, h, w, c), Mode::Inspect, Threads::Pool)?;
        let mut out = Vec::new();
        for (i, v) in vals.iter().enumerate() {
            let op = &self.ops[i];
            let Some(f) = reference.get(op.node) else {
                continue;
            };
            let f = if f.rank() == 4 {
                f.permute((0, 2, 3, 1))?.flatten_all()?
            } else {
                f.flatten_all()?
            };
            let f = f.to_vec1::<f32>()?;
            if f.len() != v.data.len() {
                continue;
            }
            let (mut num, mut den) = (0f64, 0f64);
            for (&q, &r) in v.data.iter().zip(&f) {
                let d = op.out.dequantize(q as i32) as f64 - r as f64;
                num += d * d;
                den += r as f64 * r as f64;
            }
            out.push(LayerError {
                op: i,
                node: op.node,
                relative_error: (num / den.max(1e-30)).sqrt(),
            });
        }
        Ok(out)
    }

    /// The max pool (`(kernel, stride)`) that op `i`, a dense convolution, computes in the
    /// fast run: the next op, when it pools `i` and nothing else reads `i`.
    fn fused_pool(&self, i: usize) -> Option<(usize, usize)> {
        let dense = matches!(self.prepared.get(i), Some(Prepared::Dense { .. }))
            && matches!(self.ops.get(i)?.spec, OpSpec::Conv { .. });
        match self.ops.get(i + 1)?.spec {
            OpSpec::MaxPool {
                input,
                kernel,
                stride,
            } if dense && input == i && self.readers[i] == 1 => Some((kernel, stride)),
            _ => None,
        }
    }

    fn run_inner(
        &self,
        x: &[f32],
        (b, h, w, c): Dims,
        mode: Mode,
        threads: Threads,
    ) -> Result<(Vec<f32>, usize, Vec<Value>)> {
        if x.len() != b * h * w * c || b == 0 {
            return Err(CompressError::BadInput {
                expected: format!("{b} x {c} x {h} x {w} values, batch >= 1"),
                found: vec![x.len()],
            });
        }
        let fast = mode == Mode::Fast;
        let mut vals: Vec<Value> = Vec::with_capacity(self.ops.len());
        // Buffers of outputs that have been read for the last time, for later outputs.
        let mut spare: Vec<Vec<u8>> = Vec::new();
        // The output of a max pool computed with the convolution before it.
        let mut pooled: Option<Value> = None;
        let last = self.ops.len() - 1;
        for (i, (op, prep)) in self.ops.iter().zip(&self.prepared).enumerate() {
            let bad = |reason: String| CompressError::Unsupported { node: i, reason };
            let mut y = Value {
                data: spare.pop().unwrap_or_default(),
                dims: (0, 0, 0, 0),
            };
            match (&op.spec, prep) {
                (OpSpec::MaxPool { .. }, _) if pooled.is_some() => {
                    let unused = std::mem::replace(&mut y, pooled.take().unwrap_or_default());
                    spare.push(unused.data);
                }
                (OpSpec::Input, _) => {
                    // NCHW f32 -> NHWC u8.
                    y.dims = (b, h, w, c);
                    y.data.clear();
                    if c == 1 {
                        kernels::quantize_u8_into(x, op.out, &mut y.data);
                    } else {
                        y.data.resize(x.len(), 0);
                        for n in 0..b {
                            for ch in 0..c {
                                for p in 0..h * w {
                                    y.data[(n * h * w + p) * c + ch] =
                                        op.out.quantize_u8(x[(n * c + ch) * h * w + p]);
                                }
                            }
                        }
                    }
                }
                (
                    OpSpec::Conv {
                        input,
                        kernel,
                        stride,
                        padding,
                        out_channels,
                        ..
                    },
                    p,
                ) => {
                    let v = &vals[*input];
                    let s = ConvShape {
                        batch: v.dims.0,
                        height: v.dims.1,
                        width: v.dims.2,
                        in_channels: v.dims.3,
                        out_channels: *out_channels,
                        kernel: *kernel,
                        stride: *stride,
                        padding: *padding,
                    };
                    let (oh, ow) = s.output()?;
                    let z = self.ops[*input].out.zero_point as u8;
                    let pool = self.fused_pool(i).filter(|_| fast);
                    match p {
                        Prepared::Dense { packed, tile, .. } => {
                            let (ph, pw) = kernels::conv2d_pooled(
                                self.isa,
                                &v.data,
                                z,
                                &s,
                                packed,
                                tile,
                                pool,
                                threads,
                                &mut y.data,
                            )?;
                            y.dims = (s.batch, ph, pw, *out_channels);
                            if pool.is_some() {
                                pooled = Some(std::mem::take(&mut y));
                            }
                        }
                        Prepared::Depthwise { weights, tile } => {
                            kernels::depthwise_conv2d_on(
                                &v.data,
                                z,
                                &s,
                                weights,
                                tile,
                                threads,
                                &mut y.data,
                            )?;
                            y.dims = (s.batch, oh, ow, *out_channels);
                        }
                        _ => return Err(bad("convolution without weights".into())),
                    }
                }
                (
                    OpSpec::Linear {
                        input,
                        in_features,
                        out_features,
                        ..
                    },
                    Prepared::Dense {
                        packed,
                        stage,
                        tile,
                        dequant,
                    },
                ) => {
                    let v = &vals[*input];
                    let (n, f) = (v.dims.0, v.dims.1 * v.dims.2 * v.dims.3);
                    if f != *in_features {
                        return Err(CompressError::BadInput {
                            expected: format!("{in_features} features"),
                            found: vec![n, f],
                        });
                    }
                    let kp = packed.padded_k();
                    let padded;
                    let a: &[u8] = if kp == f {
                        &v.data
                    } else {
                        let mut t = vec![0u8; n * kp];
                        for (d, s) in t.chunks_mut(kp).zip(v.data.chunks(f)) {
                            d[..f].copy_from_slice(s);
                        }
                        padded = t;
                        &padded
                    };
                    let o = *out_features;
                    let mut acc = vec![0i32; n * o];
                    kernels::gemm_u8i8_on(self.isa, a, n, kp, packed, threads, &mut acc)?;
                    if i == last {
                        // The logits leave the integer domain straight from the accumulators.
                        let logits = acc
                            .chunks(o)
                            .flat_map(|r| {
                                r.iter().enumerate().map(|(j, &a)| {
                                    (a as i64 + stage.bias[j] as i64) as f32 * dequant[j]
                                })
                            })
                            .collect();
                        return Ok((logits, o, vals));
                    }
                    y.data.clear();
                    y.data.resize(n * o, 0);
                    kernels::requantize_with(&acc, tile, &mut y.data)?;
                    y.dims = (n, 1, 1, o);
                }
                (
                    OpSpec::MaxPool {
                        input,
                        kernel,
                        stride,
                    },
                    _,
                ) => {
                    let v = &vals[*input];
                    kernels::max_pool(&v.data, v.dims, *kernel, *stride, &mut y.data)?;
                    let (n, hh, ww, cc) = v.dims;
                    y.dims = (
                        n,
                        (hh - kernel) / stride + 1,
                        (ww - kernel) / stride + 1,
                        cc,
                    );
                }
                (
                    OpSpec::AvgPool {
                        input,
                        kernel,
                        stride,
                    },
                    Prepared::Pool(rq),
                ) => {
                    let v = &vals[*input];
                    let zi = self.ops[*input].out.zero_point;
                    kernels::avg_pool(
                        &v.data,
                        v.dims,
                        *kernel,
                        *stride,
                        zi,
                        *rq,
                        op.out.zero_point,
                        &mut y.data,
                    )?;
                    let (n, hh, ww, cc) = v.dims;
                    y.dims = (
                        n,
                        (hh - kernel) / stride + 1,
                        (ww - kernel) / stride + 1,
                        cc,
                    );
                }
                (OpSpec::GlobalAvgPool { input }, _) => {
                    let v = &vals[*input];
                    let pi = self.ops[*input].out;
                    let (n, hh, ww, cc) = v.dims;
                    if hh != ww {
                        return Err(bad(format!("global pooling of a {hh} x {ww} map")));
                    }
                    let rq =
                        Requant::new(pi.scale as f64 / ((hh * ww) as f64 * op.out.scale as f64))?;
                    kernels::avg_pool(
                        &v.data,
                        v.dims,
                        hh,
                        1,
                        pi.zero_point,
                        rq,
                        op.out.zero_point,
                        &mut y.data,
                    )?;
                    y.dims = (n, 1, 1, cc);
                }
                (OpSpec::Flatten { input }, _) => {
                    let v = &vals[*input];
                    let (n, hh, ww, cc) = v.dims;
                    let hw = hh * ww;
                    y.data.clear();
                    y.data.resize(v.data.len(), 0);
                    for s in 0..n {
                        for p in 0..hw {
                            for ch in 0..cc {
                                y.data[s * hw * cc + ch * hw + p] = v.data[(s * hw + p) * cc + ch];
                            }
                        }
                    }
                    y.dims = (n, 1, 1, hw * cc);
                }
                (OpSpec::Repeat3 { input }, _) => {
                    let v = &vals[*input];
                    let (n, hh, ww, cc) = v.dims;
                    if cc != 1 {
                        return Err(bad(format!("repeat of {cc} channels")));
                    }
                    y.data.clear();
                    y.data.extend(v.data.iter().flat_map(|&q| [q; 3]));
                    y.dims = (n, hh, ww, 3);
                }
                (OpSpec::Clamp { input, .. }, Prepared::Clamp(lo, hi)) => {
                    let v = &vals[*input];
                    y.data.clear();
                    y.data.extend(v.data.iter().map(|&q| q.clamp(*lo, *hi)));
                    y.dims = v.dims;
                }
                (OpSpec::Lut { input, .. }, Prepared::Lut(t)) => {
                    let v = &vals[*input];
                    y.data.clear();
                    y.data.extend(v.data.iter().map(|&q| t[q as usize]));
                    y.dims = v.dims;
                }
                (OpSpec::Add { a, b, .. }, Prepared::Add(ra, rb, range)) => {
                    let (va, vb) = (&vals[*a], &vals[*b]);
                    if va.dims != vb.dims {
                        return Err(bad(format!("adds {:?} to {:?}", va.dims, vb.dims)));
                    }
                    kernels::add(
                        &va.data,
                        *ra,
                        &vb.data,
                        *rb,
                        op.out.zero_point,
                        *range,
                        &mut y.data,
                    )?;
                    y.dims = va.dims;
                }
                (OpSpec::Concat { inputs }, Prepared::Concat(rs)) => {
                    let parts: Vec<&Value> = inputs.iter().map(|&k| &vals[k]).collect();
                    let (n, hh, ww, _) = parts
                        .first()
                        .ok_or_else(|| bad("empty concatenation".into()))?
                        .dims;
                    if parts
                        .iter()
                        .any(|p| (p.dims.0, p.dims.1, p.dims.2) != (n, hh, ww))
                    {
                        return Err(bad("concatenates maps of different sizes".into()));
                    }
                    let chans: Vec<usize> = parts.iter().map(|p| p.dims.3).collect();
                    let slices: Vec<&[u8]> = parts.iter().map(|p| p.data.as_slice()).collect();
                    kernels::concat(
                        &slices,
                        &chans,
                        rs,
                        n * hh * ww,
                        op.out.zero_point,
                        &mut y.data,
                    )?;
                    y.dims = (n, hh, ww, chans.iter().sum());
                }
                _ => return Err(bad("op and prepared data disagree".into())),
            }
            vals.push(y);
            if fast {
                for k in op.spec.inputs() {
                    if self.last_reader[k] == i && vals[k].data.capacity() > 0 {
                        spare.push(std::mem::take(&mut vals[k].data));
                    }
                }
            }
        }
        // A graph that does not end in a linear layer: dequantize its codes.
        let v = vals.pop().ok_or_else(|| CompressError::Unsupported {
            node: 0,
            reason: "empty model".into(),
        })?;
        let p = self.ops[last].out;
        let classes = v.dims.1 * v.dims.2 * v.dims.3;
        let logits = v.data.iter().map(|&q| p.dequantize(q as i32)).collect();
        vals.push(v);
        Ok((logits, classes, vals))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    #[test]
    fn equalization_keeps_the_f32_function_and_changes_weights() {
        for name in ["mobilenet_hdr", "lenet5", "resnet"] {
            let vars = VarMap::new();
            let m = hdr_models::create(
                name,
                VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            )
            .unwrap();
            hdr_models::init::init(&vars, 4).unwrap();
            let g = m.graph();
            let before = read_params(&vars).unwrap();
            let mut after = before.clone();
            equalize(&g, &mut after).unwrap();
            let x = Tensor::rand(0f32, 1f32, (3, 1, 28, 28), &Device::Cpu).unwrap();
            let y0 = run_all(&g, &before, &x).unwrap().pop().unwrap();
            let y1 = run_all(&g, &after, &x).unwrap().pop().unwrap();
            let d = (&y0 - &y1)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = y0
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-4 * scale.max(1.0), "{name}: {d}");
            let changed = before.iter().any(|(k, v)| {
                let w = &after[k];
                (v - w)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            });
            // LeNet-5's default activation may not be ReLU; the others must be equalized.
            assert!(changed || name == "lenet5", "{name}: nothing equalized");
        }
    }

    /// A random model of `name`, quantized on random images.
    fn quantized(name: &str, seed: u64) -> QuantizedModel {
        let vars = VarMap::new();
        let m = hdr_models::create(
            name,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        hdr_models::init::init(&vars, seed).unwrap();
        let pixels: Vec<f32> = (0..8 * 784)
            .map(|i| ((i * 31) % 256) as f32 / 255.0)
            .collect();
        let calib = Tensor::from_vec(pixels, (8, 1, 28, 28), &Device::Cpu).unwrap();
        QuantizedModel::quantize(
            name,
            &m.graph(),
            &vars,
            &[calib],
            &QuantizeConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn chunked_fused_run_equals_the_op_by_op_run() {
        // `run` splits the batch into chunks and fuses max pools into convolutions; the
        // op-by-op run keeps every op. Both are integer arithmetic: the logits are identical.
        let cases: Vec<(&str, &[usize])> = hdr_models::list()
            .into_iter()
            .map(|n| -> (&str, &[usize]) {
                match n {
                    "lenet5" | "lenet5_classic" | "mobilenet_hdr" => (n, &[1, 2, 37]),
                    _ => (n, &[1, 3]),
                }
            })
            .collect();
        for (name, batches) in cases {
            let q = quantized(name, 9);
            for &b in batches {
                let x: Vec<f32> = (0..b * 784)
                    .map(|i| ((i * 7919) % 1000) as f32 / 999.0)
                    .collect();
                for isa in Isa::ALL {
                    if !isa.available() || (isa == Isa::Portable && b > 3 && name != "lenet5") {
                        continue;
                    }
                    let q = q.clone().with_isa(isa);
                    let (fast, classes) = q.run(&x, (b, 28, 28, 1)).unwrap();
                    let dims = (b, 28, 28, 1);
                    let (each, c2, _) =
                        q.run_inner(&x, dims, Mode::Inspect, Threads::Pool).unwrap();
                    assert_eq!(classes, c2, "{name}");
                    assert_eq!(fast.len(), b * classes, "{name}");
                    assert_eq!(fast, each, "{name} b{b} {isa:?}");
                    // Each image split over the pool, whatever the model's size.
                    for threads in [Threads::Within(0), Threads::Caller] {
                        let (split, _, _) =
                            hdr_ops::in_pool(|| q.run_inner(&x, dims, Mode::Fast, threads))
                                .unwrap();
                        assert_eq!(split, each, "{name} b{b} {isa:?} {threads:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn lenet5_fuses_both_max_pools() {
        let q = quantized("lenet5", 2);
        let fused: Vec<_> = (0..q.num_ops()).filter_map(|i| q.fused_pool(i)).collect();
        assert_eq!(fused, [(2, 2), (2, 2)]);
        // Average pooling (the classic LeNet-5) is not fused.
        let classic = quantized("lenet5_classic", 2);
        assert!((0..classic.num_ops()).all(|i| classic.fused_pool(i).is_none()));
    }
}
