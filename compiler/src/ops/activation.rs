//! Pointwise activations (`Relu`, `Clip`, `LeakyRelu`, `PRelu`, `Sigmoid`, `HardSigmoid`,
//! `HardSwish`) with their gradients, and the 1-bit pass masks that replace a saved ReLU or
//! Clip input.

use super::room::{Backward, Lowered, OnnxNode, OnnxOut, Room, expect, f32_like, shapes};
use crate::error::Result;
use crate::ir::Data;
use crate::ir::{Graph, Node, Tensor};
use crate::onnx::attr_float;
use actc_runtime::ops::{self, Empty, Kind};
use actc_runtime::plan::DType;

pub struct Activations;

impl Room for Activations {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &[
            "Relu",
            "Clip",
            "LeakyRelu",
            "PRelu",
            "Sigmoid",
            "HardSigmoid",
            "HardSwish",
        ]
    }

    fn owns(&self, kind: &Kind) -> bool {
        forward(kind)
            || matches!(
                kind,
                Kind::ReluBackward(_)
                    | Kind::ClipBackward(_)
                    | Kind::LeakyReluBackward(_)
                    | Kind::PReluBackward(_)
                    | Kind::SigmoidBackward(_)
                    | Kind::HardSigmoidBackward(_)
                    | Kind::HardSwishBackward(_)
                    | Kind::PassMask(_)
                    | Kind::MaskedGrad(_)
            )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        let x = n.arg(0)?;
        let outputs = vec![(x.shape.clone(), x.dtype)];
        let a = &n.attrs;
        let kind = match n.op() {
            "Relu" => Kind::Relu(Empty {}),
            "Clip" => {
                let (min, max) = if n.opset < 11 {
                    (
                        Some(a.float("min", f32::MIN)),
                        Some(a.float("max", f32::MAX)),
                    )
                } else {
                    (n.const_f32(1, f32::MIN), n.const_f32(2, f32::MAX))
                };
                match (min, max) {
                    (Some(min), Some(max)) => Kind::Clip(ops::Clip { min, max }),
                    _ => return Ok(Lowered::onnx(outputs)),
                }
            }
            "LeakyRelu" => Kind::LeakyRelu(ops::Alpha {
                alpha: a.float("alpha", 0.01),
            }),
            "PRelu" if n.arg(1)?.is_const() => {
                return Ok(Lowered::kernel(outputs, Kind::PRelu(Empty {}), vec![0, 1]));
            }
            "PRelu" => return Ok(Lowered::onnx(outputs)),
            "Sigmoid" => Kind::Sigmoid(Empty {}),
            "HardSigmoid" => Kind::HardSigmoid(ops::HardSigmoid {
                alpha: a.float("alpha", 0.2),
                beta: a.float("beta", 0.5),
            }),
            _ => Kind::HardSwish(Empty {}),
        };
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
            Kind::PassMask(_) => {
                let words = s[0].iter().product::<usize>().div_ceil(32);
                expect(outs, &[(vec![words], DType::U32)])
            }
            Kind::PReluBackward(_) => {
                let s = shapes(ins, 3)?;
                expect(outs, &[f32_like(s[0]), f32_like(s[1])])
            }
            // (x or y or mask), dy → dx
            Kind::ReluBackward(_)
            | Kind::ClipBackward(_)
            | Kind::LeakyReluBackward(_)
            | Kind::SigmoidBackward(_)
            | Kind::HardSigmoidBackward(_)
            | Kind::HardSwishBackward(_)
            | Kind::MaskedGrad(_) => expect(outs, &[f32_like(shapes(ins, 2)?[1])]),
            _ => expect(outs, &[f32_like(s[0])]),
        }
    }

    fn params(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> &'static [usize] {
        match kind {
            Kind::PRelu(_) => &[1],
            _ => &[],
        }
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        forward(kind)
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let (x, dy) = (ad.input(0), ad.dy);
        let (grad, saved) = match kind {
            Kind::Relu(_) => (Kind::ReluBackward(Empty {}), x),
            Kind::Clip(c) => (Kind::ClipBackward(c.clone()), x),
            Kind::LeakyRelu(a) => (Kind::LeakyReluBackward(a.clone()), x),
            Kind::HardSigmoid(h) => (Kind::HardSigmoidBackward(h.clone()), x),
            Kind::HardSwish(_) => (Kind::HardSwishBackward(Empty {}), x),
            Kind::Sigmoid(_) => (Kind::SigmoidBackward(Empty {}), ad.output(0)),
            Kind::PRelu(_) => {
                // Both gradients always: the kernel makes them in one pass, and a PRelu in the
                // suffix comes after the first trained layer, so its slope trains anyway.
                let inputs = vec![x, ad.input(1), dy];
                ad.grads("grad", Kind::PReluBackward(Empty {}), inputs, &[0, 1]);
                return;
            }
            _ => unreachable!("differentiable admits the forward activations only"),
        };
        if ad.needs(0) {
            ad.grad(0, "grad_input", grad, vec![saved, dy]);
        }
    }

    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        let x = out.inputs();
        match kind {
            Kind::Relu(_) => out.node("Relu", x, vec![]),
            Kind::Sigmoid(_) => out.node("Sigmoid", x, vec![]),
            Kind::HardSwish(_) => out.node("HardSwish", x, vec![]),
            Kind::PRelu(_) => out.node("PRelu", x, vec![]),
            Kind::LeakyRelu(a) => out.node("LeakyRelu", x, vec![attr_float("alpha", a.alpha)]),
            Kind::HardSigmoid(h) => {
                let attrs = vec![attr_float("alpha", h.alpha), attr_float("beta", h.beta)];
                out.node("HardSigmoid", x, attrs)
            }
            Kind::Clip(c) if out.opset >= 11 => {
                let min = out.constant("min", &[], Data::F32(vec![c.min].into()));
                let max = out.constant("max", &[], Data::F32(vec![c.max].into()));
                out.node("Clip", vec![x[0].clone(), min, max], vec![])
            }
            Kind::Clip(c) => {
                let attrs = vec![attr_float("min", c.min), attr_float("max", c.max)];
                out.node("Clip", x, attrs)
            }
            _ => return Err("gradients and masks have no ONNX form".into()),
        }
        Ok(())
    }

    fn pass_bounds(&self, kind: &Kind) -> Option<ops::Clip> {
        match kind {
            Kind::ReluBackward(_) => Some(ops::Clip {
                min: 0.0,
                max: f32::INFINITY,
            }),
            Kind::ClipBackward(c) => Some(c.clone()),
            _ => None,
        }
    }

    fn urgent(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::PassMask(_))
    }
}

/// The forward activations: what this room imports, and what it differentiates.
fn forward(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Relu(_)
            | Kind::Clip(_)
            | Kind::LeakyRelu(_)
            | Kind::PRelu(_)
            | Kind::Sigmoid(_)
            | Kind::HardSigmoid(_)
            | Kind::HardSwish(_)
    )
}
