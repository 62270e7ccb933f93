//! `Softmax` on one axis, and the losses training appends after the model's output
//! (softmax cross-entropy, mean squared error) with their gradients.

use super::room::{Backward, Lowered, OnnxNode, Room, expect, f32_like, shapes};
use crate::error::Result;
use crate::ir::{Graph, Node, Tensor};
use crate::onnx::shape::norm_axis;
use actc_runtime::ops::{self, Kind};
use actc_runtime::plan::DType;

pub struct SoftmaxAndLosses;

impl Room for SoftmaxAndLosses {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &["Softmax"]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::Softmax(_)
                | Kind::SoftmaxBackward(_)
                | Kind::SoftmaxCrossEntropy(_)
                | Kind::SoftmaxCrossEntropyBackward(_)
                | Kind::Mse(_)
                | Kind::MseBackward(_)
        )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        let x = n.arg(0)?;
        let outputs = vec![(x.shape.clone(), x.dtype)];
        let rank = x.rank();
        let default = if n.opset >= 13 { -1 } else { 1 };
        let axis = norm_axis(&n.label, n.attrs.int("axis", default), rank)?;
        // Before opset 13 Softmax flattened everything from `axis` on; that equals a
        // softmax over one axis only when it is the last.
        if n.opset < 13 && axis != rank - 1 {
            return Ok(Lowered::onnx(outputs));
        }
        let kind = Kind::Softmax(ops::Axis { axis: axis as i32 });
        Ok(Lowered::kernel(outputs, kind, vec![0]))
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        let s = shapes(ins, 1)?;
        match kind {
            Kind::Softmax(_) => expect(outs, &[f32_like(s[0])]),
            // y, dy → dx
            Kind::SoftmaxBackward(_) => expect(outs, &[f32_like(shapes(ins, 2)?[1])]),
            // logits (B, K), labels (B) → loss, probabilities
            Kind::SoftmaxCrossEntropy(_) => {
                let labels = shapes(ins, 2)?[1];
                if s[0].len() != 2 || labels != [s[0][0]] {
                    return Err(format!("logits {:?} and labels {labels:?}", s[0]));
                }
                expect(outs, &[(vec![], DType::F32), f32_like(s[0])])
            }
            Kind::SoftmaxCrossEntropyBackward(_) | Kind::MseBackward(_) => {
                expect(outs, &[f32_like(s[0])])
            }
            Kind::Mse(_) => expect(outs, &[(vec![], DType::F32)]),
            _ => Err("not a softmax or loss op".into()),
        }
    }

    fn mixes_batch(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::Softmax(a) if a.axis == 0)
    }

    fn softmax_axis(&self, kind: &Kind) -> Option<usize> {
        match kind {
            Kind::Softmax(a) => Some(a.axis as usize),
            _ => None,
        }
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        matches!(kind, Kind::Softmax(_))
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let Kind::Softmax(a) = kind else {
            unreachable!("only Softmax is differentiable")
        };
        if ad.needs(0) {
            let inputs = vec![ad.output(0), ad.dy];
            ad.grad(0, "grad_input", Kind::SoftmaxBackward(a.clone()), inputs);
        }
    }
}
