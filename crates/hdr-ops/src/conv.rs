//! 2-D convolution: public entry point, configuration, and the im2col + gemm kernel.

use crate::depthwise::DepthwiseConv2d;
use crate::direct::{self, Direct};
use crate::error::{OpsError, Result};
use crate::util::{
    check_params, cpu_f32, for_each_chunk_pair, gemm_par_all, num_threads, sgemm, sgemm_init,
    valid_range, with_scratch, Mat,
};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Activation fused into a layer's output (applied after the bias).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(0, x)`; the backward pass masks the gradient with `y > 0`.
    Relu,
}

/// Configuration of [`conv2d`]. Dilation is always 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Step between windows, both axes (>= 1).
    pub stride: usize,
    /// Zero padding added on every side.
    pub padding: usize,
    /// Channel groups: 1 for a dense conv, `in_channels` (== `out_channels`) for depthwise.
    /// Other values are accepted and run through candle's own grouped convolution.
    pub groups: usize,
    /// Activation fused after the bias.
    pub activation: Activation,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
            activation: Activation::None,
        }
    }
}

/// Validated geometry of one convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub b: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Rows of the im2col matrix for a dense (groups = 1) conv.
    pub(crate) fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    /// Output pixels per channel.
    pub(crate) fn n(&self) -> usize {
        self.oh * self.ow
    }
    pub(crate) fn in_img(&self) -> usize {
        self.c_in * self.h * self.w
    }
    pub(crate) fn out_img(&self) -> usize {
        self.c_out * self.n()
    }
    /// A 1x1, stride-1, unpadded conv: the input image already *is* the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    pub(crate) fn out_dims(&self) -> [usize; 4] {
        [self.b, self.c_out, self.oh, self.ow]
    }

    /// The transposed convolution of this stride-1 one: its "input" is this layer's output
    /// plane (`c_out` channels) and its "output" this layer's input plane, with padding
    /// `kh - 1 - pad`. Unfolding the output gradient with it (and multiplying by the kernels
    /// rotated by 180 degrees, [`flipped_t`]) gives the input gradient without folding
    /// `c_in * kh * kw` rows back; see [`Conv2dGemm::transposed`]. `None` for strided,
    /// non-square or 1x1 kernels, and padding of a whole kernel or more.
    fn transposed(&self) -> Option<ConvGeom> {
        if self.stride != 1 || self.kh != self.kw || self.pad >= self.kh || self.pointwise() {
            return None;
        }
        Some(ConvGeom {
            b: self.b,
            c_in: self.c_out,
            h: self.oh,
            w: self.ow,
            c_out: self.c_in,
            kh: self.kh,
            kw: self.kw,
            stride: 1,
            pad: self.kh - 1 - self.pad,
            oh: self.h,
            ow: self.w,
        })
    }
}

/// The weights `w` `[c_out, c_in, kh*kw]` as `[c_in, c_out*kh*kw]`, each kernel rotated by 180
/// degrees: the matrix that takes a [`ConvGeom::transposed`] unfolding of the output gradient
/// to the input gradient (and, transposed, an unfolding of the input to the output's taps).
fn flipped_t(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let kk = g.kh * g.kw;
    let row = g.c_out * kk;
    let mut r = vec![0f32; g.c_in * row];
    for (o, w_o) in w.chunks_exact(g.c_in * kk).enumerate() {
        for (c, src) in w_o.chunks_exact(kk).enumerate() {
            for (d, s) in r[c * row + o * kk..][..kk].iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    r
}

/// The weight gradient `[c_out, c_in, kh*kw]` from its [`flipped_t`] layout accumulated by the
/// transposed backward, `[c_out*kh*kw, c_in]` with each kernel rotated.
fn unflip_dw(g: &ConvGeom, dwt: &[f32]) -> Vec<f32> {
    let kk = g.kh * g.kw;
    let mut dw = vec![0f32; dwt.len()];
    for (r, src) in dwt.chunks_exact(g.c_in).enumerate() {
        let (o, t) = (r / kk, kk - 1 - r % kk);
        for (c, &v) in src.iter().enumerate() {
            dw[(o * g.c_in + c) * kk + t] = v;
        }
    }
    dw
}

fn dims4(t: &Tensor, op: &'static str, expected: &str) -> Result<[usize; 4]> {
    match *t.dims() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(OpsError::ShapeMismatch {
            op,
            expected: expected.to_string(),
            found: t.dims().to_vec(),
        }),
    }
}

pub(crate) fn validate(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> Result<ConvGeom> {
    validate_dims(x.dims(), x, w, b, cfg)
}

/// [`validate`] for an input of dimensions `x_dims` with the dtype of `x` (e.g. the output of
/// an earlier stage of a fused op, which is not a tensor).
pub(crate) fn validate_dims(
    x_dims: &[usize],
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> Result<ConvGeom> {
    const OP: &str = "conv2d";
    let [bs, c_in, h, wd] = match *x_dims {
        [a, b, c, d] => [a, b, c, d],
        _ => {
            return Err(OpsError::ShapeMismatch {
                op: OP,
                expected: "[b, c_in, h, w]".into(),
                found: x_dims.to_vec(),
            })
        }
    };
    let [c_out, c_per_group, kh, kw] = dims4(w, OP, "[c_out, c_in/groups, kh, kw]")?;
    let invalid = |reason: String| OpsError::InvalidConfig { op: OP, reason };
    // An empty batch is fine; empty channels or images are rejected (the kernels split buffers
    // into per-image chunks, which must not be empty).
    if c_in == 0 || h == 0 || wd == 0 || c_out == 0 {
        return Err(OpsError::ShapeMismatch {
            op: OP,
            expected: "non-empty channels and images".into(),
            found: if c_out == 0 { w.dims() } else { x_dims }.to_vec(),
        });
    }
    if cfg.stride == 0 {
        return Err(invalid("stride must be >= 1".into()));
    }
    if cfg.groups == 0 || c_in % cfg.groups != 0 || c_out % cfg.groups != 0 {
        return Err(invalid(format!(
            "groups = {} must divide in_channels = {c_in} and out_channels = {c_out}",
            cfg.groups
        )));
    }
    if c_per_group != c_in / cfg.groups || kh == 0 || kw == 0 {
        return Err(OpsError::ShapeMismatch {
            op: OP,
            expected: format!("weight [c_out, {}, kh >= 1, kw >= 1]", c_in / cfg.groups),
            found: w.dims().to_vec(),
        });
    }
    check_params(OP, x, w, b, c_out)?;
    let too_small = || {
        invalid(format!(
            "kernel {kh}x{kw} larger than padded input {}x{}",
            h + 2 * cfg.padding,
            wd + 2 * cfg.padding
        ))
    };
    let oh = crate::util::out_size(h, kh, cfg.stride, cfg.padding).ok_or_else(too_small)?;
    let ow = crate::util::out_size(wd, kw, cfg.stride, cfg.padding).ok_or_else(too_small)?;
    Ok(ConvGeom {
        b: bs,
        c_in,
        h,
        w: wd,
        c_out,
        kh,
        kw,
        stride: cfg.stride,
        pad: cfg.padding,
        oh,
        ow,
    })
}

/// 2-D convolution with optional bias and fused activation.
///
/// Shapes: `x` is `[b, c_in, h, w]`, `w` is `[c_out, c_in / groups, kh, kw]`, `b` is `[c_out]`;
/// the result is `[b, c_out, (h + 2p - kh) / s + 1, (w + 2p - kw) / s + 1]`.
///
/// On CPU with `f32` tensors this runs a custom op (im2col + gemm for `groups == 1`, a direct
/// kernel for depthwise `groups == c_in == c_out`) whose backward pass skips the input gradient
/// when `x` does not track gradients (e.g. the network input). Other devices, dtypes and group
/// counts fall back to candle's own `conv2d`.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, cfg: &Conv2dConfig) -> Result<Tensor> {
    crate::util::setup();
    let g = validate(x, w, b, cfg)?;
    let fast = x.device().is_cpu() && x.dtype() == DType::F32;
    let depthwise = cfg.groups == g.c_in && g.c_out == g.c_in;
    if !fast || (cfg.groups != 1 && !depthwise) {
        return fallback(x, w, b, cfg);
    }
    let bias = match b {
        Some(b) => b.contiguous()?,
        // A constant zero bias keeps one op signature; it does not track gradients, so its
        // gradient is never computed.
        None => Tensor::zeros(g.c_out, DType::F32, x.device())?,
    };
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let y = if cfg.groups == 1 {
        x.apply_op3(
            &w,
            &bias,
            Conv2dGemm {
                g,
                act: cfg.activation,
                max_group: usize::MAX,
            },
        )?
    } else {
        x.apply_op3(
            &w,
            &bias,
            DepthwiseConv2d {
                g,
                act: cfg.activation,
            },
        )?
    };
    Ok(y)
}

/// candle's own ops, for devices/dtypes/group counts the custom kernels do not cover.
///
/// When the last window stops short of the input's edge (e.g. stride 2 over an even size with a
/// 1x1 kernel), candle 0.11's conv2d backward returns an input gradient of the wrong size (its
/// transposed convolution has no output padding). There, the input is padded explicitly and
/// cut to the rows and columns the windows read, so that the convolution itself is exact and
/// the gradient of the cut fills the unread rest with zeros.
fn fallback(x: &Tensor, w: &Tensor, b: Option<&Tensor>, cfg: &Conv2dConfig) -> Result<Tensor> {
    let (kh, kw) = (w.dim(2)?, w.dim(3)?);
    let (p, s) = (cfg.padding, cfg.stride);
    let reach = |n: usize, k: usize| crate::util::out_size(n, k, s, p).map(|o| (o - 1) * s + k);
    let exact = |n: usize, k: usize| reach(n, k) == Some(n + 2 * p);
    let mut y = if exact(x.dim(2)?, kh) && exact(x.dim(3)?, kw) {
        x.conv2d(w, p, s, 1, cfg.groups)?
    } else {
        let (Some(rh), Some(rw)) = (reach(x.dim(2)?, kh), reach(x.dim(3)?, kw)) else {
            return Err(OpsError::InvalidConfig {
                op: "conv2d",
                reason: "kernel larger than the padded input".into(),
            });
        };
        x.pad_with_zeros(2, p, p)?
            .pad_with_zeros(3, p, p)?
            .narrow(2, 0, rh)?
            .narrow(3, 0, rw)?
            .conv2d(w, 0, s, 1, cfg.groups)?
    };
    if let Some(b) = b {
        y = y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?;
    }
    Ok(match cfg.activation {
        Activation::None => y,
        Activation::Relu => y.relu()?,
    })
}

/// Adds the bias and applies the activation to one output image `[c_out, n]`.
pub(crate) fn epilogue(y_img: &mut [f32], bias: &[f32], n: usize, act: Activation) {
    for (row, &bv) in y_img.chunks_exact_mut(n).zip(bias) {
        match act {
            Activation::None => row.iter_mut().for_each(|v| *v += bv),
            Activation::Relu => row.iter_mut().for_each(|v| *v = (*v + bv).max(0.0)),
        }
    }
}

/// Unfolds one image `[c_in, h, w]` into the columns of `col` `[c_in*kh*kw, oh*ow]` (zeros for
/// padding); row `r` of the image's block is `col[r*ld..][..oh*ow]`, so several images can be
/// unfolded side by side into one `[k, images*oh*ow]` matrix (`ld` = its row length).
pub(crate) fn im2col(x: &[f32], g: &ConvGeom, col: &mut [f32], ld: usize) {
    let (n, hw, s, p) = (g.n(), g.h * g.w, g.stride, g.pad);
    let mut r = 0;
    for c in 0..g.c_in {
        let plane = &x[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            let (oh_lo, oh_hi) = valid_range(g.oh, g.h, ki, s, p);
            for kj in 0..g.kw {
                let row = &mut col[r * ld..][..n];
                r += 1;
                let (ow_lo, ow_hi) = valid_range(g.ow, g.w, kj, s, p);
                row[..oh_lo * g.ow].fill(0.0);
                row[oh_hi * g.ow..].fill(0.0);
                for oh in oh_lo..oh_hi {
                    let src = &plane[(oh * s + ki - p) * g.w..][..g.w];
                    let dst = &mut row[oh * g.ow..(oh + 1) * g.ow];
                    dst[..ow_lo].fill(0.0);
                    dst[ow_hi..].fill(0.0);
                    if ow_lo < ow_hi {
                        let off = ow_lo * s + kj - p;
                        if s == 1 {
                            dst[ow_lo..ow_hi].copy_from_slice(&src[off..off + ow_hi - ow_lo]);
                        } else {
                            for (d, v) in dst[ow_lo..ow_hi]
                                .iter_mut()
                                .zip(src[off..].iter().step_by(s))
                            {
                                *d = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Folds the columns `col` `[c_in*kh*kw, oh*ow]` (row `r` at `col[r*ld..][..oh*ow]`, as written
/// by [`im2col`]) back into an image `[c_in, h, w]`, summing overlaps. Overwrites `x`.
pub(crate) fn col2im(col: &[f32], g: &ConvGeom, x: &mut [f32], ld: usize) {
    let (n, hw, s, p) = (g.n(), g.h * g.w, g.stride, g.pad);
    x.fill(0.0);
    let mut r = 0;
    for c in 0..g.c_in {
        let plane = &mut x[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            let (oh_lo, oh_hi) = valid_range(g.oh, g.h, ki, s, p);
            for kj in 0..g.kw {
                let row = &col[r * ld..][..n];
                r += 1;
                let (ow_lo, ow_hi) = valid_range(g.ow, g.w, kj, s, p);
                if ow_lo >= ow_hi {
                    continue;
                }
                for oh in oh_lo..oh_hi {
                    let dst = &mut plane[(oh * s + ki - p) * g.w..][..g.w];
                    let src = &row[oh * g.ow + ow_lo..oh * g.ow + ow_hi];
                    let off = ow_lo * s + kj - p;
                    if s == 1 {
                        for (d, v) in dst[off..].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[off..].iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Largest output plane (`oh*ow` pixels) whose images are batched into one gemm. With few
/// columns per image, a per-image gemm repacks the whole weight matrix for a handful of
/// columns, and the backward accumulates `dW` over `K = oh*ow`; merging a group of images into
/// one `[k, images*oh*ow]` matrix fixes both at the cost of gathering and scattering. Measured
/// (batch 64, fwd + bwd, one thread): 1x1 convs on 1x1 / 2x2 / 4x4 / 5x5 / 6x6 planes take
/// 0.25 / 0.29 / 0.68-0.79 / 0.88 / 0.88-0.97x the time of per-image gemms, on 7x7 planes
/// 1.05-1.09x (the copies cost more than the packing saves), on 14x14 3x3 convs 1.35x.
const MERGE_MAX_N: usize = 36;
/// Cap, in floats, on the two scratch matrices of one merged group (`[k + c_out, images*n]`):
/// 1 MiB, so they stay in L2. Measured: 0.85-0.9x the time of 8 MiB groups for 4x4 planes.
const MERGE_MAX_SCRATCH: usize = 1 << 18;

/// Writes the columns of `cnt` images `x` `[cnt, c_in, h, w]` side by side into
/// `cols` `[k, cnt*n]`.
fn gather_cols(x: &[f32], g: &ConvGeom, cnt: usize, cols: &mut [f32]) {
    let (n, gn) = (g.n(), cnt * g.n());
    for (i, x_img) in x.chunks_exact(g.in_img()).take(cnt).enumerate() {
        if g.pointwise() {
            for (c, src) in x_img.chunks_exact(n).enumerate() {
                cols[c * gn + i * n..][..n].copy_from_slice(src);
            }
        } else {
            im2col(x_img, g, &mut cols[i * n..], gn);
        }
    }
}

/// Writes the merged output `yb` `[c_out, cnt*n]` into the images `y` `[cnt, c_out, n]`, with
/// bias and activation.
fn scatter_out(
    yb: &[f32],
    y: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
    bias: &[f32],
    act: Activation,
) {
    let (n, out) = (g.n(), g.out_img());
    let gn = y.len() / out * n;
    for (i, y_img) in y.chunks_exact_mut(out).enumerate() {
        for (o, (dst, &bv)) in y_img.chunks_exact_mut(n).zip(bias).enumerate() {
            let src = &yb[o * gn + i * n..][..n];
            match act {
                Activation::None => {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        d.write(v + bv);
                    }
                }
                Activation::Relu => {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        d.write((v + bv).max(0.0));
                    }
                }
            }
        }
    }
}

/// Dense (groups = 1) convolution as a candle custom op over `(x, w, bias)`.
pub(crate) struct Conv2dGemm {
    pub(crate) g: ConvGeom,
    pub(crate) act: Activation,
    /// Upper bound on the images merged into one gemm (`usize::MAX` except in tests, which
    /// lower it to exercise several groups per batch).
    pub(crate) max_group: usize,
}

impl Conv2dGemm {
    /// Images per gemm: 1 for large planes, a group of images whose columns are merged into one
    /// wide gemm for small planes.
    fn group_len(&self) -> usize {
        let g = &self.g;
        let n = g.n();
        if n > MERGE_MAX_N {
            return 1;
        }
        (MERGE_MAX_SCRATCH / ((g.k() + g.c_out) * n)).clamp(1, self.max_group.max(1))
    }

    /// The geometry of the transposed convolution when the backward pass takes it: for a
    /// stride-1 layer with at most as many filters as input channels, one image at a time.
    ///
    /// The im2col backward unfolds the input into `c_in*kh*kw` rows (for `dW`), has gemm write
    /// as many rows of `W^T · G` and folds them back into `dX`: three passes over a matrix 9x
    /// the size of the input for a 3x3 kernel, bound by memory, not arithmetic (22% of ResNet's
    /// training on the AMD EPYC, docs/PERFORMANCE.md). Unfolding the output gradient instead,
    /// `c_out*kh*kw` rows over the input plane, serves both gradients with one pass and no
    /// folding: `dX = flip(W)^T · D` and `dW = D · X^T` (same arithmetic, in the other order).
    fn transposed(&self) -> Option<ConvGeom> {
        let g = &self.g;
        if g.c_out > g.c_in || self.group_len() != 1 {
            return None;
        }
        g.transposed()
    }

    /// The geometry of the transposed convolution when the forward pass computes every tap's
    /// contribution of each filter, `Z = flip(W)^T · X` (`c_out*kh*kw` rows over the input
    /// plane), and folds `Z` into the output, instead of unfolding the input into `c_in*kh*kw`
    /// rows: for layers with at most half as many filters as input channels (DenseNet's 3x3
    /// convolutions, 48 -> 12), where `Z` is the smaller matrix.
    fn folds_forward(&self) -> Option<ConvGeom> {
        let g = &self.g;
        if 2 * g.c_out > g.c_in {
            return None;
        }
        self.transposed()
    }

    /// `y = W · im2col(x)` followed by bias and activation, for the images `x` `[cnt, c_in,
    /// h, w]` -> `y` `[cnt, c_out, oh, ow]`, as one gemm over all their columns.
    fn fwd_images(
        &self,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        y: &mut [MaybeUninit<f32>],
        fold: Option<(&ConvGeom, &[f32])>,
        par: gemm::Parallelism,
    ) -> candle_core::Result<()> {
        let g = &self.g;
        let (k, n) = (g.k(), g.n());
        let cnt = y.len() / g.out_img();
        if let (1, Some((gt, wr))) = (cnt, fold) {
            // Every filter's tap contributions over the input plane, folded into the output.
            let (rows, hw) = (g.c_out * g.kh * g.kw, g.h * g.w);
            return with_scratch(rows * hw, 0, |z, _| {
                sgemm(
                    (rows, hw, g.c_in),
                    Mat::rows_t(wr, rows),
                    Mat::rows(x, hw),
                    z,
                    false,
                    par,
                )?;
                let y = crate::util::zeroed(y);
                col2im(z, gt, y, hw);
                epilogue(y, bias, n, self.act);
                Ok(())
            });
        }
        if cnt == 1 && g.pointwise() {
            // The image already is the column matrix.
            let y = sgemm_init((g.c_out, n, k), Mat::rows(w, k), Mat::rows(x, n), y, par)?;
            epilogue(y, bias, n, self.act);
            return Ok(());
        }
        let gn = cnt * n;
        let yb_len = if cnt == 1 { 0 } else { g.c_out * gn };
        with_scratch(k * gn, yb_len, |cols, yb| {
            gather_cols(x, g, cnt, cols);
            if cnt == 1 {
                let y = sgemm_init((g.c_out, n, k), Mat::rows(w, k), Mat::rows(cols, n), y, par)?;
                epilogue(y, bias, n, self.act);
            } else {
                sgemm(
                    (g.c_out, gn, k),
                    Mat::rows(w, k),
                    Mat::rows(cols, gn),
                    yb,
                    false,
                    par,
                )?;
                scatter_out(yb, y, g, bias, self.act);
            }
            Ok(())
        })
    }

    /// Backward pass over the images `imgs`, accumulating into this worker's `dw`/`db` partials
    /// and writing `dx` (the input gradient of exactly these images) when requested.
    ///
    /// The images are processed in groups of [`Self::group_len`]: small planes get one gemm per
    /// gradient for the whole group (`dW` with `K = images*oh*ow`), large planes one per image,
    /// while its data is hot in cache.
    #[allow(clippy::too_many_arguments)]
    fn bwd_images(
        &self,
        imgs: std::ops::Range<usize>,
        data: BwdData<'_>,
        mut dw: Option<&mut [f32]>,
        mut db: Option<&mut [f32]>,
        mut dx: Option<&mut [f32]>,
        par: gemm::Parallelism,
    ) -> candle_core::Result<()> {
        let g = &self.g;
        let group = self.group_len();
        let first = imgs.start;
        let mut start = imgs.start;
        while start < imgs.end {
            let end = (start + group).min(imgs.end);
            let dx_grp = dx
                .as_deref_mut()
                .map(|d| &mut d[(start - first) * g.in_img()..(end - first) * g.in_img()]);
            if let (1, Some((gt, wr))) = (end - start, data.flip) {
                self.bwd_image_t(
                    start,
                    data,
                    (&gt, wr),
                    dw.as_deref_mut(),
                    db.as_deref_mut(),
                    dx_grp,
                    par,
                )?;
            } else if end - start == 1 {
                self.bwd_image(
                    start,
                    data,
                    dw.as_deref_mut(),
                    db.as_deref_mut(),
                    dx_grp,
                    par,
                )?;
            } else {
                self.bwd_group(
                    start..end,
                    data,
                    dw.as_deref_mut(),
                    db.as_deref_mut(),
                    dx_grp,
                    par,
                )?;
            }
            start = end;
        }
        Ok(())
    }

    /// Scratch [`Self::masked_grad`] needs: one output image for ReLU, none otherwise.
    fn mask_len(&self) -> usize {
        if self.act == Activation::Relu {
            self.g.out_img()
        } else {
            0
        }
    }

    /// The output gradient of image `bi` through the activation (masked into `mask_buf`, which
    /// holds one output image, for ReLU), with the bias gradient accumulated from it into `db`.
    fn masked_grad<'m>(
        &self,
        bi: usize,
        data: BwdData<'m>,
        mask_buf: &'m mut [f32],
        db: Option<&mut [f32]>,
    ) -> &'m [f32] {
        let out = self.g.out_img();
        let g_raw = &data.grad[bi * out..][..out];
        let gm: &[f32] = if self.act == Activation::Relu {
            let y = &data.y[bi * out..][..out];
            for ((m, &gv), &yv) in mask_buf.iter_mut().zip(g_raw).zip(y) {
                *m = if yv > 0.0 { gv } else { 0.0 };
            }
            mask_buf
        } else {
            g_raw
        };
        if let Some(db) = db {
            for (d, row) in db.iter_mut().zip(gm.chunks_exact(self.g.n())) {
                *d += crate::util::sum(row);
            }
        }
        gm
    }

    /// Backward of one image: the activation mask is applied into scratch, the bias gradient is
    /// reduced from it, then it feeds both gemms.
    fn bwd_image(
        &self,
        bi: usize,
        data: BwdData<'_>,
        dw: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
        dx_img: Option<&mut [f32]>,
        par: gemm::Parallelism,
    ) -> candle_core::Result<()> {
        let g = &self.g;
        let (k, n, o) = (g.k(), g.n(), g.c_out);
        let mask_len = self.mask_len();
        let col_len = if g.pointwise() { 0 } else { k * n };
        with_scratch(mask_len, col_len, |mask_buf, col| {
            let gm = self.masked_grad(bi, data, mask_buf, db);
            let x_img = &data.x[bi * g.in_img()..][..g.in_img()];
            if let Some(dw) = dw {
                // dw += g_img · im2col(x_img)^T
                let cols = if g.pointwise() {
                    x_img
                } else {
                    im2col(x_img, g, col, n);
                    &*col
                };
                sgemm(
                    (o, k, n),
                    Mat::rows(gm, n),
                    Mat::rows_t(cols, n),
                    dw,
                    true,
                    par,
                )?;
            }
            if let Some(dx_img) = dx_img {
                // dx_img = col2im(W^T · g_img)
                let wt = Mat::rows_t(data.w, k);
                if g.pointwise() {
                    sgemm((k, n, o), wt, Mat::rows(gm, n), dx_img, false, par)?;
                } else {
                    sgemm((k, n, o), wt, Mat::rows(gm, n), col, false, par)?;
                    col2im(col, g, dx_img, n);
                }
            }
            Ok(())
        })
    }

    /// [`Self::bwd_image`] through the transposed convolution ([`Self::transposed`]): the
    /// masked output gradient is unfolded once, `D` `[c_out*kh*kw, h*w]`, then
    /// `dW^flip += D · X^T` and `dX = flip(W)^T · D`.
    #[allow(clippy::too_many_arguments)]
    fn bwd_image_t(
        &self,
        bi: usize,
        data: BwdData<'_>,
        (gt, wr): (&ConvGeom, &[f32]),
        dw: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
        dx_img: Option<&mut [f32]>,
        par: gemm::Parallelism,
    ) -> candle_core::Result<()> {
        let g = &self.g;
        let hw = g.h * g.w;
        let rows = g.c_out * g.kh * g.kw;
        let mask_len = self.mask_len();
        let d_len = if dw.is_some() || dx_img.is_some() {
            rows * hw
        } else {
            0
        };
        with_scratch(mask_len, d_len, |mask_buf, d| {
            let gm = self.masked_grad(bi, data, mask_buf, db);
            if d_len == 0 {
                return Ok(());
            }
            im2col(gm, gt, d, hw);
            if let Some(dw) = dw {
                let x_img = &data.x[bi * g.in_img()..][..g.in_img()];
                sgemm(
                    (rows, g.c_in, hw),
                    Mat::rows(d, hw),
                    Mat::rows_t(x_img, hw),
                    dw,
                    true,
                    par,
                )?;
            }
            if let Some(dx_img) = dx_img {
                sgemm(
                    (g.c_in, hw, rows),
                    Mat::rows(wr, rows),
                    Mat::rows(d, hw),
                    dx_img,
                    false,
                    par,
                )?;
            }
            Ok(())
        })
    }

    /// Backward of a group of images as one gemm per gradient: the masked output gradients
    /// are gathered into `[c_out, cnt*n]` and the input columns into `[k, cnt*n]`, so
    /// `dW += G · X^T` has `K = cnt*n` and `dX = W^T · G` is one wide gemm, scattered back.
    fn bwd_group(
        &self,
        imgs: std::ops::Range<usize>,
        data: BwdData<'_>,
        dw: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
        dx: Option<&mut [f32]>,
        par: gemm::Parallelism,
    ) -> candle_core::Result<()> {
        let g = &self.g;
        let (k, n, o) = (g.k(), g.n(), g.c_out);
        let (out, cnt) = (g.out_img(), imgs.len());
        let gn = cnt * n;
        let relu = self.act == Activation::Relu;
        let grad = &data.grad[imgs.start * out..imgs.end * out];
        let yv = &data.y[imgs.start * out..imgs.end * out];
        let x = &data.x[imgs.start * g.in_img()..imgs.end * g.in_img()];
        let col_len = if dw.is_some() || dx.is_some() {
            k * gn
        } else {
            0
        };
        with_scratch(o * gn, col_len, |gm, cols| {
            // Masked gradient, image blocks side by side.
            for (i, (g_img, y_img)) in grad.chunks_exact(out).zip(yv.chunks_exact(out)).enumerate()
            {
                for (c, (src, ys)) in g_img.chunks_exact(n).zip(y_img.chunks_exact(n)).enumerate() {
                    let dst = &mut gm[c * gn + i * n..][..n];
                    if relu {
                        for ((d, &gv), &yv) in dst.iter_mut().zip(src).zip(ys) {
                            *d = if yv > 0.0 { gv } else { 0.0 };
                        }
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            }
            if let Some(db) = db {
                for (d, row) in db.iter_mut().zip(gm.chunks_exact(gn)) {
                    *d += crate::util::sum(row);
                }
            }
            if let Some(dw) = dw {
                gather_cols(x, g, cnt, cols);
                sgemm(
                    (o, k, gn),
                    Mat::rows(gm, gn),
                    Mat::rows_t(cols, gn),
                    dw,
                    true,
                    par,
                )?;
            }
            if let Some(dx) = dx {
                sgemm(
                    (k, gn, o),
                    Mat::rows_t(data.w, k),
                    Mat::rows(gm, gn),
                    cols,
                    false,
                    par,
                )?;
                for (i, dx_img) in dx.chunks_exact_mut(g.in_img()).enumerate() {
                    if g.pointwise() {
                        for (c, dst) in dx_img.chunks_exact_mut(n).enumerate() {
                            dst.copy_from_slice(&cols[c * gn + i * n..][..n]);
                        }
                    } else {
                        col2im(&cols[i * n..], g, dx_img, gn);
                    }
                }
            }
            Ok(())
        })
    }
}

/// Read-only inputs of a conv backward pass.
#[derive(Clone, Copy)]
struct BwdData<'a> {
    x: &'a [f32],
    w: &'a [f32],
    y: &'a [f32],
    grad: &'a [f32],
    /// The transposed geometry and [`flipped_t`] weights when the backward pass takes
    /// [`Conv2dGemm::transposed`]; `dW` is then accumulated in the flipped layout.
    flip: Option<(ConvGeom, &'a [f32])>,
}

/// Splits `0..b` into at most `parts` contiguous ranges of near-equal size.
pub(crate) fn batch_ranges(b: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, b.max(1));
    (0..parts)
        .map(|i| (i * b / parts)..((i + 1) * b / parts))
        .collect()
}

impl CustomOp3 for Conv2dGemm {
    fn name(&self) -> &'static str {
        "hdr-conv2d"
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
        let g = &self.g;
        let (x, w, bias) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_f32(s2, l2, self.name())?,
            cpu_f32(s3, l3, self.name())?,
        );
        if x.len() != g.b * g.in_img() || w.len() != g.c_out * g.k() || bias.len() != g.c_out {
            bail!(
                "{}: inputs do not match the validated geometry",
                self.name()
            )
        }
        // Not zeroed: every group's gemm or scatter writes all of its output (an error leaves
        // `y` unused).
        let mut y: Vec<f32> = Vec::with_capacity(g.b * g.out_img());
        let out = &mut y.spare_capacity_mut()[..g.b * g.out_img()];
        if direct::applies(g) {
            let d = Direct::new(g, w);
            for_each_chunk_pair(out, g.out_img(), x, g.in_img(), |y, x| {
                with_scratch(d.scratch_len(), 0, |s, _| d.image(x, bias, self.act, y, s))
            });
            // SAFETY: `Direct::image` wrote every element of every image's chunk.
            unsafe { y.set_len(g.b * g.out_img()) };
            return Ok((CpuStorage::F32(y), Shape::from_dims(&g.out_dims())));
        }
        let folds = self.folds_forward();
        let wr = folds.map(|_| flipped_t(g, w));
        let fold = folds.as_ref().zip(wr.as_deref());
        let threads = num_threads();
        let group = self.group_len();
        if g.b >= threads && threads > 1 {
            // Whole images (or groups of them) per task with single-threaded gemm: no
            // synchronisation inside a gemm, and each worker keeps its scratch hot.
            let per_task = group.min(g.b.div_ceil(threads));
            out.par_chunks_mut(per_task * g.out_img())
                .zip(x.par_chunks(per_task * g.in_img()))
                .try_for_each(|(y_grp, x_grp)| {
                    self.fwd_images(x_grp, w, bias, y_grp, fold, gemm::Parallelism::None)
                })?;
        } else {
            // Small batches (inference): let gemm split each gemm across threads.
            let per_call = group.min(g.b).max(1);
            for (y_grp, x_grp) in out
                .chunks_mut(per_call * g.out_img())
                .zip(x.chunks(per_call * g.in_img()))
            {
                self.fwd_images(x_grp, w, bias, y_grp, fold, gemm_par_all())?;
            }
        }
        // SAFETY: the chunks above partition `out`, and `fwd_images` succeeded on each, writing
        // every element of its chunk.
        unsafe { y.set_len(g.b * g.out_img()) };
        Ok((CpuStorage::F32(y), Shape::from_dims(&g.out_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        crate::util::bwd_via_slices(self.name(), [x, w, bias], res, grad, |x, w, y, g, need| {
            self.bwd_slices(x, w, y, g, need)
        })
    }
}

impl Conv2dGemm {
    /// The backward pass on contiguous data (`xd` input, `wd` weight, `yd` output, `gd` its
    /// gradient): the gradients of input, weight and bias, each only if asked for in `need`.
    pub(crate) fn bwd_slices(
        &self,
        xd: &[f32],
        wd: &[f32],
        yd: &[f32],
        gd: &[f32],
        need: [bool; 3],
    ) -> candle_core::Result<crate::util::SliceGrads> {
        let g = &self.g;
        let name = self.name();
        let [need_x, need_w, need_b] = need;
        if gd.len() != g.b * g.out_img() || yd.len() != gd.len() {
            bail!("{name}: gradient does not match the output shape")
        }
        if xd.len() != g.b * g.in_img() || wd.len() != g.c_out * g.k() {
            bail!("{name}: inputs do not match the validated geometry")
        }
        let gt = self.transposed();
        let wr = gt.map(|_| flipped_t(g, wd));
        let data = BwdData {
            x: xd,
            w: wd,
            y: yd,
            grad: gd,
            flip: gt.zip(wr.as_deref()),
        };
        let threads = num_threads();
        let (ranges, par) = if g.b >= threads && threads > 1 {
            // Whole images per worker with single-threaded gemm and private dW/db partials.
            (batch_ranges(g.b, threads), gemm::Parallelism::None)
        } else {
            (batch_ranges(g.b, 1), gemm_par_all())
        };
        // The input gradient is the most expensive part; skip it when nothing upstream needs it
        // (e.g. the first layer, whose input is data rather than a variable).
        let mut dx = vec![0f32; if need_x { g.b * g.in_img() } else { 0 }];
        let mut dx_parts: Vec<Option<&mut [f32]>> = Vec::with_capacity(ranges.len());
        let mut rest: &mut [f32] = &mut dx;
        for r in &ranges {
            if need_x {
                let (head, tail) = rest.split_at_mut(r.len() * g.in_img());
                dx_parts.push(Some(head));
                rest = tail;
            } else {
                dx_parts.push(None);
            }
        }
        let (wlen, blen) = (g.c_out * g.k(), g.c_out);
        let partials = ranges
            .into_par_iter()
            .zip(dx_parts)
            .map(|(r, dxp)| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
                let mut dw = vec![0f32; if need_w { wlen } else { 0 }];
                let mut db = vec![0f32; if need_b { blen } else { 0 }];
                self.bwd_images(
                    r,
                    data,
                    need_w.then_some(&mut dw[..]),
                    need_b.then_some(&mut db[..]),
                    dxp,
                    par,
                )?;
                Ok((dw, db))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut partials = partials.into_iter();
        let (mut dw_acc, mut db_acc) = partials.next().unwrap_or_default();
        for (dw, db) in partials {
            dw_acc.iter_mut().zip(&dw).for_each(|(a, v)| *a += v);
            db_acc.iter_mut().zip(&db).for_each(|(a, v)| *a += v);
        }
        if need_w && data.flip.is_some() {
            dw_acc = unflip_dw(g, &dw_acc);
        }
        Ok((
            need_x.then_some(dx),
            need_w.then_some(dw_acc),
            need_b.then_some(db_acc),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geom(c_in: usize, h: usize, w: usize, k: usize, s: usize, p: usize) -> ConvGeom {
        let oh = crate::util::out_size(h, k, s, p).unwrap_or(0);
        let ow = crate::util::out_size(w, k, s, p).unwrap_or(0);
        ConvGeom {
            b: 1,
            c_in,
            h,
            w,
            c_out: 1,
            kh: k,
            kw: k,
            stride: s,
            pad: p,
            oh,
            ow,
        }
    }

    #[test]
    fn im2col_matches_naive() {
        for &(c, h, w, k, s, p) in &[(2, 5, 4, 3, 1, 1), (1, 7, 6, 3, 2, 2), (3, 4, 4, 2, 2, 0)] {
            let g = geom(c, h, w, k, s, p);
            let x: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            let mut col = vec![f32::NAN; g.k() * g.n()];
            im2col(&x, &g, &mut col, g.n());
            for ci in 0..c {
                for ki in 0..k {
                    for kj in 0..k {
                        for oh in 0..g.oh {
                            for ow in 0..g.ow {
                                let ih = (oh * s + ki) as isize - p as isize;
                                let iw = (ow * s + kj) as isize - p as isize;
                                let want =
                                    if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w
                                    {
                                        x[ci * h * w + ih as usize * w + iw as usize]
                                    } else {
                                        0.0
                                    };
                                let row = (ci * k + ki) * k + kj;
                                assert_eq!(col[row * g.n() + oh * g.ow + ow], want);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn col2im_is_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for all x, c.
        let g = geom(2, 7, 5, 3, 2, 1);
        let x: Vec<f32> = (0..g.in_img())
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let c: Vec<f32> = (0..g.k() * g.n())
            .map(|i| ((i * 5) % 13) as f32 - 6.0)
            .collect();
        let mut col = vec![0f32; c.len()];
        im2col(&x, &g, &mut col, g.n());
        let mut back = vec![f32::NAN; x.len()];
        col2im(&c, &g, &mut back, g.n());
        let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");
    }

    /// Runs the op's backward directly with a plain (non-variable) input and bias, and a
    /// variable weight: only the weight gradient may be computed.
    fn bwd_skips_untracked<C: CustomOp3>(op: C, w_dims: &[usize], c_out: usize) {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 4, 6, 6), &dev).unwrap();
        let w = candle_core::Var::randn(0f32, 1., w_dims, &dev).unwrap();
        let b = Tensor::zeros(c_out, DType::F32, &dev).unwrap();
        let y = x.apply_op3_no_bwd(w.as_tensor(), &b, &op).unwrap();
        let grad = y.ones_like().unwrap();
        let (dx, dw, db) = op.bwd(&x, &w, &b, &y, &grad).unwrap();
        assert!(dx.is_none() && db.is_none());
        assert_eq!(dw.map(|t| t.dims().to_vec()), Some(w_dims.to_vec()));
        // Once x tracks gradients, its gradient is produced.
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let (dx, _, _) = op.bwd(&xv, &w, &b, &y, &grad).unwrap();
        assert_eq!(dx.map(|t| t.dims().to_vec()), Some(vec![2, 4, 6, 6]));
    }

    #[test]
    fn backward_computes_only_the_gradients_that_are_needed() {
        let mut g = geom(4, 6, 6, 3, 1, 1);
        g.b = 2;
        g.c_out = 5;
        bwd_skips_untracked(
            Conv2dGemm {
                g,
                act: Activation::Relu,
                max_group: usize::MAX,
            },
            &[5, 4, 3, 3],
            5,
        );
        g.c_out = 4;
        bwd_skips_untracked(
            DepthwiseConv2d {
                g,
                act: Activation::None,
            },
            &[4, 1, 3, 3],
            4,
        );
    }

    #[test]
    fn batch_ranges_cover_everything() {
        for b in 0..10 {
            for parts in 1..5 {
                let r = batch_ranges(b, parts);
                let total: usize = r.iter().map(|r| r.len()).sum();
                assert_eq!(total, b);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).unwrap();
        assert!(matches!(
            conv2d(&x, &w, None, &Conv2dConfig::default()),
            Err(OpsError::ShapeMismatch { .. })
        ));
        let w = Tensor::zeros((4, 3, 7, 7), DType::F32, &dev).unwrap();
        assert!(matches!(
            conv2d(&x, &w, None, &Conv2dConfig::default()),
            Err(OpsError::InvalidConfig { .. })
        ));
        let cfg = Conv2dConfig {
            stride: 0,
            ..Default::default()
        };
        let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).unwrap();
        assert!(matches!(
            conv2d(&x, &w, None, &cfg),
            Err(OpsError::InvalidConfig { .. })
        ));
        let bias = Tensor::zeros(5, DType::F32, &dev).unwrap();
        assert!(matches!(
            conv2d(&x, &w, Some(&bias), &Conv2dConfig::default()),
            Err(OpsError::ShapeMismatch { .. })
        ));
        // Empty images or channels are errors, an empty batch is not.
        let cfg = Conv2dConfig {
            padding: 2,
            ..Default::default()
        };
        let x0 = Tensor::zeros((1, 3, 0, 5), DType::F32, &dev).unwrap();
        assert!(matches!(
            conv2d(&x0, &w, None, &cfg),
            Err(OpsError::ShapeMismatch { .. })
        ));
        let w0 = Tensor::zeros((0, 3, 3, 3), DType::F32, &dev).unwrap();
        assert!(matches!(
            conv2d(&x, &w0, None, &cfg),
            Err(OpsError::ShapeMismatch { .. })
        ));
        let xb0 = Tensor::zeros((0, 3, 5, 5), DType::F32, &dev).unwrap();
        let y = conv2d(&xb0, &w, None, &cfg).unwrap();
        assert_eq!(y.dims(), &[0, 4, 7, 7]);
        let dw = Tensor::zeros((3, 1, 3, 3), DType::F32, &dev).unwrap();
        let dcfg = Conv2dConfig { groups: 3, ..cfg };
        assert_eq!(
            conv2d(&xb0, &dw, None, &dcfg).unwrap().dims(),
            &[0, 3, 7, 7]
        );
    }

    /// Naive dense conv (f64 accumulation): `y` and, for the upstream gradient `r`,
    /// `(dx, dw, db)`.
    #[allow(clippy::type_complexity)]
    fn naive_dense(
        g: &ConvGeom,
        relu: bool,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        r: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (n, p) = (g.n(), g.pad as isize);
        let mut taps = Vec::new(); // (y index, x index, w index)
        for b in 0..g.b {
            for o in 0..g.c_out {
                for (oy, ox) in (0..g.oh).flat_map(|i| (0..g.ow).map(move |j| (i, j))) {
                    for c in 0..g.c_in {
                        for (ki, kj) in (0..g.kh).flat_map(|i| (0..g.kw).map(move |j| (i, j))) {
                            let iy = (oy * g.stride + ki) as isize - p;
                            let ix = (ox * g.stride + kj) as isize - p;
                            if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                continue;
                            }
                            taps.push((
                                (b * g.c_out + o) * n + oy * g.ow + ox,
                                ((b * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize,
                                ((o * g.c_in + c) * g.kh + ki) * g.kw + kj,
                            ));
                        }
                    }
                }
            }
        }
        let mut y = vec![0f64; g.b * g.out_img()];
        for &(yi, xi, wi) in &taps {
            y[yi] += f64::from(x[xi]) * f64::from(w[wi]);
        }
        let y: Vec<f32> = y
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let v = v as f32 + bias[(i / n) % g.c_out];
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect();
        let gy: Vec<f64> = r
            .iter()
            .zip(&y)
            .map(|(&r, &y)| if relu && y <= 0.0 { 0.0 } else { f64::from(r) })
            .collect();
        let (mut dx, mut dw, mut db) = (
            vec![0f64; x.len()],
            vec![0f64; w.len()],
            vec![0f64; g.c_out],
        );
        for &(yi, xi, wi) in &taps {
            dx[xi] += gy[yi] * f64::from(w[wi]);
            dw[wi] += gy[yi] * f64::from(x[xi]);
        }
        for (i, v) in gy.iter().enumerate() {
            db[(i / n) % g.c_out] += v;
        }
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        (y, f(dx), f(dw), f(db))
    }

    fn close(what: &str, got: &[f32], want: &[f32]) -> std::result::Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
        }
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            // Written so that NaN fails the check.
            let ok = (a - b).abs() <= 1e-4 + 1e-4 * b.abs();
            if !ok {
                return Err(format!("{what}[{i}]: got {a}, want {b}"));
            }
        }
        Ok(())
    }

    /// Runs the op (with a given bound on merged images) under autograd and checks the output
    /// and all three gradients against [`naive_dense`].
    fn check_dense(
        g: ConvGeom,
        relu: bool,
        bias: bool,
        max_group: usize,
        seed: u64,
    ) -> std::result::Result<(), String> {
        let e = |e: candle_core::Error| e.to_string();
        let dev = candle_core::Device::Cpu;
        let data = |s: u64, dims: &[usize]| -> std::result::Result<Tensor, String> {
            let len: usize = dims.iter().product();
            let mut st = s;
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    st = st
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (st >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect();
            Tensor::from_vec(v, dims, &dev).map_err(e)
        };
        let xt = data(seed, &[g.b, g.c_in, g.h, g.w])?;
        let wt = data(seed ^ 1, &[g.c_out, g.c_in, g.kh, g.kw])?;
        let bt = if bias {
            data(seed ^ 2, &[g.c_out])?
        } else {
            Tensor::zeros(g.c_out, DType::F32, &dev).map_err(e)?
        };
        let rt = data(seed ^ 3, &[g.b, g.c_out, g.oh, g.ow])?;
        let v = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(e);
        let (x, w, b, r) = (v(&xt)?, v(&wt)?, v(&bt)?, v(&rt)?);
        let (y_ref, dx_ref, dw_ref, db_ref) = naive_dense(&g, relu, &x, &w, &b, &r);
        let xv = candle_core::Var::from_tensor(&xt).map_err(e)?;
        let wv = candle_core::Var::from_tensor(&wt).map_err(e)?;
        let bv = candle_core::Var::from_tensor(&bt).map_err(e)?;
        let act = if relu {
            Activation::Relu
        } else {
            Activation::None
        };
        let bias_t = if bias {
            bv.as_tensor().clone()
        } else {
            bt.clone()
        };
        let y = xv
            .apply_op3(wv.as_tensor(), &bias_t, Conv2dGemm { g, act, max_group })
            .map_err(e)?;
        close("y", &v(&y)?, &y_ref)?;
        let grads = (&y * &rt)
            .and_then(|l| l.sum_all())
            .and_then(|l| l.backward())
            .map_err(e)?;
        let get = |t: &Tensor| grads.get(t).ok_or("missing gradient".to_string());
        close("dx", &v(get(xv.as_tensor())?)?, &dx_ref)?;
        close("dw", &v(get(wv.as_tensor())?)?, &dw_ref)?;
        if bias {
            close("db", &v(get(bv.as_tensor())?)?, &db_ref)?;
        } else if grads.get(&bt).is_some() {
            return Err("gradient for a constant bias".into());
        }
        Ok(())
    }

    fn small_plane_case() -> impl Strategy<Value = (ConvGeom, bool, bool, usize, u64)> {
        (
            (1usize..=9, 1usize..=12, 1usize..=12),
            (
                prop::sample::select(vec![1usize, 2, 4, 7]),
                prop::sample::select(vec![1usize, 2, 4, 7, 3]),
            ),
            (
                prop::sample::select(vec![1usize, 3]),
                1usize..=2,
                0usize..=1,
            ),
            (any::<bool>(), any::<bool>()),
            (
                prop::sample::select(vec![1usize, 2, 3, usize::MAX]),
                any::<u64>(),
            ),
        )
            .prop_filter_map(
                "kernel fits",
                |((b, c_in, c_out), (h, w), (k, stride, pad), (relu, bias), (mg, seed))| {
                    // 1x1 kernels mostly pointwise (stride 1, no padding): the gather-free path.
                    let (stride, pad) = if k == 1 && seed % 4 != 0 {
                        (1, 0)
                    } else {
                        (stride, pad)
                    };
                    let oh = crate::util::out_size(h, k, stride, pad)?;
                    let ow = crate::util::out_size(w, k, stride, pad)?;
                    let g = ConvGeom {
                        b,
                        c_in,
                        h,
                        w,
                        c_out,
                        kh: k,
                        kw: k,
                        stride,
                        pad,
                        oh,
                        ow,
                    };
                    Some((g, relu, bias, mg, seed))
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

        /// Small planes (1x1 .. 7x7, pointwise and 3x3) take the merged-gemm path: one gemm
        /// for a group of images, forward and backward; groups of 1, 2, 3 and the whole batch.
        #[test]
        fn merged_small_plane_conv_matches_naive(
            (g, relu, bias, mg, seed) in small_plane_case()
        ) {
            check_dense(g, relu, bias, mg, seed).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn transposed_paths_match_naive() -> std::result::Result<(), String> {
        // (batch, c_in, c_out, h, w, kernel, pad, folds the forward)
        for &(b, c_in, c_out, h, w, k, pad, folds) in &[
            (3, 16, 16, 8, 8, 3, 1, false), // ResNet-like: backward only
            (2, 48, 12, 7, 9, 3, 1, true),  // DenseNet-like: forward too
            (1, 5, 2, 11, 7, 3, 0, true),   // no padding
            (2, 4, 3, 9, 7, 5, 2, false),   // 5x5 "same"
            (3, 6, 6, 12, 11, 5, 0, false), // 5x5 valid: transposed padding 4
            (1, 8, 4, 7, 8, 3, 2, true),    // padding past "same"
        ] {
            let g = ConvGeom {
                b,
                c_out,
                ..geom(c_in, h, w, k, 1, pad)
            };
            let op = Conv2dGemm {
                g,
                act: Activation::None,
                max_group: usize::MAX,
            };
            if op.transposed().is_none() || op.folds_forward().is_some() != folds {
                return Err(format!("{g:?} does not take the path under test"));
            }
            check_dense(g, true, true, usize::MAX, b as u64)?;
            check_dense(g, false, false, usize::MAX, b as u64 + 100)?;
        }
        Ok(())
    }

    #[test]
    fn flipped_weights_round_trip() {
        let g = geom(3, 5, 5, 3, 1, 1);
        let g = ConvGeom { c_out: 2, ..g };
        let w: Vec<f32> = (0..g.c_out * g.k()).map(|i| i as f32).collect();
        let r = flipped_t(&g, &w);
        // Output channel 1, input channel 2, first tap of the rotated kernel = last tap.
        assert_eq!(r[2 * 2 * 9 + 9], w[(3 + 2) * 9 + 8]);
        // unflip_dw takes the transposed layout [c_out*kh*kw, c_in] back.
        let rows = g.c_out * 9;
        let t: Vec<f32> = (0..rows * g.c_in)
            .map(|i| r[(i % g.c_in) * rows + i / g.c_in])
            .collect();
        assert_eq!(unflip_dw(&g, &t), w);
    }

    #[test]
    fn merged_layer_shapes_match_naive() -> std::result::Result<(), String> {
        // Shapes like MobileNet's late pointwise layers (4x4, 2x2, 1x1 planes), odd batches.
        for &(b, c_in, c_out, hw, mg) in &[
            (5, 64, 48, 4, usize::MAX),
            (3, 40, 72, 2, usize::MAX),
            (7, 96, 33, 1, 2),
            (1, 64, 64, 4, usize::MAX),
            (2, 24, 24, 7, usize::MAX),
        ] {
            let g = ConvGeom {
                b,
                c_in,
                h: hw,
                w: hw,
                c_out,
                kh: 1,
                kw: 1,
                stride: 1,
                pad: 0,
                oh: hw,
                ow: hw,
            };
            check_dense(g, true, true, mg, b as u64)?;
            check_dense(g, false, false, mg, b as u64 + 100)?;
        }
        Ok(())
    }
}
