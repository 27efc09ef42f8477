//! One training step (forward, backward, Adam update) at batch 64.
//!
//! Ids: `train_step/<model>/b64`, throughput in images. Compare with
//! `benches/peers/torch_bench.py` (same architectures, same step).
//! `cargo bench --bench training`
//!
//! Each step runs on rayon's pool, as `hdr_train::fit` runs it.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdr::train::{cross_entropy, Optimizer, OptimizerConfig};

fn train_step(c: &mut Criterion) {
    let device = Device::Cpu;
    let batch = 64;
    for name in [
        "mlp3",
        "lenet5",
        "resnet",
        "densenet",
        "mobilenet",
        "mobilenet_hdr",
    ] {
        let vars = VarMap::new();
        let model = hdr::models::create(name, VarBuilder::from_varmap(&vars, DType::F32, &device))
            .expect("model");
        hdr::models::init::init(&vars, 0).expect("init");
        let mut opt = Optimizer::new(&OptimizerConfig::default(), &vars).expect("optimizer");
        let x = Tensor::rand(0f32, 1f32, (batch, 1, 28, 28), &device).expect("input");
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
        let y = Tensor::from_vec(labels, batch, &device).expect("labels");
        let mut group = c.benchmark_group(format!("train_step/{name}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("b{batch}"), |b| {
            b.iter(|| {
                hdr::models::init::in_pool(|| {
                    let out = model.forward_t(&x, true).expect("forward");
                    let mut loss = cross_entropy(&out.logits, &y, 0.0).expect("loss");
                    if let Some(aux) = &out.aux_logits {
                        loss = (loss
                            + (cross_entropy(aux, &y, 0.0).expect("aux loss") * 0.3)
                                .expect("scale"))
                        .expect("add");
                    }
                    let grads = loss.backward().expect("backward");
                    black_box(opt.step(&grads, 1e-3).expect("step"))
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
