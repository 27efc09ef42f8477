//! Verified download of the MNIST files from public mirrors.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use sha2::Sha256;

use crate::error::{DataError, Result};
use crate::fsutil::temp_path;
use crate::mnist::{hex, md5_hex, MnistFile};

/// Downloads `file.gz` into `dir`, trying each mirror in turn, and returns its path.
///
/// A file is kept only if it is whole and genuine: its `.gz` has the canonical md5 or sha256, or
/// (a faithful recompression) its decompressed content has the canonical md5. It is written to a
/// temporary file first and renamed into place, so an interrupted or rejected download leaves
/// nothing behind. The error lists what went wrong at each mirror.
///
/// This is what [`Mnist::load`](crate::Mnist::load) calls for each missing file; it is public
/// for tools that manage their own data folders.
pub fn download(
    file: &MnistFile,
    mirrors: &[String],
    dir: &Path,
    progress: bool,
) -> Result<PathBuf> {
    let failed = |attempts: Vec<String>| DataError::DownloadFailed {
        file: file.name.to_string(),
        attempts,
    };
    if mirrors.is_empty() {
        return Err(failed(vec!["no mirrors configured".into()]));
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let dest = dir.join(format!("{}.gz", file.name));
    let mut failures = Vec::new();
    for mirror in mirrors {
        let url = format!("{}/{}.gz", mirror.trim_end_matches('/'), file.name);
        match fetch_verified(&url, file, &dest, progress) {
            Ok(()) => return Ok(dest),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(failed(failures))
}

fn fetch_verified(url: &str, file: &MnistFile, dest: &Path, progress: bool) -> Result<()> {
    let tmp = temp_path(dest);
    let result = fetch_to(url, file, &tmp, progress)
        .and_then(|()| std::fs::rename(&tmp, dest).map_err(|e| DataError::io(dest, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn fetch_to(url: &str, file: &MnistFile, tmp: &Path, progress: bool) -> Result<()> {
    let fail = |reason: String| DataError::Download {
        url: url.to_string(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // MNIST's largest file is 10 MB; refuse anything absurd rather than fill the disk.
    let limit = file.gz_bytes.max(1 << 20) * 4;
    if length.is_some_and(|n| n > limit) {
        return Err(fail(format!(
            "server announces {} bytes, expected about {}",
            length.unwrap_or(0),
            file.gz_bytes
        )));
    }
    let bar = progress_bar(progress, length.unwrap_or(file.gz_bytes), file.name);
    let mut reader = response.into_body().into_reader();
    let out = File::create(tmp).map_err(|e| DataError::io(tmp, e))?;
    let mut out = BufWriter::new(out);
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let mut content = Vec::with_capacity(file.gz_bytes as usize);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail(format!("connection broke: {e}")))?;
        if n == 0 {
            break;
        }
        if (content.len() + n) as u64 > limit {
            return Err(fail(format!("more than {limit} bytes received")));
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
        content.extend_from_slice(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| DataError::io(tmp, e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    if let Some(n) = length.filter(|&n| n != content.len() as u64) {
        return Err(fail(format!(
            "truncated: received {} of {n} bytes",
            content.len()
        )));
    }
    let out = out
        .into_inner()
        .map_err(|e| DataError::io(tmp, e.into_error()))?;
    out.sync_all().map_err(|e| DataError::io(tmp, e))?;

    let (gz_md5, gz_sha) = (hex(&md5.finalize()), hex(&sha.finalize()));
    if gz_md5 == file.gz_md5 || gz_sha == file.gz_sha256 {
        return Ok(());
    }
    // Not the canonical bytes; accept a faithful recompression of the canonical content.
    let mut raw = Vec::new();
    let decoded = flate2::read::GzDecoder::new(&content[..]).read_to_end(&mut raw);
    let found = match decoded {
        Ok(_) => md5_hex(&raw),
        Err(e) => format!("(not valid gzip: {e}; .gz md5 {gz_md5})"),
    };
    if found == file.raw_md5 {
        return Ok(());
    }
    Err(DataError::Checksum {
        path: PathBuf::from(url),
        algorithm: "md5",
        expected: format!("{} (.gz) or {} (content)", file.gz_md5, file.raw_md5),
        found,
    })
}

fn progress_bar(show: bool, len: u64, name: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_string());
    bar
}
