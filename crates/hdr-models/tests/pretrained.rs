//! Every shipped or committed trained model loads under its own name and classifies.

use candle_core::{DType, Device, Tensor};
use hdr_models::{pretrained, pretrained_names, ModelError};

#[test]
fn every_pretrained_model_loads_and_runs() -> anyhow::Result<()> {
    let names = pretrained_names();
    for expected in [
        "lenet5",
        "mobilenet_hdr",
        "resnet",
        "densenet",
        "mlp1",
        "mobilenet",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
    for name in names {
        // In this repository every file is present, embedded or not.
        let loaded = pretrained(name, &Device::Cpu)?;
        assert_eq!(loaded.name, name);
        let logits = loaded.model.forward(&x)?;
        assert_eq!(logits.dims(), &[2, 10], "{name}");
        let v = logits.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().all(|z| z.is_finite()), "{name}");
    }
    Ok(())
}

#[test]
fn unknown_pretrained_names_list_the_known_ones() {
    match pretrained("lenet6", &Device::Cpu) {
        Err(ModelError::UnknownModel { known, .. }) => assert!(known.contains(&"lenet5")),
        other => panic!("expected UnknownModel, got {other:?}"),
    }
}
