//! One entry of a comparative study: build a model from its configuration, train it with a
//! recipe, evaluate it on the test split, measure its cost, save it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use hdr_data::{Dataset, Mnist, MnistOptions, SplitConfig};
use hdr_metrics::{format_duration, Average, ClassificationReport, ComparisonTable};
use hdr_models::ModelConfig;

use crate::error::{Result, TrainError};
use crate::evaluate::{evaluate, measure_efficiency};
use crate::history::History;
use crate::trainer::{fit, Teacher, TrainConfig};

/// The splits of a study: train and validation for training, test only for the final report.
#[derive(Debug, Clone, Copy)]
pub struct Splits<'a> {
    /// Training samples.
    pub train: &'a Dataset,
    /// Validation samples (early stopping, model selection).
    pub val: &'a Dataset,
    /// Test samples (reported, never used to choose anything).
    pub test: &'a Dataset,
}

/// MNIST split for a study: 55k training and 5k validation images (stratified, seed 0) out of
/// the training set, and the test set.
#[derive(Debug, Clone)]
pub struct StudyData {
    /// Training samples (after the split and the optional subset).
    pub train: Dataset,
    /// Validation samples.
    pub val: Dataset,
    /// The 10k test samples.
    pub test: Dataset,
}

impl StudyData {
    /// Loads MNIST (from `dir`, else `HDR_DATA_DIR`, `datasets/mnist/` or a download) and splits
    /// it; `train_subset` keeps only the first samples of the training part, for quick trials.
    pub fn load(dir: Option<PathBuf>, train_subset: Option<usize>) -> Result<Self> {
        let mnist = Mnist::load_with(&MnistOptions {
            dir,
            ..MnistOptions::default()
        })?;
        let (mut train, val) = mnist.train.split(&SplitConfig::default())?;
        if let Some(n) = train_subset {
            train = train.head(n);
        }
        Ok(Self {
            train,
            val,
            test: mnist.test,
        })
    }

    /// Like [`load`](Self::load), but trains on all 60k training images in their file order,
    /// the validation split included: a final fit once the recipe has been chosen on
    /// validation. `val` stays the same 5k images, so it is no longer held out and its figures
    /// only show the fit; early stopping on it cannot stop a run early in a useful way.
    pub fn load_with_validation_in_training(dir: Option<PathBuf>) -> Result<Self> {
        let mnist = Mnist::load_with(&MnistOptions {
            dir,
            ..MnistOptions::default()
        })?;
        let (_, val) = mnist.train.split(&SplitConfig::default())?;
        Ok(Self {
            train: mnist.train,
            val,
            test: mnist.test,
        })
    }

    /// The three splits, borrowed.
    pub fn splits(&self) -> Splits<'_> {
        Splits {
            train: &self.train,
            val: &self.val,
            test: &self.test,
        }
    }
}

/// What one study entry produced.
#[derive(Debug, Clone)]
pub struct StudyOutcome {
    /// Name used in reports and the saved file's metadata.
    pub label: String,
    /// Test-set report, with latency (batch 1), size and peak memory.
    pub report: ClassificationReport,
    /// Per-epoch training record.
    pub history: History,
    /// Training wall time in seconds.
    pub train_seconds: f64,
    /// The saved model.
    pub file: PathBuf,
}

/// Trains the model `config` under `label` with `cfg`, saves it to `dir/<label>.safetensors`,
/// and evaluates it on the test split.
pub fn train_and_evaluate(
    label: &str,
    config: &ModelConfig,
    splits: Splits<'_>,
    cfg: &TrainConfig,
    teacher: Option<&Teacher<'_>>,
    dir: &Path,
) -> Result<StudyOutcome> {
    let vars = VarMap::new();
    let model = config.build(VarBuilder::from_varmap(&vars, DType::F32, &cfg.device))?;
    hdr_models::init::init(&vars, cfg.seed)?;
    let started = Instant::now();
    let history = fit(
        model.as_ref(),
        &vars,
        label,
        splits.train,
        splits.val,
        cfg,
        teacher,
    )?;
    let train_seconds = started.elapsed().as_secs_f64();
    let file = dir.join(format!("{label}.safetensors"));
    hdr_models::save(&file, label, config, &vars)?;
    let (report, _) = evaluate(
        model.as_ref(),
        splits.test,
        label,
        "test",
        cfg.normalize,
        &cfg.device,
    )?;
    let eff = measure_efficiency(model.as_ref(), 1, 100, Some(&file), &cfg.device)?;
    Ok(StudyOutcome {
        label: label.to_string(),
        report: report.with_efficiency(eff),
        history,
        train_seconds,
        file,
    })
}

/// The paper's results table (macro-averaged precision, recall, F1) with size and latency.
pub fn study_table(outcomes: &[StudyOutcome]) -> ComparisonTable {
    ComparisonTable::from_reports(outcomes.iter().map(|o| &o.report), Average::Macro)
}

/// What each model's training cost, as a Markdown table.
pub fn training_cost_markdown(outcomes: &[StudyOutcome]) -> String {
    let mut md = String::from("| model | epochs run | best epoch | training time | training images/s |\n|---|---:|---:|---:|---:|\n");
    for o in outcomes {
        let n = o.history.epochs.len().max(1) as f64;
        let ips = o
            .history
            .epochs
            .iter()
            .map(|e| e.images_per_second)
            .sum::<f64>()
            / n;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} |\n",
            o.label,
            o.history.epochs.len(),
            o.history.best_epoch.unwrap_or(0),
            format_duration(std::time::Duration::from_secs_f64(o.train_seconds)),
            ips
        ));
    }
    md
}

/// The generated part of a results page: what was run, where and when, the results table and
/// the training cost. [`write_results_section`] puts it into a hand-written page.
pub fn results_markdown(
    outcomes: &[StudyOutcome],
    command: &str,
    elapsed: std::time::Duration,
) -> String {
    format!(
        "MNIST test split (10,000 images), single models, one seeded run each, CPU only. \
         Precision, recall and F1 are macro averages; latency is batch 1, median.\n\n\
         - command: `{command}`\n- date: {date}\n- machine: {machine}\n\
         - whole run: {mins:.1} min\n\n{table}\nTraining cost:\n\n{cost}",
        date = utc_date_today(),
        machine = hdr_metrics::machine_description(),
        mins = elapsed.as_secs_f64() / 60.0,
        table = study_table(outcomes).render_markdown(),
        cost = training_cost_markdown(outcomes),
    )
}

/// Writes `markdown` into the section `id` of the Markdown page `path` (see
/// [`hdr_metrics::splice_section`]), creating the page if needed and keeping everything else in
/// it; the page is replaced atomically.
pub fn write_results_section(path: &Path, id: &str, markdown: &str) -> Result<()> {
    let page = match std::fs::read_to_string(path) {
        Ok(page) => page,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    crate::history::write_atomic(
        path,
        hdr_metrics::splice_section(&page, id, markdown).as_bytes(),
    )
}

/// Today's date (UTC) as `YYYY-MM-DD`, for the headers of generated documents.
pub fn utc_date_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_date((secs / 86_400) as i64)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_sections_replace_themselves_and_keep_the_prose() -> crate::Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| crate::TrainError::io(std::path::Path::new("."), e))?;
        let page = dir.path().join("RESULTS.md");
        super::write_results_section(&page, "study", "old table\n")?;
        let mut text = std::fs::read_to_string(&page).unwrap_or_default();
        text = format!("# Results\n\nprose\n\n{text}\nmore prose\n");
        std::fs::write(&page, &text).map_err(|e| crate::TrainError::io(&page, e))?;
        super::write_results_section(&page, "study", "new table\n")?;
        let after = std::fs::read_to_string(&page).unwrap_or_default();
        assert!(after.starts_with("# Results\n\nprose\n") && after.ends_with("more prose\n"));
        assert!(
            after.contains("new table") && !after.contains("old table"),
            "{after}"
        );
        Ok(())
    }

    #[test]
    fn results_page_names_the_run_the_machine_and_each_models_cost() -> crate::Result<()> {
        use hdr_metrics::{ClassificationReport, ConfusionMatrix, MetricsConfig};
        let matrix = ConfusionMatrix::from_predictions(3, &[0u8, 1, 2, 2], &[0u8, 1, 2, 1])?;
        let report = ClassificationReport::new("tiny", "test", &matrix, &MetricsConfig::default())?;
        let record = |epoch: usize, ips: f64| crate::EpochRecord {
            epoch,
            lr: 1e-3,
            train_loss: 0.5,
            train_accuracy: 0.8,
            val_loss: 0.4,
            val_accuracy: 0.75,
            ema_val_loss: None,
            ema_val_accuracy: None,
            seconds: 2.0,
            images_per_second: ips,
        };
        let outcome = super::StudyOutcome {
            label: "tiny".into(),
            report,
            history: crate::History {
                epochs: vec![record(1, 100.0), record(2, 300.0)],
                best_epoch: Some(2),
                stopped_early: false,
            },
            train_seconds: 754.0,
            file: "tiny.safetensors".into(),
        };
        let page = super::results_markdown(
            &[outcome],
            "compare --models tiny",
            std::time::Duration::from_secs(90),
        );
        let line = |key: &str| {
            page.lines()
                .find(|l| l.starts_with(key))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        assert_eq!(line("- command:"), "- command: `compare --models tiny`");
        assert_eq!(line("- whole run:"), "- whole run: 1.5 min");
        assert_eq!(line("- date:").len(), "- date: 2026-12-07".len(), "{page}");
        // The machine the page was generated on, not a fixed string.
        assert_eq!(
            line("- machine:"),
            format!("- machine: {}", hdr_metrics::machine_description())
        );
        // 3 of 4 right; two epochs, the second best, 200 images/s on average.
        assert!(page.contains("75.00%"), "{page}");
        assert!(page.contains("| tiny | 2 | 2 |"), "{page}");
        assert!(page.contains("| 200 |"), "{page}");
        Ok(())
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_date(0), "1970-01-01");
        assert_eq!(super::civil_date(11_016), "2000-02-29");
        assert_eq!(super::civil_date(20_781), "2026-11-24");
    }
}
