//! ONNX `Resize` over the last two axes of an NCHW tensor, nearest and (bi)linear, and its
//! adjoint, the input gradient.
//!
//! Along each axis, output index `i` reads input position `x = f(i)` (the coordinate
//! transform); nearest rounds it to one index, linear blends the two indices around it
//! (clamped to the axis, as ONNX Runtime and PyTorch do). An output value is therefore a
//! separable weighted sum of at most 2×2 inputs, and the backward adds each dy entry back to
//! those inputs with the same weights.
//!
//! Arithmetic in f32, in ONNX Runtime's order (`(i + 0.5) / scale − 0.5`, …), so that
//! indices land where onnxruntime's do. Planes (N·C of them) are independent and are shared
//! out among the threads.

use crate::ops::{self, NearestMode, ResizeCoordinates, ResizeMode};
use crate::threads;

/// One resized axis: its lengths, and the scale the coordinate transform divides by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResizeAxis {
    pub len_in: usize,
    pub len_out: usize,
    pub scale: f32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResizeGeom {
    /// N·C: planes resized independently.
    pub planes: usize,
    pub h: ResizeAxis,
    pub w: ResizeAxis,
    pub mode: ResizeMode,
    pub coordinates: ResizeCoordinates,
    pub nearest: NearestMode,
}

/// Where one output index reads: `(1 − t)·x[i0] + t·x[i1]` (nearest: `i0 == i1`, `t == 0`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    t: f32,
}

impl ResizeGeom {
    pub fn input_len(&self) -> usize {
        self.planes * self.h.len_in * self.w.len_in
    }

    pub fn output_len(&self) -> usize {
        self.planes * self.h.len_out * self.w.len_out
    }

    /// The input position output index `i` of axis `a` maps to.
    fn source(&self, a: &ResizeAxis, i: usize) -> f32 {
        let i = i as f32;
        match self.coordinates {
            ResizeCoordinates::HalfPixel => (i + 0.5) / a.scale - 0.5,
            ResizeCoordinates::PytorchHalfPixel if a.len_out > 1 => (i + 0.5) / a.scale - 0.5,
            ResizeCoordinates::AlignCorners if a.len_out > 1 => {
                i * (a.len_in - 1) as f32 / (a.len_out - 1) as f32
            }
            ResizeCoordinates::PytorchHalfPixel | ResizeCoordinates::AlignCorners => 0.0,
            ResizeCoordinates::Asymmetric => i / a.scale,
            ResizeCoordinates::TfHalfPixelForNn => (i + 0.5) / a.scale,
        }
    }

    fn tap(&self, a: &ResizeAxis, i: usize) -> Tap {
        let x = self.source(a, i);
        let last = a.len_in.saturating_sub(1);
        // `as usize` saturates: negatives (and NaN) become 0.
        match self.mode {
            ResizeMode::Nearest => {
                let r = match self.nearest {
                    NearestMode::RoundPreferFloor if x - x.floor() == 0.5 => x.floor(),
                    NearestMode::RoundPreferFloor | NearestMode::RoundPreferCeil => x.round(),
                    NearestMode::Floor => x.floor(),
                    NearestMode::Ceil => x.ceil(),
                };
                let j = (r as usize).min(last);
                Tap {
                    i0: j,
                    i1: j,
                    t: 0.0,
                }
            }
            ResizeMode::Linear => {
                let x = x.max(0.0).min(last as f32);
                let i0 = (x as usize).min(last);
                let i1 = (i0 + 1).min(last);
                Tap {
                    i0,
                    i1,
                    t: x - i0 as f32,
                }
            }
        }
    }
}

/// `y = resize(x)`.
pub fn forward(g: &ResizeGeom, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), g.input_len());
    debug_assert_eq!(y.len(), g.output_len());
    let (plane_in, plane_out) = (g.h.len_in * g.w.len_in, g.h.len_out * g.w.len_out);
    if plane_out == 0 {
        return;
    }
    let parts = threads::parts_for(y.len() * 8);
    threads::for_runs(y, g.planes, plane_out, 1, parts, |run, ys| {
        for (p, yp) in run.zip(ys.chunks_exact_mut(plane_out)) {
            plane_forward(g, &x[p * plane_in..][..plane_in], yp);
        }
    });
}

/// Width taps per pass over a plane's rows: computed once for the whole column block
/// (a division and a rounding each), on the stack.
const COLUMNS: usize = 64;

/// The taps of output columns `c0..c0 + taps.len()`.
fn column_taps(g: &ResizeGeom, c0: usize, taps: &mut [Tap]) {
    for (k, t) in taps.iter_mut().enumerate() {
        *t = g.tap(&g.w, c0 + k);
    }
}

const NO_TAP: Tap = Tap {
    i0: 0,
    i1: 0,
    t: 0.0,
};

fn plane_forward(g: &ResizeGeom, x: &[f32], y: &mut [f32]) {
    let (wi, wo) = (g.w.len_in, g.w.len_out);
    let mut buf = [NO_TAP; COLUMNS];
    for c0 in (0..wo).step_by(COLUMNS) {
        let taps = &mut buf[..(wo - c0).min(COLUMNS)];
        column_taps(g, c0, taps);
        for oy in 0..g.h.len_out {
            let ty = g.tap(&g.h, oy);
            let (r0, r1) = (&x[ty.i0 * wi..][..wi], &x[ty.i1 * wi..][..wi]);
            let row = &mut y[oy * wo + c0..][..taps.len()];
            match g.mode {
                ResizeMode::Nearest => {
                    for (v, tx) in row.iter_mut().zip(taps.iter()) {
                        *v = r0[tx.i0];
                    }
                }
                ResizeMode::Linear => {
                    let (h0, h1) = (1.0 - ty.t, ty.t);
                    for (v, tx) in row.iter_mut().zip(taps.iter()) {
                        let (w0, w1) = (1.0 - tx.t, tx.t);
                        *v = h0 * (w0 * r0[tx.i0] + w1 * r0[tx.i1])
                            + h1 * (w0 * r1[tx.i0] + w1 * r1[tx.i1]);
                    }
                }
            }
        }
    }
}

/// `dx = resizeᵀ(dy)`: zeros, then each dy entry added to the inputs it was read from,
/// times its weight there.
pub fn backward(g: &ResizeGeom, dy: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(dx.len(), g.input_len());
    dx.fill(0.0);
    let (plane_in, plane_out) = (g.h.len_in * g.w.len_in, g.h.len_out * g.w.len_out);
    if plane_in == 0 {
        return;
    }
    let parts = threads::parts_for(dy.len() * 8);
    threads::for_runs(dx, g.planes, plane_in, 1, parts, |run, dxs| {
        for (p, dxp) in run.zip(dxs.chunks_exact_mut(plane_in)) {
            plane_backward(g, &dy[p * plane_out..][..plane_out], dxp);
        }
    });
}

fn plane_backward(g: &ResizeGeom, dy: &[f32], dx: &mut [f32]) {
    let (wi, wo) = (g.w.len_in, g.w.len_out);
    let mut buf = [NO_TAP; COLUMNS];
    for c0 in (0..wo).step_by(COLUMNS) {
        let taps = &mut buf[..(wo - c0).min(COLUMNS)];
        column_taps(g, c0, taps);
        for oy in 0..g.h.len_out {
            let ty = g.tap(&g.h, oy);
            let (s0, s1) = (ty.i0 * wi, ty.i1 * wi);
            let row = &dy[oy * wo + c0..][..taps.len()];
            match g.mode {
                ResizeMode::Nearest => {
                    for (&d, tx) in row.iter().zip(taps.iter()) {
                        dx[s0 + tx.i0] += d;
                    }
                }
                ResizeMode::Linear => {
                    let (h0, h1) = (1.0 - ty.t, ty.t);
                    for (&d, tx) in row.iter().zip(taps.iter()) {
                        let (w0, w1) = (1.0 - tx.t, tx.t);
                        let (a, b) = (h0 * d, h1 * d);
                        dx[s0 + tx.i0] += w0 * a;
                        dx[s0 + tx.i1] += w1 * a;
                        dx[s1 + tx.i0] += w0 * b;
                        dx[s1 + tx.i1] += w1 * b;
                    }
                }
            }
        }
    }
}

/// The geometry of a resize step (or its backward) from `x` to `y`, where the kernels
/// can run it: both 4-D with the same N and C, non-empty, a mode, coordinate transform and
/// nearest mode they know, and two finite positive scales.
pub fn fit(r: &ops::Resize, x: &[u64], y: &[u64]) -> Result<ResizeGeom, String> {
    let bad = || format!("a resize from {x:?} to {y:?} with {r:?}");
    let (&[n, c, hi, wi], &[n2, c2, ho, wo]) = (x, y) else {
        return Err(bad());
    };
    let scale_ok = |s: f32| s.is_finite() && s > 0.0;
    let &[sh, sw] = &r.scales[..] else {
        return Err(bad());
    };
    let modes = (
        ops::ResizeMode::try_from(r.mode),
        ops::ResizeCoordinates::try_from(r.coordinates),
        ops::NearestMode::try_from(r.nearest),
    );
    let (Ok(mode), Ok(coordinates), Ok(nearest)) = modes else {
        return Err(bad());
    };
    let sizes = [n, c, hi, wi, ho, wo].map(|d| usize::try_from(d).ok());
    let planes = sizes[0].zip(sizes[1]).and_then(|(n, c)| n.checked_mul(c));
    let fits = n == n2
        && c == c2
        && [hi, wi, ho, wo].iter().all(|&d| d > 0)
        && scale_ok(sh)
        && scale_ok(sw)
        && sizes.iter().all(Option::is_some)
        && planes.is_some();
    if !fits {
        return Err(bad());
    }
    let axis = |len_in: u64, len_out: u64, scale: f32| ResizeAxis {
        len_in: len_in as usize,
        len_out: len_out as usize,
        scale,
    };
    Ok(ResizeGeom {
        planes: planes.unwrap_or(0),
        h: axis(hi, ho, sh),
        w: axis(wi, wo, sw),
        mode,
        coordinates,
        nearest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{Lcg, assert_close, check_grad, weighted_sum};

    fn geom(
        planes: usize,
        (hi, wi): (usize, usize),
        (ho, wo): (usize, usize),
        scales: Option<[f32; 2]>,
        mode: ResizeMode,
        coordinates: ResizeCoordinates,
        nearest: NearestMode,
    ) -> ResizeGeom {
        let [sh, sw] = scales.unwrap_or([ho as f32 / hi as f32, wo as f32 / wi as f32]);
        ResizeGeom {
            planes,
            h: ResizeAxis {
                len_in: hi,
                len_out: ho,
                scale: sh,
            },
            w: ResizeAxis {
                len_in: wi,
                len_out: wo,
                scale: sw,
            },
            mode,
            coordinates,
            nearest,
        }
    }

    /// The ONNX definition, spelled out in f64 per output element (the coordinate still
    /// computed in f32, as the operator's reference implementations do).
    fn reference(g: &ResizeGeom, x: &[f32]) -> Vec<f64> {
        let idx = |a: &ResizeAxis, i: usize| -> Vec<(usize, f64)> {
            let tap = g.tap(a, i);
            if tap.i0 == tap.i1 {
                vec![(tap.i0, 1.0)]
            } else {
                vec![(tap.i0, 1.0 - tap.t as f64), (tap.i1, tap.t as f64)]
            }
        };
        let mut y = Vec::with_capacity(g.output_len());
        for p in 0..g.planes {
            for oy in 0..g.h.len_out {
                for ox in 0..g.w.len_out {
                    let mut s = 0.0;
                    for (iy, wy) in idx(&g.h, oy) {
                        for &(ix, wx) in &idx(&g.w, ox) {
                            let v = x[(p * g.h.len_in + iy) * g.w.len_in + ix] as f64;
                            s += wy * wx * v;
                        }
                    }
                    y.push(s);
                }
            }
        }
        y
    }

    use NearestMode as N;
    use ResizeCoordinates as C;
    use ResizeMode as M;

    /// The ONNX operator's own examples (onnx/docs/Operators.md, Resize).
    #[test]
    fn onnx_examples() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let run = |g: ResizeGeom| {
            let mut y = vec![f32::NAN; g.output_len()];
            forward(&g, &x, &mut y);
            y
        };
        // resize_upsample_scales_nearest: scales (2, 3)
        let g = geom(
            1,
            (2, 2),
            (4, 6),
            None,
            M::Nearest,
            C::HalfPixel,
            N::RoundPreferFloor,
        );
        let want = [
            1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 3., 3., 3., 4.,
            4., 4.,
        ];
        assert_eq!(run(g), want);
        // resize_upsample_scales_linear: half_pixel, scales (2, 2)
        let g = geom(
            1,
            (2, 2),
            (4, 4),
            None,
            M::Linear,
            C::HalfPixel,
            N::RoundPreferFloor,
        );
        let want = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(run(g), want);
        // resize_upsample_scales_linear_align_corners
        let g = geom(
            1,
            (2, 2),
            (4, 4),
            None,
            M::Linear,
            C::AlignCorners,
            N::RoundPreferFloor,
        );
        let t = 1.0 / 3.0;
        let want: Vec<f64> = [
            1.0,
            1.0 + t,
            1.0 + 2.0 * t,
            2.0,
            1.0 + 2.0 * t,
            2.0,
            2.0 + t,
            2.0 + 2.0 * t,
            2.0 + t,
            2.0 + 2.0 * t,
            3.0,
            3.0 + t,
            3.0,
            3.0 + t,
            3.0 + 2.0 * t,
            4.0,
        ]
        .to_vec();
        assert_close("align corners", &run(g), &want, 1e-6);
        // resize_downsample_scales_nearest: scales (0.6, 0.6) of 2×4
        let x8 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let g = geom(
            1,
            (2, 4),
            (1, 2),
            Some([0.6, 0.6]),
            M::Nearest,
            C::HalfPixel,
            N::RoundPreferFloor,
        );
        let mut y = [0.0; 2];
        forward(&g, &x8, &mut y);
        assert_eq!(y, [1.0, 3.0]);
        // resize_downsample_scales_linear: scales (0.6, 0.6) of 2×4
        let g = geom(
            1,
            (2, 4),
            (1, 2),
            Some([0.6, 0.6]),
            M::Linear,
            C::HalfPixel,
            N::Floor,
        );
        forward(&g, &x8, &mut y);
        assert_close("downsample linear", &y, &[2.6666667, 4.3333335], 1e-6);
    }

    fn cases() -> Vec<ResizeGeom> {
        let mut out = Vec::new();
        let shapes = [
            ((5, 4), (10, 8), None),
            ((4, 6), (6, 9), Some([1.5, 1.5])),
            ((7, 5), (3, 4), None),
            ((6, 6), (4, 4), Some([0.75, 0.75])),
            ((3, 5), (1, 7), None),
            ((1, 1), (3, 2), None),
            ((6, 7), (6, 7), None),
            // wider than one block of column taps
            ((3, 50), (4, 150), None),
        ];
        for (hw_in, hw_out, scales) in shapes {
            for c in [
                C::HalfPixel,
                C::PytorchHalfPixel,
                C::AlignCorners,
                C::Asymmetric,
                C::TfHalfPixelForNn,
            ] {
                out.push(geom(3, hw_in, hw_out, scales, M::Linear, c, N::Floor));
                for n in [N::RoundPreferFloor, N::RoundPreferCeil, N::Floor, N::Ceil] {
                    out.push(geom(2, hw_in, hw_out, scales, M::Nearest, c, n));
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_reference() {
        let mut rng = Lcg::new(31);
        for g in cases() {
            let x = rng.vec(g.input_len());
            let mut y = vec![f32::NAN; g.output_len()];
            forward(&g, &x, &mut y);
            assert_close(&format!("{g:?}"), &y, &reference(&g, &x), 1e-6);
        }
    }

    /// Each nearest mode rounds x.5 its own way; ×2 upsampling with asymmetric floor is
    /// PyTorch's `nearest` (each input twice).
    #[test]
    fn nearest_rounding() {
        let pick = |hw_in: (usize, usize), hw_out, c, n| {
            let g = geom(1, hw_in, hw_out, None, M::Nearest, c, n);
            let x: Vec<f32> = (0..g.input_len()).map(|i| i as f32).collect();
            let mut y = vec![0.0; g.output_len()];
            forward(&g, &x, &mut y);
            y
        };
        // 2 → 5 with tf_half_pixel_for_nn: x = 0.2, 0.6, 1.0, 1.4, 1.8
        assert_eq!(
            pick((1, 2), (1, 5), C::TfHalfPixelForNn, N::RoundPreferFloor),
            [0., 1., 1., 1., 1.]
        );
        assert_eq!(
            pick((1, 2), (1, 5), C::TfHalfPixelForNn, N::Floor),
            [0., 0., 1., 1., 1.]
        );
        // 2 → 4 asymmetric: x = 0, 0.5, 1, 1.5
        let asym = |n| pick((1, 2), (1, 4), C::Asymmetric, n);
        assert_eq!(asym(N::RoundPreferFloor), [0., 0., 1., 1.]);
        assert_eq!(asym(N::RoundPreferCeil), [0., 1., 1., 1.]);
        assert_eq!(asym(N::Floor), [0., 0., 1., 1.]);
        assert_eq!(asym(N::Ceil), [0., 1., 1., 1.]);
        // 2×2 → 4×4, asymmetric floor: each row and column twice
        assert_eq!(
            pick((2, 2), (4, 4), C::Asymmetric, N::Floor),
            [
                0., 0., 1., 1., 0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.
            ]
        );
    }

    /// The backward is the forward's adjoint, ⟨resize(x), r⟩ = ⟨x, resizeᵀ(r)⟩, and matches
    /// central differences.
    #[test]
    fn backward_is_the_adjoint() {
        let mut rng = Lcg::new(32);
        for g in cases() {
            let x = rng.vec(g.input_len());
            let r = rng.vec(g.output_len());
            let mut dx = vec![f32::NAN; g.input_len()];
            backward(&g, &r, &mut dx);
            let mut y = vec![0.0; g.output_len()];
            forward(&g, &x, &mut y);
            let (lhs, rhs) = (weighted_sum(&y, &r), weighted_sum(&x, &dx));
            let scale = x.iter().map(|v| v.abs() as f64).sum::<f64>();
            assert!(
                (lhs - rhs).abs() <= 1e-6 * scale.max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
            check_grad(&format!("{g:?}"), &x, &dx, |xp| {
                let mut y = vec![0.0; g.output_len()];
                forward(&g, xp, &mut y);
                weighted_sum(&y, &r)
            });
        }
    }
}
