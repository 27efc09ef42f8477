//! Pictures of digit classifiers, as PNG files a person can open.
//!
//! - [`feature_map_grid`]: every channel of a convolutional layer's activation for one digit,
//!   from [`hdr_models::Classifier::forward_features`];
//! - [`saliency`] (input gradients) and [`grad_cam`] (class activation on the last convolutional
//!   layer), drawn over the digit with [`overlay`];
//! - [`confusion_heatmap`], [`line_charts`] (training curves) and [`digit_gallery`]
//!   (e.g. misclassified test digits with true and predicted labels);
//! - [`interval_chart`]: estimates with their intervals, one row each on a shared axis;
//!   [`accuracy_chart`] draws models' test accuracies with their 95% intervals that way.
//!
//! Drawing is done on a small [`Canvas`] with a built-in bitmap font, so no system fonts or
//! plotting back-ends are needed.
//!
//! ```
//! use hdr_metrics::ConfusionMatrix;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let m = ConfusionMatrix::from_counts(2, vec![48, 2, 1, 49])?;
//! let picture = hdr_viz::confusion_heatmap(&m, "toy");
//! # let dir = tempfile::tempdir()?;
//! picture.save_png(&dir.path().join("confusion.png"))?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod canvas;
mod error;
mod explain;
mod font;
mod plots;

pub use canvas::{Canvas, Color, BLACK, GREY, WHITE};
pub use error::{Result, VizError};
pub use explain::{grad_cam, saliency, upsample, Explanation};
pub use plots::{
    accuracy_chart, confusion_heatmap, digit_gallery, feature_map_grid, grey, inferno,
    interval_chart, line_charts, overlay, viridis, Captioned, Estimate, Panel, Series, BLUE,
    ORANGE,
};
