//! Depthwise convolution (one input channel per group, any channel multiplier): direct
//! loops, since im2col would turn the work into many tiny products. Forward, input gradient
//! and weight gradient; `conv` routes depthwise geometries here.
//!
//! Threads: the loops split their output planes (or, for the weight gradient, channels).

use super::conv::{Conv2dGeom, gather_axpy, gather_dot, scatter_axpy, tap_offset};
use super::window::valid_range;
use crate::threads;
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

/// In parallel over output planes: each part writes its own run of `y`.
pub(super) fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    if let Some(pixels) = PixelTaps::new(g) {
        return forward_small(g, &pixels, x, w, bias, y);
    }
    if g.stride[1] <= 2 && g.w <= ROW_MAX && g.kw <= ROW_KW {
        return forward_rows(g, x, w, bias, y);
    }
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

/// Widest input row [`forward_rows`] takes (its stride-2 split of a row is on the stack).
const ROW_MAX: usize = 2048;
/// Widest kernel [`forward_rows`] takes.
const ROW_KW: usize = 16;

/// Large planes one output row at a time: each tap is one contiguous multiply-add over the
/// row, which stays in L1 for all of them (tap after tap, a 112×112 plane went through L2 nine
/// times). With stride 2 each input row is first split into its even and odd columns, so that
/// a tap's inputs are contiguous too instead of gathered two apart.
fn forward_rows(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (hw, p, ow, kk) = (g.h * g.w, g.out_h() * g.out_w(), g.out_w(), g.kh * g.kw);
    let mult = g.c_out / g.c_in;
    let (sw, half) = (g.stride[1], g.w.div_ceil(2));
    // Per kernel column: the output columns whose tap lands inside the row, and where the
    // first one's input is in the row (in its split, with stride 2: even columns, then odd).
    let mut cols = [(0, 0, 0); ROW_KW];
    for (kx, c) in cols.iter_mut().enumerate().take(g.kw) {
        let off = tap_offset(kx, g.dilation[1], g.pad[1]);
        let xs = valid_range(ow, g.w, sw, off);
        if !xs.is_empty() {
            let ix = ((xs.start * sw) as isize + off) as usize;
            let at = if sw == 1 { ix } else { ix % 2 * half + ix / 2 };
            *c = (xs.start, xs.end, at);
        }
    }
    let cols = &cols[..g.kw];
    threads::for_runs(y, g.n * g.c_out, p, 1, depthwise_parts(g), |run, ys| {
        let mut split = [0.0f32; ROW_MAX];
        for (i, yp) in run.zip(ys.chunks_exact_mut(p)) {
            let (b, oc) = (i / g.c_out, i % g.c_out);
            let xp = &x[(b * g.c_in + oc / mult) * hw..][..hw];
            let wk = &w[oc * kk..][..kk];
            for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                out.fill(bias.map_or(0.0, |bias| bias[oc]));
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0]) as isize + tap_offset(ky, g.dilation[0], g.pad[0]);
                    if !(0..g.h as isize).contains(&iy) {
                        continue;
                    }
                    let row = &xp[iy as usize * g.w..][..g.w];
                    let src = if sw == 1 {
                        row
                    } else {
                        let (even, odd) = split[..g.w].split_at_mut(half);
                        for (j, pair) in row.chunks(2).enumerate() {
                            even[j] = pair[0];
                            if let Some(&v) = pair.get(1) {
                                odd[j] = v;
                            }
                        }
                        &split[..g.w]
                    };
                    row_taps(out, src, cols, &wk[ky * g.kw..][..g.kw]);
                }
            }
        }
    });
}

/// `out[x0..x1] += w · src[at..]` for every kernel column's `(x0, x1, at)` and weight.
fn row_taps(out: &mut [f32], src: &[f32], cols: &[(usize, usize, usize)], w: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { row_taps_avx2(out, src, cols, w) };
    }
    for (&(x0, x1, at), &wv) in cols.iter().zip(w) {
        for (o, &v) in out[x0..x1].iter_mut().zip(&src[at..at + (x1 - x0)]) {
            *o += wv * v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_taps_avx2(out: &mut [f32], src: &[f32], cols: &[(usize, usize, usize)], w: &[f32]) {
    for (&(x0, x1, at), &wv) in cols.iter().zip(w) {
        for (o, &v) in out[x0..x1].iter_mut().zip(&src[at..at + (x1 - x0)]) {
            *o = wv.mul_add(v, *o);
        }
    }
}

/// In parallel over input planes, each gathering the `mult` output planes it feeds.
pub(super) fn backward_data(g: &Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    if let Some(pixels) = PixelTaps::new(g).filter(|_| small_outputs(g)) {
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
    if let Some(pixels) = PixelTaps::new(g).filter(|_| small_outputs(g)) {
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

/// For each output pixel of a small plane, its taps that land inside the input: (offset in
/// the input plane, tap index), listed once per call instead of worked out per plane.
struct PixelTaps {
    offset: [u16; SMALL_TAPS],
    tap: [u16; SMALL_TAPS],
    /// Pixel `o`'s taps are `start[o]..start[o + 1]`.
    start: [u16; SMALL_TAPS + 1],
}

impl PixelTaps {
    /// On the caller's stack (about 55 kB): a step allocates nothing.
    fn new(g: &Conv2dGeom) -> Option<PixelTaps> {
        let (oh, ow, kk) = (g.out_h(), g.out_w(), g.kh * g.kw);
        if g.h * g.w > SMALL_PLANE || oh * ow * kk > SMALL_TAPS || kk > MAX_TAPS {
            return None;
        }
        let mut t = PixelTaps {
            offset: [0; SMALL_TAPS],
            tap: [0; SMALL_TAPS],
            start: [0; SMALL_TAPS + 1],
        };
        let mut n = 0;
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0]) as isize + tap_offset(ky, g.dilation[0], g.pad[0]);
                    for kx in 0..g.kw {
                        let ix =
                            (ox * g.stride[1]) as isize + tap_offset(kx, g.dilation[1], g.pad[1]);
                        if (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix) {
                            t.offset[n] = (iy as usize * g.w + ix as usize) as u16;
                            t.tap[n] = (ky * g.kw + kx) as u16;
                            n += 1;
                        }
                    }
                }
                t.start[oy * ow + ox + 1] = n as u16;
            }
        }
        Some(t)
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
    threads::for_runs(y, planes, p, 1, depthwise_parts(g), |run, ys| {
        let mut xs = [[0.0f32; LANES]; SMALL_PLANE];
        let mut ws = [[0.0f32; LANES]; MAX_TAPS];
        let (first, count) = (run.start, run.len());
        for group in (0..count).step_by(LANES) {
            let lanes = (count - group).min(LANES);
            let mut b0 = [0.0f32; LANES];
            for l in 0..lanes {
                let (b, oc) = ((first + group + l) / g.c_out, (first + group + l) % g.c_out);
                let xp = &x[(b * g.c_in + oc / mult) * hw..][..hw];
                for (dst, &v) in xs[..hw].iter_mut().zip(xp) {
                    dst[l] = v;
                }
                for (dst, &v) in ws[..kk].iter_mut().zip(&w[oc * kk..][..kk]) {
                    dst[l] = v;
                }
                b0[l] = bias.map_or(0.0, |bias| bias[oc]);
            }
            let ys = &mut ys[group * p..][..lanes * p];
            lanes_pass(pixels, &xs, &ws, b0, p, ys);
        }
    });
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
    &pixels.tap[..pixels.start[1] as usize]
}

/// [`backward_data`] of 1×1 planes: dx[b, c] = Σ over c's output channels of the summed
/// weights of the taps inside, times dy.
fn backward_data_pixel(g: &Conv2dGeom, pixels: &PixelTaps, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (kk, mult) = (g.kh * g.kw, g.c_out / g.c_in);
    let taps = pixel_taps(pixels);
    let weight = |oc: usize| -> f32 { taps.iter().map(|&k| w[oc * kk + k as usize]).sum() };
    for (dxb, dyb) in dx.chunks_exact_mut(g.c_in).zip(dy.chunks_exact(g.c_out)) {
        for (ic, d) in dxb.iter_mut().enumerate() {
            *d = (ic * mult..(ic + 1) * mult)
                .map(|oc| weight(oc) * dyb[oc])
                .sum();
        }
    }
}

/// [`backward_weight`] of 1×1 planes: every tap inside gets Σ_b dy[b, oc]·x[b, c]; the
/// others nothing.
fn backward_weight_pixel(
    g: &Conv2dGeom,
    pixels: &PixelTaps,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let (kk, mult) = (g.kh * g.kw, g.c_out / g.c_in);
    dw.fill(0.0);
    for (oc, dwk) in dw.chunks_exact_mut(kk).enumerate() {
        let s: f32 = (0..g.n)
            .map(|b| dy[b * g.c_out + oc] * x[b * g.c_in + oc / mult])
            .sum();
        for &k in pixel_taps(pixels) {
            dwk[k as usize] = s;
        }
    }
}

/// Eight planes' values, one per lane, for each pixel of a small plane.
type Lanes = [[f32; LANES]; SMALL_PLANE];

/// Pixel `i`'s value of plane `plane` into lane `lane` of `dst`, for the plane's pixels.
fn interleave(dst: &mut Lanes, lane: usize, plane: &[f32]) {
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
    threads::for_runs(dx, g.n * g.c_in, hw, 1, depthwise_parts(g), |run, dxs| {
        let (mut dys, mut acc): (Lanes, Lanes) =
            ([[0.0; LANES]; SMALL_PLANE], [[0.0; LANES]; SMALL_PLANE]);
        let mut ws = [[0.0f32; LANES]; MAX_TAPS];
        let (first, count) = (run.start, run.len());
        for group in (0..count).step_by(LANES) {
            let lanes = (count - group).min(LANES);
            acc[..hw].fill([0.0; LANES]);
            for m in 0..mult {
                for l in 0..lanes {
                    let (b, ic) = ((first + group + l) / g.c_in, (first + group + l) % g.c_in);
                    let oc = ic * mult + m;
                    interleave(&mut dys, l, &dy[(b * g.c_out + oc) * p..][..p]);
                    for (dst, &v) in ws[..kk].iter_mut().zip(&w[oc * kk..][..kk]) {
                        dst[l] = v;
                    }
                }
                lanes_scatter(pixels, &dys[..p], &ws, &mut acc[..hw]);
            }
            for (l, dxp) in dxs[group * hw..]
                .chunks_exact_mut(hw)
                .take(lanes)
                .enumerate()
            {
                dxp.iter_mut().zip(&acc[..hw]).for_each(|(d, a)| *d = a[l]);
            }
        }
    });
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
    threads::for_runs(dw, g.c_out, kk, 1, depthwise_parts(g), |run, dws| {
        let (mut dys, mut xs): (Lanes, Lanes) =
            ([[0.0; LANES]; SMALL_PLANE], [[0.0; LANES]; SMALL_PLANE]);
        let mut acc = [[0.0f32; LANES]; MAX_TAPS];
        let (first, count) = (run.start, run.len());
        for group in (0..count).step_by(LANES) {
            let lanes = (count - group).min(LANES);
            acc[..kk].fill([0.0; LANES]);
            for b in 0..g.n {
                for l in 0..lanes {
                    let oc = first + group + l;
                    interleave(&mut dys, l, &dy[(b * g.c_out + oc) * p..][..p]);
                    interleave(&mut xs, l, &x[(b * g.c_in + oc / mult) * hw..][..hw]);
                }
                lanes_correlate(pixels, &dys[..p], &xs[..hw], &mut acc[..kk]);
            }
            for (l, dwk) in dws[group * kk..]
                .chunks_exact_mut(kk)
                .take(lanes)
                .enumerate()
            {
                dwk.iter_mut().zip(&acc[..kk]).for_each(|(d, a)| *d = a[l]);
            }
        }
    });
}

/// `dxs[offset] += ws[tap] · dys[o]` over every output pixel `o`'s taps, lane by lane.
fn lanes_scatter(
    pixels: &PixelTaps,
    dys: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    dxs: &mut [[f32; LANES]],
) {
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { lanes_scatter_avx2(pixels, dys, ws, dxs) };
    }
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
        let taps = pixels.start[o] as usize..pixels.start[o + 1] as usize;
        for (&off, &k) in pixels.offset[taps.clone()].iter().zip(&pixels.tap[taps]) {
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
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { lanes_correlate_avx2(pixels, dys, xs, acc) };
    }
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
        let taps = pixels.start[o] as usize..pixels.start[o + 1] as usize;
        for (&off, &k) in pixels.offset[taps.clone()].iter().zip(&pixels.tap[taps]) {
            let (a, xv) = (&mut acc[k as usize], &xs[off as usize]);
            for l in 0..LANES {
                a[l] += dyv[l] * xv[l];
            }
        }
    }
}

/// The interleaved planes' outputs into `ys` (plane-major, `ys.len() / p` planes).
fn lanes_pass(
    pixels: &PixelTaps,
    xs: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    b0: [f32; LANES],
    p: usize,
    ys: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { lanes_pass_avx2(pixels, xs, ws, b0, p, ys) };
    }
    lanes_pass_body(pixels, xs, ws, b0, p, ys)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn lanes_pass_avx2(
    pixels: &PixelTaps,
    xs: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    b0: [f32; LANES],
    p: usize,
    ys: &mut [f32],
) {
    lanes_pass_body(pixels, xs, ws, b0, p, ys)
}

#[inline(always)]
fn lanes_pass_body(
    pixels: &PixelTaps,
    xs: &[[f32; LANES]],
    ws: &[[f32; LANES]],
    b0: [f32; LANES],
    p: usize,
    ys: &mut [f32],
) {
    let lanes = ys.len() / p;
    for o in 0..p {
        let mut acc = b0;
        let taps = pixels.start[o] as usize..pixels.start[o + 1] as usize;
        for (&off, &k) in pixels.offset[taps.clone()].iter().zip(&pixels.tap[taps]) {
            let (xv, wv) = (&xs[off as usize], &ws[k as usize]);
            for l in 0..LANES {
                acc[l] += wv[l] * xv[l];
            }
        }
        for (l, &v) in acc.iter().enumerate().take(lanes) {
            ys[l * p + o] = v;
        }
    }
}
