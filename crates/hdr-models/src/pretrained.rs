//! Weights trained by this project's own examples, so that a model works with no network and no
//! dataset. `docs/MODELS.md` records each file's test accuracy and the command that produced it.
//!
//! The small files are embedded in the crate (feature `pretrained`, on by default) and so work
//! from crates.io. The large ones (the MLPs, MobileNet v1 and the teacher, 2.5-13 MB each) would
//! push the package past crates.io's size limit: they are committed to the repository beside the
//! others and read from the crate's own folder, which works in a checkout, a path dependency or a
//! git dependency, and gives an error saying how to get them otherwise.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::{ModelError, Result};
use crate::io::{load, load_bytes, LoadedModel};

/// `(name, safetensors bytes)` of the models embedded in the crate.
#[cfg(feature = "pretrained")]
const EMBEDDED: &[(&str, &[u8])] = &[
    ("lenet5", include_bytes!("../weights/lenet5.safetensors")),
    (
        "lenet5_classic",
        include_bytes!("../weights/lenet5_classic.safetensors"),
    ),
    ("resnet", include_bytes!("../weights/resnet.safetensors")),
    (
        "densenet",
        include_bytes!("../weights/densenet.safetensors"),
    ),
    (
        "mobilenet_hdr",
        include_bytes!("../weights/mobilenet_hdr.safetensors"),
    ),
];

#[cfg(not(feature = "pretrained"))]
const EMBEDDED: &[(&str, &[u8])] = &[];

/// Models whose weights live in the repository's `crates/hdr-models/weights/` only.
const IN_REPOSITORY: &[&str] = &["mlp1", "mlp2", "mlp3", "mobilenet", "wide_resnet"];

/// Names of the models with trained weights: the embedded ones, then those read from the
/// repository (which [`pretrained`] can load only from a checkout of it).
pub fn pretrained_names() -> Vec<&'static str> {
    EMBEDDED
        .iter()
        .map(|(n, _)| *n)
        .chain(IN_REPOSITORY.iter().copied())
        .collect()
}

/// Where the repository keeps the weights of `name`.
fn repository_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(format!("{name}.safetensors"))
}

/// The trained model `name` on `device`.
///
/// ```
/// # fn main() -> hdr_models::Result<()> {
/// let lenet = hdr_models::pretrained("lenet5", &candle_core::Device::Cpu)?;
/// assert_eq!(lenet.name, "lenet5");
/// # Ok(())
/// # }
/// ```
///
/// Errors: [`ModelError::UnknownModel`] for a name without trained weights,
/// [`ModelError::PretrainedNotPackaged`] for repository-only weights outside a checkout.
pub fn pretrained(name: &str, device: &Device) -> Result<LoadedModel> {
    if let Some((_, bytes)) = EMBEDDED.iter().find(|(n, _)| *n == name) {
        return load_bytes(bytes, Path::new(&format!("<pretrained {name}>")), device);
    }
    if IN_REPOSITORY.contains(&name) {
        let path = repository_file(name);
        if !path.is_file() {
            return Err(ModelError::PretrainedNotPackaged {
                name: name.to_string(),
                path,
            });
        }
        return load(&path, device);
    }
    Err(ModelError::UnknownModel {
        name: format!("{name} (pretrained)"),
        known: pretrained_names(),
    })
}

/// A model given the way command lines give one: a file written by [`crate::save`] if `spec`
/// names an existing file, else the pretrained model of that name.
///
/// ```
/// # fn main() -> hdr_models::Result<()> {
/// let lenet = hdr_models::load_or_pretrained("lenet5", &candle_core::Device::Cpu)?;
/// assert_eq!(lenet.name, "lenet5");
/// # Ok(())
/// # }
/// ```
///
/// Errors: those of [`load`] for a file, those of [`pretrained`] otherwise (an unknown name
/// lists the pretrained ones).
pub fn load_or_pretrained(spec: &str, device: &Device) -> Result<LoadedModel> {
    let path = Path::new(spec);
    if path.is_file() {
        load(path, device)
    } else {
        pretrained(spec, device)
    }
}

/// Short names for models given as [`load_or_pretrained`] specs, for tables and charts: each
/// file's stem (`runs/study/resnet.safetensors` -> `resnet`) when those are all distinct, else
/// the specs without the `.safetensors` extension when those are (two runs of one architecture,
/// `runs/a/resnet.safetensors` and `runs/b/resnet.safetensors`, keep their folders), else the
/// specs as given.
pub fn short_labels<S: AsRef<str>>(specs: &[S]) -> Vec<String> {
    let distinct = |v: &[&str]| v.iter().enumerate().all(|(i, s)| !v[..i].contains(s));
    let given: Vec<&str> = specs.iter().map(|s| s.as_ref()).collect();
    let trimmed: Vec<&str> = given
        .iter()
        .map(|s| s.strip_suffix(".safetensors").unwrap_or(s))
        .collect();
    let stems: Vec<&str> = trimmed
        .iter()
        .map(|s| s.rsplit(['/', '\\']).next().unwrap_or(s))
        .collect();
    // `lenet5` (pretrained) and `lenet5.safetensors` (a file) differ only by the extension.
    let chosen = [stems, trimmed]
        .into_iter()
        .find(|v| distinct(v))
        .unwrap_or(given);
    chosen.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod label_tests {
    use super::short_labels;

    #[test]
    fn stems_when_distinct_else_the_paths() {
        assert_eq!(
            short_labels(&[
                "runs/s/resnet.safetensors",
                "lenet5",
                "runs/s/mlp1.safetensors"
            ]),
            ["resnet", "lenet5", "mlp1"]
        );
        assert_eq!(
            short_labels(&["runs/a/resnet.safetensors", "runs/b/resnet.safetensors"]),
            ["runs/a/resnet", "runs/b/resnet"]
        );
        assert_eq!(
            short_labels(&["resnet", "x/resnet.safetensors"]),
            ["resnet", "x/resnet"]
        );
        assert_eq!(
            short_labels(&["lenet5", "lenet5.safetensors"]),
            ["lenet5", "lenet5.safetensors"]
        );
        assert!(short_labels::<&str>(&[]).is_empty());
    }
}
