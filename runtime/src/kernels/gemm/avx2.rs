//! The AVX2+FMA micro-kernel (an R×8V tile of C in R·V registers, updated by one FMA per
//! register for each step along the depth) and the packing that needs shuffles.

use super::{Column, Kernel, Lanes, MR, Strides, Tile};
use std::arch::x86_64::*;

const KERNELS: [[Kernel; 2]; MR] = super::kernels!(kernel);

/// `C ← alpha·tile + beta·C`, the tile computed with AVX2.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and the arguments must pass [`Tile::run`]'s asserts for
/// a B panel NARROW columns wide.
pub(super) unsafe fn tile(t: &Tile, alpha: f32, beta: f32, c: &mut [f32], sc: Strides) {
    let kernel = KERNELS[t.mr - 1][t.nr.div_ceil(8) - 1];
    // SAFETY: passed on from the caller.
    unsafe { kernel(t, &[alpha, beta], c, sc) }
}

/// `C ← alpha·column + beta·C`, C's rows `rsc` apart and its columns contiguous, each
/// tile computed with AVX2.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and the arguments must pass [`Column::run`]'s asserts for
/// a B panel NARROW columns wide.
pub(super) unsafe fn column(p: &Column, scale: &[f32; 2], c: &mut [f32], rsc: usize) {
    // SAFETY: passed on from the caller.
    unsafe {
        match p.nr > 8 {
            true => tiles::<2>(p, scale, c, rsc),
            false => tiles::<1>(p, scale, c, rsc),
        }
    }
}

/// # Safety
/// As [`column`], with `8·(V − 1) < p.nr ≤ 8·V`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tiles<const V: usize>(p: &Column, scale: &[f32; 2], c: &mut [f32], rsc: usize) {
    // SAFETY: passed on from the caller; this function has `__m256`'s instructions.
    unsafe { super::column_tiles::<__m256, V>(p, scale, c, rsc, &KERNELS) }
}

/// # Safety
/// As [`tile`], with `R == t.mr` and `8·(V − 1) < t.nr ≤ 8·V`.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize, const V: usize>(
    t: &Tile,
    scale: &[f32; 2],
    c: &mut [f32],
    sc: Strides,
) {
    // SAFETY: passed on from the caller; this function has `__m256`'s instructions.
    unsafe { super::kernel::<__m256, R, V>(t, scale, c, sc) }
}

impl Lanes for __m256 {
    const WIDTH: usize = 8;
    type Mask = __m256i;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller's CPU has AVX.
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's CPU has AVX, and 8 floats at `p` to read.
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: the caller's CPU has AVX.
        unsafe { _mm256_set1_ps(x) }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's CPU has FMA.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: the caller's CPU has AVX.
        unsafe { _mm256_mul_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller's CPU has AVX.
        unsafe { _mm256_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn clip(v: Self, lo: Self, hi: Self) -> Self {
        // SAFETY: the caller's CPU has AVX.
        unsafe { _mm256_min_ps(hi, _mm256_max_ps(lo, v)) }
    }

    #[inline(always)]
    unsafe fn first(lanes: usize) -> __m256i {
        // SAFETY: the caller's CPU has AVX2.
        unsafe {
            let lanes = _mm256_set1_epi32(lanes as i32);
            _mm256_cmpgt_epi32(lanes, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
        }
    }

    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: __m256i) -> Self {
        // SAFETY: the caller's CPU has AVX; masked-off lanes are not read.
        unsafe { _mm256_maskload_ps(p, m) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        // SAFETY: the caller's CPU has AVX, and 8 floats at `p` to write.
        unsafe { _mm256_storeu_ps(p, v) }
    }

    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, m: __m256i, v: Self) {
        // SAFETY: the caller's CPU has AVX; masked-off lanes are not written.
        unsafe { _mm256_maskstore_ps(p, m, v) }
    }
}
