//! Forward of a conv with few input channels (a network's first conv, over RGB): direct
//! loops instead of im2col and a product. With three input channels the im2col matrix is
//! nine times the input, and writing it, reading it back and filling the output with the
//! bias first were most of the layer's time (memory-bound, the product is 27 deep).
//!
//! Each output row is computed from the input rows of its window, padded and split into
//! their stride phases ([`RowCache`]), so every tap is a contiguous run: a tile of
//! [`OCS`] output channels × [`COLS`] columns is accumulated in registers over every tap
//! and stored once, with the bias.
//!
//! Threads: the loops split the output planes (whole tiles of channels).

use super::activation::clip;
use super::geometry::{Conv2dGeom, tap_offset};
use super::rows::{RowCache, RowSplit};
use super::simd::dispatch_avx2;
use crate::threads;

/// Up to this many input channels a conv takes this path.
const MAX_C_IN: usize = 4;
/// Most taps (input channels × kernel rows × kernel columns) of the path.
const MAX_TAPS: usize = 64;
/// Output channels of a tile: each input vector serves all of them.
const OCS: usize = 4;
/// Output columns of a tile: two AVX vectors.
const COLS: usize = 16;

/// Whether [`forward`] takes `g`.
pub(super) fn applies(g: &Conv2dGeom) -> bool {
    g.groups == 1
        && g.c_in <= MAX_C_IN
        && !g.is_pointwise()
        && g.c_in * g.kh * g.kw <= MAX_TAPS
        && g.out_w() > 0
        && RowSplit::new(g).is_some_and(|s| RowCache::fits(s, g.c_in, window_rows(g)))
}

/// Input rows one output row's window spans.
fn window_rows(g: &Conv2dGeom) -> usize {
    g.dilation[0] * (g.kh - 1) + 1
}

/// `y = conv(x, w) + bias`, clipped to `clip` when there is one (applied as the tiles are
/// stored: a pass of its own went through the first conv's large output again), in parallel
/// over runs of output planes.
pub(super) fn forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
) {
    debug_assert!(applies(g));
    let clip = clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let split = RowSplit::new(g).expect("applies");
    let (p, taps) = (g.out_h() * g.out_w(), g.c_in * g.kh * g.kw);
    let parts = threads::parts_for(g.output_len() * taps);
    threads::for_runs(y, g.n * g.c_out, p, OCS, parts, |run, ys| {
        let mut cache = RowCache::new(split, g.c_in, window_rows(g));
        let mut done = 0;
        // A run may start and end inside an image: its channels of each image in turn.
        while done < run.len() {
            let unit = run.start + done;
            let (b, oc0) = (unit / g.c_out, unit % g.c_out);
            let ocs = (g.c_out - oc0).min(run.len() - done);
            let xb = &x[b * g.c_in * g.h * g.w..][..g.c_in * g.h * g.w];
            let planes = &mut ys[done * p..][..ocs * p];
            image(g, &split, &mut cache, xb, (w, bias, clip), oc0, planes);
            done += ocs;
        }
    });
}

/// The weight, the bias and the clip.
type Terms<'a> = (&'a [f32], Option<&'a [f32]>, (f32, f32));

/// Output channels `oc0..` of one image into `planes`.
fn image(
    g: &Conv2dGeom,
    split: &RowSplit,
    cache: &mut RowCache,
    x: &[f32],
    (w, bias, clip): Terms,
    oc0: usize,
    planes: &mut [f32],
) {
    let (ow, p, hw) = (g.out_w(), g.out_h() * g.out_w(), g.h * g.w);
    let taps = g.c_in * g.kh * g.kw;
    let mut starts = [0; MAX_TAPS];
    let cols: [usize; MAX_TAPS] = std::array::from_fn(|kx| split.tap_start(kx));
    let cols = &cols[..g.kw];
    cache.clear();
    for oy in 0..g.out_h() {
        // Where each tap's run starts in the cache, in the weight's (c, ky, kx) order.
        for c in 0..g.c_in {
            for ky in 0..g.kh {
                let iy = (oy * g.stride[0]) as isize + tap_offset(ky, g.dilation[0], g.pad[0]);
                let at = cache.row(c, &x[c * hw..][..hw], iy);
                let taps = starts[(c * g.kh + ky) * g.kw..].iter_mut();
                for (s, col) in taps.zip(cols) {
                    *s = at + col;
                }
            }
        }
        let starts = &starts[..taps];
        for (t, tile) in planes.chunks_mut(OCS * p).enumerate() {
            let oc = oc0 + t * OCS;
            let rows = tile.len() / p;
            // Channels past the last are computed from its weights and not stored.
            let wr: [&[f32]; OCS] =
                std::array::from_fn(|r| &w[(oc + r.min(rows - 1)) * taps..][..taps]);
            let br: [f32; OCS] =
                std::array::from_fn(|r| bias.map_or(0.0, |b| b[oc + r.min(rows - 1)]));
            let mut outs: [&mut [f32]; OCS] = Default::default();
            for (o, plane) in outs.iter_mut().zip(tile.chunks_exact_mut(p)) {
                *o = &mut plane[oy * ow..][..ow];
            }
            row(cache.buf(), starts, wr, br, clip, &mut outs[..rows]);
        }
    }
}

/// `outs[r][ox] = b[r] + Σ_k w[r][k] · src[starts[k] + ox]`, clipped to `(lo, hi)`, for
/// every column of the rows.
fn row(
    src: &[f32],
    starts: &[usize],
    w: [&[f32]; OCS],
    b: [f32; OCS],
    (lo, hi): (f32, f32),
    outs: &mut [&mut [f32]],
) {
    let ow = outs[0].len();
    // Whole tiles are loaded: past a run's last column, into the next row or the cache's
    // slack.
    let last = starts.iter().max().copied().unwrap_or(0);
    assert!(last + ow.next_multiple_of(COLS) <= src.len());
    assert!(w.iter().all(|w| w.len() == starts.len()) && outs.iter().all(|o| o.len() == ow));
    assert!(!outs.is_empty() && outs.len() <= OCS);
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks); the asserts above are
    // `row_avx2`'s contract.
    dispatch_avx2!(unsafe { row_avx2(src, starts, &w, b, (lo, hi), outs) });
    for x0 in (0..ow).step_by(COLS) {
        let mut acc = tile(src, starts, &w, b, x0);
        for v in acc.iter_mut().flatten() {
            *v = clip(*v, lo, hi);
        }
        let cols = COLS.min(ow - x0);
        for (out, acc) in outs.iter_mut().zip(&acc) {
            // A constant length for whole tiles: a few moves rather than a memcpy call.
            if cols == COLS {
                out[x0..][..COLS].copy_from_slice(acc);
            } else {
                out[x0..].copy_from_slice(&acc[..cols]);
            }
        }
    }
}

/// One tile: columns `x0..x0 + COLS` of the [`OCS`] output channels.
fn tile(
    src: &[f32],
    starts: &[usize],
    w: &[&[f32]; OCS],
    b: [f32; OCS],
    x0: usize,
) -> [[f32; COLS]; OCS] {
    let mut acc = b.map(|b| [b; COLS]);
    for (k, &s) in starts.iter().enumerate() {
        let v: &[f32; COLS] = src[s + x0..][..COLS].try_into().expect("COLS floats");
        for (acc, w) in acc.iter_mut().zip(w) {
            for (a, &v) in acc.iter_mut().zip(v) {
                *a += w[k] * v;
            }
        }
    }
    acc
}

/// [`row`] with each tile accumulated, clipped and stored from registers: returned as an
/// array, clipped and copied by the portable code, the tiles' way out took 43 % of the
/// first conv's time at 224² (its products, 27 taps deep, the other 57 %).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `src[starts[k] + x0..][..COLS]` must be in bounds for
/// every tap `k` and tile start `x0 < outs[r].len()`, `w[r]` must hold a weight per tap,
/// and `outs` (at most [`OCS`] rows) rows of one length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(
    src: &[f32],
    starts: &[usize],
    w: &[&[f32]; OCS],
    b: [f32; OCS],
    (lo, hi): (f32, f32),
    outs: &mut [&mut [f32]],
) {
    use std::arch::x86_64::*;
    let ow = outs[0].len();
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    for x0 in (0..ow).step_by(COLS) {
        let base = src.as_ptr().wrapping_add(x0);
        let mut acc = b.map(|b| [_mm256_set1_ps(b); 2]);
        for (k, &s) in starts.iter().enumerate() {
            // SAFETY: in bounds, by the caller's contract.
            let (v0, v1) = unsafe {
                (
                    _mm256_loadu_ps(base.add(s)),
                    _mm256_loadu_ps(base.add(s + 8)),
                )
            };
            for (acc, w) in acc.iter_mut().zip(w) {
                // SAFETY: k < starts.len() ≤ w.len(), by the caller's contract.
                let wk = _mm256_set1_ps(unsafe { *w.get_unchecked(k) });
                acc[0] = _mm256_fmadd_ps(wk, v0, acc[0]);
                acc[1] = _mm256_fmadd_ps(wk, v1, acc[1]);
            }
        }
        let cols = COLS.min(ow - x0);
        for (out, acc) in outs.iter_mut().zip(&acc) {
            // `clip`'s order: the value second, so that a NaN stays NaN.
            let v = acc.map(|a| _mm256_min_ps(hi, _mm256_max_ps(lo, a)));
            let mut whole = [0.0; COLS];
            let dst = match cols {
                COLS => &mut out[x0..x0 + COLS],
                _ => &mut whole[..],
            };
            // SAFETY: `dst` holds COLS floats.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), v[0]);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8), v[1]);
            }
            if cols < COLS {
                out[x0..].copy_from_slice(&whole[..cols]);
            }
        }
    }
}
