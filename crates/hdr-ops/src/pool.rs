//! Max, average and global average pooling with backward passes, parallel over
//! `(batch, channel)` planes.

use crate::error::{OpsError, Result};
use crate::util::{cpu_f32, for_each_chunk_pair, out_size, tensor_from, SERIAL_BELOW};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Validated geometry of one pooling call (square windows).
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

impl PoolGeom {
    fn new(
        x: &Tensor,
        kernel: usize,
        stride: usize,
        padding: usize,
        op: &'static str,
    ) -> Result<Self> {
        let [b, c, h, w] = match *x.dims() {
            [b, c, h, w] => [b, c, h, w],
            _ => {
                return Err(OpsError::ShapeMismatch {
                    op,
                    expected: "[b, c, h, w]".into(),
                    found: x.dims().to_vec(),
                })
            }
        };
        let invalid = |reason: String| OpsError::InvalidConfig { op, reason };
        // Planes are processed as chunks of h*w elements, which must not be empty.
        if h == 0 || w == 0 {
            return Err(OpsError::ShapeMismatch {
                op,
                expected: "[b, c, h >= 1, w >= 1]".into(),
                found: x.dims().to_vec(),
            });
        }
        if kernel == 0 || stride == 0 {
            return Err(invalid(format!(
                "kernel ({kernel}) and stride ({stride}) must be >= 1"
            )));
        }
        // PyTorch's rule: every window then contains at least one real input element.
        if padding > kernel / 2 {
            return Err(invalid(format!(
                "padding ({padding}) must be at most half the kernel ({kernel})"
            )));
        }
        let too_small = || {
            invalid(format!(
                "kernel {kernel} larger than padded input {h}x{w} (+{padding})"
            ))
        };
        let oh = out_size(h, kernel, stride, padding).ok_or_else(too_small)?;
        let ow = out_size(w, kernel, stride, padding).ok_or_else(too_small)?;
        Ok(Self {
            b,
            c,
            h,
            w,
            k: kernel,
            s: stride,
            p: padding,
            oh,
            ow,
        })
    }

    /// Input rows (or columns) covered by output row `o`, clipped to the input.
    #[inline]
    fn window(&self, o: usize, len: usize) -> (usize, usize) {
        let start = (o * self.s) as isize - self.p as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + self.k as isize).max(0) as usize).min(len);
        (lo, hi)
    }

    /// The common non-overlapping 2x2 / stride-2 / unpadded case, which has a fast path.
    fn is_2x2(&self) -> bool {
        self.k == 2 && self.s == 2 && self.p == 0
    }

    fn planes(&self) -> usize {
        self.b * self.c
    }
}

fn fast_path(x: &Tensor) -> bool {
    crate::util::setup();
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Applies `op` on the contiguous input.
fn apply<C: CustomOp1 + Send + Sync + 'static>(x: &Tensor, op: C) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// Index (within the plane) of the first maximum of the window of output `(oh, ow)`.
#[inline]
fn argmax(g: &PoolGeom, x: &[f32], oh: usize, ow: usize) -> usize {
    let (h0, h1) = g.window(oh, g.h);
    let (w0, w1) = g.window(ow, g.w);
    let mut best_i = h0 * g.w + w0;
    let mut best = x[best_i];
    for ih in h0..h1 {
        let row = &x[ih * g.w..(ih + 1) * g.w];
        for (iw, &v) in row.iter().enumerate().take(w1).skip(w0) {
            if v > best {
                best = v;
                best_i = ih * g.w + iw;
            }
        }
    }
    best_i
}

/// Max pooling with square `kernel`, `stride` and `padding` (padding never wins the max).
///
/// `x` is `[b, c, h, w]`; the result is `[b, c, (h + 2p - k) / s + 1, (w + 2p - k) / s + 1]`
/// (floor mode). Requires `padding <= kernel / 2`. The gradient goes to the first maximum of
/// each window (PyTorch's convention); overlapping windows (`kernel > stride`) are supported.
/// Non-CPU / non-`f32` tensors with `kernel == stride` and no padding (the usual 2x2/2) run as a
/// reshape and two max reductions, whose gradient is exact; other shapes use candle's
/// `max_pool2d_with_stride`, whose backward (candle 0.11.1) only supports `kernel == stride` and
/// scales the gradient by `1 / kernel²`.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let g = PoolGeom::new(x, kernel, stride, padding, "max_pool2d")?;
    if fast_path(x) {
        return apply(x, MaxPool2d(g));
    }
    if kernel == stride && padding == 0 {
        return Ok(non_overlapping_windows(x, kernel)?.max(5)?.max(3)?);
    }
    let x = if padding > 0 {
        pad_value(x, padding, f32::NEG_INFINITY)?
    } else {
        x.clone()
    };
    Ok(x.max_pool2d_with_stride(kernel, stride)?)
}

/// Average pooling with square `kernel`, `stride` and zero `padding`.
///
/// Padded zeros count towards the average (PyTorch's default `count_include_pad = true`): every
/// output is the window sum divided by `kernel²`. Requires `padding <= kernel / 2`. Off the fast
/// path, `kernel == stride` without padding is a reshape and two means (exact gradient).
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let g = PoolGeom::new(x, kernel, stride, padding, "avg_pool2d")?;
    if fast_path(x) {
        return apply(x, AvgPool2d(g));
    }
    if kernel == stride && padding == 0 {
        return Ok(non_overlapping_windows(x, kernel)?.mean(5)?.mean(3)?);
    }
    let x = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    Ok(x.avg_pool2d_with_stride(kernel, stride)?)
}

/// Global average pooling: `[b, c, h, w] -> [b, c]`.
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    let g = PoolGeom::new(x, 1, 1, 0, "global_avg_pool2d")?;
    if fast_path(x) {
        return apply(x, GlobalAvgPool2d(g));
    }
    Ok(x.mean((2, 3))?)
}

/// `[b, c, h, w] -> [b, c, h / k, k, w / k, k]` (floor: a remainder that fits no window is
/// dropped, as pooling does), so that reductions over dims 5 and 3 pool `k x k` windows with
/// candle's differentiable reductions.
fn non_overlapping_windows(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let x = if oh * k != h || ow * k != w {
        x.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?
    } else {
        x.clone()
    };
    Ok(x.reshape((b, c, oh, k, ow, k))?)
}

/// Pads the two spatial dims of `[b, c, h, w]` with a constant (candle only pads with zeros).
fn pad_value(x: &Tensor, p: usize, v: f32) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let dev = x.device();
    let side = Tensor::full(v, (b, c, h, p), dev)?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&side, x, &side], 3)?;
    let top = Tensor::full(v, (b, c, p, w + 2 * p), dev)?.to_dtype(x.dtype())?;
    Ok(Tensor::cat(&[&top, &x, &top], 2)?)
}

/// Reads the input, gradient and checks lengths; shared by the pooling `bwd`s.
macro_rules! bwd_inputs {
    ($self:ident, $g:ident, $arg:ident, $grad:ident, $xd:ident, $gd:ident, $out_len:expr) => {
        crate::util::cpu_slices!($self.name(); $xd = $arg, $gd = $grad);
        if $xd.len() != $g.planes() * $g.h * $g.w || $gd.len() != $out_len {
            bail!("{}: gradient does not match the output shape", $self.name())
        }
    };
}

fn check_input<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    g: &PoolGeom,
    name: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let x = cpu_f32(s, l, name)?;
    if x.len() != g.planes() * g.h * g.w {
        bail!("{name}: input does not match the validated geometry")
    }
    Ok(x)
}

/// 2x2, stride-2, unpadded max pool of one plane (LeNet's pooling): whole row pairs at a time.
fn max2x2_fwd(g: &PoolGeom, x: &[f32], y: &mut [f32]) {
    for (oh, yr) in y.chunks_exact_mut(g.ow).enumerate() {
        let r0 = &x[2 * oh * g.w..][..2 * g.ow];
        let r1 = &x[(2 * oh + 1) * g.w..][..2 * g.ow];
        for ((v, a), b) in yr
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *v = a[0].max(a[1]).max(b[0].max(b[1]));
        }
    }
}

/// Backward of [`max2x2_fwd`]: windows do not overlap, so each gradient goes straight to the
/// first maximum of its window (same order as [`argmax`]); `dx` must be zeroed where no window
/// reaches (a last odd row or column).
///
/// Branch-free: which of the four inputs is the maximum is a coin toss for the branch
/// predictor (with `if x[i] > x[best]` this was 15% of a LeNet-5 training step); here the
/// comparisons become masks and all four gradient cells are written.
fn max2x2_bwd(g: &PoolGeom, x: &[f32], gy: &[f32], dx: &mut [f32]) {
    let span = 2 * g.ow;
    for (oh, gr) in gy.chunks_exact(g.ow).enumerate() {
        let i0 = 2 * oh * g.w;
        let (x0, x1) = (&x[i0..][..span], &x[i0 + g.w..][..span]);
        let (d0, rest) = dx[i0..].split_at_mut(g.w);
        let (d0, d1) = (&mut d0[..span], &mut rest[..span]);
        let rows = x0.chunks_exact(2).zip(x1.chunks_exact(2));
        let grads = d0.chunks_exact_mut(2).zip(d1.chunks_exact_mut(2));
        for ((&gv, (xa, xb)), (da, db)) in gr.iter().zip(rows).zip(grads) {
            let (a, b, c, d) = (xa[0], xa[1], xb[0], xb[1]);
            // The same comparisons as `argmax`: a later cell wins only if strictly greater.
            let sb = b > a;
            let m = if sb { b } else { a };
            let sc = c > m;
            let m = if sc { c } else { m };
            let sd = d > m;
            let pick = |on: bool| if on { gv } else { 0.0 };
            da[0] = pick(!(sb | sc | sd));
            da[1] = pick(sb & !sc & !sd);
            db[0] = pick(sc & !sd);
            db[1] = pick(sd);
        }
    }
}

struct MaxPool2d(PoolGeom);

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "hdr-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = check_input(s, l, g, self.name())?;
        let (hw, n) = (g.h * g.w, g.oh * g.ow);
        let mut y = vec![0f32; g.planes() * n];
        for_each_chunk_pair(&mut y, n, x, hw, |y, x| {
            if g.is_2x2() {
                max2x2_fwd(g, x, y);
                return;
            }
            for oh in 0..g.oh {
                let (h0, h1) = g.window(oh, g.h);
                for ow in 0..g.ow {
                    let (w0, w1) = g.window(ow, g.w);
                    let mut m = f32::NEG_INFINITY;
                    for ih in h0..h1 {
                        for &v in &x[ih * g.w + w0..ih * g.w + w1] {
                            m = m.max(v);
                        }
                    }
                    y[oh * g.ow + ow] = m;
                }
            }
        });
        Ok((
            CpuStorage::F32(y),
            Shape::from_dims(&[g.b, g.c, g.oh, g.ow]),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = &self.0;
        let (hw, n) = (g.h * g.w, g.oh * g.ow);
        bwd_inputs!(self, g, arg, grad, xd, gd, g.planes() * n);
        let mut dx = vec![0f32; g.planes() * hw];
        dx.par_chunks_mut(hw)
            .zip(xd.par_chunks(hw).zip(gd.par_chunks(n)))
            .for_each(|(dx, (x, gy))| {
                if g.is_2x2() {
                    max2x2_bwd(g, x, gy, dx);
                    return;
                }
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        dx[argmax(g, x, oh, ow)] += gy[oh * g.ow + ow];
                    }
                }
            });
        Ok(Some(tensor_from(dx, &[g.b, g.c, g.h, g.w])?))
    }
}

struct AvgPool2d(PoolGeom);

impl CustomOp1 for AvgPool2d {
    fn name(&self) -> &'static str {
        "hdr-avg-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = check_input(s, l, g, self.name())?;
        let (hw, n) = (g.h * g.w, g.oh * g.ow);
        let scale = 1.0 / (g.k * g.k) as f32;
        let mut y = vec![0f32; g.planes() * n];
        for_each_chunk_pair(&mut y, n, x, hw, |y, x| {
            for oh in 0..g.oh {
                let (h0, h1) = g.window(oh, g.h);
                for ow in 0..g.ow {
                    let (w0, w1) = g.window(ow, g.w);
                    let sum: f32 = (h0..h1)
                        .map(|ih| crate::util::sum(&x[ih * g.w + w0..ih * g.w + w1]))
                        .sum();
                    y[oh * g.ow + ow] = sum * scale;
                }
            }
        });
        Ok((
            CpuStorage::F32(y),
            Shape::from_dims(&[g.b, g.c, g.oh, g.ow]),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = &self.0;
        let (hw, n) = (g.h * g.w, g.oh * g.ow);
        bwd_inputs!(self, g, arg, grad, _xd, gd, g.planes() * n);
        let scale = 1.0 / (g.k * g.k) as f32;
        let mut dx = vec![0f32; g.planes() * hw];
        dx.par_chunks_mut(hw)
            .zip(gd.par_chunks(n))
            .for_each(|(dx, gy)| {
                for oh in 0..g.oh {
                    let (h0, h1) = g.window(oh, g.h);
                    for ow in 0..g.ow {
                        let (w0, w1) = g.window(ow, g.w);
                        let v = gy[oh * g.ow + ow] * scale;
                        for ih in h0..h1 {
                            dx[ih * g.w + w0..ih * g.w + w1]
                                .iter_mut()
                                .for_each(|d| *d += v);
                        }
                    }
                }
            });
        Ok(Some(tensor_from(dx, &[g.b, g.c, g.h, g.w])?))
    }
}

struct GlobalAvgPool2d(PoolGeom);

impl CustomOp1 for GlobalAvgPool2d {
    fn name(&self) -> &'static str {
        "hdr-global-avg-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = check_input(s, l, g, self.name())?;
        let hw = g.h * g.w;
        let scale = 1.0 / hw as f32;
        let mean = |p: &[f32]| crate::util::sum(p) * scale;
        let y: Vec<f32> = if x.len() < SERIAL_BELOW {
            x.chunks(hw).map(mean).collect()
        } else {
            x.par_chunks(hw).map(mean).collect()
        };
        Ok((CpuStorage::F32(y), Shape::from_dims(&[g.b, g.c])))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = &self.0;
        if grad.dims() != [g.b, g.c] {
            bail!("{}: gradient does not match the output shape", self.name())
        }
        // A lazy broadcast of grad / (h*w): candle's gradient accumulation (`zeros + add`)
        // reads it directly, so the full-size input gradient is never materialised twice.
        let scale = 1.0 / (g.h * g.w) as f64;
        let dx = grad
            .affine(scale, 0.0)?
            .reshape((g.b, g.c, 1, 1))?
            .broadcast_as((g.b, g.c, g.h, g.w))?;
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn window_clips_padding() {
        let x = Tensor::zeros((1, 1, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let g = PoolGeom::new(&x, 3, 2, 1, "t").unwrap();
        assert_eq!((g.oh, g.ow), (3, 3));
        assert_eq!(g.window(0, 5), (0, 2));
        assert_eq!(g.window(1, 5), (1, 4));
        assert_eq!(g.window(2, 5), (3, 5));
    }

    #[test]
    fn rejects_bad_configs() {
        let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            max_pool2d(&x, 0, 1, 0),
            Err(OpsError::InvalidConfig { .. })
        ));
        assert!(matches!(
            max_pool2d(&x, 2, 2, 2),
            Err(OpsError::InvalidConfig { .. })
        ));
        assert!(matches!(
            avg_pool2d(&x, 5, 1, 0),
            Err(OpsError::InvalidConfig { .. })
        ));
        let x3 = Tensor::zeros((1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            global_avg_pool2d(&x3),
            Err(OpsError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn max_pool_gradient_goes_to_first_max() -> anyhow::Result<()> {
        // Two equal maxima in one window: only the first receives the gradient.
        let x = candle_core::Var::from_vec(vec![1f32, 3., 3., 0.], (1, 1, 2, 2), &Device::Cpu)?;
        let y = max_pool2d(&x, 2, 2, 0)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![3.0]);
        let grads = y.sum_all()?.backward()?;
        let dx = grads
            .get(&x)
            .map(|g| g.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        assert_eq!(dx, Some(vec![0.0, 1.0, 0.0, 0.0]));
        Ok(())
    }
}
