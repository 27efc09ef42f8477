//! `batch_norm2d` (training mode) against the same computation composed from candle ops in
//! f64 (the crate's fallback path), with autograd for the gradients of x, gamma and beta, and
//! against naive batch statistics. Tolerance |a-b| <= 1e-3 + 1e-3·|b| (normalisation divides by
//! the batch standard deviation, which amplifies f32 rounding).

mod common;

use candle_core::{DType, Tensor, Var};
use common::{close_tol, tensor, to_vec};
use hdr_ops::{batch_norm2d, Activation};
use proptest::prelude::*;

const TOL: f32 = 1e-3;

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    relu: bool,
    seed: u64,
}

/// Runs `batch_norm2d` on `dtype` copies of the same data; returns y, mean, var, dx, dgamma,
/// dbeta as f32 vectors.
fn run(c: Case, dtype: DType) -> candle_core::Result<Vec<Vec<f32>>> {
    let x = Var::from_tensor(&tensor(c.seed, &[c.b, c.c, c.h, c.w]).to_dtype(dtype)?)?;
    let gamma = Var::from_tensor(&(tensor(c.seed + 1, &[c.c]) + 1.5)?.to_dtype(dtype)?)?;
    let beta = Var::from_tensor(&tensor(c.seed + 2, &[c.c]).to_dtype(dtype)?)?;
    let r = tensor(c.seed + 3, &[c.b, c.c, c.h, c.w]).to_dtype(dtype)?;
    let act = if c.relu {
        Activation::Relu
    } else {
        Activation::None
    };
    let out = batch_norm2d(&x, &gamma, &beta, 1e-5, act).map_err(candle_core::Error::wrap)?;
    let grads = (&out.y * &r)?.sum_all()?.backward()?;
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).map(|t| to_vec(&t));
    let get = |v: &Var| -> candle_core::Result<Vec<f32>> {
        match grads.get(v) {
            Some(g) => f32s(g),
            None => candle_core::bail!("missing gradient"),
        }
    };
    Ok(vec![
        f32s(&out.y)?,
        f32s(&out.mean)?,
        f32s(&out.var)?,
        get(&x)?,
        get(&gamma)?,
        get(&beta)?,
    ])
}

fn check(c: Case) -> Result<(), String> {
    let fast = run(c, DType::F32).map_err(|e| e.to_string())?;
    let reference = run(c, DType::F64).map_err(|e| e.to_string())?;
    for (name, (got, want)) in ["y", "mean", "var", "dx", "dgamma", "dbeta"]
        .iter()
        .zip(fast.iter().zip(&reference))
    {
        close_tol(name, got, want, TOL, TOL)?;
    }
    // Naive statistics.
    let x = to_vec(&tensor(c.seed, &[c.b, c.c, c.h, c.w]));
    let hw = c.h * c.w;
    let n = (c.b * hw) as f64;
    for ch in 0..c.c {
        let vals: Vec<f64> = (0..c.b)
            .flat_map(|b| x[(b * c.c + ch) * hw..][..hw].iter().map(|&v| v as f64))
            .collect();
        let mean = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        close_tol(
            "naive mean",
            &fast[1][ch..ch + 1],
            &[mean as f32],
            1e-5,
            1e-4,
        )?;
        close_tol("naive var", &fast[2][ch..ch + 1], &[var as f32], 1e-5, 1e-4)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn batch_norm_matches_candle_ops(
        b in 1usize..=4, c in 1usize..=5, h in 1usize..=7, w in 1usize..=7,
        relu in any::<bool>(), seed in any::<u64>(),
    ) {
        // At least 4 values per channel: with fewer, near-equal values give a near-zero variance
        // whose f32 vs f64 results legitimately differ by more than any fixed tolerance.
        prop_assume!(b * h * w >= 4);
        check(Case { b, c, h, w, relu, seed: seed >> 8 }).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn mobilenet_sized_batch_norm() -> Result<(), String> {
    check(Case {
        b: 8,
        c: 32,
        h: 14,
        w: 14,
        relu: true,
        seed: 3,
    })?;
    check(Case {
        b: 3,
        c: 16,
        h: 9,
        w: 11,
        relu: false,
        seed: 4,
    })
}

#[test]
fn single_value_per_channel_gives_beta() -> anyhow::Result<()> {
    let x = tensor(1, &[1, 3, 1, 1]);
    let gamma = tensor(2, &[3]);
    let beta = tensor(3, &[3]);
    let out = batch_norm2d(&x, &gamma, &beta, 1e-5, Activation::None)?;
    close_tol("y", &to_vec(&out.y), &to_vec(&beta), 1e-6, 0.0).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(out.n == 1);
    Ok(())
}

#[test]
fn rejects_bad_shapes_and_eps() {
    let x = tensor(1, &[2, 3, 4, 4]);
    let g3 = tensor(2, &[3]);
    let g4 = tensor(2, &[4]);
    assert!(matches!(
        batch_norm2d(&x, &g4, &g3, 1e-5, Activation::None),
        Err(hdr_ops::OpsError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        batch_norm2d(&x, &g3, &g3, 0.0, Activation::None),
        Err(hdr_ops::OpsError::InvalidConfig { .. })
    ));
}

/// `channel_affine2d` (evaluation-mode batch norm) against the composed candle ops in f64, with
/// autograd for x, scale and shift; same tolerance as above.
fn check_affine(c: Case) -> Result<(), String> {
    let run = |dtype: DType| -> candle_core::Result<Vec<Vec<f32>>> {
        let x = Var::from_tensor(&tensor(c.seed, &[c.b, c.c, c.h, c.w]).to_dtype(dtype)?)?;
        let scale = Var::from_tensor(&tensor(c.seed + 1, &[c.c]).to_dtype(dtype)?)?;
        let shift = Var::from_tensor(&tensor(c.seed + 2, &[c.c]).to_dtype(dtype)?)?;
        let r = tensor(c.seed + 3, &[c.b, c.c, c.h, c.w]).to_dtype(dtype)?;
        let act = if c.relu {
            Activation::Relu
        } else {
            Activation::None
        };
        // f64 takes the composed fallback (broadcast_mul, broadcast_add, relu).
        let y =
            hdr_ops::channel_affine2d(&x, &scale, &shift, act).map_err(candle_core::Error::wrap)?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let f32s = |t: &Tensor| t.to_dtype(DType::F32).map(|t| to_vec(&t));
        let mut out = vec![f32s(&y)?];
        for v in [&x, &scale, &shift] {
            match grads.get(v) {
                Some(g) => out.push(f32s(g)?),
                None => candle_core::bail!("missing gradient"),
            }
        }
        Ok(out)
    };
    let fast = run(DType::F32).map_err(|e| e.to_string())?;
    let reference = run(DType::F64).map_err(|e| e.to_string())?;
    for (name, (got, want)) in ["y", "dx", "dscale", "dshift"]
        .iter()
        .zip(fast.iter().zip(&reference))
    {
        close_tol(name, got, want, TOL, TOL)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn channel_affine_matches_composed_ops(
        (b, c, h, w) in (1usize..=4, 1usize..=6, 1usize..=9, 1usize..=9),
        relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_affine(Case { b, c, h, w, relu, seed: seed >> 8 }).map_err(TestCaseError::fail)?;
    }
}
