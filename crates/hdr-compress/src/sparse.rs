//! Pruned models as compact files: a weight that is mostly zeros is stored as a bitmap of its
//! non-zero positions and the non-zero values, so a model pruned to 90% sparsity takes about
//! a seventh of the dense file. Loading rebuilds the ordinary dense model.
//!
//! The file is a safetensors file like [`hdr_models::save`] writes (same `model` and `config`
//! metadata, `format` = [`SPARSE_FORMAT`]); a tensor `t` is either stored whole under its own
//! name, or as `t.mask` (`U8`, one bit per element, row-major, least significant bit first) and
//! `t.values` (`F32`, the non-zero elements in order). A tensor goes sparse only when that is
//! smaller, i.e. when fewer than 31/32 of its elements are non-zero.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hdr_models::{LoadedModel, ModelConfig};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{CompressError, Result};
use crate::io::{format_err, meta_get, metadata, write_atomic};
use crate::prune::lock;

/// Value of the `format` metadata key of sparse model files.
pub const SPARSE_FORMAT: &str = "hdr-compress/sparse/1";

const MASK: &str = ".mask";
const VALUES: &str = ".values";

/// One tensor as stored: whole, or as bitmap + non-zero values.
enum Stored {
    Dense(Vec<f32>, Vec<usize>),
    Sparse { mask: Vec<u8>, values: Vec<f32> },
}

fn encode(values: &[f32], dims: &[usize]) -> Stored {
    let nnz = values.iter().filter(|v| **v != 0.0).count();
    // Bitmap (n/8 bytes) + values (4 nnz bytes) against 4 n bytes.
    if values.len().div_ceil(8) + 4 * nnz >= 4 * values.len() {
        return Stored::Dense(values.to_vec(), dims.to_vec());
    }
    let mut mask = vec![0u8; values.len().div_ceil(8)];
    let mut kept = Vec::with_capacity(nnz);
    for (i, &v) in values.iter().enumerate() {
        if v != 0.0 {
            mask[i / 8] |= 1 << (i % 8);
            kept.push(v);
        }
    }
    Stored::Sparse { mask, values: kept }
}

/// Expands a bitmap and its values into `n` elements; `None` when they do not fit together.
fn decode(mask: &[u8], values: &[f32], n: usize) -> Option<Vec<f32>> {
    if mask.len() != n.div_ceil(8) {
        return None;
    }
    let ones: usize = mask.iter().map(|b| b.count_ones() as usize).sum();
    // Bits past the end must be clear, and there is one value per set bit.
    if ones != values.len() || (!n.is_multiple_of(8) && mask[n / 8] >> (n % 8) != 0) {
        return None;
    }
    let mut out = vec![0f32; n];
    let mut next = values.iter();
    for (i, o) in out.iter_mut().enumerate() {
        if mask[i / 8] & (1 << (i % 8)) != 0 {
            *o = *next.next()?;
        }
    }
    Some(out)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The bytes of the file [`save_sparse`] writes.
pub fn sparse_bytes(name: &str, config: &ModelConfig, vars: &VarMap) -> Result<Vec<u8>> {
    let config_json =
        serde_json::to_string(config).map_err(|e| format_err(Path::new(""), e.to_string()))?;
    let metadata = HashMap::from([
        ("format".to_string(), SPARSE_FORMAT.to_string()),
        ("model".to_string(), name.to_string()),
        ("config".to_string(), config_json),
    ]);
    let mut stored: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = Vec::new();
    {
        let data = lock(vars)?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for tname in names {
            let t = data[tname].as_tensor();
            let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            match encode(&values, t.dims()) {
                Stored::Dense(v, dims) => {
                    stored.push((tname.clone(), f32_bytes(&v), Dtype::F32, dims))
                }
                Stored::Sparse { mask, values } => {
                    let (ml, vl) = (mask.len(), values.len());
                    stored.push((format!("{tname}{MASK}"), mask, Dtype::U8, vec![ml]));
                    stored.push((
                        format!("{tname}{VALUES}"),
                        f32_bytes(&values),
                        Dtype::F32,
                        vec![vl],
                    ));
                }
            }
        }
    }
    let views = stored
        .iter()
        .map(|(n, bytes, dtype, shape)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| format_err(Path::new(""), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| format_err(Path::new(""), e.to_string()))
}

/// Writes the model `name` (configuration `config`, variables `vars`) to `path` in the sparse
/// format, atomically (temporary file, then rename).
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vars = VarMap::new();
/// let model = hdr_models::create("lenet5", VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
/// hdr_models::init::init(&vars, 0)?;
/// let masks = hdr_compress::magnitude(&vars, 0.9, hdr_compress::Scope::Global)?;
/// masks.apply(&vars)?;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("lenet5-pruned.safetensors");
/// hdr_compress::save_sparse(&path, "lenet5", &model.config(), &vars)?;
/// assert!(std::fs::metadata(&path)?.len() < 50_000); // dense: 247 kB
/// let back = hdr_compress::load_sparse(&path, &Device::Cpu)?;
/// assert_eq!(back.name, "lenet5");
/// # Ok(())
/// # }
/// ```
pub fn save_sparse(path: &Path, name: &str, config: &ModelConfig, vars: &VarMap) -> Result<()> {
    write_atomic(path, &sparse_bytes(name, config, vars)?)
}

/// Rebuilds the dense model stored by [`save_sparse`] in `path`, on `device`.
pub fn load_sparse(path: &Path, device: &Device) -> Result<LoadedModel> {
    let bytes = std::fs::read(path).map_err(|source| CompressError::Io {
        path: path.into(),
        source,
    })?;
    sparse_from_bytes(&bytes, path, device)
}

/// [`load_sparse`] from the bytes of a file; `source` names it in errors.
pub fn sparse_from_bytes(bytes: &[u8], source: &Path, device: &Device) -> Result<LoadedModel> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format_err(source, e.to_string()))?;
    let meta = metadata(bytes, source, SPARSE_FORMAT)?;
    let get = |k: &str| meta_get(&meta, k, source);
    let name = get("model")?.to_string();
    let config: ModelConfig = serde_json::from_str(get("config")?)
        .map_err(|e| format_err(source, format!("config does not parse: {e}")))?;
    let vars = VarMap::new();
    let model = config.build(VarBuilder::from_varmap(&vars, DType::F32, device))?;

    let f32s = |tname: &str| -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Ok(view) = st.tensor(tname) else {
            return Ok(None);
        };
        if view.dtype() != Dtype::F32 {
            return Err(format_err(
                source,
                format!("{tname}: {:?}, expected F32", view.dtype()),
            ));
        }
        let v = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Some((v, view.shape().to_vec())))
    };
    let mut used = 0usize;
    let data = lock(&vars)?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for tname in names {
        let var = &data[tname];
        let n = var.elem_count();
        let values = if let Some((v, shape)) = f32s(tname)? {
            if shape != var.dims() {
                return Err(format_err(
                    source,
                    format!("{tname}: shape {shape:?}, the model has {:?}", var.dims()),
                ));
            }
            used += 1;
            v
        } else {
            let mask = st
                .tensor(&format!("{tname}{MASK}"))
                .map_err(|_| format_err(source, format!("tensor {tname} is missing")))?;
            if mask.dtype() != Dtype::U8 {
                return Err(format_err(source, format!("{tname}{MASK}: expected U8")));
            }
            let (vals, _) = f32s(&format!("{tname}{VALUES}"))?
                .ok_or_else(|| format_err(source, format!("{tname}{VALUES} is missing")))?;
            used += 2;
            decode(mask.data(), &vals, n).ok_or_else(|| {
                format_err(
                    source,
                    format!(
                        "{tname}: the mask and the {} values do not fit {n} elements",
                        vals.len()
                    ),
                )
            })?
        };
        var.set(&Tensor::from_vec(values, var.dims(), device)?)?;
    }
    drop(data);
    if used != st.len() {
        return Err(format_err(
            source,
            format!(
                "{} tensor(s) that the model {name} does not have",
                st.len() - used
            ),
        ));
    }
    Ok(LoadedModel {
        name,
        config,
        model,
        vars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encoding_round_trips(
            values in proptest::collection::vec(
                prop_oneof![3 => Just(0f32), 1 => -1f32..1f32], 0..300)
        ) {
            let dims = [values.len()];
            match encode(&values, &dims) {
                Stored::Dense(v, d) => {
                    prop_assert_eq!(&v, &values);
                    prop_assert_eq!(d, dims.to_vec());
                }
                Stored::Sparse { mask, values: kept } => {
                    prop_assert!(mask.len() + 4 * kept.len() < 4 * values.len());
                    prop_assert_eq!(decode(&mask, &kept, values.len()), Some(values.clone()));
                }
            }
        }
    }

    #[test]
    fn inconsistent_masks_are_rejected() {
        let v = [0.0, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0];
        let Stored::Sparse { mask, values } = encode(&v, &[10]) else {
            panic!("mostly zeros must go sparse");
        };
        assert_eq!(decode(&mask, &values, 10).as_deref(), Some(&v[..]));
        assert_eq!(decode(&mask, &values[..1], 10), None, "too few values");
        assert_eq!(decode(&mask, &values, 17), None, "wrong mask length");
        let mut stray = mask.clone();
        stray[1] |= 0x80; // a bit past element 9
        assert_eq!(decode(&stray, &[1.5, -2.0, 3.0], 10), None);
    }
}
