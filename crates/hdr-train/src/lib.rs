//! Training for the `hdr` model zoo, as the paper's study needs it, and beyond.
//!
//! - [`fit`]: trains a [`Classifier`](hdr_models::Classifier) on a training split with a
//!   validation split held out, reporting per-epoch train/validation loss and accuracy
//!   ([`History`], saved as CSV and JSON); [`EarlyStopping`] restores the best weights.
//! - [`Optimizer`]: Adam (the paper's), AdamW, SGD with momentum; weight decay, gradient clipping.
//! - [`LrSchedule`]: constant, step, cosine and one-cycle, with warm-up.
//! - Auxiliary loss (`aux_weight`) and knowledge distillation ([`Teacher`], [`DistillConfig`],
//!   [`distillation_loss`], [`ensemble_logits`] for several teachers, [`TeacherSource`] to build
//!   one from trained models); label smoothing.
//! - [`Ema`]: a moving average of the weights, validated and kept instead of the raw weights
//!   ([`TrainConfig::ema`], batch-norm statistics copied or averaged: [`EmaStatistics`]).
//! - [`recipe`]: the study's settings for each registered model ([`quick_recipe`]: the
//!   quickstart's few-minute variant); [`train_and_evaluate`]: one
//!   entry of the comparative study, from configuration to test report.
//! - Resumable, atomic checkpoints in [`TrainConfig::run_dir`]; same seed, same result.
//! - [`evaluate`]: the `hdr-metrics` classification report; [`measure_efficiency`]: latency,
//!   size and peak memory.
//!
//! Training steps run on rayon's worker threads; on Linux/glibc, a training program that calls
//! `hdr_ops::single_allocator_arena()` first thing in `main` (as the workspace's examples do)
//! keeps one allocator arena instead of one per worker, about half the peak memory.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use candle_nn::{VarBuilder, VarMap};
//! use hdr_data::{Mnist, SplitConfig};
//! use hdr_train::{fit, TrainConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mnist = Mnist::load()?;
//! let (train, val) = mnist.train.split(&SplitConfig::default())?;
//! let vars = VarMap::new();
//! let model = hdr_models::create("lenet5", VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
//! hdr_models::init::init(&vars, 0)?;
//! let history = fit(model.as_ref(), &vars, "lenet5", &train, &val, &TrainConfig::default(), None)?;
//! println!("best validation accuracy: {:?}", history.best().map(|e| e.val_accuracy));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod ema;
mod error;
mod evaluate;
mod history;
mod loss;
mod optim;
mod recipe;
mod schedule;
mod study;
mod teacher;
mod trainer;

pub use ema::{Ema, EmaStatistics};
pub use error::{Result, TrainError};
pub use evaluate::{evaluate, loss_and_accuracy, measure_efficiency, predict_logits};
pub use history::{EpochRecord, History};
pub use loss::{cross_entropy, distillation_loss};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use recipe::{quick_recipe, recipe};
pub use schedule::{LrSchedule, Schedule};
pub use study::{
    results_markdown, study_table, train_and_evaluate, training_cost_markdown, utc_date_today,
    write_results_section, Splits, StudyData, StudyOutcome,
};
pub use teacher::TeacherSource;
pub use trainer::{
    ensemble_logits, fit, teacher_logits, trainable, DistillConfig, EarlyStopping, Teacher,
    TrainConfig,
};
