//! The AVX-512 micro-kernel: the AVX2 one's R×V-vector tile with 16-float vectors, so a
//! 6×32 tile is 12 accumulators of the 32 registers. Where a core has two 512-bit FMA
//! pipes (Intel's server cores) it does twice the AVX2 kernel's work per cycle; edge tiles
//! store through lane masks rather than a row buffer.

use super::{Bias, Kernel, Lanes, MR, Strides, Tile, WIDE, accumulate, store_row_fused};
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
    unsafe { kernel(t, alpha, beta, c, sc) }
}

/// # Safety
/// As [`tile`], with `R == t.mr` and `16·(V − 1) < t.nr ≤ 16·V`.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const V: usize>(
    t: &Tile,
    alpha: f32,
    beta: f32,
    c: &mut [f32],
    (rsc, csc): Strides,
) {
    debug_assert!(R == t.mr && t.nr.div_ceil(16) == V);
    // SAFETY: AVX-512F (this function's feature); the panels as `Tile::run` asserted them
    // for WIDE ≥ 16·V columns.
    let acc = unsafe { accumulate::<__m512, R, V>(t) };
    if csc == 1 {
        let c = c.as_mut_ptr();
        let (alpha, beta_v) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        let (lo, hi) = t.epi.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        // The lanes of the last vector that lie inside the tile: all of them but at an edge.
        let last: __mmask16 = u16::MAX >> (16 * V - t.nr);
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let ab = _mm512_mul_ps(alpha, *acc);
                let mask = if v + 1 == V { last } else { u16::MAX };
                // SAFETY: row r < mr, and columns 16v.. up to nr (the last vector masked to
                // them), all within the tile's extent in `c` and in a column bias (nr long)
                // (asserted by `Tile::run`); masked-off lanes are neither read nor written.
                unsafe {
                    let cp = c.add(r * rsc + 16 * v);
                    let mut out = if beta == 0.0 {
                        ab
                    } else {
                        _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(mask, cp), ab)
                    };
                    if !t.epi.is_none() {
                        let bias = match t.epi.bias {
                            Bias::None => _mm512_setzero_ps(),
                            Bias::Rows(b) => _mm512_set1_ps(b[r]),
                            Bias::Cols(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(16 * v)),
                        };
                        // As `activation::clip`: the value second, so a NaN stays NaN.
                        out = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(out, bias)));
                    }
                    _mm512_mask_storeu_ps(cp, mask, out);
                }
            }
        }
    } else {
        for (r, acc) in acc.iter().enumerate() {
            let mut row = [0.0; WIDE];
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: 16v + 16 ≤ 16V ≤ WIDE floats of the row.
                unsafe { _mm512_storeu_ps(row[16 * v..].as_mut_ptr(), *acc) };
            }
            store_row_fused(t, r, &row[..t.nr], alpha, beta, &mut c[r * rsc..], csc);
        }
    }
}

impl Lanes for __m512 {
    const WIDTH: usize = 16;

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
}
