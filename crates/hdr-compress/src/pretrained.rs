//! int8 models produced by this project from the zoo's shipped weights with the `compress`
//! example (`docs/MODELS.md` records their accuracy and the command), embedded in the crate
//! behind the default `pretrained` feature, so integer inference works with no dataset.

use std::path::Path;

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
        "mobilenet_hdr",
        include_bytes!("../weights/mobilenet_hdr-int8.safetensors"),
    ),
];

#[cfg(not(feature = "pretrained"))]
const EMBEDDED: &[(&str, &[u8])] = &[];

/// Names of the models shipped quantized.
pub fn pretrained_int8_names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(n, _)| *n).collect()
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
/// listing the shipped names.
pub fn pretrained_int8(name: &str) -> Result<QuantizedModel> {
    match EMBEDDED.iter().find(|(n, _)| *n == name) {
        Some((_, bytes)) => {
            QuantizedModel::from_bytes(bytes, Path::new(&format!("<pretrained {name} int8>")))
        }
        None => Err(hdr_models::ModelError::UnknownModel {
            name: format!("{name} (pretrained int8)"),
            known: pretrained_int8_names(),
        }
        .into()),
    }
}
