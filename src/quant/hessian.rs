//! Accumulation of the layer Hessian `H = (2/n) Σ xᵀx` from calibration activations.

use crate::cpu::threads;
use crate::error::{Error, Result};
use crate::tensor::{Elements, MatView};
use faer::linalg::matmul::matmul;
use faer::Accum;
use crate::cpu::views::{rm, rm_mut};
use rayon::prelude::*;

/// What `n` in `(2/n) Σ xᵀx` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleCount {
    /// Every activation row is one sample (GPTQModel's convention).
    Rows,
    /// Every `add_batch` call is one sample (AutoGPTQ with one sequence per call).
    Batches,
}

/// Rows converted to f32 per matmul: bounds the scratch to `CHUNK_ROWS · in_features` floats.
const CHUNK_ROWS: usize = 2048;

/// A running-average Hessian over `in_features` inputs, kept in f32 as the reference does.
#[derive(Debug, Clone)]
pub struct Hessian {
    k: usize,
    /// Row-major `[k, k]`, exactly symmetric.
    h: Vec<f32>,
    n: u64,
    count: SampleCount,
}

impl Hessian {
    /// An empty Hessian (no samples yet).
    pub fn new(in_features: usize, count: SampleCount) -> Result<Self> {
        if in_features == 0 {
            return Err(Error::Shape("Hessian: in_features must be non-zero".into()));
        }
        let len = crate::error::checked_len(&[in_features, in_features], "Hessian")?;
        let mut h = Vec::new();
        h.try_reserve_exact(len)
            .map_err(|_| Error::OutOfMemory(format!("Hessian of {in_features}² floats")))?;
        h.resize(len, 0.0);
        Ok(Hessian { k: in_features, h, n: 0, count })
    }

    /// A Hessian taken from a caller's dense symmetric `[k, k]` matrix standing for `n_samples` samples.
    pub fn from_dense(dense: Elements<'_>, in_features: usize, n_samples: u64, count: SampleCount) -> Result<Self> {
        let view = MatView::dense(dense, in_features, in_features, "Hessian")?;
        view.check_finite("Hessian")?;
        if n_samples == 0 {
            return Err(Error::InvalidArgument("Hessian: n_samples must be at least 1".into()));
        }
        // MatView::dense already checked that the slice holds k² values: copy it directly rather than
        // allocating a zeroed matrix first.
        Ok(Hessian { k: in_features, h: view.to_f32(), n: n_samples, count })
    }

    pub fn in_features(&self) -> usize {
        self.k
    }
    /// Samples accumulated so far (rows or batches, per [`SampleCount`]).
    pub fn n_samples(&self) -> u64 {
        self.n
    }
    pub fn sample_count(&self) -> SampleCount {
        self.count
    }
    /// The matrix, row-major `[k, k]`.
    pub fn matrix(&self) -> &[f32] {
        &self.h
    }

    /// Adds a batch of activations `[rows, in_features]`. On error the Hessian is unchanged.
    pub fn add_batch(&mut self, x: &MatView<'_>) -> Result<()> {
        if x.cols() != self.k {
            return Err(Error::Shape(format!(
                "activations have {} columns but the Hessian has in_features {}",
                x.cols(),
                self.k
            )));
        }
        x.check_finite("activations")?;
        let b = match self.count {
            SampleCount::Rows => x.rows() as u64,
            SampleCount::Batches => 1,
        };
        let n_new = self.n + b;
        let (k, n_old) = (self.k, self.n);
        let h = &mut self.h;
        threads::install(|| {
            // Same order of operations as the reference: rescale the old average, then add the
            // batch's rows pre-multiplied by sqrt(2/n).
            let keep = n_old as f32 / n_new as f32;
            h.par_iter_mut().for_each(|v| *v *= keep);
            let alpha = (2.0 / n_new as f64).sqrt() as f32;
            let chunk = CHUNK_ROWS.min(x.rows());
            let mut buf = vec![0f32; chunk * k];
            for r0 in (0..x.rows()).step_by(chunk) {
                let rows = chunk.min(x.rows() - r0);
                buf[..rows * k].par_chunks_mut(k).enumerate().for_each(|(i, row)| {
                    x.read_row(r0 + i, row);
                    row.iter_mut().for_each(|v| *v *= alpha);
                });
                let xs = rm(&buf[..rows * k], rows, k, k);
                let hm = rm_mut(h, k, k, k);
                matmul(hm, Accum::Add, xs.transpose(), xs, 1.0f32, threads::faer_par());
            }
            symmetrize(h, k);
        });
        self.n = n_new;
        Ok(())
    }

    /// Folds `other` into `self` as if its samples had been added here (data-parallel accumulation).
    pub fn merge(&mut self, other: &Hessian) -> Result<()> {
        if other.k != self.k {
            return Err(Error::Shape(format!(
                "cannot merge a Hessian of in_features {} into one of {}",
                other.k, self.k
            )));
        }
        if other.count != self.count {
            return Err(Error::InvalidArgument(
                "cannot merge Hessians that count samples differently (rows vs batches)".into(),
            ));
        }
        let n = self.n + other.n;
        if n == 0 {
            return Ok(());
        }
        let (a, b) = (self.n as f64 / n as f64, other.n as f64 / n as f64);
        threads::install(|| {
            self.h.par_iter_mut().zip(&other.h).for_each(|(x, y)| *x = (a * *x as f64 + b * *y as f64) as f32)
        });
        self.n = n;
        Ok(())
    }
}

/// Copies the lower triangle onto the upper so `H` is exactly symmetric whatever order the matmul used.
fn symmetrize(h: &mut [f32], k: usize) {
    for i in 0..k {
        for j in 0..i {
            h[j * k + i] = h[i * k + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(xs: &[Vec<f32>], k: usize) -> Vec<f64> {
        let n = xs.len() as f64;
        let mut h = vec![0f64; k * k];
        for x in xs {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += 2.0 / n * x[i] as f64 * x[j] as f64;
                }
            }
        }
        h
    }

    #[test]
    fn running_average_matches_the_closed_form_and_merge_is_exact() {
        let k = 7;
        let rows: Vec<Vec<f32>> =
            (0..23).map(|r| (0..k).map(|c| ((r * 31 + c * 17) % 13) as f32 / 7.0 - 0.9).collect()).collect();
        let flat = |rs: &[Vec<f32>]| rs.concat();
        let mut h = Hessian::new(k, SampleCount::Rows).unwrap();
        let first = flat(&rows[..10]);
        let second = flat(&rows[10..]);
        h.add_batch(&MatView::dense(Elements::F32(&first), 10, k, "x").unwrap()).unwrap();
        h.add_batch(&MatView::dense(Elements::F32(&second), 13, k, "x").unwrap()).unwrap();
        let want = naive(&rows, k);
        for (a, b) in h.matrix().iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let mut a = Hessian::new(k, SampleCount::Rows).unwrap();
        a.add_batch(&MatView::dense(Elements::F32(&first), 10, k, "x").unwrap()).unwrap();
        let mut b = Hessian::new(k, SampleCount::Rows).unwrap();
        b.add_batch(&MatView::dense(Elements::F32(&second), 13, k, "x").unwrap()).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.n_samples(), 23);
        for (x, y) in a.matrix().iter().zip(&want) {
            assert!((*x as f64 - y).abs() < 1e-5 * (1.0 + y.abs()));
        }
    }

    #[test]
    fn a_rejected_batch_leaves_the_hessian_unchanged() {
        let mut h = Hessian::new(2, SampleCount::Rows).unwrap();
        h.add_batch(&MatView::dense(Elements::F32(&[1.0, 2.0]), 1, 2, "x").unwrap()).unwrap();
        let before = h.clone();
        let bad = [1.0, f32::NAN];
        let err = h.add_batch(&MatView::dense(Elements::F32(&bad), 1, 2, "x").unwrap()).unwrap_err();
        assert!(matches!(err, Error::NonFinite(ref m) if m.contains("[0, 1]")), "{err}");
        assert_eq!(h.matrix(), before.matrix());
        assert_eq!(h.n_samples(), 1);
    }
}
