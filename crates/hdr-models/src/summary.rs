use std::fmt;

use hdr_metrics::format_count;

/// One row of a [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerSummary {
    /// Parameter prefix of the layer (as in the safetensors file), e.g. `features.3.pw`.
    pub name: String,
    /// Kind of layer, e.g. `Conv2d 3x3/2 dw`.
    pub kind: String,
    /// Output shape of one sample (no batch dimension).
    pub output: Vec<usize>,
    /// Trainable parameters.
    pub params: usize,
    /// Multiply-accumulates for one sample.
    pub macs: u64,
}

/// A layer-by-layer description of a model, like Keras' `model.summary()`.
///
/// Multiply-accumulates are counted for convolutions and linear layers (as `thop` and `ptflops`
/// do); batch norm, activations and pooling are listed with zero MACs. Parameters are the
/// trainable ones; batch-norm running statistics are counted separately as buffers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Model name.
    pub model: String,
    /// Input shape of one sample.
    pub input: Vec<usize>,
    /// Layers in execution order.
    pub layers: Vec<LayerSummary>,
    /// Non-trainable values stored with the model (batch-norm running mean and variance).
    pub buffers: usize,
}

impl Summary {
    /// Total trainable parameters.
    pub fn params(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// Total multiply-accumulates per sample.
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum()
    }

    /// The output shape of one sample.
    pub fn output(&self) -> &[usize] {
        self.layers
            .last()
            .map_or(&self.input[..], |l| &l.output[..])
    }
}

fn shape(s: &[usize]) -> String {
    let inner: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", inner.join(", "))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_w = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let kind_w = self
            .layers
            .iter()
            .map(|l| l.kind.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let line = "-".repeat(name_w + kind_w + 48);
        writeln!(f, "Model: {}  (input {})", self.model, shape(&self.input))?;
        writeln!(f, "{line}")?;
        writeln!(
            f,
            "{:<name_w$}  {:<kind_w$}  {:>14}  {:>10}  {:>14}",
            "layer", "kind", "output", "params", "MACs"
        )?;
        writeln!(f, "{line}")?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<name_w$}  {:<kind_w$}  {:>14}  {:>10}  {:>14}",
                l.name,
                l.kind,
                shape(&l.output),
                format_count(l.params as u64),
                format_count(l.macs)
            )?;
        }
        writeln!(f, "{line}")?;
        writeln!(
            f,
            "Trainable params: {}",
            format_count(self.params() as u64)
        )?;
        writeln!(
            f,
            "Buffers (batch-norm statistics): {}",
            format_count(self.buffers as u64)
        )?;
        writeln!(f, "MACs per image: {}", format_count(self.macs()))?;
        write!(f, "Output: {}", shape(self.output()))
    }
}

#[cfg(test)]
mod tests {
    use super::format_count;

    #[test]
    fn grouping() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(61_706), "61,706");
        assert_eq!(format_count(1_234_567), "1,234,567");
    }
}
