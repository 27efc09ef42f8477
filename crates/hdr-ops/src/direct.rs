//! Direct forward convolution (no im2col) for stride-1 layers with few taps and few filters:
//! LeNet-5's two convolutions (1 -> 6 and 6 -> 16, 5x5) and MobileNet-HDR's stem (1 -> 16, 3x3).
//!
//! im2col copies every input pixel `kh * kw` times, in runs one output row long (28 floats or
//! fewer), which for such layers costs more than their arithmetic. Here each input plane is
//! copied once into a zero-padded flat grid of the padded width `wp`, on which every tap is one
//! contiguous run at a fixed offset. Outputs are computed for whole grid rows (the `wp - ow`
//! cells past each row's end are discarded), `V` at a time, with one accumulator vector per
//! filter held in registers across all taps.

use std::mem::MaybeUninit;

use crate::conv::{Activation, ConvGeom};
use crate::depthwise::{flat_dispatch, has_avx2, ld, madd, V};

/// Largest `c_in * kh * kw` the direct path takes; beyond it gemm's cache blocking wins.
const MAX_TAPS: usize = 160;
/// Most filters.
const MAX_OUT: usize = 16;
/// Filters per pass over the taps, one register accumulator each. Measured on 1 -> 16 and
/// 6 -> 16 filters: 6 fastest; 4 10-30% slower; 8 three to seven times slower (the compiler
/// then vectorises across filters instead of across cells).
const BLOCK: usize = 6;

/// Whether [`Direct`] computes this convolution.
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.stride == 1 && g.c_out >= 1 && g.c_out <= MAX_OUT && g.k() <= MAX_TAPS && g.n() > 0
}

/// Geometry and repacked weights of one direct convolution.
pub(crate) struct Direct {
    g: ConvGeom,
    /// Padded width: the grid's row length.
    wp: usize,
    /// Floats per padded input plane, including the slack the last vector reads.
    plane: usize,
    /// Output grid cells (`oh * wp`), rounded up to whole vectors.
    cells: usize,
    /// Offset of each tap `(c, ki, kj)` in the padded input, for grid cell 0.
    taps: Vec<usize>,
    /// Per block of up to [`BLOCK`] filters: its first filter, and its weights by tap, then
    /// filter.
    blocks: Vec<(usize, Vec<f32>)>,
}

impl Direct {
    /// For `g` (where [`applies`]) and weights `w` `[c_out, c_in, kh, kw]`.
    pub(crate) fn new(g: &ConvGeom, w: &[f32]) -> Self {
        let (wp, hp) = (g.w + 2 * g.pad, g.h + 2 * g.pad);
        let cells = (g.oh * wp).div_ceil(V) * V;
        // The last vector of the last tap reads up to `(kh-1)*wp + kw-1 + cells` past the
        // plane's start.
        let plane = (hp * wp).max((g.kh - 1) * wp + g.kw - 1 + cells);
        let mut taps = Vec::with_capacity(g.k());
        for c in 0..g.c_in {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    taps.push(c * plane + ki * wp + kj);
                }
            }
        }
        let k = g.k();
        let blocks = (0..g.c_out)
            .step_by(BLOCK)
            .map(|o0| {
                let n = BLOCK.min(g.c_out - o0);
                let wt = (0..k * n).map(|i| w[(o0 + i % n) * k + i / n]).collect();
                (o0, wt)
            })
            .collect();
        Self {
            g: *g,
            wp,
            plane,
            cells,
            taps,
            blocks,
        }
    }

    /// Scratch floats [`Direct::image`] needs.
    pub(crate) fn scratch_len(&self) -> usize {
        self.g.c_in * self.plane + self.g.c_out * self.cells
    }

    /// One image: `x` `[c_in, h, w]` -> `y` `[c_out, oh, ow]` (every element written), with
    /// bias and activation.
    pub(crate) fn image(
        &self,
        x: &[f32],
        bias: &[f32],
        act: Activation,
        y: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        let g = &self.g;
        let (xp, grid) = scratch.split_at_mut(g.c_in * self.plane);
        xp.fill(0.0);
        for (c, src) in x.chunks_exact(g.h * g.w).enumerate() {
            for (r, row) in src.chunks_exact(g.w).enumerate() {
                xp[c * self.plane + (r + g.pad) * self.wp + g.pad..][..g.w].copy_from_slice(row);
            }
        }
        for (o0, wt) in &self.blocks {
            let n = wt.len() / self.taps.len();
            direct_grid(
                n,
                &self.taps,
                wt,
                xp,
                self.cells,
                &mut grid[o0 * self.cells..],
            );
        }
        let n = g.n();
        for (o, (y_o, &b)) in y.chunks_exact_mut(n).zip(bias).enumerate() {
            for (i, dst) in y_o.chunks_exact_mut(g.ow).enumerate() {
                let src = &grid[o * self.cells + i * self.wp..][..g.ow];
                for (d, &v) in dst.iter_mut().zip(src) {
                    d.write(match act {
                        Activation::None => v + b,
                        Activation::Relu => (v + b).max(0.0),
                    });
                }
            }
        }
    }
}

/// `grid[o][q] = sum_t wt[t][o] * xp[taps[t] + q]` for the `cells` grid cells, `CO` filters.
#[inline(always)]
fn grid_impl<const CO: usize, const FMA: bool>(
    taps: &[usize],
    wt: &[f32],
    xp: &[f32],
    cells: usize,
    grid: &mut [f32],
) {
    for b in (0..cells).step_by(V) {
        let mut acc = [[0f32; V]; CO];
        for (&off, wr) in taps.iter().zip(wt.chunks_exact(CO)) {
            let v = ld(xp, off + b);
            for (a, &wv) in acc.iter_mut().zip(wr) {
                madd::<FMA>(a, wv, &v);
            }
        }
        for (o, a) in acc.iter().enumerate() {
            grid[o * cells + b..][..V].copy_from_slice(a);
        }
    }
}

/// [`grid_impl`] for a filter count known at run time (1 to [`BLOCK`]).
#[inline(always)]
fn grid_any<const FMA: bool>(
    co: usize,
    taps: &[usize],
    wt: &[f32],
    xp: &[f32],
    cells: usize,
    grid: &mut [f32],
) {
    macro_rules! by_count {
        ($($n:literal)*) => {
            match co {
                $($n => grid_impl::<$n, FMA>(taps, wt, xp, cells, grid),)*
                _ => unreachable!("blocks hold 1 to BLOCK filters"),
            }
        };
    }
    by_count!(1 2 3 4 5 6)
}

flat_dispatch!(direct_grid => grid_any(
    co: usize, taps: &[usize], wt: &[f32], xp: &[f32], cells: usize, grid: &mut [f32],
));

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive convolution of one image, the reference.
    fn naive(g: &ConvGeom, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; g.out_img()];
        for o in 0..g.c_out {
            for i in 0..g.oh {
                for j in 0..g.ow {
                    let mut s = bias[o];
                    for c in 0..g.c_in {
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let (r, q) = (
                                    (i + ki) as isize - g.pad as isize,
                                    (j + kj) as isize - g.pad as isize,
                                );
                                if r >= 0 && q >= 0 && (r as usize) < g.h && (q as usize) < g.w {
                                    s += w[((o * g.c_in + c) * g.kh + ki) * g.kw + kj]
                                        * x[(c * g.h + r as usize) * g.w + q as usize];
                                }
                            }
                        }
                    }
                    y[(o * g.oh + i) * g.ow + j] = s;
                }
            }
        }
        y
    }

    #[test]
    fn direct_matches_naive_on_odd_shapes() {
        let val = |i: usize, k: usize| ((i * 7919 + k * 104729) % 1000) as f32 / 500.0 - 1.0;
        for &(c_in, c_out, h, w, k, pad) in &[
            (1, 6, 28, 28, 5, 2),
            (6, 16, 14, 14, 5, 0),
            (1, 16, 28, 28, 3, 1),
            (2, 1, 1, 1, 1, 0),
            (3, 5, 7, 9, 3, 2),
            (1, 16, 4, 3, 4, 1),
        ] {
            let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
            let g = ConvGeom {
                b: 1,
                c_in,
                h,
                w,
                c_out,
                kh: k,
                kw: k,
                stride: 1,
                pad,
                oh,
                ow,
            };
            assert!(applies(&g));
            let x: Vec<f32> = (0..g.in_img()).map(|i| val(i, 1)).collect();
            let wt: Vec<f32> = (0..c_out * g.k()).map(|i| val(i, 2)).collect();
            let bias: Vec<f32> = (0..c_out).map(|i| val(i, 3)).collect();
            let d = Direct::new(&g, &wt);
            // Scratch full of NaN: the kernel must not read what it did not write.
            let mut scratch = vec![f32::NAN; d.scratch_len()];
            for act in [Activation::None, Activation::Relu] {
                let mut y = vec![MaybeUninit::new(f32::NAN); g.out_img()];
                d.image(&x, &bias, act, &mut y, &mut scratch);
                // SAFETY: initialised above (NaN) and by the kernel.
                let y: Vec<f32> = y.into_iter().map(|v| unsafe { v.assume_init() }).collect();
                let mut want = naive(&g, &x, &wt, &bias);
                if act == Activation::Relu {
                    want.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{g:?}: {a} vs {b}");
                }
            }
        }
    }
}
