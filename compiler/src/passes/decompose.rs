//! `actc decompose`: each selected layer's constant weight in thin factors, as its room
//! rewrites it ([`Room::low_rank`]).
//!
//! [`Room::low_rank`]: crate::ops::room::Room::low_rank

use crate::error::Result;
use crate::ir::Graph;
use crate::lowrank::{LayerReport, Request, speed};
use crate::onnx::write::Original;
use crate::{bail, err, ops};

/// Rewrites `layers` (node names, in the model's order); one report per layer with a weight
/// to factor.
pub fn decompose(
    graph: &mut Graph,
    layers: &[String],
    req: &Request,
    original: &Original,
) -> Result<Vec<LayerReport>> {
    let mut reports = Vec::new();
    for layer in layers {
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
