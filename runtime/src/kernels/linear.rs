//! Dense layers: ONNX `Gemm` and `MatMul` by a constant weight, forward and backward.

use super::elementwise::{broadcast_to, reduce_to_shape};
use super::gemm::{self, Bias, Strides, sgemm, sgemm_with};
use super::qgemm::{Epilogue, Planes, QWeights, qgemm};
use crate::threads;

/// ONNX Gemm: `Y = alpha·A′·B′ + beta·C`, A′ = A or Aᵀ (M×K), B′ = B or Bᵀ (K×N), C
/// unidirectionally broadcastable to (M, N).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmGeom {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl GemmGeom {
    /// Strides that read A as A′ (M×K).
    fn a_strides(&self) -> Strides {
        if self.trans_a {
            (1, self.m)
        } else {
            (self.k, 1)
        }
    }

    /// Strides that read B as B′ (K×N).
    fn b_strides(&self) -> Strides {
        if self.trans_b {
            (1, self.k)
        } else {
            (self.n, 1)
        }
    }
}

/// `c`: C's data and shape, if the node has a C.
pub fn gemm_forward(
    g: &GemmGeom,
    a: &[f32],
    b: &[f32],
    c: Option<(&[f32], &[usize])>,
    y: &mut [f32],
) {
    debug_assert_eq!(a.len(), g.m * g.k);
    debug_assert_eq!(b.len(), g.k * g.n);
    debug_assert_eq!(y.len(), g.m * g.n);
    let beta = match c {
        Some((c, shape)) => {
            broadcast_to(1.0, c, shape, y, &[g.m, g.n]);
            g.beta
        }
        None => 0.0,
    };
    sgemm(
        g.m,
        g.n,
        g.k,
        g.alpha,
        a,
        g.a_strides(),
        b,
        g.b_strides(),
        beta,
        y,
        (g.n, 1),
    );
}

/// Gradients of [`gemm_forward`], each optional: dA and dB in A's and B's own layouts
/// (transposed back when the node transposes), dC reduced to C's shape (given with it).
#[allow(clippy::too_many_arguments)] // three inputs and three optional gradients
pub fn gemm_backward(
    g: &GemmGeom,
    a: &[f32],
    b: &[f32],
    dy: &[f32],
    da: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dc: Option<(&mut [f32], &[usize])>,
) {
    debug_assert_eq!(dy.len(), g.m * g.n);
    let (sa, sb) = (g.a_strides(), g.b_strides());
    if let Some(da) = da {
        debug_assert_eq!(b.len(), g.k * g.n);
        debug_assert_eq!(da.len(), g.m * g.k);
        // dA′ = alpha·dY·B′ᵀ, written through A′'s strides so it lands in A's layout.
        sgemm(
            g.m,
            g.k,
            g.n,
            g.alpha,
            dy,
            (g.n, 1),
            b,
            (sb.1, sb.0),
            0.0,
            da,
            sa,
        );
    }
    if let Some(db) = db {
        debug_assert_eq!(a.len(), g.m * g.k);
        debug_assert_eq!(db.len(), g.k * g.n);
        // dB′ = alpha·A′ᵀ·dY.
        sgemm(
            g.k,
            g.n,
            g.m,
            g.alpha,
            a,
            (sa.1, sa.0),
            dy,
            (g.n, 1),
            0.0,
            db,
            sb,
        );
    }
    if let Some((dc, shape)) = dc {
        reduce_to_shape(g.beta, dy, &[g.m, g.n], dc, shape);
    }
}

/// MatMul of X (…, M, K) by a constant W (K, N): the leading dims and M flatten into `rows`
/// (= product of X's dims but the last), since W is shared by every batch entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMulGeom {
    pub rows: usize,
    pub k: usize,
    pub n: usize,
}

/// [`matmul_forward`] with the weight int8 (`w` holds Wᵀ, N rows of K): computed as
/// (Wᵀ·Xᵀ)ᵀ, each row of X (a token) quantized over its own values.
pub fn matmul_forward_int8(
    g: &MatMulGeom,
    x: &[f32],
    w: &QWeights,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    debug_assert_eq!(x.len(), g.rows * g.k);
    debug_assert_eq!((w.rows, w.k), (g.n, g.k));
    debug_assert_eq!(y.len(), g.rows * g.n);
    let epi = Epilogue { bias, clip: None };
    // An int8 multiply-add costs about a quarter of a float one.
    let parts = threads::parts_for(g.rows * g.k * g.n / 4);
    let (xp, yp) = (
        Planes::transposed(g.rows, g.k),
        Planes::transposed(g.rows, g.n),
    );
    qgemm(w, x, xp, y, yp, epi, parts);
}

/// Y = X·W, plus `bias` (N long) on every row when given: the frozen prefix's MatMul + Add
/// of a constant vector, with the bias added in the product's store.
pub fn matmul_forward(g: &MatMulGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    debug_assert_eq!(x.len(), g.rows * g.k);
    debug_assert_eq!(w.len(), g.k * g.n);
    debug_assert_eq!(y.len(), g.rows * g.n);
    let bias = bias.map_or(Bias::None, Bias::Cols);
    sgemm_with(
        g.rows,
        g.n,
        g.k,
        1.0,
        x,
        (g.k, 1),
        w,
        (g.n, 1),
        0.0,
        y,
        (g.n, 1),
        gemm::Epilogue { bias, clip: None },
    );
}

/// dX = dY·Wᵀ and dW = Xᵀ·dY (summed over every row, i.e. over the batch dims), each
/// optional.
pub fn matmul_backward(
    g: &MatMulGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
) {
    debug_assert_eq!(dy.len(), g.rows * g.n);
    if let Some(dx) = dx {
        debug_assert_eq!(w.len(), g.k * g.n);
        debug_assert_eq!(dx.len(), g.rows * g.k);
        sgemm(
            g.rows,
            g.k,
            g.n,
            1.0,
            dy,
            (g.n, 1),
            w,
            (1, g.n),
            0.0,
            dx,
            (g.k, 1),
        );
    }
    if let Some(dw) = dw {
        debug_assert_eq!(x.len(), g.rows * g.k);
        debug_assert_eq!(dw.len(), g.k * g.n);
        sgemm(
            g.k,
            g.n,
            g.rows,
            1.0,
            x,
            (1, g.k),
            dy,
            (g.n, 1),
            0.0,
            dw,
            (g.n, 1),
        );
    }
}

/// Attention's products: `batch` independent products y[i] = a′[i]·b′[i] (m×k by k×n),
/// a′ = a[i] or its transpose (stored k×m), b′ likewise (stored n×k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchGeom {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// The products split among the threads by batch entry: one fork and join per op, where
/// letting each small product split itself would cost one per entry (48 per attention of
/// a ViT-S at batch 8), each a wake-up a busy core delays.
pub fn batch_matmul(g: &BatchGeom, a: &[f32], b: &[f32], y: &mut [f32]) {
    let (sa, sb, sy) = (g.m * g.k, g.k * g.n, g.m * g.n);
    debug_assert_eq!(a.len(), g.batch * sa);
    debug_assert_eq!(b.len(), g.batch * sb);
    debug_assert_eq!(y.len(), g.batch * sy);
    let a_strides = if g.trans_a { (1, g.m) } else { (g.k, 1) };
    let b_strides = if g.trans_b { (1, g.k) } else { (g.n, 1) };
    let parts = threads::parts_for(g.batch * sy * g.k).min(g.batch);
    threads::for_runs(y, g.batch, sy, 1, parts, |run, ys| {
        for (i, y) in run.zip(ys.chunks_exact_mut(sy.max(1))) {
            sgemm(
                g.m,
                g.n,
                g.k,
                1.0,
                &a[i * sa..][..sa],
                a_strides,
                &b[i * sb..][..sb],
                b_strides,
                0.0,
                y,
                (g.n, 1),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{Lcg, assert_close, check_grad, weighted_sum};

    #[test]
    fn gemm_all_variants() {
        let mut rng = Lcg::new(70);
        let (m, n, k) = (3, 5, 4);
        let c_shapes: &[&[usize]] = &[&[], &[n], &[1, n], &[m, 1], &[m, n], &[1]];
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for c_shape in c_shapes.iter().map(Some).chain([None]) {
                    let g = GemmGeom {
                        m,
                        n,
                        k,
                        trans_a,
                        trans_b,
                        alpha: 0.7,
                        beta: -1.3,
                    };
                    let a = rng.vec(m * k);
                    let b = rng.vec(k * n);
                    let c = c_shape.map(|s| rng.vec(s.iter().product()));
                    let cin = c.as_deref().zip(c_shape.copied());
                    let mut y = vec![f32::NAN; m * n];
                    gemm_forward(&g, &a, &b, cin, &mut y);

                    let at = |i: usize, p: usize| {
                        (if trans_a { a[p * m + i] } else { a[i * k + p] }) as f64
                    };
                    let bt = |p: usize, j: usize| {
                        (if trans_b { b[j * k + p] } else { b[p * n + j] }) as f64
                    };
                    let want: Vec<f64> = (0..m * n)
                        .map(|o| {
                            let (i, j) = (o / n, o % n);
                            let ab: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                            let cv = match (&c, c_shape) {
                                // C aligned at the right, size-1 dims broadcast.
                                (Some(c), Some(s)) => {
                                    let at = match s.len() {
                                        0 => 0,
                                        1 => {
                                            if s[0] == 1 {
                                                0
                                            } else {
                                                j
                                            }
                                        }
                                        _ => {
                                            (if s[0] == 1 { 0 } else { i }) * s[1]
                                                + if s[1] == 1 { 0 } else { j }
                                        }
                                    };
                                    c[at] as f64
                                }
                                _ => 0.0,
                            };
                            0.7f32 as f64 * ab
                                + if c.is_some() {
                                    -1.3f32 as f64 * cv
                                } else {
                                    0.0
                                }
                        })
                        .collect();
                    let name = format!("gemm tA={trans_a} tB={trans_b} C={c_shape:?}");
                    assert_close(&name, &y, &want, 1e-6);

                    let r = rng.vec(m * n);
                    let (mut da, mut db) = (vec![f32::NAN; a.len()], vec![f32::NAN; b.len()]);
                    let mut dc = c.as_ref().map(|c| vec![f32::NAN; c.len()]);
                    let dc_arg = dc.as_deref_mut().zip(c_shape.copied());
                    gemm_backward(&g, &a, &b, &r, Some(&mut da), Some(&mut db), dc_arg);
                    check_grad(&format!("dA {name}"), &a, &da, |ap| {
                        gemm_forward(&g, ap, &b, cin, &mut y);
                        weighted_sum(&y, &r)
                    });
                    check_grad(&format!("dB {name}"), &b, &db, |bp| {
                        gemm_forward(&g, &a, bp, cin, &mut y);
                        weighted_sum(&y, &r)
                    });
                    if let (Some(c), Some(dc), Some(s)) = (&c, &dc, c_shape) {
                        check_grad(&format!("dC {name}"), c, dc, |cp| {
                            gemm_forward(&g, &a, &b, Some((cp, s)), &mut y);
                            weighted_sum(&y, &r)
                        });
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_with_batch_dims() {
        let mut rng = Lcg::new(71);
        // X (2, 3, M=4, K=5) · W (5, 6): 24 rows.
        let g = MatMulGeom {
            rows: 2 * 3 * 4,
            k: 5,
            n: 6,
        };
        let x = rng.vec(g.rows * g.k);
        let w = rng.vec(g.k * g.n);
        let mut y = vec![f32::NAN; g.rows * g.n];
        matmul_forward(&g, &x, &w, None, &mut y);
        let want: Vec<f64> = (0..y.len())
            .map(|o| {
                (0..g.k)
                    .map(|p| x[(o / g.n) * g.k + p] as f64 * w[p * g.n + o % g.n] as f64)
                    .sum()
            })
            .collect();
        assert_close("matmul", &y, &want, 1e-6);
        let r = rng.vec(y.len());
        let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
        matmul_backward(&g, &x, &w, &r, Some(&mut dx), Some(&mut dw));
        check_grad("matmul dx", &x, &dx, |xp| {
            matmul_forward(&g, xp, &w, None, &mut y);
            weighted_sum(&y, &r)
        });
        check_grad("matmul dw", &w, &dw, |wp| {
            matmul_forward(&g, &x, wp, None, &mut y);
            weighted_sum(&y, &r)
        });
    }

    #[test]
    fn batch_matmul_reads_each_operand_as_told() {
        let mut rng = Lcg::new(67);
        let (batch, m, k, n) = (3, 4, 5, 2);
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                let g = BatchGeom {
                    batch,
                    m,
                    k,
                    n,
                    trans_a,
                    trans_b,
                };
                let a = rng.vec(batch * m * k);
                let b = rng.vec(batch * k * n);
                let mut y = vec![f32::NAN; batch * m * n];
                batch_matmul(&g, &a, &b, &mut y);
                let want: Vec<f64> = (0..batch * m * n)
                    .map(|o| {
                        let (s, i, j) = (o / (m * n), o / n % m, o % n);
                        let (a, b) = (&a[s * m * k..], &b[s * k * n..]);
                        (0..k)
                            .map(|p| {
                                let x = if trans_a { a[p * m + i] } else { a[i * k + p] };
                                let w = if trans_b { b[j * k + p] } else { b[p * n + j] };
                                x as f64 * w as f64
                            })
                            .sum()
                    })
                    .collect();
                assert_close(&format!("bmm {trans_a} {trans_b}"), &y, &want, 1e-5);
            }
        }
    }
}
