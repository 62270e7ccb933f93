//! Data movement and reductions over whole tensors: Transpose, Concat, constant Pad,
//! ReduceMean and Softmax, forward and backward. Shapes are `&[usize]`, rank ≤
//! [`MAX_RANK`].

use super::approx;
use super::elementwise::{broadcast_to, reduce_to_shape};
use super::layout::{Dims, MAX_RANK, Walk, contiguous_strides};
use super::simd::dispatch_avx2;
use crate::threads;

/// A tensor seen as (outer, len, inner) around one axis: the layout that Concat and
/// Softmax work on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisSplit {
    /// Product of the dims before the axis.
    pub outer: usize,
    /// The axis' own length.
    pub len: usize,
    /// Product of the dims after the axis.
    pub inner: usize,
}

impl AxisSplit {
    pub fn new(shape: &[usize], axis: usize) -> AxisSplit {
        assert!(
            axis < shape.len(),
            "axis {axis} out of rank {}",
            shape.len()
        );
        AxisSplit {
            outer: shape[..axis].iter().product(),
            len: shape[axis],
            inner: shape[axis + 1..].iter().product(),
        }
    }

    pub fn numel(&self) -> usize {
        self.outer * self.len * self.inner
    }
}

/// The input's strides, reordered to the output's dims: output dim `i` is input dim
/// `perm[i]`.
fn permuted_strides(x_shape: &[usize], perm: &[usize]) -> (Dims, Dims) {
    debug_assert_eq!(perm.len(), x_shape.len());
    debug_assert!(
        (0..perm.len()).all(|d| perm.contains(&d)),
        "{perm:?} is not a permutation"
    );
    let xs = contiguous_strides(x_shape);
    let (mut dims, mut s) = ([0; MAX_RANK], [0; MAX_RANK]);
    for (i, &p) in perm.iter().enumerate() {
        dims[i] = x_shape[p];
        s[i] = xs[p];
    }
    (dims, s)
}

/// `y = transpose(x, perm)`: `y`'s dim `i` is `x`'s dim `perm[i]`.
pub fn transpose_forward(x_shape: &[usize], perm: &[usize], x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), x_shape.iter().product::<usize>());
    debug_assert_eq!(y.len(), x.len());
    let (dims, s) = permuted_strides(x_shape, perm);
    let walk = Walk::new(&dims[..perm.len()], &s, &[0; MAX_RANK]);
    let (len, sx, _) = walk.run();
    walk.for_each_run(|d, ox, _| {
        let y = &mut y[d..d + len];
        if sx == 1 {
            y.copy_from_slice(&x[ox..ox + len]);
        } else {
            y.iter_mut()
                .enumerate()
                .for_each(|(i, y)| *y = x[ox + i * sx]);
        }
    });
}

/// dx of [`transpose_forward`]: the same walk with reads and writes swapped (the inverse
/// permutation without computing it).
pub fn transpose_backward(x_shape: &[usize], perm: &[usize], dy: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(dx.len(), x_shape.iter().product::<usize>());
    debug_assert_eq!(dy.len(), dx.len());
    let (dims, s) = permuted_strides(x_shape, perm);
    let walk = Walk::new(&dims[..perm.len()], &s, &[0; MAX_RANK]);
    let (len, sx, _) = walk.run();
    walk.for_each_run(|d, ox, _| {
        let dy = &dy[d..d + len];
        if sx == 1 {
            dx[ox..ox + len].copy_from_slice(dy);
        } else {
            dy.iter()
                .enumerate()
                .for_each(|(i, g)| dx[ox + i * sx] = *g);
        }
    });
}

/// Concat along an axis. `outer` is the product of the dims before the axis
/// ([`AxisSplit::outer`]); each input contributes `x.len() / outer` contiguous values per
/// outer index.
pub fn concat_forward(outer: usize, xs: &[&[f32]], y: &mut [f32]) {
    debug_assert_eq!(y.len(), xs.iter().map(|x| x.len()).sum::<usize>());
    if outer == 0 {
        return;
    }
    let row = y.len() / outer;
    let mut offset = 0;
    for x in xs {
        let chunk = x.len() / outer;
        debug_assert_eq!(chunk * outer, x.len());
        if chunk > 0 {
            for (o, src) in x.chunks_exact(chunk).enumerate() {
                y[o * row + offset..][..chunk].copy_from_slice(src);
            }
        }
        offset += chunk;
    }
}

/// dx of one Concat input: its slice of `dy`. `offset` is the sum of the preceding inputs'
/// per-outer chunk lengths.
pub fn concat_backward(outer: usize, offset: usize, dy: &[f32], dx: &mut [f32]) {
    if outer == 0 || dx.is_empty() {
        return;
    }
    let (row, chunk) = (dy.len() / outer, dx.len() / outer);
    debug_assert!(chunk * outer == dx.len() && offset + chunk <= row);
    for (o, dst) in dx.chunks_exact_mut(chunk).enumerate() {
        dst.copy_from_slice(&dy[o * row + offset..][..chunk]);
    }
}

/// The padded shape, and the offset of `x[0, …, 0]` in it. `pads` is ONNX's: all begins,
/// then all ends.
fn padded_layout(x_shape: &[usize], pads: &[usize]) -> (Dims, usize) {
    let rank = x_shape.len();
    debug_assert_eq!(pads.len(), 2 * rank);
    let mut y_dims = [0; MAX_RANK];
    for d in 0..rank {
        y_dims[d] = x_shape[d] + pads[d] + pads[rank + d];
    }
    let ys = contiguous_strides(&y_dims[..rank]);
    (ys, (0..rank).map(|d| pads[d] * ys[d]).sum())
}

/// Constant Pad (non-negative pads).
pub fn pad_forward(x_shape: &[usize], pads: &[usize], value: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), x_shape.iter().product::<usize>());
    let (ys, base) = padded_layout(x_shape, pads);
    y.fill(value);
    let walk = Walk::new(x_shape, &ys, &[0; MAX_RANK]);
    let (len, sy, _) = walk.run();
    walk.for_each_run(|d, oy, _| {
        let x = &x[d..d + len];
        let at = base + oy;
        if sy == 1 {
            y[at..at + len].copy_from_slice(x);
        } else {
            x.iter().enumerate().for_each(|(i, v)| y[at + i * sy] = *v);
        }
    });
}

/// dx of [`pad_forward`]: the interior of `dy`.
pub fn pad_backward(x_shape: &[usize], pads: &[usize], dy: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(dx.len(), x_shape.iter().product::<usize>());
    let (ys, base) = padded_layout(x_shape, pads);
    let walk = Walk::new(x_shape, &ys, &[0; MAX_RANK]);
    let (len, sy, _) = walk.run();
    walk.for_each_run(|d, oy, _| {
        let dx = &mut dx[d..d + len];
        let at = base + oy;
        if sy == 1 {
            dx.copy_from_slice(&dy[at..at + len]);
        } else {
            dx.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = dy[at + i * sy]);
        }
    });
}

/// `x`'s shape with the reduced axes set to 1 (keepdims; the data layout is the same
/// without), and how many elements each output averages.
fn reduced(x_shape: &[usize], axes: &[usize]) -> (Dims, usize) {
    let mut dims = [0; MAX_RANK];
    dims[..x_shape.len()].copy_from_slice(x_shape);
    let mut count = 1;
    for (i, &a) in axes.iter().enumerate() {
        debug_assert!(
            a < x_shape.len() && !axes[..i].contains(&a),
            "axes {axes:?}"
        );
        count *= x_shape[a];
        dims[a] = 1;
    }
    (dims, count)
}

/// ReduceMean over `axes` (non-negative, distinct; ONNX's "empty means all" is the
/// caller's to expand).
/// The sum (`mean` false) or mean of `x` over `axes`.
pub fn reduce_forward(mean: bool, x_shape: &[usize], axes: &[usize], x: &[f32], y: &mut [f32]) {
    let (dims, count) = reduced(x_shape, axes);
    let scale = if mean { 1.0 / count as f32 } else { 1.0 };
    reduce_to_shape(scale, x, x_shape, y, &dims[..x_shape.len()]);
}

/// dx of [`reduce_forward`]: dy spread back over the reduced axes.
pub fn reduce_backward(mean: bool, x_shape: &[usize], axes: &[usize], dy: &[f32], dx: &mut [f32]) {
    let (dims, count) = reduced(x_shape, axes);
    let scale = if mean { 1.0 / count as f32 } else { 1.0 };
    broadcast_to(scale, dy, &dims[..x_shape.len()], dx, x_shape);
}

/// Softmax along the split's axis (max-subtracted, so large logits do not overflow); the
/// outer blocks are split among the threads (attention's rows: batch × heads × tokens).
pub fn softmax_forward(s: &AxisSplit, x: &[f32], y: &mut [f32]) {
    debug_assert!(x.len() == s.numel() && y.len() == s.numel());
    let block = s.len * s.inner;
    if block == 0 {
        return;
    }
    let parts = threads::parts_for(s.numel() * SOFTMAX_COST);
    threads::for_runs(y, s.outer, block, 1, parts, |r, ys| {
        let xs = &x[r.start * block..r.end * block];
        // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
        dispatch_avx2!(unsafe { softmax_blocks_avx2(s, xs, ys) });
        softmax_blocks(s, xs, ys)
    });
}

/// Work units per element of a softmax: an exp and a few passes.
const SOFTMAX_COST: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_blocks_avx2(s: &AxisSplit, x: &[f32], y: &mut [f32]) {
    softmax_blocks(s, x, y)
}

#[inline(always)]
fn softmax_blocks(s: &AxisSplit, x: &[f32], y: &mut [f32]) {
    let block = s.len * s.inner;
    if s.inner == 1 {
        // Contiguous rows (the last axis, as in attention): eight lanes at a time.
        for (xr, yr) in x.chunks_exact(block).zip(y.chunks_exact_mut(block)) {
            softmax_row(xr, yr);
        }
        return;
    }
    for (xb, yb) in x.chunks_exact(block).zip(y.chunks_exact_mut(block)) {
        for j in 0..s.inner {
            let at = |k: usize| k * s.inner + j;
            let max = (0..s.len)
                .map(|k| xb[at(k)])
                .fold(f32::NEG_INFINITY, f32::max);
            for k in 0..s.len {
                yb[at(k)] = approx::exp(xb[at(k)] - max);
            }
            let sum = super::blocked_sum(s.len, |k| yb[at(k)]);
            let inv = 1.0 / sum;
            (0..s.len).for_each(|k| yb[at(k)] *= inv);
        }
    }
}

/// Softmax of one contiguous row, its max and sum taken in eight lanes (then combined), so
/// that every pass vectorizes.
#[inline(always)]
fn softmax_row(x: &[f32], y: &mut [f32]) {
    let y = &mut y[..x.len()];
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(*v);
        }
    }
    let max = rest
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    y.iter_mut()
        .zip(x)
        .for_each(|(y, x)| *y = approx::exp(x - max));
    // In blocks, as `blocked_sum`: a long row (6625 classes) summed lane by lane would
    // lose accuracy with its length.
    let mut total = 0.0f32;
    for block in y.chunks(8 * super::SUM_BLOCK) {
        let mut sums = [0.0f32; 8];
        let chunks = block.chunks_exact(8);
        let rest: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (s, v) in sums.iter_mut().zip(c) {
                *s += v;
            }
        }
        total += sums.iter().sum::<f32>() + rest;
    }
    let inv = 1.0 / total;
    y.iter_mut().for_each(|y| *y *= inv);
}

/// From the output: dx = y ⊙ (dy − Σ_axis dy ⊙ y).
pub fn softmax_backward(s: &AxisSplit, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    debug_assert!(y.len() == s.numel() && dy.len() == s.numel() && dx.len() == s.numel());
    let block = s.len * s.inner;
    if block == 0 {
        return;
    }
    for ((yb, db), xb) in y
        .chunks_exact(block)
        .zip(dy.chunks_exact(block))
        .zip(dx.chunks_exact_mut(block))
    {
        for j in 0..s.inner {
            let at = |k: usize| k * s.inner + j;
            let dot = super::blocked_sum(s.len, |k| yb[at(k)] * db[at(k)]);
            (0..s.len).for_each(|k| xb[at(k)] = yb[at(k)] * (db[at(k)] - dot));
        }
    }
}

/// Gather with constant indices: `y` holds, for each outer position, the rows of `x` at
/// `indices` along the split axis (each `inner` long).
pub fn gather_forward(s: AxisSplit, indices: &[u32], x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), s.numel());
    debug_assert_eq!(y.len(), s.outer * indices.len() * s.inner);
    let mut out = y.chunks_exact_mut(s.inner.max(1));
    for o in 0..s.outer {
        for &i in indices {
            let from = (o * s.len + i as usize) * s.inner;
            if let Some(row) = out.next() {
                row.copy_from_slice(&x[from..from + s.inner]);
            }
        }
    }
}

/// dx of [`gather_forward`]: zeros, plus each row of dy added at its index (an index that
/// appears twice gets both).
pub fn gather_backward(s: AxisSplit, indices: &[u32], dy: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(dx.len(), s.numel());
    debug_assert_eq!(dy.len(), s.outer * indices.len() * s.inner);
    dx.fill(0.0);
    let mut rows = dy.chunks_exact(s.inner.max(1));
    for o in 0..s.outer {
        for &i in indices {
            let to = (o * s.len + i as usize) * s.inner;
            if let Some(row) = rows.next() {
                dx[to..to + s.inner]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(d, g)| *d += g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{Lcg, assert_close, check_grad, weighted_sum};

    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |off, (i, n)| off * n + i)
    }

    fn numel(s: &[usize]) -> usize {
        s.iter().product()
    }

    #[test]
    fn transpose() {
        let mut rng = Lcg::new(60);
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 0, 1]),
            (&[2, 3, 4], &[1, 0, 2]),
            (&[2, 3, 4, 5], &[0, 2, 3, 1]),
            (&[3, 1, 2], &[2, 1, 0]),
            (&[5, 7], &[1, 0]),
        ];
        for &(shape, perm) in cases {
            let x = rng.vec(numel(shape));
            let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let mut y = vec![f32::NAN; x.len()];
            transpose_forward(shape, perm, &x, &mut y);
            let want: Vec<f64> = (0..y.len())
                .map(|i| {
                    let oi = unravel(i, &out);
                    let mut xi = vec![0; shape.len()];
                    perm.iter().zip(&oi).for_each(|(&p, &v)| xi[p] = v);
                    x[ravel(&xi, shape)] as f64
                })
                .collect();
            assert_close(&format!("transpose {shape:?} {perm:?}"), &y, &want, 0.0);
            let r = rng.vec(y.len());
            let mut dx = vec![f32::NAN; x.len()];
            transpose_backward(shape, perm, &r, &mut dx);
            check_grad("transpose", &x, &dx, |xp| {
                transpose_forward(shape, perm, xp, &mut y);
                weighted_sum(&y, &r)
            });
        }
    }

    #[test]
    fn concat() {
        let mut rng = Lcg::new(61);
        for axis in 0..3 {
            let shapes: Vec<Vec<usize>> = [1, 0, 3, 2]
                .iter()
                .map(|&k| {
                    let mut s = vec![2, 3, 4];
                    s[axis] = k;
                    s
                })
                .collect();
            let xs: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(numel(s))).collect();
            let mut out = vec![2, 3, 4];
            out[axis] = shapes.iter().map(|s| s[axis]).sum();
            let outer = AxisSplit::new(&out, axis).outer;
            let mut y = vec![f32::NAN; numel(&out)];
            let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
            concat_forward(outer, &refs, &mut y);
            let want: Vec<f64> = (0..y.len())
                .map(|i| {
                    let mut idx = unravel(i, &out);
                    let mut input = 0;
                    while idx[axis] >= shapes[input][axis] {
                        idx[axis] -= shapes[input][axis];
                        input += 1;
                    }
                    xs[input][ravel(&idx, &shapes[input])] as f64
                })
                .collect();
            assert_close(&format!("concat axis {axis}"), &y, &want, 0.0);

            let r = rng.vec(y.len());
            let mut offset = 0;
            for (k, x) in xs.iter().enumerate() {
                let mut dx = vec![f32::NAN; x.len()];
                concat_backward(outer, offset, &r, &mut dx);
                offset += x.len() / outer;
                check_grad(&format!("concat axis {axis} input {k}"), x, &dx, |xp| {
                    let mut refs = refs.clone();
                    refs[k] = xp;
                    concat_forward(outer, &refs, &mut y);
                    weighted_sum(&y, &r)
                });
            }
        }
    }

    #[test]
    fn pad() {
        let mut rng = Lcg::new(62);
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[0, 1, 2, 1, 0, 1]),
            (&[2, 3, 4], &[0, 0, 1, 0, 0, 2]),
            (&[2, 1], &[0, 1, 0, 1]),
            (&[3], &[2, 0]),
        ];
        for &(shape, pads) in cases {
            let rank = shape.len();
            let out: Vec<usize> = (0..rank)
                .map(|d| shape[d] + pads[d] + pads[rank + d])
                .collect();
            let x = rng.vec(numel(shape));
            let mut y = vec![f32::NAN; numel(&out)];
            pad_forward(shape, pads, -7.0, &x, &mut y);
            let want: Vec<f64> = (0..y.len())
                .map(|i| {
                    let oi = unravel(i, &out);
                    let inside = (0..rank).all(|d| oi[d] >= pads[d] && oi[d] < pads[d] + shape[d]);
                    if inside {
                        let xi: Vec<usize> = (0..rank).map(|d| oi[d] - pads[d]).collect();
                        x[ravel(&xi, shape)] as f64
                    } else {
                        -7.0
                    }
                })
                .collect();
            assert_close(&format!("pad {shape:?} {pads:?}"), &y, &want, 0.0);
            let r = rng.vec(y.len());
            let mut dx = vec![f32::NAN; x.len()];
            pad_backward(shape, pads, &r, &mut dx);
            check_grad("pad", &x, &dx, |xp| {
                pad_forward(shape, pads, -7.0, xp, &mut y);
                weighted_sum(&y, &r)
            });
        }
    }

    #[test]
    fn reduce_sum_and_mean() {
        let mut rng = Lcg::new(63);
        let shape = [2, 3, 4, 5];
        let x = rng.vec(numel(&shape));
        for (mean, axes) in [true, false]
            .into_iter()
            .flat_map(|m| [&[2, 3][..], &[0], &[1, 3], &[3, 0, 1, 2]].map(|a| (m, a)))
        {
            let mut out = shape.to_vec();
            axes.iter().for_each(|&a| out[a] = 1);
            let mut y = vec![f32::NAN; numel(&out)];
            reduce_forward(mean, &shape, axes, &x, &mut y);
            let count = match mean {
                true => axes.iter().map(|&a| shape[a]).product::<usize>() as f64,
                false => 1.0,
            };
            let mut want = vec![0.0; y.len()];
            for (i, v) in x.iter().enumerate() {
                let mut idx = unravel(i, &shape);
                axes.iter().for_each(|&a| idx[a] = 0);
                want[ravel(&idx, &out)] += *v as f64 / count;
            }
            let what = format!("reduce (mean {mean}) {axes:?}");
            assert_close(&what, &y, &want, 1e-6);
            let r = rng.vec(y.len());
            let mut dx = vec![f32::NAN; x.len()];
            reduce_backward(mean, &shape, axes, &r, &mut dx);
            check_grad(&what, &x, &dx, |xp| {
                reduce_forward(mean, &shape, axes, xp, &mut y);
                weighted_sum(&y, &r)
            });
        }
    }

    #[test]
    fn softmax() {
        let mut rng = Lcg::new(64);
        let shape = [2, 3, 4];
        let x: Vec<f32> = rng.vec(numel(&shape)).iter().map(|v| 3.0 * v).collect();
        for axis in 0..3 {
            let s = AxisSplit::new(&shape, axis);
            let mut y = vec![f32::NAN; x.len()];
            softmax_forward(&s, &x, &mut y);
            let want: Vec<f64> = (0..x.len())
                .map(|i| {
                    let idx = unravel(i, &shape);
                    let denom: f64 = (0..shape[axis])
                        .map(|k| {
                            let mut j = idx.clone();
                            j[axis] = k;
                            (x[ravel(&j, &shape)] as f64).exp()
                        })
                        .sum();
                    (x[i] as f64).exp() / denom
                })
                .collect();
            assert_close(&format!("softmax axis {axis}"), &y, &want, 1e-6);
            let r = rng.vec(y.len());
            let mut dx = vec![f32::NAN; x.len()];
            softmax_backward(&s, &y, &r, &mut dx);
            check_grad(&format!("softmax axis {axis}"), &x, &dx, |xp| {
                softmax_forward(&s, xp, &mut y);
                weighted_sum(&y, &r)
            });
        }
        // Max subtraction keeps huge logits finite.
        let s = AxisSplit::new(&[2], 0);
        let mut y = [0.0; 2];
        softmax_forward(&s, &[1000.0, 1000.0], &mut y);
        assert_eq!(y, [0.5, 0.5]);
    }

    #[test]
    fn gather_and_its_gradient() {
        let mut rng = Lcg::new(68);
        let shape = [3, 5, 4];
        let x = rng.vec(numel(&shape));
        for (axis, indices) in [(0, &[2u32][..]), (1, &[0, 4, 4, 1][..]), (2, &[3, 0][..])] {
            let s = AxisSplit::new(&shape, axis);
            let mut y = vec![f32::NAN; s.outer * indices.len() * s.inner];
            gather_forward(s, indices, &x, &mut y);
            let mut at = 0;
            for o in 0..s.outer {
                for &i in indices {
                    for j in 0..s.inner {
                        assert_eq!(y[at], x[(o * s.len + i as usize) * s.inner + j]);
                        at += 1;
                    }
                }
            }
            let r = rng.vec(y.len());
            let mut dx = vec![f32::NAN; x.len()];
            gather_backward(s, indices, &r, &mut dx);
            check_grad("gather", &x, &dx, |xp| {
                gather_forward(s, indices, xp, &mut y);
                weighted_sum(&y, &r)
            });
        }
    }
}
