//! Integer kernels on NHWC u8 activations and int8 weights, accumulating in i32.
//!
//! The matrix product (u8 x i8 -> i32) is the one place where SIMD pays; it uses AVX-512 VNNI
//! (`vpdpbusd`, 16 lanes) or AVX-VNNI (8 lanes) when the CPU has them, detected at run time,
//! and a portable loop otherwise. Integer sums are exact, so every path gives bit-identical
//! results; everything after the sums (requantization, pooling, additions) is shared code.
//!
//! Requantization multiplies an i32 accumulator by a real factor held as a 31-bit fixed-point
//! mantissa and a right shift, and rounds **half away from zero**, like [`QuantParams`]'s
//! `f32::round`.
//!
//! [`QuantParams`]: crate::QuantParams

use rayon::prelude::*;

use crate::error::{CompressError, Result};

/// Largest reduction length: `K * 255 * 127` must fit in an i32 accumulator.
pub const MAX_K: usize = 65_536;

/// Which instructions the matrix product uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI: `vpdpbusd` on 512-bit vectors.
    Avx512Vnni,
    /// AVX-VNNI: `vpdpbusd` on 256-bit vectors (VEX-encoded).
    AvxVnni,
    /// Plain Rust, auto-vectorised; same results.
    Portable,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        [Self::Avx512Vnni, Self::AvxVnni]
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
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Output channels per SIMD block: one 512-bit vector of i32 lanes.
const NB: usize = 16;

/// Int8 weights `[n][k]` laid out for the matrix product.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of 4 (one `vpdpbusd` group).
    kp: usize,
    /// `[n][kp]`, zero padded: the portable path.
    rows: Vec<i8>,
    /// `[n / 16][kp / 4][16][4]`, zero padded: one 64-byte vector per group of 4 k's.
    blocks: Vec<i8>,
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
        let kp = k.div_ceil(4) * 4;
        let nblocks = n.div_ceil(NB);
        let mut rows = vec![0i8; n * kp];
        let mut blocks = vec![0i8; nblocks * NB * kp];
        let mut sums = vec![0i32; n];
        for j in 0..n {
            let src = &w[j * k..(j + 1) * k];
            rows[j * kp..j * kp + k].copy_from_slice(src);
            sums[j] = src.iter().map(|&v| v as i32).sum();
            let (b, lane) = (j / NB, j % NB);
            for (kk, &v) in src.iter().enumerate() {
                blocks[b * NB * kp + (kk / 4) * NB * 4 + lane * 4 + kk % 4] = v;
            }
        }
        Ok(Self {
            n,
            k,
            kp,
            rows,
            blocks,
            sums,
        })
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Reduction length padded to a multiple of 4: the row stride activations must have.
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
/// weights) beyond `k`; `out` is `m * w.n()`.
pub fn gemm_u8i8(
    isa: Isa,
    a: &[u8],
    m: usize,
    lda: usize,
    w: &PackedWeights,
    out: &mut [i32],
) -> Result<()> {
    let n = w.n;
    if lda < w.kp || a.len() < m.saturating_sub(1) * lda + w.kp || out.len() != m * n {
        return Err(CompressError::InvalidConfig {
            name: "gemm",
            value: format!(
                "m {m}, lda {lda}, kp {}, a {}, out {}",
                w.kp,
                a.len(),
                out.len()
            ),
            reason: "buffers do not match the shapes",
        });
    }
    if m == 0 {
        return Ok(());
    }
    let isa = if isa.available() { isa } else { Isa::Portable };
    // Split rows across threads when there is enough work to amortise the fork.
    let work = m * w.kp * n;
    let threads = rayon::current_num_threads().max(1);
    let chunk = if work >= (1 << 21) && m >= 8 {
        m.div_ceil(threads * 4).max(4)
    } else {
        m
    };
    if chunk >= m {
        // One chunk: stay on this thread (handing work to the pool costs a wake-up).
        gemm_rows(isa, a, m, lda, w, out);
        return Ok(());
    }
    out.par_chunks_mut(chunk * n)
        .enumerate()
        .for_each(|(c, o)| {
            let r0 = c * chunk;
            let rows = o.len() / n;
            gemm_rows(isa, &a[r0 * lda..], rows, lda, w, o);
        });
    Ok(())
}

fn gemm_rows(isa: Isa, a: &[u8], m: usize, lda: usize, w: &PackedWeights, out: &mut [i32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` confirmed the CPU features; `gemm_u8i8` checked that `a` holds
        // `m` rows of `lda >= kp` bytes and `out` holds `m * n` values.
        Isa::Avx512Vnni => unsafe { x86::gemm_avx512(a, m, lda, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX-VNNI.
        Isa::AvxVnni => unsafe { x86::gemm_avx256(a, m, lda, w, out) },
        _ => gemm_portable(a, m, lda, w, out),
    }
}

fn gemm_portable(a: &[u8], m: usize, lda: usize, w: &PackedWeights, out: &mut [i32]) {
    let (n, kp) = (w.n, w.kp);
    for r in 0..m {
        let row = &a[r * lda..r * lda + kp];
        for j in 0..n {
            let wr = &w.rows[j * kp..(j + 1) * kp];
            out[r * n + j] = row.iter().zip(wr).map(|(&x, &y)| x as i32 * y as i32).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{depthwise_row, requant_tiles, DwRow, PackedWeights, RequantTile, NB};

    /// # Safety
    /// The CPU must have AVX-512F, DQ, BW and VL.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub(super) unsafe fn requant_avx512(acc: &[i32], out: &mut [u8], t: &RequantTile) {
        requant_tiles(acc, out, t)
    }

    /// # Safety
    /// The CPU must have AVX-512F, DQ, BW and VL.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub(super) unsafe fn depthwise_row_avx512(r: &DwRow<'_>, oy: usize, acc: &mut [i32]) {
        depthwise_row(r, oy, acc)
    }

    /// Writes 16 lanes (or the first `valid`) to `dst`.
    #[inline(always)]
    fn put(dst: &mut [i32], lanes: [i32; NB], valid: usize) {
        dst[..valid].copy_from_slice(&lanes[..valid]);
    }

    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 VNNI; `a` must hold `m` rows of `lda >= kp`
    /// bytes (the last row at least `kp`), `out` `m * w.n` values.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn gemm_avx512(
        a: &[u8],
        m: usize,
        lda: usize,
        w: &PackedWeights,
        out: &mut [i32],
    ) {
        let (n, kp) = (w.n, w.kp);
        let groups = kp / 4;
        let ap = a.as_ptr();
        for b in 0..n.div_ceil(NB) {
            let bp = w.blocks[b * NB * kp..].as_ptr();
            let valid = (n - b * NB).min(NB);
            let mask: __mmask16 = if valid == NB { !0 } else { (1 << valid) - 1 };
            let mut r = 0;
            // Four rows share each weight vector load.
            while r + 4 <= m {
                let mut acc = [_mm512_setzero_si512(); 4];
                for g in 0..groups {
                    // SAFETY: group g of block b lies inside `blocks` (nblocks * 16 * kp bytes);
                    // byte 4g..4g+4 of rows r..r+4 lies inside `a` (checked by the caller).
                    unsafe {
                        let wv = _mm512_loadu_si512(bp.add(g * 64) as *const _);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let x = (ap.add((r + i) * lda + 4 * g) as *const i32).read_unaligned();
                            *acc = _mm512_dpbusd_epi32(*acc, _mm512_set1_epi32(x), wv);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let dst = &mut out[(r + i) * n + b * NB..][..valid];
                    // SAFETY: the mask selects the `valid` lanes, which `dst` holds.
                    unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr(), mask, *acc) };
                }
                r += 4;
            }
            while r < m {
                let mut acc = _mm512_setzero_si512();
                for g in 0..groups {
                    // SAFETY: as above, for one row.
                    unsafe {
                        let wv = _mm512_loadu_si512(bp.add(g * 64) as *const _);
                        let x = (ap.add(r * lda + 4 * g) as *const i32).read_unaligned();
                        acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(x), wv);
                    }
                }
                let dst = &mut out[r * n + b * NB..][..valid];
                // SAFETY: the mask selects the `valid` lanes, which `dst` holds.
                unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr(), mask, acc) };
                r += 1;
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI; buffers as for [`gemm_avx512`].
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn gemm_avx256(
        a: &[u8],
        m: usize,
        lda: usize,
        w: &PackedWeights,
        out: &mut [i32],
    ) {
        let (n, kp) = (w.n, w.kp);
        let groups = kp / 4;
        let ap = a.as_ptr();
        for b in 0..n.div_ceil(NB) {
            let bp = w.blocks[b * NB * kp..].as_ptr();
            let valid = (n - b * NB).min(NB);
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(4);
                // [row][half]: a 16-channel block is two 8-lane halves.
                let mut acc = [[_mm256_setzero_si256(); 2]; 4];
                for g in 0..groups {
                    // SAFETY: as in `gemm_avx512`; each 64-byte group is two 32-byte halves.
                    unsafe {
                        let lo = _mm256_loadu_si256(bp.add(g * 64) as *const _);
                        let hi = _mm256_loadu_si256(bp.add(g * 64 + 32) as *const _);
                        for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                            let x = (ap.add((r + i) * lda + 4 * g) as *const i32).read_unaligned();
                            let x = _mm256_set1_epi32(x);
                            acc[0] = _mm256_dpbusd_avx_epi32(acc[0], x, lo);
                            acc[1] = _mm256_dpbusd_avx_epi32(acc[1], x, hi);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(rows) {
                    let mut lanes = [0i32; NB];
                    // SAFETY: `lanes` is 64 bytes: two 32-byte stores.
                    unsafe {
                        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, acc[0]);
                        _mm256_storeu_si256(lanes.as_mut_ptr().add(8) as *mut _, acc[1]);
                    }
                    put(&mut out[(r + i) * n + b * NB..], lanes, valid);
                }
                r += rows;
            }
        }
    }
}

/// Right shift by `s >= 1` rounding half away from zero.
#[inline]
fn round_shift(x: i64, s: u32) -> i64 {
    // Branch-free: shift the magnitude, then restore the sign (`sign` is 0 or -1).
    let sign = x >> 63;
    let mag = (x ^ sign) - sign;
    (((mag + (1i64 << (s - 1))) >> s) ^ sign) - sign
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
#[derive(Debug, Clone, PartialEq)]
pub struct OutputStage {
    /// Added to each channel's accumulator before scaling.
    pub bias: Vec<i32>,
    /// Per-channel `input scale * weight scale / output scale`.
    pub requant: Vec<Requant>,
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
        let y = self.requant[j].apply(acc as i64 + self.bias[j] as i64) + self.zero_point as i64;
        y.clamp(self.min as i64, self.max as i64) as u8
    }

    fn check(&self, n: usize) -> Result<()> {
        if self.bias.len() != n || self.requant.len() != n {
            return Err(CompressError::InvalidConfig {
                name: "output stage",
                value: format!(
                    "{} biases, {} multipliers",
                    self.bias.len(),
                    self.requant.len()
                ),
                reason: "need one per output channel",
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
    requantize_rows(acc, n, stage, out);
    Ok(())
}

fn requantize_rows(acc: &[i32], n: usize, stage: &OutputStage, out: &mut [u8]) {
    RequantTile::new(stage, n).run(acc, out);
}

impl RequantTile {
    /// Channel parameters repeated to a tile of >= 64 values, so that the loop runs over long
    /// contiguous runs (vectorisable) even for layers with a handful of channels.
    fn new(stage: &OutputStage, n: usize) -> Self {
        let reps = 64usize.div_ceil(n).max(1);
        let tile =
            |f: &dyn Fn(usize) -> i64| -> Vec<i64> { (0..reps * n).map(|t| f(t % n)).collect() };
        Self {
            bias: tile(&|j| stage.bias[j] as i64),
            mantissa: tile(&|j| stage.requant[j].mantissa),
            half: tile(&|j| 1i64 << (stage.requant[j].shift - 1)),
            shift: tile(&|j| stage.requant[j].shift as i64),
            zero: stage.zero_point as i64,
            min: stage.min as i64,
            max: stage.max as i64,
            len: reps * n,
        }
    }

    /// Requantizes whole rows of accumulators (`acc.len()` a multiple of the channel count).
    fn run(&self, acc: &[i32], out: &mut [u8]) {
        if wide_simd() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `wide_simd` confirmed AVX-512F/DQ/BW/VL.
            unsafe {
                x86::requant_avx512(acc, out, self)
            };
            #[cfg(target_arch = "x86_64")]
            return;
        }
        requant_tiles(acc, out, self)
    }
}

/// Whether the AVX-512 (F, DQ, BW, VL) versions of the element-wise loops can run.
#[inline]
fn wide_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Per-channel requantization parameters tiled to a run length.
pub(crate) struct RequantTile {
    bias: Vec<i64>,
    mantissa: Vec<i64>,
    half: Vec<i64>,
    shift: Vec<i64>,
    zero: i64,
    min: i64,
    max: i64,
    len: usize,
}

/// The requantization loop; inlined into ISA-specific wrappers so that the compiler
/// vectorises it with their instructions. Same integer arithmetic, same results.
#[inline(always)]
fn requant_tiles(acc: &[i32], out: &mut [u8], t: &RequantTile) {
    for (a, o) in acc.chunks(t.len).zip(out.chunks_mut(t.len)) {
        for (((((&x, y), &b), &m), &h), &s) in a
            .iter()
            .zip(o.iter_mut())
            .zip(&t.bias)
            .zip(&t.mantissa)
            .zip(&t.half)
            .zip(&t.shift)
        {
            // `Requant::apply` written branch-free: round half away from zero.
            let v = (x as i64 + b) * m;
            let sign = v >> 63;
            let mag = ((v ^ sign) - sign) as u64;
            let r = ((((mag + h as u64) >> s as u64) as i64) ^ sign) - sign;
            *y = (r + t.zero).clamp(t.min, t.max) as u8;
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

/// Images per parallel task and per cache block of a layer whose image produces `rows`
/// rows of `bytes` bytes: blocks stay within ~64 KiB (below the allocator's mmap threshold,
/// in L2), tasks spread the batch over the pool's threads.
fn split_batch(batch: usize, rows: usize, bytes: usize) -> (usize, usize) {
    let block = ((1usize << 16) / (rows * bytes).max(1)).clamp(1, batch.max(1));
    let threads = rayon::current_num_threads().max(1);
    let task = batch.div_ceil(threads).max(block);
    (task, block)
}

/// Dense convolution of NHWC u8 `x` (zero point `x_zero`) with weights packed from
/// `[out][ky][kx][in]`, into NHWC u8 `out`. `stage.bias` must already hold
/// `bias - x_zero * row_sum` (see [`PackedWeights::row_sums`]): padding is `x_zero`.
pub fn conv2d(
    isa: Isa,
    x: &[u8],
    x_zero: u8,
    s: &ConvShape,
    w: &PackedWeights,
    stage: &OutputStage,
    out: &mut Vec<u8>,
) -> Result<()> {
    s.check_input(x)?;
    let (oh, ow) = s.output()?;
    if w.n != s.out_channels || w.k != s.kernel * s.kernel * s.in_channels {
        return Err(CompressError::InvalidConfig {
            name: "convolution weights",
            value: format!("{} x {}", w.n, w.k),
            reason: "do not match the convolution shape",
        });
    }
    stage.check(w.n)?;
    let isa = if isa.available() { isa } else { Isa::Portable };
    let (n, kp, rows) = (w.n, w.kp, oh * ow);
    let direct = s.kernel == 1 && s.stride == 1 && s.padding == 0 && w.k == w.kp;
    out.clear();
    out.resize(s.batch * rows * n, 0);
    let image_in = s.height * s.width * s.in_channels;
    let (task, block) = split_batch(s.batch, rows, kp + 4 * n);
    // Images `first..` of one task into `o`, a cache block at a time.
    let run = |first: usize, o: &mut [u8]| {
        let images = o.len() / (rows * n);
        let (mut cols, mut acc) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < images {
            let nb = block.min(images - i);
            let (b0, m) = (first + i, nb * rows);
            // Fully overwritten below: grow, never re-zero.
            if acc.len() < m * n {
                acc.resize(m * n, 0);
            }
            let acc = &mut acc[..m * n];
            if direct {
                // A pointwise convolution is already a matrix product on NHWC rows.
                gemm_rows(isa, &x[b0 * image_in..], m, kp, w, acc);
            } else {
                if cols.len() < m * kp + SLACK {
                    cols.resize(m * kp + SLACK, 0);
                }
                im2col_images(x, s, x_zero, kp, b0..b0 + nb, &mut cols);
                gemm_rows(isa, &cols, m, kp, w, acc);
            }
            requantize_rows(acc, n, stage, &mut o[i * rows * n..(i + nb) * rows * n]);
            i += nb;
        }
    };
    if task >= s.batch {
        run(0, out);
    } else {
        out.par_chunks_mut(task * rows * n)
            .enumerate()
            .for_each(|(t, o)| run(t * task, o));
    }
    Ok(())
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
    s.check_input(x)?;
    let (oh, ow) = s.output()?;
    let (c, k) = (s.in_channels, s.kernel);
    if s.out_channels != c || w.len() != k * k * c {
        return Err(CompressError::InvalidConfig {
            name: "depthwise weights",
            value: format!("{} codes for {c} channels, kernel {k}", w.len()),
            reason: "need in = out channels and k * k * c codes",
        });
    }
    stage.check(c)?;
    out.clear();
    out.resize(s.batch * oh * ow * c, 0);
    let wi: Vec<i32> = w.iter().map(|&v| v as i32).collect();
    let per_image = oh * ow * c;
    let tile = RequantTile::new(stage, c);
    let wide = wide_simd();
    let run = |first: usize, o: &mut [u8]| {
        let mut acc = vec![0i32; ow * c];
        for (i, img) in o.chunks_mut(per_image).enumerate() {
            let r = DwRow {
                x: &x[(first + i) * s.height * s.width * c..][..s.height * s.width * c],
                s,
                z: x_zero as i32,
                w: &wi,
                ow,
            };
            for (oy, orow) in img.chunks_mut(ow * c).enumerate() {
                if wide {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `wide_simd` confirmed the features.
                    unsafe {
                        x86::depthwise_row_avx512(&r, oy, &mut acc)
                    };
                } else {
                    depthwise_row(&r, oy, &mut acc);
                }
                tile.run(&acc, orow);
            }
        }
    };
    let (task, _) = split_batch(s.batch, oh * ow, c * k * k);
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

    /// Reference convolution straight from the definition, on NCHW-free indices.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        x: &[u8],
        z: i32,
        s: &ConvShape,
        w: &[i8], // [out][ky][kx][in]
        bias: &[i32],
        rq: &[Requant],
        oz: i32,
        depthwise: bool,
    ) -> Vec<u8> {
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
                        let y = rq[o].apply(acc + bias[o] as i64) + oz as i64;
                        out.push(y.clamp(0, 255) as u8);
                    }
                }
            }
        }
        out
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
        [Isa::Portable, Isa::AvxVnni, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| i.available())
            .collect()
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
            let rq: Vec<Requant> = (0..cout).map(|j| Requant::new(mult * (1.0 + j as f64 / 7.0)).unwrap()).collect();
            let want = naive_conv(&x, z as i32, &s, &w, &bias, &rq, oz, false);
            let packed = PackedWeights::new(&w, cout, k).unwrap();
            let stage = OutputStage {
                bias: bias.iter().zip(packed.row_sums()).map(|(&b, &ws)| b - z as i32 * ws).collect(),
                requant: rq, zero_point: oz, min: 0, max: 255,
            };
            for isa in isas() {
                let mut got = Vec::new();
                conv2d(isa, &x, z, &s, &packed, &stage, &mut got).unwrap();
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
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
            let rq: Vec<Requant> = (0..c).map(|_| Requant::new(mult).unwrap()).collect();
            let want = naive_conv(&x, z as i32, &s, &w, &bias, &rq, oz, true);
            let stage = OutputStage { bias, requant: rq, zero_point: oz, min: 0, max: 255 };
            let mut got = Vec::new();
            depthwise_conv2d(&x, z, &s, &w, &stage, &mut got).unwrap();
            prop_assert_eq!(got, want);
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
    }
}
