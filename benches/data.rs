//! Data pipeline speed: loading MNIST from `.gz` (verified) and one epoch of augmentation.
//!
//! Needs MNIST in `HDR_DATA_DIR` (or `datasets/mnist/`):
//! `HDR_DATA_DIR=../shared/datasets/mnist cargo bench --bench data`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdr::data::augment::{ElasticDistortion, RandomAffine};
use hdr::data::{fill_inputs, Augment, BatchConfig, Mnist, MnistOptions};

fn options() -> MnistOptions {
    MnistOptions {
        download: false,
        ..MnistOptions::default()
    }
}

fn load(c: &mut Criterion) {
    let opts = options();
    let mnist = match Mnist::load_with(&opts) {
        Ok(m) => m,
        Err(e) => panic!("the data benchmarks need MNIST: {e}"),
    };
    let mut g = c.benchmark_group("data");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(70_000));
    g.bench_function("load_mnist_gz/verified", |b| {
        b.iter(|| black_box(Mnist::read(&mnist.dir, true).map(|m| m.train.len())))
    });
    g.bench_function("load_mnist_gz/unverified", |b| {
        b.iter(|| black_box(Mnist::read(&mnist.dir, false).map(|m| m.train.len())))
    });
    g.finish();

    let train = mnist.train;
    let indices: Vec<usize> = (0..train.len()).collect();
    let mut out = vec![0f32; train.len() * 784];
    let mut g = c.benchmark_group("data/epoch_60k");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(train.len() as u64));
    let variants: [(&str, Option<Arc<dyn Augment>>); 3] = [
        ("none", None),
        ("affine", Some(Arc::new(RandomAffine::default()))),
        ("elastic", Some(Arc::new(ElasticDistortion::default()))),
    ];
    for (name, augment) in variants {
        let cfg = BatchConfig {
            augment,
            ..BatchConfig::default()
        };
        let mut epoch = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                epoch += 1;
                fill_inputs(&train, &indices, &cfg, epoch, &mut out).map(|()| black_box(out[0]))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
