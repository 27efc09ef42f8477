//! Pooling against naive loops (all kernels/strides/paddings) and candle's own pooling where it
//! applies (no padding; max-pool backward only for kernel == stride). Tolerance
//! |a-b| <= 1e-4 + 1e-4·|b|.

mod common;

use candle_core::{DType, Var};
use common::{close, tensor, to_vec};
use hdr_ops::{avg_pool2d, global_avg_pool2d, max_pool2d};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    seed: u64,
}

impl Case {
    fn oh(&self) -> usize {
        (self.h + 2 * self.p - self.k) / self.s + 1
    }
    fn ow(&self) -> usize {
        (self.w + 2 * self.p - self.k) / self.s + 1
    }
}

fn cases() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=4,
        1usize..=10,
        1usize..=10,
        1usize..=4,
        1usize..=3,
        any::<u64>(),
    )
        .prop_flat_map(|(b, c, h, w, k, s, seed)| {
            (0..=k / 2).prop_map(move |p| Case {
                b,
                c,
                h,
                w,
                k,
                s,
                p,
                seed: seed >> 8,
            })
        })
        .prop_filter("window fits", |c| {
            c.h + 2 * c.p >= c.k && c.w + 2 * c.p >= c.k
        })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Max,
    Avg,
}

/// Naive pooling: returns y and dx for upstream gradient r.
fn naive(c: &Case, kind: Kind, x: &[f32], r: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = (c.oh(), c.ow());
    let mut y = vec![0f32; c.b * c.c * oh * ow];
    let mut dx = vec![0f32; x.len()];
    for plane in 0..c.b * c.c {
        for p in 0..oh {
            for q in 0..ow {
                let mut taps = Vec::new();
                for i in 0..c.k {
                    for j in 0..c.k {
                        let ih = (p * c.s + i) as isize - c.p as isize;
                        let iw = (q * c.s + j) as isize - c.p as isize;
                        if ih >= 0 && iw >= 0 && (ih as usize) < c.h && (iw as usize) < c.w {
                            taps.push((plane * c.h + ih as usize) * c.w + iw as usize);
                        }
                    }
                }
                // Row-major order of taps, so the first maximum is PyTorch's argmax.
                taps.sort_unstable();
                let yi = (plane * oh + p) * ow + q;
                match kind {
                    Kind::Max => {
                        let best =
                            taps.iter()
                                .copied()
                                .fold(taps[0], |b, t| if x[t] > x[b] { t } else { b });
                        y[yi] = x[best];
                        dx[best] += r[yi];
                    }
                    Kind::Avg => {
                        let area = (c.k * c.k) as f32;
                        y[yi] = taps.iter().map(|&t| x[t]).sum::<f32>() / area;
                        for &t in &taps {
                            dx[t] += r[yi] / area;
                        }
                    }
                }
            }
        }
    }
    (y, dx)
}

fn check(c: Case, kind: Kind) -> Result<(), String> {
    check_on(c, kind, tensor(c.seed, &[c.b, c.c, c.h, c.w]))
}

/// [`check`] on given input values.
fn check_on(c: Case, kind: Kind, xt: candle_core::Tensor) -> Result<(), String> {
    let e = |e: candle_core::Error| e.to_string();
    let rt = tensor(c.seed + 1, &[c.b, c.c, c.oh(), c.ow()]);
    let (y_ref, dx_ref) = naive(&c, kind, &to_vec(&xt), &to_vec(&rt));
    let xv = Var::from_tensor(&xt).map_err(e)?;
    let y = match kind {
        Kind::Max => max_pool2d(&xv, c.k, c.s, c.p),
        Kind::Avg => avg_pool2d(&xv, c.k, c.s, c.p),
    }
    .map_err(|e| e.to_string())?;
    if y.dims() != [c.b, c.c, c.oh(), c.ow()] {
        return Err(format!("output shape {:?}", y.dims()));
    }
    close("y vs naive", &to_vec(&y), &y_ref)?;
    let grads = (&y * &rt)
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .map_err(e)?;
    let dx = grads.get(&xv).map(to_vec).ok_or("missing gradient")?;
    close("dx vs naive", &dx, &dx_ref)?;

    if c.p == 0 {
        // candle's own pooling, where it is defined.
        let yc = match kind {
            Kind::Max => xv.max_pool2d_with_stride(c.k, c.s),
            Kind::Avg => xv.avg_pool2d_with_stride(c.k, c.s),
        }
        .map_err(e)?;
        close("y vs candle", &to_vec(&y), &to_vec(&yc))?;
        // candle's pooling backward only exists for kernel == stride, spreads the gradient
        // with a nearest upsample (wrong when the size is not a multiple of the kernel), and its max-pool
        // gradient is scaled by 1/k² (it multiplies by the mask's window average instead of
        // dividing by the number of maxima), so only average pooling is compared here; the
        // naive loops above are the max-pool gradient reference.
        if kind == Kind::Avg && c.k == c.s && c.h.is_multiple_of(c.k) && c.w.is_multiple_of(c.k) {
            let gc = (&yc * &rt)
                .and_then(|l| l.sum_all())
                .and_then(|l| l.backward())
                .map_err(e)?;
            let dxc = gc.get(&xv).map(to_vec).ok_or("missing candle gradient")?;
            close("dx vs candle", &dx, &dxc)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn max_pool_matches_reference(c in cases()) {
        check(c, Kind::Max).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn avg_pool_matches_reference(c in cases()) {
        check(c, Kind::Avg).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn global_avg_pool_matches_mean(b in 1usize..=3, ch in 1usize..=5, h in 1usize..=9, w in 1usize..=9, seed in any::<u64>()) {
        let e = |e: candle_core::Error| TestCaseError::fail(e.to_string());
        let xt = tensor(seed >> 8, &[b, ch, h, w]);
        let rt = tensor((seed >> 8) + 1, &[b, ch]);
        let xv = Var::from_tensor(&xt).map_err(e)?;
        let y = global_avg_pool2d(&xv).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(y.dims(), &[b, ch]);
        let yc = xt.mean((2, 3)).map_err(e)?;
        close("y vs mean", &to_vec(&y), &to_vec(&yc)).map_err(TestCaseError::fail)?;
        let grads = (&y * &rt).and_then(|l| l.sum_all()).and_then(|l| l.backward()).map_err(e)?;
        let dx = grads.get(&xv).map(to_vec).ok_or_else(|| TestCaseError::fail("no gradient"))?;
        let r = to_vec(&rt);
        let want: Vec<f32> = (0..dx.len()).map(|i| r[i / (h * w)] / (h * w) as f32).collect();
        close("dx", &dx, &want).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn lenet_and_overlapping_shapes() -> Result<(), String> {
    let case = |b, c, hw, k, s, p| Case {
        b,
        c,
        h: hw,
        w: hw,
        k,
        s,
        p,
        seed: 11,
    };
    for kind in [Kind::Max, Kind::Avg] {
        check(case(4, 6, 28, 2, 2, 0), kind)?; // LeNet pool1, batch-parallel
        check(case(1, 16, 10, 2, 2, 0), kind)?; // LeNet pool2, batch 1
        check(case(2, 8, 13, 3, 2, 1), kind)?; // ResNet-style overlapping pool
        check(case(3, 2, 7, 2, 2, 0), kind)?; // 2x2 fast path, odd size (last row/col unused)
    }
    Ok(())
}

/// Inputs after a ReLU, rounded to a few levels: most windows hold several equal maxima, and the
/// gradient must go to the first one in row-major order (PyTorch's choice), in the 2x2 fast
/// path as in the general one.
#[test]
fn ties_send_the_gradient_to_the_first_maximum() -> Result<(), String> {
    let e = |e: candle_core::Error| e.to_string();
    for (hw, k, s) in [(8, 2, 2), (9, 2, 2), (7, 3, 2)] {
        let c = Case {
            b: 2,
            c: 3,
            h: hw,
            w: hw,
            k,
            s,
            p: 0,
            seed: 21,
        };
        let x = tensor(c.seed, &[c.b, c.c, hw, hw]);
        let tied = (x * 1.5)
            .and_then(|t| t.round())
            .and_then(|t| t.relu())
            .map_err(e)?;
        check_on(c, Kind::Max, tied)?;
    }
    Ok(())
}

#[test]
fn f64_and_padded_fallbacks_agree() -> anyhow::Result<()> {
    let xt = tensor(5, &[2, 3, 9, 8]);
    let x64 = xt.to_dtype(DType::F64)?;
    let back = |t: candle_core::Tensor| t.to_dtype(DType::F32).map(|t| to_vec(&t));
    let m = |e: String| anyhow::Error::msg(e);
    close(
        "max",
        &back(max_pool2d(&x64, 3, 2, 1)?)?,
        &to_vec(&max_pool2d(&xt, 3, 2, 1)?),
    )
    .map_err(m)?;
    close(
        "avg",
        &back(avg_pool2d(&x64, 3, 2, 1)?)?,
        &to_vec(&avg_pool2d(&xt, 3, 2, 1)?),
    )
    .map_err(m)?;
    close(
        "gap",
        &back(global_avg_pool2d(&x64)?)?,
        &to_vec(&global_avg_pool2d(&xt)?),
    )
    .map_err(m)?;
    Ok(())
}
