use crate::error::{DataError, Result};
use crate::rng::Rng;

/// Number of classes in MNIST.
pub const NUM_CLASSES: usize = 10;
/// Side of an MNIST image in pixels.
pub const IMAGE_SIDE: usize = 28;
/// Pixels in an MNIST image.
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// Labelled grey images kept as bytes (`u8`, 0 = background), row-major, one after the other.
///
/// Keeping bytes rather than `f32` makes the 70k MNIST images 55 MB instead of 220 MB; conversion
/// to tensors happens per batch.
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("class_counts", &self.class_counts())
            .finish()
    }
}

impl Dataset {
    /// Builds a dataset from `labels.len()` images of `rows x cols` bytes each.
    ///
    /// Fails if the sizes disagree or a label is not a digit.
    pub fn new(images: Vec<u8>, labels: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(DataError::InvalidParameter {
                name: "rows x cols",
                value: format!("{rows}x{cols}"),
                reason: "images must have at least one pixel",
            });
        }
        if images.len() != labels.len() * rows * cols {
            return Err(DataError::InvalidParameter {
                name: "images.len()",
                value: images.len().to_string(),
                reason: "must equal labels.len() * rows * cols",
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= NUM_CLASSES)
        {
            return Err(DataError::LabelOutOfRange {
                path: "<memory>".into(),
                index,
                label,
            });
        }
        Ok(Self {
            images,
            labels,
            rows,
            cols,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image height.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Image width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pixels per image.
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// Image `i` as `rows * cols` bytes. Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let p = self.pixels_per_image();
        &self.images[i * p..(i + 1) * p]
    }

    /// Label of sample `i`. Panics if `i >= len()`, like slice indexing.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// All images, contiguous.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// How many samples of each digit.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The samples at `indices`, in that order. Fails on an index out of range.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let p = self.pixels_per_image();
        let mut images = Vec::with_capacity(indices.len() * p);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(DataError::InvalidParameter {
                    name: "index",
                    value: i.to_string(),
                    reason: "out of range for this dataset",
                });
            }
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Ok(Self {
            images,
            labels,
            rows: self.rows,
            cols: self.cols,
        })
    }

    /// The first `n` samples (all of them if `n >= len()`).
    pub fn head(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            images: self.images[..n * self.pixels_per_image()].to_vec(),
            labels: self.labels[..n].to_vec(),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Splits off a validation set, returning `(train, validation)`.
    ///
    /// Both keep the original order of their samples. With `stratified`, each digit contributes to
    /// the validation set in proportion to its frequency (largest-remainder rounding, so the sizes
    /// are exact).
    pub fn split(&self, cfg: &SplitConfig) -> Result<(Self, Self)> {
        let (train_idx, val_idx) = split_indices(&self.labels, cfg)?;
        Ok((self.subset(&train_idx)?, self.subset(&val_idx)?))
    }
}

/// How to hold out a validation set: see [`Dataset::split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitConfig {
    /// Number of validation samples.
    pub validation: usize,
    /// Seed of the selection.
    pub seed: u64,
    /// Keep the class proportions in both parts.
    pub stratified: bool,
}

impl Default for SplitConfig {
    /// 55k/5k stratified, the usual MNIST hold-out.
    fn default() -> Self {
        Self {
            validation: 5_000,
            seed: 0,
            stratified: true,
        }
    }
}

/// Sorted `(train, validation)` indices of a split of samples with these labels.
pub fn split_indices(labels: &[u8], cfg: &SplitConfig) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = labels.len();
    if cfg.validation == 0 || cfg.validation >= n {
        return Err(DataError::InvalidParameter {
            name: "validation",
            value: cfg.validation.to_string(),
            reason: "must be at least 1 and less than the number of samples",
        });
    }
    let mut rng = Rng::stream(cfg.seed, &[0x5_9117]);
    let mut val = Vec::with_capacity(cfg.validation);
    if cfg.stratified {
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); NUM_CLASSES];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        // Largest-remainder apportionment of the validation size over the classes.
        let quotas: Vec<(usize, usize)> = by_class
            .iter()
            .map(|c| {
                let exact = c.len() * cfg.validation;
                (exact / n, exact % n)
            })
            .collect();
        let mut take: Vec<usize> = quotas.iter().map(|q| q.0).collect();
        let mut short = cfg.validation - take.iter().sum::<usize>();
        let mut order: Vec<usize> = (0..NUM_CLASSES).collect();
        order.sort_by(|&a, &b| quotas[b].1.cmp(&quotas[a].1).then(a.cmp(&b)));
        for &c in order.iter().cycle() {
            if short == 0 {
                break;
            }
            if take[c] < by_class[c].len() {
                take[c] += 1;
                short -= 1;
            }
        }
        for (c, members) in by_class.iter_mut().enumerate() {
            rng.shuffle(members);
            val.extend_from_slice(&members[..take[c]]);
        }
    } else {
        let mut all: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut all);
        val.extend_from_slice(&all[..cfg.validation]);
    }
    val.sort_unstable();
    let mut is_val = vec![false; n];
    for &i in &val {
        is_val[i] = true;
    }
    let train = (0..n).filter(|&i| !is_val[i]).collect();
    Ok((train, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = (0..n * 4).map(|i| (i % 251) as u8).collect();
        Dataset::new(images, labels, 2, 2).unwrap()
    }

    #[test]
    fn new_rejects_bad_sizes_and_labels() {
        assert!(Dataset::new(vec![0; 7], vec![0, 1], 2, 2).is_err());
        assert!(matches!(
            Dataset::new(vec![0; 8], vec![0, 10], 2, 2),
            Err(DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            })
        ));
    }

    #[test]
    fn stratified_split_keeps_proportions_and_is_exact() {
        let d = toy(1000);
        let cfg = SplitConfig {
            validation: 95,
            seed: 1,
            stratified: true,
        };
        let (tr, va) = d.split(&cfg).unwrap();
        assert_eq!(tr.len() + va.len(), 1000);
        assert_eq!(va.len(), 95);
        for c in va.class_counts() {
            assert!((9..=10).contains(&c), "{:?}", va.class_counts());
        }
        assert_eq!(d.split(&cfg).unwrap().1, va, "same seed, same split");
        let other = d.split(&SplitConfig { seed: 2, ..cfg }).unwrap().1;
        assert_ne!(other, va);
    }

    #[test]
    fn split_parts_are_disjoint_and_cover() {
        let labels: Vec<u8> = (0..500).map(|i| ((i * 7) % 10) as u8).collect();
        for stratified in [true, false] {
            let (tr, va) = split_indices(
                &labels,
                &SplitConfig {
                    validation: 123,
                    seed: 5,
                    stratified,
                },
            )
            .unwrap();
            let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..500).collect::<Vec<_>>());
            assert_eq!(va.len(), 123);
        }
    }

    #[test]
    fn split_rejects_bad_sizes() {
        let d = toy(10);
        for v in [0, 10, 11] {
            let cfg = SplitConfig {
                validation: v,
                ..Default::default()
            };
            assert!(d.split(&cfg).is_err());
        }
    }
}
