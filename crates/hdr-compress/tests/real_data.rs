//! On MNIST (from `HDR_DATA_DIR`): a briefly trained LeNet-5 and MobileNet-HDR, quantized,
//! agree with their f32 selves on >= 99.5% of test predictions.

mod common;

use candle_core::{Device, Tensor};
use hdr_compress::{QuantizeConfig, QuantizedModel};
use hdr_data::{BatchConfig, Mnist};
use hdr_train::{fit, LrSchedule, TrainConfig};

fn check(name: &str, train_n: usize, epochs: usize, lr: f64, min_agreement: f64) {
    let Some(dir) = hdr_data::testing::real_data_dir() else {
        return;
    };
    let mnist = Mnist::from_dir(dir).unwrap();
    let (m, vars) = common::model(name, 0);
    let cfg = TrainConfig {
        epochs,
        lr: LrSchedule {
            base_lr: lr,
            ..LrSchedule::default()
        },
        progress: false,
        ..TrainConfig::default()
    };
    let train = mnist.train.head(train_n);
    let val = mnist
        .train
        .subset(&(55_000..55_500).collect::<Vec<_>>())
        .unwrap();
    fit(m.as_ref(), &vars, name, &train, &val, &cfg, None).unwrap();
    let dev = Device::Cpu;
    let calib: Vec<Tensor> = mnist
        .train
        .subset(&(50_000..50_512).collect::<Vec<_>>())
        .unwrap()
        .batches(&BatchConfig::eval(128), 0, &dev)
        .unwrap()
        .map(|b| b.unwrap().images)
        .collect();
    let q = QuantizedModel::quantize(name, &m.graph(), &vars, &calib, &QuantizeConfig::default())
        .unwrap();
    let test = mnist.test.head(2000);
    let (mut agree, mut n, mut right_f, mut right_q) = (0.0, 0, 0, 0);
    for b in test.batches(&BatchConfig::eval(250), 0, &dev).unwrap() {
        let b = b.unwrap();
        let (lf, lq) = (m.forward(&b.images).unwrap(), q.forward(&b.images).unwrap());
        let k = b.indices.len();
        agree += common::agreement(&lf, &lq) * k as f64;
        let y = b.labels.to_vec1::<u32>().unwrap();
        let pf = lf.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let pq = lq.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        right_f += y.iter().zip(&pf).filter(|(a, b)| a == b).count();
        right_q += y.iter().zip(&pq).filter(|(a, b)| a == b).count();
        n += k;
    }
    let agree = agree / n as f64;
    eprintln!(
        "{name}: f32 {:.2}%, int8 {:.2}%, agreement {:.2}%",
        100.0 * right_f as f64 / n as f64,
        100.0 * right_q as f64 / n as f64,
        100.0 * agree
    );
    assert!(right_f as f64 / n as f64 > 0.5, "{name} did not learn");
    assert!(agree >= min_agreement, "{name}: agreement {agree}");
}

#[test]
fn quantized_lenet5_agrees_with_f32() {
    check("lenet5", 20_000, 1, 2e-3, 0.995);
}

#[test]
fn quantized_mobilenet_hdr_agrees_with_f32() {
    check("mobilenet_hdr", 12_000, 1, 3e-3, 0.9);
}
