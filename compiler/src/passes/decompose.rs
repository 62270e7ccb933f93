//! `actc decompose`: each selected layer's constant weight in thin factors, as its room
//! rewrites it ([`Room::low_rank`]).
//!
//! [`Room::low_rank`]: crate::ops::room::Room::low_rank

use crate::error::Result;
use crate::ir::{Graph, TensorId};
use crate::lowrank::data::Whitening;
use crate::lowrank::{LayerReport, Request, factor_of, speed};
use crate::onnx::write::Original;
use crate::passes::select::Selection;
use crate::{bail, err, ops};
use petgraph::stable_graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};

/// The layers nearest the outputs the loss reads: the first trained Conv, Gemm or MatMul
/// met walking back from each (a CNN's classifier, which `--layers` does not count as a
/// layer). A layer in factors is named as the layer.
pub fn heads(graph: &Graph, selection: &Selection) -> BTreeSet<String> {
    let dense: BTreeSet<NodeIndex> = selection
        .trained
        .iter()
        .filter(|l| matches!(l.op.as_str(), "Conv" | "Gemm" | "MatMul"))
        .filter_map(|l| graph.node_named(&l.node))
        .collect();
    let mut heads = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut stack = selection.outputs.clone();
    while let Some(t) = stack.pop() {
        if !seen.insert(t) {
            continue;
        }
        let Some(p) = graph.producer(t) else {
            continue;
        };
        let name = &graph.nodes[p].name;
        if dense.contains(&p) {
            heads.insert(factor_of(name).unwrap_or(name).to_string());
        } else {
            stack.extend(&graph.nodes[p].inputs);
        }
    }
    heads
}

/// The map the model's head reads, before the ops that only pool or reshape it (a CNN's
/// last feature map, not its pooled vector): what `decompose --distill` trains the factors to
/// reproduce. `None` when no head stays whole.
pub fn features(graph: &Graph, heads: &BTreeSet<String>) -> Option<TensorId> {
    let head = graph.node_named(heads.first()?)?;
    let mut t = *graph.nodes[head].inputs.first()?;
    while let Some(p) = graph.producer(t) {
        let node = &graph.nodes[p];
        match node.op_name().as_str() {
            "Reshape" | "Flatten" | "Squeeze" | "GlobalAveragePool" | "ReduceMean" => {
                t = node.inputs[0];
            }
            _ => break,
        }
    }
    Some(t)
}

/// The maps `decompose --distill` matches besides `last` unless told which: for each spatial
/// size, the last of the narrowest maps that every later layer depends on alone and that a
/// dense layer still separates from `last` (a CNN's stage outputs: MobileNetV2's last
/// bottleneck at each resolution, ResNet's last block output), in the model's order, where
/// one of `layers` computes into it. With the last map alone, the first layers learn only
/// through every factor after them.
pub fn stage_maps(graph: &Graph, last: TensorId, layers: &[String]) -> Vec<TensorId> {
    let order = graph.topo_order();
    let position: BTreeMap<NodeIndex, usize> =
        order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    // The last node to read a value; the graph's outputs live to the end.
    let last_read = |t: TensorId| match graph.outputs.contains(&t) {
        true => usize::MAX,
        false => graph
            .consumers(t)
            .filter_map(|c| position.get(&c).copied())
            .max()
            .unwrap_or(0),
    };
    let mut reach = graph
        .inputs
        .iter()
        .map(|&t| last_read(t))
        .max()
        .unwrap_or(0);
    // A map with only elementwise ops between it and `last` (ResNet's final Add before its
    // ReLU) would match the same features twice.
    let feeding = graph.ancestors_of(&[last]);
    let last_dense = order
        .iter()
        .rposition(|n| {
            feeding.contains(n)
                && matches!(
                    graph.nodes[*n].op_name().as_str(),
                    "Conv" | "Gemm" | "MatMul"
                )
        })
        .unwrap_or(0);
    // Per (height, width): the narrowest cut so far, as (channels, tensor).
    let mut stages: BTreeMap<(usize, usize), (usize, TensorId)> = BTreeMap::new();
    for (i, &n) in order.iter().enumerate() {
        let outputs = &graph.nodes[n].outputs;
        if let [t] = outputs[..] {
            let shape = &graph.tensor(t).shape;
            if reach <= i && i < last_dense && shape.len() == 4 && shape[2] * shape[3] > 1 {
                let stage = stages.entry((shape[2], shape[3])).or_insert((shape[1], t));
                if shape[1] <= stage.0 {
                    *stage = (shape[1], t);
                }
            }
        }
        reach = outputs
            .iter()
            .map(|&t| last_read(t))
            .fold(reach, usize::max);
    }
    let factored: BTreeSet<NodeIndex> = layers.iter().filter_map(|l| graph.node_named(l)).collect();
    let mut maps: Vec<TensorId> = stages
        .into_values()
        .map(|(_, t)| t)
        .filter(|&t| !graph.ancestors_of(&[t]).is_disjoint(&factored))
        .collect();
    maps.sort_by_key(|&t| graph.producer(t).map(|p| position[&p]));
    maps
}

/// Why the model's head stays whole unless asked (`--include-head`).
const HEAD: &str =
    "the model's head: its rank would bound the outputs' span (--include-head factors it)";

/// Rewrites `layers` (node names, in the model's order) but keeps `heads` whole, factoring
/// those in `on_data` to keep their outputs on the calibration data; one report per layer
/// with a weight to factor.
pub fn decompose(
    graph: &mut Graph,
    layers: &[String],
    heads: &BTreeSet<String>,
    on_data: &BTreeMap<String, Whitening>,
    req: &Request,
    original: &Original,
) -> Result<Vec<LayerReport>> {
    let mut reports = Vec::new();
    for layer in layers {
        let req = &Request {
            keep: heads.contains(layer).then_some(HEAD),
            on_data: on_data.get(layer),
            ..*req
        };
        let Some(n) = graph.node_named(layer) else {
            continue;
        };
        let Some((room, kind)) = ops::room_of_node(&graph.nodes[n]) else {
            continue;
        };
        let kind = kind.clone();
        let report = match req.optimize {
            None => room.low_rank(&kind, graph, n, req),
            Some(opt) => speed::low_rank(room, &kind, graph, n, req, opt, original),
        }
        .map_err(|e| err!("layer '{layer}': {}", e.0))?;
        if let Some(report) = report {
            reports.push(report);
        }
    }
    if reports.is_empty() {
        let named: Vec<String> = layers
            .iter()
            .filter_map(|l| graph.node_named(l).map(|n| (l, n)))
            .map(|(l, n)| format!("{l} ({})", graph.nodes[n].op_name()))
            .collect();
        bail!(
            "nothing to decompose: the selected layers ({}) have no Conv, Gemm or MatMul with a constant weight",
            named.join(", ")
        );
    }
    Ok(reports)
}
