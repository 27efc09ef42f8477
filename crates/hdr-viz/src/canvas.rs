//! An RGB raster with the few primitives the plots need, saved as PNG atomically.

use std::io::Write;
use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Result, VizError};
use crate::font;

/// A colour.
pub type Color = [u8; 3];

/// White.
pub const WHITE: Color = [255, 255, 255];
/// Black.
pub const BLACK: Color = [0, 0, 0];
/// Mid grey, for axes and grid lines.
pub const GREY: Color = [160, 160, 160];

/// A picture being drawn.
#[derive(Debug, Clone)]
pub struct Canvas {
    img: RgbImage,
}

impl Canvas {
    /// A `width x height` canvas filled with `background`.
    pub fn new(width: u32, height: u32, background: Color) -> Self {
        Self {
            img: RgbImage::from_pixel(width.max(1), height.max(1), Rgb(background)),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.img.width()
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.img.height()
    }

    /// The pixel at `(x, y)`, if inside.
    pub fn pixel(&self, x: u32, y: u32) -> Option<Color> {
        (x < self.width() && y < self.height()).then(|| self.img.get_pixel(x, y).0)
    }

    /// Sets a pixel; outside the canvas nothing happens (plots clip).
    pub fn set(&mut self, x: i64, y: i64, c: Color) {
        if x >= 0 && y >= 0 && (x as u32) < self.width() && (y as u32) < self.height() {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    /// Fills the rectangle with top-left `(x, y)`.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: u32, h: u32, c: Color) {
        for yy in y..y + h as i64 {
            for xx in x..x + w as i64 {
                self.set(xx, yy, c);
            }
        }
    }

    /// A one-pixel rectangle outline.
    pub fn rect(&mut self, x: i64, y: i64, w: u32, h: u32, c: Color) {
        let (x1, y1) = (x + w as i64 - 1, y + h as i64 - 1);
        self.line(x, y, x1, y, c);
        self.line(x, y1, x1, y1, c);
        self.line(x, y, x, y1, c);
        self.line(x1, y, x1, y1, c);
    }

    /// A straight line (Bresenham).
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Color) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at `(x, y)`, each font pixel drawn as a `scale x scale` block.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, c: Color) {
        let s = scale.max(1) as i64;
        for (i, ch) in text.chars().enumerate() {
            let ox = x + i as i64 * font::ADVANCE as i64 * s;
            for gy in 0..7 {
                for gx in 0..5 {
                    if font::ink(ch, gx, gy) {
                        self.fill_rect(
                            ox + gx as i64 * s,
                            y + gy as i64 * s,
                            s as u32,
                            s as u32,
                            c,
                        );
                    }
                }
            }
        }
    }

    /// Text centred horizontally on `cx`.
    pub fn text_centered(&mut self, cx: i64, y: i64, text: &str, scale: u32, c: Color) {
        let w = font::text_width(text, scale.max(1)) as i64;
        self.text(cx - w / 2, y, text, scale, c);
    }

    /// Draws a `w x h` grid of values (row-major, each mapped through `color`) with each value
    /// as a `cell x cell` block, top-left at `(x, y)`.
    pub fn image(
        &mut self,
        x: i64,
        y: i64,
        values: &[f32],
        w: usize,
        cell: u32,
        color: impl Fn(f32) -> Color,
    ) {
        for (i, &v) in values.iter().enumerate() {
            let (r, c) = (i / w.max(1), i % w.max(1));
            self.fill_rect(
                x + c as i64 * cell as i64,
                y + r as i64 * cell as i64,
                cell,
                cell,
                color(v),
            );
        }
    }

    /// Saves as PNG, through a temporary file and a rename so that a reader never sees half a file.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let io = |source| VizError::Io {
            path: path.into(),
            source,
        };
        let mut bytes = Vec::new();
        self.img
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|source| VizError::Encode {
                path: path.into(),
                source,
            })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut builder = tempfile::Builder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
        let mut tmp = builder.tempfile_in(dir).map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// The underlying image.
    pub fn into_image(self) -> RgbImage {
        self.img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_touch_the_right_pixels() {
        let mut c = Canvas::new(20, 10, WHITE);
        c.line(0, 0, 19, 9, BLACK);
        assert_eq!(c.pixel(0, 0), Some(BLACK));
        assert_eq!(c.pixel(19, 9), Some(BLACK));
        assert_eq!(c.pixel(19, 0), Some(WHITE));
        c.fill_rect(-5, -5, 7, 7, GREY);
        assert_eq!(c.pixel(1, 1), Some(GREY));
        assert_eq!(c.pixel(2, 2), Some(WHITE));
        c.set(100, 100, BLACK); // clipped, no panic
        assert_eq!(c.pixel(100, 100), None);
    }

    #[test]
    fn text_draws_ink_where_the_font_has_it() {
        let mut c = Canvas::new(20, 10, WHITE);
        c.text(0, 0, "1", 1, BLACK);
        assert_eq!(c.pixel(2, 0), Some(BLACK));
        assert_eq!(c.pixel(0, 0), Some(WHITE));
    }
}
