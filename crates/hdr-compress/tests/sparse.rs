//! Sparse files of pruned models: much smaller, and they load back to the identical model.

use candle_core::{Device, Tensor};
use hdr_compress::{load_sparse, magnitude, save_sparse, CompressError, Scope};

#[test]
fn a_pruned_model_round_trips_through_a_file_a_seventh_of_the_dense_one() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let pruned = hdr_models::pretrained("lenet5", &dev)?;
    magnitude(&pruned.vars, 0.9, Scope::Global)?.apply(&pruned.vars)?;
    let dir = tempfile::tempdir()?;
    let (dense_file, sparse_file) = (
        dir.path().join("d.safetensors"),
        dir.path().join("s.safetensors"),
    );
    hdr_models::save(&dense_file, &pruned.name, &pruned.config, &pruned.vars)?;
    save_sparse(&sparse_file, &pruned.name, &pruned.config, &pruned.vars)?;
    let (dense_len, sparse_len) = (
        std::fs::metadata(&dense_file)?.len(),
        std::fs::metadata(&sparse_file)?.len(),
    );
    assert!(
        sparse_len * 6 < dense_len,
        "{sparse_len} vs {dense_len} bytes"
    );

    let back = load_sparse(&sparse_file, &dev)?;
    assert_eq!(back.name, "lenet5");
    let x = Tensor::rand(0f32, 1f32, (4, 1, 28, 28), &dev)?;
    let a = pruned.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
    let b = back.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(a, b, "the same weights, bit for bit");

    // A dense file is not a sparse one, and a damaged file is an error, not a panic.
    assert!(matches!(
        load_sparse(&dense_file, &dev),
        Err(CompressError::Format { .. })
    ));
    let bytes = std::fs::read(&sparse_file)?;
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100])?;
    assert!(matches!(
        load_sparse(&cut, &dev),
        Err(CompressError::Format { .. })
    ));
    Ok(())
}
