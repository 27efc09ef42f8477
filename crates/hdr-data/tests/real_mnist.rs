//! Real MNIST from `HDR_DATA_DIR` (set by `.ci/run`) or the workspace's `datasets/mnist/`. Under
//! `CI=true` a missing folder fails.

mod common;

use hdr_data::testing::real_data_dir;
use hdr_data::{BatchConfig, Mnist, MnistOptions, SplitConfig, MNIST_FILES};

/// Training label counts 0..9 (LeCun et al.; also torchvision's `targets.bincount()`).
const TRAIN_COUNTS: [usize; 10] = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
/// Test label counts 0..9.
const TEST_COUNTS: [usize; 10] = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];

#[test]
fn counts_histograms_and_pixels_are_mnists() -> anyhow::Result<()> {
    let Some(dir) = real_data_dir() else {
        return Ok(());
    };
    let mnist = Mnist::from_dir(&dir)?;
    assert_eq!(mnist.train.len(), 60_000);
    assert_eq!(mnist.test.len(), 10_000);
    assert_eq!(mnist.train.class_counts(), TRAIN_COUNTS);
    assert_eq!(mnist.test.class_counts(), TEST_COUNTS);
    assert_eq!((mnist.train.rows(), mnist.train.cols()), (28, 28));
    let mean =
        mnist.train.images().iter().map(|&p| p as f64).sum::<f64>() / (60_000.0 * 784.0 * 255.0);
    assert!((mean - 0.1307).abs() < 1e-3, "pixel mean {mean}");
    Ok(())
}

#[test]
fn default_search_finds_the_local_copy() -> anyhow::Result<()> {
    let Some(dir) = real_data_dir() else {
        return Ok(());
    };
    // `HDR_DATA_DIR` when it is set (and then no project folder is needed), else the
    // workspace's `datasets/mnist/` as the project folder.
    let env_set = std::env::var_os(hdr_data::DATA_DIR_ENV).is_some_and(|v| !v.is_empty());
    let opts = MnistOptions {
        project_dir: (!env_set).then(|| dir.clone()),
        download: false,
        ..MnistOptions::default()
    };
    let mnist = Mnist::load_with(&opts)?;
    assert_eq!(mnist.dir, dir);
    Ok(())
}

#[test]
fn split_and_batches_on_real_data() -> anyhow::Result<()> {
    let Some(dir) = real_data_dir() else {
        return Ok(());
    };
    let mnist = Mnist::from_dir(&dir)?;
    let (train, val) = mnist.train.split(&SplitConfig::default())?;
    assert_eq!((train.len(), val.len()), (55_000, 5_000));
    for (c, &n) in val.class_counts().iter().enumerate() {
        let want = TRAIN_COUNTS[c] as f64 / 12.0;
        assert!((n as f64 - want).abs() <= 1.0, "class {c}: {n} vs {want}");
    }
    let cfg = BatchConfig {
        batch_size: 256,
        ..BatchConfig::default()
    };
    let batch = val
        .batches(&cfg, 0, &candle_core::Device::Cpu)?
        .next()
        .expect("a batch")?;
    assert_eq!(batch.images.dims(), &[256, 1, 28, 28]);
    let max = batch.images.max_all()?.to_scalar::<f32>()?;
    let min = batch.images.min_all()?.to_scalar::<f32>()?;
    assert!(min == 0.0 && max == 1.0, "{min} {max}");
    Ok(())
}

#[cfg(feature = "download")]
#[test]
fn download_path_end_to_end_from_a_local_mirror() -> anyhow::Result<()> {
    use common::{Reply, Server};
    let Some(dir) = real_data_dir() else {
        return Ok(());
    };
    let mut routes = std::collections::HashMap::new();
    for f in &MNIST_FILES {
        let bytes = std::fs::read(dir.join(format!("{}.gz", f.name)))?;
        routes.insert(format!("/mnist/{}.gz", f.name), Reply::Ok(bytes));
    }
    let server = Server::start(routes);
    let tmp = tempfile::tempdir()?;
    let target = tmp.path().join("downloaded");
    let opts = MnistOptions {
        dir: Some(target.clone()),
        env_var: None,
        project_dir: None,
        download: true,
        mirrors: vec![format!("{}/mnist/", server.base)],
        progress: false,
        ..MnistOptions::default()
    };
    let mnist = Mnist::load_with(&opts)?;
    assert_eq!((mnist.train.len(), mnist.test.len()), (60_000, 10_000));
    assert_eq!(mnist.dir, target);
    // A second load finds the files and does not download again.
    let hits = server.hits.load(std::sync::atomic::Ordering::SeqCst);
    Mnist::load_with(&opts)?;
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
    Ok(())
}

#[test]
fn a_corrupted_local_copy_is_refused() -> anyhow::Result<()> {
    let Some(dir) = real_data_dir() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    for f in &MNIST_FILES {
        std::fs::copy(
            dir.join(format!("{}.gz", f.name)),
            tmp.path().join(format!("{}.gz", f.name)),
        )?;
    }
    // Same structure, one pixel changed: only the checksum can tell.
    let path = tmp.path().join("t10k-images-idx3-ubyte.gz");
    let (mut img, n, r, c) = hdr_data::idx::read_images(&path)?;
    img[1234] = img[1234].wrapping_add(1);
    hdr_data::idx::write(&path, &[n as u32, r as u32, c as u32], &img)?;
    let err = Mnist::from_dir(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(
        Mnist::read(tmp.path(), false).is_ok(),
        "unverified read still works"
    );
    Ok(())
}
