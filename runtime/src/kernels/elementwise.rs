//! Add, Sub, Mul and Div with numpy broadcasting, their gradients, and the reductions and
//! accumulations that gradients of broadcast ops need.
//!
//! Shapes are given as `&[usize]` (rank ≤ [`MAX_RANK`]); the output
//! shape is the broadcast of the two inputs' ([`broadcast_shape`]).

use super::layout::{MAX_RANK, Walk, broadcast_dims, broadcast_strides};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// Shape rule: the numpy broadcast of two shapes, or None if they are incompatible.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    broadcast_dims(a, b).map(|(d, r)| d[..r].to_vec())
}

/// `y = a op b`, broadcast.
pub fn binary_forward(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    y: &mut [f32],
) {
    match op {
        BinaryOp::Add => zip_broadcast(a, a_shape, b, b_shape, y, |a, b| a + b),
        BinaryOp::Sub => zip_broadcast(a, a_shape, b, b_shape, y, |a, b| a - b),
        BinaryOp::Mul => zip_broadcast(a, a_shape, b, b_shape, y, |a, b| a * b),
        BinaryOp::Div => zip_broadcast(a, a_shape, b, b_shape, y, |a, b| a / b),
    }
}

fn zip_broadcast(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    y: &mut [f32],
    f: impl Fn(f32, f32) -> f32,
) {
    let (dims, rank) =
        broadcast_dims(a_shape, b_shape).expect("binary op: shapes do not broadcast");
    let dims = &dims[..rank];
    debug_assert_eq!(a.len(), a_shape.iter().product::<usize>());
    debug_assert_eq!(b.len(), b_shape.iter().product::<usize>());
    debug_assert_eq!(y.len(), dims.iter().product::<usize>());
    let walk = Walk::new(
        dims,
        &broadcast_strides(a_shape, dims),
        &broadcast_strides(b_shape, dims),
    );
    let (len, sa, sb) = walk.run();
    walk.for_each_run(|d, oa, ob| {
        let y = &mut y[d..d + len];
        // Specialised on the steps so the common cases are plain vectorisable zips.
        match (sa, sb) {
            (1, 1) => y
                .iter_mut()
                .zip(&a[oa..])
                .zip(&b[ob..])
                .for_each(|((y, a), b)| *y = f(*a, *b)),
            (1, 0) => y
                .iter_mut()
                .zip(&a[oa..])
                .for_each(|(y, a)| *y = f(*a, b[ob])),
            (0, 1) => y
                .iter_mut()
                .zip(&b[ob..])
                .for_each(|(y, b)| *y = f(a[oa], *b)),
            _ => y
                .iter_mut()
                .enumerate()
                .for_each(|(i, y)| *y = f(a[oa + i * sa], b[ob + i * sb])),
        }
    });
}

/// `out = alpha · Σ g` over the dims in which `out_shape` was broadcast to `g_shape`: the
/// gradient of a broadcast input (Add, Sub with alpha = -1, the C of Gemm, a mean).
pub fn reduce_to_shape(
    alpha: f32,
    g: &[f32],
    g_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
) {
    debug_assert_eq!(g.len(), g_shape.iter().product::<usize>());
    debug_assert_eq!(out.len(), out_shape.iter().product::<usize>());
    out.fill(0.0);
    let walk = Walk::new(
        g_shape,
        &broadcast_strides(out_shape, g_shape),
        &[0; MAX_RANK],
    );
    let (len, so, _) = walk.run();
    // The innermost walked dim is either broadcast in `out` or its own innermost.
    debug_assert!(so <= 1);
    walk.for_each_run(|d, oo, _| {
        let g = &g[d..d + len];
        if so == 0 {
            out[oo] += alpha * super::sum8(len, |i| g[i]);
        } else {
            out[oo..oo + len]
                .iter_mut()
                .zip(g)
                .for_each(|(o, g)| *o += alpha * g);
        }
    });
}

/// `y = alpha · x` broadcast from `x_shape` to `y_shape` (the adjoint of [`reduce_to_shape`]).
pub fn broadcast_to(alpha: f32, x: &[f32], x_shape: &[usize], y: &mut [f32], y_shape: &[usize]) {
    debug_assert_eq!(x.len(), x_shape.iter().product::<usize>());
    debug_assert_eq!(y.len(), y_shape.iter().product::<usize>());
    let walk = Walk::new(
        y_shape,
        &broadcast_strides(x_shape, y_shape),
        &[0; MAX_RANK],
    );
    let (len, sx, _) = walk.run();
    debug_assert!(sx <= 1);
    walk.for_each_run(|d, ox, _| {
        let y = &mut y[d..d + len];
        if sx == 0 {
            y.fill(alpha * x[ox]);
        } else {
            y.iter_mut().zip(&x[ox..]).for_each(|(y, x)| *y = alpha * x);
        }
    });
}

/// Gradients of `y = a·b`: `da = reduce(dy·b)`, `db = reduce(dy·a)`; either may be skipped
/// (a constant operand needs none).
#[allow(clippy::too_many_arguments)] // two operands with shapes, and two optional gradients
pub fn mul_backward(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    dy: &[f32],
    da: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
) {
    if let Some(da) = da {
        product_gradient(dy, a_shape, da, b, b_shape, |dy, b| dy * b);
    }
    if let Some(db) = db {
        product_gradient(dy, b_shape, db, a, a_shape, |dy, a| dy * a);
    }
}

/// Gradients of `y = a / b`: `da = reduce(dy / b)`, `db = reduce(-dy·a / b²)`.
#[allow(clippy::too_many_arguments)] // two operands with shapes, and two optional gradients
pub fn div_backward(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    dy: &[f32],
    da: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
) {
    if let Some(da) = da {
        product_gradient(dy, a_shape, da, b, b_shape, |dy, b| dy / b);
    }
    if let Some(db) = db {
        // -dy·a/b² needs a and b at once: walk the three together, b indexed directly.
        let (dims, rank) = broadcast_dims(a_shape, b_shape).expect("div: shapes do not broadcast");
        let dims = &dims[..rank];
        debug_assert_eq!(dy.len(), dims.iter().product::<usize>());
        debug_assert_eq!(db.len(), b.len());
        db.fill(0.0);
        let bs = broadcast_strides(b_shape, dims);
        let walk = Walk::new(dims, &broadcast_strides(a_shape, dims), &bs);
        let (len, sa, sb) = walk.run();
        walk.for_each_run(|d, oa, ob| {
            for i in 0..len {
                let bv = b[ob + i * sb];
                db[ob + i * sb] -= dy[d + i] * a[oa + i * sa] / (bv * bv);
            }
        });
    }
}

/// `g = reduce_to(g_shape, f(dy, other))`: the gradient of one operand of a product-like
/// op, fused so the broadcast product is never materialised.
fn product_gradient(
    dy: &[f32],
    g_shape: &[usize],
    g: &mut [f32],
    other: &[f32],
    other_shape: &[usize],
    f: impl Fn(f32, f32) -> f32,
) {
    let (dims, rank) = broadcast_dims(g_shape, other_shape).expect("shapes do not broadcast");
    let dims = &dims[..rank];
    debug_assert_eq!(dy.len(), dims.iter().product::<usize>());
    debug_assert_eq!(g.len(), g_shape.iter().product::<usize>());
    debug_assert_eq!(other.len(), other_shape.iter().product::<usize>());
    g.fill(0.0);
    let walk = Walk::new(
        dims,
        &broadcast_strides(g_shape, dims),
        &broadcast_strides(other_shape, dims),
    );
    let (len, sg, so) = walk.run();
    walk.for_each_run(|d, og, oo| {
        let dy = &dy[d..d + len];
        match (sg, so) {
            (1, 1) => g[og..og + len]
                .iter_mut()
                .zip(dy)
                .zip(&other[oo..])
                .for_each(|((g, dy), o)| *g += f(*dy, *o)),
            (0, _) => {
                g[og] += dy
                    .iter()
                    .enumerate()
                    .map(|(i, dy)| f(*dy, other[oo + i * so]))
                    .sum::<f32>()
            }
            _ => dy
                .iter()
                .enumerate()
                .for_each(|(i, dy)| g[og + i * sg] += f(*dy, other[oo + i * so])),
        }
    });
}

/// `y += alpha · x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

/// `dst += src`: summing the gradient contributions of a tensor read by several ops.
pub fn accumulate(src: &[f32], dst: &mut [f32]) {
    axpy(1.0, src, dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{Lcg, assert_close, check_grad, weighted_sum};

    /// Offset in a tensor of `shape` of the broadcast element at output index `i` of `out`.
    fn source(i: usize, out: &[usize], shape: &[usize]) -> usize {
        let mut rem = i;
        let mut idx = vec![0; out.len()];
        for d in (0..out.len()).rev() {
            idx[d] = rem % out[d];
            rem /= out[d];
        }
        let lead = out.len() - shape.len();
        shape.iter().enumerate().fold(0, |off, (d, &len)| {
            off * len + if len == 1 { 0 } else { idx[lead + d] }
        })
    }

    const SHAPES: &[(&[usize], &[usize])] = &[
        (&[2, 3, 4], &[2, 3, 4]),
        (&[2, 3, 4], &[4]),
        (&[2, 1, 4], &[3, 1]),
        (&[3, 1, 5], &[1, 4, 1]),
        (&[], &[2, 3]),
        (&[2, 3, 4, 5], &[3, 1, 1]),
        (&[1, 3], &[3, 1]),
    ];

    fn numel(s: &[usize]) -> usize {
        s.iter().product()
    }

    /// Operands for op tests: |b| kept in [1, 2) so Div's curvature (∂³(a/b)/∂b³ = −6a/b⁴)
    /// keeps the finite-difference truncation error small.
    fn operands(rng: &mut Lcg, sa: &[usize], sb: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let a = rng.vec(numel(sa));
        let b = rng
            .vec(numel(sb))
            .iter()
            .map(|v| v.signum() * (1.0 + v.abs()))
            .collect();
        (a, b)
    }

    #[test]
    fn forward_matches_reference() {
        let mut rng = Lcg::new(20);
        for &(sa, sb) in SHAPES {
            for (sa, sb) in [(sa, sb), (sb, sa)] {
                let out = broadcast_shape(sa, sb).unwrap();
                let (a, b) = operands(&mut rng, sa, sb);
                for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                    let mut y = vec![f32::NAN; numel(&out)];
                    binary_forward(op, &a, sa, &b, sb, &mut y);
                    let want: Vec<f64> = (0..y.len())
                        .map(|i| {
                            let (x, z) =
                                (a[source(i, &out, sa)] as f64, b[source(i, &out, sb)] as f64);
                            match op {
                                BinaryOp::Add => x + z,
                                BinaryOp::Sub => x - z,
                                BinaryOp::Mul => x * z,
                                BinaryOp::Div => x / z,
                            }
                        })
                        .collect();
                    assert_close(&format!("{op:?} {sa:?} {sb:?}"), &y, &want, 1e-6);
                }
            }
        }
    }

    #[test]
    fn reduce_and_broadcast_match_reference() {
        let mut rng = Lcg::new(21);
        for &(small, big) in &[
            (&[4][..], &[2, 3, 4][..]),
            (&[3, 1], &[2, 3, 4]),
            (&[1, 1], &[5, 2]),
            (&[], &[3]),
            (&[2, 3], &[2, 3]),
        ] {
            let g = rng.vec(numel(big));
            let mut out = vec![f32::NAN; numel(small)];
            reduce_to_shape(-0.5, &g, big, &mut out, small);
            let mut want = vec![0.0f64; out.len()];
            for (i, g) in g.iter().enumerate() {
                want[source(i, big, small)] += -0.5 * *g as f64;
            }
            assert_close(&format!("reduce {small:?} <- {big:?}"), &out, &want, 1e-6);

            let x = rng.vec(numel(small));
            let mut y = vec![f32::NAN; numel(big)];
            broadcast_to(2.0, &x, small, &mut y, big);
            let want: Vec<f64> = (0..y.len())
                .map(|i| 2.0 * x[source(i, big, small)] as f64)
                .collect();
            assert_close(&format!("broadcast {small:?} -> {big:?}"), &y, &want, 1e-6);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Lcg::new(22);
        for &(sa, sb) in SHAPES {
            let out = broadcast_shape(sa, sb).unwrap();
            let (a, b) = operands(&mut rng, sa, sb);
            let r = rng.vec(numel(&out));
            let mut y = vec![0.0; r.len()];
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                let (mut da, mut db) = (vec![f32::NAN; a.len()], vec![f32::NAN; b.len()]);
                match op {
                    BinaryOp::Add => {
                        reduce_to_shape(1.0, &r, &out, &mut da, sa);
                        reduce_to_shape(1.0, &r, &out, &mut db, sb);
                    }
                    BinaryOp::Sub => {
                        reduce_to_shape(1.0, &r, &out, &mut da, sa);
                        reduce_to_shape(-1.0, &r, &out, &mut db, sb);
                    }
                    BinaryOp::Mul => mul_backward(&a, sa, &b, sb, &r, Some(&mut da), Some(&mut db)),
                    BinaryOp::Div => div_backward(&a, sa, &b, sb, &r, Some(&mut da), Some(&mut db)),
                }
                let name = format!("{op:?} {sa:?} {sb:?}");
                check_grad(&format!("da {name}"), &a, &da, |ap| {
                    binary_forward(op, ap, sa, &b, sb, &mut y);
                    weighted_sum(&y, &r)
                });
                check_grad(&format!("db {name}"), &b, &db, |bp| {
                    binary_forward(op, &a, sa, bp, sb, &mut y);
                    weighted_sum(&y, &r)
                });
            }
        }
    }

    #[test]
    fn accumulate_adds() {
        let mut dst = vec![1.0, 2.0];
        accumulate(&[0.5, -1.0], &mut dst);
        axpy(2.0, &[1.0, 1.0], &mut dst);
        assert_eq!(dst, [3.5, 3.0]);
    }
}
