//! Seeded data and the checks shared by the kernel tests (no `rand`: a 64-bit LCG is enough
//! to make small reproducible tensors).

pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next_u64(&mut self) -> u64 {
        // Knuth's MMIX multiplier and increment; callers only use the high bits, which are
        // the well-mixed ones in an LCG.
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }

    /// Uniform in [-1, 1), on a 2⁻²³ grid so every value is exact in f32.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform()).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32) % n as u64) as usize
    }

    /// `len` values `gap` apart in shuffled order: any two differ by at least `gap`, so a
    /// finite-difference step below gap/2 never reorders them (max pooling, arg-max).
    pub fn distinct(&mut self, len: usize, gap: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..len)
            .map(|i| (i as f32 - len as f32 / 2.0) * gap)
            .collect();
        for i in (1..len).rev() {
            v.swap(i, self.below(i + 1));
        }
        v
    }

    /// Uniform values in [-range, range) moved at least `margin` away from every kink,
    /// so a finite-difference step smaller than `margin` stays on one linear piece.
    pub fn away_from(&mut self, len: usize, range: f32, kinks: &[f32], margin: f32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                loop {
                    let v = self.uniform() * range;
                    if kinks.iter().all(|k| (v - k).abs() >= margin) {
                        break v;
                    }
                }
            })
            .collect()
    }
}

/// Σ out·r in f64: the scalar loss L whose gradient w.r.t. `out` is `r`.
pub fn weighted_sum(out: &[f32], r: &[f32]) -> f64 {
    assert_eq!(out.len(), r.len());
    out.iter().zip(r).map(|(o, r)| *o as f64 * *r as f64).sum()
}

/// Forward check against an f64 reference, relative to the reference's largest magnitude
/// (the kernels reorder f32 sums, so single entries near zero carry absolute, not relative,
/// error).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs() / scale;
        assert!(
            err <= tol,
            "{what}: [{i}] got {g}, want {w} (err {err:.2e} > {tol:.0e})"
        );
    }
}

/// Finite-difference step for [`check_grad`].
pub const FD_EPS: f32 = 1e-2;

/// Checks `analytic` = ∂loss/∂x by central differences of `loss`, which runs the f32
/// forward on a perturbed copy of `x` and returns Σ out·r in f64.
///
/// Why eps = 1e-2 and a 1e-3 bound hold in f32: the analytic gradient is exact up to f32
/// rounding (~1e-6 relative). In the difference quotient, outputs that do not depend on
/// the perturbed element are bit-identical in both evaluations and cancel exactly; those
/// that do carry ~ulp(out)/2 of rounding each, which divided by 2·eps gives 1e-5–1e-4 of
/// the gradient's scale (the most for cross-entropy, whose loss value itself is rounded to
/// f32). Truncation, eps²·f‴/6, is zero for the piecewise-linear ops (their tests keep
/// inputs more than eps from any kink) and ≤ ~1e-4 for the smooth ones on the input ranges
/// the tests use. Each entry's error is relative to max(|numeric|, |analytic|,
/// 0.1·max|numeric|): entries far below the gradient's scale are judged at that scale,
/// where their own relative error is only cancellation noise. Worst seen over the suite:
/// 3.3e-4 (cross-entropy); a wrong gradient (a dropped term, a transposed index) shows up
/// as errors of order 1.
#[track_caller]
pub fn check_grad(what: &str, x: &[f32], analytic: &[f32], mut loss: impl FnMut(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: length");
    let mut xp = x.to_vec();
    let numeric: Vec<f64> = (0..x.len())
        .map(|i| {
            let (hi, lo) = (x[i] + FD_EPS, x[i] - FD_EPS);
            xp[i] = hi;
            let l_hi = loss(&xp);
            xp[i] = lo;
            let l_lo = loss(&xp);
            xp[i] = x[i];
            // The step actually taken, after f32 rounding of x ± eps.
            (l_hi - l_lo) / (hi as f64 - lo as f64)
        })
        .collect();
    let floor = 0.1 * numeric.iter().fold(1e-6f64, |m, n| m.max(n.abs()));
    for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
        let a = *a as f64;
        let err = (a - n).abs() / n.abs().max(a.abs()).max(floor);
        assert!(
            err <= 1e-3,
            "{what}: [{i}] analytic {a}, numeric {n} (rel err {err:.2e})"
        );
    }
}

/// A conv of `k`×`k` taps padded by `k / 2` on every side (a "same" conv at stride 1).
#[allow(clippy::too_many_arguments)]
pub fn square_conv(
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    groups: usize,
) -> crate::kernels::geometry::Conv2dGeom {
    crate::kernels::geometry::Conv2dGeom {
        n,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        stride: [stride, stride],
        pad: [k / 2; 4],
        dilation: [1, 1],
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "rel err")]
    fn check_grad_rejects_a_slightly_wrong_gradient() {
        // L = Σ x²·r has gradient 2·x·r; report 1% too much.
        let mut rng = Lcg::new(90);
        let (x, r) = (rng.vec(8), rng.vec(8));
        let wrong: Vec<f32> = x.iter().zip(&r).map(|(x, r)| 2.02 * x * r).collect();
        check_grad("x²", &x, &wrong, |xp| {
            xp.iter().zip(&r).map(|(x, r)| (x * x * r) as f64).sum()
        });
    }

    #[test]
    fn check_grad_accepts_the_right_one() {
        let mut rng = Lcg::new(90);
        let (x, r) = (rng.vec(8), rng.vec(8));
        let right: Vec<f32> = x.iter().zip(&r).map(|(x, r)| 2.0 * x * r).collect();
        check_grad("x²", &x, &right, |xp| {
            xp.iter().zip(&r).map(|(x, r)| (x * x * r) as f64).sum()
        });
    }
}
