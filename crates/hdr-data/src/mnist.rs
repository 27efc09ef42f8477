use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::dataset::{Dataset, IMAGE_SIDE};
use crate::error::{DataError, Result};
use crate::idx;

/// One of the four canonical MNIST files and its published checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MnistFile {
    /// File name without `.gz`, e.g. `train-images-idx3-ubyte`.
    pub name: &'static str,
    /// Size of the canonical `.gz` in bytes.
    pub gz_bytes: u64,
    /// md5 of the canonical `.gz` (as torchvision checks it).
    pub gz_md5: &'static str,
    /// sha256 of the canonical `.gz` (as TFDS checks it).
    pub gz_sha256: &'static str,
    /// md5 of the decompressed file: the content, whatever compressor made the `.gz`.
    pub raw_md5: &'static str,
}

/// The canonical files: train images, train labels, test images, test labels.
pub const MNIST_FILES: [MnistFile; 4] = [
    MnistFile {
        name: "train-images-idx3-ubyte",
        gz_bytes: 9_912_422,
        gz_md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        gz_sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        raw_md5: "6bbc9ace898e44ae57da46a324031adb",
    },
    MnistFile {
        name: "train-labels-idx1-ubyte",
        gz_bytes: 28_881,
        gz_md5: "d53e105ee54ea40749a09fcbcd1e9432",
        gz_sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        raw_md5: "a25bea736e30d166cdddb491f175f624",
    },
    MnistFile {
        name: "t10k-images-idx3-ubyte",
        gz_bytes: 1_648_877,
        gz_md5: "9fb629c4189551a2d022fa330f9573f3",
        gz_sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        raw_md5: "2646ac647ad5339dbf082846283269ea",
    },
    MnistFile {
        name: "t10k-labels-idx1-ubyte",
        gz_bytes: 4_542,
        gz_md5: "ec29112dd5afa0611ce80d1b7f02629c",
        gz_sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        raw_md5: "27ae3e4e09519cfbb04c329615203637",
    },
];

/// Mirrors serving the canonical `.gz` files, tried in order: torchvision's S3 mirror and the
/// Google Cloud Storage bucket used by TFDS. (yann.lecun.com answers 403 since 2024.)
pub const MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];

/// Environment variable naming a folder that holds MNIST.
pub const DATA_DIR_ENV: &str = "HDR_DATA_DIR";

/// Where to look for MNIST and whether to download it; see [`Mnist::load_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnistOptions {
    /// A folder given explicitly; looked at first.
    pub dir: Option<PathBuf>,
    /// Environment variable naming a folder (default `HDR_DATA_DIR`); looked at second.
    pub env_var: Option<String>,
    /// The project's own folder (default `datasets/mnist`, relative to the working directory).
    pub project_dir: Option<PathBuf>,
    /// Download from `mirrors` when no folder holds the files (default: on if the `download`
    /// feature is). The files go to `dir`, else the environment variable's folder, else `project_dir`.
    pub download: bool,
    /// Base URLs tried in order.
    pub mirrors: Vec<String>,
    /// Check the md5 of each file's content against the canonical one (about 0.1 s).
    pub verify: bool,
    /// Show a progress bar while downloading (on a terminal).
    pub progress: bool,
}

impl MnistOptions {
    /// Options that only look in local folders: `dir` if given, `HDR_DATA_DIR`, then
    /// `project_dir`; never download.
    pub fn local(dir: Option<PathBuf>, project_dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            project_dir,
            download: false,
            ..Self::default()
        }
    }

    /// The folder holding the four MNIST files, in the order these options give (downloading
    /// first if they allow it and no folder has them), without reading the files. The error
    /// names every place looked at.
    pub fn locate(&self) -> Result<PathBuf> {
        locate(self)
    }
}

impl Default for MnistOptions {
    fn default() -> Self {
        Self {
            dir: None,
            env_var: Some(DATA_DIR_ENV.to_string()),
            project_dir: Some(PathBuf::from("datasets/mnist")),
            download: cfg!(feature = "download"),
            mirrors: MIRRORS.iter().map(|s| s.to_string()).collect(),
            verify: true,
            progress: true,
        }
    }
}

/// MNIST: 60,000 training and 10,000 test images of 28x28 grey digits with their labels.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// The 60,000 training samples.
    pub train: Dataset,
    /// The 10,000 test samples.
    pub test: Dataset,
    /// The folder the files were read from.
    pub dir: PathBuf,
}

impl Mnist {
    /// Finds MNIST (`HDR_DATA_DIR`, then `datasets/mnist/`, then a download), verifies and loads it.
    pub fn load() -> Result<Self> {
        Self::load_with(&MnistOptions::default())
    }

    /// Loads MNIST from this folder only, verified; no download.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self> {
        let opts = MnistOptions {
            dir: Some(dir.into()),
            env_var: None,
            project_dir: None,
            download: false,
            ..MnistOptions::default()
        };
        Self::load_with(&opts)
    }

    /// Finds MNIST as `opts` says, downloading it if allowed and needed, then verifies and loads it.
    pub fn load_with(opts: &MnistOptions) -> Result<Self> {
        let dir = locate(opts)?;
        Self::read(&dir, opts.verify)
    }

    /// Reads the four files of `dir` (each raw or `.gz`), checking the content checksums if `verify`.
    pub fn read(dir: &Path, verify: bool) -> Result<Self> {
        let paths = files_in(dir).map_err(|why| DataError::NotFound {
            searched: vec![(dir.to_path_buf(), why)],
            download: vec![],
        })?;
        let read = |k: usize| -> Result<Vec<u8>> {
            let bytes = idx::read_bytes(&paths[k])?;
            if verify {
                check_md5(&paths[k], &bytes, MNIST_FILES[k].raw_md5)?;
            }
            Ok(bytes)
        };
        // The training images dominate; read them beside the other three.
        let (train_images, (train_labels, (test_images, test_labels))) = rayon::join(
            || read(0),
            || rayon::join(|| read(1), || rayon::join(|| read(2), || read(3))),
        );
        let train = dataset(&paths[0], train_images?, &paths[1], &train_labels?)?;
        let test = dataset(&paths[2], test_images?, &paths[3], &test_labels?)?;
        Ok(Self {
            train,
            test,
            dir: dir.to_path_buf(),
        })
    }
}

fn dataset(ip: &Path, images: Vec<u8>, lp: &Path, labels: &[u8]) -> Result<Dataset> {
    let (img, n, rows, cols) = idx::parse_images(&images, ip)?;
    drop(images);
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE) {
        return Err(DataError::BadDimensions {
            path: ip.into(),
            dims: vec![n as u32, rows as u32, cols as u32],
            reason: "MNIST images are 28x28",
        });
    }
    let labels = idx::parse_labels(labels, lp)?;
    idx::dataset_from_parts(img, n, rows, cols, labels, ip, lp)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn check_md5(path: &Path, content: &[u8], expected: &str) -> Result<()> {
    let found = md5_hex(content);
    if found == expected {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.into(),
            algorithm: "md5 of the decompressed content",
            expected: expected.into(),
            found,
        })
    }
}

/// The paths of the four files in `dir`, or why they are not all there.
fn files_in(dir: &Path) -> std::result::Result<[PathBuf; 4], String> {
    if !dir.is_dir() {
        return Err("no such folder".into());
    }
    let found: Vec<Option<PathBuf>> = MNIST_FILES
        .iter()
        .map(|f| {
            [dir.join(format!("{}.gz", f.name)), dir.join(f.name)]
                .into_iter()
                .find(|p| p.is_file())
        })
        .collect();
    let missing: Vec<&str> = MNIST_FILES
        .iter()
        .zip(&found)
        .filter(|(_, p)| p.is_none())
        .map(|(f, _)| f.name)
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing {}[.gz]", missing.join("[.gz], ")));
    }
    let mut it = found.into_iter().flatten();
    Ok(std::array::from_fn(|_| it.next().unwrap_or_default()))
}

/// The folder holding MNIST, after a download if one was needed and allowed.
fn locate(opts: &MnistOptions) -> Result<PathBuf> {
    let env_dir = opts.env_var.as_ref().and_then(|var| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| (var, PathBuf::from(v)))
    });
    let mut candidates: Vec<(PathBuf, String)> = Vec::new();
    if let Some(d) = &opts.dir {
        candidates.push((d.clone(), "explicit path".into()));
    }
    if let Some((var, d)) = &env_dir {
        candidates.push((d.clone(), format!("${var}")));
    } else if let Some(var) = &opts.env_var {
        candidates.push((PathBuf::from(format!("${var}")), "not set".into()));
    }
    if let Some(d) = &opts.project_dir {
        candidates.push((d.clone(), "project folder".into()));
    }

    let mut searched = Vec::new();
    for (dir, what) in &candidates {
        if what == "not set" {
            searched.push((dir.clone(), "not set".into()));
            continue;
        }
        match files_in(dir) {
            Ok(_) => return Ok(dir.clone()),
            Err(why) => searched.push((dir.clone(), format!("{what}: {why}"))),
        }
    }

    let target = opts
        .dir
        .clone()
        .or_else(|| env_dir.map(|(_, d)| d))
        .or_else(|| opts.project_dir.clone());
    let download = match target {
        None => vec![
            "no folder to download into (no explicit path, environment variable or project folder)"
                .into(),
        ],
        Some(_) if !opts.download => vec!["disabled".into()],
        Some(target) => match fetch_all(&target, opts) {
            Ok(()) => return Ok(target),
            Err(failures) => failures,
        },
    };
    Err(DataError::NotFound { searched, download })
}

#[cfg(feature = "download")]
fn fetch_all(target: &Path, opts: &MnistOptions) -> std::result::Result<(), Vec<String>> {
    for file in &MNIST_FILES {
        let present = [
            target.join(format!("{}.gz", file.name)),
            target.join(file.name),
        ]
        .iter()
        .any(|p| p.is_file());
        if !present {
            match crate::download::download(file, &opts.mirrors, target, opts.progress) {
                Ok(_) => {}
                Err(DataError::DownloadFailed { file, attempts }) => {
                    return Err(attempts
                        .into_iter()
                        .map(|a| format!("{file}: {a}"))
                        .collect())
                }
                Err(e) => return Err(vec![e.to_string()]),
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "download"))]
fn fetch_all(_target: &Path, _opts: &MnistOptions) -> std::result::Result<(), Vec<String>> {
    Err(vec![
        "not available: hdr-data was built without the `download` feature".into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_lists_every_place() {
        let opts = MnistOptions {
            dir: Some("/nonexistent/a".into()),
            env_var: Some("HDR_TEST_UNSET_VARIABLE_FOR_MNIST".into()),
            project_dir: Some("/nonexistent/b".into()),
            download: false,
            ..MnistOptions::default()
        };
        let err = Mnist::load_with(&opts).unwrap_err();
        let msg = err.to_string();
        for needle in [
            "/nonexistent/a",
            "$HDR_TEST_UNSET_VARIABLE_FOR_MNIST",
            "/nonexistent/b",
            "Download",
            "disabled",
            "HDR_DATA_DIR",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
        }
    }

    #[test]
    fn missing_files_are_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), b"x")?;
        let why = files_in(dir.path()).unwrap_err();
        assert!(why.contains("t10k-labels-idx1-ubyte"), "{why}");
        assert!(!why.contains("train-images"), "{why}");
        Ok(())
    }

    #[test]
    fn locate_takes_the_first_folder_with_all_four_files() -> anyhow::Result<()> {
        let (full, partial) = (tempfile::tempdir()?, tempfile::tempdir()?);
        for f in &MNIST_FILES {
            // Only presence counts here: `locate` does not read the files.
            std::fs::write(full.path().join(format!("{}.gz", f.name)), b"x")?;
        }
        std::fs::write(partial.path().join("train-images-idx3-ubyte"), b"x")?;
        let unset = Some("HDR_TEST_UNSET_VARIABLE_FOR_MNIST".to_string());
        let opts = |dir: &Path, project: &Path| MnistOptions {
            env_var: unset.clone(),
            ..MnistOptions::local(Some(dir.into()), Some(project.into()))
        };
        assert_eq!(opts(partial.path(), full.path()).locate()?, full.path());
        assert_eq!(opts(full.path(), partial.path()).locate()?, full.path());
        let err = opts(partial.path(), partial.path()).locate().unwrap_err();
        assert!(err.to_string().contains("disabled"), "{err}");
        Ok(())
    }

    #[test]
    fn md5_matches_known_vector() {
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
