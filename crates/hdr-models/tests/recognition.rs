//! Recognising real images with the shipped LeNet-5: MNIST test digits re-rendered at other
//! sizes, polarities and margins, and multi-digit strips composed from test digits with random
//! spacing, read through `hdr-data`'s preprocessing and segmentation. Real data from
//! `HDR_DATA_DIR` or the workspace's `datasets/mnist/`; fails (does not skip) under CI=true when
//! it is missing.

use candle_core::Device;
use hdr_data::preprocess::{preprocess, PreprocessConfig};
use hdr_data::segment::{segment, SegmentConfig};
use hdr_data::{Mnist, Rng};
use image::{imageops::FilterType, DynamicImage, GrayImage};

fn mnist() -> Option<Mnist> {
    let dir = hdr_data::testing::real_data_dir()?;
    match Mnist::from_dir(&dir) {
        Ok(m) => Some(m),
        Err(e) => panic!("MNIST in {} could not be loaded: {e}", dir.display()),
    }
}

/// A 28x28 MNIST digit as a `size x size` picture with margins, dark on light when `invert`.
fn render(pixels: &[u8], size: u32, margin: u32, invert: bool) -> DynamicImage {
    let digit = GrayImage::from_raw(28, 28, pixels.to_vec()).expect("784 bytes");
    let big = image::imageops::resize(&digit, size, size, FilterType::Triangle);
    let mut canvas = GrayImage::new(size + 2 * margin, size + 2 * margin);
    image::imageops::overlay(&mut canvas, &big, margin as i64, margin as i64);
    if invert {
        image::imageops::invert(&mut canvas);
    }
    DynamicImage::ImageLuma8(canvas)
}

#[test]
fn rerendered_test_digits_are_read_like_the_originals() -> anyhow::Result<()> {
    let Some(mnist) = mnist() else { return Ok(()) };
    let model = hdr_models::pretrained("lenet5", &Device::Cpu)?;
    let mut rng = Rng::new(7);
    let n = 1000;
    let (mut originals, mut rendered) = (Vec::new(), Vec::new());
    for i in 0..n {
        let idx = (i * 9973) % mnist.test.len();
        let px = mnist.test.image(idx);
        let size = 28 + rng.below(200) as u32;
        let margin = rng.below(60) as u32;
        let img = render(px, size, margin, rng.below(2) == 1);
        rendered.push((
            preprocess(&img, &PreprocessConfig::default())?,
            mnist.test.label(idx),
        ));
        originals.push((px.to_vec(), mnist.test.label(idx)));
    }
    let accuracy = |set: &[(Vec<u8>, u8)]| -> anyhow::Result<f64> {
        let imgs: Vec<&[u8]> = set.iter().map(|(p, _)| p.as_slice()).collect();
        let preds = hdr_models::predict(model.model.as_ref(), &imgs, &Device::Cpu)?;
        Ok(preds
            .iter()
            .zip(set)
            .filter(|(p, (_, l))| p.digit == *l as usize)
            .count() as f64
            / set.len() as f64)
    };
    let (a_orig, a_rend) = (accuracy(&originals)?, accuracy(&rendered)?);
    eprintln!("accuracy on {n} test digits: as stored {a_orig:.4}, re-rendered {a_rend:.4}");
    assert!(a_rend > 0.97, "re-rendered accuracy {a_rend}");
    assert!(
        a_orig - a_rend < 0.02,
        "preprocessing costs {:.4}",
        a_orig - a_rend
    );
    Ok(())
}

#[test]
fn strips_of_test_digits_are_read_as_numbers() -> anyhow::Result<()> {
    let Some(mnist) = mnist() else { return Ok(()) };
    let model = hdr_models::pretrained("lenet5", &Device::Cpu)?;
    let mut rng = Rng::new(11);
    let strips = 200;
    let (mut exact, mut digits_right, mut digits_total) = (0, 0, 0);
    for s in 0..strips {
        let len = 3 + rng.below(4);
        let labels: Vec<usize> = (0..len)
            .map(|k| (s * 131 + k * 17) % mnist.test.len())
            .collect();
        let scale = 1 + rng.below(3) as u32;
        let gaps: Vec<u32> = (0..len).map(|_| 2 + rng.below(8) as u32).collect();
        let width = len as u32 * 28 * scale + gaps.iter().sum::<u32>() * scale + 20;
        let mut canvas = GrayImage::new(width, 28 * scale + 20);
        let mut x = 10i64;
        for (k, &idx) in labels.iter().enumerate() {
            let digit =
                GrayImage::from_raw(28, 28, mnist.test.image(idx).to_vec()).expect("784 bytes");
            let big = image::imageops::resize(&digit, 28 * scale, 28 * scale, FilterType::Triangle);
            // Lighter-wins blending, so touching digits do not erase each other.
            for (px, py, p) in big.enumerate_pixels() {
                let (cx, cy) = (x as u32 + px, 10 + py);
                let old = canvas.get_pixel(cx, cy).0[0];
                canvas.put_pixel(cx, cy, image::Luma([old.max(p.0[0])]));
            }
            x += (28 * scale + gaps[k] * scale) as i64;
        }
        image::imageops::invert(&mut canvas);
        let segments = segment(&DynamicImage::ImageLuma8(canvas), &SegmentConfig::default())?;
        let imgs: Vec<&[u8]> = segments.iter().map(|s| s.pixels.as_slice()).collect();
        let preds = hdr_models::predict(model.model.as_ref(), &imgs, &Device::Cpu)?;
        let read: Vec<usize> = preds.iter().map(|p| p.digit).collect();
        let truth: Vec<usize> = labels
            .iter()
            .map(|&i| mnist.test.label(i) as usize)
            .collect();
        digits_total += truth.len();
        if read.len() == truth.len() {
            digits_right += read.iter().zip(&truth).filter(|(a, b)| a == b).count();
            exact += usize::from(read == truth);
        }
    }
    let (number_acc, digit_acc) = (
        exact as f64 / strips as f64,
        digits_right as f64 / digits_total as f64,
    );
    eprintln!("strips: {strips} numbers of 3-6 digits, read exactly {number_acc:.3}, digits right {digit_acc:.3}");
    assert!(number_acc > 0.85, "numbers read exactly: {number_acc}");
    assert!(digit_acc > 0.95, "digits right: {digit_acc}");
    Ok(())
}
