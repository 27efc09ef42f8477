//! Building blocks shared by the zoo: convolutions on `hdr-ops` kernels, batch norm, linear
//! layers, pooling, and the shape tracer that produces [`Summary`].

use candle_core::{Tensor, Var};
use candle_nn::{Init, Linear, VarBuilder};
use hdr_ops::Conv2dConfig;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::summary::{LayerSummary, Summary};

/// Non-linearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// `min(max(0, x), 6)`, as in the TensorFlow MobileNets.
    Relu6,
    /// Hyperbolic tangent, as in LeCun et al. 1998.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
}

impl Activation {
    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Relu => x.relu()?,
            Self::Relu6 => x.clamp(0f32, 6f32)?,
            Self::Tanh => x.tanh()?,
            Self::Sigmoid => candle_nn::ops::sigmoid(x)?,
        })
    }

    /// The same activation fused into the convolution kernel, where the kernel has it.
    fn fused(self) -> Option<hdr_ops::Activation> {
        match self {
            Self::Relu => Some(hdr_ops::Activation::Relu),
            _ => None,
        }
    }
}

/// Spatial pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// Maximum over the window.
    #[default]
    Max,
    /// Mean over the window (LeCun et al.'s subsampling, without its trainable scale).
    Avg,
}

/// Follows one sample's shape through a model while it is built, and records the summary rows.
#[derive(Debug, Clone)]
pub(crate) struct Tracer {
    pub shape: Vec<usize>,
    summary: Summary,
}

impl Tracer {
    pub fn new(model: &str, input: &[usize]) -> Self {
        Self {
            shape: input.to_vec(),
            summary: Summary {
                model: model.to_string(),
                input: input.to_vec(),
                layers: Vec::new(),
                buffers: 0,
            },
        }
    }

    pub fn chw(&self) -> Result<(usize, usize, usize)> {
        match self.shape[..] {
            [c, h, w] => Ok((c, h, w)),
            _ => Err(ModelError::InvalidConfig {
                model: "layers",
                reason: format!(
                    "a spatial layer needs a [c, h, w] input, got {:?}",
                    self.shape
                ),
            }),
        }
    }

    pub fn push(
        &mut self,
        name: String,
        kind: String,
        output: Vec<usize>,
        params: usize,
        macs: u64,
    ) {
        self.shape = output.clone();
        self.summary.layers.push(LayerSummary {
            name,
            kind,
            output,
            params,
            macs,
        });
    }

    pub fn set_shape(&mut self, shape: Vec<usize>) {
        self.shape = shape;
    }

    pub fn add_buffers(&mut self, n: usize) {
        self.summary.buffers += n;
    }

    pub fn pool(
        &mut self,
        name: String,
        pool: Pool,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<()> {
        let (c, h, w) = self.chw()?;
        let out = |n: usize| {
            (n + 2 * padding)
                .checked_sub(kernel)
                .map(|v| v / stride + 1)
        };
        let (Some(oh), Some(ow)) = (out(h), out(w)) else {
            return Err(ModelError::InvalidConfig {
                model: "layers",
                reason: format!("{kernel}x{kernel} pooling does not fit a {h}x{w} input"),
            });
        };
        let kind = format!("{pool:?}Pool {kernel}x{kernel}/{stride}");
        self.push(name, kind, vec![c, oh, ow], 0, 0);
        Ok(())
    }

    pub fn finish(self) -> Summary {
        self.summary
    }
}

/// Output size of a convolution or pooling window along one axis.
fn out_size(n: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    (n + 2 * pad).checked_sub(k).map(|v| v / stride + 1)
}

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// 1 for dense, `in_channels` for depthwise.
    pub groups: usize,
    pub bias: bool,
}

impl ConvSpec {
    /// A `k x k` dense convolution with "same" padding for odd `k` at stride 1.
    pub fn same(out: usize, kernel: usize, stride: usize) -> Self {
        Self {
            out,
            kernel,
            stride,
            padding: kernel / 2,
            groups: 1,
            bias: false,
        }
    }
}

/// 2-D convolution on the `hdr-ops` kernels, with an optional fused activation.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

impl Conv {
    /// Builds the layer and records it; `act` is fused into the kernel where possible, else applied after.
    pub fn new(t: &mut Tracer, spec: ConvSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let (c, h, w) = t.chw()?;
        if spec.groups == 0
            || c % spec.groups != 0
            || !spec.out.is_multiple_of(spec.groups)
            || spec.stride == 0
        {
            return Err(ModelError::InvalidConfig {
                model: "conv2d",
                reason: format!(
                    "{c} -> {} channels in {} groups, stride {}",
                    spec.out, spec.groups, spec.stride
                ),
            });
        }
        let (Some(oh), Some(ow)) = (
            out_size(h, spec.kernel, spec.stride, spec.padding),
            out_size(w, spec.kernel, spec.stride, spec.padding),
        ) else {
            return Err(ModelError::InvalidConfig {
                model: "conv2d",
                reason: format!("{0}x{0} kernel does not fit a {h}x{w} input", spec.kernel),
            });
        };
        let cin_g = c / spec.groups;
        let weight = vb.get_with_hints(
            (spec.out, cin_g, spec.kernel, spec.kernel),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = if spec.bias {
            let bound = 1.0 / ((cin_g * spec.kernel * spec.kernel) as f64).sqrt();
            Some(vb.get_with_hints(
                spec.out,
                "bias",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
        } else {
            None
        };
        let params = weight.elem_count() + bias.as_ref().map_or(0, |b| b.elem_count());
        let macs = (spec.out * oh * ow * cin_g * spec.kernel * spec.kernel) as u64;
        let dw = if spec.groups > 1 && spec.groups == c {
            " dw"
        } else {
            ""
        };
        let kind = format!("Conv2d {0}x{0}/{1}{dw}", spec.kernel, spec.stride);
        t.push(vb.prefix(), kind, vec![spec.out, oh, ow], params, macs);
        Ok(Self {
            weight,
            bias,
            cfg: Conv2dConfig {
                stride: spec.stride,
                padding: spec.padding,
                groups: spec.groups,
                activation: hdr_ops::Activation::None,
            },
        })
    }

    /// Fuses `act` into the kernel; returns whether it could.
    pub fn fuse(&mut self, act: Activation) -> bool {
        match act.fused() {
            Some(a) => {
                self.cfg.activation = a;
                true
            }
            None => false,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(hdr_ops::conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            &self.cfg,
        )?)
    }
}

/// Batch normalisation over channels (Ioffe & Szegedy 2015) with an optional fused activation:
/// batch statistics in training (the fused `hdr-ops` kernel), running statistics in evaluation.
///
/// Parameters are named as candle-nn's and PyTorch's: `weight`, `bias`, `running_mean`,
/// `running_var`; running averages use momentum 0.1 and the unbiased batch variance, as PyTorch does.
#[derive(Debug, Clone)]
pub(crate) struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm {
    /// The per-channel `(scale, shift)` evaluation applies: `y = scale * x + shift`.
    fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = (&self.weight / (self.running_var.as_tensor() + BN_EPS)?.sqrt()?)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// Moves the running averages towards the batch statistics `mean` and `var` (biased,
    /// over `n` values per channel): PyTorch's update, with the unbiased variance.
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let n = n as f64;
        let unbiased = (var * (n / (n - 1.0).max(1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
        let rv =
            ((self.running_var.as_tensor() * (1.0 - BN_MOMENTUM))? + (unbiased * BN_MOMENTUM)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }

    pub fn forward_t(&self, x: &Tensor, train: bool, act: Option<Activation>) -> Result<Tensor> {
        let fused = act.and_then(Activation::fused);
        let y = if train {
            let out = hdr_ops::batch_norm2d(
                x,
                &self.weight,
                &self.bias,
                BN_EPS,
                fused.unwrap_or_default(),
            )?;
            self.update_running(&out.mean, &out.var, out.n)?;
            out.y
        } else {
            let (scale, shift) = self.eval_affine()?;
            hdr_ops::channel_affine2d(x, &scale, &shift, fused.unwrap_or_default())?
        };
        match act {
            Some(a) if fused.is_none() => a.apply(&y),
            _ => Ok(y),
        }
    }
}

/// Convolution without bias, batch norm, activation: the unit of ResNet, DenseNet and MobileNet.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
    act: Option<Activation>,
    /// Output elements per image (`c * h * w`).
    out_per_image: usize,
}

impl ConvBn {
    /// `vb` holds `conv` and `bn`.
    pub fn new(
        t: &mut Tracer,
        spec: ConvSpec,
        act: Option<Activation>,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let conv = Conv::new(
            t,
            ConvSpec {
                bias: false,
                ..spec
            },
            vb.pp("conv"),
        )?;
        let out_per_image = t.shape.iter().product();
        let bn = batch_norm(t, spec.out, vb.pp("bn"))?;
        Ok(Self {
            conv,
            bn,
            act,
            out_per_image,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // In evaluation the batch norm is an affine map per channel, which folds into the
        // convolution's weights and bias, saving a pass over the output. Folding costs a pass
        // over the weights, so it is done only when the output is at least as large.
        let out_elems = x.dim(0)? * self.out_per_image;
        if train && self.conv.bias.is_none() {
            // One op for both: the convolution's output never becomes a tensor of the graph.
            let fused = self.act.and_then(Activation::fused);
            let cfg = Conv2dConfig {
                activation: fused.unwrap_or_default(),
                ..self.conv.cfg
            };
            let out = hdr_ops::conv_bn2d(
                x,
                &self.conv.weight,
                &self.bn.weight,
                &self.bn.bias,
                &cfg,
                BN_EPS,
            )?;
            self.bn.update_running(&out.mean, &out.var, out.n)?;
            let y = out.y;
            return match self.act {
                Some(a) if fused.is_none() => a.apply(&y),
                _ => Ok(y),
            };
        }
        if train || out_elems < self.conv.weight.elem_count() {
            return self.bn.forward_t(&self.conv.forward(x)?, train, self.act);
        }
        let (scale, shift) = self.bn.eval_affine()?;
        let weight =
            self.conv
                .weight
                .broadcast_mul(&scale.reshape((scale.elem_count(), 1, 1, 1))?)?;
        let bias = match &self.conv.bias {
            Some(b) => ((b * &scale)? + shift)?,
            None => shift,
        };
        let fused = self.act.and_then(Activation::fused);
        let cfg = Conv2dConfig {
            activation: fused.unwrap_or_default(),
            ..self.conv.cfg
        };
        let y = hdr_ops::conv2d(x, &weight, Some(&bias), &cfg)?;
        match self.act {
            Some(a) if fused.is_none() => a.apply(&y),
            _ => Ok(y),
        }
    }
}

/// `layers` one after the other in training mode, as one op when they can be
/// ([`hdr_ops::conv_bn_chain2d`]: bias-free convolutions whose activations the kernels fuse;
/// the activations between them then never reach candle's gradient store); in evaluation mode,
/// or otherwise, each its own way.
pub(crate) fn conv_bn_chain(layers: &[&ConvBn], x: &Tensor, train: bool) -> Result<Tensor> {
    let fusable = |l: &ConvBn| l.conv.bias.is_none() && l.act.is_none_or(|a| a.fused().is_some());
    if !train || layers.len() < 2 || !layers.iter().all(|l| fusable(l)) {
        return layers
            .iter()
            .try_fold(x.clone(), |y, l| l.forward_t(&y, train));
    }
    let stages: Vec<hdr_ops::ConvBnStage<'_>> = layers
        .iter()
        .map(|l| hdr_ops::ConvBnStage {
            weight: &l.conv.weight,
            gamma: &l.bn.weight,
            beta: &l.bn.bias,
            cfg: Conv2dConfig {
                activation: l.act.and_then(Activation::fused).unwrap_or_default(),
                ..l.conv.cfg
            },
        })
        .collect();
    let out = hdr_ops::conv_bn_chain2d(x, &stages, BN_EPS)?;
    for (l, s) in layers.iter().zip(&out.stats) {
        l.bn.update_running(&s.mean, &s.var, s.n)?;
    }
    Ok(out.y)
}

/// Batch norm over channels, recorded in the summary (2c parameters, 2c buffers).
pub(crate) fn batch_norm(t: &mut Tracer, channels: usize, vb: VarBuilder<'_>) -> Result<BatchNorm> {
    let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    // From a VarMap these are variables already, and `from_tensor` shares their storage, so the
    // running averages written here are the ones saved with the model.
    let running_mean =
        Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
    let running_var =
        Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
    let shape = t.shape.clone();
    t.push(vb.prefix(), "BatchNorm".into(), shape, 2 * channels, 0);
    t.add_buffers(2 * channels);
    Ok(BatchNorm {
        weight,
        bias,
        running_mean,
        running_var,
    })
}

/// Fully connected layer, recorded in the summary.
pub(crate) fn linear(t: &mut Tracer, out: usize, vb: VarBuilder<'_>) -> Result<Linear> {
    let input: usize = t.shape.iter().product();
    let layer = candle_nn::linear(input, out, vb.clone())?;
    t.push(
        vb.prefix(),
        "Linear".into(),
        vec![out],
        input * out + out,
        (input * out) as u64,
    );
    Ok(layer)
}

/// `layer(x)` for `x` `[batch, in]`, as one `hdr-ops` op (candle-nn's `Linear` takes two).
pub(crate) fn apply_linear(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    Ok(hdr_ops::linear(
        x,
        layer.weight(),
        layer.bias(),
        hdr_ops::Activation::None,
    )?)
}

/// `act(layer(x))`; a ReLU runs inside the layer's op.
pub(crate) fn apply_linear_act(layer: &Linear, x: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::Relu {
        Ok(hdr_ops::linear(
            x,
            layer.weight(),
            layer.bias(),
            hdr_ops::Activation::Relu,
        )?)
    } else {
        act.apply(&apply_linear(layer, x)?)
    }
}

/// Pooling on the `hdr-ops` kernels.
pub(crate) fn pool(
    x: &Tensor,
    pool: Pool,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    Ok(match pool {
        Pool::Max => hdr_ops::max_pool2d(x, kernel, stride, padding)?,
        Pool::Avg => hdr_ops::avg_pool2d(x, kernel, stride, padding)?,
    })
}

/// `[b, c, h, w] -> [b, c]`.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(hdr_ops::global_avg_pool2d(x)?)
}

pub(crate) fn dropout(x: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        crate::init::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

/// Checks that `x` is `[b, c, h, w]` with the expected `c, h, w`.
pub(crate) fn check_input(
    model: &'static str,
    x: &Tensor,
    c: usize,
    h: usize,
    w: usize,
) -> Result<()> {
    match x.dims() {
        [_, xc, xh, xw] if (*xc, *xh, *xw) == (c, h, w) => Ok(()),
        dims => Err(ModelError::BadInput {
            model,
            channels: c,
            height: h,
            width: w,
            found: dims.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;

    /// A conv -> batch norm -> ReLU unit with non-trivial running statistics.
    fn unit(spec: ConvSpec, input: &[usize]) -> Result<(ConvBn, VarMap)> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let mut t = Tracer::new("test", input);
        let unit = ConvBn::new(&mut t, spec, Some(Activation::Relu), vb)?;
        let c = spec.out;
        for (name, lo, hi) in [
            ("bn.weight", 0.5, 1.5),
            ("bn.bias", -0.5, 0.5),
            ("bn.running_mean", -0.3, 0.3),
            ("bn.running_var", 0.2, 2.0),
        ] {
            let value = Tensor::rand(lo as f32, hi as f32, c, &Device::Cpu)?;
            vars.data().lock().expect("var map")[name].set(&value)?;
        }
        Ok((unit, vars))
    }

    #[test]
    fn folded_evaluation_equals_batch_norm_after_the_convolution() -> Result<()> {
        let depthwise = ConvSpec {
            groups: 8,
            ..ConvSpec::same(8, 3, 2)
        };
        for (spec, input) in [
            (ConvSpec::same(6, 3, 1), [3usize, 9, 9]),
            (depthwise, [8, 7, 7]),
        ] {
            let (unit, _vars) = unit(spec, &input)?;
            // Large enough to fold, and batch 1 (not folded) as the reference path.
            let x = Tensor::randn(0f32, 1.0, (16, input[0], input[1], input[2]), &Device::Cpu)?;
            assert!(16 * unit.out_per_image >= unit.conv.weight.elem_count());
            let folded = unit.forward_t(&x, false)?;
            let reference = unit
                .bn
                .forward_t(&unit.conv.forward(&x)?, false, unit.act)?;
            let diff = (folded - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{spec:?}: max difference {diff}");
        }
        Ok(())
    }
}
