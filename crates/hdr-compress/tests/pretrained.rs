//! The shipped int8 models load by name and agree with the f32 models they came from.

use candle_core::{Device, Tensor};
use hdr_compress::{pretrained_int8, pretrained_int8_names, CompressError};

#[test]
fn shipped_int8_models_agree_with_their_f32_originals() -> anyhow::Result<()> {
    assert!(pretrained_int8_names().contains(&"lenet5"));
    for name in pretrained_int8_names() {
        let q = pretrained_int8(name)?;
        let f = hdr_models::pretrained(name, &Device::Cpu)?;
        // Smooth random strokes are far from MNIST, so only the shapes and broad agreement
        // are checked here; test-set accuracy is measured by the compress example.
        let x = Tensor::rand(0f32, 1f32, (64, 1, 28, 28), &Device::Cpu)?;
        let (qa, fa) = (q.forward(&x)?.argmax(1)?, f.model.forward(&x)?.argmax(1)?);
        let same = qa
            .eq(&fa)?
            .to_dtype(candle_core::DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!(
            same >= 0.9,
            "{name}: int8 and f32 agree on {same} of random inputs"
        );
    }
    assert!(matches!(
        pretrained_int8("lenet6"),
        Err(CompressError::Model(
            hdr_models::ModelError::UnknownModel { .. }
        ))
    ));
    Ok(())
}
