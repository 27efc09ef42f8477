use std::sync::Arc;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::augment::Augment;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::rng::Rng;

/// Mean of the MNIST training pixels after scaling to `[0, 1]`.
pub const MNIST_MEAN: f32 = 0.1307;
/// Standard deviation of the MNIST training pixels after scaling to `[0, 1]`.
pub const MNIST_STD: f32 = 0.3081;

/// How bytes become model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Normalize {
    /// `x / 255`, in `[0, 1]` (the paper's normalisation).
    #[default]
    UnitRange,
    /// `(x / 255 - mean) / std`.
    Standardize {
        /// Mean subtracted.
        mean: f32,
        /// Standard deviation divided by.
        std: f32,
    },
}

impl Normalize {
    /// Standardisation with the MNIST training mean and standard deviation.
    pub const MNIST: Self = Self::Standardize {
        mean: MNIST_MEAN,
        std: MNIST_STD,
    };

    /// Maps an intensity in `[0, 1]` to the model's input scale.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::UnitRange => x,
            Self::Standardize { mean, std } => (x - mean) / std,
        }
    }
}

/// How an epoch is cut into batches.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Reshuffle the order every epoch (seeded by `seed` and the epoch number).
    pub shuffle: bool,
    /// Drop a last, smaller batch.
    pub drop_last: bool,
    /// Seed of the shuffling and augmentation.
    pub seed: u64,
    /// Input normalisation.
    pub normalize: Normalize,
    /// Random transform applied to every sample on the fly, if any.
    pub augment: Option<Arc<dyn Augment>>,
}

impl Default for BatchConfig {
    /// Batches of 64, shuffled, `[0, 1]` inputs, no augmentation.
    fn default() -> Self {
        Self {
            batch_size: 64,
            shuffle: true,
            drop_last: false,
            seed: 0,
            normalize: Normalize::UnitRange,
            augment: None,
        }
    }
}

impl BatchConfig {
    /// Evaluation batches: fixed order, no augmentation.
    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: false,
            ..Self::default()
        }
    }
}

/// One batch: inputs, labels and the dataset indices they came from.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[b, 1, rows, cols]` f32.
    pub images: Tensor,
    /// `[b]` u32.
    pub labels: Tensor,
    /// Position of each sample in the dataset.
    pub indices: Vec<usize>,
}

/// Tag separating the shuffle stream from the augmentation streams of the same seed.
const SHUFFLE_STREAM: u64 = 0x0054_FF1E;

/// The order in which an epoch visits the samples.
pub fn epoch_order(len: usize, cfg: &BatchConfig, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if cfg.shuffle {
        Rng::stream(cfg.seed, &[SHUFFLE_STREAM, epoch]).shuffle(&mut order);
    }
    order
}

/// Writes samples `indices` of `data`, normalised and (if configured) augmented, into `out`
/// (`indices.len() * rows * cols` floats), in parallel.
///
/// Sample `i` of epoch `e` always gets the same augmentation for the same seed, whatever the
/// thread count or batch it falls in.
pub fn fill_inputs(
    data: &Dataset,
    indices: &[usize],
    cfg: &BatchConfig,
    epoch: u64,
    out: &mut [f32],
) -> Result<()> {
    let p = data.pixels_per_image();
    if out.len() != indices.len() * p {
        return Err(DataError::InvalidParameter {
            name: "out.len()",
            value: out.len().to_string(),
            reason: "must equal indices.len() * pixels per image",
        });
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= data.len()) {
        return Err(DataError::InvalidParameter {
            name: "index",
            value: bad.to_string(),
            reason: "out of range for this dataset",
        });
    }
    let (w, h) = (data.cols(), data.rows());
    let norm = cfg.normalize;
    out.par_chunks_mut(p).zip(indices.par_iter()).for_each_init(
        || vec![0f32; p],
        |scratch, (dst, &i)| {
            let src = data.image(i);
            match &cfg.augment {
                None => {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = norm.apply(s as f32 / 255.0);
                    }
                }
                Some(aug) => {
                    for (d, &s) in scratch.iter_mut().zip(src) {
                        *d = s as f32 / 255.0;
                    }
                    let mut rng = Rng::stream(cfg.seed, &[epoch, i as u64]);
                    aug.apply(scratch, dst, w, h, &mut rng);
                    if norm != Normalize::UnitRange {
                        dst.iter_mut().for_each(|x| *x = norm.apply(*x));
                    }
                }
            }
        },
    );
    Ok(())
}

/// Iterator over the batches of one epoch; see [`Dataset::batches`].
#[derive(Debug)]
pub struct Batches<'a> {
    data: &'a Dataset,
    cfg: &'a BatchConfig,
    epoch: u64,
    device: Device,
    order: Vec<usize>,
    pos: usize,
}

impl Dataset {
    /// The batches of epoch `epoch` as candle tensors on `device`.
    ///
    /// # Shapes
    /// images `[b, 1, rows, cols]` f32, labels `[b]` u32.
    pub fn batches<'a>(
        &'a self,
        cfg: &'a BatchConfig,
        epoch: u64,
        device: &Device,
    ) -> Result<Batches<'a>> {
        if cfg.batch_size == 0 {
            return Err(DataError::InvalidParameter {
                name: "batch_size",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        if let Some(a) = &cfg.augment {
            a.validate()?;
        }
        Ok(Batches {
            data: self,
            cfg,
            epoch,
            device: device.clone(),
            order: epoch_order(self.len(), cfg, epoch),
            pos: 0,
        })
    }
}

impl Batches<'_> {
    /// Number of batches this epoch yields in total.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.order.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let remaining = self.order.len() - self.pos;
        let b = remaining.min(self.cfg.batch_size);
        if b == 0 || (self.cfg.drop_last && b < self.cfg.batch_size) {
            return None;
        }
        let indices = self.order[self.pos..self.pos + b].to_vec();
        self.pos += b;
        Some(make_batch(
            self.data,
            indices,
            self.cfg,
            self.epoch,
            &self.device,
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let done = self.pos / self.cfg.batch_size.max(1);
        let left = self.num_batches().saturating_sub(done);
        (left, Some(left))
    }
}

fn make_batch(
    data: &Dataset,
    indices: Vec<usize>,
    cfg: &BatchConfig,
    epoch: u64,
    device: &Device,
) -> Result<Batch> {
    let (h, w) = (data.rows(), data.cols());
    let mut x = vec![0f32; indices.len() * h * w];
    fill_inputs(data, &indices, cfg, epoch, &mut x)?;
    let labels: Vec<u32> = indices.iter().map(|&i| data.label(i) as u32).collect();
    let b = indices.len();
    Ok(Batch {
        images: Tensor::from_vec(x, (b, 1, h, w), device)?,
        labels: Tensor::from_vec(labels, b, device)?,
        indices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = (0..n * 9).map(|i| (i * 37 % 256) as u8).collect();
        Dataset::new(images, labels, 3, 3).unwrap()
    }

    #[test]
    fn batches_cover_the_epoch_once() -> anyhow::Result<()> {
        let d = toy(103);
        let cfg = BatchConfig {
            batch_size: 10,
            ..Default::default()
        };
        let batches: Vec<Batch> = d.batches(&cfg, 3, &Device::Cpu)?.collect::<Result<_>>()?;
        assert_eq!(batches.len(), 11);
        assert_eq!(batches[10].images.dims(), &[3, 1, 3, 3]);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_ne!(seen, (0..103).collect::<Vec<_>>(), "shuffled");
        seen.sort_unstable();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
        let dropped = BatchConfig {
            drop_last: true,
            ..cfg
        };
        assert_eq!(d.batches(&dropped, 0, &Device::Cpu)?.count(), 10);
        Ok(())
    }

    #[test]
    fn values_and_labels_match_the_samples() -> anyhow::Result<()> {
        let d = toy(20);
        for normalize in [Normalize::UnitRange, Normalize::MNIST] {
            let cfg = BatchConfig {
                batch_size: 7,
                normalize,
                ..Default::default()
            };
            for batch in d.batches(&cfg, 1, &Device::Cpu)? {
                let batch = batch?;
                let x = batch.images.flatten_all()?.to_vec1::<f32>()?;
                let y = batch.labels.to_vec1::<u32>()?;
                for (k, &i) in batch.indices.iter().enumerate() {
                    assert_eq!(y[k], d.label(i) as u32);
                    for (j, &byte) in d.image(i).iter().enumerate() {
                        let want = normalize.apply(byte as f32 / 255.0);
                        assert!((x[k * 9 + j] - want).abs() < 1e-6);
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch_only() {
        let cfg = BatchConfig::default();
        assert_eq!(epoch_order(50, &cfg, 1), epoch_order(50, &cfg, 1));
        assert_ne!(epoch_order(50, &cfg, 1), epoch_order(50, &cfg, 2));
        assert_eq!(
            epoch_order(50, &BatchConfig::eval(8), 4),
            (0..50).collect::<Vec<_>>()
        );
    }

    #[test]
    fn zero_batch_size_is_an_error() {
        let cfg = BatchConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert!(toy(5).batches(&cfg, 0, &Device::Cpu).is_err());
    }

    #[test]
    fn bad_augmentation_settings_are_an_error_not_clamped() {
        use crate::{Compose, ElasticDistortion, RandomAffine};
        let bad_affine = RandomAffine {
            min_scale: -1.0,
            ..Default::default()
        };
        let bad_elastic = ElasticDistortion {
            alpha: f32::NAN,
            ..Default::default()
        };
        let nested = Compose::default()
            .then(RandomAffine::default())
            .then(bad_elastic);
        let cases: [Arc<dyn Augment>; 3] = [
            Arc::new(bad_affine),
            Arc::new(bad_elastic),
            Arc::new(nested),
        ];
        for augment in cases {
            let cfg = BatchConfig {
                augment: Some(augment.clone()),
                ..Default::default()
            };
            let err = toy(5).batches(&cfg, 0, &Device::Cpu).err();
            assert!(
                matches!(err, Some(DataError::InvalidParameter { .. })),
                "{augment:?}: {err:?}"
            );
        }
        let good = BatchConfig {
            augment: Some(Arc::new(Compose::affine_elastic())),
            ..Default::default()
        };
        assert!(toy(5).batches(&good, 0, &Device::Cpu).is_ok());
    }
}
