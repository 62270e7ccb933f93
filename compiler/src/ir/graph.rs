//! The graph: nodes over tensors, with edges kept in step with each node's inputs.

use super::tensor::{OnnxSource, Tensor, TensorId};
use crate::onnx::proto::NodeProto;
use actc_runtime::ops::Kind;
use actc_runtime::plan::Phase;
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

/// What a node computes: one of the runtime's operations, or an ONNX op that actc can only
/// run in the frozen prefix (through tract) and never differentiates.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // a graph has hundreds of nodes: a few hundred bytes each is nothing
pub enum NodeOp {
    Kernel(Kind),
    /// The ONNX node as written (op type, domain, attributes).
    Onnx(Arc<NodeProto>),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: NodeOp,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    pub phase: Phase,
    /// The ONNX node this was imported from, as long as no pass has changed it.
    pub source: Option<Arc<OnnxSource>>,
    /// For a backward, loss or update node: the forward node it serves (for reports).
    pub origin: Option<String>,
}

impl Node {
    pub fn op_name(&self) -> String {
        match &self.op {
            NodeOp::Kernel(k) => kind_name(k),
            NodeOp::Onnx(p) => p.op_type().to_string(),
        }
    }
}

/// The variant name of a kernel, e.g. `ConvBackwardData`.
pub fn kind_name(kind: &Kind) -> String {
    let debug = format!("{kind:?}");
    debug.split('(').next().unwrap_or(&debug).to_string()
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: StableDiGraph<Node, TensorId>,
    pub tensors: Vec<Tensor>,
    producer: Vec<Option<NodeIndex>>,
    /// The nodes reading each tensor: kept with the inputs, so finding a tensor's readers
    /// does not scan the graph (which made compiling a long chain quadratic).
    readers: Vec<BTreeSet<NodeIndex>>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    /// The names the model gives its outputs, beside `outputs`: an output behind an
    /// `Identity` is the tensor the Identity reads, under another name.
    pub output_names: Vec<String>,
}

impl Graph {
    pub fn add_tensor(&mut self, tensor: Tensor) -> TensorId {
        self.tensors.push(tensor);
        self.producer.push(None);
        self.readers.push(BTreeSet::new());
        self.tensors.len() - 1
    }

    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id]
    }

    pub fn tensor_mut(&mut self, id: TensorId) -> &mut Tensor {
        &mut self.tensors[id]
    }

    pub fn add_node(&mut self, node: Node) -> NodeIndex {
        let inputs = node.inputs.clone();
        let outputs = node.outputs.clone();
        let idx = self.nodes.add_node(node);
        for t in inputs {
            if let Some(p) = self.producer[t] {
                self.nodes.add_edge(p, idx, t);
            }
            self.readers[t].insert(idx);
        }
        for t in outputs {
            debug_assert!(self.producer[t].is_none(), "tensor {t} produced twice");
            self.producer[t] = Some(idx);
        }
        idx
    }

    /// Adds `node` in place of removed nodes whose outputs it takes over: edges from its
    /// inputs' producers, as [`Graph::add_node`], and to the nodes already reading them.
    pub fn add_node_in_place(&mut self, node: Node) -> NodeIndex {
        let outputs = node.outputs.clone();
        let idx = self.add_node(node);
        for t in outputs {
            let readers: Vec<_> = self.consumers(t).filter(|&c| c != idx).collect();
            for c in readers {
                self.nodes.add_edge(idx, c, t);
            }
        }
        idx
    }

    /// Copies every node of `other` (in topological order, in `phase`) and the tensors they
    /// use into this graph; returns the new id of each copied tensor.
    pub fn absorb(&mut self, other: &Graph, phase: Phase) -> BTreeMap<TensorId, TensorId> {
        self.copy_nodes(other, |_| true, Some(phase))
    }

    /// A new graph holding copies of `nodes` (in topological order) and the tensors they
    /// use, and the new id of each copied tensor.
    pub fn subgraph(&self, nodes: &BTreeSet<NodeIndex>) -> (Graph, BTreeMap<TensorId, TensorId>) {
        let mut g = Graph::default();
        let map = g.copy_nodes(self, |n| nodes.contains(&n), None);
        (g, map)
    }

    fn copy_nodes(
        &mut self,
        other: &Graph,
        keep: impl Fn(NodeIndex) -> bool,
        phase: Option<Phase>,
    ) -> BTreeMap<TensorId, TensorId> {
        let mut map = BTreeMap::new();
        for n in other.topo_order().into_iter().filter(|&n| keep(n)) {
            // The copy's tensor ids are new: what it came from in ONNX no longer applies.
            let mut node = Node {
                source: None,
                ..other.nodes[n].clone()
            };
            for t in node.inputs.iter_mut().chain(node.outputs.iter_mut()) {
                *t = *map.entry(*t).or_insert_with(|| {
                    self.add_tensor(Tensor {
                        folded: None,
                        ..other.tensor(*t).clone()
                    })
                });
            }
            if let Some(phase) = phase {
                node.phase = phase;
            }
            self.add_node(node);
        }
        map
    }

    /// Gives an existing node one more output.
    pub fn add_output(&mut self, n: NodeIndex, t: TensorId) {
        debug_assert!(self.producer[t].is_none(), "tensor {t} produced twice");
        self.nodes[n].outputs.push(t);
        self.producer[t] = Some(n);
    }

    pub fn remove_node(&mut self, idx: NodeIndex) -> Option<Node> {
        let node = self.nodes.remove_node(idx)?;
        for &t in &node.outputs {
            self.producer[t] = None;
        }
        for &t in &node.inputs {
            self.readers[t].remove(&idx);
        }
        Some(node)
    }

    /// Replaces every use of `old` by `new` in the consumers of `old` (not in its producer).
    pub fn replace_uses(&mut self, old: TensorId, new: TensorId) {
        let consumers: Vec<NodeIndex> = self.consumers(old).collect();
        for c in consumers {
            self.remove_in_edges(c, old);
            self.readers[old].remove(&c);
            self.readers[new].insert(c);
            self.nodes[c].source = None;
            for input in self.nodes[c].inputs.iter_mut() {
                if *input == old {
                    *input = new;
                }
            }
            if let Some(p) = self.producer[new] {
                self.nodes.add_edge(p, c, new);
            }
        }
        for o in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    /// The one node reading node `n`'s first output, when that output is not a graph
    /// output: what an inference fusion may fold into `n`.
    pub fn only_reader(&self, n: NodeIndex) -> Option<NodeIndex> {
        let y = self.nodes[n].outputs[0];
        let mut readers = self.consumers(y);
        match (readers.next(), readers.next(), self.outputs.contains(&y)) {
            (Some(r), None, false) => Some(r),
            _ => None,
        }
    }

    /// Removes `reader` (the [`Graph::only_reader`] of `n`) once `n` computes what it did:
    /// its readers get `n`'s first output, which takes `reader`'s output name.
    pub fn absorb_reader(&mut self, n: NodeIndex, reader: NodeIndex) {
        let (y, z) = (self.nodes[n].outputs[0], self.nodes[reader].outputs[0]);
        self.remove_node(reader);
        self.replace_uses(z, y);
        self.tensor_mut(y).name = self.tensor(z).name.clone();
    }

    /// Points input `i` of node `n` at `t`, edges included.
    pub fn set_input(&mut self, n: NodeIndex, i: usize, t: TensorId) {
        self.nodes[n].source = None;
        let old = std::mem::replace(&mut self.nodes[n].inputs[i], t);
        if !self.nodes[n].inputs.contains(&old) {
            self.remove_in_edges(n, old);
            self.readers[old].remove(&n);
        }
        self.readers[t].insert(n);
        if let Some(p) = self.producer[t] {
            self.nodes.add_edge(p, n, t);
        }
    }

    /// Drops the edges that bring tensor `t` into node `n`.
    fn remove_in_edges(&mut self, n: NodeIndex, t: TensorId) {
        let edges: Vec<_> = self
            .nodes
            .edges_directed(n, Direction::Incoming)
            .filter(|e| *e.weight() == t)
            .map(|e| e.id())
            .collect();
        for e in edges {
            self.nodes.remove_edge(e);
        }
    }

    /// The node called `name` (names are unique in an imported graph).
    pub fn node_named(&self, name: &str) -> Option<NodeIndex> {
        self.nodes
            .node_indices()
            .find(|&n| self.nodes[n].name == name)
    }

    /// The tensor called `name`.
    pub fn tensor_named(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name)
    }

    pub fn producer(&self, t: TensorId) -> Option<NodeIndex> {
        self.producer[t]
    }

    /// Nodes reading `t`, each once, in index order.
    pub fn consumers(&self, t: TensorId) -> impl Iterator<Item = NodeIndex> + '_ {
        self.readers[t].iter().copied()
    }

    /// Replaces node `n`'s inputs, edges and readers included.
    pub fn set_inputs(&mut self, n: NodeIndex, inputs: Vec<TensorId>) {
        let old = std::mem::take(&mut self.nodes[n].inputs);
        for t in old {
            self.remove_in_edges(n, t);
            self.readers[t].remove(&n);
        }
        self.nodes[n].source = None;
        for &t in &inputs {
            if let Some(p) = self.producer[t] {
                self.nodes.add_edge(p, n, t);
            }
            self.readers[t].insert(n);
        }
        self.nodes[n].inputs = inputs;
    }

    /// Whether the reader index agrees with every node's inputs.
    pub fn readers_agree(&self) -> bool {
        let mut want: Vec<BTreeSet<NodeIndex>> = vec![BTreeSet::new(); self.tensors.len()];
        for n in self.nodes.node_indices() {
            for &t in &self.nodes[n].inputs {
                want[t].insert(n);
            }
        }
        want == self.readers
    }

    /// Topological order that prefers the lowest node index among the ready nodes, so the
    /// order is deterministic and follows the order the nodes were built in.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        let mut indegree: Vec<usize> = vec![
            0;
            self.nodes
                .node_indices()
                .map(|n| n.index() + 1)
                .max()
                .unwrap_or(0)
        ];
        for n in self.nodes.node_indices() {
            indegree[n.index()] = self.predecessors(n).len();
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeIndex>> = self
            .nodes
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.nodes.node_count());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for s in self.successors(n) {
                indegree[s.index()] -= 1;
                if indegree[s.index()] == 0 {
                    ready.push(std::cmp::Reverse(s));
                }
            }
        }
        order
    }

    /// Distinct producer nodes of `n`'s inputs.
    pub fn predecessors(&self, n: NodeIndex) -> BTreeSet<NodeIndex> {
        self.nodes
            .neighbors_directed(n, Direction::Incoming)
            .collect()
    }

    pub fn successors(&self, n: NodeIndex) -> BTreeSet<NodeIndex> {
        self.nodes
            .neighbors_directed(n, Direction::Outgoing)
            .collect()
    }

    /// All nodes from which one of `targets` can be reached, the producers of targets included.
    pub fn ancestors_of(&self, targets: &[TensorId]) -> BTreeSet<NodeIndex> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<NodeIndex> = targets.iter().filter_map(|&t| self.producer(t)).collect();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(self.predecessors(n));
            }
        }
        seen
    }

    /// `roots` and every node reachable from them.
    pub fn descendants_of(&self, roots: &[NodeIndex]) -> BTreeSet<NodeIndex> {
        let mut seen = BTreeSet::new();
        let mut stack = roots.to_vec();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(self.successors(n));
            }
        }
        seen
    }
}
