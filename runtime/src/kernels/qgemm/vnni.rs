//! The AVX512-VNNI paths of [`super`]: `vpdpbusd` on 256-bit vectors (AVX512-VL gives
//! them 32 registers) with the dequantizing store, and the panel's quantization 8 columns
//! at a time.

use super::{Dequant, MR, NR, Panel, steps};
use std::arch::x86_64::*;

type Tile = unsafe fn(&[i8], usize, &Panel, &Dequant, *mut f32, usize);

/// [`super::tile`] with VNNI, indexed by rows − 1: an edge tile computes only the rows it
/// stores.
///
/// # Safety
/// The CPU must have AVX2, AVX512-VL and AVX512-VNNI (`simd::has_vnni`); the arguments as
/// [`super::tile`] checks them.
pub(super) const TILES: [Tile; MR] = [
    tile_of::<1>,
    tile_of::<2>,
    tile_of::<3>,
    tile_of::<4>,
    tile_of::<5>,
    tile_of::<6>,
    tile_of::<7>,
    tile_of::<8>,
];

/// # Safety
/// As [`TILES`], with `R` rows.
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn tile_of<const R: usize>(
    a: &[i8],
    k: usize,
    panel: &Panel,
    dq: &Dequant,
    out: *mut f32,
    stride: usize,
) {
    let (ap, qp) = (a.as_ptr(), panel.q.as_ptr());
    let mut c = [[_mm256_setzero_si256(); 2]; R];
    let whole = k / 4;
    for g in 0..whole {
        // SAFETY: group g of the panel is 4·NR bytes at g·4·NR (asserted extent).
        let (b0, b1) = unsafe {
            let at = qp.add(g * 4 * NR) as *const __m256i;
            (_mm256_loadu_si256(at), _mm256_loadu_si256(at.add(1)))
        };
        for (r, c) in c.iter_mut().enumerate() {
            // SAFETY: depths 4g..4g + 4 < k of row r < rows.
            let word = unsafe { (ap.add(r * k + 4 * g) as *const i32).read_unaligned() };
            let av = _mm256_set1_epi32(word);
            c[0] = _mm256_dpbusd_epi32(c[0], b0, av);
            c[1] = _mm256_dpbusd_epi32(c[1], b1, av);
        }
    }
    if !k.is_multiple_of(4) {
        // The last group's missing depths are zeros in the panel; the weights' bytes past a
        // row's end are not read (they may be the next row's, or past the slice).
        let b = &panel.q[whole * 4 * NR..][..4 * NR];
        // SAFETY: 64 bytes of the panel's last group.
        let (b0, b1) = unsafe {
            let at = b.as_ptr() as *const __m256i;
            (_mm256_loadu_si256(at), _mm256_loadu_si256(at.add(1)))
        };
        for (r, c) in c.iter_mut().enumerate() {
            let mut bytes = [0u8; 4];
            for (d, s) in bytes.iter_mut().zip(&a[r * k + 4 * whole..(r + 1) * k]) {
                *d = *s as u8;
            }
            let av = _mm256_set1_epi32(i32::from_le_bytes(bytes));
            c[0] = _mm256_dpbusd_epi32(c[0], b0, av);
            c[1] = _mm256_dpbusd_epi32(c[1], b1, av);
        }
    }
    // SAFETY: 8 floats each, inside the panel's NR-float arrays.
    let (step, offset) = unsafe {
        let (s, o) = (panel.step.as_ptr(), panel.offset.as_ptr());
        (
            [_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(8))],
            [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))],
        )
    };
    let (lo, hi) = (_mm256_set1_ps(dq.clip.0), _mm256_set1_ps(dq.clip.1));
    for (r, c) in c.iter().enumerate() {
        let t = _mm256_set1_ps(dq.scale[r]);
        let sum = _mm256_set1_ps(dq.sum[r]);
        let bias = _mm256_set1_ps(dq.bias.map_or(0.0, |b| b[r]));
        for v in 0..2 {
            let base = _mm256_fmadd_ps(offset[v], sum, bias);
            let y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[v]), _mm256_mul_ps(t, step[v]), base);
            // max(lo, y) and min(hi, ·) return y when it is NaN: the clip keeps a NaN.
            let y = _mm256_min_ps(hi, _mm256_max_ps(lo, y));
            // SAFETY: row r < R, columns 8v..8v + 8 < NR (the function's contract).
            unsafe { _mm256_storeu_ps(out.add(r * stride + 8 * v), y) };
        }
    }
}

/// [`super::quantize`] with AVX2 (VNNI's machines have it): the same integers.
///
/// # Safety
/// As [`TILES`]; `src` holds `k` rows of NR floats, `stride` apart, and `q` the panel.
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn quantize(
    src: &[f32],
    stride: usize,
    k: usize,
    q: &mut [u8],
    step: &mut [f32; NR],
    offset: &mut [f32; NR],
) {
    assert!(k > 0 && src.len() >= (k - 1) * stride + NR && q.len() >= k.next_multiple_of(4) * NR);
    let sp = src.as_ptr();
    // SAFETY (every load below): row r < k of the NR floats, inside the asserted extent.
    let load = |r: usize, v: usize| unsafe { _mm256_loadu_ps(sp.add(r * stride + 8 * v)) };
    let mut lo = [_mm256_set1_ps(f32::INFINITY); 2];
    let mut hi = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    let mut nan = [_mm256_setzero_ps(); 2];
    for r in 0..k {
        for v in 0..2 {
            let x = load(r, v);
            lo[v] = _mm256_min_ps(lo[v], x);
            hi[v] = _mm256_max_ps(hi[v], x);
            nan[v] = _mm256_or_ps(nan[v], _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        }
    }
    let (mut los, mut his, mut nans) = ([0.0f32; NR], [0.0f32; NR], [0.0f32; NR]);
    for v in 0..2 {
        // SAFETY: 8 floats each, inside the NR-float arrays.
        unsafe {
            _mm256_storeu_ps(los[8 * v..].as_mut_ptr(), lo[v]);
            _mm256_storeu_ps(his[8 * v..].as_mut_ptr(), hi[v]);
            _mm256_storeu_ps(nans[8 * v..].as_mut_ptr(), nan[v]);
        }
    }
    let mut inv = [0.0f32; NR];
    for j in 0..NR {
        let (s, i) = steps(los[j], his[j], nans[j].to_bits() != 0);
        (step[j], offset[j], inv[j]) = (s, los[j], i);
    }
    // SAFETY: 8 floats each, inside the NR-float arrays.
    let (inv, lo) = unsafe {
        (
            [
                _mm256_loadu_ps(inv.as_ptr()),
                _mm256_loadu_ps(inv[8..].as_ptr()),
            ],
            [
                _mm256_loadu_ps(los.as_ptr()),
                _mm256_loadu_ps(los[8..].as_ptr()),
            ],
        )
    };
    let level = |r: usize, v: usize| {
        if r < k {
            _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(load(r, v), lo[v]), inv[v]))
        } else {
            _mm256_setzero_si256()
        }
    };
    let qp = q.as_mut_ptr() as *mut __m256i;
    for g in 0..k.div_ceil(4) {
        for v in 0..2 {
            let r = 4 * g;
            let word = _mm256_or_si256(
                _mm256_or_si256(level(r, v), _mm256_slli_epi32::<8>(level(r + 1, v))),
                _mm256_or_si256(
                    _mm256_slli_epi32::<16>(level(r + 2, v)),
                    _mm256_slli_epi32::<24>(level(r + 3, v)),
                ),
            );
            // SAFETY: group g's 8 columns of words, inside the asserted panel.
            unsafe { _mm256_storeu_si256(qp.add(2 * g + v), word) };
        }
    }
}

/// [`super::quantize_column`] with AVX2 and AVX512-VL's narrowing moves: the same integers.
///
/// # Safety
/// As [`TILES`]; `q` is a panel for `col.len()` depths and `j` < NR.
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn quantize_column(col: &[f32], j: usize, q: &mut [u8]) -> (f32, f32) {
    let k = col.len();
    assert!(j < NR && q.len() >= k.next_multiple_of(4) * NR);
    let whole = k / 8 * 8;
    let (mut lo, mut hi) = (
        _mm256_set1_ps(f32::INFINITY),
        _mm256_set1_ps(f32::NEG_INFINITY),
    );
    let mut nan = _mm256_setzero_ps();
    for c in col[..whole].chunks_exact(8) {
        // SAFETY: 8 floats.
        let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        lo = _mm256_min_ps(lo, x);
        hi = _mm256_max_ps(hi, x);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    }
    let (mut los, mut his, mut nans) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    // SAFETY: 8 floats each.
    unsafe {
        _mm256_storeu_ps(los.as_mut_ptr(), lo);
        _mm256_storeu_ps(his.as_mut_ptr(), hi);
        _mm256_storeu_ps(nans.as_mut_ptr(), nan);
    }
    let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut bad = nans.iter().any(|v| v.to_bits() != 0);
    for (&a, &b) in los
        .iter()
        .zip(&his)
        .chain(col[whole..].iter().map(|v| (v, v)))
    {
        (l, h, bad) = (l.min(a), h.max(b), bad | a.is_nan() | b.is_nan());
    }
    let (step, inv) = steps(l, h, bad);
    let (lv, iv) = (_mm256_set1_ps(l), _mm256_set1_ps(inv));
    let word = |g: usize| (g * NR + j) * 4;
    for (g2, c) in col[..whole].chunks_exact(8).enumerate() {
        // SAFETY: 8 floats.
        let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        let levels = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(x, lv), iv));
        // Eight levels in [0, 255] as eight bytes: depths 8g2..8g2 + 4 and 8g2 + 4..8g2 + 8.
        let bytes = _mm_cvtsi128_si64(_mm256_cvtepi32_epi8(levels)) as u64;
        q[word(2 * g2)..][..4].copy_from_slice(&(bytes as u32).to_le_bytes());
        q[word(2 * g2 + 1)..][..4].copy_from_slice(&((bytes >> 32) as u32).to_le_bytes());
    }
    for (r, &v) in col.iter().enumerate().skip(whole) {
        q[word(r / 4) + r % 4] = ((v - l) * inv).round_ties_even() as u8;
    }
    (step, l)
}
