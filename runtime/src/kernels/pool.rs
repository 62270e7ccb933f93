//! 2-D pooling, NCHW: MaxPool (with arg-max indices for its backward), AveragePool
//! (`count_include_pad`) and GlobalAveragePool, forward and backward.

use std::ops::Range;

use super::window::{out_len, valid_range};

/// Geometry of MaxPool / AveragePool. Every output window must hold at least one input
/// element when `count_include_pad` is off or for max pooling; ONNX exporters guarantee this
/// (padding smaller than the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// top, left, bottom, right
    pub pad: [usize; 4],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
}

impl Pool2dGeom {
    pub fn out_h(&self) -> usize {
        out_len(
            self.h,
            self.kh,
            self.stride[0],
            self.pad[0],
            self.pad[2],
            self.dilation[0],
            self.ceil_mode,
        )
    }

    pub fn out_w(&self) -> usize {
        out_len(
            self.w,
            self.kw,
            self.stride[1],
            self.pad[1],
            self.pad[3],
            self.dilation[1],
            self.ceil_mode,
        )
    }

    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    pub fn output_len(&self) -> usize {
        self.n * self.c * self.out_h() * self.out_w()
    }

    /// The kernel taps of output row `oy` that land inside the input.
    fn taps_y(&self, oy: usize) -> (Range<usize>, isize) {
        let start = (oy * self.stride[0]) as isize - self.pad[0] as isize;
        (valid_range(self.kh, self.h, self.dilation[0], start), start)
    }

    fn taps_x(&self, ox: usize) -> (Range<usize>, isize) {
        let start = (ox * self.stride[1]) as isize - self.pad[1] as isize;
        (valid_range(self.kw, self.w, self.dilation[1], start), start)
    }
}

/// Where a window's maximum came from, as MaxPool's backward reads it: the tap
/// `ky·kw + kx`. One byte per output when the window has fewer than 255 taps (every max pool
/// of the bundled models: 3×3), else four. The largest value marks a window with no input
/// element.
pub trait Tap: Copy + PartialEq {
    const NONE: Self;
    fn new(tap: usize) -> Self;
    fn get(self) -> usize;
}

impl Tap for u8 {
    const NONE: u8 = u8::MAX;
    fn new(tap: usize) -> u8 {
        tap as u8
    }
    fn get(self) -> usize {
        self as usize
    }
}

impl Tap for u32 {
    const NONE: u32 = u32::MAX;
    fn new(tap: usize) -> u32 {
        tap as u32
    }
    fn get(self) -> usize {
        self as usize
    }
}

/// Whether a window of `taps` taps keeps its maxima's taps in bytes.
pub fn byte_taps(taps: usize) -> bool {
    taps < u8::MAX as usize
}

/// Max pooling. `taps`, when given (training: the backward reads them), receives per output
/// the tap of the winning element (ties: the first in row-major order, as PyTorch; NaN wins,
/// so it propagates). A window with no input element gives 0 with tap `T::NONE`, which the
/// backward skips.
pub fn max_forward<T: Tap>(g: &Pool2dGeom, x: &[f32], y: &mut [f32], mut taps: Option<&mut [T]>) {
    debug_assert_eq!(x.len(), g.input_len());
    debug_assert_eq!(y.len(), g.output_len());
    debug_assert!(taps.as_ref().is_none_or(|t| t.len() == g.output_len()));
    debug_assert!(g.kh * g.kw < T::NONE.get());
    let (hw, ow, p) = (g.h * g.w, g.out_w(), g.out_h() * g.out_w());
    if p == 0 {
        return;
    }
    for (plane, (xp, yp)) in x.chunks_exact(hw).zip(y.chunks_exact_mut(p)).enumerate() {
        let mut tp = taps.as_deref_mut().map(|t| &mut t[plane * p..][..p]);
        for (o, yv) in yp.iter_mut().enumerate() {
            let (kys, y0) = g.taps_y(o / ow);
            let (kxs, x0) = g.taps_x(o % ow);
            let (mut best, mut arg) = (0.0, T::NONE);
            for ky in kys {
                let row = (y0 + (ky * g.dilation[0]) as isize) as usize * g.w;
                for kx in kxs.clone() {
                    let v = xp[row + (x0 + (kx * g.dilation[1]) as isize) as usize];
                    if arg == T::NONE || v > best || v.is_nan() && !best.is_nan() {
                        (best, arg) = (v, T::new(ky * g.kw + kx));
                    }
                }
            }
            *yv = best;
            if let Some(tp) = tp.as_deref_mut() {
                tp[o] = arg;
            }
        }
    }
}

/// dx of max pooling: each dy goes to the element its window picked.
pub fn max_backward<T: Tap>(g: &Pool2dGeom, taps: &[T], dy: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(taps.len(), g.output_len());
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(dx.len(), g.input_len());
    let (hw, ow, p) = (g.h * g.w, g.out_w(), g.out_h() * g.out_w());
    dx.fill(0.0);
    if p == 0 {
        return;
    }
    for ((dxp, dyp), tp) in dx
        .chunks_exact_mut(hw)
        .zip(dy.chunks_exact(p))
        .zip(taps.chunks_exact(p))
    {
        for (o, (&t, &d)) in tp.iter().zip(dyp).enumerate() {
            // Taps come from the forward; bytes that are not taps (a plan whose buffers
            // overlap them) may name any tap, which is skipped unless inside the input.
            if t == T::NONE || t.get() >= g.kh * g.kw {
                continue;
            }
            let (ky, kx) = (t.get() / g.kw, t.get() % g.kw);
            let iy = g.taps_y(o / ow).1 + (ky * g.dilation[0]) as isize;
            let ix = g.taps_x(o % ow).1 + (kx * g.dilation[1]) as isize;
            if (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix) {
                dxp[iy as usize * g.w + ix as usize] += d;
            }
        }
    }
}

/// How many taps the window of output `o` averages over along one axis. With
/// `count_include_pad` the taps in the padding count, but not those past it (a ceil-mode
/// window can overhang the end padding), as PyTorch does.
fn axis_divisor(
    valid: &Range<usize>,
    start: isize,
    kernel: usize,
    dilation: usize,
    len: usize,
    pads: (usize, usize),
    include_pad: bool,
) -> usize {
    if include_pad {
        valid_range(
            kernel,
            len + pads.0 + pads.1,
            dilation,
            start + pads.0 as isize,
        )
        .len()
    } else {
        valid.len()
    }
}

/// Calls `f(o, kys, y0, kxs, x0, 1/divisor)` for each output position of one plane.
fn for_each_avg_window(
    g: &Pool2dGeom,
    count_include_pad: bool,
    mut f: impl FnMut(usize, Range<usize>, isize, Range<usize>, isize, f32),
) {
    let (oh, ow) = (g.out_h(), g.out_w());
    for oy in 0..oh {
        let (kys, y0) = g.taps_y(oy);
        let dy = axis_divisor(
            &kys,
            y0,
            g.kh,
            g.dilation[0],
            g.h,
            (g.pad[0], g.pad[2]),
            count_include_pad,
        );
        for ox in 0..ow {
            let (kxs, x0) = g.taps_x(ox);
            let dx = axis_divisor(
                &kxs,
                x0,
                g.kw,
                g.dilation[1],
                g.w,
                (g.pad[1], g.pad[3]),
                count_include_pad,
            );
            let div = dy * dx;
            let scale = if div == 0 { 0.0 } else { 1.0 / div as f32 };
            f(oy * ow + ox, kys.clone(), y0, kxs, x0, scale);
        }
    }
}

/// Average pooling.
pub fn avg_forward(g: &Pool2dGeom, count_include_pad: bool, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), g.input_len());
    debug_assert_eq!(y.len(), g.output_len());
    let (hw, p) = (g.h * g.w, g.out_h() * g.out_w());
    if p == 0 {
        return;
    }
    for (xp, yp) in x.chunks_exact(hw).zip(y.chunks_exact_mut(p)) {
        for_each_avg_window(g, count_include_pad, |o, kys, y0, kxs, x0, scale| {
            let mut s = 0.0;
            for ky in kys {
                let row = (y0 + (ky * g.dilation[0]) as isize) as usize * g.w;
                for kx in kxs.clone() {
                    s += xp[row + (x0 + (kx * g.dilation[1]) as isize) as usize];
                }
            }
            yp[o] = s * scale;
        });
    }
}

/// dx of average pooling: each dy spread evenly over its window.
pub fn avg_backward(g: &Pool2dGeom, count_include_pad: bool, dy: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(dx.len(), g.input_len());
    let (hw, p) = (g.h * g.w, g.out_h() * g.out_w());
    dx.fill(0.0);
    if p == 0 {
        return;
    }
    for (dxp, dyp) in dx.chunks_exact_mut(hw).zip(dy.chunks_exact(p)) {
        for_each_avg_window(g, count_include_pad, |o, kys, y0, kxs, x0, scale| {
            let d = dyp[o] * scale;
            for ky in kys {
                let row = (y0 + (ky * g.dilation[0]) as isize) as usize * g.w;
                for kx in kxs.clone() {
                    dxp[row + (x0 + (kx * g.dilation[1]) as isize) as usize] += d;
                }
            }
        });
    }
}

/// GlobalAveragePool: `y` holds one mean per plane of `plane` elements.
pub fn global_avg_forward(plane: usize, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len() * plane);
    if plane == 0 {
        return;
    }
    if plane == 1 {
        // A 1×1 map (MobileNetV2 at 32²): the average is the value.
        return y.copy_from_slice(x);
    }
    let scale = 1.0 / plane as f32;
    for (xp, yv) in x.chunks_exact(plane).zip(y.iter_mut()) {
        *yv = super::sum8(plane, |i| xp[i]) * scale;
    }
}

pub fn global_avg_backward(plane: usize, dy: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(dx.len(), dy.len() * plane);
    if plane == 0 {
        return;
    }
    if plane == 1 {
        return dx.copy_from_slice(dy);
    }
    let scale = 1.0 / plane as f32;
    for (dxp, d) in dx.chunks_exact_mut(plane).zip(dy) {
        dxp.fill(d * scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{FD_EPS, Lcg, assert_close, check_grad, weighted_sum};

    /// (max, average) of every window, indices spelled out; the average's divisor counts
    /// taps inside the padded extent (include_pad) or inside the input.
    fn reference(g: &Pool2dGeom, x: &[f32], include_pad: bool) -> (Vec<f64>, Vec<f64>) {
        let (oh, ow) = (g.out_h(), g.out_w());
        let (mut mx, mut avg) = (vec![], vec![]);
        for plane in 0..g.n * g.c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut m, mut s, mut count) = (f64::NEG_INFINITY, 0.0, 0);
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.pad[0] as isize;
                            let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                - g.pad[1] as isize;
                            let inside = |i: isize, len: usize| i >= 0 && i < len as isize;
                            let in_padded = |i: isize, len: usize, b: usize, e: usize| {
                                i >= -(b as isize) && i < (len + e) as isize
                            };
                            if inside(iy, g.h) && inside(ix, g.w) {
                                let v = x[(plane * g.h + iy as usize) * g.w + ix as usize] as f64;
                                m = m.max(v);
                                s += v;
                            }
                            let counted = if include_pad {
                                in_padded(iy, g.h, g.pad[0], g.pad[2])
                                    && in_padded(ix, g.w, g.pad[1], g.pad[3])
                            } else {
                                inside(iy, g.h) && inside(ix, g.w)
                            };
                            count += counted as usize;
                        }
                    }
                    mx.push(m);
                    avg.push(s / count as f64);
                }
            }
        }
        (mx, avg)
    }

    fn cases() -> Vec<Pool2dGeom> {
        let g = |h, w, k: [usize; 2], s, pad, d, ceil_mode| Pool2dGeom {
            n: 2,
            c: 3,
            h,
            w,
            kh: k[0],
            kw: k[1],
            stride: [s, s],
            pad,
            dilation: [d, d],
            ceil_mode,
        };
        vec![
            g(6, 6, [2, 2], 2, [0; 4], 1, false),
            g(7, 5, [3, 3], 2, [1, 1, 1, 1], 1, false),
            g(7, 8, [3, 2], 1, [1, 0, 0, 1], 1, false),
            g(9, 9, [3, 3], 2, [1, 1, 1, 1], 2, false),
            g(7, 6, [3, 3], 2, [0, 1, 1, 0], 1, true),
            g(5, 7, [2, 3], 3, [1, 1, 0, 1], 1, true),
        ]
    }

    #[test]
    fn forward_matches_reference() {
        let mut rng = Lcg::new(30);
        for g in cases() {
            let x = rng.vec(g.input_len());
            for include_pad in [false, true] {
                let (mx, avg) = reference(&g, &x, include_pad);
                let mut y = vec![f32::NAN; g.output_len()];
                let mut taps = vec![0u8; g.output_len()];
                max_forward(&g, &x, &mut y, Some(&mut taps));
                assert_close(&format!("max {g:?}"), &y, &mx, 0.0);
                let ow = g.out_w();
                for (o, &t) in taps.iter().enumerate() {
                    let (plane, oy, ox) = (o / (g.out_h() * ow), o / ow % g.out_h(), o % ow);
                    let (ky, kx) = (t as usize / g.kw, t as usize % g.kw);
                    let iy = oy * g.stride[0] + ky * g.dilation[0] - g.pad[0];
                    let ix = ox * g.stride[1] + kx * g.dilation[1] - g.pad[1];
                    assert_eq!(x[(plane * g.h + iy) * g.w + ix], y[o]);
                }
                // Four-byte taps are the same taps.
                let mut wide = vec![0u32; g.output_len()];
                max_forward(&g, &x, &mut y, Some(&mut wide));
                assert!(taps.iter().zip(&wide).all(|(&t, &w)| t as u32 == w));
                avg_forward(&g, include_pad, &x, &mut y);
                assert_close(&format!("avg pad={include_pad} {g:?}"), &y, &avg, 1e-6);
            }
        }
    }

    #[test]
    fn max_ties_pick_the_first_and_nan_propagates() {
        let g = Pool2dGeom {
            n: 1,
            c: 1,
            h: 2,
            w: 2,
            kh: 2,
            kw: 2,
            stride: [1, 1],
            pad: [0; 4],
            dilation: [1, 1],
            ceil_mode: false,
        };
        let (mut y, mut tap) = ([0.0], [0u8]);
        max_forward(&g, &[1.0, 3.0, 3.0, 2.0], &mut y, Some(&mut tap));
        assert_eq!((y[0], tap[0]), (3.0, 1));
        max_forward(&g, &[1.0, f32::NAN, 3.0, 2.0], &mut y, Some(&mut tap));
        assert!(y[0].is_nan() && tap[0] == 1);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Lcg::new(31);
        for g in cases() {
            // Values 5·eps apart: a finite-difference step never changes a window's winner.
            let x = rng.distinct(g.input_len(), 5.0 * FD_EPS);
            let r = rng.vec(g.output_len());
            let mut y = vec![0.0; g.output_len()];
            let mut taps = vec![0u8; g.output_len()];
            let mut dx = vec![f32::NAN; g.input_len()];
            max_forward(&g, &x, &mut y, Some(&mut taps));
            max_backward(&g, &taps, &r, &mut dx);
            check_grad(&format!("max {g:?}"), &x, &dx, |xp| {
                max_forward(&g, xp, &mut y, Some(&mut taps));
                weighted_sum(&y, &r)
            });
            let mut wide = vec![0u32; g.output_len()];
            let mut dx_wide = vec![f32::NAN; g.input_len()];
            max_forward(&g, &x, &mut y, Some(&mut wide));
            max_backward(&g, &wide, &r, &mut dx_wide);
            assert_eq!(dx, dx_wide, "{g:?}");
            // Average pooling has no kink: plain values, smaller than the spread ones above,
            // keep the f32 rounding of its outputs small.
            let x = rng.vec(g.input_len());
            for include_pad in [false, true] {
                avg_backward(&g, include_pad, &r, &mut dx);
                check_grad(&format!("avg pad={include_pad} {g:?}"), &x, &dx, |xp| {
                    avg_forward(&g, include_pad, xp, &mut y);
                    weighted_sum(&y, &r)
                });
            }
        }
    }

    #[test]
    fn global_average() {
        let mut rng = Lcg::new(32);
        let (planes, plane) = (6, 35);
        let x = rng.vec(planes * plane);
        let mut y = vec![0.0; planes];
        global_avg_forward(plane, &x, &mut y);
        let want: Vec<f64> = x
            .chunks(plane)
            .map(|p| p.iter().map(|v| *v as f64).sum::<f64>() / plane as f64)
            .collect();
        assert_close("global avg", &y, &want, 1e-6);
        let r = rng.vec(planes);
        let mut dx = vec![0.0; x.len()];
        global_avg_backward(plane, &r, &mut dx);
        check_grad("global avg", &x, &dx, |xp| {
            global_avg_forward(plane, xp, &mut y);
            weighted_sum(&y, &r)
        });
    }
}
