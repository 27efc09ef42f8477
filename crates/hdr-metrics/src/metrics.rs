use serde::{Deserialize, Serialize};

use crate::confusion::ConfusionMatrix;
use crate::error::{MetricsError, Result};
use crate::label::ClassLabel;

/// The value a metric takes when its denominator is zero, like sklearn's `zero_division`.
///
/// - precision of class `c` is `tp / (tp + fp)`: undefined when `c` is never predicted;
/// - recall of class `c` is `tp / (tp + fn)`: undefined when `c` never occurs in the labels;
/// - F1 of class `c` is `2 tp / (2 tp + fp + fn)` (sklearn >= 1.3 computes it from the counts,
///   not from precision and recall): undefined only when `c` is neither predicted nor present.
///
/// In each of these cases the metric is set to this value instead of NaN. [`Zero`](Self::Zero)
/// (the default) gives the numbers sklearn returns for its default `zero_division="warn"`,
/// without the warning; [`One`](Self::One) matches `zero_division=1`. Averages are then taken
/// over these values, as sklearn does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroDivision {
    /// Undefined metrics count as 0 (sklearn `zero_division="warn"` or `0`).
    #[default]
    Zero,
    /// Undefined metrics count as 1 (sklearn `zero_division=1`).
    One,
}

impl ZeroDivision {
    /// The substituted value.
    pub fn value(self) -> f64 {
        match self {
            Self::Zero => 0.0,
            Self::One => 1.0,
        }
    }

    /// `num / den`, or the substitute when `den` is zero. Counts are converted to `f64` before
    /// doubling or summing so that huge (deserialised) counts cannot overflow.
    fn divide(self, num: f64, den: f64) -> f64 {
        if den == 0.0 {
            self.value()
        } else {
            num / den
        }
    }
}

/// Which classes the per-class rows and the averages cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassSelection {
    /// Classes that occur among the labels or the predictions; sklearn's default (`labels=None`).
    /// A class absent from both has no defined metric, so it neither gets a row nor drags the
    /// macro average down (a perfect classifier on a subset without some digit still scores 1).
    #[default]
    Present,
    /// All `k` classes, like sklearn with `labels=range(k)`; absent classes get the
    /// [`ZeroDivision`] value.
    All,
}

/// Options for [`ConfusionMatrix::metrics`] and the reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Value of undefined ratios.
    pub zero_division: ZeroDivision,
    /// Classes covered by rows and averages.
    pub classes: ClassSelection,
}

/// Precision, recall and F1 of one class, with its support.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class index.
    pub class: usize,
    /// `tp / (tp + fp)`.
    pub precision: f64,
    /// `tp / (tp + fn)`.
    pub recall: f64,
    /// `2 tp / (2 tp + fp + fn)`, the harmonic mean of precision and recall.
    pub f1: f64,
    /// Number of samples whose true label is this class.
    pub support: u64,
}

/// Precision, recall and F1 averaged over classes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AverageMetrics {
    /// Averaged precision.
    pub precision: f64,
    /// Averaged recall.
    pub recall: f64,
    /// Averaged F1.
    pub f1: f64,
}

/// How per-class metrics are combined, as sklearn's `average` parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Average {
    /// Unweighted mean over classes: every class counts the same.
    #[default]
    Macro,
    /// Mean over classes weighted by support.
    Weighted,
    /// Metrics of the summed counts; precision, recall and F1 all equal accuracy for
    /// single-label classification.
    Micro,
}

/// Every classification metric of a confusion matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Number of samples.
    pub num_samples: u64,
    /// Fraction of samples classified correctly.
    pub accuracy: f64,
    /// One entry per selected class, in class order (see [`ClassSelection`]).
    pub per_class: Vec<ClassMetrics>,
    /// Unweighted mean over the selected classes.
    pub macro_avg: AverageMetrics,
    /// Support-weighted mean over the selected classes.
    pub weighted_avg: AverageMetrics,
    /// From the counts summed over the selected classes.
    pub micro_avg: AverageMetrics,
    /// Zero-division convention used.
    pub zero_division: ZeroDivision,
    /// Classes covered.
    pub classes: ClassSelection,
}

impl Metrics {
    /// The requested average.
    pub fn average(&self, average: Average) -> AverageMetrics {
        match average {
            Average::Macro => self.macro_avg,
            Average::Weighted => self.weighted_avg,
            Average::Micro => self.micro_avg,
        }
    }

    /// The row of class `class`, if it is selected.
    pub fn class(&self, class: usize) -> Option<&ClassMetrics> {
        self.per_class.iter().find(|m| m.class == class)
    }
}

impl ConfusionMatrix {
    /// Accuracy, per-class precision / recall / F1 / support and their macro, weighted and micro
    /// averages, with sklearn's conventions (see [`ZeroDivision`], [`ClassSelection`]).
    ///
    /// Error [`MetricsError::Empty`] if the matrix holds no sample.
    pub fn metrics(&self, config: &MetricsConfig) -> Result<Metrics> {
        let accuracy = self.accuracy()?;
        let zd = config.zero_division;
        let tp = self.true_positives();
        let support = self.supports();
        let predicted = self.predicted_totals();
        let selected: Vec<usize> = (0..self.num_classes())
            .filter(|&c| match config.classes {
                ClassSelection::All => true,
                ClassSelection::Present => support[c] > 0 || predicted[c] > 0,
            })
            .collect();
        if selected.is_empty() {
            // Unreachable for a non-empty matrix (some class has support); kept as an error
            // rather than a division by zero should that reasoning ever break.
            return Err(MetricsError::Empty {
                what: "no class selected",
            });
        }

        let per_class: Vec<ClassMetrics> = selected
            .iter()
            .map(|&c| ClassMetrics {
                class: c,
                precision: zd.divide(tp[c] as f64, predicted[c] as f64),
                recall: zd.divide(tp[c] as f64, support[c] as f64),
                f1: zd.divide(2.0 * tp[c] as f64, support[c] as f64 + predicted[c] as f64),
                support: support[c],
            })
            .collect();

        let n = per_class.len() as f64;
        let mean = |f: fn(&ClassMetrics) -> f64| per_class.iter().map(f).sum::<f64>() / n;
        let macro_avg = AverageMetrics {
            precision: mean(|m| m.precision),
            recall: mean(|m| m.recall),
            f1: mean(|m| m.f1),
        };

        let total_support: u64 = per_class.iter().map(|m| m.support).sum();
        let weighted_avg = if total_support == 0 {
            // sklearn's rule when no selected class has support (unreachable here, see above).
            AverageMetrics {
                precision: zd.value(),
                recall: zd.value(),
                f1: zd.value(),
            }
        } else {
            let w = |f: fn(&ClassMetrics) -> f64| {
                per_class
                    .iter()
                    .map(|m| f(m) * m.support as f64)
                    .sum::<f64>()
                    / total_support as f64
            };
            AverageMetrics {
                precision: w(|m| m.precision),
                recall: w(|m| m.recall),
                f1: w(|m| m.f1),
            }
        };

        let tp_sum: u64 = selected.iter().map(|&c| tp[c]).sum();
        let pred_sum: u64 = selected.iter().map(|&c| predicted[c]).sum();
        let micro_avg = AverageMetrics {
            precision: zd.divide(tp_sum as f64, pred_sum as f64),
            recall: zd.divide(tp_sum as f64, total_support as f64),
            f1: zd.divide(2.0 * tp_sum as f64, total_support as f64 + pred_sum as f64),
        };

        Ok(Metrics {
            num_samples: self.total(),
            accuracy,
            per_class,
            macro_avg,
            weighted_avg,
            micro_avg,
            zero_division: zd,
            classes: config.classes,
        })
    }
}

/// Fraction of `predictions` equal to `labels`, without needing the class count.
///
/// Errors: [`MetricsError::LengthMismatch`], [`MetricsError::Empty`].
pub fn accuracy<L: ClassLabel>(predictions: &[L], labels: &[L]) -> Result<f64> {
    if predictions.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            predictions: predictions.len(),
            labels: labels.len(),
        });
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty {
            what: "no predictions",
        });
    }
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p.to_u64() == l.to_u64())
        .count();
    Ok(correct as f64 / labels.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < EPS
    }

    #[test]
    fn hand_computed_three_class_case() {
        // truth 0 0 1 1 2 2 2, prediction 0 0 0 2 2 1 2:
        // class 0: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 4/5
        // class 1: tp 0, fp 1, fn 2 -> P 0, R 0, F1 0
        // class 2: tp 2, fp 1, fn 1 -> P 2/3, R 2/3, F1 2/3
        let m = ConfusionMatrix::from_predictions(
            3,
            &[0u8, 0, 0, 2, 2, 1, 2],
            &[0u8, 0, 1, 1, 2, 2, 2],
        )
        .unwrap();
        let r = m.metrics(&MetricsConfig::default()).unwrap();
        assert!(close(r.accuracy, 4.0 / 7.0));
        let p: Vec<f64> = r.per_class.iter().map(|c| c.precision).collect();
        assert!(close(p[0], 2.0 / 3.0) && close(p[1], 0.0) && close(p[2], 2.0 / 3.0));
        assert!(close(r.per_class[0].f1, 0.8));
        assert!(close(r.per_class[2].f1, 2.0 / 3.0));
        assert!(close(r.macro_avg.recall, (1.0 + 0.0 + 2.0 / 3.0) / 3.0));
        assert!(close(r.weighted_avg.recall, r.accuracy));
        assert!(close(
            r.weighted_avg.f1,
            (2.0 * 0.8 + 3.0 * 2.0 / 3.0) / 7.0
        ));
        assert!(close(r.micro_avg.f1, r.accuracy));
        assert_eq!(r.average(Average::Micro), r.micro_avg);
        assert_eq!(r.class(1).map(|c| c.support), Some(2));
    }

    #[test]
    fn zero_division_substitutes_only_undefined_ratios() {
        // Class 2 is predicted but never true (recall undefined); class 1 is true but never
        // predicted (precision undefined); class 3 occurs nowhere.
        let m = ConfusionMatrix::from_predictions(4, &[0u8, 2, 0], &[0u8, 1, 1]).unwrap();
        for (zd, v) in [(ZeroDivision::Zero, 0.0), (ZeroDivision::One, 1.0)] {
            let cfg = MetricsConfig {
                zero_division: zd,
                classes: ClassSelection::All,
            };
            let r = m.metrics(&cfg).unwrap();
            assert!(close(r.per_class[1].precision, v));
            assert!(close(r.per_class[1].recall, 0.0));
            assert!(close(r.per_class[1].f1, 0.0));
            assert!(close(r.per_class[2].precision, 0.0));
            assert!(close(r.per_class[2].recall, v));
            assert!(close(r.per_class[2].f1, 0.0));
            assert!(close(r.per_class[3].precision, v));
            assert!(close(r.per_class[3].f1, v));
            assert_eq!(r.per_class.len(), 4);
        }
        let present = m.metrics(&MetricsConfig::default()).unwrap();
        let classes: Vec<usize> = present.per_class.iter().map(|c| c.class).collect();
        assert_eq!(classes, vec![0, 1, 2]);
        assert!(present.class(3).is_none());
    }

    #[test]
    fn accuracy_function_checks_input() {
        assert!(close(
            accuracy(&[1u32, 2, 3, 4], &[1u32, 2, 0, 4]).unwrap(),
            0.75
        ));
        assert!(matches!(
            accuracy(&[1u32], &[1u32, 2]),
            Err(MetricsError::LengthMismatch {
                predictions: 1,
                labels: 2
            })
        ));
        assert!(matches!(
            accuracy::<u8>(&[], &[]),
            Err(MetricsError::Empty { .. })
        ));
        assert!(matches!(
            ConfusionMatrix::new(3)
                .unwrap()
                .metrics(&MetricsConfig::default()),
            Err(MetricsError::Empty { .. })
        ));
    }

    #[test]
    fn zero_division_serialises_lowercase() {
        assert_eq!(
            serde_json::to_string(&ZeroDivision::One).unwrap(),
            "\"one\""
        );
        assert_eq!(
            serde_json::to_string(&ClassSelection::Present).unwrap(),
            "\"present\""
        );
        assert_eq!(ZeroDivision::default(), ZeroDivision::Zero);
    }
}
