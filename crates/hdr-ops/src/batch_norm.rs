//! Batch normalisation over `[b, c, h, w]` with batch statistics (training mode), optionally
//! fused with ReLU, as one custom op with a direct backward pass.
//!
//! Written with candle ops, a training-mode batch norm is a chain of ~10 broadcast ops whose
//! backward allocates a full-size tensor for each; here the forward is 2 passes for the
//! statistics plus 1 for the output, and the backward 2 passes, parallel over channels/planes.

use crate::conv::Activation;
use crate::error::{OpsError, Result};
use crate::util::{cpu_f32, cpu_slices, simd_fn, tensor_from, vec_filled_by};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;
use std::mem::MaybeUninit;
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

/// Batch statistics of a training-mode batch norm (see [`BatchNormOutput`]), for updating
/// running averages; they do not track gradients.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchStats {
    /// Per-channel batch mean, `[c]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance (divided by `n`), `[c]`.
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
    crate::util::setup();
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
    check_channel_params(OP, c, x.dtype(), gamma, beta)?;
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
    // The clone shares the statistics the forward pass records.
    let op = BatchNorm2d::new([b, c, h, w], eps as f32, activation);
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op.clone())?;
    op.output(y)
}

/// The contiguous `f32` data of a per-channel op's arguments: `x` of `dims` (`[b, c, h*w]`)
/// and two `[c]` parameters.
fn channel_inputs<'a>(
    name: &'static str,
    [b, c, hw]: [usize; 3],
    [(s1, l1), (s2, l2), (s3, l3)]: [(&'a CpuStorage, &Layout); 3],
) -> candle_core::Result<(&'a [f32], &'a [f32], &'a [f32])> {
    let (x, p, q) = (
        cpu_f32(s1, l1, name)?,
        cpu_f32(s2, l2, name)?,
        cpu_f32(s3, l3, name)?,
    );
    if x.len() != b * c * hw || p.len() != c || q.len() != c {
        bail!("{name}: inputs do not match the validated shape")
    }
    Ok((x, p, q))
}

/// Checks that both per-channel parameters are `[c]` tensors of `dtype`.
pub(crate) fn check_channel_params(
    op: &'static str,
    c: usize,
    dtype: DType,
    a: &Tensor,
    b: &Tensor,
) -> Result<()> {
    for t in [a, b] {
        if t.dims() != [c] {
            return Err(OpsError::ShapeMismatch {
                op,
                expected: format!("[{c}]"),
                found: t.dims().to_vec(),
            });
        }
        if t.dtype() != dtype {
            return Err(OpsError::DTypeMismatch {
                op,
                lhs: dtype,
                rhs: t.dtype(),
            });
        }
    }
    Ok(())
}

/// Per-channel `act(x * scale + shift)` over `x` `[b, c, h, w]` with `scale`, `shift` `[c]`:
/// evaluation-mode batch norm, with `scale = gamma / sqrt(running_var + eps)` and
/// `shift = beta - running_mean * scale` (cheap `[c]` ops the caller composes, so gradients
/// still reach gamma and beta through candle).
///
/// On CPU with `f32` tensors this is one fused pass (candle needs a broadcast multiply, a
/// broadcast add and a ReLU, each a full pass with its own output buffer); elsewhere it is
/// composed from those candle ops.
pub fn channel_affine2d(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    const OP: &str = "channel_affine2d";
    crate::util::setup();
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
    check_channel_params(OP, c, x.dtype(), scale, shift)?;
    if !(x.device().is_cpu() && x.dtype() == DType::F32) || b * c * h * w == 0 {
        let y = x
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
        return Ok(match activation {
            Activation::None => y,
            Activation::Relu => y.relu()?,
        });
    }
    let op = ChannelAffine {
        dims: [b, c, h * w],
        shape: [b, c, h, w],
        act: activation,
    };
    Ok(x.contiguous()?
        .apply_op3(&scale.contiguous()?, &shift.contiguous()?, op)?)
}

struct ChannelAffine {
    /// `[b, c, h*w]`.
    dims: [usize; 3],
    /// `[b, c, h, w]`.
    shape: [usize; 4],
    act: Activation,
}

simd_fn! {
    /// `y = act(x * scale + shift)` over one plane (writes every element of `y`).
    fn affine_plane(x: &[f32], y: &mut [MaybeUninit<f32>], scale: f32, shift: f32, relu: bool) {
        if relu {
            for (d, &v) in y.iter_mut().zip(x) {
                d.write((v * scale + shift).max(0.0));
            }
        } else {
            for (d, &v) in y.iter_mut().zip(x) {
                d.write(v * scale + shift);
            }
        }
    }
}

simd_fn! {
    /// `dx = dy' * scale` over one plane (writes every element of `dx`).
    fn scale_grad_plane(y: &[f32], g: &[f32], dx: &mut [MaybeUninit<f32>], scale: f32, relu: bool) {
        if relu {
            for ((d, &gv), &yv) in dx.iter_mut().zip(g).zip(y) {
                d.write(masked::<true>(gv, yv) * scale);
            }
        } else {
            for (d, &gv) in dx.iter_mut().zip(g) {
                d.write(gv * scale);
            }
        }
    }
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "hdr-channel-affine2d"
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
        let [_, c, hw] = self.dims;
        let (x, scale, shift) =
            channel_inputs(self.name(), self.dims, [(s1, l1), (s2, l2), (s3, l3)])?;
        let relu = self.act == Activation::Relu;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(hw)
                .zip(x.par_chunks(hw))
                .enumerate()
                .with_min_len(plane_batch(hw))
                .for_each(|(plane, (yp, xp))| {
                    let ci = plane % c;
                    affine_plane(xp, yp, scale[ci], shift[ci], relu)
                })
        };
        // SAFETY: the chunks partition the buffer and `affine_plane` writes every element of
        // its chunk.
        let y = unsafe { vec_filled_by(x.len(), fill) };
        Ok((CpuStorage::F32(y), Shape::from_dims(&self.shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [b, c, hw] = self.dims;
        let name = self.name();
        cpu_slices!(name;
            xd = x,
            sd = scale,
            yd = res,
            dy = grad,
        );
        let len = b * c * hw;
        if xd.len() != len || yd.len() != len || dy.len() != len || sd.len() != c {
            bail!("{name}: gradient does not match the input shape")
        }
        let relu = self.act == Activation::Relu;
        let min_len = plane_batch(hw);
        let (dscale, dshift) = if scale.track_op() || shift.track_op() {
            // sum(dy') and sum(dy' * x) per plane (`grad_sums` with m = 0), then per channel.
            let mut plane_sums = vec![(0f32, 0f32); b * c];
            plane_sums
                .par_iter_mut()
                .enumerate()
                .with_min_len(min_len)
                .for_each(|(plane, s)| {
                    let off = plane * hw;
                    *s = plane_grad_sums(
                        &xd[off..][..hw],
                        &yd[off..][..hw],
                        &dy[off..][..hw],
                        0.0,
                        relu,
                    );
                });
            let mut sums = vec![(0f32, 0f32); c];
            for (plane, s) in plane_sums.iter().enumerate() {
                let acc = &mut sums[plane % c];
                acc.0 += s.0;
                acc.1 += s.1;
            }
            (
                scale
                    .track_op()
                    .then(|| tensor_from(sums.iter().map(|s| s.1).collect(), &[c]))
                    .transpose()?,
                shift
                    .track_op()
                    .then(|| tensor_from(sums.iter().map(|s| s.0).collect(), &[c]))
                    .transpose()?,
            )
        } else {
            (None, None)
        };
        let dx = if x.track_op() {
            let fill = |dx: &mut [MaybeUninit<f32>]| {
                dx.par_chunks_mut(hw)
                    .enumerate()
                    .with_min_len(min_len)
                    .for_each(|(plane, dxp)| {
                        let off = plane * hw;
                        scale_grad_plane(
                            &yd[off..][..hw],
                            &dy[off..][..hw],
                            dxp,
                            sd[plane % c],
                            relu,
                        );
                    })
            };
            // SAFETY: the chunks partition the buffer and `scale_grad_plane` writes every
            // element of its chunk.
            Some(tensor_from(
                unsafe { vec_filled_by(len, fill) },
                &self.shape,
            )?)
        } else {
            None
        };
        Ok((dx, dscale, dshift))
    }
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
pub(crate) struct Stats {
    mean: Vec<f32>,
    invstd: Vec<f32>,
}

#[derive(Clone)]
pub(crate) struct BatchNorm2d {
    /// `[b, c, h*w]`.
    dims: [usize; 3],
    /// `[b, c, h, w]`.
    shape: [usize; 4],
    eps: f32,
    act: Activation,
    stats: Arc<OnceLock<Stats>>,
}

/// Planes per rayon task: enough that a task covers a few thousand elements, so that small
/// planes (4x4) do not pay scheduling overhead per plane.
pub(crate) fn plane_batch(hw: usize) -> usize {
    (4096 / hw.max(1)).max(1)
}

simd_fn! {
    /// Mean and sum of squared deviations from it of one plane.
    fn plane_moments(p: &[f32]) -> (f32, f32) {
        const W: usize = 16;
        let mean = crate::util::sum(p) / p.len().max(1) as f32;
        let mut acc = [0f32; W];
        let mut blocks = p.chunks_exact(W);
        for blk in &mut blocks {
            for l in 0..W {
                let d = blk[l] - mean;
                acc[l] += d * d;
            }
        }
        let tail: f32 = blocks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        (mean, acc.iter().sum::<f32>() + tail)
    }
}

simd_fn! {
    /// `y = act((x - m) * scale + shift)` over one plane.
    fn normalize_plane(x: &[f32], y: &mut [MaybeUninit<f32>], m: f32, scale: f32, shift: f32, relu: bool) {
        // (x - mean) * scale + beta rather than x * scale + (beta - mean * scale): the latter
        // cancels catastrophically when the variance is tiny (scale is large).
        if relu {
            for (d, &v) in y.iter_mut().zip(x) {
                d.write(((v - m) * scale + shift).max(0.0));
            }
        } else {
            for (d, &v) in y.iter_mut().zip(x) {
                d.write((v - m) * scale + shift);
            }
        }
    }
}

/// `dy'` of one element: the incoming gradient, masked by `y > 0` after a fused ReLU.
#[inline(always)]
fn masked<const RELU: bool>(g: f32, y: f32) -> f32 {
    if RELU {
        // A bit mask rather than `if y > 0.0 { g } else { 0.0 }`: LLVM turns the select into
        // per-lane branches, the mask into one compare and one `and` per vector.
        f32::from_bits(g.to_bits() & u32::from(y > 0.0).wrapping_neg())
    } else {
        g
    }
}

/// Monomorphised body of `plane_grad_sums` (a runtime `relu` test inside the loop would keep
/// it from vectorising).
#[inline(always)]
fn grad_sums<const RELU: bool>(x: &[f32], y: &[f32], g: &[f32], m: f32) -> (f32, f32) {
    const W: usize = 8;
    let (mut s0, mut s1) = ([0f32; W], [0f32; W]);
    let blocks = x
        .chunks_exact(W)
        .zip(y.chunks_exact(W))
        .zip(g.chunks_exact(W));
    for ((xb, yb), gb) in blocks {
        for l in 0..W {
            let gv = masked::<RELU>(gb[l], yb[l]);
            s0[l] += gv;
            s1[l] += gv * (xb[l] - m);
        }
    }
    let (mut t0, mut t1) = (0f32, 0f32);
    let r = x.len() - x.len() % W;
    for ((&xv, &yv), &gv) in x[r..].iter().zip(&y[r..]).zip(&g[r..]) {
        let gv = masked::<RELU>(gv, yv);
        t0 += gv;
        t1 += gv * (xv - m);
    }
    (s0.iter().sum::<f32>() + t0, s1.iter().sum::<f32>() + t1)
}

/// `(sum(dy'), sum(dy' * (x - m)))` over one plane.
fn plane_grad_sums(x: &[f32], y: &[f32], g: &[f32], m: f32, relu: bool) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::util::has_avx2() {
        // SAFETY: AVX2 and FMA support was checked at runtime just above.
        return unsafe { grad_sums_avx2(x, y, g, m, relu) };
    }
    if relu {
        grad_sums::<true>(x, y, g, m)
    } else {
        grad_sums::<false>(x, y, g, m)
    }
}

/// AVX2 version of `grad_sums`, with intrinsics: for the masked sums, LLVM (1.95) turns the
/// ReLU select into eight per-lane branches whatever the source form, which made this the
/// hottest loop of a MobileNet training step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_sums_avx2(x: &[f32], y: &[f32], g: &[f32], m: f32, relu: bool) -> (f32, f32) {
    use std::arch::x86_64::*;
    const W: usize = 8;
    let n = x.len().min(y.len()).min(g.len());
    let full = n - n % W;
    let mut lanes = [[0f32; W]; 2];
    // SAFETY: every load reads `W` floats starting at `i`, with `i + W <= full <= len` of each
    // slice; the stores write two local arrays of `W` floats.
    unsafe {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mv, zero) = (_mm256_set1_ps(m), _mm256_setzero_ps());
        let mut i = 0;
        while i < full {
            let mut gv = _mm256_loadu_ps(g.as_ptr().add(i));
            if relu {
                let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(y.as_ptr().add(i)), zero);
                gv = _mm256_and_ps(gv, keep);
            }
            let xc = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), mv);
            s0 = _mm256_add_ps(s0, gv);
            s1 = _mm256_fmadd_ps(gv, xc, s1);
            i += W;
        }
        _mm256_storeu_ps(lanes[0].as_mut_ptr(), s0);
        _mm256_storeu_ps(lanes[1].as_mut_ptr(), s1);
    }
    let tail = if relu {
        grad_sums::<true>(&x[full..n], &y[full..n], &g[full..n], m)
    } else {
        grad_sums::<false>(&x[full..n], &y[full..n], &g[full..n], m)
    };
    (
        lanes[0].iter().sum::<f32>() + tail.0,
        lanes[1].iter().sum::<f32>() + tail.1,
    )
}

/// Per-channel constants of the input gradient: `dx = k * (dy' - mdy) - (x - m) * a`.
#[derive(Clone, Copy)]
struct DxCoef {
    m: f32,
    a: f32,
    k: f32,
    mdy: f32,
}

#[inline(always)]
fn dx_body<const RELU: bool>(
    x: &[f32],
    y: &[f32],
    g: &[f32],
    dx: &mut [MaybeUninit<f32>],
    c: DxCoef,
) {
    for (((d, &xv), &yv), &gv) in dx.iter_mut().zip(x).zip(y).zip(g) {
        d.write(c.k * (masked::<RELU>(gv, yv) - c.mdy) - (xv - c.m) * c.a);
    }
}

simd_fn! {
    /// Input gradient of one plane (writes every element of `dx`).
    fn dx_plane(x: &[f32], y: &[f32], g: &[f32], dx: &mut [MaybeUninit<f32>], c: DxCoef, relu: bool) {
        if relu {
            dx_body::<true>(x, y, g, dx, c)
        } else {
            dx_body::<false>(x, y, g, dx, c)
        }
    }
}

impl BatchNorm2d {
    pub(crate) fn new(shape: [usize; 4], eps: f32, act: Activation) -> Self {
        let [b, c, h, w] = shape;
        Self {
            dims: [b, c, h * w],
            shape,
            eps,
            act,
            stats: Arc::new(OnceLock::new()),
        }
    }

    /// The statistics of the forward pass, once it ran.
    pub(crate) fn stats(&self) -> Option<&Stats> {
        self.stats.get()
    }

    /// The statistics the forward pass recorded, as tensors.
    pub(crate) fn stats_tensors(&self) -> Result<BatchStats> {
        let [b, c, hw] = self.dims;
        let Some(s) = self.stats.get() else {
            return Err(OpsError::Candle(candle_core::Error::Msg(
                "batch_norm2d: forward did not record statistics".into(),
            )));
        };
        let var = s
            .invstd
            .iter()
            .map(|is| 1.0 / (is * is) - self.eps)
            .collect();
        Ok(BatchStats {
            mean: tensor_from(s.mean.clone(), &[c])?,
            var: tensor_from(var, &[c])?,
            n: b * hw,
        })
    }

    /// `y` and the statistics its forward pass recorded.
    pub(crate) fn output(&self, y: Tensor) -> Result<BatchNormOutput> {
        let s = self.stats_tensors()?;
        Ok(BatchNormOutput {
            y,
            mean: s.mean,
            var: s.var,
            n: s.n,
        })
    }

    /// Forward pass over contiguous data of the validated shape; records the statistics.
    pub(crate) fn forward_slices(&self, x: &[f32], gamma: &[f32], beta: &[f32]) -> Vec<f32> {
        let [b, c, hw] = self.dims;
        let planes = b * c;
        let min_len = plane_batch(hw);
        // Per-plane mean and sum of squared deviations in one pass over memory (the plane is
        // still in L1 for its second loop), combined per channel with Chan et al.'s formula:
        // as accurate as two passes over the whole channel, at half the memory traffic.
        let mut moments = vec![(0f32, 0f32); planes];
        moments
            .par_iter_mut()
            .zip(x.par_chunks(hw))
            .with_min_len(min_len)
            .for_each(|(m, p)| *m = plane_moments(p));
        let (mean, invstd): (Vec<f32>, Vec<f32>) = (0..c)
            .map(|ci| {
                let chan = || moments.iter().skip(ci).step_by(c);
                let mean = chan().map(|m| f64::from(m.0)).sum::<f64>() / b as f64;
                let m2 = chan()
                    .map(|m| f64::from(m.1) + hw as f64 * (f64::from(m.0) - mean).powi(2))
                    .sum::<f64>();
                let var = m2 / (b * hw) as f64;
                (
                    mean as f32,
                    (1.0 / (var + f64::from(self.eps)).sqrt()) as f32,
                )
            })
            .unzip();
        let relu = self.act == Activation::Relu;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(hw)
                .zip(x.par_chunks(hw))
                .enumerate()
                .with_min_len(min_len)
                .for_each(|(plane, (yp, xp))| {
                    let ci = plane % c;
                    normalize_plane(xp, yp, mean[ci], invstd[ci] * gamma[ci], beta[ci], relu)
                })
        };
        // SAFETY: the chunks partition the buffer and `normalize_plane` writes every element of
        // its chunk.
        let y = unsafe { vec_filled_by(x.len(), fill) };
        // Ignored if already set: an op instance is only ever run forward once.
        let _ = self.stats.set(Stats { mean, invstd });
        y
    }

    /// Backward pass over contiguous data (`xd` the input, `gd` gamma, `yd` the output, `dy`
    /// its gradient): the input gradient (if `need_dx`) and per channel
    /// `(dbeta, dgamma) = (sum(dy'), sum(dy' * xhat))`.
    pub(crate) fn backward_slices(
        &self,
        stats: &Stats,
        xd: &[f32],
        gd: &[f32],
        yd: &[f32],
        dy: &[f32],
        need_dx: bool,
    ) -> (Option<Vec<f32>>, Vec<(f32, f32)>) {
        let [b, c, hw] = self.dims;
        let len = b * c * hw;
        let relu = self.act == Activation::Relu;
        let min_len = plane_batch(hw);
        // Per plane: sum(dy') and sum(dy' * (x - mean)), where dy' is dy masked by the ReLU;
        // reduced per channel below.
        let mut plane_sums = vec![(0f32, 0f32); b * c];
        plane_sums
            .par_iter_mut()
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(plane, s)| {
                let off = plane * hw;
                let m = stats.mean[plane % c];
                *s = plane_grad_sums(
                    &xd[off..][..hw],
                    &yd[off..][..hw],
                    &dy[off..][..hw],
                    m,
                    relu,
                );
            });
        let sums: Vec<(f32, f32)> = (0..c)
            .map(|ci| {
                let (s0, s1) = plane_sums
                    .iter()
                    .skip(ci)
                    .step_by(c)
                    .fold((0f64, 0f64), |a, s| {
                        (a.0 + f64::from(s.0), a.1 + f64::from(s.1))
                    });
                (s0 as f32, (s1 * f64::from(stats.invstd[ci])) as f32)
            })
            .collect();
        let dx = if need_dx {
            let n = (b * hw) as f32;
            let fill = |dx: &mut [MaybeUninit<f32>]| {
                dx.par_chunks_mut(hw)
                    .enumerate()
                    .with_min_len(min_len)
                    .for_each(|(plane, dxp)| {
                        let ci = plane % c;
                        let off = plane * hw;
                        let (m, is) = (stats.mean[ci], stats.invstd[ci]);
                        // dx = gamma * invstd * (dy' - mean(dy') - xhat * mean(dy' * xhat))
                        let k = gd[ci] * is;
                        let (mdy, mdyx) = (sums[ci].0 / n, sums[ci].1 / n);
                        let coef = DxCoef {
                            m,
                            a: k * is * mdyx,
                            k,
                            mdy,
                        };
                        let (xp, yp, gp) = (&xd[off..][..hw], &yd[off..][..hw], &dy[off..][..hw]);
                        dx_plane(xp, yp, gp, dxp, coef, relu);
                    })
            };
            // SAFETY: the chunks partition the buffer and `dx_plane` writes every element of
            // its chunk.
            Some(unsafe { vec_filled_by(len, fill) })
        } else {
            None
        };
        (dx, sums)
    }
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
        let (x, gamma, beta) =
            channel_inputs(self.name(), self.dims, [(s1, l1), (s2, l2), (s3, l3)])?;
        let y = self.forward_slices(x, gamma, beta);
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
        cpu_slices!(name;
            xd = x,
            gd = gamma,
            yd = res,
            dy = grad,
        );
        let len = b * c * hw;
        if xd.len() != len || yd.len() != len || dy.len() != len || gd.len() != c {
            bail!("{name}: gradient does not match the input shape")
        }
        let (dx, sums) = self.backward_slices(stats, xd, gd, yd, dy, x.track_op());
        let dgamma = gamma
            .track_op()
            .then(|| tensor_from(sums.iter().map(|s| s.1).collect(), &[c]))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| tensor_from(sums.iter().map(|s| s.0).collect(), &[c]))
            .transpose()?;
        let dx = dx.map(|dx| tensor_from(dx, &self.shape)).transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}
