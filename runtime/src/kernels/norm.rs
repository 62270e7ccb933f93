//! BatchNormalization with frozen running statistics (inference mode), as fine-tuning uses
//! it (DESIGN §3): an affine map per channel, so its backward needs no saved tensor, and it
//! can be folded into the conv before it.

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
}
