//! Parameters as plain vectors, and batch norm folded into the convolution before it (exact in
//! f32): the first step of both int8 quantization and structured pruning.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;

use crate::error::{CompressError, Result};

/// Batch-norm epsilon of the zoo.
pub(crate) const BN_EPS: f32 = 1e-5;

pub(crate) fn missing(name: &str) -> CompressError {
    CompressError::MissingParameter { name: name.into() }
}

/// The f32 parameters of `vars`, by name.
pub(crate) fn read_params(vars: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| CompressError::InvalidConfig {
            name: "vars",
            value: "poisoned lock".into(),
            reason: "a thread panicked while holding the variable map",
        })?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(DType::F32)?)))
        .collect()
}

/// A parameter's values (row-major) and shape.
pub(crate) fn vec_of(
    params: &HashMap<String, Tensor>,
    name: &str,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = params.get(name).ok_or_else(|| missing(name))?;
    Ok((t.flatten_all()?.to_vec1::<f32>()?, t.dims().to_vec()))
}

/// A batch norm with running statistics: per channel, `y = (x - mean) * scale + beta` with
/// `scale = gamma / sqrt(var + eps)`.
#[derive(Debug, Clone)]
pub(crate) struct BatchNorm {
    pub(crate) gamma: Vec<f32>,
    pub(crate) beta: Vec<f32>,
    pub(crate) mean: Vec<f32>,
    pub(crate) var: Vec<f32>,
}

impl BatchNorm {
    /// Reads `prefix.{weight,bias,running_mean,running_var}`, which must have equal lengths.
    pub(crate) fn read(params: &HashMap<String, Tensor>, prefix: &str) -> Result<Self> {
        let p = |s: &str| vec_of(params, &format!("{prefix}.{s}"));
        let (gamma, beta, mean, var) = (
            p("weight")?.0,
            p("bias")?.0,
            p("running_mean")?.0,
            p("running_var")?.0,
        );
        if [beta.len(), mean.len(), var.len()] != [gamma.len(); 3] {
            return Err(CompressError::BadParameter {
                name: format!("{prefix}.*"),
                expected: "four statistics of the same length".into(),
                found: vec![gamma.len(), beta.len(), mean.len(), var.len()],
            });
        }
        Ok(Self {
            gamma,
            beta,
            mean,
            var,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.gamma.len()
    }

    pub(crate) fn scale(&self, j: usize) -> f32 {
        self.gamma[j] / (self.var[j] + BN_EPS).sqrt()
    }

    pub(crate) fn shift(&self, j: usize) -> f32 {
        self.beta[j] - self.mean[j] * self.scale(j)
    }
}

/// A convolution's weight (`[out, in / groups, kh, kw]`, row-major), shape and bias, with the
/// batch norm `bn` (its parameter prefix) folded in when given. A missing bias is zero.
pub(crate) fn folded_conv(
    params: &HashMap<String, Tensor>,
    weight: &str,
    bias: Option<&str>,
    bn: Option<&str>,
) -> Result<(Vec<f32>, Vec<usize>, Vec<f32>)> {
    let (mut w, shape) = vec_of(params, weight)?;
    let bad = |expected: &str| CompressError::BadParameter {
        name: weight.to_string(),
        expected: expected.into(),
        found: shape.clone(),
    };
    let &[o, _, _, _] = &shape[..] else {
        return Err(bad("[out, in / groups, k, k]"));
    };
    let mut b = match bias {
        Some(b) => vec_of(params, b)?.0,
        None => vec![0.0; o],
    };
    if b.len() != o {
        return Err(bad("as many biases as output channels"));
    }
    if let Some(prefix) = bn {
        let bn = BatchNorm::read(params, prefix)?;
        if bn.len() != o {
            return Err(bad("a batch norm of the same width"));
        }
        // Exact in f32: y = (conv(x) + b - mean) * s + beta.
        let per = w.len() / o.max(1);
        for j in 0..o {
            let s = bn.scale(j);
            w[j * per..(j + 1) * per].iter_mut().for_each(|v| *v *= s);
            b[j] = (b[j] - bn.mean[j]) * s + bn.beta[j];
        }
    }
    Ok((w, shape, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn folding_matches_batch_norm_after_the_convolution() {
        // Two 1x1 filters over one channel: conv(x) = w * x + b, then batch norm.
        let params = HashMap::from([
            ("c.weight".to_string(), t(&[2.0, -1.0], &[2, 1, 1, 1])),
            ("c.bias".to_string(), t(&[0.5, 1.0], &[2])),
            ("bn.weight".to_string(), t(&[3.0, 0.5], &[2])),
            ("bn.bias".to_string(), t(&[0.25, -2.0], &[2])),
            ("bn.running_mean".to_string(), t(&[1.0, -1.0], &[2])),
            ("bn.running_var".to_string(), t(&[4.0, 0.25], &[2])),
        ]);
        let (w, shape, b) = folded_conv(&params, "c.weight", Some("c.bias"), Some("bn")).unwrap();
        assert_eq!(shape, [2, 1, 1, 1]);
        let bn = BatchNorm::read(&params, "bn").unwrap();
        for x in [-1.5f32, 0.0, 2.0] {
            for j in 0..2 {
                let conv = [2.0, -1.0][j] * x + [0.5, 1.0][j];
                let want = (conv - bn.mean[j]) * bn.scale(j) + bn.beta[j];
                let got = w[j] * x + b[j];
                assert!(
                    (got - want).abs() < 1e-5,
                    "x {x} channel {j}: {got} vs {want}"
                );
            }
        }
        // Without a bias the folded bias is the batch norm's shift.
        let (_, _, b0) = folded_conv(&params, "c.weight", None, Some("bn")).unwrap();
        for (j, b) in b0.iter().enumerate() {
            assert!((b - bn.shift(j)).abs() < 1e-6);
        }
    }

    #[test]
    fn mismatched_widths_are_typed_errors() {
        let params = HashMap::from([
            ("c.weight".to_string(), t(&[2.0, -1.0], &[2, 1, 1, 1])),
            ("c.bias".to_string(), t(&[0.5], &[1])),
            ("flat.weight".to_string(), t(&[2.0, -1.0], &[2, 1])),
        ]);
        assert!(matches!(
            folded_conv(&params, "c.weight", Some("c.bias"), None),
            Err(CompressError::BadParameter { .. })
        ));
        assert!(matches!(
            folded_conv(&params, "flat.weight", None, None),
            Err(CompressError::BadParameter { .. })
        ));
        assert!(matches!(
            folded_conv(&params, "c.weight", None, Some("bn")),
            Err(CompressError::MissingParameter { .. })
        ));
    }
}
