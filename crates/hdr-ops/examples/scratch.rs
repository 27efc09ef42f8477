use candle_core::{DType, Device, Result, Tensor, Var};
use hdr_ops::{Activation, Conv2dConfig};
use std::time::Instant;

fn t(name: &str, n: u32, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    f()?;
    let s = Instant::now();
    for _ in 0..n {
        f()?;
    }
    println!(
        "{name:<40} {:8.3} ms",
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    for (name, xd, wd, s, p, g) in [
        (
            "pw 32->64 @28",
            [64usize, 32, 28, 28],
            [64usize, 32, 1, 1],
            1usize,
            0usize,
            1usize,
        ),
        ("dw 32 @28", [64, 32, 28, 28], [32, 1, 3, 3], 1, 1, 32),
        ("dw 64 s2 @28", [64, 64, 28, 28], [64, 1, 3, 3], 2, 1, 64),
        ("stem 1->32 @28", [64, 1, 28, 28], [32, 1, 3, 3], 1, 1, 1),
        ("lenet2 6->16 @14", [64, 6, 14, 14], [16, 6, 5, 5], 1, 0, 1),
        ("lenet1 1->6 @28", [64, 1, 28, 28], [6, 1, 5, 5], 1, 2, 1),
    ] {
        if let Some(f) = std::env::args().nth(1) {
            if !name.contains(&f) {
                continue;
            }
        }
        let x = Var::randn(0f32, 1., &xd, &dev)?;
        let w = Var::randn(0f32, 0.1, &wd, &dev)?;
        let b = Var::zeros(wd[0], DType::F32, &dev)?;
        let cfg = Conv2dConfig {
            stride: s,
            padding: p,
            groups: g,
            activation: Activation::Relu,
        };
        let conv = || hdr_ops::conv2d(&x, &w, Some(&b), &cfg).map_err(candle_core::Error::wrap);
        let y = conv()?;
        println!("{name}: y {:?}", y.dims());
        t("  fwd", 10, || conv().map(|_| ()))?;
        t("  fwd + sum_all", 10, || conv()?.sum_all().map(|_| ()))?;
        t(
            "  fwd + sum_all + backward",
            std::env::var("N")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10),
            || conv()?.sum_all()?.backward().map(|_| ()),
        )?;
        let yv = Var::from_tensor(&y)?;
        t("  [candle only] sum_all + backward of y", 10, || {
            yv.sum_all()?.backward().map(|_| ())
        })?;
        let z = Tensor::zeros(x.shape(), DType::F32, &dev)?;
        t("  [candle only] zeros_like(x) + add", 10, || {
            Tensor::zeros(x.shape(), DType::F32, &dev)?
                .add(&z)
                .map(|_| ())
        })?;
    }
    Ok(())
}
