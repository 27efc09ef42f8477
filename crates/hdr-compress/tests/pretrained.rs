//! The shipped int8 models load by name and agree with the f32 models they came from on the
//! MNIST test split (from `HDR_DATA_DIR`).

mod common;

use candle_core::Device;
use hdr_compress::{pretrained_int8, pretrained_int8_names, CompressError};
use hdr_data::{BatchConfig, Mnist};

#[test]
fn shipped_int8_models_agree_with_their_f32_originals() -> anyhow::Result<()> {
    let names = pretrained_int8_names();
    // Every model with shipped f32 weights has an int8 version.
    let mut want = hdr_models::pretrained_names();
    let mut have = names.clone();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have, want);
    assert!(matches!(
        pretrained_int8("lenet6"),
        Err(CompressError::Model(
            hdr_models::ModelError::UnknownModel { .. }
        ))
    ));
    let Some(dir) = hdr_data::testing::real_data_dir() else {
        return Ok(());
    };
    let test = Mnist::from_dir(dir)?.test.head(2_000);
    for name in names {
        let q = pretrained_int8(name)?;
        let f = hdr_models::pretrained(name, &Device::Cpu)?;
        let (mut same, mut right, mut f_right, mut n) = (0usize, 0usize, 0usize, 0usize);
        for batch in test.batches(&BatchConfig::eval(250), 0, &Device::Cpu)? {
            let b = batch?;
            let qa = q.forward(&b.images)?.argmax(1)?.to_vec1::<u32>()?;
            let fa = f.model.forward(&b.images)?.argmax(1)?.to_vec1::<u32>()?;
            let labels = b.labels.to_vec1::<u32>()?;
            for ((q, f), l) in qa.iter().zip(&fa).zip(&labels) {
                same += usize::from(q == f);
                right += usize::from(q == l);
                f_right += usize::from(f == l);
                n += 1;
            }
        }
        let agree = same as f64 / n as f64;
        assert!(agree >= 0.995, "{name}: int8 agrees with f32 on {agree}");
        // Within 0.2 points (4 of these 2,000 digits) of the f32 model.
        assert!(
            right + 4 >= f_right,
            "{name}: int8 right on {right}, f32 on {f_right} of {n} test digits"
        );
    }
    Ok(())
}
