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
/// the validation loss. The models with batch norm take a higher peak learning rate.
pub fn recipe(model: &str, epochs: Option<usize>) -> TrainConfig {
    let (default_epochs, lr, weight_decay) = match model {
        "mlp1" | "mlp2" | "mlp3" => (30, 1e-3, 0.0),
        "lenet5" | "lenet5_classic" => (20, 2e-3, 0.0),
        _ => (15, 3e-3, 1e-4),
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
        early_stopping: Some(EarlyStopping {
            patience: 4,
            min_delta: 0.0,
        }),
        augment: Some(Arc::new(RandomAffine::default())),
        ..TrainConfig::default()
    }
}
