//! The AVX-512 micro-kernel: the AVX2 one's R×V-vector tile with 16-float vectors, so a
//! 6×32 tile is 12 accumulators of the 32 registers. Where a core has two 512-bit FMA
//! pipes (Intel's server cores) it does twice the AVX2 kernel's work per cycle; edge tiles
//! store through lane masks rather than a row buffer.

use super::{Column, Kernel, Lanes, MR, Strides, Tile};
use std::arch::x86_64::*;

const KERNELS: [[Kernel; 2]; MR] = super::kernels!(kernel);

/// `C ← alpha·tile + beta·C`, the tile computed with AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F, and the arguments must pass [`Tile::run`]'s asserts for a B
/// panel WIDE columns wide.
pub(super) unsafe fn tile(t: &Tile, alpha: f32, beta: f32, c: &mut [f32], sc: Strides) {
    let kernel = KERNELS[t.mr - 1][t.nr.div_ceil(16) - 1];
    // SAFETY: passed on from the caller.
    unsafe { kernel(t, &[alpha, beta], c, sc) }
}

/// `C ← alpha·column + beta·C`, C's rows `rsc` apart and its columns contiguous, each
/// tile computed with AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F, and the arguments must pass [`Column::run`]'s asserts for a
/// B panel WIDE columns wide.
pub(super) unsafe fn column(p: &Column, scale: &[f32; 2], c: &mut [f32], rsc: usize) {
    // SAFETY: passed on from the caller.
    unsafe {
        match p.nr > 16 {
            true => tiles::<2>(p, scale, c, rsc),
            false => tiles::<1>(p, scale, c, rsc),
        }
    }
}

/// # Safety
/// As [`column`], with `16·(V − 1) < p.nr ≤ 16·V`.
#[target_feature(enable = "avx512f")]
unsafe fn tiles<const V: usize>(p: &Column, scale: &[f32; 2], c: &mut [f32], rsc: usize) {
    // SAFETY: passed on from the caller; this function has `__m512`'s instructions.
    unsafe { super::column_tiles::<__m512, V>(p, scale, c, rsc, &KERNELS) }
}

/// # Safety
/// As [`tile`], with `R == t.mr` and `16·(V − 1) < t.nr ≤ 16·V`.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const V: usize>(
    t: &Tile,
    scale: &[f32; 2],
    c: &mut [f32],
    sc: Strides,
) {
    // SAFETY: passed on from the caller; this function has `__m512`'s instructions.
    unsafe { super::kernel::<__m512, R, V>(t, scale, c, sc) }
}

impl Lanes for __m512 {
    const WIDTH: usize = 16;
    type Mask = __mmask16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's CPU has AVX-512F, and 16 floats at `p` to read.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_set1_ps(x) }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_mul_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn clip(v: Self, lo: Self, hi: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_min_ps(hi, _mm512_max_ps(lo, v)) }
    }

    #[inline(always)]
    unsafe fn first(lanes: usize) -> __mmask16 {
        u16::MAX >> (16 - lanes)
    }

    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: __mmask16) -> Self {
        // SAFETY: the caller's CPU has AVX-512F; masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        // SAFETY: the caller's CPU has AVX-512F, and 16 floats at `p` to write.
        unsafe { _mm512_storeu_ps(p, v) }
    }

    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, m: __mmask16, v: Self) {
        // SAFETY: the caller's CPU has AVX-512F; masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(p, m, v) }
    }
}
