//! Binary arithmetic with numpy broadcasting (`Add`, `Sub`, `Mul`, `Div`), the gradient
//! summed down to a broadcast operand's shape, and gradient accumulation.

use super::room::{Backward, Lowered, OnnxNode, OnnxOut, Room, expect, shapes};
use crate::error::Result;
use crate::ir::{Graph, Node, Tensor};
use crate::onnx::shape::broadcast;
use actc_runtime::ops::{self, Empty, Kind};
use actc_runtime::plan::DType;
use petgraph::stable_graph::NodeIndex;

pub struct Elementwise;

/// `scale·dy`, times the other operand (`with_other` 1) or divided by it (2), summed down
/// to the output buffer's shape.
pub fn broadcast_grad(scale: f32, with_other: u32) -> Kind {
    Kind::BroadcastGrad(ops::BroadcastGrad { scale, with_other })
}

impl Room for Elementwise {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &["Add", "Sub", "Mul", "Div"]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::Add(_)
                | Kind::Sub(_)
                | Kind::Mul(_)
                | Kind::Div(_)
                | Kind::BroadcastGrad(_)
                | Kind::Accumulate(_)
        )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        let (x, y) = (n.arg(0)?, n.arg(1)?);
        let outputs = vec![(broadcast(&n.label, &x.shape, &y.shape)?, x.dtype)];
        if x.dtype != DType::F32 {
            return Ok(Lowered::onnx(outputs));
        }
        let kind = match n.op() {
            "Add" => Kind::Add(Empty {}),
            "Sub" => Kind::Sub(Empty {}),
            "Mul" => Kind::Mul(Empty {}),
            _ => Kind::Div(Empty {}),
        };
        Ok(Lowered::kernel(outputs, kind, vec![0, 1]))
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        match kind {
            Kind::Add(_) | Kind::Sub(_) | Kind::Mul(_) | Kind::Div(_) => {
                let s = shapes(ins, 2)?;
                let y = broadcast("", s[0], s[1]).map_err(|e| e.0)?;
                expect(outs, &[(y, DType::F32)])
            }
            // dy, [other] → d(operand): dy's shape is the operand's broadcast
            Kind::BroadcastGrad(_) => {
                let dy = shapes(ins, 1)?[0];
                let d = outs.first().ok_or("no output")?;
                match broadcast("", &d.shape, dy) {
                    Ok(b) if b == dy => Ok(()),
                    _ => Err(format!("{:?} does not broadcast to dy {dy:?}", d.shape)),
                }
            }
            Kind::Accumulate(_) => {
                let s = shapes(ins, 1)?;
                if s.iter().any(|x| *x != s[0]) {
                    return Err(format!("contributions of different shapes {s:?}"));
                }
                expect(outs, &[(s[0].to_vec(), DType::F32)])
            }
            _ => Err("not an elementwise op".into()),
        }
    }

    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        let op = match kind {
            Kind::Add(_) => "Add",
            Kind::Sub(_) => "Sub",
            Kind::Mul(_) => "Mul",
            Kind::Div(_) => "Div",
            _ => return Err("gradients have no ONNX form".into()),
        };
        out.node(op, out.inputs(), vec![]);
        Ok(())
    }

    /// A constant vector added to a linear layer's output is that layer's bias (PyTorch's
    /// `nn.Linear` on 3-D input exports MatMul + Add): it trains with it. A constant vector
    /// multiplying a linear layer's output (after its bias) is LayerScale's per-feature
    /// scale (DINOv2, CaiT): it trains too. Other constants (a LayerNorm's epsilon, a
    /// shift, attention's scale) stay as they are.
    fn params(&self, kind: &Kind, node: &Node, graph: &Graph) -> &'static [usize] {
        let is_mul = match kind {
            Kind::Add(_) => false,
            Kind::Mul(_) => true,
            _ => return &[],
        };
        let dense = |p: NodeIndex| {
            super::layer_class(graph, &graph.nodes[p]) == Some(super::LayerClass::Dense)
        };
        let linear = |i: usize| {
            graph.producer(node.inputs[i]).is_some_and(|p| {
                // A scale may follow the layer's bias Add.
                dense(p)
                    || (is_mul
                        && super::kernel(&graph.nodes[p]).is_some_and(|k| {
                            matches!(k, Kind::Add(_))
                                && !self.params(k, &graph.nodes[p], graph).is_empty()
                        }))
            })
        };
        // A float constant with one value per output feature (the last axis), shaped to
        // broadcast along it.
        let vector = |i: usize| {
            let t = graph.tensor(node.inputs[i]);
            let width = graph.tensor(node.outputs[0]).shape.last().copied();
            t.is_const()
                && t.dtype == DType::F32
                && t.shape.last().copied() == width
                && t.shape.iter().rev().skip(1).all(|&d| d == 1)
        };
        match () {
            _ if vector(1) && linear(0) => &[1],
            _ if vector(0) && linear(1) => &[0],
            _ => &[],
        }
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        matches!(
            kind,
            Kind::Add(_) | Kind::Sub(_) | Kind::Mul(_) | Kind::Div(_)
        )
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let dy = ad.dy;
        let (a, b) = (ad.input(0), ad.input(1));
        match kind {
            Kind::Add(_) | Kind::Sub(_) => {
                let sign = if matches!(kind, Kind::Sub(_)) {
                    -1.0
                } else {
                    1.0
                };
                for (i, scale) in [(0, 1.0), (1, sign)] {
                    if !ad.needs(i) {
                        continue;
                    }
                    if scale == 1.0 && ad.shape(ad.input(i)) == ad.shape(dy) {
                        // The gradient passes through unchanged: share it rather than copy it.
                        ad.pass(i, dy);
                    } else {
                        let suffix = format!("grad_{}", ["a", "b"][i]);
                        ad.grad(i, &suffix, broadcast_grad(scale, 0), vec![dy]);
                    }
                }
            }
            Kind::Mul(_) => {
                for (i, other) in [(0, b), (1, a)] {
                    if ad.needs(i) {
                        let suffix = format!("grad_{}", ["a", "b"][i]);
                        ad.grad(i, &suffix, broadcast_grad(1.0, 1), vec![dy, other]);
                    }
                }
            }
            Kind::Div(_) => {
                if ad.needs(0) {
                    ad.grad(0, "grad_a", broadcast_grad(1.0, 2), vec![dy, b]);
                }
                if ad.needs(1) {
                    // d(a/b)/db = −(a/b)/b: the output times dy, divided by b.
                    let t = ad.temp("dy_y", Kind::Mul(Empty {}), vec![dy, ad.output(0)], dy);
                    ad.grad(1, "grad_b", broadcast_grad(-1.0, 2), vec![t, b]);
                }
            }
            _ => unreachable!("differentiable admits the arithmetic ops only"),
        }
    }
}
