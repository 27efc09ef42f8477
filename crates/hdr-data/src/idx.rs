//! The IDX format of MNIST (LeCun et al.): a 4-byte magic `[0, 0, type, rank]`, `rank` big-endian
//! `u32` dimensions, then the elements. Files may be gzip-compressed; compression is detected from
//! the content (gzip magic), not the file name.
//!
//! Only unsigned-byte elements (type `0x08`) are supported, as MNIST and its derivatives
//! (Fashion-MNIST, EMNIST, KMNIST) use. Every malformed file is a typed [`DataError`] naming the file.

use std::io::{Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::fsutil::write_atomic;

/// IDX type code of unsigned bytes.
pub const TYPE_U8: u8 = 0x08;

/// A parsed IDX array of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first (`[n, rows, cols]` for images, `[n]` for labels).
    pub dims: Vec<u32>,
    /// Elements, row-major.
    pub data: Vec<u8>,
}

/// Reads a file whole, decompressing it if it is gzip.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        // Header says nothing about the decompressed size; MNIST expands about 5x.
        let mut out = Vec::with_capacity(raw.len() * 6);
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                DataError::io(
                    path,
                    std::io::Error::new(e.kind(), format!("corrupt gzip data: {e}")),
                )
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes of unsigned-byte elements with the given rank. `path` names the source in errors.
pub fn parse(bytes: &[u8], rank: usize, path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: 4,
            found: bytes.len() as u64,
        });
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::BadMagic {
            path: path.into(),
            found: magic,
        });
    }
    if magic[2] != TYPE_U8 {
        return Err(DataError::WrongElementType {
            path: path.into(),
            found: magic[2],
            expected: TYPE_U8,
        });
    }
    if magic[3] as usize != rank {
        return Err(DataError::WrongRank {
            path: path.into(),
            found: magic[3] as usize,
            expected: rank,
        });
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: header as u64,
            found: bytes.len() as u64,
        });
    }
    let dims: Vec<u32> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let Some(expected) = expected else {
        return Err(DataError::BadDimensions {
            path: path.into(),
            dims,
            reason: "element count overflows",
        });
    };
    let found = (bytes.len() - header) as u64;
    if found < expected {
        return Err(DataError::Truncated {
            path: path.into(),
            expected,
            found,
        });
    }
    if found > expected {
        return Err(DataError::TrailingData {
            path: path.into(),
            expected,
            extra: found - expected,
        });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Parses an image file's bytes: returns `(images, count, rows, cols)`.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let arr = parse(bytes, 3, path)?;
    let (n, rows, cols) = (
        arr.dims[0] as usize,
        arr.dims[1] as usize,
        arr.dims[2] as usize,
    );
    if rows == 0 || cols == 0 {
        return Err(DataError::BadDimensions {
            path: path.into(),
            dims: arr.dims,
            reason: "images must have at least one row and one column",
        });
    }
    Ok((arr.data, n, rows, cols))
}

/// Parses a label file's bytes, checking every label is a digit.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let arr = parse(bytes, 1, path)?;
    if let Some((index, &label)) = arr.data.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(DataError::LabelOutOfRange {
            path: path.into(),
            index,
            label,
        });
    }
    Ok(arr.data)
}

/// Reads an image file (raw or `.gz`): returns `(images, count, rows, cols)`.
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    parse_images(&read_bytes(path)?, path)
}

/// Reads a label file (raw or `.gz`).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&read_bytes(path)?, path)
}

/// Reads a pair of image and label files into a [`Dataset`], checking that the counts agree.
pub fn read_dataset(images: &Path, labels: &Path) -> Result<Dataset> {
    let (img, lab) = rayon::join(|| read_images(images), || read_labels(labels));
    let (img, n, rows, cols) = img?;
    dataset_from_parts(img, n, rows, cols, lab?, images, labels)
}

pub(crate) fn dataset_from_parts(
    img: Vec<u8>,
    n: usize,
    rows: usize,
    cols: usize,
    labels: Vec<u8>,
    images_path: &Path,
    labels_path: &Path,
) -> Result<Dataset> {
    if n != labels.len() {
        return Err(DataError::CountMismatch {
            images: images_path.into(),
            n_images: n,
            labels: labels_path.into(),
            n_labels: labels.len(),
        });
    }
    Dataset::new(img, labels, rows, cols)
}

/// Encodes an IDX array of bytes.
pub fn encode(dims: &[u32], data: &[u8]) -> Result<Vec<u8>> {
    let rank = u8::try_from(dims.len()).map_err(|_| DataError::InvalidParameter {
        name: "rank",
        value: dims.len().to_string(),
        reason: "IDX supports at most 255 dimensions",
    })?;
    let count = dims.iter().map(|&d| d as u64).product::<u64>();
    if count != data.len() as u64 {
        return Err(DataError::InvalidParameter {
            name: "data.len()",
            value: data.len().to_string(),
            reason: "must equal the product of the dimensions",
        });
    }
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, TYPE_U8, rank]);
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Writes an IDX array atomically, gzip-compressed if the path ends in `.gz`.
pub fn write(path: &Path, dims: &[u32], data: &[u8]) -> Result<()> {
    let bytes = encode(dims, data)?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    write_atomic(path, |w| {
        if gz {
            let mut enc = GzEncoder::new(w, flate2::Compression::default());
            enc.write_all(&bytes)?;
            enc.finish()?;
            Ok(())
        } else {
            w.write_all(&bytes)
        }
    })
}

fn dim(v: usize, name: &'static str) -> Result<u32> {
    u32::try_from(v).map_err(|_| DataError::InvalidParameter {
        name,
        value: v.to_string(),
        reason: "does not fit the IDX u32 dimension",
    })
}

/// Writes a dataset as an IDX image file and an IDX label file (each `.gz` if so named).
pub fn write_dataset(images: &Path, labels: &Path, data: &Dataset) -> Result<()> {
    let n = dim(data.len(), "len")?;
    write(
        images,
        &[n, dim(data.rows(), "rows")?, dim(data.cols(), "cols")?],
        data.images(),
    )?;
    write(labels, &[n], data.labels())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x.idx")
    }

    #[test]
    fn header_errors_are_typed() {
        let good = encode(&[2, 2, 2], &[1; 8]).unwrap();
        assert!(parse(&good, 3, p()).is_ok());

        let mut bad = good.clone();
        bad[0] = 1;
        assert!(matches!(
            parse(&bad, 3, p()),
            Err(DataError::BadMagic { .. })
        ));
        let mut bad = good.clone();
        bad[2] = 0x0D;
        assert!(matches!(
            parse(&bad, 3, p()),
            Err(DataError::WrongElementType { found: 0x0D, .. })
        ));
        assert!(matches!(
            parse(&good, 1, p()),
            Err(DataError::WrongRank {
                found: 3,
                expected: 1,
                ..
            })
        ));
        assert!(matches!(
            parse(&good[..good.len() - 1], 3, p()),
            Err(DataError::Truncated {
                expected: 8,
                found: 7,
                ..
            })
        ));
        assert!(matches!(
            parse(&good[..10], 3, p()),
            Err(DataError::Truncated { expected: 16, .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            parse(&long, 3, p()),
            Err(DataError::TrailingData { extra: 1, .. })
        ));
        assert!(matches!(
            parse(&[0, 0], 3, p()),
            Err(DataError::Truncated { .. })
        ));
    }

    #[test]
    fn labels_must_be_digits() {
        let bytes = encode(&[3], &[1, 9, 10]).unwrap();
        assert!(matches!(
            parse_labels(&bytes, p()),
            Err(DataError::LabelOutOfRange {
                index: 2,
                label: 10,
                ..
            })
        ));
    }

    #[test]
    fn zero_sized_images_are_rejected() {
        let bytes = encode(&[0, 0, 28], &[]).unwrap();
        assert!(matches!(
            parse_images(&bytes, p()),
            Err(DataError::BadDimensions { .. })
        ));
    }

    #[test]
    fn count_mismatch_is_reported() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (i, l) = (dir.path().join("i.gz"), dir.path().join("l"));
        write(&i, &[2, 1, 1], &[0, 255])?;
        write(&l, &[3], &[0, 1, 2])?;
        assert!(matches!(
            read_dataset(&i, &l),
            Err(DataError::CountMismatch {
                n_images: 2,
                n_labels: 3,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn truncated_gzip_is_an_error_not_a_partial_read() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("l.gz");
        write(&path, &[1000], &vec![3; 1000])?;
        let bytes = std::fs::read(&path)?;
        std::fs::write(&path, &bytes[..bytes.len() / 2])?;
        assert!(matches!(read_labels(&path), Err(DataError::Io { .. })));
        Ok(())
    }
}
