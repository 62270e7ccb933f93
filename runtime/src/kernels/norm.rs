//! Normalisations.
//!
//! - BatchNormalization with frozen running statistics (inference mode), as fine-tuning uses
//!   it (DESIGN §3): an affine map per channel, so its backward needs no saved tensor, and it
//!   can be folded into the conv before it.
//! - LayerNormalization (ONNX opset 17, any `axis`): statistics per row of x viewed as
//!   (outer, inner), computed in the step; the forward saves each row's mean and 1/σ for the
//!   backward, which gives the input, scale and bias gradients (DESIGN §3: LayerNorm's scale
//!   and bias after the first trained layer train).

/// BN's per-channel parameters, each of length C.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormParams<'a> {
    pub scale: &'a [f32],
    pub bias: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub epsilon: f32,
}

impl BatchNormParams<'_> {
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// (a, b) of `y = a·x + b` for channel `c`, computed in f32 as ONNX Runtime and PyTorch do.
    fn affine(&self, c: usize) -> (f32, f32) {
        let a = self.scale[c] / (self.var[c] + self.epsilon).sqrt();
        (a, self.bias[c] - self.mean[c] * a)
    }

    fn debug_check(&self) {
        let c = self.channels();
        debug_assert!(self.bias.len() == c && self.mean.len() == c && self.var.len() == c);
    }
}

/// `y = (x - mean)·scale/√(var+ε) + bias` over an (N, C, `plane`) tensor.
pub fn forward(p: &BatchNormParams, plane: usize, x: &[f32], y: &mut [f32]) {
    p.debug_check();
    debug_assert_eq!(x.len() % (p.channels() * plane).max(1), 0);
    debug_assert_eq!(x.len(), y.len());
    if plane == 0 {
        return;
    }
    for (i, (xp, yp)) in x
        .chunks_exact(plane)
        .zip(y.chunks_exact_mut(plane))
        .enumerate()
    {
        let (a, b) = p.affine(i % p.channels());
        yp.iter_mut().zip(xp).for_each(|(y, x)| *y = a * x + b);
    }
}

/// `dx = dy·scale/√(var+ε)`: the input gradient (the parameters are frozen).
pub fn backward(p: &BatchNormParams, plane: usize, dy: &[f32], dx: &mut [f32]) {
    p.debug_check();
    debug_assert_eq!(dy.len(), dx.len());
    if plane == 0 {
        return;
    }
    for (i, (dyp, dxp)) in dy
        .chunks_exact(plane)
        .zip(dx.chunks_exact_mut(plane))
        .enumerate()
    {
        let (a, _) = p.affine(i % p.channels());
        dxp.iter_mut().zip(dyp).for_each(|(dx, dy)| *dx = a * dy);
    }
}

/// Folds a frozen BN into the conv that feeds it: returns (w′, b′) with
/// `w′[o] = w[o]·a[o]` and `b′[o] = (b[o] − mean[o])·a[o] + bias[o]`, `a = scale/√(var+ε)`.
/// `weight` is (c_out, …) with c_out = BN's channels; `bias` is the conv's, if it has one.
/// A model-rewrite helper, not a kernel: it returns new tensors.
pub fn fold_into_conv(
    weight: &[f32],
    bias: Option<&[f32]>,
    p: &BatchNormParams,
) -> (Vec<f32>, Vec<f32>) {
    p.debug_check();
    let c = p.channels();
    assert!(
        c > 0 && weight.len().is_multiple_of(c),
        "fold_into_conv: weight is not (c_out = {c}, ...)"
    );
    assert!(
        bias.is_none_or(|b| b.len() == c),
        "fold_into_conv: conv bias length"
    );
    let per = weight.len() / c;
    let mut w = weight.to_vec();
    let b = (0..c)
        .map(|o| {
            let (a, shift) = p.affine(o);
            w[o * per..][..per].iter_mut().for_each(|v| *v *= a);
            // a·(b − mean) + bias = a·b + (bias − a·mean)
            bias.map_or(0.0, |b| b[o]) * a + shift
        })
        .collect();
    (w, b)
}

// ------------------------------------------------------------------------------ LayerNorm

/// ONNX LayerNormalization's view of its input X: (outer, inner), where inner is the product
/// of X's dims from `axis` on (the normalised ones) and outer the product of those before.
/// Scale and bias hold `inner` values (the exporters write them with the normalised shape;
/// a broadcastable smaller one is expanded by the caller).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormGeom {
    pub outer: usize,
    pub inner: usize,
    pub epsilon: f32,
}

impl LayerNormGeom {
    /// From X's shape and the node's `axis` (negative counts from the end, as ONNX allows:
    /// axis ∈ [−rank, rank)); `None` when the axis is out of range.
    pub fn new(shape: &[usize], axis: i64, epsilon: f32) -> Option<LayerNormGeom> {
        let rank = i64::try_from(shape.len()).ok()?;
        if !(-rank..rank).contains(&axis) {
            return None;
        }
        let (before, after) = shape.split_at(axis.rem_euclid(rank) as usize);
        Some(LayerNormGeom {
            outer: before.iter().product(),
            inner: after.iter().product(),
            epsilon,
        })
    }
}

/// ONNX LayerNormalization (stash_type 1: f32 statistics), per row of (outer, inner):
/// `y = (x − μ)·r·scale + bias` with μ the row's mean, `r = 1/√(σ² + ε)` and σ² its biased
/// variance (divided by inner), as ONNX and PyTorch define them. Writes `y` (outer × inner)
/// and the row statistics `mean` and `inv_std` (outer each; ONNX's optional outputs Mean and
/// InvStdDev, and what [`layer_norm_backward`] needs).
///
/// Two passes per row (the mean, then the sums of the centred values) instead of
/// E[x²] − E[x]², which cancels catastrophically when |μ| ≫ σ; the second pass also sums
/// d = x − μ₀ and corrects both the mean and the variance by it (the "corrected two-pass"
/// algorithm of Chan, Golub and LeVeque), which cancels most of the first mean's rounding
/// error.
pub fn layer_norm_forward(
    g: &LayerNormGeom,
    x: &[f32],
    scale: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    mean: &mut [f32],
    inv_std: &mut [f32],
) {
    let (outer, inner) = (g.outer, g.inner);
    debug_assert_eq!(x.len(), outer * inner);
    debug_assert_eq!(y.len(), outer * inner);
    debug_assert_eq!(scale.len(), inner);
    debug_assert!(bias.is_none_or(|b| b.len() == inner));
    debug_assert!(mean.len() == outer && inv_std.len() == outer);
    if inner == 0 {
        // Empty rows: no values to normalise, and no defined statistics.
        mean.fill(f32::NAN);
        inv_std.fill(f32::NAN);
        return;
    }
    let n = inner as f32;
    for (((xr, yr), mu), rs) in x
        .chunks_exact(inner)
        .zip(y.chunks_exact_mut(inner))
        .zip(mean.iter_mut())
        .zip(inv_std.iter_mut())
    {
        let m0 = super::sum8(inner, |j| xr[j]) / n;
        let s1 = super::sum8(inner, |j| xr[j] - m0);
        let s2 = super::sum8(inner, |j| (xr[j] - m0) * (xr[j] - m0));
        let c = s1 / n;
        // ≥ 0 in exact arithmetic (Cauchy–Schwarz); the max only guards rounding.
        let var = (s2 / n - c * c).max(0.0);
        let (m, r) = (m0 + c, 1.0 / (var + g.epsilon).sqrt());
        (*mu, *rs) = (m, r);
        match bias {
            Some(b) => {
                for (((y, x), s), b) in yr.iter_mut().zip(xr).zip(scale).zip(b) {
                    *y = (x - m) * r * s + b;
                }
            }
            None => {
                for ((y, x), s) in yr.iter_mut().zip(xr).zip(scale) {
                    *y = (x - m) * r * s;
                }
            }
        }
    }
}

/// Gradients of [`layer_norm_forward`] from its input `x`, `scale`, the saved `mean` and
/// `inv_std` and the output gradient `dy`, each one optional: `dx` (outer × inner),
/// `dscale` and `dbias` (inner each, summed over the rows). All are overwritten, never
/// accumulated into. With x̂ = (x − μ)·r and g = dy·scale, per row:
/// `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, and `dscale = Σ_rows dy·x̂`, `dbias = Σ_rows dy`.
#[allow(clippy::too_many_arguments)] // two inputs, two saved statistics, dy, three optional gradients
pub fn layer_norm_backward(
    g: &LayerNormGeom,
    x: &[f32],
    scale: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    mut dscale: Option<&mut [f32]>,
    mut dbias: Option<&mut [f32]>,
) {
    let (outer, inner) = (g.outer, g.inner);
    debug_assert_eq!(x.len(), outer * inner);
    debug_assert_eq!(dy.len(), outer * inner);
    debug_assert_eq!(scale.len(), inner);
    debug_assert!(mean.len() == outer && inv_std.len() == outer);
    debug_assert!(dx.as_deref().is_none_or(|d| d.len() == outer * inner));
    debug_assert!(dscale.as_deref().is_none_or(|d| d.len() == inner));
    debug_assert!(dbias.as_deref().is_none_or(|d| d.len() == inner));
    if let Some(ds) = dscale.as_deref_mut() {
        ds.fill(0.0);
    }
    if let Some(db) = dbias.as_deref_mut() {
        db.fill(0.0);
    }
    if inner == 0 {
        return;
    }
    let n = inner as f32;
    for (i, (xr, dyr)) in x
        .chunks_exact(inner)
        .zip(dy.chunks_exact(inner))
        .enumerate()
    {
        let (m, r) = (mean[i], inv_std[i]);
        if let Some(dx) = dx.as_deref_mut() {
            let dxr = &mut dx[i * inner..][..inner];
            let mean_g = super::dot(dyr, scale) / n;
            let mean_gx = super::sum8(inner, |j| dyr[j] * scale[j] * (xr[j] - m)) * r / n;
            for (((dx, x), dy), s) in dxr.iter_mut().zip(xr).zip(dyr).zip(scale) {
                *dx = r * (dy * s - mean_g - (x - m) * r * mean_gx);
            }
        }
        if let Some(ds) = dscale.as_deref_mut() {
            for ((ds, x), dy) in ds.iter_mut().zip(xr).zip(dyr) {
                *ds += dy * (x - m) * r;
            }
        }
        if let Some(db) = dbias.as_deref_mut() {
            for (db, dy) in db.iter_mut().zip(dyr) {
                *db += dy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv;
    use crate::kernels::geometry::Conv2dGeom;
    use crate::kernels::testutil::{Lcg, assert_close, check_grad, weighted_sum};

    struct Owned {
        scale: Vec<f32>,
        bias: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
    }

    impl Owned {
        fn new(rng: &mut Lcg, c: usize) -> Owned {
            let var = rng.vec(c).iter().map(|v| v.abs() + 0.1).collect();
            Owned {
                scale: rng.vec(c),
                bias: rng.vec(c),
                mean: rng.vec(c),
                var,
            }
        }

        fn params(&self) -> BatchNormParams<'_> {
            BatchNormParams {
                scale: &self.scale,
                bias: &self.bias,
                mean: &self.mean,
                var: &self.var,
                epsilon: 1e-5,
            }
        }
    }

    #[test]
    fn forward_and_backward() {
        let mut rng = Lcg::new(40);
        let (n, c, plane) = (2, 3, 10);
        let bn = Owned::new(&mut rng, c);
        let p = bn.params();
        let x = rng.vec(n * c * plane);
        let mut y = vec![f32::NAN; x.len()];
        forward(&p, plane, &x, &mut y);
        let want: Vec<f64> = (0..x.len())
            .map(|i| {
                let ch = (i / plane) % c;
                (x[i] as f64 - p.mean[ch] as f64) * p.scale[ch] as f64
                    / (p.var[ch] as f64 + 1e-5).sqrt()
                    + p.bias[ch] as f64
            })
            .collect();
        assert_close("bn forward", &y, &want, 1e-6);

        let r = rng.vec(x.len());
        let mut dx = vec![f32::NAN; x.len()];
        backward(&p, plane, &r, &mut dx);
        check_grad("bn dx", &x, &dx, |xp| {
            forward(&p, plane, xp, &mut y);
            weighted_sum(&y, &r)
        });
    }

    #[test]
    fn folded_conv_equals_conv_then_bn() {
        let mut rng = Lcg::new(41);
        let g = Conv2dGeom {
            n: 2,
            c_in: 3,
            h: 6,
            w: 5,
            c_out: 4,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1; 4],
            dilation: [1, 1],
            groups: 1,
        };
        let bn = Owned::new(&mut rng, g.c_out);
        let x = rng.vec(g.input_len());
        let w = rng.vec(g.weight_len());
        let cb = rng.vec(g.c_out);
        let mut ws = vec![0.0; conv::workspace_len(&g)];
        let plane = g.out_h() * g.out_w();
        for conv_bias in [None, Some(&cb[..])] {
            let mut y = vec![0.0; g.output_len()];
            conv::forward(&g, &x, &w, conv_bias, &mut y, &mut ws);
            let mut want = vec![0.0; y.len()];
            forward(&bn.params(), plane, &y, &mut want);
            let (wf, bf) = fold_into_conv(&w, conv_bias, &bn.params());
            conv::forward(&g, &x, &wf, Some(&bf), &mut y, &mut ws);
            let want: Vec<f64> = want.iter().map(|v| *v as f64).collect();
            assert_close("folded", &y, &want, 1e-5);
        }
    }

    // ------------------------------------------------------------------------ LayerNorm

    /// f64 reference of LayerNormalization on one row (two-pass, biased variance):
    /// (y, mean, inv_std).
    fn ln_reference(x: &[f32], scale: &[f32], bias: Option<&[f32]>, eps: f32) -> LnRef {
        let n = x.len() as f64;
        let mean = x.iter().map(|v| *v as f64).sum::<f64>() / n;
        let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
        let r = 1.0 / (var + eps as f64).sqrt();
        let y = (0..x.len())
            .map(|j| (x[j] as f64 - mean) * r * scale[j] as f64 + bias.map_or(0.0, |b| b[j] as f64))
            .collect();
        (y, mean, r)
    }

    type LnRef = (Vec<f64>, f64, f64);

    /// (outer, inner) pairs of the LayerNorm tests: inner 1 (σ = 0: y = bias, r = 1/√ε),
    /// 16 (the tiny_layernorm model's last dim) and 128 (its last two dims, 8×16), with one
    /// and several rows.
    const LN_SIZES: [(usize, usize); 6] = [(1, 1), (4, 1), (1, 16), (3, 16), (1, 128), (3, 128)];

    struct LnCase {
        g: LayerNormGeom,
        x: Vec<f32>,
        scale: Vec<f32>,
        bias: Vec<f32>,
    }

    impl LnCase {
        /// x uniform in [offset − 1, offset + 1); scale and bias uniform in [−1, 1).
        fn new(rng: &mut Lcg, outer: usize, inner: usize, offset: f32) -> LnCase {
            LnCase {
                g: LayerNormGeom {
                    outer,
                    inner,
                    epsilon: 1e-5,
                },
                x: rng.vec(outer * inner).iter().map(|v| v + offset).collect(),
                scale: rng.vec(inner),
                bias: rng.vec(inner),
            }
        }

        fn forward(&self, x: &[f32], scale: &[f32], bias: Option<&[f32]>) -> LnOut {
            let g = &self.g;
            let mut y = vec![f32::NAN; g.outer * g.inner];
            let (mut mean, mut inv_std) = (vec![f32::NAN; g.outer], vec![f32::NAN; g.outer]);
            layer_norm_forward(g, x, scale, bias, &mut y, &mut mean, &mut inv_std);
            (y, mean, inv_std)
        }
    }

    type LnOut = (Vec<f32>, Vec<f32>, Vec<f32>);

    #[test]
    fn layer_norm_geom_from_shape_and_axis() {
        let shape = [2, 8, 16];
        let geom = |axis| LayerNormGeom::new(&shape, axis, 1e-5).map(|g| (g.outer, g.inner));
        assert_eq!(geom(-1), Some((16, 16)));
        assert_eq!(geom(2), Some((16, 16)));
        assert_eq!(geom(-2), Some((2, 128)));
        assert_eq!(geom(1), Some((2, 128)));
        assert_eq!(geom(0), Some((1, 256)));
        assert_eq!(geom(-3), Some((1, 256)));
        assert_eq!(geom(3), None);
        assert_eq!(geom(-4), None);
        assert_eq!(LayerNormGeom::new(&[], 0, 1e-5), None);
    }

    /// Against the f64 reference, with and without bias, at offset 0 and at an offset 300×
    /// the spread (where E[x²] − E[x]² in f32 would lose about 5 of its ~7 digits).
    ///
    /// Tolerances: the kernel's f32 rounding is a few ulp per value (mean and variance sums
    /// over ≤ 128 values in 8 lanes: ≲ 16 roundings of 6e-8 each, then a handful of
    /// products), so y is within a few 1e-7 of max|y| (seen: 1.5e-7): 1e-6. At offset 300
    /// the f32 mean itself can only be stored to ulp(300)/2 = 1.5e-5, which shifts every
    /// x − μ by up to that; times r ≈ 1.7 and |scale| < 1 that is ≤ 2.6e-5 of max|y| ≈ 1–2
    /// (seen: 1.7e-5): 1e-4 there. The statistics: mean to 1e-6 of max|x|, inv_std to 1e-5
    /// relative (at inner 1, σ = 0 and inv_std = 1/√ε: a misplaced ε shows there).
    #[test]
    fn layer_norm_forward_matches_f64() {
        let mut rng = Lcg::new(42);
        for offset in [0.0f32, 300.0] {
            for (outer, inner) in LN_SIZES {
                let c = LnCase::new(&mut rng, outer, inner, offset);
                for bias in [Some(&c.bias[..]), None] {
                    let (y, mean, inv_std) = c.forward(&c.x, &c.scale, bias);
                    let (mut want_y, mut want_m, mut want_r) = (vec![], vec![], vec![]);
                    for xr in c.x.chunks_exact(inner) {
                        let (y, m, r) = ln_reference(xr, &c.scale, bias, c.g.epsilon);
                        want_y.extend(y);
                        want_m.push(m);
                        want_r.push(r);
                    }
                    let what =
                        format!("ln {outer}x{inner} offset {offset} bias {}", bias.is_some());
                    let tol = if offset == 0.0 { 1e-6 } else { 1e-4 };
                    assert_close(&format!("{what}: y"), &y, &want_y, tol);
                    let x_scale = c.x.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
                    for (i, (m, w)) in mean.iter().zip(&want_m).enumerate() {
                        let err = (*m as f64 - w).abs() / x_scale;
                        assert!(err <= 1e-6, "{what}: mean[{i}] {m} vs {w}");
                    }
                    for (i, (r, w)) in inv_std.iter().zip(&want_r).enumerate() {
                        let err = (*r as f64 - w).abs() / w;
                        assert!(err <= 1e-5, "{what}: inv_std[{i}] {r} vs {w}");
                    }
                }
            }
        }
    }

    /// dx, dscale and dbias against central differences (testutil's `check_grad`, whose
    /// comment explains the 1e-3 bound) of L = Σ y·w for a random w, i.e. dy = w.
    ///
    /// Why that bound holds here too: LayerNorm is smooth in x (r = 1/√(σ²+ε) with σ² ≈ 1/3
    /// for these inputs, far from the ε floor), and its third derivatives are O(r³) ≈ 5, so
    /// the eps² = 1e-4 truncation term is ~1e-4 of the gradient's scale; perturbing one x
    /// moves all `inner` outputs of its row, so up to 128 f32 roundings of y (each ≤ 6e-8 of
    /// |y|, plus the rounding of μ and r shared by the row) enter each difference, which over
    /// 2·eps = 0.02 is up to a few 1e-4 of a gradient of order 1 at inner 128 (the worst
    /// below). y is linear in scale and bias, so there only rounding counts.
    /// At inner 1 every gradient but dbias is exactly zero (x̂ = 0, y = bias), and the
    /// differences are exactly zero too. Worst seen: dx 3.1e-4 (inner 128), 8.7e-5 (inner
    /// 16); dscale and dbias ≤ 1.9e-5. Dropping the x̂·mean(g·x̂) term, using the unbiased
    /// variance or x instead of x − μ in dscale fails with errors of 1e-2 to 1.
    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let mut rng = Lcg::new(43);
        for (outer, inner) in LN_SIZES {
            let c = LnCase::new(&mut rng, outer, inner, 0.0);
            let w = rng.vec(outer * inner);
            let (_, mean, inv_std) = c.forward(&c.x, &c.scale, Some(&c.bias));
            let mut dx = vec![f32::NAN; c.x.len()];
            let (mut dscale, mut dbias) = (vec![f32::NAN; inner], vec![f32::NAN; inner]);
            layer_norm_backward(
                &c.g,
                &c.x,
                &c.scale,
                &mean,
                &inv_std,
                &w,
                Some(&mut dx),
                Some(&mut dscale),
                Some(&mut dbias),
            );
            let what = format!("ln {outer}x{inner}");
            let loss =
                |x: &[f32], s: &[f32], b: &[f32]| weighted_sum(&c.forward(x, s, Some(b)).0, &w);
            check_grad(&format!("{what} dx"), &c.x, &dx, |xp| {
                loss(xp, &c.scale, &c.bias)
            });
            check_grad(&format!("{what} dscale"), &c.scale, &dscale, |sp| {
                loss(&c.x, sp, &c.bias)
            });
            check_grad(&format!("{what} dbias"), &c.bias, &dbias, |bp| {
                loss(&c.x, &c.scale, bp)
            });

            // Each gradient alone is the same (no hidden dependence between the outputs),
            // and the outputs are overwritten, not accumulated into.
            for (which, want) in [(0, &dx), (1, &dscale), (2, &dbias)] {
                let mut got = vec![1.0; want.len()];
                let mut outs: [Option<&mut [f32]>; 3] = [None, None, None];
                outs[which] = Some(&mut got);
                let [gx, gs, gb] = outs;
                layer_norm_backward(&c.g, &c.x, &c.scale, &mean, &inv_std, &w, gx, gs, gb);
                assert_eq!(&got, want, "{what}: gradient {which} alone");
            }
        }
    }

    /// Without bias: the same statistics, and y without the bias term (the backward never
    /// reads the bias, so it has nothing to test here).
    #[test]
    fn layer_norm_without_bias() {
        let mut rng = Lcg::new(44);
        let c = LnCase::new(&mut rng, 3, 16, 0.0);
        let (y_b, mean, inv_std) = c.forward(&c.x, &c.scale, Some(&c.bias));
        let (y, mean0, inv_std0) = c.forward(&c.x, &c.scale, None);
        assert_eq!((&mean, &inv_std), (&mean0, &inv_std0));
        for (i, (y, yb)) in y.iter().zip(&y_b).enumerate() {
            assert!((y + c.bias[i % 16] - yb).abs() <= 1e-6, "[{i}]");
        }
    }
}
