//! Fused inference chains: convs whose intermediate maps each have one reader (a MobileNet
//! block's expand 1×1 → ReLU6 → depthwise → ReLU6 → project 1×1, and its residual add) run
//! band of output rows by band of output rows, every stage on a band before the next band.
//!
//! The maps between the stages are the widest of the block (six times its input's
//! channels). Run stage by stage they went through memory twice each, written by one conv
//! and read by the next, and on a 112² or 56² map that traffic was most of the prefix's
//! time. In a chain they live only as a band in one thread's scratch, in cache, and the
//! frozen prefix's arena loses them.
//!
//! A band of output rows needs a window of each earlier stage's output rows: the rows on the
//! seam between two bands of a k×k stage are needed by both. A 1×1 stage's seam rows stay in
//! the lane's scratch for the lane's next band of the same image; other stages compute them
//! again. [`bands`] picks the band height so each band's maps fit a cache budget and the
//! recomputed seams (counted as if every stage recomputed them) stay small, and declines
//! chains where it cannot.
//!
//! Threads: the bands of all images are shared out among `lanes` runs, each with its own
//! scratch; the kernels inside run on their thread alone (see `threads`). Each band's output
//! is stored into `y`'s planes from the lane's scratch, so the lanes never hold overlapping
//! slices of `y`.

use super::conv;
use super::gemm::{Epilogue, sgemm_with};
use super::geometry::Conv2dGeom;
use super::qgemm::{self, Planes, QWeights};
use crate::threads;
use std::ops::Range;

/// Most stages a chain fuses: a block's expand, depthwise and project, or a stem conv, a
/// depthwise and a project; with room for a decomposed block, whose 1×1 convs are two
/// thin ones each (`actc decompose`).
pub const MAX_STAGES: usize = 6;
/// Most lanes (bands in flight, each with its scratch) a chain runs with.
pub const MAX_LANES: usize = 16;
/// Bytes of one lane's scratch (a band of every stage's map): with the weights it stays in
/// a core's L2 (1 MiB here; 512 KiB to 1 MiB on phone cores).
const LANE_BYTES: usize = 768 << 10;
/// Extra work the seams between bands may cost, as a share of the chain's work.
const MAX_SEAM_WORK: f64 = 0.2;
/// A chain is only worth fusing when one of its intermediate maps (the whole micro-batch's)
/// is at least this large: smaller maps stay in cache between stages anyway.
const MIN_FUSED_BYTES: usize = 192 << 10;

/// Fewest pixels of any stage's output map, per image: a band's products are one image's,
/// and over a few dozen pixels they run slower than the batched ones of the unfused convs.
const MIN_PIXELS: usize = 64;

/// One conv of a chain, over the whole batch, with what follows it in the same pass.
#[derive(Clone, Copy)]
pub struct Stage<'a> {
    pub g: Conv2dGeom,
    pub w: Weights<'a>,
    pub bias: Option<&'a [f32]>,
    pub clip: Option<(f32, f32)>,
}

/// A stage's weights: floats, or int8 for a 1×1 stage of a quantized prefix.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    Int8(QWeights<'a>),
}

/// Whether `g` can be a stage of a chain (`first`: the first stage). A 1×1 conv or a
/// depthwise conv anywhere; first, also a conv over a few input channels (a stem over RGB,
/// whose seam rows are cheap). Windows must reach into the input from each padded edge.
pub fn stage_fits(g: &Conv2dGeom, first: bool) -> bool {
    let span = |k: usize, d: usize| d * (k - 1) + 1;
    let pads_fit = g.pad[0] < span(g.kh, g.dilation[0])
        && g.pad[2] < span(g.kh, g.dilation[0])
        && g.pad[1] < span(g.kw, g.dilation[1])
        && g.pad[3] < span(g.kw, g.dilation[1]);
    let kind = pointwise(g) || g.is_depthwise() || (first && g.groups == 1 && g.c_in <= 4);
    kind && pads_fit && g.out_h() > 0 && g.out_w() > 0
}

/// Input rows (unclipped: may start above row 0 or end below the last) that output rows
/// `out` of `g` read.
fn reach(g: &Conv2dGeom, out: &Range<usize>) -> (isize, isize) {
    let lo = (out.start * g.stride[0]) as isize - g.pad[0] as isize;
    (lo, lo + span_rows(g, out.len()) as isize)
}

/// Input rows (padding included) that `rows` consecutive output rows of `g` span.
fn span_rows(g: &Conv2dGeom, rows: usize) -> usize {
    (rows - 1) * g.stride[0] + g.dilation[0] * (g.kh - 1) + 1
}

/// Most input rows `rows` output rows of `g` read.
fn band_rows_in(g: &Conv2dGeom, rows: usize) -> usize {
    span_rows(g, rows).min(g.h)
}

/// The input rows output rows `out` of `g` read, and `g` cut to them: one image, those
/// rows, the padding that is left at the cut edges. Its output is exactly rows `out`.
fn band_geom(g: &Conv2dGeom, out: &Range<usize>) -> (Range<usize>, Conv2dGeom) {
    let (lo, hi) = reach(g, out);
    let rows = lo.max(0) as usize..hi.min(g.h as isize) as usize;
    let mut b = *g;
    b.n = 1;
    b.h = rows.len();
    b.pad[0] = (rows.start as isize - lo) as usize;
    b.pad[2] = (hi - rows.end as isize) as usize;
    debug_assert_eq!(b.out_h(), out.len());
    (rows, b)
}

/// Each stage's output rows that output rows `out` of the last stage need.
fn windows(gs: &[Conv2dGeom], out: Range<usize>) -> [Range<usize>; MAX_STAGES] {
    let mut w: [Range<usize>; MAX_STAGES] = Default::default();
    w[gs.len() - 1] = out;
    for s in (1..gs.len()).rev() {
        w[s - 1] = band_geom(&gs[s], &w[s]).0;
    }
    w
}

/// Most output rows of each stage that a band of `rows` rows of the last stage needs.
fn band_rows(gs: &[Conv2dGeom], rows: usize) -> [usize; MAX_STAGES] {
    let mut r = [0; MAX_STAGES];
    r[gs.len() - 1] = rows;
    for s in (1..gs.len()).rev() {
        r[s - 1] = band_rows_in(&gs[s], r[s]);
    }
    r
}

fn pointwise(g: &Conv2dGeom) -> bool {
    g.is_pointwise() && g.groups == 1
}

/// Floats of one lane's scratch for bands of `rows`: each stage's output band (the last
/// one's too, stored into `y` from there), a contiguous copy of the input band when the
/// first stage is not 1×1, and an im2col matrix when a stage needs one.
fn lane_len(gs: &[Conv2dGeom], rows: usize) -> usize {
    let r = band_rows(gs, rows);
    let outs: usize = gs.iter().zip(r).map(|(g, r)| g.c_out * r * g.out_w()).sum();
    let first = &gs[0];
    let copy = if pointwise(first) {
        0
    } else {
        first.c_in * band_rows_in(first, r[0]) * first.w
    };
    // An im2col matrix for `r` output rows, whatever the band's edge padding.
    let im2col = gs
        .iter()
        .zip(r)
        .filter(|(g, _)| !pointwise(g))
        .map(|(g, r)| {
            let mut b = *g;
            b.n = 1;
            b.h = span_rows(g, r);
            b.pad[0] = 0;
            b.pad[2] = 0;
            conv::forward_workspace_len(&b)
        })
        .max()
        .unwrap_or(0);
    outs + copy + im2col
}

/// Floats of scratch [`forward`] needs.
pub fn workspace_len(gs: &[Conv2dGeom], rows: usize, lanes: usize) -> usize {
    lanes * lane_len(gs, rows)
}

/// Work (multiply-adds) of one output row of `g`.
fn row_work(g: &Conv2dGeom) -> f64 {
    (g.c_out * g.out_w() * g.cin_per_group() * g.kh * g.kw) as f64
}

/// Extra work of bands of `rows` over running each stage once, as a share of the chain's.
fn seam_work(gs: &[Conv2dGeom], rows: usize) -> f64 {
    let last = gs[gs.len() - 1].out_h();
    let mut done = [0usize; MAX_STAGES];
    for start in (0..last).step_by(rows) {
        let w = windows(gs, start..(start + rows).min(last));
        for (d, r) in done.iter_mut().zip(&w[..gs.len()]) {
            *d += r.len();
        }
    }
    let total: f64 = gs.iter().map(|g| row_work(g) * g.out_h() as f64).sum();
    let extra: f64 = gs
        .iter()
        .zip(done)
        .map(|(g, d)| row_work(g) * (d - g.out_h()) as f64)
        .sum();
    extra / total
}

/// The band height (output rows of the last stage) to fuse `gs` with, given `lanes`
/// threads; `None` when the chain is not worth fusing: its intermediate maps are small, or
/// bands that fit the cache budget would recompute too much at their seams.
pub fn bands(gs: &[Conv2dGeom], lanes: usize) -> Option<usize> {
    if !(2..=MAX_STAGES).contains(&gs.len()) {
        return None;
    }
    let widest = gs[..gs.len() - 1]
        .iter()
        .map(|g| g.n * g.c_out * g.out_h() * g.out_w() * 4)
        .max()?;
    if widest < MIN_FUSED_BYTES || gs.iter().any(|g| g.out_h() * g.out_w() < MIN_PIXELS) {
        return None;
    }
    let last = gs[gs.len() - 1].out_h();
    let fits = |rows: usize| lane_len(gs, rows) * 4 <= LANE_BYTES;
    // Enough bands for every lane when the images alone are too few.
    let per_image = lanes.div_ceil(gs[0].n).max(1);
    let most = last.div_ceil(per_image);
    let most = (1..=most).rev().find(|&r| fits(r))?;
    // Bands that share out evenly, if a somewhat lower band gives that: a lane left with
    // one band more than the other waits for nothing else.
    let even = |r: usize| (gs[0].n * last.div_ceil(r)).is_multiple_of(lanes);
    let rows = (most * 3 / 4..=most)
        .rev()
        .find(|&r| r > 0 && even(r))
        .unwrap_or(most);
    (seam_work(gs, rows) <= MAX_SEAM_WORK).then_some(rows)
}

/// `y = chain(x)`, plus `x` when `residual` (the last stage's output has `x`'s shape), in
/// bands of `rows` output rows, `lanes` at a time. `ws` holds [`workspace_len`] floats.
pub fn forward(
    stages: &[Stage],
    residual: bool,
    rows: usize,
    lanes: usize,
    x: &[f32],
    y: &mut [f32],
    ws: &mut [f32],
) {
    let mut gs = [stages[0].g; MAX_STAGES];
    for (g, s) in gs.iter_mut().zip(stages) {
        *g = s.g;
    }
    let gs = &gs[..stages.len()];
    let (first, last) = (&gs[0], &gs[gs.len() - 1]);
    debug_assert_eq!(x.len(), first.input_len());
    debug_assert_eq!(y.len(), last.output_len());
    debug_assert!(!residual || x.len() == y.len());
    let lanes = lanes.clamp(1, MAX_LANES);
    let per_lane = lane_len(gs, rows);
    debug_assert!(ws.len() >= lanes * per_lane);
    let oh = last.out_h();
    let per_image = oh.div_ceil(rows);
    let units = first.n * per_image;
    let mut scratch: [&mut [f32]; MAX_LANES] = Default::default();
    for (s, chunk) in scratch
        .iter_mut()
        .zip(ws.chunks_exact_mut(per_lane))
        .take(lanes)
    {
        *s = chunk;
    }
    let out = OutPtr(y.as_mut_ptr());
    let share = units.div_ceil(lanes);
    let layout = band_rows(gs, rows);
    threads::for_each_mut(&mut scratch[..lanes], |lane, ws| {
        let mut held = None;
        for u in lane * share..((lane + 1) * share).min(units) {
            let (image, band) = (u / per_image, u % per_image);
            // The previous band's windows, when the scratch holds that band of this image.
            let prev = held.take().filter(|_| band > 0);
            let band = band * rows..((band + 1) * rows).min(oh);
            let b = Band {
                image,
                rows: band,
                layout: &layout,
                prev,
            };
            // SAFETY: each unit stores only its own rows of its own image.
            held = Some(unsafe { run_band(stages, gs, residual, &b, x, &out, ws) });
        }
    });
}

/// `y`'s base pointer, shared by the lanes: each writes rows no other lane writes.
struct OutPtr(*mut f32);
// SAFETY: see `forward`: the lanes' writes are disjoint.
unsafe impl Sync for OutPtr {}

/// One unit of a lane's work: output rows `rows` of image `image`; `layout` is each stage's
/// rows in the lane's scratch, the same for every band so that one band's rows are where
/// the next band looks for them; `prev`, the windows of the band before, of the same image,
/// when the scratch still holds them.
struct Band<'a> {
    image: usize,
    rows: Range<usize>,
    layout: &'a [usize; MAX_STAGES],
    prev: Option<[Range<usize>; MAX_STAGES]>,
}

/// Every stage of the chain on `band`, the last stage's result stored into `y` (plus `x`
/// when `residual`); returns each stage's window, which the scratch then holds.
///
/// With `band.prev`, a 1×1 stage before a k×k one computes the rows its window shares with
/// that band's (the seam) only once: they are moved to the start of each channel, and the
/// product runs over the rows after them. The product computes each column on its own, so
/// the rows kept hold what computing them again would give.
///
/// # Safety
/// `y` must point at the chain's whole output, and no other thread may touch rows
/// `band.rows` of image `band.image` while this runs.
unsafe fn run_band(
    stages: &[Stage],
    gs: &[Conv2dGeom],
    residual: bool,
    band: &Band,
    x: &[f32],
    y: &OutPtr,
    ws: &mut [f32],
) -> [Range<usize>; MAX_STAGES] {
    let windows = windows(gs, band.rows.clone());
    let x = &x[band.image * gs[0].c_in * gs[0].h * gs[0].w..][..gs[0].c_in * gs[0].h * gs[0].w];
    // Scratch: each stage's output band, then the input copy and the im2col matrix.
    let mut outs: [&mut [f32]; MAX_STAGES] = Default::default();
    let mut rest = ws;
    for (s, g) in gs.iter().enumerate() {
        let (o, tail) = rest.split_at_mut(g.c_out * band.layout[s] * g.out_w());
        outs[s] = o;
        rest = tail;
    }
    for (s, stage) in stages.iter().enumerate() {
        let (rows_in, bg) = band_geom(&stage.g, &windows[s]);
        let (done, todo) = outs.split_at_mut(s);
        let ow = bg.out_w();
        let cols = windows[s].len() * ow;
        if pointwise(&bg) {
            let kept = band
                .prev
                .as_ref()
                .map_or(0, |p| keep_seam(todo[0], bg.c_out, &p[s], &windows[s], ow));
            let out = &mut todo[0][..bg.c_out * cols];
            let (new, at) = (cols - kept * ow, kept * ow);
            // The input rows of every channel lie at one stride: read them in place.
            let (src, stride) = match done.last() {
                Some(prev) => (&prev[at..], cols),
                None => (&x[rows_in.start * bg.w + at..], gs[0].h * gs[0].w),
            };
            let (m, k) = (bg.c_out, bg.c_in);
            match stage.w {
                _ if new == 0 => {}
                Weights::F32(w) => {
                    sgemm_with(
                        m,
                        new,
                        k,
                        1.0,
                        w,
                        (k, 1),
                        src,
                        (stride, 1),
                        0.0,
                        &mut out[at..],
                        (cols, 1),
                        Epilogue::rows(stage.bias, stage.clip),
                    );
                }
                Weights::Int8(w) => {
                    let epi = qgemm::Epilogue {
                        bias: stage.bias,
                        clip: stage.clip,
                    };
                    let (xp, yp) = (Planes::single(new, stride), Planes::single(new, cols));
                    qgemm::qgemm(&w, src, xp, &mut out[at..], yp, epi, 1);
                }
            }
        } else {
            let out = &mut todo[0][..bg.c_out * cols];
            let Weights::F32(w) = stage.w else {
                unreachable!("int8 stages are 1×1 (checked with the plan)")
            };
            let copied = if s == 0 { bg.input_len() } else { 0 };
            let (copy, im2col) = rest.split_at_mut(copied);
            let src: &[f32] = match done.last() {
                Some(prev) => &prev[..bg.input_len()],
                None => {
                    let (hw, band) = (bg.h * bg.w, rows_in.start * bg.w);
                    for (c, dst) in copy.chunks_exact_mut(hw).enumerate() {
                        dst.copy_from_slice(&x[c * gs[0].h * gs[0].w + band..][..hw]);
                    }
                    copy
                }
            };
            match stage.clip {
                Some(clip) => conv::forward_clipped(&bg, src, w, stage.bias, clip, out, im2col),
                None => conv::forward(&bg, src, w, stage.bias, out, im2col),
            }
        }
    }
    let last = &gs[gs.len() - 1];
    let (oh, ow) = (last.out_h(), last.out_w());
    let (image, band) = (band.image, &band.rows);
    let cols = band.len() * ow;
    let out = &outs[gs.len() - 1][..last.c_out * cols];
    for (c, src) in out.chunks_exact(cols).enumerate() {
        let at = (image * last.c_out + c) * oh * ow + band.start * ow;
        // SAFETY: `at..at + cols` is rows `band` of channel `c` of this image, inside `y`
        // and this unit's alone (the function's contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(y.0.add(at), cols) };
        if residual {
            let r = &x[c * oh * ow + band.start * ow..][..cols];
            for ((d, s), r) in dst.iter_mut().zip(src).zip(r) {
                *d = s + r;
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
    windows
}

/// Moves the rows that window `now` of a stage shares with its window `before` in the band
/// before, which `out` holds (`channels` planes of `before.len()` rows of `ow`), to the
/// start of `now`'s planes; returns how many rows it moved.
fn keep_seam(
    out: &mut [f32],
    channels: usize,
    before: &Range<usize>,
    now: &Range<usize>,
    ow: usize,
) -> usize {
    if !before.contains(&now.start) {
        return 0;
    }
    let kept = before.end.min(now.end) - now.start;
    let (old, new) = (before.len() * ow, now.len() * ow);
    let (from, len) = ((now.start - before.start) * ow, kept * ow);
    let mut move_plane = |c: usize| out.copy_within(c * old + from..c * old + from + len, c * new);
    // Planes move down when they grow shorter, up when they grow longer; taken in that
    // order, each plane moves before another lands on it (`from + len` ≤ `old`).
    if new <= old {
        (0..channels).for_each(&mut move_plane);
    } else {
        (0..channels).rev().for_each(&mut move_plane);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::Lcg;

    use crate::kernels::testutil::square_conv as geom;

    /// The next stage's geometry: reads `g`'s output.
    fn then(g: &Conv2dGeom, c_out: usize, k: usize, s: usize, depthwise: bool) -> Conv2dGeom {
        let groups = if depthwise { g.c_out } else { 1 };
        geom(g.n, g.c_out, g.out_h(), g.out_w(), c_out, k, s, groups)
    }

    /// The chain through `bands` of `rows` on `lanes`, against its stages one after the
    /// other over whole maps (`conv`'s own paths), then the residual.
    fn check(
        gs: &[Conv2dGeom],
        clips: &[Option<(f32, f32)>],
        residual: bool,
        rows: usize,
        lanes: usize,
    ) {
        check_with(gs, clips, residual, rows, lanes, false)
    }

    /// [`check`], the 1×1 stages int8 when `int8` (and so in the stages one after the
    /// other: a pixel's quantization is the same in a band as over the whole map).
    fn check_with(
        gs: &[Conv2dGeom],
        clips: &[Option<(f32, f32)>],
        residual: bool,
        rows: usize,
        lanes: usize,
        int8: bool,
    ) {
        let mut rng = Lcg::new(gs.len() as u64 * 31 + rows as u64);
        let ws_: Vec<Vec<f32>> = gs.iter().map(|g| rng.vec(g.weight_len())).collect();
        let bs: Vec<Vec<f32>> = gs.iter().map(|g| rng.vec(g.c_out)).collect();
        let x = rng.vec(gs[0].input_len());
        let quantized: Vec<_> = gs
            .iter()
            .zip(&ws_)
            .map(|(g, w)| qgemm::quantize_rows(w, g.c_out, g.col_rows()))
            .collect();
        let stages: Vec<Stage> = gs
            .iter()
            .enumerate()
            .map(|(i, g)| Stage {
                g: *g,
                w: if int8 && g.is_pointwise() {
                    let (q, scale, sum) = &quantized[i];
                    Weights::Int8(QWeights {
                        q,
                        scale,
                        sum,
                        rows: g.c_out,
                        k: g.col_rows(),
                    })
                } else {
                    Weights::F32(&ws_[i])
                },
                bias: (i != 1).then_some(&bs[i][..]),
                clip: clips[i],
            })
            .collect();
        let mut want = x.clone();
        for s in &stages {
            let mut out = vec![0.0; s.g.output_len()];
            let mut ws = vec![0.0; conv::workspace_len(&s.g)];
            match (s.w, s.clip) {
                (Weights::Int8(w), clip) => {
                    crate::kernels::qconv::forward(&s.g, &want, &w, s.bias, clip, &mut out, &mut ws)
                }
                (Weights::F32(w), Some(c)) => {
                    conv::forward_clipped(&s.g, &want, w, s.bias, c, &mut out, &mut ws)
                }
                (Weights::F32(w), None) => conv::forward(&s.g, &want, w, s.bias, &mut out, &mut ws),
            }
            want = out;
        }
        if residual {
            want.iter_mut().zip(&x).for_each(|(w, x)| *w += x);
        }
        let mut got = vec![f32::NAN; want.len()];
        let mut ws = vec![f32::NAN; workspace_len(gs, rows, lanes)];
        forward(&stages, residual, rows, lanes, &x, &mut got, &mut ws);
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * scale,
                "rows {rows}, lanes {lanes}: [{i}] got {g}, want {w}"
            );
        }
    }

    const RELU6: Option<(f32, f32)> = Some((0.0, 6.0));

    #[test]
    fn a_residual_block_in_bands_computes_its_stages() {
        let expand = geom(2, 8, 13, 11, 24, 1, 1, 1);
        let dw = then(&expand, 24, 3, 1, true);
        let project = then(&dw, 8, 1, 1, false);
        let gs = [expand, dw, project];
        // One row, ragged last bands, whole images; one lane, more lanes than bands.
        for (rows, lanes) in [(1, 2), (3, 2), (5, 3), (13, 1), (13, 4)] {
            check(&gs, &[RELU6, RELU6, None], true, rows, lanes);
        }
        // Decomposed: the expand as two thin 1×1 convs, both before the depthwise.
        let thin = geom(2, 8, 13, 11, 4, 1, 1, 1);
        let expand = then(&thin, 24, 1, 1, false);
        for (rows, lanes) in [(1, 2), (4, 1)] {
            check(
                &[thin, expand, dw, project],
                &[None, RELU6, RELU6, None],
                true,
                rows,
                lanes,
            );
        }
    }

    #[test]
    fn int8_stages_in_bands_compute_what_they_compute_whole() {
        let expand = geom(2, 8, 13, 11, 24, 1, 1, 1);
        let dw = then(&expand, 24, 3, 2, true);
        let project = then(&dw, 12, 1, 1, false);
        for (rows, lanes) in [(1, 2), (4, 3), (7, 1)] {
            check_with(
                &[expand, dw, project],
                &[RELU6, RELU6, None],
                false,
                rows,
                lanes,
                true,
            );
        }
    }

    #[test]
    fn strided_and_stem_chains_in_bands_compute_their_stages() {
        // Expand, depthwise stride 2 over an odd height (the last window runs into the pad).
        let expand = geom(1, 6, 15, 9, 18, 1, 1, 1);
        let dw = then(&expand, 18, 3, 2, true);
        let project = then(&dw, 5, 1, 1, false);
        for rows in [1, 2, 3, 8] {
            check(
                &[expand, dw, project],
                &[RELU6, RELU6, None],
                false,
                rows,
                2,
            );
        }
        // A stem over RGB (stride 2), a depthwise 5×5, a project: two k×k stages.
        let stem = geom(2, 3, 20, 18, 8, 3, 2, 1);
        let dw5 = then(&stem, 8, 5, 1, true);
        let project = then(&dw5, 4, 1, 1, false);
        for rows in [1, 4, 10] {
            check(
                &[stem, dw5, project],
                &[RELU6, RELU6, Some((0.0, f32::INFINITY))],
                false,
                rows,
                3,
            );
        }
    }

    #[test]
    fn bands_fit_the_budget_share_out_and_decline_small_or_costly_chains() {
        // MobileNetV2's second block at 224²: 96 channels of 112² between the stages.
        let expand = geom(1, 16, 112, 112, 96, 1, 1, 1);
        let dw = then(&expand, 96, 3, 2, true);
        let project = then(&dw, 24, 1, 1, false);
        let gs = [expand, dw, project];
        let rows = bands(&gs, 2).expect("a wide chain is fused");
        assert!(lane_len(&gs, rows) * 4 <= LANE_BYTES, "{rows} rows");
        assert!(lane_len(&gs, rows + 1) * 4 > LANE_BYTES, "{rows} rows");
        assert!(seam_work(&gs, rows) <= MAX_SEAM_WORK);
        // One image, many lanes: at least a band per lane.
        let rows = bands(&gs, 8).unwrap();
        assert!(56usize.div_ceil(rows) >= 8);
        // 7×7 maps: already in cache.
        let small = [
            geom(8, 160, 7, 7, 960, 1, 1, 1),
            geom(8, 960, 7, 7, 960, 3, 1, 960),
        ];
        assert_eq!(bands(&small, 2), None);
        // 3 rows a band of a stride-1 3×3 chain: two of every three rows again.
        let wide = geom(1, 64, 24, 200, 512, 1, 1, 1);
        let gs = [wide, then(&wide, 512, 3, 1, true)];
        assert_eq!(bands(&gs, 1), None);
    }

    /// MobileNetV2's blocks at 224², one image: the stages one after the other (as the
    /// prefix ran them unfused) against the chain in bands. `cargo test --release -p
    /// actc-runtime chain::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run in release with --ignored --nocapture"]
    fn bench() {
        use std::time::{Duration, Instant};
        let block = |n, c_in, hw, mid, s, c_out| {
            let expand = geom(n, c_in, hw, hw, mid, 1, 1, 1);
            let dw = then(&expand, mid, 3, s, true);
            vec![expand, dw, then(&dw, c_out, 1, 1, false)]
        };
        let stem = geom(1, 3, 224, 224, 32, 3, 2, 1);
        let stem_dw = then(&stem, 32, 3, 1, true);
        let chains = [
            (
                "stem 224",
                vec![stem, stem_dw, then(&stem_dw, 16, 1, 1, false)],
            ),
            ("16>96 112 s2", block(1, 16, 112, 96, 2, 24)),
            ("24>144 56 s1", block(1, 24, 56, 144, 1, 24)),
            ("24>144 56 s2", block(1, 24, 56, 144, 2, 32)),
            ("32>192 28 s1", block(1, 32, 28, 192, 1, 32)),
            ("96>576 14 s1", block(1, 96, 14, 576, 1, 96)),
        ];
        let mut rng = Lcg::new(3);
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::INFINITY;
            for _ in 0..10 {
                f();
                let (start, mut calls) = (Instant::now(), 0u32);
                while start.elapsed() < Duration::from_millis(20) {
                    f();
                    calls += 1;
                }
                best = best.min(start.elapsed().as_secs_f64() * 1e3 / calls as f64);
            }
            best
        };
        println!(
            "{:<14} {:>5} {:>9} {:>9} {:>9} {:>9}",
            "chain", "rows", "stages 1", "chain 1", "stages 2", "chain 2"
        );
        for (label, gs) in chains {
            let ws_: Vec<Vec<f32>> = gs.iter().map(|g| rng.vec(g.weight_len())).collect();
            let bs: Vec<Vec<f32>> = gs.iter().map(|g| rng.vec(g.c_out)).collect();
            let stages: Vec<Stage> = (0..gs.len())
                .map(|i| Stage {
                    g: gs[i],
                    w: Weights::F32(&ws_[i]),
                    bias: Some(&bs[i]),
                    clip: (i + 1 < gs.len()).then_some((0.0, 6.0)),
                })
                .collect();
            let x = rng.vec(gs[0].input_len());
            let mut maps: Vec<Vec<f32>> = gs.iter().map(|g| vec![0.0; g.output_len()]).collect();
            let mut conv_ws = vec![0.0; gs.iter().map(conv::workspace_len).max().unwrap()];
            let mut row = [0.0; 4];
            let mut rows = 0;
            for lanes in [1, 2] {
                crate::threads::set_threads(lanes);
                row[2 * (lanes - 1)] = time(&mut || {
                    for (i, s) in stages.iter().enumerate() {
                        let (done, todo) = maps.split_at_mut(i);
                        let src = done.last().map_or(&x[..], |m| &m[..]);
                        let w = &ws_[i];
                        match s.clip {
                            Some(c) => conv::forward_clipped(
                                &s.g,
                                src,
                                w,
                                s.bias,
                                c,
                                &mut todo[0],
                                &mut conv_ws,
                            ),
                            None => conv::forward(&s.g, src, w, s.bias, &mut todo[0], &mut conv_ws),
                        }
                    }
                });
                rows = bands(&gs, lanes).unwrap_or(gs[gs.len() - 1].out_h());
                let mut ws = vec![0.0; workspace_len(&gs, rows, lanes)];
                let mut y = vec![0.0; gs[gs.len() - 1].output_len()];
                row[2 * (lanes - 1) + 1] =
                    time(&mut || forward(&stages, false, rows, lanes, &x, &mut y, &mut ws));
            }
            println!(
                "{label:<14} {rows:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                row[0], row[1], row[2], row[3]
            );
        }
    }
}
