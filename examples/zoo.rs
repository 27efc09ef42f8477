//! Lists the model zoo with parameters and multiply-accumulates, or prints one model's summary.
//!
//! `cargo run --release --example zoo [-- <model>]`

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;

#[derive(Parser)]
#[command(about = "The registered models, or one model's layer-by-layer summary")]
struct Args {
    /// A registered model name; without it, every model is listed.
    model: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let build = |name: &str| -> anyhow::Result<_> {
        let vars = VarMap::new();
        Ok(hdr::models::create(
            name,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )?)
    };
    if let Some(name) = args.model {
        println!("{}", build(&name)?.summary());
        return Ok(());
    }
    println!(
        "{:<16} {:>11} {:>14}  description",
        "model", "params", "MACs/image"
    );
    for info in hdr::models::models() {
        let s = build(info.name)?.summary().clone();
        println!(
            "{:<16} {:>11} {:>14}  {}",
            info.name,
            s.params(),
            s.macs(),
            info.description
        );
    }
    Ok(())
}
