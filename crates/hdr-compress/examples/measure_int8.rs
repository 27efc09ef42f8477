//! Int8 vs f32 on a saved model: agreement, accuracy, size and latency.
//!
//! `cargo run --release -p hdr-compress --example measure_int8 -- MODEL.safetensors MNIST_DIR`

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use hdr_compress::{QuantizeConfig, QuantizedModel};
use hdr_data::{BatchConfig, Mnist};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (model_path, data_dir) = (Path::new(&args[1]), &args[2]);
    let dev = Device::Cpu;
    let loaded = hdr_models::load(model_path, &dev)?;
    let mnist = Mnist::from_dir(data_dir)?;
    let calib: Vec<Tensor> = mnist
        .train
        .head(512)
        .batches(&BatchConfig::eval(128), 0, &dev)?
        .map(|b| b.map(|b| b.images))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let q = QuantizedModel::quantize(
        &loaded.name,
        &loaded.model.graph(),
        &loaded.vars,
        &calib,
        &QuantizeConfig {
            observer: match std::env::var("OBS")
                .ok()
                .and_then(|v| v.parse::<f32>().ok())
            {
                Some(p) => hdr_compress::Observer::Percentile(p),
                None => hdr_compress::Observer::MinMax,
            },
            ..QuantizeConfig::default()
        },
    )?;
    println!(
        "quantized {} in {:.2?} ({} ops, isa {:?})",
        loaded.name,
        t.elapsed(),
        q.num_ops(),
        q.isa()
    );
    if std::env::var_os("LAYERS").is_some() {
        let x = mnist
            .test
            .head(200)
            .batches(&BatchConfig::eval(200), 0, &dev)?
            .next()
            .unwrap()?
            .images;
        for e in q.layer_errors(
            &loaded.model.graph(),
            &loaded.vars,
            &x,
            &QuantizeConfig::default(),
        )? {
            println!(
                "  op {:>3} node {:>3}: relative error {:.4}",
                e.op, e.node, e.relative_error
            );
        }
    }
    let qpath = std::env::temp_dir().join("hdr_compress_measure.safetensors");
    q.save(&qpath)?;
    let q = QuantizedModel::load(&qpath)?;
    println!(
        "file sizes: f32 {} B, int8 {} B",
        std::fs::metadata(model_path)?.len(),
        std::fs::metadata(&qpath)?.len()
    );
    let (mut agree, mut cf, mut cq, mut n) = (0, 0, 0, 0);
    let (mut tf, mut tq) = (0f64, 0f64);
    for batch in mnist.test.batches(&BatchConfig::eval(256), 0, &dev)? {
        let batch = batch?;
        let t = Instant::now();
        let lf = loaded.model.forward(&batch.images)?;
        tf += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let lq = q.forward(&batch.images)?;
        tq += t.elapsed().as_secs_f64();
        let pf = lf.argmax(1)?.to_vec1::<u32>()?;
        let pq = lq.argmax(1)?.to_vec1::<u32>()?;
        let y = batch.labels.to_vec1::<u32>()?;
        for i in 0..y.len() {
            agree += (pf[i] == pq[i]) as usize;
            cf += (pf[i] == y[i]) as usize;
            cq += (pq[i] == y[i]) as usize;
            n += 1;
        }
    }
    println!(
        "test: f32 {:.2}%  int8 {:.2}%  agreement {:.2}%",
        100.0 * cf as f64 / n as f64,
        100.0 * cq as f64 / n as f64,
        100.0 * agree as f64 / n as f64
    );
    println!(
        "batch 256 (whole test set): f32 {:.1} ms/batch, int8 {:.1} ms/batch, speed-up {:.2}x",
        tf * 1e3 / 40.0,
        tq * 1e3 / 40.0,
        tf / tq
    );
    let x1 = mnist
        .test
        .head(1)
        .batches(&BatchConfig::eval(1), 0, &dev)?
        .next()
        .unwrap()?
        .images;
    if args.get(3).map(String::as_str) == Some("b256") {
        let xb = mnist
            .test
            .head(256)
            .batches(&BatchConfig::eval(256), 0, &dev)?
            .next()
            .unwrap()?
            .images;
        for _ in 0..100 {
            q.forward(&xb)?;
        }
        return Ok(());
    }
    if args.get(3).map(String::as_str) == Some("b1") {
        for _ in 0..20_000 {
            q.forward(&x1)?;
        }
        return Ok(());
    }
    let time = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        for _ in 0..20 {
            f()?;
        }
        let mut v = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed().as_secs_f64());
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let f1 = time(&|| {
        loaded.model.forward(&x1)?;
        Ok(())
    })?;
    let q1 = time(&|| {
        q.forward(&x1)?;
        Ok(())
    })?;
    println!(
        "batch 1 median: f32 {:.1} us, int8 {:.1} us, speed-up {:.2}x",
        f1 * 1e6,
        q1 * 1e6,
        f1 / q1
    );
    Ok(())
}
