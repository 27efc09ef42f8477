//! Explanations and pictures from real (tiny, untrained) models, written to PNG and read back.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hdr_viz::{
    digit_gallery, feature_map_grid, grad_cam, line_charts, overlay, saliency, Captioned, Panel,
    Series,
};

fn model(name: &str) -> anyhow::Result<Box<dyn hdr_models::Classifier>> {
    let vars = VarMap::new();
    let m = hdr_models::create(
        name,
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )?;
    hdr_models::init::init(&vars, 1)?;
    Ok(m)
}

/// A stroke: a vertical bar, like a "1".
fn one() -> anyhow::Result<Tensor> {
    let mut v = vec![0f32; 784];
    for r in 4..24 {
        v[r * 28 + 13] = 1.0;
        v[r * 28 + 14] = 1.0;
    }
    Ok(Tensor::from_vec(v, (1, 1, 28, 28), &Device::Cpu)?)
}

#[test]
fn saliency_and_grad_cam_are_maps_in_unit_range() -> anyhow::Result<()> {
    let x = one()?;
    for name in ["lenet5", "mobilenet_hdr", "resnet"] {
        let m = model(name)?;
        let s = saliency(m.as_ref(), &x, None)?;
        let g = grad_cam(m.as_ref(), &x, Some(3))?;
        assert_eq!(g.class, 3);
        for e in [&s, &g] {
            assert_eq!(e.map.len(), 784, "{name}");
            assert!(e.map.iter().all(|v| (0.0..=1.0).contains(v)), "{name}");
            assert!(e.probability > 0.0 && e.probability <= 1.0);
        }
        assert!(
            s.map.contains(&1.0),
            "{name}: saliency is normalised to a maximum of 1"
        );
    }
    let mlp = model("mlp1")?;
    assert!(saliency(mlp.as_ref(), &x, None).is_ok());
    assert!(
        grad_cam(mlp.as_ref(), &x, None).is_err(),
        "an MLP has no feature maps"
    );
    assert!(saliency(mlp.as_ref(), &x, Some(10)).is_err());
    Ok(())
}

#[test]
fn pictures_are_written_as_png_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let m = model("lenet5")?;
    let x = one()?;
    let (_, maps) = m.forward_features(&x)?;
    for map in &maps {
        let path = dir.path().join(format!("fm_{}.png", map.name));
        feature_map_grid(map, 0, 64)?.save_png(&path)?;
        let img = image::open(&path)?;
        assert!(img.width() > 100 && img.height() > 100);
    }
    let digit = x.flatten_all()?.to_vec1::<f32>()?;
    let e = saliency(m.as_ref(), &x, None)?;
    overlay(&digit, &e.map, "saliency")?.save_png(&dir.path().join("o.png"))?;
    assert!(overlay(&digit[..10], &e.map, "bad").is_err());

    let curves = line_charts(&[Panel {
        title: "loss".into(),
        series: vec![Series {
            name: "train".into(),
            color: hdr_viz::BLUE,
            points: vec![(1.0, 0.5), (2.0, 0.3), (3.0, 0.2)],
        }],
    }])?;
    curves.save_png(&dir.path().join("curves.png"))?;
    assert!(line_charts(&[]).is_err());

    let items = vec![
        Captioned {
            pixels: vec![0u8; 784],
            caption: "T7 P2".into(),
        };
        5
    ];
    digit_gallery(&items, 3, "misclassified")?.save_png(&dir.path().join("g.png"))?;
    let mut files: Vec<String> = std::fs::read_dir(dir.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["curves.png", "fm_c1.png", "fm_c3.png", "g.png", "o.png"],
        "no temporary files left"
    );
    Ok(())
}
