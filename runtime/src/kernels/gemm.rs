//! The one matrix multiply every kernel goes through.
//!
//! Backed by `matrixmultiply`, the fastest single-threaded sgemm measured on the target
//! machines (DESIGN §7). Changing the backend (e.g. `gemm` or faer when two threads are
//! available) is a change to this file only.

/// Row stride and column stride of a matrix inside its slice. Swapping them transposes the
/// matrix without moving data.
pub type Strides = (usize, usize);

/// `C ← alpha·A·B + beta·C`, with `A` m×k, `B` k×n and `C` m×n, each addressed by its
/// strides. With `beta == 0` the old content of `C` is ignored (NaN included).
///
/// `matrixmultiply` allocates its packing buffers on every call (at most a few hundred kB);
/// that is the only allocation on the kernels' path.
#[allow(clippy::too_many_arguments)] // the BLAS signature: every argument is one of the product's terms
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    a_strides: Strides,
    b: &[f32],
    b_strides: Strides,
    beta: f32,
    c: &mut [f32],
    c_strides: Strides,
) {
    // The backend reads and writes through raw pointers: these O(1) checks are what keeps
    // it inside the slices, so they stay on in release builds.
    assert!(extent(m, k, a_strides) <= a.len(), "sgemm: A too short");
    assert!(extent(k, n, b_strides) <= b.len(), "sgemm: B too short");
    assert!(extent(m, n, c_strides) <= c.len(), "sgemm: C too short");
    debug_assert!(
        m <= 1 || n <= 1 || c_strides.0 >= n * c_strides.1 || c_strides.1 >= m * c_strides.0,
        "sgemm: C's strides make elements alias"
    );
    // SAFETY: the asserts above keep every element the strides address within the slices;
    // `c` is borrowed mutably, so it cannot overlap `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            a_strides.0 as isize,
            a_strides.1 as isize,
            b.as_ptr(),
            b_strides.0 as isize,
            b_strides.1 as isize,
            beta,
            c.as_mut_ptr(),
            c_strides.0 as isize,
            c_strides.1 as isize,
        );
    }
}

/// One past the largest offset a rows×cols matrix with these strides touches.
fn extent(rows: usize, cols: usize, (rs, cs): Strides) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{Lcg, assert_close};

    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
            }
        }
        c
    }

    #[test]
    fn all_transposes_and_beta() {
        let mut rng = Lcg::new(1);
        let (m, n, k) = (5, 7, 3);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let c0 = rng.vec(m * n);
        for ta in [false, true] {
            for tb in [false, true] {
                // The same numbers stored as A or Aᵀ: only the strides change.
                let a_s = if ta { (1, m) } else { (k, 1) };
                let b_s = if tb { (1, k) } else { (n, 1) };
                let want = reference(
                    m,
                    n,
                    k,
                    |i, p| a[i * a_s.0 + p * a_s.1],
                    |p, j| b[p * b_s.0 + j * b_s.1],
                );
                let want: Vec<f64> = want
                    .iter()
                    .zip(&c0)
                    .map(|(w, c)| 2.0 * w + 0.5 * *c as f64)
                    .collect();
                let mut c = c0.clone();
                sgemm(m, n, k, 2.0, &a, a_s, &b, b_s, 0.5, &mut c, (n, 1));
                assert_close("sgemm", &c, &want, 1e-6);
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_and_transposed_output() {
        let mut rng = Lcg::new(2);
        let (m, n, k) = (4, 3, 6);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let want = reference(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
        // C stored column-major.
        let mut c = vec![f32::NAN; m * n];
        sgemm(m, n, k, 1.0, &a, (k, 1), &b, (n, 1), 0.0, &mut c, (1, m));
        let got: Vec<f32> = (0..m * n).map(|i| c[(i % n) * m + i / n]).collect();
        assert_close("sgemm colmajor C", &got, &want, 1e-6);
    }
}
