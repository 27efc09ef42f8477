//! The zoo through its public API: shapes, modes, auxiliary head, save/load, backward, gradients.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use hdr_models::{
    AuxClassifierConfig, Classifier, DenseNetConfig, LeNet5Config, MlpConfig, MobileNetConfig,
    MobileNetHdrConfig, ModelConfig, ModelError, Modification, ResNetConfig, Stage,
};

fn build(cfg: &ModelConfig) -> anyhow::Result<(Box<dyn Classifier>, VarMap)> {
    let vars = VarMap::new();
    let model = cfg.build(VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
    Ok((model, vars))
}

/// Deterministic pseudo-random values in [lo, hi) (xorshift), f64, of any shape.
fn noise(shape: &candle_core::Shape, seed: u64, lo: f64, hi: f64) -> anyhow::Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f64> = (0..shape.elem_count())
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

fn input(b: usize, seed: u64) -> anyhow::Result<Tensor> {
    // Deterministic pseudo-random pixels in [0, 1] without touching candle's global RNG.
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..b * 784)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, (b, 1, 28, 28), &Device::Cpu)?)
}

/// Small configurations of every family, for the expensive checks.
fn tiny() -> Vec<(&'static str, ModelConfig)> {
    vec![
        (
            "mlp",
            ModelConfig::Mlp(MlpConfig {
                dropout: 0.0,
                ..MlpConfig::hidden(&[12, 7])
            }),
        ),
        ("lenet5", ModelConfig::LeNet5(LeNet5Config::default())),
        (
            "lenet5_classic",
            ModelConfig::LeNet5(LeNet5Config::classic()),
        ),
        (
            "resnet",
            ModelConfig::ResNet(ResNetConfig {
                stem: 4,
                stages: vec![
                    Stage {
                        channels: 4,
                        blocks: 1,
                        stride: 1,
                    },
                    Stage {
                        channels: 6,
                        blocks: 1,
                        stride: 2,
                    },
                ],
                dropout: 0.0,
                classes: 10,
            }),
        ),
        (
            "densenet",
            ModelConfig::DenseNet(DenseNetConfig {
                growth: 3,
                blocks: vec![2, 2],
                bottleneck: 2,
                ..DenseNetConfig::default()
            }),
        ),
        (
            "mobilenet",
            ModelConfig::MobileNet(MobileNetConfig {
                width: 0.125,
                ..MobileNetConfig::default()
            }),
        ),
        (
            "mobilenet_hdr",
            ModelConfig::MobileNetHdr(MobileNetHdrConfig {
                width: 0.125,
                dropout: 0.0,
                ..MobileNetHdrConfig::paper()
            }),
        ),
    ]
}

#[test]
fn every_registered_model_maps_batches_of_1_and_7_to_10_logits() -> anyhow::Result<()> {
    for name in hdr_models::list() {
        let (model, _) = build(&hdr_models::config(name)?)?;
        for b in [1, 7] {
            let y = model.forward(&input(b, 1)?)?;
            assert_eq!(y.dims(), &[b, 10], "{name}");
            let out = model.forward_t(&input(b, 1)?, true)?;
            assert_eq!(out.logits.dims(), &[b, 10], "{name} train");
        }
        assert_eq!(model.summary().output(), &[10], "{name}");
    }
    Ok(())
}

#[test]
fn unknown_names_list_the_known_ones() {
    let err = hdr_models::config("lenet6").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnknownModel { .. }));
    assert!(
        msg.contains("lenet5") && msg.contains("mobilenet_hdr"),
        "{msg}"
    );
}

#[test]
fn wrong_input_shape_is_a_typed_error() -> anyhow::Result<()> {
    let (model, _) = build(&hdr_models::config("lenet5")?)?;
    let x = Tensor::zeros((2, 1, 32, 32), DType::F32, &Device::Cpu)?;
    assert!(matches!(
        model.forward(&x),
        Err(ModelError::BadInput { height: 28, .. })
    ));
    Ok(())
}

#[test]
fn batch_norm_and_dropout_make_train_and_eval_differ() -> anyhow::Result<()> {
    let x = input(8, 2)?;
    // Batch norm: batch statistics in training, running statistics in evaluation.
    let (resnet, _) = build(&tiny()[3].1)?;
    let eval1 = resnet.forward(&x)?;
    let train = resnet.forward_t(&x, true)?.logits;
    let diff = (&eval1 - &train)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff > 1e-4, "batch norm made no difference: {diff}");
    // Evaluation is deterministic.
    let eval2 = resnet.forward(&x)?;
    assert_eq!(
        (&eval2 - &resnet.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?,
        0.0
    );

    // Dropout: two training passes differ, evaluation passes do not.
    let (mlp, _) = build(&ModelConfig::Mlp(MlpConfig {
        dropout: 0.5,
        ..MlpConfig::hidden(&[64])
    }))?;
    let a = mlp.forward_t(&x, true)?.logits;
    let b = mlp.forward_t(&x, true)?.logits;
    assert!((&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-4);
    let e = (&mlp.forward(&x)? - &mlp.forward(&x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(e, 0.0);
    Ok(())
}

#[test]
fn auxiliary_head_only_when_enabled_and_training() -> anyhow::Result<()> {
    let x = input(3, 3)?;
    let (hdr, _) = build(&hdr_models::config("mobilenet_hdr")?)?;
    let out = hdr.forward_t(&x, true)?;
    assert_eq!(
        out.aux_logits.as_ref().map(|t| t.dims().to_vec()),
        Some(vec![3, 10])
    );
    assert!(
        hdr.forward_t(&x, false)?.aux_logits.is_none(),
        "no auxiliary logits in eval mode"
    );
    assert!(hdr
        .summary()
        .layers
        .iter()
        .any(|l| l.name.starts_with("aux")));

    let no_aux = MobileNetHdrConfig::paper().without(Modification::AuxClassifier);
    let (plain, vars) = build(&ModelConfig::MobileNetHdr(no_aux))?;
    assert!(plain.forward_t(&x, true)?.aux_logits.is_none());
    assert!(!vars
        .data()
        .lock()
        .unwrap()
        .keys()
        .any(|k| k.starts_with("aux")));
    assert!(!plain
        .summary()
        .layers
        .iter()
        .any(|l| l.name.starts_with("aux")));

    let bad = MobileNetHdrConfig {
        aux: Some(AuxClassifierConfig {
            after_block: 13,
            channels: 8,
        }),
        ..MobileNetHdrConfig::paper()
    };
    assert!(
        matches!(build(&ModelConfig::MobileNetHdr(bad)), Err(e) if e.to_string().contains("invalid"))
    );
    Ok(())
}

#[test]
fn ablation_switches_change_what_they_say() -> anyhow::Result<()> {
    let paper = MobileNetHdrConfig::paper();
    let summary = |c: MobileNetHdrConfig| -> anyhow::Result<hdr_models::Summary> {
        Ok(build(&ModelConfig::MobileNetHdr(c))?.0.summary().clone())
    };
    let full = summary(paper.clone())?;
    assert_eq!(full.input, vec![1, 28, 28]);
    assert_eq!(
        summary(paper.clone().without(Modification::GreyInput))?.input,
        vec![3, 28, 28]
    );
    assert!(
        summary(paper.clone().without(Modification::MoreChannels))?.params() < full.params() / 2
    );
    let spatial = |s: &hdr_models::Summary| {
        s.layers
            .iter()
            .rev()
            .find(|l| l.output.len() == 3)
            .map(|l| l.output[1])
    };
    assert_eq!(spatial(&full), Some(4), "28-14-7-4");
    assert_eq!(
        spatial(&summary(
            paper.clone().without(Modification::FewerDownsamplings)
        )?),
        Some(1)
    );
    assert!(paper
        .clone()
        .without(Modification::Distillation)
        .teacher
        .is_none());
    let teacher = paper
        .teacher
        .as_deref()
        .expect("the paper preset names a teacher");
    assert!(
        hdr_models::list().contains(&teacher),
        "the teacher {teacher} is registered"
    );
    let typo = MobileNetHdrConfig {
        teacher: Some("resnte".into()),
        ..paper
    };
    assert!(matches!(
        build(&ModelConfig::MobileNetHdr(typo)),
        Err(e) if e.to_string().contains("resnte") && e.to_string().contains("wide_resnet")
    ));
    Ok(())
}

#[test]
fn named_presets_have_their_published_sizes() -> anyhow::Result<()> {
    let params = |c: ModelConfig| -> anyhow::Result<usize> { Ok(build(&c)?.0.summary().params()) };
    // MobileNet v1 at 10 classes: the width multiplier scales every layer's channels.
    let v1 = |c: MobileNetConfig| params(ModelConfig::MobileNet(c));
    assert_eq!(
        v1(MobileNetConfig::alpha_1_0())?,
        v1(MobileNetConfig::default())?
    );
    let widths = [
        v1(MobileNetConfig::alpha_1_0())?,
        v1(MobileNetConfig::alpha_0_75())?,
        v1(MobileNetConfig::alpha_0_5())?,
        v1(MobileNetConfig::alpha_0_25())?,
    ];
    assert!(widths.windows(2).all(|w| w[0] > w[1]), "{widths:?}");
    // Dominated by the pointwise weights, which scale with alpha^2.
    let ratio = widths[0] as f64 / widths[2] as f64;
    assert!((3.5..4.0).contains(&ratio), "1.0 / 0.5 = {ratio}");

    let dense = |c: DenseNetConfig| params(ModelConfig::DenseNet(c));
    assert_eq!(dense(DenseNetConfig::small())?, 175_690);
    assert!(dense(DenseNetConfig::large())? > 1_000_000);
    // DenseNet-BC-100 (k = 12) has 0.8M parameters in Huang et al.'s Table 2 (CIFAR, 3-channel
    // input); here the input is grey.
    let bc100 = dense(DenseNetConfig::bc(100, 12)?)?;
    assert!((700_000..800_000).contains(&bc100), "{bc100}");
    assert!(matches!(
        DenseNetConfig::bc(50, 12),
        Err(ModelError::InvalidConfig { .. })
    ));
    Ok(())
}

#[test]
fn save_then_load_gives_identical_logits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let x = input(4, 4)?;
    for (name, cfg) in tiny() {
        let (model, vars) = build(&cfg)?;
        // A training pass moves the batch-norm running statistics away from their initial values.
        model.forward_t(&x, true)?;
        let before = model.forward(&x)?;
        let path = dir.path().join(format!("{name}.safetensors"));
        hdr_models::save(&path, name, &model.config(), &vars)?;
        let loaded = hdr_models::load(&path, &Device::Cpu)?;
        assert_eq!(loaded.name, name);
        assert_eq!(loaded.config, cfg);
        let after = loaded.model.forward(&x)?;
        let diff = (&before - &after)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{name}");
    }
    Ok(())
}

#[test]
fn loading_a_file_that_does_not_fit_names_the_tensor_and_shapes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.safetensors");
    let (_, vars) = build(&hdr_models::config("lenet5")?)?;
    // Same names, but the file claims to be an MLP of another width.
    let cfg = ModelConfig::Mlp(MlpConfig::hidden(&[5]));
    hdr_models::save(&path, "mlp", &cfg, &vars)?;
    let err = hdr_models::load(&path, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");

    let (_, small) = build(&cfg)?;
    let wide = ModelConfig::Mlp(MlpConfig::hidden(&[6]));
    hdr_models::save(&path, "mlp", &wide, &small)?;
    match hdr_models::load(&path, &Device::Cpu).unwrap_err() {
        ModelError::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert_eq!(tensor, "fc0.bias");
            assert_eq!((expected, found), (vec![6], vec![5]));
        }
        e => panic!("expected a shape mismatch, got {e}"),
    }

    // Another format's file (an int8 model of hdr-compress, say) is refused by its format key.
    let (_, lenet_vars) = build(&hdr_models::config("lenet5")?)?;
    let tensors: Vec<(String, Tensor)> = lenet_vars
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "hdr-compress/int8/1".to_string()),
        ("model".to_string(), "lenet5".to_string()),
        (
            "config".to_string(),
            serde_json::to_string(&hdr_models::config("lenet5")?)?,
        ),
    ]);
    std::fs::write(&path, safetensors::tensor::serialize(tensors, Some(meta))?)?;
    match hdr_models::load(&path, &Device::Cpu).unwrap_err() {
        ModelError::Metadata { reason, .. } => assert!(reason.contains("hdr-compress/int8/1")),
        e => panic!("expected a metadata error, got {e}"),
    }

    std::fs::write(&path, b"definitely not safetensors")?;
    assert!(matches!(
        hdr_models::load(&path, &Device::Cpu),
        Err(ModelError::Format { .. })
    ));
    assert!(matches!(
        hdr_models::load(&dir.path().join("missing.safetensors"), &Device::Cpu),
        Err(ModelError::Io { .. })
    ));
    Ok(())
}

/// Loss whose gradient reaches every output: sum(logits * r) (+ the auxiliary logits).
fn loss(model: &dyn Classifier, x: &Tensor, r: &Tensor, train: bool) -> anyhow::Result<Tensor> {
    let out = model.forward_t(x, train)?;
    let mut l = (&out.logits * r)?.sum_all()?;
    if let Some(aux) = out.aux_logits {
        l = (l + (aux * r)?.sum_all()?)?;
    }
    Ok(l)
}

#[test]
fn every_model_runs_backward_and_every_parameter_gets_a_gradient() -> anyhow::Result<()> {
    let x = input(4, 5)?;
    let r = Tensor::ones((4, 10), DType::F32, &Device::Cpu)?;
    for name in hdr_models::list() {
        let (model, vars) = build(&hdr_models::config(name)?)?;
        let grads = loss(model.as_ref(), &x, &(r.clone() * 0.1)?, true)?.backward()?;
        let data = vars.data().lock().unwrap();
        for (k, v) in data.iter() {
            if k.ends_with("running_mean") || k.ends_with("running_var") {
                continue;
            }
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {k}"));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm.is_finite(), "{name}: {k}");
        }
    }
    Ok(())
}

/// Directional finite differences against autograd, for every family.
///
/// The derivative along one random direction through all parameters at once, by central
/// differences, must match autograd's. The check runs in f64 (the fast f32 kernels are checked
/// against references in `hdr-ops`; here the point is that each model's graph is wired right):
/// with eps = 1e-8 no ReLU kink is crossed and the agreement is to about 1e-6, while a missing or
/// wrong gradient is off by far more than the 1e-3 tolerance.
#[test]
fn gradients_match_finite_differences() -> anyhow::Result<()> {
    let x = input(3, 6)?.to_dtype(DType::F64)?;
    let r = input(1, 7)?
        .flatten_all()?
        .narrow(0, 0, 30)?
        .reshape((3, 10))?
        .to_dtype(DType::F64)?;
    for (name, cfg) in tiny() {
        // MobileNet v1 ends on 1x1 maps, where training-mode batch norm of a few samples of a
        // dead (all-zero) channel has a variance near 0 and a curvature near eps^-1.5: beyond
        // what finite differences resolve. Its layers are checked in training mode through
        // mobilenet_hdr (same blocks, 4x4 maps) and in evaluation mode here.
        let modes: &[bool] = if name == "mobilenet" {
            &[false]
        } else {
            &[false, true]
        };
        for &train in modes {
            let vars = VarMap::new();
            let model = cfg.build(VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu))?;
            hdr_models::init::init(&vars, 42)?;
            let params: Vec<(String, Var)> = {
                let data = vars.data().lock().unwrap();
                let mut v: Vec<_> = data
                    .iter()
                    .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            };
            // Biases away from zero: otherwise a window of exact zeros after a ReLU meets a zero
            // batch-norm shift and sits exactly on the next ReLU's kink, where autograd's
            // one-sided derivative and central differences legitimately disagree.
            for (i, (k, v)) in params.iter().enumerate() {
                if k.ends_with("bias") {
                    v.set(&noise(v.shape(), 1000 + i as u64, -0.5, 0.5)?)?;
                }
            }
            let grads = loss(model.as_ref(), &x, &r, train)?.backward()?;
            let originals: Vec<Tensor> = params
                .iter()
                .map(|(_, v)| v.as_tensor().copy())
                .collect::<Result<_, _>>()?;
            let dirs: Vec<Tensor> = params
                .iter()
                .enumerate()
                .map(|(i, (_, v))| noise(v.shape(), 2000 + i as u64, -1.0, 1.0))
                .collect::<anyhow::Result<_>>()?;
            let mut analytic = 0f64;
            for ((k, v), d) in params.iter().zip(&dirs) {
                let Some(g) = grads.get(v.as_tensor()) else {
                    // The auxiliary head only runs in training mode.
                    assert!(
                        !train && k.starts_with("aux."),
                        "{name}: no gradient for {k}"
                    );
                    continue;
                };
                analytic += (g * d)?.sum_all()?.to_scalar::<f64>()?;
            }
            let eps = 1e-8f64;
            let at = |sign: f64| -> anyhow::Result<f64> {
                for (((_, v), d), o) in params.iter().zip(&dirs).zip(&originals) {
                    v.set(&(o + (d * (sign * eps))?)?)?;
                }
                // Training-mode batch norm updates running statistics; they do not enter the loss.
                Ok(loss(model.as_ref(), &x, &r, train)?.to_scalar::<f64>()?)
            };
            let numeric = (at(1.0)? - at(-1.0)?) / (2.0 * eps);
            let rel = (numeric - analytic).abs() / analytic.abs().max(1e-3);
            assert!(
                rel < 1e-3,
                "{name} (train {train}): autograd {analytic}, finite differences {numeric}"
            );
        }
    }
    Ok(())
}

#[test]
fn feature_maps_follow_the_convolutional_stages() -> anyhow::Result<()> {
    let x = input(2, 9)?;
    for name in hdr_models::list() {
        let (model, _) = build(&hdr_models::config(name)?)?;
        let (logits, maps) = model.forward_features(&x)?;
        assert_eq!(logits.dims(), &[2, 10], "{name}");
        let eval = model.forward(&x)?;
        assert_eq!(
            (&logits - &eval)?.abs()?.max_all()?.to_scalar::<f32>()?,
            0.0,
            "{name}"
        );
        if name.starts_with("mlp") {
            assert!(maps.is_empty());
            continue;
        }
        assert!(maps.len() >= 2, "{name}: {} maps", maps.len());
        for m in &maps {
            assert_eq!(m.activation.rank(), 4, "{name} {}", m.name);
            assert_eq!(m.activation.dim(0)?, 2);
        }
    }
    let (lenet, _) = build(&hdr_models::config("lenet5")?)?;
    let names: Vec<String> = lenet
        .forward_features(&x)?
        .1
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["c1", "c3"]);
    Ok(())
}

#[test]
fn graphs_reproduce_the_models_and_name_every_parameter() -> anyhow::Result<()> {
    let x = input(3, 10)?;
    let mut configs: Vec<(String, ModelConfig)> = hdr_models::list()
        .into_iter()
        .map(|n| Ok((n.to_string(), hdr_models::config(n)?)))
        .collect::<anyhow::Result<_>>()?;
    configs.extend(tiny().into_iter().map(|(n, c)| (format!("tiny {n}"), c)));
    configs.push((
        "hdr original".into(),
        ModelConfig::MobileNetHdr(MobileNetHdrConfig::original()),
    ));
    for (name, cfg) in configs {
        let (model, vars) = build(&cfg)?;
        model.forward_t(&x, true)?; // non-trivial batch-norm statistics
        let graph = model.graph();
        let want = model.forward(&x)?;
        let got = graph.run(&vars, &x)?;
        let diff = (&want - &got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        assert!(
            diff <= 1e-4 * scale,
            "{name}: graph differs from forward by {diff}"
        );

        let mut used = graph.parameters();
        used.sort();
        let mut all: Vec<String> = vars
            .data()
            .lock()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with("aux."))
            .cloned()
            .collect();
        all.sort();
        assert_eq!(
            used, all,
            "{name}: the graph reads exactly the model's parameters"
        );
    }
    Ok(())
}
