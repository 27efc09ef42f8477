//! Shared plumbing: thread count, scratch buffers, a safe wrapper around `gemm`, and access to
//! the `f32` data behind candle storages.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Storage, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Number of worker threads, computed once.
///
/// candle's `MatMul` recomputes this on every call (reading `/proc/cpuinfo` unless
/// `RAYON_NUM_THREADS` is set); caching it removes that cost from every layer. We use rayon's
/// pool size because that is the pool our kernels actually run on (it honours
/// `RAYON_NUM_THREADS` and otherwise defaults to `available_parallelism`).
pub(crate) fn num_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| rayon::current_num_threads().max(1))
}

/// Tunes glibc's allocator for tensor workloads; runs once, on the first CPU op of this crate.
///
/// Every candle op returns a freshly allocated buffer. glibc serves buffers above its
/// (dynamic) mmap threshold with fresh `mmap`s and returns freed heap tops to the kernel, so a
/// training step page-faults on almost every activation and gradient buffer (measured: ~9x
/// more page faults on the small-MobileNet example). Raising the mmap threshold to glibc's
/// maximum (32 MiB) and the trim threshold to 1 GiB keeps freed buffers mapped for reuse, at the
/// cost of not returning peak memory to the OS: per allocator arena, see
/// [`single_allocator_arena`]. A no-op on other platforms.
pub fn tune_allocator() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters (under glibc's own lock); it has no
        // memory-safety preconditions and unknown values are rejected, not acted on.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}

/// Makes every thread allocate from glibc's main arena, like `MALLOC_ARENA_MAX=1`; for the
/// `main` of training programs, called before anything runs on rayon's pool.
///
/// glibc gives each thread that allocates its own arena, and [`tune_allocator`] has each arena
/// keep its freed buffers: training steps run on rayon's workers ([`in_pool`]), so each worker
/// kept its own peak (MobileNet-HDR's training benchmark: 185-300 MB resident instead of 165;
/// one epoch of the `train` example on 8,000 images: 1.03-1.11 GB instead of 0.49) at the same
/// speed on 2 cores. It changes the whole process, so it is opt-in, and it applies only to
/// threads that have not allocated yet (and not at all once glibc has fixed its limit, when a
/// process first has more than 8 arenas). Left alone when `MALLOC_ARENA_MAX` or
/// `GLIBC_TUNABLES` is set. A no-op on other platforms.
pub fn single_allocator_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && std::env::var_os("GLIBC_TUNABLES").is_none()
    {
        // SAFETY: as in `tune_allocator`.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Output elements below which the pooling kernels run on the calling thread: a few
/// microseconds of work, less than waking the pool costs.
pub(crate) const SERIAL_BELOW: usize = 1 << 15;

/// `f` on each pair of `out` chunks (`on` long) and `inp` chunks (`inn` long), in parallel
/// only when `out` holds at least [`SERIAL_BELOW`] elements.
pub(crate) fn for_each_chunk_pair<T: Send, U: Sync>(
    out: &mut [T],
    on: usize,
    inp: &[U],
    inn: usize,
    f: impl Fn(&mut [T], &[U]) + Sync + Send,
) {
    if out.len() < SERIAL_BELOW {
        out.chunks_mut(on)
            .zip(inp.chunks(inn))
            .for_each(|(o, i)| f(o, i));
    } else {
        out.par_chunks_mut(on)
            .zip(inp.par_chunks(inn))
            .for_each(|(o, i)| f(o, i));
    }
}

/// Multiply-accumulates below which [`in_pool_for`] runs a forward pass on the calling thread.
/// LeNet-5 at batch 1 (0.4 M) stays there: its kernels do not split such small work, so the
/// pool would add two thread hand-offs and nothing else.
pub const IN_POOL_MIN_MACS: u64 = 2_000_000;

/// [`in_pool`] for work of at least [`IN_POOL_MIN_MACS`] multiply-accumulates; smaller work
/// runs on the calling thread.
pub fn in_pool_for<R: Send>(macs: u64, f: impl FnOnce() -> R + Send) -> R {
    if macs < IN_POOL_MIN_MACS {
        f()
    } else {
        in_pool(f)
    }
}

/// Runs `f` on a worker of rayon's pool (directly when already on one) and waits for it.
///
/// Every parallel kernel called from outside the pool hands its work to the pool and puts the
/// calling thread to sleep until it is done; between kernels the caller wakes, and the idle
/// workers spin for a while, competing with it for the cores. For a forward pass of a few
/// images these hand-offs, one per op, cost as much as the arithmetic (MobileNet-HDR at batch
/// 1: 1.2 ms outside the pool, 0.7 ms inside). Inside the pool, the whole pass costs one
/// hand-off, and the kernels' parallel loops run on the worker at hand.
///
/// Meant for evaluation: randomness drawn from thread-local generators (e.g. dropout) would
/// come from a worker's generator.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// Process-wide CPU setup, done once (later calls cost an atomic load): [`tune_allocator`],
/// candle's elementwise pool kept to one thread and its matmul's per-call thread-count lookup
/// made cheap. Every op of this crate calls it; call it before a model that uses none of them
/// (e.g. candle's `Linear` only) runs.
pub fn setup() {
    tune_allocator();
    limit_candle_pool();
    fix_matmul_thread_count();
}

/// Sets `RAYON_NUM_THREADS` (when unset) to the size rayon's global pool has.
///
/// candle 0.11's CPU matmul asks for its thread count on every call, and unless
/// `RAYON_NUM_THREADS` is set that means counting physical cores by reading and parsing
/// `/proc/cpuinfo`: a batch-1 LeNet-5 spent ~6% of its time in the kernel formatting that file
/// for its three linear layers. The value written is the one rayon already uses (its pool is
/// built first, from its own default), so no thread count changes except candle's matmul
/// split, which then matches our kernels'.
fn fix_matmul_thread_count() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let threads = rayon::current_num_threads();
            // As in `limit_candle_pool`: once, through std's environment lock.
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
    });
}

/// Keeps candle's elementwise thread pool to the calling thread, unless the user chose a size
/// (`CANDLE_NUM_THREADS` set).
///
/// candle 0.11 runs large elementwise ops (notably the `zeros + grad` accumulation that its
/// backward pass does for every gradient) on a private pool of spin-waiting threads, separate
/// from rayon's pool that our kernels use. With as many rayon workers as cores, the two pools
/// compete: in a MobileNet training step ~17% of the samples were candle's workers and main
/// thread spinning on its barrier (waiting for a worker descheduled by a rayon worker), more
/// than those memory-bound adds gain from a second thread. candle sizes that pool once, from
/// `CANDLE_NUM_THREADS`, when it first runs a large elementwise op, and has no API for it, so
/// the variable is set here; this only takes effect if candle has not created the pool yet
/// (e.g. a model built and run through this crate).
fn limit_candle_pool() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // Not `unsafe` in edition 2021, but racy against C code reading the environment
            // concurrently; Rust's own readers take std's environment lock. This runs once,
            // before candle reads the variable.
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

/// Whether AVX2 and FMA are available (cached by std).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines a function whose body is compiled twice, for baseline x86-64 (SSE2) and for
/// AVX2+FMA, and picks the AVX2 build at runtime when the CPU has it.
///
/// The crate is built for the baseline target, where the elementwise and reduction loops of
/// the kernels only get 4-wide vectors; the AVX2 build of the same safe code doubles that
/// without writing intrinsics.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::util::has_avx2() {
                // SAFETY: AVX2 and FMA support was checked at runtime just above; `avx2` is
                // otherwise the same safe code as `imp`.
                return unsafe { avx2($($arg),*) };
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// A vector of `len` floats whose contents are produced by `fill`, which receives the
/// uninitialised buffer: for an output that is about to be overwritten anyway, zeroing it first
/// (`vec![0.0; len]`) is a wasted pass over memory.
///
/// # Safety
/// `fill` must initialise every element of the slice it is given.
pub(crate) unsafe fn vec_filled_by(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees `fill` initialised all `len` elements, and the capacity is
    // at least `len`.
    unsafe { v.set_len(len) };
    v
}

/// `v` zeroed and viewed as initialised floats. For a plane-sized piece of an output that a
/// kernel is about to overwrite: zeroing it while it sits in L1 costs a fraction of zeroing the
/// whole tensor up front (one serial pass over memory, `vec![0.0; len]`).
#[inline]
pub(crate) fn zeroed(v: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    v.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was initialised just above, and `MaybeUninit<f32>` has the layout
    // of `f32`.
    unsafe { &mut *(v as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `gemm` parallelism for a call that has the whole machine to itself.
pub(crate) fn gemm_par_all() -> gemm::Parallelism {
    match num_threads() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

thread_local! {
    // One growable buffer per thread: im2col/col2im scratch is reused across calls instead of
    // allocating (and page-faulting) fresh zeroed memory for every image of every layer.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with two disjoint scratch slices of `len_a` and `len_b` floats. Their contents are
/// unspecified: callers must overwrite before reading.
pub(crate) fn with_scratch<R>(
    len_a: usize,
    len_b: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    let total = len_a + len_b;
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < total {
                buf.resize(total, 0.0);
            }
            let (a, rest) = buf.split_at_mut(len_a);
            f(a, &mut rest[..len_b])
        }
        // Re-entered on this thread (a rayon worker stole another of our tasks while waiting):
        // fall back to a private allocation rather than panicking on the RefCell.
        Err(_) => {
            let mut buf = vec![0f32; total];
            let (a, b) = buf.split_at_mut(len_a);
            f(a, b)
        }
    })
}

/// A strided read-only matrix view (row stride `rs`, column stride `cs`, in elements).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major matrix with `cols` columns.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// Transposed view of a row-major matrix with `cols` columns.
    pub(crate) fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
    fn fits(&self, nrows: usize, ncols: usize) -> bool {
        nrows == 0 || ncols == 0 || (nrows - 1) * self.rs + (ncols - 1) * self.cs < self.data.len()
    }
}

/// `c[m×n] (row-major, row stride n) = (accumulate ? c : 0) + a[m×k] · b[k×n]`.
///
/// Bounds are checked up front so the `unsafe` call below can never touch memory outside the
/// slices.
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    c: &mut [f32],
    accumulate: bool,
    par: gemm::Parallelism,
) -> candle_core::Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if c.len() < m * n || !a.fits(m, k) || !b.fits(k, n) {
        bail!("hdr-ops internal error: gemm operand out of bounds (m={m} n={n} k={k})")
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: the checks above guarantee the bounds; `c` is borrowed mutably so it cannot alias
    // `a` or `b`.
    unsafe { gemm_raw((m, n, k), a, b, c.as_mut_ptr(), accumulate, par) };
    Ok(())
}

/// `c = (accumulate ? c : 0) + a · b` through the `gemm` crate, `c` row-major with stride `n`.
/// With `accumulate == false` gemm never reads `c`, only writes every element of it.
///
/// # Safety
/// `a` and `b` must fit `m×k` and `k×n` (`Mat::fits`), `c` must point to `m*n` writable
/// elements not aliasing them, and `m, n, k > 0`.
unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    c: *mut f32,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller: every index the kernel touches, (i*rs + j*cs) for
    // i < rows, j < cols, lies inside the corresponding buffer.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// [`sgemm`] with `accumulate == false` into a buffer that may be uninitialised: gemm never
/// reads `c` then, and on success every element of `c[..m*n]` is written, which the returned
/// slice certifies.
pub(crate) fn sgemm_init<'c>(
    (m, n, k): (usize, usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    c: &'c mut [MaybeUninit<f32>],
    par: gemm::Parallelism,
) -> candle_core::Result<&'c mut [f32]> {
    if c.len() < m * n || !a.fits(m, k) || !b.fits(k, n) {
        bail!("hdr-ops internal error: gemm operand out of bounds (m={m} n={n} k={k})")
    }
    let c = &mut c[..m * n];
    if m == 0 || n == 0 || k == 0 {
        c.fill(MaybeUninit::new(0.0));
    } else {
        // SAFETY: the bounds were checked above, `c` is borrowed mutably so it cannot alias `a`
        // or `b`, and gemm does not read it.
        unsafe { gemm_raw((m, n, k), a, b, c.as_mut_ptr().cast::<f32>(), false, par) };
    }
    // SAFETY: every element of `c` was written above.
    Ok(unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) })
}

/// The contiguous `f32` slice behind a CPU storage, or an error for other dtypes / strides.
pub(crate) fn cpu_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: expected f32 storage, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((start, end)) if end <= v.len() => Ok(&v[start..end]),
        _ => bail!("{op}: expected a contiguous input"),
    }
}

/// Checks an optional bias of `n` values and the weights against the input's dtype: the
/// validation every layer with weights and a bias shares.
pub(crate) fn check_params(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    n: usize,
) -> crate::Result<()> {
    if let Some(b) = b {
        if b.dims() != [n] {
            return Err(crate::OpsError::ShapeMismatch {
                op,
                expected: format!("bias [{n}]"),
                found: b.dims().to_vec(),
            });
        }
    }
    for t in std::iter::once(w).chain(b) {
        if t.dtype() != x.dtype() {
            return Err(crate::OpsError::DTypeMismatch {
                op,
                lhs: x.dtype(),
                rhs: t.dtype(),
            });
        }
    }
    Ok(())
}

/// `cpu_slices!(op; a = t1, b = t2)` binds `a`, `b` to the contiguous `f32` data of the CPU
/// tensors `t1`, `t2` for the rest of the enclosing scope (their storage guards live alongside,
/// under the same shadowed names): the preamble of every backward pass.
macro_rules! cpu_slices {
    ($op:expr; $($name:ident = $t:expr),+ $(,)?) => {
        $( let $name = $crate::util::contiguous_cpu($t)?; )+
        $( let $name = $name.storage_and_layout(); )+
        $( let $name = $crate::util::storage_f32(&$name.0, $name.1, $op)?; )+
    };
}
pub(crate) use cpu_slices;

/// Same as [`cpu_f32`] for a `Storage` obtained from `Tensor::storage_and_layout`.
pub(crate) fn storage_f32<'a>(
    s: &'a Storage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => cpu_f32(c, l, op),
        _ => bail!("{op}: expected a cpu tensor"),
    }
}

/// The tensor itself if contiguous, else a contiguous copy; errors for non-CPU tensors.
///
/// Used in `bwd`, where candle hands us tensors that may be broadcast (e.g. the gradient of a
/// `sum` has zero strides): `contiguous()` is a no-op for tensors that already are.
pub(crate) fn contiguous_cpu(t: &Tensor) -> candle_core::Result<Tensor> {
    if !t.device().is_cpu() {
        bail!("expected a cpu tensor")
    }
    t.contiguous()
}

/// Wraps an output buffer as a tensor that does not track gradients.
/// Gradients of a kernel's input, weight and bias as plain vectors, each only if asked for.
pub(crate) type SliceGrads = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

/// The `bwd` of a convolution op from its backward pass on slices, `f(x, w, y, dy, need)`:
/// asks for the gradients of the arguments that track one, and shapes them like the
/// arguments.
pub(crate) fn bwd_via_slices(
    name: &'static str,
    [x, w, bias]: [&Tensor; 3],
    res: &Tensor,
    grad: &Tensor,
    f: impl FnOnce(&[f32], &[f32], &[f32], &[f32], [bool; 3]) -> candle_core::Result<SliceGrads>,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    cpu_slices!(name;
        xd = x,
        wd = w,
        yd = res,
        gd = grad,
    );
    let (dx, dw, db) = f(
        xd,
        wd,
        yd,
        gd,
        [x.track_op(), w.track_op(), bias.track_op()],
    )?;
    let shaped =
        |v: Option<Vec<f32>>, like: &Tensor| v.map(|v| tensor_from(v, like.dims())).transpose();
    Ok((shaped(dx, x)?, shaped(dw, w)?, shaped(db, bias)?))
}

pub(crate) fn tensor_from(data: Vec<f32>, dims: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, dims, &candle_core::Device::Cpu)
}

/// Sum of a slice with 16 independent accumulators.
///
/// `iter().sum()` must add in order (no reassociation for floats), which makes it a serial
/// chain of dependent adds; splitting into lanes lets the compiler use vector registers.
#[inline]
pub(crate) fn sum(v: &[f32]) -> f32 {
    const W: usize = 16;
    let mut acc = [0f32; W];
    let mut chunks = v.chunks_exact(W);
    for c in &mut chunks {
        for l in 0..W {
            acc[l] += c[l];
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// Output spatial size of a window op: `floor((input + 2*pad - kernel) / stride) + 1`.
/// `None` when the window does not fit in the padded input or the stride is zero.
pub(crate) fn out_size(input: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    // Checked: `pad` comes straight from the caller.
    let padded = pad.checked_mul(2)?.checked_add(input)?;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

/// Range of output positions `o` for which `o*stride + k - pad` lies in `[0, input)`, clamped to
/// `[0, out)`. Lets the inner loops skip padding without per-element branches.
#[inline]
pub(crate) fn valid_range(
    out: usize,
    input: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> (usize, usize) {
    // lo = ceil((pad - k) / stride) when pad > k, else 0.
    let lo = if pad > k {
        (pad - k).div_ceil(stride)
    } else {
        0
    };
    // hi (exclusive): o*stride + k - pad <= input - 1  <=>  o <= (input - 1 + pad - k) / stride.
    let hi = if input + pad > k {
        ((input - 1 + pad - k) / stride + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_work_stays_on_the_caller_and_large_work_moves_to_the_pool() {
        // Test threads are not rayon workers.
        assert_eq!(rayon::current_thread_index(), None);
        assert_eq!(
            in_pool_for(IN_POOL_MIN_MACS - 1, rayon::current_thread_index),
            None
        );
        assert!(in_pool_for(IN_POOL_MIN_MACS, rayon::current_thread_index).is_some());
        // Nested: already on a worker, it stays there.
        let (outer, inner) = in_pool(|| {
            (
                rayon::current_thread_index(),
                in_pool(rayon::current_thread_index),
            )
        });
        assert!(outer.is_some());
        assert_eq!(outer, inner);
    }

    #[test]
    fn chunk_pairs_cover_every_chunk_serially_and_in_parallel() {
        for len in [6, SERIAL_BELOW + 6] {
            let x: Vec<f32> = (0..2 * len).map(|i| i as f32).collect();
            let mut y = vec![0f32; len];
            for_each_chunk_pair(&mut y, 3, &x, 6, |o, i| {
                for (k, v) in o.iter_mut().enumerate() {
                    *v = i[2 * k] + i[2 * k + 1];
                }
            });
            assert!(y.iter().enumerate().all(|(k, &v)| v == (4 * k + 1) as f32));
        }
    }

    #[test]
    fn valid_range_matches_brute_force() {
        for input in 1..8 {
            for k in 0..5 {
                for stride in 1..4 {
                    for pad in 0..4 {
                        let Some(out) = out_size(input, k + 1, stride, pad) else {
                            continue;
                        };
                        let (lo, hi) = valid_range(out, input, k, stride, pad);
                        for o in 0..out {
                            let i = (o * stride + k) as isize - pad as isize;
                            let inside = i >= 0 && (i as usize) < input;
                            assert_eq!(inside, o >= lo && o < hi, "{input} {k} {stride} {pad} {o}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sgemm_matches_naive_with_transposes() -> candle_core::Result<()> {
        let (m, n, k) = (3, 5, 4);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 - 3.0).collect(); // b^T, n×k
        let mut c = vec![1.0f32; m * n];
        sgemm(
            (m, n, k),
            Mat::rows(&a, k),
            Mat::rows_t(&bt, k),
            &mut c,
            true,
            gemm::Parallelism::None,
        )?;
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-4);
            }
        }
        Ok(())
    }

    #[test]
    fn sgemm_rejects_short_operands() {
        let a = [0f32; 3];
        let mut c = [0f32; 4];
        let r = sgemm(
            (2, 2, 2),
            Mat::rows(&a, 2),
            Mat::rows(&a, 2),
            &mut c,
            false,
            gemm::Parallelism::None,
        );
        assert!(r.is_err());
    }

    #[test]
    fn out_size_rejects_overflow_and_empty_windows() {
        assert_eq!(out_size(28, 5, 1, 2), Some(28));
        assert_eq!(out_size(7, 3, 2, 1), Some(4));
        assert_eq!(out_size(2, 5, 1, 1), None);
        assert_eq!(out_size(2, 1, 0, 0), None);
        assert_eq!(out_size(2, 3, 1, usize::MAX / 2 + 1), None);
    }

    #[test]
    fn lane_sum_matches_serial_sum() {
        for n in [0, 1, 15, 16, 17, 100, 1000] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let want: f32 = v.iter().sum();
            assert!((sum(&v) - want).abs() < 1e-3, "{n}");
        }
    }

    #[test]
    fn scratch_is_reentrant() {
        let v = with_scratch(4, 3, |a, b| {
            a.fill(1.0);
            b.fill(2.0);
            with_scratch(2, 2, |c, d| {
                c.fill(3.0);
                d.fill(4.0);
            });
            a.iter().sum::<f32>() + b.iter().sum::<f32>()
        });
        assert_eq!(v, 10.0);
    }
}
