//! Label-preserving random image transforms: the paper's random rotation, translation and
//! scaling (one affine warp), and elastic distortion (Simard et al. 2003).
//!
//! - [`RandomAffine`]: rotation, scaling, optional shear and translation about the image centre,
//!   drawn per sample and applied as one bilinear warp.
//! - [`ElasticDistortion`]: a smoothed random displacement field ([`ElasticDistortion::simard`]
//!   for the published setting, the milder [`ElasticDistortion::default`] for training).
//! - [`Compose`]: several transforms in sequence.
//! - [`AffineWarp`]: one fixed affine warp, for test-time transforms and checks.
//!
//! Pixels that come from outside the source are background (0), and every output is clamped
//! into `[0, 1]`. Identity parameters reproduce the input bit-for-bit.
//!
//! ```
//! use std::sync::Arc;
//! use hdr_data::augment::{Compose, ElasticDistortion, RandomAffine};
//! use hdr_data::BatchConfig;
//!
//! let cfg = BatchConfig {
//!     augment: Some(Arc::new(
//!         Compose::default().then(RandomAffine::default()).then(ElasticDistortion::default()),
//!     )),
//!     ..BatchConfig::default()
//! };
//! # let _ = cfg;
//! ```

use std::cell::Cell;
use std::sync::Arc;

use crate::error::{DataError, Result};
use crate::rng::Rng;

/// A random, label-preserving transform of one grey image.
///
/// Implementations draw every random number from `rng`, which the caller derives from
/// `(seed, epoch, sample index)`; that is what makes augmentation reproducible whatever the
/// number of threads.
pub trait Augment: Send + Sync + std::fmt::Debug {
    /// Writes the transformed `src` into `dst`.
    ///
    /// Both are `height * width` row-major intensities in `[0, 1]` (0 = background) and never
    /// alias; `dst` must come out in `[0, 1]` too.
    fn apply(&self, src: &[f32], dst: &mut [f32], width: usize, height: usize, rng: &mut Rng);

    /// Checks the transform's parameters; [`crate::Dataset::batches`] calls it so that a bad
    /// setting is an error up front instead of being clamped silently on every image.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// `x` clamped into `[0, 1]`; NaN becomes background rather than leaking into a batch.
#[inline(always)]
fn unit(x: f32) -> f32 {
    if x >= 0.0 {
        x.min(1.0)
    } else {
        0.0
    }
}

fn copy_clamped(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = unit(s);
    }
}

/// Whether `src` and `dst` hold `width * height` pixels. A mismatch is a bug in the calling
/// code: debug builds stop on it, release builds write background instead of panicking.
fn sizes_ok(src: &[f32], dst: &mut [f32], width: usize, height: usize) -> bool {
    let ok = width
        .checked_mul(height)
        .is_some_and(|n| src.len() == n && dst.len() == n);
    debug_assert!(
        ok,
        "augment: {width}x{height} image with src.len() = {} and dst.len() = {}",
        src.len(),
        dst.len()
    );
    if !ok {
        dst.fill(0.0);
    }
    ok
}

/// A source image with a one-pixel frame of background around it, so that bilinear sampling
/// anywhere in `(-1, w) x (-1, h)` reads four in-range values without per-pixel edge cases.
struct Framed {
    data: Vec<f32>,
    w: usize,
    h: usize,
}

impl Framed {
    /// Copies `src` into the thread's reusable frame buffer; give it back with [`Framed::done`].
    fn new(src: &[f32], w: usize, h: usize) -> Self {
        let mut data = FRAME_SCRATCH.with(Cell::take);
        data.clear();
        data.resize((w + 2) * (h + 2), 0.0);
        for (dst, row) in data[w + 3..].chunks_mut(w + 2).zip(src.chunks_exact(w)) {
            dst[..w].copy_from_slice(row);
        }
        Self { data, w, h }
    }

    fn done(self) {
        FRAME_SCRATCH.with(|c| c.set(self.data));
    }

    /// Bilinear sample at `(sx, sy)` (pixel centres at integer coordinates), background (0)
    /// outside the image.
    ///
    /// At integer coordinates the neighbour weights are exactly 0, so the result is exactly the
    /// source pixel: that is what makes identity and whole-pixel shifts exact.
    #[inline(always)]
    fn sample(&self, sx: f32, sy: f32) -> f32 {
        // Written so that NaN coordinates fail the test and give background.
        if !(sx > -1.0 && sy > -1.0 && sx < self.w as f32 && sy < self.h as f32) {
            return 0.0;
        }
        let (x0, y0) = (floor_i(sx), floor_i(sy)); // in [-1, w - 1] and [-1, h - 1]
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let stride = self.w + 2;
        let i = (y0 + 1) as usize * stride + (x0 + 1) as usize;
        let (top, bottom) = (&self.data[i..i + 2], &self.data[i + stride..i + stride + 2]);
        let t = top[0] + (top[1] - top[0]) * fx;
        let b = bottom[0] + (bottom[1] - bottom[0]) * fx;
        t + (b - t) * fy
    }
}

/// `floor(v)` for `v` in (-1, i32::MAX).
#[inline(always)]
fn floor_i(v: f32) -> isize {
    let t = v as isize;
    t - isize::from((t as f32) > v)
}

/// One fixed affine warp about the image centre.
///
/// A point `p` of the source goes to `c + t + scale * R(rotation) * Shear(shear) * (p - c)`,
/// where `c` is the centre of the image (`((width - 1) / 2, (height - 1) / 2)` with pixel centres
/// at integer coordinates) and `t = (tx, ty)`. The output is computed by inverse mapping: each
/// output pixel samples the source bilinearly where the inverse warp sends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineWarp {
    /// Rotation in degrees, counter-clockwise as displayed (rows grow downwards).
    pub rotation_deg: f32,
    /// Isotropic scale factor; above 1 enlarges the digit.
    pub scale: f32,
    /// Horizontal shear angle in degrees: positive slants the upper part of the digit to the
    /// left (x' = x + tan(shear) * y, with y pointing down).
    pub shear_deg: f32,
    /// Shift to the right in pixels.
    pub tx: f32,
    /// Shift downwards in pixels.
    pub ty: f32,
}

impl Default for AffineWarp {
    /// The identity.
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl AffineWarp {
    /// The warp that changes nothing.
    pub const IDENTITY: Self = Self {
        rotation_deg: 0.0,
        scale: 1.0,
        shear_deg: 0.0,
        tx: 0.0,
        ty: 0.0,
    };

    /// A pure translation by `(tx, ty)` pixels.
    pub fn translation(tx: f32, ty: f32) -> Self {
        Self {
            tx,
            ty,
            ..Self::IDENTITY
        }
    }

    /// A pure rotation by `degrees` (counter-clockwise as displayed) about the centre.
    pub fn rotation(degrees: f32) -> Self {
        Self {
            rotation_deg: degrees,
            ..Self::IDENTITY
        }
    }

    /// A pure scaling by `factor` about the centre.
    pub fn scaling(factor: f32) -> Self {
        Self {
            scale: factor,
            ..Self::IDENTITY
        }
    }

    /// True when the warp is exactly the identity.
    pub fn is_identity(&self) -> bool {
        *self == Self::IDENTITY
    }

    /// The inverse map as `[a, b, c, d, e, f]`: output pixel `(x, y)` samples the source at
    /// `(a x + b y + c, d x + e y + f)`.
    ///
    /// Computed in f64 so that exact cases (identity, whole-pixel shifts) stay exact in f32.
    fn inverse_matrix(&self, width: usize, height: usize) -> [f32; 6] {
        let (s, c) = f64::from(self.rotation_deg).to_radians().sin_cos();
        let k = f64::from(self.shear_deg).to_radians().tan();
        let scale = f64::from(self.scale);
        // Forward linear part: scale * [[c, s], [-s, c]] * [[1, k], [0, 1]]; determinant scale^2.
        let (a00, a01) = (scale * c, scale * (c * k + s));
        let (a10, a11) = (-scale * s, scale * (c - s * k));
        let det = a00 * a11 - a01 * a10;
        let (i00, i01, i10, i11) = (a11 / det, -a01 / det, -a10 / det, a00 / det);
        let cx = (width as f64 - 1.0) / 2.0;
        let cy = (height as f64 - 1.0) / 2.0;
        // p = c + A^-1 (q - c - t)
        let (ox, oy) = (cx + f64::from(self.tx), cy + f64::from(self.ty));
        let bx = cx - (i00 * ox + i01 * oy);
        let by = cy - (i10 * ox + i11 * oy);
        [i00, i01, bx, i10, i11, by].map(|v| v as f32)
    }

    /// Writes the warped `src` into `dst` (both `width * height`, row-major), clamped to
    /// `[0, 1]`; what comes from outside the source is background (0).
    pub fn warp(&self, src: &[f32], dst: &mut [f32], width: usize, height: usize) {
        if !sizes_ok(src, dst, width, height) {
            return;
        }
        if self.is_identity() {
            copy_clamped(src, dst);
            return;
        }
        if width == 0 || height == 0 {
            return;
        }
        let m = self.inverse_matrix(width, height);
        let src = Framed::new(src, width, height);
        for (y, row) in dst.chunks_exact_mut(width).enumerate() {
            let yf = y as f32;
            let (row_x, row_y) = (m[1] * yf + m[2], m[4] * yf + m[5]);
            for (x, d) in row.iter_mut().enumerate() {
                let xf = x as f32;
                *d = unit(src.sample(m[0] * xf + row_x, m[3] * xf + row_y));
            }
        }
        src.done();
    }
}

impl Augment for AffineWarp {
    /// Applies the fixed warp; draws nothing from `rng`.
    fn apply(&self, src: &[f32], dst: &mut [f32], width: usize, height: usize, _rng: &mut Rng) {
        self.warp(src, dst, width, height);
    }
}

/// Random rotation, scaling, shear and translation, drawn independently and uniformly per
/// sample and applied as one [`AffineWarp`] about the image centre.
///
/// The default is a common MNIST setting that keeps digits readable: rotation within ±10°,
/// scale in `[0.9, 1.1]`, translation within ±2 px on each axis, no shear. A range of zero gives
/// exactly zero (scale exactly 1 when `min_scale == max_scale == 1`), so
/// [`RandomAffine::identity`] reproduces its input bit-for-bit.
///
/// Every sample draws exactly five numbers (rotation, scale, shear, x shift, y shift, in that
/// order) whatever the ranges, so narrowing one range does not change the others' draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomAffine {
    /// Largest rotation in degrees; the angle is uniform in `[-max, max]`.
    pub max_rotation_deg: f32,
    /// Smallest scale factor (> 0).
    pub min_scale: f32,
    /// Largest scale factor (>= `min_scale`); the factor is uniform in `[min, max]`.
    pub max_scale: f32,
    /// Largest horizontal shear in degrees (< 90); uniform in `[-max, max]`.
    pub max_shear_deg: f32,
    /// Largest shift in pixels; x and y shifts are uniform in `[-max, max]`, independently.
    pub max_translation: f32,
}

impl Default for RandomAffine {
    /// ±10°, scale 0.9-1.1, ±2 px, no shear.
    fn default() -> Self {
        Self {
            max_rotation_deg: 10.0,
            min_scale: 0.9,
            max_scale: 1.1,
            max_shear_deg: 0.0,
            max_translation: 2.0,
        }
    }
}

fn invalid(name: &'static str, value: f32, reason: &'static str) -> DataError {
    DataError::InvalidParameter {
        name,
        value: value.to_string(),
        reason,
    }
}

impl RandomAffine {
    /// All ranges zero and scale 1: every sample is unchanged.
    pub fn identity() -> Self {
        Self {
            max_rotation_deg: 0.0,
            min_scale: 1.0,
            max_scale: 1.0,
            max_shear_deg: 0.0,
            max_translation: 0.0,
        }
    }

    /// Checks that the ranges make sense: finite, non-negative, scales positive and ordered,
    /// shear below 90°.
    pub fn validate(&self) -> Result<()> {
        let non_negative = [
            ("max_rotation_deg", self.max_rotation_deg),
            ("max_shear_deg", self.max_shear_deg),
            ("max_translation", self.max_translation),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(name, v, "must be finite and >= 0"));
            }
        }
        if self.max_shear_deg >= 90.0 {
            return Err(invalid(
                "max_shear_deg",
                self.max_shear_deg,
                "must be below 90 degrees",
            ));
        }
        if !(self.min_scale.is_finite() && self.min_scale > 0.0) {
            return Err(invalid(
                "min_scale",
                self.min_scale,
                "must be finite and > 0",
            ));
        }
        if !(self.max_scale.is_finite() && self.max_scale >= self.min_scale) {
            return Err(invalid(
                "max_scale",
                self.max_scale,
                "must be finite and >= min_scale",
            ));
        }
        Ok(())
    }

    /// Draws the warp of one sample.
    pub fn sample(&self, rng: &mut Rng) -> AffineWarp {
        fn symmetric(max: f32, u: f32) -> f32 {
            if max > 0.0 {
                max * (2.0 * u - 1.0)
            } else {
                0.0
            }
        }
        let u: [f32; 5] = std::array::from_fn(|_| rng.next_f32());
        let scale = if self.max_scale > self.min_scale {
            self.min_scale + (self.max_scale - self.min_scale) * u[1]
        } else {
            self.min_scale
        };
        AffineWarp {
            rotation_deg: symmetric(self.max_rotation_deg, u[0]),
            scale,
            shear_deg: symmetric(self.max_shear_deg, u[2]),
            tx: symmetric(self.max_translation, u[3]),
            ty: symmetric(self.max_translation, u[4]),
        }
    }
}

impl Augment for RandomAffine {
    fn apply(&self, src: &[f32], dst: &mut [f32], width: usize, height: usize, rng: &mut Rng) {
        self.sample(rng).warp(src, dst, width, height);
    }

    fn validate(&self) -> Result<()> {
        RandomAffine::validate(self)
    }
}

/// Elastic distortion (Simard, Steinkraus & Platt 2003): every pixel is displaced by a random
/// field made of independent uniform `[-1, 1]` values per pixel and axis, smoothed by a Gaussian
/// of standard deviation `sigma` pixels and multiplied by `alpha`; the image is resampled
/// bilinearly at the displaced positions.
///
/// The Gaussian is normalised (weights sum to 1), truncated at 3 sigma (the mass beyond is
/// below 0.3%) and applied separably with zero padding, like the usual
/// `scipy.ndimage.gaussian_filter(mode="constant")` reimplementations, so `alpha` means the same
/// as there. Away from the borders the displacement along each axis then has a standard
/// deviation of about `alpha / (sqrt(3) * 2 sigma sqrt(pi))` pixels: about 1.4 px for
/// [`ElasticDistortion::simard`] (34, 4) and 0.65 px for the default, [`ElasticDistortion::mild`]
/// (16, 4).
///
/// `alpha = 0` is exactly the identity. Each sample draws `2 * width * height` numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ElasticDistortion {
    /// Scale of the displacement field, in pixels per unit of smoothed field (>= 0).
    pub alpha: f32,
    /// Standard deviation of the smoothing Gaussian in pixels (>= 0; 0 = no smoothing).
    pub sigma: f32,
}

impl Default for ElasticDistortion {
    /// [`ElasticDistortion::mild`].
    fn default() -> Self {
        Self::mild()
    }
}

/// Largest accepted `sigma`: far beyond any image this crate handles, small enough that the
/// kernel stays a few thousand taps.
const MAX_SIGMA: f32 = 1000.0;

impl ElasticDistortion {
    /// The published MNIST setting, `alpha = 34`, `sigma = 4` (Simard et al. 2003, section 2).
    pub fn simard() -> Self {
        Self {
            alpha: 34.0,
            sigma: 4.0,
        }
    }

    /// A milder field, `alpha = 16`, `sigma = 4`: about half the displacement of
    /// [`ElasticDistortion::simard`]. Many reimplementations find the published strength
    /// distorts 28x28 digits too much for small models or when combined with a random affine
    /// warp, and train better with a weaker field; this is the default.
    pub fn mild() -> Self {
        Self {
            alpha: 16.0,
            sigma: 4.0,
        }
    }

    /// No distortion (`alpha = 0`).
    pub fn identity() -> Self {
        Self {
            alpha: 0.0,
            sigma: 4.0,
        }
    }

    /// Checks that `alpha` and `sigma` are finite and non-negative (and `sigma` at most 1000).
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(invalid("alpha", self.alpha, "must be finite and >= 0"));
        }
        if !(self.sigma.is_finite() && (0.0..=MAX_SIGMA).contains(&self.sigma)) {
            return Err(invalid("sigma", self.sigma, "must be in [0, 1000]"));
        }
        Ok(())
    }
}

/// Normalised Gaussian taps `[-r, r]` of standard deviation `sigma`, truncated at 3 sigma and
/// at `max_radius` (`[1.0]` for `sigma = 0`).
fn gaussian_kernel(sigma: f32, max_radius: usize, out: &mut Vec<f32>) {
    out.clear();
    let sigma = f64::from(sigma.min(MAX_SIGMA));
    let radius = if sigma > 0.0 {
        ((3.0 * sigma).ceil() as usize).min(max_radius)
    } else {
        0
    };
    if radius == 0 {
        out.push(1.0);
        return;
    }
    let tap = |i: usize| {
        let d = i as f64 - radius as f64;
        (-d * d / (2.0 * sigma * sigma)).exp()
    };
    let sum: f64 = (0..=2 * radius).map(tap).sum();
    out.extend((0..=2 * radius).map(|i| (tap(i) / sum) as f32));
}

/// `dst[i] += k * src[i + off]` wherever both indices are in range (zero padding).
#[inline(always)]
fn axpy_shifted(dst: &mut [f32], src: &[f32], k: f32, off: isize) {
    let n = dst.len();
    let shift = off.unsigned_abs().min(n);
    let (d, s) = if off >= 0 {
        (&mut dst[..n - shift], &src[shift..])
    } else {
        (&mut dst[shift..], &src[..n - shift])
    };
    for (d, &s) in d.iter_mut().zip(s) {
        *d += k * s;
    }
}

/// `field` smoothed separably by `kernel` (zero padding), using `tmp` as the intermediate.
///
/// Both passes are written as shifted whole-line multiply-adds, which vectorise, rather than
/// per-pixel dot products over strided columns, which do not.
fn smooth(field: &mut [f32], tmp: &mut [f32], kernel: &[f32], w: usize, h: usize) {
    let r = (kernel.len() / 2) as isize;
    for (out, row) in tmp.chunks_exact_mut(w).zip(field.chunks_exact(w)) {
        out.fill(0.0);
        for (i, &k) in kernel.iter().enumerate() {
            axpy_shifted(out, row, k, i as isize - r);
        }
    }
    for y in 0..h {
        let out = &mut field[y * w..(y + 1) * w];
        out.fill(0.0);
        for (i, &k) in kernel.iter().enumerate() {
            let yy = y as isize + i as isize - r;
            if (0..h as isize).contains(&yy) {
                let yy = yy as usize;
                axpy_shifted(out, &tmp[yy * w..(yy + 1) * w], k, 0);
            }
        }
    }
}

/// Per-thread buffers of [`ElasticDistortion`]: the kernel is rebuilt only when `sigma` or the
/// image size changes.
#[derive(Default)]
struct ElasticScratch {
    fields: Vec<f32>,
    kernel: Vec<f32>,
    kernel_key: Option<(u32, usize)>,
}

impl ElasticScratch {
    const fn new() -> Self {
        Self {
            fields: Vec::new(),
            kernel: Vec::new(),
            kernel_key: None,
        }
    }
}

thread_local! {
    /// Displacement fields and kernel of [`ElasticDistortion`], reused across samples so that a
    /// worker thread allocates once. Taken out of the cell while in use, so re-entrant use
    /// just allocates instead of failing.
    static ELASTIC_SCRATCH: Cell<ElasticScratch> = const { Cell::new(ElasticScratch::new()) };
    /// Framed source copy of [`Framed`].
    static FRAME_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Intermediate image of [`Compose`].
    static COMPOSE_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl Augment for ElasticDistortion {
    fn validate(&self) -> Result<()> {
        ElasticDistortion::validate(self)
    }

    fn apply(&self, src: &[f32], dst: &mut [f32], width: usize, height: usize, rng: &mut Rng) {
        if !sizes_ok(src, dst, width, height) {
            return;
        }
        // Also the route for NaN or negative alpha, which `validate` rejects.
        if self.alpha.is_nan() || self.alpha <= 0.0 {
            copy_clamped(src, dst);
            return;
        }
        let (w, h, n) = (width, height, width * height);
        if n == 0 {
            return;
        }
        let mut scratch = ELASTIC_SCRATCH.with(Cell::take);
        let key = (self.sigma.to_bits(), w.max(h));
        if scratch.kernel_key != Some(key) {
            gaussian_kernel(self.sigma, w.max(h), &mut scratch.kernel);
            scratch.kernel_key = Some(key);
        }
        let (buf, kernel) = (&mut scratch.fields, &scratch.kernel);
        buf.clear();
        buf.resize(3 * n, 0.0);
        let (dx, rest) = buf.split_at_mut(n);
        let (dy, tmp) = rest.split_at_mut(n);
        for v in dx.iter_mut().chain(dy.iter_mut()) {
            *v = 2.0 * rng.next_f32() - 1.0;
        }
        smooth(dx, tmp, kernel, w, h);
        smooth(dy, tmp, kernel, w, h);
        let alpha = self.alpha;
        let src = Framed::new(src, w, h);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let sx = x as f32 + alpha * dx[i];
                let sy = y as f32 + alpha * dy[i];
                dst[i] = unit(src.sample(sx, sy));
            }
        }
        src.done();
        ELASTIC_SCRATCH.with(|c| c.set(scratch));
    }
}

/// Transforms applied one after the other, each to the previous one's output, all drawing from
/// the same per-sample generator in order.
///
/// An empty `Compose` is the identity.
#[derive(Debug, Clone, Default)]
pub struct Compose {
    /// The transforms, first applied first.
    pub steps: Vec<Arc<dyn Augment>>,
}

impl Compose {
    /// A sequence of transforms.
    pub fn new(steps: Vec<Arc<dyn Augment>>) -> Self {
        Self { steps }
    }

    /// This sequence followed by `step`.
    pub fn then(mut self, step: impl Augment + 'static) -> Self {
        self.steps.push(Arc::new(step));
        self
    }

    /// [`RandomAffine::default`] followed by [`ElasticDistortion::default`].
    pub fn affine_elastic() -> Self {
        Self::default()
            .then(RandomAffine::default())
            .then(ElasticDistortion::default())
    }
}

impl Augment for Compose {
    fn validate(&self) -> Result<()> {
        self.steps.iter().try_for_each(|s| s.validate())
    }

    fn apply(&self, src: &[f32], dst: &mut [f32], width: usize, height: usize, rng: &mut Rng) {
        if !sizes_ok(src, dst, width, height) {
            return;
        }
        let n = self.steps.len();
        match n {
            0 => copy_clamped(src, dst),
            1 => self.steps[0].apply(src, dst, width, height, rng),
            _ => {
                let mut buf = COMPOSE_SCRATCH.with(Cell::take);
                buf.clear();
                buf.resize(src.len(), 0.0);
                // Ping-pong between `dst` and `buf`, arranged so that the last step writes `dst`.
                for (i, step) in self.steps.iter().enumerate() {
                    let into_dst = (n - 1 - i).is_multiple_of(2);
                    match (i == 0, into_dst) {
                        (true, true) => step.apply(src, dst, width, height, rng),
                        (true, false) => step.apply(src, &mut buf, width, height, rng),
                        (false, true) => step.apply(&buf, dst, width, height, rng),
                        (false, false) => step.apply(dst, &mut buf, width, height, rng),
                    }
                }
                COMPOSE_SCRATCH.with(|c| c.set(buf));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(w: usize, h: usize, x: usize, y: usize) -> Vec<f32> {
        let mut img = vec![0.0; w * h];
        img[y * w + x] = 1.0;
        img
    }

    fn noise(w: usize, h: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..w * h).map(|_| rng.next_f32()).collect()
    }

    fn warped(warp: AffineWarp, src: &[f32], w: usize, h: usize) -> Vec<f32> {
        let mut dst = vec![f32::NAN; w * h];
        warp.warp(src, &mut dst, w, h);
        dst
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "pixel {i}: {x} vs {y}");
        }
    }

    #[test]
    fn whole_pixel_translation_shifts_exactly() {
        let (w, h) = (9, 7);
        let out = warped(AffineWarp::translation(1.0, 0.0), &dot(w, h, 5, 3), w, h);
        assert_eq!(out, dot(w, h, 6, 3), "tx = +1 moves right");
        let out = warped(AffineWarp::translation(-2.0, -3.0), &dot(w, h, 5, 3), w, h);
        assert_eq!(out, dot(w, h, 3, 0), "negative shifts move left and up");
        let out = warped(AffineWarp::translation(5.0, 0.0), &dot(w, h, 5, 3), w, h);
        assert!(
            out.iter().all(|&v| v == 0.0),
            "content leaving the image is dropped"
        );
    }

    #[test]
    fn general_path_is_exact_at_integer_coordinates() {
        // Shifting there and back goes through the bilinear path twice; only the border columns
        // and rows that left the image may differ.
        let (w, h) = (12, 10);
        let mut src = noise(w, h, 1);
        for y in 0..h {
            for x in 0..w {
                if x < 3 || x >= w - 3 || y < 2 || y >= h - 2 {
                    src[y * w + x] = 0.0;
                }
            }
        }
        let there = warped(AffineWarp::translation(3.0, -2.0), &src, w, h);
        let back = warped(AffineWarp::translation(-3.0, 2.0), &there, w, h);
        assert_eq!(back, src);
    }

    #[test]
    fn fractional_translation_interpolates() {
        let (w, h) = (6, 5);
        let out = warped(AffineWarp::translation(0.25, 0.0), &dot(w, h, 2, 2), w, h);
        assert!((out[2 * w + 2] - 0.75).abs() < 1e-6);
        assert!((out[2 * w + 3] - 0.25).abs() < 1e-6);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rotation_is_counter_clockwise_about_the_centre() {
        let (w, h) = (5, 5); // centre (2, 2)
        let out = warped(AffineWarp::rotation(90.0), &dot(w, h, 4, 2), w, h);
        assert_close(&out, &dot(w, h, 2, 0), 1e-5); // right of centre -> above it
        let out = warped(AffineWarp::rotation(180.0), &dot(w, h, 1, 0), w, h);
        assert_close(&out, &dot(w, h, 3, 4), 1e-5);
        // Even sizes: the centre falls between pixels and 90 degrees still maps pixels to pixels.
        let (w, h) = (6, 6); // centre (2.5, 2.5)
        let out = warped(AffineWarp::rotation(-90.0), &dot(w, h, 5, 0), w, h);
        assert_close(&out, &dot(w, h, 5, 5), 1e-5); // top right -> bottom right (clockwise)
    }

    #[test]
    fn quarter_turns_compose_to_the_identity() {
        let (w, h) = (8, 8);
        let src = noise(w, h, 2);
        let mut img = src.clone();
        for _ in 0..4 {
            img = warped(AffineWarp::rotation(90.0), &img, w, h);
        }
        assert_close(&img, &src, 1e-4);
    }

    #[test]
    fn symmetric_pattern_survives_half_turn() {
        let (w, h) = (7, 7);
        let mut src = vec![0.0; w * h];
        for (x, y) in [(1, 1), (5, 5), (2, 4), (4, 2), (3, 3)] {
            src[y * w + x] = 0.8;
        }
        let out = warped(AffineWarp::rotation(180.0), &src, w, h);
        assert_close(&out, &src, 1e-5);
        let out = warped(AffineWarp::rotation(90.0), &src, w, h);
        assert!(
            (out[w + 1]).abs() < 1e-5,
            "not symmetric under a quarter turn"
        );
        assert!((out[w + 5] - 0.8).abs() < 1e-5);
    }

    #[test]
    fn scaling_maps_through_the_inverse() {
        let (w, h) = (5, 5);
        // Enlarging by 2: output (4, 2) looks at source (3, 2); output (3, 2) halfway to it.
        let out = warped(AffineWarp::scaling(2.0), &dot(w, h, 3, 2), w, h);
        assert!((out[2 * w + 4] - 1.0).abs() < 1e-6);
        assert!((out[2 * w + 3] - 0.5).abs() < 1e-6);
        // Shrinking by 2: source (4, 2) lands on (3, 2).
        let out = warped(AffineWarp::scaling(0.5), &dot(w, h, 4, 2), w, h);
        assert!((out[2 * w + 3] - 1.0).abs() < 1e-6);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn positive_shear_moves_the_bottom_right() {
        let (w, h) = (5, 5);
        let shear = AffineWarp {
            shear_deg: 45.0,
            ..AffineWarp::IDENTITY
        };
        assert_close(
            &warped(shear, &dot(w, h, 2, 4), w, h),
            &dot(w, h, 4, 4),
            1e-5,
        );
        assert_close(
            &warped(shear, &dot(w, h, 2, 0), w, h),
            &dot(w, h, 0, 0),
            1e-5,
        );
    }

    #[test]
    fn identity_presets_are_exact_and_outputs_clamped() {
        let (w, h) = (28, 28);
        let src = noise(w, h, 3);
        let mut rng = Rng::new(4);
        let mut out = vec![f32::NAN; w * h];
        RandomAffine::identity().apply(&src, &mut out, w, h, &mut rng);
        assert_eq!(out, src);
        ElasticDistortion::identity().apply(&src, &mut out, w, h, &mut rng);
        assert_eq!(out, src);
        Compose::default().apply(&src, &mut out, w, h, &mut rng);
        assert_eq!(out, src);
        let loud: Vec<f32> = src.iter().map(|v| 3.0 * v - 1.0).collect();
        let aug = Compose::affine_elastic();
        aug.apply(&loud, &mut out, w, h, &mut rng);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn sampled_parameters_stay_in_range() {
        let cfg = RandomAffine {
            max_shear_deg: 5.0,
            ..RandomAffine::default()
        };
        let mut rng = Rng::new(5);
        let mut max_rot: f32 = 0.0;
        for _ in 0..2000 {
            let p = cfg.sample(&mut rng);
            assert!(p.rotation_deg.abs() <= 10.0 && p.shear_deg.abs() <= 5.0);
            assert!((0.9..=1.1).contains(&p.scale));
            assert!(p.tx.abs() <= 2.0 && p.ty.abs() <= 2.0);
            max_rot = max_rot.max(p.rotation_deg.abs());
        }
        assert!(max_rot > 9.0, "the range is used");
        let p = RandomAffine::identity().sample(&mut rng);
        assert!(p.is_identity(), "{p:?}");
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(RandomAffine::default().validate().is_ok());
        assert!(RandomAffine::identity().validate().is_ok());
        let bad = [
            RandomAffine {
                max_rotation_deg: -1.0,
                ..RandomAffine::default()
            },
            RandomAffine {
                min_scale: 0.0,
                ..RandomAffine::default()
            },
            RandomAffine {
                max_scale: 0.8,
                ..RandomAffine::default()
            },
            RandomAffine {
                max_translation: f32::NAN,
                ..RandomAffine::default()
            },
            RandomAffine {
                max_shear_deg: 90.0,
                ..RandomAffine::default()
            },
            RandomAffine {
                max_scale: f32::INFINITY,
                ..RandomAffine::default()
            },
        ];
        for cfg in bad {
            assert!(
                matches!(cfg.validate(), Err(DataError::InvalidParameter { .. })),
                "{cfg:?}"
            );
        }
        assert!(ElasticDistortion::simard().validate().is_ok());
        for (alpha, sigma) in [(-1.0, 4.0), (f32::NAN, 4.0), (34.0, -0.5), (34.0, 1e6)] {
            let cfg = ElasticDistortion { alpha, sigma };
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn invalid_parameters_do_not_panic_and_stay_in_range() {
        let (w, h) = (10, 10);
        let src = noise(w, h, 6);
        let mut out = vec![0.0; w * h];
        let mut rng = Rng::new(7);
        let nan = AffineWarp {
            scale: f32::NAN,
            ..AffineWarp::IDENTITY
        };
        nan.warp(&src, &mut out, w, h);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        AffineWarp::scaling(0.0).warp(&src, &mut out, w, h);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        for (alpha, sigma) in [(f32::NAN, 1.0), (5.0, f32::NAN), (1e30, 0.0), (3.0, 1e9)] {
            ElasticDistortion { alpha, sigma }.apply(&src, &mut out, w, h, &mut rng);
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn elastic_displacement_matches_the_documented_strength() {
        // On a horizontal ramp, bilinear sampling is exact, so dst - src recovers the x
        // displacement. Measure its spread away from the zero-padded borders.
        let (w, h) = (160, 160);
        let ramp: Vec<f32> = (0..w * h)
            .map(|i| (i % w) as f32 / (w - 1) as f32)
            .collect();
        for (cfg, expected) in [
            (ElasticDistortion::simard(), 1.38),
            (ElasticDistortion::mild(), 0.65),
        ] {
            let mut out = vec![0.0; w * h];
            cfg.apply(&ramp, &mut out, w, h, &mut Rng::new(8));
            let mut d = Vec::new();
            for y in 30..h - 30 {
                for x in 30..w - 30 {
                    let i = y * w + x;
                    d.push(f64::from((out[i] - ramp[i]) * (w - 1) as f32));
                }
            }
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
            assert!((sd - expected).abs() < 0.2 * expected, "{cfg:?}: sd {sd}");
            assert!(mean.abs() < 1.0, "{cfg:?}: mean {mean}");
        }
    }

    #[test]
    fn elastic_without_smoothing_still_displaces() {
        // sigma = 0 is raw per-pixel noise: displacement uniform in [-alpha, alpha].
        // Identical rows, so vertical displacement of the middle row changes nothing.
        let (w, h) = (64, 3);
        let ramp: Vec<f32> = (0..w * h)
            .map(|i| (i % w) as f32 / (w - 1) as f32)
            .collect();
        let mut out = vec![0.0; w * h];
        let cfg = ElasticDistortion {
            alpha: 0.5,
            sigma: 0.0,
        };
        cfg.apply(&ramp, &mut out, w, h, &mut Rng::new(3));
        let d: Vec<f32> = (w + 1..2 * w - 1)
            .map(|i| (out[i] - ramp[i]) * (w - 1) as f32)
            .collect();
        assert!(d.iter().all(|v| v.abs() <= 0.5 + 1e-4), "{d:?}");
        assert!(d.iter().any(|v| v.abs() > 0.3), "{d:?}");
    }

    #[test]
    fn elastic_is_smooth_and_seeded() {
        let (w, h) = (28, 28);
        let src = noise(w, h, 9);
        let run = |seed| {
            let mut out = vec![0.0; w * h];
            ElasticDistortion::simard().apply(&src, &mut out, w, h, &mut Rng::new(seed));
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert_ne!(run(1), src);
    }

    #[test]
    fn compose_applies_in_order() {
        let (w, h) = (9, 9);
        let src = dot(w, h, 4, 4);
        let mut rng = Rng::new(0);
        let mut out = vec![0.0; w * h];
        for steps in 2..=4 {
            let mut c = Compose::default();
            for _ in 0..steps {
                c = c.then(AffineWarp::translation(1.0, 0.0));
            }
            c.apply(&src, &mut out, w, h, &mut rng);
            assert_eq!(out, dot(w, h, 4 + steps, 4), "{steps} shifts");
        }
        // Scaling by 2 then shifting by 1 differs from shifting then scaling.
        let src = dot(w, h, 5, 4);
        let scale_then_shift = Compose::default()
            .then(AffineWarp::scaling(2.0))
            .then(AffineWarp::translation(1.0, 0.0));
        scale_then_shift.apply(&src, &mut out, w, h, &mut rng);
        assert!(
            (out[4 * w + 7] - 1.0).abs() < 1e-6,
            "(5 - 4) * 2 + 4 + 1 = 7"
        );
        let shift_then_scale = Compose::new(scale_then_shift.steps.iter().rev().cloned().collect());
        shift_then_scale.apply(&src, &mut out, w, h, &mut rng);
        assert!(
            (out[4 * w + 8] - 1.0).abs() < 1e-6,
            "(5 + 1 - 4) * 2 + 4 = 8"
        );
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let mut rng = Rng::new(0);
        for (w, h) in [(0, 0), (0, 5), (5, 0), (1, 1), (1, 7)] {
            let src = vec![0.5; w * h];
            let mut out = vec![0.0; w * h];
            Compose::affine_elastic().apply(&src, &mut out, w, h, &mut rng);
            ElasticDistortion::simard().apply(&src, &mut out, w, h, &mut rng);
            RandomAffine::default().apply(&src, &mut out, w, h, &mut rng);
        }
    }
}
