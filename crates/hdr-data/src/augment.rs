//! Label-preserving random image transforms: the paper's random rotation, translation and
//! scaling (one affine warp), and elastic distortion (Simard et al. 2003).

use crate::rng::Rng;

/// A random, label-preserving transform of one grey image.
///
/// Implementations draw every random number from `rng`, which the caller derives from
/// `(seed, epoch, sample index)`; that is what makes augmentation reproducible whatever the
/// number of threads.
pub trait Augment: Send + Sync + std::fmt::Debug {
    /// Writes the transformed `src` into `dst`.
    ///
    /// Both are `height * width` row-major intensities in `[0, 1]` (0 = background) and never
    /// alias; `dst` must come out in `[0, 1]` too.
    fn apply(&self, src: &[f32], dst: &mut [f32], width: usize, height: usize, rng: &mut Rng);
}
