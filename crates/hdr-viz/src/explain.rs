//! Which pixels made the model say what it said: saliency (Simonyan et al. 2014) and Grad-CAM
//! (Selvaraju et al. 2017).

use candle_core::{DType, Tensor, Var};
use hdr_models::Classifier;

use crate::error::{Result, VizError};

/// An explanation of one prediction: the class explained and a 28x28 map in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The class whose score was explained.
    pub class: usize,
    /// Softmax probability of that class.
    pub probability: f32,
    /// Relevance of each pixel, row-major 28x28, scaled so the maximum is 1.
    pub map: Vec<f32>,
}

fn check(x: &Tensor) -> Result<()> {
    if x.dims() != [1, 1, 28, 28] {
        return Err(VizError::InvalidInput {
            what: "image",
            reason: format!("expected one [1, 1, 28, 28] image, got {:?}", x.dims()),
        });
    }
    Ok(())
}

/// The class to explain: `class`, or the predicted one.
fn pick(logits: &Tensor, class: Option<usize>) -> Result<(usize, f32)> {
    let z = logits
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let total: f32 = e.iter().sum();
    let probs: Vec<f32> = e.iter().map(|v| v / total).collect();
    let c = match class {
        Some(c) if c < probs.len() => c,
        Some(c) => {
            return Err(VizError::InvalidInput {
                what: "class",
                reason: format!("{c} is not one of the {} classes", probs.len()),
            })
        }
        None => probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i),
    };
    Ok((c, probs[c]))
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let max = v.iter().copied().fold(0f32, f32::max);
    if max > 0.0 {
        v.iter_mut().for_each(|x| *x /= max);
    }
    v
}

/// Saliency: the magnitude of the gradient of the class score with respect to each input pixel.
///
/// # Shapes
/// `x`: `[1, 1, 28, 28]`.
pub fn saliency(model: &dyn Classifier, x: &Tensor, class: Option<usize>) -> Result<Explanation> {
    check(x)?;
    let xv = Var::from_tensor(&x.to_dtype(DType::F32)?)?;
    let logits = model.forward(xv.as_tensor())?;
    let (c, probability) = pick(&logits, class)?;
    let grads = logits.narrow(1, c, 1)?.sum_all()?.backward()?;
    let g = grads
        .get(xv.as_tensor())
        .ok_or_else(|| VizError::InvalidInput {
            what: "model",
            reason: "the class score does not depend on the input".into(),
        })?;
    let map = g.abs()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Explanation {
        class: c,
        probability,
        map: normalise(map),
    })
}

/// Grad-CAM on the last convolutional feature map: the map's channels weighted by the average
/// gradient of the class score over each channel, summed, rectified, and upsampled (bilinear) to
/// 28x28.
///
/// # Shapes
/// `x`: `[1, 1, 28, 28]`.
pub fn grad_cam(model: &dyn Classifier, x: &Tensor, class: Option<usize>) -> Result<Explanation> {
    check(x)?;
    let (logits, maps) = model.forward_features(x)?;
    let last = maps.last().ok_or_else(|| VizError::NoFeatureMaps {
        model: model.config().family().to_string(),
    })?;
    let (c, probability) = pick(&logits, class)?;
    let grads = logits.narrow(1, c, 1)?.sum_all()?.backward()?;
    let (_, ch, h, w) = last.activation.dims4()?;
    let g = match grads.get(last.probe.as_tensor()) {
        Some(g) => g.clone(),
        None => Tensor::zeros((1, ch, h, w), DType::F32, x.device())?,
    };
    let weights = g.mean_keepdim((2, 3))?;
    let cam = last.activation.broadcast_mul(&weights)?.sum(1)?.relu()?;
    let cam = cam.flatten_all()?.to_vec1::<f32>()?;
    Ok(Explanation {
        class: c,
        probability,
        map: normalise(upsample(&cam, w, h, 28, 28)),
    })
}

/// Bilinear resize of a row-major `w x h` map to `ow x oh`, aligning pixel centres.
pub fn upsample(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let mut out = vec![0f32; ow * oh];
    if w == 0 || h == 0 {
        return out;
    }
    let at = |x: usize, y: usize| src[y.min(h - 1) * w + x.min(w - 1)];
    for oy in 0..oh {
        let fy = ((oy as f32 + 0.5) * h as f32 / oh as f32 - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
        for ox in 0..ow {
            let fx = ((ox as f32 + 0.5) * w as f32 / ow as f32 - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
            let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
            let bottom = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
            out[oy * ow + ox] = top * (1.0 - ty) + bottom * ty;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_a_constant_is_constant_and_corners_are_kept() {
        let up = upsample(&[2.0; 4], 2, 2, 5, 5);
        assert!(up.iter().all(|&v| (v - 2.0).abs() < 1e-6));
        let up = upsample(&[0.0, 1.0, 0.0, 1.0], 2, 2, 4, 4);
        assert_eq!(up[0], 0.0);
        assert_eq!(up[3], 1.0);
        assert!(up[1] > 0.0 && up[1] < up[2]);
    }
}
