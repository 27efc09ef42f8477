use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use crate::format::{md_row, pad_left};
use crate::label::{check_labels, check_predictions, class_index, ClassLabel};

/// Counts of (true class, predicted class) pairs over `k` classes.
///
/// Row = true label, column = predicted label, as in sklearn's `confusion_matrix`. Built batch
/// by batch with [`add_batch`](Self::add_batch); matrices built on disjoint shards of a dataset
/// [`merge`](Self::merge) into exactly the matrix of the whole dataset, so evaluation can run in
/// parallel.
///
/// Invariant: the sum of all counts fits in a `u64`, so no total computed from the matrix
/// can overflow. Every constructor and mutator checks it (including deserialisation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MatrixRepr", into = "MatrixRepr")]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Row-major `[true][predicted]`.
    counts: Vec<u64>,
}

/// JSON shape: nested rows are readable and self-checking, unlike a flat array.
#[derive(Serialize, Deserialize)]
struct MatrixRepr {
    num_classes: usize,
    counts: Vec<Vec<u64>>,
}

impl From<ConfusionMatrix> for MatrixRepr {
    fn from(m: ConfusionMatrix) -> Self {
        let k = m.num_classes;
        Self {
            num_classes: k,
            counts: m.counts.chunks(k).map(<[u64]>::to_vec).collect(),
        }
    }
}

impl TryFrom<MatrixRepr> for ConfusionMatrix {
    type Error = MetricsError;

    fn try_from(r: MatrixRepr) -> Result<Self> {
        if let Some(row) = r.counts.iter().find(|row| row.len() != r.num_classes) {
            return Err(MetricsError::invalid(
                "confusion matrix row length",
                row.len(),
                "every row must have num_classes entries",
            ));
        }
        Self::from_counts(r.num_classes, r.counts.concat())
    }
}

impl ConfusionMatrix {
    /// An empty matrix over `num_classes` classes (at least 1).
    pub fn new(num_classes: usize) -> Result<Self> {
        if num_classes == 0 {
            return Err(MetricsError::invalid(
                "num_classes",
                0,
                "there must be at least one class",
            ));
        }
        let cells = num_classes.checked_mul(num_classes).ok_or_else(|| {
            MetricsError::invalid("num_classes", num_classes, "num_classes^2 overflows usize")
        })?;
        // A huge class count is a user mistake, not a reason to abort on allocation failure.
        let mut counts = Vec::new();
        counts.try_reserve_exact(cells).map_err(|_| {
            MetricsError::invalid(
                "num_classes",
                num_classes,
                "a num_classes x num_classes matrix does not fit in memory",
            )
        })?;
        counts.resize(cells, 0);
        Ok(Self {
            num_classes,
            counts,
        })
    }

    /// The matrix of `predictions` against `labels` (same length, not empty).
    pub fn from_predictions<L: ClassLabel>(
        num_classes: usize,
        predictions: &[L],
        labels: &[L],
    ) -> Result<Self> {
        let mut m = Self::new(num_classes)?;
        m.add_batch(predictions, labels)?;
        if m.is_empty() {
            return Err(MetricsError::Empty {
                what: "no predictions",
            });
        }
        Ok(m)
    }

    /// A matrix from its counts, row-major `[true][predicted]` (`num_classes^2` entries).
    pub fn from_counts(num_classes: usize, counts: Vec<u64>) -> Result<Self> {
        let mut m = Self::new(num_classes)?;
        if counts.len() != m.counts.len() {
            return Err(MetricsError::invalid(
                "counts.len()",
                counts.len(),
                "must equal num_classes * num_classes",
            ));
        }
        counts
            .iter()
            .try_fold(0u64, |acc, &c| acc.checked_add(c))
            .ok_or_else(|| {
                MetricsError::invalid("counts", "sum > u64::MAX", "total count must fit in u64")
            })?;
        m.counts = counts;
        Ok(m)
    }

    /// Adds one batch. The whole batch is checked first: on error the matrix is unchanged.
    ///
    /// An empty batch is accepted and changes nothing (the last batch of a loop may be empty);
    /// metrics of a matrix that stayed empty are an [`MetricsError::Empty`] error.
    pub fn add_batch<L: ClassLabel>(&mut self, predictions: &[L], labels: &[L]) -> Result<()> {
        if predictions.len() != labels.len() {
            return Err(MetricsError::LengthMismatch {
                predictions: predictions.len(),
                labels: labels.len(),
            });
        }
        let k = self.num_classes;
        check_labels(labels, k)?;
        check_predictions(predictions, k)?;
        self.check_room(labels.len() as u64)?;
        for (&p, &t) in predictions.iter().zip(labels) {
            if let (Some(p), Some(t)) = (class_index(p, k), class_index(t, k)) {
                self.counts[t * k + p] += 1;
            }
        }
        Ok(())
    }

    /// Adds one sample.
    pub fn add<L: ClassLabel>(&mut self, prediction: L, label: L) -> Result<()> {
        self.add_batch(&[prediction], &[label])
    }

    /// Adds the counts of `other` (same class count), as if its samples had been added here.
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        if other.num_classes != self.num_classes {
            return Err(MetricsError::ClassCountMismatch {
                left: self.num_classes,
                right: other.num_classes,
            });
        }
        self.check_room(other.total())?;
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    fn check_room(&self, extra: u64) -> Result<()> {
        match self.total().checked_add(extra) {
            Some(_) => Ok(()),
            None => Err(MetricsError::invalid(
                "sample count",
                "more than u64::MAX",
                "total count must fit in u64",
            )),
        }
    }

    /// Number of classes `k`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All counts, row-major `[true][predicted]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Row `truth`: how often samples of that class were predicted as each class.
    pub fn row(&self, truth: usize) -> Option<&[u64]> {
        let k = self.num_classes;
        (truth < k).then(|| &self.counts[truth * k..(truth + 1) * k])
    }

    /// The count of samples of class `truth` predicted as `predicted`.
    pub fn get(&self, truth: usize, predicted: usize) -> Option<u64> {
        let k = self.num_classes;
        (truth < k && predicted < k).then(|| self.counts[truth * k + predicted])
    }

    /// Number of samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Whether no sample has been added.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    /// Number of correctly classified samples (the trace).
    pub fn correct(&self) -> u64 {
        (0..self.num_classes)
            .map(|c| self.counts[c * self.num_classes + c])
            .sum()
    }

    /// Per class: true positives (the diagonal).
    pub fn true_positives(&self) -> Vec<u64> {
        (0..self.num_classes)
            .map(|c| self.counts[c * self.num_classes + c])
            .collect()
    }

    /// Per class: number of samples whose true label is that class (row sums).
    pub fn supports(&self) -> Vec<u64> {
        self.counts
            .chunks(self.num_classes)
            .map(|r| r.iter().sum())
            .collect()
    }

    /// Per class: number of samples predicted as that class (column sums).
    pub fn predicted_totals(&self) -> Vec<u64> {
        let k = self.num_classes;
        let mut cols = vec![0u64; k];
        for row in self.counts.chunks(k) {
            for (c, &v) in cols.iter_mut().zip(row) {
                *c += v;
            }
        }
        cols
    }

    /// Fraction of samples classified correctly. Error if the matrix is empty.
    pub fn accuracy(&self) -> Result<f64> {
        let total = self.total();
        if total == 0 {
            return Err(MetricsError::Empty {
                what: "confusion matrix has no samples",
            });
        }
        Ok(self.correct() as f64 / total as f64)
    }

    /// The `n` most frequent mistakes as `(true class, predicted class, count)`, most frequent
    /// first; ties in order of true class then predicted class. Only pairs that occurred.
    pub fn most_confused(&self, n: usize) -> Vec<(usize, usize, u64)> {
        let k = self.num_classes;
        let mut pairs: Vec<(usize, usize, u64)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|&(i, &c)| c > 0 && i / k != i % k)
            .map(|(i, &c)| (i / k, i % k, c))
            .collect();
        pairs.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        pairs.truncate(n);
        pairs
    }

    /// An aligned text grid: one row per true class, one column per predicted class.
    ///
    /// ```text
    /// true\pred  0  1  2
    ///         0  2  0  0
    ///         1  1  0  1
    ///         2  0  1  1
    /// ```
    pub fn render_text(&self) -> String {
        const CORNER: &str = "true\\pred";
        let k = self.num_classes;
        let max = self.counts.iter().copied().max().unwrap_or(0);
        let cell = max.to_string().len().max((k - 1).to_string().len());
        let first = CORNER.len().max((k - 1).to_string().len());
        let mut out = pad_left(CORNER, first);
        for c in 0..k {
            out.push_str("  ");
            out.push_str(&pad_left(&c.to_string(), cell));
        }
        out.push('\n');
        for (t, row) in self.counts.chunks(k).enumerate() {
            out.push_str(&pad_left(&t.to_string(), first));
            for v in row {
                out.push_str("  ");
                out.push_str(&pad_left(&v.to_string(), cell));
            }
            out.push('\n');
        }
        out
    }

    /// A GitHub-flavoured Markdown table: rows = true class, columns = predicted class.
    pub fn render_markdown(&self) -> String {
        let k = self.num_classes;
        let mut header = vec!["true \\ pred".to_string()];
        header.extend((0..k).map(|c| c.to_string()));
        let mut out = md_row(&header);
        let mut sep = vec!["---".to_string()];
        sep.extend(std::iter::repeat_n("---:".to_string(), k));
        out.push_str(&md_row(&sep));
        for (t, row) in self.counts.chunks(k).enumerate() {
            let mut cells = vec![format!("**{t}**")];
            cells.extend(row.iter().map(u64::to_string));
            out.push_str(&md_row(&cells));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConfusionMatrix {
        // truth:      0 0 1 1 2 2 2
        // prediction: 0 0 0 2 2 1 2
        ConfusionMatrix::from_predictions(3, &[0u8, 0, 0, 2, 2, 1, 2], &[0u8, 0, 1, 1, 2, 2, 2])
            .unwrap()
    }

    #[test]
    fn counts_land_in_row_truth_column_prediction() {
        let m = sample();
        assert_eq!(m.counts(), &[2, 0, 0, 1, 0, 1, 0, 1, 2]);
        assert_eq!(m.get(1, 0), Some(1));
        assert_eq!(m.get(3, 0), None);
        assert_eq!(m.row(2), Some(&[0u64, 1, 2][..]));
        assert_eq!(m.total(), 7);
        assert_eq!(m.correct(), 4);
        assert_eq!(m.supports(), vec![2, 2, 3]);
        assert_eq!(m.predicted_totals(), vec![3, 1, 3]);
        assert_eq!(m.true_positives(), vec![2, 0, 2]);
        assert!((m.accuracy().unwrap() - 4.0 / 7.0).abs() < 1e-15);
    }

    #[test]
    fn bad_input_is_a_typed_error_and_leaves_matrix_unchanged() {
        let mut m = sample();
        let before = m.clone();
        assert!(matches!(
            m.add_batch(&[0u32, 1], &[0u32]),
            Err(MetricsError::LengthMismatch {
                predictions: 2,
                labels: 1
            })
        ));
        assert!(matches!(
            m.add_batch(&[0u32, 1], &[0u32, 3]),
            Err(MetricsError::LabelOutOfRange {
                index: 1,
                label: 3,
                num_classes: 3
            })
        ));
        assert!(matches!(
            m.add_batch(&[5u32, 1], &[0u32, 1]),
            Err(MetricsError::PredictionOutOfRange { index: 0, .. })
        ));
        assert_eq!(m, before);
        assert!(matches!(
            ConfusionMatrix::from_predictions::<u8>(3, &[], &[]),
            Err(MetricsError::Empty { .. })
        ));
        assert!(ConfusionMatrix::new(0).is_err());
        assert!(ConfusionMatrix::new(usize::MAX).is_err());
        assert!(ConfusionMatrix::new(3).unwrap().accuracy().is_err());
        assert!(ConfusionMatrix::from_counts(2, vec![1, 2, 3]).is_err());
        assert!(ConfusionMatrix::from_counts(2, vec![u64::MAX, 1, 0, 0]).is_err());
    }

    #[test]
    fn merge_adds_counts_and_checks_class_count() {
        let mut a = ConfusionMatrix::from_predictions(3, &[0usize, 1], &[0usize, 2]).unwrap();
        let b = ConfusionMatrix::from_predictions(3, &[0usize, 2, 2, 1, 2], &[1usize, 1, 2, 2, 2])
            .unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a, sample_merged());
        let other = ConfusionMatrix::new(4).unwrap();
        assert!(matches!(
            a.merge(&other),
            Err(MetricsError::ClassCountMismatch { left: 3, right: 4 })
        ));
        let mut full = ConfusionMatrix::from_counts(2, vec![u64::MAX - 1, 0, 0, 0]).unwrap();
        let two = ConfusionMatrix::from_counts(2, vec![0, 1, 1, 0]).unwrap();
        assert!(full.merge(&two).is_err());
        assert_eq!(full.total(), u64::MAX - 1);
    }

    fn sample_merged() -> ConfusionMatrix {
        ConfusionMatrix::from_predictions(
            3,
            &[0usize, 1, 0, 2, 2, 1, 2],
            &[0usize, 2, 1, 1, 2, 2, 2],
        )
        .unwrap()
    }

    #[test]
    fn most_confused_sorts_by_count_then_classes() {
        let m = ConfusionMatrix::from_counts(3, vec![5, 2, 0, 3, 4, 2, 0, 2, 9]).unwrap();
        assert_eq!(
            m.most_confused(10),
            vec![(1, 0, 3), (0, 1, 2), (1, 2, 2), (2, 1, 2)]
        );
        assert_eq!(m.most_confused(1), vec![(1, 0, 3)]);
        assert!(sample().most_confused(0).is_empty());
    }

    #[test]
    fn text_grid_is_aligned() {
        let m = ConfusionMatrix::from_counts(3, vec![120, 0, 3, 1, 0, 1, 0, 1, 2]).unwrap();
        let expected = "\
true\\pred    0    1    2
        0  120    0    3
        1    1    0    1
        2    0    1    2
";
        assert_eq!(m.render_text(), expected);
    }

    #[test]
    fn markdown_grid_is_a_gfm_table() {
        let m = ConfusionMatrix::from_counts(2, vec![3, 1, 0, 4]).unwrap();
        let expected = "\
| true \\ pred | 0 | 1 |
| --- | ---: | ---: |
| **0** | 3 | 1 |
| **1** | 0 | 4 |
";
        assert_eq!(m.render_markdown(), expected);
    }

    #[test]
    fn json_round_trip_and_validation() {
        let m = sample();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"num_classes":3,"counts":[[2,0,0],[1,0,1],[0,1,2]]}"#
        );
        let back: ConfusionMatrix = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<ConfusionMatrix>(
            r#"{"num_classes":2,"counts":[[1,2],[3]]}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<ConfusionMatrix>(r#"{"num_classes":2,"counts":[[1,2]]}"#)
                .is_err()
        );
    }
}
