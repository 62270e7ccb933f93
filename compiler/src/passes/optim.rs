//! Optimizer update nodes: one per trainable weight, reading its gradient and writing the
//! weight and its optimizer state in place.

use crate::ir::{Graph, Node, NodeOp, Role, Tensor, TensorId};
use crate::ops;
use actc_runtime::ops::{self as rt, Kind};
use actc_runtime::plan::{DType, Phase};
use petgraph::stable_graph::NodeIndex;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    Sgd(rt::Sgd),
    AdamW(rt::AdamW),
}

/// Appends the updates. With `clip_grad_norm`, a `GradNorm` node reads every gradient first,
/// so gradients then live until all of them exist (the planner accounts for it). With
/// `fuse`, a conv weight gradient that only its SGD update reads is stored by its product
/// straight into the update ([`fusable_weight_grad`]). `lr_scales`: the weights whose SGD
/// rate is a multiple of the plan's (`lowrank::rate`).
pub fn append_updates(
    graph: &mut Graph,
    grads: &[(TensorId, TensorId)],
    lr_scales: &BTreeMap<TensorId, f32>,
    optimizer: &Optimizer,
    clip_grad_norm: Option<f32>,
    fuse: bool,
) {
    let scale = clip_grad_norm.map(|max_norm| {
        let t = Tensor::value("grad_norm_scale", vec![1], DType::F32);
        let inputs = grads.iter().map(|&(_, g)| g).collect();
        graph.push(
            "clip_grad_norm".into(),
            Kind::GradNorm(rt::Scale { scale: max_norm }),
            inputs,
            vec![t],
            Phase::Backward,
            None,
        )[0]
    });
    for &(param, grad) in grads {
        let optimizer = &match optimizer {
            Optimizer::Sgd(s) => Optimizer::Sgd(rt::Sgd {
                lr_scale: lr_scales.get(&param).copied(),
                ..s.clone()
            }),
            other => other.clone(),
        };
        if fuse
            && scale.is_none()
            && let Optimizer::Sgd(sgd) = optimizer
            && let Some((p, kind)) = fusable_weight_grad(graph, grad, sgd)
        {
            fuse_update(graph, param, p, kind, sgd);
            continue;
        }
        let (kind, mut inputs) = match optimizer {
            Optimizer::Sgd(s) if s.momentum != 0.0 => (
                Kind::SgdUpdate(s.clone()),
                vec![param, grad, state(graph, param, "momentum", 1)],
            ),
            Optimizer::Sgd(s) => (Kind::SgdUpdate(s.clone()), vec![param, grad]),
            Optimizer::AdamW(a) => (
                Kind::AdamWUpdate(a.clone()),
                vec![param, grad, state(graph, param, "adam_moments", 2)],
            ),
        };
        inputs.extend(scale);
        // Every other reader of the weight (the input-gradient of its own layer) must run
        // before the weight changes: order edges from them to the update.
        let readers: Vec<_> = graph.consumers(param).collect();
        let origin = readers.first().map(|&r| graph.nodes[r].name.clone());
        add_update(graph, param, kind, inputs, origin, &readers);
    }
}

/// The node computing `grad` and the op that stores it by its product straight into the
/// SGD update (`optim::Sgd::step_fused`), when its room has one and nothing else reads the
/// gradient. The gradient buffer then goes from the plan: the largest buffers of a
/// MobileNet's last layers' backward.
fn fusable_weight_grad(graph: &Graph, grad: TensorId, sgd: &rt::Sgd) -> Option<(NodeIndex, Kind)> {
    let p = graph.producer(grad)?;
    let node = &graph.nodes[p];
    let alone = graph.consumers(grad).next().is_none() && !graph.outputs.contains(&grad);
    let (room, kind) = ops::room_of_node(node).filter(|_| alone)?;
    let ins: Vec<_> = node.inputs.iter().map(|&t| graph.tensor(t)).collect();
    Some((p, room.with_sgd(kind, &ins, graph.tensor(grad), sgd)?))
}

/// Replaces weight-gradient node `p` of `param` with `kind`, which updates `param` from it.
fn fuse_update(graph: &mut Graph, param: TensorId, p: NodeIndex, kind: Kind, sgd: &rt::Sgd) {
    let mut inputs = graph.nodes[p].inputs.clone();
    inputs.push(param);
    if sgd.momentum != 0.0 {
        inputs.push(state(graph, param, "momentum", 1));
    }
    let readers: Vec<_> = graph.consumers(param).collect();
    let origin = graph.nodes[p].origin.clone();
    graph.remove_node(p);
    add_update(graph, param, kind, inputs, origin, &readers);
}

/// An optimizer state tensor of `param`: `copies` of its shape.
fn state(graph: &mut Graph, param: TensorId, suffix: &str, copies: usize) -> TensorId {
    let t = graph.tensor(param);
    let mut shape = t.shape.clone();
    if copies > 1 {
        shape.insert(0, copies);
    }
    let name = format!("{}.{suffix}", t.name);
    graph.add_tensor(Tensor {
        role: Role::OptimizerState,
        ..Tensor::value(name, shape, DType::F32)
    })
}

/// The update node of `param`, after every other reader of it (`readers`: the weight must
/// not change before they have read it).
fn add_update(
    graph: &mut Graph,
    param: TensorId,
    kind: Kind,
    inputs: Vec<TensorId>,
    origin: Option<String>,
    readers: &[NodeIndex],
) {
    let update = graph.add_node(Node {
        name: format!("{}/update", graph.tensor(param).name),
        op: NodeOp::Kernel(kind),
        inputs,
        outputs: vec![],
        phase: Phase::Update,
        source: None,
        origin,
    });
    for &r in readers {
        graph.nodes.add_edge(r, update, param);
    }
}
