//! The AVX2+FMA micro-kernel (an R×8V tile of C in R·V registers, updated by one FMA per
//! register for each step along the depth) and the packing that needs shuffles.

use super::{Bias, Kernel, Lanes, MR, NARROW, Strides, Tile, accumulate, store_row_fused};
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
    unsafe { kernel(t, alpha, beta, c, sc) }
}

/// # Safety
/// As [`tile`], with `R == t.mr` and `8·(V − 1) < t.nr ≤ 8·V`.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize, const V: usize>(
    t: &Tile,
    alpha: f32,
    beta: f32,
    c: &mut [f32],
    (rsc, csc): Strides,
) {
    debug_assert!(R == t.mr && t.nr.div_ceil(8) == V);
    // SAFETY: AVX2 and FMA (this function's features); the panels as `Tile::run` asserted
    // them for NARROW ≥ 8·V columns.
    let acc = unsafe { accumulate::<__m256, R, V>(t) };
    if csc == 1 {
        let c = c.as_mut_ptr();
        let (alpha, beta_v) = (_mm256_set1_ps(alpha), _mm256_set1_ps(beta));
        let (lo, hi) = t.epi.bounds();
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        // The lanes of an edge tile's last vector that lie inside the tile.
        let lanes = (t.nr - 8 * (V - 1)) as i32;
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let ab = _mm256_mul_ps(alpha, *acc);
                let masked = v + 1 == V && lanes < 8;
                // SAFETY: row r < mr, and columns 8v.. up to nr (a partial vector masked to
                // them), all within the tile's extent in `c` and in a column bias (nr long)
                // (asserted by `Tile::run`); masked-off lanes are neither read nor written.
                unsafe {
                    let load = |p: *const f32| match masked {
                        true => _mm256_maskload_ps(p, mask),
                        false => _mm256_loadu_ps(p),
                    };
                    let cp = c.add(r * rsc + 8 * v);
                    let mut out = if beta == 0.0 {
                        ab
                    } else {
                        _mm256_fmadd_ps(beta_v, load(cp), ab)
                    };
                    if !t.epi.is_none() {
                        let bias = match t.epi.bias {
                            Bias::None => _mm256_setzero_ps(),
                            Bias::Rows(b) => _mm256_set1_ps(b[r]),
                            Bias::Cols(b) => load(b.as_ptr().add(8 * v)),
                        };
                        // As `activation::clip`: the value second, so a NaN stays NaN.
                        out = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(out, bias)));
                    }
                    if masked {
                        _mm256_maskstore_ps(cp, mask, out);
                    } else {
                        _mm256_storeu_ps(cp, out);
                    }
                }
            }
        }
    } else {
        for (r, acc) in acc.iter().enumerate() {
            let mut row = [0.0; NARROW];
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: 8v + 8 ≤ 8V ≤ NARROW floats of the row.
                unsafe { _mm256_storeu_ps(row[8 * v..].as_mut_ptr(), *acc) };
            }
            store_row_fused(t, r, &row[..t.nr], alpha, beta, &mut c[r * rsc..], csc);
        }
    }
}

impl Lanes for __m256 {
    const WIDTH: usize = 8;

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
}
