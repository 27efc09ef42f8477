//! Reading numbers: a postcode, an amount on a cheque. The ink of an image is split into
//! digits (connected components; broken strokes merged; touching digits split by width), each
//! normalised the MNIST way, left to right.

use std::path::Path;

use image::DynamicImage;

use crate::error::{DataError, Result};
use crate::preprocess::{check_size, fit, ink_map, PreprocessConfig};

/// How [`segment`] finds the digits.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentConfig {
    /// Normalisation of each digit (and the ink threshold used to find components).
    pub preprocess: PreprocessConfig,
    /// Components smaller than this fraction of the largest one's area are specks, dropped.
    pub min_area: f32,
    /// Two components whose horizontal extents overlap by more than this fraction of the
    /// narrower one are one digit (a broken stroke, the top bar of a 5).
    pub merge_overlap: f32,
    /// A component wider than this many times the typical digit height holds several digits.
    pub max_aspect: f32,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            preprocess: PreprocessConfig::default(),
            min_area: 0.05,
            merge_overlap: 0.5,
            max_aspect: 1.15,
        }
    }
}

/// One digit found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Inclusive box `(x0, y0, x1, y1)` in the (de-pixelated) source image.
    pub bbox: (usize, usize, usize, usize),
    /// The digit as `canvas * canvas` bytes in MNIST polarity.
    pub pixels: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Part {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    pixels: Vec<(usize, usize)>,
}

impl Part {
    fn width(&self) -> usize {
        self.x1 - self.x0 + 1
    }

    fn height(&self) -> usize {
        self.y1 - self.y0 + 1
    }

    fn absorb(&mut self, other: Part) {
        self.x0 = self.x0.min(other.x0);
        self.y0 = self.y0.min(other.y0);
        self.x1 = self.x1.max(other.x1);
        self.y1 = self.y1.max(other.y1);
        self.pixels.extend(other.pixels);
    }

    fn from_pixels(pixels: Vec<(usize, usize)>) -> Option<Self> {
        let x0 = pixels.iter().map(|p| p.0).min()?;
        let x1 = pixels.iter().map(|p| p.0).max()?;
        let y0 = pixels.iter().map(|p| p.1).min()?;
        let y1 = pixels.iter().map(|p| p.1).max()?;
        Some(Self {
            x0,
            y0,
            x1,
            y1,
            pixels,
        })
    }
}

/// The digits of `img`, left to right. See the [module documentation](self).
///
/// # Errors
/// [`DataError::EmptyImage`] when there is no ink, [`DataError::ImageSize`] for a zero or too
/// large image, [`DataError::InvalidParameter`] for a bad configuration.
pub fn segment(img: &DynamicImage, cfg: &SegmentConfig) -> Result<Vec<Segment>> {
    segment_at(img, cfg, Path::new("<memory>"))
}

/// [`segment`] on an image file (PNG or JPEG).
pub fn load_digits(path: &Path, cfg: &SegmentConfig) -> Result<Vec<Segment>> {
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let (w, h) = img
        .into_dimensions()
        .map_err(|source| DataError::ImageRead {
            path: path.to_path_buf(),
            source,
        })?;
    check_size(w, h, &cfg.preprocess, path)?;
    let img = image::open(path).map_err(|source| DataError::ImageRead {
        path: path.to_path_buf(),
        source,
    })?;
    segment_at(&img, cfg, path)
}

fn segment_at(img: &DynamicImage, cfg: &SegmentConfig, path: &Path) -> Result<Vec<Segment>> {
    cfg.preprocess.validate()?;
    for (name, v) in [
        ("min_area", cfg.min_area),
        ("merge_overlap", cfg.merge_overlap),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(DataError::InvalidParameter {
                name,
                value: v.to_string(),
                reason: "must be in [0, 1]",
            });
        }
    }
    if cfg.max_aspect.is_nan() || cfg.max_aspect < 0.5 {
        return Err(DataError::InvalidParameter {
            name: "max_aspect",
            value: cfg.max_aspect.to_string(),
            reason: "must be at least 0.5",
        });
    }
    check_size(img.width(), img.height(), &cfg.preprocess, path)?;
    let ink = ink_map(img, &cfg.preprocess, path)?;
    let mut parts = components(&ink.g, ink.w, ink.h, cfg.preprocess.ink_threshold);
    let largest = parts.iter().map(|p| p.pixels.len()).max().unwrap_or(0);
    parts.retain(|p| p.pixels.len() as f32 >= cfg.min_area * largest as f32);
    if parts.is_empty() {
        return Err(DataError::EmptyImage { path: path.into() });
    }
    parts.sort_by_key(|p| p.x0);
    let parts = merge(parts, cfg.merge_overlap);
    let parts = split_wide(parts, &ink.g, ink.w, cfg.max_aspect);
    parts
        .into_iter()
        .map(|p| {
            let (w, h) = (p.width(), p.height());
            let mut sub = vec![0f32; w * h];
            for &(x, y) in &p.pixels {
                sub[(y - p.y0) * w + (x - p.x0)] = ink.g[y * ink.w + x];
            }
            Ok(Segment {
                bbox: (p.x0, p.y0, p.x1, p.y1),
                pixels: fit(&sub, w, (0, 0, w - 1, h - 1), &cfg.preprocess, path)?,
            })
        })
        .collect()
}

/// 8-connected components of the pixels above `threshold`.
fn components(g: &[f32], w: usize, h: usize, threshold: f32) -> Vec<Part> {
    let mut seen = vec![false; w * h];
    let mut parts = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if seen[start] || g[start] <= threshold {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            pixels.push((x, y));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if !seen[j] && g[j] > threshold {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        parts.extend(Part::from_pixels(pixels));
    }
    parts
}

/// Joins parts (sorted by left edge) whose horizontal extents overlap substantially.
fn merge(parts: Vec<Part>, overlap: f32) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    for p in parts {
        if let Some(last) = out.last_mut() {
            let shared = (last.x1.min(p.x1) + 1).saturating_sub(last.x0.max(p.x0));
            if shared as f32 > overlap * last.width().min(p.width()) as f32 {
                last.absorb(p);
                continue;
            }
        }
        out.push(p);
    }
    out
}

/// Cuts parts that are too wide for one digit at the columns with the least ink near the
/// evenly spaced cut positions.
fn split_wide(parts: Vec<Part>, g: &[f32], w: usize, max_aspect: f32) -> Vec<Part> {
    let mut heights: Vec<usize> = parts.iter().map(Part::height).collect();
    heights.sort_unstable();
    let typical = heights[heights.len() / 2] as f32;
    let mut out = Vec::new();
    for p in parts {
        let width = p.width() as f32;
        if width <= max_aspect * typical.max(p.height() as f32) {
            out.push(p);
            continue;
        }
        // Handwritten digits are about 0.7 times as wide as they are tall.
        let n = ((width / (0.7 * typical)).round() as usize).max(2);
        let mut column = vec![0f32; p.width()];
        for &(x, y) in &p.pixels {
            column[x - p.x0] += g[y * w + x];
        }
        let step = p.width() as f32 / n as f32;
        let mut cuts = Vec::new();
        for k in 1..n {
            let ideal = (k as f32 * step) as usize;
            let lo = ideal
                .saturating_sub((step / 4.0) as usize)
                .max(cuts.last().map_or(1, |c| c + 1));
            let hi = (ideal + (step / 4.0) as usize).min(p.width() - 1);
            let cut = (lo..=hi.max(lo))
                .min_by(|&a, &b| column[a].total_cmp(&column[b]))
                .unwrap_or(ideal);
            cuts.push(cut);
        }
        let mut pieces: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for &(x, y) in &p.pixels {
            let piece = cuts.iter().filter(|&&c| x - p.x0 >= c).count();
            pieces[piece].push((x, y));
        }
        out.extend(pieces.into_iter().filter_map(Part::from_pixels));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink(w: usize, h: usize, on: &[(usize, usize)]) -> Vec<f32> {
        let mut g = vec![0f32; w * h];
        for &(x, y) in on {
            g[y * w + x] = 1.0;
        }
        g
    }

    #[test]
    fn components_are_eight_connected() {
        // A diagonal is one component; a separate dot is another.
        let g = ink(6, 4, &[(0, 0), (1, 1), (2, 2), (5, 0)]);
        let parts = components(&g, 6, 4, 0.5);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.iter().map(|p| p.pixels.len()).sum::<usize>(), 4);
    }

    #[test]
    fn overlapping_parts_merge_and_wide_parts_split() {
        let a = Part::from_pixels(vec![(0, 0), (4, 9)]).unwrap();
        let b = Part::from_pixels(vec![(1, 0), (3, 1)]).unwrap();
        let c = Part::from_pixels(vec![(10, 0), (14, 9)]).unwrap();
        let merged = merge(vec![a, b, c], 0.5);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].pixels.len(), 4);

        // Two 7x10 blobs touching through a thin bridge: one component, 15 wide, 10 tall.
        let mut on = Vec::new();
        for y in 0..10 {
            for x in (0..7).chain(8..15) {
                on.push((x, y));
            }
        }
        on.push((7, 5));
        let g = ink(15, 10, &on);
        let parts = components(&g, 15, 10, 0.5);
        assert_eq!(parts.len(), 1);
        let split = split_wide(parts, &g, 15, 1.15);
        assert_eq!(
            split.len(),
            2,
            "{:?}",
            split.iter().map(|p| (p.x0, p.x1)).collect::<Vec<_>>()
        );
        assert!(split[0].x1 <= 7 && split[1].x0 >= 7);
    }
}
