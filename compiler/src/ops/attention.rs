//! Products of two computed tensors: attention's `MatMul`s (q·kᵀ, then the probabilities
//! times v), batched over every axis but the last two, with their gradients, which are
//! products of the same kind with an operand read transposed.

use super::room::{Backward, Lowered, OnnxNode, OnnxOut, Room, expect, f32_like, shapes};
use crate::error::Result;
use crate::ir::{Graph, Node, Tensor};
use crate::onnx::shape::matmul_shape;
use actc_runtime::ops::{Kind, MatMulT};
use actc_runtime::plan::DType;

pub struct Attention;

/// Whether a `MatMul` of these operands is one actc runs as a batched product: two computed
/// float tensors of one rank (at least 2) with the same batch axes.
pub fn batched(a: &super::Arg, b: &super::Arg) -> bool {
    let r = a.rank();
    !a.is_const()
        && !b.is_const()
        && a.dtype == DType::F32
        && b.dtype == DType::F32
        && r >= 2
        && b.rank() == r
        && a.shape[..r - 2] == b.shape[..r - 2]
}

/// The lowering of such a `MatMul`.
pub fn import(n: &OnnxNode) -> Result<Lowered> {
    let (a, b) = (n.arg(0)?, n.arg(1)?);
    let y = matmul_shape(&n.label, &a.shape, &b.shape)?;
    let kind = Kind::BatchMatMul(MatMulT {
        trans_a: false,
        trans_b: false,
    });
    Ok(Lowered::kernel(vec![(y, DType::F32)], kind, vec![0, 1]))
}

/// The output shape of `t` on `a` and `b`.
fn product(t: &MatMulT, a: &[usize], b: &[usize]) -> std::result::Result<Vec<usize>, String> {
    let r = a.len();
    if r < 2 || b.len() != r || a[..r - 2] != b[..r - 2] {
        return Err(format!("{a:?} and {b:?} do not share their batch axes"));
    }
    let (m, k) = if t.trans_a {
        (a[r - 1], a[r - 2])
    } else {
        (a[r - 2], a[r - 1])
    };
    let (kb, n) = if t.trans_b {
        (b[r - 1], b[r - 2])
    } else {
        (b[r - 2], b[r - 1])
    };
    if k != kb {
        return Err(format!("inner dimensions {k} and {kb} differ"));
    }
    Ok(a[..r - 2].iter().copied().chain([m, n]).collect())
}

fn bmm(trans_a: bool, trans_b: bool) -> Kind {
    Kind::BatchMatMul(MatMulT { trans_a, trans_b })
}

impl Room for Attention {
    fn owns(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::BatchMatMul(_))
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        let s = shapes(ins, 2)?;
        match kind {
            Kind::BatchMatMul(t) => expect(outs, &[f32_like(&product(t, s[0], s[1])?)]),
            _ => Err("not a batched product".into()),
        }
    }

    fn differentiable(&self, _kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        true
    }

    /// With Y = A′·B′: dA′ = dY·B′ᵀ and dB′ = A′ᵀ·dY, each written in its operand's own
    /// layout by choosing which factor to read transposed.
    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let Kind::BatchMatMul(t) = kind else {
            unreachable!("the room owns one op")
        };
        let (dy, a, b) = (ad.dy, ad.input(0), ad.input(1));
        if ad.needs(0) {
            let (k, inputs) = if t.trans_a {
                (bmm(t.trans_b, true), vec![b, dy])
            } else {
                (bmm(false, !t.trans_b), vec![dy, b])
            };
            ad.grad(0, "grad_a", k, inputs);
        }
        if ad.needs(1) {
            let (k, inputs) = if t.trans_b {
                (bmm(true, t.trans_a), vec![dy, a])
            } else {
                (bmm(!t.trans_a, false), vec![a, dy])
            };
            ad.grad(1, "grad_b", k, inputs);
        }
    }

    fn flops(&self, kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let Kind::BatchMatMul(t) = kind else {
            return 0;
        };
        let a = ins.first().copied().unwrap_or(&[]);
        let r = a.len();
        let k = match (r >= 2, t.trans_a) {
            (false, _) => 0,
            (true, true) => a[r - 2],
            (true, false) => a[r - 1],
        };
        2 * outs.first().map_or(0, |y| y.iter().product::<u64>()) * k
    }

    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        match kind {
            Kind::BatchMatMul(t) if !t.trans_a && !t.trans_b => {
                out.node("MatMul", out.inputs(), vec![]);
                Ok(())
            }
            _ => Err("a product with a transposed operand is a gradient".into()),
        }
    }
}
