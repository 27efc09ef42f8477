//! hdr-metrics against scikit-learn on fixed cases.
//!
//! Every expected value is read from `fixtures/sklearn_cases.json`, written by
//! `fixtures/gen_sklearn.py` (see its docstring to re-run it) from scikit-learn's
//! `precision_recall_fscore_support`, `accuracy_score`, `confusion_matrix`,
//! `classification_report`, `top_k_accuracy_score` and numpy's `argmax` / `percentile`.

use std::time::Duration;

use hdr_metrics::{
    argmax_rows, top_k_accuracy, ClassSelection, ClassificationReport, ConfusionMatrix, Evaluator,
    EvaluatorConfig, LatencyStats, MetricsConfig, RenderOptions, ZeroDivision,
};
use serde::Deserialize;

/// Absolute tolerance: sklearn and this crate compute the same ratios in f64, possibly in a
/// different order of operations.
const TOL: f64 = 1e-12;

#[derive(Deserialize)]
struct Fixture {
    sklearn_version: String,
    cases: Vec<Case>,
    percentiles: Percentiles,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    num_classes: usize,
    y_true: Vec<usize>,
    y_pred: Vec<usize>,
    accuracy: f64,
    confusion_matrix: Vec<Vec<u64>>,
    variants: Vec<Variant>,
    #[serde(default)]
    scores: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    argmax: Option<Vec<usize>>,
    #[serde(default)]
    top_k: Vec<TopK>,
}

#[derive(Deserialize)]
struct Variant {
    zero_division: String,
    classes: String,
    labels: Vec<usize>,
    precision: Vec<f64>,
    recall: Vec<f64>,
    f1: Vec<f64>,
    support: Vec<u64>,
    #[serde(rename = "macro")]
    macro_avg: Avg,
    weighted: Avg,
    micro: Avg,
    report_digits_2: String,
    report_digits_4: String,
}

#[derive(Deserialize)]
struct Avg {
    precision: f64,
    recall: f64,
    f1: f64,
}

#[derive(Deserialize)]
struct TopK {
    k: usize,
    accuracy: f64,
}

#[derive(Deserialize)]
struct Percentiles {
    timings_ns: Vec<u64>,
    q: Vec<u32>,
    values_ns: Vec<f64>,
    mean_ns: f64,
}

fn fixture() -> Fixture {
    let json = include_str!("fixtures/sklearn_cases.json");
    serde_json::from_str(json).expect("fixture parses")
}

fn config(v: &Variant) -> MetricsConfig {
    MetricsConfig {
        zero_division: match v.zero_division.as_str() {
            "zero" => ZeroDivision::Zero,
            "one" => ZeroDivision::One,
            other => panic!("unknown zero_division {other}"),
        },
        classes: match v.classes.as_str() {
            "present" => ClassSelection::Present,
            "all" => ClassSelection::All,
            other => panic!("unknown classes {other}"),
        },
    }
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= TOL,
        "{what}: got {actual}, sklearn says {expected}"
    );
}

#[test]
fn fixture_covers_the_intended_cases() {
    let f = fixture();
    assert!(!f.sklearn_version.is_empty());
    let names: Vec<&str> = f.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "hand_3class",
            "never_predicted",
            "absent_and_extra",
            "single_true_class",
            "all_wrong",
            "mnist_like",
            "tied_scores",
            "perfect"
        ]
    );
    assert!(f.cases.iter().all(|c| c.variants.len() == 4));
}

#[test]
fn confusion_matrix_and_accuracy_match_sklearn() {
    for case in fixture().cases {
        let m = ConfusionMatrix::from_predictions(case.num_classes, &case.y_pred, &case.y_true)
            .unwrap();
        assert_eq!(m.counts(), case.confusion_matrix.concat(), "{}", case.name);
        assert_close(m.accuracy().unwrap(), case.accuracy, &case.name);
        assert_close(
            hdr_metrics::accuracy(&case.y_pred, &case.y_true).unwrap(),
            case.accuracy,
            &case.name,
        );
    }
}

#[test]
fn per_class_and_averages_match_sklearn() {
    for case in fixture().cases {
        let m = ConfusionMatrix::from_predictions(case.num_classes, &case.y_pred, &case.y_true)
            .unwrap();
        for v in &case.variants {
            let ctx = format!(
                "{} zero_division={} classes={}",
                case.name, v.zero_division, v.classes
            );
            let r = m.metrics(&config(v)).unwrap();
            let classes: Vec<usize> = r.per_class.iter().map(|c| c.class).collect();
            assert_eq!(classes, v.labels, "{ctx}");
            for (i, c) in r.per_class.iter().enumerate() {
                assert_close(
                    c.precision,
                    v.precision[i],
                    &format!("{ctx} precision[{i}]"),
                );
                assert_close(c.recall, v.recall[i], &format!("{ctx} recall[{i}]"));
                assert_close(c.f1, v.f1[i], &format!("{ctx} f1[{i}]"));
                assert_eq!(c.support, v.support[i], "{ctx} support[{i}]");
            }
            for (name, ours, theirs) in [
                ("macro", r.macro_avg, &v.macro_avg),
                ("weighted", r.weighted_avg, &v.weighted),
                ("micro", r.micro_avg, &v.micro),
            ] {
                assert_close(ours.precision, theirs.precision, &format!("{ctx} {name} P"));
                assert_close(ours.recall, theirs.recall, &format!("{ctx} {name} R"));
                assert_close(ours.f1, theirs.f1, &format!("{ctx} {name} F1"));
            }
        }
    }
}

#[test]
fn text_report_is_sklearn_classification_report() {
    for case in fixture().cases {
        let m = ConfusionMatrix::from_predictions(case.num_classes, &case.y_pred, &case.y_true)
            .unwrap();
        for v in &case.variants {
            let report = ClassificationReport::new("m", "s", &m, &config(v)).unwrap();
            for (digits, expected) in [(2, &v.report_digits_2), (4, &v.report_digits_4)] {
                let text = report.render_text_with(&RenderOptions {
                    digits,
                    confusion_matrix: false,
                    most_confused: 0,
                });
                let body = text
                    .split_once("\n\n")
                    .map(|(_title, body)| body)
                    .expect("title line, blank line, table");
                // The accuracy's interval follows the table (sklearn has none).
                let (body, interval) = body
                    .rsplit_once("\naccuracy ")
                    .expect("the accuracy's interval after the table");
                assert!(interval.contains("95% interval"), "{interval}");
                assert_eq!(
                    body,
                    integer_support(expected),
                    "{} zero_division={} classes={} digits={digits}",
                    case.name,
                    v.zero_division,
                    v.classes
                );
            }
        }
    }
}

/// sklearn (1.9.1 at least) prints the support column as `2.0` instead of `2` when no sample
/// at all is classified correctly (its support array then comes out as floats); counts are
/// integers here, so that one cosmetic quirk is undone before comparing. Only lines whose
/// last 9-character field is a whole float are touched, keeping the alignment.
fn integer_support(sklearn_text: &str) -> String {
    let mut out = String::new();
    for line in sklearn_text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let fixed = body
            .len()
            .checked_sub(9)
            .filter(|&cut| body.is_char_boundary(cut))
            .and_then(|cut| {
                let field = body[cut..].trim();
                let v: f64 = field.parse().ok()?;
                (field.contains('.') && v.fract() == 0.0 && v >= 0.0)
                    .then(|| format!("{}{:>9}", &body[..cut], v as u64))
            });
        out.push_str(fixed.as_deref().unwrap_or(body));
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[test]
fn integer_support_only_rewrites_float_supports() {
    let quirky = "           0       0.00      0.00      0.00       2.0\n\n    accuracy                           0.00       6.0\n";
    let clean = "           0       0.00      0.00      0.00         2\n\n    accuracy                           0.00         6\n";
    assert_eq!(integer_support(quirky), clean);
    assert_eq!(integer_support(clean), clean);
    let header = "              precision    recall  f1-score   support\n";
    assert_eq!(integer_support(header), header);
}

#[test]
fn scores_argmax_and_top_k_match_sklearn() {
    let mut checked = 0;
    for case in fixture().cases {
        let (Some(scores), Some(argmax)) = (&case.scores, &case.argmax) else {
            continue;
        };
        let k = case.num_classes;
        let flat: Vec<f32> = scores.concat();
        assert_eq!(argmax_rows(&flat, k).unwrap(), *argmax, "{}", case.name);
        for t in &case.top_k {
            let ours = top_k_accuracy(&flat, &case.y_true, k, t.k).unwrap();
            assert_close(ours, t.accuracy, &format!("{} top-{}", case.name, t.k));
        }

        // The evaluator, fed in uneven batches, must agree with the one-shot functions.
        let mut ev = Evaluator::new(&EvaluatorConfig {
            num_classes: k,
            top_k: case.top_k.iter().map(|t| t.k).collect(),
            ..EvaluatorConfig::default()
        })
        .unwrap();
        let n = case.y_true.len();
        let mut start = 0;
        for size in [1, 7, 64].into_iter().cycle() {
            if start >= n {
                break;
            }
            let end = (start + size).min(n);
            ev.add_batch(&case.y_true[start..end], &flat[start * k..end * k])
                .unwrap();
            start = end;
        }
        // y_pred is numpy's argmax of the scores, so the accuracy is sklearn's.
        assert_close(ev.accuracy().unwrap(), case.accuracy, &case.name);
        for (ours, theirs) in ev.top_k_accuracy().unwrap().iter().zip(&case.top_k) {
            assert_eq!(ours.k, theirs.k);
            assert_close(
                ours.accuracy,
                theirs.accuracy,
                &format!("{} evaluator top-{}", case.name, ours.k),
            );
        }
        let expected_wrong: Vec<usize> = (0..n)
            .filter(|&i| case.y_pred[i] != case.y_true[i])
            .collect();
        assert_eq!(ev.misclassified_indices(), expected_wrong, "{}", case.name);
        checked += 1;
    }
    assert_eq!(checked, 2, "cases with scores");
}

#[test]
fn latency_percentiles_match_numpy_linear() {
    let p = fixture().percentiles;
    let timings: Vec<Duration> = p
        .timings_ns
        .iter()
        .map(|&ns| Duration::from_nanos(ns))
        .collect();
    let s = LatencyStats::from_durations(&timings, 1).unwrap();
    let ours = [s.median, s.p90, s.p99];
    assert_eq!(p.q, [50, 90, 99]);
    for ((d, expected), q) in ours.iter().zip(&p.values_ns).zip(&p.q) {
        // Durations are whole nanoseconds: interpolated values are rounded.
        assert!(
            (d.as_nanos() as f64 - expected).abs() <= 0.5,
            "p{q}: got {d:?}, numpy says {expected} ns"
        );
    }
    assert!((s.mean.as_nanos() as f64 - p.mean_ns).abs() < 1.0);
    assert_eq!(s.min.as_nanos() as u64, *p.timings_ns.iter().min().unwrap());
    assert_eq!(s.max.as_nanos() as u64, *p.timings_ns.iter().max().unwrap());
}
