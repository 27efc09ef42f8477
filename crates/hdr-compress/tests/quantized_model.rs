//! The quantized integer path against the f32 models.

mod common;

use candle_core::{DType, Device, Tensor};
use hdr_compress::{CompressError, Isa, Observer, QuantizeConfig, QuantizedModel};
use safetensors::{Dtype, SafeTensors};

use common::{agreement, model, relative_error, synthetic};

#[test]
fn every_zoo_model_runs_quantized_end_to_end() {
    for name in hdr_models::list() {
        let (m, vars) = model(name, 7);
        let calib = [synthetic(16, 1), synthetic(16, 2)];
        let q =
            QuantizedModel::quantize(name, &m.graph(), &vars, &calib, &QuantizeConfig::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = synthetic(8, 3);
        let (lf, lq) = (m.forward(&x).unwrap(), q.forward(&x).unwrap());
        assert_eq!(lq.dims(), &[8, 10], "{name}");
        let err = relative_error(&lq, &lf);
        eprintln!("{name}: {} ops, relative logit error {err:.4}", q.num_ops());
        assert!(err < 0.2, "{name}: relative logit error {err}");
    }
}

#[test]
fn portable_and_simd_paths_give_identical_logits() {
    for name in ["lenet5", "mobilenet_hdr", "resnet"] {
        let (m, vars) = model(name, 3);
        let q = QuantizedModel::quantize(
            name,
            &m.graph(),
            &vars,
            &[synthetic(16, 5)],
            &QuantizeConfig::default(),
        )
        .unwrap();
        let x = synthetic(5, 6);
        let want = q
            .clone()
            .with_isa(Isa::Portable)
            .forward(&x)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for isa in Isa::ALL.into_iter().filter(|&i| i != Isa::Portable) {
            let got = q
                .clone()
                .with_isa(isa)
                .forward(&x)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(got, want, "{name} {isa:?}");
        }
    }
}

#[test]
fn save_load_round_trip_is_exact_and_four_times_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let (m, vars) = model("lenet5", 11);
    let cfg = QuantizeConfig {
        observer: Observer::Percentile(99.99),
        ..QuantizeConfig::default()
    };
    let q =
        QuantizedModel::quantize("lenet5", &m.graph(), &vars, &[synthetic(32, 1)], &cfg).unwrap();
    let (qpath, fpath) = (
        dir.path().join("q.safetensors"),
        dir.path().join("f.safetensors"),
    );
    q.save(&qpath).unwrap();
    hdr_models::save(&fpath, "lenet5", &m.config(), &vars).unwrap();
    let back = QuantizedModel::load(&qpath).unwrap();
    assert_eq!(back.name(), "lenet5");
    let x = synthetic(9, 2);
    assert_eq!(
        back.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
        q.forward(&x).unwrap().to_vec2::<f32>().unwrap()
    );
    let bytes = std::fs::read(&qpath).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensors().iter().any(|(_, t)| t.dtype() == Dtype::I8));
    let (qs, fs) = (
        bytes.len() as f64,
        std::fs::metadata(&fpath).unwrap().len() as f64,
    );
    eprintln!("f32 {fs} B, int8 {qs} B, ratio {:.2}", fs / qs);
    assert!(fs / qs > 3.5, "only {:.2}x smaller", fs / qs);
}

#[test]
fn bad_inputs_and_files_are_errors() {
    let (m, vars) = model("lenet5", 1);
    let g = m.graph();
    assert!(matches!(
        QuantizedModel::quantize("lenet5", &g, &vars, &[], &QuantizeConfig::default()),
        Err(CompressError::InvalidConfig { .. })
    ));
    let q = QuantizedModel::quantize(
        "lenet5",
        &g,
        &vars,
        &[synthetic(4, 1)],
        &QuantizeConfig::default(),
    )
    .unwrap();
    let flat = Tensor::zeros((2, 784), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        q.forward(&flat),
        Err(CompressError::BadInput { .. })
    ));
    let wrong = Tensor::zeros((2, 1, 20, 20), DType::F32, &Device::Cpu).unwrap();
    assert!(q.forward(&wrong).is_err());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    std::fs::write(&p, b"not a safetensors file").unwrap();
    assert!(matches!(
        QuantizedModel::load(&p),
        Err(CompressError::Format { .. })
    ));
    // A float model file is not a quantized one.
    hdr_models::save(&p, "lenet5", &m.config(), &vars).unwrap();
    assert!(matches!(
        QuantizedModel::load(&p),
        Err(CompressError::Format { .. })
    ));
    let empty = candle_nn::VarMap::new();
    assert!(matches!(
        QuantizedModel::quantize(
            "lenet5",
            &g,
            &empty,
            &[synthetic(4, 1)],
            &QuantizeConfig::default()
        ),
        Err(CompressError::MissingParameter { .. })
    ));
    let _ = agreement;
}

#[test]
fn layer_errors_cover_every_op_and_stay_small() {
    let (m, vars) = model("mobilenet_hdr", 5);
    let cfg = QuantizeConfig::default();
    let q = QuantizedModel::quantize(
        "mobilenet_hdr",
        &m.graph(),
        &vars,
        &[synthetic(16, 1)],
        &cfg,
    )
    .unwrap();
    let errs = q
        .layer_errors(&m.graph(), &vars, &synthetic(4, 2), &cfg)
        .unwrap();
    assert_eq!(errs.len(), q.num_ops() - 1); // all but the f32 logits
                                             // The input only loses its rounding to the 1/255 grid.
    assert!(errs[0].relative_error < 0.01, "{:?}", errs[0]);
    for e in &errs {
        assert!(e.relative_error < 0.3, "{e:?}");
    }
}
