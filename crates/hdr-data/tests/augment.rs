//! Augmentation through the public batching API: shapes, labels, ranges, exact identity, and
//! reproducibility whatever the thread count. Synthetic data only.

use std::sync::Arc;

use candle_core::Device;
use hdr_data::augment::{AffineWarp, Compose, ElasticDistortion, RandomAffine};
use hdr_data::{fill_inputs, Augment, BatchConfig, Dataset, Normalize, Rng};
use proptest::prelude::*;

/// `n` digit-like images: a few thick anti-aliased strokes each, labels cycling 0-9.
fn strokes(n: usize, rows: usize, cols: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut images = vec![0u8; n * rows * cols];
    for img in images.chunks_exact_mut(rows * cols) {
        for _ in 0..1 + rng.below(3) {
            let (x0, y0) = (
                rng.uniform(4.0, cols as f32 - 4.0),
                rng.uniform(4.0, rows as f32 - 4.0),
            );
            let (x1, y1) = (
                rng.uniform(4.0, cols as f32 - 4.0),
                rng.uniform(4.0, rows as f32 - 4.0),
            );
            for y in 0..rows {
                for x in 0..cols {
                    let d = segment_distance(x as f32, y as f32, (x0, y0), (x1, y1));
                    let ink = ((2.0 - d).clamp(0.0, 1.0) * 255.0) as u8;
                    let p = &mut img[y * cols + x];
                    *p = (*p).max(ink);
                }
            }
        }
    }
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::new(images, labels, rows, cols).expect("consistent sizes")
}

fn segment_distance(px: f32, py: f32, (ax, ay): (f32, f32), (bx, by): (f32, f32)) -> f32 {
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = (dx * dx + dy * dy).max(1e-6);
    let t = (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0);
    ((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt()
}

fn inputs(data: &Dataset, cfg: &BatchConfig, epoch: u64) -> Vec<f32> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut out = vec![f32::NAN; data.len() * data.pixels_per_image()];
    fill_inputs(data, &idx, cfg, epoch, &mut out).expect("valid sizes");
    out
}

fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

fn any_augment() -> impl Strategy<Value = Arc<dyn Augment>> {
    let affine = (0f32..45.0, 0.5f32..1.0, 1.0f32..1.6, 0f32..30.0, 0f32..6.0).prop_map(
        |(max_rotation_deg, min_scale, max_scale, max_shear_deg, max_translation)| {
            let cfg = RandomAffine {
                max_rotation_deg,
                min_scale,
                max_scale,
                max_shear_deg,
                max_translation,
            };
            cfg.validate().expect("strategy stays in the valid ranges");
            Arc::new(cfg) as Arc<dyn Augment>
        },
    );
    let elastic = (0f32..60.0, 0f32..8.0).prop_map(|(alpha, sigma)| {
        Arc::new(ElasticDistortion { alpha, sigma }) as Arc<dyn Augment>
    });
    prop_oneof![
        affine.clone(),
        elastic.clone(),
        (affine, elastic).prop_map(|(a, e)| Arc::new(Compose::new(vec![a, e])) as Arc<dyn Augment>),
        Just(Arc::new(Compose::affine_elastic()) as Arc<dyn Augment>),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn augmented_batches_keep_shape_labels_and_range(
        n in 1usize..40,
        rows in 8usize..36,
        cols in 8usize..36,
        batch_size in 1usize..16,
        seed in any::<u64>(),
        epoch in 0u64..5,
        aug in any_augment(),
    ) {
        let data = strokes(n, rows, cols, seed);
        let cfg = BatchConfig { batch_size, seed, augment: Some(aug), ..BatchConfig::default() };
        let mut seen = 0;
        for batch in data.batches(&cfg, epoch, &Device::Cpu)? {
            let batch = batch?;
            let b = batch.indices.len();
            prop_assert_eq!(batch.images.dims(), &[b, 1, rows, cols]);
            let labels = batch.labels.to_vec1::<u32>()?;
            for (k, &i) in batch.indices.iter().enumerate() {
                prop_assert_eq!(labels[k], u32::from(data.label(i)));
            }
            let x = batch.images.flatten_all()?.to_vec1::<f32>()?;
            prop_assert!(x.iter().all(|v| (0.0..=1.0).contains(v)), "value outside [0, 1]");
            seen += b;
        }
        prop_assert_eq!(seen, n);
    }

    #[test]
    fn identity_parameters_give_the_identity_exactly(
        n in 1usize..30,
        seed in any::<u64>(),
        epoch in 0u64..5,
        standardize in any::<bool>(),
        raw in proptest::collection::vec(any::<u8>(), 30 * 28 * 28),
    ) {
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        let data = Dataset::new(raw[..n * 784].to_vec(), labels, 28, 28)?;
        let normalize = if standardize { Normalize::MNIST } else { Normalize::UnitRange };
        let plain = inputs(&data, &BatchConfig { seed, normalize, ..BatchConfig::default() }, epoch);
        let identities: [Arc<dyn Augment>; 4] = [
            Arc::new(RandomAffine::identity()),
            Arc::new(ElasticDistortion::identity()),
            Arc::new(AffineWarp::IDENTITY),
            Arc::new(Compose::default()
                .then(RandomAffine::identity())
                .then(ElasticDistortion::identity())
                .then(RandomAffine::identity())),
        ];
        for aug in identities {
            let cfg = BatchConfig { seed, normalize, augment: Some(aug.clone()), ..BatchConfig::default() };
            let out = inputs(&data, &cfg, epoch);
            prop_assert!(
                out.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{:?} changed the images", aug
            );
        }
    }

    #[test]
    fn same_seed_same_output_on_one_and_two_threads(
        n in 1usize..64,
        seed in any::<u64>(),
        epoch in 0u64..100,
        aug in any_augment(),
    ) {
        let data = strokes(n, 28, 28, seed ^ 1);
        let cfg = BatchConfig { seed, augment: Some(aug), ..BatchConfig::default() };
        let one = on_threads(1, || inputs(&data, &cfg, epoch));
        let two = on_threads(2, || inputs(&data, &cfg, epoch));
        prop_assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()));
        // A sample's augmentation does not depend on the batch it falls in either.
        let idx: Vec<usize> = (0..n).rev().collect();
        let mut reversed = vec![0.0; one.len()];
        fill_inputs(&data, &idx, &cfg, epoch, &mut reversed)?;
        for (k, &i) in idx.iter().enumerate() {
            prop_assert_eq!(&reversed[k * 784..(k + 1) * 784], &one[i * 784..(i + 1) * 784]);
        }
    }
}

#[test]
fn different_seeds_and_epochs_give_different_augmentations() {
    let data = strokes(32, 28, 28, 3);
    for aug in [
        Arc::new(RandomAffine::default()) as Arc<dyn Augment>,
        Arc::new(ElasticDistortion::default()),
        Arc::new(Compose::affine_elastic()),
    ] {
        let cfg = |seed| BatchConfig {
            seed,
            augment: Some(aug.clone()),
            ..BatchConfig::default()
        };
        let base = inputs(&data, &cfg(1), 0);
        assert_eq!(base, inputs(&data, &cfg(1), 0), "{aug:?} is deterministic");
        assert_ne!(base, inputs(&data, &cfg(2), 0), "{aug:?} ignores the seed");
        assert_ne!(base, inputs(&data, &cfg(1), 1), "{aug:?} ignores the epoch");
        assert_ne!(
            base,
            inputs(&data, &BatchConfig::default(), 0),
            "{aug:?} does nothing"
        );
        // Different samples get different draws: the same image twice is augmented differently.
        let twins = Dataset::new([data.image(0), data.image(0)].concat(), vec![0, 0], 28, 28)
            .expect("sizes");
        let x = inputs(&twins, &cfg(1), 0);
        assert_ne!(
            x[..784],
            x[784..],
            "{aug:?} gives both samples the same draw"
        );
    }
}

#[test]
fn augmentation_keeps_the_ink_mostly_inside() {
    // The default affine warp moves digits by at most ~2 px plus rotation/scale about the centre,
    // so centred strokes keep nearly all their ink.
    let data = strokes(200, 28, 28, 4);
    let plain: f64 = inputs(&data, &BatchConfig::default(), 0)
        .iter()
        .map(|&v| f64::from(v))
        .sum();
    for aug in [
        Arc::new(RandomAffine::default()) as Arc<dyn Augment>,
        Arc::new(Compose::affine_elastic()),
    ] {
        let cfg = BatchConfig {
            augment: Some(aug.clone()),
            ..BatchConfig::default()
        };
        let total: f64 = inputs(&data, &cfg, 0).iter().map(|&v| f64::from(v)).sum();
        let ratio = total / plain;
        assert!((0.85..1.15).contains(&ratio), "{aug:?}: ink ratio {ratio}");
    }
}
