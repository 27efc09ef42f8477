//! Weights trained by this project's own examples, shipped inside the crate (feature
//! `pretrained`, on by default), so that a model works with no network and no dataset.
//! `docs/MODELS.md` records each file's test accuracy and the command that produced it.

use std::path::Path;

use candle_core::Device;

use crate::error::{ModelError, Result};
use crate::io::{load_bytes, LoadedModel};

/// `(name, safetensors bytes)` of the shipped models.
#[cfg(feature = "pretrained")]
const SHIPPED: &[(&str, &[u8])] = &[("lenet5", include_bytes!("../weights/lenet5.safetensors"))];

#[cfg(not(feature = "pretrained"))]
const SHIPPED: &[(&str, &[u8])] = &[];

/// Names of the models with shipped weights.
pub fn pretrained_names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(n, _)| *n).collect()
}

/// The shipped trained model `name` on `device`.
///
/// ```
/// # fn main() -> hdr_models::Result<()> {
/// let lenet = hdr_models::pretrained("lenet5", &candle_core::Device::Cpu)?;
/// assert_eq!(lenet.name, "lenet5");
/// # Ok(())
/// # }
/// ```
pub fn pretrained(name: &str, device: &Device) -> Result<LoadedModel> {
    let (_, bytes) =
        SHIPPED
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ModelError::UnknownModel {
                name: format!("{name} (pretrained)"),
                known: pretrained_names(),
            })?;
    load_bytes(bytes, Path::new(&format!("<pretrained {name}>")), device)
}
