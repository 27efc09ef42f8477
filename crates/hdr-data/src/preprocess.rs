//! Turning real images of digits into MNIST-style inputs.
//!
//! MNIST digits are white ink on black, size-normalised with anti-aliasing into a 20x20 box
//! keeping their aspect ratio, then placed in a 28x28 field so that the centre of mass of the
//! ink is at the centre. A model trained on MNIST reads other digits well only after the same
//! procedure; [`preprocess`] and [`load_digit`] apply it to images of any size:
//!
//! 1. **Grey**: colour is reduced to luminance; transparent areas become background (see
//!    [`preprocess`]).
//! 2. **Polarity**: the image border is taken as background, and with [`Invert::Auto`] the image
//!    is inverted when the content departs from it mostly towards dark (dark ink on light paper).
//!    Deciding from the border rather than from the median pixel matters for thick digits,
//!    whose ink can cover more than half of the image.
//! 3. **Contrast**: the background level (plus three times its noise, measured on the border)
//!    becomes 0 and the strongest ink 1.
//! 4. **Crop** to the bounding box of the ink above `ink_threshold` of the strongest, which
//!    ignores faint noise and paper texture.
//! 5. **Fit** the crop into `box_size` (20) pixels on its long side: area averaging when
//!    shrinking, bilinear interpolation when enlarging. A pixelated source (a small digit blown
//!    up with nearest-neighbour into visible k x k blocks, k >= 2, as lossless files keep it)
//!    is first reduced to its native resolution, so that it too is enlarged smoothly instead of
//!    keeping its blocks (see [`preprocess`]).
//! 6. **Place** it in a `canvas` (28) square so that its centre of mass falls on pixel
//!    `(canvas / 2, canvas / 2)` = (14, 14) (row and column indices), shifting by whole pixels
//!    (rounded) and clipping what would fall outside.
//!
//! ```no_run
//! use hdr_data::preprocess::{load_digit, to_unit_f32, PreprocessConfig};
//!
//! # fn main() -> hdr_data::Result<()> {
//! let pixels = load_digit("photo_of_a_7.jpg".as_ref(), &PreprocessConfig::default())?;
//! assert_eq!(pixels.len(), 28 * 28); // u8, 0 = background, like MNIST
//! let input = to_unit_f32(&pixels); // [0, 1], ready for a model trained on MNIST / 255
//! # let _ = input;
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::error::{DataError, Result};

/// Whether to turn dark-on-light images into MNIST's light-on-dark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Invert {
    /// Decide from the image: invert when the border (the background) is lighter than the ink.
    #[default]
    Auto,
    /// The image is already light ink on a dark background.
    Never,
    /// The image is dark ink on a light background.
    Always,
}

/// How [`preprocess`] and [`load_digit`] normalise an image; the default reproduces MNIST.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Polarity handling.
    pub invert: Invert,
    /// Side of the square the ink is fitted into, keeping its aspect ratio (MNIST: 20).
    pub box_size: u32,
    /// Side of the output image (MNIST: 28); at least `box_size`.
    pub canvas: u32,
    /// Ink below this fraction of the strongest ink, after background removal, is ignored when
    /// finding the digit's bounding box; in `[0, 1)`.
    pub ink_threshold: f32,
    /// Smallest difference between the strongest ink and the background (plus its noise), in
    /// units of full scale, for the image to count as having ink at all; in `(0, 1]`. Below it
    /// the image is [`DataError::EmptyImage`].
    pub min_contrast: f32,
    /// Largest accepted `width * height`; larger images are rejected from their header, before
    /// decoding.
    pub max_pixels: u64,
}

impl Default for PreprocessConfig {
    /// MNIST: automatic polarity, 20 px box in a 28 px canvas, 20% ink threshold, 10% minimum
    /// contrast, at most 100 megapixels.
    fn default() -> Self {
        Self {
            invert: Invert::Auto,
            box_size: 20,
            canvas: 28,
            ink_threshold: 0.2,
            min_contrast: 0.1,
            max_pixels: 100_000_000,
        }
    }
}

/// Largest accepted canvas side: far beyond any digit model, small enough that a typo does not
/// allocate gigabytes.
const MAX_CANVAS: u32 = 4096;

impl PreprocessConfig {
    /// Checks every field is in its documented range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, reason| {
            Err(DataError::InvalidParameter {
                name,
                value,
                reason,
            })
        };
        if self.box_size == 0 {
            return bad("box_size", "0".into(), "must be at least 1");
        }
        if self.canvas < self.box_size || self.canvas > MAX_CANVAS {
            return bad(
                "canvas",
                self.canvas.to_string(),
                "must be at least box_size and at most 4096",
            );
        }
        if !(0.0..1.0).contains(&self.ink_threshold) {
            return bad(
                "ink_threshold",
                self.ink_threshold.to_string(),
                "must be in [0, 1)",
            );
        }
        if !(self.min_contrast > 0.0 && self.min_contrast <= 1.0) {
            return bad(
                "min_contrast",
                self.min_contrast.to_string(),
                "must be in (0, 1]",
            );
        }
        if self.max_pixels == 0 {
            return bad("max_pixels", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}

/// Reads an image file (PNG or JPEG, format detected from the content) and returns its digit as
/// `canvas * canvas` bytes, row-major, MNIST polarity (0 = background, 255 = ink).
///
/// The dimensions are checked from the file header before any pixel is decoded, so an absurdly
/// large file is rejected cheaply.
///
/// # Errors
/// [`DataError::Io`] if the file cannot be opened, [`DataError::ImageRead`] if it cannot be
/// decoded, [`DataError::ImageSize`] for a zero or too large size, [`DataError::EmptyImage`] when
/// there is no ink, [`DataError::InvalidParameter`] for a bad `cfg`.
pub fn load_digit(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<u8>> {
    cfg.validate()?;
    let read_err = |source| DataError::ImageRead {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    // Only the header is read here; the size is checked below, before pixels are allocated.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(read_err)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, cfg, path)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // PNG and JPEG decode to at most 8 bytes per pixel; the rest is the decoder's working room.
    limits.max_alloc = Some(cfg.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits.reserve(decoder.total_bytes()).map_err(read_err)?;
    decoder.set_limits(limits).map_err(read_err)?;
    let img = DynamicImage::from_decoder(decoder).map_err(read_err)?;
    normalise(&img, cfg, path)
}

/// The digit in an in-memory image, as `canvas * canvas` bytes in MNIST polarity; see the
/// [module documentation](self) for the steps.
///
/// Colour images are reduced to luminance (Rec. 709). Transparent pixels are composited over
/// the colour opposite to the ink (white under dark ink, black under light ink), so both black
/// strokes and white strokes on a transparent canvas work.
///
/// A pixelated image, where every change of value falls on the edges of a grid of k x k
/// blocks (2 <= k <= 64; at least 3 edges per axis), is treated as the small image it was
/// enlarged from: each block becomes one pixel before the fit. Fitting the blocks themselves
/// would keep them as 2-3 px steps in the 20 px box. This needs exact block values, as PNG
/// keeps them; after JPEG compression the blocks are fitted as they are.
///
/// # Errors
/// As [`load_digit`], with the path `<memory>`.
pub fn preprocess(img: &DynamicImage, cfg: &PreprocessConfig) -> Result<Vec<u8>> {
    cfg.validate()?;
    let path = Path::new("<memory>");
    check_size(img.width(), img.height(), cfg, path)?;
    normalise(img, cfg, path)
}

/// Bytes to intensities in `[0, 1]` (`x / 255`), the scale of [`crate::Normalize::UnitRange`].
pub fn to_unit_f32(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| f32::from(p) / 255.0).collect()
}

/// Longest over shortest side beyond which an image is refused (a strip of a few digits is
/// well under 10).
const MAX_ASPECT_RATIO: u32 = 1000;

pub(crate) fn check_size(
    width: u32,
    height: u32,
    cfg: &PreprocessConfig,
    path: &Path,
) -> Result<()> {
    let reason = if width == 0 || height == 0 {
        Some("width and height must be at least 1")
    } else if u64::from(width) * u64::from(height) > cfg.max_pixels {
        Some("more pixels than PreprocessConfig::max_pixels")
    } else if width.max(height) / width.min(height) > MAX_ASPECT_RATIO {
        Some("one side is more than 1000 times the other: not a picture of digits")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DataError::ImageSize {
            path: path.to_path_buf(),
            width,
            height,
            reason,
        }),
        None => Ok(()),
    }
}

/// Luminance in `[0, 1]` (1 = white), row-major.
fn grey(img: &DynamicImage) -> Vec<f32> {
    if !img.color().has_alpha() {
        return img.to_luma32f().into_raw();
    }
    let rgba = img.to_rgba32f();
    let luma = |p: &[f32]| 0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2];
    let (mut ink, mut weight) = (0f64, 0f64);
    for p in rgba.chunks_exact(4) {
        ink += f64::from(p[3] * luma(p));
        weight += f64::from(p[3]);
    }
    // The colour that shows where alpha is high is the ink; put the opposite behind it. A fully
    // transparent image gets white, and is then blank.
    let behind = if weight > 0.0 && ink / weight > 0.5 {
        0.0
    } else {
        1.0
    };
    rgba.chunks_exact(4)
        .map(|p| p[3] * luma(p) + (1.0 - p[3]) * behind)
        .collect()
}

fn median(values: &mut [f32]) -> f32 {
    let mid = values.len() / 2;
    *values.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// Values on the outer ring of the image, `max(1, min(w, h) / 50)` pixels thick.
fn border(g: &[f32], w: usize, h: usize) -> Vec<f32> {
    let t = (w.min(h) / 50).max(1);
    let mut out = Vec::with_capacity(2 * t * (w + h));
    for (y, row) in g.chunks_exact(w).enumerate() {
        if y < t || y + t >= h {
            out.extend_from_slice(row);
        } else {
            out.extend_from_slice(&row[..t.min(w)]);
            out.extend_from_slice(&row[w.saturating_sub(t).max(t.min(w))..]);
        }
    }
    out
}

/// The whole procedure on a decoded image whose size has been checked.
fn normalise(img: &DynamicImage, cfg: &PreprocessConfig, path: &Path) -> Result<Vec<u8>> {
    let ink = ink_map(img, cfg, path)?;
    let bbox = ink_box(&ink.g, ink.w, cfg.ink_threshold).ok_or_else(|| DataError::EmptyImage {
        path: path.to_path_buf(),
    })?;
    fit(&ink.g, ink.w, bbox, cfg, path)
}

/// An image as ink intensities in `[0, 1]` (0 = background), after polarity and contrast.
pub(crate) struct InkMap {
    pub g: Vec<f32>,
    pub w: usize,
    pub h: usize,
}

/// Steps 1-3: grey, polarity, contrast (and pixelation removal).
pub(crate) fn ink_map(img: &DynamicImage, cfg: &PreprocessConfig, path: &Path) -> Result<InkMap> {
    let (mut w, mut h) = (img.width() as usize, img.height() as usize);
    let mut g = grey(img);
    if let Some(blocks) = Blocks::detect(&g, w, h) {
        (g, w, h) = blocks.reduce(&g, w, h);
    }
    let empty = || DataError::EmptyImage {
        path: path.to_path_buf(),
    };

    let mut ring = border(&g, w, h);
    let bg = median(&mut ring);
    let invert = match cfg.invert {
        Invert::Never => false,
        Invert::Always => true,
        Invert::Auto => {
            // Which way does the content depart from the background, in total?
            let (mut darker, mut lighter) = (0f64, 0f64);
            for &p in &g {
                let d = f64::from(p - bg);
                if d > 0.0 {
                    lighter += d;
                } else {
                    darker -= d;
                }
            }
            darker > lighter
        }
    };
    let to_ink = |p: f32| if invert { 1.0 - p } else { p };
    let bg_ink = to_ink(bg);
    for v in &mut ring {
        *v = (to_ink(*v) - bg_ink).abs();
    }
    // 1.4826 * MAD estimates the standard deviation of Gaussian noise.
    let noise = 1.4826 * median(&mut ring);
    let black = bg_ink + 3.0 * noise;
    let strongest = g.iter().map(|&p| to_ink(p)).fold(f32::MIN, f32::max);
    let contrast = strongest - black;
    if contrast.is_nan() || contrast < cfg.min_contrast {
        return Err(empty());
    }
    for p in &mut g {
        *p = ((to_ink(*p) - black) / contrast).clamp(0.0, 1.0);
    }
    Ok(InkMap { g, w, h })
}

/// Steps 5-6: the ink inside the inclusive box `(x0, y0, x1, y1)` of `g` (width `w`), fitted
/// into `box_size` and placed by its centre of mass in the `canvas` square.
pub(crate) fn fit(
    g: &[f32],
    w: usize,
    bbox: (usize, usize, usize, usize),
    cfg: &PreprocessConfig,
    path: &Path,
) -> Result<Vec<u8>> {
    let empty = || DataError::EmptyImage {
        path: path.to_path_buf(),
    };
    let (x0, y0, x1, y1) = bbox;
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let scale = f64::from(cfg.box_size) / bw.max(bh) as f64;
    let ow = ((bw as f64 * scale).round() as usize).clamp(1, cfg.box_size as usize);
    let oh = ((bh as f64 * scale).round() as usize).clamp(1, cfg.box_size as usize);

    // Shrink or enlarge the crop: along x first (bh rows), then along y.
    let xtaps = axis_taps(bw, ow, scale);
    let ytaps = axis_taps(bh, oh, scale);
    let mut rows = vec![0f32; bh * ow];
    for (y, out) in rows.chunks_exact_mut(ow).enumerate() {
        let src = &g[(y0 + y) * w + x0..(y0 + y) * w + x0 + bw];
        for (o, taps) in out.iter_mut().zip(&xtaps) {
            *o = taps
                .weights
                .iter()
                .zip(&src[taps.first..])
                .map(|(k, v)| k * v)
                .sum();
        }
    }
    let mut fitted = vec![0f32; ow * oh];
    for (out, taps) in fitted.chunks_exact_mut(ow).zip(&ytaps) {
        for (k, src) in taps
            .weights
            .iter()
            .zip(rows[taps.first * ow..].chunks_exact(ow))
        {
            for (o, v) in out.iter_mut().zip(src) {
                *o += k * v;
            }
        }
    }

    // Full contrast again: shrinking thin strokes lowers the peak.
    let peak = fitted.iter().copied().fold(0f32, f32::max);
    if peak <= 0.0 {
        return Err(empty());
    }
    let (mut mass, mut mx, mut my) = (0f64, 0f64, 0f64);
    for (y, row) in fitted.chunks_exact(ow).enumerate() {
        for (x, &v) in row.iter().enumerate() {
            let v = f64::from(v);
            mass += v;
            mx += v * x as f64;
            my += v * y as f64;
        }
    }
    let centre = f64::from(cfg.canvas) / 2.0;
    let dx = (centre - mx / mass).round() as isize;
    let dy = (centre - my / mass).round() as isize;

    let side = cfg.canvas as usize;
    let mut out = vec![0u8; side * side];
    for (y, row) in fitted.chunks_exact(ow).enumerate() {
        let ty = y as isize + dy;
        if !(0..side as isize).contains(&ty) {
            continue;
        }
        for (x, &v) in row.iter().enumerate() {
            let tx = x as isize + dx;
            if (0..side as isize).contains(&tx) {
                out[ty as usize * side + tx as usize] =
                    (v / peak * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(out)
}

/// The grid of a pixelated image: square `k x k` blocks of equal values, the first full block
/// starting at `(x, y)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blocks {
    k: usize,
    x: usize,
    y: usize,
}

/// Largest block side looked for.
const MAX_BLOCK: usize = 64;

impl Blocks {
    /// The coarsest grid on which every change of value, along rows and along columns, falls on
    /// a block edge; `None` when values change between pixels of the same block anywhere, or
    /// when there are fewer than 3 edges per axis to tell a grid from a few straight strokes.
    fn detect(g: &[f32], w: usize, h: usize) -> Option<Self> {
        if w < 4 || h < 4 {
            return None;
        }
        // `cols[x]`: some row changes between x - 1 and x; `rows[y]` likewise.
        let mut cols = vec![false; w];
        let mut rows = vec![false; h];
        for (y, row) in g.chunks_exact(w).enumerate() {
            for (x, pair) in row.windows(2).enumerate() {
                cols[x + 1] |= pair[0] != pair[1];
            }
            if y > 0 {
                rows[y] = row != &g[(y - 1) * w..y * w];
            }
        }
        let xs: Vec<usize> = (0..w).filter(|&x| cols[x]).collect();
        let ys: Vec<usize> = (0..h).filter(|&y| rows[y]).collect();
        if xs.len() < 3 || ys.len() < 3 {
            return None;
        }
        let max_k = MAX_BLOCK.min(w / 2).min(h / 2);
        (2..=max_k).rev().find_map(|k| {
            let (px, py) = (xs[0] % k, ys[0] % k);
            let on_grid = xs.iter().all(|&x| x % k == px) && ys.iter().all(|&y| y % k == py);
            on_grid.then_some(Self { k, x: px, y: py })
        })
    }

    /// The image with each block averaged into one pixel (partial blocks at the edges too).
    fn reduce(&self, g: &[f32], w: usize, h: usize) -> (Vec<f32>, usize, usize) {
        let k = self.k;
        // With a phase, cell 0 is the partial block before the first full one.
        let cell_x = |x: usize| (x + (k - self.x) % k) / k;
        let cell_y = |y: usize| (y + (k - self.y) % k) / k;
        let (cw, ch) = (cell_x(w - 1) + 1, cell_y(h - 1) + 1);
        let mut sum = vec![0f64; cw * ch];
        let mut count = vec![0u32; cw * ch];
        for (y, row) in g.chunks_exact(w).enumerate() {
            let base = cell_y(y) * cw;
            for (x, &v) in row.iter().enumerate() {
                sum[base + cell_x(x)] += f64::from(v);
                count[base + cell_x(x)] += 1;
            }
        }
        let out = sum
            .iter()
            .zip(&count)
            .map(|(&s, &n)| {
                if n > 0 {
                    (s / f64::from(n)) as f32
                } else {
                    0.0
                }
            })
            .collect();
        (out, cw, ch)
    }
}

/// Inclusive bounding box `(x0, y0, x1, y1)` of the pixels above `threshold`.
fn ink_box(g: &[f32], w: usize, threshold: f32) -> Option<(usize, usize, usize, usize)> {
    let mut bb: Option<(usize, usize, usize, usize)> = None;
    for (y, row) in g.chunks_exact(w).enumerate() {
        let Some(first) = row.iter().position(|&v| v > threshold) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v > threshold).unwrap_or(first);
        bb = Some(match bb {
            None => (first, y, last, y),
            Some((x0, y0, x1, _)) => (x0.min(first), y0, x1.max(last), y),
        });
    }
    bb
}

/// The source pixels `first..first + weights.len()` that make one output pixel.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// Resampling weights from `n` source pixels to `m` output pixels at `scale` (output pixels per
/// source pixel; `m` is `n * scale` rounded, and the content stays centred).
///
/// Shrinking averages the source over each output pixel's footprint (exact area coverage);
/// enlarging interpolates linearly between source pixel centres. Outside the source counts as
/// background.
fn axis_taps(n: usize, m: usize, scale: f64) -> Vec<Taps> {
    let offset = (m as f64 - n as f64 * scale) / 2.0;
    (0..m)
        .map(|j| {
            let mut taps = Vec::new();
            let mut first = None;
            let mut push = |i: isize, wgt: f64| {
                if i >= 0 && (i as usize) < n && wgt > 0.0 {
                    let f = *first.get_or_insert(i as usize);
                    taps.resize(i as usize - f, 0.0);
                    taps.push(wgt as f32);
                }
            };
            if scale <= 1.0 {
                let a = (j as f64 - offset) / scale;
                let b = (j as f64 + 1.0 - offset) / scale;
                for i in a.floor() as isize..b.ceil() as isize {
                    let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                    push(i, overlap * scale);
                }
            } else {
                let c = (j as f64 + 0.5 - offset) / scale - 0.5;
                let i0 = c.floor();
                let f = c - i0;
                push(i0 as isize, 1.0 - f);
                push(i0 as isize + 1, f);
            }
            Taps {
                first: first.unwrap_or(0),
                weights: taps,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_weights_cover_each_output_pixel_once() {
        // 100 -> 20 is 5 source pixels per output pixel; 7 -> 3 has fractional footprints.
        for (n, m) in [(100, 20), (7, 3), (81, 20)] {
            let taps = axis_taps(n, m, m as f64 / n as f64);
            for t in &taps {
                let sum: f32 = t.weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{n}->{m}: {sum}");
            }
            // Every source pixel is used with total weight m / n.
            let mut used = vec![0f32; n];
            for t in &taps {
                for (i, w) in t.weights.iter().enumerate() {
                    used[t.first + i] += w;
                }
            }
            for u in used {
                assert!((u - m as f32 / n as f32).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn enlarging_interpolates_between_centres() {
        let taps = axis_taps(2, 4, 2.0);
        let w: Vec<Vec<f32>> = taps.iter().map(|t| t.weights.clone()).collect();
        // Output centres 0.5, 1.5, 2.5, 3.5 sit at source -0.25, 0.25, 0.75, 1.25.
        assert_eq!(taps[0].first, 0);
        assert_eq!(w[0], vec![0.75]); // the other 0.25 falls outside: background
        assert_eq!(w[1], vec![0.75, 0.25]);
        assert_eq!(w[2], vec![0.25, 0.75]);
        assert_eq!((taps[3].first, w[3].clone()), (1, vec![0.75]));
    }

    #[test]
    fn blocks_are_found_with_their_phase_and_only_when_exact() {
        let (w, h) = (40, 30);
        let pattern = |x: usize, y: usize| ((x * 7 + y * 3) % 5) as f32 / 4.0;
        let blocky: Vec<f32> = (0..w * h)
            .map(|i| pattern((i % w + 2) / 6, (i / w + 4) / 6))
            .collect();
        let found = Blocks::detect(&blocky, w, h);
        assert_eq!(found, Some(Blocks { k: 6, x: 4, y: 2 }));
        let (small, sw, sh) = found.unwrap().reduce(&blocky, w, h);
        assert_eq!((sw, sh), (7, 6));
        assert_eq!(small[sw + 1], pattern(1, 1));
        let mut smooth = blocky.clone();
        smooth[5 * w + 7] += 0.01; // one pixel off the grid
        assert_eq!(Blocks::detect(&smooth, w, h), None);
        let ramp: Vec<f32> = (0..w * h).map(|i| (i % w) as f32).collect();
        assert_eq!(Blocks::detect(&ramp, w, h), None);
    }

    #[test]
    fn border_ring_is_the_outer_pixels() {
        let (w, h) = (5, 4);
        let g: Vec<f32> = (0..w * h).map(|i| i as f32).collect();
        let mut b = border(&g, w, h);
        b.sort_by(f32::total_cmp);
        let want = [
            0., 1., 2., 3., 4., 5., 9., 10., 14., 15., 16., 17., 18., 19.,
        ];
        assert_eq!(b, want);
        assert_eq!(border(&[1.0], 1, 1), vec![1.0]);
    }
}
