use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss (total loss, with auxiliary and distillation terms).
    pub train_loss: f64,
    /// Training accuracy of the main head, on the (augmented) training batches, in training mode.
    pub train_accuracy: f64,
    /// Mean cross-entropy on the validation split, evaluation mode.
    pub val_loss: f64,
    /// Accuracy on the validation split.
    pub val_accuracy: f64,
    /// Validation loss of the weights' moving average, when training keeps one
    /// ([`TrainConfig::ema`](crate::TrainConfig::ema)); early stopping then selects on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_val_loss: Option<f64>,
    /// Validation accuracy of the weights' moving average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_val_accuracy: Option<f64>,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// The per-epoch record of a run, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// One record per completed epoch.
    pub epochs: Vec<EpochRecord>,
    /// The epoch (from 1) with the lowest validation loss (of the moving average, if kept).
    pub best_epoch: Option<usize>,
    /// Whether early stopping ended the run before the last epoch.
    pub stopped_early: bool,
}

impl History {
    /// The record of the best epoch.
    pub fn best(&self) -> Option<&EpochRecord> {
        self.best_epoch
            .and_then(|e| self.epochs.iter().find(|r| r.epoch == e))
    }

    /// CSV with a header line.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,ema_val_loss,ema_val_accuracy,seconds,images_per_second\n",
        );
        let opt = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.6}"));
        for r in &self.epochs {
            s.push_str(&format!(
                "{},{:e},{:.6},{:.6},{:.6},{:.6},{},{},{:.3},{:.1}\n",
                r.epoch,
                r.lr,
                r.train_loss,
                r.train_accuracy,
                r.val_loss,
                r.val_accuracy,
                opt(r.ema_val_loss),
                opt(r.ema_val_accuracy),
                r.seconds,
                r.images_per_second
            ));
        }
        s
    }

    /// Writes `history.csv` and `history.json` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| TrainError::Checkpoint {
            path: dir.join("history.json"),
            reason: e.to_string(),
        })?;
        write_atomic(&dir.join("history.json"), json.as_bytes())?;
        write_atomic(&dir.join("history.csv"), self.to_csv().as_bytes())
    }

    /// Reads a `history.json` written by [`History::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: path.into(),
            reason: e.to_string(),
        })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| TrainError::io(path, e);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = temp_file_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A temporary file readable by others like any file the user writes (tempfile's default is 0600).
fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir)
}
