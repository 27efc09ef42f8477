//! IDX files through the public API: write-then-read round trips (raw and gzip), and malformed
//! files on disk giving typed errors that name the file.

use std::path::Path;

use hdr_data::{idx, DataError, Dataset};
use proptest::prelude::*;

fn dataset_strategy() -> impl Strategy<Value = Dataset> {
    (0usize..20, 1usize..9, 1usize..9).prop_flat_map(|(n, rows, cols)| {
        (
            proptest::collection::vec(any::<u8>(), n * rows * cols),
            proptest::collection::vec(0u8..10, n),
        )
            .prop_map(move |(images, labels)| Dataset::new(images, labels, rows, cols).unwrap())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn write_then_read_round_trips(data in dataset_strategy(), gz in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let ext = if gz { ".gz" } else { "" };
        let (ip, lp) = (dir.path().join(format!("i{ext}")), dir.path().join(format!("l{ext}")));
        idx::write_dataset(&ip, &lp, &data).unwrap();
        let back = idx::read_dataset(&ip, &lp).unwrap();
        prop_assert_eq!(back, data);
        let gz_magic = std::fs::read(&ip).unwrap().starts_with(&[0x1f, 0x8b]);
        prop_assert_eq!(gz_magic, gz);
    }

    #[test]
    fn any_truncation_is_an_error(data in dataset_strategy(), cut in 1usize..50) {
        let bytes = idx::encode(&[data.len() as u32, data.rows() as u32, data.cols() as u32], data.images()).unwrap();
        let keep = bytes.len().saturating_sub(cut);
        prop_assert!(idx::parse_images(&bytes[..keep], Path::new("t")).is_err());
    }
}

fn write_raw(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn malformed_files_name_the_file_and_the_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let good_images = idx::encode(&[2, 2, 2], &[0; 8])?;
    let good_labels = idx::encode(&[2], &[1, 2])?;
    let li = write_raw(dir.path(), "labels", &good_labels);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"PK\x03\x04 not idx".to_vec(), "not an IDX file"),
        (
            "type",
            {
                let mut b = good_images.clone();
                b[2] = 0x0B;
                b
            },
            "element type 0x0b",
        ),
        (
            "rank",
            {
                let mut b = good_images.clone();
                b[3] = 2;
                b
            },
            "2 dimension(s), expected 3",
        ),
        (
            "short",
            good_images[..good_images.len() - 3].to_vec(),
            "truncated",
        ),
        (
            "long",
            {
                let mut b = good_images.clone();
                b.extend([1, 2]);
                b
            },
            "2 unexpected byte(s)",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = write_raw(dir.path(), name, &bytes);
        let err = idx::read_dataset(&p, &li).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(needle), "{name}: {msg}");
        assert!(msg.contains(&p.display().to_string()), "{name}: {msg}");
    }

    let bad_label = write_raw(dir.path(), "bad-labels", &idx::encode(&[2], &[1, 12])?);
    let ip = write_raw(dir.path(), "images", &good_images);
    assert!(matches!(
        idx::read_dataset(&ip, &bad_label),
        Err(DataError::LabelOutOfRange {
            index: 1,
            label: 12,
            ..
        })
    ));
    let three = write_raw(dir.path(), "three-labels", &idx::encode(&[3], &[1, 2, 3])?);
    assert!(matches!(
        idx::read_dataset(&ip, &three),
        Err(DataError::CountMismatch {
            n_images: 2,
            n_labels: 3,
            ..
        })
    ));
    let missing = dir.path().join("nope");
    assert!(matches!(
        idx::read_dataset(&missing, &li),
        Err(DataError::Io { .. })
    ));
    Ok(())
}
