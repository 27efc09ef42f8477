//! Losses: cross-entropy with label smoothing, and Hinton et al.'s distillation loss.

use candle_core::{DType, Tensor, D};
use candle_nn::ops::{log_softmax, softmax_last_dim};

use crate::error::Result;

/// Mean cross-entropy of `logits` `[b, k]` against `labels` `[b]` (u32), with label smoothing
/// `eps`: the target puts `1 - eps` on the label and `eps / k` on every class (as PyTorch's
/// `CrossEntropyLoss(label_smoothing=eps)`).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, eps: f32) -> Result<Tensor> {
    let logp = log_softmax(logits, D::Minus1)?;
    let nll = logp
        .gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?
        .mean_all()?;
    if eps <= 0.0 {
        return Ok(nll);
    }
    let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - eps as f64))? + (uniform * eps as f64)?)?)
}

/// Knowledge-distillation loss (Hinton, Vinyals & Dean 2015):
/// `alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * CE(student, labels)`, where
/// `p_·,T = softmax(logits / T)`. The `T^2` factor keeps the soft term's gradients on the scale
/// of the hard term's as `T` changes. The KL term is PyTorch's
/// `KLDivLoss(log_softmax(s / T), softmax(t / T), reduction="batchmean")`.
pub fn distillation_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f32,
    alpha: f32,
    label_smoothing: f32,
) -> Result<Tensor> {
    let t = temperature as f64;
    let log_ps = log_softmax(&(student / t)?, D::Minus1)?;
    let teacher = teacher.detach();
    let pt = softmax_last_dim(&(&teacher / t)?)?;
    let log_pt = log_softmax(&(&teacher / t)?, D::Minus1)?;
    let b = student.dim(0)? as f64;
    let kl = ((&pt * (log_pt - log_ps)?)?.sum_all()? / b)?;
    let ce = cross_entropy(student, labels, label_smoothing)?;
    Ok(((kl * (alpha as f64 * t * t))? + (ce * (1.0 - alpha as f64))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn cross_entropy_matches_hand_computation() -> Result<()> {
        // logits [[1, 2, 3]], label 2: -log(e^3 / (e + e^2 + e^3)) = 0.40760596
        let l = t(&[1.0, 2.0, 3.0], (1, 3));
        let y = Tensor::new(&[2u32], &Device::Cpu)?;
        let ce = cross_entropy(&l, &y, 0.0)?.to_scalar::<f32>()?;
        assert!((ce - 0.407_605_96).abs() < 1e-6, "{ce}");
        // With smoothing 0.1: 0.9 * 0.40760596 + 0.1 * mean(-logp) = 0.9*0.40761 + 0.1*1.40761
        let sm = cross_entropy(&l, &y, 0.1)?.to_scalar::<f32>()?;
        assert!(
            (sm - (0.9 * 0.407_606 + 0.1 * 1.407_606)).abs() < 1e-5,
            "{sm}"
        );
        Ok(())
    }

    #[test]
    fn distillation_is_cross_entropy_at_alpha_zero_and_zero_kl_for_equal_logits() -> Result<()> {
        let s = t(&[0.5, -1.0, 2.0, 0.0, 0.3, 0.1], (2, 3));
        let y = Tensor::new(&[2u32, 0], &Device::Cpu)?;
        let ce = cross_entropy(&s, &y, 0.0)?.to_scalar::<f32>()?;
        let d0 = distillation_loss(&s, &s, &y, 4.0, 0.0, 0.0)?.to_scalar::<f32>()?;
        assert!((ce - d0).abs() < 1e-6);
        let d1 = distillation_loss(&s, &s, &y, 4.0, 1.0, 0.0)?.to_scalar::<f32>()?;
        assert!(d1.abs() < 1e-6, "{d1}");
        let other = t(&[2.0, 0.0, -1.0, 1.0, 1.0, 1.0], (2, 3));
        assert!(distillation_loss(&s, &other, &y, 4.0, 1.0, 0.0)?.to_scalar::<f32>()? > 0.01);
        Ok(())
    }
}
