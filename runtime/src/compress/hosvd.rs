//! Truncated HOSVD with the ε rule (the paper's compressor), and weight gradients computed
//! from the factors.
//!
//! An N-mode tensor (N = 2, 3 or 4) becomes one packed buffer, sized at per-mode rank caps
//! so the plan can reserve it before the ranks are known:
//! `[r_1..r_N as f32 | U_1 (D_1 × r_1) in a slot of D_1·cap_1 | … | U_N | core (r_1×…×r_N) in a
//! slot of Π cap_n]`, every matrix row-major.

use super::modal::{
    Fold, eps_block, fixed_vectors, fully_decomposed, hinted_workspace_len, leading_vectors,
    leading_vectors_workspace_len, mode_product, mode_product_into, tracked_vectors,
    tracked_workspace_len, unfolding_times,
};
use crate::kernels::conv;
use crate::kernels::gemm::sgemm;
use crate::kernels::geometry::Conv2dGeom;

/// Ranks of one compression, per mode (only the first N entries are meaningful).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranks {
    /// Stored: the ε rank, truncated to the cap.
    pub used: [usize; 4],
    /// The ε rule's rank before the cap; above `used` when the cap truncated.
    pub wanted: [usize; 4],
}

/// How each mode's rank is decided.
pub enum Rule<'a> {
    /// The paper's ε rule, capped. Modes whose leading vectors come from a subspace
    /// iteration track them from step to step in the state (of [`eps_state_len`]; zeros
    /// before the first step; empty when no mode does).
    Eps(f32, &'a mut [f32]),
    /// The caps themselves, every step: the factors are tracked from step to step in the
    /// state (the previous step's factors, laid out as in the packed buffer: U₁ in a slot of
    /// D₁·cap₁, …; zeros before the first step), of [`state_len`].
    Fixed(&'a mut [f32]),
}

impl Rule<'_> {
    /// ε for the ε rule, None for fixed ranks: what [`workspace_len`] takes.
    pub fn eps(&self) -> Option<f32> {
        match self {
            Rule::Eps(eps, _) => Some(*eps),
            Rule::Fixed(_) => None,
        }
    }
}

/// Floats of a fixed-rank compression's state: every mode's factor at its cap.
pub fn state_len(dims: &[usize], caps: &[usize]) -> usize {
    dims.iter().zip(caps).map(|(d, c)| d * c).sum()
}

/// Vectors of mode n the ε rule tracks from step to step (0 for none).
fn eps_tracked(dims: &[usize], caps: &[usize], n: usize, eps: f32) -> usize {
    eps_block(Fold::of(dims, n), reachable(dims, caps, n), eps)
}

/// Floats of an ε-rule compression's state: the vectors each tracked mode carries over, or
/// for a matrix ([`compress_matrix`]) the rank the last step wanted.
pub fn eps_state_len(dims: &[usize], caps: &[usize], eps: f32) -> usize {
    check(dims, caps);
    if small_matrix(dims).is_some() {
        return usize::from(eps < 1.0);
    }
    (0..dims.len())
        .map(|n| dims[n] * eps_tracked(dims, caps, n, eps))
        .sum()
}

pub fn packed_len(dims: &[usize], caps: &[usize]) -> usize {
    check(dims, caps);
    dims.len()
        + dims.iter().zip(caps).map(|(d, c)| d * c).sum::<usize>()
        + caps.iter().product::<usize>()
}

/// The rank a mode can actually have: its cap, and no more than either side of its unfolding.
fn reachable(dims: &[usize], caps: &[usize], n: usize) -> usize {
    caps[n].min(Fold::of(dims, n).gram_order())
}

/// The largest tensor met between two mode products of the core computation (or of the
/// reconstruction): a single product by the first mode applied already bounds it.
fn chain_buffer_len(dims: &[usize], caps: &[usize]) -> usize {
    let numel: usize = dims.iter().product();
    (0..dims.len())
        .map(|n| numel / dims[n].max(1) * reachable(dims, caps, n))
        .max()
        .unwrap_or(0)
}

/// Scratch of [`compress`]: `eps` for [`Rule::Eps`], None for [`Rule::Fixed`].
pub fn workspace_len(dims: &[usize], caps: &[usize], eps: Option<f32>) -> usize {
    check(dims, caps);
    let Some(eps) = eps else {
        let seq = Sequential::new(dims, caps);
        return seq.first.max(2 * seq.half);
    };
    if let Some((s, _)) = small_matrix(dims) {
        return hinted_workspace_len(Fold::of(dims, s));
    }
    let factors = (0..dims.len())
        .map(|n| match eps_tracked(dims, caps, n, eps) {
            0 => leading_vectors_workspace_len(Fold::of(dims, n)),
            k => tracked_workspace_len(Fold::of(dims, n), k),
        })
        .max()
        .unwrap_or(0);
    factors.max(2 * chain_buffer_len(dims, caps))
}

/// The order in which the modes are truncated (the core's mode products, and fixed ranks'
/// factors): the most reducing first keeps the tensors that follow small.
fn reducing_order(dims: &[usize], ranks: &[usize]) -> [usize; 4] {
    let mut order = [0, 1, 2, 3];
    order[..dims.len()].sort_unstable_by(|&x, &y| (ranks[x] * dims[y]).cmp(&(ranks[y] * dims[x])));
    order
}

/// How [`compress_sequential`] goes: the order in which it truncates the modes, the rank of
/// each (its cap, but no more than the tensor it meets still has: a mode's rank cannot pass
/// the product of the others' once they are truncated), and its scratch: what the first
/// mode's factor needs (nothing else is live then), and the size of each of the two buffers
/// that hold the partly truncated tensor, each large enough for the next mode's factor
/// scratch too.
struct Sequential {
    order: [usize; 4],
    ranks: [usize; 4],
    first: usize,
    half: usize,
}

impl Sequential {
    fn new(dims: &[usize], caps: &[usize]) -> Self {
        let nm = dims.len();
        let mut ranks = [0; 4];
        (0..nm).for_each(|n| ranks[n] = reachable(dims, caps, n));
        let order = reducing_order(dims, &ranks);
        let mut shape = [0; 4];
        shape[..nm].copy_from_slice(dims);
        let (mut first, mut later) = (0, 0);
        for (step, &n) in order[..nm].iter().enumerate() {
            let f = Fold::of(&shape[..nm], n);
            ranks[n] = ranks[n].min(f.gram_order());
            let need = tracked_workspace_len(f, ranks[n]);
            match step {
                0 => first = need,
                _ => later = later.max(need),
            }
            shape[n] = ranks[n];
        }
        let half = chain_buffer_len(dims, caps).max(later);
        Sequential {
            order,
            ranks,
            first,
            half,
        }
    }
}

pub fn reconstruct_workspace_len(dims: &[usize], caps: &[usize]) -> usize {
    check(dims, caps);
    2 * chain_buffer_len(dims, caps)
}

/// Compresses `a` (shape `dims`) into `packed` (of [`packed_len`]): every mode's factor at
/// the rank `rule` gives, at most `caps[n]`, then the core S = A ×₁ U₁ᵀ … ×ₙ Uₙᵀ.
pub fn compress(
    a: &[f32],
    dims: &[usize],
    rule: Rule,
    caps: &[usize],
    packed: &mut [f32],
    ws: &mut [f32],
) -> Ranks {
    check(dims, caps);
    debug_assert_eq!(a.len(), dims.iter().product::<usize>());
    debug_assert_eq!(packed.len(), packed_len(dims, caps));
    debug_assert!(ws.len() >= workspace_len(dims, caps, rule.eps()));
    let (eps, state) = match rule {
        Rule::Eps(eps, state) => (eps, state),
        Rule::Fixed(state) => return compress_sequential(a, dims, state, caps, packed, ws),
    };
    if let Some(sides) = small_matrix(dims) {
        return compress_matrix(a, dims, (eps, state), caps, sides, packed, ws);
    }
    let nm = dims.len();
    let mut ranks = Ranks {
        used: [0; 4],
        wanted: [0; 4],
    };
    let (header, body) = packed.split_at_mut(nm);
    let (factors, core) = body.split_at_mut(body.len() - caps.iter().product::<usize>());
    let mut rest = &mut factors[..];
    let mut slot = 0;
    for n in 0..nm {
        let (u, tail) = rest.split_at_mut(dims[n] * caps[n]);
        rest = tail;
        let cap = reachable(dims, caps, n);
        let f = Fold::of(dims, n);
        let (used, wanted) = match eps_block(f, cap, eps) {
            0 => leading_vectors(a, f, eps, cap, 0, u, None, ws),
            block => {
                let r = tracked_vectors(a, f, eps, cap, u, &mut state[slot..], ws);
                slot += dims[n] * block;
                r
            }
        };
        ranks.used[n] = used;
        ranks.wanted[n] = wanted;
        header[n] = used as f32;
    }
    let order = reducing_order(dims, &ranks.used);
    let mut shape = [0; 4];
    shape[..nm].copy_from_slice(dims);
    let half = chain_buffer_len(dims, caps);
    let (b0, b1) = ws.split_at_mut(half);
    for (step, &n) in order[..nm].iter().enumerate() {
        let f = Fold::of(&shape[..nm], n);
        let r = ranks.used[n];
        let u = factor(factors, dims, caps, n);
        // Uₙᵀ: the stored D × r matrix read column-wise.
        let ut = (1, r);
        let out_len = f.p * r * f.q;
        match (step, step + 1 == nm) {
            (0, _) => mode_product(a, f, r, u, ut, &mut b0[..out_len]),
            (_, true) if step % 2 == 1 => mode_product(b0, f, r, u, ut, &mut core[..out_len]),
            (_, true) => mode_product(b1, f, r, u, ut, &mut core[..out_len]),
            _ if step % 2 == 1 => mode_product(b0, f, r, u, ut, &mut b1[..out_len]),
            _ => mode_product(b1, f, r, u, ut, &mut b0[..out_len]),
        }
        shape[n] = r;
    }
    ranks
}

/// The two modes of a tensor whose other extents are 1, (smaller, larger): a matrix, whose
/// Gram matrix is small enough to be decomposed in full.
fn small_matrix(dims: &[usize]) -> Option<(usize, usize)> {
    let mut wide = (0..dims.len()).filter(|&n| dims[n] > 1);
    let (i, j) = (wide.next()?, wide.next()?);
    let sides = match (wide.next(), dims[i] <= dims[j]) {
        (Some(_), _) => return None,
        (None, true) => (i, j),
        (None, false) => (j, i),
    };
    fully_decomposed(Fold::of(dims, sides.0)).then_some(sides)
}

/// [`compress`] for a matrix A (modes `s` × `b`, s the smaller side, the other modes of
/// extent 1) whose Gram matrix is decomposed in full: the truncated HOSVD is the truncated
/// SVD, Uₛ·Uₛᵀ·A, both sides at the ε rank of the one Gram matrix they share. Uₛ comes from
/// its eigenvectors; side b stores the rows of UₛᵀA as its factor (b × r, columns of length
/// σ, not orthonormal) under an identity core: HOSVD's reconstruction Uₛ·S·U_bᵀ without
/// orthonormalising U_b or the core's product over A (on a 64 × 960 map, the batch by the
/// channels of a 1×1 map at 32², those took a third of its compression). `state` holds the
/// rank the ε rule wanted at the last step, which sizes [`leading_vectors`]' block.
fn compress_matrix(
    a: &[f32],
    dims: &[usize],
    (eps, state): (f32, &mut [f32]),
    caps: &[usize],
    (s, b): (usize, usize),
    packed: &mut [f32],
    ws: &mut [f32],
) -> Ranks {
    let nm = dims.len();
    let (header, body) = packed.split_at_mut(nm);
    let (factors, core) = body.split_at_mut(body.len() - caps.iter().product::<usize>());
    let slot = |n: usize| slot(dims, caps, n);
    let mut ranks = Ranks {
        used: [0; 4],
        wanted: [0; 4],
    };
    for n in 0..nm {
        factors[slot(n)] = 1.0;
        (ranks.used[n], ranks.wanted[n]) = (1, 1);
    }
    let (lo, hi) = (s.min(b), s.max(b));
    let (below, above) = factors.split_at_mut(slot(hi));
    let (u_lo, u_hi) = (&mut below[slot(lo)..], above);
    let (us, ub) = if s < b { (u_lo, u_hi) } else { (u_hi, u_lo) };
    let cap = reachable(dims, caps, s).min(reachable(dims, caps, b));
    let last = state.first().map_or(0, |&v| v as usize);
    let (r, wanted) = leading_vectors(a, Fold::of(dims, s), eps, cap, last, us, None, ws);
    if let Some(v) = state.first_mut() {
        *v = wanted as f32;
    }
    unfolding_times(
        a,
        Fold::of(dims, b),
        &us[..dims[s] * r],
        (r, 1),
        r,
        &mut ub[..dims[b] * r],
        (r, 1),
    );
    core[..r * r].fill(0.0);
    (0..r).for_each(|i| core[i * r + i] = 1.0);
    for n in [s, b] {
        ranks.used[n] = r;
        ranks.wanted[n] = wanted;
    }
    (0..nm).for_each(|n| header[n] = ranks.used[n] as f32);
    ranks
}

/// [`compress`] at fixed ranks, truncated sequentially (ST-HOSVD, Vannieuwenhoven et al.
/// 2012): the modes in [`reducing_order`], each one's factor taken from the tensor already
/// truncated in the modes before it, which it then truncates in its own. The channels of an
/// 8×960×7×7 map go first (to 32), so the batch and spatial factors come from a tensor 30×
/// smaller than the input, where each Gram matrix over the whole input cost as much as the
/// channels' power step; the error bound is the HOSVD's. `state` tracks each mode's factor
/// from step to step (in its slot, as in the packed buffer).
fn compress_sequential(
    a: &[f32],
    dims: &[usize],
    state: &mut [f32],
    caps: &[usize],
    packed: &mut [f32],
    ws: &mut [f32],
) -> Ranks {
    let nm = dims.len();
    let Sequential {
        order,
        ranks: r,
        half,
        ..
    } = Sequential::new(dims, caps);
    let (header, body) = packed.split_at_mut(nm);
    let (factors, core) = body.split_at_mut(body.len() - caps.iter().product::<usize>());
    (0..nm).for_each(|n| header[n] = r[n] as f32);
    let slot = |n: usize| slot(dims, caps, n);
    let mut shape = [0; 4];
    shape[..nm].copy_from_slice(dims);
    for (step, &n) in order[..nm].iter().enumerate() {
        let f = Fold::of(&shape[..nm], n);
        let u = &mut factors[slot(n)..][..dims[n] * caps[n]];
        let start = &mut state[slot(n)..][..dims[n] * caps[n]];
        let out_len = f.p * r[n] * f.q;
        let last = step + 1 == nm;
        // Uₙᵀ: the stored D × r matrix read column-wise.
        let ut = (1, r[n]);
        if step == 0 {
            fixed_vectors(a, f, r[n], u, start, ws);
            let out = if last { &mut core[..] } else { &mut ws[..] };
            mode_product(a, f, r[n], u, ut, &mut out[..out_len]);
        } else {
            // The tensor so far lives in one half of the scratch, the factor's own scratch
            // in the other, which the truncation then overwrites.
            let (b0, b1) = ws.split_at_mut(half);
            let (cur, other) = if step % 2 == 1 {
                (&*b0, b1)
            } else {
                (&*b1, b0)
            };
            let cur = &cur[..f.p * f.d * f.q];
            fixed_vectors(cur, f, r[n], u, start, other);
            let out = if last { &mut core[..] } else { other };
            mode_product(cur, f, r[n], u, ut, &mut out[..out_len]);
        }
        shape[n] = r[n];
    }
    Ranks { used: r, wanted: r }
}

/// The ranks stored in the header of a packed buffer.
pub fn ranks(packed: &[f32], dims: &[usize]) -> [usize; 4] {
    let mut r = [0; 4];
    for (n, &v) in packed[..dims.len()].iter().enumerate() {
        r[n] = v as usize;
    }
    r
}

/// Uₙ (D × rₙ, row-major) inside the packed factors.
fn factor<'a>(factors: &'a [f32], dims: &[usize], caps: &[usize], n: usize) -> &'a [f32] {
    &factors[slot(dims, caps, n)..][..dims[n] * caps[n]]
}

/// Where Uₙ's slot starts among the packed factors (and in a fixed-rank state).
fn slot(dims: &[usize], caps: &[usize], n: usize) -> usize {
    (0..n).map(|m| dims[m] * caps[m]).sum()
}

/// The parts of a packed buffer: ranks, factors (all slots) and the core.
fn parts<'a>(
    packed: &'a [f32],
    dims: &[usize],
    caps: &[usize],
) -> ([usize; 4], &'a [f32], &'a [f32]) {
    let nm = dims.len();
    // The header is data the compress step wrote: bytes that are not one (a plan whose
    // buffers overlap it) must not size slices past their slots, or a mode to nothing.
    let mut r = ranks(packed, dims);
    (0..nm).for_each(|n| r[n] = r[n].clamp(1, caps[n]));
    let core_at = packed.len() - caps.iter().product::<usize>();
    let core_len: usize = r[..nm].iter().product();
    (
        r,
        &packed[nm..core_at],
        &packed[core_at..core_at + core_len],
    )
}

/// Â = S ×₁ U₁ … ×ₙ Uₙ into `out` (shape `dims`).
pub fn reconstruct(
    packed: &[f32],
    dims: &[usize],
    caps: &[usize],
    out: &mut [f32],
    ws: &mut [f32],
) {
    check(dims, caps);
    debug_assert_eq!(out.len(), dims.iter().product::<usize>());
    debug_assert!(ws.len() >= reconstruct_workspace_len(dims, caps));
    let nm = dims.len();
    let (r, factors, core) = parts(packed, dims, caps);
    // The least expanding modes first keep the intermediate tensors small.
    let mut order = [0, 1, 2, 3];
    order[..nm].sort_unstable_by(|&x, &y| (dims[x] * r[y]).cmp(&(dims[y] * r[x])));
    let mut shape = r;
    let half = chain_buffer_len(dims, caps);
    let (b0, b1) = ws.split_at_mut(half);
    for (step, &n) in order[..nm].iter().enumerate() {
        let f = Fold::of(&shape[..nm], n);
        let u = factor(factors, dims, caps, n);
        let us = (r[n], 1);
        let out_len = f.p * dims[n] * f.q;
        match (step, step + 1 == nm) {
            (0, _) => mode_product(core, f, dims[n], u, us, &mut b0[..out_len]),
            (_, true) if step % 2 == 1 => mode_product(b0, f, dims[n], u, us, out),
            (_, true) => mode_product(b1, f, dims[n], u, us, out),
            _ if step % 2 == 1 => mode_product(b0, f, dims[n], u, us, &mut b1[..out_len]),
            _ => mode_product(b1, f, dims[n], u, us, &mut b0[..out_len]),
        }
        shape[n] = dims[n];
    }
}

/// Paper's memory metric in bytes for these ranks: (Π r + Σ dims[n]·r_n)·4.
pub fn paper_bytes(dims: &[usize], ranks: &[usize]) -> usize {
    let r = &ranks[..dims.len()];
    (r.iter().product::<usize>() + dims.iter().zip(r).map(|(d, r)| d * r).sum::<usize>()) * 4
}

/// The sizes of the scratch tensors of [`conv_weight_grad`], bounded by the caps.
struct ConvScratch {
    z1: usize,
    z3: usize,
    tmp: usize,
    /// Z₄ (groups = 1) or the channel-expanded Z₃ (grouped and depthwise).
    z4: usize,
    geom: Conv2dGeom,
}

impl ConvScratch {
    fn new(dims: &[usize], r: &[usize], g: &Conv2dGeom) -> Self {
        let (b, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        debug_assert_eq!([g.n, g.c_in, g.h, g.w], [b, c, h, w]);
        let (r0, r1, r2, r3) = (r[0], r[1], r[2], r[3]);
        let kk = g.kh * g.kw;
        let grouped = g.groups > 1;
        let geom = Conv2dGeom {
            n: r0,
            c_in: if grouped { c } else { r1 },
            ..*g
        };
        ConvScratch {
            z1: r0 * g.c_out * g.out_h() * g.out_w(),
            z3: r0 * r1 * h * w,
            tmp: r0 * r1 * (h * r3).max(r2 * w),
            z4: if grouped {
                r0 * c * h * w
            } else {
                g.c_out * r1 * kk
            },
            geom,
        }
    }

    fn len(&self) -> usize {
        self.z1 + self.z3 + self.tmp + self.z4 + conv::workspace_len(&self.geom)
    }
}

pub fn conv_weight_grad_workspace_len(dims: &[usize], caps: &[usize], g: &Conv2dGeom) -> usize {
    check(dims, caps);
    let r = [0, 1, 2, 3].map(|n| reachable(dims, caps, n));
    ConvScratch::new(dims, &r, g).len()
}

/// Conv weight gradient from the compressed input, WITHOUT rebuilding it (DESIGN §4 steps
/// 1–4): dims = [B, C, H, W] = the conv input, dy = (B, C', H', W'), dw = (C', C/groups, kh,
/// kw), stored as `dw ← alpha·∂W + beta·dw` (with `beta == 0` its old content is ignored;
/// a depthwise conv only overwrites: alpha 1, beta 0). Any stride, padding, dilation and
/// groups.
///
/// groups = 1, as the paper: Z₁ = U₁ᵀ·dY over the batch (K₁, C', H', W'); Z₃ = S expanded in
/// the spatial modes (K₁, K₂, H, W); Z₄ = the ordinary weight gradient of a "batch" of K₁
/// images with K₂ channels, input Z₃ and output gradient Z₁ (C', K₂, kh, kw); dW = Z₄ ×₂ U₂.
/// The conv's own padding stands in for the reference's zero-padded U₃, U₄.
///
/// groups > 1 (grouped and depthwise, channel multiplier included): each output channel
/// meets only its group's input channels, so Z₃ is expanded in the channel mode too, Z₃ ×₂ U₂
/// (K₁, C, H, W), and the ordinary grouped weight gradient of that K₁-image batch is dW
/// directly. For depthwise this costs K₁·C·H·W·K₂ + the depthwise gradient of K₁ images,
/// where going through Z₄ would cost a dense C'×K₂ gradient; the batch mode stays compressed.
#[allow(clippy::too_many_arguments)] // the compressed input's parts, the conv, and the store
pub fn conv_weight_grad(
    packed: &[f32],
    dims: &[usize],
    caps: &[usize],
    g: &Conv2dGeom,
    dy: &[f32],
    alpha: f32,
    beta: f32,
    dw: &mut [f32],
    ws: &mut [f32],
) {
    check(dims, caps);
    debug_assert_eq!(dims.len(), 4);
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(dw.len(), g.weight_len());
    debug_assert!(ws.len() >= conv_weight_grad_workspace_len(dims, caps, g));
    let (r, factors, core) = parts(packed, dims, caps);
    let (b, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    let (r0, r1, r2, r3) = (r[0], r[1], r[2], r[3]);
    let s = ConvScratch::new(dims, &r, g);
    let (z1, rest) = ws.split_at_mut(s.z1);
    let (z3, rest) = rest.split_at_mut(s.z3);
    let (tmp, rest) = rest.split_at_mut(s.tmp);
    let (z4, conv_ws) = rest.split_at_mut(s.z4);
    let u = |n| factor(factors, dims, caps, n);

    // Z₁ = U₁ᵀ·dY (U₁ is B × K₁)
    let cols = dy.len() / b.max(1);
    sgemm(
        r0,
        cols,
        b,
        1.0,
        u(0),
        (1, r0),
        dy,
        (cols, 1),
        0.0,
        z1,
        (cols, 1),
    );
    // Z₃ = S ×₄ U₄ ×₃ U₃
    let f3 = Fold::of(&[r0, r1, r2, r3], 3);
    mode_product(core, f3, w, u(3), (r3, 1), tmp);
    let f2 = Fold::of(&[r0, r1, r2, w], 2);
    mode_product(tmp, f2, h, u(2), (r2, 1), z3);

    if g.groups == 1 {
        conv::backward_weight(&s.geom, z3, z1, z4, conv_ws);
        // dW = Z₄ ×₂ U₂: (C', K₂, kh·kw) → (C', C, kh·kw)
        let f = Fold {
            p: g.c_out,
            d: r1,
            q: g.kh * g.kw,
        };
        mode_product_into(z4, f, c, u(1), (r1, 1), alpha, beta, dw);
    } else {
        let f = Fold {
            p: r0,
            d: r1,
            q: h * w,
        };
        mode_product(z3, f, c, u(1), (r1, 1), z4);
        if g.is_depthwise() {
            debug_assert!(
                alpha == 1.0 && beta == 0.0,
                "a depthwise gradient overwrites"
            );
            conv::backward_weight(&s.geom, z4, z1, dw, conv_ws);
        } else {
            conv::backward_weight_into(&s.geom, z4, z1, alpha, beta, dw, conv_ws);
        }
    }
}

pub fn linear_weight_grad_workspace_len(dims: &[usize], caps: &[usize], n: usize) -> usize {
    check(dims, caps);
    let r = |i| reachable(dims, caps, i);
    match dims.len() {
        2 => (r(0) + r(1)) * n,
        _ => (r(0) * dims[1] + r(0) * r(1) + r(2)) * n,
    }
}

/// Linear layer: input A (M×K, or tokens B×T×K) compressed; dy is M×N (B×T×N); dW = Aᵀ·dy
/// contracted through the factors, never rebuilding A (WASI's contraction; the paper's
/// code rebuilds A). For a matrix: U₂·(Sᵀ·(U₁ᵀ·dy)). For tokens, with S of ranks
/// (r₁, r₂, r₃): Z = dy ×_B U₁ᵀ ×_T U₂ᵀ (r₁ × r₂ × N), then dW = U₃·(S₍₃₎·Z) with S₍₃₎ the
/// core's last mode against the other two. dw written as N×K row-major if `trans_b` (ONNX
/// Gemm transB=1, W is N×K), else K×N. Overwritten.
pub fn linear_weight_grad(
    packed: &[f32],
    dims: &[usize],
    caps: &[usize],
    dy: &[f32],
    trans_b: bool,
    dw: &mut [f32],
    ws: &mut [f32],
) {
    check(dims, caps);
    debug_assert!(matches!(dims.len(), 2 | 3));
    let k = dims[dims.len() - 1];
    let m: usize = dims[..dims.len() - 1].iter().product();
    let n = dy.len() / m.max(1);
    debug_assert_eq!(dy.len(), m * n);
    debug_assert_eq!(dw.len(), k * n);
    debug_assert!(ws.len() >= linear_weight_grad_workspace_len(dims, caps, n));
    let (r, factors, core) = parts(packed, dims, caps);
    let u = |i| factor(factors, dims, caps, i);
    let dw_strides = if trans_b { (1, k) } else { (n, 1) };
    let last = dims.len() - 1;
    // t: the contraction of dy with every factor but the last's, (Π r_i of those) × N.
    let (t, rest) = if dims.len() == 2 {
        let (t1, rest) = ws.split_at_mut(r[0] * n);
        sgemm(
            r[0],
            n,
            m,
            1.0,
            u(0),
            (1, r[0]),
            dy,
            (n, 1),
            0.0,
            t1,
            (n, 1),
        );
        (t1, rest)
    } else {
        let (b, tokens) = (dims[0], dims[1]);
        let (t1, rest) = ws.split_at_mut(r[0] * tokens * n);
        let (t2, rest) = rest.split_at_mut(r[0] * r[1] * n);
        // U₁ᵀ over the batch: (r₁ × B)·(B × T·N).
        sgemm(
            r[0],
            tokens * n,
            b,
            1.0,
            u(0),
            (1, r[0]),
            dy,
            (tokens * n, 1),
            0.0,
            t1,
            (tokens * n, 1),
        );
        // U₂ᵀ over the tokens, per batch rank: (r₂ × T)·(T × N).
        for (z1, z2) in t1
            .chunks_exact(tokens * n)
            .zip(t2.chunks_exact_mut(r[1] * n))
        {
            sgemm(
                r[1],
                n,
                tokens,
                1.0,
                u(1),
                (1, r[1]),
                z1,
                (n, 1),
                0.0,
                z2,
                (n, 1),
            );
        }
        (t2, rest)
    };
    // S₍last₎·t: (r_last × Π r_others)·(Π r_others × N).
    let others: usize = r[..last].iter().product();
    let rl = r[last];
    let s_t = &mut rest[..rl * n];
    sgemm(
        rl,
        n,
        others,
        1.0,
        core,
        (1, rl),
        t,
        (n, 1),
        0.0,
        s_t,
        (n, 1),
    );
    sgemm(
        k,
        n,
        rl,
        1.0,
        u(last),
        (rl, 1),
        s_t,
        (n, 1),
        0.0,
        dw,
        dw_strides,
    );
}

fn check(dims: &[usize], caps: &[usize]) {
    debug_assert!(
        (2..=4).contains(&dims.len()),
        "HOSVD of a {}-mode tensor",
        dims.len()
    );
    debug_assert_eq!(dims.len(), caps.len());
    debug_assert!(caps.iter().all(|&c| c >= 1));
}

#[cfg(test)]
mod tests;
