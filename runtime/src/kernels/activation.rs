//! Pointwise activations, forward and backward.
//!
//! Backward passes take the forward input `x` (Sigmoid: its output `y`, which is what its
//! derivative needs). At a kink the derivative is taken from the flat side, with strict
//! inequalities, as PyTorch's ReLU, Hardtanh (ReLU6), Hardsigmoid and LeakyReLU do; so for
//! ReLU and Clip only the sign pattern of `x` is needed (a 1-bit mask would do).

use super::approx;
use super::simd::dispatch_avx2;
use crate::threads;

/// `v` clipped to `[lo, hi]`, NaN staying NaN as in PyTorch (`f32::max` would make it
/// `lo`, so a NaN input would train on silently). Every clip of the kernels goes through it.
/// Written as x86's max and min compare (`a > b ? a : b`, the second operand when either
/// is NaN) with `v` second: one instruction each, where `is_nan` and `f32::max` took five
/// (an SSE2 bias-and-clip pass was 15 % of a MobileNetV2 step).
#[inline(always)]
pub fn clip(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if lo > v { lo } else { v };
    if hi < v { hi } else { v }
}

pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    map(x, y, |x| clip(x, 0.0, f32::INFINITY));
}

/// `x` may be ReLU's input or output: both have the same positive set.
pub fn relu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_grad(x, dy, dx, |x, d| if x > 0.0 { d } else { 0.0 });
}

/// Clip(min, max); ReLU6 is Clip(0, 6).
pub fn clip_forward(min: f32, max: f32, x: &[f32], y: &mut [f32]) {
    map(x, y, |x| clip(x, min, max));
}

/// Clip applied where the values are (a conv's output, fused).
pub fn clip_in_place(min: f32, max: f32, y: &mut [f32]) {
    for v in y {
        *v = clip(*v, min, max);
    }
}

pub fn clip_backward(min: f32, max: f32, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_grad(x, dy, dx, |x, d| if x > min && x < max { d } else { 0.0 });
}

/// Where a Clip(min, max) passes its gradient, one bit per element: all that its backward
/// needs, 1/32 of the input it would otherwise keep. ReLU is min 0, max ∞. Split among the
/// threads in whole words when large.
pub fn pass_mask(min: f32, max: f32, x: &[f32], mask: &mut [u32]) {
    debug_assert_eq!(mask.len(), x.len().div_ceil(32));
    let parts = threads::parts_for(x.len() * MASK_COST);
    threads::for_runs(mask, x.len().div_ceil(32), 1, 1, parts, |words, m| {
        let xs = &x[words.start * 32..x.len().min(words.end * 32)];
        // SAFETY: the CPU has AVX2 (`dispatch_avx2!` checks it, with FMA).
        dispatch_avx2!(unsafe { pass_mask_avx2(min, max, xs, m) });
        pass_mask_words(min, max, xs, m);
    });
}

fn pass_mask_words(min: f32, max: f32, x: &[f32], mask: &mut [u32]) {
    for (word, chunk) in mask.iter_mut().zip(x.chunks(32)) {
        *word = chunk
            .iter()
            .enumerate()
            .fold(0, |w, (i, &v)| w | (u32::from(v > min && v < max) << i));
    }
}

/// [`pass_mask_words`] eight elements to a compare: the scalar loop's bit a time, serial
/// and unvectorised, made three 8×960×7×7 masks 0.5 ms of a 224² step.
///
/// # Safety
/// The CPU must have AVX2; `mask` holds a word per 32 elements of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pass_mask_avx2(min: f32, max: f32, x: &[f32], mask: &mut [u32]) {
    use std::arch::x86_64::*;
    let (lo, hi) = (_mm256_set1_ps(min), _mm256_set1_ps(max));
    let chunks = x.chunks_exact(32);
    let (tail, whole) = (chunks.remainder(), x.len() / 32);
    for (word, chunk) in mask.iter_mut().zip(chunks) {
        *word = (0..4).fold(0, |w, q| {
            // SAFETY: 8q + 8 ≤ 32 = chunk.len(). Ordered compares: a NaN passes nothing.
            let v = unsafe { _mm256_loadu_ps(chunk.as_ptr().add(8 * q)) };
            let pass = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(v, lo),
                _mm256_cmp_ps::<_CMP_LT_OQ>(v, hi),
            );
            w | (_mm256_movemask_ps(pass) as u32) << (8 * q)
        });
    }
    pass_mask_words(min, max, tail, &mut mask[whole..]);
}

/// dy where `mask` (from [`pass_mask`]) is set, else 0; split like it.
pub fn masked_grad(mask: &[u32], dy: &[f32], dx: &mut [f32]) {
    debug_assert!(dy.len() == dx.len() && mask.len() == dy.len().div_ceil(32));
    let parts = threads::parts_for(dx.len() * MASK_COST);
    threads::for_runs(dx, dy.len(), 1, 32, parts, |r, out| {
        let (m, d) = (&mask[r.start / 32..], &dy[r]);
        // SAFETY: the CPU has AVX2 (`dispatch_avx2!` checks it, with FMA).
        dispatch_avx2!(unsafe { masked_grad_avx2(m, d, out) });
        masked_grad_words(m, d, out);
    });
}

fn masked_grad_words(mask: &[u32], dy: &[f32], dx: &mut [f32]) {
    for ((&word, d), o) in mask.iter().zip(dy.chunks(32)).zip(dx.chunks_mut(32)) {
        for (i, (o, &d)) in o.iter_mut().zip(d).enumerate() {
            *o = if word >> i & 1 != 0 { d } else { 0.0 };
        }
    }
}

/// [`masked_grad_words`] eight elements at a time: each byte of a word spread over the
/// lanes as all-ones or zeros, which select dy's bits (a NaN or −0 kept as it is).
///
/// # Safety
/// The CPU must have AVX2; `dx` as long as `dy`, `mask` a word per 32 of them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn masked_grad_avx2(mask: &[u32], dy: &[f32], dx: &mut [f32]) {
    use std::arch::x86_64::*;
    let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let whole = dy.len() / 32;
    for (j, &word) in mask[..whole].iter().enumerate() {
        for q in 0..4 {
            let byte = _mm256_set1_epi32((word >> (8 * q)) as i32);
            let on = _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bits), lane_bits);
            let at = 32 * j + 8 * q;
            // SAFETY: at + 8 ≤ 32·whole ≤ dy.len() = dx.len().
            unsafe {
                let d = _mm256_loadu_ps(dy.as_ptr().add(at));
                _mm256_storeu_ps(
                    dx.as_mut_ptr().add(at),
                    _mm256_and_ps(d, _mm256_castsi256_ps(on)),
                );
            }
        }
    }
    let done = 32 * whole;
    masked_grad_words(&mask[whole..], &dy[done..], &mut dx[done..]);
}

/// Work units per element of the mask kernels for splitting them among the threads: bound
/// by memory, a 224² step's 8 × 960 × 7 × 7 masks gain from a second core.
const MASK_COST: usize = 4;

pub fn leaky_relu_forward(alpha: f32, x: &[f32], y: &mut [f32]) {
    map(x, y, |x| if x >= 0.0 { x } else { alpha * x });
}

pub fn leaky_relu_backward(alpha: f32, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_grad(x, dy, dx, |x, d| if x > 0.0 { d } else { alpha * d });
}

/// PRelu over an (N, C, `plane`) tensor: `slope` holds one value (shared) or one per channel.
pub fn prelu_forward(plane: usize, x: &[f32], slope: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    if plane == 0 {
        return;
    }
    for (i, (xp, yp)) in x
        .chunks_exact(plane)
        .zip(y.chunks_exact_mut(plane))
        .enumerate()
    {
        let s = slope_of(slope, i);
        map(xp, yp, |x| if x >= 0.0 { x } else { s * x });
    }
}

/// dx, and dslope summed over everything that shares each slope value.
pub fn prelu_backward(
    plane: usize,
    x: &[f32],
    slope: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dslope: &mut [f32],
) {
    debug_assert_eq!(dslope.len(), slope.len());
    debug_assert!(x.len() == dy.len() && x.len() == dx.len());
    dslope.fill(0.0);
    if plane == 0 {
        return;
    }
    let planes = x
        .chunks_exact(plane)
        .zip(dy.chunks_exact(plane))
        .zip(dx.chunks_exact_mut(plane));
    for (i, ((xp, dyp), dxp)) in planes.enumerate() {
        let s = slope_of(slope, i);
        map_grad(xp, dyp, dxp, |x, d| if x > 0.0 { d } else { s * d });
        let ds: f32 = xp
            .iter()
            .zip(dyp)
            .filter(|(x, _)| **x <= 0.0)
            .map(|(x, d)| x * d)
            .sum();
        dslope[i % slope.len()] += ds;
    }
}

/// The slope of plane `i` (planes run over N then C; a single slope is shared).
fn slope_of(slope: &[f32], i: usize) -> f32 {
    debug_assert!(!slope.is_empty());
    slope[i % slope.len()]
}

pub fn sigmoid_forward(x: &[f32], y: &mut [f32]) {
    // exp(-x) overflows to +inf for very negative x, giving exactly 0: no special case.
    map(x, y, |x| 1.0 / (1.0 + approx::exp(-x)));
}

/// From the output: dx = dy·y·(1 − y).
pub fn sigmoid_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_grad(y, dy, dx, |y, d| d * y * (1.0 - y));
}

/// HardSigmoid: max(0, min(1, alpha·x + beta)).
pub fn hard_sigmoid_forward(alpha: f32, beta: f32, x: &[f32], y: &mut [f32]) {
    map(x, y, |x| (alpha * x + beta).clamp(0.0, 1.0));
}

pub fn hard_sigmoid_backward(alpha: f32, beta: f32, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_grad(x, dy, dx, |x, d| {
        let v = alpha * x + beta;
        if v > 0.0 && v < 1.0 { alpha * d } else { 0.0 }
    });
}

/// HardSwish: x·HardSigmoid(x) with alpha = 1/6, beta = 1/2 (ONNX).
pub fn hard_swish_forward(x: &[f32], y: &mut [f32]) {
    map(x, y, |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0));
}

/// d/dx = 0 below −3, x/3 + 1/2 on [−3, 3], 1 above (PyTorch's convention at ±3).
pub fn hard_swish_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_grad(x, dy, dx, |x, d| {
        if x < -3.0 {
            0.0
        } else if x <= 3.0 {
            d * (x / 3.0 + 0.5)
        } else {
            d
        }
    });
}

pub fn tanh_forward(x: &[f32], y: &mut [f32]) {
    map(x, y, f32::tanh);
}

/// From the output: dx = dy·(1 − y²).
pub fn tanh_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_grad(y, dy, dx, |y, d| d * (1.0 - y * y));
}

/// √(2/π), the tanh approximation's scale.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU: x·Φ(x), Φ the standard normal CDF through erf, as PyTorch's `approximate='none'`;
/// with `tanh`, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_forward(tanh: bool, x: &[f32], y: &mut [f32]) {
    match tanh {
        false => map(x, y, |x| {
            0.5 * x * (1.0 + approx::erf(x * std::f32::consts::FRAC_1_SQRT_2))
        }),
        true => map(x, y, |x| {
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
        }),
    }
}

/// d/dx x·Φ(x) = Φ(x) + x·φ(x); of the tanh form, 0.5·(1 + t) + 0.5·x·(1 − t²)·u′ with
/// t = tanh(u), u = √(2/π)·(x + 0.044715·x³).
pub fn gelu_backward(tanh: bool, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    match tanh {
        false => map_grad(x, dy, dx, |x, d| {
            // e^(−(x/√2)²) = e^(−x²/2): the density's exponential comes with erf.
            let (erf, gauss) = approx::erf_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
            let cdf = 0.5 * (1.0 + erf);
            let pdf =
                gauss * (0.5 * std::f32::consts::FRAC_2_SQRT_PI) * std::f32::consts::FRAC_1_SQRT_2;
            d * (cdf + x * pdf)
        }),
        true => map_grad(x, dy, dx, |x, d| {
            let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
            let t = u.tanh();
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
            d * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
        }),
    }
}

/// Work units per element for splitting an elementwise map among the threads: the
/// transcendental ones (erf, tanh, exp) cost tens of cycles each.
const ELEMENT_COST: usize = 16;

/// `y = f(x)` elementwise, split among the threads when large (a transformer's GELU runs
/// on 8 × 65 × 1536 values per block).
fn map(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    debug_assert_eq!(x.len(), y.len());
    let parts = threads::parts_for(y.len() * ELEMENT_COST);
    threads::for_runs(y, x.len(), 1, 1, parts, |r, ys| {
        // Cut to the output's length, so the indexing below needs no bounds checks.
        let xs = &x[r][..ys.len()];
        each(ys, |i| f(xs[i]));
    });
}

/// `dx = f(saved, dy)` elementwise, split like [`map`].
fn map_grad(saved: &[f32], dy: &[f32], dx: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    debug_assert!(saved.len() == dy.len() && dy.len() == dx.len());
    let parts = threads::parts_for(dx.len() * ELEMENT_COST);
    threads::for_runs(dx, saved.len(), 1, 1, parts, |r, dxs| {
        let (ss, ds) = (&saved[r.clone()][..dxs.len()], &dy[r][..dxs.len()]);
        each(dxs, |i| f(ss[i], ds[i]));
    });
}

/// `out[i] = f(i)` for every `i`, compiled a second time for AVX2 (8 lanes instead of
/// SSE2's 4; the functions of [`approx`] vectorize there too).
#[inline(always)]
fn each(out: &mut [f32], f: impl Fn(usize) -> f32) {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { each_avx2(out, &f) });
    each_body(out, &f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn each_avx2(out: &mut [f32], f: &impl Fn(usize) -> f32) {
    each_body(out, f)
}

#[inline(always)]
fn each_body(out: &mut [f32], f: &impl Fn(usize) -> f32) {
    out.iter_mut().enumerate().for_each(|(i, o)| *o = f(i));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{FD_EPS, Lcg, assert_close, check_grad, weighted_sum};

    #[test]
    fn masks_give_the_clip_and_relu_gradients() {
        masks_match_the_backward_passes();
    }

    #[test]
    fn portable_masks_give_the_clip_and_relu_gradients() {
        crate::kernels::simd::PORTABLE.set(true);
        masks_match_the_backward_passes();
    }

    fn masks_match_the_backward_passes() {
        let mut rng = Lcg::new(3);
        // 70 elements: two full words and a partial one; 1000: whole vectors and a tail.
        for n in [70, 1000] {
            let mut x: Vec<f32> = rng.vec(n).iter().map(|v| 8.0 * v).collect();
            // On the kinks, and NaN: no gradient passes.
            x[5] = 0.0;
            x[40] = 6.0;
            x[n - 1] = f32::NAN;
            let mut dy = rng.vec(n);
            dy[7] = -0.0;
            for (min, max) in [(0.0, 6.0), (0.0, f32::INFINITY), (-1.0, 1.0)] {
                let mut mask = vec![0; n.div_ceil(32)];
                pass_mask(min, max, &x, &mut mask);
                let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
                masked_grad(&mask, &dy, &mut got);
                if max == f32::INFINITY {
                    relu_backward(&x, &dy, &mut want);
                } else {
                    clip_backward(min, max, &x, &dy, &mut want);
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "n {n}, clip ({min}, {max})");
            }
        }
    }

    const N: usize = 60;

    /// Forward against `f64` reference `f`, and backward against finite differences, for
    /// inputs in ±`range` kept 2·eps away from the listed kinks.
    #[track_caller]
    fn check(
        name: &str,
        seed: u64,
        range: f32,
        kinks: &[f32],
        fwd: impl Fn(&[f32], &mut [f32]),
        bwd: impl Fn(&[f32], &[f32], &[f32], &mut [f32]),
        reference: impl Fn(f64) -> f64,
    ) {
        let mut rng = Lcg::new(seed);
        let x = rng.away_from(N, range, kinks, 2.0 * FD_EPS);
        let r = rng.vec(N);
        let mut y = vec![f32::NAN; N];
        fwd(&x, &mut y);
        let want: Vec<f64> = x.iter().map(|x| reference(*x as f64)).collect();
        assert_close(name, &y, &want, 1e-6);
        let mut dx = vec![f32::NAN; N];
        bwd(&x, &y, &r, &mut dx);
        check_grad(name, &x, &dx, |xp| {
            fwd(xp, &mut y);
            weighted_sum(&y, &r)
        });
    }

    #[test]
    fn gelu_in_both_forms() {
        let exact = |x: f64| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt()));
        check(
            "gelu",
            58,
            5.0,
            &[],
            |x, y| gelu_forward(false, x, y),
            |x, _, d, dx| gelu_backward(false, x, d, dx),
            exact,
        );
        let tanh = |x: f64| {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + u.tanh())
        };
        check(
            "gelu tanh",
            59,
            5.0,
            &[],
            |x, y| gelu_forward(true, x, y),
            |x, _, d, dx| gelu_backward(true, x, d, dx),
            tanh,
        );
        // torch.nn.functional.gelu(x[, approximate='tanh']) and its gradient, torch 2.15.
        let x = [-3.0, -1.0, 0.5, 1.0, 2.0];
        let torch = [
            (
                false,
                [
                    -0.004050225,
                    -0.15865526,
                    0.34573123,
                    0.841_344_7,
                    1.9544997,
                ],
            ),
            (
                true,
                [-0.003637433, -0.158_808, 0.345_714, 0.841_192, 1.9545977],
            ),
        ];
        let grads = [
            (
                false,
                [
                    -0.011945605,
                    -0.08331543,
                    0.86749506,
                    1.083_315_4,
                    1.0852319,
                ],
            ),
            (
                true,
                [
                    -0.011584297,
                    -0.08296409,
                    0.867_369_9,
                    1.082_964_1,
                    1.0860993,
                ],
            ),
        ];
        for ((tanh, y_want), (_, g_want)) in torch.iter().zip(&grads) {
            let (mut y, mut g) = ([0.0; 5], [0.0; 5]);
            gelu_forward(*tanh, &x, &mut y);
            gelu_backward(*tanh, &x, &[1.0; 5], &mut g);
            let want = |w: &[f32; 5]| w.iter().map(|&v| v as f64).collect::<Vec<_>>();
            assert_close("gelu vs torch", &y, &want(y_want), 1e-6);
            assert_close("gelu grad vs torch", &g, &want(g_want), 1e-6);
        }
    }

    #[test]
    fn nan_stays_nan_as_in_pytorch() {
        let x = [f32::NAN, -1.0, 2.0, 9.0];
        let mut y = [0.0; 4];
        relu_forward(&x, &mut y);
        assert!(y[0].is_nan() && y[1..] == [0.0, 2.0, 9.0]);
        clip_forward(0.0, 6.0, &x, &mut y);
        assert!(y[0].is_nan() && y[1..] == [0.0, 2.0, 6.0]);
        let mut z = x;
        clip_in_place(0.0, 6.0, &mut z);
        assert!(z[0].is_nan() && z[1..] == [0.0, 2.0, 6.0]);
    }

    #[test]
    fn relu_clip_leaky() {
        check(
            "relu",
            50,
            2.0,
            &[0.0],
            relu_forward,
            |x, _, d, dx| relu_backward(x, d, dx),
            |x| x.max(0.0),
        );
        // ReLU's backward also works from its output.
        check(
            "relu from y",
            51,
            2.0,
            &[0.0],
            relu_forward,
            |_, y, d, dx| relu_backward(y, d, dx),
            |x| x.max(0.0),
        );
        check(
            "relu6",
            52,
            8.0,
            &[0.0, 6.0],
            |x, y| clip_forward(0.0, 6.0, x, y),
            |x, _, d, dx| clip_backward(0.0, 6.0, x, d, dx),
            |x| x.clamp(0.0, 6.0),
        );
        check(
            "clip",
            53,
            2.0,
            &[-0.5, 0.7],
            |x, y| clip_forward(-0.5, 0.7, x, y),
            |x, _, d, dx| clip_backward(-0.5, 0.7, x, d, dx),
            |x| x.clamp(-0.5, 0.7),
        );
        check(
            "leaky",
            54,
            2.0,
            &[0.0],
            |x, y| leaky_relu_forward(0.1, x, y),
            |x, _, d, dx| leaky_relu_backward(0.1, x, d, dx),
            |x| if x >= 0.0 { x } else { 0.1f32 as f64 * x },
        );
    }

    #[test]
    fn sigmoid_family() {
        check(
            "sigmoid",
            55,
            6.0,
            &[],
            sigmoid_forward,
            |_, y, d, dx| sigmoid_backward(y, d, dx),
            |x| 1.0 / (1.0 + (-x).exp()),
        );
        check(
            "tanh",
            60,
            4.0,
            &[],
            tanh_forward,
            |_, y, d, dx| tanh_backward(y, d, dx),
            f64::tanh,
        );
        let (a, b) = (0.2f32, 0.5f32);
        check(
            "hard sigmoid",
            56,
            4.0,
            &[-2.5, 2.5],
            |x, y| hard_sigmoid_forward(a, b, x, y),
            |x, _, d, dx| hard_sigmoid_backward(a, b, x, d, dx),
            |x| (a as f64 * x + b as f64).clamp(0.0, 1.0),
        );
        check(
            "hard swish",
            57,
            5.0,
            &[-3.0, 3.0],
            hard_swish_forward,
            |x, _, d, dx| hard_swish_backward(x, d, dx),
            |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        );
        let (mut y, mut dx) = ([0.0; 3], [0.0; 3]);
        sigmoid_forward(&[-200.0, 0.0, 200.0], &mut y);
        assert_eq!(y, [0.0, 0.5, 1.0]);
        // At the joins PyTorch takes the middle branch: −1/2 at −3, 3/2 at 3.
        hard_swish_backward(&[-3.0, 3.0, 3.5], &[1.0; 3], &mut dx);
        assert_eq!(dx, [-0.5, 1.5, 1.0]);
    }

    #[test]
    fn prelu_per_channel_and_shared() {
        let mut rng = Lcg::new(58);
        let (n, c, plane) = (2, 3, 7);
        for slope in [rng.vec(c), rng.vec(1)] {
            let x = rng.away_from(n * c * plane, 2.0, &[0.0], 2.0 * FD_EPS);
            let r = rng.vec(x.len());
            let mut y = vec![f32::NAN; x.len()];
            prelu_forward(plane, &x, &slope, &mut y);
            let want: Vec<f64> = (0..x.len())
                .map(|i| {
                    let s = slope[(i / plane) % slope.len()] as f64;
                    if x[i] >= 0.0 {
                        x[i] as f64
                    } else {
                        s * x[i] as f64
                    }
                })
                .collect();
            assert_close("prelu", &y, &want, 1e-6);
            let (mut dx, mut ds) = (vec![f32::NAN; x.len()], vec![f32::NAN; slope.len()]);
            prelu_backward(plane, &x, &slope, &r, &mut dx, &mut ds);
            check_grad("prelu dx", &x, &dx, |xp| {
                prelu_forward(plane, xp, &slope, &mut y);
                weighted_sum(&y, &r)
            });
            check_grad("prelu dslope", &slope, &ds, |sp| {
                prelu_forward(plane, &x, sp, &mut y);
                weighted_sum(&y, &r)
            });
        }
    }
}
