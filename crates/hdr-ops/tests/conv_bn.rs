//! `conv_bn2d` and `conv_bn_chain2d` (convolutions + training-mode batch norm as one op) against the same computation
//! composed from candle ops in f64 (the fallback path of `conv2d` and `batch_norm2d`), with
//! autograd for the gradients of x, w, gamma and beta; and against the two f32 ops run one
//! after the other. Tolerance |a-b| <= 1e-3 + 1e-3·|b|, as for `batch_norm2d` (normalisation
//! divides by the batch standard deviation, which amplifies f32 rounding).

mod common;

use candle_core::{DType, Tensor, Var};
use common::{close_tol, tensor, to_vec};
use hdr_ops::{
    batch_norm2d, conv2d, conv_bn2d, conv_bn_chain2d, Activation, Conv2dConfig, ConvBnStage,
};
use proptest::prelude::*;

const TOL: f32 = 1e-3;

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    depthwise: bool,
    relu: bool,
    seed: u64,
}

impl Case {
    fn cfg(&self) -> Conv2dConfig {
        Conv2dConfig {
            stride: self.stride,
            padding: self.pad,
            groups: if self.depthwise { self.c_in } else { 1 },
            activation: if self.relu {
                Activation::Relu
            } else {
                Activation::None
            },
        }
    }

    fn c_out(&self) -> usize {
        if self.depthwise {
            self.c_in
        } else {
            self.c_out
        }
    }
}

/// y, mean, var, dx, dw, dgamma, dbeta as f32 vectors, from the fused op (`fused`) or from
/// `conv2d` then `batch_norm2d`, on `dtype` copies of the same data.
fn run(c: Case, dtype: DType, fused: bool) -> candle_core::Result<Vec<Vec<f32>>> {
    let co = c.c_out();
    let w_in = if c.depthwise { 1 } else { c.c_in };
    let x = Var::from_tensor(&tensor(c.seed, &[c.b, c.c_in, c.h, c.w]).to_dtype(dtype)?)?;
    let w = Var::from_tensor(&tensor(c.seed + 1, &[co, w_in, c.k, c.k]).to_dtype(dtype)?)?;
    let gamma = Var::from_tensor(&(tensor(c.seed + 2, &[co]) + 1.5)?.to_dtype(dtype)?)?;
    let beta = Var::from_tensor(&tensor(c.seed + 3, &[co]).to_dtype(dtype)?)?;
    let cfg = c.cfg();
    let wrap = candle_core::Error::wrap;
    let out = if fused {
        conv_bn2d(&x, &w, &gamma, &beta, &cfg, 1e-5).map_err(wrap)?
    } else {
        let plain = Conv2dConfig {
            activation: Activation::None,
            ..cfg
        };
        let z = conv2d(&x, &w, None, &plain).map_err(wrap)?;
        batch_norm2d(&z, &gamma, &beta, 1e-5, cfg.activation).map_err(wrap)?
    };
    let r = tensor(c.seed + 4, out.y.dims()).to_dtype(dtype)?;
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
        get(&w)?,
        get(&gamma)?,
        get(&beta)?,
    ])
}

fn check(c: Case) -> Result<(), String> {
    let err = |e: candle_core::Error| e.to_string();
    let fused = run(c, DType::F32, true).map_err(err)?;
    let separate = run(c, DType::F32, false).map_err(err)?;
    let names = ["y", "mean", "var", "dx", "dw", "dgamma", "dbeta"];
    let reference = run(c, DType::F64, false).map_err(err)?;
    for (name, (got, want)) in names.iter().zip(fused.iter().zip(&reference)) {
        close_tol(name, got, want, TOL, TOL)?;
    }
    // The same kernels in the same order: equal up to the order of the f32 sums.
    for (name, (got, want)) in names.iter().zip(fused.iter().zip(&separate)) {
        close_tol(name, got, want, 1e-5, 1e-4)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn conv_bn_matches_conv_then_batch_norm(
        b in 1usize..=3, c_in in 1usize..=4, c_out in 1usize..=5,
        h in 3usize..=9, w in 3usize..=9, k in 1usize..=3, stride in 1usize..=2,
        pad in 0usize..=1, depthwise in any::<bool>(), relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let c = Case { b, c_in, c_out, h, w, k, stride, pad, depthwise, relu, seed: seed >> 8 };
        // At least 4 values per channel (see tests/batch_norm.rs).
        let o = |n: usize| (n + 2 * pad - k) / stride + 1;
        prop_assume!(b * o(h) * o(w) >= 4);
        check(c).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn mobilenet_sized_layers() -> Result<(), String> {
    let base = Case {
        b: 4,
        c_in: 16,
        c_out: 32,
        h: 14,
        w: 14,
        k: 1,
        stride: 1,
        pad: 0,
        depthwise: false,
        relu: true,
        seed: 5,
    };
    // Pointwise; depthwise 3x3 at stride 1 and 2 (the specialised kernels); a 5x5 stem.
    check(base)?;
    check(Case {
        k: 3,
        pad: 1,
        depthwise: true,
        ..base
    })?;
    check(Case {
        k: 3,
        pad: 1,
        stride: 2,
        depthwise: true,
        relu: false,
        ..base
    })?;
    check(Case {
        c_in: 1,
        k: 5,
        pad: 2,
        h: 28,
        w: 28,
        ..base
    })
}

#[test]
fn network_input_gets_no_gradient_and_weights_do() -> anyhow::Result<()> {
    let x = tensor(1, &[2, 3, 6, 6]); // data, not a variable
    let w = Var::from_tensor(&tensor(2, &[4, 3, 3, 3]))?;
    let gamma = Var::from_tensor(&(tensor(3, &[4]) + 1.0)?)?;
    let beta = Var::from_tensor(&tensor(4, &[4]))?;
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let out = conv_bn2d(&x, &w, &gamma, &beta, &cfg, 1e-5)?;
    let grads = out.y.sqr()?.sum_all()?.backward()?;
    anyhow::ensure!(grads.get(&x).is_none());
    for v in [&w, &gamma, &beta] {
        anyhow::ensure!(grads.get(v).is_some_and(|g| g.dims() == v.dims()));
    }
    Ok(())
}

#[test]
fn rejects_bad_parameters() {
    let x = tensor(1, &[2, 3, 6, 6]);
    let w = tensor(2, &[4, 3, 3, 3]);
    let cfg = Conv2dConfig::default();
    let (g4, g3) = (tensor(3, &[4]), tensor(3, &[3]));
    assert!(matches!(
        conv_bn2d(&x, &w, &g3, &g4, &cfg, 1e-5),
        Err(hdr_ops::OpsError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        conv_bn2d(&x, &w, &g4, &g4, &cfg, 0.0),
        Err(hdr_ops::OpsError::InvalidConfig { .. })
    ));
    assert!(matches!(
        conv_bn2d(&x, &tensor(2, &[4, 2, 3, 3]), &g4, &g4, &cfg, 1e-5),
        Err(hdr_ops::OpsError::ShapeMismatch { .. } | hdr_ops::OpsError::InvalidConfig { .. })
    ));
}

/// A stage of a chain: output channels (ignored for depthwise), kernel, stride, padding.
#[derive(Debug, Clone, Copy)]
struct StageSpec {
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    depthwise: bool,
    relu: bool,
}

/// The chain's output, every stage's mean and var, and the gradients of x and of every
/// stage's weight, gamma and beta, fused (`conv_bn_chain2d`) or as separate ops.
fn run_chain(
    dims: [usize; 4],
    specs: &[StageSpec],
    seed: u64,
    dtype: DType,
    fused: bool,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let wrap = candle_core::Error::wrap;
    let x = Var::from_tensor(&tensor(seed, &dims).to_dtype(dtype)?)?;
    let mut params = Vec::new();
    let mut c = dims[1];
    for (i, s) in specs.iter().enumerate() {
        let co = if s.depthwise { c } else { s.c_out };
        let w_in = if s.depthwise { 1 } else { c };
        let at = seed + 10 * (i as u64 + 1);
        let w = Var::from_tensor(&tensor(at, &[co, w_in, s.k, s.k]).to_dtype(dtype)?)?;
        let gamma = Var::from_tensor(&(tensor(at + 1, &[co]) + 1.5)?.to_dtype(dtype)?)?;
        let beta = Var::from_tensor(&tensor(at + 2, &[co]).to_dtype(dtype)?)?;
        let cfg = Conv2dConfig {
            stride: s.stride,
            padding: s.pad,
            groups: if s.depthwise { c } else { 1 },
            activation: if s.relu {
                Activation::Relu
            } else {
                Activation::None
            },
        };
        params.push((w, gamma, beta, cfg));
        c = co;
    }
    let (y, stats) = if fused {
        let stages: Vec<ConvBnStage<'_>> = params
            .iter()
            .map(|(w, gamma, beta, cfg)| ConvBnStage {
                weight: w.as_tensor(),
                gamma: gamma.as_tensor(),
                beta: beta.as_tensor(),
                cfg: *cfg,
            })
            .collect();
        let out = conv_bn_chain2d(&x, &stages, 1e-5).map_err(wrap)?;
        let stats: Vec<(Tensor, Tensor)> = out
            .stats
            .iter()
            .map(|s| (s.mean.clone(), s.var.clone()))
            .collect();
        (out.y, stats)
    } else {
        let mut y = x.as_tensor().clone();
        let mut stats = Vec::new();
        for (w, gamma, beta, cfg) in &params {
            let plain = Conv2dConfig {
                activation: Activation::None,
                ..*cfg
            };
            let z = conv2d(&y, w, None, &plain).map_err(wrap)?;
            let out = batch_norm2d(&z, gamma, beta, 1e-5, cfg.activation).map_err(wrap)?;
            stats.push((out.mean, out.var));
            y = out.y;
        }
        (y, stats)
    };
    let r = tensor(seed + 4, y.dims()).to_dtype(dtype)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).map(|t| to_vec(&t));
    let get = |v: &Var| -> candle_core::Result<Vec<f32>> {
        match grads.get(v) {
            Some(g) => f32s(g),
            None => candle_core::bail!("missing gradient"),
        }
    };
    let mut out = vec![f32s(&y)?, get(&x)?];
    for ((w, gamma, beta, _), (mean, var)) in params.iter().zip(&stats) {
        out.extend([f32s(mean)?, f32s(var)?, get(w)?, get(gamma)?, get(beta)?]);
    }
    Ok(out)
}

fn check_chain(dims: [usize; 4], specs: &[StageSpec], seed: u64) -> Result<(), String> {
    let err = |e: candle_core::Error| e.to_string();
    let fused = run_chain(dims, specs, seed, DType::F32, true).map_err(err)?;
    let separate = run_chain(dims, specs, seed, DType::F32, false).map_err(err)?;
    if fused.len() != separate.len() {
        return Err("different numbers of outputs".into());
    }
    for (i, (got, want)) in fused.iter().zip(&separate).enumerate() {
        close_tol(&format!("output {i}"), got, want, 1e-5, 1e-4)?;
    }
    // Against the same computation in f64, composed from candle's own ops.
    let reference = run_chain(dims, specs, seed, DType::F64, false).map_err(err)?;
    for (i, (got, want)) in fused.iter().zip(&reference).enumerate() {
        close_tol(&format!("output {i} vs f64"), got, want, TOL, TOL)?;
    }
    Ok(())
}

fn stage() -> impl Strategy<Value = StageSpec> {
    (
        1usize..=5,
        1usize..=3,
        1usize..=2,
        0usize..=1,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(c_out, k, stride, pad, depthwise, relu)| StageSpec {
            c_out,
            k,
            stride,
            pad,
            depthwise,
            relu,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn chains_match_their_stages_run_one_by_one(
        b in 1usize..=3, c in 1usize..=4, h in 5usize..=10, w in 5usize..=10,
        specs in proptest::collection::vec(stage(), 1..=3), seed in any::<u64>(),
    ) {
        // Every stage keeps at least 4 values per channel (see tests/batch_norm.rs).
        let mut hw = (h, w);
        for s in &specs {
            prop_assume!(hw.0 + 2 * s.pad >= s.k && hw.1 + 2 * s.pad >= s.k);
            hw = ((hw.0 + 2 * s.pad - s.k) / s.stride + 1, (hw.1 + 2 * s.pad - s.k) / s.stride + 1);
            prop_assume!(b * hw.0 * hw.1 >= 4);
        }
        check_chain([b, c, h, w], &specs, seed >> 8).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn mobilenet_blocks_as_chains() -> Result<(), String> {
    let dw = |stride| StageSpec {
        c_out: 0,
        k: 3,
        stride,
        pad: 1,
        depthwise: true,
        relu: true,
    };
    let pw = |c_out| StageSpec {
        c_out,
        k: 1,
        stride: 1,
        pad: 0,
        depthwise: false,
        relu: true,
    };
    check_chain([4, 16, 14, 14], &[dw(1), pw(32)], 7)?;
    check_chain([4, 32, 14, 14], &[dw(2), pw(64)], 8)?;
    check_chain([2, 64, 4, 4], &[dw(1), pw(128)], 9)
}
