//! Saving and loading models as safetensors files that carry their own configuration.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{ModelError, Result};
use crate::registry::ModelConfig;
use crate::Classifier;

/// Value of the `format` metadata key of files written by [`save`].
pub const FORMAT: &str = "hdr-models/1";

/// A model rebuilt from a file, with its trainable variables.
pub struct LoadedModel {
    /// Name recorded in the file (e.g. `"mobilenet_hdr"`).
    pub name: String,
    /// Configuration recorded in the file.
    pub config: ModelConfig,
    /// The model.
    pub model: Box<dyn Classifier>,
    /// Its variables (for fine-tuning, pruning or saving again).
    pub vars: VarMap,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

fn lock(vars: &VarMap) -> Result<std::sync::MutexGuard<'_, HashMap<String, candle_core::Var>>> {
    vars.data().lock().map_err(|_| ModelError::InvalidConfig {
        model: "varmap",
        reason: "the variable map's lock is poisoned (a thread panicked while holding it)".into(),
    })
}

/// Writes every variable of `vars` to `path` (atomically: temporary file, then rename), with the
/// model's name and configuration in the metadata, so that [`load`] needs nothing else.
pub fn save(path: &Path, name: &str, config: &ModelConfig, vars: &VarMap) -> Result<()> {
    let config_json = serde_json::to_string(config).map_err(|e| ModelError::Metadata {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("model".to_string(), name.to_string()),
        ("config".to_string(), config_json),
    ]);
    let tensors: Vec<(String, Tensor)> = lock(vars)?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let bytes = safetensors::tensor::serialize(tensors, Some(metadata)).map_err(|e| {
        ModelError::Format {
            path: path.into(),
            reason: e.to_string(),
        }
    })?;
    write_atomic(path, &bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| ModelError::Io {
        path: path.into(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut tmp = temp_file_in(&dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Rebuilds the model stored in `path` on `device`.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    load_bytes(&bytes, path, device)
}

/// Rebuilds a model from the bytes of a file written by [`save`]; `source` names it in errors.
pub fn load_bytes(bytes: &[u8], source: &Path, device: &Device) -> Result<LoadedModel> {
    let format_err = |reason: String| ModelError::Format {
        path: source.into(),
        reason,
    };
    let meta_err = |reason: String| ModelError::Metadata {
        path: source.into(),
        reason,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format_err(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |key: &str| {
        meta.get(key).cloned().ok_or_else(|| {
            meta_err(format!(
                "no {key:?} key (was it written by hdr_models::save?)"
            ))
        })
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(meta_err(format!(
            "format {format:?}, where hdr_models reads {FORMAT:?} (compressed models of \
             hdr-compress are read by hdr_compress's loaders)"
        )));
    }
    let name = get("model")?;
    let config: ModelConfig = serde_json::from_str(&get("config")?)
        .map_err(|e| meta_err(format!("config does not parse: {e}")))?;

    let vars = VarMap::new();
    let model = config.build(VarBuilder::from_varmap(&vars, DType::F32, device))?;
    let mut stored = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| format_err(e.to_string()))?;
    {
        let data = lock(&vars)?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for tensor_name in names {
            let var = &data[tensor_name];
            let t = stored
                .remove(tensor_name)
                .ok_or_else(|| ModelError::MissingTensor {
                    path: source.into(),
                    tensor: tensor_name.clone(),
                })?;
            if t.dims() != var.dims() {
                return Err(ModelError::ShapeMismatch {
                    path: source.into(),
                    tensor: tensor_name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
    }
    if let Some(extra) = stored.keys().min() {
        return Err(ModelError::UnexpectedTensor {
            path: source.into(),
            tensor: extra.clone(),
            model: name,
        });
    }
    Ok(LoadedModel {
        name,
        config,
        model,
        vars,
    })
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
