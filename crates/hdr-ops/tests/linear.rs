//! `linear` (one fused op on the CPU in f32) against the same computation in f64, which runs on
//! candle's own ops (the crate's fallback path): outputs and the gradients of x, w and b, with
//! and without ReLU and bias. Tolerance |a-b| <= 1e-4 + 1e-4·|b|.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{close_tol, tensor, to_vec};
use hdr_ops::{linear, Activation};
use proptest::prelude::*;

const TOL: f32 = 1e-4;

/// y, dx, dw, db (db empty without bias) on `dtype` copies of the same data.
fn run(
    (batch, k, n): (usize, usize, usize),
    relu: bool,
    with_bias: bool,
    seed: u64,
    dtype: DType,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let x = Var::from_tensor(&tensor(seed, &[batch, k]).to_dtype(dtype)?)?;
    let w = Var::from_tensor(&tensor(seed + 1, &[n, k]).to_dtype(dtype)?)?;
    let b = Var::from_tensor(&tensor(seed + 2, &[n]).to_dtype(dtype)?)?;
    let r = tensor(seed + 3, &[batch, n]).to_dtype(dtype)?;
    let act = if relu {
        Activation::Relu
    } else {
        Activation::None
    };
    let bias = with_bias.then(|| b.as_tensor());
    let y = linear(&x, &w, bias, act).map_err(candle_core::Error::wrap)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).map(|t| to_vec(&t));
    let get = |v: &Var| -> candle_core::Result<Vec<f32>> {
        match grads.get(v) {
            Some(g) => f32s(g),
            None => Ok(Vec::new()),
        }
    };
    Ok(vec![f32s(&y)?, get(&x)?, get(&w)?, get(&b)?])
}

fn check(
    shape: (usize, usize, usize),
    relu: bool,
    with_bias: bool,
    seed: u64,
) -> Result<(), String> {
    let fast = run(shape, relu, with_bias, seed, DType::F32).map_err(|e| e.to_string())?;
    let reference = run(shape, relu, with_bias, seed, DType::F64).map_err(|e| e.to_string())?;
    for (name, (got, want)) in ["y", "dx", "dw", "db"]
        .iter()
        .zip(fast.iter().zip(&reference))
    {
        if got.len() != want.len() {
            return Err(format!(
                "{name}: {} values, reference {}",
                got.len(),
                want.len()
            ));
        }
        close_tol(name, got, want, TOL, TOL)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn linear_matches_candle_ops(
        batch in 1usize..=9, k in 1usize..=40, n in 1usize..=20,
        relu in any::<bool>(), with_bias in any::<bool>(), seed in any::<u64>(),
    ) {
        check((batch, k, n), relu, with_bias, seed >> 8).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn lenet_sized_layers() -> Result<(), String> {
    check((256, 400, 120), true, true, 1)?;
    check((1, 84, 10), false, true, 2)
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
    let bad_w = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
    let bad_b = Tensor::zeros(3, DType::F32, &dev).unwrap();
    let x3 = Tensor::zeros((2, 3, 1), DType::F32, &dev).unwrap();
    let w64 = Tensor::zeros((4, 3), DType::F64, &dev).unwrap();
    assert!(linear(&x, &bad_w, None, Activation::None).is_err());
    assert!(linear(&x, &w, Some(&bad_b), Activation::None).is_err());
    assert!(linear(&x3, &w, None, Activation::None).is_err());
    assert!(linear(&x, &w64, None, Activation::None).is_err());
    assert_eq!(
        linear(&x, &w, None, Activation::Relu).unwrap().dims(),
        &[2, 4]
    );
}
