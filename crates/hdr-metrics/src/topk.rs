use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use crate::label::{check_labels, class_index, ClassLabel};

/// Top-k accuracy for one `k`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopKAccuracy {
    /// Number of best-scored classes that may contain the true one.
    pub k: usize,
    /// Fraction of samples whose true class is among them.
    pub accuracy: f64,
}

/// Checks a row-major `[labels.len(), num_classes]` score matrix: shape, labels, no NaN.
pub(crate) fn check_scores<L: ClassLabel>(
    scores: &[f32],
    labels: &[L],
    num_classes: usize,
) -> Result<()> {
    if num_classes == 0 {
        return Err(MetricsError::invalid(
            "num_classes",
            0,
            "there must be at least one class",
        ));
    }
    let expected = labels.len().checked_mul(num_classes);
    if expected != Some(scores.len()) {
        return Err(MetricsError::ScoresShape {
            scores: scores.len(),
            labels: labels.len(),
            num_classes,
        });
    }
    check_labels(labels, num_classes)?;
    if let Some(pos) = scores.iter().position(|s| s.is_nan()) {
        return Err(MetricsError::NanScore {
            index: pos / num_classes,
            class: pos % num_classes,
        });
    }
    Ok(())
}

/// Rank of class `truth` in `row` (0 = best), breaking ties as sklearn's
/// `top_k_accuracy_score` does: it sorts with a stable ascending sort and reverses, so among
/// equal scores the *higher* class index ranks first.
fn rank_of(row: &[f32], truth: usize) -> usize {
    let s = row[truth];
    row.iter()
        .enumerate()
        .filter(|&(j, &v)| v > s || (v == s && j > truth))
        .count()
}

/// For each `k` in `ks`: how many samples have their true class among the `k` best scores.
/// Inputs must have passed [`check_scores`].
pub(crate) fn count_top_k_hits<L: ClassLabel>(
    scores: &[f32],
    labels: &[L],
    num_classes: usize,
    ks: &[usize],
) -> Vec<u64> {
    let mut hits = vec![0u64; ks.len()];
    for (row, &label) in scores.chunks(num_classes).zip(labels) {
        let Some(truth) = class_index(label, num_classes) else {
            continue;
        };
        let rank = rank_of(row, truth);
        for (h, &k) in hits.iter_mut().zip(ks) {
            if rank < k {
                *h += 1;
            }
        }
    }
    hits
}

/// Checks top-k values: each at least 1.
pub(crate) fn check_ks(ks: &[usize]) -> Result<()> {
    match ks.iter().find(|&&k| k == 0) {
        Some(_) => Err(MetricsError::invalid("k", 0, "top-k needs k >= 1")),
        None => Ok(()),
    }
}

/// Fraction of samples whose true label is among the `k` highest of their scores, like sklearn's
/// `top_k_accuracy_score(labels, scores, k=k, labels=range(num_classes))`.
///
/// `scores` is row-major `[labels.len(), num_classes]` (logits, probabilities: any monotonic
/// score). Ties are broken as sklearn does: among equal scores the higher class index ranks
/// first. `k >= num_classes` gives 1.0.
///
/// Errors: [`MetricsError::ScoresShape`], [`MetricsError::LabelOutOfRange`],
/// [`MetricsError::NanScore`], [`MetricsError::Empty`], and `k == 0` or `num_classes == 0`
/// ([`MetricsError::InvalidParameter`]).
pub fn top_k_accuracy<L: ClassLabel>(
    scores: &[f32],
    labels: &[L],
    num_classes: usize,
    k: usize,
) -> Result<f64> {
    check_ks(&[k])?;
    check_scores(scores, labels, num_classes)?;
    if labels.is_empty() {
        return Err(MetricsError::Empty { what: "no samples" });
    }
    let hits = count_top_k_hits(scores, labels, num_classes, &[k])[0];
    Ok(hits as f64 / labels.len() as f64)
}

/// The predicted class of each row of a row-major `[n, num_classes]` score matrix: the index of
/// the highest score, the lowest such index on ties (as `numpy.argmax` and candle's `argmax`).
///
/// Errors: `scores.len()` not a multiple of `num_classes` ([`MetricsError::ScoresShape`]),
/// [`MetricsError::NanScore`], `num_classes == 0`.
pub fn argmax_rows(scores: &[f32], num_classes: usize) -> Result<Vec<usize>> {
    if num_classes == 0 {
        return Err(MetricsError::invalid(
            "num_classes",
            0,
            "there must be at least one class",
        ));
    }
    if !scores.len().is_multiple_of(num_classes) {
        return Err(MetricsError::ScoresShape {
            scores: scores.len(),
            labels: scores.len() / num_classes,
            num_classes,
        });
    }
    scores
        .chunks(num_classes)
        .enumerate()
        .map(|(i, row)| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    return Err(MetricsError::NanScore { index: i, class: j });
                }
                if v > row[best] {
                    best = j;
                }
            }
            Ok(best)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_true_class_among_best() {
        // Row 0: truth 2 ranks 1st; row 1: truth 0 ranks 3rd; row 2: truth 1 ranks 2nd.
        let scores = [0.1, 0.2, 0.7, 0.1, 0.5, 0.4, 0.2, 0.3, 0.5];
        let labels = [2u32, 0, 1];
        let top = |k| top_k_accuracy(&scores, &labels, 3, k).unwrap();
        assert!((top(1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((top(2) - 2.0 / 3.0).abs() < 1e-12);
        assert!((top(3) - 1.0).abs() < 1e-12);
        assert!((top(7) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ties_favour_the_higher_class_like_sklearn() {
        // All scores equal: sklearn ranks class 2 first, then 1, then 0.
        let scores = [1.0f32; 9];
        let labels = [0usize, 1, 2];
        let top1 = top_k_accuracy(&scores, &labels, 3, 1).unwrap();
        assert!((top1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(rank_of(&scores[..3], 0), 2);
        assert_eq!(rank_of(&scores[..3], 2), 0);
        let top2 = top_k_accuracy(&scores, &labels, 3, 2).unwrap();
        assert!((top2 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bad_scores_are_typed_errors() {
        assert!(matches!(
            top_k_accuracy(&[0.0; 5], &[0u8, 1], 3, 1),
            Err(MetricsError::ScoresShape {
                scores: 5,
                labels: 2,
                num_classes: 3
            })
        ));
        assert!(matches!(
            top_k_accuracy(&[0.0, 1.0, f32::NAN, 0.0], &[0u8, 1], 2, 1),
            Err(MetricsError::NanScore { index: 1, class: 0 })
        ));
        assert!(matches!(
            top_k_accuracy(&[0.0; 4], &[0u8, 2], 2, 1),
            Err(MetricsError::LabelOutOfRange {
                index: 1,
                label: 2,
                ..
            })
        ));
        assert!(top_k_accuracy(&[0.0; 4], &[0u8, 1], 2, 0).is_err());
        assert!(top_k_accuracy(&[], &[0u8; 0], 2, 1).is_err());
        assert!(top_k_accuracy(&[], &[0u8; 0], 0, 1).is_err());
    }

    #[test]
    fn argmax_takes_first_maximum() {
        let p = argmax_rows(&[0.1, 0.9, 0.9, -1.0, -2.0, -0.5], 3).unwrap();
        assert_eq!(p, vec![1, 2]);
        assert_eq!(argmax_rows(&[], 3).unwrap(), Vec::<usize>::new());
        assert!(argmax_rows(&[1.0, 2.0], 3).is_err());
        assert!(argmax_rows(&[1.0, f32::NAN], 2).is_err());
        assert!(argmax_rows(&[1.0], 0).is_err());
    }
}
