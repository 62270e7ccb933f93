//! `autodiff`: reverse-mode differentiation of the suffix. Walks the forward nodes backwards
//! from the loss and has each op's room emit the nodes that compute the gradients its
//! inputs need.
//! Only values computed in the suffix and trainable weights get gradients: nothing flows into
//! the boundary tensors or the frozen constants.

use crate::ir::{Graph, NodeOp, Role, TensorId};
use crate::ops::{self, Backward};
use actc_runtime::ops::{Empty, Kind};
use actc_runtime::plan::Phase;
use petgraph::stable_graph::NodeIndex;
use std::collections::BTreeMap;

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
        let mut ad = Backward::new(graph, n, dy);
        ops::room_of(kind).backward(kind, &mut ad);
        for (input, g) in ad.into_contributions() {
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
    let out = graph.gradient_tensor(t, "grad");
    let origin = graph.producer(t).map(|p| graph.nodes[p].name.clone());
    Some(
        graph.push(
            format!("{name}/accumulate_grad"),
            Kind::Accumulate(Empty {}),
            parts,
            vec![out],
            Phase::Backward,
            origin,
        )[0],
    )
}
