//! `compress`: where saved activations get compressed (DESIGN §4).
//!
//! Each activation a backward node reads is a candidate. With `--compress none` every one is
//! kept as is; the compressors (HOSVD, SVD, gradient filter) will wrap a candidate in a
//! `Compress` node and feed its backward consumer the compressed form.

use crate::ir::{Graph, NodeOp, Role, TensorId};
use actc_runtime::plan::Phase;
use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
}

/// Forward values that backward nodes read: what a compressor would target.
pub fn saved_activations(graph: &Graph) -> BTreeSet<TensorId> {
    let mut saved = BTreeSet::new();
    for n in graph.nodes.node_indices() {
        let node = &graph.nodes[n];
        if matches!(node.phase, Phase::Backward) && matches!(node.op, NodeOp::Kernel(_)) {
            for &t in &node.inputs {
                let forward_value = graph
                    .producer(t)
                    .is_none_or(|p| graph.nodes[p].phase == Phase::Forward);
                if forward_value && matches!(graph.tensor(t).role, Role::Value | Role::Input) {
                    saved.insert(t);
                }
            }
        }
    }
    saved
}

/// Applies `compression` to the saved activations; `None` keeps every one as is.
pub fn compress(graph: &mut Graph, compression: Compression) -> BTreeSet<TensorId> {
    match compression {
        Compression::None => saved_activations(graph),
    }
}
