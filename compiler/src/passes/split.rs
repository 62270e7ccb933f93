//! `split`: cuts the graph at the boundary `select` found. The frozen prefix (what computes
//! the boundary tensors from the model input) moves into a graph of its own, for the
//! `prefix` pass; nodes the chosen output does not need go; the graph left is the trainable
//! suffix, whose inputs are the boundary tensors and whose one output is the chosen output.

use super::select::Selection;
use crate::ir::{Graph, Role, TensorId};

/// The frozen prefix at the compiled batch: its graph (whose outputs are the boundary
/// tensors, in the order of the suffix's inputs) and its first model input.
pub struct Prefix {
    pub graph: Graph,
    pub input: TensorId,
}

/// Cuts `graph`; returns the prefix, or `None` when training reaches the model inputs.
pub fn split(
    graph: &mut Graph,
    selection: &Selection,
    model_inputs: &[TensorId],
) -> Option<Prefix> {
    let boundary = &selection.boundary_ids;
    let prefix = if boundary.iter().all(|b| model_inputs.contains(b)) {
        None
    } else {
        let nodes = graph.ancestors_of(boundary);
        let (mut sub, map) = graph.subgraph(&nodes);
        // An input no frozen node reads (a text encoder's unused token types) is not the
        // prefix's.
        sub.inputs = model_inputs
            .iter()
            .filter_map(|t| map.get(t).copied())
            .collect();
        sub.outputs = boundary.iter().map(|b| map[b]).collect();
        let input = *sub.inputs.first()?;
        Some(Prefix { graph: sub, input })
    };
    let doomed: Vec<_> = graph
        .nodes
        .node_indices()
        .filter(|n| !selection.suffix.contains(n))
        .collect();
    for n in doomed {
        graph.remove_node(n);
    }
    for &t in boundary {
        graph.tensor_mut(t).role = Role::Input;
    }
    graph.inputs = boundary.clone();
    graph.outputs = selection.outputs.clone();
    prefix
}
