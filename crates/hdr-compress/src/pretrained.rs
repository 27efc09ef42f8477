//! int8 models produced by this project from the zoo's shipped weights with the `quantize`
//! example (`docs/MODELS.md` records their accuracy and the command), so integer inference works
//! with no dataset.
//!
//! As in `hdr_models::pretrained`, the small files are embedded in the crate (default
//! `pretrained` feature) and work from crates.io; those of the large models (the MLPs,
//! MobileNet v1 and the teacher) are committed to the repository only and read from the crate's
//! folder in a checkout, a path or a git dependency.

use std::path::{Path, PathBuf};

use crate::error::CompressError;
use crate::error::Result;
use crate::model::QuantizedModel;

/// `(model name, int8 safetensors bytes)`.
#[cfg(feature = "pretrained")]
const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "lenet5",
        include_bytes!("../weights/lenet5-int8.safetensors"),
    ),
    (
        "lenet5_classic",
        include_bytes!("../weights/lenet5_classic-int8.safetensors"),
    ),
    (
        "resnet",
        include_bytes!("../weights/resnet-int8.safetensors"),
    ),
    (
        "densenet",
        include_bytes!("../weights/densenet-int8.safetensors"),
    ),
    (
        "mobilenet_hdr",
        include_bytes!("../weights/mobilenet_hdr-int8.safetensors"),
    ),
];

/// Models whose int8 files live in the repository's `crates/hdr-compress/weights/` only.
const IN_REPOSITORY: &[&str] = &["mlp1", "mlp2", "mlp3", "mobilenet", "wide_resnet"];

#[cfg(not(feature = "pretrained"))]
const EMBEDDED: &[(&str, &[u8])] = &[];

/// Names of the models shipped quantized: the embedded ones, then those read from the
/// repository (which [`pretrained_int8`] can load only from a checkout of it).
pub fn pretrained_int8_names() -> Vec<&'static str> {
    EMBEDDED
        .iter()
        .map(|(n, _)| *n)
        .chain(IN_REPOSITORY.iter().copied())
        .collect()
}

/// Where the repository keeps the int8 file of `name`.
fn repository_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(format!("{name}-int8.safetensors"))
}

/// The shipped int8 version of the zoo model `name`.
///
/// ```
/// # fn main() -> hdr_compress::Result<()> {
/// let q = hdr_compress::pretrained_int8("lenet5")?;
/// let x = candle_core::Tensor::zeros((1, 1, 28, 28), candle_core::DType::F32, &candle_core::Device::Cpu)?;
/// assert_eq!(q.forward(&x)?.dims(), &[1, 10]);
/// # Ok(())
/// # }
/// ```
///
/// Errors: [`hdr_models::ModelError::UnknownModel`] (inside [`crate::CompressError::Model`])
/// listing the shipped names; [`CompressError::PretrainedNotPackaged`] for a repository-only
/// file outside a checkout.
pub fn pretrained_int8(name: &str) -> Result<QuantizedModel> {
    if let Some((_, bytes)) = EMBEDDED.iter().find(|(n, _)| *n == name) {
        return QuantizedModel::from_bytes(bytes, Path::new(&format!("<pretrained {name} int8>")));
    }
    if IN_REPOSITORY.contains(&name) {
        let path = repository_file(name);
        if !path.is_file() {
            return Err(CompressError::PretrainedNotPackaged {
                name: name.to_string(),
                path,
            });
        }
        return QuantizedModel::load(&path);
    }
    Err(hdr_models::ModelError::UnknownModel {
        name: format!("{name} (pretrained int8)"),
        known: pretrained_int8_names(),
    }
    .into())
}
