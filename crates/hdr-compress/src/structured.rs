//! Structured pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): whole output
//! channels of convolutions and hidden units of linear layers go, chosen by the L1 norm of
//! their filters, and a smaller dense model is rebuilt, so the saving shows in MACs and latency.
//!
//! Works on a model's [`Graph`]: batch norms are folded into the convolutions before them (the
//! same folding as int8 quantization), then each removed channel takes with it its filter and
//! bias, the matching rows of the depthwise convolutions and batch norms it flows through, and
//! the matching input channels (or, after a flatten, column groups) of the layer that reads it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use hdr_data::Dataset;
use hdr_models::{Graph, Node, NodeId};

use crate::error::{CompressError, Result};
use crate::fold::{folded_conv, missing, read_params};
use crate::io::{format_err, write_atomic};
use crate::model::{QuantizeConfig, QuantizedModel};
use crate::prune::{train_masked, FineTuneConfig, Masks};

/// Value of the `format` metadata key of structured-pruned model files.
pub const STRUCTURED_FORMAT: &str = "hdr-compress/structured/1";

/// Settings of [`StructuredModel::prune`].
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredConfig {
    /// Fraction of the model's multiply-accumulates to keep, in `(0, 1]`. Every prunable layer
    /// keeps the same fraction of its channels, the largest that meets this budget.
    pub macs_fraction: f64,
}

impl Default for StructuredConfig {
    /// Half the MACs.
    fn default() -> Self {
        Self { macs_fraction: 0.5 }
    }
}

/// Channel count of one prunable layer, from [`StructuredModel::widths`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerWidth {
    /// The layer's weight parameter, e.g. `c3.weight`: the key of channel selections.
    pub layer: String,
    /// Output channels (convolution) or units (linear).
    pub channels: usize,
}

/// Channels to keep, by prunable layer (its weight parameter name): strictly increasing
/// indices. Layers not named keep all their channels.
pub type ChannelSelection = BTreeMap<String, Vec<usize>>;

/// A dense f32 model as a [`Graph`] with its own parameters, batch norms folded into the
/// convolutions: the result of structured pruning. It runs on the graph interpreter (the
/// `hdr-ops` kernels), trains through candle variables, saves as safetensors, and quantizes
/// to int8 like any zoo model.
// Not `Clone`: a cloned `VarMap` shares its variables, so a clone would train both.
pub struct StructuredModel {
    name: String,
    graph: Graph,
    vars: VarMap,
    /// Multiply-accumulates per image (fixed by the shapes): decides where `forward` runs.
    macs_per_image: u64,
}

impl std::fmt::Debug for StructuredModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuredModel")
            .field("name", &self.name)
            .field("graph", &self.graph)
            .finish_non_exhaustive()
    }
}

/// Output of one graph node, per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Map { c: usize, h: usize, w: usize },
    Flat(usize),
}

impl Shape {
    /// Channels of a map, features of a vector.
    fn width(self) -> usize {
        match self {
            Self::Map { c, .. } => c,
            Self::Flat(n) => n,
        }
    }
}

/// A prunable layer and everything its output channels reach.
#[derive(Debug, Clone)]
struct Layer {
    node: NodeId,
    weight: String,
    bias: Option<String>,
    channels: usize,
    /// Depthwise convolutions and batch norms that carry the channels unchanged.
    followers: Vec<NodeId>,
    /// The convolution or linear layer that reads the channels.
    consumer: NodeId,
    /// Features per channel at the consumer: `h * w` after a flatten of an `h x w` map, else 1.
    spatial: usize,
}

fn dims_of(params: &HashMap<String, Tensor>, name: &str) -> Result<Vec<usize>> {
    Ok(params
        .get(name)
        .ok_or_else(|| missing(name))?
        .dims()
        .to_vec())
}

fn unsupported(node: NodeId, reason: impl Into<String>) -> CompressError {
    CompressError::Unsupported {
        node,
        reason: reason.into(),
    }
}

/// Depthwise: one filter per input channel (`groups == channels`, multiplier 1).
fn is_depthwise(groups: usize, input: Shape, weight: &[usize]) -> bool {
    groups > 1
        && input.width() == groups
        && weight.first() == Some(&groups)
        && weight.get(1) == Some(&1)
}

/// Checks every parameter's shape against what flows into it and returns each node's output
/// shape for a `[1, 28, 28]` input.
fn infer(graph: &Graph, params: &HashMap<String, Tensor>) -> Result<Vec<Shape>> {
    let mut shapes: Vec<Shape> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let arg = |k: NodeId| -> Result<Shape> {
            shapes
                .get(k)
                .copied()
                .ok_or_else(|| unsupported(i, format!("reads node {k}, which does not precede it")))
        };
        let map = |k: NodeId| -> Result<(usize, usize, usize)> {
            match arg(k)? {
                Shape::Map { c, h, w } => Ok((c, h, w)),
                Shape::Flat(n) => Err(unsupported(
                    i,
                    format!("needs a feature map, gets {n} features"),
                )),
            }
        };
        let bad = |name: &str, expected: String, found: Vec<usize>| CompressError::BadParameter {
            name: name.to_string(),
            expected,
            found,
        };
        // Output length of a window `k` with stride `s` over `n` values padded by `p` each side.
        let window = |n: usize, k: usize, s: usize, p: usize| -> Result<usize> {
            if k == 0 || s == 0 || n + 2 * p < k {
                return Err(unsupported(
                    i,
                    format!("window {k}/{s} (padding {p}) over {n} values"),
                ));
            }
            Ok((n + 2 * p - k) / s + 1)
        };
        let shape = match node {
            Node::Input => Shape::Map { c: 1, h: 28, w: 28 },
            Node::Repeat3 { input } => match map(*input)? {
                (1, h, w) => Shape::Map { c: 3, h, w },
                (c, ..) => return Err(unsupported(i, format!("repeats {c} channels"))),
            },
            Node::Conv {
                input,
                weight,
                bias,
                stride,
                padding,
                groups,
            } => {
                let (c, h, w) = map(*input)?;
                let d = dims_of(params, weight)?;
                let &[o, ipg, kh, kw] = &d[..] else {
                    return Err(bad(weight, "[out, in / groups, kh, kw]".into(), d));
                };
                if *groups == 0 || ipg * groups != c || o % groups != 0 {
                    return Err(bad(
                        weight,
                        format!("{c} input channels in {groups} groups"),
                        d.clone(),
                    ));
                }
                if let Some(b) = bias {
                    let bd = dims_of(params, b)?;
                    if bd != [o] {
                        return Err(bad(b, format!("[{o}]"), bd));
                    }
                }
                let oh = window(h, kh, *stride, *padding)?;
                let ow = window(w, kw, *stride, *padding)?;
                Shape::Map { c: o, h: oh, w: ow }
            }
            Node::BatchNorm { input, prefix } => {
                let (c, h, w) = map(*input)?;
                for s in ["weight", "bias", "running_mean", "running_var"] {
                    let name = format!("{prefix}.{s}");
                    let d = dims_of(params, &name)?;
                    if d != [c] {
                        return Err(bad(&name, format!("[{c}]"), d));
                    }
                }
                Shape::Map { c, h, w }
            }
            Node::Activation { input, .. } => arg(*input)?,
            Node::MaxPool {
                input,
                kernel,
                stride,
            }
            | Node::AvgPool {
                input,
                kernel,
                stride,
            } => {
                let (c, h, w) = map(*input)?;
                let (h, w) = (
                    window(h, *kernel, *stride, 0)?,
                    window(w, *kernel, *stride, 0)?,
                );
                Shape::Map { c, h, w }
            }
            Node::GlobalAvgPool { input } => Shape::Flat(map(*input)?.0),
            Node::Flatten { input } => match arg(*input)? {
                Shape::Map { c, h, w } => Shape::Flat(c * h * w),
                flat => flat,
            },
            Node::Linear {
                input,
                weight,
                bias,
            } => {
                let Shape::Flat(f) = arg(*input)? else {
                    return Err(unsupported(i, "a linear layer reads a feature map"));
                };
                let d = dims_of(params, weight)?;
                let &[o, fi] = &d[..] else {
                    return Err(bad(weight, "[out, in]".into(), d));
                };
                if fi != f {
                    return Err(bad(weight, format!("[{o}, {f}]"), d));
                }
                let bd = dims_of(params, bias)?;
                if bd != [o] {
                    return Err(bad(bias, format!("[{o}]"), bd));
                }
                Shape::Flat(o)
            }
            Node::Add { a, b } => {
                let (sa, sb) = (arg(*a)?, arg(*b)?);
                if sa != sb {
                    return Err(unsupported(i, format!("adds {sa:?} to {sb:?}")));
                }
                sa
            }
            Node::Concat { inputs } => {
                let mut total = 0;
                let mut hw = None;
                for &k in inputs {
                    let (c, h, w) = map(k)?;
                    if hw.is_some_and(|s| s != (h, w)) {
                        return Err(unsupported(i, "concatenates maps of different sizes"));
                    }
                    hw = Some((h, w));
                    total += c;
                }
                let (h, w) = hw.ok_or_else(|| unsupported(i, "empty concatenation"))?;
                Shape::Map { c: total, h, w }
            }
            other => return Err(unsupported(i, format!("unknown node {other:?}"))),
        };
        shapes.push(shape);
    }
    if shapes.is_empty() {
        return Err(unsupported(0, "empty graph"));
    }
    Ok(shapes)
}

/// Multiply-accumulates per image (convolutions and linear layers, as
/// [`hdr_models::Summary`] counts them) when the convolutions and linear layers named in
/// `widths` (by node) produce that many channels instead of their current count. Depthwise
/// convolutions follow their input.
fn count_macs(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    shapes: &[Shape],
    widths: &HashMap<NodeId, usize>,
) -> Result<u64> {
    let mut width = vec![0usize; graph.nodes.len()];
    let mut macs = 0u64;
    for (i, node) in graph.nodes.iter().enumerate() {
        let out = |default: Shape| widths.get(&i).copied().unwrap_or(default.width());
        width[i] = match node {
            Node::Conv {
                input,
                weight,
                groups,
                ..
            } => {
                let d = dims_of(params, weight)?;
                let (&[o0, ipg, kh, kw], Shape::Map { h, w, .. }) = (&d[..], shapes[i]) else {
                    return Err(unsupported(i, format!("a convolution with weight {d:?}")));
                };
                let cin = width[*input];
                let (o, per_group) = if is_depthwise(*groups, shapes[*input], &d) {
                    (cin, 1)
                } else if *groups == 1 {
                    (out(shapes[i]), cin)
                } else {
                    (o0, ipg)
                };
                macs += (o * per_group * kh * kw * h * w) as u64;
                o
            }
            Node::Linear { input, .. } => {
                let o = out(shapes[i]);
                macs += (o * width[*input]) as u64;
                o
            }
            Node::Flatten { input } => match shapes[*input] {
                Shape::Map { h, w, .. } => width[*input] * h * w,
                Shape::Flat(_) => width[*input],
            },
            Node::Concat { inputs } => inputs.iter().map(|&k| width[k]).sum(),
            Node::Input | Node::Repeat3 { .. } => shapes[i].width(),
            other => match other.inputs().first() {
                Some(&k) => width[k],
                None => shapes[i].width(),
            },
        };
    }
    Ok(macs)
}

/// Multiply-accumulates per image of `graph` with parameters `vars`: convolutions and linear
/// layers as [`hdr_models::Summary`] counts them, but only what the evaluation-mode graph
/// runs (no training-only heads).
pub fn graph_macs(graph: &Graph, vars: &VarMap) -> Result<u64> {
    let params = read_params(vars)?;
    let shapes = infer(graph, &params)?;
    count_macs(graph, &params, &shapes, &HashMap::new())
}

/// The one reader of every node (`None` for the last), or the typed error for graphs where a
/// value is added, concatenated or read twice.
fn sequential_users(graph: &Graph) -> Result<Vec<Option<NodeId>>> {
    let n = graph.nodes.len();
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for (i, node) in graph.nodes.iter().enumerate() {
        let what = match node {
            Node::Add { .. } => Some("a residual addition".to_string()),
            Node::Concat { .. } => Some("a concatenation".to_string()),
            _ => None,
        };
        if let Some(what) = what {
            return Err(CompressError::NotSequential { node: i, what });
        }
        for k in node.inputs() {
            if k >= i {
                return Err(unsupported(
                    i,
                    format!("reads node {k}, which does not precede it"),
                ));
            }
            users[k].push(i);
        }
    }
    users
        .iter()
        .enumerate()
        .map(|(k, u)| match (u.as_slice(), k + 1 == n) {
            ([], true) => Ok(None),
            ([only], false) => Ok(Some(*only)),
            (u, _) => Err(CompressError::NotSequential {
                node: k,
                what: format!("read by {} nodes", u.len()),
            }),
        })
        .collect()
}

/// The prunable layers: convolutions (not grouped) and linear layers whose outputs reach
/// another convolution or linear layer (so not the classifier).
fn plan(graph: &Graph, params: &HashMap<String, Tensor>, shapes: &[Shape]) -> Result<Vec<Layer>> {
    let users = sequential_users(graph)?;
    let nodes = &graph.nodes;
    let mut layers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (weight, bias) = match node {
            Node::Conv {
                weight,
                bias,
                groups: 1,
                ..
            } => (weight, bias.clone()),
            Node::Linear { weight, bias, .. } => (weight, Some(bias.clone())),
            _ => continue,
        };
        let (mut followers, mut spatial, mut at) = (Vec::new(), 1, i);
        let consumer = loop {
            let Some(u) = users[at] else { break None };
            match &nodes[u] {
                Node::Activation { .. }
                | Node::MaxPool { .. }
                | Node::AvgPool { .. }
                | Node::GlobalAvgPool { .. } => {}
                Node::BatchNorm { .. } => followers.push(u),
                Node::Flatten { input } => {
                    if let Shape::Map { h, w, .. } = shapes[*input] {
                        spatial *= h * w;
                    }
                }
                Node::Conv { groups: 1, .. } | Node::Linear { .. } => break Some(u),
                Node::Conv {
                    input,
                    weight,
                    groups,
                    ..
                } if is_depthwise(*groups, shapes[*input], &dims_of(params, weight)?) => {
                    followers.push(u)
                }
                other => {
                    return Err(unsupported(
                        u,
                        format!("structured pruning cannot carry channels through {other:?}"),
                    ))
                }
            }
            at = u;
        };
        if let Some(consumer) = consumer {
            layers.push(Layer {
                node: i,
                weight: weight.clone(),
                bias,
                channels: shapes[i].width(),
                followers,
                consumer,
                spatial,
            });
        }
    }
    Ok(layers)
}

/// `t` with only the entries `idx` along `dim`.
fn select(
    params: &mut HashMap<String, Tensor>,
    name: &str,
    dim: usize,
    idx: &Tensor,
) -> Result<()> {
    let t = params.get(name).ok_or_else(|| missing(name))?;
    let t = t.index_select(idx, dim)?;
    params.insert(name.to_string(), t);
    Ok(())
}

/// A variable map holding copies of `params` (never sharing storage with the caller's model).
fn to_vars(params: HashMap<String, Tensor>) -> Result<VarMap> {
    let vars = VarMap::new();
    {
        let mut data = vars
            .data()
            .lock()
            .map_err(|_| CompressError::InvalidConfig {
                name: "vars",
                value: "poisoned lock".into(),
                reason: "a thread panicked while holding the variable map",
            })?;
        for (k, t) in params {
            // `detach` makes the copy below unconditional: a variable would be shared as is.
            data.insert(k, Var::from_tensor(&t.detach())?);
        }
    }
    Ok(vars)
}

impl StructuredModel {
    /// The model `graph` with parameters `vars`, batch norms folded into the convolutions that
    /// precede them (exact in f32), nothing removed yet. `name` is recorded (e.g. `"lenet5"`).
    /// The parameters are copied: training this model leaves `vars` alone.
    pub fn fold(name: &str, graph: &Graph, vars: &VarMap) -> Result<Self> {
        let params = read_params(vars)?;
        let nodes = &graph.nodes;
        let readers = graph.readers()?;
        let mut out: Vec<Node> = Vec::with_capacity(nodes.len());
        let mut new_params: HashMap<String, Tensor> = HashMap::new();
        // New index of every old node; a folded batch norm maps to its convolution.
        let mut remap: Vec<NodeId> = Vec::with_capacity(nodes.len());
        let mut folded_into: Vec<Option<NodeId>> = vec![None; nodes.len()];
        let copy = |new_params: &mut HashMap<String, Tensor>, name: &str| -> Result<()> {
            let t = params.get(name).ok_or_else(|| missing(name))?;
            new_params.insert(name.to_string(), t.clone());
            Ok(())
        };
        for (i, node) in nodes.iter().enumerate() {
            if let Some(conv) = folded_into[i] {
                remap.push(conv);
                continue;
            }
            let r = |k: NodeId| remap[k];
            let new = match node {
                Node::Conv {
                    input,
                    weight,
                    bias,
                    stride,
                    padding,
                    groups,
                } => {
                    // A batch norm folds only when it is the convolution's one reader.
                    let bn = match readers[i].as_slice() {
                        [u] => match &nodes[*u] {
                            Node::BatchNorm { prefix, .. } => Some((*u, prefix.as_str())),
                            _ => None,
                        },
                        _ => None,
                    };
                    let bias_name = match (bias, bn) {
                        (Some(b), _) => Some(b.clone()),
                        (None, Some(_)) => {
                            let b = match weight.strip_suffix(".weight") {
                                Some(p) => format!("{p}.bias"),
                                None => format!("{weight}.bias"),
                            };
                            if params.contains_key(&b) {
                                return Err(CompressError::InvalidConfig {
                                    name: "graph",
                                    value: b,
                                    reason: "the folded bias's name is taken by another parameter",
                                });
                            }
                            Some(b)
                        }
                        (None, None) => None,
                    };
                    if let Some((u, prefix)) = bn {
                        let (w, shape, b) =
                            folded_conv(&params, weight, bias.as_deref(), Some(prefix))?;
                        let dev = params.get(weight).ok_or_else(|| missing(weight))?.device();
                        let o = shape[0];
                        new_params.insert(weight.clone(), Tensor::from_vec(w, shape, dev)?);
                        if let Some(b_name) = &bias_name {
                            new_params.insert(b_name.clone(), Tensor::from_vec(b, o, dev)?);
                        }
                        folded_into[u] = Some(out.len());
                    } else {
                        copy(&mut new_params, weight)?;
                        if let Some(b) = bias {
                            copy(&mut new_params, b)?;
                        }
                    }
                    Node::Conv {
                        input: r(*input),
                        weight: weight.clone(),
                        bias: bias_name,
                        stride: *stride,
                        padding: *padding,
                        groups: *groups,
                    }
                }
                Node::BatchNorm { input, prefix } => {
                    for s in ["weight", "bias", "running_mean", "running_var"] {
                        copy(&mut new_params, &format!("{prefix}.{s}"))?;
                    }
                    Node::BatchNorm {
                        input: r(*input),
                        prefix: prefix.clone(),
                    }
                }
                Node::Linear {
                    input,
                    weight,
                    bias,
                } => {
                    copy(&mut new_params, weight)?;
                    copy(&mut new_params, bias)?;
                    Node::Linear {
                        input: r(*input),
                        weight: weight.clone(),
                        bias: bias.clone(),
                    }
                }
                Node::Input => Node::Input,
                Node::Repeat3 { input } => Node::Repeat3 { input: r(*input) },
                Node::Activation { input, activation } => Node::Activation {
                    input: r(*input),
                    activation: *activation,
                },
                Node::MaxPool {
                    input,
                    kernel,
                    stride,
                } => Node::MaxPool {
                    input: r(*input),
                    kernel: *kernel,
                    stride: *stride,
                },
                Node::AvgPool {
                    input,
                    kernel,
                    stride,
                } => Node::AvgPool {
                    input: r(*input),
                    kernel: *kernel,
                    stride: *stride,
                },
                Node::GlobalAvgPool { input } => Node::GlobalAvgPool { input: r(*input) },
                Node::Flatten { input } => Node::Flatten { input: r(*input) },
                Node::Add { a, b } => Node::Add { a: r(*a), b: r(*b) },
                Node::Concat { inputs } => Node::Concat {
                    inputs: inputs.iter().map(|&k| r(k)).collect(),
                },
                other => return Err(unsupported(i, format!("unknown node {other:?}"))),
            };
            remap.push(out.len());
            out.push(new);
        }
        Self::checked(name.to_string(), Graph { nodes: out }, new_params)
    }

    /// Name of the model this was derived from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The computation, batch norms folded: convolutions (with bias), linear layers,
    /// activations, pooling.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The parameters the graph reads (trainable).
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    fn params(&self) -> Result<HashMap<String, Tensor>> {
        read_params(&self.vars)
    }

    /// The model after checking that `params` fit `graph` (shapes are inferred end to end).
    fn checked(name: String, graph: Graph, params: HashMap<String, Tensor>) -> Result<Self> {
        let shapes = infer(&graph, &params)?;
        let macs_per_image = count_macs(&graph, &params, &shapes, &HashMap::new())?;
        Ok(Self {
            name,
            graph,
            vars: to_vars(params)?,
            macs_per_image,
        })
    }

    /// Evaluation-mode logits on the graph interpreter; differentiable with respect to
    /// [`StructuredModel::vars`].
    ///
    /// # Shapes
    /// `[batch, 1, 28, 28] -> [batch, 10]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dims().first().copied().unwrap_or(1) as u64;
        hdr_ops::in_pool_for(self.macs_per_image * batch, || {
            Ok(self.graph.run(&self.vars, x)?)
        })
    }

    /// Multiply-accumulates per image (convolutions and linear layers).
    pub fn macs(&self) -> Result<u64> {
        let params = self.params()?;
        let shapes = infer(&self.graph, &params)?;
        count_macs(&self.graph, &params, &shapes, &HashMap::new())
    }

    /// Number of parameters (weights and biases).
    pub fn parameters(&self) -> Result<usize> {
        Ok(self.params()?.values().map(Tensor::elem_count).sum())
    }

    /// Parameters that are not zero.
    pub fn nonzero_parameters(&self) -> Result<u64> {
        let mut n = 0u64;
        for t in self.params()?.values() {
            n += t
                .ne(0f32)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()? as u64;
        }
        Ok(n)
    }

    /// The prunable layers in graph order: every convolution (not grouped) or linear layer
    /// whose output reaches another one. Fails with [`CompressError::NotSequential`] on graphs
    /// with residual additions or concatenations.
    pub fn widths(&self) -> Result<Vec<LayerWidth>> {
        let params = self.params()?;
        let shapes = infer(&self.graph, &params)?;
        Ok(plan(&self.graph, &params, &shapes)?
            .into_iter()
            .map(|l| LayerWidth {
                layer: l.weight,
                channels: l.channels,
            })
            .collect())
    }

    /// The channels [`StructuredModel::prune`] keeps: every prunable layer keeps the same
    /// fraction `r` of its channels (at least one), those of largest filter L1 norm (Li et al.
    /// 2017); `r` is the largest that brings the MACs to `cfg.macs_fraction` of this model's.
    pub fn select_channels(&self, cfg: &StructuredConfig) -> Result<ChannelSelection> {
        let f = cfg.macs_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(CompressError::InvalidConfig {
                name: "macs_fraction",
                value: f.to_string(),
                reason: "must be in (0, 1]",
            });
        }
        let params = self.params()?;
        let shapes = infer(&self.graph, &params)?;
        let layers = plan(&self.graph, &params, &shapes)?;
        let counts = |r: f64| -> Vec<usize> {
            layers
                .iter()
                .map(|l| ((r * l.channels as f64).round() as usize).clamp(1, l.channels))
                .collect()
        };
        let macs_at = |r: f64| -> Result<u64> {
            let widths = layers
                .iter()
                .zip(counts(r))
                .map(|(l, k)| (l.node, k))
                .collect();
            count_macs(&self.graph, &params, &shapes, &widths)
        };
        let target = f * macs_at(1.0)? as f64;
        let ratio = if macs_at(1.0)? as f64 <= target {
            1.0
        } else if macs_at(0.0)? as f64 > target {
            return Err(CompressError::InvalidConfig {
                name: "macs_fraction",
                value: f.to_string(),
                reason: "below the MACs left with one channel per prunable layer",
            });
        } else {
            // The MACs grow with `r` (channel counts are monotone in it): bisect for the
            // largest feasible ratio.
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            for _ in 0..50 {
                let mid = 0.5 * (lo + hi);
                if macs_at(mid)? as f64 <= target {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let mut selection = ChannelSelection::new();
        for (l, k) in layers.iter().zip(counts(ratio)) {
            let l1 = params
                .get(&l.weight)
                .ok_or_else(|| missing(&l.weight))?
                .abs()?
                .flatten_from(1)?
                .sum(1)?
                .to_vec1::<f32>()?;
            let mut order: Vec<usize> = (0..l1.len()).collect();
            // Largest norm first; ties keep the lower index, so the choice is deterministic.
            order.sort_by(|&a, &b| l1[b].total_cmp(&l1[a]).then(a.cmp(&b)));
            let mut keep = order[..k].to_vec();
            keep.sort_unstable();
            selection.insert(l.weight.clone(), keep);
        }
        Ok(selection)
    }

    /// A smaller dense model keeping only the channels in `keep` (by prunable layer; see
    /// [`StructuredModel::widths`]): each removed channel takes its filter and bias, the
    /// matching depthwise filters and batch-norm entries downstream, and the matching input
    /// channels (or, after a flatten, input columns) of the layer that reads it.
    pub fn remove_channels(&self, keep: &ChannelSelection) -> Result<Self> {
        let mut params = self.params()?;
        let shapes = infer(&self.graph, &params)?;
        let layers = plan(&self.graph, &params, &shapes)?;
        let mut nodes = self.graph.nodes.clone();
        for (name, idx) in keep {
            let layer = layers.iter().find(|l| &l.weight == name).ok_or_else(|| {
                CompressError::InvalidConfig {
                    name: "keep",
                    value: name.clone(),
                    reason: "not a prunable layer (a convolution or linear layer feeding another)",
                }
            })?;
            if idx.is_empty()
                || idx.windows(2).any(|w| w[0] >= w[1])
                || idx.last().is_some_and(|&c| c >= layer.channels)
            {
                return Err(CompressError::InvalidConfig {
                    name: "keep",
                    value: format!("{name}: {idx:?} of {}", layer.channels),
                    reason: "channels must be strictly increasing, in range, at least one",
                });
            }
            let dev = params
                .get(name)
                .ok_or_else(|| missing(name))?
                .device()
                .clone();
            let ix = Tensor::from_vec(
                idx.iter().map(|&c| c as u32).collect::<Vec<_>>(),
                idx.len(),
                &dev,
            )?;
            select(&mut params, &layer.weight, 0, &ix)?;
            if let Some(b) = &layer.bias {
                select(&mut params, b, 0, &ix)?;
            }
            for &f in &layer.followers {
                match &mut nodes[f] {
                    Node::Conv {
                        weight,
                        bias,
                        groups,
                        ..
                    } => {
                        select(&mut params, weight, 0, &ix)?;
                        if let Some(b) = bias {
                            select(&mut params, b, 0, &ix)?;
                        }
                        *groups = idx.len();
                    }
                    Node::BatchNorm { prefix, .. } => {
                        for s in ["weight", "bias", "running_mean", "running_var"] {
                            select(&mut params, &format!("{prefix}.{s}"), 0, &ix)?;
                        }
                    }
                    other => {
                        return Err(unsupported(f, format!("cannot carry channels: {other:?}")))
                    }
                }
            }
            match &nodes[layer.consumer] {
                Node::Conv { weight, .. } => select(&mut params, weight, 1, &ix)?,
                Node::Linear { weight, .. } => {
                    let s = layer.spatial;
                    let cols: Vec<u32> = idx
                        .iter()
                        .flat_map(|&c| (c * s..(c + 1) * s).map(|j| j as u32))
                        .collect();
                    let n = cols.len();
                    select(&mut params, weight, 1, &Tensor::from_vec(cols, n, &dev)?)?;
                }
                other => {
                    return Err(unsupported(
                        layer.consumer,
                        format!("cannot read channels: {other:?}"),
                    ))
                }
            }
        }
        Self::checked(self.name.clone(), Graph { nodes }, params)
    }

    /// Structured pruning to `cfg.macs_fraction` of this model's MACs:
    /// [`StructuredModel::select_channels`], then [`StructuredModel::remove_channels`].
    pub fn prune(&self, cfg: &StructuredConfig) -> Result<Self> {
        self.remove_channels(&self.select_channels(cfg)?)
    }

    /// Fine-tunes every parameter on `train` with Adam (the loop of [`crate::fine_tune`]).
    /// Returns the mean loss of the last epoch.
    pub fn fine_tune(&self, train: &Dataset, cfg: &FineTuneConfig) -> Result<f64> {
        train_masked(
            &|x: &Tensor| self.forward(x),
            &self.vars,
            &Masks::default(),
            train,
            cfg,
        )
    }

    /// Int8 post-training quantization of this model ([`QuantizedModel::quantize`]).
    pub fn quantize(&self, calibration: &[Tensor], cfg: &QuantizeConfig) -> Result<QuantizedModel> {
        QuantizedModel::quantize(&self.name, &self.graph, &self.vars, calibration, cfg)
    }

    /// The bytes of the file [`StructuredModel::save`] writes: safetensors with the graph
    /// (JSON) and the source model's name in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let graph = serde_json::to_string(&self.graph)
            .map_err(|e| format_err(Path::new(""), e.to_string()))?;
        let metadata = HashMap::from([
            ("format".to_string(), STRUCTURED_FORMAT.to_string()),
            ("model".to_string(), self.name.clone()),
            ("graph".to_string(), graph),
        ]);
        let mut tensors: Vec<(String, Tensor)> = self.params()?.into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        safetensors::tensor::serialize(tensors, Some(metadata))
            .map_err(|e| format_err(Path::new(""), e.to_string()))
    }

    /// Writes the model to `path` atomically (temporary file in the same folder, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a model written by [`StructuredModel::save`] onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| CompressError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(&bytes, path, device)
    }

    /// Reads a model from the bytes of a file; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &Path, device: &Device) -> Result<Self> {
        let meta = crate::io::metadata(bytes, source, STRUCTURED_FORMAT)?;
        let get = |k: &str| crate::io::meta_get(&meta, k, source);
        let graph: Graph = serde_json::from_str(get("graph")?)
            .map_err(|e| format_err(source, format!("graph does not parse: {e}")))?;
        let params = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| format_err(source, e.to_string()))?;
        if let Some((name, t)) = params.iter().find(|(_, t)| t.dtype() != DType::F32) {
            return Err(format_err(
                source,
                format!("{name} is {:?}, expected f32", t.dtype()),
            ));
        }
        if let Some(n) = graph.parameters().iter().find(|n| !params.contains_key(*n)) {
            return Err(format_err(source, format!("parameter {n} is missing")));
        }
        Self::checked(get("model")?.to_string(), graph, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    fn zoo(name: &str) -> (Box<dyn hdr_models::Classifier>, VarMap) {
        let vars = VarMap::new();
        let m = hdr_models::create(
            name,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        hdr_models::init::init(&vars, 5).unwrap();
        (m, vars)
    }

    #[test]
    fn mac_count_agrees_with_the_model_summaries() {
        for name in hdr_models::list() {
            let (m, vars) = zoo(name);
            let params = read_params(&vars).unwrap();
            let g = m.graph();
            let shapes = infer(&g, &params).unwrap();
            let macs = count_macs(&g, &params, &shapes, &HashMap::new()).unwrap();
            // MobileNet-HDR's auxiliary head runs in training only; the graph leaves it out.
            let summary: u64 = m
                .summary()
                .layers
                .iter()
                .filter(|l| !l.name.starts_with("aux."))
                .map(|l| l.macs)
                .sum();
            assert_eq!(macs, summary, "{name}");
            // Folding batch norms changes no MACs.
            let folded = StructuredModel::fold(name, &g, &vars).unwrap();
            assert_eq!(folded.macs().unwrap(), macs, "{name} folded");
        }
    }

    #[test]
    fn lenet5_plan_follows_channels_through_pooling_and_flatten() {
        let (m, vars) = zoo("lenet5");
        let params = read_params(&vars).unwrap();
        let g = m.graph();
        let layers = plan(&g, &params, &infer(&g, &params).unwrap()).unwrap();
        let summary: Vec<(&str, usize, usize)> = layers
            .iter()
            .map(|l| (l.weight.as_str(), l.channels, l.spatial))
            .collect();
        // c3's 16 maps of 5 x 5 are flattened into f5's 400 inputs; `out` is the classifier.
        assert_eq!(
            summary,
            [
                ("c1.weight", 6, 1),
                ("c3.weight", 16, 25),
                ("f5.weight", 120, 1),
                ("f6.weight", 84, 1)
            ]
        );
    }

    #[test]
    fn predicted_macs_match_the_rebuilt_model() {
        for name in ["lenet5", "mobilenet_hdr", "mlp2"] {
            let (m, vars) = zoo(name);
            let folded = StructuredModel::fold(name, &m.graph(), &vars).unwrap();
            let full = folded.macs().unwrap();
            for f in [0.9, 0.5, 0.3] {
                let pruned = folded
                    .prune(&StructuredConfig { macs_fraction: f })
                    .unwrap();
                let macs = pruned.macs().unwrap();
                assert!(
                    macs as f64 <= f * full as f64,
                    "{name} {f}: {macs} of {full}"
                );
                // Near the budget: the uniform ratio is as large as it can be.
                assert!(
                    macs as f64 > 0.8 * f * full as f64,
                    "{name} {f}: {macs} of {full}"
                );
            }
        }
    }
}
