//! `emit`: the scheduled, planned training graph as a [`Plan`].

use super::memplan::{self, Interval, align};
use crate::ir::{Data, Graph, NodeOp, Role, TensorId};
use actc_runtime::exec::geom;
use actc_runtime::plan::{Buffer, BufferKind, DType, Memory, Phase, Step, Weight};
use petgraph::stable_graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};

/// Buffers, steps, weights and the memory plan; the caller fills in the rest of the plan.
pub struct Emitted {
    pub buffers: Vec<Buffer>,
    pub steps: Vec<Step>,
    pub weights: Vec<Weight>,
    pub memory: Memory,
    /// Buffer id of each tensor that has one.
    pub buffer_of: BTreeMap<TensorId, u32>,
    /// Where the prefix lanes after the first begin (`Plan::prefix_lanes`).
    pub prefix_lanes: Vec<u64>,
}

/// `feeds` are the tensors the runtime writes before the first step (boundary tensors,
/// labels); `keep_alive` those it reads after the last (loss, model output).
///
/// Leading steps of phase `Prefix` (the own frozen prefix) get their buffers planned on
/// their own into one block, and the arena holds `prefix_lanes` copies of that block side
/// by side (`exec::lanes`): other threads run other micro-batches in the copies.
pub fn emit(
    graph: &Graph,
    order: &[NodeIndex],
    saved: &BTreeSet<TensorId>,
    weight_grads: &BTreeSet<TensorId>,
    feeds: &[TensorId],
    keep_alive: &[TensorId],
    prefix_lanes: usize,
) -> Emitted {
    let mut used: BTreeSet<TensorId> = feeds.iter().copied().collect();
    for &n in order {
        used.extend(graph.nodes[n].inputs.iter().copied());
        used.extend(graph.nodes[n].outputs.iter().copied());
    }
    used.extend(keep_alive.iter().copied());
    let ids: Vec<TensorId> = used.into_iter().collect();
    let buffer_of: BTreeMap<TensorId, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, i as u32))
        .collect();

    let kind_of = |t: TensorId| -> BufferKind {
        let tensor = graph.tensor(t);
        match tensor.role {
            Role::Input => BufferKind::Boundary,
            Role::ModelInput => BufferKind::Input,
            Role::Label => BufferKind::Label,
            Role::Loss => BufferKind::Loss,
            Role::Trainable => BufferKind::Trainable,
            Role::Const => BufferKind::Frozen,
            Role::OptimizerState => BufferKind::OptimizerState,
            Role::CompressorState => BufferKind::CompressorState,
            Role::Gradient if weight_grads.contains(&t) => BufferKind::WeightGradient,
            Role::Gradient => BufferKind::Gradient,
            Role::Value if saved.contains(&t) => BufferKind::Saved,
            Role::Value => BufferKind::Activation,
        }
    };

    // Lifetimes in steps; feeds are written before step 0.
    let n_steps = order.len();
    let mut first = vec![usize::MAX; ids.len()];
    let mut last = vec![0usize; ids.len()];
    for &t in feeds {
        first[buffer_of[&t] as usize] = 0;
    }
    for (s, &n) in order.iter().enumerate() {
        for &t in &graph.nodes[n].outputs {
            let b = buffer_of[&t] as usize;
            first[b] = first[b].min(s);
            last[b] = last[b].max(s);
        }
        for &t in &graph.nodes[n].inputs {
            let b = buffer_of[&t] as usize;
            first[b] = first[b].min(s);
            last[b] = last[b].max(s);
        }
    }
    for &t in keep_alive {
        last[buffer_of[&t] as usize] = n_steps;
    }

    // A reshape's output is its input's memory under another shape: one group, one offset.
    let mut group: Vec<usize> = (0..ids.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    for &n in order {
        let node = &graph.nodes[n];
        if matches!(node.op, NodeOp::Kernel(actc_runtime::ops::Kind::Reshape(_))) {
            let (a, b) = (
                buffer_of[&node.inputs[0]] as usize,
                buffer_of[&node.outputs[0]] as usize,
            );
            let (ra, rb) = (root(&mut group, a), root(&mut group, b));
            group[rb] = ra;
        }
    }

    let mut buffers: Vec<Buffer> = ids
        .iter()
        .map(|&t| {
            let tensor = graph.tensor(t);
            Buffer {
                name: tensor.name.clone(),
                shape: tensor.shape.iter().map(|&d| d as u64).collect(),
                dtype: tensor.dtype as i32,
                kind: kind_of(t) as i32,
                offset: 0,
                bytes: tensor.bytes() as u64,
            }
        })
        .collect();

    // Kernel scratch: a buffer per step that needs one, live during that step only (the
    // planner lets all of them share memory).
    let mut workspace_of: BTreeMap<usize, u32> = BTreeMap::new();
    for (s, &n) in order.iter().enumerate() {
        let node = &graph.nodes[n];
        let NodeOp::Kernel(kind) = &node.op else {
            continue;
        };
        let shapes = |ts: &[TensorId]| {
            ts.iter()
                .map(|&t| buffers[buffer_of[&t] as usize].shape.clone())
                .collect::<Vec<_>>()
        };
        let (ins, outs) = (shapes(&node.inputs), shapes(&node.outputs));
        let ins: Vec<&[u64]> = ins.iter().map(|v| v.as_slice()).collect();
        let outs: Vec<&[u64]> = outs.iter().map(|v| v.as_slice()).collect();
        let len = geom::workspace_len(kind, &ins, &outs);
        if len == 0 {
            continue;
        }
        workspace_of.insert(s, buffers.len() as u32);
        buffers.push(Buffer {
            name: format!("{}/workspace", node.name),
            shape: vec![len as u64],
            dtype: DType::F32 as i32,
            kind: BufferKind::Workspace as i32,
            offset: 0,
            bytes: 4 * len as u64,
        });
        first.push(s);
        last.push(s);
        group.push(group.len());
    }

    let mut persistent = 0u64;
    let mut groups: BTreeMap<usize, Interval> = BTreeMap::new();
    for b in 0..buffers.len() {
        if buffers[b].kind().is_persistent() {
            buffers[b].offset = persistent;
            persistent += align(buffers[b].bytes);
            continue;
        }
        let r = root(&mut group, b);
        let iv = Interval {
            bytes: buffers[b].bytes,
            first: first[b],
            last: last[b],
        };
        groups
            .entry(r)
            .and_modify(|g| {
                g.bytes = g.bytes.max(iv.bytes);
                g.first = g.first.min(iv.first);
                g.last = g.last.max(iv.last);
            })
            .or_insert(iv);
    }
    let intervals: Vec<Interval> = groups.values().copied().collect();
    let prefix_end = order
        .iter()
        .take_while(|&&n| graph.nodes[n].phase == Phase::Prefix)
        .count();
    let kinds: BTreeMap<usize, BufferKind> =
        groups.keys().map(|&r| (r, buffers[r].kind())).collect();
    let placed = place(&groups, &kinds, prefix_end, prefix_lanes);
    let offset_of = &placed.offsets;
    for b in 0..buffers.len() {
        if !buffers[b].kind().is_persistent() {
            buffers[b].offset = offset_of[&root(&mut group, b)];
        }
    }

    let steps = order
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let node = &graph.nodes[n];
            let NodeOp::Kernel(kind) = &node.op else {
                unreachable!("select and the prefix check keep only runtime ops")
            };
            Step {
                name: node.name.clone(),
                op: Some(kind.clone().into()),
                inputs: node.inputs.iter().map(|t| buffer_of[t]).collect(),
                outputs: node.outputs.iter().map(|t| buffer_of[t]).collect(),
                phase: node.phase as i32,
                workspace: workspace_of.get(&s).copied(),
                origin: node.origin.clone().unwrap_or_default(),
            }
        })
        .collect();

    let weights = ids
        .iter()
        .enumerate()
        .filter_map(|(b, &t)| {
            let tensor = graph.tensor(t);
            let data = match (&tensor.role, &tensor.data) {
                (Role::Trainable | Role::Const, Some(Data::F32(v))) => {
                    v.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                (Role::Trainable | Role::Const, Some(Data::I64(v))) => {
                    v.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                _ => return None,
            };
            Some(Weight {
                buffer: b as u32,
                source: tensor.name.clone(),
                data,
            })
        })
        .collect();

    let naive = memplan::naive(&intervals);
    let saved_bytes = saved.iter().map(|t| graph.tensor(*t).bytes() as u64).sum();
    Emitted {
        buffers,
        steps,
        weights,
        memory: Memory {
            arena: placed.arena,
            persistent,
            naive,
            saved: saved_bytes,
            prefix_arena: placed.prefix_arena,
            // The caller says what training alone needs when it adds a prefix.
            training_arena: placed.arena,
        },
        buffer_of,
        prefix_lanes: placed.prefix_lanes,
    }
}

/// Arena offsets of the buffer groups (by root), the arena's size, and the prefix's block.
struct Placed {
    offsets: BTreeMap<usize, u64>,
    arena: u64,
    /// The prefix's block in all its lanes.
    prefix_arena: u64,
    prefix_lanes: Vec<u64>,
}

/// Places the transient buffer groups (`kinds`: their buffers' kind). The first
/// `prefix_end` steps are the own prefix: its buffers (all a prefix step touches but the
/// boundary tensors and labels it runs beside) are planned on their own into one block, of
/// which the arena holds `prefix_lanes` copies side by side. The prefix's outputs are kept
/// alive only to its end, where the runtime copies them out before the next step.
fn place(
    groups: &BTreeMap<usize, Interval>,
    kinds: &BTreeMap<usize, BufferKind>,
    prefix_end: usize,
    prefix_lanes: usize,
) -> Placed {
    let in_prefix = |r: usize| {
        groups[&r].first < prefix_end
            && !matches!(kinds[&r], BufferKind::Boundary | BufferKind::Label)
    };
    let (prefix, mut rest): (Vec<usize>, Vec<usize>) = groups.keys().partition(|&&r| in_prefix(r));
    let block_intervals: Vec<Interval> = prefix
        .iter()
        .map(|r| Interval {
            last: groups[r].last.min(prefix_end - 1),
            ..groups[r]
        })
        .collect();
    let (block_offsets, block) = memplan::plan(&block_intervals);
    let lanes = if prefix.is_empty() {
        0
    } else {
        prefix_lanes.max(1)
    };
    // With a prefix, what it runs beside (the boundary tensors and labels, written before
    // step 0) goes at the bottom, the prefix block above, and training's buffers around:
    // placed by size, the block went first and the boundary tensors above it, in the middle
    // of what training packs afterwards.
    let beside = match lanes {
        0 => 0,
        _ => {
            rest.sort_by_key(|&r| groups[&r].first != 0);
            rest.iter().take_while(|&&r| groups[&r].first == 0).count()
        }
    };
    let mut intervals: Vec<Interval> = rest.iter().map(|r| groups[r]).collect();
    if lanes > 0 {
        let block = Interval {
            bytes: block * lanes as u64,
            first: 0,
            last: prefix_end - 1,
        };
        intervals.insert(beside, block);
    }
    let (mut offsets, arena) = memplan::plan_pinned(&intervals, beside + lanes.min(1));
    let base = if lanes > 0 { offsets.remove(beside) } else { 0 };
    let offsets = rest
        .iter()
        .copied()
        .zip(offsets)
        .chain(
            prefix
                .iter()
                .zip(block_offsets)
                .map(|(&r, o)| (r, base + o)),
        )
        .collect();
    Placed {
        offsets,
        arena,
        prefix_arena: block * lanes as u64,
        prefix_lanes: (1..lanes).map(|l| base + l as u64 * block).collect(),
    }
}
