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
