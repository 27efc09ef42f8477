//! `conv2d` (dense and depthwise) against naive loops and candle's own conv2d: forward values
//! and the gradients of x, w and bias, tolerance |a-b| <= 1e-4 + 1e-4·|b|.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{close, data, tensor, to_vec};
use hdr_ops::{conv2d, Activation, Conv2dConfig};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    relu: bool,
    bias: bool,
    seed: u64,
}

impl Case {
    fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    fn valid(&self) -> bool {
        self.h + 2 * self.pad >= self.kh && self.w + 2 * self.pad >= self.kw
    }
    fn cfg(&self) -> Conv2dConfig {
        Conv2dConfig {
            stride: self.stride,
            padding: self.pad,
            groups: self.groups,
            activation: if self.relu {
                Activation::Relu
            } else {
                Activation::None
            },
        }
    }
}

/// Naive grouped convolution: returns y and, for upstream gradient r, (dx, dw, db).
#[allow(clippy::type_complexity)]
fn naive(
    c: &Case,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    r: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (oh, ow) = (c.oh(), c.ow());
    let cig = c.c_in / c.groups;
    let cog = c.c_out / c.groups;
    let xi = |b: usize, ch: usize, i: usize, j: usize| ((b * c.c_in + ch) * c.h + i) * c.w + j;
    let wi = |o: usize, ch: usize, i: usize, j: usize| ((o * cig + ch) * c.kh + i) * c.kw + j;
    let yi = |b: usize, o: usize, i: usize, j: usize| ((b * c.c_out + o) * oh + i) * ow + j;
    // Visits every (output, input, weight) index triple that contributes to the conv.
    let each = |f: &mut dyn FnMut(usize, usize, usize)| {
        for b in 0..c.b {
            for o in 0..c.c_out {
                let grp = o / cog;
                for p in 0..oh {
                    for q in 0..ow {
                        for ch in 0..cig {
                            for i in 0..c.kh {
                                for j in 0..c.kw {
                                    let ih = (p * c.stride + i) as isize - c.pad as isize;
                                    let iw = (q * c.stride + j) as isize - c.pad as isize;
                                    if ih < 0 || iw < 0 || ih as usize >= c.h || iw as usize >= c.w
                                    {
                                        continue;
                                    }
                                    f(
                                        yi(b, o, p, q),
                                        xi(b, grp * cig + ch, ih as usize, iw as usize),
                                        wi(o, ch, i, j),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let n = c.b * c.c_out * oh * ow;
    let mut y = vec![0f32; n];
    each(&mut |yi, xi, wi| y[yi] += x[xi] * w[wi]);
    for (k, v) in y.iter_mut().enumerate() {
        *v += bias[(k / (oh * ow)) % c.c_out];
        if c.relu {
            *v = v.max(0.0);
        }
    }
    let gy: Vec<f32> = r
        .iter()
        .zip(&y)
        .map(|(&r, &y)| if c.relu && y <= 0.0 { 0.0 } else { r })
        .collect();
    let mut dx = vec![0f32; x.len()];
    let mut dw = vec![0f32; w.len()];
    each(&mut |yi, xi, wi| {
        dx[xi] += gy[yi] * w[wi];
        dw[wi] += gy[yi] * x[xi];
    });
    let mut db = vec![0f32; c.c_out];
    for (k, g) in gy.iter().enumerate() {
        db[(k / (oh * ow)) % c.c_out] += g;
    }
    (y, dx, dw, db)
}

/// Runs hdr-ops with autograd and checks everything against the naive reference and candle.
fn check(c: Case) -> Result<(), String> {
    let e = |e: candle_core::Error| e.to_string();
    let (oh, ow) = (c.oh(), c.ow());
    let xt = tensor(c.seed, &[c.b, c.c_in, c.h, c.w]);
    let wt = tensor(c.seed + 1, &[c.c_out, c.c_in / c.groups, c.kh, c.kw]);
    let bt = tensor(c.seed + 2, &[c.c_out]);
    let rt = tensor(c.seed + 3, &[c.b, c.c_out, oh, ow]);
    let (x, w, b, r) = (to_vec(&xt), to_vec(&wt), to_vec(&bt), to_vec(&rt));
    let zero_b = vec![0f32; c.c_out];
    let (y_ref, dx_ref, dw_ref, db_ref) = naive(&c, &x, &w, if c.bias { &b } else { &zero_b }, &r);

    let xv = Var::from_tensor(&xt).map_err(e)?;
    let wv = Var::from_tensor(&wt).map_err(e)?;
    let bv = Var::from_tensor(&bt).map_err(e)?;
    let y =
        conv2d(&xv, &wv, c.bias.then_some(bv.as_tensor()), &c.cfg()).map_err(|e| e.to_string())?;
    if y.dims() != [c.b, c.c_out, oh, ow] {
        return Err(format!("output shape {:?}", y.dims()));
    }
    close("y vs naive", &to_vec(&y), &y_ref)?;
    let grads = (&y * &rt)
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .map_err(e)?;
    let get = |v: &Var| {
        grads
            .get(v)
            .map(to_vec)
            .ok_or("missing gradient".to_string())
    };
    close("dx vs naive", &get(&xv)?, &dx_ref)?;
    close("dw vs naive", &get(&wv)?, &dw_ref)?;
    if c.bias {
        close("db vs naive", &get(&bv)?, &db_ref)?;
    }

    // candle's own conv (forward only: its grouped backward is what this crate replaces, and
    // the naive loops above are the gradient reference).
    let mut yc = xt.conv2d(&wt, c.pad, c.stride, 1, c.groups).map_err(e)?;
    if c.bias {
        yc = yc
            .broadcast_add(&bt.reshape((1, c.c_out, 1, 1)).map_err(e)?)
            .map_err(e)?;
    }
    if c.relu {
        yc = yc.relu().map_err(e)?;
    }
    close("y vs candle", &to_vec(&y), &to_vec(&yc))
}

fn dense_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=5, 1usize..=6, 1usize..=9, 1usize..=9),
        (1usize..=4, 1usize..=4, 1usize..=2, 0usize..=2),
        (any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((b, c_in, c_out, h, w), (kh, kw, stride, pad), (relu, bias, seed))| Case {
                b,
                c_in,
                c_out,
                h,
                w,
                kh,
                kw,
                stride,
                pad,
                groups: 1,
                relu,
                bias,
                seed: seed >> 8,
            },
        )
        .prop_filter("kernel fits", Case::valid)
}

fn depthwise_case() -> impl Strategy<Value = Case> {
    dense_case().prop_map(|c| Case {
        c_out: c.c_in,
        groups: c.c_in,
        ..c
    })
}

/// Square kernels at stride 1 with `pad < k`: the input gradient takes the gather form (the
/// transposed convolution as a forward stencil), on planes up to several register blocks wide.
fn depthwise_stride1_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=12, 1usize..=20, 1usize..=20),
        (1usize..=5, 0usize..=4),
        (any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(|((b, c, h, w), (k, pad), (relu, bias, seed))| Case {
            b,
            c_in: c,
            c_out: c,
            h,
            w,
            kh: k,
            kw: k,
            stride: 1,
            pad: pad.min(k - 1),
            groups: c,
            relu,
            bias,
            seed: seed >> 8,
        })
        .prop_filter("kernel fits", Case::valid)
}

/// Narrow outputs (fewer than 8 columns) take the channel-interleaved kernels: any kernel,
/// stride and padding, channel counts on both sides of the 8-lane groups.
fn depthwise_narrow_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=19, 1usize..=9, 1usize..=9),
        (1usize..=4, 1usize..=4, 1usize..=3, 0usize..=2),
        (any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((b, c, h, w), (kh, kw, stride, pad), (relu, bias, seed))| Case {
                b,
                c_in: c,
                c_out: c,
                h,
                w,
                kh,
                kw,
                stride,
                pad,
                groups: c,
                relu,
                bias,
                seed: seed >> 8,
            },
        )
        .prop_filter("kernel fits, narrow output", |c| c.valid() && c.ow() < 8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn depthwise_narrow_conv_matches_reference(c in depthwise_narrow_case()) {
        check(c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn depthwise_stride1_conv_matches_reference(c in depthwise_stride1_case()) {
        check(c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn dense_conv_matches_reference(c in dense_case()) {
        check(c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn depthwise_conv_matches_reference(c in depthwise_case()) {
        check(c).map_err(TestCaseError::fail)?;
    }
}

fn case(
    b: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Case {
    Case {
        b,
        c_in,
        c_out,
        h: hw,
        w: hw,
        kh: k,
        kw: k,
        stride,
        pad,
        groups: 1,
        relu: true,
        bias: true,
        seed: 7,
    }
}

#[test]
fn layer_shapes_match_reference() -> Result<(), String> {
    // Shapes of the real networks, including batches >= the thread count (batch-parallel path)
    // and batch 1 (gemm-parallel path), 1x1 pointwise convs, and stride-2 depthwise.
    check(case(4, 1, 6, 28, 5, 1, 2))?; // LeNet conv1
    check(case(3, 6, 16, 14, 5, 1, 0))?; // LeNet conv2
    check(case(1, 32, 64, 14, 1, 1, 0))?; // pointwise, batch 1
    check(case(5, 32, 64, 7, 1, 1, 0))?; // pointwise, batched
    check(case(2, 3, 32, 28, 3, 2, 1))?; // stem conv, stride 2
    check(Case {
        groups: 32,
        c_out: 32,
        ..case(3, 32, 32, 14, 3, 2, 1)
    })?; // depthwise s2
    check(Case {
        groups: 16,
        c_out: 16,
        ..case(1, 16, 16, 9, 3, 1, 1)
    })?; // depthwise b1
    Ok(())
}

#[test]
fn general_groups_fall_back_to_candle() -> anyhow::Result<()> {
    let c = Case {
        groups: 2,
        c_in: 4,
        c_out: 6,
        ..case(2, 4, 6, 7, 3, 1, 1)
    };
    check(c).map_err(anyhow::Error::msg)
}

#[test]
fn input_gradient_is_skipped_for_plain_input_but_not_for_tracked_input() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let x = tensor(1, &[2, 3, 8, 8]);
    let w = Var::from_tensor(&tensor(2, &[4, 3, 3, 3]))?;
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    // Input derived from a variable: gradient must flow back through the conv.
    let s = Var::ones(1, DType::F32, &dev)?;
    let xs = x.broadcast_mul(&s)?;
    let grads = conv2d(&xs, &w, None, &cfg)?.sum_all()?.backward()?;
    let ds = grads.get(&s).map(|g| g.to_vec1::<f32>()).transpose()?;
    // d/ds sum(conv(s*x, w)) = sum(conv(x, w)).
    let want = conv2d(&x, &w, None, &cfg)?.sum_all()?.to_vec0::<f32>()?;
    let got = ds.ok_or_else(|| anyhow::anyhow!("no gradient for s"))?[0];
    anyhow::ensure!(
        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    // Plain input: only the weight gets a gradient.
    let grads = conv2d(&x, &w, None, &cfg)?.sum_all()?.backward()?;
    anyhow::ensure!(grads.get(&x).is_none());
    anyhow::ensure!(grads.get(&w).is_some());
    Ok(())
}

#[test]
fn non_contiguous_input_and_f64_fallback_agree() -> anyhow::Result<()> {
    let xt = tensor(3, &[2, 3, 9, 7]);
    let wt = tensor(4, &[5, 3, 3, 3]);
    let bt = tensor(5, &[5]);
    let cfg = Conv2dConfig {
        stride: 2,
        padding: 1,
        activation: Activation::Relu,
        ..Default::default()
    };
    let y = conv2d(&xt, &wt, Some(&bt), &cfg)?;
    // Same data through a transposed (non-contiguous) view.
    let xnc = xt.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    anyhow::ensure!(!xnc.is_contiguous());
    let y_nc = conv2d(&xnc, &wt, Some(&bt), &cfg)?;
    close("non-contiguous", &to_vec(&y_nc), &to_vec(&y)).map_err(anyhow::Error::msg)?;
    // f64 goes through candle's conv2d.
    let to64 = |t: &Tensor| t.to_dtype(DType::F64);
    let y64 = conv2d(&to64(&xt)?, &to64(&wt)?, Some(&to64(&bt)?), &cfg)?;
    close(
        "f64 fallback",
        &to_vec(&y64.to_dtype(DType::F32)?),
        &to_vec(&y),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(())
}

#[test]
fn mismatched_dtypes_are_rejected() {
    let x = tensor(1, &[1, 2, 5, 5]);
    let w = tensor(2, &[3, 2, 3, 3]).to_dtype(DType::F64).expect("cast");
    assert!(matches!(
        conv2d(&x, &w, None, &Conv2dConfig::default()),
        Err(hdr_ops::OpsError::DTypeMismatch { .. })
    ));
    let _ = data(0, 1);
}

/// The fallback (here: f64) where candle's own conv2d backward gets the input gradient's size
/// wrong: windows that stop short of the input's edge (1x1 stride 2 over an even width, 3x3
/// stride 2 padding 1 over an odd one). Values and gradients must match the f32 kernels.
#[test]
fn fallback_gradients_keep_the_input_shape_when_windows_stop_short() -> anyhow::Result<()> {
    for (h, w, k, stride, pad) in [
        (4, 5, 1, 2, 0),
        (6, 6, 1, 2, 0),
        (7, 8, 3, 2, 1),
        (9, 9, 2, 3, 0),
    ] {
        let xt = tensor(1, &[2, 3, h, w]);
        let wt = tensor(2, &[4, 3, k, k]);
        let cfg = Conv2dConfig {
            stride,
            padding: pad,
            ..Default::default()
        };
        let run = |dtype: DType| -> anyhow::Result<Vec<Vec<f32>>> {
            let x = Var::from_tensor(&xt.to_dtype(dtype)?)?;
            let wv = Var::from_tensor(&wt.to_dtype(dtype)?)?;
            let y = conv2d(&x, &wv, None, &cfg)?;
            let r = tensor(3, y.dims()).to_dtype(dtype)?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let f =
                |t: &Tensor| -> anyhow::Result<Vec<f32>> { Ok(to_vec(&t.to_dtype(DType::F32)?)) };
            let dx = grads.get(&x).ok_or_else(|| anyhow::anyhow!("no dx"))?;
            anyhow::ensure!(
                dx.dims() == x.dims(),
                "dx {:?} for x {:?}",
                dx.dims(),
                x.dims()
            );
            let dw = grads.get(&wv).ok_or_else(|| anyhow::anyhow!("no dw"))?;
            Ok(vec![f(&y)?, f(dx)?, f(dw)?])
        };
        let (fast, fallback) = (run(DType::F32)?, run(DType::F64)?);
        for (name, (a, b)) in ["y", "dx", "dw"].iter().zip(fast.iter().zip(&fallback)) {
            close(name, a, b).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}
