//! `compile --lora R`: every selected layer's weights freeze, and a rank-R adapter beside
//! each layer that can have one trains instead ([`Room::adapter`]); `export` merges the
//! adapters into the weights.
//!
//! [`Room::adapter`]: crate::ops::room::Room::adapter

use super::select::Selection;
use crate::error::Result;
use crate::ir::{Graph, Role};
use crate::lowrank::attach_adapter;
use crate::{bail, ops};
use actc_runtime::plan::Adapter;

pub fn add_adapters(
    graph: &mut Graph,
    selection: &mut Selection,
    rank: usize,
) -> Result<Vec<Adapter>> {
    let mut adapters = Vec::new();
    for layer in &selection.trained {
        for &p in &layer.params {
            graph.tensor_mut(p).role = Role::Const;
        }
        let Some(n) = graph.node_named(&layer.node) else {
            continue;
        };
        let form = ops::room_of_node(&graph.nodes[n])
            .and_then(|(room, kind)| room.adapter(&kind.clone(), graph, n, rank));
        if let Some(form) = form {
            let replaced = graph.nodes[n].outputs[0];
            let (adapter, sum) = attach_adapter(graph, n, form);
            // A trained output itself may be the layer's: the loss reads the sum.
            for out in selection.outputs.iter_mut().filter(|o| **o == replaced) {
                *out = sum;
            }
            adapters.push(adapter);
        }
    }
    if adapters.is_empty() {
        bail!(
            "--lora: none of the trained layers ({}) is a Conv (group 1), Gemm or MatMul with a constant weight an adapter can sit beside",
            selection
                .trained
                .iter()
                .map(|l| l.node.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(adapters)
}
