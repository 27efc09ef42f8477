//! Inference speed of every registered model, f32, batch 1, 64 and 256; for LeNet-5 and
//! MobileNet-HDR also int8 and structured-pruned (half the MACs), batch 1 and 256.
//!
//! Ids: `inference/<model>/f32/b<batch>`, `inference/<model>/{int8,pruned}/b{1,256}`,
//! throughput in images. Weights are random (latency does not depend on their values); int8
//! calibrates on 256 random images.
//! `cargo bench --bench inference [-- <filter>]`

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hdr::compress::{QuantizeConfig, QuantizedModel, StructuredConfig, StructuredModel};

/// Models whose compressed variants are benchmarked too.
const COMPRESSED: [&str; 2] = ["lenet5", "mobilenet_hdr"];

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
        if COMPRESSED.contains(&name) {
            let graph = model.graph();
            let calibration =
                [Tensor::rand(0f32, 1f32, (256, 1, 28, 28), &device).expect("calibration")];
            let int8 = QuantizedModel::quantize(
                name,
                &graph,
                &vars,
                &calibration,
                &QuantizeConfig::default(),
            )
            .unwrap_or_else(|e| panic!("cannot quantize {name}: {e}"));
            let pruned = StructuredModel::fold(name, &graph, &vars)
                .and_then(|m| m.prune(&StructuredConfig { macs_fraction: 0.5 }))
                .unwrap_or_else(|e| panic!("cannot prune {name}: {e}"));
            for batch in [1usize, 256] {
                let x = Tensor::rand(0f32, 1f32, (batch, 1, 28, 28), &device).expect("input");
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(
                    BenchmarkId::new("int8", format!("b{batch}")),
                    &x,
                    |b, x| b.iter(|| black_box(int8.forward(x).expect("int8 forward"))),
                );
                group.bench_with_input(
                    BenchmarkId::new("pruned", format!("b{batch}")),
                    &x,
                    |b, x| b.iter(|| black_box(pruned.forward(x).expect("pruned forward"))),
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, inference);
criterion_main!(benches);
