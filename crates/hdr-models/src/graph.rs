//! A model as data: the evaluation-mode computation of each zoo model as a list of nodes that
//! name their parameters. Compression (int8 kernels, pruning) and export interpret this instead
//! of reaching into each model's private layers.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::layers::Activation;

/// Index of a node in [`Graph::nodes`]; node 0 is the input.
pub type NodeId = usize;

/// One operation of a [`Graph`]. Parameters are referred to by their safetensors names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Node {
    /// The `[b, 1, 28, 28]` input.
    Input,
    /// The grey input replicated to 3 channels.
    Repeat3 {
        /// Input node.
        input: NodeId,
    },
    /// 2-D convolution; `weight` is `[out, in / groups, k, k]`.
    Conv {
        /// Input node.
        input: NodeId,
        /// Weight tensor name.
        weight: String,
        /// Bias tensor name.
        bias: Option<String>,
        /// Stride.
        stride: usize,
        /// Zero padding.
        padding: usize,
        /// Channel groups (1, or the channel count for depthwise).
        groups: usize,
    },
    /// Batch norm with running statistics: `prefix.{weight,bias,running_mean,running_var}`,
    /// eps 1e-5.
    BatchNorm {
        /// Input node.
        input: NodeId,
        /// Parameter prefix.
        prefix: String,
    },
    /// Element-wise non-linearity.
    Activation {
        /// Input node.
        input: NodeId,
        /// Which.
        activation: Activation,
    },
    /// Max pooling, no padding.
    MaxPool {
        /// Input node.
        input: NodeId,
        /// Window.
        kernel: usize,
        /// Step.
        stride: usize,
    },
    /// Average pooling, no padding.
    AvgPool {
        /// Input node.
        input: NodeId,
        /// Window.
        kernel: usize,
        /// Step.
        stride: usize,
    },
    /// `[b, c, h, w] -> [b, c]`.
    GlobalAvgPool {
        /// Input node.
        input: NodeId,
    },
    /// `[b, ...] -> [b, n]`.
    Flatten {
        /// Input node.
        input: NodeId,
    },
    /// `x W^T + b`, `weight` `[out, in]`.
    Linear {
        /// Input node.
        input: NodeId,
        /// Weight tensor name.
        weight: String,
        /// Bias tensor name.
        bias: String,
    },
    /// Element-wise sum (residual connections).
    Add {
        /// First input.
        a: NodeId,
        /// Second input.
        b: NodeId,
    },
    /// Concatenation along channels (dense connections).
    Concat {
        /// Inputs, in order.
        inputs: Vec<NodeId>,
    },
}

impl Node {
    /// The nodes this one reads.
    pub fn inputs(&self) -> Vec<NodeId> {
        match self {
            Self::Input => vec![],
            Self::Repeat3 { input }
            | Self::Conv { input, .. }
            | Self::BatchNorm { input, .. }
            | Self::Activation { input, .. }
            | Self::MaxPool { input, .. }
            | Self::AvgPool { input, .. }
            | Self::GlobalAvgPool { input }
            | Self::Flatten { input }
            | Self::Linear { input, .. } => vec![*input],
            Self::Add { a, b } => vec![*a, *b],
            Self::Concat { inputs } => inputs.clone(),
        }
    }
}

/// The evaluation-mode computation of a model: nodes in execution order (each reads only
/// earlier nodes); the last node is the logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Nodes; `nodes[0]` is [`Node::Input`].
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Runs the graph in f32 with candle's own operations, reading parameters from `vars`: the
    /// reference that faster interpreters (e.g. int8) are checked against.
    ///
    /// # Shapes
    /// `[b, 1, 28, 28] -> [b, classes]`.
    pub fn run(&self, vars: &VarMap, x: &Tensor) -> Result<Tensor> {
        let data = vars.data().lock().map_err(|_| ModelError::InvalidConfig {
            model: "varmap",
            reason: "the variable map's lock is poisoned".into(),
        })?;
        let get = |name: &str| -> Result<Tensor> {
            data.get(name)
                .map(|v: &Var| v.as_tensor().clone())
                .ok_or_else(|| ModelError::InvalidConfig {
                    model: "graph",
                    reason: format!("no parameter {name}"),
                })
        };
        self.run_with(x, &get)
    }

    /// [`Graph::run`] with parameters from any lookup (e.g. dequantised or pruned tensors).
    pub fn run_with(&self, x: &Tensor, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<Tensor> {
        self.evaluate(x, get, true)?
            .pop()
            .ok_or_else(|| ModelError::InvalidConfig {
                model: "graph",
                reason: "empty graph".into(),
            })
    }

    /// The value of every node, in order (e.g. to calibrate activation ranges), with parameters
    /// from `get`. Convolutions run on the `hdr-ops` kernels.
    pub fn values_with(
        &self,
        x: &Tensor,
        get: &dyn Fn(&str) -> Result<Tensor>,
    ) -> Result<Vec<Tensor>> {
        self.evaluate(x, get, false)
    }

    /// The nodes' values in order. With `fuse`, a convolution, batch norm or linear layer read
    /// only by a ReLU applies it in the same pass (the kernels have it built in) and stores the
    /// activated value, which the ReLU node then passes on: right for the output, not for
    /// per-node values.
    fn evaluate(
        &self,
        x: &Tensor,
        get: &dyn Fn(&str) -> Result<Tensor>,
        fuse: bool,
    ) -> Result<Vec<Tensor>> {
        let fused_relu = if fuse {
            self.relu_fusions()?
        } else {
            vec![false; self.nodes.len()]
        };
        let act = |i: usize| {
            if fused_relu[i] {
                hdr_ops::Activation::Relu
            } else {
                hdr_ops::Activation::None
            }
        };
        let mut values: Vec<Tensor> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let arg = |k: NodeId| -> Result<&Tensor> {
                values
                    .get(k)
                    .filter(|_| k < i)
                    .ok_or_else(|| ModelError::InvalidConfig {
                        model: "graph",
                        reason: format!("node {i} reads node {k}, which does not precede it"),
                    })
            };
            let v = match node {
                Node::Input => x.clone(),
                Node::Repeat3 { input } => arg(*input)?.repeat((1, 3, 1, 1))?,
                Node::Conv {
                    input,
                    weight,
                    bias,
                    stride,
                    padding,
                    groups,
                } => {
                    let b = bias.as_deref().map(get).transpose()?;
                    let cfg = hdr_ops::Conv2dConfig {
                        stride: *stride,
                        padding: *padding,
                        groups: *groups,
                        activation: act(i),
                    };
                    hdr_ops::conv2d(arg(*input)?, &get(weight)?, b.as_ref(), &cfg)?
                }
                Node::BatchNorm { input, prefix } => {
                    let (w, b) = (
                        get(&format!("{prefix}.weight"))?,
                        get(&format!("{prefix}.bias"))?,
                    );
                    let (m, var) = (
                        get(&format!("{prefix}.running_mean"))?,
                        get(&format!("{prefix}.running_var"))?,
                    );
                    let scale = (w / (var + 1e-5)?.sqrt()?)?;
                    let shift = (b - (m * &scale)?)?;
                    hdr_ops::channel_affine2d(arg(*input)?, &scale, &shift, act(i))?
                }
                Node::Activation { input, .. } if fused_relu[*input] => arg(*input)?.clone(),
                Node::Activation { input, activation } => activation.apply(arg(*input)?)?,
                Node::MaxPool {
                    input,
                    kernel,
                    stride,
                } => hdr_ops::max_pool2d(arg(*input)?, *kernel, *stride, 0)?,
                Node::AvgPool {
                    input,
                    kernel,
                    stride,
                } => hdr_ops::avg_pool2d(arg(*input)?, *kernel, *stride, 0)?,
                Node::GlobalAvgPool { input } => hdr_ops::global_avg_pool2d(arg(*input)?)?,
                Node::Flatten { input } => arg(*input)?.flatten_from(1)?,
                Node::Linear {
                    input,
                    weight,
                    bias,
                } => hdr_ops::linear(arg(*input)?, &get(weight)?, Some(&get(bias)?), act(i))?,
                Node::Add { a, b } => (arg(*a)? + arg(*b)?)?,
                Node::Concat { inputs } => {
                    let parts = inputs
                        .iter()
                        .map(|&k| arg(k).cloned())
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&parts, 1)?
                }
            };
            values.push(v);
        }
        Ok(values)
    }

    /// The nodes that read each node, in order. Error if a node reads one that does not
    /// precede it (the interpreter evaluates in order, so such a graph cannot run).
    pub fn readers(&self) -> Result<Vec<Vec<NodeId>>> {
        let mut readers = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for k in node.inputs() {
                if k >= i {
                    return Err(ModelError::InvalidConfig {
                        model: "graph",
                        reason: format!("node {i} reads node {k}, which does not precede it"),
                    });
                }
                readers[k].push(i);
            }
        }
        Ok(readers)
    }

    /// For each node, whether it is a convolution, batch norm or linear layer whose only reader
    /// is a ReLU.
    fn relu_fusions(&self) -> Result<Vec<bool>> {
        let readers = self.readers()?;
        let mut fused = vec![false; self.nodes.len()];
        for node in &self.nodes {
            if let Node::Activation {
                input,
                activation: Activation::Relu,
            } = node
            {
                let fusable = matches!(
                    self.nodes.get(*input),
                    Some(Node::Conv { .. } | Node::BatchNorm { .. } | Node::Linear { .. })
                );
                if fusable && readers[*input].len() == 1 {
                    fused[*input] = true;
                }
            }
        }
        Ok(fused)
    }

    /// Names of every parameter the graph reads.
    pub fn parameters(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            match n {
                Node::Conv { weight, bias, .. } => {
                    out.push(weight.clone());
                    out.extend(bias.clone());
                }
                Node::BatchNorm { prefix, .. } => {
                    for s in ["weight", "bias", "running_mean", "running_var"] {
                        out.push(format!("{prefix}.{s}"));
                    }
                }
                Node::Linear { weight, bias, .. } => {
                    out.push(weight.clone());
                    out.push(bias.clone());
                }
                _ => {}
            }
        }
        out
    }

    /// How many nodes read each node (for fusion passes).
    pub fn consumers(&self) -> HashMap<NodeId, usize> {
        let mut c = HashMap::new();
        for n in &self.nodes {
            for i in n.inputs() {
                *c.entry(i).or_insert(0) += 1;
            }
        }
        c
    }
}

/// Appends nodes; used by the models to describe themselves.
#[derive(Debug)]
pub(crate) struct GraphBuilder {
    nodes: Vec<Node>,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::Input],
        }
    }

    pub fn push(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    pub fn conv(
        &mut self,
        input: NodeId,
        prefix: &str,
        bias: bool,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> NodeId {
        self.push(Node::Conv {
            input,
            weight: format!("{prefix}.weight"),
            bias: bias.then(|| format!("{prefix}.bias")),
            stride,
            padding,
            groups,
        })
    }

    pub fn bn(&mut self, input: NodeId, prefix: &str) -> NodeId {
        self.push(Node::BatchNorm {
            input,
            prefix: prefix.to_string(),
        })
    }

    pub fn act(&mut self, input: NodeId, activation: Activation) -> NodeId {
        self.push(Node::Activation { input, activation })
    }

    /// Convolution without bias, batch norm, optional activation: `prefix.conv`, `prefix.bn`.
    pub fn conv_bn(
        &mut self,
        input: NodeId,
        prefix: &str,
        stride: usize,
        padding: usize,
        groups: usize,
        act: Option<Activation>,
    ) -> NodeId {
        let c = self.conv(
            input,
            &format!("{prefix}.conv"),
            false,
            stride,
            padding,
            groups,
        );
        let b = self.bn(c, &format!("{prefix}.bn"));
        match act {
            Some(a) => self.act(b, a),
            None => b,
        }
    }

    pub fn linear(&mut self, input: NodeId, prefix: &str) -> NodeId {
        self.push(Node::Linear {
            input,
            weight: format!("{prefix}.weight"),
            bias: format!("{prefix}.bias"),
        })
    }

    pub fn finish(self) -> Graph {
        Graph { nodes: self.nodes }
    }
}
