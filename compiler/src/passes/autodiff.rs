//! `autodiff`: reverse-mode differentiation of the suffix. Walks the forward nodes backwards
//! from the loss and emits, per op, the nodes that compute the gradients its inputs need.
//! Only values computed in the suffix and trainable weights get gradients: nothing flows into
//! the boundary tensors or the frozen constants.

use crate::ir::{Graph, Node, NodeOp, Role, Tensor, TensorId};
use actc_runtime::ops::{self, Empty, Kind, PoolKind};
use actc_runtime::plan::{DType, Phase};
use petgraph::stable_graph::NodeIndex;
use std::collections::BTreeMap;

/// Adds a node and the tensors it writes; returns their ids.
pub fn emit(
    graph: &mut Graph,
    name: String,
    kind: Kind,
    inputs: Vec<TensorId>,
    outputs: Vec<Tensor>,
    phase: Phase,
    origin: Option<String>,
) -> Vec<TensorId> {
    let ids: Vec<TensorId> = outputs.into_iter().map(|t| graph.add_tensor(t)).collect();
    graph.add_node(Node {
        name,
        op: NodeOp::Kernel(kind),
        inputs,
        outputs: ids.clone(),
        phase,
        source: None,
        origin,
    });
    ids
}

fn grad_tensor(graph: &Graph, of: TensorId, suffix: &str) -> Tensor {
    let t = graph.tensor(of);
    Tensor {
        role: Role::Gradient,
        ..Tensor::value(format!("{}.{suffix}", t.name), t.shape.clone(), DType::F32)
    }
}

/// Differentiates the forward nodes of `graph`, starting from `seed` (the gradient of the
/// loss with respect to `seed_of`). Returns each trainable weight with its gradient, in the
/// order the weights are first used.
pub fn differentiate(
    graph: &mut Graph,
    forward: &[NodeIndex],
    seed_of: TensorId,
    seed: TensorId,
) -> Vec<(TensorId, TensorId)> {
    let mut contributions: BTreeMap<TensorId, Vec<TensorId>> = BTreeMap::new();
    contributions.entry(seed_of).or_default().push(seed);

    for &n in forward.iter().rev() {
        let node = graph.nodes[n].clone();
        let mut dys = Vec::with_capacity(node.outputs.len());
        for &o in &node.outputs {
            dys.push(total_gradient(graph, &mut contributions, o));
        }
        let Some(dy) = dys[0] else { continue };
        let NodeOp::Kernel(kind) = &node.op else {
            continue;
        };
        let grads = backward(graph, n, &node, kind, dy);
        for (input, g) in grads {
            contributions.entry(input).or_default().push(g);
        }
    }

    let mut params: Vec<TensorId> = Vec::new();
    for &n in forward {
        for &t in &graph.nodes[n].inputs {
            if graph.tensor(t).role == Role::Trainable && !params.contains(&t) {
                params.push(t);
            }
        }
    }
    params
        .into_iter()
        .filter_map(|p| total_gradient(graph, &mut contributions, p).map(|g| (p, g)))
        .collect()
}

/// The gradient of `t` summed over its contributions (an `Accumulate` node when several).
fn total_gradient(
    graph: &mut Graph,
    contributions: &mut BTreeMap<TensorId, Vec<TensorId>>,
    t: TensorId,
) -> Option<TensorId> {
    let parts = contributions.remove(&t)?;
    if parts.len() == 1 {
        return Some(parts[0]);
    }
    let name = graph.tensor(t).name.clone();
    let out = grad_tensor(graph, t, "grad");
    let origin = graph.producer(t).map(|p| graph.nodes[p].name.clone());
    Some(
        emit(
            graph,
            format!("{name}/accumulate_grad"),
            Kind::Accumulate(Empty {}),
            parts,
            vec![out],
            Phase::Backward,
            origin,
        )[0],
    )
}

fn needs_grad(graph: &Graph, t: TensorId) -> bool {
    graph.tensor(t).role == Role::Trainable || graph.producer(t).is_some()
}

/// Emits the backward nodes of one forward node; returns (input, gradient contribution).
fn backward(
    graph: &mut Graph,
    n: NodeIndex,
    node: &Node,
    kind: &Kind,
    dy: TensorId,
) -> Vec<(TensorId, TensorId)> {
    let ins = &node.inputs;
    let y = node.outputs[0];
    let name = node.name.clone();
    let mut out = Vec::new();
    // contributions that are not made by `grad` (shared or multi-output nodes)
    let mut direct = Vec::new();
    let need = |graph: &Graph, i: usize| ins.get(i).is_some_and(|&t| needs_grad(graph, t));
    // one gradient node writing d(input i)
    let mut grad = |graph: &mut Graph, i: usize, suffix: &str, k: Kind, inputs: Vec<TensorId>| {
        let t = contribution(graph, ins[i], &name);
        let g = emit(
            graph,
            format!("{name}/{suffix}"),
            k,
            inputs,
            vec![t],
            Phase::Backward,
            Some(name.clone()),
        )[0];
        out.push((ins[i], g));
    };
    match kind {
        Kind::Conv(c) => {
            if need(graph, 0) {
                grad(
                    graph,
                    0,
                    "grad_input",
                    Kind::ConvBackwardData(c.clone()),
                    vec![dy, ins[1]],
                );
            }
            if need(graph, 1) {
                grad(
                    graph,
                    1,
                    "grad_weight",
                    Kind::ConvBackwardWeight(c.clone()),
                    vec![ins[0], dy],
                );
            }
            if need(graph, 2) {
                grad(graph, 2, "grad_bias", Kind::BiasGrad(Empty {}), vec![dy]);
            }
        }
        Kind::Gemm(g) => {
            if need(graph, 0) {
                grad(
                    graph,
                    0,
                    "grad_a",
                    Kind::GemmGradA(g.clone()),
                    vec![dy, ins[1]],
                );
            }
            if need(graph, 1) {
                grad(
                    graph,
                    1,
                    "grad_b",
                    Kind::GemmGradB(g.clone()),
                    vec![ins[0], dy],
                );
            }
            if need(graph, 2) {
                grad(graph, 2, "grad_c", broadcast(g.beta, 0), vec![dy]);
            }
        }
        Kind::MatMul(_) => {
            if need(graph, 0) {
                grad(
                    graph,
                    0,
                    "grad_input",
                    Kind::MatMulGradX(Empty {}),
                    vec![dy, ins[1]],
                );
            }
            if need(graph, 1) {
                grad(
                    graph,
                    1,
                    "grad_weight",
                    Kind::MatMulGradW(Empty {}),
                    vec![ins[0], dy],
                );
            }
        }
        Kind::BatchNorm(e) => {
            if need(graph, 0) {
                grad(
                    graph,
                    0,
                    "grad_input",
                    Kind::BatchNormBackward(e.clone()),
                    vec![dy, ins[1], ins[2], ins[3], ins[4]],
                );
            }
        }
        Kind::Relu(_) => unary(
            graph,
            &mut grad,
            need(graph, 0),
            Kind::ReluBackward(Empty {}),
            ins[0],
            dy,
        ),
        Kind::Clip(c) => unary(
            graph,
            &mut grad,
            need(graph, 0),
            Kind::ClipBackward(c.clone()),
            ins[0],
            dy,
        ),
        Kind::LeakyRelu(a) => unary(
            graph,
            &mut grad,
            need(graph, 0),
            Kind::LeakyReluBackward(a.clone()),
            ins[0],
            dy,
        ),
        Kind::HardSigmoid(h) => unary(
            graph,
            &mut grad,
            need(graph, 0),
            Kind::HardSigmoidBackward(h.clone()),
            ins[0],
            dy,
        ),
        Kind::HardSwish(_) => unary(
            graph,
            &mut grad,
            need(graph, 0),
            Kind::HardSwishBackward(Empty {}),
            ins[0],
            dy,
        ),
        Kind::Sigmoid(_) => unary(
            graph,
            &mut grad,
            need(graph, 0),
            Kind::SigmoidBackward(Empty {}),
            y,
            dy,
        ),
        Kind::Softmax(a) => unary(
            graph,
            &mut grad,
            need(graph, 0),
            Kind::SoftmaxBackward(a.clone()),
            y,
            dy,
        ),
        Kind::PRelu(_) => {
            // Both gradients always: the kernel makes them in one pass, and a PRelu in the
            // suffix comes after the first trained layer, so its slope trains anyway.
            let outs = vec![
                contribution(graph, ins[0], &name),
                grad_tensor(graph, ins[1], "grad"),
            ];
            let ids = emit(
                graph,
                format!("{name}/grad"),
                Kind::PReluBackward(Empty {}),
                vec![ins[0], ins[1], dy],
                outs,
                Phase::Backward,
                Some(name.clone()),
            );
            if need(graph, 0) {
                direct.push((ins[0], ids[0]));
            }
            if need(graph, 1) {
                direct.push((ins[1], ids[1]));
            }
        }
        Kind::Add(_) | Kind::Sub(_) => {
            let sign = if matches!(kind, Kind::Sub(_)) {
                -1.0
            } else {
                1.0
            };
            for (i, scale) in [(0, 1.0), (1, sign)] {
                if !need(graph, i) {
                    continue;
                }
                if scale == 1.0 && graph.tensor(ins[i]).shape == graph.tensor(dy).shape {
                    // The gradient passes through unchanged: share it rather than copy it.
                    direct.push((ins[i], dy));
                } else {
                    grad(
                        graph,
                        i,
                        &format!("grad_{}", ["a", "b"][i]),
                        broadcast(scale, 0),
                        vec![dy],
                    );
                }
            }
        }
        Kind::Mul(_) => {
            for (i, other) in [(0, ins[1]), (1, ins[0])] {
                if need(graph, i) {
                    grad(
                        graph,
                        i,
                        &format!("grad_{}", ["a", "b"][i]),
                        broadcast(1.0, 1),
                        vec![dy, other],
                    );
                }
            }
        }
        Kind::Div(_) => {
            if need(graph, 0) {
                grad(graph, 0, "grad_a", broadcast(1.0, 2), vec![dy, ins[1]]);
            }
        }
        Kind::Concat(a) => {
            let axis = a.axis as usize;
            let rank = graph.tensor(y).shape.len();
            let mut offset = 0;
            for (i, &input) in ins.iter().enumerate() {
                let width = graph.tensor(input).shape[axis];
                if need(graph, i) {
                    let mut starts = vec![0u32; rank];
                    starts[axis] = offset as u32;
                    grad(
                        graph,
                        i,
                        &format!("grad_{i}"),
                        Kind::Slice(ops::Slices { starts }),
                        vec![dy],
                    );
                }
                offset += width;
            }
        }
        Kind::Reshape(_) => {
            if need(graph, 0) {
                grad(graph, 0, "grad_input", Kind::Reshape(Empty {}), vec![dy]);
            }
        }
        Kind::Transpose(p) => {
            if need(graph, 0) {
                let mut inverse = vec![0u32; p.perm.len()];
                for (i, &j) in p.perm.iter().enumerate() {
                    inverse[j as usize] = i as u32;
                }
                grad(
                    graph,
                    0,
                    "grad_input",
                    Kind::Transpose(ops::Perm { perm: inverse }),
                    vec![dy],
                );
            }
        }
        Kind::GlobalAveragePool(_) => pool(
            graph,
            &mut grad,
            need(graph, 0),
            PoolKind::Global(Empty {}),
            vec![dy],
        ),
        Kind::AveragePool(p) => pool(
            graph,
            &mut grad,
            need(graph, 0),
            PoolKind::Average(p.clone()),
            vec![dy],
        ),
        Kind::ReduceMean(a) => pool(
            graph,
            &mut grad,
            need(graph, 0),
            PoolKind::ReduceMean(a.clone()),
            vec![dy],
        ),
        Kind::MaxPool(p) => {
            if need(graph, 0) {
                let taps = p.kernel.iter().map(|&k| k as usize).product();
                let argmax = max_pool_indices(graph, n, taps);
                pool(
                    graph,
                    &mut grad,
                    true,
                    PoolKind::Max(p.clone()),
                    vec![dy, argmax],
                );
            }
        }
        Kind::Pad(p) => {
            if need(graph, 0) {
                let rank = graph.tensor(ins[0]).shape.len();
                grad(
                    graph,
                    0,
                    "grad_input",
                    Kind::Slice(ops::Slices {
                        starts: p.pads[..rank].to_vec(),
                    }),
                    vec![dy],
                );
            }
        }
        _ => unreachable!("select admits only differentiable forward ops into the suffix"),
    }
    out.extend(direct);
    out
}

/// The gradient of `of` that one consumer (`by`) contributes. When `of` has several
/// consumers the contributions are summed into `of.grad`, so each is named for its consumer.
fn contribution(graph: &Graph, of: TensorId, by: &str) -> Tensor {
    if graph
        .consumers(of)
        .filter(|&c| graph.nodes[c].phase == Phase::Forward)
        .count()
        > 1
    {
        grad_tensor(graph, of, &format!("grad[{by}]"))
    } else {
        grad_tensor(graph, of, "grad")
    }
}

fn broadcast(scale: f32, with_other: u32) -> Kind {
    Kind::BroadcastGrad(ops::BroadcastGrad { scale, with_other })
}

fn unary(
    graph: &mut Graph,
    grad: &mut impl FnMut(&mut Graph, usize, &str, Kind, Vec<TensorId>),
    needed: bool,
    kind: Kind,
    saved: TensorId,
    dy: TensorId,
) {
    if needed {
        grad(graph, 0, "grad_input", kind, vec![saved, dy]);
    }
}

fn pool(
    graph: &mut Graph,
    grad: &mut impl FnMut(&mut Graph, usize, &str, Kind, Vec<TensorId>),
    needed: bool,
    kind: PoolKind,
    inputs: Vec<TensorId>,
) {
    if needed {
        grad(
            graph,
            0,
            "grad_input",
            Kind::PoolBackward(ops::PoolBackward { pool: Some(kind) }),
            inputs,
        );
    }
}

/// A MaxPool's backward reads where each maximum came from: the forward node gets a second
/// output holding, per output element, the winner's tap in its window: one byte where the
/// window allows (a quarter of four-byte flat indices, kept from forward to backward).
fn max_pool_indices(graph: &mut Graph, n: NodeIndex, taps: usize) -> TensorId {
    if let Some(&idx) = graph.nodes[n].outputs.get(1) {
        return idx;
    }
    let y = graph.nodes[n].outputs[0];
    let dtype = if actc_runtime::kernels::pool::byte_taps(taps) {
        DType::U8
    } else {
        DType::U32
    };
    let t = Tensor::value(
        format!("{}.argmax", graph.tensor(y).name),
        graph.tensor(y).shape.clone(),
        dtype,
    );
    let id = graph.add_tensor(t);
    graph.add_output(n, id);
    id
}

/// Gradient tensor naming shared with the loss and optimizer passes.
pub fn gradient_of(graph: &Graph, t: TensorId) -> Tensor {
    grad_tensor(graph, t, "grad")
}
