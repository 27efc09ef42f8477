//! Depthwise convolution (`groups == c_in == c_out`): direct kernels, parallel over
//! `(batch, channel)` planes.
//!
//! candle splits a grouped conv into one conv per group and, in backward, expands every group's
//! gradient to the full input size; here each plane is an independent small stencil. Planes are
//! first rearranged into zero-padded "phase" rows so that, for any stride and padding, the
//! inner loops are fixed-width blocks of 8 lanes that the compiler maps onto AVX2 registers
//! (selected at runtime).

use crate::conv::{Activation, ConvGeom};
use std::mem::MaybeUninit;

use crate::util::{cpu_f32, simd_fn, valid_range, vec_filled_by, with_scratch, zeroed};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Depthwise convolution as a candle custom op over `(x, w, bias)`; `w` is `[c, 1, kh, kw]`.
pub(crate) struct DepthwiseConv2d {
    pub(crate) g: ConvGeom,
    pub(crate) act: Activation,
}

/// Lanes per register block: one AVX2 vector of `f32`.
const L: usize = 8;

/// Output columns rounded up to whole register blocks.
fn ow_padded(g: &ConvGeom) -> usize {
    g.ow.div_ceil(L) * L
}

/// The `L` floats of `v` starting at `at` (always in bounds by construction of the buffers;
/// `None` would only skip work, never read out of bounds).
#[inline(always)]
fn block(v: &[f32], at: usize) -> Option<&[f32; L]> {
    v.get(at..).and_then(|v| v.first_chunk::<L>())
}

#[inline(always)]
fn block_mut(v: &mut [f32], at: usize) -> Option<&mut [f32; L]> {
    v.get_mut(at..).and_then(|v| v.first_chunk_mut::<L>())
}

/// Layout of one zero-padded plane split into `stride` column phases:
/// `phase[ph][r][j] = x_padded[r][j * stride + ph]`.
///
/// With this layout the input columns read by output columns `o..o + L` for kernel column `kj`
/// are the contiguous run `phase[kj % s][r][kj / s + o..][..L]`, for any stride, so every inner
/// loop is a fixed-width vector operation without bounds special cases. Rows are long enough
/// (`wr`) that whole blocks past the last output column still read zero padding of the same row.
#[derive(Clone, Copy)]
struct Phases {
    s: usize,
    p: usize,
    w: usize,
    /// Padded height.
    hp: usize,
    /// Meaningful columns per phase.
    wq: usize,
    /// Row stride of the phase buffer (>= `wq`).
    wr: usize,
}

impl Phases {
    fn new(g: &ConvGeom) -> Self {
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let wq = wp.div_ceil(g.stride);
        Self {
            s: g.stride,
            p: g.pad,
            w: g.w,
            hp,
            wq,
            wr: wq.max((g.kw - 1) / g.stride + ow_padded(g)),
        }
    }
    fn len(&self) -> usize {
        self.s * self.hp * self.wr
    }
    /// Offset of padded row `r`, kernel column `kj` (output column 0).
    fn at(&self, r: usize, kj: usize) -> usize {
        ((kj % self.s) * self.hp + r) * self.wr + kj / self.s
    }
    /// `at(ki, kj)` for every tap, row-major: computed once per call so the inner loops do no
    /// integer division (`at(oh * s + ki, kj) = taps[t] + oh * s * wr`).
    fn tap_offsets(&self, kh: usize, kw: usize) -> Vec<usize> {
        (0..kh)
            .flat_map(|ki| (0..kw).map(move |kj| (ki, kj)))
            .map(|(ki, kj)| self.at(ki, kj))
            .collect()
    }
    /// Scatters an unpadded plane into phase layout (padding = 0).
    #[inline(always)]
    fn pack(&self, x: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        for (ih, row) in x.chunks_exact(self.w).enumerate() {
            let r = ih + self.p;
            if self.s == 1 {
                out[r * self.wr + self.p..][..self.w].copy_from_slice(row);
                continue;
            }
            for ph in 0..self.s {
                // Phase columns j with j*s + ph - p inside the row, as one strided run.
                let (lo, hi) = valid_range(self.wq, self.w, ph, self.s, self.p);
                if lo < hi {
                    let dst = &mut out[(ph * self.hp + r) * self.wr..][lo..hi];
                    let src = row[lo * self.s + ph - self.p..].iter().step_by(self.s);
                    dst.iter_mut().zip(src).for_each(|(d, v)| *d = *v);
                }
            }
        }
    }
    /// Gathers the unpadded plane back out of phase layout (drops the padding).
    #[inline(always)]
    fn unpack(&self, phases: &[f32], x: &mut [f32]) {
        for (ih, row) in x.chunks_exact_mut(self.w).enumerate() {
            let r = ih + self.p;
            if self.s == 1 {
                row.copy_from_slice(&phases[r * self.wr + self.p..][..self.w]);
                continue;
            }
            for ph in 0..self.s {
                let (lo, hi) = valid_range(self.wq, self.w, ph, self.s, self.p);
                if lo < hi {
                    let src = &phases[(ph * self.hp + r) * self.wr..][lo..hi];
                    let dst = row[lo * self.s + ph - self.p..].iter_mut().step_by(self.s);
                    dst.zip(src).for_each(|(d, v)| *d = *v);
                }
            }
        }
    }
}

/// Per-call constants shared by every plane.
struct Ctx<'a> {
    g: &'a ConvGeom,
    act: Activation,
    /// `Phases::tap_offsets` of this geometry.
    offs: &'a [usize],
    /// For the input gradient of stride-1 convs: the forward context of the transposed
    /// convolution (see `transposed_geom`).
    dx_fwd: Option<&'a Ctx<'a>>,
}

/// For a stride-1 conv with a square kernel and `pad < k`, the input gradient is itself a
/// stride-1 convolution: of the output gradient (`oh x ow`, padded by `k - 1 - pad`) with the
/// kernel flipped in both axes. Computing it that way accumulates each output block in
/// registers over all taps and stores it once, instead of one read-modify-write pass over the
/// input-sized buffer per tap (the scatter form, which is store-bound).
fn transposed_geom(g: &ConvGeom) -> Option<ConvGeom> {
    (g.stride == 1 && g.kh == g.kw && g.pad < g.kh).then(|| ConvGeom {
        h: g.oh,
        w: g.ow,
        pad: g.kh - 1 - g.pad,
        oh: g.h,
        ow: g.w,
        ..*g
    })
}

/// `y = act(bias + x ⋆ w)` for one plane; `xph` is scratch of `Phases::len()`.
///
/// Each block of `L` outputs is accumulated in registers over all taps and stored once.
#[inline(always)]
fn fwd_plane_impl(ctx: &Ctx<'_>, x: &[f32], w: &[f32], bias: f32, y: &mut [f32], xph: &mut [f32]) {
    let Ctx { g, act, offs, .. } = *ctx;
    let ph = Phases::new(g);
    ph.pack(x, xph);
    for (oh, yr) in y.chunks_exact_mut(g.ow).enumerate() {
        let row0 = oh * g.stride * ph.wr;
        for o in (0..g.ow).step_by(L) {
            let mut acc = [bias; L];
            for (&wv, &off) in w.iter().zip(offs) {
                if let Some(src) = block(xph, row0 + off + o) {
                    for l in 0..L {
                        acc[l] += wv * src[l];
                    }
                }
            }
            if act == Activation::Relu {
                acc.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            match block_mut(yr, o) {
                Some(dst) => *dst = acc,
                None => {
                    let n = g.ow - o;
                    yr[o..].copy_from_slice(&acc[..n]);
                }
            }
        }
    }
}

/// Per-plane backward outputs (each only when requested).
struct PlaneGrads<'a> {
    dx: Option<&'a mut [f32]>,
    dw: Option<&'a mut [f32]>,
    db: Option<&'a mut f32>,
}

/// Backward of one plane. `gy` is the raw incoming gradient, `y` the forward output (for the
/// ReLU mask); `scratch` holds at least `bwd_scratch_len(g)` floats.
#[inline(always)]
fn bwd_plane_impl(
    ctx: &Ctx<'_>,
    x: &[f32],
    w: &[f32],
    y: &[f32],
    gy: &[f32],
    out: PlaneGrads<'_>,
    scratch: &mut [f32],
) {
    let Ctx { g, act, offs, .. } = *ctx;
    let ph = Phases::new(g);
    let owp = ow_padded(g);
    let (gm, rest) = scratch.split_at_mut(g.oh * owp);
    let (xph, dxph) = rest.split_at_mut(ph.len());
    // Masked gradient with rows padded to whole blocks by zeros, so padded lanes contribute
    // nothing below.
    for ((gr, gyr), yr) in gm
        .chunks_exact_mut(owp)
        .zip(gy.chunks_exact(g.ow))
        .zip(y.chunks_exact(g.ow))
    {
        match act {
            Activation::None => gr[..g.ow].copy_from_slice(gyr),
            Activation::Relu => {
                for ((m, &gv), &yv) in gr.iter_mut().zip(gyr).zip(yr) {
                    *m = if yv > 0.0 { gv } else { 0.0 };
                }
            }
        }
        gr[g.ow..].fill(0.0);
    }
    if let Some(db) = out.db {
        *db = crate::util::sum(gm);
    }
    if let Some(dw) = out.dw {
        // dw[t] = <g, x shifted by tap t>: one register accumulator per tap, reduced at the end.
        ph.pack(x, xph);
        for (d, &off) in dw.iter_mut().zip(offs) {
            let mut acc = [0f32; L];
            for (oh, gr) in gm.chunks_exact(owp).enumerate() {
                let row0 = oh * g.stride * ph.wr + off;
                for o in (0..owp).step_by(L) {
                    if let (Some(gb), Some(src)) = (block(gr, o), block(xph, row0 + o)) {
                        for l in 0..L {
                            acc[l] += gb[l] * src[l];
                        }
                    }
                }
            }
            *d = acc.iter().sum();
        }
    }
    let Some(dx) = out.dx else { return };
    if let Some(t) = ctx.dx_fwd {
        // Gather form (see `transposed_geom`): the masked gradient without row padding, the
        // flipped kernel, then the forward stencil.
        let kk = w.len();
        let (gu, rest) = dxph.split_at_mut(g.oh * g.ow);
        let (wf, tph) = rest.split_at_mut(kk);
        for (dst, src) in gu.chunks_exact_mut(g.ow).zip(gm.chunks_exact(owp)) {
            dst.copy_from_slice(&src[..g.ow]);
        }
        for (d, &v) in wf.iter_mut().zip(w.iter().rev()) {
            *d = v;
        }
        fwd_plane_impl(t, gu, wf, 0.0, dx, tph);
        return;
    }
    // Transposed stencil: scatter w * g into the padded phase layout, then drop padding.
    // Taps are the outer loop so that consecutive read-modify-writes touch disjoint blocks
    // (tap-inner order overlaps the previous store and stalls on store forwarding).
    dxph.fill(0.0);
    for (&wv, &off) in w.iter().zip(offs) {
        for (oh, gr) in gm.chunks_exact(owp).enumerate() {
            let row0 = oh * g.stride * ph.wr + off;
            for o in (0..owp).step_by(L) {
                // Copy into registers: both buffers live in one scratch slice, so LLVM
                // cannot rule out aliasing otherwise and emits scalar code.
                let Some(&gb) = block(gr, o) else { continue };
                if let Some(dst) = block_mut(dxph, row0 + o) {
                    for l in 0..L {
                        dst[l] += wv * gb[l];
                    }
                }
            }
        }
    }
    ph.unpack(dxph, dx);
}

fn bwd_scratch_len(g: &ConvGeom) -> usize {
    let ph = Phases::new(g).len();
    // The last part holds either the scatter buffer or the gather form's inputs.
    let dx_part = match transposed_geom(g) {
        Some(t) => ph.max(g.oh * g.ow + g.kh * g.kw + Phases::new(&t).len()),
        None => ph,
    };
    g.oh * ow_padded(g) + ph + dx_part
}

/// Whether the AVX2+FMA versions of the plane kernels can run (cached by std).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Same code as `fwd_plane_impl`, compiled for AVX2 so its row loops use 8-wide vectors
/// (the crate is otherwise built for baseline x86-64, i.e. SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_plane_avx2(
    ctx: &Ctx<'_>,
    x: &[f32],
    w: &[f32],
    bias: f32,
    y: &mut [f32],
    xph: &mut [f32],
) {
    fwd_plane_impl(ctx, x, w, bias, y, xph)
}

/// AVX2 build of `bwd_plane_impl` (see `fwd_plane_avx2`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_plane_avx2(
    ctx: &Ctx<'_>,
    x: &[f32],
    w: &[f32],
    y: &[f32],
    gy: &[f32],
    out: PlaneGrads<'_>,
    scratch: &mut [f32],
) {
    bwd_plane_impl(ctx, x, w, y, gy, out, scratch)
}

fn fwd_plane(ctx: &Ctx<'_>, x: &[f32], w: &[f32], bias: f32, y: &mut [f32], xph: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA support was checked at runtime just above; the function is
        // otherwise ordinary safe code.
        unsafe { fwd_plane_avx2(ctx, x, w, bias, y, xph) };
        return;
    }
    fwd_plane_impl(ctx, x, w, bias, y, xph)
}

fn bwd_plane(
    ctx: &Ctx<'_>,
    x: &[f32],
    w: &[f32],
    y: &[f32],
    gy: &[f32],
    out: PlaneGrads<'_>,
    scratch: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA support was checked at runtime just above; the function is
        // otherwise ordinary safe code.
        unsafe { bwd_plane_avx2(ctx, x, w, y, gy, out, scratch) };
        return;
    }
    bwd_plane_impl(ctx, x, w, y, gy, out, scratch)
}

/// Narrow planes (fewer output columns than a register block: the 7x7 and 4x4 layers of a
/// small MobileNet) waste most lanes of the row-vectorised kernels above and pay their
/// per-plane setup for a handful of outputs. For those, `L` channels of one image are
/// interleaved (`[h][w][L]`, zero-padded) so that every tap is one full-width multiply-add
/// across channels, whatever the plane size, stride or padding.
fn use_channel_vectors(g: &ConvGeom) -> bool {
    g.ow < L
}

/// Per-call constants of the channel-vector kernels.
struct CvCtx<'a> {
    g: &'a ConvGeom,
    act: Activation,
    /// Weights as `[c / L][kh * kw][L]` (zero lanes past the last channel).
    wt: &'a [f32],
    /// Bias as `[c / L][L]`.
    bt: &'a [f32],
    /// Padded width.
    wp: usize,
}

impl CvCtx<'_> {
    /// Floats of one interleaved padded group.
    fn packed_len(g: &ConvGeom) -> usize {
        (g.h + 2 * g.pad) * (g.w + 2 * g.pad) * L
    }

    /// `[c][k]` (one row per channel) to `[c / L][k][L]` with zero lanes.
    fn interleave(v: &[f32], c: usize, k: usize) -> Vec<f32> {
        let groups = c.div_ceil(L);
        let mut out = vec![0f32; groups * k * L];
        for (ci, row) in v.chunks_exact(k).enumerate().take(c) {
            let (grp, l) = (ci / L, ci % L);
            for (t, &val) in row.iter().enumerate() {
                out[(grp * k + t) * L + l] = val;
            }
        }
        out
    }

    /// Interleaves channels `c0..c0 + nl` of the image `x` (`[c][h][w]`) into `xp`.
    #[inline(always)]
    fn pack(&self, x: &[f32], c0: usize, nl: usize, xp: &mut [f32]) {
        let (g, hw) = (self.g, self.g.h * self.g.w);
        xp.fill(0.0);
        for l in 0..nl {
            let plane = &x[(c0 + l) * hw..][..hw];
            for (ih, row) in plane.chunks_exact(g.w).enumerate() {
                let base = ((ih + g.pad) * self.wp + g.pad) * L + l;
                for (iw, &v) in row.iter().enumerate() {
                    xp[base + iw * L] = v;
                }
            }
        }
    }
}

simd_fn! {
    /// Forward of one image: `y` is `[c][oh][ow]`, `x` is `[c][h][w]`.
    fn cv_fwd_image(ctx: &CvCtx<'_>, x: &[f32], y: &mut [f32], xp: &mut [f32]) {
        let g = ctx.g;
        let (kk, n) = (g.kh * g.kw, g.n());
        for c0 in (0..g.c_in).step_by(L) {
            let (grp, nl) = (c0 / L, (g.c_in - c0).min(L));
            ctx.pack(x, c0, nl, xp);
            let wt = &ctx.wt[grp * kk * L..][..kk * L];
            let Some(bias) = block(ctx.bt, grp * L) else { return };
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let mut acc = *bias;
                    for ki in 0..g.kh {
                        let row = (oh * g.stride + ki) * ctx.wp + ow * g.stride;
                        for kj in 0..g.kw {
                            if let (Some(wv), Some(src)) =
                                (block(wt, (ki * g.kw + kj) * L), block(xp, (row + kj) * L))
                            {
                                for l in 0..L {
                                    acc[l] += wv[l] * src[l];
                                }
                            }
                        }
                    }
                    if ctx.act == Activation::Relu {
                        acc.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                    let o = oh * g.ow + ow;
                    for (l, &v) in acc.iter().enumerate().take(nl) {
                        y[(c0 + l) * n + o] = v;
                    }
                }
            }
        }
    }
}

/// Backward outputs of one image (each only when requested): `dx` `[c][h][w]`, and this
/// image's partial `dw` `[c][kh*kw]` and `db` `[c]`.
struct ImageGrads<'a> {
    dx: Option<&'a mut [f32]>,
    dw: Option<&'a mut [f32]>,
    db: Option<&'a mut [f32]>,
}

simd_fn! {
    /// Backward of one image; `scratch` holds `cv_bwd_scratch_len(g)` floats.
    fn cv_bwd_image(ctx: &CvCtx<'_>, x: &[f32], y: &[f32], gy: &[f32], out: ImageGrads<'_>, scratch: &mut [f32]) {
        let g = ctx.g;
        let (kk, n, hw) = (g.kh * g.kw, g.n(), g.h * g.w);
        let plen = CvCtx::packed_len(g);
        let (gm, rest) = scratch.split_at_mut(n * L);
        let (xp, rest) = rest.split_at_mut(plen);
        let (dxp, dwacc) = rest.split_at_mut(plen);
        let dwacc = &mut dwacc[..kk * L];
        let ImageGrads { mut dx, mut dw, mut db } = out;
        for c0 in (0..g.c_in).step_by(L) {
            let (grp, nl) = (c0 / L, (g.c_in - c0).min(L));
            // Masked gradient, interleaved; lanes past the last channel stay zero.
            gm.fill(0.0);
            for l in 0..nl {
                let (gp, yp) = (&gy[(c0 + l) * n..][..n], &y[(c0 + l) * n..][..n]);
                for (o, (&gv, &yv)) in gp.iter().zip(yp).enumerate() {
                    gm[o * L + l] = if ctx.act == Activation::Relu && yv <= 0.0 { 0.0 } else { gv };
                }
            }
            if let Some(db) = db.as_deref_mut() {
                let mut acc = [0f32; L];
                for o in 0..n {
                    if let Some(gb) = block(gm, o * L) {
                        for l in 0..L {
                            acc[l] += gb[l];
                        }
                    }
                }
                db[c0..c0 + nl].copy_from_slice(&acc[..nl]);
            }
            if let Some(dw) = dw.as_deref_mut() {
                ctx.pack(x, c0, nl, xp);
                dwacc.fill(0.0);
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        let Some(&gb) = block(gm, (oh * g.ow + ow) * L) else { continue };
                        let row = (oh * g.stride) * ctx.wp + ow * g.stride;
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let src = (row + ki * ctx.wp + kj) * L;
                                // Copied into registers: `xp` and `dwacc` share one scratch
                                // slice, and LLVM emits scalar code when it cannot rule out
                                // aliasing.
                                let src = block(xp, src).copied();
                                if let (Some(src), Some(d)) =
                                    (src, block_mut(dwacc, (ki * g.kw + kj) * L))
                                {
                                    for l in 0..L {
                                        d[l] += gb[l] * src[l];
                                    }
                                }
                            }
                        }
                    }
                }
                for l in 0..nl {
                    for t in 0..kk {
                        dw[(c0 + l) * kk + t] = dwacc[t * L + l];
                    }
                }
            }
            if let Some(dx) = dx.as_deref_mut() {
                // Scatter w * g into the padded interleaved buffer (small enough to stay in L1),
                // then drop the padding.
                let wt = &ctx.wt[grp * kk * L..][..kk * L];
                dxp.fill(0.0);
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        let Some(&gb) = block(gm, (oh * g.ow + ow) * L) else { continue };
                        let row = (oh * g.stride) * ctx.wp + ow * g.stride;
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let dst = (row + ki * ctx.wp + kj) * L;
                                let wv = block(wt, (ki * g.kw + kj) * L).copied();
                                if let (Some(wv), Some(d)) = (wv, block_mut(dxp, dst)) {
                                    for l in 0..L {
                                        d[l] += wv[l] * gb[l];
                                    }
                                }
                            }
                        }
                    }
                }
                for l in 0..nl {
                    let plane = &mut dx[(c0 + l) * hw..][..hw];
                    for (ih, row) in plane.chunks_exact_mut(g.w).enumerate() {
                        let base = ((ih + g.pad) * ctx.wp + g.pad) * L + l;
                        for (iw, v) in row.iter_mut().enumerate() {
                            *v = dxp[base + iw * L];
                        }
                    }
                }
            }
        }
    }
}

fn cv_bwd_scratch_len(g: &ConvGeom) -> usize {
    g.n() * L + 2 * CvCtx::packed_len(g) + g.kh * g.kw * L
}

// ---------------------------------------------------------------------------------------------
// Specialised 3x3 kernels (padding 1, stride 1 or 2): the layers of the MobileNets.
// ---------------------------------------------------------------------------------------------

/// Lanes of the 3x3 kernels: one AVX-512 vector (two AVX2 ones).
pub(crate) const V: usize = 16;
type Vf = [f32; V];

/// `V` floats of `v` from `at`.
#[inline(always)]
pub(crate) fn ld(v: &[f32], at: usize) -> Vf {
    let s = &v[at..at + V];
    std::array::from_fn(|i| s[i])
}

/// `acc += w * s`, fused when the build has FMA (`std`'s `mul_add` is a libm call otherwise).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(acc: &mut Vf, w: f32, s: &Vf) {
    for l in 0..V {
        acc[l] = if FMA {
            s[l].mul_add(w, acc[l])
        } else {
            acc[l] + w * s[l]
        };
    }
}

/// `acc += a * b` lane-wise (see `madd`).
#[inline(always)]
fn madd_v<const FMA: bool>(acc: &mut Vf, a: &Vf, b: &Vf) {
    for l in 0..V {
        acc[l] = if FMA {
            a[l].mul_add(b[l], acc[l])
        } else {
            acc[l] + a[l] * b[l]
        };
    }
}

/// Writes the first `min(V, out.len() - at)` lanes of `v` to `out[at..]`.
#[inline(always)]
fn st(out: &mut [f32], at: usize, v: &Vf) {
    match out.get_mut(at..).and_then(|o| o.first_chunk_mut::<V>()) {
        Some(dst) => *dst = *v,
        None => {
            let rest = &mut out[at..];
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }
}

/// Geometry of the 3x3 / padding 1 kernels, which work on whole planes as flat vectors.
///
/// A plane (stride 1) or each of its four even/odd row/column phases (stride 2) is stored as
/// one flat run on a grid of the output's size, with `p = gw + 1` zeros before and at least as
/// many after. Every tap then reads the contiguous run at a fixed offset for every output:
/// moving one row up or down reads the zeros before or after the plane, and moving one column
/// left or right reads a copy of the plane whose last or first column is zeroed, so the value
/// that wraps around from the neighbouring row is zero. No edge cases remain in the loops,
/// which run over blocks of `V` outputs, all 9 taps accumulated in registers, lanes wasted
/// only in the plane's last block (none for 4x4 and 28x28 planes).
#[derive(Clone, Copy)]
struct Flat {
    s2: bool,
    h: usize,
    w: usize,
    /// Grid width: the output width.
    gw: usize,
    /// Grid cells: output plane size.
    m: usize,
    /// `m` rounded up to whole blocks.
    mr: usize,
    /// Leading zeros of each buffer.
    p: usize,
    /// Floats per buffer.
    blen: usize,
    /// Start of each tap's run (row-major taps) in the input buffers, for output 0.
    taps: [usize; 9],
}

impl Flat {
    /// The kernels' geometry, when they apply.
    fn new(g: &ConvGeom) -> Option<Self> {
        if g.kh != 3 || g.kw != 3 || g.pad != 1 || !(g.stride == 1 || g.stride == 2) {
            return None;
        }
        if g.h == 0 || g.w == 0 || g.oh == 0 || g.ow == 0 {
            return None;
        }
        let s2 = g.stride == 2;
        let (gw, m) = (g.ow, g.oh * g.ow);
        let mr = m.div_ceil(V) * V;
        let p = gw + 1;
        let blen = mr + 2 * p;
        let taps = std::array::from_fn(|t| {
            let (ki, kj) = (t / 3, t % 3);
            if s2 {
                // Row phase 1 (odd input rows) for ki = 0 (one grid row up) and 2; column
                // likewise, with the left-shifted read from the last-column-zeroed copy.
                let rp = usize::from(ki != 1);
                let buf = match kj {
                    0 => 4 + rp,
                    1 => rp * 2,
                    _ => rp * 2 + 1,
                };
                buf * blen + p - usize::from(ki == 0) * gw - usize::from(kj == 0)
            } else {
                // Buffers 0, 1, 2: last column zeroed, plain, first column zeroed.
                kj * blen + ki * gw + kj
            }
        });
        Some(Self {
            s2,
            h: g.h,
            w: g.w,
            gw,
            m,
            mr,
            p,
            blen,
            taps,
        })
    }

    /// Input buffers: 3 (stride 1) or 6 (the four phases and two column-zeroed copies).
    fn x_len(&self) -> usize {
        (if self.s2 { 6 } else { 3 }) * self.blen
    }

    /// Gradient buffers: the masked gradient and its column-zeroed copies (stride 1, used as
    /// the input of the transposed stencil; stride 2 needs only the first-column-zeroed one).
    fn g_len(&self) -> usize {
        (if self.s2 { 2 } else { 3 }) * self.blen
    }

    /// Writes a stride-1 plane (`h x w`) into buffers 0..3 of `buf` (whose other cells must be
    /// zero and are left untouched).
    #[inline(always)]
    fn pack_s1(&self, x: &[f32], buf: &mut [f32]) {
        let (w, p, blen) = (self.w, self.p, self.blen);
        let n = self.h * w;
        buf[p..p + n].copy_from_slice(x);
        buf[blen + p..blen + p + n].copy_from_slice(x);
        buf[2 * blen + p..2 * blen + p + n].copy_from_slice(x);
        for r in 0..self.h {
            buf[p + r * w + w - 1] = 0.0;
            buf[2 * blen + p + r * w] = 0.0;
        }
    }

    /// Writes the four phases of a stride-2 input plane, and the last-column-zeroed copies of
    /// the odd-column ones, into `buf` (whose other cells must be zero and stay untouched).
    #[inline(always)]
    fn pack_s2(&self, x: &[f32], buf: &mut [f32]) {
        let (w, gw, p, blen) = (self.w, self.gw, self.p, self.blen);
        let half = w / 2;
        for (r, row) in x.chunks_exact(w).enumerate() {
            let (i, rp) = (r / 2, r % 2);
            let at = p + i * gw;
            let (ev, rest) = buf[rp * 2 * blen..].split_at_mut(blen);
            let (ev, od) = (&mut ev[at..at + gw], &mut rest[at..at + half]);
            for (j, pair) in row.chunks_exact(2).enumerate() {
                ev[j] = pair[0];
                od[j] = pair[1];
            }
            if w % 2 == 1 {
                ev[half] = row[w - 1];
            }
            // Odd columns without the last grid column (zero when `w` is odd anyway), written
            // from the row rather than copied from `od`: a copy of a few floats per row is a
            // `memcpy` call, which cost a fifth of a 7x7 stride-2 layer.
            let od0 = &mut buf[(4 + rp) * blen + at..][..gw - 1];
            for (d, pair) in od0.iter_mut().zip(row.chunks_exact(2)) {
                *d = pair[1];
            }
        }
    }

    /// Writes the (masked) output gradient `gm` of one plane into `buf`: stride 1 as
    /// `pack_s1`; stride 2 as the plain grid and its first-column-zeroed copy.
    #[inline(always)]
    fn pack_g(&self, gm: &[f32], buf: &mut [f32]) {
        if !self.s2 {
            return self.pack_s1(gm, buf);
        }
        let (gw, p, blen, m) = (self.gw, self.p, self.blen, self.m);
        buf[p..p + m].copy_from_slice(gm);
        buf[blen + p..blen + p + m].copy_from_slice(gm);
        for r in 0..m / gw {
            buf[blen + p + r * gw] = 0.0;
        }
    }
}

/// `out[o] = act(bias + sum_t w[t] * src[taps[t] + o])` for `o < out.len()`.
#[inline(always)]
fn gather<const NT: usize, const FMA: bool>(
    src: &[f32],
    taps: &[usize; NT],
    w: &[f32; NT],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    for b in (0..out.len()).step_by(V) {
        let mut acc = [bias; V];
        for t in 0..NT {
            madd::<FMA>(&mut acc, w[t], &ld(src, taps[t] + b));
        }
        if relu {
            acc.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        st(out, b, &acc);
    }
}

/// Forward of consecutive planes `plane0..` (`x` and `y` hold whole planes); `buf` is scratch of
/// `Flat::x_len`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn flat_fwd_impl<const FMA: bool>(
    f: &Flat,
    c: usize,
    plane0: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    relu: bool,
    y: &mut [MaybeUninit<f32>],
    buf: &mut [f32],
) {
    buf.fill(0.0);
    let hw = f.h * f.w;
    for (i, (yp, xp)) in y.chunks_exact_mut(f.m).zip(x.chunks_exact(hw)).enumerate() {
        let yp = zeroed(yp);
        let ci = (plane0 + i) % c;
        if f.s2 {
            f.pack_s2(xp, buf);
        } else {
            f.pack_s1(xp, buf);
        }
        let wk: &[f32; 9] = w[ci * 9..ci * 9 + 9].try_into().unwrap_or(&[0.0; 9]);
        gather::<9, FMA>(buf, &f.taps, wk, bias[ci], relu, yp);
    }
}

/// Backward of the planes of images `b0..` (`x`, `y`, `gy`, `dx` hold whole images of `c`
/// planes), channel by channel so that each channel's weight and bias gradients accumulate in
/// registers over those images. `dw` (`[c][9]`) and `db` (`[c]`) receive this chunk's sums;
/// empty outputs are not computed. `scratch` holds `flat_bwd_scratch_len` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn flat_bwd_impl<const FMA: bool>(
    f: &Flat,
    c: usize,
    x: &[f32],
    w: &[f32],
    y: &[f32],
    gy: &[f32],
    relu: bool,
    dx: &mut [MaybeUninit<f32>],
    dw: &mut [f32],
    db: &mut [f32],
    scratch: &mut [f32],
) {
    let (hw, m, mr) = (f.h * f.w, f.m, f.mr);
    let (xb, rest) = scratch.split_at_mut(f.x_len());
    let (gb, rest) = rest.split_at_mut(f.g_len());
    let (gm, de) = rest.split_at_mut(mr);
    xb.fill(0.0);
    gb.fill(0.0);
    let images = gy.len() / (c * m);
    let (need_x, need_w, need_b) = (!dx.is_empty(), !dw.is_empty(), !db.is_empty());
    // Start of the plain gradient grid in `gb`.
    let g0 = if f.s2 { f.p } else { f.blen + f.p };
    for ci in 0..c {
        let wk: [f32; 9] = std::array::from_fn(|t| w[ci * 9 + t]);
        let mut acc_w = [[0f32; V]; 9];
        let mut acc_b = [0f32; V];
        for bi in 0..images {
            let plane = bi * c + ci;
            let gp = &gy[plane * m..][..m];
            let gsrc = if relu {
                let yp = &y[plane * m..][..m];
                for ((d, &gv), &yv) in gm.iter_mut().zip(gp).zip(yp) {
                    *d = if yv > 0.0 { gv } else { 0.0 };
                }
                &gm[..m]
            } else {
                gp
            };
            f.pack_g(gsrc, gb);
            if need_b {
                for b in (0..mr).step_by(V) {
                    let gv = ld(gb, g0 + b);
                    for l in 0..V {
                        acc_b[l] += gv[l];
                    }
                }
            }
            if need_w {
                let xp = &x[plane * hw..][..hw];
                if f.s2 {
                    f.pack_s2(xp, xb);
                } else {
                    f.pack_s1(xp, xb);
                }
                // Zero gradient lanes past the plane make its last block's extra lanes inert.
                for b in (0..mr).step_by(V) {
                    let gv = ld(gb, g0 + b);
                    for (acc, &off) in acc_w.iter_mut().zip(&f.taps) {
                        madd_v::<FMA>(acc, &gv, &ld(xb, off + b));
                    }
                }
            }
            if need_x {
                let dxp = zeroed(&mut dx[plane * hw..][..hw]);
                if !f.s2 {
                    // The transposed stencil is the forward one with the flipped kernel.
                    let wf: [f32; 9] = std::array::from_fn(|t| wk[8 - t]);
                    gather::<9, FMA>(gb, &f.taps, &wf, 0.0, false, dxp);
                } else {
                    flat_dx_s2::<FMA>(f, gb, &wk, de, dxp);
                }
            }
        }
        if need_w {
            for (d, acc) in dw[ci * 9..ci * 9 + 9].iter_mut().zip(&acc_w) {
                *d = acc.iter().sum();
            }
        }
        if need_b {
            db[ci] = acc_b.iter().sum();
        }
    }
}

/// Input gradient of one stride-2 plane from its gradient buffers `gb` (see `Flat::pack_g`),
/// phase by phase: input (2i + a, 2j + b) receives the taps with `ki`, `kj` of parity opposite
/// to `a`, `b`, from the output cells (i, j) and, for the taps reaching back one row or
/// column, (i + 1, j) and (i, j + 1) (read from the first-column-zeroed copy so nothing wraps
/// around a row end). `de` is scratch of 4 grids.
#[inline(always)]
fn flat_dx_s2<const FMA: bool>(f: &Flat, gb: &[f32], w: &[f32; 9], de: &mut [f32], dx: &mut [f32]) {
    let (p, gw, blen, m, mr) = (f.p, f.gw, f.blen, f.m, f.mr);
    let (d00, rest) = de.split_at_mut(mr);
    let (d01, rest) = rest.split_at_mut(mr);
    let (d10, d11) = rest.split_at_mut(mr);
    let (c0, r1, cd, rd1) = (p, blen + p + 1, p + gw, blen + p + gw + 1);
    gather::<1, FMA>(gb, &[c0], &[w[4]], 0.0, false, &mut d00[..m]);
    gather::<2, FMA>(gb, &[c0, r1], &[w[5], w[3]], 0.0, false, &mut d01[..m]);
    gather::<2, FMA>(gb, &[c0, cd], &[w[7], w[1]], 0.0, false, &mut d10[..m]);
    gather::<4, FMA>(
        gb,
        &[c0, r1, cd, rd1],
        &[w[8], w[6], w[2], w[0]],
        0.0,
        false,
        &mut d11[..m],
    );
    let half = f.w / 2;
    for (r, row) in dx.chunks_exact_mut(f.w).enumerate() {
        let (i, rp) = (r / 2, r % 2);
        let (ev, od) = if rp == 0 {
            (&*d00, &*d01)
        } else {
            (&*d10, &*d11)
        };
        let (ev, od) = (&ev[i * gw..][..gw], &od[i * gw..][..gw]);
        for (j, pair) in row.chunks_exact_mut(2).enumerate() {
            pair[0] = ev[j];
            pair[1] = od[j];
        }
        if f.w % 2 == 1 {
            row[f.w - 1] = ev[half];
        }
    }
}

/// Planes per forward task: a few tasks per thread, each large enough to amortise its setup.
fn flat_planes_per_task(planes: usize, hw: usize) -> usize {
    (planes / (8 * crate::util::num_threads())).clamp(1, (16384 / hw.max(1)).max(1))
}

fn flat_bwd_scratch_len(f: &Flat) -> usize {
    f.x_len() + f.g_len() + 5 * f.mr
}

/// Runtime dispatch of the 3x3 kernels: AVX-512, AVX2+FMA, or the baseline build.
macro_rules! flat_dispatch {
    ($name:ident => $imp:ident($($arg:ident : $ty:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) {
                    $imp::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    $imp::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") && has_avx2() {
                    // SAFETY: the features were detected at runtime just above.
                    return unsafe { avx512($($arg),*) };
                }
                if has_avx2() {
                    // SAFETY: the features were detected at runtime just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp::<false>($($arg),*)
        }
    };
}

pub(crate) use flat_dispatch;

flat_dispatch!(flat_fwd => flat_fwd_impl(
    f: &Flat, c: usize, plane0: usize, x: &[f32], w: &[f32], bias: &[f32], relu: bool,
    y: &mut [MaybeUninit<f32>], buf: &mut [f32],
));
flat_dispatch!(flat_bwd => flat_bwd_impl(
    f: &Flat, c: usize, x: &[f32], w: &[f32], y: &[f32], gy: &[f32], relu: bool,
    dx: &mut [MaybeUninit<f32>], dw: &mut [f32], db: &mut [f32], scratch: &mut [f32],
));

/// One `Some(chunk)` per item, or all `None` when the buffer is empty (gradient not wanted).
fn split_opt<T>(v: &mut [T], chunk: usize, items: usize) -> Vec<Option<&mut [T]>> {
    if v.is_empty() {
        (0..items).map(|_| None).collect()
    } else {
        v.chunks_mut(chunk).map(Some).collect()
    }
}

impl CustomOp3 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "hdr-depthwise-conv2d"
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
        let (hw, n, kk) = (g.h * g.w, g.n(), g.kh * g.kw);
        if x.len() != g.b * g.c_in * hw || w.len() != g.c_in * kk || bias.len() != g.c_in {
            bail!(
                "{}: inputs do not match the validated geometry",
                self.name()
            )
        }
        if let Some(f) = Flat::new(g) {
            let pc = flat_planes_per_task(g.b * g.c_in, hw);
            let relu = self.act == Activation::Relu;
            // SAFETY: `flat_fwd` initialises every plane of its chunk.
            let y = unsafe {
                vec_filled_by(g.b * g.c_in * n, |y| {
                    y.par_chunks_mut(pc * n)
                        .zip(x.par_chunks(pc * hw))
                        .enumerate()
                        .for_each(|(i, (y, x))| {
                            with_scratch(f.x_len(), 0, |buf, _| {
                                flat_fwd(&f, g.c_in, i * pc, x, w, bias, relu, y, buf)
                            })
                        })
                })
            };
            return Ok((
                CpuStorage::F32(y),
                Shape::from_dims(&[g.b, g.c_in, g.oh, g.ow]),
            ));
        }
        let mut y = vec![0f32; g.b * g.c_in * n];
        if use_channel_vectors(g) {
            let wt = CvCtx::interleave(w, g.c_in, kk);
            let bt = CvCtx::interleave(bias, g.c_in, 1);
            let ctx = CvCtx {
                g,
                act: self.act,
                wt: &wt,
                bt: &bt,
                wp: g.w + 2 * g.pad,
            };
            let plen = CvCtx::packed_len(g);
            y.par_chunks_mut(g.c_in * n)
                .zip(x.par_chunks(g.c_in * hw))
                .for_each(|(y, x)| with_scratch(plen, 0, |xp, _| cv_fwd_image(&ctx, x, y, xp)));
            return Ok((
                CpuStorage::F32(y),
                Shape::from_dims(&[g.b, g.c_in, g.oh, g.ow]),
            ));
        }
        let ph = Phases::new(g);
        let (plen, offs) = (ph.len(), ph.tap_offsets(g.kh, g.kw));
        let ctx = Ctx {
            g,
            act: self.act,
            offs: &offs,
            dx_fwd: None,
        };
        y.par_chunks_mut(n)
            .zip(x.par_chunks(hw))
            .enumerate()
            .with_min_len(crate::batch_norm::plane_batch(hw))
            .for_each(|(plane, (y, x))| {
                let c = plane % g.c_in;
                with_scratch(plen, 0, |xph, _| {
                    fwd_plane(&ctx, x, &w[c * kk..(c + 1) * kk], bias[c], y, xph)
                });
            });
        Ok((
            CpuStorage::F32(y),
            Shape::from_dims(&[g.b, g.c_in, g.oh, g.ow]),
        ))
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

impl DepthwiseConv2d {
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
        let (hw, n, kk, c) = (g.h * g.w, g.n(), g.kh * g.kw, g.c_in);
        if gd.len() != g.b * c * n
            || yd.len() != gd.len()
            || xd.len() != g.b * c * hw
            || wd.len() != c * kk
        {
            bail!("{name}: gradient does not match the output shape")
        }
        let [need_x, need_w, need_b] = need;

        // Per-plane partial weight/bias gradients, reduced over the batch afterwards: planes
        // never write to shared memory.
        let planes = g.b * c;
        let flat = Flat::new(g);
        // Images per task of the 3x3 kernels (each task sums its own weight gradient).
        let ib = g.b.div_ceil(g.b.min(4 * crate::util::num_threads()).max(1));
        // Partial weight/bias gradient vectors: one per channel of each task, or per plane.
        let parts = match flat {
            Some(_) => g.b.div_ceil(ib) * c,
            None => planes,
        };
        let mut dw_parts = vec![0f32; if need_w { parts * kk } else { 0 }];
        let mut db_parts = vec![0f32; if need_b { parts } else { 0 }];
        let dx_len = if need_x { planes * hw } else { 0 };
        let mut dx: Vec<f32>;
        if let Some(f) = flat {
            let relu = self.act == Activation::Relu;
            let slen = flat_bwd_scratch_len(&f);
            let tasks = g.b.div_ceil(ib);
            // The input gradient is written plane by plane, never read: no zeroed buffer.
            let mut dx_buf: Vec<f32> = Vec::with_capacity(dx_len);
            split_opt(
                &mut dx_buf.spare_capacity_mut()[..dx_len],
                ib * c * hw,
                tasks,
            )
            .into_par_iter()
            .zip(split_opt(&mut dw_parts, c * kk, tasks))
            .zip(split_opt(&mut db_parts, c, tasks))
            .enumerate()
            .for_each(|(k, ((dx, dw), db))| {
                let (b0, b1) = (k * ib, ((k + 1) * ib).min(g.b));
                with_scratch(slen, 0, |scratch, _| {
                    flat_bwd(
                        &f,
                        c,
                        &xd[b0 * c * hw..b1 * c * hw],
                        wd,
                        &yd[b0 * c * n..b1 * c * n],
                        &gd[b0 * c * n..b1 * c * n],
                        relu,
                        dx.unwrap_or_default(),
                        dw.unwrap_or_default(),
                        db.unwrap_or_default(),
                        scratch,
                    )
                });
            });
            // SAFETY: `flat_bwd` wrote every plane of every task's images (when `need_x`;
            // otherwise the length is 0).
            unsafe { dx_buf.set_len(dx_len) };
            dx = dx_buf;
        } else if use_channel_vectors(g) {
            dx = vec![0f32; dx_len];
            let wt = CvCtx::interleave(wd, c, kk);
            let ctx = CvCtx {
                g,
                act: self.act,
                wt: &wt,
                bt: &[],
                wp: g.w + 2 * g.pad,
            };
            let slen = cv_bwd_scratch_len(g);
            split_opt(&mut dw_parts, c * kk, g.b)
                .into_par_iter()
                .zip(split_opt(&mut db_parts, c, g.b))
                .zip(split_opt(&mut dx, c * hw, g.b))
                .enumerate()
                .for_each(|(bi, ((dw, db), dx))| {
                    let out = ImageGrads { dx, dw, db };
                    with_scratch(slen, 0, |scratch, _| {
                        cv_bwd_image(
                            &ctx,
                            &xd[bi * c * hw..][..c * hw],
                            &yd[bi * c * n..][..c * n],
                            &gd[bi * c * n..][..c * n],
                            out,
                            scratch,
                        )
                    });
                });
        } else {
            dx = vec![0f32; dx_len];
            let dw_chunks = split_opt(&mut dw_parts, kk, planes);
            let db_chunks = split_opt(&mut db_parts, 1, planes);
            let dx_chunks = split_opt(&mut dx, hw, planes);
            let slen = bwd_scratch_len(g);
            let offs = Phases::new(g).tap_offsets(g.kh, g.kw);
            let tg = transposed_geom(g);
            let toffs = tg
                .as_ref()
                .map(|t| Phases::new(t).tap_offsets(t.kh, t.kw))
                .unwrap_or_default();
            let tctx = tg.as_ref().map(|t| Ctx {
                g: t,
                act: Activation::None,
                offs: &toffs,
                dx_fwd: None,
            });
            let ctx = Ctx {
                g,
                act: self.act,
                offs: &offs,
                dx_fwd: tctx.as_ref(),
            };
            dw_chunks
                .into_par_iter()
                .zip(db_chunks)
                .zip(dx_chunks)
                .enumerate()
                .with_min_len(crate::batch_norm::plane_batch(hw))
                .for_each(|(plane, ((dwp, dbp), dxp))| {
                    let ci = plane % c;
                    let out = PlaneGrads {
                        dx: dxp,
                        dw: dwp,
                        db: dbp.and_then(|d| d.first_mut()),
                    };
                    with_scratch(slen, 0, |scratch, _| {
                        bwd_plane(
                            &ctx,
                            &xd[plane * hw..(plane + 1) * hw],
                            &wd[ci * kk..(ci + 1) * kk],
                            &yd[plane * n..(plane + 1) * n],
                            &gd[plane * n..(plane + 1) * n],
                            out,
                            scratch,
                        )
                    });
                });
        }
        let dw = if need_w {
            let mut dw = vec![0f32; c * kk];
            for part in dw_parts.chunks_exact(c * kk) {
                dw.iter_mut().zip(part).for_each(|(a, v)| *a += v);
            }
            Some(dw)
        } else {
            None
        };
        let db = if need_b {
            let mut db = vec![0f32; c];
            for part in db_parts.chunks_exact(c) {
                db.iter_mut().zip(part).for_each(|(a, v)| *a += v);
            }
            Some(db)
        } else {
            None
        };
        Ok((need_x.then_some(dx), dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> ConvGeom {
        let oh = crate::util::out_size(h, k, stride, pad).unwrap_or(0);
        let ow = crate::util::out_size(w, k, stride, pad).unwrap_or(0);
        ConvGeom {
            b: 1,
            c_in: 1,
            h,
            w,
            c_out: 1,
            kh: k,
            kw: k,
            stride,
            pad,
            oh,
            ow,
        }
    }

    #[test]
    fn phases_pack_places_padded_columns_and_unpack_inverts() {
        for &(h, w, k, s, p) in &[
            (5, 7, 3, 1, 1),
            (6, 9, 3, 2, 1),
            (4, 5, 4, 3, 2),
            (3, 3, 1, 2, 0),
        ] {
            let g = geom(h, w, k, s, p);
            let ph = Phases::new(&g);
            let x: Vec<f32> = (0..h * w).map(|i| i as f32 + 1.0).collect();
            let mut buf = vec![f32::NAN; ph.len()];
            ph.pack(&x, &mut buf);
            // Output (oh, ow) with tap (ki, kj) reads padded (oh*s + ki, ow*s + kj).
            let offs = ph.tap_offsets(k, k);
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    for ki in 0..k {
                        for kj in 0..k {
                            let (r, c) = (oh * s + ki, ow * s + kj);
                            let want = if r >= p && c >= p && r - p < h && c - p < w {
                                x[(r - p) * w + c - p]
                            } else {
                                0.0
                            };
                            let got = buf[offs[ki * k + kj] + oh * s * ph.wr + ow];
                            assert_eq!(
                                got, want,
                                "{h} {w} {k} {s} {p}: ({oh},{ow}) tap ({ki},{kj})"
                            );
                        }
                    }
                }
            }
            let mut back = vec![0f32; h * w];
            ph.unpack(&buf, &mut back);
            assert_eq!(back, x);
            // Whole blocks past the last output column stay inside the buffer.
            let last = offs[k * k - 1] + (g.oh - 1) * s * ph.wr + ow_padded(&g) - L;
            assert!(block(&buf, last).is_some());
        }
    }

    /// Naive depthwise 3x3 / padding 1 forward and backward of `b x c` planes.
    #[allow(clippy::type_complexity)]
    fn naive_3x3(
        g: &ConvGeom,
        x: &[f32],
        w: &[f32],
        gy: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (hw, n) = (g.h * g.w, g.oh * g.ow);
        let mut y = vec![0f32; g.b * g.c_in * n];
        let mut dx = vec![0f32; g.b * g.c_in * hw];
        let mut dw = vec![0f32; g.c_in * 9];
        let mut db = vec![0f32; g.c_in];
        for pl in 0..g.b * g.c_in {
            let ci = pl % g.c_in;
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let o = pl * n + oh * g.ow + ow;
                    db[ci] += gy[o];
                    for t in 0..9 {
                        let (ih, iw) = (oh * g.stride + t / 3, ow * g.stride + t % 3);
                        if ih < 1 || iw < 1 || ih > g.h || iw > g.w {
                            continue;
                        }
                        let xi = pl * hw + (ih - 1) * g.w + iw - 1;
                        y[o] += w[ci * 9 + t] * x[xi];
                        dx[xi] += w[ci * 9 + t] * gy[o];
                        dw[ci * 9 + t] += x[xi] * gy[o];
                    }
                }
            }
        }
        (y, dx, dw, db)
    }

    fn close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn flat_3x3_kernels_match_naive_on_all_small_planes() {
        let val = |i: usize, k: usize| ((i * 7919 + k * 104729) % 1000) as f32 / 500.0 - 1.0;
        for s in 1..=2 {
            for h in 1..=9 {
                for w in 1..=9 {
                    let (b, c) = (3, 5);
                    let g = ConvGeom {
                        b,
                        c_in: c,
                        c_out: c,
                        ..geom(h, w, 3, s, 1)
                    };
                    let f = Flat::new(&g).expect("3x3 pad 1");
                    let (hw, n) = (h * w, g.oh * g.ow);
                    let x: Vec<f32> = (0..b * c * hw).map(|i| val(i, 1)).collect();
                    let wt: Vec<f32> = (0..c * 9).map(|i| val(i, 2)).collect();
                    let gy: Vec<f32> = (0..b * c * n).map(|i| val(i, 3)).collect();
                    let (y_ref, dx_ref, dw_ref, db_ref) = naive_3x3(&g, &x, &wt, &gy);
                    // Outputs start as NaN (through `MaybeUninit`, as the op passes them).
                    let nans = |len: usize| vec![MaybeUninit::new(f32::NAN); len];
                    // SAFETY: every element was initialised (to NaN, or by the kernels).
                    let read = |v: Vec<MaybeUninit<f32>>| -> Vec<f32> {
                        v.into_iter().map(|e| unsafe { e.assume_init() }).collect()
                    };
                    let mut y = nans(b * c * n);
                    let mut buf = vec![f32::NAN; f.x_len()];
                    // Two tasks of planes, the second starting mid-image.
                    let split = 4;
                    let (y0, y1) = y.split_at_mut(split * n);
                    let (x0, x1) = x.split_at(split * hw);
                    let zb = vec![0f32; c];
                    flat_fwd(&f, c, 0, x0, &wt, &zb, false, y0, &mut buf);
                    flat_fwd(&f, c, split, x1, &wt, &zb, false, y1, &mut buf);
                    let y = read(y);
                    close(&format!("y s{s} {h}x{w}"), &y, &y_ref);
                    let mut dx = nans(b * c * hw);
                    let mut dw = vec![0f32; c * 9];
                    let mut db = vec![0f32; c];
                    let mut scratch = vec![f32::NAN; flat_bwd_scratch_len(&f)];
                    // ReLU off: `y` only feeds the mask.
                    flat_bwd(
                        &f,
                        c,
                        &x,
                        &wt,
                        &y,
                        &gy,
                        false,
                        &mut dx,
                        &mut dw,
                        &mut db,
                        &mut scratch,
                    );
                    close(&format!("dx s{s} {h}x{w}"), &read(dx), &dx_ref);
                    close(&format!("dw s{s} {h}x{w}"), &dw, &dw_ref);
                    close(&format!("db s{s} {h}x{w}"), &db, &db_ref);
                }
            }
        }
    }
}
