//! Parameter and multiply-accumulate counts checked against hand computation.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use hdr_models::{LeNet5, LeNet5Config, Mlp, MlpConfig};

#[test]
fn lenet5_counts_by_hand() -> anyhow::Result<()> {
    let vars = VarMap::new();
    let m = LeNet5::new(
        &LeNet5Config::default(),
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )?;
    let s = hdr_models::Classifier::summary(&m);
    // (name, output, params, MACs), computed by hand:
    //   c1: 6 filters of 1x5x5 + 6 biases = 156; 28x28 outputs x 6 x 25 = 117,600 MACs
    //   c3: 16 x 6x5x5 + 16 = 2,416; 10x10 x 16 x 150 = 240,000
    //   f5: 400x120 + 120 = 48,120; f6: 120x84 + 84 = 10,164; out: 84x10 + 10 = 850
    let expected: [(&str, &[usize], usize, u64); 7] = [
        ("c1", &[6, 28, 28], 156, 117_600),
        ("s2", &[6, 14, 14], 0, 0),
        ("c3", &[16, 10, 10], 2_416, 240_000),
        ("s4", &[16, 5, 5], 0, 0),
        ("f5", &[120], 48_120, 48_000),
        ("f6", &[84], 10_164, 10_080),
        ("out", &[10], 850, 840),
    ];
    assert_eq!(s.layers.len(), expected.len());
    for (layer, (name, out, params, macs)) in s.layers.iter().zip(expected) {
        assert_eq!(
            (
                layer.name.as_str(),
                &layer.output[..],
                layer.params,
                layer.macs
            ),
            (name, out, params, macs)
        );
    }
    assert_eq!(s.params(), 61_706);
    assert_eq!(s.macs(), 416_520);
    // The summary's count agrees with the variables actually created.
    let stored: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(stored, 61_706);
    let text = s.to_string();
    assert!(text.contains("Trainable params: 61,706"), "{text}");
    Ok(())
}

#[test]
fn mlp_counts_by_hand() -> anyhow::Result<()> {
    for hidden in [vec![], vec![800], vec![100, 50, 25]] {
        let vars = VarMap::new();
        let cfg = MlpConfig::hidden(&hidden);
        let m = Mlp::new(
            &cfg,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )?;
        let s = hdr_models::Classifier::summary(&m);
        let widths: Vec<usize> = std::iter::once(784)
            .chain(hidden.iter().copied())
            .chain([10])
            .collect();
        let params: usize = widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
        let macs: u64 = widths.windows(2).map(|w| (w[0] * w[1]) as u64).sum();
        assert_eq!((s.params(), s.macs()), (params, macs), "{hidden:?}");
        assert_eq!(s.layers.len(), hidden.len() + 1);
    }
    // 784-800-10: 627,200 + 800 + 8,000 + 10.
    let vars = VarMap::new();
    let m = Mlp::new(
        &MlpConfig::one_hidden(),
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )?;
    assert_eq!(hdr_models::Classifier::summary(&m).params(), 636_010);
    Ok(())
}
