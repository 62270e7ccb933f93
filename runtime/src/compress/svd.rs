//! The paper's SVD baseline: the activation unfolded to rows × cols (first dimension against
//! the rest), truncated by the ε rule, kept as U·Σ and Vᵀ in one packed buffer
//! `[k | UΣ (rows × k) in a slot of rows·cap | Vᵀ (k × cols) in a slot of cap·cols]`.
//! Its weight gradient is the ordinary kernel's on [`reconstruct`]ion, as in the paper.

use super::modal::{Fold, leading_vectors, leading_vectors_workspace_len};
use crate::kernels::gemm::sgemm;

pub fn packed_len(rows: usize, cols: usize, cap: usize) -> usize {
    1 + rows * cap + cap * cols
}

pub fn workspace_len(rows: usize, cols: usize, cap: usize) -> usize {
    leading_vectors_workspace_len(fold(rows, cols)) + cap
}

fn fold(rows: usize, cols: usize) -> Fold {
    Fold {
        p: 1,
        d: rows,
        q: cols,
    }
}

/// Compresses the rows × cols matrix `a` into `packed`; returns (used, wanted) ranks.
pub fn compress(
    a: &[f32],
    rows: usize,
    cols: usize,
    eps: f32,
    cap: usize,
    packed: &mut [f32],
    ws: &mut [f32],
) -> (usize, usize) {
    debug_assert_eq!(a.len(), rows * cols);
    debug_assert_eq!(packed.len(), packed_len(rows, cols, cap));
    debug_assert!(ws.len() >= workspace_len(rows, cols, cap));
    let (sig2, ws) = ws.split_at_mut(cap);
    let (header, body) = packed.split_at_mut(1);
    let (us, vt) = body.split_at_mut(rows * cap);
    let f = fold(rows, cols);
    let cap = cap.min(f.gram_order());
    let (k, wanted) = leading_vectors(a, f, eps, cap, 0, us, Some(sig2), ws);
    header[0] = k as f32;
    // Uᵀ·A = Σ·Vᵀ: row j has norm σ_j; divide it out of Vᵀ and into U.
    sgemm(
        k,
        cols,
        rows,
        1.0,
        us,
        (1, k),
        a,
        (cols, 1),
        0.0,
        vt,
        (cols, 1),
    );
    for (j, &s2) in sig2[..k].iter().enumerate() {
        if s2 > 0.0 {
            let s = s2.sqrt();
            vt[j * cols..][..cols].iter_mut().for_each(|v| *v /= s);
            (0..rows).for_each(|i| us[i * k + j] *= s);
        }
    }
    (k, wanted)
}

/// out (rows × cols) = UΣ·Vᵀ.
pub fn reconstruct(packed: &[f32], rows: usize, cols: usize, cap: usize, out: &mut [f32]) {
    debug_assert_eq!(packed.len(), packed_len(rows, cols, cap));
    debug_assert_eq!(out.len(), rows * cols);
    let k = packed[0] as usize;
    let (us, vt) = packed[1..].split_at(rows * cap);
    sgemm(
        rows,
        cols,
        k,
        1.0,
        us,
        (k, 1),
        vt,
        (cols, 1),
        0.0,
        out,
        (cols, 1),
    );
}

/// Paper's memory metric in bytes: (rows·k + k·cols)·4.
pub fn paper_bytes(rows: usize, cols: usize, k: usize) -> usize {
    (rows * k + k * cols) * 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::testutil::{assert_rel, golden};

    const EPS: [(&str, f32); 4] = [("e050", 0.5), ("e080", 0.8), ("e090", 0.9), ("e100", 1.0)];

    #[test]
    fn matches_numpy_svd() {
        for t in ["t4", "wide", "tall"] {
            let x = golden("svd", &format!("{t}__x"));
            let rows = x.shape[0];
            let cols = x.values.len() / rows;
            let cap = rows.min(cols);
            let mut packed = vec![0.0; packed_len(rows, cols, cap)];
            let mut ws = vec![0.0; workspace_len(rows, cols, cap)];
            let mut out = vec![0.0; rows * cols];
            for (e, eps) in EPS {
                let (k, wanted) = compress(&x.values, rows, cols, eps, cap, &mut packed, &mut ws);
                let want = golden("svd", &format!("{t}__{e}__rank")).values[0] as usize;
                assert_eq!((k, wanted), (want, want), "{t} {e}: rank");
                reconstruct(&packed, rows, cols, cap, &mut out);
                let recon = golden("svd", &format!("{t}__{e}__recon"));
                assert_rel(&format!("{t} {e} recon"), &out, &recon.values, 1e-4);
            }
        }
    }

    #[test]
    fn a_cap_below_the_eps_rank_truncates() {
        let x = golden("svd", "wide__x");
        let (rows, cols) = (12, 20);
        let mut packed = vec![0.0; packed_len(rows, cols, 1)];
        let mut ws = vec![0.0; workspace_len(rows, cols, 1)];
        let (k, wanted) = compress(&x.values, rows, cols, 0.9, 1, &mut packed, &mut ws);
        assert_eq!((k, wanted), (1, 3));
        assert_eq!(paper_bytes(rows, cols, k), (12 + 20) * 4);
    }
}
