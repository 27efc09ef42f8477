//! The download path against a local HTTP server: good, corrupted, truncated and missing files,
//! mirror fall-back, and what is left on disk afterwards. Never touches the network.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use common::{Reply, Server};
use hdr_data::{download, DataError, Mnist, MnistFile, MnistOptions};
use md5::{Digest, Md5};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn gzip(raw: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(raw).unwrap();
    enc.finish().unwrap()
}

/// A small label file, its `.gz`, and a spec whose checksums match them.
fn toy() -> (MnistFile, Vec<u8>, Vec<u8>) {
    let raw = hdr_data::idx::encode(
        &[3000],
        &(0..3000).map(|i| (i % 10) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let gz = gzip(&raw, 6);
    let file = MnistFile {
        name: "toy-labels-idx1-ubyte",
        gz_bytes: gz.len() as u64,
        gz_md5: leak(hex(&Md5::digest(&gz))),
        gz_sha256: "0000000000000000000000000000000000000000000000000000000000000000",
        raw_md5: leak(hex(&Md5::digest(&raw))),
    };
    (file, raw, gz)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn routes(pairs: &[(&str, Reply)]) -> HashMap<String, Reply> {
    pairs
        .iter()
        .map(|(p, r)| (p.to_string(), r.clone()))
        .collect()
}

#[test]
fn good_file_is_written_whole() -> anyhow::Result<()> {
    let (file, _, gz) = toy();
    let server = Server::start(routes(&[(
        "/m/toy-labels-idx1-ubyte.gz",
        Reply::Ok(gz.clone()),
    )]));
    let dir = tempfile::tempdir()?;
    let path = download(&file, &[format!("{}/m/", server.base)], dir.path(), false)?;
    assert_eq!(std::fs::read(&path)?, gz);
    assert_eq!(
        leftovers(dir.path()),
        vec!["toy-labels-idx1-ubyte.gz".to_string()]
    );
    assert_eq!(hdr_data::idx::read_labels(&path)?.len(), 3000);
    Ok(())
}

#[test]
fn sha256_alone_verifies_a_file() -> anyhow::Result<()> {
    // Mirrors publish either checksum: a file whose md5s are unknown passes on its sha256.
    let (file, _, gz) = toy();
    let zeros = "00000000000000000000000000000000";
    let by_sha = MnistFile {
        gz_md5: zeros,
        raw_md5: zeros,
        gz_sha256: leak(hex(&sha2::Sha256::digest(&gz))),
        ..file
    };
    let server = Server::start(routes(&[(
        "/toy-labels-idx1-ubyte.gz",
        Reply::Ok(gz.clone()),
    )]));
    let dir = tempfile::tempdir()?;
    let path = download(
        &by_sha,
        std::slice::from_ref(&server.base),
        dir.path(),
        false,
    )?;
    assert_eq!(std::fs::read(&path)?, gz);
    // And with neither checksum matching, the same bytes are refused.
    let neither = MnistFile {
        gz_sha256: "0000000000000000000000000000000000000000000000000000000000000000",
        ..by_sha
    };
    let dir = tempfile::tempdir()?;
    assert!(download(
        &neither,
        std::slice::from_ref(&server.base),
        dir.path(),
        false
    )
    .is_err());
    assert!(leftovers(dir.path()).is_empty());
    Ok(())
}

#[test]
fn recompressed_copy_of_the_same_content_is_accepted() -> anyhow::Result<()> {
    let (file, raw, gz) = toy();
    let other = gzip(&raw, 1);
    assert_ne!(other, gz);
    let server = Server::start(routes(&[("/toy-labels-idx1-ubyte.gz", Reply::Ok(other))]));
    let dir = tempfile::tempdir()?;
    download(&file, std::slice::from_ref(&server.base), dir.path(), false)?;
    Ok(())
}

#[test]
fn corrupted_file_is_rejected_and_removed() -> anyhow::Result<()> {
    let (file, _, mut gz) = toy();
    let mid = gz.len() / 2;
    gz[mid] ^= 0x55;
    let server = Server::start(routes(&[("/toy-labels-idx1-ubyte.gz", Reply::Ok(gz))]));
    let dir = tempfile::tempdir()?;
    let err = download(&file, std::slice::from_ref(&server.base), dir.path(), false).unwrap_err();
    assert!(matches!(err, DataError::DownloadFailed { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    Ok(())
}

#[test]
fn truncated_transfer_is_rejected_and_removed() -> anyhow::Result<()> {
    let (file, _, gz) = toy();
    let half = gz[..gz.len() / 2].to_vec();
    let server = Server::start(routes(&[(
        "/toy-labels-idx1-ubyte.gz",
        Reply::Truncated {
            body: half,
            announced: gz.len(),
        },
    )]));
    let dir = tempfile::tempdir()?;
    let err = download(&file, std::slice::from_ref(&server.base), dir.path(), false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("truncated") || msg.contains("connection broke"),
        "{msg}"
    );
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    Ok(())
}

#[test]
fn falls_back_to_the_next_mirror_and_reports_each_failure() -> anyhow::Result<()> {
    let (file, _, gz) = toy();
    let server = Server::start(routes(&[
        ("/down/toy-labels-idx1-ubyte.gz", Reply::Status(403)),
        ("/up/toy-labels-idx1-ubyte.gz", Reply::Ok(gz)),
    ]));
    let dir = tempfile::tempdir()?;
    let mirrors = [
        format!("{}/down", server.base),
        format!("{}/up", server.base),
    ];
    download(&file, &mirrors, dir.path(), false)?;

    let only_bad = [
        format!("{}/down", server.base),
        format!("{}/gone", server.base),
    ];
    let dir2 = tempfile::tempdir()?;
    let msg = download(&file, &only_bad, dir2.path(), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("403") && msg.contains("404"), "{msg}");
    Ok(())
}

#[test]
fn mnist_load_reports_failed_download_with_every_place_looked() -> anyhow::Result<()> {
    let server = Server::start(HashMap::new());
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("mnist");
    let opts = MnistOptions {
        dir: Some(target.clone()),
        env_var: None,
        project_dir: Some(dir.path().join("project")),
        download: true,
        mirrors: vec![server.base.clone()],
        progress: false,
        ..MnistOptions::default()
    };
    let msg = Mnist::load_with(&opts).unwrap_err().to_string();
    assert!(msg.contains("MNIST not found"), "{msg}");
    assert!(msg.contains(&target.display().to_string()), "{msg}");
    assert!(msg.contains("project"), "{msg}");
    assert!(msg.contains("404"), "{msg}");
    assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));
    Ok(())
}
