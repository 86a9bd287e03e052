//! Borrowed, strided 2-D views over caller memory in the element types the library accepts.
//!
//! The core takes these instead of raw pointers: the C layer builds them after checking pointers, lengths
//! and alignment, and everything below works on safe slices.

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Element type of a tensor crossing the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F64 => 8,
        }
    }
}

/// A typed, borrowed slice of elements.
#[derive(Debug, Clone, Copy)]
pub enum Elements<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    F64(&'a [f64]),
}

impl Elements<'_> {
    pub fn len(&self) -> usize {
        match self {
            Elements::F32(s) => s.len(),
            Elements::F16(s) => s.len(),
            Elements::BF16(s) => s.len(),
            Elements::F64(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Elements::F32(_) => DType::F32,
            Elements::F16(_) => DType::F16,
            Elements::BF16(_) => DType::BF16,
            Elements::F64(_) => DType::F64,
        }
    }

    /// Converts `out.len()` elements starting at `start` to f32.
    pub fn read_f32(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            Elements::F32(s) => out.copy_from_slice(&s[start..end]),
            Elements::F16(s) => out.iter_mut().zip(&s[start..end]).for_each(|(o, v)| *o = v.to_f32()),
            Elements::BF16(s) => out.iter_mut().zip(&s[start..end]).for_each(|(o, v)| *o = v.to_f32()),
            Elements::F64(s) => out.iter_mut().zip(&s[start..end]).for_each(|(o, v)| *o = *v as f32),
        }
    }

    /// Index of the first element that is NaN or infinite.
    fn first_non_finite(&self, start: usize, len: usize) -> Option<usize> {
        let r = start..start + len;
        match self {
            Elements::F32(s) => s[r].iter().position(|v| !v.is_finite()),
            Elements::F16(s) => s[r].iter().position(|v| !v.is_finite()),
            Elements::BF16(s) => s[r].iter().position(|v| !v.is_finite()),
            Elements::F64(s) => s[r].iter().position(|v| !v.is_finite()),
        }
    }
}

/// A row-major matrix view `[rows, cols]` with a row stride in elements.
#[derive(Debug, Clone, Copy)]
pub struct MatView<'a> {
    data: Elements<'a>,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

/// Number of elements a strided `[rows, cols]` view spans.
pub fn strided_span(rows: usize, cols: usize, row_stride: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(row_stride)?.checked_add(cols)
}

impl<'a> MatView<'a> {
    /// Checks that the slice covers the strided shape and that no dimension is zero.
    pub fn new(data: Elements<'a>, rows: usize, cols: usize, row_stride: usize, what: &str) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(Error::Shape(format!("{what}: dimensions must be non-zero, got [{rows}, {cols}]")));
        }
        if row_stride < cols {
            return Err(Error::InvalidArgument(format!(
                "{what}: row stride {row_stride} is smaller than the row length {cols}"
            )));
        }
        let span = strided_span(rows, cols, row_stride)
            .ok_or_else(|| Error::OutOfMemory(format!("{what}: [{rows}, {cols}] with stride {row_stride} overflows")))?;
        if data.len() < span {
            return Err(Error::BufferTooSmall(format!(
                "{what}: [{rows}, {cols}] with stride {row_stride} needs {span} elements, got {}",
                data.len()
            )));
        }
        Ok(MatView { data, rows, cols, row_stride })
    }

    /// A dense row-major view.
    pub fn dense(data: Elements<'a>, rows: usize, cols: usize, what: &str) -> Result<Self> {
        Self::new(data, rows, cols, cols, what)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Converts row `r` to f32 into `out` (length `cols`).
    pub fn read_row(&self, r: usize, out: &mut [f32]) {
        self.data.read_f32(r * self.row_stride, &mut out[..self.cols]);
    }

    /// Fails with [`Error::NonFinite`] naming the first NaN/Inf element.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        for r in 0..self.rows {
            if let Some(c) = self.data.first_non_finite(r * self.row_stride, self.cols) {
                return Err(Error::NonFinite(format!("{what}[{r}, {c}] is NaN or infinite")));
            }
        }
        Ok(())
    }

    /// The whole view as a dense row-major f32 matrix.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.read_row(r, row);
        }
        out
    }
}
