//! `prefix`: the frozen prefix (model input → boundary tensors) as steps of the plan itself,
//! so actc's kernels run it in the planned arena instead of tract (DESIGN §2).
//!
//! The prefix is inference only: nothing in it is differentiated, saved or compressed. It
//! runs in micro-batches of `m` samples (m divides the batch): its activations are the
//! largest tensors of the whole model (the first layers' maps), and at the full batch they
//! would set the arena's peak many times over what training needs. So the prefix is
//! imported again at batch `m`, and the runtime runs it `batch / m` times per step, copying
//! each micro-batch's boundary tensors into the full-batch ones. Inference allows folding: a
//! BatchNormalization right after a conv goes into its weights, a Relu or Clip into its
//! output (`ConvClip`).

use super::{emit, schedule};
use crate::bail;
use crate::error::Result;
use crate::ir::{Data, Graph, NodeOp, Role, Tensor, TensorId};
use crate::onnx::import::{InputShape, import};
use crate::onnx::proto::ModelProto;
use actc_runtime::kernels::norm::{self, BatchNormParams};
use actc_runtime::ops::{self, Kind};
use actc_runtime::plan::Phase;
use petgraph::stable_graph::NodeIndex;
use std::collections::BTreeSet;
use std::path::Path;

/// Who runs the frozen prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefixRunner {
    /// actc's kernels when every prefix op has one, else tract.
    #[default]
    Auto,
    Actc,
    Tract,
}

/// The prefix alone, at some batch size: its graph holds only the prefix nodes.
pub struct PrefixGraph {
    graph: Graph,
    input: TensorId,
    /// The boundary tensors, in the order of the training graph's inputs.
    outputs: Vec<TensorId>,
}

/// The prefix that computes the `boundary` tensors of `model` with input shape `shape` (the
/// batch being the micro-batch). `None` when `runner` is auto and a prefix op has no actc
/// kernel: tract runs the prefix then.
pub fn build(
    model: &ModelProto,
    dir: &Path,
    shape: &[usize],
    boundary: &[String],
    runner: PrefixRunner,
) -> Result<Option<PrefixGraph>> {
    let fix = InputShape {
        shape: Some(shape.to_vec()),
        batch: None,
    };
    let imported = import(model.clone(), dir, &fix)?;
    let mut graph = imported.graph;
    let outputs = boundary
        .iter()
        .map(|name| {
            graph.find_tensor(name).ok_or_else(|| {
                crate::err!("the prefix at batch {} has no tensor '{name}'", shape[0])
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let keep = graph.ancestors_of(&outputs);
    let order: Vec<_> = graph
        .topo_order()
        .into_iter()
        .filter(|n| keep.contains(n))
        .collect();
    if let Some(&n) = order
        .iter()
        .find(|&&n| matches!(graph.nodes[n].op, NodeOp::Onnx(_)))
    {
        if runner == PrefixRunner::Auto {
            return Ok(None);
        }
        bail!(
            "--prefix actc: node '{}' (op {}) of the frozen prefix has no actc kernel; use --prefix tract (or auto)",
            graph.nodes[n].name,
            graph.nodes[n].op_name()
        );
    }
    let doomed: Vec<_> = graph
        .nodes
        .node_indices()
        .filter(|n| !keep.contains(n))
        .collect();
    for n in doomed {
        graph.remove_node(n);
    }
    graph.inputs = vec![imported.input];
    graph.outputs = outputs;
    fold_batch_norms(&mut graph);
    fuse_activations(&mut graph);
    Ok(Some(PrefixGraph {
        outputs: graph.outputs.clone(),
        input: imported.input,
        graph,
    }))
}

/// The one node reading conv `c`'s output, when that output is not a graph output.
fn only_reader(graph: &Graph, c: NodeIndex) -> Option<NodeIndex> {
    let y = graph.nodes[c].outputs[0];
    let readers: Vec<_> = graph.consumers(y).collect();
    match (&readers[..], graph.outputs.contains(&y)) {
        (&[r], false) => Some(r),
        _ => None,
    }
}

/// Removes `node` (reading conv `c`'s output alone) and gives its readers the conv's output,
/// which takes the node's output name.
fn absorb_into_conv(graph: &mut Graph, c: NodeIndex, node: NodeIndex) {
    let (y, z) = (graph.nodes[c].outputs[0], graph.nodes[node].outputs[0]);
    graph.remove_node(node);
    graph.replace_uses(z, y);
    graph.tensor_mut(y).name = graph.tensor(z).name.clone();
}

fn convs(graph: &Graph) -> Vec<NodeIndex> {
    graph
        .nodes
        .node_indices()
        .filter(|&n| matches!(graph.nodes[n].op, NodeOp::Kernel(Kind::Conv(_))))
        .collect()
}

/// Folds a BatchNormalization (running statistics: an affine map per channel) into the conv
/// before it when it is the conv's only reader: new weight and bias constants.
fn fold_batch_norms(graph: &mut Graph) {
    for c in convs(graph) {
        let Some(bn) = only_reader(graph, c) else {
            continue;
        };
        let NodeOp::Kernel(Kind::BatchNorm(attrs)) = &graph.nodes[bn].op else {
            continue;
        };
        let f32s = |t: TensorId| match &graph.tensor(t).data {
            Some(Data::F32(v)) => Some(v.clone()),
            _ => None,
        };
        let conv = &graph.nodes[c];
        let Some(params) = graph.nodes[bn].inputs[1..5]
            .iter()
            .map(|&t| f32s(t))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let Some(weight) = f32s(conv.inputs[1]) else {
            continue;
        };
        let bias = conv.inputs.get(2).and_then(|&t| f32s(t));
        let p = BatchNormParams {
            scale: &params[0],
            bias: &params[1],
            mean: &params[2],
            var: &params[3],
            epsilon: attrs.epsilon,
        };
        let (w, b) = norm::fold_into_conv(&weight, bias.as_deref(), &p);
        let (w_name, w_shape) = {
            let t = graph.tensor(conv.inputs[1]);
            (format!("{}.folded", t.name), t.shape.clone())
        };
        let b_name = format!("{}.folded_bias", graph.nodes[bn].name);
        let len = b.len();
        let w = graph.add_tensor(Tensor::constant(w_name, w_shape, Data::F32(w.into())));
        let b = graph.add_tensor(Tensor::constant(b_name, vec![len], Data::F32(b.into())));
        // Constants have no producer: no edges to fix.
        graph.nodes[c].inputs.truncate(1);
        graph.nodes[c].inputs.extend([w, b]);
        absorb_into_conv(graph, c, bn);
    }
}

/// Folds a Relu or Clip into the conv before it when it is the conv's only reader: the
/// conv's output buffer then holds the activation, and one buffer and one pass over it go.
/// Inference only: training keeps the two apart (the backward needs the mask).
fn fuse_activations(graph: &mut Graph) {
    for c in convs(graph) {
        let Some(act) = only_reader(graph, c) else {
            continue;
        };
        let clip = match &graph.nodes[act].op {
            NodeOp::Kernel(Kind::Relu(_)) => ops::Clip {
                min: 0.0,
                max: f32::INFINITY,
            },
            NodeOp::Kernel(Kind::Clip(clip)) => clip.clone(),
            _ => continue,
        };
        let NodeOp::Kernel(Kind::Conv(conv)) = graph.nodes[c].op.clone() else {
            unreachable!("convs() lists convs")
        };
        graph.nodes[c].op = NodeOp::Kernel(Kind::ConvClip(ops::ConvClip {
            conv: Some(conv),
            clip: Some(clip),
        }));
        absorb_into_conv(graph, c, act);
    }
}

impl PrefixGraph {
    /// Arena bytes the prefix needs when planned alone.
    pub fn arena(&self) -> u64 {
        let order = schedule::schedule(&self.graph);
        let none = BTreeSet::new();
        emit::emit(
            &self.graph,
            &order,
            &none,
            &none,
            &[self.input],
            &self.outputs,
        )
        .memory
        .arena
    }

    /// Copies the prefix into `graph` (the training graph) in phase `Prefix`. Returns its
    /// model input and its boundary tensors (micro-batch copies, named `<name>@prefix`).
    pub fn attach(self, graph: &mut Graph) -> (TensorId, Vec<TensorId>) {
        let map = graph.absorb(&self.graph, Phase::Prefix);
        let input = map[&self.input];
        graph.tensor_mut(input).role = Role::ModelInput;
        let outputs: Vec<_> = self.outputs.iter().map(|t| map[t]).collect();
        for &t in &outputs {
            let name = format!("{}@prefix", graph.tensor(t).name);
            graph.tensor_mut(t).name = name;
        }
        (input, outputs)
    }
}

/// The micro-batch: the largest divisor of `batch` whose prefix, estimated from its arena at
/// batch 1 (activations grow with the batch), needs no more than `budget` bytes; at least 1.
pub fn micro_batch(batch: usize, arena_at_one: u64, budget: u64) -> usize {
    (1..=batch)
        .rev()
        .find(|&m| batch.is_multiple_of(m) && m as u64 * arena_at_one <= budget.max(arena_at_one))
        .unwrap_or(1)
}
