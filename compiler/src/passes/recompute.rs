//! `recompute` (`compile --recompute attention`): attention's probabilities are not kept
//! from forward to backward; the backward computes them again from what it keeps anyway.
//!
//! An attention's softmax output P (batch × heads × tokens × tokens) is read by its own
//! backward and by the gradient of P·V: saved, it is the largest tensor of a block at long
//! sequences. The scores come from q·kᵀ (a batched product whose backward keeps q and k),
//! then maybe a scale and a mask bias (constants, or tensors the frozen prefix computed).
//! So the backward repeats that chain, product to softmax, and its readers of P read the
//! copy: P then dies in forward. The price is one q·kᵀ product and one softmax per
//! attention in backward.

use crate::ir::{Graph, NodeOp, Tensor, TensorId};
use crate::ops;
use actc_runtime::ops::Kind;
use actc_runtime::plan::Phase;
use petgraph::stable_graph::NodeIndex;

/// Recomputes every attention's probabilities in backward; returns how many.
pub fn attention(graph: &mut Graph) -> usize {
    let softmaxes: Vec<NodeIndex> = graph
        .nodes
        .node_indices()
        .filter(|&n| {
            let node = &graph.nodes[n];
            node.phase == Phase::Forward
                && ops::kernel(node).is_some_and(|k| ops::room_of(k).softmax_axis(k).is_some())
        })
        .collect();
    let mut done = 0;
    for s in softmaxes {
        if let Some(chain) = scores_chain(graph, s)
            && read_in_backward(graph, graph.nodes[s].outputs[0])
        {
            recompute(graph, &chain);
            done += 1;
        }
    }
    done
}

/// The forward nodes from the batched product to softmax `s`, in order, when `s` is an
/// attention's: each node between takes the chain's value and otherwise only tensors the
/// forward pass does not compute (constants, boundary tensors).
fn scores_chain(graph: &Graph, s: NodeIndex) -> Option<Vec<NodeIndex>> {
    let computed_here = |t: TensorId| {
        graph
            .producer(t)
            .is_some_and(|p| graph.nodes[p].phase == Phase::Forward)
    };
    let mut chain = vec![s];
    let mut t = graph.nodes[s].inputs[0];
    loop {
        let p = graph.producer(t)?;
        let node = &graph.nodes[p];
        if node.phase != Phase::Forward {
            return None;
        }
        chain.push(p);
        match &node.op {
            NodeOp::Kernel(Kind::BatchMatMul(_)) => break,
            NodeOp::Kernel(Kind::Add(_) | Kind::Sub(_) | Kind::Mul(_) | Kind::Div(_)) => {
                let on_chain: Vec<TensorId> = node
                    .inputs
                    .iter()
                    .copied()
                    .filter(|&i| computed_here(i))
                    .collect();
                match on_chain[..] {
                    [one] => t = one,
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    chain.reverse();
    Some(chain)
}

fn read_in_backward(graph: &Graph, t: TensorId) -> bool {
    graph
        .consumers(t)
        .any(|c| graph.nodes[c].phase == Phase::Backward)
}

/// Copies `chain` into the backward phase and points the backward readers of its last
/// output at the copy.
fn recompute(graph: &mut Graph, chain: &[NodeIndex]) {
    let mut renamed: Vec<(TensorId, TensorId)> = Vec::new();
    for &n in chain {
        let node = graph.nodes[n].clone();
        let inputs = node
            .inputs
            .iter()
            .map(|i| renamed.iter().find(|(f, _)| f == i).map_or(*i, |&(_, r)| r))
            .collect();
        let outputs = node
            .outputs
            .iter()
            .map(|&o| {
                let t = graph.tensor(o);
                Tensor::value(format!("{}.recomputed", t.name), t.shape.clone(), t.dtype)
            })
            .collect();
        let NodeOp::Kernel(kind) = node.op else {
            unreachable!("the chain holds kernels only")
        };
        let made = graph.push(
            format!("{}/recompute", node.name),
            kind,
            inputs,
            outputs,
            Phase::Backward,
            node.origin.clone().or(Some(node.name.clone())),
        );
        renamed.extend(node.outputs.iter().copied().zip(made));
    }
    let last = *chain.last().expect("a chain ends at its softmax");
    let (p, copy) = (
        graph.nodes[last].outputs[0],
        renamed.last().expect("made").1,
    );
    let readers: Vec<NodeIndex> = graph
        .consumers(p)
        .filter(|&c| graph.nodes[c].phase == Phase::Backward)
        .collect();
    for c in readers {
        let positions: Vec<usize> = (0..graph.nodes[c].inputs.len())
            .filter(|&i| graph.nodes[c].inputs[i] == p)
            .collect();
        for i in positions {
            graph.set_input(c, i, copy);
        }
    }
}
