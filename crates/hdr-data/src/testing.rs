//! For test suites that need the real MNIST files: where they are, and whether a missing copy
//! may skip a test.
//!
//! Cargo runs each crate's tests in that crate's folder, so a relative `datasets/mnist` would
//! miss the workspace's copy (where the quickstart downloads it); [`real_data_dir`] looks in
//! `HDR_DATA_DIR`, then in the nearest `datasets/mnist/` above the working directory. Under
//! `CI=true` a missing copy fails the test instead of skipping it.

use std::path::{Path, PathBuf};

use crate::mnist::MnistOptions;

/// Whether the `CI` environment variable is `true` or `1`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The nearest `datasets/mnist` folder in `start` or one of its ancestors, if any.
pub fn project_dir_above(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join("datasets").join("mnist"))
        .find(|d| d.is_dir())
}

/// The folder holding MNIST for a real-data test: `HDR_DATA_DIR`, else the nearest
/// `datasets/mnist/` above the working directory; never a download.
///
/// `None` (after a note on stderr naming every place looked at) when neither has the four
/// files, so the test can return early.
///
/// # Panics
///
/// Under `CI=true` when MNIST is not found: real-data tests must run in CI.
pub fn real_data_dir() -> Option<PathBuf> {
    let here = std::env::current_dir().unwrap_or_default();
    let opts = MnistOptions::local(None, project_dir_above(&here));
    match opts.locate() {
        Ok(dir) => Some(dir),
        Err(e) => {
            assert!(!under_ci(), "CI=true but MNIST was not found: {e}");
            eprintln!("note: real-data test not run: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::project_dir_above;

    #[test]
    fn finds_the_nearest_datasets_folder_above() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let deep = root.path().join("crates").join("a").join("tests");
        std::fs::create_dir_all(&deep)?;
        assert_eq!(project_dir_above(&deep), None);
        let data = root.path().join("datasets").join("mnist");
        std::fs::create_dir_all(&data)?;
        assert_eq!(project_dir_above(&deep), Some(data.clone()));
        // A nearer one wins.
        let near = root.path().join("crates").join("datasets").join("mnist");
        std::fs::create_dir_all(&near)?;
        assert_eq!(project_dir_above(&deep), Some(near));
        Ok(())
    }
}
