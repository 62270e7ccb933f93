//! `compile --freeze-schedule sequential[:K]`: sequential freezing (Hajimolahoseini et al.,
//! arXiv 2309.03824). Within each layer `actc decompose` split into factors (a group, as
//! `select` counts it), one factor trains per turn while the others stay frozen; turns rotate
//! every K updates or every epoch.
//!
//! The plan keeps every step, so memory is planned once for all turns. A turn lists the steps
//! it leaves out: the frozen factors' weight gradients and updates, and every step whose
//! results only those needed (input gradients below the lowest training factor, the
//! compression of inputs only a frozen factor's weight gradient reads).

use super::select::Selection;
use crate::bail;
use crate::error::Result;
use crate::ir::{Graph, NodeOp, Role, TensorId};
use crate::lowrank::factor_of;
use actc_runtime::ops::Kind;
use actc_runtime::plan::{Freeze, Phase, Turn};
use petgraph::stable_graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How often the trained factor of each group changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotate {
    Steps(u32),
    Epoch,
}

impl fmt::Display for Rotate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rotate::Steps(k) => write!(f, "sequential:{k}"),
            Rotate::Epoch => write!(f, "sequential"),
        }
    }
}

impl std::str::FromStr for Rotate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Rotate, String> {
        let bad = || {
            format!(
                "'{s}' is not a freeze schedule; give `sequential` (turns per epoch) or `sequential:K` (every K steps, K >= 1)"
            )
        };
        match s.split_once(':') {
            None if s == "sequential" => Ok(Rotate::Epoch),
            Some(("sequential", "epoch")) => Ok(Rotate::Epoch),
            Some(("sequential", k)) => match k.parse::<u32>() {
                Ok(k) if k >= 1 => Ok(Rotate::Steps(k)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// The turns over the scheduled graph (`order` is the plan's step order).
pub fn turns(
    graph: &Graph,
    order: &[NodeIndex],
    selection: &Selection,
    rotate: Rotate,
) -> Result<Freeze> {
    let mut groups: BTreeMap<&str, Vec<(&str, &[TensorId])>> = BTreeMap::new();
    for l in &selection.trained {
        if let Some(layer) = factor_of(&l.node) {
            groups.entry(layer).or_default().push((&l.node, &l.params));
        }
    }
    groups.retain(|_, members| members.len() > 1);
    let Some(count) = groups.values().map(Vec::len).max() else {
        bail!(
            "--freeze-schedule: none of the trained layers is in factors (`actc decompose` makes them); decompose the model first, or train more --layers"
        );
    };
    let turns = (0..count)
        .map(|t| {
            let mut trains = Vec::new();
            let mut frozen = BTreeSet::new();
            for members in groups.values() {
                for (i, (node, params)) in members.iter().enumerate() {
                    if i == t % members.len() {
                        trains.push(node.to_string());
                    } else {
                        frozen.extend(params.iter().copied());
                    }
                }
            }
            Turn {
                skip: left_out(graph, order, &frozen),
                trains,
            }
        })
        .collect();
    Ok(Freeze {
        every: match rotate {
            Rotate::Steps(k) => k,
            Rotate::Epoch => 0,
        },
        turns,
    })
}

/// The steps (positions in `order`) a training step with `frozen` weights does without:
/// those no forward value, loss or update of a training weight depends on.
fn left_out(graph: &Graph, order: &[NodeIndex], frozen: &BTreeSet<TensorId>) -> Vec<u32> {
    let mut needed: BTreeSet<NodeIndex> = BTreeSet::new();
    let mut wanted: BTreeSet<TensorId> = BTreeSet::new();
    for &n in order.iter().rev() {
        let node = &graph.nodes[n];
        let root = match node.phase {
            Phase::Prefix => true,
            // Storing an input for the backward phase matters only if its reader runs.
            Phase::Forward => !matches!(node.op, NodeOp::Kernel(Kind::Compress(_))),
            Phase::Loss => true,
            // An update writes its weight in place: it has no outputs.
            Phase::Backward | Phase::Update => {
                node.outputs.is_empty()
                    && node
                        .inputs
                        .iter()
                        .any(|&t| graph.tensor(t).role == Role::Trainable && !frozen.contains(&t))
            }
        };
        if root || node.outputs.iter().any(|t| wanted.contains(t)) {
            needed.insert(n);
            wanted.extend(node.inputs.iter().copied());
        }
    }
    order
        .iter()
        .enumerate()
        .filter(|(_, n)| !needed.contains(n))
        .map(|(i, _)| i as u32)
        .collect()
}
