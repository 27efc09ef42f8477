use crate::error::{MetricsError, Result};

mod sealed {
    pub trait Sealed {}
}

/// An unsigned integer usable as a class index: `u8`, `u16`, `u32`, `u64` or `usize`.
///
/// Labels arrive in whatever type the pipeline produced them (MNIST label files hold `u8`,
/// candle's `argmax` yields `u32`, Rust code indexes with `usize`); accepting all of them saves a
/// conversion pass at every call site. Classes are `usize` everywhere in the results.
pub trait ClassLabel: Copy + sealed::Sealed {
    /// The value, widened losslessly.
    fn to_u64(self) -> u64;
}

macro_rules! impl_label {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl ClassLabel for $t {
            #[inline]
            fn to_u64(self) -> u64 {
                self as u64
            }
        }
    )*};
}
impl_label!(u8, u16, u32, u64, usize);

/// The class index of a label, if it is below `num_classes`.
#[inline]
pub(crate) fn class_index<L: ClassLabel>(label: L, num_classes: usize) -> Option<usize> {
    usize::try_from(label.to_u64())
        .ok()
        .filter(|&c| c < num_classes)
}

/// Checks that `labels[i]` is a valid true label for every `i`, reporting the first bad one.
pub(crate) fn check_labels<L: ClassLabel>(labels: &[L], num_classes: usize) -> Result<()> {
    match labels
        .iter()
        .position(|&l| class_index(l, num_classes).is_none())
    {
        Some(index) => Err(MetricsError::LabelOutOfRange {
            index,
            label: labels[index].to_u64(),
            num_classes,
        }),
        None => Ok(()),
    }
}

/// Checks that every prediction is a valid class, reporting the first bad one.
pub(crate) fn check_predictions<L: ClassLabel>(
    predictions: &[L],
    num_classes: usize,
) -> Result<()> {
    match predictions
        .iter()
        .position(|&l| class_index(l, num_classes).is_none())
    {
        Some(index) => Err(MetricsError::PredictionOutOfRange {
            index,
            prediction: predictions[index].to_u64(),
            num_classes,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_type_converts() {
        assert_eq!(class_index(3u8, 10), Some(3));
        assert_eq!(class_index(9u16, 10), Some(9));
        assert_eq!(class_index(0u32, 10), Some(0));
        assert_eq!(class_index(10u64, 10), None);
        assert_eq!(class_index(usize::MAX, 10), None);
        assert_eq!(class_index(u64::MAX, usize::MAX), None);
    }

    #[test]
    fn first_bad_label_is_reported() {
        let err = check_labels(&[1u8, 12, 13], 10).unwrap_err();
        assert!(matches!(
            err,
            MetricsError::LabelOutOfRange {
                index: 1,
                label: 12,
                num_classes: 10
            }
        ));
        let err = check_predictions(&[1u32, 2, 10], 10).unwrap_err();
        assert!(matches!(
            err,
            MetricsError::PredictionOutOfRange {
                index: 2,
                prediction: 10,
                num_classes: 10
            }
        ));
        assert!(check_labels::<usize>(&[], 1).is_ok());
    }
}
