use serde::{Deserialize, Serialize};

use crate::confusion::ConfusionMatrix;
use crate::error::{MetricsError, Result};
use crate::label::{check_labels, check_predictions, class_index, ClassLabel};
use crate::metrics::{Metrics, MetricsConfig};
use crate::report::ClassificationReport;
use crate::topk::{argmax_rows, check_ks, check_scores, count_top_k_hits, TopKAccuracy};

/// Options of an [`Evaluator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvaluatorConfig {
    /// Number of classes (10 for MNIST).
    pub num_classes: usize,
    /// The `k` of each top-k accuracy to track (needs scores). Empty: none.
    pub top_k: Vec<usize>,
    /// Whether to record every misclassified sample (index, label, prediction). A 99% model on
    /// the 10k MNIST test set records about 100, so this is on by default.
    pub keep_misclassified: bool,
    /// Index given to the first sample. Parallel shards set it to their offset so that merged
    /// misclassified indices refer to the whole dataset.
    pub first_index: usize,
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self {
            num_classes: 10,
            top_k: Vec::new(),
            keep_misclassified: true,
            first_index: 0,
        }
    }
}

/// A misclassified sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Misclassified {
    /// Position of the sample in evaluation order, offset by
    /// [`EvaluatorConfig::first_index`]. For an unshuffled test set this is its dataset index.
    pub index: usize,
    /// True class.
    pub label: usize,
    /// Predicted class.
    pub predicted: usize,
}

/// Accumulates an evaluation batch by batch: the confusion matrix, top-k hits and the
/// misclassified samples.
///
/// Batches are checked before anything is recorded, so a rejected batch leaves the evaluator
/// unchanged. Evaluators over disjoint shards [`merge`](Self::merge) into the evaluator of the
/// whole set.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluator {
    matrix: ConfusionMatrix,
    top_k: Vec<usize>,
    top_k_hits: Vec<u64>,
    scored: u64,
    next_index: usize,
    keep_misclassified: bool,
    misclassified: Vec<Misclassified>,
}

impl Evaluator {
    /// An empty evaluator. Errors if `num_classes` is 0 or some `k` is 0.
    pub fn new(config: &EvaluatorConfig) -> Result<Self> {
        check_ks(&config.top_k)?;
        Ok(Self {
            matrix: ConfusionMatrix::new(config.num_classes)?,
            top_k: config.top_k.clone(),
            top_k_hits: vec![0; config.top_k.len()],
            scored: 0,
            next_index: config.first_index,
            keep_misclassified: config.keep_misclassified,
            misclassified: Vec::new(),
        })
    }

    /// Adds a batch of model outputs: `scores` row-major `[labels.len(), num_classes]` (logits
    /// or probabilities). The prediction is the arg-max (lowest class on ties, as candle's
    /// `argmax`); top-k uses sklearn's tie rule (see [`crate::top_k_accuracy`]).
    pub fn add_batch<L: ClassLabel>(&mut self, labels: &[L], scores: &[f32]) -> Result<()> {
        let k = self.matrix.num_classes();
        check_scores(scores, labels, k)?;
        let predictions = argmax_rows(scores, k)?;
        let labels: Vec<usize> = labels.iter().filter_map(|&l| class_index(l, k)).collect();
        self.record(&predictions, &labels)?;
        let hits = count_top_k_hits(scores, &labels, k, &self.top_k);
        for (total, h) in self.top_k_hits.iter_mut().zip(hits) {
            *total += h;
        }
        self.scored += labels.len() as u64;
        Ok(())
    }

    /// Adds a batch of predicted classes (no scores, so no top-k for these samples).
    pub fn add_predictions<L: ClassLabel>(
        &mut self,
        predictions: &[L],
        labels: &[L],
    ) -> Result<()> {
        if predictions.len() != labels.len() {
            return Err(MetricsError::LengthMismatch {
                predictions: predictions.len(),
                labels: labels.len(),
            });
        }
        let k = self.matrix.num_classes();
        check_labels(labels, k)?;
        check_predictions(predictions, k)?;
        let to_idx =
            |v: &[L]| -> Vec<usize> { v.iter().filter_map(|&x| class_index(x, k)).collect() };
        self.record(&to_idx(predictions), &to_idx(labels))
    }

    /// Records validated class indices of equal length.
    fn record(&mut self, predictions: &[usize], labels: &[usize]) -> Result<()> {
        let end = self.next_index.checked_add(labels.len()).ok_or_else(|| {
            MetricsError::invalid("sample index", "> usize::MAX", "too many samples")
        })?;
        self.matrix.add_batch(predictions, labels)?;
        if self.keep_misclassified {
            let start = self.next_index;
            self.misclassified.extend(
                predictions
                    .iter()
                    .zip(labels)
                    .enumerate()
                    .filter(|(_, (p, l))| p != l)
                    .map(|(i, (&predicted, &label))| Misclassified {
                        index: start + i,
                        label,
                        predicted,
                    }),
            );
        }
        self.next_index = end;
        Ok(())
    }

    /// Adds everything `other` recorded. Both must track the same classes and the same `k`s.
    /// Misclassified samples stay sorted by index when the shards were added in order or given
    /// increasing [`EvaluatorConfig::first_index`].
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        if self.top_k != other.top_k {
            return Err(MetricsError::invalid(
                "top_k",
                format!("{:?} vs {:?}", self.top_k, other.top_k),
                "merged evaluators must track the same k values",
            ));
        }
        self.matrix.merge(&other.matrix)?;
        for (a, b) in self.top_k_hits.iter_mut().zip(&other.top_k_hits) {
            *a += b;
        }
        self.scored += other.scored;
        self.next_index = self.next_index.max(other.next_index);
        self.misclassified.extend_from_slice(&other.misclassified);
        self.misclassified.sort_by_key(|m| m.index);
        Ok(())
    }

    /// The confusion matrix so far.
    pub fn matrix(&self) -> &ConfusionMatrix {
        &self.matrix
    }

    /// Whether misclassified samples are recorded ([`EvaluatorConfig::keep_misclassified`]).
    pub fn keeps_misclassified(&self) -> bool {
        self.keep_misclassified
    }

    /// Number of samples added.
    pub fn num_samples(&self) -> u64 {
        self.matrix.total()
    }

    /// Fraction classified correctly. Error if nothing was added.
    pub fn accuracy(&self) -> Result<f64> {
        self.matrix.accuracy()
    }

    /// The configured top-k accuracies. Error if nothing was added or if some samples came
    /// without scores ([`MetricsError::MissingScores`]).
    pub fn top_k_accuracy(&self) -> Result<Vec<TopKAccuracy>> {
        let total = self.matrix.total();
        if total == 0 {
            return Err(MetricsError::Empty {
                what: "no samples evaluated",
            });
        }
        if self.top_k.is_empty() {
            return Ok(Vec::new());
        }
        if self.scored != total {
            return Err(MetricsError::MissingScores {
                scored: self.scored,
                total,
            });
        }
        Ok(self
            .top_k
            .iter()
            .zip(&self.top_k_hits)
            .map(|(&k, &h)| TopKAccuracy {
                k,
                accuracy: h as f64 / total as f64,
            })
            .collect())
    }

    /// Every misclassified sample, by index (empty if not kept).
    pub fn misclassified(&self) -> &[Misclassified] {
        &self.misclassified
    }

    /// Indices of the misclassified samples.
    pub fn misclassified_indices(&self) -> Vec<usize> {
        self.misclassified.iter().map(|m| m.index).collect()
    }

    /// All classification metrics (see [`ConfusionMatrix::metrics`]).
    pub fn metrics(&self, config: &MetricsConfig) -> Result<Metrics> {
        self.matrix.metrics(config)
    }

    /// The full report of model `model` on split `split`, with the top-k accuracies.
    pub fn report(
        &self,
        model: impl Into<String>,
        split: impl Into<String>,
        config: &MetricsConfig,
    ) -> Result<ClassificationReport> {
        let mut report = ClassificationReport::new(model, split, &self.matrix, config)?;
        report.top_k = self.top_k_accuracy()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EvaluatorConfig {
        EvaluatorConfig {
            num_classes: 3,
            top_k: vec![1, 2],
            ..EvaluatorConfig::default()
        }
    }

    #[test]
    fn batches_accumulate_matrix_top_k_and_mistakes() {
        let mut ev = Evaluator::new(&config()).unwrap();
        // Predictions 2, 1 (tie 1/2 -> lowest), 0; truth 2, 2, 1.
        ev.add_batch(
            &[2u32, 2, 1],
            &[0.1, 0.2, 0.7, 0.0, 0.5, 0.5, 0.6, 0.3, 0.1],
        )
        .unwrap();
        ev.add_batch(&[0u32], &[0.9, 0.05, 0.05]).unwrap();
        assert_eq!(ev.num_samples(), 4);
        assert!((ev.accuracy().unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(
            ev.misclassified(),
            &[
                Misclassified {
                    index: 1,
                    label: 2,
                    predicted: 1
                },
                Misclassified {
                    index: 2,
                    label: 1,
                    predicted: 0
                }
            ]
        );
        assert_eq!(ev.misclassified_indices(), vec![1, 2]);
        let top = ev.top_k_accuracy().unwrap();
        // sklearn's tie rule ranks class 2 first in row 1, so top-1 counts it as a hit even
        // though argmax predicted 1: top-1 = 3/4, top-2 = 4/4.
        assert_eq!(top[0].k, 1);
        assert!((top[0].accuracy - 0.75).abs() < 1e-12);
        assert!((top[1].accuracy - 1.0).abs() < 1e-12);
    }

    #[test]
    fn rejected_batches_change_nothing() {
        let mut ev = Evaluator::new(&config()).unwrap();
        ev.add_predictions(&[0u8, 1], &[0u8, 2]).unwrap();
        let before = ev.clone();
        assert!(ev.add_batch(&[0u8], &[0.0, 1.0]).is_err());
        assert!(ev.add_batch(&[3u8], &[0.0, 1.0, 2.0]).is_err());
        assert!(ev.add_batch(&[0u8], &[0.0, f32::NAN, 2.0]).is_err());
        assert!(ev.add_predictions(&[0u8], &[0u8, 1]).is_err());
        assert!(ev.add_predictions(&[4u8], &[0u8]).is_err());
        assert_eq!(ev, before);
        // Samples without scores make top-k undefined rather than silently partial.
        assert!(matches!(
            ev.top_k_accuracy(),
            Err(MetricsError::MissingScores {
                scored: 0,
                total: 2
            })
        ));
        assert!(Evaluator::new(&EvaluatorConfig {
            top_k: vec![0],
            ..config()
        })
        .is_err());
        assert!(matches!(
            Evaluator::new(&config()).unwrap().top_k_accuracy(),
            Err(MetricsError::Empty { .. })
        ));
    }

    #[test]
    fn shards_merge_into_the_whole() {
        let labels = [0u32, 1, 2, 2, 1, 0];
        let preds = [0u32, 2, 2, 1, 1, 1];
        let mut whole = Evaluator::new(&config()).unwrap();
        whole.add_predictions(&preds, &labels).unwrap();

        let mut second = Evaluator::new(&EvaluatorConfig {
            first_index: 3,
            ..config()
        })
        .unwrap();
        second.add_predictions(&preds[3..], &labels[3..]).unwrap();
        let mut first = Evaluator::new(&config()).unwrap();
        first.add_predictions(&preds[..3], &labels[..3]).unwrap();
        // Merge out of order: indices still come out sorted.
        second.merge(&first).unwrap();
        assert_eq!(second.matrix(), whole.matrix());
        assert_eq!(second.misclassified(), whole.misclassified());
        assert_eq!(second.misclassified_indices(), vec![1, 3, 5]);

        let other = Evaluator::new(&EvaluatorConfig {
            top_k: vec![3],
            ..config()
        })
        .unwrap();
        assert!(second.merge(&other).is_err());
    }

    #[test]
    fn misclassified_can_be_turned_off() {
        let mut ev = Evaluator::new(&EvaluatorConfig {
            keep_misclassified: false,
            ..config()
        })
        .unwrap();
        ev.add_predictions(&[1usize], &[0usize]).unwrap();
        assert!(ev.misclassified().is_empty());
        assert_eq!(ev.matrix().get(0, 1), Some(1));
    }
}
