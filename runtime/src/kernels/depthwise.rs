//! Depthwise convolution (one input channel per group, any channel multiplier): direct
//! loops, since im2col would turn the work into many tiny products. Forward, input gradient
//! and weight gradient; `conv` routes depthwise geometries here.
//!
//! Threads: the loops split their output planes (or, for the weight gradient, channels).

use super::geometry::{Conv2dGeom, gather_axpy, gather_dot, scatter_axpy, tap_offset};
use super::rows::{RowCache, RowSplit};
use super::simd::dispatch_avx2;
#[cfg(target_arch = "x86_64")]
use super::simd::transpose8;
use super::window::valid_range;
use crate::threads;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

/// One kernel tap of a depthwise conv with its valid output range: the three depthwise
/// kernels share this so their index arithmetic is written once.
#[derive(Clone, Copy, Default)]
struct Tap {
    /// Index of the tap in the kh×kw kernel.
    k: usize,
    /// Output rows `y0..y1` and columns `x0..x1` whose tap lands inside the input.
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    /// Input row of output row 0 (may be negative: only `y0..y1` is read).
    iy_base: isize,
    stride_h: usize,
    /// Input column of output column `x0`.
    ix0: usize,
}

impl Tap {
    /// (output row, input row) for every output row whose tap lands inside the input.
    fn rows(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (self.y0..self.y1).map(|oy| (oy, ((oy * self.stride_h) as isize + self.iy_base) as usize))
    }

    fn xs(&self) -> Range<usize> {
        self.x0..self.x1
    }
}

/// Kernels up to 8×8 keep their taps in a table made once per call: on the small planes of
/// a network's late layers, working the taps out again for every plane cost more than the
/// multiply-adds.
const MAX_TAPS: usize = 64;

/// The taps that touch the input at all.
#[allow(clippy::large_enum_variant)] // one per kernel call, on the stack: boxing would allocate
enum Taps<'g> {
    Table([Tap; MAX_TAPS], usize),
    Computed(&'g Conv2dGeom),
}

impl Taps<'_> {
    fn new(g: &Conv2dGeom) -> Taps<'_> {
        if g.kh * g.kw > MAX_TAPS {
            return Taps::Computed(g);
        }
        let mut table = [Tap::default(); MAX_TAPS];
        let mut n = 0;
        for tap in taps(g) {
            table[n] = tap;
            n += 1;
        }
        Taps::Table(table, n)
    }

    fn each(&self, mut f: impl FnMut(&Tap)) {
        match self {
            Taps::Table(table, n) => table[..*n].iter().for_each(f),
            Taps::Computed(g) => taps(g).for_each(|t| f(&t)),
        }
    }
}

fn taps(g: &Conv2dGeom) -> impl Iterator<Item = Tap> + '_ {
    let (oh, ow) = (g.out_h(), g.out_w());
    let ([sh, sw], [dh, dw]) = (g.stride, g.dilation);
    (0..g.kh * g.kw).filter_map(move |k| {
        let (ky, kx) = (k / g.kw, k % g.kw);
        let iy_base = tap_offset(ky, dh, g.pad[0]);
        let offx = tap_offset(kx, dw, g.pad[1]);
        let ys = valid_range(oh, g.h, sh, iy_base);
        let xs = valid_range(ow, g.w, sw, offx);
        if ys.is_empty() || xs.is_empty() {
            return None;
        }
        let ix0 = ((xs.start * sw) as isize + offx) as usize;
        Some(Tap {
            k,
            y0: ys.start,
            y1: ys.end,
            x0: xs.start,
            x1: xs.end,
            iy_base,
            stride_h: sh,
            ix0,
        })
    })
}

/// Parts a depthwise loop over `g`'s outputs is worth: its work is a multiply-add per
/// output element and tap.
fn depthwise_parts(g: &Conv2dGeom) -> usize {
    threads::parts_for(g.output_len() * g.kh * g.kw)
}

/// In parallel over output planes: each part writes its own run of `y`. Then
/// `y ← min(max(y, lo), hi)` with a clip: [`forward_planes`] applies it as it stores.
pub(super) fn forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
) {
    // A strided plane is laid out column by column; channels in groups of eight go through
    // the lanes for less (64 × 96 16×16 planes at stride 2: 0.45 → 0.26 ms).
    let strided_lanes = g.stride != [1, 1] && channel_groups(g) && small(g);
    if let Some(layout) = PlaneLayout::new(g).filter(|_| !strided_lanes) {
        return forward_planes(g, &layout, x, w, bias, clip, y);
    }
    let mut pixels = PixelTaps::UNSET;
    if pixels.fill(g) {
        match one_pixel(g) {
            true => forward_pixel(g, &pixels, x, w, bias, y),
            false => forward_small(g, &pixels, x, w, bias, y),
        }
    } else if let Some(split) = rows_split(g) {
        forward_rows(g, split, x, w, bias, y);
    } else {
        forward_gathered(g, x, w, bias, y);
    }
    if let Some((lo, hi)) = clip {
        super::activation::clip_in_place(lo, hi, y);
    }
}

/// The fallback: tap after tap over whole planes, gathering strided input columns.
fn forward_gathered(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (hw, p, ow, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    let planes = g.n * g.c_out;
    let taps = Taps::new(g);
    threads::for_runs(y, planes, p, 1, depthwise_parts(g), |run, ys| {
        for (i, yp) in run.zip(ys.chunks_exact_mut(p)) {
            let (b, oc) = (i / g.c_out, i % g.c_out);
            let xp = &x[(b * g.c_in + oc / mult) * hw..][..hw];
            let wk = &w[oc * kk..][..kk];
            yp.fill(bias.map_or(0.0, |bias| bias[oc]));
            taps.each(|tap| {
                for (oy, iy) in tap.rows() {
                    let dst = &mut yp[oy * ow..][tap.xs()];
                    gather_axpy(dst, &xp[iy * g.w..][..g.w], tap.ix0, g.stride[1], wk[tap.k]);
                }
            });
        }
    });
}

/// A plane padded and split whole into [`forward_planes`]' buffer may take this many floats
/// (64 KiB on each thread's stack: L2 holds it while its outputs are worked out).
const PLANE_MAX: usize = 16 * 1024;

/// How [`forward_planes`] lays out an input plane: its rows padded and split into their
/// stride phases ([`RowSplit`]), one after another, from the row of output row 0's first
/// tap to the row of the last output row's last, zeros for the rows of the padding. Output
/// row `oy`'s tap `k` then reads `row_len·stride·oy + tap[k]` onwards: a vector load.
struct PlaneLayout {
    split: RowSplit,
    /// The input plane's height and width.
    h: usize,
    w: usize,
    /// Input row of buffer row 0 (negative in the padding).
    top: isize,
    rows: usize,
    row_len: usize,
    tap: [usize; MAX_TAPS],
}

impl PlaneLayout {
    /// For planes whose output rows are at least a vector wide and whose layout fits
    /// [`PLANE_MAX`], on CPUs with AVX2 and FMA.
    fn new(g: &Conv2dGeom) -> Option<PlaneLayout> {
        #[cfg(target_arch = "x86_64")]
        let vectors = super::simd::has_avx2_fma();
        #[cfg(not(target_arch = "x86_64"))]
        let vectors = false;
        if !vectors || g.out_w() < 8 || g.kh * g.kw > MAX_TAPS {
            return None;
        }
        let split = RowSplit::new(g)?;
        let [dh, sh] = [g.dilation[0], g.stride[0]];
        let rows = (g.out_h() - 1) * sh + (g.kh - 1) * dh + 1;
        let row_len = split.len();
        // Vectors past the last row's end load up to a vector into the slack.
        if rows * row_len + 8 > PLANE_MAX {
            return None;
        }
        let mut tap = [0; MAX_TAPS];
        for (k, t) in tap.iter_mut().enumerate().take(g.kh * g.kw) {
            *t = (k / g.kw) * dh * row_len + split.tap_start(k % g.kw);
        }
        Some(PlaneLayout {
            split,
            h: g.h,
            w: g.w,
            top: tap_offset(0, dh, g.pad[0]),
            rows,
            row_len,
            tap,
        })
    }

    /// Lays `plane` out in `buf`, whose places of the padding are zeros: only the plane's
    /// values are written (padding a small plane's rows again cost more than its taps).
    fn place(&self, plane: &[f32], buf: &mut [f32]) {
        let (h, w) = (self.h as isize, self.w);
        for (r, dst) in buf
            .chunks_exact_mut(self.row_len)
            .take(self.rows)
            .enumerate()
        {
            let iy = self.top + r as isize;
            if (0..h).contains(&iy) {
                self.split.place(&plane[iy as usize * w..][..w], dst);
            }
        }
    }
}

/// Planes whose padded input fits [`PLANE_MAX`], one at a time: the plane is laid out once
/// ([`PlaneLayout`]), then tiles of up to four vectors by up to eight output rows are
/// accumulated in registers over all the taps and stored once, bias added and clip applied.
/// Rows of a few vectors kept the row loops' accumulators waiting on each other (a 28-wide
/// row is four vectors, one tap's chain at a time), and interleaving eight planes per
/// vector spent more on moving the planes in and out than on the multiply-adds.
fn forward_planes(
    g: &Conv2dGeom,
    layout: &PlaneLayout,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
) {
    let (hw, p, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    let clip = clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let parts = threads::parts_for(g.output_len() * kk + 4 * g.input_len());
    threads::for_runs(y, g.n * g.c_out, p, 1, parts, |run, ys| {
        // Zeros where the padding goes, for good: only the planes' values are written.
        let mut buf = [0.0f32; PLANE_MAX];
        let mut held = usize::MAX;
        for (i, yp) in run.zip(ys.chunks_exact_mut(p)) {
            let (b, oc) = (i / g.c_out, i % g.c_out);
            // With a channel multiplier, consecutive output planes read the same input.
            let plane = b * g.c_in + oc / mult;
            if plane != held {
                layout.place(&x[plane * hw..][..hw], &mut buf);
                held = plane;
            }
            let tile = PlaneTile {
                buf: &buf,
                tap: &layout.tap[..kk],
                w: &w[oc * kk..][..kk],
                bias: bias.map_or(0.0, |bias| bias[oc]),
                clip,
                row_step: layout.row_len * g.stride[0],
                ow: g.out_w(),
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `PlaneLayout::new` checked for AVX2 and FMA; every tap's vectors of
            // every output row lie inside `buf` (its slack included), as it sized them.
            unsafe {
                plane_avx2(&tile, yp)
            };
        }
    });
}

/// One output plane's operands for [`plane_avx2`].
struct PlaneTile<'a> {
    buf: &'a [f32],
    tap: &'a [usize],
    w: &'a [f32],
    bias: f32,
    clip: (f32, f32),
    /// Buffer floats from one output row's taps to the next's.
    row_step: usize,
    ow: usize,
}

/// # Safety
/// The CPU must have AVX2 and FMA; for every output row `oy` of `out` and tap `k`,
/// `buf[oy·row_step + tap[k]..][..ow.next_multiple_of(8)]` must lie inside `buf`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(t: &PlaneTile, out: &mut [f32]) {
    let oh = out.len() / t.ow;
    let vectors = t.ow.div_ceil(8);
    let mut v0 = 0;
    while v0 < vectors {
        let v = (vectors - v0).min(4);
        // SAFETY: as this function's.
        unsafe {
            match v {
                4 => plane_columns::<4>(t, 8 * v0, oh, out),
                3 => plane_columns::<3>(t, 8 * v0, oh, out),
                2 => plane_columns::<2>(t, 8 * v0, oh, out),
                _ => plane_columns::<1>(t, 8 * v0, oh, out),
            }
        }
        v0 += v;
    }
}

/// Columns `x0..x0 + 8V` (clipped to the row) of every output row, in tiles of as many rows
/// as keep about eight accumulators in flight: two FMA units with a 4-cycle latency.
///
/// # Safety
/// As [`plane_avx2`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_columns<const V: usize>(t: &PlaneTile, x0: usize, oh: usize, out: &mut [f32]) {
    let mut oy = 0;
    while oy < oh {
        let left = oh - oy;
        // SAFETY: as this function's; rows oy.. oy + R are rows of `out`.
        unsafe {
            oy += if V == 1 && left >= 8 {
                plane_tile::<V, 8>(t, x0, oy, out)
            } else if V <= 2 && left >= 4 {
                plane_tile::<V, 4>(t, x0, oy, out)
            } else if left >= 2 {
                plane_tile::<V, 2>(t, x0, oy, out)
            } else {
                plane_tile::<V, 1>(t, x0, oy, out)
            };
        }
    }
}

/// Output rows `oy..oy + R`, columns `x0..x0 + 8V` clipped to the row; returns `R`.
///
/// # Safety
/// As [`plane_avx2`]'s, and `oy + R` at most the output's rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_tile<const V: usize, const R: usize>(
    t: &PlaneTile,
    x0: usize,
    oy: usize,
    out: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let src = t.buf.as_ptr();
    let mut acc = [[_mm256_set1_ps(t.bias); V]; R];
    for (&tap, &wk) in t.tap.iter().zip(t.w) {
        let wv = _mm256_set1_ps(wk);
        for (r, acc) in acc.iter_mut().enumerate() {
            let at = (oy + r) * t.row_step + tap + x0;
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: inside `buf` (the contract).
                let xv = unsafe { _mm256_loadu_ps(src.add(at + 8 * v)) };
                *acc = _mm256_fmadd_ps(wv, xv, *acc);
            }
        }
    }
    let (lo, hi) = (_mm256_set1_ps(t.clip.0), _mm256_set1_ps(t.clip.1));
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (r, acc) in acc.iter().enumerate() {
        let row = &mut out[(oy + r) * t.ow..][..t.ow];
        for (v, &acc) in acc.iter().enumerate() {
            let col = x0 + 8 * v;
            // With a NaN operand max/min return their second one: the accumulator goes
            // second, so a NaN stays NaN (as `activation::clip`).
            let val = _mm256_min_ps(hi, _mm256_max_ps(lo, acc));
            // SAFETY: full vectors end inside the row; the last one stores only its lanes
            // left of the row's end.
            unsafe {
                if col + 8 <= t.ow {
                    _mm256_storeu_ps(row.as_mut_ptr().add(col), val);
                } else {
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((t.ow - col) as i32), lanes);
                    _mm256_maskstore_ps(row.as_mut_ptr().add(col), mask, val);
                }
            }
        }
    }
    R
}

/// Large planes one output row at a time, from the input rows of its window padded and
/// split into their stride phases ([`RowCache`], each input row split once per plane): every
/// tap is then a contiguous run, and each output vector is accumulated over all the taps in a
/// register and stored once (tap after tap over whole planes, a 112×112 plane went through L2
/// nine times; a pass per tap over the row still loaded and stored it nine times).
fn forward_rows(
    g: &Conv2dGeom,
    split: RowSplit,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (hw, p, ow, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    let cols: [usize; MAX_TAPS] = std::array::from_fn(|kx| split.tap_start(kx));
    let cols = &cols[..g.kw];
    // The input is read from memory once (split), at a cost that dwarfs its few taps: at
    // 144×56×56 one thread took 0.4 ms, where waking the other costs tens of microseconds.
    let parts = threads::parts_for(g.output_len() * kk + 4 * g.input_len());
    threads::for_runs(y, g.n * g.c_out, p, 1, parts, |run, ys| {
        let mut cache = RowCache::new(split, 1, window_rows(g));
        let mut held = usize::MAX;
        let mut starts = [0; MAX_TAPS];
        for (i, yp) in run.zip(ys.chunks_exact_mut(p)) {
            let (b, oc) = (i / g.c_out, i % g.c_out);
            // With a channel multiplier, consecutive output planes read the same input.
            let plane = b * g.c_in + oc / mult;
            if plane != held {
                cache.clear();
                held = plane;
            }
            let xp = &x[plane * hw..][..hw];
            let (wk, b0) = (&w[oc * kk..][..kk], bias.map_or(0.0, |bias| bias[oc]));
            for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0]) as isize + tap_offset(ky, g.dilation[0], g.pad[0]);
                    let at = cache.row(0, xp, iy);
                    for (s, col) in starts[ky * g.kw..].iter_mut().zip(cols) {
                        *s = at + col;
                    }
                }
                row_taps(cache.buf(), &starts[..kk], wk, b0, out);
            }
        }
    });
}

/// Whether [`forward_rows`] takes `g`, and the split of its rows.
fn rows_split(g: &Conv2dGeom) -> Option<RowSplit> {
    let split = RowSplit::new(g)?;
    (g.kh * g.kw <= MAX_TAPS && RowCache::fits(split, 1, window_rows(g))).then_some(split)
}

/// Input rows one output row's window spans.
fn window_rows(g: &Conv2dGeom) -> usize {
    g.dilation[0] * (g.kh - 1) + 1
}

/// `out[ox] = b + Σ_k w[k] · src[starts[k] + ox]`.
fn row_taps(src: &[f32], starts: &[usize], w: &[f32], b: f32, out: &mut [f32]) {
    let ow = out.len();
    // Whole vectors are loaded: past a run's last column, into the next row or the
    // cache's slack.
    let last = starts.iter().max().copied().unwrap_or(0);
    assert!(last + ow.next_multiple_of(8) <= src.len() && w.len() == starts.len());
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks), and every tap's
    // vectors lie inside `src` (asserted above).
    dispatch_avx2!(unsafe { row_taps_avx2(src, starts, w, b, out) });
    out.fill(b);
    for (&s, &wv) in starts.iter().zip(w) {
        for (o, &v) in out.iter_mut().zip(&src[s..s + ow]) {
            *o += wv * v;
        }
    }
}

/// # Safety
/// The CPU must have AVX2 and FMA; `src[starts[k]..][..out.len().next_multiple_of(8)]`
/// must be in bounds for every tap `k`, and `w` as long as `starts`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_taps_avx2(src: &[f32], starts: &[usize], w: &[f32], b: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    /// Vectors in flight: a tap's multiply-add waits for the previous tap's (4 cycles)
    /// unless other vectors' are there to fill the two FMA units.
    const V: usize = 4;
    let ow = out.len();
    let taps = |x0: usize, acc: &mut [__m256]| {
        for (&s, &wv) in starts.iter().zip(w) {
            let wv = _mm256_set1_ps(wv);
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: x0 + 8v + 8 ≤ ow rounded up to 8: inside `src` (the contract).
                let xv = unsafe { _mm256_loadu_ps(src.as_ptr().add(s + x0 + 8 * v)) };
                *acc = _mm256_fmadd_ps(wv, xv, *acc);
            }
        }
    };
    let mut x0 = 0;
    while x0 + 8 * V <= ow {
        let mut acc = [_mm256_set1_ps(b); V];
        taps(x0, &mut acc);
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: x0 + 8v + 8 ≤ ow.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(x0 + 8 * v), *acc) };
        }
        x0 += 8 * V;
    }
    while x0 < ow {
        let mut acc = [_mm256_set1_ps(b)];
        taps(x0, &mut acc);
        if x0 + 8 <= ow {
            // SAFETY: x0 + 8 ≤ ow.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(x0), acc[0]) };
        } else {
            let mut tail = [0.0; 8];
            // SAFETY: `tail` holds 8 floats.
            unsafe { _mm256_storeu_ps(tail.as_mut_ptr(), acc[0]) };
            out[x0..].copy_from_slice(&tail[..ow - x0]);
        }
        x0 += 8;
    }
}

/// In parallel over input planes, each gathering the `mult` output planes it feeds.
pub(super) fn backward_data(g: &Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let mut pixels = PixelTaps::UNSET;
    if small_outputs(g) && pixels.fill(g) {
        if one_pixel(g) {
            return backward_data_pixel(g, &pixels, w, dy, dx);
        }
        return backward_data_small(g, &pixels, w, dy, dx);
    }
    let (hw, p, ow, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    let planes = g.n * g.c_in;
    let taps = Taps::new(g);
    threads::for_runs(dx, planes, hw, 1, depthwise_parts(g), |run, dxs| {
        for (i, dxp) in run.zip(dxs.chunks_exact_mut(hw)) {
            let (b, ic) = (i / g.c_in, i % g.c_in);
            dxp.fill(0.0);
            for oc in ic * mult..(ic + 1) * mult {
                let dyp = &dy[(b * g.c_out + oc) * p..][..p];
                let wk = &w[oc * kk..][..kk];
                taps.each(|tap| {
                    for (oy, iy) in tap.rows() {
                        let src = &dyp[oy * ow..][tap.xs()];
                        scatter_axpy(
                            &mut dxp[iy * g.w..][..g.w],
                            tap.ix0,
                            g.stride[1],
                            wk[tap.k],
                            src,
                        );
                    }
                });
            }
        }
    });
}

/// In parallel over output channels, each summing its own batch: no partial sums to add.
pub(super) fn backward_weight(g: &Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let mut pixels = PixelTaps::UNSET;
    if small_outputs(g) && pixels.fill(g) {
        if one_pixel(g) {
            return backward_weight_pixel(g, &pixels, x, dy, dw);
        }
        return backward_weight_small(g, &pixels, x, dy, dw);
    }
    let (hw, p, ow, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    let taps = Taps::new(g);
    threads::for_runs(dw, g.c_out, kk, 1, depthwise_parts(g), |run, dws| {
        dws.fill(0.0);
        for (oc, dwk) in run.zip(dws.chunks_exact_mut(kk)) {
            for b in 0..g.n {
                let dyp = &dy[(b * g.c_out + oc) * p..][..p];
                let xp = &x[(b * g.c_in + oc / mult) * hw..][..hw];
                taps.each(|tap| {
                    let s: f32 = tap
                        .rows()
                        .map(|(oy, iy)| {
                            gather_dot(
                                &dyp[oy * ow..][tap.xs()],
                                &xp[iy * g.w..][..g.w],
                                tap.ix0,
                                g.stride[1],
                            )
                        })
                        .sum();
                    dwk[tap.k] += s;
                });
            }
        }
    });
}

/// Planes this small go through [`forward_small`]: input elements, and output pixels × taps.
const SMALL_PLANE: usize = 1024;
const SMALL_TAPS: usize = 9 * SMALL_PLANE;
/// Planes worked on together, one per vector lane.
const LANES: usize = 8;

/// Whether `g`'s planes are small enough for the lanes' paths ([`PixelTaps`]).
fn small(g: &Conv2dGeom) -> bool {
    let kk = g.kh * g.kw;
    g.h * g.w <= SMALL_PLANE && g.out_h() * g.out_w() * kk <= SMALL_TAPS && kk <= MAX_TAPS
}

/// Whether consecutive planes come in groups of eight channels of one image, each output
/// plane from its own input plane.
fn channel_groups(g: &Conv2dGeom) -> bool {
    g.c_in == g.c_out && g.c_out.is_multiple_of(LANES)
}

/// For each output pixel of a small plane, its taps that land inside the input: (offset in
/// the input plane, tap index), listed once per call instead of worked out per plane.
///
/// On the caller's stack (about 55 kB): a step allocates nothing. Left uninitialised past
/// what [`PixelTaps::fill`] writes: zeroing the whole tables and moving them out of a
/// constructor cost more than the taps of a 2×2 plane's depthwise conv at batch 8.
struct PixelTaps {
    offset: [MaybeUninit<u16>; SMALL_TAPS],
    tap: [MaybeUninit<u16>; SMALL_TAPS],
    /// Pixel `o`'s taps are `start[o]..start[o + 1]`.
    start: [MaybeUninit<u16>; SMALL_TAPS + 1],
    /// Pixels listed: `start[..=pixels]` and the taps up to `start[pixels]` are written.
    pixels: usize,
}

impl PixelTaps {
    const UNSET: PixelTaps = PixelTaps {
        offset: [MaybeUninit::uninit(); SMALL_TAPS],
        tap: [MaybeUninit::uninit(); SMALL_TAPS],
        start: [MaybeUninit::uninit(); SMALL_TAPS + 1],
        pixels: 0,
    };

    /// Lists `g`'s taps when its planes are [`small`]; false (and nothing listed) if not.
    fn fill(&mut self, g: &Conv2dGeom) -> bool {
        if !small(g) {
            return false;
        }
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut n = 0;
        self.start[0].write(0);
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0]) as isize + tap_offset(ky, g.dilation[0], g.pad[0]);
                    for kx in 0..g.kw {
                        let ix =
                            (ox * g.stride[1]) as isize + tap_offset(kx, g.dilation[1], g.pad[1]);
                        if (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix) {
                            self.offset[n].write((iy as usize * g.w + ix as usize) as u16);
                            self.tap[n].write((ky * g.kw + kx) as u16);
                            n += 1;
                        }
                    }
                }
                self.start[oy * ow + ox + 1].write(n as u16);
            }
        }
        self.pixels = oh * ow;
        true
    }

    /// Output pixel `o`'s taps inside the input: their offsets in the input plane and their
    /// indices in the kernel.
    #[inline(always)]
    fn of(&self, o: usize) -> (&[u16], &[u16]) {
        assert!(o < self.pixels);
        // SAFETY: `fill` wrote `start[..=pixels]`, non-decreasing, and every offset and tap
        // below `start[pixels]`; MaybeUninit<u16> has u16's layout.
        unsafe {
            let (a, b) = (
                self.start[o].assume_init() as usize,
                self.start[o + 1].assume_init() as usize,
            );
            let offset = &self.offset[a..b];
            let tap = &self.tap[a..b];
            (
                &*(offset as *const [MaybeUninit<u16>] as *const [u16]),
                &*(tap as *const [MaybeUninit<u16>] as *const [u16]),
            )
        }
    }
}

/// Small planes, eight at a time: their inputs interleaved so that each multiply-add
/// serves eight planes in one vector operation. Row loops spend more on bookkeeping than on
/// arithmetic once a row is a few pixels long (the late layers of a network, or all of them
/// at 32×32 inputs).
fn forward_small(
    g: &Conv2dGeom,
    pixels: &PixelTaps,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (hw, p, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    let planes = g.n * g.c_out;
    // Runs of whole groups of eight channels of one image: their inputs are eight rows
    // each, which go into the lanes as 8×8 transposes, not float by float; their weights
    // go in once per call, not once per image.
    let channels = channel_groups(g);
    let align = if channels { LANES } else { 1 };
    let (buffer, table) = (p.min(SMALL_PLANE), g.c_out.div_ceil(LANES) * kk);
    // Moving planes in and out of the lanes costs as much as the taps on the smallest.
    let parts = threads::parts_for(g.output_len() * kk + 8 * (g.input_len() + g.output_len()));
    threads::for_runs(y, planes, p, align, parts, |run, ys| {
        with_lanes(hw + buffer + table, |lanes_scratch| {
            let (xs, rest) = lanes_scratch.split_at_mut(hw);
            let (outs, weights) = rest.split_at_mut(buffer);
            let (first, count) = (run.start, run.len());
            for group in (0..count).step_by(LANES) {
                let lanes = (count - group).min(LANES);
                let mut b0 = [0.0f32; LANES];
                let ws = if channels && lanes == LANES {
                    let (plane, c0) = (first + group, (first + group) % g.c_out);
                    to_lanes(&x[plane * hw..], hw, xs);
                    if let Some(bias) = bias {
                        b0.copy_from_slice(&bias[c0..c0 + LANES]);
                    }
                    table_weights(weights, w, c0, kk, group < g.c_out)
                } else {
                    let ws = &mut weights[..kk];
                    xs.fill([0.0; LANES]);
                    ws.fill([0.0; LANES]);
                    for l in 0..lanes {
                        let (b, oc) =
                            ((first + group + l) / g.c_out, (first + group + l) % g.c_out);
                        interleave(xs, l, &x[(b * g.c_in + oc / mult) * hw..][..hw]);
                        for (dst, &v) in ws.iter_mut().zip(&w[oc * kk..][..kk]) {
                            dst[l] = v;
                        }
                        b0[l] = bias.map_or(0.0, |bias| bias[oc]);
                    }
                    &*ws
                };
                let ys = &mut ys[group * p..][..lanes * p];
                // An output plane can outgrow the input's (padding): its pixels a buffer at a
                // time.
                for o0 in (0..p).step_by(SMALL_PLANE) {
                    let outs = &mut outs[..(p - o0).min(SMALL_PLANE)];
                    lanes_pass(pixels, xs, ws, b0, o0, outs);
                    if lanes == LANES {
                        from_lanes(outs, &mut ys[o0..], p);
                    } else {
                        for (l, yp) in ys.chunks_exact_mut(p).enumerate() {
                            yp[o0..][..outs.len()]
                                .iter_mut()
                                .zip(outs.iter())
                                .for_each(|(y, o)| *y = o[l]);
                        }
                    }
                }
            }
        })
    });
}

/// Channel group `c0`'s weights in the lanes: its slot of the call's `table`, transposed
/// there while the run goes through its first image-worth of planes (`first_image`), which
/// meets every channel group once, and read back for the images after.
fn table_weights<'t>(
    table: &'t mut [[f32; LANES]],
    w: &[f32],
    c0: usize,
    kk: usize,
    first_image: bool,
) -> &'t [[f32; LANES]] {
    let ws = &mut table[c0 / LANES * kk..][..kk];
    if first_image {
        to_lanes(&w[c0 * kk..], kk, ws);
    }
    ws
}

thread_local! {
    /// Each thread's lanes for the small-plane passes, grown on first use: zeroing 64 kB of
    /// lanes on the stack per call cost more than a 2×2 plane's taps.
    static LANES_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` lanes of this thread's scratch; what earlier calls left in them stays.
fn with_lanes<R>(len: usize, f: impl FnOnce(&mut [[f32; LANES]]) -> R) -> R {
    super::gemm::with_scratch(&LANES_SCRATCH, len * LANES, |v| f(v.as_chunks_mut().0))
}

/// [`forward`] of 1×1 planes: y[b, oc] = bias[oc] + x[b, c]·(the summed weights of oc's
/// taps inside), a block of output channels at a time with their summed weights on the
/// stack. Through [`forward_small`]'s interleaved lanes, 64 × 960 such planes took 0.4 ms,
/// forty times this.
fn forward_pixel(
    g: &Conv2dGeom,
    pixels: &PixelTaps,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let mult = g.c_out / g.c_in;
    let mut scale = [0.0f32; PIXEL_BLOCK];
    for c0 in (0..g.c_out).step_by(PIXEL_BLOCK) {
        let scale = pixel_weights(g, pixels, w, c0, &mut scale);
        let mut shift = [0.0f32; PIXEL_BLOCK];
        if let Some(bias) = bias {
            shift[..scale.len()].copy_from_slice(&bias[c0..][..scale.len()]);
        }
        for (yb, xb) in y.chunks_exact_mut(g.c_out).zip(x.chunks_exact(g.c_in)) {
            let out = yb[c0..][..scale.len()]
                .iter_mut()
                .zip(scale.iter().zip(&shift));
            if mult == 1 {
                let rows = out.zip(&xb[c0..]);
                rows.for_each(|((o, (&s, &b)), &v)| *o = b + s * v);
            } else {
                for (i, (o, (&s, &b))) in out.enumerate() {
                    *o = b + s * xb[(c0 + i) / mult];
                }
            }
        }
    }
}

/// The backward passes of small planes interleave the output planes too.
fn small_outputs(g: &Conv2dGeom) -> bool {
    g.out_h() * g.out_w() <= SMALL_PLANE
}

/// 1×1 planes in and out (a network's last layers at small inputs): every tap that lands
/// inside reads the one input pixel, so each gradient is a short sum per channel, and
/// interleaving planes for it would cost more than the sums.
fn one_pixel(g: &Conv2dGeom) -> bool {
    g.h * g.w == 1 && g.out_h() * g.out_w() == 1
}

/// The taps of the one output pixel that land inside the input.
fn pixel_taps(pixels: &PixelTaps) -> &[u16] {
    pixels.of(0).1
}

/// [`backward_data`] of 1×1 planes: dx[b, c] = Σ over c's output channels of the summed
/// weights of the taps inside, times dy; a block of output channels at a time, as
/// [`forward_pixel`] goes.
fn backward_data_pixel(g: &Conv2dGeom, pixels: &PixelTaps, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let mult = g.c_out / g.c_in;
    dx.fill(0.0);
    let mut scale = [0.0f32; PIXEL_BLOCK];
    for c0 in (0..g.c_out).step_by(PIXEL_BLOCK) {
        let scale = pixel_weights(g, pixels, w, c0, &mut scale);
        for (dxb, dyb) in dx.chunks_exact_mut(g.c_in).zip(dy.chunks_exact(g.c_out)) {
            let dyb = &dyb[c0..][..scale.len()];
            if mult == 1 {
                let rows = dxb[c0..][..scale.len()].iter_mut().zip(dyb);
                rows.zip(scale).for_each(|((d, &v), &s)| *d = s * v);
            } else {
                for (i, (&v, &s)) in dyb.iter().zip(scale.iter()).enumerate() {
                    dxb[(c0 + i) / mult] += s * v;
                }
            }
        }
    }
}

/// [`backward_weight`] of 1×1 planes: every tap inside gets Σ_b dy[b, oc]·x[b, c]; the
/// others nothing. The batch is summed a block of channels at a time, each row read in
/// order (channel by channel, every read strode a whole row).
fn backward_weight_pixel(
    g: &Conv2dGeom,
    pixels: &PixelTaps,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let (kk, mult) = (g.kh * g.kw, g.c_out / g.c_in);
    dw.fill(0.0);
    for c0 in (0..g.c_out).step_by(PIXEL_BLOCK) {
        let cs = PIXEL_BLOCK.min(g.c_out - c0);
        let mut sums = [0.0f32; PIXEL_BLOCK];
        for (xb, dyb) in x.chunks_exact(g.c_in).zip(dy.chunks_exact(g.c_out)) {
            let dyb = &dyb[c0..][..cs];
            if mult == 1 {
                let rows = sums.iter_mut().zip(dyb).zip(&xb[c0..][..cs]);
                rows.for_each(|((s, &d), &v)| *s += d * v);
            } else {
                for (i, (s, &d)) in sums.iter_mut().zip(dyb).enumerate() {
                    *s += d * xb[(c0 + i) / mult];
                }
            }
        }
        for (dwk, &s) in dw[c0 * kk..].chunks_exact_mut(kk).zip(&sums[..cs]) {
            for &k in pixel_taps(pixels) {
                dwk[k as usize] = s;
            }
        }
    }
}

/// Output channels the 1×1-plane passes take at a time.
const PIXEL_BLOCK: usize = 64;

/// The summed weights of the taps inside of output channels `c0..` (up to a block) into
/// `out`, returned as long as the block is.
fn pixel_weights<'o>(
    g: &Conv2dGeom,
    pixels: &PixelTaps,
    w: &[f32],
    c0: usize,
    out: &'o mut [f32; PIXEL_BLOCK],
) -> &'o [f32] {
    let kk = g.kh * g.kw;
    let out = &mut out[..PIXEL_BLOCK.min(g.c_out - c0)];
    for (i, s) in out.iter_mut().enumerate() {
        *s = pixel_taps(pixels)
            .iter()
            .map(|&k| w[(c0 + i) * kk + k as usize])
            .sum();
    }
    out
}

/// Pixel `i`'s value of plane `plane` into lane `lane` of `dst`, for the plane's pixels.
fn interleave(dst: &mut [[f32; LANES]], lane: usize, plane: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(plane) {
        d[lane] = v;
    }
}

/// Small planes' input gradients, eight input planes at a time (as [`forward_small`]):
/// every output pixel's interleaved gradients scattered through its taps in vector
/// operations, where the row loops made a call per tap and row a few pixels long.
fn backward_data_small(g: &Conv2dGeom, pixels: &PixelTaps, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (hw, p, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    // As in `forward_small`: eight channels of one image move by transposes, their weights
    // once per call.
    let channels = channel_groups(g);
    let align = if channels { LANES } else { 1 };
    let table = g.c_out.div_ceil(LANES) * kk;
    threads::for_runs(
        dx,
        g.n * g.c_in,
        hw,
        align,
        depthwise_parts(g),
        |run, dxs| {
            with_lanes(p + hw + table, |lanes_scratch| {
                let (dys, rest) = lanes_scratch.split_at_mut(p);
                let (acc, weights) = rest.split_at_mut(hw);
                let (first, count) = (run.start, run.len());
                for group in (0..count).step_by(LANES) {
                    let lanes = (count - group).min(LANES);
                    acc.fill([0.0; LANES]);
                    if channels && lanes == LANES {
                        let (plane, c0) = (first + group, (first + group) % g.c_in);
                        to_lanes(&dy[plane * p..], p, dys);
                        let ws = table_weights(weights, w, c0, kk, group < g.c_in);
                        lanes_scatter(pixels, dys, ws, acc);
                        from_lanes(acc, &mut dxs[group * hw..], hw);
                        continue;
                    }
                    let ws = &mut weights[..kk];
                    dys.fill([0.0; LANES]);
                    ws.fill([0.0; LANES]);
                    for m in 0..mult {
                        for l in 0..lanes {
                            let (b, ic) =
                                ((first + group + l) / g.c_in, (first + group + l) % g.c_in);
                            let oc = ic * mult + m;
                            interleave(dys, l, &dy[(b * g.c_out + oc) * p..][..p]);
                            for (dst, &v) in ws.iter_mut().zip(&w[oc * kk..][..kk]) {
                                dst[l] = v;
                            }
                        }
                        lanes_scatter(pixels, dys, ws, acc);
                    }
                    for (l, dxp) in dxs[group * hw..]
                        .chunks_exact_mut(hw)
                        .take(lanes)
                        .enumerate()
                    {
                        dxp.iter_mut().zip(&*acc).for_each(|(d, a)| *d = a[l]);
                    }
                }
            })
        },
    );
}

/// Small planes' weight gradients, eight output channels at a time: per image, the
/// interleaved output gradients and inputs correlated through every pixel's taps.
fn backward_weight_small(
    g: &Conv2dGeom,
    pixels: &PixelTaps,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let (hw, p, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    // As in `forward_small`: eight channels of one image move by transposes.
    let channels = channel_groups(g);
    let align = if channels { LANES } else { 1 };
    threads::for_runs(dw, g.c_out, kk, align, depthwise_parts(g), |run, dws| {
        with_lanes(p + hw + kk, |lanes_scratch| {
            let (dys, rest) = lanes_scratch.split_at_mut(p);
            let (xs, acc) = rest.split_at_mut(hw);
            let (first, count) = (run.start, run.len());
            for group in (0..count).step_by(LANES) {
                let lanes = (count - group).min(LANES);
                let whole = channels && lanes == LANES;
                acc.fill([0.0; LANES]);
                if !whole {
                    dys.fill([0.0; LANES]);
                    xs.fill([0.0; LANES]);
                }
                for b in 0..g.n {
                    if whole {
                        let plane = b * g.c_out + first + group;
                        to_lanes(&dy[plane * p..], p, dys);
                        to_lanes(&x[plane * hw..], hw, xs);
                    } else {
                        for l in 0..lanes {
                            let oc = first + group + l;
                            interleave(dys, l, &dy[(b * g.c_out + oc) * p..][..p]);
                            interleave(xs, l, &x[(b * g.c_in + oc / mult) * hw..][..hw]);
                        }
                    }
                    lanes_correlate(pixels, dys, xs, acc);
                }
                if whole {
                    from_lanes(acc, &mut dws[group * kk..], kk);
                    continue;
                }
                for (l, dwk) in dws[group * kk..]
                    .chunks_exact_mut(kk)
                    .take(lanes)
                    .enumerate()
                {
                    dwk.iter_mut().zip(&*acc).for_each(|(d, a)| *d = a[l]);
                }
            }
        })
    });
}

/// `dxs[offset] += ws[tap] · dys[o]` over every output pixel `o`'s taps, lane by lane.
fn lanes_scatter(
    pixels: &PixelTaps,
    dys: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    dxs: &mut [[f32; LANES]],
) {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { lanes_scatter_avx2(pixels, dys, ws, dxs) });
    lanes_scatter_body(pixels, dys, ws, dxs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn lanes_scatter_avx2(
    pixels: &PixelTaps,
    dys: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    dxs: &mut [[f32; LANES]],
) {
    lanes_scatter_body(pixels, dys, ws, dxs)
}

#[inline(always)]
fn lanes_scatter_body(
    pixels: &PixelTaps,
    dys: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    dxs: &mut [[f32; LANES]],
) {
    for (o, dyv) in dys.iter().enumerate() {
        let (offsets, taps) = pixels.of(o);
        for (&off, &k) in offsets.iter().zip(taps) {
            let (dst, wv) = (&mut dxs[off as usize], &ws[k as usize]);
            for l in 0..LANES {
                dst[l] += wv[l] * dyv[l];
            }
        }
    }
}

/// `acc[tap] += dys[o] · xs[offset]` over every output pixel `o`'s taps, lane by lane.
fn lanes_correlate(
    pixels: &PixelTaps,
    dys: &[[f32; LANES]],
    xs: &[[f32; LANES]],
    acc: &mut [[f32; LANES]],
) {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { lanes_correlate_avx2(pixels, dys, xs, acc) });
    lanes_correlate_body(pixels, dys, xs, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn lanes_correlate_avx2(
    pixels: &PixelTaps,
    dys: &[[f32; LANES]],
    xs: &[[f32; LANES]],
    acc: &mut [[f32; LANES]],
) {
    lanes_correlate_body(pixels, dys, xs, acc)
}

#[inline(always)]
fn lanes_correlate_body(
    pixels: &PixelTaps,
    dys: &[[f32; LANES]],
    xs: &[[f32; LANES]],
    acc: &mut [[f32; LANES]],
) {
    for (o, dyv) in dys.iter().enumerate() {
        let (offsets, taps) = pixels.of(o);
        for (&off, &k) in offsets.iter().zip(taps) {
            let (a, xv) = (&mut acc[k as usize], &xs[off as usize]);
            for l in 0..LANES {
                a[l] += dyv[l] * xv[l];
            }
        }
    }
}

/// The interleaved planes' outputs at pixels `o0..` into `outs` (one per pixel, lanes
/// interleaved).
fn lanes_pass(
    pixels: &PixelTaps,
    xs: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    b0: [f32; LANES],
    o0: usize,
    outs: &mut [[f32; LANES]],
) {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { lanes_pass_avx2(pixels, xs, ws, b0, o0, outs) });
    lanes_pass_body(pixels, xs, ws, b0, o0, outs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn lanes_pass_avx2(
    pixels: &PixelTaps,
    xs: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    b0: [f32; LANES],
    o0: usize,
    outs: &mut [[f32; LANES]],
) {
    lanes_pass_body(pixels, xs, ws, b0, o0, outs)
}

#[inline(always)]
fn lanes_pass_body(
    pixels: &PixelTaps,
    xs: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    b0: [f32; LANES],
    o0: usize,
    outs: &mut [[f32; LANES]],
) {
    for (o, out) in (o0..).zip(outs.iter_mut()) {
        let mut acc = b0;
        let (offsets, taps) = pixels.of(o);
        for (&off, &k) in offsets.iter().zip(taps) {
            let (xv, wv) = (&xs[off as usize], &ws[k as usize]);
            for l in 0..LANES {
                acc[l] += wv[l] * xv[l];
            }
        }
        *out = acc;
    }
}

/// Eight rows of `n` floats, one after another from the start of `src`, into lanes:
/// `dst[i][l] = src[l·n + i]`.
fn to_lanes(src: &[f32], n: usize, dst: &mut [[f32; LANES]]) {
    let dst = dst[..n].as_flattened_mut();
    // SAFETY: AVX2 and FMA (`dispatch_avx2!` checks); `pack_lines` asserts its bounds.
    dispatch_avx2!(unsafe { super::simd::pack_lines::<LANES>(dst, src, n, n) });
    for (i, d) in dst.chunks_exact_mut(LANES).enumerate() {
        (0..LANES).for_each(|l| d[l] = src[l * n + i]);
    }
}

/// The inverse of [`to_lanes`]: `dst[l·stride + i] = src[i][l]` for every pixel `i` of
/// `src`, eight rows out of the lanes.
fn from_lanes(src: &[[f32; LANES]], dst: &mut [f32], stride: usize) {
    let n = src.len();
    assert!(n <= stride && 7 * stride + n <= dst.len());
    // SAFETY: AVX2 and FMA (`dispatch_avx2!` checks); the bounds just asserted.
    dispatch_avx2!(unsafe { from_lanes_avx2(src, dst, stride) });
    for (i, s) in src.iter().enumerate() {
        (0..LANES).for_each(|l| dst[l * stride + i] = s[l]);
    }
}

/// # Safety
/// AVX2 and FMA; `src.len() ≤ stride`, `7·stride + src.len() ≤ dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn from_lanes_avx2(src: &[[f32; LANES]], dst: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    let n = src.len();
    let full = n - n % LANES;
    for i in (0..full).step_by(LANES) {
        let mut pixels = [_mm256_setzero_ps(); LANES];
        for (v, s) in pixels.iter_mut().zip(&src[i..i + LANES]) {
            // SAFETY: `s` is eight floats.
            *v = unsafe { _mm256_loadu_ps(s.as_ptr()) };
        }
        for (l, row) in transpose8(pixels).into_iter().enumerate() {
            // SAFETY: l·stride + i + 8 ≤ 7·stride + n floats of `dst`.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(l * stride + i), row) };
        }
    }
    let full = if n - full >= 4 {
        // Four pixels' lanes 0–3 and 4–7 as two 4×4 transposes.
        let mut q = [_mm_setzero_ps(); LANES];
        for (j, s) in src[full..full + 4].iter().enumerate() {
            // SAFETY: `s` is eight floats.
            let v = unsafe { _mm256_loadu_ps(s.as_ptr()) };
            (q[j], q[4 + j]) = (_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        }
        let [a0, a1, a2, a3, b0, b1, b2, b3] = &mut q;
        _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
        _MM_TRANSPOSE4_PS(b0, b1, b2, b3);
        for (l, row) in q.into_iter().enumerate() {
            // SAFETY: l·stride + full + 4 ≤ 7·stride + n floats of `dst`.
            unsafe { _mm_storeu_ps(dst.as_mut_ptr().add(l * stride + full), row) };
        }
        full + 4
    } else {
        full
    };
    for (i, s) in src.iter().enumerate().skip(full) {
        (0..LANES).for_each(|l| dst[l * stride + i] = s[l]);
    }
}
