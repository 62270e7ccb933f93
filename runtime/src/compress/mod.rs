//! Compressors of the activations that backprop keeps (DESIGN §4), and the weight gradients
//! computed from their compressed form.
//!
//! - [`hosvd`]: the paper's method (Nguyen et al., NeurIPS 2024), a Tucker factorisation by
//!   truncated HOSVD with the ε rule; conv and linear weight gradients contract the factors
//!   without rebuilding the activation. [`center`] keeps the per-feature mean exactly and
//!   decomposes the residual.
//! - [`svd`]: the paper's SVD baseline (first dimension against the rest).
//! - [`gradfilter`]: the gradient-filter baseline (Yang et al., CVPR 2023).
//!
//! Same conventions as the kernels: row-major `f32` slices, outputs overwritten, scratch from
//! the caller's `ws` (sized by the `*_workspace_len` functions) so that a training step does
//! not allocate. The one exception is faer's eigensolver scratch, a thread-local buffer that
//! grows on its first use with a given order (like the packing buffers of `sgemm`).

pub mod center;
mod compressor;
pub mod gradfilter;
pub mod hosvd;
mod modal;
pub mod svd;

#[cfg(test)]
mod testutil;

/// The ε rule of the paper, shared by HOSVD and SVD: the smallest k ≥ 1 whose leading
/// eigenvalues (σ², sorted descending, negatives from round-off clamped to 0) reach eps·Σ.
///
/// With eps = 1 that is the number of non-zero eigenvalues: the running sum is accumulated in
/// the same order as the total, so it equals the total exactly at the last non-zero one.
pub fn eps_rank(eigenvalues_desc: &[f32], eps: f32) -> usize {
    let total: f64 = eigenvalues_desc
        .iter()
        .map(|&v| f64::from(v.max(0.0)))
        .sum();
    eps_rank_of(eigenvalues_desc, eps, total).unwrap_or(eigenvalues_desc.len().max(1))
}

/// The ε rule when only the leading eigenvalues are known, with `total` the sum of all of
/// them (a Gram matrix's trace): None when these few do not reach eps·total.
pub(crate) fn eps_rank_of(top_desc: &[f32], eps: f32, total: f64) -> Option<usize> {
    let target = f64::from(eps) * total;
    let mut sum = 0.0;
    for (i, &v) in top_desc.iter().enumerate() {
        sum += f64::from(v.max(0.0));
        if sum >= target {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_rank_is_the_smallest_prefix_reaching_the_share() {
        // Shares 0.4, 0.7, 0.9, 1, 1 (eps values exact in binary, so no rounding decides).
        let ev = [4.0, 3.0, 2.0, 1.0, 0.0];
        assert_eq!(eps_rank(&ev, 0.375), 1);
        assert_eq!(eps_rank(&ev, 0.5), 2);
        assert_eq!(eps_rank(&ev, 0.75), 3);
        assert_eq!(eps_rank(&ev, 0.9375), 4);
        assert_eq!(eps_rank(&ev, 1.0), 4);
        assert_eq!(eps_rank(&[2.0, 1.0, -1e-7], 1.0), 2);
        assert_eq!(eps_rank(&[0.0, 0.0], 0.8), 1);
    }
}
