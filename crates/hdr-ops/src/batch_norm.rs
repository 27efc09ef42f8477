//! Batch normalisation over `[b, c, h, w]` with batch statistics (training mode), optionally
//! fused with ReLU, as one custom op with a direct backward pass.
//!
//! Written with candle ops, a training-mode batch norm is a chain of ~10 broadcast ops whose
//! backward allocates a full-size tensor for each; here the forward is 2 passes for the
//! statistics plus 1 for the output, and the backward 2 passes, parallel over channels/planes.

use crate::conv::Activation;
use crate::error::{OpsError, Result};
use crate::util::{contiguous_cpu, cpu_f32, storage_f32, tensor_from};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// Output of [`batch_norm2d`]: the normalised tensor and the batch statistics (which do not
/// track gradients), for updating running averages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchNormOutput {
    /// `act(gamma * (x - mean) / sqrt(var + eps) + beta)`, shape of `x`.
    pub y: Tensor,
    /// Per-channel batch mean, `[c]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance (divided by `n`), `[c]`. PyTorch updates its running
    /// variance with the unbiased one: `var * n / (n - 1)`.
    pub var: Tensor,
    /// Number of elements per channel (`b * h * w`).
    pub n: usize,
}

/// Training-mode batch normalisation of `x` `[b, c, h, w]` with per-channel `gamma`, `beta`
/// `[c]`, using the statistics of this batch, followed by `activation`.
///
/// On CPU with `f32` tensors this is a single fused op with a direct backward pass; elsewhere
/// it is composed from candle ops with the same semantics.
pub fn batch_norm2d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    activation: Activation,
) -> Result<BatchNormOutput> {
    const OP: &str = "batch_norm2d";
    crate::util::tune_allocator();
    let (b, c, h, w) = match *x.dims() {
        [b, c, h, w] => (b, c, h, w),
        _ => {
            return Err(OpsError::ShapeMismatch {
                op: OP,
                expected: "[b, c, h, w]".into(),
                found: x.dims().to_vec(),
            })
        }
    };
    for t in [gamma, beta] {
        if t.dims() != [c] {
            return Err(OpsError::ShapeMismatch {
                op: OP,
                expected: format!("[{c}]"),
                found: t.dims().to_vec(),
            });
        }
        if t.dtype() != x.dtype() {
            return Err(OpsError::DTypeMismatch {
                op: OP,
                lhs: x.dtype(),
                rhs: t.dtype(),
            });
        }
    }
    let n = b * h * w;
    if n == 0 || !(eps.is_finite() && eps > 0.0) {
        return Err(OpsError::InvalidConfig {
            op: OP,
            reason: format!("need a non-empty batch and eps > 0 (n = {n}, eps = {eps})"),
        });
    }
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return fallback(x, gamma, beta, eps, activation, n);
    }
    let stats = Arc::new(OnceLock::new());
    let op = BatchNorm2d {
        dims: [b, c, h * w],
        shape: [b, c, h, w],
        eps: eps as f32,
        act: activation,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let Some(s) = stats.get() else {
        return Err(OpsError::Candle(candle_core::Error::Msg(format!(
            "{OP}: forward did not record statistics"
        ))));
    };
    let var = s
        .invstd
        .iter()
        .map(|is| 1.0 / (is * is) - eps as f32)
        .collect();
    Ok(BatchNormOutput {
        y,
        mean: tensor_from(s.mean.clone(), &[c])?,
        var: tensor_from(var, &[c])?,
        n,
    })
}

/// candle ops, for other devices and dtypes.
fn fallback(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
    n: usize,
) -> Result<BatchNormOutput> {
    let c = gamma.dim(0)?;
    let xc = x.transpose(0, 1)?.flatten_from(1)?; // [c, n]
    let mean = xc.mean_keepdim(D::Minus1)?;
    let centred = xc.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = centred.broadcast_div(&(var.clone() + eps)?.sqrt()?)?;
    let y = xhat
        .broadcast_mul(&gamma.reshape((c, 1))?)?
        .broadcast_add(&beta.reshape((c, 1))?)?
        .reshape((c, x.dim(0)?, x.dim(2)?, x.dim(3)?))?
        .transpose(0, 1)?
        .contiguous()?;
    let y = match act {
        Activation::None => y,
        Activation::Relu => y.relu()?,
    };
    Ok(BatchNormOutput {
        y,
        mean: mean.flatten_all()?.detach(),
        var: var.flatten_all()?.detach(),
        n,
    })
}

/// Per-channel statistics recorded by the forward pass and reused by the backward pass.
#[derive(Debug)]
struct Stats {
    mean: Vec<f32>,
    invstd: Vec<f32>,
}

struct BatchNorm2d {
    /// `[b, c, h*w]`.
    dims: [usize; 3],
    /// `[b, c, h, w]`.
    shape: [usize; 4],
    eps: f32,
    act: Activation,
    stats: Arc<OnceLock<Stats>>,
}

/// The `b` planes of channel `ci` of a `[b, c, hw]` buffer.
#[inline]
fn channel_planes(x: &[f32], ci: usize, [b, c, hw]: [usize; 3]) -> impl Iterator<Item = &[f32]> {
    (0..b).map(move |bi| &x[(bi * c + ci) * hw..][..hw])
}

impl CustomOp3 for BatchNorm2d {
    fn name(&self) -> &'static str {
        "hdr-batch-norm2d"
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
        let [b, c, hw] = self.dims;
        let x = cpu_f32(s1, l1, self.name())?;
        let gamma = cpu_f32(s2, l2, self.name())?;
        let beta = cpu_f32(s3, l3, self.name())?;
        if x.len() != b * c * hw || gamma.len() != c || beta.len() != c {
            bail!("{}: inputs do not match the validated shape", self.name())
        }
        let n = (b * hw) as f32;
        // Two-pass statistics (mean, then squared deviations) for accuracy.
        let (mean, invstd): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ci| {
                let mean = channel_planes(x, ci, self.dims)
                    .map(crate::util::sum)
                    .sum::<f32>()
                    / n;
                let var = channel_planes(x, ci, self.dims)
                    .map(|p| {
                        let mut acc = [0f32; 8];
                        let mut ch = p.chunks_exact(8);
                        for blk in &mut ch {
                            for l in 0..8 {
                                let d = blk[l] - mean;
                                acc[l] += d * d;
                            }
                        }
                        acc.iter().sum::<f32>()
                            + ch.remainder()
                                .iter()
                                .map(|v| (v - mean) * (v - mean))
                                .sum::<f32>()
                    })
                    .sum::<f32>()
                    / n;
                (mean, 1.0 / (var + self.eps).sqrt())
            })
            .unzip();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                let ci = plane % c;
                let (m, scale, shift) = (mean[ci], invstd[ci] * gamma[ci], beta[ci]);
                // (x - mean) * scale + beta rather than x * scale + (beta - mean * scale): the
                // latter cancels catastrophically when the variance is tiny (scale is large).
                match self.act {
                    Activation::None => yp
                        .iter_mut()
                        .zip(xp)
                        .for_each(|(y, &x)| *y = (x - m) * scale + shift),
                    Activation::Relu => yp
                        .iter_mut()
                        .zip(xp)
                        .for_each(|(y, &x)| *y = ((x - m) * scale + shift).max(0.0)),
                }
            });
        // Ignored if already set: an op instance is only ever run forward once.
        let _ = self.stats.set(Stats { mean, invstd });
        Ok((CpuStorage::F32(y), Shape::from_dims(&self.shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [b, c, hw] = self.dims;
        let name = self.name();
        let Some(stats) = self.stats.get() else {
            bail!("{name}: backward called before forward")
        };
        let (xt, gt, rt, dyt) = (
            contiguous_cpu(x)?,
            contiguous_cpu(gamma)?,
            contiguous_cpu(res)?,
            contiguous_cpu(grad)?,
        );
        let (xs, xl) = xt.storage_and_layout();
        let (gs, gl) = gt.storage_and_layout();
        let (rs, rl) = rt.storage_and_layout();
        let (ds, dl) = dyt.storage_and_layout();
        let xd = storage_f32(&xs, xl, name)?;
        let gd = storage_f32(&gs, gl, name)?;
        let yd = storage_f32(&rs, rl, name)?;
        let dy = storage_f32(&ds, dl, name)?;
        let len = b * c * hw;
        if xd.len() != len || yd.len() != len || dy.len() != len || gd.len() != c {
            bail!("{name}: gradient does not match the input shape")
        }
        let relu = self.act == Activation::Relu;
        // Per channel: sum(dy') and sum(dy' * xhat), where dy' is dy masked by the ReLU.
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let (m, is) = (stats.mean[ci], stats.invstd[ci]);
                let mut acc = ([0f32; 8], [0f32; 8]);
                let mut tail = (0f32, 0f32);
                for bi in 0..b {
                    let off = (bi * c + ci) * hw;
                    let (xp, yp, gp) = (&xd[off..][..hw], &yd[off..][..hw], &dy[off..][..hw]);
                    let mut it = xp
                        .chunks_exact(8)
                        .zip(yp.chunks_exact(8))
                        .zip(gp.chunks_exact(8));
                    for ((xb, yb), gb) in &mut it {
                        for l in 0..8 {
                            let g = if relu && yb[l] <= 0.0 { 0.0 } else { gb[l] };
                            acc.0[l] += g;
                            acc.1[l] += g * (xb[l] - m) * is;
                        }
                    }
                    let r = hw - hw % 8;
                    for i in r..hw {
                        let g = if relu && yp[i] <= 0.0 { 0.0 } else { gp[i] };
                        tail.0 += g;
                        tail.1 += g * (xp[i] - m) * is;
                    }
                }
                (
                    acc.0.iter().sum::<f32>() + tail.0,
                    acc.1.iter().sum::<f32>() + tail.1,
                )
            })
            .collect();
        let dgamma = gamma
            .track_op()
            .then(|| tensor_from(sums.iter().map(|s| s.1).collect(), &[c]))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| tensor_from(sums.iter().map(|s| s.0).collect(), &[c]))
            .transpose()?;
        let dx = if x.track_op() {
            let n = (b * hw) as f32;
            let mut dx = vec![0f32; len];
            dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dxp)| {
                let ci = plane % c;
                let off = plane * hw;
                let (xp, yp, gp) = (&xd[off..][..hw], &yd[off..][..hw], &dy[off..][..hw]);
                let (m, is) = (stats.mean[ci], stats.invstd[ci]);
                // dx = gamma * invstd * (dy' - mean(dy') - xhat * mean(dy' * xhat))
                let k = gd[ci] * is;
                let (mdy, mdyx) = (sums[ci].0 / n, sums[ci].1 / n);
                for (((d, &xv), &yv), &gv) in dxp.iter_mut().zip(xp).zip(yp).zip(gp) {
                    let g = if relu && yv <= 0.0 { 0.0 } else { gv };
                    *d = k * (g - mdy - (xv - m) * is * mdyx);
                }
            });
            Some(tensor_from(dx, &self.shape)?)
        } else {
            None
        };
        Ok((dx, dgamma, dbeta))
    }
}
