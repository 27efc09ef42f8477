//! Trained models turned into the one teacher a distillation run consumes.

use candle_core::{Device, Tensor};
use hdr_data::{Dataset, Normalize};
use hdr_models::LoadedModel;

use crate::error::{Result, TrainError};
use crate::trainer::{ensemble_logits, teacher_logits, Teacher};

/// A teacher built from trained models: it owns what [`Teacher`] borrows.
///
/// ```no_run
/// # fn main() -> hdr_train::Result<()> {
/// use candle_core::Device;
/// use hdr_train::{StudyData, TeacherSource};
///
/// let data = StudyData::load(None, None)?;
/// let resnet = hdr_models::pretrained("resnet", &Device::Cpu)?;
/// let densenet = hdr_models::pretrained("densenet", &Device::Cpu)?;
/// // The mean of both models' logits on the training images, computed once.
/// let source = TeacherSource::new(vec![resnet, densenet], false, &data.train, &Device::Cpu)?;
/// let teacher = source.teacher(); // for `fit` or `train_and_evaluate`
/// # let _ = teacher;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub enum TeacherSource {
    /// One model, run in evaluation mode on every augmented batch.
    Live(LoadedModel),
    /// The mean of the models' evaluation-mode logits on the un-augmented training set.
    Logits(Tensor),
}

impl TeacherSource {
    /// `models` as one teacher: with `live`, the single model run on every training batch
    /// (consistent soft targets, a teacher forward pass per batch); else the mean of their
    /// logits on `train`, computed once (an ensemble when there are several).
    ///
    /// Errors with [`TrainError::InvalidConfig`] when there is no model, or when `live` is
    /// asked of more than one.
    pub fn new(
        mut models: Vec<LoadedModel>,
        live: bool,
        train: &Dataset,
        device: &Device,
    ) -> Result<Self> {
        if models.is_empty() || (live && models.len() > 1) {
            return Err(TrainError::InvalidConfig {
                name: "teachers",
                value: models.len().to_string(),
                reason: if live {
                    "a live teacher is exactly one model"
                } else {
                    "distillation needs at least one teacher"
                },
            });
        }
        if live {
            return Ok(Self::Live(models.remove(0)));
        }
        let members = models
            .iter()
            .map(|m| teacher_logits(m.model.as_ref(), train, Normalize::UnitRange, None, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Logits(ensemble_logits(&members)?))
    }

    /// The teacher to train against.
    pub fn teacher(&self) -> Teacher<'_> {
        match self {
            Self::Live(m) => Teacher::Model(m.model.as_ref()),
            Self::Logits(t) => Teacher::Logits(t.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn tiny_mlp() -> Result<LoadedModel> {
        let config = hdr_models::config("mlp1")?;
        let vars = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let model = config.build(vb)?;
        Ok(LoadedModel {
            name: "mlp1".into(),
            config,
            model,
            vars,
        })
    }

    fn images(n: usize) -> Result<Dataset> {
        let pixels = (0..n * 784).map(|i| (i % 251) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Ok(Dataset::new(pixels, labels, 28, 28)?)
    }

    #[test]
    fn cached_logits_are_the_mean_of_the_models() -> Result<()> {
        let train = images(6)?;
        let (a, b) = (tiny_mlp()?, tiny_mlp()?);
        let la = teacher_logits(
            a.model.as_ref(),
            &train,
            Normalize::UnitRange,
            None,
            &Device::Cpu,
        )?;
        let lb = teacher_logits(
            b.model.as_ref(),
            &train,
            Normalize::UnitRange,
            None,
            &Device::Cpu,
        )?;
        let source = TeacherSource::new(vec![a, b], false, &train, &Device::Cpu)?;
        let Teacher::Logits(mean) = source.teacher() else {
            panic!("expected cached logits");
        };
        assert_eq!(mean.dims(), &[6, 10]);
        let expected = ((la + lb)? / 2.0)?;
        let diff = (mean - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn a_live_teacher_is_one_model() -> Result<()> {
        let train = images(2)?;
        let live = TeacherSource::new(vec![tiny_mlp()?], true, &train, &Device::Cpu)?;
        assert!(matches!(live.teacher(), Teacher::Model(_)));
        let two = TeacherSource::new(vec![tiny_mlp()?, tiny_mlp()?], true, &train, &Device::Cpu);
        assert!(
            matches!(two, Err(TrainError::InvalidConfig { .. })),
            "{two:?}"
        );
        let none = TeacherSource::new(Vec::new(), false, &train, &Device::Cpu);
        assert!(
            matches!(none, Err(TrainError::InvalidConfig { .. })),
            "{none:?}"
        );
        Ok(())
    }
}
