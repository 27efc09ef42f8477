//! Inference speed of every registered model, f32, batch 1, 64 and 256.
//!
//! Ids: `inference/<model>/f32/b<batch>`, throughput in images.
//! `cargo bench --bench inference [-- <filter>]`

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn inference(c: &mut Criterion) {
    let device = Device::Cpu;
    for name in hdr::models::list() {
        let vars = VarMap::new();
        let model =
            match hdr::models::create(name, VarBuilder::from_varmap(&vars, DType::F32, &device)) {
                Ok(m) => m,
                Err(e) => panic!("cannot build {name}: {e}"),
            };
        let mut group = c.benchmark_group(format!("inference/{name}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for batch in [1usize, 64, 256] {
            let x = Tensor::rand(0f32, 1f32, (batch, 1, 28, 28), &device).expect("input");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("f32", format!("b{batch}")), &x, |b, x| {
                b.iter(|| black_box(model.forward(x).expect("forward")))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, inference);
criterion_main!(benches);
