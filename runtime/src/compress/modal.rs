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
use crate::kernels::dot;
use crate::kernels::gemm::{Strides, sgemm};
use crate::kernels::simd::dispatch_avx2;
use crate::threads;
use std::ops::Range;

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
    mode_product_into(t, f, r, m, ms, 1.0, 0.0, out);
}

/// [`mode_product`] stored as `out ← alpha·(m ×₂ t) + beta·out`: the last product of a
/// weight gradient that goes straight into an optimizer's buffer.
#[allow(clippy::too_many_arguments)] // mode_product's terms and the store's two scales
pub(crate) fn mode_product_into(
    t: &[f32],
    f: Fold,
    r: usize,
    m: &[f32],
    ms: Strides,
    alpha: f32,
    beta: f32,
    out: &mut [f32],
) {
    let Fold { p, d, q } = f;
    // The products per slice are small (one per p or q): each alone stays on one thread, so
    // the slices of P are what is spread over the threads.
    let parts = threads::parts_for(p * d * q * r);
    threads::for_runs(&mut out[..p * r * q], p, r * q, 1, parts, |ps, out| {
        let sub = Fold { p: ps.len(), d, q };
        mode_product_part(&t[ps.start * d * q..], sub, r, m, ms, alpha, beta, out);
    });
}

#[allow(clippy::too_many_arguments)] // as mode_product_into
fn mode_product_part(
    t: &[f32],
    f: Fold,
    r: usize,
    m: &[f32],
    ms: Strides,
    alpha: f32,
    beta: f32,
    out: &mut [f32],
) {
    let Fold { p, d, q } = f;
    if p <= q {
        for i in 0..p {
            let (ti, oi) = (&t[i * d * q..], &mut out[i * r * q..]);
            sgemm(r, q, d, alpha, m, ms, ti, (q, 1), beta, oi, (q, 1));
        }
    } else {
        // out[:, :, j] (P × R) = t[:, :, j] (P × D) · mᵀ
        for j in 0..q {
            sgemm(
                p,
                r,
                d,
                alpha,
                &t[j..],
                (d * q, q),
                m,
                (ms.1, ms.0),
                beta,
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

/// Scratch of [`leading_vectors`] given the last step's rank: the iterated block's room on
/// top, up to the largest block it iterates.
pub(crate) fn hinted_workspace_len(f: Fold) -> usize {
    let n = f.gram_order();
    n * n + iteration_len(n, 2 * n / 3) + n
}

/// Room for the eigenvectors: a full decomposition's, or [`subspace_iteration`]'s blocks.
fn iteration_len(n: usize, k: usize) -> usize {
    (3 * k * n + 2 * k * k + k).max(n * n)
}

/// Uₙ: the leading left singular vectors of the mode's unfolding A₍ₙ₎, as many as the ε rule
/// wants but at most `cap`, written as a D × used row-major matrix at the start of `u`.
/// Returns (used, wanted). `sig2`, when given, receives the used σ² (descending).
///
/// Through a Gram matrix and its symmetric eigendecomposition (eigenvalues are σ², so the ε
/// rule is the SVD's): A₍ₙ₎A₍ₙ₎ᵀ when D ≤ P·Q, otherwise the smaller A₍ₙ₎ᵀA₍ₙ₎, whose
/// eigenvectors V give Uₙ = A₍ₙ₎VΣ⁻¹. Each vector's largest-magnitude entry is made positive,
/// so the factors do not depend on the eigensolver's sign choices.
///
/// `last`, the rank the ε rule wanted at the last step (0 for none), lets a small Gram
/// matrix skip its full decomposition (the scratch is then [`hinted_workspace_len`]): the
/// leading eigenpairs come from a subspace iteration on a block of that rank plus
/// [`OVERSAMPLE`] while the block is at most two thirds of the order (a 64 × 64 Gram
/// matrix's decomposition takes 190 µs: the 1×1 maps of a batch of 64 compressed in 126–230
/// µs instead of 205–310). The Ritz values kept are the energy their vectors keep, so the
/// ε share holds as from scratch; a rank that grew by more than half the oversampling takes
/// the full decomposition.
#[allow(clippy::too_many_arguments)] // the unfolding, the rule, and where the factor goes
pub(crate) fn leading_vectors(
    a: &[f32],
    f: Fold,
    eps: f32,
    cap: usize,
    last: usize,
    u: &mut [f32],
    sig2: Option<&mut [f32]>,
    ws: &mut [f32],
) -> (usize, usize) {
    if f.d == 1 {
        // The factor of a mode of extent 1 is [1], whatever the tensor: no pass over it.
        u[0] = 1.0;
        return (1, 1);
    }
    let n = f.gram_order();
    let hint = last.min(n) + OVERSAMPLE;
    let hinted = last > 0 && eps < 1.0 && 3 * hint <= 2 * n;
    let (block, room) = match hinted {
        true => (hint, iteration_len(n, hint)),
        false => (cap + OVERSAMPLE, n * n),
    };
    let (gram, rest) = ws.split_at_mut(n * n);
    let (vecs, rest) = rest.split_at_mut(room);
    let vals = &mut rest[..n];
    self::gram(a, f, gram, vecs);
    let wanted = if eps >= 1.0 {
        // ε = 1 keeps every direction: an f32 Gram cannot tell a σ below ~1e-3·σ₁ from
        // zero, and with all of them kept the decomposition is exact.
        eigh_desc(gram, n, vals, vecs);
        n
    } else if hinted || iterated(n, block) {
        let trace: f64 = (0..n).map(|i| f64::from(gram[i * n + i])).sum();
        top_eigenpairs(gram, n, block, vals, vecs);
        match eps_rank_of(&vals[..block], eps, trace) {
            // With the hint, a rank near the block's end (whose last vectors converged
            // least) takes the full decomposition too.
            Some(wanted) if !hinted || wanted + OVERSAMPLE / 2 <= block => wanted,
            // Not reached within the block: more than the cap is wanted, which is all the
            // cap lets through anyway.
            None if !hinted => block + 1,
            _ => {
                eigh_desc(gram, n, vals, vecs);
                eps_rank(vals, eps)
            }
        }
    } else {
        eigh_desc(gram, n, vals, vecs);
        eps_rank(vals, eps)
    };
    let used = wanted.min(cap).min(n);
    if let Some(s) = sig2 {
        s[..used].copy_from_slice(&vals[..used]);
    }
    write_factor(a, f, used, u, ws);
    (used, wanted)
}

/// Uₙ at a fixed rank `r` (at most the Gram order), an orthonormal basis of the subspace
/// [`leading_vectors`] would span, for ranks chosen ahead (`--budget`, `--rank-rule auto`),
/// tracked from step to step: `start` (D × r, row-major) holds the previous step's Uₙ and
/// receives this one's vectors. Consecutive batches share most of their leading subspace, so
/// one [`power_step`] from the last factor finds it again. A zero `start` (the first step)
/// and small modes take the Gram path instead; a rank equal to the extent keeps everything.
pub(crate) fn fixed_vectors(
    a: &[f32],
    f: Fold,
    r: usize,
    u: &mut [f32],
    start: &mut [f32],
    ws: &mut [f32],
) {
    let n = f.gram_order();
    debug_assert!((1..=n).contains(&r));
    let d = f.d;
    let start = &mut start[..d * r];
    let u = &mut u[..d * r];
    if r == d {
        // Every direction kept: any orthonormal basis is the subspace, and the identity
        // costs no pass over the tensor (a batch of 8 at the default rank 8).
        u.fill(0.0);
        (0..d).for_each(|i| u[i * r + i] = 1.0);
        start.copy_from_slice(u);
    } else if !iterated(n, r + OVERSAMPLE) || start.iter().all(|&v| v == 0.0) {
        let (gram, rest) = ws.split_at_mut(n * n);
        let (vecs, rest) = rest.split_at_mut(n * n);
        let vals = &mut rest[..n];
        self::gram(a, f, gram, vecs);
        if iterated(n, r + OVERSAMPLE) {
            top_eigenpairs(gram, n, r + OVERSAMPLE, vals, vecs);
        } else {
            eigh_desc(gram, n, vals, vecs);
        }
        write_factor(a, f, r, u, ws);
        start.copy_from_slice(u);
    } else {
        // Every tracked vector is kept: the subspace is all that matters, so the power
        // step's basis serves without the Rayleigh–Ritz rotation (a pass over A fewer).
        let q = power_step(a, f, r, start, ws);
        for (l, row) in q.chunks_exact(d).enumerate() {
            row.iter()
                .enumerate()
                .for_each(|(i, &x)| start[i * r + l] = x);
        }
        u.copy_from_slice(start);
        fix_signs(u, d, r);
    }
}

/// Vectors the ε rule tracks from step to step for a mode of this fold and (reachable) cap,
/// see [`tracked_vectors`]: its iterated block; none where the mode takes a full
/// eigendecomposition anyway (small orders, or ε ≥ 1).
pub(crate) fn eps_block(f: Fold, cap: usize, eps: f32) -> usize {
    let block = cap + OVERSAMPLE;
    match eps < 1.0 && iterated(f.gram_order(), block) {
        true => block,
        false => 0,
    }
}

/// [`leading_vectors`] for a mode the ε rule tracks from step to step: `state` (D × block,
/// row-major, of [`eps_block`]) holds the last step's Ritz vectors and receives this one's.
/// As for fixed ranks, one [`ritz_step`] from them finds the leading subspace of a new batch
/// without the Gram matrix and its subspace iteration. The ε rule then reads the Ritz values
/// against ‖A₍ₙ₎‖²: over the vectors kept they sum to exactly the energy those vectors keep,
/// so the kept share is at least ε as from scratch; where the tracked subspace lags, the
/// rank comes out higher instead. An all-zero state (the first step) takes the Gram path and
/// seeds it: the kept vectors, then pseudo-random directions for later steps to refine.
pub(crate) fn tracked_vectors(
    a: &[f32],
    f: Fold,
    eps: f32,
    cap: usize,
    u: &mut [f32],
    state: &mut [f32],
    ws: &mut [f32],
) -> (usize, usize) {
    let (d, block) = (f.d, eps_block(f, cap, eps));
    debug_assert!(block > cap);
    let state = &mut state[..d * block];
    if state.iter().all(|&v| v == 0.0) {
        let (used, wanted) = leading_vectors(a, f, eps, cap, 0, u, None, ws);
        pseudo_random(state);
        for (row, kept) in state.chunks_exact_mut(block).zip(u.chunks_exact(used)) {
            row[..used].copy_from_slice(kept);
        }
        return (used, wanted);
    }
    let theta = ritz_step(a, f, block, state, ws);
    // Not reached within the block: more than the cap is wanted, as in `leading_vectors`.
    let wanted = eps_rank_of(theta, eps, crate::optim::sum_of_squares(a)).unwrap_or(block + 1);
    let used = wanted.min(cap);
    let u = &mut u[..d * used];
    for (kept, row) in u.chunks_exact_mut(used).zip(state.chunks_exact(block)) {
        kept.copy_from_slice(&row[..used]);
    }
    fix_signs(u, d, used);
    (used, wanted)
}

/// Scratch of [`fixed_vectors`] and [`tracked_vectors`] for a mode of this fold tracking `k`
/// vectors: the Gram path's or the [`ritz_step`]'s, whichever is larger.
pub(crate) fn tracked_workspace_len(f: Fold, k: usize) -> usize {
    leading_vectors_workspace_len(f).max(k * f.rest() + f.d * k + 2 * k * k + k)
}

/// One block power step, Q = orth(A₍ₙ₎A₍ₙ₎ᵀV) from `v` (D × k, row-major, read), returned
/// with its vectors in rows (Q[i, l] at q[l·D + i], for the vectorised orthonormalisation),
/// after the scratch Z = VᵀA₍ₙ₎ (k × P·Q) at the start of `ws`.
fn power_step<'w>(a: &[f32], f: Fold, k: usize, v: &[f32], ws: &'w mut [f32]) -> &'w [f32] {
    let (d, cols) = (f.d, f.rest());
    let (z, rest) = ws.split_at_mut(k * cols);
    let q = &mut rest[..k * d];
    factor_times_unfolding(a, f, v, (1, k), k, z);
    unfolding_times(a, f, z, (1, cols), k, q, (1, d));
    orthonormalize_rows(q, d, k);
    q
}

/// One block power step, Q = orth(A₍ₙ₎A₍ₙ₎ᵀV), and a Rayleigh–Ritz step on Q from `v`
/// (D × k, row-major), which receives the k Ritz vectors (descending); returns their Ritz
/// values (σ²), in `ws`. Applied through the unfolding, never forming the Gram matrix: three
/// products of D·P·Q·k instead of one of D·P·Q·min(D, P·Q) and the iteration on it.
fn ritz_step<'w>(a: &[f32], f: Fold, k: usize, v: &mut [f32], ws: &'w mut [f32]) -> &'w [f32] {
    let (d, cols) = (f.d, f.rest());
    power_step(a, f, k, v, ws);
    let (z, rest) = ws.split_at_mut(k * cols);
    let (q, rest) = rest.split_at_mut(k * d);
    let (t, rest) = rest.split_at_mut(k * k);
    let (w, rest) = rest.split_at_mut(k * k);
    let theta = &mut rest[..k];
    // The eigenvectors W of T = (QᵀA)(QᵀA)ᵀ rotate Q into V = Q·Wᵀ.
    factor_times_unfolding(a, f, q, (d, 1), k, z);
    sgemm(k, k, cols, 1.0, z, (cols, 1), z, (1, cols), 0.0, t, (k, 1));
    eigh_desc(t, k, theta, w);
    sgemm(
        d,
        k,
        k,
        1.0,
        q,
        (1, d),
        w,
        (1, k),
        0.0,
        &mut v[..d * k],
        (k, 1),
    );
    theta
}

/// Whether [`leading_vectors`] and [`fixed_vectors`] decompose this fold's Gram matrix in
/// full (orders below the subspace iteration's): the ε rank then counts every eigenvalue.
pub(crate) fn fully_decomposed(f: Fold) -> bool {
    (2..SUBSPACE_MIN_ORDER).contains(&f.gram_order())
}

/// Writes Uₙ (D × used, row-major) at the start of `u` from the eigenvectors in `ws`'s
/// second n × n block (as [`leading_vectors`] and [`fixed_vectors`] leave them), the first
/// block being free scratch.
fn write_factor(a: &[f32], f: Fold, used: usize, u: &mut [f32], ws: &mut [f32]) {
    let n = f.gram_order();
    let (gram, rest) = ws.split_at_mut(n * n);
    let left = f.d <= f.rest();
    let d = f.d;
    let u = &mut u[..d * used];
    if left {
        for j in 0..used {
            for (i, &v) in rest[j * n..][..d].iter().enumerate() {
                u[i * used + j] = v;
            }
        }
    } else {
        // The Gram buffer is free again: V (P·Q × used, row-major) goes there.
        let v = &mut gram[..n * used];
        for j in 0..used {
            for (c, &x) in rest[j * n..][..n].iter().enumerate() {
                v[c * used + j] = x;
            }
        }
        unfolding_times(a, f, v, (used, 1), used, u, (used, 1));
        // A₍ₙ₎V has the directions of UΣ; normalising by a σ computed through the squared
        // Gram is inaccurate for small σ, orthonormalising the columns is not. V is read:
        // the Gram buffer is scratch again.
        orthonormalize_columns(u, d, used, gram);
    }
    fix_signs(u, d, used);
}

/// Makes each column's largest-magnitude entry positive (u is D × r, row-major), so the
/// factors do not depend on the eigensolver's sign choices.
fn fix_signs(u: &mut [f32], d: usize, r: usize) {
    for j in 0..r {
        let (mut big, mut at) = (0.0f32, 0);
        for i in 0..d {
            if u[i * r + j].abs() > big {
                (big, at) = (u[i * r + j].abs(), i);
            }
        }
        if u[at * r + j] < 0.0 {
            (0..d).for_each(|i| u[i * r + j] = -u[i * r + j]);
        }
    }
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

/// Most columns [`orthonormalize_columns`] takes through CholeskyQR: its triangular factor
/// lives on the stack.
const CHOLESKY_QR_MAX: usize = 64;

/// [`orthonormalize`] for the `count` columns of a row-major `len` × `count` matrix, by
/// CholeskyQR twice (Fukaya et al. 2014): G = UᵀU as a product, its Cholesky factor L in
/// f64, U ← U·L⁻ᵀ row by row; the second pass takes out what the first's rounding left.
/// The columns come in nearly orthogonal (A₍ₙ₎V is UΣ up to the Gram matrix's rounding),
/// where that is as accurate as Householder QR at a few products' cost: classical
/// Gram–Schmidt's short row-wise sums took half of a 1×1 map's compression. The columns'
/// lengths (σ) do not matter, only how independent they are: when a column keeps less than
/// 1e-4 of its squared length off the ones before it (G's rounding, the square of U's, would
/// then show) or there are too many columns, [`orthonormalize_columns_cgs`] does it instead.
/// `g` is scratch of at least `count`² floats.
fn orthonormalize_columns(u: &mut [f32], len: usize, count: usize, g: &mut [f32]) {
    if count == 0 || len == 0 {
        return;
    }
    let fits = count <= CHOLESKY_QR_MAX && count <= len;
    if !(fits && cholesky_qr(u, len, count, g) && cholesky_qr(u, len, count, g)) {
        orthonormalize_columns_cgs(u, len, count, g);
    }
}

/// One CholeskyQR pass of [`orthonormalize_columns`]; false (U untouched) when G is too
/// ill-conditioned for it, NaN included.
fn cholesky_qr(u: &mut [f32], len: usize, count: usize, g: &mut [f32]) -> bool {
    let g = &mut g[..count * count];
    sgemm(
        count,
        count,
        len,
        1.0,
        u,
        (1, count),
        u,
        (count, 1),
        0.0,
        g,
        (count, 1),
    );
    // L (lower) in f64, then M = L⁻ᵀ (upper), both count × count on the stack.
    let mut l = [0.0f64; CHOLESKY_QR_MAX * CHOLESKY_QR_MAX];
    let at = |i: usize, j: usize| i * count + j;
    for j in 0..count {
        let own = f64::from(g[at(j, j)]);
        let d = own - (0..j).map(|k| l[at(j, k)].powi(2)).sum::<f64>();
        if d.is_nan() || d <= 1e-4 * own {
            return false;
        }
        let ljj = d.sqrt();
        l[at(j, j)] = ljj;
        for i in j + 1..count {
            let s = f64::from(g[at(i, j)]) - (0..j).map(|k| l[at(i, k)] * l[at(j, k)]).sum::<f64>();
            l[at(i, j)] = s / ljj;
        }
    }
    // Column j of L⁻¹ by forward substitution is row j of M = L⁻ᵀ, into `g` as f32.
    for j in 0..count {
        g[j * count..][..j].fill(0.0);
        let mut x = [0.0f64; CHOLESKY_QR_MAX];
        for i in j..count {
            let s = f64::from(u8::from(i == j)) - (j..i).map(|k| l[at(i, k)] * x[k]).sum::<f64>();
            x[i] = s / l[at(i, i)];
            g[at(j, i)] = x[i] as f32;
        }
    }
    rows_times(u, count, g);
    true
}

/// Each row r of `u` (rows of `count`) ← r·M (`m`, row-major), a block of rows per
/// product through a buffer on the stack.
fn rows_times(u: &mut [f32], count: usize, m: &[f32]) {
    const ROWS: usize = 64;
    let mut t = [0.0f32; ROWS * CHOLESKY_QR_MAX];
    for block in u.chunks_mut(ROWS * count) {
        let (rows, t) = (block.len() / count, &mut t[..block.len()]);
        sgemm(
            rows,
            count,
            count,
            1.0,
            block,
            (count, 1),
            m,
            (count, 1),
            0.0,
            t,
            (count, 1),
        );
        block.copy_from_slice(t);
    }
}

/// [`orthonormalize_columns`] as classical Gram–Schmidt applied twice (as accurate as the
/// modified one run twice): each pass sums a column's projections on the ones before it over
/// the rows, then subtracts them row by row, so every access runs along a row. `p` (count
/// floats) is scratch. A column that vanishes hands the matrix to [`orthonormalize`], which
/// replaces it.
fn orthonormalize_columns_cgs(u: &mut [f32], len: usize, count: usize, p: &mut [f32]) {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { orthonormalize_columns_avx2(u, len, count, p) });
    orthonormalize_columns_body(u, len, count, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn orthonormalize_columns_avx2(u: &mut [f32], len: usize, count: usize, p: &mut [f32]) {
    orthonormalize_columns_body(u, len, count, p)
}

#[inline(always)]
fn orthonormalize_columns_body(u: &mut [f32], len: usize, count: usize, p: &mut [f32]) {
    let norm = |u: &[f32], j: usize| -> f32 {
        u.chunks_exact(count)
            .map(|row| row[j] * row[j])
            .sum::<f32>()
            .sqrt()
    };
    for j in 0..count {
        let before = norm(u, j);
        let p = &mut p[..j];
        for _ in 0..2 {
            p.fill(0.0);
            for row in u.chunks_exact(count) {
                let x = row[j];
                p.iter_mut().zip(&row[..j]).for_each(|(p, &r)| *p += x * r);
            }
            for row in u.chunks_exact_mut(count) {
                let (done, rest) = row.split_at_mut(j);
                rest[0] -= dot(done, p);
            }
        }
        let norm = norm(u, j);
        // Also catches NaN.
        if !(norm > 1e-6 * before && norm > 0.0) {
            return orthonormalize(u, len, count, (count, 1));
        }
        u.chunks_exact_mut(count).for_each(|row| row[j] /= norm);
    }
}

/// [`orthonormalize`] for vectors stored one after another (element i of vector j at
/// `u[j·len + i]`), the subspace iteration's layout: f32 sums in eight lanes, vectorised.
/// The iterated block only has to span the leading subspace to f32 precision (the Ritz
/// step makes the vectors), and the f64 scalar loops cost more than the Gram products did.
/// A vector that vanishes hands the block to the f64 routine, which replaces it.
fn orthonormalize_rows(u: &mut [f32], len: usize, count: usize) {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { orthonormalize_rows_avx2(u, len, count) });
    orthonormalize_rows_body(u, len, count)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn orthonormalize_rows_avx2(u: &mut [f32], len: usize, count: usize) {
    orthonormalize_rows_body(u, len, count)
}

#[inline(always)]
fn orthonormalize_rows_body(u: &mut [f32], len: usize, count: usize) {
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

/// The Gram matrix of the mode's unfolding on its smaller side, gram (n × n): A₍ₙ₎A₍ₙ₎ᵀ when
/// D ≤ P·Q, else A₍ₙ₎ᵀA₍ₙ₎ with column (p, q) of the unfolding at index p·Q + q. `stage`
/// (n × n floats, free scratch) holds parts of the unfolding copied into one matrix.
///
/// Many small products (one per p or q, as deep as Q or D) ran at a fraction of what one
/// deep product does: the micro-tiles' edges and the packing of each are paid P² times.
fn gram(a: &[f32], f: Fold, gram: &mut [f32], stage: &mut [f32]) {
    let Fold { p, d, q } = f;
    let n = f.gram_order();
    let left = d <= f.rest();
    if left && d <= SMALL_GRAM {
        return small_gram(a, f, gram);
    }
    if p == 1 || q == 1 {
        // The unfolding has uniform strides: one product.
        let s = if p == 1 { (q, 1) } else { (1, d) };
        let (xs, depth) = if left { (s, f.rest()) } else { ((s.1, s.0), d) };
        upper_gram(n, depth, a, xs, 0.0, gram);
    } else if left && p.max(q) >= n {
        // G = Σ over p of X_p X_pᵀ, X_p = a[p] (D × Q), or Σ over q of Y_qᵀ Y_q,
        // Y_q = a[:, :, q] (P × D): whichever makes fewer products, each at least n deep.
        let (count, step, xs) = if p <= q {
            (p, d * q, (q, 1))
        } else {
            (q, 1, (q, d * q))
        };
        for i in 0..count {
            let beta = if i == 0 { 0.0 } else { 1.0 };
            upper_gram(n, p.max(q), &a[i * step..], xs, beta, gram);
        }
    } else if left {
        // Q < D: as many whole X_p side by side as fit n columns.
        let blocks = n / q;
        for (chunk, p0) in (0..p).step_by(blocks).enumerate() {
            let w = blocks.min(p - p0) * q;
            for r in 0..d {
                for (i, dst) in stage[r * w..][..w].chunks_exact_mut(q).enumerate() {
                    dst.copy_from_slice(&a[((p0 + i) * d + r) * q..][..q]);
                }
            }
            let beta = if chunk == 0 { 0.0 } else { 1.0 };
            upper_gram(n, w, stage, (w, 1), beta, gram);
        }
    } else {
        // n rows of the unfolding (each P runs of Q floats) at a time.
        for (chunk, d0) in (0..d).step_by(n).enumerate() {
            let rows = n.min(d - d0);
            for r in 0..rows {
                for (i, dst) in stage[r * n..][..n].chunks_exact_mut(q).enumerate() {
                    dst.copy_from_slice(&a[(i * d + d0 + r) * q..][..q]);
                }
            }
            let beta = if chunk == 0 { 0.0 } else { 1.0 };
            upper_gram(n, rows, stage, (1, n), beta, gram);
        }
    }
    for i in 1..n {
        for j in 0..i {
            gram[i * n + j] = gram[j * n + i];
        }
    }
}

/// Gram orders computed by [`small_gram`].
const SMALL_GRAM: usize = 8;
/// Rows of one [`upper_gram`] strip: a multiple of the GEMM's micro-tile in both directions.
const GRAM_STRIP: usize = 48;

/// The upper triangle (diagonal blocks whole) of c (n × n) ← β·c + X·Xᵀ, X (n × k) with
/// element (i, l) at x[i·xs.0 + l·xs.1]: strips of rows, each from its diagonal on, about
/// half the products of a full GEMM. The lower triangle is left for the caller to mirror.
fn upper_gram(n: usize, k: usize, x: &[f32], xs: Strides, beta: f32, c: &mut [f32]) {
    let strip = if n <= 2 * GRAM_STRIP { n } else { GRAM_STRIP };
    for i0 in (0..n).step_by(strip) {
        let h = strip.min(n - i0);
        let xi = &x[i0 * xs.0..];
        sgemm(
            h,
            n - i0,
            k,
            1.0,
            xi,
            xs,
            xi,
            (xs.1, xs.0),
            beta,
            &mut c[i0 * n + i0..],
            (n, 1),
        );
    }
}

/// A₍ₙ₎A₍ₙ₎ᵀ for D ≤ [`SMALL_GRAM`]: each column of the unfolding is one eight-lane vector
/// and adds its outer product to eight accumulator vectors. Through GEMM these orders waste
/// most of a micro-tile and pack the whole tensor twice (7 × 7 took ~1 ms for 376k floats).
fn small_gram(a: &[f32], f: Fold, gram: &mut [f32]) {
    let Fold { p, d, q } = f;
    assert!((1..=SMALL_GRAM).contains(&d) && a.len() >= p * d * q);
    if d == 1 {
        // A mode of extent 1 (the spatial modes of 1 × 1 maps): the squared norm.
        let a = &a[..p * q];
        gram[0] = a.chunks(256).map(|c| f64::from(dot(c, c))).sum::<f64>() as f32;
        return;
    }
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks), the extent was checked.
    dispatch_avx2!(unsafe { small_gram_avx2(a, f, gram) });
    let mut sums = Sums::default();
    for x in a.chunks_exact(d * q).take(p) {
        for j in 0..q {
            let mut v = [0f32; SMALL_GRAM];
            (0..d).for_each(|i| v[i] = x[i * q + j]);
            for (row, &vi) in sums.run.iter_mut().zip(&v) {
                row.iter_mut().zip(&v).for_each(|(s, &vj)| *s += vi * vj);
            }
            sums.count();
        }
    }
    sums.write(d, gram);
}

/// [`small_gram`]'s accumulators: f32 sums over a run of a few hundred columns, then f64: a
/// single f32 sum over ~10⁵ columns would lose digits the ε rule reads.
#[derive(Default)]
struct Sums {
    run: [[f32; SMALL_GRAM]; SMALL_GRAM],
    columns: usize,
    total: [[f64; SMALL_GRAM]; SMALL_GRAM],
}

impl Sums {
    const RUN: usize = 256;

    fn count(&mut self) {
        self.columns += 1;
        if self.columns == Self::RUN {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let (run, total) = (
            self.run.iter_mut().flatten(),
            self.total.iter_mut().flatten(),
        );
        for (s, t) in run.zip(total) {
            *t += f64::from(*s);
            *s = 0.0;
        }
        self.columns = 0;
    }

    fn write(mut self, d: usize, gram: &mut [f32]) {
        self.flush();
        for i in 0..d {
            for j in 0..d {
                gram[i * d + j] = self.total[i][j] as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn small_gram_avx2(a: &[f32], f: Fold, gram: &mut [f32]) {
    use std::arch::x86_64::*;
    let Fold { p, d, q } = f;
    let lanes: [i32; SMALL_GRAM] = std::array::from_fn(|i| if i < d { -1 } else { 0 });
    let offsets: [i32; SMALL_GRAM] = std::array::from_fn(|i| (i.min(d - 1) * q) as i32);
    // SAFETY (every load): lane or row i < d of column (p, j) reads a[(p·d + i)·q + j],
    // inside the tensor (`small_gram` checked p·d·q ≤ len); masked-off lanes read nothing.
    let (mask, index) = unsafe {
        (
            _mm256_loadu_si256(lanes.as_ptr().cast()),
            _mm256_loadu_si256(offsets.as_ptr().cast()),
        )
    };
    let mut sums = Sums::default();
    let mut acc = [_mm256_setzero_ps(); SMALL_GRAM];
    for i in 0..p {
        let x = unsafe { a.as_ptr().add(i * d * q) };
        for j in 0..q {
            let col = unsafe { x.add(j) };
            let v = if q == 1 {
                unsafe { _mm256_maskload_ps(col, mask) }
            } else {
                let m = _mm256_castsi256_ps(mask);
                unsafe { _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), col, index, m) }
            };
            for (r, acc) in acc.iter_mut().enumerate().take(d) {
                let vr = _mm256_set1_ps(unsafe { *col.add(r * q) });
                *acc = _mm256_fmadd_ps(vr, v, *acc);
            }
            if sums.columns + 1 == Sums::RUN {
                for (row, v) in sums.run.iter_mut().zip(&mut acc) {
                    unsafe { _mm256_storeu_ps(row.as_mut_ptr(), *v) };
                    *v = _mm256_setzero_ps();
                }
            }
            sums.count();
        }
    }
    for (row, v) in sums.run.iter_mut().zip(&acc) {
        unsafe { _mm256_storeu_ps(row.as_mut_ptr(), *v) };
    }
    sums.write(d, gram);
}

/// out (D × r) = A₍ₙ₎ · v, v (PQ × r) with element (c, k) at v[c·vs.0 + k·vs.1], out's
/// (i, k) at out[i·os.0 + k·os.1]. Spread over the threads along out's outer axis (D or r).
pub(crate) fn unfolding_times(
    a: &[f32],
    f: Fold,
    v: &[f32],
    vs: Strides,
    r: usize,
    out: &mut [f32],
    os: Strides,
) {
    let d = f.d;
    let parts = threads::parts_for(d * f.rest() * r);
    if r * os.1 <= os.0 {
        threads::for_runs(&mut out[..d * os.0], d, os.0, 1, parts, |rows, out| {
            unfolding_times_part(a, f, rows, v, vs, r, out, os);
        });
    } else {
        debug_assert!(
            d * os.0 <= os.1,
            "out is D × r or r × D, each row in one piece"
        );
        threads::for_runs(&mut out[..r * os.1], r, os.1, 1, parts, |ks, out| {
            unfolding_times_part(a, f, 0..d, &v[ks.start * vs.1..], vs, ks.len(), out, os);
        });
    }
}

/// Rows `rows` of [`unfolding_times`]'s product, over `r` of its columns: `v` and `out`
/// start at the first of them, `out` at the first of the rows.
#[allow(clippy::too_many_arguments)] // the product's operands and the part of it
fn unfolding_times_part(
    a: &[f32],
    f: Fold,
    rows: Range<usize>,
    v: &[f32],
    vs: Strides,
    r: usize,
    out: &mut [f32],
    os: Strides,
) {
    let Fold { p, d, q } = f;
    let m = rows.len();
    if p <= q {
        for i in 0..p {
            let beta = if i == 0 { 0.0 } else { 1.0 };
            let (x, vi) = (&a[i * d * q + rows.start * q..], &v[i * q * vs.0..]);
            sgemm(m, r, q, 1.0, x, (q, 1), vi, vs, beta, out, os);
        }
    } else {
        for j in 0..q {
            let beta = if j == 0 { 0.0 } else { 1.0 };
            let (y, vj) = (&a[j + rows.start * q..], &v[j * vs.0..]);
            let vjs = (q * vs.0, vs.1);
            sgemm(m, r, p, 1.0, y, (q, d * q), vj, vjs, beta, out, os);
        }
    }
}

/// out (r × P·Q) = uᵀ · A₍ₙ₎, uᵀ (r × D) with element (k, i) at u[k·us.0 + i·us.1]: the
/// unfolding's columns in the basis u. Spread over the threads by rows of out.
fn factor_times_unfolding(a: &[f32], f: Fold, u: &[f32], us: Strides, r: usize, out: &mut [f32]) {
    let cols = f.rest();
    let parts = threads::parts_for(r * f.d * cols);
    threads::for_runs(&mut out[..r * cols], r, cols, 1, parts, |ks, out| {
        factor_times_unfolding_part(a, f, &u[ks.start * us.0..], us, ks.len(), out);
    });
}

fn factor_times_unfolding_part(
    a: &[f32],
    f: Fold,
    u: &[f32],
    us: Strides,
    r: usize,
    out: &mut [f32],
) {
    let Fold { p, d, q } = f;
    let cols = f.rest();
    if p <= q {
        for i in 0..p {
            let (x, o) = (&a[i * d * q..], &mut out[i * q..]);
            sgemm(r, q, d, 1.0, u, us, x, (q, 1), 0.0, o, (cols, 1));
        }
    } else {
        for j in 0..q {
            let (y, o) = (&a[j..], &mut out[j..]);
            sgemm(r, p, d, 1.0, u, us, y, (1, d * q), 0.0, o, (cols, q));
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
/// f32 precision; the ε rule then reads them against the trace. Scratch: `vecs` (n × n, or
/// [`iteration_len`] for a block past a quarter of n) holds the k × n blocks, the k × k
/// projection and its eigenpairs.
fn top_eigenpairs(gram: &[f32], n: usize, k: usize, vals: &mut [f32], vecs: &mut [f32]) {
    pseudo_random(&mut vecs[k * n..2 * k * n]);
    subspace_iteration(gram, n, k, POWER_STEPS, vals, vecs);
}

/// A fixed xorshift sequence in [-0.5, 0.5): start vectors no activation is orthogonal to,
/// the same on every run.
fn pseudo_random(v: &mut [f32]) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for x in v {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *x = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    }
}

/// Whether the `block` leading eigenpairs of an order-n Gram matrix come from a subspace
/// iteration rather than a full decomposition.
fn iterated(n: usize, block: usize) -> bool {
    n >= SUBSPACE_MIN_ORDER && 4 * block <= n
}

/// [`top_eigenpairs`] from the start block the caller wrote in `vecs[k·n..2·k·n]` (k rows of
/// n, any scale), with `steps` power steps before the Rayleigh–Ritz projection.
fn subspace_iteration(
    gram: &[f32],
    n: usize,
    k: usize,
    steps: usize,
    vals: &mut [f32],
    vecs: &mut [f32],
) {
    debug_assert!(3 * k * n + 2 * k * k + k <= vecs.len());
    let (out, rest) = vecs.split_at_mut(k * n);
    let (qt, rest) = rest.split_at_mut(k * n);
    let (yt, rest) = rest.split_at_mut(k * n);
    let (t, rest) = rest.split_at_mut(k * k);
    let (w, rest) = rest.split_at_mut(k * k);
    let theta = &mut rest[..k];
    orthonormalize_rows(qt, n, k);
    for _ in 0..steps {
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

/// The basis an eigendecomposition that has no answer falls back to: every shape and rank
/// the kernels assume holds, with no energy counted.
fn identity_basis(n: usize, vals: &mut [f32], vecs: &mut [f32]) {
    vals[..n].fill(0.0);
    vecs[..n * n].fill(0.0);
    (0..n).for_each(|j| vecs[j * n + j] = 1.0);
}

/// Eigenpairs of the symmetric n × n `gram` (read, then free), descending: eigenvalue j in
/// `vals[j]`, its eigenvector in `vecs[j·n..][..n]`. Eigenvalues within round-off of zero
/// (negative, or below n·ε_f32 of the largest) become exactly 0: a Gram matrix in f32 turns
/// exact zeros into noise of that size, and the ε rule must not count noise as energy.
pub(crate) fn eigh_desc(gram: &[f32], n: usize, vals: &mut [f32], vecs: &mut [f32]) {
    // A NaN or infinity in the activation (a diverged run, hostile weights) reaches the Gram
    // matrix, which faer neither sorts nor always converges on. The step's result is not a
    // number either way; the identity basis keeps every shape and rank the kernels assume.
    if !gram[..n * n].iter().all(|v| v.is_finite()) {
        identity_basis(n, vals, vecs);
        return;
    }
    let params: Spec<SelfAdjointEvdParams, f32> = Default::default();
    let req = self_adjoint_evd_scratch::<f32>(n, ComputeEigenvectors::Yes, Par::Seq, params);
    let converged = EIGH_STACK.with_borrow_mut(|buf| {
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
        result.is_ok()
    });
    // faer's one error: the QR iteration did not converge. A fuzzed plan's weights near
    // f32::MAX gave a finite Gram matrix on which it does not; such a step's numbers are
    // garbage either way, and a panic would take the process down.
    if !converged {
        identity_basis(n, vals, vecs);
        return;
    }
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

    /// Every way `gram` forms the product (small orders, uniform strides on either side,
    /// direct loops over p or q, staged blocks, staged rows over several chunks, strips)
    /// against an f64 sum over the unfolding's elements.
    #[test]
    fn gram_matches_the_unfolding_product_on_every_path() {
        let mut rng = Lcg::new(5);
        for (p, d, q) in [
            (1, 8, 500),
            (300, 7, 1),
            (40, 5, 6),
            (700, 1, 1),
            (1, 30, 400),
            (200, 30, 1),
            (3, 20, 40),
            (60, 12, 3),
            (5, 40, 6),
            (6, 300, 7),
            (4, 130, 50),
            (2, 150, 60),
        ] {
            let f = Fold { p, d, q };
            let a = rng.vec(p * d * q);
            let n = f.gram_order();
            let left = d <= f.rest();
            let mut g = vec![f32::NAN; n * n];
            let mut stage = vec![f32::NAN; n * n];
            super::gram(&a, f, &mut g, &mut stage);
            let col = |c: usize| (c / q, c % q);
            let at = |r: usize, c: usize| {
                let (i, j) = col(c);
                f64::from(a[(i * d + r) * q + j])
            };
            for x in 0..n {
                for y in 0..n {
                    let want: f64 = if left {
                        (0..f.rest()).map(|c| at(x, c) * at(y, c)).sum()
                    } else {
                        (0..d).map(|r| at(r, x) * at(r, y)).sum()
                    };
                    let scale = (0..n).map(|i| f64::from(g[i * n + i])).fold(0.0, f64::max);
                    let got = f64::from(g[x * n + y]);
                    assert!(
                        (got - want).abs() <= 1e-5 * scale,
                        "{f:?} at ({x}, {y}): {got} vs {want}"
                    );
                }
            }
        }
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

    /// Columns made orthonormal spanning what they spanned: nearly orthogonal ones (a
    /// factor from the unfolding's other side, through CholeskyQR), ill-conditioned ones and a rank-deficient set
    /// (through Gram–Schmidt, which replaces the lost column), more columns than CholeskyQR
    /// takes, and NaN.
    #[test]
    fn columns_come_out_orthonormal_with_their_span() {
        let mut rng = Lcg::new(17);
        let (len, count) = (300, 20);
        let base = rng.vec(len * count);
        let scaled = |f: &dyn Fn(usize) -> f32| -> Vec<f32> {
            base.iter()
                .enumerate()
                .map(|(i, &v)| v * f(i % count))
                .collect()
        };
        let mut deficient = base.clone();
        for i in 0..len {
            deficient[i * count + 7] = 2.0 * deficient[i * count + 3];
        }
        let cases: Vec<(&str, Vec<f32>, usize)> = vec![
            ("well conditioned", scaled(&|_| 1.0), count),
            (
                "graded 1e-4",
                scaled(&|j| 10f32.powf(-4.0 * j as f32 / count as f32)),
                count,
            ),
            ("rank deficient", deficient, count),
            ("wide", rng.vec(len * 70), 70),
        ];
        for (what, original, count) in cases {
            let mut u = original.clone();
            let mut g = vec![0.0; count * count];
            orthonormalize_columns(&mut u, len, count, &mut g);
            for a in 0..count {
                for b in 0..count {
                    let d: f64 = (0..len)
                        .map(|i| f64::from(u[i * count + a]) * f64::from(u[i * count + b]))
                        .sum();
                    let want = f64::from(u8::from(a == b));
                    assert!((d - want).abs() < 1e-5, "{what}: <{a}, {b}> = {d}");
                }
            }
            if what == "rank deficient" {
                continue;
            }
            // Each original column lies in the new span: nothing is left after projecting.
            for j in 0..count {
                let col: Vec<f64> = (0..len)
                    .map(|i| f64::from(original[i * count + j]))
                    .collect();
                let mut left = col.clone();
                for k in 0..count {
                    let p: f64 = (0..len).map(|i| col[i] * f64::from(u[i * count + k])).sum();
                    (0..len).for_each(|i| left[i] -= p * f64::from(u[i * count + k]));
                }
                let (l, c) = (
                    left.iter().map(|v| v * v).sum::<f64>(),
                    col.iter().map(|v| v * v).sum::<f64>(),
                );
                assert!(l.sqrt() < 1e-4 * c.sqrt(), "{what}: column {j} left {l}");
            }
        }
        // A NaN is not hidden: it reaches the factor (and the loss) rather than turning
        // into numbers.
        let mut u = rng.vec(len * count);
        u[5] = f32::NAN;
        orthonormalize_columns(&mut u, len, count, &mut vec![0.0; count * count]);
        assert!(u.iter().any(|v| v.is_nan()), "NaN");
    }
}
