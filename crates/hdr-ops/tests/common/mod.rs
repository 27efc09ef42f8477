//! Helpers shared by the integration tests: deterministic data and tolerant comparison.
#![allow(dead_code)]

use candle_core::{Device, Tensor};

/// Deterministic pseudo-random values in [-1, 1) from a seed (SplitMix64), so proptest only
/// has to shrink a seed, not a whole vector.
pub fn data(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn tensor(seed: u64, dims: &[usize]) -> Tensor {
    let len = dims.iter().product();
    Tensor::from_vec(data(seed, len), dims, &Device::Cpu).expect("valid shape")
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
}

/// Absolute + relative tolerance used by all kernel tests: |a - b| <= ATOL + RTOL * |b|.
pub const ATOL: f32 = 1e-4;
/// See [`ATOL`].
pub const RTOL: f32 = 1e-4;

/// Checks `got` against `want` element-wise with [`ATOL`]/[`RTOL`]; returns a description of
/// the first mismatch.
pub fn close(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    close_tol(what, got, want, ATOL, RTOL)
}

/// [`close`] with explicit tolerances: |a - b| <= atol + rtol * |b|.
pub fn close_tol(
    what: &str,
    got: &[f32],
    want: &[f32],
    atol: f32,
    rtol: f32,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // Written so that NaN fails the check.
        let ok = (g - w).abs() <= atol + rtol * w.abs();
        if !ok {
            return Err(format!("{what}[{i}]: got {g}, want {w}"));
        }
    }
    Ok(())
}
