//! Convolutions each followed by training-mode batch norm (and ReLU), chained as one op.
//!
//! As separate ops, every convolution output and every batch-norm output is a tensor of
//! candle's graph, and candle's backward pass gives each one's gradient the treatment every
//! gradient gets: a zeroed buffer of the tensor's size plus an addition into it, on the calling
//! thread, while the other cores wait. In a MobileNet-HDR training step those passes were ~11%
//! of the samples. Inside one op, the gradients between its stages never reach candle: one
//! stage (`conv_bn2d`) hides the convolution's output; two (`conv_bn_chain2d` over a
//! depthwise-separable block) also hide the block's middle activation.

use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::batch_norm::{check_channel_params, BatchNorm2d, BatchNormOutput, BatchStats};
use crate::conv::{validate_dims, Activation, Conv2dConfig, Conv2dGemm, ConvGeom};
use crate::depthwise::DepthwiseConv2d;
use crate::error::{OpsError, Result};
use crate::util::{cpu_f32, cpu_slices, tensor_from, SliceGrads};

/// One stage of [`conv_bn_chain2d`]: a bias-free convolution (`cfg` without its activation),
/// batch normalisation with the statistics of the batch, then `cfg.activation`.
#[derive(Debug, Clone, Copy)]
pub struct ConvBnStage<'a> {
    /// `[c_out, c_in / groups, kh, kw]`.
    pub weight: &'a Tensor,
    /// `[c_out]`.
    pub gamma: &'a Tensor,
    /// `[c_out]`.
    pub beta: &'a Tensor,
    /// Stride, padding, groups; `activation` follows the batch norm.
    pub cfg: Conv2dConfig,
}

/// Output of [`conv_bn_chain2d`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChainOutput {
    /// The last stage's output.
    pub y: Tensor,
    /// Each stage's batch statistics, in order (for the running averages).
    pub stats: Vec<BatchStats>,
}

/// `batch_norm2d(conv2d(x, w, None, cfg without activation), gamma, beta, eps,
/// cfg.activation)`: [`conv_bn_chain2d`] with one stage.
///
/// Shapes: `x` `[b, c_in, h, w]`, `w` `[c_out, c_in / groups, kh, kw]`, `gamma` and `beta`
/// `[c_out]`; `y` as [`crate::conv2d`]'s output.
pub fn conv_bn2d(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    cfg: &Conv2dConfig,
    eps: f64,
) -> Result<BatchNormOutput> {
    let stage = ConvBnStage {
        weight: w,
        gamma,
        beta,
        cfg: *cfg,
    };
    let mut out = conv_bn_chain2d(x, &[stage], eps)?;
    let s = out.stats.remove(0);
    Ok(BatchNormOutput {
        y: out.y,
        mean: s.mean,
        var: s.var,
        n: s.n,
    })
}

/// The stages one after the other, each a convolution, batch norm and activation
/// ([`ConvBnStage`]), e.g. the depthwise and pointwise halves of a MobileNet block.
///
/// On CPU with `f32` tensors, when every convolution is dense (`groups == 1`) or depthwise,
/// this is one custom op running the kernels of [`crate::conv2d`] and [`crate::batch_norm2d`],
/// whose backward pass hands each stage's input gradient straight to the stage before;
/// elsewhere it is composed from those two functions, with the same results.
pub fn conv_bn_chain2d(x: &Tensor, stages: &[ConvBnStage<'_>], eps: f64) -> Result<ChainOutput> {
    const OP: &str = "conv_bn_chain2d";
    crate::util::setup();
    if stages.is_empty() {
        return Err(OpsError::InvalidConfig {
            op: OP,
            reason: "needs at least one stage".into(),
        });
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(OpsError::InvalidConfig {
            op: OP,
            reason: format!("need eps > 0, got {eps}"),
        });
    }
    let mut dims = x.dims().to_vec();
    let mut geoms = Vec::with_capacity(stages.len());
    for s in stages {
        let g = validate_dims(&dims, x, s.weight, None, &plain(&s.cfg))?;
        check_channel_params(OP, g.c_out, x.dtype(), s.gamma, s.beta)?;
        dims = g.out_dims().to_vec();
        geoms.push(g);
    }
    let fast = x.device().is_cpu()
        && x.dtype() == DType::F32
        && geoms[0].b > 0
        && stages
            .iter()
            .zip(&geoms)
            .all(|(s, g)| s.cfg.groups == 1 || (s.cfg.groups == g.c_in && g.c_out == g.c_in));
    if !fast {
        return composed(x, stages, eps);
    }

    let op_stages: Vec<Stage> = stages
        .iter()
        .zip(&geoms)
        .map(|(s, &g)| Stage {
            kernel: if s.cfg.groups == 1 {
                Kernel::Gemm(Conv2dGemm {
                    g,
                    act: Activation::None,
                    max_group: usize::MAX,
                })
            } else {
                Kernel::Depthwise(DepthwiseConv2d {
                    g,
                    act: Activation::None,
                })
            },
            bn: BatchNorm2d::new(g.out_dims(), eps as f32, s.cfg.activation),
            g,
        })
        .collect();
    let bns: Vec<BatchNorm2d> = op_stages.iter().map(|s| s.bn.clone()).collect();
    // Three arguments at most: the last stage's weight (the largest, in a MobileNet block),
    // and every other weight, gamma and beta as one flat vector, whose gradient candle's
    // `cat` backward splits back.
    let last = stages[stages.len() - 1].weight.contiguous()?;
    let mut small: Vec<Tensor> = stages[..stages.len() - 1]
        .iter()
        .map(|s| s.weight.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    small.extend(
        stages
            .iter()
            .flat_map(|s| [s.gamma.clone(), s.beta.clone()]),
    );
    let params = Tensor::cat(&small, 0)?;
    let op = Chain {
        stages: op_stages,
        saved: OnceLock::new(),
    };
    let y = x.contiguous()?.apply_op3(&last, &params, op)?;
    let stats = bns
        .iter()
        .map(BatchNorm2d::stats_tensors)
        .collect::<Result<_>>()?;
    Ok(ChainOutput { y, stats })
}

/// `cfg` without its activation (the convolution's part of a stage).
fn plain(cfg: &Conv2dConfig) -> Conv2dConfig {
    Conv2dConfig {
        activation: Activation::None,
        ..*cfg
    }
}

/// The stages as separate ops, for devices, dtypes and group counts the fused op does not
/// cover.
fn composed(x: &Tensor, stages: &[ConvBnStage<'_>], eps: f64) -> Result<ChainOutput> {
    let mut y = x.clone();
    let mut stats = Vec::with_capacity(stages.len());
    for s in stages {
        let z = crate::conv2d(&y, s.weight, None, &plain(&s.cfg))?;
        let out = crate::batch_norm2d(&z, s.gamma, s.beta, eps, s.cfg.activation)?;
        stats.push(BatchStats {
            mean: out.mean,
            var: out.var,
            n: out.n,
        });
        y = out.y;
    }
    Ok(ChainOutput { y, stats })
}

/// A stage's convolution kernel (bias-free, no activation).
enum Kernel {
    Gemm(Conv2dGemm),
    Depthwise(DepthwiseConv2d),
}

impl Kernel {
    fn op(&self) -> &dyn CustomOp3 {
        match self {
            Self::Gemm(k) => k,
            Self::Depthwise(k) => k,
        }
    }

    /// Input and weight gradients (as asked for; never the bias's) from the output gradient
    /// `gd`.
    fn bwd(
        &self,
        xd: &[f32],
        wd: &[f32],
        zd: &[f32],
        gd: &[f32],
        need_x: bool,
        need_w: bool,
    ) -> candle_core::Result<SliceGrads> {
        let need = [need_x, need_w, false];
        match self {
            Self::Gemm(k) => k.bwd_slices(xd, wd, zd, gd, need),
            Self::Depthwise(k) => k.bwd_slices(xd, wd, zd, gd, need),
        }
    }
}

struct Stage {
    kernel: Kernel,
    /// Shares its statistics with the caller's copy.
    bn: BatchNorm2d,
    g: ConvGeom,
}

impl Stage {
    fn weight_len(&self) -> usize {
        let g = &self.g;
        g.c_out
            * g.kh
            * g.kw
            * if matches!(self.kernel, Kernel::Gemm(_)) {
                g.c_in
            } else {
                1
            }
    }
}

/// What the forward pass keeps for the backward pass, per stage: the convolution's output and,
/// except for the last stage (whose output is the op's), the stage's output.
struct Saved {
    z: Vec<f32>,
    y: Option<Vec<f32>>,
}

struct Chain {
    stages: Vec<Stage>,
    saved: OnceLock<Vec<Saved>>,
}

impl Chain {
    /// Where each stage's parameters start in the `params` argument: the weights of all but
    /// the last stage (whose weight is an argument of its own), then each stage's gamma,
    /// followed by its beta; and the argument's length.
    fn offsets(&self) -> (Vec<usize>, Vec<usize>, usize) {
        let n = self.stages.len();
        let mut at = 0;
        let mut w = Vec::with_capacity(n - 1);
        for s in &self.stages[..n - 1] {
            w.push(at);
            at += s.weight_len();
        }
        let mut a = Vec::with_capacity(n);
        for s in &self.stages {
            a.push(at);
            at += 2 * s.g.c_out;
        }
        (w, a, at)
    }
}

impl CustomOp3 for Chain {
    fn name(&self) -> &'static str {
        "hdr-conv-bn-chain2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let n = self.stages.len();
        let (w_off, a_off, total) = self.offsets();
        let last_w = cpu_f32(s2, l2, name)?;
        let params = cpu_f32(s3, l3, name)?;
        if last_w.len() != self.stages[n - 1].weight_len() || params.len() != total {
            bail!("{name}: weights or batch-norm parameters do not match the stages")
        }
        let mut saved = Vec::with_capacity(n);
        // The input of the next stage: the op's argument first, then each stage's output.
        let mut input: Option<(CpuStorage, Layout)> = None;
        let mut out_shape = None;
        for (i, st) in self.stages.iter().enumerate() {
            let c = st.g.c_out;
            let zero = CpuStorage::F32(vec![0.0; c]);
            let (ws, wl) = if i + 1 == n {
                (s2, l2.clone())
            } else {
                let len = w_off.get(i + 1).copied().unwrap_or(a_off[0]) - w_off[i];
                let at = l3.start_offset() + w_off[i];
                (s3, Layout::contiguous_with_offset(Shape::from(len), at))
            };
            let (xs, xl) = match &input {
                Some((s, l)) => (s, l),
                None => (s1, l1),
            };
            let (z, shape) = st.kernel.op().cpu_fwd(
                xs,
                xl,
                ws,
                &wl,
                &zero,
                &Layout::contiguous(Shape::from(c)),
            )?;
            let CpuStorage::F32(z) = z else {
                bail!("{name}: the convolution returned another dtype")
            };
            let (gamma, beta) = params[a_off[i]..a_off[i] + 2 * c].split_at(c);
            let y = st.bn.forward_slices(&z, gamma, beta);
            // The previous stage's output, no longer needed as an input, is kept for the
            // backward pass.
            if let (Some((CpuStorage::F32(prev), _)), Some(s)) = (input.take(), saved.last_mut()) {
                let s: &mut Saved = s;
                s.y = Some(prev);
            }
            saved.push(Saved { z, y: None });
            input = Some((CpuStorage::F32(y), Layout::contiguous(shape.clone())));
            out_shape = Some(shape);
        }
        let (Some((out, _)), Some(shape)) = (input, out_shape) else {
            bail!("{name}: no stages")
        };
        // Ignored if already set: an op instance is only ever run forward once.
        let _ = self.saved.set(saved);
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        last_w: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let Some(saved) = self.saved.get() else {
            bail!("{name}: backward called before forward")
        };
        let n = self.stages.len();
        let (w_off, a_off, total) = self.offsets();
        let (need_x, need_last, need_params) = (x.track_op(), last_w.track_op(), params.track_op());
        cpu_slices!(name;
            xd = x,
            lwd = last_w,
            pd = params,
            yd = res,
            gd = grad,
        );
        let mut d_last = None;
        let mut d_params = vec![0f32; if need_params { total } else { 0 }];
        // The gradient of the current stage's output, from the last stage back.
        let mut g: Option<Vec<f32>> = None;
        for (i, st) in self.stages.iter().enumerate().rev() {
            let s = &saved[i];
            let (Some(stats), Some(y)) = (
                st.bn.stats(),
                if i + 1 == n { Some(yd) } else { s.y.as_deref() },
            ) else {
                bail!("{name}: backward called before forward")
            };
            let gy = g.as_deref().unwrap_or(gd);
            if y.len() != s.z.len() || gy.len() != s.z.len() {
                bail!("{name}: gradient does not match the output shape")
            }
            let c = st.g.c_out;
            // An earlier stage needs this stage's input gradient.
            let need_in = i > 0 || need_x;
            let (need_w, wd) = if i + 1 == n {
                (need_last, lwd)
            } else {
                let end = w_off.get(i + 1).copied().unwrap_or(a_off[0]);
                (need_params, &pd[w_off[i]..end])
            };
            let (dz, sums) = st.bn.backward_slices(
                stats,
                &s.z,
                &pd[a_off[i]..a_off[i] + c],
                y,
                gy,
                need_in || need_w,
            );
            if need_params {
                let (dgamma, dbeta) = d_params[a_off[i]..a_off[i] + 2 * c].split_at_mut(c);
                for (k, (db, dg)) in sums.iter().enumerate() {
                    dbeta[k] = *db;
                    dgamma[k] = *dg;
                }
            }
            let Some(dz) = dz else {
                g = None;
                continue;
            };
            let input = if i == 0 {
                xd
            } else {
                match saved[i - 1].y.as_deref() {
                    Some(v) => v,
                    None => bail!("{name}: missing a stage's output"),
                }
            };
            let (dx, dw, _) = st.kernel.bwd(input, wd, &s.z, &dz, need_in, need_w)?;
            match dw {
                Some(dw) if i + 1 == n => d_last = Some(dw),
                Some(dw) => d_params[w_off[i]..w_off[i] + dw.len()].copy_from_slice(&dw),
                None => {}
            }
            g = dx;
        }
        let first = &self.stages[0].g;
        let dx = match (need_x, g) {
            (true, Some(g)) => Some(tensor_from(g, &[first.b, first.c_in, first.h, first.w])?),
            _ => None,
        };
        let d_last = d_last
            .map(|v| Tensor::from_vec(v, last_w.shape(), &candle_core::Device::Cpu))
            .transpose()?;
        let d_params = need_params
            .then(|| tensor_from(d_params, &[total]))
            .transpose()?;
        Ok((dx, d_last, d_params))
    }
}
