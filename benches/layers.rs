//! Forward + backward of each convolution, depthwise, pooling and batch-norm layer of `lenet5`
//! and `mobilenet_hdr`, and of the convolutions of `resnet` and `densenet`, at batch 64, with the shapes listed in `benches/peers/layers.json` (the
//! PyTorch reference, `benches/peers/torch_bench.py`, times the same list).
//!
//! Ids: `layer/<model>/<layer>/b64`. `cargo bench --bench layers`

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use hdr::ops::{batch_norm2d, conv2d, max_pool2d, Activation, Conv2dConfig};
use serde_json::Value;

fn field(l: &Value, k: &str) -> usize {
    l[k].as_u64()
        .unwrap_or_else(|| panic!("layers.json: {k} missing in {l}")) as usize
}

fn layers(c: &mut Criterion) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/peers/layers.json"
    ))
    .expect("benches/peers/layers.json");
    let spec: Value = serde_json::from_str(&text).expect("valid JSON");
    let dev = Device::Cpu;
    let b = 64;
    let mut group = c.benchmark_group("layer");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for l in spec["layers"].as_array().expect("layers array") {
        let id = l["id"].as_str().expect("id");
        let (c_in, hw) = (field(l, "c_in"), field(l, "hw"));
        let x = Tensor::rand(0f32, 1f32, (b, c_in, hw, hw), &dev).expect("input");
        let x = if l["input_grad"].as_bool() == Some(true) {
            Var::from_tensor(&x).expect("var").as_tensor().clone()
        } else {
            x
        };
        let run: Box<dyn Fn() -> Tensor + Send + Sync> = match l["op"].as_str() {
            Some("conv") => {
                let (c_out, k, groups) = (field(l, "c_out"), field(l, "k"), field(l, "groups"));
                let w = Var::randn(0f32, 0.1, (c_out, c_in / groups, k, k), &dev).expect("weight");
                let bias = (l["bias"].as_bool() == Some(true))
                    .then(|| Var::zeros(c_out, DType::F32, &dev).expect("bias"));
                let cfg = Conv2dConfig {
                    stride: field(l, "stride"),
                    padding: field(l, "pad"),
                    groups,
                    activation: if l["relu"].as_bool() == Some(true) {
                        Activation::Relu
                    } else {
                        Activation::None
                    },
                };
                let x = x.clone();
                Box::new(move || {
                    conv2d(&x, &w, bias.as_ref().map(|v| v.as_tensor()), &cfg).expect("conv")
                })
            }
            Some("maxpool") => {
                let (k, s) = (field(l, "k"), field(l, "stride"));
                let x = x.clone();
                Box::new(move || max_pool2d(&x, k, s, 0).expect("pool"))
            }
            Some("bn_relu") => {
                let gamma = Var::ones(c_in, DType::F32, &dev).expect("gamma");
                let beta = Var::zeros(c_in, DType::F32, &dev).expect("beta");
                let x = x.clone();
                Box::new(move || {
                    batch_norm2d(&x, &gamma, &beta, 1e-5, Activation::Relu)
                        .expect("bn")
                        .y
                })
            }
            other => panic!("unknown op {other:?} in layers.json"),
        };
        // `backward` on a non-scalar seeds the gradient with ones, as `y.backward(ones)` in
        // PyTorch. On rayon's pool, as the training loop runs its steps (`hdr_train::fit`).
        group.bench_function(format!("{id}/b{b}"), |bench| {
            bench.iter(|| black_box(hdr::ops::in_pool(|| run().backward().expect("backward"))))
        });
    }
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
