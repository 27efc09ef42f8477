//! Class probabilities for 28x28 images held as bytes, as an application needs them.

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};
use crate::Classifier;

/// What a model says about one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The most probable digit.
    pub digit: usize,
    /// Its softmax probability.
    pub probability: f32,
    /// The three most probable digits with their probabilities, best first.
    pub top3: Vec<(usize, f32)>,
}

/// Predicts every image (784 bytes each, MNIST polarity: 0 = background), in batches of 256.
///
/// Inputs are scaled to `[0, 1]` (`x / 255`), the scale the zoo is trained on.
pub fn predict(
    model: &dyn Classifier,
    images: &[&[u8]],
    device: &Device,
) -> Result<Vec<Prediction>> {
    if let Some((i, img)) = images.iter().enumerate().find(|(_, im)| im.len() != 784) {
        return Err(ModelError::BadInput {
            model: "predict",
            channels: 1,
            height: 28,
            width: 28,
            found: vec![i, img.len()],
        });
    }
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(256) {
        let data: Vec<f32> = chunk
            .iter()
            .flat_map(|im| im.iter().map(|&p| f32::from(p) / 255.0))
            .collect();
        let x = Tensor::from_vec(data, (chunk.len(), 1, 28, 28), device)?;
        let logits = model
            .forward(&x)?
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?;
        for row in logits.to_vec2::<f32>()? {
            out.push(from_logits(&row));
        }
    }
    Ok(out)
}

fn from_logits(z: &[f32]) -> Prediction {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let total: f32 = e.iter().sum();
    let mut ranked: Vec<(usize, f32)> = e.iter().map(|v| v / total).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(3);
    Prediction {
        digit: ranked[0].0,
        probability: ranked[0].1,
        top3: ranked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_ranking() {
        let p = from_logits(&[0.0, 2.0, 1.0, -1.0]);
        assert_eq!(p.digit, 1);
        assert_eq!(
            p.top3.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
        let sum: f32 = [0.0f32, 2.0, 1.0, -1.0].iter().map(|v| v.exp()).sum();
        assert!((p.probability - 2f32.exp() / sum).abs() < 1e-6);
    }
}
