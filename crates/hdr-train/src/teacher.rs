//! Trained models turned into the one teacher a distillation run consumes.

use candle_core::{Device, Tensor};
use hdr_data::{Dataset, Normalize};
use hdr_models::LoadedModel;

use crate::error::Result;
use crate::trainer::{ensemble_logits, teacher_logits, Teacher};

/// A teacher built from trained models: it owns what [`Teacher`] borrows.
///
/// ```no_run
/// # fn main() -> hdr_train::Result<()> {
/// use candle_core::Device;
/// use hdr_data::Normalize;
/// use hdr_train::{StudyData, TeacherSource};
///
/// let data = StudyData::load(None, None)?;
/// let resnet = hdr_models::pretrained("resnet", &Device::Cpu)?;
/// let densenet = hdr_models::pretrained("densenet", &Device::Cpu)?;
/// // The mean of both models' logits on the training images, computed once.
/// let source =
///     TeacherSource::cached(&[resnet, densenet], &data.train, Normalize::UnitRange, &Device::Cpu)?;
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
    /// `model` run on every training batch: soft targets that match the augmented images the
    /// student sees, at the cost of a teacher forward pass per batch.
    pub fn live(model: LoadedModel) -> Self {
        Self::Live(model)
    }

    /// The mean of `models`' logits on `train` (un-augmented, inputs normalised as `normalize`
    /// says, as the student's will be), computed once: one model's, or an ensemble's.
    ///
    /// Errors with [`TrainError::InvalidConfig`] when `models` is empty.
    pub fn cached(
        models: &[LoadedModel],
        train: &Dataset,
        normalize: Normalize,
        device: &Device,
    ) -> Result<Self> {
        let members = models
            .iter()
            .map(|m| teacher_logits(m.model.as_ref(), train, normalize, None, device))
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
    use crate::error::TrainError;
    use candle_core::DType;

    fn mlp(seed: u64) -> Result<LoadedModel> {
        let config = hdr_models::config("mlp1")?;
        let vars = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let model = config.build(vb)?;
        hdr_models::init::init(&vars, seed)?;
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

    fn logits(m: &LoadedModel, train: &Dataset) -> Result<Tensor> {
        teacher_logits(
            m.model.as_ref(),
            train,
            Normalize::UnitRange,
            None,
            &Device::Cpu,
        )
    }

    #[test]
    fn cached_logits_are_the_mean_of_the_models() -> Result<()> {
        let train = images(6)?;
        let models = [mlp(1)?, mlp(2)?];
        let (la, lb) = (logits(&models[0], &train)?, logits(&models[1], &train)?);
        let gap = (&la - &lb)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(gap > 1e-3, "two seeds should give two teachers: {gap}");
        let source = TeacherSource::cached(&models, &train, Normalize::UnitRange, &Device::Cpu)?;
        let Teacher::Logits(mean) = source.teacher() else {
            panic!("expected cached logits");
        };
        assert_eq!(mean.dims(), &[6, 10]);
        let expected = ((la + lb)? / 2.0)?;
        let diff = (mean - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        let none = TeacherSource::cached(&[], &train, Normalize::UnitRange, &Device::Cpu);
        assert!(
            matches!(none, Err(TrainError::InvalidConfig { .. })),
            "{none:?}"
        );
        Ok(())
    }

    #[test]
    fn a_live_teacher_runs_its_model() -> Result<()> {
        let live = TeacherSource::live(mlp(3)?);
        assert!(matches!(live.teacher(), Teacher::Model(_)));
        Ok(())
    }
}
