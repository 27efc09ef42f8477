//! Properties that must hold for any input.

use hdr_metrics::{
    top_k_accuracy, wilson_interval, ClassSelection, ClassificationReport, ConfusionMatrix,
    Evaluator, EvaluatorConfig, McNemar, Metrics, MetricsConfig, MetricsError, ZeroDivision,
};
use proptest::prelude::*;

const EPS: f64 = 1e-12;

/// `(num_classes, predictions, labels)`, 1-12 classes, 1-300 samples.
fn samples() -> impl Strategy<Value = (usize, Vec<usize>, Vec<usize>)> {
    (1usize..=12, 1usize..300).prop_flat_map(|(k, n)| {
        (
            Just(k),
            prop::collection::vec(0..k, n),
            prop::collection::vec(0..k, n),
        )
    })
}

/// `(num_classes, labels, row-major scores)`; scores are small integers so ties are common.
fn scored() -> impl Strategy<Value = (usize, Vec<usize>, Vec<f32>)> {
    (1usize..=8, 1usize..100).prop_flat_map(|(k, n)| {
        (
            Just(k),
            prop::collection::vec(0..k, n),
            prop::collection::vec((-3i8..4).prop_map(f32::from), n * k),
        )
    })
}

fn all_configs() -> Vec<MetricsConfig> {
    let mut v = Vec::new();
    for zero_division in [ZeroDivision::Zero, ZeroDivision::One] {
        for classes in [ClassSelection::Present, ClassSelection::All] {
            v.push(MetricsConfig {
                zero_division,
                classes,
            });
        }
    }
    v
}

fn every_value(m: &Metrics) -> Vec<f64> {
    let mut v = vec![m.accuracy];
    for a in [m.macro_avg, m.weighted_avg, m.micro_avg] {
        v.extend([a.precision, a.recall, a.f1]);
    }
    for c in &m.per_class {
        v.extend([c.precision, c.recall, c.f1]);
    }
    v
}

proptest! {
    #[test]
    fn micro_f1_precision_recall_and_weighted_recall_equal_accuracy((k, p, t) in samples()) {
        let m = ConfusionMatrix::from_predictions(k, &p, &t).unwrap();
        for cfg in all_configs() {
            let r = m.metrics(&cfg).unwrap();
            prop_assert!((r.micro_avg.f1 - r.accuracy).abs() < EPS);
            prop_assert!((r.micro_avg.precision - r.accuracy).abs() < EPS);
            prop_assert!((r.micro_avg.recall - r.accuracy).abs() < EPS);
            // Support-weighted recall is sum(tp_c) / n, i.e. accuracy (sklearn has the same identity).
            prop_assert!((r.weighted_avg.recall - r.accuracy).abs() < EPS);
        }
    }

    #[test]
    fn merging_equals_building_from_the_concatenation(
        (k, p, t) in samples(),
        cut in any::<prop::sample::Index>(),
    ) {
        let at = cut.index(p.len() + 1);
        let mut left = ConfusionMatrix::new(k).unwrap();
        left.add_batch(&p[..at], &t[..at]).unwrap();
        let mut right = ConfusionMatrix::new(k).unwrap();
        right.add_batch(&p[at..], &t[at..]).unwrap();
        let whole = ConfusionMatrix::from_predictions(k, &p, &t).unwrap();
        let mut merged = left.clone();
        merged.merge(&right).unwrap();
        prop_assert_eq!(&merged, &whole);
        // Merging is commutative.
        right.merge(&left).unwrap();
        prop_assert_eq!(&right, &whole);

        // Evaluators over two shards, the second offset, merge into the whole evaluation.
        let cfg = |first_index| EvaluatorConfig { num_classes: k, first_index, ..EvaluatorConfig::default() };
        let mut a = Evaluator::new(&cfg(0)).unwrap();
        a.add_predictions(&p[..at], &t[..at]).unwrap();
        let mut b = Evaluator::new(&cfg(at)).unwrap();
        b.add_predictions(&p[at..], &t[at..]).unwrap();
        let mut all = Evaluator::new(&cfg(0)).unwrap();
        all.add_predictions(&p, &t).unwrap();
        b.merge(&a).unwrap();
        prop_assert_eq!(b.matrix(), all.matrix());
        prop_assert_eq!(b.misclassified(), all.misclassified());
    }

    #[test]
    fn batch_boundaries_do_not_matter((k, p, t) in samples(), size in 1usize..40) {
        let whole = ConfusionMatrix::from_predictions(k, &p, &t).unwrap();
        let mut m = ConfusionMatrix::new(k).unwrap();
        for (pc, tc) in p.chunks(size).zip(t.chunks(size)) {
            m.add_batch(pc, tc).unwrap();
        }
        prop_assert_eq!(m, whole);
    }

    #[test]
    fn every_metric_is_in_unit_interval((k, p, t) in samples()) {
        let m = ConfusionMatrix::from_predictions(k, &p, &t).unwrap();
        for cfg in all_configs() {
            let r = m.metrics(&cfg).unwrap();
            for v in every_value(&r) {
                prop_assert!((0.0..=1.0).contains(&v), "{} out of [0, 1] with {:?}", v, cfg);
            }
            let support: u64 = r.per_class.iter().map(|c| c.support).sum();
            prop_assert_eq!(support, p.len() as u64);
        }
    }

    #[test]
    fn top_k_is_a_monotone_fraction_reaching_one((k, labels, scores) in scored()) {
        let mut last = 0.0;
        for kk in 1..=k {
            let acc = top_k_accuracy(&scores, &labels, k, kk).unwrap();
            prop_assert!((0.0..=1.0).contains(&acc));
            prop_assert!(acc >= last - EPS, "top-{} {} < top-{} {}", kk, acc, kk - 1, last);
            last = acc;
        }
        prop_assert!((last - 1.0).abs() < EPS);
        prop_assert!((top_k_accuracy(&scores, &labels, k, k + 3).unwrap() - 1.0).abs() < EPS);
    }

    #[test]
    fn perfect_classifier_scores_one_everywhere((k, _p, t) in samples()) {
        let m = ConfusionMatrix::from_predictions(k, &t, &t).unwrap();
        let configs = [
            MetricsConfig { zero_division: ZeroDivision::Zero, classes: ClassSelection::Present },
            MetricsConfig { zero_division: ZeroDivision::One, classes: ClassSelection::Present },
            // Over all classes, absent ones are 0/0 everywhere: 1 under ZeroDivision::One.
            MetricsConfig { zero_division: ZeroDivision::One, classes: ClassSelection::All },
        ];
        for cfg in configs {
            let r = m.metrics(&cfg).unwrap();
            for v in every_value(&r) {
                prop_assert!((v - 1.0).abs() < EPS, "{} != 1 with {:?}", v, cfg);
            }
        }
        // A perfect scorer (true class strictly highest) is perfect at every k, too.
        let mut scores = vec![0.0f32; t.len() * k];
        for (i, &c) in t.iter().enumerate() {
            scores[i * k + c] = 1.0;
        }
        let mut ev = Evaluator::new(&EvaluatorConfig { num_classes: k, top_k: vec![1], ..EvaluatorConfig::default() }).unwrap();
        ev.add_batch(&t, &scores).unwrap();
        prop_assert!((ev.accuracy().unwrap() - 1.0).abs() < EPS);
        prop_assert!((ev.top_k_accuracy().unwrap()[0].accuracy - 1.0).abs() < EPS);
        prop_assert!(ev.misclassified().is_empty());
    }

    #[test]
    fn out_of_range_labels_are_reported_at_the_first_bad_index(
        (k, p, mut t) in samples(),
        at in any::<prop::sample::Index>(),
        excess in 0usize..5,
    ) {
        let i = at.index(t.len());
        t[i] = k + excess;
        let err = ConfusionMatrix::from_predictions(k, &p, &t).unwrap_err();
        let ok = matches!(
            err,
            MetricsError::LabelOutOfRange { index, label, num_classes }
                if index == i && label == (k + excess) as u64 && num_classes == k
        );
        prop_assert!(ok, "{:?}", err);
        let short = &p[..p.len() - 1];
        let is_mismatch = matches!(
            ConfusionMatrix::from_predictions(k, short, &t),
            Err(MetricsError::LengthMismatch { .. })
        );
        prop_assert!(is_mismatch);
    }

    #[test]
    fn report_json_round_trips((k, p, t) in samples()) {
        let m = ConfusionMatrix::from_predictions(k, &p, &t).unwrap();
        let r = ClassificationReport::new("model", "split", &m, &MetricsConfig::default()).unwrap();
        let back = ClassificationReport::from_json(&r.to_json().unwrap()).unwrap();
        prop_assert_eq!(back, r);
    }
}

proptest! {
    #[test]
    fn wilson_holds_the_observed_rate_and_narrows_with_more_trials(
        trials in 1u64..100_000,
        frac in 0.0f64..=1.0,
        confidence in 0.5f64..0.999,
    ) {
        let successes = ((trials as f64) * frac).round() as u64;
        let p = successes as f64 / trials as f64;
        let i = wilson_interval(successes, trials, confidence).unwrap();
        prop_assert!(0.0 <= i.low && i.high <= 1.0, "{:?}", i);
        prop_assert!(i.contains(p), "{:?} misses {}", i, p);
        // The same rate on four times the trials is known at least as precisely.
        let narrower = wilson_interval(4 * successes, 4 * trials, confidence).unwrap();
        prop_assert!(narrower.width() <= i.width() + 1e-12, "{:?} vs {:?}", narrower, i);
        // A higher level asks for a wider interval.
        let more = wilson_interval(successes, trials, (confidence + 1.0) / 2.0).unwrap();
        prop_assert!(more.low <= i.low + 1e-12 && more.high >= i.high - 1e-12);
    }

    #[test]
    fn mcnemar_is_symmetric_and_a_probability(
        a in prop::collection::vec(any::<bool>(), 1..400),
        flips in prop::collection::vec(any::<bool>(), 1..400),
    ) {
        let b: Vec<bool> = a.iter().zip(flips.iter().cycle()).map(|(&x, &f)| x ^ f).collect();
        let ab = McNemar::from_correctness(&a, &b).unwrap();
        let ba = McNemar::from_correctness(&b, &a).unwrap();
        prop_assert_eq!((ab.only_a_wrong, ab.only_b_wrong), (ba.only_b_wrong, ba.only_a_wrong));
        prop_assert_eq!(ab.both_wrong, ba.both_wrong);
        prop_assert!((ab.p_value - ba.p_value).abs() < 1e-12);
        prop_assert!(ab.p_value > 0.0 && ab.p_value <= 1.0);
        let wrong = |c: &[bool]| c.iter().filter(|&&ok| !ok).count() as u64;
        prop_assert_eq!(ab.both_wrong + ab.only_a_wrong, wrong(&a));
        prop_assert_eq!(ab.both_wrong + ab.only_b_wrong, wrong(&b));
        let acc = |c: &[bool]| 1.0 - wrong(c) as f64 / c.len() as f64;
        prop_assert!((ab.accuracy_difference() - (acc(&a) - acc(&b))).abs() < 1e-12);
        // A model against itself: no disagreement, no evidence.
        prop_assert_eq!(McNemar::from_correctness(&a, &a).unwrap().p_value, 1.0);
    }
}
