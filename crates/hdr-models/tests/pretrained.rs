//! Every shipped or committed trained model loads under its own name and classifies.

use candle_core::{DType, Device, Tensor};
use hdr_models::{pretrained, pretrained_names, ModelError};

#[test]
fn every_pretrained_model_loads_and_runs() -> anyhow::Result<()> {
    let names = pretrained_names();
    for expected in hdr_models::list() {
        assert!(
            names.contains(&expected),
            "every registered model has trained weights: {expected} missing from {names:?}"
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
fn a_file_or_a_name_loads() -> anyhow::Result<()> {
    let by_name = hdr_models::load_or_pretrained("lenet5", &Device::Cpu)?;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/lenet5.safetensors");
    let by_file = hdr_models::load_or_pretrained(file, &Device::Cpu)?;
    assert_eq!(by_name.name, by_file.name);
    assert!(matches!(
        hdr_models::load_or_pretrained("no/such/model.safetensors", &Device::Cpu),
        Err(ModelError::UnknownModel { .. })
    ));
    Ok(())
}

#[test]
fn unknown_pretrained_names_list_the_known_ones() {
    match pretrained("lenet6", &Device::Cpu) {
        Err(ModelError::UnknownModel { known, .. }) => assert!(known.contains(&"lenet5")),
        other => panic!("expected UnknownModel, got {other:?}"),
    }
}
