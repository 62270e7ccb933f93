//! `select`: which layers train, the trainable suffix, the frozen prefix, and the boundary
//! tensors between them (DESIGN §3).
//!
//! A layer is a `Conv` node (a transposed conv too), or, in a model with no conv or a
//! transformer (linear layers over tokens after its last conv), a `Gemm`/`MatMul` with a
//! constant weight. `--layers N` trains the last N layers in topological order and every
//! parameterized op after the first of them. The suffix is every node whose value depends on a trainable
//! weight; everything else the output needs is the frozen prefix, which tract runs.

use crate::bail;
use crate::error::Result;
use crate::ir::{Graph, Role, TensorId};
use crate::ops::{self, LayerClass};
use petgraph::stable_graph::NodeIndex;
use std::collections::BTreeSet;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    Last(usize),
    All,
    /// The last N transformer blocks (`--blocks N`), everything in them training.
    Blocks(usize),
}

impl fmt::Display for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layers::Last(n) => write!(f, "{n}"),
            Layers::All => write!(f, "all"),
            Layers::Blocks(n) => write!(f, "{n} blocks"),
        }
    }
}

impl std::str::FromStr for Layers {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Layers, String> {
        if s == "all" {
            return Ok(Layers::All);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("--layers 0 trains nothing; give a count of at least 1, or `all`".into()),
            Ok(n) => Ok(Layers::Last(n)),
            Err(_) => Err(format!(
                "'{s}' is not a layer count; give a number like 4, or `all`"
            )),
        }
    }
}

/// A node whose weights train.
pub struct TrainedLayer {
    pub node: String,
    pub op: String,
    /// 1-based position among the model's layers counted from the output; 0 for a
    /// parameterized op that is not a layer (a PRelu, say).
    pub from_output: usize,
    pub params: Vec<TensorId>,
}

pub struct Selection {
    /// How many layers the model has, and the op type that makes a layer.
    pub total_layers: usize,
    pub layer_op: String,
    pub trained: Vec<TrainedLayer>,
    /// Names of the boundary tensors: what the frozen prefix computes, the suffix starts from.
    pub boundary: Vec<String>,
    /// The outputs the loss reads (`--train-output`; the first by default), in order.
    pub outputs: Vec<TensorId>,
    /// Their names in the model.
    pub output_names: Vec<String>,
    /// Their shapes, batch first.
    pub output_shapes: Vec<Vec<usize>>,
    /// The boundary tensors, in the order of the names.
    pub(crate) boundary_ids: Vec<TensorId>,
    /// The trainable suffix: every node whose value depends on a trainable weight.
    pub(crate) suffix: BTreeSet<NodeIndex>,
}

/// Chooses the trained output, the trained layers and the suffix, marks the trained weights
/// trainable, and finds the boundary tensors (`split` then cuts the graph there).
pub fn select(graph: &mut Graph, outputs: &[String], layers: Layers) -> Result<Selection> {
    let chosen = choose_outputs(graph, outputs)?;
    let outs: Vec<TensorId> = chosen.iter().map(|&(t, _)| t).collect();
    // Layers count from the last, over everything any trained output needs.
    let out = outs[0];
    let needed = graph.ancestors_of(&outs);
    let order: Vec<NodeIndex> = graph
        .topo_order()
        .into_iter()
        .filter(|n| needed.contains(n))
        .collect();
    let all_layers = find_layers(graph, &order);
    if all_layers.is_empty() {
        bail!(
            "the model has no trainable layer before output '{}' (no Conv, and no Gemm/MatMul with a constant weight)",
            graph.tensor(out).name
        );
    }
    let count = all_layers.len();
    let kind = &all_layers[0].op;
    let out_name = &graph.tensor(out).name;
    let found = match layers {
        Layers::Blocks(_) if kind.starts_with("Conv") => bail!(
            "--blocks counts transformer blocks, and this model's layers are {kind} nodes; use --layers"
        ),
        Layers::Blocks(b) => {
            let start = block_start(graph, &order, b, out_name)?;
            suffix_from(graph, &order, start, Vec::new()).map_err(|bad| (bad, None))
        }
        Layers::All => {
            suffix_for(graph, &order, &all_layers, count).map_err(|bad| (bad, Some(count)))
        }
        Layers::Last(n) if n > count => bail!(
            "--layers {n}: the model has only {count} layers ({kind} nodes) before output '{out_name}'; use --layers 1 to {count}, or all"
        ),
        Layers::Last(n) => suffix_for(graph, &order, &all_layers, n).map_err(|bad| (bad, Some(n))),
    };
    let suffix = match found {
        Ok(s) => s,
        Err((bad, n)) => {
            let node = &graph.nodes[bad];
            let works = (1..n.unwrap_or(count + 1))
                .rev()
                .find(|&m| suffix_for(graph, &order, &all_layers, m).is_ok());
            let hint = match works {
                Some(m) => format!(
                    "--layers {m} works (the largest value that keeps it in the frozen prefix)"
                ),
                None => "no --layers value keeps it out of the trainable part".to_string(),
            };
            let at = match layers {
                Layers::Blocks(b) => format!("--blocks {b}"),
                _ => format!("--layers {layers}"),
            };
            bail!(
                "node '{}' (op {}) is in the trainable part at {at} and actc cannot differentiate it; {hint}",
                node.name,
                node.op_name()
            );
        }
    };

    // With several outputs, the last layers may feed only some: one the frozen prefix
    // computes whole would add a constant to the loss and train nothing.
    if chosen.len() > 1
        && let Some((_, name)) = chosen
            .iter()
            .find(|&&(t, _)| !graph.producer(t).is_some_and(|p| suffix.nodes.contains(&p)))
    {
        let at = match layers {
            Layers::Blocks(b) => format!("--blocks {b}"),
            _ => format!("--layers {layers}"),
        };
        bail!(
            "--train-output {name}: no trained layer at {at} comes before it (the frozen prefix computes it whole); train more layers, or leave it out of --train-output"
        );
    }
    let mut trained = Vec::new();
    for &node in &suffix.trainable {
        let params = params_of(graph, node);
        for &t in &params {
            graph.tensor_mut(t).role = Role::Trainable;
        }
        let position = all_layers.iter().position(|l| l.nodes.contains(&node));
        trained.push(TrainedLayer {
            node: graph.nodes[node].name.clone(),
            op: graph.nodes[node].op_name(),
            from_output: position.map(|p| count - p).unwrap_or(0),
            params,
        });
    }
    let mut boundary: Vec<TensorId> = Vec::new();
    for &node in &suffix.nodes {
        for &t in &graph.nodes[node].inputs {
            let produced_inside = graph.producer(t).is_some_and(|p| suffix.nodes.contains(&p));
            if !produced_inside && !graph.tensor(t).is_const() && !boundary.contains(&t) {
                boundary.push(t);
            }
        }
    }
    boundary.sort_unstable();
    Ok(Selection {
        total_layers: count,
        layer_op: all_layers[0].op.clone(),
        trained,
        boundary: boundary
            .iter()
            .map(|&t| graph.tensor(t).name.clone())
            .collect(),
        output_shapes: outs
            .iter()
            .map(|&t| graph.tensor(t).shape.clone())
            .collect(),
        outputs: outs,
        output_names: chosen.into_iter().map(|(_, n)| n).collect(),
        boundary_ids: boundary,
        suffix: suffix.nodes,
    })
}

/// The outputs `names` name (the first by default): each one's tensor and its name in the
/// model. A model's own name for an output is taken, and so is the name of the tensor an
/// `Identity` passes to it.
fn choose_outputs(graph: &Graph, names: &[String]) -> Result<Vec<(TensorId, String)>> {
    let declared = |i: usize| {
        graph
            .output_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| graph.tensor(graph.outputs[i]).name.clone())
    };
    let find = |name: &str| {
        (0..graph.outputs.len())
            .find(|&i| declared(i) == name || graph.tensor(graph.outputs[i]).name == name)
    };
    let mut picked: Vec<usize> = Vec::new();
    for name in names {
        let Some(i) = find(name) else {
            bail!(
                "--train-output {name}: the model has no such output; its outputs are {}",
                (0..graph.outputs.len())
                    .map(declared)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if picked.contains(&i) {
            bail!("--train-output names output '{name}' twice; name each output once");
        }
        picked.push(i);
    }
    if picked.is_empty() {
        picked.push(0);
    }
    picked
        .into_iter()
        .map(|i| {
            let out = graph.outputs[i];
            if graph.producer(out).is_none() {
                bail!(
                    "output '{}' is a constant or the model input; nothing before it can train",
                    declared(i)
                );
            }
            Ok((out, declared(i)))
        })
        .collect()
}

/// One layer as `--layers` counts it: a node, or the factors `actc decompose` made of one
/// (`<layer>/lowrank<i>`), so that N means the same layers before and after decomposing.
struct Layer {
    nodes: Vec<NodeIndex>,
    op: String,
}

fn find_layers(graph: &Graph, order: &[NodeIndex]) -> Vec<Layer> {
    let of_class = |class: LayerClass| -> Vec<NodeIndex> {
        order
            .iter()
            .copied()
            .filter(|&n| ops::layer_class(graph, &graph.nodes[n]) == Some(class))
            .collect()
    };
    let convs = of_class(LayerClass::Conv);
    let dense = of_class(LayerClass::Dense);
    // A transformer (a ViT's patch embedding is a conv) has a body of linear layers over
    // tokens after its last conv; a CNN's classifier reads one vector per sample.
    let last_conv = convs.last().and_then(|c| order.iter().position(|n| n == c));
    let over_tokens = |&n: &NodeIndex| {
        let after = order.iter().position(|&m| m == n) > last_conv;
        after && graph.tensor(graph.nodes[n].inputs[0]).shape.len() >= 3
    };
    let nodes = if convs.is_empty() || dense.iter().any(over_tokens) {
        dense
    } else {
        convs
    };
    let mut layers: Vec<Layer> = Vec::new();
    let mut last_stem = None;
    for n in nodes {
        let name = &graph.nodes[n].name;
        let stem = crate::lowrank::factor_of(name);
        match layers.last_mut() {
            Some(layer) if stem.is_some() && stem == last_stem => layer.nodes.push(n),
            _ => layers.push(Layer {
                nodes: vec![n],
                op: graph.nodes[n].op_name(),
            }),
        }
        last_stem = stem;
    }
    layers
}

/// The constant inputs of a parameterized node: what training updates.
pub fn params_of(graph: &Graph, node: NodeIndex) -> Vec<TensorId> {
    let n = &graph.nodes[node];
    ops::kernel(n).map_or_else(Vec::new, |k| ops::params_of(graph, k, n))
}

struct Suffix {
    trainable: Vec<NodeIndex>,
    nodes: BTreeSet<NodeIndex>,
}

/// The suffix for training the last `n` layers, or the first node in it that actc cannot
/// differentiate.
fn suffix_for(
    graph: &Graph,
    order: &[NodeIndex],
    layers: &[Layer],
    n: usize,
) -> std::result::Result<Suffix, NodeIndex> {
    let first = layers[layers.len() - n].nodes[0];
    let start = order
        .iter()
        .position(|&x| x == first)
        .expect("layer is in order");
    let trainable: Vec<NodeIndex> = layers[layers.len() - n..]
        .iter()
        .flat_map(|l| l.nodes.iter().copied())
        .collect();
    suffix_from(graph, order, start, trainable)
}

/// The suffix when `trainable` and every parameterized node from `order[start]` on train,
/// or the first node in it that actc cannot differentiate.
fn suffix_from(
    graph: &Graph,
    order: &[NodeIndex],
    start: usize,
    mut trainable: Vec<NodeIndex>,
) -> std::result::Result<Suffix, NodeIndex> {
    for &node in &order[start..] {
        if !trainable.contains(&node) && !params_of(graph, node).is_empty() {
            trainable.push(node);
        }
    }
    let within: BTreeSet<NodeIndex> = order.iter().copied().collect();
    let nodes: BTreeSet<NodeIndex> = graph
        .descendants_of(&trainable)
        .into_iter()
        .filter(|x| within.contains(x))
        .collect();
    for &node in order.iter().filter(|x| nodes.contains(x)) {
        if !ops::differentiable(graph, &graph.nodes[node]) {
            return Err(node);
        }
    }
    Ok(Suffix { trainable, nodes })
}

/// Where the last `blocks` transformer blocks start in `order`: just after the residual
/// stream enters the first of them. A block is two residual `Add`s (attention's and the
/// MLP's), an `Add` being residual when one operand is computed from the other.
fn block_start(graph: &Graph, order: &[NodeIndex], blocks: usize, out: &str) -> Result<usize> {
    let residual: Vec<(NodeIndex, TensorId)> = order
        .iter()
        .filter(|&&n| graph.nodes[n].op_name() == "Add")
        .filter_map(|&n| {
            let ins = &graph.nodes[n].inputs;
            let [a, b] = ins[..] else { return None };
            let from = |x: TensorId, y: TensorId| {
                let p = graph.producer(x)?;
                graph.ancestors_of(&[y]).contains(&p).then_some(x)
            };
            from(a, b).or_else(|| from(b, a)).map(|skip| (n, skip))
        })
        .collect();
    let total = residual.len() / 2;
    if total == 0 {
        bail!(
            "--blocks {blocks}: the model has no transformer block before output '{out}' (no pair of residual Adds); use --layers"
        );
    }
    if blocks == 0 || blocks > total {
        bail!(
            "--blocks {blocks}: the model has {total} transformer blocks before output '{out}' (found as pairs of residual Adds); use --blocks 1 to {total}, or --layers"
        );
    }
    let (_, skip) = residual[residual.len() - 2 * blocks];
    let entry = graph
        .producer(skip)
        .expect("a residual operand is computed");
    Ok(order.iter().position(|&n| n == entry).expect("in order") + 1)
}
