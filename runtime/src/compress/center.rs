//! Centering before a decomposition: the per-feature mean of the activation is kept exactly
//! and only the residual is decomposed, x̂ = m + HOSVD(x − m).
//!
//! The trained layers' inputs follow ReLUs and sums of them: non-negative, with one common
//! direction (the mean) holding most of their energy. The ε rule then meets its share at
//! rank 1–4, which keeps the mean and drops the part that tells the classes apart; with the
//! mean set aside, the same ε spends the ranks on that part (issue 20's study in
//! models/reference/PAPER_EXPERIMENT.md). The mean's share of a weight gradient is exact and
//! cheap: the mean times the output gradient summed where each weight tap met the input.
//!
//! The feature mode is the channels of a conv input (B, C, H, W) and the last mode of a dense
//! layer's input (M, K) or (B, T, K); the mean runs over every other mode.

use crate::kernels::geometry::{Conv2dGeom, tap_offset};
use crate::kernels::window::valid_range;

/// (outer, features, inner) of an activation of shape `dims`: the feature mode with the
/// modes before and after it flattened.
fn fold(dims: &[usize]) -> (usize, usize, usize) {
    let mode = if dims.len() == 4 { 1 } else { dims.len() - 1 };
    let outer = dims[..mode].iter().product();
    let inner = dims[mode + 1..].iter().product();
    (outer, dims[mode], inner)
}

/// Floats of the mean: one per feature.
pub fn mean_len(dims: &[usize]) -> usize {
    fold(dims).1
}

/// The per-feature mean of `x` into `mean`, and x − mean into `residual`.
pub fn split(x: &[f32], dims: &[usize], mean: &mut [f32], residual: &mut [f32]) {
    let (outer, c, inner) = fold(dims);
    debug_assert_eq!(x.len(), outer * c * inner);
    debug_assert_eq!(residual.len(), x.len());
    debug_assert_eq!(mean.len(), c);
    let n = (outer * inner) as f64;
    // Rows in f32, their sum in f64: a feature may gather a million values. Features are
    // summed a block at a time, each block's rows read in order: a dense layer's input (one
    // value per feature and row) read feature by feature strode across the whole tensor.
    const BLOCK: usize = 64;
    for (b, means) in mean.chunks_mut(BLOCK).enumerate() {
        let mut sums = [0.0f64; BLOCK];
        for o in 0..outer {
            let rows = &x[(o * c + b * BLOCK) * inner..][..means.len() * inner];
            if inner == 1 {
                // One value per feature: summed as a vector (a row of length 1 at a time cost
                // a 64 × 960 map's compression a third of its time).
                sums.iter_mut()
                    .zip(rows)
                    .for_each(|(s, &v)| *s += f64::from(v));
                continue;
            }
            for (s, row) in sums.iter_mut().zip(rows.chunks_exact(inner)) {
                *s += f64::from(row.iter().sum::<f32>());
            }
        }
        for (m, s) in means.iter_mut().zip(sums) {
            *m = (s / n) as f32;
        }
    }
    for (r, x) in residual
        .chunks_exact_mut(c * inner)
        .zip(x.chunks_exact(c * inner))
    {
        if inner == 1 {
            r.iter_mut()
                .zip(x)
                .zip(mean.iter())
                .for_each(|((r, &v), &m)| *r = v - m);
            continue;
        }
        let rows = r.chunks_exact_mut(inner).zip(x.chunks_exact(inner));
        for ((r, x), &m) in rows.zip(mean.iter()) {
            r.iter_mut().zip(x).for_each(|(r, &v)| *r = v - m);
        }
    }
}

/// x̂ += mean, in place: the residual's reconstruction made whole.
pub fn add_mean(x: &mut [f32], dims: &[usize], mean: &[f32]) {
    let inner = fold(dims).2;
    for (row, &m) in x.chunks_exact_mut(inner).zip(mean.iter().cycle()) {
        row.iter_mut().for_each(|v| *v += m);
    }
}

/// Scratch of [`conv_weight_grad`]: the output gradient summed over the batch, then one
/// output channel's sum as prefix sums over the output map, then over each tap's window.
pub fn conv_weight_grad_workspace_len(g: &Conv2dGeom) -> usize {
    g.c_out * g.out_h() * g.out_w() + (g.out_h() + 1) * (g.out_w() + 1) + g.kh * g.kw
}

/// The mean's share of a conv's weight gradient, added: dw += alpha · m[c] · Σ dy[b, o, y, x]
/// over the batch and the output positions (y, x) whose tap (i, j) reads inside the input
/// (the padding reads zeros, not the mean). `dw` is (C', C/groups, kh, kw).
pub fn conv_weight_grad(
    mean: &[f32],
    g: &Conv2dGeom,
    dy: &[f32],
    alpha: f32,
    dw: &mut [f32],
    ws: &mut [f32],
) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (ph, pw) = (oh + 1, ow + 1);
    let image = g.c_out * oh * ow;
    debug_assert_eq!(dy.len(), g.n * image);
    debug_assert_eq!(mean.len(), g.c_in);
    let cg = g.c_in / g.groups;
    let og = g.c_out / g.groups;
    let kk = g.kh * g.kw;
    let (sum, rest) = ws[..conv_weight_grad_workspace_len(g)].split_at_mut(image);
    let (p, taps) = rest.split_at_mut(ph * pw);
    // Σ_b dy[b] once, in memory order: summed channel by channel, the batch's maps were
    // read strided (at 1×1 maps, one float per cache line), 3.6 % of a 32² step.
    sum.copy_from_slice(&dy[..image]);
    for img in dy[image..].chunks_exact(image) {
        sum.iter_mut().zip(img).for_each(|(s, &v)| *s += v);
    }
    for (o, row) in dw.chunks_exact_mut(cg * kk).enumerate() {
        // p[y][x] = Σ_{y' < y, x' < x} sum[o, y', x'].
        p[..pw].fill(0.0);
        for (y, line) in sum[o * oh * ow..][..oh * ow].chunks_exact(ow).enumerate() {
            let mut run = 0.0;
            p[(y + 1) * pw] = 0.0;
            for (x, &v) in line.iter().enumerate() {
                run += v;
                p[(y + 1) * pw + x + 1] = p[y * pw + x + 1] + run;
            }
        }
        for i in 0..g.kh {
            let ys = valid_range(oh, g.h, g.stride[0], tap_offset(i, g.dilation[0], g.pad[0]));
            for j in 0..g.kw {
                let xs = valid_range(ow, g.w, g.stride[1], tap_offset(j, g.dilation[1], g.pad[1]));
                taps[i * g.kw + j] =
                    p[ys.end * pw + xs.end] - p[ys.start * pw + xs.end] - p[ys.end * pw + xs.start]
                        + p[ys.start * pw + xs.start];
            }
        }
        // The channel's slice of dw gets the outer product means ⊗ taps in memory order: a
        // strided update (tap-major) cost more than the rest of the compressed gradient.
        let means = &mean[o / og * cg..][..cg];
        if kk == 1 {
            let s = alpha * taps[0];
            row.iter_mut().zip(means).for_each(|(d, &m)| *d += s * m);
        } else {
            for (cell, &m) in row.chunks_exact_mut(kk).zip(means) {
                let m = alpha * m;
                cell.iter_mut().zip(&*taps).for_each(|(d, &s)| *d += m * s);
            }
        }
    }
}

/// Scratch of [`linear_weight_grad`]: the output gradient summed over its rows.
pub fn linear_weight_grad_workspace_len(n: usize) -> usize {
    n
}

/// The mean's share of a dense layer's weight gradient, added: dw += (Σ_rows dy) ⊗ m, with
/// dw N×K if `trans_b` (ONNX Gemm transB = 1), else K×N.
pub fn linear_weight_grad(mean: &[f32], dy: &[f32], trans_b: bool, dw: &mut [f32], ws: &mut [f32]) {
    let k = mean.len();
    let n = dw.len() / k.max(1);
    let col = &mut ws[..n];
    col.fill(0.0);
    for row in dy.chunks_exact(n) {
        col.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
    }
    for (kk, &m) in mean.iter().enumerate() {
        for (nn, &s) in col.iter().enumerate() {
            let at = if trans_b { nn * k + kk } else { kk * n + nn };
            dw[at] += m * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::compress::testutil::{assert_rel, golden, golden_conv};
    use crate::kernels::conv;
    use crate::kernels::testutil::Lcg;
    use crate::ops::{Compressor, Hosvd, Method};

    fn centered(shape: &[usize], eps: f32) -> Compressor {
        Compressor {
            shape: shape.iter().map(|&d| d as u64).collect(),
            method: Some(Method::Hosvd(Hosvd {
                eps,
                caps: shape.iter().map(|&d| d as u32).collect(),
                fixed: false,
                center: true,
            })),
        }
    }

    /// (packed, x̂) of `x` under `c`.
    fn round_trip(c: &Compressor, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut packed = vec![f32::NAN; c.packed_len()];
        let mut state = vec![0.0; c.state_len()];
        let mut ws = vec![f32::NAN; c.compress_workspace_len()];
        c.compress(x, &mut state, &mut packed, &mut ws);
        let mut xh = vec![f32::NAN; x.len()];
        let mut ws = vec![f32::NAN; c.decompress_workspace_len()];
        c.decompress(&packed, &mut xh, &mut ws);
        (packed, xh)
    }

    /// Post-ReLU-like data: the golden tensors shifted positive, so the mean dominates.
    fn shifted(name: &str) -> (Vec<f32>, Vec<usize>) {
        let x = golden("hosvd", name);
        (x.values.iter().map(|v| v.abs() + 0.5).collect(), x.shape)
    }

    /// The fused gradient (core, factors and the mean's exact share) is the conv weight
    /// gradient of the reconstruction: at every ε, for padded, strided, dilated, grouped and
    /// depthwise convs, where the padding reads zeros rather than the mean.
    #[test]
    fn conv_weight_grad_is_the_gradient_of_the_reconstruction() {
        let cases: [(&str, &[&str]); 2] = [
            ("t4", &["c3x3", "s2", "pw", "g2", "dw"]),
            ("t3", &["c3x3", "s2d2", "pw", "g2", "dwm2"]),
        ];
        for (t, convs) in cases {
            let (x, dims) = shifted(&format!("{t}__x"));
            for eps in [0.5, 0.8, 1.0] {
                let c = centered(&dims, eps);
                let (packed, xh) = round_trip(&c, &x);
                for name in convs {
                    let (g, _) = golden_conv("hosvd", &format!("{t}__{name}__geom"), &dims);
                    let u32s = |v: &[usize]| v.iter().map(|&d| d as u32).collect();
                    let conv_op = crate::ops::Conv {
                        kernel: u32s(&[g.kh, g.kw]),
                        strides: u32s(&g.stride),
                        pads: u32s(&g.pad),
                        dilations: u32s(&g.dilation),
                        group: g.groups as u32,
                    };
                    let w = [g.c_out, g.c_in / g.groups, g.kh, g.kw].map(|d| d as u64);
                    let dy = golden("hosvd", &format!("{t}__{name}__dy")).values;
                    let mut cws = vec![0.0; conv::workspace_len(&g)];
                    let mut want = vec![0.0; g.weight_len()];
                    conv::backward_weight(&g, &xh, &dy, &mut want, &mut cws);
                    let mut got = vec![f32::NAN; g.weight_len()];
                    let mut ws = vec![f32::NAN; c.conv_grad_workspace_len(&conv_op, &w)];
                    c.conv_weight_grad(&conv_op, &w, &packed, &dy, 1.0, 0.0, &mut got, &mut ws);
                    let what = format!("{t} {name} eps {eps}");
                    assert_rel(&what, &got, &want, 1e-4);
                    if eps == 1.0 {
                        conv::backward_weight(&g, &x, &dy, &mut want, &mut cws);
                        assert_rel(&format!("{what} exact"), &got, &want, 1e-4);
                    }
                    if g.groups == 1 {
                        // alpha·∂W + beta·dw, the mean's share scaled by alpha too.
                        let prev: Vec<f32> = (0..got.len()).map(|i| i as f32 * 0.01).collect();
                        let mut acc = prev.clone();
                        c.conv_weight_grad(&conv_op, &w, &packed, &dy, 0.5, 2.0, &mut acc, &mut ws);
                        let want: Vec<f32> = got
                            .iter()
                            .zip(&prev)
                            .map(|(g, p)| 0.5 * g + 2.0 * p)
                            .collect();
                        assert_rel(&format!("{what} alpha beta"), &acc, &want, 1e-5);
                    }
                }
            }
        }
    }

    /// Dense layers, as a matrix and as tokens: the gradient of the reconstruction, and the
    /// exact one at ε = 1; the stored mean is the features' mean.
    #[test]
    fn linear_weight_grad_is_the_gradient_of_the_reconstruction() {
        let mut rng = Lcg::new(17);
        let n = 5;
        for dims in [vec![12, 7], vec![3, 4, 6]] {
            let k = dims[dims.len() - 1];
            let rows = dims.iter().product::<usize>() / k;
            let x: Vec<f32> = rng.vec(rows * k).iter().map(|v| v.abs() + 1.0).collect();
            let dy = rng.vec(rows * n);
            for eps in [0.6, 0.9, 1.0] {
                let c = centered(&dims, eps);
                let (packed, xh) = round_trip(&c, &x);
                for f in 0..k {
                    let m = (0..rows).map(|r| x[r * k + f]).sum::<f32>() / rows as f32;
                    assert!((packed[f] - m).abs() < 1e-5, "{dims:?} mean {f}");
                }
                let grad = |a: &[f32]| -> Vec<f32> {
                    (0..k * n)
                        .map(|i| {
                            (0..rows)
                                .map(|r| a[r * k + i / n] * dy[r * n + i % n])
                                .sum()
                        })
                        .collect()
                };
                let mut ws = vec![f32::NAN; c.linear_grad_workspace_len(n)];
                let mut dw = vec![f32::NAN; k * n];
                c.linear_weight_grad(false, &packed, &dy, &mut dw, &mut ws);
                assert_rel(&format!("{dims:?} eps {eps}"), &dw, &grad(&xh), 1e-5);
                if eps == 1.0 {
                    assert_rel(&format!("{dims:?} exact"), &dw, &grad(&x), 1e-5);
                }
                let want_t: Vec<f32> = (0..n * k).map(|i| grad(&xh)[(i % k) * n + i / k]).collect();
                c.linear_weight_grad(true, &packed, &dy, &mut dw, &mut ws);
                assert_rel(&format!("{dims:?} eps {eps} N×K"), &dw, &want_t, 1e-5);
            }
        }
    }

    /// What centering is for: on non-negative data with one dominant direction, the same ε
    /// keeps more of what varies between samples.
    #[test]
    fn centering_keeps_more_of_the_variation_at_the_same_eps() {
        let (x, dims) = shifted("t4__x");
        let plain = Compressor {
            method: Some(Method::Hosvd(Hosvd {
                center: false,
                ..match centered(&dims, 0.8).method {
                    Some(Method::Hosvd(h)) => h,
                    _ => unreachable!(),
                }
            })),
            ..centered(&dims, 0.8)
        };
        let err = |c: &Compressor| {
            let xh = round_trip(c, &x).1;
            let m = x.iter().sum::<f32>() / x.len() as f32;
            let num: f32 = x.iter().zip(&xh).map(|(a, b)| (a - b).powi(2)).sum();
            let den: f32 = x.iter().map(|a| (a - m).powi(2)).sum();
            num / den
        };
        let (c, p) = (err(&centered(&dims, 0.8)), err(&plain));
        assert!(c < p, "centered error {c} not below plain {p}");
    }
}
