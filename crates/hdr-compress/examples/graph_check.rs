//! Checks `Graph::run` against `forward` for a saved model and prints the graph.
use std::path::Path;

use candle_core::Device;
use hdr_data::{BatchConfig, Mnist};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let m = hdr_models::load(Path::new(&a[1]), &Device::Cpu)?;
    let mnist = Mnist::from_dir(&a[2])?;
    let x = mnist
        .test
        .head(500)
        .batches(&BatchConfig::eval(500), 0, &Device::Cpu)?
        .next()
        .unwrap()?
        .images;
    let g = m.model.graph();
    for (i, n) in g.nodes.iter().enumerate().take(12) {
        println!("{i}: {n:?}");
    }
    let (lf, lg) = (m.model.forward(&x)?, g.run(&m.vars, &x)?);
    let d = (&lf - &lg)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let pf = lf.argmax(1)?.to_vec1::<u32>()?;
    let pg = lg.argmax(1)?.to_vec1::<u32>()?;
    let agree = pf.iter().zip(&pg).filter(|(a, b)| a == b).count();
    println!("max |forward - graph| = {d}, argmax agreement {agree}/500");
    Ok(())
}
