use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// Summary of inference timings, each timing covering one batch of `batch_size` images.
///
/// Percentiles use linear interpolation between the two nearest order statistics, the method
/// of numpy's default `np.percentile(x, q)` (`method="linear"`): for `n` sorted timings the
/// `q`-th percentile sits at position `q / 100 * (n - 1)`.
///
/// In JSON every duration is a float number of milliseconds (`median_ms`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Number of timings.
    pub runs: usize,
    /// Images per timed batch.
    pub batch_size: usize,
    /// Fastest batch.
    #[serde(rename = "min_ms", with = "millis")]
    pub min: Duration,
    /// Arithmetic mean.
    #[serde(rename = "mean_ms", with = "millis")]
    pub mean: Duration,
    /// 50th percentile.
    #[serde(rename = "median_ms", with = "millis")]
    pub median: Duration,
    /// 90th percentile.
    #[serde(rename = "p90_ms", with = "millis")]
    pub p90: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_ms", with = "millis")]
    pub p99: Duration,
    /// Slowest batch.
    #[serde(rename = "max_ms", with = "millis")]
    pub max: Duration,
    /// Images per second at the median latency: `batch_size / median`. The median rather than
    /// the mean so that a few preempted runs on a shared machine do not skew it.
    pub throughput: f64,
}

impl LatencyStats {
    /// Statistics of `timings`, each the duration of one batch of `batch_size` images.
    ///
    /// Errors: no timings ([`MetricsError::Empty`]); `batch_size == 0`, or a zero median
    /// (below clock resolution: throughput would be infinite) ([`MetricsError::InvalidParameter`]).
    pub fn from_durations(timings: &[Duration], batch_size: usize) -> Result<Self> {
        if timings.is_empty() {
            return Err(MetricsError::Empty { what: "no timings" });
        }
        if batch_size == 0 {
            return Err(MetricsError::invalid(
                "batch_size",
                0,
                "a batch holds at least one image",
            ));
        }
        let mut sorted = timings.to_vec();
        sorted.sort_unstable();
        let median = percentile_sorted(&sorted, 50.0);
        if median.is_zero() {
            return Err(MetricsError::invalid(
                "median latency",
                "0 ns",
                "throughput is undefined for zero-length timings",
            ));
        }
        let sum: u128 = sorted.iter().map(Duration::as_nanos).sum();
        let mean = duration_from_nanos(sum / sorted.len() as u128);
        Ok(Self {
            runs: sorted.len(),
            batch_size,
            min: sorted[0],
            mean,
            median,
            p90: percentile_sorted(&sorted, 90.0),
            p99: percentile_sorted(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
            throughput: batch_size as f64 / median.as_secs_f64(),
        })
    }

    /// Times `run` (one batch of `config.batch_size` images per call): `config.warmup` untimed
    /// calls, then `config.iterations` timed ones. The first error of `run` stops and is
    /// returned.
    pub fn measure<T, E>(
        config: &MeasureConfig,
        mut run: impl FnMut() -> std::result::Result<T, E>,
    ) -> std::result::Result<Self, E>
    where
        E: From<MetricsError>,
    {
        if config.iterations == 0 {
            return Err(
                MetricsError::invalid("iterations", 0, "need at least one timed run").into(),
            );
        }
        if config.batch_size == 0 {
            return Err(
                MetricsError::invalid("batch_size", 0, "a batch holds at least one image").into(),
            );
        }
        for _ in 0..config.warmup {
            std::hint::black_box(run()?);
        }
        let mut timings = Vec::with_capacity(config.iterations);
        for _ in 0..config.iterations {
            let start = Instant::now();
            // black_box keeps the optimiser from discarding an unused result.
            std::hint::black_box(run()?);
            timings.push(start.elapsed());
        }
        Ok(Self::from_durations(&timings, config.batch_size)?)
    }

    /// Median latency per image (`median / batch_size`).
    pub fn per_image(&self) -> Duration {
        duration_from_nanos(self.median.as_nanos() / self.batch_size.max(1) as u128)
    }
}

/// Options of [`LatencyStats::measure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeasureConfig {
    /// Untimed calls first, to fill caches and let lazy initialisation happen.
    pub warmup: usize,
    /// Timed calls.
    pub iterations: usize,
    /// Images processed per call.
    pub batch_size: usize,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        Self {
            warmup: 3,
            iterations: 30,
            batch_size: 1,
        }
    }
}

/// Linear-interpolation percentile (numpy's default) of non-empty sorted durations.
fn percentile_sorted(sorted: &[Duration], q: f64) -> Duration {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil().min((sorted.len() - 1) as f64) as usize;
    let frac = pos - lo as f64;
    let (a, b) = (sorted[lo].as_nanos(), sorted[hi].as_nanos());
    // Interpolate on integer nanoseconds so equal neighbours give exactly their value.
    duration_from_nanos(a + ((b - a) as f64 * frac).round() as u128)
}

fn duration_from_nanos(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

/// Durations as float milliseconds in JSON: readable, and what result tables quote.
mod millis {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1e3).map_err(D::Error::custom)
    }
}

/// Size of a model: parameter count and, once saved, bytes on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSize {
    /// Number of trainable parameters.
    pub parameters: u64,
    /// Size of the saved weights file, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
}

impl ModelSize {
    /// A model of `parameters` parameters, not (yet) saved.
    pub fn new(parameters: u64) -> Self {
        Self {
            parameters,
            file_bytes: None,
        }
    }

    /// A model of `parameters` parameters saved in the file `path`, whose size is read from the
    /// file system. Errors: [`MetricsError::Io`] if it cannot be read,
    /// [`MetricsError::InvalidParameter`] if it is not a regular file.
    pub fn with_file(parameters: u64, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(MetricsError::invalid(
                "path",
                path.display(),
                "must be a regular file (the saved weights)",
            ));
        }
        Ok(Self {
            parameters,
            file_bytes: Some(meta.len()),
        })
    }

    /// Bytes the parameters take in memory at `bytes_per_parameter` (4 for f32, 2 for f16,
    /// 1 for int8), without any container overhead.
    pub fn weights_bytes(&self, bytes_per_parameter: u64) -> u64 {
        self.parameters.saturating_mul(bytes_per_parameter)
    }
}

/// The computational-efficiency side of a report. Every part is optional: an evaluation may
/// time the model or not, may have saved it or not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// Where the timings were taken (`"cpu"`, `"cuda:0"`, a CPU model name...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Inference latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyStats>,
    /// Parameters and file size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_size: Option<ModelSize>,
    /// Peak resident memory of the evaluating process (see [`peak_rss_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

impl Efficiency {
    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.device.is_none()
            && self.latency.is_none()
            && self.model_size.is_none()
            && self.peak_rss_bytes.is_none()
    }
}

/// The first value of the `key: value` lines of `text` (the `/proc/cpuinfo` format).
fn colon_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// The widest f32 vector instructions this CPU offers (what the kernels can use).
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            "AVX-512"
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            "AVX2"
        } else {
            "SSE2"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "no SIMD detected"
    }
}

/// The machine in one line, for the "machine:" line of a results page: logical CPUs, CPU model
/// and vector instructions, memory; e.g. `2 logical CPUs (AMD EPYC, AVX2), 23.54 GiB RAM`.
///
/// Read at run time (`/proc/cpuinfo` and `/proc/meminfo` on Linux), so a figure is never
/// credited to a machine it was not measured on: speeds differ 1.4-2.3x between the CPUs this
/// project's machines have had.
pub fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let read = |path: &str, key: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| colon_field(&t, key))
    };
    let model = read("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let memory = read("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| format!(", {} RAM", crate::format_bytes(kb * 1024)))
        .unwrap_or_default();
    format!("{cpus} logical CPUs ({model}, {}){memory}", simd_level())
}

/// Peak resident set size of this process so far, in bytes, as measured by the OS.
///
/// On Linux this is the kernel's high-water mark of the process's own address space (`VmHWM`
/// in `/proc/self/status`). `getrusage(RUSAGE_SELF).ru_maxrss` is not used there because Linux
/// carries the peak of the image replaced by `exec` into it: a binary started by a large parent
/// (cargo, an IDE) would report the parent's memory. Elsewhere on Unix it is `ru_maxrss`
/// (kilobytes on the BSDs, bytes on macOS).
///
/// It is a high-water mark for the whole process, so it includes whatever ran before the
/// evaluation (data loading, training); measure in a dedicated process for a model's own
/// footprint. Error [`MetricsError::MemoryUnavailable`] where the OS does not provide it.
pub fn peak_rss_bytes() -> Result<u64> {
    #[cfg(target_os = "linux")]
    {
        linux_hwm_bytes()
    }
    #[cfg(not(target_os = "linux"))]
    {
        rusage_max_rss_bytes()
    }
}

#[cfg(target_os = "linux")]
fn linux_hwm_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| {
        MetricsError::MemoryUnavailable {
            reason: format!("/proc/self/status: {e}"),
        }
    })?;
    let kb = parse_status_kb(&status, "VmHWM:").ok_or_else(|| MetricsError::MemoryUnavailable {
        reason: "/proc/self/status has no readable VmHWM line".into(),
    })?;
    Ok(kb.saturating_mul(1024))
}

/// The value of a `Key:   123 kB` line of `/proc/<pid>/status`, in kB.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix(key))?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(unix)]
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn rusage_max_rss_bytes() -> Result<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` points to writable memory of the right type; getrusage only writes it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Err(MetricsError::MemoryUnavailable {
            reason: format!("getrusage failed: {}", std::io::Error::last_os_error()),
        });
    }
    // SAFETY: getrusage returned 0, so it filled the struct (which was zeroed anyway).
    let usage = unsafe { usage.assume_init() };
    let raw = u64::try_from(usage.ru_maxrss).map_err(|_| MetricsError::MemoryUnavailable {
        reason: format!(
            "getrusage returned a negative ru_maxrss ({})",
            usage.ru_maxrss
        ),
    })?;
    let unit = if cfg!(target_vendor = "apple") {
        1
    } else {
        1024
    };
    Ok(raw.saturating_mul(unit))
}

#[cfg(not(unix))]
fn rusage_max_rss_bytes() -> Result<u64> {
    Err(MetricsError::MemoryUnavailable {
        reason: "peak RSS is only implemented on Unix (getrusage)".into(),
    })
}

/// Current resident set size of this process in bytes, from `/proc/self/statm` (Linux only).
///
/// Error [`MetricsError::MemoryUnavailable`] on other platforms or if the file is unreadable.
pub fn current_rss_bytes() -> Result<u64> {
    current_rss_impl()
}

#[cfg(target_os = "linux")]
fn current_rss_impl() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").map_err(|e| {
        MetricsError::MemoryUnavailable {
            reason: format!("/proc/self/statm: {e}"),
        }
    })?;
    let pages = parse_statm_resident(&statm).ok_or_else(|| MetricsError::MemoryUnavailable {
        reason: format!("/proc/self/statm: unexpected content {statm:?}"),
    })?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|&p| p > 0).ok_or_else(|| {
        MetricsError::MemoryUnavailable {
            reason: format!("sysconf(_SC_PAGESIZE) returned {page}"),
        }
    })?;
    Ok(pages.saturating_mul(page))
}

#[cfg(not(target_os = "linux"))]
fn current_rss_impl() -> Result<u64> {
    Err(MetricsError::MemoryUnavailable {
        reason: "current RSS is only implemented on Linux (/proc/self/statm)".into(),
    })
}

/// Resident pages: the second field of `/proc/self/statm` ("size resident shared ...").
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn machine_fields_come_from_the_named_key() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n";
        assert_eq!(
            colon_field(cpuinfo, "model name").as_deref(),
            Some("AMD EPYC")
        );
        assert_eq!(colon_field(cpuinfo, "model"), None);
        let line = machine_description();
        assert!(line.contains("logical CPUs ("), "{line}");
        #[cfg(target_os = "linux")]
        assert!(line.contains(" RAM"), "{line}");
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // np.percentile([1, 2, 3, 4, 10], [50, 90, 99]) = [3.0, 7.6, 9.76]; mean 4.0.
        let t = [ms(10), ms(1), ms(4), ms(3), ms(2)];
        let s = LatencyStats::from_durations(&t, 8).unwrap();
        assert_eq!(s.runs, 5);
        assert_eq!(s.min, ms(1));
        assert_eq!(s.max, ms(10));
        assert_eq!(s.median, ms(3));
        assert_eq!(s.mean, ms(4));
        assert_eq!(s.p90, Duration::from_micros(7_600));
        assert_eq!(s.p99, Duration::from_micros(9_760));
        assert!((s.throughput - 8.0 / 0.003).abs() < 1e-6);
        assert_eq!(s.per_image(), Duration::from_micros(375));
        // Even count: np.percentile([1, 2, 3, 4], 50) = 2.5.
        let s = LatencyStats::from_durations(&[ms(4), ms(1), ms(3), ms(2)], 1).unwrap();
        assert_eq!(s.median, Duration::from_micros(2_500));
        let one = LatencyStats::from_durations(&[ms(7)], 1).unwrap();
        assert_eq!(
            (one.min, one.median, one.p99, one.max),
            (ms(7), ms(7), ms(7), ms(7))
        );
    }

    #[test]
    fn bad_timings_are_typed_errors() {
        assert!(matches!(
            LatencyStats::from_durations(&[], 1),
            Err(MetricsError::Empty { .. })
        ));
        assert!(LatencyStats::from_durations(&[ms(1)], 0).is_err());
        assert!(LatencyStats::from_durations(&[Duration::ZERO, Duration::ZERO, ms(1)], 1).is_err());
    }

    #[test]
    fn measure_runs_warmup_plus_iterations_and_propagates_errors() {
        let mut calls = 0;
        let cfg = MeasureConfig {
            warmup: 2,
            iterations: 5,
            batch_size: 4,
        };
        let stats = LatencyStats::measure(&cfg, || {
            calls += 1;
            std::thread::sleep(Duration::from_micros(200));
            Ok::<_, MetricsError>(calls)
        })
        .unwrap();
        assert_eq!(calls, 7);
        assert_eq!(stats.runs, 5);
        assert_eq!(stats.batch_size, 4);
        assert!(stats.min >= Duration::from_micros(200));
        let failing =
            LatencyStats::measure(&cfg, || Err::<(), _>(MetricsError::invalid("x", 1, "boom")));
        assert!(matches!(
            failing,
            Err(MetricsError::InvalidParameter { name: "x", .. })
        ));
        let zero = MeasureConfig {
            iterations: 0,
            ..cfg
        };
        assert!(LatencyStats::measure(&zero, || Ok::<_, MetricsError>(())).is_err());
    }

    #[test]
    fn latency_json_uses_milliseconds() {
        let s = LatencyStats::from_durations(&[ms(2), ms(4)], 2).unwrap();
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["median_ms"], 3.0);
        assert_eq!(v["max_ms"], 4.0);
        assert_eq!(v["throughput"], 2.0 / 0.003);
        let back: LatencyStats = serde_json::from_value(v).unwrap();
        assert_eq!(back.median, s.median);
        assert_eq!(back.runs, 2);
        let mut bad = serde_json::to_value(&s).unwrap();
        bad["min_ms"] = serde_json::json!(-1.0);
        assert!(serde_json::from_value::<LatencyStats>(bad).is_err());
    }

    #[test]
    fn model_size_reads_the_file_or_fails_typed() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let expected = std::fs::metadata(manifest).unwrap().len();
        let m = ModelSize::with_file(42, manifest).unwrap();
        assert_eq!(m.file_bytes, Some(expected));
        assert_eq!(m.weights_bytes(4), 168);
        let missing = ModelSize::with_file(1, "/definitely/not/here.safetensors");
        assert!(matches!(missing, Err(MetricsError::Io { .. })));
        assert!(ModelSize::with_file(1, env!("CARGO_MANIFEST_DIR")).is_err());
        assert_eq!(ModelSize::new(7).file_bytes, None);
    }

    #[test]
    fn status_parsing() {
        let status = "Name:\tx\nVmPeak:\t  2000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(1234));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
        assert_eq!(parse_status_kb("VmHWM: lots", "VmHWM:"), None);
    }

    #[test]
    fn statm_parsing() {
        assert_eq!(parse_statm_resident("1000 250 30 1 0 500 0\n"), Some(250));
        assert_eq!(parse_statm_resident("1000"), None);
        assert_eq!(parse_statm_resident("a b"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn memory_is_measured_by_the_os() {
        let before = peak_rss_bytes().unwrap();
        assert!(before > 0);
        // Touch 64 MiB so that the high-water mark must rise past it.
        let big = vec![1u8; 64 << 20];
        let current = current_rss_bytes().unwrap();
        assert!(current >= 64 << 20, "current RSS {current}");
        let after = peak_rss_bytes().unwrap();
        assert!(after >= 64 << 20, "peak RSS {after}");
        assert!(after >= before);
        // getrusage's figure also covers the image this process exec'd from, so it can only
        // be larger; both count the same pages of this process (up to per-thread counter lag).
        let rusage = rusage_max_rss_bytes().unwrap();
        assert!(
            rusage + (4 << 20) >= after,
            "getrusage {rusage} below VmHWM {after}"
        );
        std::hint::black_box(&big);
    }
}
