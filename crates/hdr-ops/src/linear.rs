//! Fully connected layer with bias and optional ReLU as one op.
//!
//! candle computes `relu(x · wᵀ + b)` as three ops (matmul, broadcast add, relu), each with
//! its own output buffer, pass over memory and, in backward, gradient bookkeeping. For the
//! small layers of the zoo at batch 1 that per-op overhead is most of the time; here it is one
//! gemm and one epilogue pass.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::conv::Activation;
use crate::error::{OpsError, Result};
use crate::util::{
    check_params, cpu_f32, cpu_slices, gemm_par_all, sgemm, sgemm_init, tensor_from, Mat,
};

/// `act(x · wᵀ + b)` for `x` `[batch, in]`, `w` `[out, in]` (PyTorch's and candle-nn's
/// layout), `b` `[out]`.
///
/// # Shapes
/// `[batch, in] -> [batch, out]`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hdr_ops::{linear, Activation};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let x = Tensor::new(&[[1f32, -2.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1f32, 1.0], [0.0, 1.0]], &Device::Cpu)?;
/// let b = Tensor::new(&[0.5f32, 0.0], &Device::Cpu)?;
/// let y = linear(&x, &w, Some(&b), Activation::Relu)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![0.0, 0.0]]); // relu(-0.5), relu(-2)
/// # Ok(())
/// # }
/// ```
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    crate::util::setup();
    const OP: &str = "linear";
    let (batch, k) = match *x.dims() {
        [batch, k] => (batch, k),
        _ => {
            return Err(OpsError::ShapeMismatch {
                op: OP,
                expected: "[batch, in]".into(),
                found: x.dims().to_vec(),
            })
        }
    };
    let n = match *w.dims() {
        [n, wk] if wk == k => n,
        _ => {
            return Err(OpsError::ShapeMismatch {
                op: OP,
                expected: format!("[out, {k}] weights"),
                found: w.dims().to_vec(),
            })
        }
    };
    check_params(OP, x, w, b, n)?;
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        // candle's own ops elsewhere (CUDA, Metal, other dtypes).
        let mut y = x.matmul(&w.t()?)?;
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        return Ok(match act {
            Activation::None => y,
            Activation::Relu => y.relu()?,
        });
    }
    let bias = match b {
        Some(b) => b.contiguous()?,
        // Does not track gradients: its gradient is never computed.
        None => Tensor::zeros(n, DType::F32, x.device())?,
    };
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias, Linear { batch, k, n, act })?)
}

struct Linear {
    batch: usize,
    k: usize,
    n: usize,
    act: Activation,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "hdr-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, k, n) = (self.batch, self.k, self.n);
        let (x, w, bias) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_f32(s2, l2, self.name())?,
            cpu_f32(s3, l3, self.name())?,
        );
        if x.len() != b * k || w.len() != n * k || bias.len() != n {
            bail!("{}: inputs do not match the validated shapes", self.name())
        }
        let mut y: Vec<f32> = Vec::with_capacity(b * n);
        let out: &mut [MaybeUninit<f32>] = &mut y.spare_capacity_mut()[..b * n];
        let yv = sgemm_init(
            (b, n, k),
            Mat::rows(x, k),
            Mat::rows_t(w, k),
            out,
            gemm_par_all(),
        )?;
        for row in yv.chunks_exact_mut(n.max(1)) {
            match self.act {
                Activation::None => row.iter_mut().zip(bias).for_each(|(v, &c)| *v += c),
                Activation::Relu => row
                    .iter_mut()
                    .zip(bias)
                    .for_each(|(v, &c)| *v = (*v + c).max(0.0)),
            }
        }
        // SAFETY: `sgemm_init` succeeded, so it wrote all `b * n` elements.
        unsafe { y.set_len(b * n) };
        Ok((CpuStorage::F32(y), Shape::from_dims(&[b, n])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, k, n) = (self.batch, self.k, self.n);
        let name = self.name();
        cpu_slices!(name;
            xd = x,
            wd = w,
            yd = res,
            gd = grad,
        );
        if gd.len() != b * n || yd.len() != b * n || xd.len() != b * k || wd.len() != n * k {
            bail!("{name}: gradient does not match the output shape")
        }
        // The gradient through the ReLU: zero where the output was clamped.
        let masked;
        let g: &[f32] = match self.act {
            Activation::None => gd,
            Activation::Relu => {
                masked = gd
                    .iter()
                    .zip(yd)
                    .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
                    .collect::<Vec<f32>>();
                &masked
            }
        };
        let par = gemm_par_all();
        let dx = if x.track_op() {
            let mut dx = vec![0f32; b * k];
            sgemm(
                (b, k, n),
                Mat::rows(g, n),
                Mat::rows(wd, k),
                &mut dx,
                false,
                par,
            )?;
            Some(tensor_from(dx, &[b, k])?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let mut dw = vec![0f32; n * k];
            sgemm(
                (n, k, b),
                Mat::rows_t(g, n),
                Mat::rows(xd, k),
                &mut dw,
                false,
                par,
            )?;
            Some(tensor_from(dw, &[n, k])?)
        } else {
            None
        };
        let db = if bias.track_op() {
            let mut db = vec![0f32; n];
            for row in g.chunks_exact(n.max(1)) {
                db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            Some(tensor_from(db, &[n])?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}
