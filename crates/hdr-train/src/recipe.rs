//! The study's training settings: one recipe per registered model, chosen on the validation
//! split (never the test set).

use std::sync::Arc;

use hdr_data::augment::RandomAffine;

use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::schedule::{LrSchedule, Schedule};
use crate::trainer::{EarlyStopping, TrainConfig};

/// Training settings of the comparative study for the registered model `model`, with `epochs`
/// epochs (`None`: the study's number for that model).
///
/// All models: Adam (the paper's optimiser), batch 128, one-cycle learning rate, random affine
/// augmentation (rotation, translation, scaling: the paper's), early stopping with patience 4 on
/// the validation loss. The models with batch norm take a much higher peak learning rate (AdamW,
/// weight decay 1e-4): behind batch norm a convolution's output does not depend on its weights'
/// scale, so Adam's fixed-size steps matter only relative to it. Chosen on the validation split,
/// one epoch on 10-15k training images, peak 3e-3 / 1e-2 / 3e-2: 1e-2 was best for ResNet,
/// DenseNet and MobileNet (MobileNet 86.7% vs 73.5% at 3e-3), and MobileNet-HDR kept improving
/// up to 4e-2 (95.7% at 2e-2, 82.3% at 3e-3), so it takes 2e-2.
///
/// MobileNet-HDR keeps a moving average of its weights (decay 0.999, [`crate::Ema`]): distilled
/// from the ResNet and DenseNet together (`compare --teacher resnet,densenet`), its averaged
/// weights reached 99.60-99.62% on the validation split over the last three epochs, against
/// 99.54-99.56% for the raw weights distilled from the ResNet alone.
///
/// Epochs are budgeted so that the whole study trains in under an hour on two cores: the
/// MobileNets, still improving at their last epoch in shorter runs, get the most (MobileNet:
/// validation 99.20% after 7 epochs, 99.40% after 9; MobileNet-HDR: 99.50% after 8, 99.56% after
/// 10, and no better after 14); the MLPs, which gain little after 15, the least.
pub fn recipe(model: &str, epochs: Option<usize>) -> TrainConfig {
    let (default_epochs, lr, weight_decay) = match model {
        "mlp1" | "mlp2" | "mlp3" => (15, 1e-3, 0.0),
        "lenet5" | "lenet5_classic" => (20, 2e-3, 0.0),
        "mobilenet_hdr" => (10, 2e-2, 1e-4),
        "mobilenet" => (9, 1e-2, 1e-4),
        "wide_resnet" => (3, 1e-2, 1e-4),
        _ => (5, 1e-2, 1e-4),
    };
    TrainConfig {
        epochs: epochs.unwrap_or(default_epochs),
        batch_size: 128,
        optimizer: OptimizerConfig {
            kind: if weight_decay > 0.0 {
                OptimizerKind::AdamW
            } else {
                OptimizerKind::Adam
            },
            weight_decay,
            ..OptimizerConfig::default()
        },
        lr: LrSchedule {
            base_lr: lr,
            schedule: Schedule::OneCycle {
                pct_start: 0.2,
                div_factor: 20.0,
                final_div: 200.0,
            },
            warmup_steps: 0,
        },
        label_smoothing: 0.0,
        aux_weight: 0.3,
        ema: (model == "mobilenet_hdr").then_some(0.999),
        early_stopping: Some(EarlyStopping {
            patience: 4,
            min_delta: 0.0,
        }),
        augment: Some(Arc::new(RandomAffine::default())),
        ..TrainConfig::default()
    }
}

/// The quickstart's settings: [`recipe`] for `model` over `epochs` epochs, at batch 64 and
/// without the moving average of the weights.
///
/// In a run of a few minutes the weights still move fast at its end, so an average of its last
/// few hundred steps (the decay ramps up to 0.995 by the 1,718th step) trails the weights it
/// averages, and twice as many (smaller) steps pay more than the study's batch of 128. Chosen on
/// the validation split with MobileNet-HDR over 2 epochs (`cargo run --release --example
/// quickstart -- --epochs 2 --batch-size N`, 2026-12-07, AMD EPYC): batch 128 reached 99.24% raw
/// and 99.26% averaged in 221 s, batch 64 99.44% raw and 99.36% averaged in 235 s
/// (docs/RESULTS.md).
pub fn quick_recipe(model: &str, epochs: usize) -> TrainConfig {
    TrainConfig {
        batch_size: 64,
        ema: None,
        ..recipe(model, Some(epochs))
    }
}

#[cfg(test)]
mod tests {
    use super::{quick_recipe, recipe};

    #[test]
    fn the_quickstart_takes_the_study_recipe_at_batch_64_without_the_average() {
        let study = recipe("mobilenet_hdr", None);
        assert_eq!(
            (study.epochs, study.batch_size, study.ema),
            (10, 128, Some(0.999))
        );
        let quick = quick_recipe("mobilenet_hdr", 2);
        assert_eq!((quick.epochs, quick.batch_size, quick.ema), (2, 64, None));
        // Everything else is the study's.
        assert_eq!(quick.lr.base_lr, study.lr.base_lr);
        assert_eq!(quick.optimizer.kind, study.optimizer.kind);
        assert_eq!(quick.optimizer.weight_decay, study.optimizer.weight_decay);
        assert_eq!(quick.aux_weight, study.aux_weight);
        assert!(quick.augment.is_some());
    }

    #[test]
    fn models_without_batch_norm_take_adam_without_weight_decay() {
        for model in ["mlp1", "mlp3", "lenet5"] {
            let cfg = recipe(model, None);
            assert_eq!(cfg.optimizer.weight_decay, 0.0, "{model}");
            assert_eq!(cfg.optimizer.kind, crate::OptimizerKind::Adam, "{model}");
        }
        assert_eq!(recipe("resnet", Some(3)).epochs, 3);
        assert_eq!(
            recipe("densenet", None).optimizer.kind,
            crate::OptimizerKind::AdamW
        );
    }
}
