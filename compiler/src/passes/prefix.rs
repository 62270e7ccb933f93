//! `prefix`: the frozen prefix (model input → boundary tensors) as steps of the plan itself,
//! so actc's kernels run it in the planned arena instead of tract (DESIGN §2).
//!
//! The prefix is inference only: nothing in it is differentiated, saved or compressed. It
//! runs in micro-batches of `m` samples (m divides the batch): its activations are the
//! largest tensors of the whole model (the first layers' maps), and at the full batch they
//! would set the arena's peak many times over what training needs. So the prefix is
//! imported again at batch `m`, and the runtime runs it `batch / m` times per step, copying
//! each micro-batch's boundary tensors into the full-batch ones. A Relu or Clip right after a
//! conv is fused into it (`ConvClip`), which inference allows.

use super::{emit, schedule};
use crate::bail;
use crate::error::Result;
use crate::ir::{Graph, NodeOp, Role, TensorId};
use crate::onnx::import::{InputShape, import};
use crate::onnx::proto::ModelProto;
use actc_runtime::ops::{self, Kind};
use actc_runtime::plan::Phase;
use std::collections::BTreeSet;
use std::fmt;
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

impl fmt::Display for PrefixRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrefixRunner::Auto => "auto",
            PrefixRunner::Actc => "actc",
            PrefixRunner::Tract => "tract",
        })
    }
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
    fuse_activations(&mut graph);
    Ok(Some(PrefixGraph {
        outputs: graph.outputs.clone(),
        input: imported.input,
        graph,
    }))
}

/// Folds a Relu or Clip into the conv before it when it is the conv's only reader: the
/// conv's output buffer then holds the activation, and one buffer and one pass over it go.
/// Inference only: training keeps the two apart (the backward needs the mask).
fn fuse_activations(graph: &mut Graph) {
    let convs: Vec<_> = graph
        .nodes
        .node_indices()
        .filter(|&n| matches!(graph.nodes[n].op, NodeOp::Kernel(Kind::Conv(_))))
        .collect();
    for c in convs {
        let y = graph.nodes[c].outputs[0];
        let readers: Vec<_> = graph.consumers(y).collect();
        let (&[act], false) = (&readers[..], graph.outputs.contains(&y)) else {
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
            unreachable!("filtered above")
        };
        let z = graph.nodes[act].outputs[0];
        graph.remove_node(act);
        graph.nodes[c].op = NodeOp::Kernel(Kind::ConvClip(ops::ConvClip {
            conv: Some(conv),
            clip: Some(clip),
        }));
        graph.replace_uses(z, y);
        graph.tensor_mut(y).name = graph.tensor(z).name.clone();
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
