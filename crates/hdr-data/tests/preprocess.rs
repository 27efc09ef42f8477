//! MNIST-style preprocessing of real-world images: digits rendered programmatically at other
//! sizes, polarities and formats must come out like MNIST digits.

use std::path::{Path, PathBuf};

use hdr_data::preprocess::{load_digit, preprocess, to_unit_f32, Invert, PreprocessConfig};
use hdr_data::DataError;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use proptest::prelude::*;

/// A shape in unit coordinates: `inside(u, v)` for `u, v` in `[0, 1]`.
type Shape = fn(f32, f32) -> bool;

fn dist_to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// A "7": a top bar and a diagonal, stroke 0.16 of the height, touching all four sides.
fn seven(u: f32, v: f32) -> bool {
    let r = 0.08;
    let bar = dist_to_segment((u, v), (r, r), (1.0 - r, r)) <= r;
    let diag = dist_to_segment((u, v), (1.0 - r, r), (0.35, 1.0 - r)) <= r;
    bar || diag
}

/// A ring ("0") touching all four sides.
fn ring(u: f32, v: f32) -> bool {
    let d = ((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt();
    (0.325..=0.5).contains(&d)
}

/// A very thick "0": ink covers most of its box.
fn fat_ring(u: f32, v: f32) -> bool {
    let d = ((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt();
    (0.1..=0.5).contains(&d)
}

/// A "1": a vertical bar a quarter as wide as it is tall.
fn one(u: f32, _v: f32) -> bool {
    (0.375..=0.625).contains(&u)
}

/// Ink coverage in `[0, 1]` of a `w x h` image with `shape`'s unit square mapped onto
/// `(x, y, width, height)` (pixel edges at integers), 4x4 supersampled.
fn render(shape: Shape, w: usize, h: usize, rect: (f32, f32, f32, f32)) -> Vec<f32> {
    let (rx, ry, rw, rh) = rect;
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut hits = 0;
            for sy in 0..4 {
                for sx in 0..4 {
                    let px = x as f32 + (sx as f32 + 0.5) / 4.0;
                    let py = y as f32 + (sy as f32 + 0.5) / 4.0;
                    let (u, v) = ((px - rx) / rw, (py - ry) / rh);
                    if (0.0..=1.0).contains(&u) && (0.0..=1.0).contains(&v) && shape(u, v) {
                        hits += 1;
                    }
                }
            }
            out[y * w + x] = hits as f32 / 16.0;
        }
    }
    out
}

/// Grey image of a coverage map: dark ink on light paper or light ink on dark.
fn grey_image(cov: &[f32], w: usize, h: usize, dark_on_light: bool) -> DynamicImage {
    let img = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let c = cov[y as usize * w + x as usize];
        let v = if dark_on_light { 1.0 - c } else { c };
        Luma([(v * 255.0).round() as u8])
    });
    DynamicImage::ImageLuma8(img)
}

/// Blue-ink-on-cream colour image of a coverage map.
fn colour_image(cov: &[f32], w: usize, h: usize) -> DynamicImage {
    let paper = [245.0, 240.0, 225.0];
    let ink = [20.0, 30.0, 120.0];
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let c = cov[y as usize * w + x as usize];
        Rgb(std::array::from_fn(|k| {
            (paper[k] * (1.0 - c) + ink[k] * c).round() as u8
        }))
    });
    DynamicImage::ImageRgb8(img)
}

fn save(img: &DynamicImage, dir: &Path, name: &str, format: ImageFormat) -> PathBuf {
    let path = dir.join(name);
    img.save_with_format(&path, format)
        .expect("write test image");
    path
}

/// Mean absolute difference in `[0, 1]` units.
fn mad(a: &[u8], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    let s: f32 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f32::from(x) - f32::from(y)).abs())
        .sum();
    s / 255.0 / a.len() as f32
}

/// `mad` after the best whole-pixel shift of `a` within one pixel: tells shape differences from
/// the half-pixel ambiguity of centring.
fn mad_best_shift(a: &[u8], b: &[u8], side: usize) -> f32 {
    let mut best = f32::INFINITY;
    for dy in -1isize..=1 {
        for dx in -1isize..=1 {
            let mut shifted = vec![0u8; a.len()];
            for y in 0..side as isize {
                for x in 0..side as isize {
                    let (sx, sy) = (x - dx, y - dy);
                    if (0..side as isize).contains(&sx) && (0..side as isize).contains(&sy) {
                        shifted[(y * side as isize + x) as usize] =
                            a[(sy * side as isize + sx) as usize];
                    }
                }
            }
            best = best.min(mad(&shifted, b));
        }
    }
    best
}

fn centre_of_mass(px: &[u8], side: usize) -> (f64, f64) {
    let (mut m, mut mx, mut my) = (0.0, 0.0, 0.0);
    for (i, &v) in px.iter().enumerate() {
        let v = f64::from(v);
        m += v;
        mx += v * (i % side) as f64;
        my += v * (i / side) as f64;
    }
    (mx / m, my / m)
}

/// Inclusive bounding box `(x0, y0, x1, y1)` of the non-zero pixels.
fn ink_box(px: &[u8], side: usize) -> (usize, usize, usize, usize) {
    let mut bb = (side, side, 0, 0);
    for (i, &v) in px.iter().enumerate() {
        if v > 0 {
            let (x, y) = (i % side, i / side);
            bb = (bb.0.min(x), bb.1.min(y), bb.2.max(x), bb.3.max(y));
        }
    }
    bb
}

/// MNIST's invariants: 28x28, background 0 (corners and at least a third of the image),
/// centre of mass within 1 px of (14, 14), ink within 20x20 with the long side 19-20, full
/// contrast.
fn assert_mnist_like(px: &[u8], what: &str) {
    assert_eq!(px.len(), 28 * 28, "{what}");
    for (x, y) in [
        (0, 0),
        (1, 1),
        (26, 1),
        (27, 0),
        (0, 27),
        (1, 26),
        (26, 26),
        (27, 27),
    ] {
        assert_eq!(
            px[y * 28 + x],
            0,
            "{what}: corner ({x}, {y}) is not background"
        );
    }
    assert!(
        px.iter().filter(|&&v| v == 0).count() > 784 / 3,
        "{what}: background"
    );
    let mean = px.iter().map(|&v| f64::from(v)).sum::<f64>() / 784.0 / 255.0;
    assert!(
        mean < 0.4,
        "{what}: mean {mean}, ink and background swapped?"
    );
    assert_eq!(px.iter().max(), Some(&255), "{what}: full contrast");
    let (cx, cy) = centre_of_mass(px, 28);
    assert!(
        (cx - 14.0).abs() <= 1.0 && (cy - 14.0).abs() <= 1.0,
        "{what}: centre of mass ({cx:.2}, {cy:.2})"
    );
    let (x0, y0, x1, y1) = ink_box(px, 28);
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    assert!(bw <= 20 && bh <= 20, "{what}: ink box {bw}x{bh}");
    assert!(
        bw.max(bh) >= 19,
        "{what}: ink box {bw}x{bh} not fitted to 20"
    );
}

#[test]
fn png_and_jpeg_in_both_polarities_come_out_like_mnist() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, h) = (100, 140);
    let cov = render(seven, w, h, (18.0, 25.0, 64.0, 90.0));
    let reference = preprocess(&grey_image(&cov, w, h, false), &PreprocessConfig::default())?;
    assert_mnist_like(&reference, "in-memory light on dark");
    let mut variants = Vec::new();
    for (format, ext) in [(ImageFormat::Png, "png"), (ImageFormat::Jpeg, "jpg")] {
        for dark in [true, false] {
            let name = format!("seven_{}.{ext}", if dark { "dark" } else { "light" });
            variants.push(save(
                &grey_image(&cov, w, h, dark),
                dir.path(),
                &name,
                format,
            ));
        }
        let name = format!("seven_colour.{ext}");
        variants.push(save(&colour_image(&cov, w, h), dir.path(), &name, format));
    }
    for path in &variants {
        let what = path.display().to_string();
        let px = load_digit(path, &PreprocessConfig::default())?;
        assert_mnist_like(&px, &what);
        let d = mad(&px, &reference);
        // PNG differs from the reference only by 8-bit rounding; JPEG adds ringing and the
        // colour image a lower paper/ink contrast.
        assert!(d < 0.02, "{what}: mean abs difference {d}");
    }
    // Exactly complementary PNGs give the same digit.
    let dark = load_digit(&variants[0], &PreprocessConfig::default())?;
    let light = load_digit(&variants[1], &PreprocessConfig::default())?;
    assert!(mad(&dark, &light) < 0.002);
    Ok(())
}

#[test]
fn thick_digit_on_light_background_is_inverted_from_the_border() -> anyhow::Result<()> {
    let (w, h) = (60, 60);
    let cov = render(fat_ring, w, h, (4.0, 4.0, 52.0, 52.0));
    let ink_fraction = cov.iter().filter(|&&c| c > 0.5).count() as f32 / cov.len() as f32;
    assert!(
        ink_fraction > 0.5,
        "the median pixel must be ink for this test to mean anything ({ink_fraction})"
    );
    let dark = preprocess(&grey_image(&cov, w, h, true), &PreprocessConfig::default())?;
    let light = preprocess(&grey_image(&cov, w, h, false), &PreprocessConfig::default())?;
    assert_mnist_like(&dark, "thick dark on light");
    assert!(mad(&dark, &light) < 0.002);
    // The hole of the "0" stays background.
    assert_eq!(dark[14 * 28 + 14], 0);
    // Forcing the wrong polarity gives something else (here: no digit at all, as the paper
    // is then the "ink" and fills the image).
    let forced = PreprocessConfig {
        invert: Invert::Never,
        ..PreprocessConfig::default()
    };
    match preprocess(&grey_image(&cov, w, h, true), &forced) {
        Err(DataError::EmptyImage { .. }) => {}
        Ok(px) => assert!(mad(&px, &dark) > 0.1),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[test]
fn mnist_style_digit_survives_a_round_trip_at_4x() -> anyhow::Result<()> {
    // A 28x28 "0" with its 20x20 box in the middle: the shape MNIST would produce.
    let original: Vec<u8> = render(ring, 28, 28, (4.0, 4.0, 20.0, 20.0))
        .iter()
        .map(|c| (c * 255.0).round() as u8)
        .collect();
    let (x0, y0, x1, y1) = ink_box(&original, 28);
    assert_eq!((x1 - x0 + 1, y1 - y0 + 1), (20, 20));
    // The same shape drawn 4x larger, off-centre in a bigger photo, dark on light.
    let (w, h) = (160, 200);
    let big = render(ring, w, h, (30.0, 70.0, 80.0, 80.0));
    let px = preprocess(&grey_image(&big, w, h, true), &PreprocessConfig::default())?;
    assert_mnist_like(&px, "4x ring");
    let d = mad_best_shift(&px, &original, 28);
    // Tolerance: 1% of full scale per pixel on average (8-bit rounding and the contrast
    // stretch are all that separate them once aligned).
    assert!(d < 0.01, "mean abs difference {d}");
    let (cx, cy) = centre_of_mass(&px, 28);
    assert!((cx - 14.0).abs() <= 0.5 && (cy - 14.0).abs() <= 0.5);
    Ok(())
}

#[test]
fn aspect_ratio_is_kept() -> anyhow::Result<()> {
    let (w, h) = (90, 120);
    let cov = render(one, w, h, (20.0, 10.0, 40.0, 100.0)); // ink 10 x 100 px
    let px = preprocess(&grey_image(&cov, w, h, true), &PreprocessConfig::default())?;
    assert_mnist_like(&px, "one");
    let (x0, y0, x1, y1) = ink_box(&px, 28);
    assert_eq!(y1 - y0 + 1, 20);
    assert!((2..=3).contains(&(x1 - x0 + 1)), "width {}", x1 - x0 + 1);
    Ok(())
}

#[test]
fn faint_noise_is_ignored() -> anyhow::Result<()> {
    let (w, h) = (100, 140);
    let cov = render(seven, w, h, (18.0, 25.0, 64.0, 90.0));
    let clean = preprocess(&grey_image(&cov, w, h, true), &PreprocessConfig::default())?;
    // Paper texture of +-8% everywhere, plus specks at 15% of full ink well outside the digit.
    let mut state = 12345u64;
    let mut noisy = cov.clone();
    for c in &mut noisy {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (state >> 40) as f32 / (1u64 << 24) as f32;
        *c = (*c + 0.16 * (u - 0.5)).clamp(0.0, 1.0);
    }
    for (x, y) in [(3, 3), (95, 5), (5, 130), (90, 135), (50, 8)] {
        noisy[y * w + x] = 0.15;
    }
    let px = preprocess(
        &grey_image(&noisy, w, h, true),
        &PreprocessConfig::default(),
    )?;
    assert_mnist_like(&px, "noisy seven");
    let d = mad(&px, &clean);
    assert!(d < 0.02, "mean abs difference {d}");
    Ok(())
}

/// `img` enlarged `k` times by pixel replication.
fn pixelate(img: &DynamicImage, k: u32) -> DynamicImage {
    let g = img.to_luma8();
    DynamicImage::ImageLuma8(GrayImage::from_fn(g.width() * k, g.height() * k, |x, y| {
        *g.get_pixel(x / k, y / k)
    }))
}

#[test]
fn low_resolution_sources_are_enlarged_smoothly() -> anyhow::Result<()> {
    // An 8x8 digit like the UCI/sklearn set (the ring fills 6x6 pixels) ...
    let small = grey_image(&render(ring, 8, 8, (1.0, 1.0, 6.0, 6.0)), 8, 8, true);
    let native = preprocess(&small, &PreprocessConfig::default())?;
    assert_mnist_like(&native, "8x8 ring");
    // ... compared with the same ring drawn sharply.
    let sharp = preprocess(
        &grey_image(
            &render(ring, 100, 100, (10.0, 10.0, 80.0, 80.0)),
            100,
            100,
            true,
        ),
        &PreprocessConfig::default(),
    )?;
    let d = mad_best_shift(&native, &sharp, 28);
    assert!(d < 0.1, "8x8 source vs sharp: {d}");
    // The same 8x8 digit saved as visible 9x9 blocks gives the same result as the small file,
    // in a file too, and whatever the block phase.
    let dir = tempfile::tempdir()?;
    let path = save(
        &pixelate(&small, 9),
        dir.path(),
        "blocks.png",
        ImageFormat::Png,
    );
    let blocky = load_digit(&path, &PreprocessConfig::default())?;
    assert_mnist_like(&blocky, "pixelated ring");
    assert!(mad(&blocky, &native) < 0.002);
    let shifted = pixelate(&small, 9).crop_imm(4, 5, 70, 68);
    let px = preprocess(&shifted, &PreprocessConfig::default())?;
    assert!(mad_best_shift(&px, &native, 28) < 0.03);
    Ok(())
}

#[test]
fn transparent_backgrounds_work_for_dark_and_light_ink() -> anyhow::Result<()> {
    let (w, h) = (100, 140);
    let cov = render(seven, w, h, (18.0, 25.0, 64.0, 90.0));
    let reference = preprocess(&grey_image(&cov, w, h, false), &PreprocessConfig::default())?;
    for colour in [0u8, 255] {
        let img = RgbaImage::from_fn(w as u32, h as u32, |x, y| {
            let a = cov[y as usize * w + x as usize];
            Rgba([colour, colour, colour, (a * 255.0).round() as u8])
        });
        let px = preprocess(&DynamicImage::ImageRgba8(img), &PreprocessConfig::default())?;
        assert_mnist_like(&px, &format!("ink {colour} on transparent"));
        assert!(mad(&px, &reference) < 0.01);
    }
    Ok(())
}

#[test]
fn unreadable_file_is_image_read_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("digit.png");
    std::fs::write(
        &path,
        b"this is not a png at all, just some bytes \x00\x01\x02",
    )?;
    let err = load_digit(&path, &PreprocessConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::ImageRead { .. }), "{err:?}");
    assert!(err.to_string().contains("digit.png"), "{err}");
    // A truncated real PNG too.
    let good = save(
        &grey_image(&render(ring, 40, 40, (5.0, 5.0, 30.0, 30.0)), 40, 40, true),
        dir.path(),
        "ring.png",
        ImageFormat::Png,
    );
    let bytes = std::fs::read(&good)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let err = load_digit(&path, &PreprocessConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::ImageRead { .. }), "{err:?}");
    let missing = dir.path().join("missing.png");
    let err = load_digit(&missing, &PreprocessConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    Ok(())
}

#[test]
fn blank_images_are_empty_image_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let white = DynamicImage::ImageLuma8(GrayImage::from_pixel(50, 70, Luma([255])));
    let path = save(&white, dir.path(), "blank.png", ImageFormat::Png);
    let err = load_digit(&path, &PreprocessConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::EmptyImage { .. }), "{err:?}");
    // Grey paper with faint texture and JPEG artefacts is still blank.
    let paper = DynamicImage::ImageLuma8(GrayImage::from_fn(64, 64, |x, y| {
        Luma([200 + ((x * 7 + y * 13) % 9) as u8])
    }));
    let path = save(&paper, dir.path(), "paper.jpg", ImageFormat::Jpeg);
    let err = load_digit(&path, &PreprocessConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::EmptyImage { .. }), "{err:?}");
    // A single pixel is all border, hence all background.
    let dot = DynamicImage::ImageLuma8(GrayImage::from_pixel(1, 1, Luma([0])));
    assert!(matches!(
        preprocess(&dot, &PreprocessConfig::default()),
        Err(DataError::EmptyImage { .. })
    ));
    Ok(())
}

/// A PNG made of a header announcing `width x height`, an empty data chunk and the end marker.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn absurd_sizes_are_image_size_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 40 gigapixels announced by a 57-byte file: rejected from the header, nothing allocated.
    let path = dir.path().join("huge.png");
    std::fs::write(&path, png_header_only(200_000, 200_000))?;
    let err = load_digit(&path, &PreprocessConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ImageSize {
                width: 200_000,
                height: 200_000,
                ..
            }
        ),
        "{err:?}"
    );
    // Zero-size images (cannot be written as PNG, so in memory).
    for (w, h) in [(0, 10), (10, 0), (0, 0)] {
        let img = DynamicImage::ImageLuma8(GrayImage::new(w, h));
        let err = preprocess(&img, &PreprocessConfig::default()).unwrap_err();
        assert!(matches!(err, DataError::ImageSize { .. }), "{err:?}");
    }
    // A 1 x 50M sliver is under the pixel limit but no picture of digits: refused from the
    // header too.
    let path = dir.path().join("sliver.png");
    std::fs::write(&path, png_header_only(50_000_000, 1))?;
    let err = load_digit(&path, &PreprocessConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ImageSize {
                width: 50_000_000,
                height: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // The limit is configurable, and applies to files and memory alike.
    let small = PreprocessConfig {
        max_pixels: 1_000,
        ..PreprocessConfig::default()
    };
    let img = grey_image(&render(ring, 40, 40, (5.0, 5.0, 30.0, 30.0)), 40, 40, true);
    let path = save(&img, dir.path(), "ring.png", ImageFormat::Png);
    assert!(matches!(
        load_digit(&path, &small),
        Err(DataError::ImageSize {
            width: 40,
            height: 40,
            ..
        })
    ));
    assert!(matches!(
        preprocess(&img, &small),
        Err(DataError::ImageSize { .. })
    ));
    assert!(load_digit(&path, &PreprocessConfig::default()).is_ok());
    Ok(())
}

#[test]
fn nonsense_configs_are_rejected() {
    let img = grey_image(&render(ring, 40, 40, (5.0, 5.0, 30.0, 30.0)), 40, 40, true);
    let d = PreprocessConfig::default;
    let bad = [
        PreprocessConfig { box_size: 0, ..d() },
        PreprocessConfig { canvas: 19, ..d() },
        PreprocessConfig {
            canvas: 100_000,
            ..d()
        },
        PreprocessConfig {
            ink_threshold: 1.0,
            ..d()
        },
        PreprocessConfig {
            ink_threshold: f32::NAN,
            ..d()
        },
        PreprocessConfig {
            min_contrast: 0.0,
            ..d()
        },
        PreprocessConfig {
            max_pixels: 0,
            ..d()
        },
    ];
    for cfg in bad {
        assert!(
            matches!(
                preprocess(&img, &cfg),
                Err(DataError::InvalidParameter { .. })
            ),
            "{cfg:?}"
        );
    }
    // Other geometries work.
    let cfg = PreprocessConfig {
        box_size: 12,
        canvas: 16,
        ..d()
    };
    let px = preprocess(&img, &cfg).expect("valid config");
    assert_eq!(px.len(), 16 * 16);
    let (x0, y0, x1, y1) = ink_box(&px, 16);
    assert_eq!((x1 - x0 + 1).max(y1 - y0 + 1), 12);
}

#[test]
fn to_unit_f32_scales_bytes() {
    assert_eq!(to_unit_f32(&[0, 51, 255]), vec![0.0, 0.2, 1.0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Wherever and however large the digit, on whatever image, the output is MNIST-like.
    #[test]
    fn any_placement_and_size_gives_an_mnist_like_digit(
        w in 12usize..240,
        h in 12usize..240,
        fx in 0.0f32..1.0,
        fy in 0.0f32..1.0,
        size in 0.3f32..0.9,
        aspect in 0.5f32..1.5,
        shape in prop_oneof![Just(seven as Shape), Just(ring as Shape), Just(fat_ring as Shape)],
        dark in any::<bool>(),
    ) {
        let side = w.min(h) as f32 * size;
        let (rw, rh) = ((side * aspect.min(1.0)).max(4.0), (side / aspect.max(1.0)).max(4.0));
        // Keep a margin of at least 1 px so the border is background.
        let rx = 1.0 + fx * (w as f32 - rw - 2.0).max(0.0);
        let ry = 1.0 + fy * (h as f32 - rh - 2.0).max(0.0);
        let cov = render(shape, w, h, (rx, ry, rw, rh));
        let px = preprocess(&grey_image(&cov, w, h, dark), &PreprocessConfig::default())?;
        assert_mnist_like(&px, &format!("{w}x{h} at ({rx:.1}, {ry:.1}) size {rw:.1}x{rh:.1}"));
    }
}
