//! `schedule`: the order the runtime executes the nodes in.
//!
//! A topological order that, among the nodes ready to run, takes an optimizer update or a
//! compression (or mask) first (so each weight gradient dies right after it is made, as the Tiny
//! Training Engine does, and a full-size activation right after its compressed form is),
//! then the node built earliest (forward in model order, backward in reverse model order).
//! A frozen prefix on actc's kernels goes before everything else, as one block the runtime
//! can skip when the boundary tensors come from the cache.
//!
//! [`gather_small_compressions`] then pairs compressions of small maps ([`side_by_side`]):
//! the first of two waits to run just before the second, and the runtime runs the two at
//! once, one per thread.

use crate::ir::{Graph, NodeOp};
use crate::ops;
use actc_runtime::ops::Kind;
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

/// Most values of an activation whose compression runs beside another. A small map's
/// compression (MobileNetV2's 64 × C × 1 × 1 inputs at 32²: a Gram matrix of the batch, its
/// leading eigenvectors, a product) is a chain of products too small to split among
/// threads, so one thread ran it while the other waited: 0.6 ms of a 9.5 ms step, the whole
/// of HOSVD's overhead there. A large map's compression splits its products well (8 × 960
/// × 7 × 7 at 224²), and on one thread beside another would take longer than alone.
pub const SIDE_BY_SIDE_MAX: usize = 1 << 17;

fn small_compression(graph: &Graph, n: NodeIndex) -> bool {
    match &graph.nodes[n].op {
        NodeOp::Kernel(Kind::Compress(c)) => {
            c.shape.iter().product::<u64>() <= SIDE_BY_SIDE_MAX as u64
        }
        _ => false,
    }
}

/// Positions `s` whose step runs at once with step `s + 1`: two small compressions next to
/// each other in `order`, taken in pairs from the front. Both run on the buffers they were
/// planned on, so memplan keeps every buffer either touches live through both steps.
pub fn side_by_side(graph: &Graph, order: &[NodeIndex]) -> Vec<usize> {
    let mut pairs = Vec::new();
    let mut s = 0;
    while s + 1 < order.len() {
        if small_compression(graph, order[s]) && small_compression(graph, order[s + 1]) {
            pairs.push(s);
            s += 2;
        } else {
            s += 1;
        }
    }
    pairs
}

/// Moves each small compression that has no partner yet down to just before the next one,
/// unless a step in between reads what it writes: paired by [`side_by_side`]. Its input then
/// lives until there, which may cost memory (the caller compares the plans).
pub fn gather_small_compressions(graph: &Graph, order: &mut [NodeIndex]) {
    let mut waiting: Option<usize> = None;
    for s in 0..order.len() {
        if !small_compression(graph, order[s]) {
            continue;
        }
        let Some(first) = waiting.take() else {
            waiting = Some(s);
            continue;
        };
        let needed = graph.successors(order[first]);
        if order[first + 1..s].iter().any(|n| needed.contains(n)) {
            waiting = Some(s);
            continue;
        }
        order[first..s].rotate_left(1);
    }
}
