//! Normalizations: `BatchNormalization` with running statistics (eval mode, as fine-tuning
//! in the reference keeps it; its parameters stay frozen), and `LayerNormalization` over the
//! trailing axes, whose scale and bias train. Older exporters spell a LayerNorm out as
//! ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add; [`Room::rewrite`] turns that
//! back into the one op, and an opset without it gets the pattern back on export.

use super::room::{Backward, Lowered, OnnxNode, OnnxOut, Room, expect, f32_like, kernel, shapes};
use crate::bail;
use crate::error::Result;
use crate::ir::{Data, Graph, Node, NodeOp, Tensor, TensorId};
use crate::onnx::proto::NodeProto;
use crate::onnx::shape::norm_axis;
use crate::onnx::{attr_float, attr_int, attr_ints};
use actc_runtime::ops::{self, Kind};
use actc_runtime::plan::{DType, Phase};
use petgraph::stable_graph::NodeIndex;
use std::collections::BTreeSet;

pub struct Norms;

impl Room for Norms {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &["BatchNormalization", "LayerNormalization"]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::BatchNorm(_)
                | Kind::BatchNormBackward(_)
                | Kind::LayerNorm(_)
                | Kind::LayerNormBackward(_)
        )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        if n.op() == "LayerNormalization" {
            return import_layer_norm(n);
        }
        if n.proto.output.len() > 1 && n.attrs.int("training_mode", 0) != 0 {
            bail!(
                "node '{}' (BatchNormalization) is in training mode; export the model in eval mode",
                n.label
            );
        }
        let x = n.arg(0)?;
        let outputs = vec![(x.shape.clone(), x.dtype)];
        let frozen = (1..5).all(|i| n.args.get(i).is_some_and(|a| a.is_const()));
        if x.rank() != 4 || !frozen {
            return Ok(Lowered::onnx(outputs));
        }
        let kind = Kind::BatchNorm(ops::Epsilon {
            epsilon: n.attrs.float("epsilon", 1e-5),
        });
        Ok(Lowered::kernel(outputs, kind, vec![0, 1, 2, 3, 4]))
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        if let Kind::LayerNorm(l) | Kind::LayerNormBackward(l) = kind {
            return check_layer_norm(kind, l, ins, outs);
        }
        // x (or dy), scale, bias, mean, var → y (or dx)
        let s = shapes(ins, 5)?;
        let c = *s[0].get(1).ok_or("no channel axis")?;
        if s[1..5].iter().any(|p| *p != [c]) {
            return Err(format!(
                "parameters {:?} do not have {c} channels",
                &s[1..5]
            ));
        }
        match kind {
            Kind::BatchNorm(_) | Kind::BatchNormBackward(_) => {
                expect(outs, &[(s[0].to_vec(), DType::F32)])
            }
            _ => Err("not a norm op".into()),
        }
    }

    fn params(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> &'static [usize] {
        match kind {
            Kind::LayerNorm(_) => &[1, 2],
            _ => &[],
        }
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        matches!(kind, Kind::BatchNorm(_) | Kind::LayerNorm(_))
    }

    fn rewrite(&self, graph: &mut Graph) -> Result<()> {
        self.fuse_layer_norms(graph);
        Ok(())
    }

    fn mixes_batch(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::LayerNorm(l) if l.axis == 0)
    }

    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        let Kind::LayerNorm(l) = kind else {
            return Err("gradients have no ONNX form".into());
        };
        let names: Vec<String> = out.outs.iter().map(|t| t.name.clone()).collect();
        let ins = out.inputs();
        if out.opset >= 17 {
            let attrs = vec![
                attr_int("axis", l.axis as i64),
                attr_float("epsilon", l.epsilon),
            ];
            out.node("LayerNormalization", ins, attrs);
            return Ok(());
        }
        // Before opset 17: the pattern older exporters write, with the node's mean output.
        let rank = out.ins[0].shape.len() as i64;
        let axes = attr_ints("axes", &(l.axis as i64..rank).collect::<Vec<_>>());
        let eps = out.constant("epsilon", &[], Data::F32(vec![l.epsilon].into()));
        let t = |s: &str| format!("{}/{s}", out.name);
        let mut steps = vec![
            (
                "ReduceMean",
                vec![ins[0].clone()],
                names[1].clone(),
                vec![axes.clone()],
            ),
            (
                "Sub",
                vec![ins[0].clone(), names[1].clone()],
                t("centered"),
                vec![],
            ),
            (
                "Mul",
                vec![t("centered"), t("centered")],
                t("squared"),
                vec![],
            ),
            ("ReduceMean", vec![t("squared")], t("variance"), vec![axes]),
            ("Add", vec![t("variance"), eps], t("shifted"), vec![]),
            ("Sqrt", vec![t("shifted")], t("std"), vec![]),
            (
                "Div",
                vec![t("centered"), t("std")],
                t("normalized"),
                vec![],
            ),
        ];
        let scaled = if ins.len() > 2 {
            t("scaled")
        } else {
            names[0].clone()
        };
        steps.push((
            "Mul",
            vec![t("normalized"), ins[1].clone()],
            scaled.clone(),
            vec![],
        ));
        if ins.len() > 2 {
            steps.push((
                "Add",
                vec![scaled, ins[2].clone()],
                names[0].clone(),
                vec![],
            ));
        }
        for (i, (op, input, output, attribute)) in steps.into_iter().enumerate() {
            out.nodes.push(NodeProto {
                name: Some(format!("{}/{i}", out.name)),
                op_type: Some(op.to_string()),
                input,
                output: vec![output],
                attribute,
                ..Default::default()
            });
        }
        Ok(())
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        if let Kind::LayerNorm(l) = kind {
            // One pass makes all three gradients; the statistics come from the forward.
            let inputs = vec![ad.input(0), ad.input(1), ad.output(1), ad.output(2), ad.dy];
            let of: &[usize] = if ad.inputs().len() > 2 {
                &[0, 1, 2]
            } else {
                &[0, 1]
            };
            ad.grads("grad", Kind::LayerNormBackward(l.clone()), inputs, of);
            return;
        }
        let Kind::BatchNorm(e) = kind else {
            unreachable!("only BatchNorm and LayerNorm are differentiable")
        };
        if ad.needs(0) {
            let mut inputs = vec![ad.dy];
            inputs.extend(&ad.inputs()[1..5]);
            ad.grad(0, "grad_input", Kind::BatchNormBackward(e.clone()), inputs);
        }
    }
}

fn import_layer_norm(n: &OnnxNode) -> Result<Lowered> {
    let x = n.arg(0)?;
    let axis = norm_axis(&n.label, n.attrs.int("axis", -1), x.rank())?;
    let epsilon = n.attrs.float("epsilon", 1e-5);
    let stats = stats_shape(&x.shape, axis);
    let mut outputs = vec![(x.shape.clone(), x.dtype)];
    outputs.extend((1..n.proto.output.len()).map(|_| (stats.clone(), DType::F32)));
    let inner: usize = x.shape[axis..].iter().product();
    let fits = |i: usize| {
        n.args
            .get(i)
            .is_none_or(|a| a.is_const() && a.shape.iter().product::<usize>() == inner)
    };
    if x.dtype != DType::F32 || !fits(1) || !fits(2) {
        return Ok(Lowered::onnx(outputs));
    }
    outputs.resize(3, (stats, DType::F32));
    let kind = Kind::LayerNorm(ops::LayerNorm {
        axis: axis as u32,
        epsilon,
    });
    Ok(Lowered::kernel(
        outputs,
        kind,
        (0..n.args.len().min(3)).collect(),
    ))
}

/// The shape of the per-row statistics: the axes before `axis`, then 1s (as ONNX's Mean).
fn stats_shape(x: &[usize], axis: usize) -> Vec<usize> {
    (0..x.len())
        .map(|i| if i < axis { x[i] } else { 1 })
        .collect()
}

fn check_layer_norm(
    kind: &Kind,
    l: &ops::LayerNorm,
    ins: &[&Tensor],
    outs: &[&Tensor],
) -> std::result::Result<(), String> {
    let s = shapes(ins, 2)?;
    let (x, axis) = (s[0], l.axis as usize);
    if axis >= x.len() {
        return Err(format!("axis {axis} of {x:?}"));
    }
    let inner: usize = x[axis..].iter().product();
    let param = |t: &[usize]| t.iter().product::<usize>() == inner;
    let stats = (stats_shape(x, axis), DType::F32);
    match kind {
        // x, scale, [bias] → y, mean, inv_std
        Kind::LayerNorm(_) => {
            if !s[1..].iter().all(|p| param(p)) {
                return Err(format!(
                    "parameters {:?} do not have {inner} values",
                    &s[1..]
                ));
            }
            expect(outs, &[f32_like(x), stats.clone(), stats])
        }
        // x, scale, mean, inv_std, dy → dx, dscale, [dbias]
        _ => {
            let s = shapes(ins, 5)?;
            if s[2] != stats.0 || s[3] != stats.0 || s[4] != x || !param(s[1]) {
                return Err(format!("inputs {s:?} do not fit a LayerNorm of {x:?}"));
            }
            let mut want = vec![f32_like(x), f32_like(s[1])];
            if outs.len() > 2 {
                want.push(f32_like(s[1]));
            }
            expect(outs, &want)
        }
    }
}

/// The decomposed LayerNorm ending at Div node `div` (x − mean, divided by the square root of
/// the variance plus ε), then a Mul by a constant scale and an Add of a constant bias: the
/// nodes to replace, x, the axis, ε, scale, bias and the output.
struct Decomposed {
    nodes: Vec<NodeIndex>,
    x: TensorId,
    axis: usize,
    epsilon: f32,
    scale: TensorId,
    bias: TensorId,
    y: TensorId,
}

fn decomposed(g: &Graph, div: NodeIndex) -> Option<Decomposed> {
    let kind_of = |n: NodeIndex| kernel(&g.nodes[n]);
    let onnx_op = |n: NodeIndex| match &g.nodes[n].op {
        NodeOp::Onnx(p) => Some(p.op_type().to_string()),
        NodeOp::Kernel(_) => None,
    };
    let producer = |t: TensorId| g.producer(t);
    let only_reader = |t: TensorId| {
        let readers: Vec<_> = g.consumers(t).collect();
        (readers.len() == 1 && !g.outputs.contains(&t)).then(|| readers[0])
    };
    let constant = |t: TensorId| g.tensor(t).data.clone();
    // (the other input, the node) of a binary node reading `t` alone, for Mul and Add
    let with_const = |n: NodeIndex, t: TensorId| {
        let ins = &g.nodes[n].inputs;
        let other = if ins[0] == t { ins[1] } else { ins[0] };
        (ins.len() == 2 && ins.contains(&t) && g.tensor(other).is_const()).then_some(other)
    };

    let d_node = &g.nodes[div];
    if !matches!(kind_of(div), Some(Kind::Div(_))) {
        return None;
    }
    let (d, s) = (d_node.inputs[0], d_node.inputs[1]);
    let sqrt = producer(s)?;
    (onnx_op(sqrt)? == "Sqrt").then_some(())?;
    let add_eps = producer(g.nodes[sqrt].inputs[0])?;
    matches!(kind_of(add_eps), Some(Kind::Add(_))).then_some(())?;
    let var_t = g.nodes[add_eps]
        .inputs
        .iter()
        .copied()
        .find(|&t| !g.tensor(t).is_const())?;
    let eps = with_const(add_eps, var_t)?;
    let epsilon = *constant(eps)?.as_f32().first()?;
    let var = producer(var_t)?;
    let Some(Kind::ReduceMean(var_axes)) = kind_of(var) else {
        return None;
    };
    let pow = producer(g.nodes[var].inputs[0])?;
    (onnx_op(pow)? == "Pow" && g.nodes[pow].inputs[0] == d).then_some(())?;
    let two = constant(*g.nodes[pow].inputs.get(1)?)?;
    (two.as_f32() == [2.0]).then_some(())?;
    let sub = producer(d)?;
    matches!(kind_of(sub), Some(Kind::Sub(_))).then_some(())?;
    let (x, mean_t) = (g.nodes[sub].inputs[0], g.nodes[sub].inputs[1]);
    let mean = producer(mean_t)?;
    let Some(Kind::ReduceMean(mean_axes)) = kind_of(mean) else {
        return None;
    };
    (g.nodes[mean].inputs[0] == x && mean_axes == var_axes).then_some(())?;
    let rank = g.tensor(x).shape.len();
    let axis = rank.checked_sub(mean_axes.axes.len())?;
    let trailing: Vec<u32> = (axis as u32..rank as u32).collect();
    (mean_axes.axes == trailing).then_some(())?;
    // The affine part, and no other reader of anything in between.
    let n_out = d_node.outputs[0];
    let mul = only_reader(n_out)?;
    matches!(kind_of(mul), Some(Kind::Mul(_))).then_some(())?;
    let scale = with_const(mul, n_out)?;
    let m_out = g.nodes[mul].outputs[0];
    let add = only_reader(m_out)?;
    matches!(kind_of(add), Some(Kind::Add(_))).then_some(())?;
    let bias = with_const(add, m_out)?;
    let inner: usize = g.tensor(x).shape[axis..].iter().product();
    let fits = |t: TensorId| g.tensor(t).numel() == inner && g.tensor(t).dtype == DType::F32;
    (fits(scale) && fits(bias)).then_some(())?;
    let d_readers: BTreeSet<_> = g.consumers(d).collect();
    let alone = [
        mean_t,
        g.nodes[pow].outputs[0],
        var_t,
        g.nodes[add_eps].outputs[0],
        s,
    ]
    .iter()
    .all(|&t| only_reader(t).is_some())
        && d_readers == BTreeSet::from([pow, div]);
    alone.then_some(Decomposed {
        nodes: vec![mean, sub, pow, var, add_eps, sqrt, div, mul, add],
        x,
        axis,
        epsilon,
        scale,
        bias,
        y: g.nodes[add].outputs[0],
    })
}

impl Norms {
    fn fuse_layer_norms(&self, g: &mut Graph) {
        let divs: Vec<_> = g.topo_order();
        for div in divs {
            if !g.nodes.contains_node(div) {
                continue;
            }
            let Some(p) = decomposed(g, div) else {
                continue;
            };
            let name = format!("{} (LayerNormalization)", g.nodes[div].name);
            let stats = stats_shape(&g.tensor(p.x).shape, p.axis);
            let y_name = g.tensor(p.y).name.clone();
            for n in &p.nodes {
                g.remove_node(*n);
            }
            let mut outputs = vec![p.y];
            for what in ["mean", "inv_std"] {
                let t = Tensor::value(format!("{y_name}:{what}"), stats.clone(), DType::F32);
                outputs.push(g.add_tensor(t));
            }
            let kind = Kind::LayerNorm(ops::LayerNorm {
                axis: p.axis as u32,
                epsilon: p.epsilon,
            });
            g.add_node_in_place(Node {
                name,
                op: NodeOp::Kernel(kind),
                inputs: vec![p.x, p.scale, p.bias],
                outputs,
                phase: Phase::Forward,
                source: None,
                origin: None,
            });
        }
    }
}
