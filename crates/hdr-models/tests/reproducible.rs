//! Reproducibility of initialisation and dropout.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hdr_models::{Classifier, MlpConfig, ModelConfig};

fn build(cfg: &ModelConfig) -> anyhow::Result<(Box<dyn Classifier>, VarMap)> {
    let vars = VarMap::new();
    let model = cfg.build(VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
    Ok((model, vars))
}

fn input(b: usize, seed: u64) -> anyhow::Result<Tensor> {
    let data: Vec<f32> = (0..b * 784)
        .map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 / 1000.0)
        .collect();
    Ok(Tensor::from_vec(data, (b, 1, 28, 28), &Device::Cpu)?)
}

#[test]
fn seeded_init_and_dropout_are_reproducible() -> anyhow::Result<()> {
    let x = input(5, 8)?;
    let run = |seed: u64| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        let cfg = ModelConfig::Mlp(MlpConfig {
            dropout: 0.5,
            ..MlpConfig::hidden(&[32])
        });
        let (model, vars) = build(&cfg)?;
        hdr_models::init::init(&vars, seed)?;
        hdr_models::init::seed(seed);
        let eval = model.forward(&x)?.flatten_all()?.to_vec1()?;
        let train = model.forward_t(&x, true)?.logits.flatten_all()?.to_vec1()?;
        Ok((eval, train))
    };
    let (a, b) = (run(1)?, run(1)?);
    assert_eq!(a, b, "same seed, same parameters and dropout masks");
    assert_ne!(a.0, run(2)?.0, "another seed, other parameters");
    // Saved stream position replays the same mask.
    let (model, _) = build(&ModelConfig::Mlp(MlpConfig {
        dropout: 0.5,
        ..MlpConfig::hidden(&[32])
    }))?;
    let state = hdr_models::init::rng_state();
    let m1 = model
        .forward_t(&x, true)?
        .logits
        .flatten_all()?
        .to_vec1::<f32>()?;
    hdr_models::init::set_rng_state(state);
    let m2 = model
        .forward_t(&x, true)?
        .logits
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(m1, m2);
    Ok(())
}
