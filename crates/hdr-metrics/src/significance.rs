//! How much an accuracy measured on a finite test set can be trusted: a confidence interval for
//! one model, and McNemar's exact test for two models evaluated on the same samples.
//!
//! On MNIST's 10,000 test images one image is 0.01 point, so tables that rank models by their
//! second decimal need both: a 95% interval around 99.6% is about 0.25 point wide, and two
//! models that differ by a few images usually disagree on far more.

use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// A two-sided interval `[low, high]` for a proportion.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound, in [0, 1].
    pub low: f64,
    /// Upper bound, in [0, 1].
    pub high: f64,
}

impl Interval {
    /// Whether `p` lies in the interval (bounds included).
    pub fn contains(&self, p: f64) -> bool {
        self.low <= p && p <= self.high
    }

    /// `high - low`.
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// The Wilson score interval of a proportion of `successes` in `trials` at level `confidence`
/// (e.g. 0.95).
///
/// Wilson's rather than the textbook `p ± z·sqrt(p(1-p)/n)`, which collapses to a point at 0 or
/// 100% and undercovers near them, exactly where MNIST accuracies live.
pub fn wilson_interval(successes: u64, trials: u64, confidence: f64) -> Result<Interval> {
    if trials == 0 {
        return Err(MetricsError::Empty {
            what: "a confidence interval needs at least one trial",
        });
    }
    if successes > trials {
        return Err(MetricsError::invalid(
            "successes",
            format!("{successes} of {trials}"),
            "cannot exceed the number of trials",
        ));
    }
    let z = z_score(confidence)?;
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At p = 0 or 1 the interval touches the bound exactly; rounding must not push it past.
    Ok(Interval {
        low: (centre - half).clamp(0.0, p),
        high: (centre + half).clamp(p, 1.0),
    })
}

/// The standard normal quantile `z` with `P(-z < Z < z) = confidence`.
fn z_score(confidence: f64) -> Result<f64> {
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(MetricsError::invalid(
            "confidence",
            confidence,
            "must be in (0, 1), e.g. 0.95",
        ));
    }
    // From the lower tail: 0.5 + confidence / 2 rounds to 1 for levels within 1e-16 of 1.
    let z = -normal_quantile((1.0 - confidence) / 2.0);
    if z.is_finite() {
        Ok(z)
    } else {
        Err(MetricsError::invalid(
            "confidence",
            confidence,
            "too close to 1 for a finite interval",
        ))
    }
}

/// The standard normal quantile function for `p` in (0, 1): Acklam's rational approximation,
/// relative error below 1.2e-9 (a refinement step would need an erfc at least as accurate).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// McNemar's exact test of two classifiers evaluated on the same samples.
///
/// Only the samples on which they disagree about correctness carry information: if the two
/// are equally accurate, each such sample is as likely to favour one as the other, so the
/// count favouring `a` is Binomial(`only_a_wrong + only_b_wrong`, 1/2) under the null. The
/// p-value is the exact two-sided binomial tail (no normal approximation: the counts between
/// good MNIST models are a few dozen).
///
/// ```
/// use hdr_metrics::{wilson_interval, McNemar};
///
/// # fn main() -> hdr_metrics::Result<()> {
/// // 99.59% on MNIST's 10,000 test images: the model's true accuracy is likely 99.44-99.70%.
/// let i = wilson_interval(9_959, 10_000, 0.95)?;
/// assert!(i.low > 0.9944 && i.high < 0.9971);
/// // Two runs 5 images apart that disagree on 29 images: no evidence either is better.
/// let a_wrong: Vec<usize> = (0..41).collect(); // 24 shared errors, then 17 of its own
/// let b_wrong: Vec<usize> = (0..24).chain(100..112).collect(); // 12 of its own
/// let t = McNemar::from_misclassified(10_000, &a_wrong, &b_wrong)?;
/// assert_eq!((t.only_a_wrong, t.only_b_wrong), (17, 12));
/// assert!(!t.significant(0.05));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Samples in the comparison.
    pub samples: u64,
    /// Samples both models get wrong.
    pub both_wrong: u64,
    /// Samples only the first model gets wrong.
    pub only_a_wrong: u64,
    /// Samples only the second model gets wrong.
    pub only_b_wrong: u64,
    /// Two-sided exact p-value of "both models are equally accurate".
    pub p_value: f64,
}

impl McNemar {
    /// The test from each model's misclassified sample indices (e.g.
    /// [`Evaluator::misclassified_indices`](crate::Evaluator::misclassified_indices)) over the
    /// same `samples` samples in the same order. Indices may come in any order; repeated ones
    /// count once. An [`Evaluator`](crate::Evaluator) built with `keep_misclassified: false`
    /// records none, which would read as a perfect model: [`McNemar::from_evaluators`] checks.
    pub fn from_misclassified(samples: u64, a_wrong: &[usize], b_wrong: &[usize]) -> Result<Self> {
        if samples == 0 {
            return Err(MetricsError::Empty {
                what: "McNemar's test needs at least one sample",
            });
        }
        let set = |wrong: &[usize], name: &'static str| -> Result<Vec<usize>> {
            let mut v = wrong.to_vec();
            v.sort_unstable();
            v.dedup();
            match v.last() {
                Some(&last) if last as u64 >= samples => Err(MetricsError::invalid(
                    name,
                    last,
                    "a misclassified index is beyond the number of samples",
                )),
                _ => Ok(v),
            }
        };
        let (a, b) = (set(a_wrong, "a_wrong")?, set(b_wrong, "b_wrong")?);
        let both = count_common(&a, &b);
        let (only_a, only_b) = (a.len() as u64 - both, b.len() as u64 - both);
        Ok(Self {
            samples,
            both_wrong: both,
            only_a_wrong: only_a,
            only_b_wrong: only_b,
            p_value: binomial_two_sided(only_a, only_b),
        })
    }

    /// The test of two evaluations of the same samples, in the same order.
    ///
    /// Errors if either evaluator did not keep its misclassified samples, or if they saw
    /// different numbers of samples.
    pub fn from_evaluators(a: &crate::Evaluator, b: &crate::Evaluator) -> Result<Self> {
        for e in [a, b] {
            if !e.keeps_misclassified() {
                return Err(MetricsError::invalid(
                    "evaluator",
                    "keep_misclassified: false",
                    "McNemar's test needs each model's misclassified samples",
                ));
            }
        }
        if a.num_samples() != b.num_samples() {
            return Err(MetricsError::invalid(
                "evaluators",
                format!("{} and {} samples", a.num_samples(), b.num_samples()),
                "both models must be evaluated on the same samples",
            ));
        }
        Self::from_misclassified(
            a.num_samples(),
            &a.misclassified_indices(),
            &b.misclassified_indices(),
        )
    }

    /// The test from per-sample correctness of the two models (`a[i]`: the first model
    /// classifies sample `i` correctly).
    pub fn from_correctness(a: &[bool], b: &[bool]) -> Result<Self> {
        if a.len() != b.len() {
            return Err(MetricsError::invalid(
                "correctness",
                format!("{} and {} samples", a.len(), b.len()),
                "both models must be judged on the same samples",
            ));
        }
        let wrong = |c: &[bool]| -> Vec<usize> {
            c.iter()
                .enumerate()
                .filter(|(_, &ok)| !ok)
                .map(|(i, _)| i)
                .collect()
        };
        Self::from_misclassified(a.len() as u64, &wrong(a), &wrong(b))
    }

    /// Accuracy of the first model minus that of the second (in [-1, 1]).
    pub fn accuracy_difference(&self) -> f64 {
        (self.only_b_wrong as f64 - self.only_a_wrong as f64) / self.samples as f64
    }

    /// A few lines for people: who gets which samples wrong, and what that says, with the
    /// models named `a` and `b`.
    pub fn render_text(&self, a: &str, b: &str) -> String {
        let verdict = if self.significant(0.05) {
            "the difference is significant at the 5% level"
        } else {
            "no significant difference at the 5% level"
        };
        format!(
            "McNemar's exact test, {a} vs {b} on the same {} samples:\n\
             both wrong: {}, only {a} wrong: {}, only {b} wrong: {}\n\
             accuracy difference ({a} - {b}): {:+.2} points, p = {}: {verdict}\n",
            crate::format_count(self.samples),
            self.both_wrong,
            self.only_a_wrong,
            self.only_b_wrong,
            100.0 * self.accuracy_difference(),
            format_p_value(self.p_value),
        )
    }

    /// Whether the difference is significant at level `alpha` (e.g. 0.05).
    pub fn significant(&self, alpha: f64) -> bool {
        self.p_value < alpha
    }
}

/// Holm's step-down adjustment of the p-values of several tests run together (e.g. one model
/// against several others), in the order given: an adjusted p below `alpha` keeps the family's
/// chance of any false "significant" at most `alpha`, whatever the tests' dependence.
pub fn holm(p_values: &[f64]) -> Result<Vec<f64>> {
    if let Some(&bad) = p_values.iter().find(|p| !(0.0..=1.0).contains(*p)) {
        return Err(MetricsError::invalid(
            "p_values",
            bad,
            "a p-value must be in [0, 1]",
        ));
    }
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p_values[i]).min(1.0));
        adjusted[i] = running;
    }
    Ok(adjusted)
}

/// A p-value as [`McNemar::render_text`] prints it: three decimals, or two significant digits
/// below 0.001 (which three decimals would show as 0.000, as if certain).
pub fn format_p_value(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else if p > 0.0 {
        format!("{p:.1e}")
    } else {
        // Below f64's range (thousands of lopsided disagreements), not zero.
        "< 1e-300".into()
    }
}

/// Elements common to two sorted, deduplicated slices.
fn count_common(a: &[usize], b: &[usize]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// `min(1, 2 P(X <= min(x, y)))` for X ~ Binomial(x + y, 1/2).
fn binomial_two_sided(x: u64, y: u64) -> f64 {
    let n = x + y;
    let k = x.min(y);
    if n == 0 || 2 * k == n {
        return 1.0;
    }
    // In logs: 2^-n underflows once the models disagree on more than ~1,000 samples.
    let mut log_pmf_k = -(n as f64) * std::f64::consts::LN_2;
    for i in 0..k {
        log_pmf_k += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    // Then down from the largest term, pmf(k) (k < n/2), in ratios to it.
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for i in (1..=k).rev() {
        term *= i as f64 / (n - i + 1) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    (2.0 * (log_pmf_k + sum.ln()).exp()).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_tables() {
        for (p, z) in [
            (0.975, 1.959_963_984_540_054),
            (0.995, 2.575_829_303_548_901),
            (0.5, 0.0),
            (0.841_344_746_068_543, 1.0),
            (0.001, -3.090_232_306_167_813),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-8,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn wilson_matches_a_worked_example() {
        // Wilson's formula in Python with statistics.NormalDist().inv_cdf(0.975):
        // 9,959 of 10,000 -> (0.994443, 0.996976).
        let i = wilson_interval(9959, 10_000, 0.95).unwrap();
        assert!((i.low - 0.994_443).abs() < 2e-6, "{i:?}");
        assert!((i.high - 0.996_976).abs() < 2e-6, "{i:?}");
        // (5, 10): symmetric around 1/2, (0.236593, 0.763407).
        let i = wilson_interval(5, 10, 0.95).unwrap();
        assert!((i.low - 0.236_593).abs() < 2e-6 && (i.high - 0.763_407).abs() < 2e-6);
    }

    #[test]
    fn wilson_touches_the_bounds_at_zero_and_all() {
        let i = wilson_interval(0, 20, 0.95).unwrap();
        assert_eq!(i.low, 0.0);
        assert!((i.high - 0.161_125).abs() < 2e-6, "{i:?}");
        let i = wilson_interval(20, 20, 0.95).unwrap();
        assert_eq!(i.high, 1.0);
        assert!((i.low - 0.838_875).abs() < 2e-6, "{i:?}");
    }

    #[test]
    fn wilson_stays_finite_next_to_one() {
        // 0.5 + c / 2 would round to 1 here (and the quantile to infinity).
        let i = wilson_interval(5, 10, 1.0 - f64::EPSILON / 2.0).unwrap();
        assert!(i.low.is_finite() && i.high.is_finite() && i.low < 0.5 && i.high > 0.5);
    }

    #[test]
    fn wilson_rejects_bad_input() {
        assert!(matches!(
            wilson_interval(1, 0, 0.95),
            Err(MetricsError::Empty { .. })
        ));
        assert!(wilson_interval(11, 10, 0.95).is_err());
        for c in [0.0, 1.0, -0.5, f64::NAN, 1.0 - 1e-17] {
            assert!(wilson_interval(5, 10, c).is_err(), "{c}");
        }
    }

    #[test]
    fn mcnemar_counts_and_exact_p() {
        // a wrong on {1, 2, 3, 9}, b wrong on {3, 4}: both {3}, only a {1, 2, 9}, only b {4}.
        let t = McNemar::from_misclassified(10, &[9, 1, 2, 3, 3], &[4, 3]).unwrap();
        assert_eq!((t.both_wrong, t.only_a_wrong, t.only_b_wrong), (1, 3, 1));
        // 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * 5/16.
        assert!((t.p_value - 0.625).abs() < 1e-12);
        assert!((t.accuracy_difference() + 0.2).abs() < 1e-12);
        assert_eq!(
            t.render_text("x", "y"),
            "McNemar's exact test, x vs y on the same 10 samples:\n\
             both wrong: 1, only x wrong: 3, only y wrong: 1\n\
             accuracy difference (x - y): -20.00 points, p = 0.625: \
             no significant difference at the 5% level\n"
        );
        // 2 * sum(comb(40, i) for i in range(11)) / 2**40 = 0.00222143 (Python, exact).
        assert!((binomial_two_sided(10, 30) - 0.002_221_43).abs() < 1e-8);
        assert!((binomial_two_sided(30, 10) - 0.002_221_43).abs() < 1e-8);
        assert_eq!(binomial_two_sided(7, 7), 1.0);
        assert_eq!(format_p_value(0.625), "0.625");
        assert_eq!(format_p_value(binomial_two_sided(0, 12)), "4.9e-4");
        assert_eq!(format_p_value(binomial_two_sided(0, 5000)), "< 1e-300");
        assert_eq!(binomial_two_sided(0, 0), 1.0);
        assert!(binomial_two_sided(0, 12) < 0.001);
        // Large disagreement counts stay finite (2^-n underflows in linear space).
        // Exact in Python: 0.00164927.
        let p = binomial_two_sided(1900, 2100);
        assert!((p - 0.001_649_27).abs() < 1e-8, "{p}");
    }

    #[test]
    fn holm_matches_a_hand_computation() {
        // Sorted 0.01, 0.02, 0.04, 0.5 -> 4 * 0.01, max(0.04, 3 * 0.02), max(0.06, 2 * 0.04),
        // max(0.08, 0.5), back in the given order.
        let adj = holm(&[0.04, 0.5, 0.01, 0.02]).unwrap();
        let want = [0.08, 0.5, 0.04, 0.06];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.9, 0.8]).unwrap(), [1.0, 1.0]);
        assert!(holm(&[]).unwrap().is_empty());
        assert!(holm(&[0.1, f64::NAN]).is_err());
        assert!(holm(&[1.5]).is_err());
    }

    #[test]
    fn mcnemar_from_correctness_agrees_with_indices() {
        let a = [true, false, false, true, true];
        let b = [true, true, false, false, true];
        let t = McNemar::from_correctness(&a, &b).unwrap();
        assert_eq!(t, McNemar::from_misclassified(5, &[1, 2], &[2, 3]).unwrap());
        assert!(McNemar::from_correctness(&a, &b[..4]).is_err());
        let eval = |wrong: &[u8], keep: bool| {
            let mut e = crate::Evaluator::new(&crate::EvaluatorConfig {
                num_classes: 2,
                keep_misclassified: keep,
                ..Default::default()
            })
            .unwrap();
            let predictions: Vec<u8> = (0..5).map(|i| wrong.contains(&i) as u8).collect();
            e.add_predictions(&predictions, &[0u8; 5]).unwrap();
            e
        };
        assert_eq!(
            McNemar::from_evaluators(&eval(&[1, 2], true), &eval(&[2, 3], true)).unwrap(),
            t
        );
        assert!(McNemar::from_evaluators(&eval(&[1, 2], true), &eval(&[2, 3], false)).is_err());
        assert!(McNemar::from_misclassified(5, &[5], &[]).is_err());
        assert!(McNemar::from_misclassified(0, &[], &[]).is_err());
    }
}
