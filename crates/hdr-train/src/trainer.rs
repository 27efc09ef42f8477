//! The training loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use hdr_data::{Augment, BatchConfig, Dataset, Normalize};
use hdr_models::Classifier;
use serde::{Deserialize, Serialize};

use crate::ema::{Ema, EmaStatistics};
use crate::error::{Result, TrainError};
use crate::evaluate::{loss_and_accuracy, predict_logits};
use crate::history::{write_atomic, EpochRecord, History};
use crate::loss::{cross_entropy, distillation_loss};
use crate::optim::{is_buffer, Optimizer, OptimizerConfig};
use crate::schedule::LrSchedule;

/// Stop when the validation loss has not improved for `patience` epochs, and restore the weights
/// of the best epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without improvement tolerated.
    pub patience: usize,
    /// Smallest decrease of the validation loss that counts as an improvement.
    pub min_delta: f64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self {
            patience: 5,
            min_delta: 0.0,
        }
    }
}

/// Knowledge-distillation settings (used when [`fit`] is given a teacher).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// Softmax temperature T.
    pub temperature: f32,
    /// Weight of the soft (teacher) term; `1 - alpha` goes to the labels.
    pub alpha: f32,
}

impl Default for DistillConfig {
    /// T = 4, alpha = 0.5.
    fn default() -> Self {
        Self {
            temperature: 4.0,
            alpha: 0.5,
        }
    }
}

/// Where the teacher's knowledge comes from.
#[derive(Debug)]
pub enum Teacher<'a> {
    /// A model run on every (augmented) training batch in evaluation mode.
    Model(&'a dyn Classifier),
    /// Logits `[n_train, classes]` precomputed once on the un-augmented training set (see
    /// [`crate::teacher_logits`]); cheaper, and exact when augmentation is off.
    Logits(Tensor),
}

/// Everything a training run needs to know. Plain data: build it with struct-update syntax
/// from [`TrainConfig::default`].
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub lr: LrSchedule,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f32,
    /// Weight `w` of the auxiliary classifier's loss: total = main + w * auxiliary.
    pub aux_weight: f32,
    /// Early stopping on the validation loss, restoring the best weights.
    pub early_stopping: Option<EarlyStopping>,
    /// Decay of an exponential moving average of the weights ([`Ema`]), e.g. 0.999: when set,
    /// the average is what is validated, selected by early stopping and returned.
    pub ema: Option<f64>,
    /// Whether that average copies or averages batch-norm statistics.
    pub ema_statistics: EmaStatistics,
    /// Distillation settings, used when a teacher is given.
    pub distill: DistillConfig,
    /// Seed of shuffling, augmentation and dropout.
    pub seed: u64,
    /// On-the-fly augmentation of the training batches.
    pub augment: Option<Arc<dyn Augment>>,
    /// Input normalisation (the zoo's pretrained models use `[0, 1]`).
    pub normalize: Normalize,
    /// Batch size of validation passes.
    pub eval_batch_size: usize,
    /// Folder for the checkpoint, best weights and history; a run finding a checkpoint there resumes.
    pub run_dir: Option<PathBuf>,
    /// Stop once this epoch (from 1) is done, as if interrupted: the schedule still spans
    /// `epochs`, and a later call with the same `run_dir` resumes. For splitting long runs.
    pub stop_after_epoch: Option<usize>,
    /// Show progress bars.
    pub progress: bool,
    /// Device of the model.
    pub device: Device,
}

impl Default for TrainConfig {
    /// 10 epochs of batch 64, Adam at 1e-3 with cosine decay, no augmentation.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerConfig::default(),
            lr: LrSchedule::default(),
            label_smoothing: 0.0,
            aux_weight: 0.3,
            early_stopping: None,
            ema: None,
            ema_statistics: EmaStatistics::Copied,
            distill: DistillConfig::default(),
            seed: 0,
            augment: None,
            normalize: Normalize::UnitRange,
            eval_batch_size: 500,
            run_dir: None,
            stop_after_epoch: None,
            progress: true,
            device: Device::Cpu,
        }
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        let fail = |name, value: String, reason| {
            Err(TrainError::InvalidConfig {
                name,
                value,
                reason,
            })
        };
        if self.epochs == 0 {
            return fail("epochs", "0".into(), "must be at least 1");
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return fail("batch_size", "0".into(), "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return fail(
                "label_smoothing",
                self.label_smoothing.to_string(),
                "must be in [0, 1)",
            );
        }
        if self.aux_weight.is_nan() || self.aux_weight < 0.0 {
            return fail("aux_weight", self.aux_weight.to_string(), "must be >= 0");
        }
        if self.distill.temperature.is_nan()
            || self.distill.temperature <= 0.0
            || !(0.0..=1.0).contains(&self.distill.alpha)
        {
            return fail(
                "distill",
                format!("{:?}", self.distill),
                "needs temperature > 0 and alpha in [0, 1]",
            );
        }
        if let Some(d) = self.ema.filter(|d| !(*d > 0.0 && *d < 1.0)) {
            return fail("ema", d.to_string(), "the decay must be in (0, 1)");
        }
        self.optimizer.validate()?;
        self.lr.validate()
    }

    /// What a resumed run must share with the run that wrote the checkpoint.
    fn fingerprint(&self, model: &dyn Classifier, train_len: usize) -> String {
        let mut print = serde_json::json!({
            "model": model.config(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "train_len": train_len,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "augment": format!("{:?}", self.augment),
            "ema": self.ema,
        });
        // Only when not the default, so checkpoints written before the option still resume.
        if self.ema.is_some() && self.ema_statistics != EmaStatistics::Copied {
            print["ema_statistics"] = serde_json::json!(self.ema_statistics);
        }
        print.to_string()
    }
}

const CHECKPOINT: &str = "checkpoint.safetensors";
const BEST: &str = "best.safetensors";

/// Parameters and statistics of every variable, copied.
fn snapshot(vars: &VarMap) -> Result<Vec<(String, Tensor)>> {
    let data = lock(vars)?;
    let mut out: Vec<(String, Tensor)> = data
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn restore(vars: &VarMap, tensors: &[(String, Tensor)], source: &Path) -> Result<()> {
    let data = lock(vars)?;
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    for (k, v) in data.iter() {
        let t = by_name
            .get(k.as_str())
            .ok_or_else(|| TrainError::Checkpoint {
                path: source.into(),
                reason: format!("no tensor {k}"),
            })?;
        if t.dims() != v.dims() {
            return Err(TrainError::Checkpoint {
                path: source.into(),
                reason: format!(
                    "{k} has shape {:?}, the model needs {:?}",
                    t.dims(),
                    v.dims()
                ),
            });
        }
        v.set(&t.to_device(v.device())?)?;
    }
    Ok(())
}

fn lock(vars: &VarMap) -> Result<std::sync::MutexGuard<'_, HashMap<String, candle_core::Var>>> {
    vars.data().lock().map_err(|_| TrainError::InvalidConfig {
        name: "vars",
        value: "<poisoned>".into(),
        reason: "the variable map's lock is poisoned",
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointMeta {
    epochs_done: usize,
    optimizer_steps: u64,
    dropout_rng: u64,
    best_val_loss: Option<f64>,
    epochs_without_improvement: usize,
    history: History,
    fingerprint: String,
    #[serde(default)]
    ema_updates: u64,
}

fn save_checkpoint(
    dir: &Path,
    vars: &VarMap,
    opt: &Optimizer,
    ema: Option<&Ema>,
    meta: &CheckpointMeta,
) -> Result<()> {
    let path = dir.join(CHECKPOINT);
    let mut tensors: Vec<(String, Tensor)> = snapshot(vars)?
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    let (state, _) = opt.state()?;
    tensors.extend(state.into_iter().map(|(k, t)| (format!("optim.{k}"), t)));
    if let Some(ema) = ema {
        tensors.extend(
            ema.state()?
                .into_iter()
                .map(|(k, t)| (format!("ema.{k}"), t)),
        );
    }
    let meta_json = serde_json::to_string(meta).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let info = HashMap::from([("hdr-train.checkpoint".to_string(), meta_json)]);
    let bytes = safetensors::tensor::serialize(tensors, Some(info)).map_err(|e| {
        TrainError::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    write_atomic(&path, &bytes)
}

struct Resumed {
    meta: CheckpointMeta,
    model: Vec<(String, Tensor)>,
    optim: HashMap<String, Tensor>,
    ema: HashMap<String, Tensor>,
}

fn load_checkpoint(path: &Path) -> Result<Resumed> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: path.into(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("hdr-train.checkpoint"))
        .ok_or_else(|| bad("no hdr-train metadata".into()))?;
    let meta: CheckpointMeta = serde_json::from_str(meta_json).map_err(|e| bad(e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    let mut model = Vec::new();
    let mut optim = HashMap::new();
    let mut ema = HashMap::new();
    for (k, t) in tensors {
        if let Some(name) = k.strip_prefix("model.") {
            model.push((name.to_string(), t));
        } else if let Some(name) = k.strip_prefix("optim.") {
            optim.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix("ema.") {
            ema.insert(name.to_string(), t);
        }
    }
    Ok(Resumed {
        meta,
        model,
        optim,
        ema,
    })
}

fn progress_bar(show: bool, len: usize, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:28}] {pos}/{len} {msg} ({elapsed} < {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}

/// Trains `model` (whose variables are `vars`) on `train`, validating on `val` after every epoch.
///
/// Total loss per batch: cross-entropy of the main logits (or the distillation loss when a
/// `teacher` is given), plus `aux_weight` times the auxiliary head's cross-entropy when the model
/// returns auxiliary logits. The test set is never seen here. With `run_dir`, a checkpoint
/// (weights, optimiser state, epoch, random state) is written atomically after every epoch, and a
/// later call with the same settings resumes from it and ends exactly as an uninterrupted run.
pub fn fit(
    model: &dyn Classifier,
    vars: &VarMap,
    model_name: &str,
    train: &Dataset,
    val: &Dataset,
    cfg: &TrainConfig,
    teacher: Option<&Teacher<'_>>,
) -> Result<History> {
    cfg.validate()?;
    if let Some(Teacher::Logits(t)) = teacher {
        if t.dims().first() != Some(&train.len()) || t.rank() != 2 {
            return Err(TrainError::TeacherShape {
                found: t.dims().to_vec(),
                samples: train.len(),
                classes: 10,
            });
        }
    }
    let batch_cfg = BatchConfig {
        batch_size: cfg.batch_size,
        shuffle: true,
        drop_last: train.len() > cfg.batch_size,
        seed: cfg.seed,
        normalize: cfg.normalize,
        augment: cfg.augment.clone(),
    };
    let steps_per_epoch = train.batches(&batch_cfg, 0, &cfg.device)?.num_batches();
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut opt = Optimizer::new(&cfg.optimizer, vars)?;
    let mut ema = cfg
        .ema
        .map(|d| Ema::with_statistics(d, cfg.ema_statistics, vars))
        .transpose()?;
    let fingerprint = cfg.fingerprint(model, train.len());

    let mut history = History::default();
    let mut best: Option<(f64, Vec<(String, Tensor)>)> = None;
    let mut since_best = 0usize;
    let mut start_epoch = 0usize;
    hdr_models::init::seed(cfg.seed);

    if let Some(dir) = &cfg.run_dir {
        let ckpt = dir.join(CHECKPOINT);
        if ckpt.is_file() {
            let r = load_checkpoint(&ckpt)?;
            if r.meta.fingerprint != fingerprint {
                return Err(TrainError::Checkpoint {
                    path: ckpt,
                    reason: "written by a run with other settings (model, seed, batch size, data, optimiser, \
                             schedule, augmentation or moving average); use another run folder"
                        .into(),
                });
            }
            restore(vars, &r.model, &ckpt)?;
            opt.load_state(&r.optim, r.meta.optimizer_steps, &ckpt)?;
            if let Some(ema) = &mut ema {
                ema.load_state(&r.ema, r.meta.ema_updates, &ckpt)?;
            }
            hdr_models::init::set_rng_state(r.meta.dropout_rng);
            start_epoch = r.meta.epochs_done;
            since_best = r.meta.epochs_without_improvement;
            history = r.meta.history;
            if let Some(loss) = r.meta.best_val_loss {
                let best_path = dir.join(BEST);
                let loaded = hdr_models::load(&best_path, &Device::Cpu)?;
                best = Some((loss, snapshot(&loaded.vars)?));
            }
        }
    }

    let mut stopped = history.stopped_early;
    let last = cfg
        .stop_after_epoch
        .map_or(cfg.epochs, |e| e.min(cfg.epochs));
    for epoch in start_epoch..last {
        if stopped {
            break;
        }
        let started = Instant::now();
        let bar = progress_bar(cfg.progress, steps_per_epoch, epoch + 1, cfg.epochs);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = cfg.lr.base_lr;
        for (step, batch) in train
            .batches(&batch_cfg, epoch as u64, &cfg.device)?
            .enumerate()
        {
            let batch = batch?;
            // The whole step on rayon's pool: one thread hand-off instead of one per kernel.
            let step_result = hdr_models::init::in_pool(|| -> Result<(f32, Tensor)> {
                let out = model.forward_t(&batch.images, true)?;
                let mut loss = match teacher {
                    None => cross_entropy(&out.logits, &batch.labels, cfg.label_smoothing)?,
                    Some(t) => {
                        let t_logits = match t {
                            Teacher::Model(m) => m.forward(&batch.images)?.detach(),
                            Teacher::Logits(all) => {
                                let idx: Vec<u32> =
                                    batch.indices.iter().map(|&i| i as u32).collect();
                                let idx = Tensor::from_vec(idx, batch.indices.len(), all.device())?;
                                all.index_select(&idx, 0)?.to_device(&cfg.device)?
                            }
                        };
                        distillation_loss(
                            &out.logits,
                            &t_logits,
                            &batch.labels,
                            cfg.distill.temperature,
                            cfg.distill.alpha,
                            cfg.label_smoothing,
                        )?
                    }
                };
                if let Some(aux) = &out.aux_logits {
                    if cfg.aux_weight > 0.0 {
                        let aux_loss = cross_entropy(aux, &batch.labels, cfg.label_smoothing)?;
                        loss = (loss + (aux_loss * cfg.aux_weight as f64)?)?;
                    }
                }
                let value = loss.to_scalar::<f32>()?;
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        epoch,
                        step,
                        loss: value,
                    });
                }
                let grads = loss.backward()?;
                lr = cfg
                    .lr
                    .lr(epoch * steps_per_epoch + step, total_steps, steps_per_epoch);
                opt.step(&grads, lr)?;
                if let Some(ema) = &mut ema {
                    ema.update()?;
                }
                Ok((value, out.logits))
            });
            let (value, logits) = match step_result {
                Ok(r) => r,
                Err(e) => {
                    bar.abandon();
                    return Err(e);
                }
            };

            let b = batch.indices.len();
            loss_sum += value as f64 * b as f64;
            correct += logits
                .argmax(1)?
                .eq(&batch.labels)?
                .to_dtype(DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()? as usize;
            seen += b;
            bar.inc(1);
            if step % 10 == 0 || step + 1 == steps_per_epoch {
                let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}% {:.0} img/s",
                    loss_sum / seen as f64,
                    100.0 * correct as f64 / seen as f64,
                    rate
                ));
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) =
            loss_and_accuracy(model, val, cfg.eval_batch_size, cfg.normalize, &cfg.device)?;
        // From here to the end of the epoch the variables hold the average, if any: it is what
        // gets validated, selected and saved as the best weights.
        let ema_val = match &mut ema {
            Some(ema) => {
                ema.swap()?;
                Some(loss_and_accuracy(
                    model,
                    val,
                    cfg.eval_batch_size,
                    cfg.normalize,
                    &cfg.device,
                )?)
            }
            None => None,
        };
        let summary = epoch_summary(
            (
                loss_sum / seen.max(1) as f64,
                correct as f64 / seen.max(1) as f64,
            ),
            (val_loss, val_accuracy),
            ema_val,
        );
        if cfg.progress && bar.is_hidden() {
            // Not a terminal (a log file, CI): indicatif draws nothing, so one plain line per
            // epoch keeps the run's progress in the log.
            eprintln!(
                "epoch {}/{}: {summary} ({:.0} s)",
                epoch + 1,
                cfg.epochs,
                started.elapsed().as_secs_f64()
            );
        }
        bar.finish_with_message(summary);
        history.epochs.push(EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_accuracy,
            ema_val_loss: ema_val.map(|v| v.0),
            ema_val_accuracy: ema_val.map(|v| v.1),
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: seen as f64 / train_seconds.max(1e-9),
        });

        let min_delta = cfg.early_stopping.map_or(0.0, |e| e.min_delta);
        let selected = ema_val.map_or(val_loss, |v| v.0);
        let improved = best.as_ref().is_none_or(|(b, _)| selected < b - min_delta);
        if improved {
            best = Some((selected, snapshot(vars)?));
            history.best_epoch = Some(epoch + 1);
            since_best = 0;
            if let Some(dir) = &cfg.run_dir {
                hdr_models::save(&dir.join(BEST), model_name, &model.config(), vars)?;
            }
        } else {
            since_best += 1;
        }
        if let Some(ema) = &mut ema {
            // Back to the raw weights, which training (and the checkpoint) continue from.
            ema.swap()?;
        }
        if let Some(es) = cfg.early_stopping {
            if since_best > es.patience && epoch + 1 < cfg.epochs {
                stopped = true;
                history.stopped_early = true;
            }
        }
        if let Some(dir) = &cfg.run_dir {
            let meta = CheckpointMeta {
                epochs_done: epoch + 1,
                optimizer_steps: opt.steps(),
                dropout_rng: hdr_models::init::rng_state(),
                best_val_loss: best.as_ref().map(|b| b.0),
                epochs_without_improvement: since_best,
                history: history.clone(),
                fingerprint: fingerprint.clone(),
                ema_updates: ema.as_ref().map_or(0, |e| e.updates()),
            };
            save_checkpoint(dir, vars, &opt, ema.as_ref(), &meta)?;
            history.save(dir)?;
        }
    }

    let finished = stopped || history.epochs.len() >= cfg.epochs;
    if finished && cfg.early_stopping.is_some() {
        if let Some((_, weights)) = &best {
            restore(vars, weights, Path::new("<best weights>"))?;
        }
    } else if finished {
        if let Some(ema) = &mut ema {
            ema.swap()?;
        }
    }
    Ok(history)
}

/// Evaluation-mode logits of `teacher` on every training sample (un-augmented), for
/// [`Teacher::Logits`]; cached in `cache` (safetensors) when given, and read from it when present.
pub fn teacher_logits(
    teacher: &dyn Classifier,
    train: &Dataset,
    normalize: Normalize,
    cache: Option<&Path>,
    device: &Device,
) -> Result<Tensor> {
    if let Some(path) = cache.filter(|p| p.is_file()) {
        let mut t =
            candle_core::safetensors::load(path, device).map_err(|e| TrainError::Checkpoint {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let logits = t.remove("logits").ok_or_else(|| TrainError::Checkpoint {
            path: path.into(),
            reason: "no `logits` tensor".into(),
        })?;
        if logits.dims().first() != Some(&train.len()) {
            return Err(TrainError::TeacherShape {
                found: logits.dims().to_vec(),
                samples: train.len(),
                classes: 10,
            });
        }
        return Ok(logits);
    }
    let logits = predict_logits(teacher, train, 500, normalize, device)?;
    if let Some(path) = cache {
        let bytes = safetensors::tensor::serialize([("logits", &logits)], None).map_err(|e| {
            TrainError::Checkpoint {
                path: path.into(),
                reason: e.to_string(),
            }
        })?;
        write_atomic(path, &bytes)?;
    }
    Ok(logits)
}

/// The mean of several teachers' logits `[n, classes]` (see [`teacher_logits`]): an ensemble
/// teacher, usually more accurate than any of its members, at no cost to the student's training.
///
/// Errors with [`TrainError::TeacherShape`] when the members' shapes differ, and with
/// [`TrainError::InvalidConfig`] when there is no member.
pub fn ensemble_logits(members: &[Tensor]) -> Result<Tensor> {
    let Some(first) = members.first() else {
        return Err(TrainError::InvalidConfig {
            name: "teachers",
            value: "[]".into(),
            reason: "an ensemble needs at least one teacher",
        });
    };
    let mut sum = first.clone();
    for m in &members[1..] {
        if m.dims() != first.dims() {
            return Err(TrainError::TeacherShape {
                found: m.dims().to_vec(),
                samples: first.dim(0)?,
                classes: first.dims().get(1).copied().unwrap_or(0),
            });
        }
        sum = (sum + m)?;
    }
    Ok((sum / members.len() as f64)?)
}

/// Names of the trainable variables (batch-norm statistics excluded).
pub fn trainable(vars: &VarMap) -> Result<Vec<String>> {
    let mut names: Vec<String> = lock(vars)?
        .keys()
        .filter(|k| !is_buffer(k))
        .cloned()
        .collect();
    names.sort();
    Ok(names)
}

/// One epoch's line in the progress bar and the log: training loss and accuracy, then
/// validation loss and accuracy of the weights and, when kept, of their moving average
/// (accuracies as fractions).
fn epoch_summary(train: (f64, f64), val: (f64, f64), averaged: Option<(f64, f64)>) -> String {
    format!(
        "loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}%{}",
        train.0,
        100.0 * train.1,
        val.0,
        100.0 * val.1,
        averaged.map_or(String::new(), |(l, a)| format!(
            " | averaged {l:.4} {:.2}%",
            100.0 * a
        ))
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn epoch_lines_show_the_average_only_when_kept() {
        assert_eq!(
            epoch_summary((0.08061, 0.99614), (0.012, 0.9964), None),
            "loss 0.0806 acc 99.61% | val loss 0.0120 acc 99.64%"
        );
        assert_eq!(
            epoch_summary((3.0878, 0.8158), (0.2227, 0.959), Some((1.95884, 0.555))),
            "loss 3.0878 acc 81.58% | val loss 0.2227 acc 95.90% | averaged 1.9588 55.50%"
        );
    }

    use super::*;

    #[test]
    fn averaged_statistics_change_the_fingerprint_only_with_an_average() -> Result<()> {
        let vars = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let model = hdr_models::config("mlp1")?.build(vb)?;
        let print = |cfg: &TrainConfig| cfg.fingerprint(model.as_ref(), 100);
        let plain = TrainConfig::default();
        // Checkpoints written before the option existed carry no such key.
        assert!(!print(&plain).contains("ema_statistics"));
        let averaged_unused = TrainConfig {
            ema_statistics: EmaStatistics::Averaged,
            ..TrainConfig::default()
        };
        assert_eq!(print(&averaged_unused), print(&plain));
        let copied = TrainConfig {
            ema: Some(0.999),
            ..TrainConfig::default()
        };
        let averaged = TrainConfig {
            ema_statistics: EmaStatistics::Averaged,
            ..copied.clone()
        };
        assert!(!print(&copied).contains("ema_statistics"));
        assert_ne!(print(&averaged), print(&copied));
        Ok(())
    }

    #[test]
    fn an_ensemble_averages_its_members_and_checks_their_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?;
        let b = Tensor::new(&[[3f32, 0.0], [1.0, 8.0]], &dev)?;
        let mean = ensemble_logits(&[a.clone(), b])?;
        assert_eq!(mean.to_vec2::<f32>()?, vec![vec![2.0, 1.0], vec![2.0, 6.0]]);
        assert_eq!(
            ensemble_logits(std::slice::from_ref(&a))?.to_vec2::<f32>()?,
            a.to_vec2::<f32>()?
        );
        let odd = Tensor::zeros((3, 2), DType::F32, &dev)?;
        assert!(matches!(
            ensemble_logits(&[a, odd]),
            Err(TrainError::TeacherShape { .. })
        ));
        assert!(matches!(
            ensemble_logits(&[]),
            Err(TrainError::InvalidConfig { .. })
        ));
        Ok(())
    }
}
