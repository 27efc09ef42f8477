//! Learning-rate schedules, with optional linear warm-up.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The shape of the learning rate over training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step {
        /// Epochs between decays.
        every_epochs: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `min_lr` (Loshchilov & Hutter 2017, no restarts).
    Cosine {
        /// Final rate.
        min_lr: f64,
    },
    /// One-cycle (Smith & Topin 2019): up from `base / div_factor` to the base rate for the first
    /// `pct_start` of training, then cosine down to `base / final_div`.
    OneCycle {
        /// Fraction of the steps spent rising.
        pct_start: f64,
        /// Initial rate = base / div_factor.
        div_factor: f64,
        /// Final rate = base / final_div.
        final_div: f64,
    },
}

/// A learning-rate schedule: base rate, shape and warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak (base) learning rate.
    pub base_lr: f64,
    /// Shape.
    pub schedule: Schedule,
    /// Steps of linear warm-up from 0 (ignored by one-cycle, which has its own).
    pub warmup_steps: usize,
}

impl Default for LrSchedule {
    /// 1e-3 (Adam's default), cosine to 1e-5, no warm-up.
    fn default() -> Self {
        Self {
            base_lr: 1e-3,
            schedule: Schedule::Cosine { min_lr: 1e-5 },
            warmup_steps: 0,
        }
    }
}

impl LrSchedule {
    pub(crate) fn validate(&self) -> Result<()> {
        let fail = |name, value: String, reason| {
            Err(TrainError::InvalidConfig {
                name,
                value,
                reason,
            })
        };
        if !(self.base_lr > 0.0 && self.base_lr.is_finite()) {
            return fail(
                "base_lr",
                self.base_lr.to_string(),
                "must be positive and finite",
            );
        }
        match self.schedule {
            Schedule::Step {
                every_epochs: 0, ..
            } => fail("every_epochs", "0".into(), "must be at least 1"),
            Schedule::Step { gamma, .. } if gamma.is_nan() || gamma <= 0.0 => {
                fail("gamma", gamma.to_string(), "must be positive")
            }
            Schedule::Cosine { min_lr } if min_lr.is_nan() || min_lr < 0.0 => {
                fail("min_lr", min_lr.to_string(), "must be >= 0")
            }
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div,
            } if !(pct_start > 0.0 && pct_start < 1.0 && div_factor >= 1.0 && final_div >= 1.0) => {
                fail(
                    "one_cycle",
                    format!(
                        "pct_start {pct_start}, div_factor {div_factor}, final_div {final_div}"
                    ),
                    "needs 0 < pct_start < 1 and factors >= 1",
                )
            }
            _ => Ok(()),
        }
    }

    /// The learning rate at `step` (0-based) of `total` steps, with `per_epoch` steps an epoch.
    pub fn lr(&self, step: usize, total: usize, per_epoch: usize) -> f64 {
        let base = self.base_lr;
        let total = total.max(1);
        let cos = |from: f64, to: f64, frac: f64| {
            to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * frac.clamp(0.0, 1.0)).cos())
        };
        if let Schedule::OneCycle {
            pct_start,
            div_factor,
            final_div,
        } = self.schedule
        {
            let up = ((total as f64 * pct_start).round() as usize).max(1);
            return if step < up {
                cos(base, base / div_factor, 1.0 - step as f64 / up as f64)
            } else {
                cos(
                    base,
                    base / final_div,
                    (step - up) as f64 / (total - up).max(1) as f64,
                )
            };
        }
        if step < self.warmup_steps {
            return base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => base,
            Schedule::Step {
                every_epochs,
                gamma,
            } => base * gamma.powi((step / per_epoch.max(1) / every_epochs) as i32),
            Schedule::Cosine { min_lr } => {
                let done = (step - self.warmup_steps) as f64;
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                cos(base, min_lr, done / span)
            }
            Schedule::OneCycle { .. } => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(schedule: Schedule, warmup_steps: usize) -> LrSchedule {
        LrSchedule {
            base_lr: 0.1,
            schedule,
            warmup_steps,
        }
    }

    #[test]
    fn warmup_then_cosine() {
        let sch = s(Schedule::Cosine { min_lr: 0.0 }, 10);
        assert!((sch.lr(0, 110, 10) - 0.01).abs() < 1e-12);
        assert!((sch.lr(9, 110, 10) - 0.1).abs() < 1e-12);
        assert!((sch.lr(10, 110, 10) - 0.1).abs() < 1e-12);
        assert!((sch.lr(60, 110, 10) - 0.05).abs() < 1e-12);
        assert!(sch.lr(109, 110, 10) < 1e-4);
    }

    #[test]
    fn step_decay_by_epoch() {
        let sch = s(
            Schedule::Step {
                every_epochs: 2,
                gamma: 0.5,
            },
            0,
        );
        assert_eq!(sch.lr(0, 100, 10), 0.1);
        assert_eq!(sch.lr(19, 100, 10), 0.1);
        assert_eq!(sch.lr(20, 100, 10), 0.05);
        assert_eq!(sch.lr(45, 100, 10), 0.025);
    }

    #[test]
    fn one_cycle_rises_then_falls() {
        let sch = s(
            Schedule::OneCycle {
                pct_start: 0.3,
                div_factor: 25.0,
                final_div: 1e4,
            },
            0,
        );
        assert!((sch.lr(0, 100, 10) - 0.004).abs() < 1e-12);
        assert!((sch.lr(30, 100, 10) - 0.1).abs() < 1e-12);
        assert!(sch.lr(99, 100, 10) < 0.1 / 1e3);
        let lrs: Vec<f64> = (0..100).map(|i| sch.lr(i, 100, 10)).collect();
        assert!(lrs[..30].windows(2).all(|w| w[0] <= w[1]));
        assert!(lrs[30..].windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn nonsense_is_rejected() {
        assert!(s(
            Schedule::Step {
                every_epochs: 0,
                gamma: 0.5
            },
            0
        )
        .validate()
        .is_err());
        assert!(LrSchedule {
            base_lr: -1.0,
            ..LrSchedule::default()
        }
        .validate()
        .is_err());
        assert!(LrSchedule::default().validate().is_ok());
    }
}
