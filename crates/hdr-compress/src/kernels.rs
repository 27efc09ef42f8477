//! Integer kernels on NHWC u8 activations and int8 weights, accumulating in i32.
//!
//! The matrix product (u8 x i8 -> i32) is where SIMD pays most; it uses AVX-512 VNNI
//! (`vpdpbusd`, 16 lanes) or AVX-VNNI (8 lanes) when the CPU has them, AVX2 (`vpmaddwd` on
//! codes widened to i16) on CPUs without VNNI, detected at run time, and a portable loop
//! otherwise. Integer sums are exact, so every path gives bit-identical results; everything
//! after the sums (requantization, pooling, additions) is shared code, compiled for AVX-512 or
//! AVX2 where the CPU has them (requantization with hand-written AVX2 on 32-bit lanes).
//!
//! Requantization multiplies an i32 accumulator by a real factor held as a 31-bit fixed-point
//! mantissa and a right shift, and rounds **half away from zero**, like [`QuantParams`]'s
//! `f32::round`.
//!
//! [`QuantParams`]: crate::QuantParams

use rayon::prelude::*;

use crate::error::{CompressError, Result};
use crate::quant::QuantParams as Params;

/// Largest reduction length: `K * 255 * 127` must fit in an i32 accumulator.
pub const MAX_K: usize = 65_536;

/// Which instructions the matrix product uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI: `vpdpbusd` on 512-bit vectors.
    Avx512Vnni,
    /// AVX-VNNI: `vpdpbusd` on 256-bit vectors (VEX-encoded).
    AvxVnni,
    /// AVX2 without VNNI: codes widened to i16 and `vpmaddwd`, which sums pairs of products
    /// into i32 lanes without saturating (unlike `vpmaddubsw`), so the sums stay exact.
    Avx2,
    /// Plain Rust, auto-vectorised; same results.
    Portable,
}

impl Isa {
    /// Every path, fastest first.
    pub const ALL: [Self; 4] = [Self::Avx512Vnni, Self::AvxVnni, Self::Avx2, Self::Portable];

    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        Self::ALL
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Self::Portable)
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Output channels per SIMD block: one 512-bit vector of i32 lanes.
const NB: usize = 16;

/// Int8 weights `[n][k]` laid out for the matrix product.
///
/// Weights packed by [`PackedWeights::conv`] keep a convolution's window rows apart: each row of
/// `kernel * in_channels` codes is zero padded to a multiple of 4, so that [`conv2d`] can read
/// the activations of a window row in place (an NHWC image row is contiguous) instead of
/// copying every patch out first.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    /// Codes per row as stored: `taps` runs of `kp / taps` (a multiple of 4) codes.
    kp: usize,
    /// Runs the reduction is split into: 1 for a plain matrix, the kernel height for weights
    /// packed for a convolution.
    taps: usize,
    /// `[n][kp]`, zero padded: the portable path.
    rows: Vec<i8>,
    /// `[n / 16][kp / 4][16][4]`, zero padded: one 64-byte vector per group of 4 k's.
    blocks: Vec<i8>,
    /// `[n / 16][kp2 / 2][16][2]` widened to i16, zero padded: two 32-byte vectors per pair of
    /// k's, for [`Isa::Avx2`].
    pairs: Vec<i16>,
    /// Codes per row in `pairs`: `taps` runs of `kp2 / taps` (a multiple of 2, not 4: a
    /// 5-tap window row costs 3 pairs, not 4) codes.
    kp2: usize,
    /// Row sums, for the activation zero-point correction.
    sums: Vec<i32>,
}

impl PackedWeights {
    /// Packs `w`, `n` rows of `k` codes.
    pub fn new(w: &[i8], n: usize, k: usize) -> Result<Self> {
        if n == 0 || k == 0 || k > MAX_K || w.len() != n * k {
            return Err(CompressError::InvalidConfig {
                name: "weights",
                value: format!("{} codes as {n} x {k}", w.len()),
                reason: "need n, k >= 1, k <= 65536 and n * k codes",
            });
        }
        Ok(Self::pack(w, n, k, 1))
    }

    /// Packs convolution weights `[n][ky][kx][in_channels]` for [`conv2d`]: `n` rows of
    /// `kernel * kernel * in_channels` codes, each window row padded to a multiple of 4.
    pub fn conv(w: &[i8], n: usize, kernel: usize, in_channels: usize) -> Result<Self> {
        let k = kernel * kernel * in_channels;
        if n == 0 || k == 0 || k > MAX_K || w.len() != n * k {
            return Err(CompressError::InvalidConfig {
                name: "convolution weights",
                value: format!(
                    "{} codes as {n} filters of {kernel} x {kernel} x {in_channels}",
                    w.len()
                ),
                reason: "need n, kernel, channels >= 1, k <= 65536 and n * k codes",
            });
        }
        Ok(Self::pack(w, n, k, kernel))
    }

    /// `w` (`n` rows of `k` codes) split into `taps` runs per row, each padded to a multiple
    /// of 4; `taps` divides `k`.
    fn pack(w: &[i8], n: usize, k: usize, taps: usize) -> Self {
        let run = k / taps;
        let run4 = run.div_ceil(4) * 4;
        let kp = taps * run4;
        let run2 = run.div_ceil(2) * 2;
        let kp2 = taps * run2;
        let nblocks = n.div_ceil(NB);
        let mut rows = vec![0i8; n * kp];
        let mut blocks = vec![0i8; nblocks * NB * kp];
        let mut pairs = vec![0i16; nblocks * NB * kp2];
        let mut sums = vec![0i32; n];
        for j in 0..n {
            let src = &w[j * k..(j + 1) * k];
            sums[j] = src.iter().map(|&v| v as i32).sum();
            let (b, lane) = (j / NB, j % NB);
            for (t, part) in src.chunks(run).enumerate() {
                rows[j * kp + t * run4..][..run].copy_from_slice(part);
                for (i, &v) in part.iter().enumerate() {
                    let kk = t * run2 + i;
                    pairs[b * NB * kp2 + (kk / 2) * NB * 2 + lane * 2 + kk % 2] = v as i16;
                }
            }
            for (kk, &v) in rows[j * kp..(j + 1) * kp].iter().enumerate() {
                blocks[b * NB * kp + (kk / 4) * NB * 4 + lane * 4 + kk % 4] = v;
            }
        }
        Self {
            n,
            k,
            kp,
            taps,
            rows,
            blocks,
            pairs,
            kp2,
            sums,
        }
    }

    /// The codes `[n][k]` as given to the constructor.
    fn codes(&self) -> Vec<i8> {
        let (run, run4) = (self.k / self.taps, self.kp / self.taps);
        self.rows
            .chunks(run4)
            .flat_map(|r| r[..run].iter().copied())
            .collect()
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Reduction length padded to a multiple of 4: the row stride activations must have
    /// (for [`gemm_u8i8`], which takes weights from [`PackedWeights::new`] only).
    pub fn padded_k(&self) -> usize {
        self.kp
    }

    /// Sum of each row's codes.
    pub fn row_sums(&self) -> &[i32] {
        &self.sums
    }
}

/// `out[r][j] = sum_k a[r * lda + k] * w[j][k]` for `m` rows, exactly, in i32.
///
/// `a` rows are `lda >= w.padded_k()` bytes apart and must be zero (or anything, times zero
/// weights) beyond `k`; `out` is `m * w.n()`. `w` comes from [`PackedWeights::new`].
pub fn gemm_u8i8(
    isa: Isa,
    a: &[u8],
    m: usize,
    lda: usize,
    w: &PackedWeights,
    out: &mut [i32],
) -> Result<()> {
    gemm_u8i8_on(isa, a, m, lda, w, Threads::Pool, out)
}

/// [`gemm_u8i8`] on the given threads.
pub(crate) fn gemm_u8i8_on(
    isa: Isa,
    a: &[u8],
    m: usize,
    lda: usize,
    w: &PackedWeights,
    threads: Threads,
    out: &mut [i32],
) -> Result<()> {
    let n = w.n;
    if w.taps != 1 || lda < w.kp || a.len() < m.saturating_sub(1) * lda + w.kp || out.len() != m * n
    {
        return Err(CompressError::InvalidConfig {
            name: "gemm",
            value: format!(
                "m {m}, lda {lda}, kp {}, taps {}, a {}, out {}",
                w.kp,
                w.taps,
                a.len(),
                out.len()
            ),
            reason: "buffers do not match the shapes (or the weights are packed for a convolution)",
        });
    }
    if m == 0 {
        return Ok(());
    }
    let isa = if isa.available() { isa } else { Isa::Portable };
    // Split rows across threads when there is enough work to amortise the fork.
    let work = m * w.kp * n;
    let chunk = if threads == Threads::Pool && work >= (1 << 21) && m >= 8 {
        m.div_ceil(rayon::current_num_threads().max(1) * 4).max(4)
    } else {
        m
    };
    if chunk >= m {
        // One chunk: stay on this thread (handing work to the pool costs a wake-up).
        return gemm_at(isa, a, m, Rows::Strided(lda), 0, 1, w, out);
    }
    out.par_chunks_mut(chunk * n)
        .enumerate()
        .try_for_each(|(c, o)| {
            let r0 = c * chunk;
            gemm_at(
                isa,
                &a[r0 * lda..],
                o.len() / n,
                Rows::Strided(lda),
                0,
                1,
                w,
                o,
            )
        })
}

/// Start offsets of a product's rows, with their maximum, so that bounds are checked once
/// per product rather than once per row.
#[derive(Debug, Clone)]
struct RowTable {
    offsets: Vec<usize>,
    min: usize,
    max: usize,
}

impl RowTable {
    fn new(offsets: Vec<usize>) -> Self {
        let min = offsets.iter().copied().min().unwrap_or(0);
        let max = offsets.iter().copied().max().unwrap_or(0);
        Self { offsets, min, max }
    }
}

/// Where the rows of a product start in its activations.
#[derive(Debug, Clone, Copy)]
enum Rows<'a> {
    /// Row `r` at `r * stride`.
    Strided(usize),
    /// Row `r` at `base + table[r]`.
    Table(&'a RowTable, usize),
}

impl Rows<'_> {
    #[inline(always)]
    fn at(self, r: usize) -> usize {
        match self {
            Self::Strided(stride) => r * stride,
            Self::Table(t, base) => base + t.offsets[r],
        }
    }

    /// Bytes `lo..hi` covering every run of rows `..m` (at most: a table's whole range),
    /// each `span` bytes long; `m >= 1` and [`Rows::last`] checked.
    fn extent(self, m: usize, span: usize) -> (usize, usize) {
        match self {
            Self::Strided(stride) => (0, (m - 1) * stride + span),
            Self::Table(t, base) => (base + t.min, base + t.max + span),
        }
    }

    /// The largest start among rows `..m` (at most), or `None` when there are no such rows.
    fn last(self, m: usize) -> Option<usize> {
        match self {
            Self::Strided(stride) => m.checked_sub(1)?.checked_mul(stride),
            Self::Table(t, base) if m <= t.offsets.len() => base.checked_add(t.max),
            Self::Table(..) => None,
        }
    }
}

/// The matrix product on activations read in place, with an optional max over groups of
/// rows: row `r`'s codes for window row `t` are the `w.padded_k() / taps` bytes at
/// `a[rows.at(r) + t * tap_stride..]` (for a plain matrix, one run at `rows.at(r)`), and
/// output row `p` is the element-wise maximum of product rows `p * group..(p + 1) * group`
/// (a fused max pool when the rows of a group are the pixels of a pooling window). Bounds are
/// checked here, once, for the SIMD kernels.
#[allow(clippy::too_many_arguments)]
fn gemm_at(
    isa: Isa,
    a: &[u8],
    m: usize,
    rows: Rows<'_>,
    tap_stride: usize,
    group: usize,
    w: &PackedWeights,
    out: &mut [i32],
) -> Result<()> {
    // Bytes from a row's start to the end of its last run.
    let span = (w.taps - 1)
        .checked_mul(tap_stride)
        .and_then(|s| s.checked_add(w.kp / w.taps));
    let fits = m == 0
        || rows
            .last(m)
            .zip(span)
            .and_then(|(l, s)| l.checked_add(s))
            .is_some_and(|e| e <= a.len());
    if !fits || group == 0 || !m.is_multiple_of(group) || out.len() != m / group * w.n {
        return Err(CompressError::InvalidConfig {
            name: "gemm",
            value: format!(
                "{m} rows of span {span:?} in {} bytes, groups of {group}",
                a.len()
            ),
            reason: "activation rows reach beyond the buffer, or the output does not match",
        });
    }
    if m == 0 {
        return Ok(());
    }
    let geo = Geometry {
        taps: w.taps,
        tap_stride,
        groups: w.kp / w.taps / 4,
        pairs: w.kp2 / w.taps / 2,
        rows: group,
    };
    let row = move |r: usize| rows.at(r);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller picked an available `isa`; every row's runs lie inside `a`
        // (checked above) and `out` holds `m / group * n` values.
        Isa::Avx512Vnni => unsafe { x86::gemm_avx512(a, m, row, geo, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX-VNNI.
        Isa::AvxVnni => unsafe { x86::gemm_avx256(a, m, row, geo, w, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // `vpmaddwd` takes i16 codes: widen the bytes every row reads, once.
            let (lo, hi) = rows.extent(m, span.unwrap_or(0));
            WIDE.with_borrow_mut(|wide| {
                // SAFETY: AVX2 is available (the caller's `isa`).
                unsafe { x86::widen_avx2(&a[lo..hi], wide) };
                // SAFETY: AVX2 is available (the caller's `isa`); every row's runs lie inside
                // `wide` (the rows' extent, shifted by `lo`) and `out` holds `m / group * n`.
                unsafe { x86::gemm_avx2(wide, m, |r| row(r) - lo, geo, w, out) }
            });
        }
        _ => gemm_portable(a, m, row, geo, w, out),
    }
    Ok(())
}

thread_local! {
    /// The widened activations of [`Isa::Avx2`] products, reused from call to call.
    static WIDE: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where a row's codes are, beyond its start: `taps` runs of `groups` 4-byte groups (for
/// [`Isa::Avx2`], of `pairs` 2-code pairs), `tap_stride` bytes apart; and how many
/// consecutive rows one output row is the maximum of.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    taps: usize,
    tap_stride: usize,
    groups: usize,
    pairs: usize,
    rows: usize,
}

fn gemm_portable<F: Fn(usize) -> usize>(
    a: &[u8],
    m: usize,
    row: F,
    g: Geometry,
    w: &PackedWeights,
    out: &mut [i32],
) {
    let (n, kp, run) = (w.n, w.kp, 4 * g.groups);
    for (p, o) in out.chunks_mut(n).enumerate().take(m / g.rows) {
        o.fill(i32::MIN);
        for r in p * g.rows..(p + 1) * g.rows {
            let base = row(r);
            for (y, wr) in o.iter_mut().zip(w.rows.chunks(kp)) {
                let mut s = 0i32;
                for (t, wt) in wr.chunks(run).enumerate() {
                    let x = &a[base + t * g.tap_stride..][..run];
                    s += x
                        .iter()
                        .zip(wt)
                        .map(|(&x, &y)| x as i32 * y as i32)
                        .sum::<i32>();
                }
                *y = (*y).max(s);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        quantize_loop, requant_code, DwPairs, DwRow, Geometry, PackedWeights, Params, RequantTile,
        NB,
    };

    /// # Safety
    /// The CPU must have AVX-512F, DQ, BW and VL.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub(super) unsafe fn requant_avx512(acc: &[i32], out: &mut [u8], t: &RequantTile) {
        // Written out rather than left to the compiler: it vectorises the arithmetic of
        // `requant_tiles` but converts to bytes lane by lane (63% of MobileNet-HDR's int8 time
        // at batch 256). Same IEEE operations as `requant_code`, so the same codes.
        let (lo, hi) = (_mm512_set1_ps(t.min), _mm512_set1_ps(t.max));
        for (a, o) in acc.chunks(t.len).zip(out.chunks_mut(t.len)) {
            let mut i = 0;
            while i < a.len() {
                let m: __mmask16 = if a.len() - i >= 16 {
                    0xffff
                } else {
                    (1u16 << (a.len() - i)) - 1
                };
                // SAFETY: the mask covers lanes `i..a.len()` only, which are inside `a`, `o` and
                // the tile vectors (`a.len() <= t.len`); the codes are clamped to [0, 255]
                // before the unsigned saturating narrowing.
                unsafe {
                    let x = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, a.as_ptr().add(i)));
                    let s = _mm512_maskz_loadu_ps(m, t.scale.as_ptr().add(i));
                    let b = _mm512_maskz_loadu_ps(m, t.offset.as_ptr().add(i));
                    let y = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(x, s, b), lo), hi);
                    // The default rounding mode: to nearest, ties to even.
                    let q = _mm512_cvtps_epi32(y);
                    _mm512_mask_cvtusepi32_storeu_epi8(o.as_mut_ptr().add(i) as *mut _, m, q);
                }
                i += 16;
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F, DQ, BW and VL.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_avx512(x: &[f32], p: Params, out: &mut [u8]) {
        quantize_loop(x, p, out)
    }

    /// The requantized codes of accumulators `a[i..i + 8]` (tile positions `i..`), as i32
    /// lanes: [`requant_code`] on 8 lanes.
    ///
    /// # Safety
    /// AVX2 and FMA; `i + 8 <= a.len()` and `i + 8 <= t.len`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn requant8(a: &[i32], i: usize, t: &RequantTile) -> __m256i {
        // SAFETY: the caller's bounds; the tile vectors hold `t.len` values.
        unsafe {
            let x = _mm256_cvtepi32_ps(_mm256_loadu_si256(a.as_ptr().add(i) as *const _));
            let s = _mm256_loadu_ps(t.scale.as_ptr().add(i));
            let b = _mm256_loadu_ps(t.offset.as_ptr().add(i));
            let y = _mm256_fmadd_ps(x, s, b);
            let y = _mm256_min_ps(
                _mm256_max_ps(y, _mm256_set1_ps(t.min)),
                _mm256_set1_ps(t.max),
            );
            // The default rounding mode: to nearest, ties to even.
            _mm256_cvtps_epi32(y)
        }
    }

    /// [`requant_tiles`] on 8-lane vectors ([`requant8`]). Same arithmetic, same results.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn requant_avx2(acc: &[i32], out: &mut [u8], t: &RequantTile) {
        // Bytes of four packed vectors back in lane order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (a, o) in acc.chunks(t.len).zip(out.chunks_mut(t.len)) {
            let mut i = 0;
            // SAFETY (both loops): `i + 32` (`i + 8`) is within the chunk, which is at most
            // `t.len` long; codes are in [0, 255], which the saturating packs keep.
            unsafe {
                while i + 32 <= a.len() {
                    let y: [__m256i; 4] = std::array::from_fn(|v| requant8(a, i + 8 * v, t));
                    let w = _mm256_packus_epi16(
                        _mm256_packus_epi32(y[0], y[1]),
                        _mm256_packus_epi32(y[2], y[3]),
                    );
                    let w = _mm256_permutevar8x32_epi32(w, order);
                    _mm256_storeu_si256(o.as_mut_ptr().add(i) as *mut _, w);
                    i += 32;
                }
                while i + 8 <= a.len() {
                    let y = requant8(a, i, t);
                    let w =
                        _mm256_packus_epi16(_mm256_packus_epi32(y, y), _mm256_packus_epi32(y, y));
                    let w = _mm256_permutevar8x32_epi32(w, order);
                    _mm_storel_epi64(o.as_mut_ptr().add(i) as *mut _, _mm256_castsi256_si128(w));
                    i += 8;
                }
            }
            for j in i..a.len() {
                o[j] = requant_code(a[j], t.scale[j], t.offset[j], t.min, t.max);
            }
        }
    }

    /// [`depthwise_row`] by `vpmaddwd` on pairs of taps, 16 channels at a time, with `p`'s
    /// interleaved weights; taps outside the image read `p.zrow` (the zero point, so
    /// subtracting `z * sum w` cancels them). Integer sums in another order: the same values.
    ///
    /// # Safety
    /// The CPU must have AVX2; `p` built for `r`'s weights, channels and zero point.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn depthwise_row_pairs(
        r: &DwRow<'_>,
        p: &DwPairs,
        oy: usize,
        acc: &mut [i32],
    ) {
        let (s, c, k) = (r.s, r.s.in_channels, r.s.kernel);
        let mut taps = vec![p.zrow.as_ptr(); 2 * p.pairs];
        let full = c / 16;
        // 16 zeroed bytes per tap for the last partial chunk, written and read only through
        // `bounce`; not allocated when the channels fill whole chunks (this runs once per row).
        let partial = full < p.chunks;
        let mut buffer = if partial {
            vec![0u8; 32 * p.pairs]
        } else {
            Vec::new()
        };
        let bounce = buffer.as_mut_ptr();
        let bounced: Vec<*const u8> = match partial {
            true => (0..2 * p.pairs)
                .map(|i| bounce.wrapping_add(16 * i) as *const u8)
                .collect(),
            false => Vec::new(),
        };
        for ox in 0..r.ow {
            for ky in 0..k {
                for kx in 0..k {
                    let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                    let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                    let inside =
                        iy >= 0 && ix >= 0 && (iy as usize) < s.height && (ix as usize) < s.width;
                    taps[ky * k + kx] = if inside {
                        r.x[(iy as usize * s.width + ix as usize) * c..].as_ptr()
                    } else {
                        p.zrow.as_ptr()
                    };
                }
            }
            let o = &mut acc[ox * c..][..c];
            // SAFETY: every tap points at `c` codes (a pixel of the image, or `zrow`), so
            // the 16 bytes at `16 * ch` are inside for `ch < full`; `p.w` holds `chunks * pairs`
            // pairs of 16-lane vectors and `zsum` `16 * chunks` values; `o` holds `c`.
            unsafe {
                for ch in 0..full {
                    dw_chunk(&taps, 16 * ch, p, ch, o.as_mut_ptr().add(16 * ch));
                }
                if partial {
                    // The last channels through a zeroed copy, against zero-padded weights.
                    let rest = c - 16 * full;
                    for (i, &t) in taps.iter().enumerate() {
                        std::ptr::copy_nonoverlapping(t.add(16 * full), bounce.add(16 * i), rest);
                    }
                    let mut out = [0i32; 16];
                    dw_chunk(&bounced, 0, p, full, out.as_mut_ptr());
                    o[16 * full..].copy_from_slice(&out[..rest]);
                }
            }
        }
    }

    /// Channels `16 * ch..16 * ch + 16` of one output pixel into `out`: taps read at byte
    /// `at` of each pointer.
    ///
    /// # Safety
    /// AVX2; 16 bytes readable at `at` of every tap, `ch < p.chunks`, 16 values at `out`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dw_chunk(taps: &[*const u8], at: usize, p: &DwPairs, ch: usize, out: *mut i32) {
        // SAFETY: the caller's contract.
        unsafe {
            let mut lo = _mm256_setzero_si256();
            let mut hi = _mm256_setzero_si256();
            let wv = p.w.as_ptr().add(ch * p.pairs * 32);
            for q in 0..p.pairs {
                let ld =
                    |t: *const u8| _mm256_cvtepu8_epi16(_mm_loadu_si128(t.add(at) as *const _));
                let (a, b) = (ld(taps[2 * q]), ld(taps[2 * q + 1]));
                let wl = _mm256_loadu_si256(wv.add(32 * q) as *const _);
                let wh = _mm256_loadu_si256(wv.add(32 * q + 16) as *const _);
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), wl));
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), wh));
            }
            // `lo` holds channels 0-3 and 8-11, `hi` 4-7 and 12-15.
            let zs = p.zsum.as_ptr().add(16 * ch);
            let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
            let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
            let first = _mm256_sub_epi32(first, _mm256_loadu_si256(zs as *const _));
            let second = _mm256_sub_epi32(second, _mm256_loadu_si256(zs.add(8) as *const _));
            _mm256_storeu_si256(out as *mut _, first);
            _mm256_storeu_si256(out.add(8) as *mut _, second);
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_avx2(x: &[f32], p: Params, out: &mut [u8]) {
        quantize_loop(x, p, out)
    }

    /// The accumulators of `R` rows (starting at byte offsets `rows` of `a`) times one block
    /// of 16 output channels.
    ///
    /// # Safety
    /// AVX-512F and VNNI; every run of every row inside `a`; `bp` the block's
    /// `taps * groups` 64-byte vectors.
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn tile512<const R: usize>(
        a: *const u8,
        rows: [usize; R],
        g: Geometry,
        bp: *const i8,
    ) -> [__m512i; R] {
        let mut acc = [_mm512_setzero_si512(); R];
        let mut wq = bp;
        for t in 0..g.taps {
            // SAFETY: the caller's contract covers every pointer formed here.
            unsafe {
                let mut p = rows.map(|o| a.add(o + t * g.tap_stride));
                for _ in 0..g.groups {
                    // All rows of the tile share each weight vector load.
                    let wv = _mm512_loadu_si512(wq as *const _);
                    for (acc, p) in acc.iter_mut().zip(p.iter_mut()) {
                        let x = (*p as *const i32).read_unaligned();
                        *acc = _mm512_dpbusd_epi32(*acc, _mm512_set1_epi32(x), wv);
                        *p = p.add(4);
                    }
                    wq = wq.add(64);
                }
            }
        }
        acc
    }

    /// Output rows under construction: the running maximum of a group of product rows.
    struct Reduce512 {
        out: *mut i32,
        n: usize,
        mask: __mmask16,
        rows: usize,
        seen: usize,
        max: __m512i,
    }

    impl Reduce512 {
        /// Folds the next product rows in, storing each finished output row.
        ///
        /// # Safety
        /// AVX-512F; `out` has room for every output row these product rows finish.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn push(&mut self, acc: &[__m512i]) {
            for &v in acc {
                self.max = _mm512_max_epi32(self.max, v);
                self.seen += 1;
                if self.seen == self.rows {
                    // SAFETY: the caller's contract; the mask selects the valid lanes.
                    unsafe { _mm512_mask_storeu_epi32(self.out, self.mask, self.max) };
                    // Past the last output row this points beyond `out`, never dereferenced.
                    self.out = self.out.wrapping_add(self.n);
                    self.seen = 0;
                    self.max = _mm512_set1_epi32(i32::MIN);
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 VNNI; `row(r) + (taps - 1) * tap_stride +
    /// 4 * groups <= a.len()` for every `r < m`; `m` a multiple of `g.rows`; `out` holds
    /// `m / g.rows * w.n` values.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn gemm_avx512<F: Fn(usize) -> usize>(
        a: &[u8],
        m: usize,
        row: F,
        g: Geometry,
        w: &PackedWeights,
        out: &mut [i32],
    ) {
        let (n, kp) = (w.n, w.kp);
        let ap = a.as_ptr();
        for b in 0..n.div_ceil(NB) {
            let bp = w.blocks[b * NB * kp..].as_ptr();
            let valid = (n - b * NB).min(NB);
            let mut red = Reduce512 {
                out: out[b * NB..].as_mut_ptr(),
                n,
                mask: if valid == NB { !0 } else { (1 << valid) - 1 },
                rows: g.rows,
                seen: 0,
                max: _mm512_set1_epi32(i32::MIN),
            };
            let mut r = 0;
            // SAFETY (all three loops): rows r.. lie inside `a` (the contract), block b has
            // kp / 4 vectors, and the output rows they finish lie inside `out`, whose lanes
            // b*16.. hold `valid` channels.
            while r + 8 <= m {
                let rows = std::array::from_fn(|i| row(r + i));
                unsafe { red.push(&tile512::<8>(ap, rows, g, bp)) };
                r += 8;
            }
            if r + 4 <= m {
                let rows = std::array::from_fn(|i| row(r + i));
                unsafe { red.push(&tile512::<4>(ap, rows, g, bp)) };
                r += 4;
            }
            while r < m {
                unsafe { red.push(&tile512::<1>(ap, [row(r)], g, bp)) };
                r += 1;
            }
        }
    }

    /// As [`tile512`] with two 8-lane halves per block.
    ///
    /// # Safety
    /// AVX2 and AVX-VNNI; otherwise as [`tile512`].
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    unsafe fn tile256<const R: usize>(
        a: *const u8,
        rows: [usize; R],
        g: Geometry,
        bp: *const i8,
    ) -> [[__m256i; 2]; R] {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        let mut wq = bp;
        for t in 0..g.taps {
            // SAFETY: the caller's contract covers every pointer formed here.
            unsafe {
                let mut p = rows.map(|o| a.add(o + t * g.tap_stride));
                for _ in 0..g.groups {
                    let lo = _mm256_loadu_si256(wq as *const _);
                    let hi = _mm256_loadu_si256(wq.add(32) as *const _);
                    for (acc, p) in acc.iter_mut().zip(p.iter_mut()) {
                        let x = _mm256_set1_epi32((*p as *const i32).read_unaligned());
                        acc[0] = _mm256_dpbusd_avx_epi32(acc[0], x, lo);
                        acc[1] = _mm256_dpbusd_avx_epi32(acc[1], x, hi);
                        *p = p.add(4);
                    }
                    wq = wq.add(64);
                }
            }
        }
        acc
    }

    /// [`Reduce512`] for two 8-lane halves, storing the first `valid` lanes.
    struct Reduce256 {
        out: *mut i32,
        n: usize,
        valid: usize,
        /// Lanes `..valid` of the two halves, for `vpmaskmovd`.
        mask: [__m256i; 2],
        rows: usize,
        seen: usize,
        max: [__m256i; 2],
    }

    impl Reduce256 {
        /// For the block whose `valid` channels start at `out`, output rows `n` apart, each
        /// the maximum of `rows` product rows.
        #[target_feature(enable = "avx2")]
        #[inline]
        fn new(out: *mut i32, n: usize, valid: usize, rows: usize) -> Self {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let below = |v: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(v as i32), lanes);
            Self {
                out,
                n,
                valid,
                mask: [below(valid.min(8)), below(valid.saturating_sub(8))],
                rows,
                seen: 0,
                max: [_mm256_set1_epi32(i32::MIN); 2],
            }
        }

        /// # Safety
        /// AVX2; `out` has room for every output row these product rows finish.
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn push(&mut self, acc: &[[__m256i; 2]]) {
            for v in acc {
                self.max = [
                    _mm256_max_epi32(self.max[0], v[0]),
                    _mm256_max_epi32(self.max[1], v[1]),
                ];
                self.seen += 1;
                if self.seen == self.rows {
                    if self.valid == NB {
                        // SAFETY: the caller's contract: `NB` values at `out`.
                        unsafe {
                            _mm256_storeu_si256(self.out as *mut _, self.max[0]);
                            _mm256_storeu_si256(self.out.add(8) as *mut _, self.max[1]);
                        }
                    } else {
                        // A partial block: masked stores write lanes `..valid` only (a copy of
                        // runtime length would be a library call per output row).
                        // SAFETY: the caller's contract for `valid` values at `out`; masked-off
                        // lanes are neither read nor written.
                        unsafe {
                            _mm256_maskstore_epi32(self.out, self.mask[0], self.max[0]);
                            if self.valid > 8 {
                                _mm256_maskstore_epi32(self.out.add(8), self.mask[1], self.max[1]);
                            }
                        }
                    }
                    self.out = self.out.wrapping_add(self.n);
                    self.seen = 0;
                    self.max = [_mm256_set1_epi32(i32::MIN); 2];
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI; buffers as for [`gemm_avx512`].
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn gemm_avx256<F: Fn(usize) -> usize>(
        a: &[u8],
        m: usize,
        row: F,
        g: Geometry,
        w: &PackedWeights,
        out: &mut [i32],
    ) {
        let (n, kp) = (w.n, w.kp);
        let ap = a.as_ptr();
        for b in 0..n.div_ceil(NB) {
            let bp = w.blocks[b * NB * kp..].as_ptr();
            let valid = (n - b * NB).min(NB);
            let mut red = Reduce256::new(out[b * NB..].as_mut_ptr(), n, valid, g.rows);
            let mut r = 0;
            // SAFETY: as in `gemm_avx512`.
            while r + 4 <= m {
                let rows = std::array::from_fn(|i| row(r + i));
                unsafe { red.push(&tile256::<4>(ap, rows, g, bp)) };
                r += 4;
            }
            while r < m {
                unsafe { red.push(&tile256::<1>(ap, [row(r)], g, bp)) };
                r += 1;
            }
        }
    }

    /// As [`tile256`] on i16 codes: `vpmaddwd` multiplies a pair of activations (broadcast)
    /// by a pair of weights per channel and adds the two products into an i32 lane, exactly.
    ///
    /// # Safety
    /// AVX2; every run of every row inside `a`; `bp` the block's `taps * pairs` pairs of
    /// 32-byte vectors.
    /// With `WIDE == false` only the first 8 channels of the block are computed (the others
    /// stay zero), for blocks of at most 8 valid channels.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile_pairs<const R: usize, const WIDE: bool>(
        a: *const i16,
        rows: [usize; R],
        g: Geometry,
        bp: *const i16,
    ) -> [[__m256i; 2]; R] {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        let mut wq = bp;
        for t in 0..g.taps {
            // SAFETY: the caller's contract covers every pointer formed here.
            unsafe {
                let mut p = rows.map(|o| a.add(o + t * g.tap_stride));
                for _ in 0..g.pairs {
                    let lo = _mm256_loadu_si256(wq as *const _);
                    let hi = if WIDE {
                        _mm256_loadu_si256(wq.add(16) as *const _)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for (acc, p) in acc.iter_mut().zip(p.iter_mut()) {
                        let x = _mm256_set1_epi32((*p as *const i32).read_unaligned());
                        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, lo));
                        if WIDE {
                            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, hi));
                        }
                        *p = p.add(2);
                    }
                    wq = wq.add(32);
                }
            }
        }
        acc
    }

    /// All `m` rows of one block, 6 at a time (12 accumulators, 2 weight vectors and a
    /// broadcast fill the 16 registers).
    ///
    /// # Safety
    /// As [`gemm_avx2`], for the block at `bp` whose outputs `red` stores.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn pair_rows<const WIDE: bool>(
        ap: *const i16,
        m: usize,
        row: &impl Fn(usize) -> usize,
        g: Geometry,
        bp: *const i16,
        red: &mut Reduce256,
    ) {
        let mut r = 0;
        // SAFETY: the caller's contract.
        unsafe {
            while r + 6 <= m {
                let rows = std::array::from_fn(|i| row(r + i));
                red.push(&tile_pairs::<6, WIDE>(ap, rows, g, bp));
                r += 6;
            }
            // The last rows in one tile: one pass over the block's weights, not one per row.
            let at = |i: usize| row(r + i);
            match m - r {
                5 => red.push(&tile_pairs::<5, WIDE>(ap, std::array::from_fn(at), g, bp)),
                4 => red.push(&tile_pairs::<4, WIDE>(ap, std::array::from_fn(at), g, bp)),
                3 => red.push(&tile_pairs::<3, WIDE>(ap, std::array::from_fn(at), g, bp)),
                2 => red.push(&tile_pairs::<2, WIDE>(ap, std::array::from_fn(at), g, bp)),
                1 => red.push(&tile_pairs::<1, WIDE>(ap, [row(r)], g, bp)),
                _ => {}
            }
        }
    }

    /// `a` widened to i16 into `out` (replacing its contents), vectorised for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn widen_avx2(a: &[u8], out: &mut Vec<i16>) {
        out.clear();
        out.extend(a.iter().map(|&v| v as i16));
    }

    /// # Safety
    /// The CPU must have AVX2; `a` holds the codes widened to i16, otherwise as for
    /// [`gemm_avx512`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm_avx2<F: Fn(usize) -> usize>(
        a: &[i16],
        m: usize,
        row: F,
        g: Geometry,
        w: &PackedWeights,
        out: &mut [i32],
    ) {
        let (n, kp2) = (w.n, w.kp2);
        let ap = a.as_ptr();
        for b in 0..n.div_ceil(NB) {
            let bp = w.pairs[b * NB * kp2..].as_ptr();
            let valid = (n - b * NB).min(NB);
            let mut red = Reduce256::new(out[b * NB..].as_mut_ptr(), n, valid, g.rows);
            // SAFETY: as in `gemm_avx512`.
            if red.valid > 8 {
                unsafe { pair_rows::<true>(ap, m, &row, g, bp, &mut red) };
            } else {
                unsafe { pair_rows::<false>(ap, m, &row, g, bp, &mut red) };
            }
        }
    }
}

/// Quantizes f32 values to u8 codes: [`Params::quantize_u8`] of every value.
pub(crate) fn quantize_u8_into(x: &[f32], p: Params, out: &mut Vec<u8>) {
    out.clear();
    match simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => {
            out.resize(x.len(), 0);
            // SAFETY: `simd` confirmed AVX-512F/DQ/BW/VL.
            unsafe { x86::quantize_avx512(x, p, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => {
            out.resize(x.len(), 0);
            // SAFETY: `simd` confirmed AVX2.
            unsafe { x86::quantize_avx2(x, p, out) }
        }
        _ => out.extend(x.iter().map(|&v| p.quantize_u8(v))),
    }
}

/// [`Params::quantize_u8`] without float-to-integer casts, whose saturation does not
/// vectorise: same division, same rounding of `|v| < 2^23` (trunc of `v +- 0.5`); larger
/// magnitudes and infinities clamp to the same end (0 or 255), NaN gives 0 as the cast does,
/// and the clamped integer in `[0, 255]` is read from the low mantissa bits of `y + 2^23`.
#[inline(always)]
fn quantize_code(x: f32, scale: f32, zero: f32) -> u8 {
    let v = x / scale;
    let y = (v + 0.5f32.copysign(v)).trunc() + zero;
    let y = if y >= 0.0 { y.min(255.0) } else { 0.0 };
    ((y + 8_388_608.0).to_bits() & 0xff) as u8
}

/// The quantization loop, inlined into ISA-specific wrappers so that the compiler vectorises
/// it (`trunc` is one instruction there, a library call on baseline x86-64).
#[inline(always)]
fn quantize_loop(x: &[f32], p: Params, out: &mut [u8]) {
    let zero = p.zero_point as f32;
    for (y, &v) in out.iter_mut().zip(x) {
        *y = quantize_code(v, p.scale, zero);
    }
}

/// Right shift by `s >= 1` rounding half away from zero.
#[inline]
fn round_shift(x: i64, s: u32) -> i64 {
    // Branch-free: shift the magnitude, then restore the sign (`sign` is 0 or -1).
    // The magnitude is rounded as a u64: `|x| + 2^(s-1)` can pass i64::MAX (a product of a
    // 33-bit sum and a 31-bit mantissa, shifted by 62).
    let sign = x >> 63;
    let mag = ((x ^ sign) - sign) as u64;
    ((((mag + (1u64 << (s - 1))) >> s) as i64) ^ sign) - sign
}

/// A positive real multiplier as `mantissa * 2^-shift`, mantissa in `[2^30, 2^31)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requant {
    mantissa: i64,
    shift: u32,
}

impl Requant {
    /// The fixed-point form of `real` (> 0 and < 2^30; tiny values become 0).
    pub fn new(real: f64) -> Result<Self> {
        if !(real.is_finite() && real > 0.0 && real < (1u64 << 30) as f64) {
            return Err(CompressError::InvalidConfig {
                name: "requantization multiplier",
                value: real.to_string(),
                reason: "must be finite, positive and below 2^30",
            });
        }
        // real = f * 2^e with f in [0.5, 1).
        let e = real.log2().floor() as i32 + 1;
        let mut mantissa = (real / 2f64.powi(e) * (1u64 << 31) as f64).round() as i64;
        let mut shift = 31 - e;
        if mantissa == 1 << 31 {
            mantissa >>= 1;
            shift -= 1;
        }
        if shift > 62 {
            return Ok(Self {
                mantissa: 0,
                shift: 1,
            });
        }
        Ok(Self {
            mantissa,
            shift: shift.max(1) as u32,
        })
    }

    /// `round(x * real)`, half away from zero. `|x| < 2^32`.
    #[inline]
    pub fn apply(self, x: i64) -> i64 {
        round_shift(x * self.mantissa, self.shift)
    }
}

/// Bias, per-channel requantization and clamping after an i32 matrix product.
///
/// Requantization is in single precision, as XNNPACK's "fp32" scheme:
/// `round(acc * scale + (bias * scale + zero_point))` by one fused multiply-add, clamped to
/// `[min, max]`, ties to even. Every ISA computes the same IEEE operations, so every path
/// gives the same codes; against exact arithmetic, a code can differ only where the real
/// value is within about 1e-7 of `|acc * scale| + |bias * scale|` of a rounding tie.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputStage {
    /// Added to each channel's accumulator before scaling.
    pub bias: Vec<i32>,
    /// Per-channel `input scale * weight scale / output scale` (finite, > 0).
    pub scale: Vec<f32>,
    /// Output zero point.
    pub zero_point: i32,
    /// Smallest output code (the zero point for a fused ReLU).
    pub min: u8,
    /// Largest output code (below 255 for a fused ReLU6).
    pub max: u8,
}

impl OutputStage {
    /// The output code of channel `j` for accumulator `acc`.
    #[inline]
    pub fn code(&self, j: usize, acc: i32) -> u8 {
        requant_code(
            acc,
            self.scale[j],
            self.offset(j),
            self.min as f32,
            self.max as f32,
        )
    }

    /// `bias * scale + zero_point` of channel `j`, rounded once to f32.
    fn offset(&self, j: usize) -> f32 {
        (self.bias[j] as f64 * self.scale[j] as f64 + self.zero_point as f64) as f32
    }

    fn check(&self, n: usize) -> Result<()> {
        if self.bias.len() != n || self.scale.len() != n {
            return Err(CompressError::InvalidConfig {
                name: "output stage",
                value: format!(
                    "{} biases, {} multipliers",
                    self.bias.len(),
                    self.scale.len()
                ),
                reason: "need one per output channel",
            });
        }
        if let Some(s) = self.scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(CompressError::InvalidConfig {
                name: "requantization multiplier",
                value: s.to_string(),
                reason: "must be finite and positive",
            });
        }
        Ok(())
    }
}

/// Requantizes `acc` (`m` rows of `n` channels) into `out`.
pub fn requantize(acc: &[i32], n: usize, stage: &OutputStage, out: &mut [u8]) -> Result<()> {
    stage.check(n)?;
    if acc.len() != out.len() || n == 0 || !acc.len().is_multiple_of(n) {
        return Err(CompressError::BadInput {
            expected: format!("rows of {n} accumulators and as many outputs"),
            found: vec![acc.len(), out.len()],
        });
    }
    RequantTile::new(stage, n)?.run(acc, out);
    Ok(())
}

/// [`requantize`] with parameters prepared once, for rows of `tile`'s channels.
pub(crate) fn requantize_with(acc: &[i32], tile: &RequantTile, out: &mut [u8]) -> Result<()> {
    let n = tile.channels;
    if acc.len() != out.len() || !acc.len().is_multiple_of(n) {
        return Err(CompressError::BadInput {
            expected: format!("rows of {n} accumulators and as many outputs"),
            found: vec![acc.len(), out.len()],
        });
    }
    tile.run(acc, out);
    Ok(())
}

impl RequantTile {
    /// Channel parameters repeated to a tile of >= 64 values, so that the loop runs over long
    /// contiguous runs (vectorisable) even for layers with a handful of channels. Fails unless
    /// `stage` has `n >= 1` channels with valid multipliers.
    pub(crate) fn new(stage: &OutputStage, n: usize) -> Result<Self> {
        stage.check(n)?;
        if n == 0 {
            return Err(CompressError::InvalidConfig {
                name: "output stage",
                value: "0 channels".into(),
                reason: "need at least one channel",
            });
        }
        // At least 64 values and a whole number of 8-lane vectors.
        let mut reps = 64usize.div_ceil(n).max(1);
        while !(reps * n).is_multiple_of(8) {
            reps += 1;
        }
        let tile =
            |f: &dyn Fn(usize) -> f32| -> Vec<f32> { (0..reps * n).map(|t| f(t % n)).collect() };
        Ok(Self {
            channels: n,
            scale: tile(&|j| stage.scale[j]),
            offset: tile(&|j| stage.offset(j)),
            min: stage.min as f32,
            max: stage.max as f32,
            len: reps * n,
        })
    }

    /// Requantizes whole rows of accumulators (`acc.len()` a multiple of the channel count).
    fn run(&self, acc: &[i32], out: &mut [u8]) {
        match simd() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `simd` confirmed AVX-512F/DQ/BW/VL.
            Simd::Avx512 => unsafe { x86::requant_avx512(acc, out, self) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `simd` confirmed AVX2.
            Simd::Avx2 => unsafe { x86::requant_avx2(acc, out, self) },
            _ => requant_tiles(acc, out, self),
        }
    }
}

/// Which instructions the element-wise loops (quantization, requantization, depthwise
/// convolution) run with: some written out with intrinsics, the rest vectorised by the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    /// AVX-512 F, DQ, BW and VL.
    Avx512,
    /// AVX2 and FMA.
    Avx2,
    /// The build's baseline.
    Base,
}

#[inline]
fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            return Simd::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::Base
}

/// Per-channel requantization parameters tiled to a run length: built once per layer (a
/// quantized model keeps one per op), used on every call.
#[derive(Clone)]
pub(crate) struct RequantTile {
    channels: usize,
    scale: Vec<f32>,
    /// [`OutputStage::offset`] of each position.
    offset: Vec<f32>,
    min: f32,
    max: f32,
    len: usize,
}

impl std::fmt::Debug for RequantTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequantTile")
            .field("channels", &self.channels)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The output code `round(acc * scale + offset)` clamped to `[min, max]`, ties to even: what
/// `vfmadd`, `vmaxps`, `vminps` and `vcvtps2dq` compute on each lane.
#[inline(always)]
fn requant_code(acc: i32, scale: f32, offset: f32, min: f32, max: f32) -> u8 {
    // Clamping before rounding is the same as after: the bounds are integers.
    (acc as f32)
        .mul_add(scale, offset)
        .max(min)
        .min(max)
        .round_ties_even() as u8
}

/// The requantization loop; inlined into ISA-specific wrappers so that the compiler
/// vectorises it with their instructions. Same IEEE arithmetic, same results.
#[inline(always)]
fn requant_tiles(acc: &[i32], out: &mut [u8], t: &RequantTile) {
    for (a, o) in acc.chunks(t.len).zip(out.chunks_mut(t.len)) {
        for ((&x, y), (&s, &b)) in a
            .iter()
            .zip(o.iter_mut())
            .zip(t.scale.iter().zip(&t.offset))
        {
            *y = requant_code(x, s, b, t.min, t.max);
        }
    }
}

/// Geometry of a 2-D convolution on an NHWC tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConvShape {
    /// Images.
    pub batch: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square window side.
    pub kernel: usize,
    /// Step.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvShape {
    /// Output `(height, width)`, or an error when the window does not fit.
    pub fn output(&self) -> Result<(usize, usize)> {
        let (hp, wp) = (
            self.height + 2 * self.padding,
            self.width + 2 * self.padding,
        );
        if self.kernel == 0 || self.stride == 0 || self.kernel > hp || self.kernel > wp {
            return Err(CompressError::InvalidConfig {
                name: "convolution",
                value: format!("{self:?}"),
                reason: "window must fit the padded input, stride >= 1",
            });
        }
        Ok((
            (hp - self.kernel) / self.stride + 1,
            (wp - self.kernel) / self.stride + 1,
        ))
    }

    fn check_input(&self, x: &[u8]) -> Result<()> {
        if x.len() != self.batch * self.height * self.width * self.in_channels {
            return Err(CompressError::BadInput {
                expected: format!(
                    "{} x {} x {} x {} u8",
                    self.batch, self.height, self.width, self.in_channels
                ),
                found: vec![x.len()],
            });
        }
        Ok(())
    }
}

/// Unfolds NHWC `x` into rows of `(ky, kx, c)` patches, each `row` bytes long (zero beyond the
/// patch); out-of-image taps take `pad` (the code of real 0).
pub fn im2col(x: &[u8], s: &ConvShape, pad: u8, row: usize, out: &mut Vec<u8>) -> Result<()> {
    s.check_input(x)?;
    let (oh, ow) = s.output()?;
    if row < s.kernel * s.kernel * s.in_channels {
        return Err(CompressError::InvalidConfig {
            name: "im2col row",
            value: row.to_string(),
            reason: "shorter than a patch",
        });
    }
    let len = s.batch * oh * ow * row;
    out.clear();
    out.resize(len + SLACK, 0);
    im2col_images(x, s, pad, row, 0..s.batch, out);
    out.truncate(len);
    // Bytes between a patch and the row's end may hold spill-over; the contract says zero.
    let patch = s.kernel * s.kernel * s.in_channels;
    for r in out.chunks_mut(row) {
        r[patch..].fill(0);
    }
    Ok(())
}

/// Spare bytes after im2col buffers: patch runs are moved 8 bytes at a time and may spill up
/// to 7 bytes past their end (into the next run, which overwrites them, or into this slack).
const SLACK: usize = 8;

/// [`im2col`] of images `images` into `out` (their patches plus [`SLACK`] bytes), shapes
/// checked by the caller. Bytes between a patch's end and `row` are unspecified: the packed
/// weights there are zero.
fn im2col_images(
    x: &[u8],
    s: &ConvShape,
    pad: u8,
    row: usize,
    images: std::ops::Range<usize>,
    out: &mut [u8],
) {
    let (c, k, st) = (s.in_channels, s.kernel, s.stride);
    let (hp, wp) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
    let (oh, ow) = ((hp - k) / st + 1, (wp - k) / st + 1);
    // One padded image at a time: every window row is then a contiguous run, no bounds tests.
    let mut padded = vec![pad; hp * wp * c + SLACK];
    let run = k * c;
    let image = s.height * s.width * c;
    let mut dst = 0;
    for b in images {
        if s.padding == 0 {
            padded[..image].copy_from_slice(&x[b * image..(b + 1) * image]);
        } else {
            for y in 0..s.height {
                let d = ((y + s.padding) * wp + s.padding) * c;
                let i = (b * s.height + y) * s.width * c;
                padded[d..d + s.width * c].copy_from_slice(&x[i..i + s.width * c]);
            }
        }
        for oy in 0..oh {
            for ox in 0..ow {
                let base = (oy * st * wp + ox * st) * c;
                for ky in 0..k {
                    let src = &padded[base + ky * wp * c..];
                    let d = &mut out[dst + ky * run..];
                    let mut i = 0;
                    while i < run {
                        d[i..i + 8].copy_from_slice(&src[i..i + 8]);
                        i += 8;
                    }
                }
                dst += row;
            }
        }
    }
}

/// Whether a kernel may spread a batch over rayon's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Split the batch into tasks for the pool.
    Pool,
    /// Run on the calling thread (the caller parallelises at a coarser grain).
    Caller,
    /// Run the batch on the calling thread, a worker of the pool, and split each image of a
    /// convolution with at least this many multiply-accumulates per image over the pool
    /// (by output pixels, or output rows for a depthwise one): for a batch too small to
    /// split, whose large layers would otherwise leave all but one core idle.
    Within(u64),
}

/// Multiply-accumulates per image from which [`Threads::Within`] splits a convolution in
/// the fast run. Between workers of the pool that are already awake the hand-off is cheap:
/// on a 2-core AMD EPYC, MobileNet-HDR int8 at batch 1 ran about as fast with any threshold
/// from 16 K to 256 K MACs (a quarter faster than unsplit), and lost some of that from 1 M.
pub(crate) const SPLIT_MIN_MACS: u64 = 1 << 16;

impl Threads {
    /// Into how many parts one image of `macs` multiply-accumulates and `units` independent
    /// outputs (pixels, rows) is split.
    fn parts(self, macs: u64, units: usize) -> usize {
        match self {
            Self::Within(min) if macs >= min => rayon::current_num_threads().min(units).max(1),
            _ => 1,
        }
    }
}

/// Images per parallel task: a few tasks per thread, so that work stealing evens out threads
/// slowed down by other processes, and at least `min`; the whole batch for
/// [`Threads::Caller`].
fn images_per_task(batch: usize, threads: Threads, min: usize) -> usize {
    match threads {
        Threads::Caller | Threads::Within(_) => batch.max(1),
        Threads::Pool => batch
            .div_ceil(4 * rayon::current_num_threads().max(1))
            .max(min)
            .max(1),
    }
}

/// Dense convolution of NHWC u8 `x` (zero point `x_zero`) with weights packed from
/// `[out][ky][kx][in]`, into NHWC u8 `out`. `stage.bias` must already hold
/// `bias - x_zero * row_sum` (see [`PackedWeights::row_sums`]): padding is `x_zero`.
///
/// Weights from [`PackedWeights::conv`] are used as they are; weights from
/// [`PackedWeights::new`] are repacked on every call.
pub fn conv2d(
    isa: Isa,
    x: &[u8],
    x_zero: u8,
    s: &ConvShape,
    w: &PackedWeights,
    stage: &OutputStage,
    out: &mut Vec<u8>,
) -> Result<()> {
    let tile = RequantTile::new(stage, w.n)?;
    conv2d_pooled(isa, x, x_zero, s, w, &tile, None, Threads::Pool, out).map(|_| ())
}

/// [`conv2d`], optionally followed by max pooling of its output (`(kernel, stride)`, no
/// padding); returns the output's height and width.
///
/// The pooling is fused: it takes the window maximum of the accumulators, before
/// requantization. That is exact, because requantization is non-decreasing in the accumulator
/// (one bias and one positive multiplier per channel), and it requantizes a quarter of the
/// values for 2x2 pooling.
///
/// The product reads its activations in place (an implicit im2col): each output pixel's
/// window is `kernel` runs of `kernel * in_channels` contiguous bytes of a padded image, which
/// [`PackedWeights::conv`] lays out the weights for.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_pooled(
    isa: Isa,
    x: &[u8],
    x_zero: u8,
    s: &ConvShape,
    w: &PackedWeights,
    tile: &RequantTile,
    pool: Option<(usize, usize)>,
    threads: Threads,
    out: &mut Vec<u8>,
) -> Result<(usize, usize)> {
    s.check_input(x)?;
    let (oh, ow) = s.output()?;
    let (c, k) = (s.in_channels, s.kernel);
    if w.n != s.out_channels || w.k != k * k * c {
        return Err(CompressError::InvalidConfig {
            name: "convolution weights",
            value: format!("{} x {}", w.n, w.k),
            reason: "do not match the convolution shape",
        });
    }
    if tile.channels != w.n {
        return Err(CompressError::InvalidConfig {
            name: "output stage",
            value: format!("{} channels", tile.channels),
            reason: "does not match the convolution's output channels",
        });
    }
    let n = w.n;
    let (ph, pw) = match pool {
        Some((pk, ps)) => pool_out((1, oh, ow, n), pk, ps)?,
        None => (oh, ow),
    };
    let isa = if isa.available() { isa } else { Isa::Portable };
    let run4 = (k * c).div_ceil(4) * 4;
    let repacked;
    let w = if w.taps == k && w.kp == k * run4 {
        w
    } else {
        repacked = PackedWeights::conv(&w.codes(), n, k, c)?;
        &repacked
    };
    let (hp, wp) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
    let (image_in, image_pad, image_out) = (s.height * s.width * c, hp * wp * c, ph * pw * n);
    // Product rows are the pixels of each pooling window in turn (without pooling, a 1x1
    // window), so that the product takes the window maximum in registers; conv pixels that
    // no window covers are never computed.
    let (pk, ps) = pool.unwrap_or((1, 1));
    let rows = ph * pw * pk * pk;
    // Windows are read in place from `x` when there is no padding and no window row is
    // padded to a multiple of 4 (which would read past the image); otherwise from a padded
    // copy of each image, followed by SLACK bytes.
    let in_place = s.padding == 0 && run4 == k * c;
    // Images per step: their accumulators and padded copies stay within ~32 KiB.
    let step_bytes = image_out * 4 + if in_place { 0 } else { image_pad };
    let block = ((1usize << 15) / step_bytes.max(1)).clamp(1, s.batch.max(1));
    let task = images_per_task(s.batch, threads, block);
    // Where each product row's window starts in an image.
    let mut offsets = Vec::with_capacity(rows);
    for py in 0..ph {
        for px in 0..pw {
            for ky in 0..pk {
                for kx in 0..pk {
                    let (oy, ox) = (py * ps + ky, px * ps + kx);
                    offsets.push((oy * wp + ox) * s.stride * c);
                }
            }
        }
    }
    // For `Threads::Within`, each image's product in parts of whole output pixels.
    let pixels = ph * pw;
    let parts = threads.parts((rows * w.k * n) as u64, pixels);
    let part_rows = pixels.div_ceil(parts) * pk * pk;
    let part_tables: Vec<RowTable> = if parts > 1 {
        offsets
            .chunks(part_rows)
            .map(|o| RowTable::new(o.to_vec()))
            .collect()
    } else {
        Vec::new()
    };
    let offsets = RowTable::new(offsets);
    out.clear();
    out.resize(s.batch * image_out, 0);
    // Images `first..` into `o`, a block at a time.
    let run = |first: usize, o: &mut [u8]| -> Result<()> {
        let images = o.len() / image_out;
        let mut padded = if in_place {
            Vec::new()
        } else {
            vec![x_zero; block * image_pad + SLACK]
        };
        let mut acc = vec![0i32; block * image_out];
        let mut i = 0;
        while i < images {
            let nb = block.min(images - i);
            let b0 = first + i;
            let acc = &mut acc[..nb * image_out];
            let src: &[u8] = if in_place {
                &x[b0 * image_in..(b0 + nb) * image_in]
            } else {
                // Only the interior is written: the border keeps `x_zero` from the start.
                let line = s.width * c;
                for j in 0..nb {
                    let src = &x[(b0 + j) * image_in..][..image_in];
                    let dst = &mut padded[j * image_pad..][..image_pad];
                    for (y, l) in src.chunks_exact(line.max(1)).enumerate() {
                        dst[((y + s.padding) * wp + s.padding) * c..][..line].copy_from_slice(l);
                    }
                }
                &padded
            };
            for (j, acc) in acc.chunks_mut(image_out).enumerate() {
                if part_tables.is_empty() {
                    let at = Rows::Table(&offsets, j * image_pad);
                    gemm_at(isa, src, rows, at, wp * c, pk * pk, w, acc)?;
                } else {
                    acc.par_chunks_mut(part_rows / (pk * pk) * n)
                        .zip(part_tables.par_iter())
                        .try_for_each(|(acc, t)| {
                            let at = Rows::Table(t, j * image_pad);
                            let m = t.offsets.len();
                            gemm_at(isa, src, m, at, wp * c, pk * pk, w, acc)
                        })?;
                }
            }
            tile.run(acc, &mut o[i * image_out..(i + nb) * image_out]);
            i += nb;
        }
        Ok(())
    };
    if task >= s.batch {
        run(0, out)?;
    } else {
        out.par_chunks_mut(task * image_out)
            .enumerate()
            .try_for_each(|(t, o)| run(t * task, o))?;
    }
    Ok((ph, pw))
}

/// Depthwise convolution (one filter per channel) of NHWC u8 `x`, weights `[ky][kx][c]`;
/// accumulates `(x - x_zero) * w`, so `stage.bias` is the plain quantized bias.
pub fn depthwise_conv2d(
    x: &[u8],
    x_zero: u8,
    s: &ConvShape,
    w: &[i8],
    stage: &OutputStage,
    out: &mut Vec<u8>,
) -> Result<()> {
    let (c, k) = (s.in_channels, s.kernel);
    if w.len() != k * k * c {
        return Err(CompressError::InvalidConfig {
            name: "depthwise weights",
            value: format!("{} codes for {c} channels, kernel {k}", w.len()),
            reason: "need k * k * c codes",
        });
    }
    let tile = RequantTile::new(stage, c)?;
    let w = DwWeights::new(w, k * k, c, x_zero);
    depthwise_conv2d_on(x, x_zero, s, &w, &tile, Threads::Pool, out)
}

/// Depthwise weights `[ky][kx][c]` laid out once per layer for [`depthwise_conv2d_on`], for
/// input zero point `zero`.
#[derive(Debug, Clone)]
pub(crate) struct DwWeights {
    /// The codes as i32.
    wide: Vec<i32>,
    taps: usize,
    channels: usize,
    zero: u8,
    /// For [`Simd::Avx2`] and [`Simd::Avx512`].
    pairs: Option<DwPairs>,
}

impl DwWeights {
    /// From `taps * c` codes `[tap][c]`.
    pub(crate) fn new(w: &[i8], taps: usize, c: usize, zero: u8) -> Self {
        Self {
            wide: w.iter().map(|&v| v as i32).collect(),
            taps,
            channels: c,
            zero,
            pairs: matches!(simd(), Simd::Avx2 | Simd::Avx512)
                .then(|| DwPairs::new(w, taps, c, zero)),
        }
    }
}

/// [`depthwise_conv2d`] on the given threads.
pub(crate) fn depthwise_conv2d_on(
    x: &[u8],
    x_zero: u8,
    s: &ConvShape,
    w: &DwWeights,
    tile: &RequantTile,
    threads: Threads,
    out: &mut Vec<u8>,
) -> Result<()> {
    s.check_input(x)?;
    let (oh, ow) = s.output()?;
    let (c, k) = (s.in_channels, s.kernel);
    if s.out_channels != c || w.channels != c || w.taps != k * k || w.zero != x_zero {
        return Err(CompressError::InvalidConfig {
            name: "depthwise weights",
            value: format!(
                "{} taps x {} channels for zero point {}",
                w.taps, w.channels, w.zero
            ),
            reason: "need in = out channels, k * k taps and the input's zero point",
        });
    }
    if tile.channels != c {
        return Err(CompressError::InvalidConfig {
            name: "output stage",
            value: format!("{} channels", tile.channels),
            reason: "does not match the depthwise convolution's channels",
        });
    }
    out.clear();
    out.resize(s.batch * oh * ow * c, 0);
    let (per_image, line) = (oh * ow * c, ow * c);
    let simd = simd();
    // Output rows `first_row..` of image `image` into `o`.
    let rows = |image: usize, first_row: usize, o: &mut [u8]| {
        let mut acc = vec![0i32; line];
        let r = DwRow {
            x: &x[image * s.height * s.width * c..][..s.height * s.width * c],
            s,
            z: x_zero as i32,
            w: &w.wide,
            ow,
        };
        for (i, orow) in o.chunks_mut(line).enumerate() {
            let oy = first_row + i;
            match simd {
                #[cfg(target_arch = "x86_64")]
                // The AVX2 kernel on AVX-512 machines too: it beat the 512-bit build of the
                // i32 loop by 13% on MobileNet-HDR at batch 256 (Intel Xeon, 2026-12-04).
                Simd::Avx512 | Simd::Avx2 => match &w.pairs {
                    // SAFETY: `simd` confirmed AVX2 (AVX-512 implies it); `p` is built for
                    // this layer.
                    Some(p) => unsafe { x86::depthwise_row_pairs(&r, p, oy, &mut acc) },
                    None => depthwise_row(&r, oy, &mut acc),
                },
                _ => depthwise_row(&r, oy, &mut acc),
            }
            tile.run(&acc, orow);
        }
    };
    // For `Threads::Within`, each image in parts of whole output rows.
    let parts = threads.parts((per_image * k * k) as u64, oh);
    let part_rows = oh.div_ceil(parts);
    let run = |first: usize, o: &mut [u8]| {
        for (i, img) in o.chunks_mut(per_image).enumerate() {
            if parts > 1 {
                img.par_chunks_mut(part_rows * line)
                    .enumerate()
                    .for_each(|(p, o)| rows(first + i, p * part_rows, o));
            } else {
                rows(first + i, 0, img);
            }
        }
    };
    let task = images_per_task(s.batch, threads, 1);
    if task >= s.batch {
        run(0, out);
    } else {
        out.par_chunks_mut(task * per_image)
            .enumerate()
            .for_each(|(t, o)| run(t * task, o));
    }
    Ok(())
}
/// One image of a depthwise convolution.
pub(crate) struct DwRow<'a> {
    x: &'a [u8],
    s: &'a ConvShape,
    z: i32,
    /// `[ky][kx][c]` as i32.
    w: &'a [i32],
    ow: usize,
}

/// Depthwise weights for the AVX2 kernel: taps in pairs, interleaved as i16 in the lane
/// order of `vpunpck{l,h}wd`, 16 channels at a time (`[chunk][pair][lo 16, hi 16]`).
#[derive(Debug, Clone)]
pub(crate) struct DwPairs {
    w: Vec<i16>,
    pairs: usize,
    /// 16-channel chunks, the last one zero-padded when the channels are not a multiple of 16.
    chunks: usize,
    /// `z * sum over taps of w`, per channel (0 for the padding).
    zsum: Vec<i32>,
    /// Zero-point codes, read for taps outside the image.
    zrow: Vec<u8>,
}

impl DwPairs {
    /// From weights `[tap][c]`.
    fn new(w: &[i8], taps: usize, c: usize, z: u8) -> Self {
        let pairs = taps.div_ceil(2);
        // The last chunk zero-padded: its missing channels multiply by 0.
        let chunks = c.div_ceil(16);
        let mut v = vec![0i16; chunks * pairs * 32];
        for ch in 0..chunks {
            for q in 0..pairs {
                for half in 0..2 {
                    for lane in 0..8 {
                        // i32 lane `lane` of the low (high) half is channel 0-3, 8-11 (4-7, 12-15).
                        let j = 16 * ch + lane / 4 * 8 + 4 * half + lane % 4;
                        for e in 0..2 {
                            let t = 2 * q + e;
                            if t < taps && j < c {
                                v[((ch * pairs + q) * 2 + half) * 16 + 2 * lane + e] =
                                    w[t * c + j] as i16;
                            }
                        }
                    }
                }
            }
        }
        Self {
            w: v,
            pairs,
            zsum: (0..16 * chunks)
                .map(|j| match j < c {
                    true => z as i32 * (0..taps).map(|t| w[t * c + j] as i32).sum::<i32>(),
                    false => 0,
                })
                .collect(),
            chunks,
            zrow: vec![z; c],
        }
    }
}

/// Accumulators `[ox][c]` of output row `oy`: `sum (x - z) * w` over the taps inside the image.
#[inline(always)]
fn depthwise_row(r: &DwRow<'_>, oy: usize, acc: &mut [i32]) {
    let (s, c, k) = (r.s, r.s.in_channels, r.s.kernel);
    acc.fill(0);
    for ky in 0..k {
        let iy = (oy * s.stride + ky) as isize - s.padding as isize;
        if iy < 0 || iy >= s.height as isize {
            continue;
        }
        let xrow = &r.x[iy as usize * s.width * c..][..s.width * c];
        for kx in 0..k {
            let wr = &r.w[(ky * k + kx) * c..][..c];
            for ox in 0..r.ow {
                let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                if ix < 0 || ix >= s.width as isize {
                    continue;
                }
                let xv = &xrow[ix as usize * c..][..c];
                for ((a, &xq), &wq) in acc[ox * c..][..c].iter_mut().zip(xv).zip(wr) {
                    *a += (xq as i32 - r.z) * wq;
                }
            }
        }
    }
}

/// NHWC tensor dimensions `(batch, height, width, channels)`.
pub type Dims = (usize, usize, usize, usize);

fn pool_out(d: Dims, kernel: usize, stride: usize) -> Result<(usize, usize)> {
    ConvShape {
        batch: d.0,
        height: d.1,
        width: d.2,
        in_channels: d.3,
        out_channels: d.3,
        kernel,
        stride,
        padding: 0,
    }
    .output()
}

/// Max pooling without padding; the output keeps the input's quantization.
pub fn max_pool(x: &[u8], d: Dims, kernel: usize, stride: usize, out: &mut Vec<u8>) -> Result<()> {
    let (oh, ow) = pool_out(d, kernel, stride)?;
    let (n, h, w, c) = d;
    if x.len() != n * h * w * c {
        return Err(CompressError::BadInput {
            expected: format!("{d:?}"),
            found: vec![x.len()],
        });
    }
    out.clear();
    out.resize(n * oh * ow * c, 0);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = ((b * oh + oy) * ow + ox) * c;
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let i = ((b * h + oy * stride + ky) * w + ox * stride + kx) * c;
                        for (y, &v) in out[o..o + c].iter_mut().zip(&x[i..i + c]) {
                            *y = (*y).max(v);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Average pooling without padding, requantized: `sum(x - x_zero) * scale` then the output zero
/// point, where `scale = x_scale / (window * out_scale)`.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool(
    x: &[u8],
    d: Dims,
    kernel: usize,
    stride: usize,
    x_zero: i32,
    scale: Requant,
    out_zero: i32,
    out: &mut Vec<u8>,
) -> Result<()> {
    let (oh, ow) = pool_out(d, kernel, stride)?;
    let (n, h, w, c) = d;
    if x.len() != n * h * w * c {
        return Err(CompressError::BadInput {
            expected: format!("{d:?}"),
            found: vec![x.len()],
        });
    }
    let bias = -((kernel * kernel) as i32) * x_zero;
    out.clear();
    out.resize(n * oh * ow * c, 0);
    let mut acc = vec![0i32; c];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                acc.fill(bias);
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let i = ((b * h + oy * stride + ky) * w + ox * stride + kx) * c;
                        for (a, &v) in acc.iter_mut().zip(&x[i..i + c]) {
                            *a += v as i32;
                        }
                    }
                }
                let o = ((b * oh + oy) * ow + ox) * c;
                for (y, &a) in out[o..o + c].iter_mut().zip(&acc) {
                    *y = (scale.apply(a as i64) + out_zero as i64).clamp(0, 255) as u8;
                }
            }
        }
    }
    Ok(())
}

/// Multiplier of one input of an addition or concatenation: `in_scale / out_scale` as a
/// 24-bit fixed-point factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescale {
    factor: i64,
    zero: i32,
}

/// Fractional bits of [`Rescale`].
const RESCALE_BITS: u32 = 24;

impl Rescale {
    /// The factor `ratio` applied to codes with zero point `zero`.
    pub fn new(ratio: f64, zero: i32) -> Result<Self> {
        if !(ratio.is_finite() && ratio >= 0.0 && ratio < (1u64 << 30) as f64) {
            return Err(CompressError::InvalidConfig {
                name: "rescale ratio",
                value: ratio.to_string(),
                reason: "must be finite, >= 0 and below 2^30",
            });
        }
        Ok(Self {
            factor: (ratio * (1u64 << RESCALE_BITS) as f64).round() as i64,
            zero,
        })
    }

    #[inline]
    fn term(self, q: u8) -> i64 {
        (q as i32 - self.zero) as i64 * self.factor
    }
}

/// Element-wise `a + b` into new quantization: `out_zero + round(ra(a) + rb(b))`, clamped to
/// `[min, max]` (a fused ReLU raises `min` to the zero point).
pub fn add(
    a: &[u8],
    ra: Rescale,
    b: &[u8],
    rb: Rescale,
    out_zero: i32,
    (min, max): (u8, u8),
    out: &mut Vec<u8>,
) -> Result<()> {
    if a.len() != b.len() {
        return Err(CompressError::BadInput {
            expected: format!("two tensors of {} codes", a.len()),
            found: vec![b.len()],
        });
    }
    out.clear();
    out.extend(a.iter().zip(b).map(|(&x, &y)| {
        (round_shift(ra.term(x) + rb.term(y), RESCALE_BITS) + out_zero as i64)
            .clamp(min as i64, max as i64) as u8
    }));
    Ok(())
}

/// Concatenation along channels of NHWC tensors with `positions` pixels each; part `i` has
/// `channels[i]` channels and is rescaled by `rescale[i]` to the output's zero point.
pub fn concat(
    parts: &[&[u8]],
    channels: &[usize],
    rescale: &[Rescale],
    positions: usize,
    out_zero: i32,
    out: &mut Vec<u8>,
) -> Result<()> {
    let total: usize = channels.iter().sum();
    let ok = parts.len() == channels.len()
        && parts.len() == rescale.len()
        && parts
            .iter()
            .zip(channels)
            .all(|(p, &c)| p.len() == positions * c);
    if !ok {
        return Err(CompressError::BadInput {
            expected: format!("{} parts of {positions} positions", channels.len()),
            found: parts.iter().map(|p| p.len()).collect(),
        });
    }
    out.clear();
    out.resize(positions * total, 0);
    let mut off = 0;
    for ((p, &c), &r) in parts.iter().zip(channels).zip(rescale) {
        for (dst, src) in out.chunks_mut(total).zip(p.chunks(c.max(1))) {
            for (y, &x) in dst[off..off + c].iter_mut().zip(src) {
                *y = (round_shift(r.term(x), RESCALE_BITS) + out_zero as i64).clamp(0, 255) as u8;
            }
        }
        off += c;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference convolution straight from the definition: the accumulators
    /// `sum (x - z) * w` of every output, `[b][oy][ox][o]`.
    fn naive_conv(
        x: &[u8],
        z: i32,
        s: &ConvShape,
        w: &[i8], // [out][ky][kx][in]
        depthwise: bool,
    ) -> Vec<i64> {
        let (oh, ow) = s.output().unwrap();
        let (c, k) = (s.in_channels, s.kernel);
        let mut out = Vec::new();
        for b in 0..s.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..s.out_channels {
                        let mut acc = 0i64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                                let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= s.height as isize
                                    || ix >= s.width as isize
                                {
                                    continue;
                                }
                                let px = |ci: usize| {
                                    x[((b * s.height + iy as usize) * s.width + ix as usize) * c
                                        + ci] as i64
                                        - z as i64
                                };
                                if depthwise {
                                    acc += px(o) * w[(ky * k + kx) * c + o] as i64;
                                } else {
                                    for ci in 0..c {
                                        acc += px(ci) * w[((o * k + ky) * k + kx) * c + ci] as i64;
                                    }
                                }
                            }
                        }
                        out.push(acc);
                    }
                }
            }
        }
        out
    }

    /// The codes of reference accumulators `acc` (`n` channels) under `stage`, whose biases
    /// include `-z * row_sum` (the dense kernels accumulate raw codes, `acc + z * row_sum`).
    fn naive_codes(acc: &[i64], stage: &OutputStage, z: i32, row_sums: &[i32]) -> Vec<u8> {
        let n = stage.bias.len();
        acc.iter()
            .enumerate()
            .map(|(i, &a)| {
                let raw = a + z as i64 * row_sums.get(i % n).copied().unwrap_or(0) as i64;
                stage.code(i % n, i32::try_from(raw).unwrap())
            })
            .collect()
    }

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn codes(n: usize, seed: u64) -> Vec<i8> {
        bytes(n, seed)
            .into_iter()
            .map(|b| (b as i8).max(-127))
            .collect()
    }

    fn isas() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn gemm_is_exact_on_every_isa(m in 1usize..23, n in 1usize..40, k in 1usize..70, seed in 0u64..1000) {
            let w = codes(n * k, seed);
            let packed = PackedWeights::new(&w, n, k).unwrap();
            let lda = packed.padded_k();
            let mut a = bytes(m * lda, seed + 1);
            for r in 0..m { a[r * lda + k..(r + 1) * lda].fill(0); }
            let mut want = vec![0i32; m * n];
            for r in 0..m { for j in 0..n {
                want[r * n + j] = (0..k).map(|kk| a[r * lda + kk] as i32 * w[j * k + kk] as i32).sum();
            }}
            for isa in isas() {
                let mut got = vec![0i32; m * n];
                gemm_u8i8(isa, &a, m, lda, &packed, &mut got).unwrap();
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }

        #[test]
        fn conv_matches_naive(
            batch in 1usize..3, h in 1usize..9, wd in 1usize..9, cin in 1usize..7,
            cout in 1usize..20, kernel in 1usize..4, stride in 1usize..3, padding in 0usize..2,
            seed in 0u64..1000, z in 0u8..=255, oz in 0i32..256, mult in 0.0005f64..0.05,
        ) {
            let s = ConvShape { batch, height: h, width: wd, in_channels: cin, out_channels: cout,
                kernel, stride, padding };
            prop_assume!(s.output().is_ok());
            let x = bytes(batch * h * wd * cin, seed);
            let k = kernel * kernel * cin;
            let w = codes(cout * k, seed + 7);
            let bias: Vec<i32> = (0..cout as i32).map(|j| (j - 3) * 97).collect();
            let scale: Vec<f32> = (0..cout).map(|j| (mult * (1.0 + j as f64 / 7.0)) as f32).collect();
            // Plain weights are repacked by `conv2d`; convolution weights are used as they are.
            let plain = PackedWeights::new(&w, cout, k).unwrap();
            let conv = PackedWeights::conv(&w, cout, kernel, cin).unwrap();
            prop_assert_eq!(plain.row_sums(), conv.row_sums());
            let stage = OutputStage {
                bias: bias.iter().zip(plain.row_sums()).map(|(&b, &ws)| b - z as i32 * ws).collect(),
                scale, zero_point: oz, min: 0, max: 255,
            };
            let want = naive_codes(&naive_conv(&x, z as i32, &s, &w, false), &stage, z as i32, plain.row_sums());
            for isa in isas() {
                for packed in [&plain, &conv] {
                    let mut got = Vec::new();
                    conv2d(isa, &x, z, &s, packed, &stage, &mut got).unwrap();
                    prop_assert_eq!(&got, &want, "{:?}", isa);
                }
            }
        }

        #[test]
        fn fused_max_pool_equals_conv_then_pool(
            batch in 1usize..4, h in 1usize..12, wd in 1usize..12, cin in 1usize..7,
            cout in 1usize..35, kernel in 1usize..6, stride in 1usize..3, padding in 0usize..3,
            pool_k in 1usize..4, pool_s in 1usize..4, seed in 0u64..1000, z in 0u8..=255,
            oz in 0i32..256, mult in 0.0005f64..0.05, relu in proptest::bool::ANY,
        ) {
            let s = ConvShape { batch, height: h, width: wd, in_channels: cin, out_channels: cout,
                kernel, stride, padding };
            prop_assume!(s.output().is_ok());
            let (oh, ow) = s.output().unwrap();
            let d = (batch, oh, ow, cout);
            prop_assume!(pool_out(d, pool_k, pool_s).is_ok());
            let x = bytes(batch * h * wd * cin, seed);
            let k = kernel * kernel * cin;
            let w = codes(cout * k, seed + 5);
            let bias: Vec<i32> = (0..cout as i32).map(|j| (j - 4) * 131).collect();
            let scale: Vec<f32> = (0..cout).map(|j| (mult * (1.0 + j as f64 / 5.0)) as f32).collect();
            // A fused ReLU clamps below at the zero point.
            let lo = if relu { oz as u8 } else { 0 };
            let packed = PackedWeights::conv(&w, cout, kernel, cin).unwrap();
            let stage = OutputStage {
                bias: bias.iter().zip(packed.row_sums()).map(|(&b, &ws)| b - z as i32 * ws).collect(),
                scale, zero_point: oz, min: lo, max: 255,
            };
            let conv = naive_codes(&naive_conv(&x, z as i32, &s, &w, false), &stage, z as i32, packed.row_sums());
            let mut want = Vec::new();
            max_pool(&conv, d, pool_k, pool_s, &mut want).unwrap();
            for isa in isas() {
                for threads in [Threads::Caller, Threads::Pool, Threads::Within(0)] {
                    let mut got = Vec::new();
                    let tile = RequantTile::new(&stage, cout).unwrap();
                    let dims = hdr_ops::in_pool(|| conv2d_pooled(isa, &x, z, &s, &packed,
                        &tile, Some((pool_k, pool_s)), threads, &mut got)).unwrap();
                    prop_assert_eq!(dims, pool_out(d, pool_k, pool_s).unwrap());
                    prop_assert_eq!(&got, &want, "{:?} {:?}", isa, threads);
                }
            }
        }

        #[test]
        fn gemm_on_runs_and_row_groups_is_exact_on_every_isa(
            outputs in 1usize..12, group in 1usize..6, n in 1usize..40, taps in 1usize..4,
            run in 1usize..21, gap in 0usize..9, seed in 0u64..1000,
        ) {
            // Rows start anywhere in `a`; each reads `taps` runs `stride` bytes apart, padded
            // to a multiple of 4 (the padding reads whatever follows, times zero weights).
            let run4 = run.div_ceil(4) * 4;
            let stride = run4 + gap;
            let span = (taps - 1) * stride + run4;
            let m = outputs * group;
            let a = bytes(3 * span + 64, seed);
            let starts: Vec<usize> = bytes(m, seed + 2).iter()
                .map(|&b| b as usize % (a.len() - span + 1)).collect();
            let w = codes(n * taps * run, seed + 1);
            let packed = PackedWeights::pack(&w, n, taps * run, taps);
            let mut want = vec![i32::MIN; outputs * n];
            for r in 0..m { for j in 0..n {
                let v: i32 = (0..taps * run).map(|kk| {
                    a[starts[r] + (kk / run) * stride + kk % run] as i32 * w[j * taps * run + kk] as i32
                }).sum();
                let o = &mut want[(r / group) * n + j];
                *o = (*o).max(v);
            }}
            for isa in isas() {
                let mut got = vec![0i32; outputs * n];
                let table = RowTable::new(starts.clone());
                gemm_at(isa, &a, m, Rows::Table(&table, 0), stride, group, &packed, &mut got).unwrap();
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }

        #[test]
        fn round_shift_equals_exact_rounding(x in (i64::MIN + 1)..=i64::MAX, s in 1u32..63) {
            // Half away from zero in 128-bit arithmetic, for every magnitude below 2^63.
            let (mag, half) = ((x as i128).abs(), 1i128 << (s - 1));
            let r = (mag + half) >> s;
            let want = if x < 0 { -r } else { r };
            prop_assert_eq!(round_shift(x, s) as i128, want);
        }

        #[test]
        fn requantize_matches_output_stage_code(
            rows in 1usize..6, n in 1usize..70, seed in 0u64..1000, zero in 0i32..256,
            lo in 0u8..=255, span in 0u8..=255, log_mult in -40f64..26.0, extreme in 0usize..4,
        ) {
            // Accumulators and biases across the whole i32 range, multipliers from 2^-40 to 2^26.
            let raw = bytes(4 * (rows * n + n), seed);
            let word = |i: usize| i32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
            let small = |v: i32| v >> 12;
            let acc: Vec<i32> = (0..rows * n).map(|i| match extreme {
                0 => small(word(i)),
                1 => word(i),
                2 => if i % 3 == 0 { i32::MAX - (i as i32 % 5) } else { small(word(i)) },
                _ => if i % 2 == 0 { i32::MIN + (i as i32 % 7) } else { -small(word(i)).abs() },
            }).collect();
            let bias: Vec<i32> = (0..n).map(|j| if extreme == 0 { small(word(rows * n + j)) } else { word(rows * n + j) }).collect();
            let scale: Vec<f32> = (0..n)
                .map(|j| (2f64.powf(log_mult) * (1.0 + j as f64 / 9.0)) as f32)
                .collect();
            let stage = OutputStage { bias, scale, zero_point: zero, min: lo, max: lo.saturating_add(span) };
            // The code is the exact value rounded, up to single-precision error near ties.
            for (i, &a) in acc.iter().enumerate() {
                let j = i % n;
                let exact = ((a as f64 + stage.bias[j] as f64) * stage.scale[j] as f64 + zero as f64)
                    .clamp(stage.min as f64, stage.max as f64);
                let err = (stage.code(j, a) as f64 - exact).abs();
                let terms = ((a as f64).abs() + (stage.bias[j] as f64).abs()) * stage.scale[j] as f64;
                prop_assert!(err <= 0.5 + 1e-6 * (1.0 + exact.abs() + terms),
                    "acc {} channel {}: code {} for {}", a, j, stage.code(j, a), exact);
            }
            let want: Vec<u8> = acc.iter().enumerate().map(|(i, &a)| stage.code(i % n, a)).collect();
            let mut got = vec![0u8; acc.len()];
            requantize(&acc, n, &stage, &mut got).unwrap();
            prop_assert_eq!(&got, &want);
            // The portable loop too (a vectorised one runs above where the CPU has AVX2 or AVX-512).
            let mut portable = vec![0u8; acc.len()];
            for (a, o) in acc.chunks(n).zip(portable.chunks_mut(n)) {
                requant_tiles(a, o, &RequantTile::new(&stage, n).unwrap());
            }
            prop_assert_eq!(&portable, &want);
            // And the AVX2 loop, which an AVX-512 machine would not pick above.
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut avx2 = vec![0u8; acc.len()];
                // SAFETY: AVX2 and FMA are present.
                unsafe { x86::requant_avx2(&acc, &mut avx2, &RequantTile::new(&stage, n).unwrap()) };
                prop_assert_eq!(&avx2, &want);
            }
        }

        #[test]
        fn vector_quantization_equals_quantize_u8(bits in proptest::num::u32::ANY,
            scale in 1e-4f32..10.0, zero in 0i32..256) {
            let p = Params { scale, zero_point: zero };
            let x = f32::from_bits(bits);
            prop_assert_eq!(quantize_code(x, scale, zero as f32), p.quantize_u8(x), "{}", x);
        }

        #[test]
        fn depthwise_matches_naive(
            batch in 1usize..3, h in 1usize..10, wd in 1usize..10, c in 1usize..20,
            kernel in 1usize..4, stride in 1usize..3, padding in 0usize..2,
            seed in 0u64..1000, z in 0u8..=255, oz in 0i32..256, mult in 0.001f64..0.1,
        ) {
            let s = ConvShape { batch, height: h, width: wd, in_channels: c, out_channels: c,
                kernel, stride, padding };
            prop_assume!(s.output().is_ok());
            let x = bytes(batch * h * wd * c, seed);
            let w = codes(kernel * kernel * c, seed + 3);
            let bias: Vec<i32> = (0..c as i32).map(|j| (j - 5) * 31).collect();
            let stage = OutputStage { bias, scale: vec![mult as f32; c], zero_point: oz, min: 0, max: 255 };
            let want = naive_codes(&naive_conv(&x, z as i32, &s, &w, true), &stage, z as i32, &[]);
            let mut got = Vec::new();
            depthwise_conv2d(&x, z, &s, &w, &stage, &mut got).unwrap();
            prop_assert_eq!(&got, &want);
            let (weights, tile) = (DwWeights::new(&w, kernel * kernel, c, z), RequantTile::new(&stage, c).unwrap());
            for threads in [Threads::Caller, Threads::Within(0)] {
                hdr_ops::in_pool(|| depthwise_conv2d_on(&x, z, &s, &weights, &tile, threads, &mut got)).unwrap();
                prop_assert_eq!(&got, &want, "{:?}", threads);
            }
            // The portable loop, which x86 machines with AVX2 do not pick above.
            let portable = DwWeights { pairs: None, ..weights };
            depthwise_conv2d_on(&x, z, &s, &portable, &tile, Threads::Caller, &mut got).unwrap();
            prop_assert_eq!(&got, &want, "portable");
        }

        #[test]
        fn pools_match_naive(n in 1usize..3, h in 2usize..9, w in 2usize..9, c in 1usize..6,
            kernel in 1usize..4, stride in 1usize..3, seed in 0u64..1000, z in 0i32..256) {
            let d = (n, h, w, c);
            prop_assume!(pool_out(d, kernel, stride).is_ok());
            let (oh, ow) = pool_out(d, kernel, stride).unwrap();
            let x = bytes(n * h * w * c, seed);
            let rq = Requant::new(1.0 / (kernel * kernel) as f64).unwrap();
            let (mut mx, mut av) = (Vec::new(), Vec::new());
            max_pool(&x, d, kernel, stride, &mut mx).unwrap();
            avg_pool(&x, d, kernel, stride, z, rq, z, &mut av).unwrap();
            for b in 0..n { for oy in 0..oh { for ox in 0..ow { for ch in 0..c {
                let vals: Vec<i64> = (0..kernel * kernel).map(|t| {
                    x[((b * h + oy * stride + t / kernel) * w + ox * stride + t % kernel) * c + ch] as i64
                }).collect();
                let o = ((b * oh + oy) * ow + ox) * c + ch;
                prop_assert_eq!(mx[o] as i64, *vals.iter().max().unwrap());
                // Mean, rounded half away from zero, via exact rationals.
                let sum: i64 = vals.iter().map(|v| v - z as i64).sum();
                let kk = (kernel * kernel) as i64;
                let mean = if sum >= 0 { (2 * sum + kk) / (2 * kk) } else { -((-2 * sum + kk) / (2 * kk)) };
                prop_assert_eq!(av[o] as i64, (mean + z as i64).clamp(0, 255));
            }}}}
        }

        #[test]
        fn requant_rounds_half_away(x in -2_000_000i64..2_000_000, p in 1u32..20) {
            // A power of two is exact in fixed point, so the expected value is exact too.
            let r = Requant::new(1.0 / (1u64 << p) as f64).unwrap();
            let d = 1i64 << p;
            let want = if x >= 0 { (2 * x + d) / (2 * d) } else { -((-2 * x + d) / (2 * d)) };
            prop_assert_eq!(r.apply(x), want);
        }

        #[test]
        fn add_and_concat_match_f64(len in 1usize..50, seed in 0u64..1000,
            za in 0i32..256, zb in 0i32..256, zo in 0i32..256, ra in 0.01f64..4.0, rb in 0.01f64..4.0) {
            let (a, b) = (bytes(len, seed), bytes(len, seed + 1));
            let (fa, fb) = (Rescale::new(ra, za).unwrap(), Rescale::new(rb, zb).unwrap());
            let mut got = Vec::new();
            add(&a, fa, &b, fb, zo, (0, 255), &mut got).unwrap();
            for i in 0..len {
                let exact = (a[i] as i32 - za) as f64 * ra + (b[i] as i32 - zb) as f64 * rb;
                // Within the rounding of the 24-bit factors.
                prop_assert!((got[i] as f64 - (exact.round() + zo as f64).clamp(0.0, 255.0)).abs() <= 1.0);
            }
            let mut cat = Vec::new();
            concat(&[&a, &b], &[1, 1], &[Rescale::new(1.0, 0).unwrap(); 2], len, 0, &mut cat).unwrap();
            for i in 0..len {
                prop_assert_eq!((cat[2 * i], cat[2 * i + 1]), (a[i], b[i]));
            }
        }
    }

    #[test]
    fn vector_quantization_equals_quantize_u8_at_the_edges() {
        let mut xs = vec![
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            0.49999997,
            -0.49999997,
        ];
        // Ties, and both sides of 2^23 and 2^24 where the float grid gets coarser than 1.
        for k in -600..600 {
            xs.push(k as f32 + 0.5);
            xs.push(k as f32 * 0.25);
        }
        for base in [8_388_608.0f32, 16_777_216.0] {
            let mut v = base;
            for _ in 0..8 {
                xs.extend([v, -v]);
                v = f32::from_bits(v.to_bits() - 1);
            }
            let mut v = base;
            for _ in 0..8 {
                xs.extend([v, -v]);
                v = f32::from_bits(v.to_bits() + 1);
            }
        }
        for scale in [1.0f32, 0.5, 1.0 / 255.0, 0.0173, 3.0] {
            for zero in [0, 1, 127, 128, 254, 255] {
                let p = Params {
                    scale,
                    zero_point: zero,
                };
                let want: Vec<u8> = xs.iter().map(|&x| p.quantize_u8(x)).collect();
                let mut got = Vec::new();
                quantize_u8_into(&xs, p, &mut got);
                assert_eq!(got, want, "scale {scale}, zero {zero}");
                let scalar: Vec<u8> = xs
                    .iter()
                    .map(|&x| quantize_code(x, scale, zero as f32))
                    .collect();
                assert_eq!(scalar, want, "scale {scale}, zero {zero}");
            }
        }
    }

    #[test]
    fn batches_split_into_tasks_give_the_same_codes() {
        // LeNet-5's first layer on a batch large enough for several parallel tasks, against
        // the same images one at a time.
        let s = ConvShape {
            batch: 37,
            height: 28,
            width: 28,
            in_channels: 1,
            out_channels: 6,
            kernel: 5,
            stride: 1,
            padding: 2,
        };
        let x = bytes(37 * 28 * 28, 3);
        let w = codes(6 * 25, 4);
        let packed = PackedWeights::conv(&w, 6, 5, 1).unwrap();
        let stage = OutputStage {
            bias: (0..6).map(|j| j * 1000 - 2500).collect(),
            scale: vec![0.0021; 6],
            zero_point: 7,
            min: 7,
            max: 255,
        };
        let tile = RequantTile::new(&stage, packed.n()).unwrap();
        for isa in isas() {
            for pool in [None, Some((2, 2))] {
                let mut all = Vec::new();
                conv2d_pooled(
                    isa,
                    &x,
                    9,
                    &s,
                    &packed,
                    &tile,
                    pool,
                    Threads::Pool,
                    &mut all,
                )
                .unwrap();
                let one = ConvShape { batch: 1, ..s };
                let mut each = Vec::new();
                for img in x.chunks(28 * 28) {
                    let mut y = Vec::new();
                    conv2d_pooled(
                        isa,
                        img,
                        9,
                        &one,
                        &packed,
                        &tile,
                        pool,
                        Threads::Caller,
                        &mut y,
                    )
                    .unwrap();
                    each.extend(y);
                }
                assert_eq!(all, each, "{isa:?} {pool:?}");
            }
        }
    }

    #[test]
    fn detected_isa_is_available() {
        let isa = Isa::detect();
        eprintln!("integer path: {isa:?}");
        assert!(isa.available());
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(PackedWeights::new(&[1, 2, 3], 2, 2).is_err());
        assert!(PackedWeights::new(&[], 0, 0).is_err());
        assert!(Requant::new(0.0).is_err());
        assert!(Requant::new(f64::NAN).is_err());
        let w = PackedWeights::new(&[1; 8], 2, 4).unwrap();
        let mut out = vec![0; 2];
        assert!(gemm_u8i8(Isa::Portable, &[0; 3], 1, 4, &w, &mut out).is_err());
        assert!(PackedWeights::conv(&[1; 8], 2, 2, 2).is_err());
        assert!(PackedWeights::conv(&[], 1, 0, 1).is_err());
        // Convolution weights keep window rows apart: not a plain matrix.
        let conv = PackedWeights::conv(&[1; 18], 2, 3, 1).unwrap();
        let mut out = vec![0; 2];
        assert!(gemm_u8i8(Isa::Portable, &[0; 12], 1, 12, &conv, &mut out).is_err());
        // Rows reaching past the activations, or a group that does not divide the rows.
        let table = RowTable::new(vec![4]);
        let at = Rows::Table(&table, 0);
        assert!(gemm_at(Isa::Portable, &[0; 12], 1, at, 4, 1, &conv, &mut out).is_err());
        assert!(gemm_at(Isa::Portable, &[0; 64], 2, at, 4, 1, &conv, &mut out).is_err());
        let at = Rows::Strided(1);
        assert!(gemm_at(Isa::Portable, &[0; 64], 3, at, 4, 2, &conv, &mut out).is_err());
    }
}
