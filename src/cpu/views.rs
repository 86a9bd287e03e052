//! faer views over row-major slices.
//!
//! faer 0.24's `MatMut::from_row_major_slice_with_stride_mut` builds its view with the row and column
//! strides swapped (it writes outside the intended window); these helpers build row-major views as
//! transposed column-major ones, which faer gets right.

use faer::{MatMut, MatRef};

/// `[nrows, ncols]` row-major view with `row_stride` elements between rows.
pub fn rm<T>(s: &[T], nrows: usize, ncols: usize, row_stride: usize) -> MatRef<'_, T> {
    MatRef::from_column_major_slice_with_stride(s, ncols, nrows, row_stride).transpose()
}

/// Mutable counterpart of [`rm`].
pub fn rm_mut<T>(s: &mut [T], nrows: usize, ncols: usize, row_stride: usize) -> MatMut<'_, T> {
    MatMut::from_column_major_slice_with_stride_mut(s, ncols, nrows, row_stride).transpose_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_row_major_views_address_the_right_elements() {
        let mut buf: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let v = rm_mut(&mut buf[1..], 2, 3, 4);
        assert_eq!((v.nrows(), v.ncols()), (2, 3));
        assert_eq!(v[(1, 2)], 7.0);
        assert_eq!(rm(&buf, 3, 4, 4)[(2, 1)], 9.0);
    }
}
