use candle_core::{Device, Result, Var};
fn main() -> Result<()> {
    let x = Var::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu)?;
    let g = x.max_pool2d(2)?.sum_all()?.backward()?;
    println!(
        "candle max_pool2d grad: {:?}",
        g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?
    );
    Ok(())
}
