//! Quantized models as safetensors files: int8 weights (`I8`), f32 scales, i32 biases, and the
//! op list as JSON in the metadata.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{CompressError, Result};
use crate::model::{LayerWeights, OpRecord, QuantizedModel};

/// Value of the `format` metadata key of quantized-model files.
pub const QUANTIZED_FORMAT: &str = "hdr-compress/int8/1";

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that a
/// failed write leaves nothing (or the previous file) behind.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| CompressError::Io {
        path: path.into(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut builder = tempfile::Builder::new();
    // Readable by others like any file the user writes (tempfile's default is 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(&dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

pub(crate) fn format_err(path: &Path, reason: impl Into<String>) -> CompressError {
    CompressError::Format {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The metadata of the safetensors file `bytes` (named `source` in errors), checked to carry
/// `format` under the `format` key.
pub(crate) fn metadata(
    bytes: &[u8],
    source: &Path,
    format: &str,
) -> Result<HashMap<String, String>> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| format_err(source, e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let found = meta_get(&meta, "format", source)?;
    if found != format {
        return Err(format_err(
            source,
            format!("format {found:?}, expected {format:?}"),
        ));
    }
    Ok(meta)
}

/// The metadata value `key`, or an error naming the file.
pub(crate) fn meta_get<'m>(
    meta: &'m HashMap<String, String>,
    key: &str,
    source: &Path,
) -> Result<&'m str> {
    meta.get(key)
        .map(String::as_str)
        .ok_or_else(|| format_err(source, format!("no {key:?} metadata key")))
}

impl QuantizedModel {
    /// The bytes of the file [`QuantizedModel::save`] writes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let (ops, weights) = self.parts();
        let ops_json =
            serde_json::to_string(ops).map_err(|e| format_err(Path::new(""), e.to_string()))?;
        let metadata = HashMap::from([
            ("format".to_string(), QUANTIZED_FORMAT.to_string()),
            ("model".to_string(), self.name().to_string()),
            ("ops".to_string(), ops_json),
        ]);
        // Byte buffers first: the views borrow them.
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            let Some(w) = w else { continue };
            buffers.push((
                format!("ops.{i}.weight"),
                Dtype::I8,
                w.shape.clone(),
                w.codes.iter().map(|&c| c as u8).collect(),
            ));
            buffers.push((
                format!("ops.{i}.scale"),
                Dtype::F32,
                vec![w.scales.len()],
                w.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ));
            buffers.push((
                format!("ops.{i}.bias"),
                Dtype::I32,
                vec![w.bias.len()],
                w.bias.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ));
        }
        let views = buffers
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| format_err(Path::new(name), e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| format_err(Path::new(""), e.to_string()))
    }

    /// Writes the model to `path` atomically (temporary file in the same folder, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a model written by [`QuantizedModel::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| CompressError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads a model from the bytes of a file; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &Path) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| format_err(source, e.to_string()))?;
        let meta = metadata(bytes, source, QUANTIZED_FORMAT)?;
        let get = |k: &str| meta_get(&meta, k, source);
        let ops: Vec<OpRecord> = serde_json::from_str(get("ops")?)
            .map_err(|e| format_err(source, format!("op list does not parse: {e}")))?;
        let mut weights = Vec::with_capacity(ops.len());
        for i in 0..ops.len() {
            let name = |s: &str| format!("ops.{i}.{s}");
            let w = match st.tensor(&name("weight")) {
                Err(_) => None,
                Ok(w) => {
                    let tensor = |s: &str, dtype: Dtype| {
                        let t = st
                            .tensor(&name(s))
                            .map_err(|_| format_err(source, format!("{} is missing", name(s))))?;
                        if t.dtype() != dtype {
                            return Err(format_err(
                                source,
                                format!("{} is {:?}, expected {dtype:?}", name(s), t.dtype()),
                            ));
                        }
                        Ok(t)
                    };
                    let _ = tensor("weight", Dtype::I8)?;
                    let word = |b: &[u8]| [b[0], b[1], b[2], b[3]];
                    Some(LayerWeights {
                        codes: w.data().iter().map(|&b| b as i8).collect(),
                        shape: w.shape().to_vec(),
                        scales: tensor("scale", Dtype::F32)?
                            .data()
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes(word(b)))
                            .collect(),
                        bias: tensor("bias", Dtype::I32)?
                            .data()
                            .chunks_exact(4)
                            .map(|b| i32::from_le_bytes(word(b)))
                            .collect(),
                    })
                }
            };
            weights.push(w);
        }
        let name = get("model")?.to_string();
        // `from_parts` checks every op against its weights and the ops' order.
        QuantizedModel::from_parts(name, ops, weights, None)
    }
}
