//! `emit`: the scheduled, planned training graph as the plan's steps and weights.

use super::memplan::Layout;
use super::schedule;
use crate::ir::{Graph, NodeOp, Role};
use actc_runtime::plan::{Step, Weight};
use petgraph::stable_graph::NodeIndex;

/// The steps of `order` over `layout`'s buffers, and the initial contents of its
/// persistent ones.
pub fn emit(graph: &Graph, order: &[NodeIndex], layout: &Layout) -> (Vec<Step>, Vec<Weight>) {
    let Layout {
        buffer_of,
        workspace_of,
        ..
    } = layout;
    let pairs = schedule::side_by_side(graph, order);
    let steps = order
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let node = &graph.nodes[n];
            let NodeOp::Kernel(kind) = &node.op else {
                unreachable!("select and the prefix check keep only runtime ops")
            };
            Step {
                name: node.name.clone(),
                op: Some(kind.clone().into()),
                inputs: node.inputs.iter().map(|t| buffer_of[t]).collect(),
                outputs: node.outputs.iter().map(|t| buffer_of[t]).collect(),
                phase: node.phase as i32,
                workspace: workspace_of.get(&s).copied(),
                origin: node.origin.clone().unwrap_or_default(),
                beside_next: pairs.contains(&s),
            }
        })
        .collect();

    let weights = buffer_of
        .iter()
        .filter_map(|(&t, &b)| {
            let tensor = graph.tensor(t);
            let data = match (&tensor.role, &tensor.data) {
                (Role::Trainable | Role::Const, Some(d)) => d.bytes(),
                _ => return None,
            };
            Some(Weight {
                buffer: b,
                source: tensor.name.clone(),
                data,
            })
        })
        .collect();

    (steps, weights)
}
