//! The ops inside an ordinary candle training loop: parameters from a `VarMap`, candle-nn's
//! AdamW, `loss.backward()`. A tiny depthwise-separable net must fit a fixed random batch.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use hdr_ops::{batch_norm2d, conv2d, global_avg_pool2d, max_pool2d, Activation, Conv2dConfig};

#[test]
fn small_net_trains_with_varmap_and_adamw() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
    let w1 = vb.get_with_hints((8, 1, 3, 3), "w1", init)?;
    let b1 = vb.get_with_hints(8, "b1", candle_nn::init::ZERO)?;
    let wdw = vb.get_with_hints((8, 1, 3, 3), "wdw", init)?;
    let gamma = vb.get_with_hints(8, "gamma", candle_nn::init::ONE)?;
    let beta = vb.get_with_hints(8, "beta", candle_nn::init::ZERO)?;
    let wpw = vb.get_with_hints((16, 8, 1, 1), "wpw", init)?;
    let fc = candle_nn::linear(16, 4, vb.pp("fc"))?;

    let x = Tensor::randn(0f32, 1., (16, 1, 12, 12), &dev)?;
    let labels = Tensor::from_vec((0..16u32).map(|i| i % 4).collect::<Vec<_>>(), 16, &dev)?;
    let forward = |x: &Tensor| -> anyhow::Result<Tensor> {
        let relu = Conv2dConfig {
            padding: 1,
            activation: Activation::Relu,
            ..Default::default()
        };
        let h = conv2d(x, &w1, Some(&b1), &relu)?;
        let h = max_pool2d(&h, 2, 2, 0)?; // 6x6
        let dw = Conv2dConfig {
            padding: 1,
            groups: 8,
            ..Default::default()
        };
        let h = conv2d(&h, &wdw, None, &dw)?;
        let h = batch_norm2d(&h, &gamma, &beta, 1e-5, Activation::Relu)?.y;
        let h = conv2d(&h, &wpw, None, &relu)?;
        let h = global_avg_pool2d(&h)?;
        Ok(fc.forward(&h)?)
    };
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: 0.02,
            ..Default::default()
        },
    )?;
    let loss0 = candle_nn::loss::cross_entropy(&forward(&x)?, &labels)?.to_scalar::<f32>()?;
    let mut loss = loss0;
    for _ in 0..60 {
        let l = candle_nn::loss::cross_entropy(&forward(&x)?, &labels)?;
        opt.backward_step(&l)?;
        loss = l.to_scalar::<f32>()?;
    }
    anyhow::ensure!(
        loss.is_finite() && loss < 0.5 * loss0,
        "loss {loss0} -> {loss}"
    );
    Ok(())
}
