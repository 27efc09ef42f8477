//! Quantization parameters, per-channel weight quantization and activation observers.
//!
//! Rounding everywhere is half away from zero (`f32::round`), the same rule the integer
//! kernels use when they requantize, so that a value goes through either path the same way.

use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};

/// Affine quantization `real = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// Step between neighbouring quantized values (> 0).
    pub scale: f32,
    /// The quantized value that represents real 0.
    pub zero_point: i32,
}

impl Default for QuantParams {
    /// `[0, 1]` in u8: scale 1/255, zero point 0 (exact for MNIST pixels).
    fn default() -> Self {
        Self {
            scale: 1.0 / 255.0,
            zero_point: 0,
        }
    }
}

impl QuantParams {
    /// Asymmetric u8 parameters covering `[min, max]`, widened to contain 0 so that zero
    /// padding and ReLU are exact.
    pub fn from_range(min: f32, max: f32) -> Self {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = (hi - lo) / 255.0;
        if !scale.is_finite() || scale <= f32::MIN_POSITIVE {
            // An all-zero (or broken) range: any scale represents it; 1 keeps multipliers sane.
            return Self {
                scale: 1.0,
                zero_point: 0,
            };
        }
        // Floor at f32's epsilon, like PyTorch's observers: a layer whose activations are all
        // but zero (a deep plain network at initialisation shrinks them to ~1e-12) would
        // otherwise give the next layer's bias a scale so small that its int32 code saturates.
        let scale = scale.max(f32::EPSILON);
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as i32;
        Self { scale, zero_point }
    }

    /// Symmetric i8 parameters for `[-absmax, absmax]`: zero point 0, codes in `[-127, 127]`
    /// (never -128, so that negation is exact).
    pub fn symmetric(absmax: f32) -> Self {
        let scale = absmax.abs() / 127.0;
        Self {
            scale: if scale.is_finite() && scale > f32::MIN_POSITIVE {
                scale
            } else {
                1.0
            },
            zero_point: 0,
        }
    }

    /// Quantizes to u8 (saturating).
    #[inline]
    pub fn quantize_u8(self, x: f32) -> u8 {
        (round_half_away(x / self.scale) + self.zero_point as f32).clamp(0.0, 255.0) as u8
    }

    /// Quantizes to i8 in `[-127, 127]` (saturating).
    #[inline]
    pub fn quantize_i8(self, x: f32) -> i8 {
        (round_half_away(x / self.scale) + self.zero_point as f32).clamp(-127.0, 127.0) as i8
    }

    /// The real value of a quantized code.
    #[inline]
    pub fn dequantize(self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }
}

/// `v.round()` (half away from zero) without the library call `f32::round` becomes on
/// baseline x86-64: adding ±0.5 is exact below 2^23, and the cast truncates toward zero.
#[inline]
fn round_half_away(v: f32) -> f32 {
    if v.abs() < 8_388_608.0 {
        (v + 0.5f32.copysign(v)) as i32 as f32
    } else {
        v
    }
}

/// Quantizes a slice to u8.
pub fn quantize(xs: &[f32], params: QuantParams) -> Vec<u8> {
    xs.iter().map(|&x| params.quantize_u8(x)).collect()
}

/// Dequantizes a u8 slice.
pub fn dequantize(qs: &[u8], params: QuantParams) -> Vec<f32> {
    qs.iter().map(|&q| params.dequantize(q as i32)).collect()
}

/// Symmetric int8 weights with one scale per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct PerChannel {
    /// Codes, in the layout of the input (output channel major).
    pub values: Vec<i8>,
    /// One scale per output channel; zero points are 0.
    pub scales: Vec<f32>,
}

/// Quantizes `w` (output-channel major: `channels` rows of `w.len() / channels`) symmetrically
/// per output channel: each row's largest magnitude maps to 127.
pub fn quantize_per_channel(w: &[f32], channels: usize) -> Result<PerChannel> {
    if channels == 0 || !w.len().is_multiple_of(channels) {
        return Err(CompressError::InvalidConfig {
            name: "channels",
            value: format!("{channels} for {} weights", w.len()),
            reason: "must be at least 1 and divide the weight count",
        });
    }
    let row = w.len() / channels;
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(channels);
    for r in w.chunks(row.max(1)).take(channels) {
        let absmax = r.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let p = QuantParams::symmetric(absmax);
        scales.push(p.scale);
        values.extend(r.iter().map(|&x| p.quantize_i8(x)));
    }
    Ok(PerChannel { values, scales })
}

/// How an activation range is chosen from calibration data.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum Observer {
    /// The smallest and largest value seen.
    #[default]
    MinMax,
    /// The `p`-th and `(100 - p)`-th percentiles (e.g. 99.99), ignoring rare outliers.
    Percentile(f32),
}

/// Collects the values of one activation over calibration batches.
#[derive(Debug, Clone)]
pub struct RangeObserver {
    method: Observer,
    min: f32,
    max: f32,
    samples: Vec<f32>,
}

/// Samples kept per observed batch by [`Observer::Percentile`]: bounds memory on big maps.
const SAMPLES_PER_BATCH: usize = 16_384;

impl RangeObserver {
    /// An observer that has seen nothing.
    pub fn new(method: Observer) -> Self {
        Self {
            method,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            samples: Vec::new(),
        }
    }

    /// Records a batch of values (non-finite values are ignored).
    pub fn observe(&mut self, xs: &[f32]) {
        for &x in xs.iter().filter(|x| x.is_finite()) {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        if let Observer::Percentile(_) = self.method {
            // A fixed stride (not random) keeps calibration deterministic.
            let step = xs.len().div_ceil(SAMPLES_PER_BATCH).max(1);
            self.samples
                .extend(xs.iter().step_by(step).filter(|x| x.is_finite()));
        }
    }

    /// The observed `(min, max)` range (min/max or percentiles); `(0, 0)` before any value.
    pub fn range(&self) -> (f32, f32) {
        if self.min > self.max {
            return (0.0, 0.0);
        }
        match self.method {
            Observer::MinMax => (self.min, self.max),
            Observer::Percentile(p) => {
                // Per side, over the values of that sign only: post-ReLU maps are mostly zeros,
                // and a percentile over all values would clip every activation to 0.
                let p = p.clamp(50.0, 100.0) as f64 / 100.0;
                let side = |mut v: Vec<f32>, extreme: f32| -> f32 {
                    if v.is_empty() {
                        return extreme;
                    }
                    v.sort_by(f32::total_cmp);
                    v[((v.len() - 1) as f64 * p).round() as usize]
                };
                let pos: Vec<f32> = self.samples.iter().copied().filter(|&x| x > 0.0).collect();
                let neg: Vec<f32> = self
                    .samples
                    .iter()
                    .map(|&x| -x)
                    .filter(|&x| x > 0.0)
                    .collect();
                (-side(neg, -self.min.min(0.0)), side(pos, self.max.max(0.0)))
            }
        }
    }

    /// u8 parameters for the observed range.
    pub fn params(&self) -> QuantParams {
        let (lo, hi) = self.range();
        QuantParams::from_range(lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn u8_round_trip_within_half_a_step(
            lo in -100f32..0.0, width in 0.01f32..200.0, t in 0f32..=1.0
        ) {
            let hi = lo + width;
            let p = QuantParams::from_range(lo, hi);
            let x = (lo.min(0.0) + t * (hi.max(0.0) - lo.min(0.0))).clamp(lo.min(0.0), hi.max(0.0));
            let back = p.dequantize(p.quantize_u8(x) as i32);
            prop_assert!((back - x).abs() <= p.scale * 0.5 * (1.0 + 1e-3) + 1e-6,
                "x {x} back {back} scale {}", p.scale);
        }

        #[test]
        fn per_channel_round_trip_within_half_a_step(
            w in proptest::collection::vec(-5f32..5.0, 1..64), channels in 1usize..4
        ) {
            let n = w.len() / channels * channels;
            prop_assume!(n > 0);
            let q = quantize_per_channel(&w[..n], channels).unwrap();
            let row = n / channels;
            for (i, &x) in w[..n].iter().enumerate() {
                let s = q.scales[i / row];
                let back = q.values[i] as f32 * s;
                prop_assert!((back - x).abs() <= s * 0.5 * (1.0 + 1e-3) + 1e-7);
                prop_assert!(q.values[i] >= -127);
            }
        }
    }

    proptest! {
        #[test]
        fn fast_rounding_equals_f32_round(v in -1.0e7f32..1.0e7) {
            prop_assert_eq!(round_half_away(v), v.round());
            let h = (v as i32) as f32 + 0.5;
            prop_assert_eq!(round_half_away(h), h.round());
        }
    }

    #[test]
    fn unit_range_is_exact_for_pixels() {
        let p = QuantParams::from_range(0.0, 1.0);
        assert_eq!(p.zero_point, 0);
        for b in 0..=255u8 {
            assert_eq!(p.quantize_u8(b as f32 / 255.0), b);
        }
    }

    #[test]
    fn percentile_ignores_outliers() {
        let mut xs = vec![0.5f32; 10_000];
        xs[3] = 1000.0;
        let mut mm = RangeObserver::new(Observer::MinMax);
        let mut pc = RangeObserver::new(Observer::Percentile(99.9));
        mm.observe(&xs);
        pc.observe(&xs);
        assert_eq!(mm.range().1, 1000.0);
        assert_eq!(pc.range().1, 0.5);
    }

    #[test]
    fn bad_channel_count_is_an_error() {
        assert!(quantize_per_channel(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(quantize_per_channel(&[1.0], 0).is_err());
    }
}
