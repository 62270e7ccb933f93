//! `schedule`: the order the runtime executes the nodes in.
//!
//! A topological order that, among the nodes ready to run, takes an optimizer update or a
//! compression (or mask) first (so each weight gradient dies right after it is made, as the Tiny
//! Training Engine does, and a full-size activation right after its compressed form is),
//! then the node built earliest (forward in model order, backward in reverse model order).
//! A frozen prefix on actc's kernels goes before everything else, as one block the runtime
//! can skip when the boundary tensors come from the cache.

use crate::ir::Graph;
use crate::ops;
use actc_runtime::plan::Phase;
use petgraph::stable_graph::NodeIndex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub fn schedule(graph: &Graph) -> Vec<NodeIndex> {
    let bound = graph
        .nodes
        .node_indices()
        .map(|n| n.index() + 1)
        .max()
        .unwrap_or(0);
    let mut indegree = vec![0usize; bound];
    for n in graph.nodes.node_indices() {
        indegree[n.index()] = graph.predecessors(n).len();
    }
    let urgent = |n: NodeIndex| {
        let node = &graph.nodes[n];
        node.phase == Phase::Update || ops::kernel(node).is_some_and(|k| ops::room_of(k).urgent(k))
    };
    let prefix = |n: NodeIndex| graph.nodes[n].phase == Phase::Prefix;
    let key = |n: NodeIndex| Reverse((!prefix(n), !urgent(n), n));
    let mut ready: BinaryHeap<_> = graph
        .nodes
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(graph.nodes.node_count());
    while let Some(Reverse((_, _, n))) = ready.pop() {
        order.push(n);
        for s in graph.successors(n) {
            indegree[s.index()] -= 1;
            if indegree[s.index()] == 0 {
                ready.push(key(s));
            }
        }
    }
    debug_assert_eq!(
        order.len(),
        graph.nodes.node_count(),
        "the training graph has a cycle"
    );
    order
}
