//! Depthwise convolution (`groups == c_in == c_out`): direct kernels, parallel over
//! `(batch, channel)` planes.
//!
//! candle splits a grouped conv into one conv per group and, in backward, expands every group's
//! gradient to the full input size; here each plane is an independent small stencil. Planes are
//! first rearranged into zero-padded "phase" rows so that, for any stride and padding, the
//! inner loops are fixed-width blocks of 8 lanes that the compiler maps onto AVX2 registers
//! (selected at runtime).

use crate::conv::{Activation, ConvGeom};
use crate::util::{contiguous_cpu, cpu_f32, storage_f32, tensor_from, valid_range, with_scratch};
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
}

/// `y = act(bias + x ⋆ w)` for one plane; `xph` is scratch of `Phases::len()`.
///
/// Each block of `L` outputs is accumulated in registers over all taps and stored once.
#[inline(always)]
fn fwd_plane_impl(ctx: &Ctx<'_>, x: &[f32], w: &[f32], bias: f32, y: &mut [f32], xph: &mut [f32]) {
    let Ctx { g, act, offs } = *ctx;
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
    let Ctx { g, act, offs } = *ctx;
    let ph = Phases::new(g);
    let owp = ow_padded(g);
    let (gm, rest) = scratch.split_at_mut(g.oh * owp);
    let (xph, rest) = rest.split_at_mut(ph.len());
    let dxph = &mut rest[..ph.len()];
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
    if let Some(dx) = out.dx {
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
}

fn bwd_scratch_len(g: &ConvGeom) -> usize {
    g.oh * ow_padded(g) + 2 * Phases::new(g).len()
}

/// Whether the AVX2+FMA versions of the plane kernels can run (cached by std).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
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
        let mut y = vec![0f32; g.b * g.c_in * n];
        let ph = Phases::new(g);
        let (plen, offs) = (ph.len(), ph.tap_offsets(g.kh, g.kw));
        let ctx = Ctx {
            g,
            act: self.act,
            offs: &offs,
        };
        y.par_chunks_mut(n)
            .zip(x.par_chunks(hw))
            .enumerate()
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
        let g = &self.g;
        let name = self.name();
        let (xt, wt, rt, gt) = (
            contiguous_cpu(x)?,
            contiguous_cpu(w)?,
            contiguous_cpu(res)?,
            contiguous_cpu(grad)?,
        );
        let (xs, xl) = xt.storage_and_layout();
        let (ws, wl) = wt.storage_and_layout();
        let (rs, rl) = rt.storage_and_layout();
        let (gs, gl) = gt.storage_and_layout();
        let xd = storage_f32(&xs, xl, name)?;
        let wd = storage_f32(&ws, wl, name)?;
        let yd = storage_f32(&rs, rl, name)?;
        let gd = storage_f32(&gs, gl, name)?;
        let (hw, n, kk, c) = (g.h * g.w, g.n(), g.kh * g.kw, g.c_in);
        if gd.len() != g.b * c * n
            || yd.len() != gd.len()
            || xd.len() != g.b * c * hw
            || wd.len() != c * kk
        {
            bail!("{name}: gradient does not match the output shape")
        }
        let (need_x, need_w, need_b) = (x.track_op(), w.track_op(), bias.track_op());

        // Per-plane partial weight/bias gradients, reduced over the batch afterwards: planes
        // never write to shared memory.
        let planes = g.b * c;
        let mut dw_parts = vec![0f32; if need_w { planes * kk } else { 0 }];
        let mut db_parts = vec![0f32; if need_b { planes } else { 0 }];
        let mut dx = vec![0f32; if need_x { planes * hw } else { 0 }];
        {
            /// One `Some(chunk)` per plane, or all `None` when the gradient is not wanted.
            fn split(v: &mut [f32], chunk: usize, planes: usize) -> Vec<Option<&mut [f32]>> {
                if v.is_empty() {
                    (0..planes).map(|_| None).collect()
                } else {
                    v.chunks_mut(chunk).map(Some).collect()
                }
            }
            let dw_chunks = split(&mut dw_parts, kk, planes);
            let db_chunks = split(&mut db_parts, 1, planes);
            let dx_chunks = split(&mut dx, hw, planes);
            let slen = bwd_scratch_len(g);
            let offs = Phases::new(g).tap_offsets(g.kh, g.kw);
            let ctx = Ctx {
                g,
                act: self.act,
                offs: &offs,
            };
            dw_chunks
                .into_par_iter()
                .zip(db_chunks)
                .zip(dx_chunks)
                .enumerate()
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
            Some(tensor_from(dw, &[c, 1, g.kh, g.kw])?)
        } else {
            None
        };
        let db = if need_b {
            let mut db = vec![0f32; c];
            for part in db_parts.chunks_exact(c) {
                db.iter_mut().zip(part).for_each(|(a, v)| *a += v);
            }
            Some(tensor_from(db, &[c])?)
        } else {
            None
        };
        let dx = if need_x {
            Some(tensor_from(dx, &[g.b, c, g.h, g.w])?)
        } else {
            None
        };
        Ok((dx, dw, db))
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
}
