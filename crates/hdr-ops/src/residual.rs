//! The end of a residual block, `relu(a + b)`, as one op.
//!
//! As candle ops it is an addition and a ReLU: two passes over the activations forward, and
//! backward the ReLU's mask (a zero tensor, a comparison, a conversion to `f32`, a
//! multiplication) before the addition hands the gradient to both inputs. Here the forward is
//! one pass and the backward one masked copy of the output gradient, which both inputs receive.
//! The arithmetic is candle's, so results are the same to the bit: `max(a + b, 0)` forward, and
//! backward the gradient times 1 where `a + b >= 0` (candle's ReLU passes the gradient at zero)
//! and times 0 elsewhere.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{OpsError, Result};
use crate::util::{cpu_f32, cpu_slices, tensor_from, SERIAL_BELOW};

/// `relu(a + b)` for two tensors of the same shape: the output of a residual block.
///
/// `f32` CPU tensors take a fused kernel (one pass forward, one backward); other devices and
/// dtypes run candle's `(a + b)?.relu()`, with the same results.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let a = Var::new(&[1f32, -2.0, 0.5], &Device::Cpu)?;
/// let b = Tensor::new(&[1f32, 1.0, -0.5], &Device::Cpu)?;
/// let y = hdr_ops::add_relu(a.as_tensor(), &b)?;
/// assert_eq!(y.to_vec1::<f32>()?, [2.0, 0.0, 0.0]);
/// // The gradient passes where a + b >= 0, as through candle's ReLU.
/// let g = y.sum_all()?.backward()?;
/// assert_eq!(g.get(&a).map(|g| g.to_vec1::<f32>()).transpose()?, Some(vec![1.0, 0.0, 1.0]));
/// # Ok(())
/// # }
/// ```
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add_relu";
    if a.dims() != b.dims() {
        return Err(OpsError::ShapeMismatch {
            op: OP,
            expected: format!("{:?} (the first input's shape)", a.dims()),
            found: b.dims().to_vec(),
        });
    }
    if a.dtype() != b.dtype() {
        return Err(OpsError::DTypeMismatch {
            op: OP,
            lhs: a.dtype(),
            rhs: b.dtype(),
        });
    }
    crate::util::setup();
    if a.device().is_cpu() && b.device().is_cpu() && a.dtype() == DType::F32 {
        return Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?);
    }
    Ok((a + b)?.relu()?)
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "hdr-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        if a.len() != b.len() {
            bail!("{}: inputs of different sizes", self.name())
        }
        // Collected straight from the iterators: no zero-filled buffer to overwrite.
        let f = |(&p, &q): (&f32, &f32)| (p + q).max(0.0);
        let y: Vec<f32> = if a.len() < SERIAL_BELOW {
            a.iter().zip(b).map(f).collect()
        } else {
            a.par_iter()
                .zip(b)
                .with_min_len(SERIAL_BELOW)
                .map(f)
                .collect()
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !(a.track_op() || b.track_op()) {
            return Ok((None, None));
        }
        cpu_slices!(self.name(); ad = a, bd = b, gd = grad);
        if ad.len() != gd.len() || bd.len() != gd.len() {
            bail!("{}: gradient does not match the output shape", self.name())
        }
        // Candle's ReLU backward: the gradient times the f32 mask of `a + b >= 0`.
        let f = |((&g, &p), &q): ((&f32, &f32), &f32)| g * if p + q >= 0.0 { 1.0 } else { 0.0 };
        let dg: Vec<f32> = if gd.len() < SERIAL_BELOW {
            gd.iter().zip(ad).zip(bd).map(f).collect()
        } else {
            gd.par_iter()
                .zip(ad)
                .zip(bd)
                .with_min_len(SERIAL_BELOW)
                .map(f)
                .collect()
        };
        let dg = tensor_from(dg, a.dims())?;
        Ok((a.track_op().then(|| dg.clone()), b.track_op().then_some(dg)))
    }
}

#[cfg(test)]
mod tests {
    use super::add_relu;
    use candle_core::{DType, Device, Tensor, Var};

    /// Values and both gradients equal candle's `(a + b).relu()` to the bit, on a tensor large
    /// enough to take the parallel path, with exact zeros and both signs of zero among the sums.
    #[test]
    fn matches_candle_to_the_bit() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let n = 3 * super::SERIAL_BELOW + 17;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev)?)?;
        let mut bv = Tensor::randn(0f32, 1.0, n, &dev)?.to_vec1::<f32>()?;
        let av = a.as_tensor().to_vec1::<f32>()?;
        for i in (0..n).step_by(97) {
            bv[i] = -av[i]; // a + b == 0 exactly
        }
        bv[5] = -0.0;
        let b = Var::from_tensor(&Tensor::from_vec(bv, n, &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, n, &dev)?; // a non-uniform output gradient
        let ours = add_relu(a.as_tensor(), b.as_tensor()).map_err(candle_core::Error::wrap)?;
        let theirs = (a.as_tensor() + b.as_tensor())?.relu()?;
        let bits = |t: &Tensor| -> candle_core::Result<Vec<u32>> {
            Ok(t.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())
        };
        assert_eq!(bits(&ours)?, bits(&theirs)?);
        let g1 = (ours * &w)?.sum_all()?.backward()?;
        let g2 = (theirs * &w)?.sum_all()?.backward()?;
        for v in [&a, &b] {
            let (x, y) = (g1.get(v), g2.get(v));
            assert!(x.is_some() && y.is_some());
            if let (Some(x), Some(y)) = (x, y) {
                assert_eq!(bits(x)?, bits(y)?);
            }
        }
        Ok(())
    }

    #[test]
    fn untracked_inputs_get_no_gradient_and_bad_inputs_are_errors() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, -3.0], &dev)?;
        let b = Tensor::new(&[2f32, 1.0], &dev)?;
        let g = add_relu(a.as_tensor(), &b)
            .map_err(candle_core::Error::wrap)?
            .sum_all()?
            .backward()?;
        assert_eq!(g.get(&b).map(|_| ()), None);
        assert_eq!(
            g.get(&a).map(|t| t.to_vec1::<f32>()).transpose()?,
            Some(vec![1.0, 0.0])
        );
        let c = Tensor::new(&[1f32, 2.0, 3.0], &dev)?;
        assert!(add_relu(a.as_tensor(), &c).is_err());
        let d = b.to_dtype(DType::F64)?;
        assert!(add_relu(a.as_tensor(), &d).is_err());
        // Other dtypes run candle's ops.
        let e = add_relu(&d, &d).map_err(candle_core::Error::wrap)?;
        assert_eq!(e.to_vec1::<f64>()?, vec![4.0, 2.0]);
        Ok(())
    }
}
