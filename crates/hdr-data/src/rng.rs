//! A small, fast, seedable random number generator whose streams are addressed by
//! `(seed, epoch, index)`.
//!
//! Augmentation must give the same image for the same sample whatever the thread count, so every
//! sample draws from its own stream derived from its coordinates, never from a shared generator
//! whose state depends on scheduling. SplitMix64 (Steele et al. 2014) is enough for this: the
//! streams are decorrelated by hashing the coordinates, and the statistical quality is far beyond
//! what image jitter needs.

/// SplitMix64 generator. Cheap to create, so one per sample is fine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: mix(seed) }
    }

    /// The generator of one stream: e.g. `Rng::stream(seed, &[epoch, index])`.
    ///
    /// Different coordinate lists give independent-looking streams.
    pub fn stream(seed: u64, coords: &[u64]) -> Self {
        let mut h = mix(seed ^ GOLDEN);
        for &c in coords {
            h = mix(h ^ mix(c.wrapping_add(GOLDEN)));
        }
        Self { state: h }
    }

    /// The raw state, for checkpointing.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Rebuilds a generator from [`Rng::state`].
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`; returns `lo` when `hi <= lo`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        if hi <= lo {
            return lo;
        }
        lo + (hi - lo) * self.next_f32()
    }

    /// Standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        // Lemire's multiply-shift; the bias for n << 2^64 is negligible for shuffling.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, &[1, 2]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::stream(7, &[1, 2]).next_u64(),
            Rng::stream(7, &[2, 1]).next_u64()
        );
        assert_ne!(
            Rng::stream(7, &[1, 2]).next_u64(),
            Rng::stream(8, &[1, 2]).next_u64()
        );
    }

    #[test]
    fn uniform_and_normal_moments() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let (mut s, mut s2, mut ns, mut ns2) = (0f64, 0f64, 0f64, 0f64);
        for _ in 0..n {
            let u = r.next_f32() as f64;
            assert!((0.0..1.0).contains(&u));
            s += u;
            s2 += u * u;
            let z = r.normal() as f64;
            ns += z;
            ns2 += z * z;
        }
        let n = n as f64;
        assert!((s / n - 0.5).abs() < 0.01);
        assert!((s2 / n - s * s / n / n - 1.0 / 12.0).abs() < 0.01);
        assert!((ns / n).abs() < 0.01);
        assert!((ns2 / n - 1.0).abs() < 0.02);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..1000).collect();
        Rng::new(3).shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn state_round_trips() {
        let mut r = Rng::new(9);
        r.next_u64();
        let mut r2 = Rng::from_state(r.state());
        assert_eq!(r.next_u64(), r2.next_u64());
    }
}
