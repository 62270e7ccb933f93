//! The IR verifier: after every pass (debug builds and tests), the graph must still be one
//! the later passes and the planner can trust. It checks that
//! - every node reads and writes tensors that exist, and each tensor has at most one
//!   producer, the one the producer table names;
//! - every edge carries a tensor its target reads, from that tensor's producer (or, for an
//!   order edge, from another reader of it), and every read of a produced tensor has its edge;
//! - the graph is acyclic;
//! - every runtime op's inputs and outputs have the shapes and types its room's shape rule
//!   gives them.

use super::graph::{Graph, NodeOp};
use crate::ops::room_of;
use petgraph::Direction;
use petgraph::visit::EdgeRef;

/// `Ok`, or what is wrong, naming the node.
pub fn verify(graph: &Graph) -> Result<(), String> {
    let n_tensors = graph.tensors.len();
    for n in graph.nodes.node_indices() {
        let node = &graph.nodes[n];
        let at = |what: String| format!("node '{}' ({}): {what}", node.name, node.op_name());
        for &t in node.inputs.iter().chain(&node.outputs) {
            if t >= n_tensors {
                return Err(at(format!("tensor {t} does not exist")));
            }
        }
        for &t in &node.outputs {
            if graph.producer(t) != Some(n) {
                return Err(at(format!(
                    "writes '{}', whose producer is another node",
                    graph.tensor(t).name
                )));
            }
        }
        for &t in &node.inputs {
            if let Some(p) = graph.producer(t) {
                let has_edge = graph
                    .nodes
                    .edges_directed(n, Direction::Incoming)
                    .any(|e| e.source() == p && *e.weight() == t);
                if !has_edge {
                    return Err(at(format!(
                        "reads '{}' without an edge from its producer",
                        graph.tensor(t).name
                    )));
                }
            }
        }
        for e in graph.nodes.edges_directed(n, Direction::Incoming) {
            let t = *e.weight();
            let from = &graph.nodes[e.source()];
            let data = graph.producer(t) == Some(e.source());
            let order = from.inputs.contains(&t);
            if !node.inputs.contains(&t) || !(data || order) {
                return Err(at(format!(
                    "has an edge from '{}' carrying '{}', which it does not read from there",
                    from.name,
                    graph.tensors.get(t).map_or("?", |t| t.name.as_str())
                )));
            }
        }
        if let NodeOp::Kernel(kind) = &node.op {
            let ins: Vec<_> = node.inputs.iter().map(|&t| graph.tensor(t)).collect();
            let outs: Vec<_> = node.outputs.iter().map(|&t| graph.tensor(t)).collect();
            room_of(kind).check(kind, &ins, &outs).map_err(at)?;
        }
    }
    if !graph.readers_agree() {
        return Err("the reader index disagrees with the nodes' inputs (a pass edited inputs without the graph's methods)".into());
    }
    if graph.topo_order().len() != graph.nodes.node_count() {
        return Err("the graph has a cycle".into());
    }
    for &t in graph.inputs.iter().chain(&graph.outputs) {
        if t >= n_tensors {
            return Err(format!("graph input or output {t} does not exist"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Node, Tensor};
    use actc_runtime::ops::{Empty, Kind};
    use actc_runtime::plan::{DType, Phase};

    /// x (2, 3) → Relu → y (2, 3)
    fn relu() -> (Graph, petgraph::stable_graph::NodeIndex) {
        let mut g = Graph::default();
        let x = g.add_tensor(Tensor::value("x", vec![2, 3], DType::F32));
        let y = Tensor::value("y", vec![2, 3], DType::F32);
        g.push(
            "relu".into(),
            Kind::Relu(Empty {}),
            vec![x],
            vec![y],
            Phase::Forward,
            None,
        );
        let n = g.nodes.node_indices().next().unwrap();
        (g, n)
    }

    #[test]
    fn a_sound_graph_passes() {
        verify(&relu().0).unwrap();
    }

    #[test]
    fn a_shape_the_op_does_not_give_is_named() {
        let (mut g, _) = relu();
        g.tensor_mut(1).shape = vec![3, 2];
        let e = verify(&g).unwrap_err();
        assert!(
            e.contains("node 'relu' (Relu)") && e.contains("[3, 2]"),
            "{e}"
        );
    }

    #[test]
    fn a_read_without_its_edge_and_a_cycle_are_found() {
        let (mut g, relu) = relu();
        // A node that reads y, but whose edge from y's producer is dropped.
        let z = g.add_tensor(Tensor::value("z", vec![2, 3], DType::F32));
        let sig = g.add_node(Node {
            name: "relu2".into(),
            op: NodeOp::Kernel(Kind::Relu(Empty {})),
            inputs: vec![1],
            outputs: vec![z],
            phase: Phase::Forward,
            source: None,
            origin: None,
        });
        let e = g.nodes.find_edge(relu, sig).unwrap();
        g.nodes.remove_edge(e);
        assert!(verify(&g).unwrap_err().contains("without an edge"));
        // Back, plus an order edge the other way: a cycle.
        g.nodes.add_edge(relu, sig, 1);
        g.nodes.add_edge(sig, relu, z);
        assert!(verify(&g).unwrap_err().contains("does not read"));
        let x = g.nodes[relu].inputs[0];
        g.set_inputs(relu, vec![x, z]);
        assert_eq!(verify(&g).unwrap_err(), "the graph has a cycle");
    }
}
