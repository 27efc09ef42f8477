//! Unstructured magnitude pruning (Han et al. 2015): masks on convolution and linear weights,
//! kept at zero through fine-tuning, and a per-layer sparsity report.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use hdr_data::{Augment, BatchConfig, Dataset, Normalize, RandomAffine};
use hdr_models::Classifier;
use hdr_train::{
    cross_entropy, distillation_loss, DistillConfig, Ema, LrSchedule, Optimizer, OptimizerConfig,
    Schedule,
};

use crate::error::{CompressError, Result};

/// Which weights compete for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every layer loses the same fraction of its weights.
    #[default]
    LayerWise,
    /// One magnitude threshold over all layers: layers with many small weights lose more.
    Global,
    /// One threshold over all layers on layer-adaptive magnitude scores (LAMP, Lee et al.
    /// 2021): with a layer's weights sorted by magnitude, a weight's square over the sum of
    /// the squares of itself and the weights after it (equal magnitudes are ordered
    /// arbitrarily, as in the paper's code). The scores do not change when a layer's weights
    /// are scaled, so layers followed by batch norm (whose weight scale means nothing) compete
    /// fairly. A layer's largest weight scores 1, so every layer with a non-zero weight keeps
    /// one unless nearly everything is removed.
    Lamp,
}

/// 0/1 masks by parameter name (1 keeps a weight).
#[derive(Debug, Clone, Default)]
pub struct Masks {
    masks: BTreeMap<String, Tensor>,
    /// Training-only weights removed whole ([`magnitude_for`]): masked, but not part of the
    /// pruned model's sparsity.
    removed: std::collections::BTreeSet<String>,
}

pub(crate) fn lock(
    vars: &VarMap,
) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, candle_core::Var>>> {
    vars.data()
        .lock()
        .map_err(|_| CompressError::InvalidConfig {
            name: "vars",
            value: "poisoned lock".into(),
            reason: "a thread panicked while holding the variable map",
        })
}

/// Names of the prunable parameters: convolution and linear weights (`*.weight` of rank >= 2;
/// batch-norm scales and biases stay dense).
pub fn prunable(vars: &VarMap) -> Result<Vec<String>> {
    let data = lock(vars)?;
    let mut names: Vec<String> = data
        .iter()
        .filter(|(k, v)| k.ends_with(".weight") && v.as_tensor().rank() >= 2)
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    Ok(names)
}

/// The `k`-th smallest magnitude (0-based) of `xs`.
fn kth(mut xs: Vec<f32>, k: usize) -> f32 {
    let k = k.min(xs.len().saturating_sub(1));
    *xs.select_nth_unstable_by(k, f32::total_cmp).1
}

/// Masks removing the fraction `sparsity` (in `[0, 1)`) of the prunable weights ([`prunable`])
/// with the smallest magnitudes (or LAMP scores), per layer or over all layers ([`Scope`]).
/// Weights already zero count as removed first.
pub fn magnitude(vars: &VarMap, sparsity: f32, scope: Scope) -> Result<Masks> {
    masks_over(vars, prunable(vars)?, &[], sparsity, scope)
}

/// [`magnitude`] for a model: only the weights its inference graph reads compete for the
/// `sparsity` target; prunable weights used in training only (an auxiliary classifier) get
/// all-zero masks, since the pruned model never runs them (so a pruned model saved and
/// trained on with its auxiliary loss starts that head from zero).
pub fn magnitude_for(
    model: &dyn Classifier,
    vars: &VarMap,
    sparsity: f32,
    scope: Scope,
) -> Result<Masks> {
    let read: std::collections::HashSet<String> = model.graph().parameters().into_iter().collect();
    let (inference, training_only): (Vec<String>, Vec<String>) =
        prunable(vars)?.into_iter().partition(|n| read.contains(n));
    if inference.is_empty() && !training_only.is_empty() {
        // Names that do not match would otherwise zero the whole model.
        return Err(CompressError::InvalidConfig {
            name: "model",
            value: format!("{} prunable weights", training_only.len()),
            reason: "its inference graph reads none of its variables' weights",
        });
    }
    masks_over(vars, inference, &training_only, sparsity, scope)
}

/// Per-weight scores of `scope` for one layer's magnitudes: the magnitudes themselves, or
/// their LAMP scores.
fn scores(mags: &[f32], scope: Scope) -> Vec<f32> {
    if scope != Scope::Lamp {
        return mags.to_vec();
    }
    let mut order: Vec<usize> = (0..mags.len()).collect();
    order.sort_unstable_by(|&a, &b| mags[a].total_cmp(&mags[b]));
    let mut out = vec![0f32; mags.len()];
    let mut suffix = 0f64;
    for &i in order.iter().rev() {
        let sq = mags[i] as f64 * mags[i] as f64;
        suffix += sq;
        out[i] = if suffix > 0.0 {
            (sq / suffix) as f32
        } else {
            0.0
        };
    }
    out
}

fn masks_over(
    vars: &VarMap,
    names: Vec<String>,
    removed: &[String],
    sparsity: f32,
    scope: Scope,
) -> Result<Masks> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(CompressError::InvalidConfig {
            name: "sparsity",
            value: sparsity.to_string(),
            reason: "must be in [0, 1)",
        });
    }
    let data = lock(vars)?;
    let mut layers: Vec<(String, Vec<f32>, Tensor)> = Vec::new();
    for n in names {
        let t = data[&n].as_tensor().clone();
        let v = t.abs()?.flatten_all()?.to_vec1::<f32>()?;
        layers.push((n, scores(&v, scope), t));
    }
    let mut masks = BTreeMap::new();
    for n in removed {
        masks.insert(n.clone(), data[n].as_tensor().zeros_like()?);
    }
    drop(data);
    let threshold = |xs: Vec<f32>| {
        let k = (xs.len() as f64 * sparsity as f64).floor() as usize;
        if k == 0 {
            -1.0
        } else {
            kth(xs, k - 1)
        }
    };
    let global = match scope {
        Scope::Global | Scope::Lamp => Some(threshold(
            layers.iter().flat_map(|m| m.1.iter().copied()).collect(),
        )),
        Scope::LayerWise => None,
    };
    for (name, v, t) in layers {
        let threshold = global.unwrap_or_else(|| threshold(v.clone()));
        // Keep strictly larger scores; ties at the threshold go (at most a few extra).
        let keep: Vec<f32> = v.iter().map(|&m| (m > threshold) as u8 as f32).collect();
        masks.insert(name, Tensor::from_vec(keep, t.shape(), t.device())?);
    }
    Ok(Masks {
        masks,
        removed: removed.iter().cloned().collect(),
    })
}

impl Masks {
    /// Zeroes the masked weights of `vars` (after each optimiser step, to keep them pruned).
    pub fn apply(&self, vars: &VarMap) -> Result<()> {
        let data = lock(vars)?;
        for (name, m) in &self.masks {
            let var = data
                .get(name)
                .ok_or_else(|| CompressError::MissingParameter { name: name.clone() })?;
            var.set(&(var.as_tensor() * m)?)?;
        }
        Ok(())
    }

    /// Fraction of masked (removed) weights over the masked layers, training-only weights
    /// removed whole ([`magnitude_for`]) left out.
    pub fn sparsity(&self) -> Result<f64> {
        let (mut zeros, mut total) = (0f64, 0f64);
        for (_, m) in self
            .masks
            .iter()
            .filter(|(n, _)| !self.removed.contains(*n))
        {
            total += m.elem_count() as f64;
            zeros += m.elem_count() as f64 - m.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(if total == 0.0 { 0.0 } else { zeros / total })
    }

    /// The mask of one parameter.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.masks.get(name)
    }

    /// Names of the masked parameters.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.masks.keys().map(String::as_str)
    }
}

/// Sparsity and size of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSparsity {
    /// Parameter name.
    pub name: String,
    /// Elements.
    pub params: usize,
    /// Elements equal to zero.
    pub zeros: usize,
    /// Bytes as dense f32.
    pub dense_bytes: usize,
    /// Bytes in a compressed sparse form: f32 value and u32 index per non-zero.
    pub sparse_bytes: usize,
}

impl LayerSparsity {
    /// `zeros / params`.
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.params.max(1) as f64
    }
}

/// Per-parameter sparsity and size of every prunable weight of `vars`.
pub fn sparsity_report(vars: &VarMap) -> Result<Vec<LayerSparsity>> {
    let names = prunable(vars)?;
    let data = lock(vars)?;
    names
        .into_iter()
        .map(|name| {
            let t = data[&name].as_tensor();
            let params = t.elem_count();
            let zeros = params
                - t.ne(0f32)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()? as usize;
            Ok(LayerSparsity {
                name,
                params,
                zeros,
                dense_bytes: 4 * params,
                sparse_bytes: 8 * (params - zeros),
            })
        })
        .collect()
}

/// Fraction of zeros among the prunable weights `model`'s inference graph reads: the sparsity
/// [`Masks::sparsity`] reports for the masks of [`magnitude_for`], measured on the weights
/// themselves (e.g. of a pruned model read back with [`crate::load_sparse`]).
pub fn inference_sparsity(model: &dyn Classifier, vars: &VarMap) -> Result<f64> {
    let read: std::collections::HashSet<String> = model.graph().parameters().into_iter().collect();
    let (zeros, params) = sparsity_report(vars)?
        .iter()
        .filter(|l| read.contains(&l.name))
        .fold((0, 0), |(z, p), l| (z + l.zeros, p + l.params));
    Ok(if params == 0 {
        0.0
    } else {
        zeros as f64 / params as f64
    })
}

/// Settings of [`fine_tune`], [`prune_iteratively`] and [`crate::StructuredModel::fine_tune`].
///
/// Plain data: build it with struct-update syntax from [`FineTuneConfig::default`] or
/// [`FineTuneConfig::with_lr`]. The defaults follow the zoo's training recipe
/// ([`hdr_train::recipe`]: batch 128, random affine augmentation), with a learning rate that
/// restarts at `lr.base_lr` and decays by cosine over each fine-tuning run. On the validation
/// split, the pretrained LeNet-5 cut to half its MACs ([`crate::StructuredModel::prune`]) and
/// fine-tuned for 3 epochs lost 0.74 points at a constant 1e-3 without augmentation and 0.28
/// with these settings (0.14 after 8 epochs); starting rates of 3e-4 and 5e-4 were worse than
/// 1e-3, and 2e-3 no better. One epoch (the default) is for quick runs: the `compress` example
/// fine-tunes structured pruning for 8 epochs and each of 10 rounds of unstructured pruning
/// for 2.
#[derive(Debug, Clone)]
pub struct FineTuneConfig {
    /// Passes over the training data (in [`prune_iteratively`]: after every round).
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam learning rate over the steps of one fine-tuning run (one round of
    /// [`prune_iteratively`]); restarts at `base_lr` on every run.
    pub lr: LrSchedule,
    /// On-the-fly augmentation of the training batches: use the model's own training
    /// augmentation.
    pub augment: Option<Arc<dyn Augment>>,
    /// Seed of shuffling and augmentation ([`prune_iteratively`] adds the round number).
    pub seed: u64,
    /// Input normalisation (the zoo's models use `[0, 1]`).
    pub normalize: Normalize,
    /// Decay of a moving average of the weights ([`hdr_train::Ema`]) kept over each
    /// fine-tuning run and left in the variables at its end instead of the last step's
    /// weights. Pruned weights are zero at every step, so their average stays exactly zero.
    pub ema: Option<f64>,
    /// Knowledge distillation during fine-tuning: the loss mixes the labels with a teacher's
    /// softened logits instead of using the labels alone.
    pub teacher: Option<SoftTargets>,
}

/// A teacher's logits on every sample of the fine-tuning set, precomputed once on the
/// un-augmented images ([`hdr_train::teacher_logits`]), and how to distil from them
/// ([`hdr_train::distillation_loss`]).
#[derive(Debug, Clone)]
pub struct SoftTargets {
    /// `[n, classes]`: row `i` belongs to sample `i` of the fine-tuning set.
    pub logits: Tensor,
    /// Temperature and the weight of the soft term.
    pub distill: DistillConfig,
}

impl FineTuneConfig {
    /// The default settings at another base learning rate, decayed by cosine to a hundredth.
    pub fn with_lr(base_lr: f64) -> Self {
        Self {
            lr: LrSchedule {
                base_lr,
                schedule: Schedule::Cosine {
                    min_lr: base_lr / 100.0,
                },
                warmup_steps: 0,
            },
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let lr_ok = |lr: f64| lr.is_finite() && lr >= 0.0;
        let schedule_ok = self.lr.base_lr.is_finite()
            && self.lr.base_lr > 0.0
            && match self.lr.schedule {
                Schedule::Constant => true,
                Schedule::Step {
                    every_epochs,
                    gamma,
                } => every_epochs >= 1 && lr_ok(gamma),
                Schedule::Cosine { min_lr } => lr_ok(min_lr),
                Schedule::OneCycle {
                    pct_start,
                    div_factor,
                    final_div,
                } => pct_start > 0.0 && pct_start < 1.0 && div_factor >= 1.0 && final_div >= 1.0,
            };
        let ema_ok = self.ema.is_none_or(|d| d > 0.0 && d < 1.0);
        let teacher_ok = self.teacher.as_ref().is_none_or(|t| {
            let d = t.distill;
            d.temperature.is_finite() && d.temperature > 0.0 && (0.0..=1.0).contains(&d.alpha)
        });
        if self.epochs == 0 || self.batch_size == 0 || !schedule_ok || !ema_ok || !teacher_ok {
            return Err(CompressError::InvalidConfig {
                name: "fine-tune",
                value: format!("{:?}", (self.epochs, self.batch_size, &self.lr, self.ema)),
                reason: "needs epochs >= 1, batch_size >= 1, a learning rate > 0 with a valid \
                         schedule, a moving-average decay (if any) in (0, 1) and a teacher \
                         (if any) with temperature > 0 and alpha in [0, 1]",
            });
        }
        Ok(())
    }

    /// The teacher's logits and settings, once its rows are checked against the fine-tuning set.
    fn soft_targets(&self, train: &Dataset) -> Result<Option<(&Tensor, DistillConfig)>> {
        let Some(t) = &self.teacher else {
            return Ok(None);
        };
        match t.logits.dims() {
            [n, _] if *n == train.len() => Ok(Some((&t.logits, t.distill))),
            dims => Err(CompressError::InvalidConfig {
                name: "teacher logits",
                value: format!("{dims:?}"),
                reason: "need one row per sample of the fine-tuning set",
            }),
        }
    }
}

impl Default for FineTuneConfig {
    /// One epoch of batch 128 with random affine augmentation ([`RandomAffine::default`], as
    /// the zoo trains), Adam from 1e-3 down to 1e-5 by cosine annealing, `[0, 1]` inputs.
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 128,
            lr: LrSchedule {
                base_lr: 1e-3,
                schedule: Schedule::Cosine { min_lr: 1e-5 },
                warmup_steps: 0,
            },
            augment: Some(Arc::new(RandomAffine::default())),
            seed: 0,
            normalize: Normalize::UnitRange,
            ema: None,
            teacher: None,
        }
    }
}

/// Trains `model` (whose variables are `vars`) on `train` with Adam, re-applying `masks` after
/// every step so that pruned weights stay exactly zero. Returns the mean loss of the last epoch.
pub fn fine_tune(
    model: &dyn Classifier,
    vars: &VarMap,
    masks: &Masks,
    train: &Dataset,
    cfg: &FineTuneConfig,
) -> Result<f64> {
    train_masked(
        &|x: &Tensor| Ok(model.forward_t(x, true)?.logits),
        vars,
        masks,
        train,
        cfg,
    )
}

/// The loop of [`fine_tune`] for any differentiable `forward` (training-mode logits) over the
/// variables `vars`.
pub(crate) fn train_masked(
    forward: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
    vars: &VarMap,
    masks: &Masks,
    train: &Dataset,
    cfg: &FineTuneConfig,
) -> Result<f64> {
    cfg.validate()?;
    let teacher = cfg.soft_targets(train)?;
    let mut opt = Optimizer::new(&OptimizerConfig::default(), vars)?;
    masks.apply(vars)?;
    let mut ema = cfg.ema.map(|d| Ema::new(d, vars)).transpose()?;
    let bc = BatchConfig {
        batch_size: cfg.batch_size,
        shuffle: true,
        drop_last: train.len() > cfg.batch_size,
        seed: cfg.seed,
        normalize: cfg.normalize,
        augment: cfg.augment.clone(),
    };
    let per_epoch = train
        .batches(&bc, 0, &Device::Cpu)
        .map_err(hdr_train::TrainError::from)?
        .num_batches();
    let total = per_epoch * cfg.epochs;
    let mut last = 0.0;
    for epoch in 0..cfg.epochs {
        let (mut sum, mut n) = (0.0, 0usize);
        for (step, batch) in train
            .batches(&bc, epoch as u64, &Device::Cpu)
            .map_err(hdr_train::TrainError::from)?
            .enumerate()
        {
            let batch = batch.map_err(hdr_train::TrainError::from)?;
            // On rayon's pool: one thread hand-off per step instead of one per kernel.
            let loss = hdr_models::init::in_pool(|| -> Result<f32> {
                let logits = forward(&batch.images)?;
                let loss = match teacher {
                    None => cross_entropy(&logits, &batch.labels, 0.0)?,
                    Some((all, d)) => {
                        let idx: Vec<u32> = batch.indices.iter().map(|&i| i as u32).collect();
                        let idx = Tensor::from_vec(idx, batch.indices.len(), all.device())?;
                        let soft = all.index_select(&idx, 0)?.to_device(logits.device())?;
                        distillation_loss(
                            &logits,
                            &soft,
                            &batch.labels,
                            d.temperature,
                            d.alpha,
                            0.0,
                        )?
                    }
                };
                let grads = loss.backward()?;
                opt.step(
                    &grads,
                    cfg.lr.lr(epoch * per_epoch + step, total, per_epoch),
                )?;
                masks.apply(vars)?;
                if let Some(ema) = ema.as_mut() {
                    ema.update()?;
                }
                Ok(loss.to_scalar::<f32>()?)
            })?;
            sum += loss as f64;
            n += 1;
        }
        last = sum / n.max(1) as f64;
    }
    if let Some(ema) = ema.as_mut() {
        ema.swap()?;
    }
    Ok(last)
}

/// How the sparsity grows over the rounds of [`prune_iteratively`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PruneSchedule {
    /// Equal relative cuts: after round `s` of `n`, `(1 - target)^(s / n)` of the weights
    /// are kept.
    #[default]
    Geometric,
    /// Zhu & Gupta (2017): sparsity `target * (1 - (1 - s / n)^3)`. Large cuts while the
    /// network has weights to spare, small ones near the target, so the last rounds mostly
    /// fine-tune at nearly the final sparsity.
    Cubic,
}

impl PruneSchedule {
    /// Sparsity after round `step` (1-based) of `steps`, reaching `target` at the last (and
    /// staying there after it).
    pub fn sparsity(self, target: f32, step: usize, steps: usize) -> f32 {
        let t = (step as f64 / steps.max(1) as f64).min(1.0);
        let target = target as f64;
        (match self {
            Self::Geometric => 1.0 - (1.0 - target).powf(t),
            Self::Cubic => target * (1.0 - (1.0 - t).powi(3)),
        }) as f32
    }
}

/// Settings of [`prune_iteratively`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneConfig {
    /// Final sparsity of the weights inference reads, in `[0, 1)`.
    pub target: f32,
    /// Which weights compete for removal.
    pub scope: Scope,
    /// Prune-and-fine-tune rounds.
    pub steps: usize,
    /// How the sparsity grows from round to round.
    pub schedule: PruneSchedule,
}

impl Default for PruneConfig {
    /// 90% sparsity in 10 rounds of global magnitude pruning on the geometric schedule.
    fn default() -> Self {
        Self {
            target: 0.9,
            scope: Scope::Global,
            steps: 10,
            schedule: PruneSchedule::Geometric,
        }
    }
}

/// Iterative pruning (Han et al. 2015): `prune.steps` rounds of pruning to a growing sparsity
/// (`prune.schedule`), up to `prune.target` over the weights inference reads
/// ([`magnitude_for`]), each followed by masked fine-tuning ([`fine_tune`] with `cfg`, its
/// learning-rate schedule restarting every round, its seed advanced by one a round). Returns
/// the final masks.
pub fn prune_iteratively(
    model: &dyn Classifier,
    vars: &VarMap,
    prune: &PruneConfig,
    train: &Dataset,
    cfg: &FineTuneConfig,
) -> Result<Masks> {
    if prune.steps == 0 {
        return Err(CompressError::InvalidConfig {
            name: "steps",
            value: "0".into(),
            reason: "at least one prune-and-fine-tune round",
        });
    }
    // Checked before any training: otherwise only the last round would refuse it.
    if !(0.0..1.0).contains(&prune.target) {
        return Err(CompressError::InvalidConfig {
            name: "target",
            value: prune.target.to_string(),
            reason: "must be in [0, 1)",
        });
    }
    let mut masks = Masks::default();
    for s in 1..=prune.steps {
        let sparsity = prune.schedule.sparsity(prune.target, s, prune.steps);
        masks = magnitude_for(model, vars, sparsity, prune.scope)?;
        let round = FineTuneConfig {
            seed: cfg.seed.wrapping_add(s as u64 - 1),
            ..cfg.clone()
        };
        fine_tune(model, vars, &masks, train, &round)?;
    }
    Ok(masks)
}
