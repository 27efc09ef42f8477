//! Convolution followed by training-mode batch norm (and ReLU) as one op.
//!
//! As two ops, the convolution's output `z` is a tensor of candle's graph, and candle's backward
//! pass gives its gradient the treatment every gradient gets: a zeroed buffer of `z`'s size plus
//! an addition into it, on the calling thread, before the convolution's backward pass can start.
//! In a MobileNet-HDR training step those two passes over each block's largest tensors were
//! ~11% of the samples. Fused, `z`'s gradient lives only inside this op's backward pass.

use std::sync::{Arc, OnceLock};

use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

use crate::batch_norm::{check_channel_params, BatchNorm2d, BatchNormOutput};
use crate::conv::{validate, Activation, Conv2dConfig, Conv2dGemm};
use crate::depthwise::DepthwiseConv2d;
use crate::error::{OpsError, Result};
use crate::util::{cpu_f32, cpu_slices, tensor_from};

/// `batch_norm2d(conv2d(x, w, None, cfg without activation), gamma, beta, eps,
/// cfg.activation)`: a bias-free convolution, then batch normalisation with the statistics of
/// this batch, then `cfg.activation`.
///
/// Shapes: `x` `[b, c_in, h, w]`, `w` `[c_out, c_in / groups, kh, kw]`, `gamma` and `beta`
/// `[c_out]`; `y` as [`crate::conv2d`]'s output.
///
/// On CPU with `f32` tensors and `groups` 1 or depthwise this is one custom op (the same
/// kernels as [`crate::conv2d`] and [`crate::batch_norm2d`]) whose backward pass hands the
/// convolution's output gradient straight to the convolution's backward pass; elsewhere it is
/// composed from those two functions, with the same results.
pub fn conv_bn2d(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    cfg: &Conv2dConfig,
    eps: f64,
) -> Result<BatchNormOutput> {
    const OP: &str = "conv_bn2d";
    crate::util::setup();
    let conv_cfg = Conv2dConfig {
        activation: Activation::None,
        ..*cfg
    };
    let g = validate(x, w, None, &conv_cfg)?;
    check_channel_params(OP, g.c_out, x.dtype(), gamma, beta)?;
    let depthwise = cfg.groups == g.c_in && g.c_out == g.c_in;
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && (cfg.groups == 1 || depthwise);
    if !fast || g.b == 0 {
        let z = crate::conv2d(x, w, None, &conv_cfg)?;
        return crate::batch_norm2d(&z, gamma, beta, eps, cfg.activation);
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(OpsError::InvalidConfig {
            op: OP,
            reason: format!("need eps > 0, got {eps}"),
        });
    }
    let conv: Arc<dyn CustomOp3 + Send + Sync> = if cfg.groups == 1 {
        Arc::new(Conv2dGemm {
            g,
            act: Activation::None,
            max_group: usize::MAX,
        })
    } else {
        Arc::new(DepthwiseConv2d {
            g,
            act: Activation::None,
        })
    };
    let bn = BatchNorm2d::new(g.out_dims(), eps as f32, cfg.activation);
    let op = ConvBn {
        conv,
        bn: bn.clone(),
        c: g.c_out,
        z: Arc::new(OnceLock::new()),
    };
    // One `[2 c]` parameter argument (a custom op takes three): candle's `cat` backward splits
    // its gradient back into gamma's and beta's.
    let gb = Tensor::cat(&[gamma, beta], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)?;
    bn.output(y)
}

struct ConvBn {
    /// The convolution's own op, bias-free and without activation; its bias argument is a
    /// constant zero vector, whose gradient is never asked for.
    conv: Arc<dyn CustomOp3 + Send + Sync>,
    /// Shares its statistics with the caller's copy.
    bn: BatchNorm2d,
    /// Output channels.
    c: usize,
    /// The convolution's output, kept for the backward pass.
    z: Arc<OnceLock<Tensor>>,
}

impl CustomOp3 for ConvBn {
    fn name(&self) -> &'static str {
        "hdr-conv-bn2d"
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
        let c = self.c;
        let gb = cpu_f32(s3, l3, self.name())?;
        if gb.len() != 2 * c {
            bail!("{}: gamma and beta do not match the channels", self.name())
        }
        let zero = CpuStorage::F32(vec![0.0; c]);
        let (z, shape) =
            self.conv
                .cpu_fwd(s1, l1, s2, l2, &zero, &Layout::contiguous(Shape::from(c)))?;
        let CpuStorage::F32(z) = z else {
            bail!("{}: the convolution returned another dtype", self.name())
        };
        let y = self.bn.forward_slices(&z, &gb[..c], &gb[c..]);
        // Ignored if already set: an op instance is only ever run forward once.
        let _ = self
            .z
            .set(Tensor::from_vec(z, shape.clone(), &Device::Cpu)?);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (name, c) = (self.name(), self.c);
        let (Some(z), Some(stats)) = (self.z.get(), self.bn.stats()) else {
            bail!("{name}: backward called before forward")
        };
        let need_z = x.track_op() || w.track_op();
        let (dz, sums) = {
            cpu_slices!(name;
                zd = z,
                gbd = gb,
                yd = res,
                dy = grad,
            );
            if yd.len() != zd.len() || dy.len() != zd.len() || gbd.len() != 2 * c {
                bail!("{name}: gradient does not match the output shape")
            }
            self.bn
                .backward_slices(stats, zd, &gbd[..c], yd, dy, need_z)
        };
        let dgb = gb
            .track_op()
            .then(|| {
                let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = sums.iter().copied().unzip();
                tensor_from([dgamma, dbeta].concat(), &[2 * c])
            })
            .transpose()?;
        let (dx, dw) = match dz {
            Some(dz) => {
                let dz = Tensor::from_vec(dz, z.shape(), &Device::Cpu)?;
                let zero = Tensor::zeros(c, DType::F32, &Device::Cpu)?;
                let (dx, dw, _) = self.conv.bwd(x, w, &zero, z, &dz)?;
                (dx, dw)
            }
            None => (None, None),
        };
        Ok((dx, dw, dgb))
    }
}
