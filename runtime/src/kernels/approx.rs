//! `exp` and `erf` in straight-line f32 arithmetic, so that a loop calling them vectorizes
//! (a libm call per element does not: GELU's `erff` and its `expf` were a sixth of a
//! DINOv2 step). Both are accurate to a few units in the last place of the result's scale,
//! well inside what a training step can tell from the correctly rounded values.

use super::mul_add;

/// ln 2 split in two, so that `x − n·ln2` is exact for the |n| ≤ 128 the range allows.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and then subtracting 1.5·2²³ rounds a float below 2²² in magnitude to an integer
/// (the default round-to-nearest), in two vectorizable operations.
const ROUND: f32 = 12_582_912.0;
/// Below this, eˣ is a subnormal or zero: the result is 0.
const EXP_MIN: f32 = -87.336_54;
/// Above this, eˣ overflows to +∞.
const EXP_MAX: f32 = 88.722_83;

/// eˣ with a relative error below 2e-7: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by its
/// Taylor polynomial of degree 7 (truncation below 6e-9), and 2ⁿ put into the exponent bits.
/// Exactly 0 below −87.3 (where eˣ would be subnormal), +∞ above 88.7, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let c = x.clamp(EXP_MIN, EXP_MAX);
    let t = c * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    // Horner's rule on 1/k!, highest power first.
    let mut p = 1.0 / 5040.0;
    for k in (1..=6).rev() {
        p = mul_add(p, r, INV_FACTORIAL[k]);
    }
    p = mul_add(p, r, 1.0);
    // n ∈ [−126, 128] as an integer: the low bits of t hold it (offset by ROUND's). Not
    // `n as i32`, whose saturating conversion LLVM does lane by lane. 2¹²⁸ is not a float:
    // 2ⁿ is applied in two halves.
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let half = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let y = p * half(n >> 1) * half(n - (n >> 1));
    if x < EXP_MIN {
        0.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        // NaN fails both comparisons above and the clamp keeps it: it comes out NaN.
        y
    }
}

/// 1/k! for k = 0..=6.
const INV_FACTORIAL: [f32; 7] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
];

/// erf(x), with an error below 4e-7 absolute and, near 0, 1e-6 relative. For |x| < 1/2 its
/// Taylor series to x¹³ (truncation below 2e-8), odd and exact at 0; beyond,
/// Abramowitz & Stegun 7.1.26: erf x = 1 − (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵)·e^(−x²) with
/// t = 1/(1 + p·x) (1.5e-7 absolute), sign restored.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_gauss(x).0
}

/// (erf x, e^(−x²)): the second is a term of the first, and GELU's gradient needs both.
#[inline(always)]
pub fn erf_gauss(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / mul_add(ERF_P, a, 1.0);
    let mut q = ERF_A[4];
    for &c in ERF_A[..4].iter().rev() {
        q = mul_add(q, t, c);
    }
    let gauss = exp(-a * a);
    let tail = (1.0 - q * t * gauss).copysign(x);
    let x2 = x * x;
    let mut s = ERF_TAYLOR[6];
    for &c in ERF_TAYLOR[..6].iter().rev() {
        s = mul_add(s, x2, c);
    }
    (if a < 0.5 { x * s } else { tail }, gauss)
}

/// Abramowitz & Stegun 7.1.26's p and a₁…a₅.
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152_1,
    1.061_405_4,
];
/// erf x = 2/√π · Σ (−1)ᵏ x²ᵏ⁺¹ / (k!·(2k + 1)): the coefficients of x²ᵏ⁺¹, k = 0..=6.
const ERF_TAYLOR: [f32; 7] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    -0.376_126_4,
    0.112_837_92,
    -0.026_866_17,
    0.005_223_977,
    -0.000_854_832_7,
    0.000_120_553_33,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 97th float in [lo, hi] (a few hundred thousand values), and the ends.
    fn grid(lo: f32, hi: f32) -> impl Iterator<Item = f32> {
        let n = 400_000;
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_is_within_two_ten_millionths_relative() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.5) {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_four_ten_millionths_absolute() {
        let (mut worst, mut worst_near_0) = (0.0f64, 0.0f64);
        for x in grid(-6.0, 6.0).chain(grid(-1e-3, 1e-3)) {
            let (got, want) = (erf(x) as f64, libm::erf(x as f64));
            worst = worst.max((got - want).abs());
            if x != 0.0 && x.abs() < 0.5 {
                worst_near_0 = worst_near_0.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 4e-7, "worst absolute error {worst:e}");
        assert!(
            worst_near_0 < 1e-6,
            "worst relative error below 1/2 {worst_near_0:e}"
        );
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
    }
}
