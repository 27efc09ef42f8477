//! Shared test helpers.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hdr_models::Classifier;

/// A registered model with seeded initial weights, scaled to He-uniform (x sqrt 6).
///
/// The models are run in evaluation mode untrained, where batch norm is still the identity:
/// from PyTorch's default init each plain conv + ReLU shrinks activations about 2.4x, so the
/// deep MobileNets would hand the quantizer values near 1e-12 (a trained network's batch-norm
/// statistics undo that). He scaling keeps every layer's activations at the input's scale.
pub fn model(name: &str, seed: u64) -> (Box<dyn Classifier>, VarMap) {
    let vars = VarMap::new();
    let m = hdr_models::create(
        name,
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )
    .expect("registered model");
    hdr_models::init::init(&vars, seed).expect("init");
    for var in vars.all_vars() {
        if var.rank() >= 2 {
            let scaled = (var.as_tensor() * 6f64.sqrt()).expect("scale");
            var.set(&scaled).expect("set");
        }
    }
    (m, vars)
}

/// Deterministic digit-like images in `[0, 1]`: blobs on a dark background.
pub fn synthetic(batch: usize, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32
    };
    let mut v = vec![0f32; batch * 784];
    for img in v.chunks_mut(784) {
        let (cx, cy, r) = (8.0 + 12.0 * rnd(), 8.0 + 12.0 * rnd(), 3.0 + 5.0 * rnd());
        for (i, p) in img.iter_mut().enumerate() {
            let (x, y) = ((i % 28) as f32, (i / 28) as f32);
            let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
            *p = ((r - d).clamp(0.0, 1.0) + 0.05 * rnd()).min(1.0);
        }
    }
    Tensor::from_vec(v, (batch, 1, 28, 28), &Device::Cpu).expect("tensor")
}

/// Fraction of rows whose argmax agrees.
pub fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    let pa = a.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let pb = b.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    pa.iter().zip(&pb).filter(|(x, y)| x == y).count() as f64 / pa.len() as f64
}

/// `|a - b| / |b|` over all logits.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let n = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (d / n.max(1e-12)).sqrt()
}
