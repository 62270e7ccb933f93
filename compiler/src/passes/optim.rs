//! Optimizer update nodes: one per trainable weight, reading its gradient and writing the
//! weight and its optimizer state in place.

use super::autodiff::emit;
use crate::ir::{Graph, Node, NodeOp, Role, Tensor, TensorId};
use actc_runtime::ops::{self, Kind};
use actc_runtime::plan::{DType, Phase};

#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    Sgd(ops::Sgd),
    AdamW(ops::AdamW),
}

/// Appends the updates. With `clip_grad_norm`, a `GradNorm` node reads every gradient first,
/// so gradients then live until all of them exist (the planner accounts for it).
pub fn append_updates(
    graph: &mut Graph,
    grads: &[(TensorId, TensorId)],
    optimizer: &Optimizer,
    clip_grad_norm: Option<f32>,
) {
    let scale = clip_grad_norm.map(|max_norm| {
        let t = Tensor::value("grad_norm_scale", vec![1], DType::F32);
        let inputs = grads.iter().map(|&(_, g)| g).collect();
        emit(
            graph,
            "clip_grad_norm".into(),
            Kind::GradNorm(ops::Scale { scale: max_norm }),
            inputs,
            vec![t],
            Phase::Backward,
            None,
        )[0]
    });
    for &(param, grad) in grads {
        let name = graph.tensor(param).name.clone();
        let shape = graph.tensor(param).shape.clone();
        let mut state = |suffix: &str, copies: usize| {
            let mut shape = shape.clone();
            if copies > 1 {
                shape.insert(0, copies);
            }
            graph.add_tensor(Tensor {
                role: Role::OptimizerState,
                ..Tensor::value(format!("{name}.{suffix}"), shape, DType::F32)
            })
        };
        let (kind, mut inputs) = match optimizer {
            Optimizer::Sgd(s) if s.momentum != 0.0 => (
                Kind::SgdUpdate(s.clone()),
                vec![param, grad, state("momentum", 1)],
            ),
            Optimizer::Sgd(s) => (Kind::SgdUpdate(s.clone()), vec![param, grad]),
            Optimizer::AdamW(a) => (
                Kind::AdamWUpdate(a.clone()),
                vec![param, grad, state("adam_moments", 2)],
            ),
        };
        inputs.extend(scale);
        // Every other reader of the weight (the input-gradient of its own layer) must run
        // before the weight changes: order edges from them to the update.
        let readers: Vec<_> = graph.consumers(param).collect();
        let origin = readers.first().map(|&r| graph.nodes[r].name.clone());
        let update = graph.add_node(Node {
            name: format!("{name}/update"),
            op: NodeOp::Kernel(kind),
            inputs,
            outputs: vec![],
            phase: Phase::Update,
            source: None,
            origin,
        });
        for r in readers {
            graph.nodes.add_edge(r, update, param);
        }
    }
}
