//! Pointwise activations (`Relu`, `Clip`, `LeakyRelu`, `PRelu`, `Sigmoid`, `HardSigmoid`,
//! `HardSwish`, `Tanh`, `Gelu`) with their gradients, and the 1-bit pass masks that replace a
//! saved ReLU or Clip input. Exporters without the Gelu op (before opset 20) write its exact
//! form as Div by √2, Erf, Add 1, Mul by x, Mul by ½; [`Room::rewrite`] turns that back into
//! the one op, and an opset without it gets the pattern back on export.

use super::room::{Backward, Lowered, OnnxNode, OnnxOut, Room, expect, f32_like, kernel, shapes};
use crate::error::Result;
use crate::ir::Data;
use crate::ir::{Graph, Node, NodeOp, Tensor, TensorId};
use crate::onnx::proto::NodeProto;
use crate::onnx::{attr_float, attr_string};
use actc_runtime::ops::{self, Empty, Kind};
use actc_runtime::plan::DType;
use actc_runtime::plan::Phase;
use petgraph::stable_graph::NodeIndex;

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
            "Tanh",
            "Gelu",
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
                    | Kind::TanhBackward(_)
                    | Kind::GeluBackward(_)
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
            "Tanh" => Kind::Tanh(Empty {}),
            "Gelu" => match a.string("approximate", "none").as_str() {
                "none" => Kind::Gelu(ops::Gelu { tanh: false }),
                "tanh" => Kind::Gelu(ops::Gelu { tanh: true }),
                other => crate::bail!(
                    "node '{}': Gelu approximate '{other}' is not an ONNX value (none or tanh)",
                    n.label
                ),
            },
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
            | Kind::TanhBackward(_)
            | Kind::GeluBackward(_)
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
            Kind::Tanh(_) => (Kind::TanhBackward(Empty {}), ad.output(0)),
            Kind::Gelu(g) => (Kind::GeluBackward(g.clone()), x),
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
            Kind::Tanh(_) => out.node("Tanh", x, vec![]),
            Kind::Gelu(g) if out.opset >= 20 => {
                let mode = if g.tanh { "tanh" } else { "none" };
                out.node("Gelu", x, vec![attr_string("approximate", mode)])
            }
            Kind::Gelu(g) if !g.tanh => gelu_pattern(out),
            Kind::Gelu(_) => return Err("GELU's tanh form needs opset 20".into()),
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

    fn rewrite(&self, graph: &mut Graph) -> Result<()> {
        fuse_gelus(graph);
        Ok(())
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
            | Kind::Tanh(_)
            | Kind::Gelu(_)
    )
}

/// GELU's exact form as ops before opset 20 spell it: x·½·(1 + erf(x/√2)).
fn gelu_pattern(out: &mut OnnxOut) {
    let x = out.inputs()[0].clone();
    let y = out.outs[0].name.clone();
    let sqrt2 = out.constant(
        "sqrt2",
        &[],
        Data::F32(vec![std::f32::consts::SQRT_2].into()),
    );
    let one = out.constant("one", &[], Data::F32(vec![1.0].into()));
    let half = out.constant("half", &[], Data::F32(vec![0.5].into()));
    let t = |s: &str| format!("{}/{s}", out.name);
    let steps = [
        ("Div", vec![x.clone(), sqrt2], t("scaled")),
        ("Erf", vec![t("scaled")], t("erf")),
        ("Add", vec![t("erf"), one], t("cdf2")),
        ("Mul", vec![x, t("cdf2")], t("twice")),
        ("Mul", vec![t("twice"), half], y),
    ];
    for (i, (op, input, output)) in steps.into_iter().enumerate() {
        out.nodes.push(NodeProto {
            name: Some(format!("{}/{i}", out.name)),
            op_type: Some(op.to_string()),
            input,
            output: vec![output],
            ..Default::default()
        });
    }
}

/// The exact GELU spelled as Div(x, √2), Erf, Add 1, Mul x, Mul ½ ending at the last Mul
/// `mul`: the nodes to replace, x and y. The intermediate values must have no other reader.
fn gelu_erf(g: &Graph, mul: NodeIndex) -> Option<(Vec<NodeIndex>, TensorId, TensorId)> {
    let kind = |n: NodeIndex| kernel(&g.nodes[n]);
    let scalar = |t: TensorId, v: f32| {
        let t = g.tensor(t);
        t.is_const()
            && t.numel() == 1
            && t.data
                .as_ref()
                .and_then(|d| d.as_f32().first().copied())
                .is_some_and(|c| (c - v).abs() < 1e-6 * v.abs().max(1.0))
    };
    // The operand of binary node `n` other than constant `v` (either order).
    let other = |n: NodeIndex, v: f32| {
        let ins = &g.nodes[n].inputs;
        match ins[..] {
            [a, b] if scalar(b, v) => Some(a),
            [a, b] if scalar(a, v) => Some(b),
            _ => None,
        }
    };
    let only_reader = |t: TensorId| {
        let readers: Vec<_> = g.consumers(t).collect();
        (readers.len() == 1 && !g.outputs.contains(&t)).then(|| readers[0])
    };
    matches!(kind(mul), Some(Kind::Mul(_))).then_some(())?;
    let twice = other(mul, 0.5)?;
    let mul_x = g.producer(twice)?;
    matches!(kind(mul_x), Some(Kind::Mul(_))).then_some(())?;
    // Mul(x, 1 + erf(x/√2)): one operand is the Add, the other is x (either order, and x
    // may come from an Add too, a linear layer's bias).
    let chain = |a: TensorId, x: TensorId| {
        let add = g.producer(a)?;
        matches!(kind(add), Some(Kind::Add(_))).then_some(())?;
        let erf_out = other(add, 1.0)?;
        let erf = g.producer(erf_out)?;
        matches!(&g.nodes[erf].op, NodeOp::Onnx(p) if p.op_type() == "Erf").then_some(())?;
        let div = g.producer(g.nodes[erf].inputs[0])?;
        let scaled = match kind(div) {
            Some(Kind::Div(_)) => {
                let [n, d] = g.nodes[div].inputs[..] else {
                    return None;
                };
                (n == x && scalar(d, std::f32::consts::SQRT_2)).then_some(())
            }
            Some(Kind::Mul(_)) => {
                (other(div, std::f32::consts::FRAC_1_SQRT_2) == Some(x)).then_some(())
            }
            _ => None,
        };
        scaled.map(|_| (add, erf_out, erf, div, x))
    };
    let [p, q] = g.nodes[mul_x].inputs[..] else {
        return None;
    };
    let (add, erf_out, erf, div, x) = chain(p, q).or_else(|| chain(q, p))?;
    let inner = [
        g.nodes[div].outputs[0],
        erf_out,
        g.nodes[add].outputs[0],
        twice,
    ];
    inner
        .iter()
        .all(|&t| only_reader(t).is_some())
        .then_some(())?;
    Some((vec![div, erf, add, mul_x, mul], x, g.nodes[mul].outputs[0]))
}

fn fuse_gelus(g: &mut Graph) {
    for mul in g.topo_order() {
        if !g.nodes.contains_node(mul) {
            continue;
        }
        let Some((nodes, x, y)) = gelu_erf(g, mul) else {
            continue;
        };
        let name = format!("{} (Gelu)", g.nodes[mul].name);
        for n in nodes {
            g.remove_node(n);
        }
        g.add_node_in_place(Node {
            name,
            op: NodeOp::Kernel(Kind::Gelu(ops::Gelu { tanh: false })),
            inputs: vec![x],
            outputs: vec![y],
            phase: Phase::Forward,
            source: None,
            origin: None,
        });
    }
}
