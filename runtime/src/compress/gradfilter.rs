//! The gradient-filter baseline (Yang et al., CVPR 2023, "Efficient On-device Training via
//! Gradient Filtering"), defined as the paper's repository runs it (`Conv2dAvgOp` in
//! `custom_op/conv_avg.py` of github.com/trungnl2000/cls_gradfilt):
//!
//! with the conv output h × w and patch r, p_h = ⌈h/r⌉ patches per column; the input is
//! SUM-pooled over (r·stride_h) × (r·stride_w) windows, zero-padded by
//! ⌈(p_h·r·stride_h − H)/2⌉ before (PyTorch `avg_pool2d`, `divisor_override=1`); dY is
//! MEAN-pooled over r × r windows padded by ⌈(p_h·r − h)/2⌉, counting only real elements
//! (`count_include_pad=False`); dW[c', c] = Σ_{b,i,j} dY_avg[b,c',i,j]·X_sum[b,c,i,j], the
//! same value at every kernel tap.
//!
//! The pooled size depends on the conv's output size and stride, so this API takes the conv
//! geometry where the other compressors take the activation's shape. The reference handles
//! groups = 1 and depthwise without a channel multiplier; grouped convs and multipliers here
//! pair each output channel with its own group's input channels, the same formula. A window
//! offset that the reference's formula makes negative (a conv output much smaller than its
//! input, where PyTorch rejects the padding) starts the windows inside the input instead.

use std::ops::Range;

use crate::kernels::gemm::sgemm;
use crate::kernels::geometry::Conv2dGeom;

/// ⌈v/2⌉ for any sign, as Python's `math.ceil(v / 2)`.
fn half_up(v: isize) -> isize {
    (v + 1).div_euclid(2)
}

/// The patches along one axis: their count and, for patch `i`, the input (or dY) range it
/// pools.
#[derive(Clone, Copy)]
struct Axis {
    patches: usize,
    len: usize,
    window: usize,
    offset: isize,
}

impl Axis {
    fn new(len: usize, out: usize, r: usize, stride: usize, of_input: bool) -> Self {
        let patches = out.div_ceil(r);
        let window = if of_input { r * stride } else { r };
        let covered = if of_input { len } else { out };
        let offset = half_up((patches * window) as isize - covered as isize);
        Axis {
            patches,
            len: covered,
            window,
            offset,
        }
    }

    fn range(&self, i: usize) -> Range<usize> {
        let start = (i * self.window) as isize - self.offset;
        let clip = |v: isize| v.clamp(0, self.len as isize) as usize;
        clip(start)..clip(start + self.window as isize)
    }
}

fn axes(g: &Conv2dGeom, r: usize, of_input: bool) -> (Axis, Axis) {
    (
        Axis::new(g.h, g.out_h(), r, g.stride[0], of_input),
        Axis::new(g.w, g.out_w(), r, g.stride[1], of_input),
    )
}

/// Whether the patches of `r` outputs, `r·stride` inputs wide, span the input without
/// overflow (what [`Axis::new`] computes).
pub fn patches_fit(g: &Conv2dGeom, r: usize) -> bool {
    [(g.out_h(), g.stride[0]), (g.out_w(), g.stride[1])]
        .iter()
        .all(|&(out, stride)| {
            r.checked_mul(stride)
                .and_then(|window| window.checked_mul(out.div_ceil(r)))
                .is_some_and(|span| span <= isize::MAX as usize)
        })
}

/// Shape of the saved tensor: [B, C, ⌈h/r⌉, ⌈w/r⌉] with h × w the conv's output.
pub fn pooled_dims(g: &Conv2dGeom, r: usize) -> [usize; 4] {
    let (ah, aw) = axes(g, r, true);
    [g.n, g.c_in, ah.patches, aw.patches]
}

/// `out` = the conv input `a` sum-pooled per patch (shape [`pooled_dims`]).
pub fn compress(a: &[f32], g: &Conv2dGeom, r: usize, out: &mut [f32]) {
    debug_assert_eq!(a.len(), g.input_len());
    pool(a, axes(g, r, true), g.h, g.w, false, out);
}

/// Sums (or means over the elements present) of each patch of every `h × w` plane of `x`.
fn pool(x: &[f32], (ah, aw): (Axis, Axis), h: usize, w: usize, mean: bool, out: &mut [f32]) {
    let pp = ah.patches * aw.patches;
    debug_assert_eq!(out.len(), x.len() / (h * w).max(1) * pp);
    for (plane, o) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(pp)) {
        for i in 0..ah.patches {
            let rows = ah.range(i);
            for j in 0..aw.patches {
                let cols = aw.range(j);
                let s: f32 = rows
                    .clone()
                    .map(|y| plane[y * w..][cols.clone()].iter().sum::<f32>())
                    .sum();
                let n = rows.len() * cols.len();
                o[i * aw.patches + j] = if mean && n > 0 { s / n as f32 } else { s };
            }
        }
    }
}

pub fn conv_weight_grad_workspace_len(g: &Conv2dGeom, r: usize) -> usize {
    let [b, _, ph, pw] = pooled_dims(g, r);
    b * g.c_out * ph * pw + g.c_out * g.cin_per_group()
}

/// dW (C', C/groups, kh, kw) from the pooled input and dY (B, C', h, w), stored as
/// `dw ← alpha·∂W + beta·dw` (with `beta == 0` its old content is ignored).
#[allow(clippy::too_many_arguments)] // the pooled input, the conv, and the store
pub fn conv_weight_grad(
    pooled: &[f32],
    g: &Conv2dGeom,
    r: usize,
    dy: &[f32],
    alpha: f32,
    beta: f32,
    dw: &mut [f32],
    ws: &mut [f32],
) {
    let [b, c, ph, pw] = pooled_dims(g, r);
    let pp = ph * pw;
    debug_assert_eq!(pooled.len(), b * c * pp);
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(dw.len(), g.weight_len());
    debug_assert!(ws.len() >= conv_weight_grad_workspace_len(g, r));
    let (cig, cog) = (g.cin_per_group(), g.cout_per_group());
    let (dy_avg, rest) = ws.split_at_mut(b * g.c_out * pp);
    let dw_sum = &mut rest[..g.c_out * cig];
    pool(dy, axes(g, r, false), g.out_h(), g.out_w(), true, dy_avg);
    if g.is_depthwise() {
        // One input channel per group: a dot product per output channel.
        let mult = g.c_out / g.c_in;
        for (co, s) in dw_sum.iter_mut().enumerate() {
            *s = (0..b)
                .map(|bi| {
                    let d = &dy_avg[(bi * g.c_out + co) * pp..][..pp];
                    let x = &pooled[(bi * c + co / mult) * pp..][..pp];
                    d.iter().zip(x).map(|(d, x)| d * x).sum::<f32>()
                })
                .sum();
        }
    } else {
        // dW_sum[group rows, :] += dY_avg[b, group] (C'/g × P) · X_sum[b, group]ᵀ (P × C/g)
        for bi in 0..b {
            for gi in 0..g.groups {
                let d = &dy_avg[(bi * g.c_out + gi * cog) * pp..];
                let x = &pooled[(bi * c + gi * cig) * pp..];
                let beta = if bi == 0 { 0.0 } else { 1.0 };
                let out = &mut dw_sum[gi * cog * cig..];
                sgemm(
                    cog,
                    cig,
                    pp,
                    1.0,
                    d,
                    (pp, 1),
                    x,
                    (1, pp),
                    beta,
                    out,
                    (cig, 1),
                );
            }
        }
    }
    let kk = g.kh * g.kw;
    for (taps, &s) in dw.chunks_exact_mut(kk).zip(dw_sum.iter()) {
        if beta == 0.0 {
            taps.fill(alpha * s);
        } else {
            taps.iter_mut().for_each(|t| *t = alpha * s + beta * *t);
        }
    }
}

/// Paper's memory metric in bytes: the pooled input, B·C·⌈h/r⌉·⌈w/r⌉·4.
pub fn paper_bytes(g: &Conv2dGeom, r: usize) -> usize {
    pooled_dims(g, r).iter().product::<usize>() * 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::testutil::{assert_rel, golden, golden_conv};

    const CASES: [&str; 9] = [
        "c3x3_r2",
        "c3x3_r4",
        "c3x3_r7",
        "s2_odd_r2",
        "pw_r2",
        "dw_r2",
        "dw_s2_r4",
        "ext_g2_r2",
        "ext_dwm2_r2",
    ];

    fn geom(c: &str) -> (Conv2dGeom, usize) {
        let x = golden("gradfilter", &format!("{c}__x")).shape;
        let (g, rest) = golden_conv("gradfilter", &format!("{c}__geom"), &x);
        (g, rest[0])
    }

    #[test]
    fn matches_the_reference_op() {
        for c in CASES {
            let (g, r) = geom(c);
            let x = golden("gradfilter", &format!("{c}__x")).values;
            let dy = golden("gradfilter", &format!("{c}__dy")).values;
            let xsum = golden("gradfilter", &format!("{c}__xsum"));
            assert_eq!(pooled_dims(&g, r).to_vec(), xsum.shape, "{c}: pooled dims");
            let mut pooled = vec![0.0; xsum.values.len()];
            compress(&x, &g, r, &mut pooled);
            assert_rel(&format!("{c} pooled"), &pooled, &xsum.values, 1e-5);
            let mut dw = vec![0.0; g.weight_len()];
            let mut ws = vec![0.0; conv_weight_grad_workspace_len(&g, r)];
            conv_weight_grad(&pooled, &g, r, &dy, 1.0, 0.0, &mut dw, &mut ws);
            let want = golden("gradfilter", &format!("{c}__dw")).values;
            assert_rel(&format!("{c} dw"), &dw, &want, 1e-5);
        }
    }

    #[test]
    fn paper_bytes_count_the_pooled_input() {
        let (g, r) = geom("c3x3_r4");
        assert_eq!(paper_bytes(&g, r), 2 * 4 * 2 * 2 * 4);
    }
}
