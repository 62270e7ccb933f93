//! Mode-n machinery shared by HOSVD and SVD: a row-major tensor seen as (P, D, Q), where D is
//! mode n's extent and P, Q are the products of the extents before and after it. The mode-n
//! unfolding A₍ₙ₎ (D × P·Q) is then never materialised: every product loops over whichever
//! of P or Q is smaller and hands `sgemm` strided views, so no permuted copy of the
//! activation is needed.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use faer::dyn_stack::MemStack;
use faer::linalg::evd::{
    ComputeEigenvectors, SelfAdjointEvdParams, self_adjoint_evd, self_adjoint_evd_scratch,
};
use faer::{ColMut, MatMut, MatRef, Par, Spec};

use super::{eps_rank, eps_rank_of};
use crate::kernels::gemm::{Strides, sgemm};

/// A tensor seen as (P, D, Q), the middle one being the mode of interest.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fold {
    pub p: usize,
    pub d: usize,
    pub q: usize,
}

impl Fold {
    pub fn of(shape: &[usize], n: usize) -> Self {
        Fold {
            p: shape[..n].iter().product(),
            d: shape[n],
            q: shape[n + 1..].iter().product(),
        }
    }

    /// Columns of the unfolding.
    pub fn rest(&self) -> usize {
        self.p * self.q
    }

    /// Order of the Gram matrix actually decomposed: the smaller side of the unfolding.
    pub fn gram_order(&self) -> usize {
        self.d.min(self.rest())
    }
}

/// `out` (P, R, Q) = `m` (R × D, by its strides) applied along the middle mode of `t`
/// (P, D, Q): out[p, :, q] = m · t[p, :, q].
pub(crate) fn mode_product(t: &[f32], f: Fold, r: usize, m: &[f32], ms: Strides, out: &mut [f32]) {
    let Fold { p, d, q } = f;
    if p <= q {
        for i in 0..p {
            let (ti, oi) = (&t[i * d * q..], &mut out[i * r * q..]);
            sgemm(r, q, d, 1.0, m, ms, ti, (q, 1), 0.0, oi, (q, 1));
        }
    } else {
        // out[:, :, j] (P × R) = t[:, :, j] (P × D) · mᵀ
        for j in 0..q {
            sgemm(
                p,
                r,
                d,
                1.0,
                &t[j..],
                (d * q, q),
                m,
                (ms.1, ms.0),
                0.0,
                &mut out[j..],
                (r * q, q),
            );
        }
    }
}

/// Scratch of [`leading_vectors`] for a mode of this fold: the Gram matrix, its
/// eigenvectors and eigenvalues.
pub(crate) fn leading_vectors_workspace_len(f: Fold) -> usize {
    let n = f.gram_order();
    2 * n * n + n
}

/// Uₙ: the leading left singular vectors of the mode's unfolding A₍ₙ₎, as many as the ε rule
/// wants but at most `cap`, written as a D × used row-major matrix at the start of `u`.
/// Returns (used, wanted). `sig2`, when given, receives the used σ² (descending).
///
/// Through a Gram matrix and its symmetric eigendecomposition (eigenvalues are σ², so the ε
/// rule is the SVD's): A₍ₙ₎A₍ₙ₎ᵀ when D ≤ P·Q, otherwise the smaller A₍ₙ₎ᵀA₍ₙ₎, whose
/// eigenvectors V give Uₙ = A₍ₙ₎VΣ⁻¹. Each vector's largest-magnitude entry is made positive,
/// so the factors do not depend on the eigensolver's sign choices.
pub(crate) fn leading_vectors(
    a: &[f32],
    f: Fold,
    eps: f32,
    cap: usize,
    u: &mut [f32],
    sig2: Option<&mut [f32]>,
    ws: &mut [f32],
) -> (usize, usize) {
    let n = f.gram_order();
    let (gram, rest) = ws.split_at_mut(n * n);
    let (vecs, rest) = rest.split_at_mut(n * n);
    let vals = &mut rest[..n];
    let left = f.d <= f.rest();
    if left {
        gram_left(a, f, gram);
    } else {
        gram_right(a, f, gram);
    }
    let block = cap + OVERSAMPLE;
    let wanted = if eps >= 1.0 {
        // ε = 1 keeps every direction: an f32 Gram cannot tell a σ below ~1e-3·σ₁ from
        // zero, and with all of them kept the decomposition is exact.
        eigh_desc(gram, n, vals, vecs);
        n
    } else if n >= SUBSPACE_MIN_ORDER && 4 * block <= n {
        let trace: f64 = (0..n).map(|i| f64::from(gram[i * n + i])).sum();
        top_eigenpairs(gram, n, block, vals, vecs);
        // Not reached within the block: more than the cap is wanted, which is all the cap
        // lets through anyway.
        eps_rank_of(&vals[..block], eps, trace).unwrap_or(block + 1)
    } else {
        eigh_desc(gram, n, vals, vecs);
        eps_rank(vals, eps)
    };
    let used = wanted.min(cap).min(n);
    let d = f.d;
    let u = &mut u[..d * used];
    if left {
        for j in 0..used {
            for (i, &v) in vecs[j * n..][..d].iter().enumerate() {
                u[i * used + j] = v;
            }
        }
    } else {
        // The Gram buffer is free again: V (P·Q × used, row-major) goes there.
        let v = &mut gram[..n * used];
        for j in 0..used {
            for (c, &x) in vecs[j * n..][..n].iter().enumerate() {
                v[c * used + j] = x;
            }
        }
        unfolding_times(a, f, v, used, u);
        // A₍ₙ₎V has the directions of UΣ; normalising by a σ computed through the squared
        // Gram is inaccurate for small σ, orthonormalising the columns is not.
        orthonormalize(u, d, used, (used, 1));
    }
    for j in 0..used {
        let (mut big, mut at) = (0.0f32, 0);
        for i in 0..d {
            if u[i * used + j].abs() > big {
                (big, at) = (u[i * used + j].abs(), i);
            }
        }
        if u[at * used + j] < 0.0 {
            (0..d).for_each(|i| u[i * used + j] = -u[i * used + j]);
        }
    }
    if let Some(s) = sig2 {
        s[..used].copy_from_slice(&vals[..used]);
    }
    (used, wanted)
}

/// Modified Gram–Schmidt over `count` vectors of length `len` in `u`, element i of vector j
/// at `u[i·es + j·vs]`, in place with f64 sums, twice per vector ("twice is enough" for
/// orthogonality to working precision). A vector with nothing left after the projections
/// (an all-zero or rank-deficient unfolding) is replaced by the first unit vector outside the
/// span: it carries no part of the tensor either way.
fn orthonormalize(u: &mut [f32], len: usize, count: usize, (es, vs): Strides) {
    let at = |i: usize, j: usize| i * es + j * vs;
    let dot = |u: &[f32], a: usize, b: usize| -> f64 {
        (0..len)
            .map(|i| f64::from(u[at(i, a)]) * f64::from(u[at(i, b)]))
            .sum()
    };
    // Vector j minus its parts along vectors 0..j; returns what is left's norm.
    let project_out = |u: &mut [f32], j: usize| -> f64 {
        for _ in 0..2 {
            for k in 0..j {
                let p = dot(u, j, k);
                for i in 0..len {
                    let v = f64::from(u[at(i, j)]) - p * f64::from(u[at(i, k)]);
                    u[at(i, j)] = v as f32;
                }
            }
        }
        dot(u, j, j).sqrt()
    };
    for j in 0..count {
        let before = dot(u, j, j).sqrt();
        let mut norm = project_out(u, j);
        if norm == 0.0 || norm <= 1e-6 * before {
            for e in 0..len {
                (0..len).for_each(|i| u[at(i, j)] = f32::from(u8::from(i == e)));
                norm = project_out(u, j);
                if norm > 0.5 {
                    break;
                }
            }
        }
        (0..len).for_each(|i| u[at(i, j)] = (f64::from(u[at(i, j)]) / norm) as f32);
    }
}

/// [`orthonormalize`] for vectors stored one after another (element i of vector j at
/// `u[j·len + i]`), the subspace iteration's layout: f32 sums in eight lanes, vectorised.
/// The iterated block only has to span the leading subspace to f32 precision (the Ritz
/// step makes the vectors), and the f64 scalar loops cost more than the Gram products did.
/// A vector that vanishes hands the block to the f64 routine, which replaces it.
fn orthonormalize_rows(u: &mut [f32], len: usize, count: usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::gemm::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { orthonormalize_rows_avx2(u, len, count) };
    }
    orthonormalize_rows_body(u, len, count)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn orthonormalize_rows_avx2(u: &mut [f32], len: usize, count: usize) {
    orthonormalize_rows_body(u, len, count)
}

#[inline(always)]
fn orthonormalize_rows_body(u: &mut [f32], len: usize, count: usize) {
    use crate::kernels::dot;
    for j in 0..count {
        let (done, rest) = u.split_at_mut(j * len);
        let v = &mut rest[..len];
        let before = dot(v, v).sqrt();
        for _ in 0..2 {
            for w in done.chunks_exact(len) {
                let p = dot(v, w);
                v.iter_mut().zip(w).for_each(|(a, b)| *a -= p * b);
            }
        }
        let norm = dot(v, v).sqrt();
        // Also catches NaN.
        if !(norm > 1e-6 * before && norm > 0.0) {
            return orthonormalize(u, len, count, (1, len));
        }
        v.iter_mut().for_each(|a| *a /= norm);
    }
}

/// gram (D × D) = A₍ₙ₎A₍ₙ₎ᵀ.
fn gram_left(a: &[f32], f: Fold, gram: &mut [f32]) {
    let Fold { p, d, q } = f;
    if p <= q {
        // Σ over p of X_p X_pᵀ, X_p = a[p] (D × Q)
        for i in 0..p {
            let x = &a[i * d * q..];
            let beta = if i == 0 { 0.0 } else { 1.0 };
            sgemm(d, d, q, 1.0, x, (q, 1), x, (1, q), beta, gram, (d, 1));
        }
    } else {
        // Σ over q of Y_qᵀ Y_q, Y_q = a[:, :, q] (P × D)
        for j in 0..q {
            let y = &a[j..];
            let beta = if j == 0 { 0.0 } else { 1.0 };
            sgemm(
                d,
                d,
                p,
                1.0,
                y,
                (q, d * q),
                y,
                (d * q, q),
                beta,
                gram,
                (d, 1),
            );
        }
    }
}

/// gram (PQ × PQ) = A₍ₙ₎ᵀA₍ₙ₎, column (p, q) of the unfolding at index p·Q + q.
fn gram_right(a: &[f32], f: Fold, gram: &mut [f32]) {
    let Fold { p, d, q } = f;
    let m = p * q;
    if p <= q {
        // block (p, p') = X_pᵀ X_p' (Q × Q)
        for i in 0..p {
            for k in 0..p {
                let (xi, xk) = (&a[i * d * q..], &a[k * d * q..]);
                let c = &mut gram[i * q * m + k * q..];
                sgemm(q, q, d, 1.0, xi, (1, q), xk, (q, 1), 0.0, c, (m, 1));
            }
        }
    } else {
        // block (q, q') = Y_q Y_q'ᵀ (P × P)
        for j in 0..q {
            for k in 0..q {
                let (yj, yk) = (&a[j..], &a[k..]);
                let c = &mut gram[j * m + k..];
                sgemm(
                    p,
                    p,
                    d,
                    1.0,
                    yj,
                    (d * q, q),
                    yk,
                    (q, d * q),
                    0.0,
                    c,
                    (q * m, q),
                );
            }
        }
    }
}

/// out (D × r) = A₍ₙ₎ · v, v (PQ × r) row-major.
fn unfolding_times(a: &[f32], f: Fold, v: &[f32], r: usize, out: &mut [f32]) {
    let Fold { p, d, q } = f;
    if p <= q {
        for i in 0..p {
            let beta = if i == 0 { 0.0 } else { 1.0 };
            let (x, vi) = (&a[i * d * q..], &v[i * q * r..]);
            sgemm(d, r, q, 1.0, x, (q, 1), vi, (r, 1), beta, out, (r, 1));
        }
    } else {
        for j in 0..q {
            let beta = if j == 0 { 0.0 } else { 1.0 };
            let (y, vj) = (&a[j..], &v[j * r..]);
            sgemm(
                d,
                r,
                p,
                1.0,
                y,
                (q, d * q),
                vj,
                (q * r, 1),
                beta,
                out,
                (r, 1),
            );
        }
    }
}

thread_local! {
    /// faer's eigensolver scratch. Grown, never shrunk: after the first step every
    /// decomposition of the same order finds it large enough.
    static EIGH_STACK: RefCell<Vec<MaybeUninit<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Gram orders from which the leading eigenpairs come from a subspace iteration instead of a
/// full eigendecomposition (whose O(n³) dominated compression: 392 × 392 took ~20 ms).
const SUBSPACE_MIN_ORDER: usize = 128;
/// Vectors iterated beyond the cap: they speed up the convergence of the wanted ones and let
/// the ε rule see past the cap.
const OVERSAMPLE: usize = 8;
/// Power steps before the Rayleigh–Ritz projection.
const POWER_STEPS: usize = 4;

/// The `k` leading eigenpairs of the symmetric n × n `gram`, laid out as [`eigh_desc`] lays
/// out all of them: block subspace iteration (Y = G·Q, Q = orth(Y)) from a fixed
/// pseudo-random start, then Rayleigh–Ritz on the k × k projection QᵀGQ. Activation Gram
/// matrices have fast-decaying spectra, so a few steps give the leading eigenvalues to
/// f32 precision; the ε rule then reads them against the trace. Scratch: `vecs` (n × n)
/// holds the k × n blocks, the k × k projection and its eigenpairs.
fn top_eigenpairs(gram: &[f32], n: usize, k: usize, vals: &mut [f32], vecs: &mut [f32]) {
    debug_assert!(3 * k * n + 2 * k * k + k <= n * n);
    let (out, rest) = vecs.split_at_mut(k * n);
    let (qt, rest) = rest.split_at_mut(k * n);
    let (yt, rest) = rest.split_at_mut(k * n);
    let (t, rest) = rest.split_at_mut(k * k);
    let (w, rest) = rest.split_at_mut(k * k);
    let theta = &mut rest[..k];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for v in qt.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *v = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    }
    orthonormalize_rows(qt, n, k);
    for _ in 0..POWER_STEPS {
        // Yᵀ = Qᵀ·G (G is symmetric)
        sgemm(k, n, n, 1.0, qt, (n, 1), gram, (n, 1), 0.0, yt, (n, 1));
        qt.copy_from_slice(yt);
        orthonormalize_rows(qt, n, k);
    }
    sgemm(k, n, n, 1.0, qt, (n, 1), gram, (n, 1), 0.0, yt, (n, 1));
    sgemm(k, k, n, 1.0, yt, (n, 1), qt, (1, n), 0.0, t, (k, 1));
    eigh_desc(t, k, theta, w);
    // The same floor as a full decomposition of order n applies (see `eigh_desc`).
    let floor = n as f32 * f32::EPSILON * theta[0];
    theta
        .iter_mut()
        .filter(|v| **v <= floor)
        .for_each(|v| *v = 0.0);
    // Row j of the result: Ritz vector j = Σᵢ W[j, i]·Qᵀ[i, :].
    sgemm(k, n, k, 1.0, w, (k, 1), qt, (n, 1), 0.0, out, (n, 1));
    vals[..k].copy_from_slice(theta);
    vals[k..n].fill(0.0);
}

/// Eigenpairs of the symmetric n × n `gram` (read, then free), descending: eigenvalue j in
/// `vals[j]`, its eigenvector in `vecs[j·n..][..n]`. Eigenvalues within round-off of zero
/// (negative, or below n·ε_f32 of the largest) become exactly 0: a Gram matrix in f32 turns
/// exact zeros into noise of that size, and the ε rule must not count noise as energy.
pub(crate) fn eigh_desc(gram: &[f32], n: usize, vals: &mut [f32], vecs: &mut [f32]) {
    let params: Spec<SelfAdjointEvdParams, f32> = Default::default();
    let req = self_adjoint_evd_scratch::<f32>(n, ComputeEigenvectors::Yes, Par::Seq, params);
    EIGH_STACK.with_borrow_mut(|buf| {
        let need = req.unaligned_bytes_required();
        if buf.len() < need {
            buf.resize(need, MaybeUninit::uninit());
        }
        let result = self_adjoint_evd(
            MatRef::from_column_major_slice(&gram[..n * n], n, n),
            ColMut::from_slice_mut(&mut vals[..n]).as_diagonal_mut(),
            Some(MatMut::from_column_major_slice_mut(
                &mut vecs[..n * n],
                n,
                n,
            )),
            Par::Seq,
            MemStack::new(buf),
            params,
        );
        // faer's EvdError (no std::error::Error) has one variant: the QR iteration did not
        // converge, which for a symmetric matrix of finite values does not happen.
        if let Err(e) = result {
            panic!("symmetric eigendecomposition of a {n}×{n} Gram matrix failed: {e:?}");
        }
    });
    debug_assert!(vals[..n].is_sorted(), "faer returns ascending eigenvalues");
    vals[..n].reverse();
    for j in 0..n / 2 {
        let (lo, hi) = vecs.split_at_mut((n - 1 - j) * n);
        lo[j * n..][..n].swap_with_slice(&mut hi[..n]);
    }
    let floor = vals
        .first()
        .map_or(0.0, |&top| n as f32 * f32::EPSILON * top);
    for v in &mut vals[..n] {
        if *v <= floor {
            *v = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::Lcg;

    /// A 240 × 240 Gram matrix of a low-rank-plus-noise 240 × 400 matrix: a fast-decaying
    /// spectrum like an activation's.
    fn gram(n: usize) -> Vec<f32> {
        let (rank, cols) = (12, 400);
        let mut rng = Lcg::new(11);
        let (l, r) = (rng.vec(n * rank), rng.vec(rank * cols));
        let noise = rng.vec(n * cols);
        let mut a = vec![0.0; n * cols];
        sgemm(
            n,
            cols,
            rank,
            1.0,
            &l,
            (rank, 1),
            &r,
            (cols, 1),
            0.0,
            &mut a,
            (cols, 1),
        );
        for (i, (v, e)) in a.iter_mut().zip(noise).enumerate() {
            // Decaying weights per row spread the spectrum out.
            *v = *v * (1.0 + (i / cols) as f32 * 0.01) + 0.05 * e;
        }
        let mut g = vec![0.0; n * n];
        sgemm(
            n,
            n,
            cols,
            1.0,
            &a,
            (cols, 1),
            &a,
            (1, cols),
            0.0,
            &mut g,
            (n, 1),
        );
        g
    }

    #[test]
    fn subspace_iteration_finds_the_leading_eigenpairs() {
        let n = 240;
        let g = gram(n);
        let (mut vals, mut vecs) = (vec![0.0; n], vec![0.0; n * n]);
        eigh_desc(&g, n, &mut vals, &mut vecs);
        let k = 24;
        let (mut top, mut tvecs) = (vec![0.0; n], vec![0.0; n * n]);
        top_eigenpairs(&g, n, k, &mut top, &mut tvecs);
        for j in 0..16 {
            let rel = (top[j] - vals[j]).abs() / vals[0];
            assert!(rel < 1e-5, "eigenvalue {j}: {} vs {}", top[j], vals[j]);
            // Same direction up to sign: |⟨u, v⟩| = 1.
            let dot: f32 = (0..n).map(|i| tvecs[j * n + i] * vecs[j * n + i]).sum();
            assert!(
                (dot.abs() - 1.0).abs() < 1e-3 || vals[j] - vals[j + 1] < 1e-3 * vals[0],
                "eigenvector {j}: |dot| {dot}"
            );
        }
        let trace: f64 = (0..n).map(|i| f64::from(g[i * n + i])).sum();
        for eps in [0.5, 0.8, 0.9, 0.95] {
            assert_eq!(
                eps_rank_of(&top[..k], eps, trace),
                Some(eps_rank(&vals, eps)).filter(|&r| r <= k),
                "eps {eps}"
            );
        }
    }
}
