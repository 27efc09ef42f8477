//! Magnitude pruning: sparsity per layer and globally, masks kept through fine-tuning.

mod common;

use hdr_compress::{
    fine_tune, inference_sparsity, magnitude, magnitude_for, prunable, prune_iteratively,
    sparsity_report, FineTuneConfig, Masks, PruneConfig, PruneSchedule, Scope, SoftTargets,
};
use hdr_data::Dataset;
use hdr_train::{DistillConfig, LrSchedule, Schedule};
use proptest::prelude::*;

fn tiny_dataset(n: usize) -> Dataset {
    let x = common::synthetic(n, 9)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let images: Vec<u8> = x.iter().map(|&v| (v * 255.0).round() as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::new(images, labels, 28, 28).unwrap()
}

#[test]
fn layer_wise_pruning_hits_the_target_in_every_layer() {
    let (_, vars) = common::model("lenet5", 1);
    let masks = magnitude(&vars, 0.9, Scope::LayerWise).unwrap();
    masks.apply(&vars).unwrap();
    let report = sparsity_report(&vars).unwrap();
    assert_eq!(report.len(), prunable(&vars).unwrap().len());
    assert_eq!(report.len(), 5); // c1, c3, f5, f6, out
    for l in &report {
        assert!(
            (l.sparsity() - 0.9).abs() < 0.02,
            "{}: {}",
            l.name,
            l.sparsity()
        );
        assert!(l.sparse_bytes < l.dense_bytes);
    }
    assert!((masks.sparsity().unwrap() - 0.9).abs() < 0.01);
}

#[test]
fn global_pruning_hits_the_target_overall_and_spares_no_layer_order() {
    let (_, vars) = common::model("lenet5", 2);
    let masks = magnitude(&vars, 0.8, Scope::Global).unwrap();
    let s = masks.sparsity().unwrap();
    assert!((s - 0.8).abs() < 0.01, "global sparsity {s}");
    masks.apply(&vars).unwrap();
    let report = sparsity_report(&vars).unwrap();
    let (z, p) = report
        .iter()
        .fold((0, 0), |(z, p), l| (z + l.zeros, p + l.params));
    assert!((z as f64 / p as f64 - 0.8).abs() < 0.01);
    assert!(magnitude(&vars, 1.0, Scope::Global).is_err());
    assert!(magnitude(&vars, -0.1, Scope::LayerWise).is_err());
}

proptest! {
    #[test]
    fn prune_schedules_grow_to_the_target(target in 0.0f32..0.99, steps in 1usize..30) {
        for schedule in [PruneSchedule::Geometric, PruneSchedule::Cubic] {
            let s: Vec<f32> = (1..=steps).map(|i| schedule.sparsity(target, i, steps)).collect();
            prop_assert!((s[steps - 1] - target).abs() < 1e-6, "{schedule:?}: {s:?}");
            prop_assert!(s.windows(2).all(|w| w[0] <= w[1]), "{schedule:?}: {s:?}");
            prop_assert!(s.iter().all(|&x| (0.0..=target + 1e-6).contains(&x)));
        }
    }
}

#[test]
fn the_cubic_schedule_cuts_less_near_the_end() {
    let cut = |sched: PruneSchedule, step: usize| {
        // Fraction of the still-kept weights that round `step` removes.
        let before = 1.0 - sched.sparsity(0.9, step - 1, 10);
        let after = 1.0 - sched.sparsity(0.9, step, 10);
        1.0 - after / before
    };
    assert!(cut(PruneSchedule::Cubic, 1) > cut(PruneSchedule::Geometric, 1));
    assert!(cut(PruneSchedule::Cubic, 10) < cut(PruneSchedule::Geometric, 10) / 10.0);
    // Geometric: the same relative cut every round.
    assert!((cut(PruneSchedule::Geometric, 1) - cut(PruneSchedule::Geometric, 10)).abs() < 1e-5);
}

fn kept(masks: &Masks, name: &str) -> Vec<f32> {
    masks
        .get(name)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn lamp_pruning_ignores_each_layers_scale_and_spares_every_layer() {
    let (_, vars) = common::model("lenet5", 5);
    let names = prunable(&vars).unwrap();
    let before = magnitude(&vars, 0.95, Scope::Lamp).unwrap();
    assert!((before.sparsity().unwrap() - 0.95).abs() < 0.01);
    for n in &names {
        assert!(kept(&before, n).contains(&1.0), "{n} lost every weight");
    }
    // Scaling one layer (as batch norm after it allows) moves the global threshold's masks
    // but not LAMP's.
    let global = magnitude(&vars, 0.95, Scope::Global).unwrap();
    {
        let data = vars.data().lock().unwrap();
        let w = &data["c1.weight"];
        w.set(&(w.as_tensor() * 100.0).unwrap()).unwrap();
    }
    let after = magnitude(&vars, 0.95, Scope::Lamp).unwrap();
    for n in &names {
        assert_eq!(kept(&before, n), kept(&after, n), "{n}");
    }
    let global_after = magnitude(&vars, 0.95, Scope::Global).unwrap();
    assert_ne!(kept(&global, "c1.weight"), kept(&global_after, "c1.weight"));
}

#[test]
fn training_only_heads_are_removed_and_left_out_of_the_target() {
    let (model, vars) = common::model("mobilenet_hdr", 6);
    let read = model.graph().parameters();
    let masks = magnitude_for(model.as_ref(), &vars, 0.9, Scope::Global).unwrap();
    let (mut kept_n, mut total) = (0usize, 0usize);
    let mut heads = 0;
    for n in prunable(&vars).unwrap() {
        let k = kept(&masks, &n);
        if read.contains(&n) {
            kept_n += k.iter().filter(|&&x| x == 1.0).count();
            total += k.len();
        } else {
            assert!(n.starts_with("aux."), "{n}");
            assert!(k.iter().all(|&x| x == 0.0), "{n} is not removed");
            heads += 1;
        }
    }
    assert_eq!(heads, 2); // the auxiliary convolution and linear layer
    let s = 1.0 - kept_n as f64 / total as f64;
    assert!((s - 0.9).abs() < 0.01, "inference sparsity {s}");
    // The reported sparsity is the inference weights', the removed head left out.
    assert!((masks.sparsity().unwrap() - s).abs() < 1e-9);
}

#[test]
fn iterative_pruning_reaches_the_target_on_the_inference_weights() {
    let (model, vars) = common::model("mobilenet_hdr", 7);
    let cfg = FineTuneConfig {
        batch_size: 16,
        ..FineTuneConfig::default()
    };
    let prune = PruneConfig {
        target: 0.8,
        scope: Scope::Lamp,
        steps: 2,
        schedule: PruneSchedule::Cubic,
    };
    let data = tiny_dataset(32);
    let masks = prune_iteratively(model.as_ref(), &vars, &prune, &data, &cfg).unwrap();
    assert!((masks.sparsity().unwrap() - 0.8).abs() < 0.01);
    let report = sparsity_report(&vars).unwrap();
    for l in &report {
        if l.name.starts_with("aux.") {
            assert_eq!(l.zeros, l.params, "{}", l.name);
        }
    }
    let (z, p) = report
        .iter()
        .filter(|l| !l.name.starts_with("aux."))
        .fold((0, 0), |(z, p), l| (z + l.zeros, p + l.params));
    assert!((z as f64 / p as f64 - 0.8).abs() < 0.01);
    // Measured on the weights, as for a pruned model read back from its file.
    let measured = inference_sparsity(model.as_ref(), &vars).unwrap();
    assert_eq!(measured, z as f64 / p as f64);
    // A target out of range is refused before any training.
    for target in [1.0, -0.1, f32::NAN] {
        let bad = PruneConfig { target, ..prune };
        assert!(prune_iteratively(model.as_ref(), &vars, &bad, &data, &cfg).is_err());
    }
}

#[test]
fn lamp_removes_weights_already_zero_first() {
    let (_, vars) = common::model("lenet5", 8);
    {
        let data = vars.data().lock().unwrap();
        let w = &data["f5.weight"];
        let mut v = w
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        v[..500].iter_mut().for_each(|x| *x = 0.0);
        let t = candle_core::Tensor::from_vec(v, w.shape(), w.device()).unwrap();
        w.set(&t).unwrap();
    }
    let masks = magnitude(&vars, 0.01, Scope::Lamp).unwrap();
    let f5 = kept(&masks, "f5.weight");
    assert!(f5[..500].iter().all(|&k| k == 0.0));
    // 1% of 61,470 weights is 614: the 500 zeros and 114 others.
    let removed: usize = prunable(&vars)
        .unwrap()
        .iter()
        .map(|n| kept(&masks, n).iter().filter(|&&k| k == 0.0).count())
        .sum();
    assert_eq!(removed, 614);
}

#[test]
fn pruned_weights_stay_zero_through_fine_tuning() {
    masks_survive_fine_tuning(None);
}

#[test]
fn pruned_weights_stay_zero_in_the_moving_average() {
    masks_survive_fine_tuning(Some(0.9));
}

fn masks_survive_fine_tuning(ema: Option<f64>) {
    let (model, vars) = common::model("lenet5", 3);
    let masks = magnitude(&vars, 0.7, Scope::LayerWise).unwrap();
    let before = prunable(&vars).unwrap();
    let total = |name: &str| {
        let data = vars.data().lock().unwrap();
        data[name]
            .as_tensor()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    masks.apply(&vars).unwrap();
    let sums: Vec<f32> = before.iter().map(|n| total(n)).collect();
    let cfg = FineTuneConfig {
        batch_size: 32,
        ema,
        ..FineTuneConfig::default()
    };
    let loss = fine_tune(model.as_ref(), &vars, &masks, &tiny_dataset(128), &cfg).unwrap();
    assert!(loss.is_finite());
    let after: Vec<f32> = before.iter().map(|n| total(n)).collect();
    let data = vars.data().lock().unwrap();
    for name in before {
        let w = data[&name].as_tensor();
        let m = masks.get(&name).unwrap();
        // Every masked weight is exactly zero ...
        let leaked = (w * (1.0 - m).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(leaked, 0.0, "{name}");
    }
    // ... while the kept ones trained.
    assert!(sums.iter().zip(&after).any(|(a, b)| a != b));
}

#[test]
fn fine_tuning_rejects_bad_settings() {
    let (model, vars) = common::model("lenet5", 4);
    let masks = magnitude(&vars, 0.5, Scope::Global).unwrap();
    let data = tiny_dataset(32);
    let bad = [
        FineTuneConfig {
            epochs: 0,
            ..FineTuneConfig::default()
        },
        FineTuneConfig {
            batch_size: 0,
            ..FineTuneConfig::default()
        },
        FineTuneConfig::with_lr(0.0),
        FineTuneConfig {
            ema: Some(1.0),
            ..FineTuneConfig::default()
        },
        FineTuneConfig::with_lr(f64::NAN),
        // Teacher logits for 31 samples of a 32-sample set.
        FineTuneConfig {
            teacher: Some(soft_targets(&shifted_logits(31), 1.0, 0.5)),
            ..FineTuneConfig::default()
        },
        FineTuneConfig {
            teacher: Some(soft_targets(&shifted_logits(32), 1.0, 1.5)),
            ..FineTuneConfig::default()
        },
        FineTuneConfig {
            teacher: Some(soft_targets(&shifted_logits(32), 0.0, 0.5)),
            ..FineTuneConfig::default()
        },
        FineTuneConfig {
            lr: LrSchedule {
                schedule: Schedule::Cosine { min_lr: -1e-5 },
                ..LrSchedule::default()
            },
            ..FineTuneConfig::default()
        },
    ];
    for cfg in bad {
        assert!(
            fine_tune(model.as_ref(), &vars, &masks, &data, &cfg).is_err(),
            "{cfg:?}"
        );
    }
    // The defaults: the zoo's augmentation, and a rate decaying to a hundredth.
    let d = FineTuneConfig::with_lr(2e-3);
    assert!(d.augment.is_some());
    assert_eq!(d.lr.base_lr, 2e-3);
    assert!((d.lr.lr(0, 100, 10) - 2e-3).abs() < 1e-12);
    assert!((d.lr.lr(100, 100, 10) - 2e-5).abs() < 1e-12);
}

/// Teacher logits for `tiny_dataset(n)` that put sample `i` in class `(i + 1) % 10`, never its
/// label `i % 10`.
fn shifted_logits(n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|i| (0..10).map(move |c| if c == (i + 1) % 10 { 8.0 } else { 0.0 }))
        .collect()
}

fn soft_targets(logits: &[f32], temperature: f32, alpha: f32) -> SoftTargets {
    let n = logits.len() / 10;
    SoftTargets {
        logits: candle_core::Tensor::from_slice(logits, (n, 10), &candle_core::Device::Cpu)
            .unwrap(),
        distill: DistillConfig { temperature, alpha },
    }
}

#[test]
fn fine_tuning_follows_the_teacher_it_is_given() {
    // The teacher disagrees with every label. With alpha = 1 the labels carry no weight and the
    // model must move towards the teacher's classes; with alpha = 0, towards the labels.
    let n = 64;
    let data = tiny_dataset(n);
    let x = common::synthetic(n, 9);
    let mean_prob = |model: &dyn hdr_models::Classifier, shift: usize| -> f32 {
        let p = candle_nn::ops::softmax_last_dim(&model.forward(&x).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        (0..n).map(|i| p[i][(i + shift) % 10]).sum::<f32>() / n as f32
    };
    // Mean probability of the teacher's classes and of the labels after fine-tuning.
    let tune = |alpha: f32| -> (f32, f32) {
        let (model, vars) = common::model("lenet5", 5);
        let masks = magnitude(&vars, 0.5, Scope::Global).unwrap();
        let cfg = FineTuneConfig {
            epochs: 12,
            batch_size: 16,
            augment: None,
            teacher: Some(soft_targets(&shifted_logits(n), 1.0, alpha)),
            ..FineTuneConfig::with_lr(3e-3)
        };
        fine_tune(model.as_ref(), &vars, &masks, &data, &cfg).unwrap();
        (mean_prob(model.as_ref(), 1), mean_prob(model.as_ref(), 0))
    };
    let (teacher, labels) = tune(1.0);
    assert!(
        teacher > 0.25 && teacher > 3.0 * labels,
        "alpha 1: teacher's classes {teacher}, labels {labels}"
    );
    let (teacher, labels) = tune(0.0);
    assert!(
        labels > 0.25 && labels > 3.0 * teacher,
        "alpha 0: teacher's classes {teacher}, labels {labels}"
    );
}
