//! `memplan`: arena offsets from lifetimes, decided before anything runs.
//!
//! Each transient buffer lives from the step that writes it to the last step that reads it.
//! Buffers are placed largest first; each goes into the smallest gap, among the buffers
//! already placed whose lifetimes overlap its own, that fits it (best fit), else on top.
//! The arena size is then the planned peak of transient memory.

use crate::ir::{Graph, NodeOp, Role, TensorId};
use crate::ops;
use actc_runtime::plan::{Buffer, BufferKind, DType, Memory, Phase};
use actc_runtime::planning::step_workspace_len;
use petgraph::stable_graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};

/// Offsets are multiples of this, so every buffer suits vector loads.
pub const ALIGN: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub bytes: u64,
    /// First step that writes the buffer.
    pub first: usize,
    /// Last step that reads it (inclusive).
    pub last: usize,
}

impl Interval {
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

pub fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// Offsets for `intervals` (same order) and the arena size.
pub fn plan(intervals: &[Interval]) -> (Vec<u64>, u64) {
    plan_pinned(intervals, 0)
}

/// [`plan`], with the first `pinned` intervals placed before the others, in their order:
/// each as low as it fits among those before it.
pub fn plan_pinned(intervals: &[Interval], pinned: usize) -> (Vec<u64>, u64) {
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order[pinned..]
        .sort_by_key(|&i| (std::cmp::Reverse(intervals[i].bytes), intervals[i].first, i));
    let mut offsets = vec![0u64; intervals.len()];
    // Placed buffers as (start, end, interval), kept sorted by place: each new one scans
    // them once for gaps, without gathering and sorting the live ones again (that made a
    // long chain's planning the bulk of its compile time).
    let mut placed: Vec<(u64, u64, usize)> = Vec::with_capacity(intervals.len());
    let mut peak = 0;
    for i in order {
        let me = intervals[i];
        let size = align(me.bytes);
        let mut best: Option<(u64, u64)> = None; // (gap size, offset)
        let mut cursor = 0;
        for &(start, end, j) in &placed {
            if !intervals[j].overlaps(&me) {
                continue;
            }
            if start >= cursor + size {
                let gap = start - cursor;
                if best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, cursor));
                }
            }
            cursor = cursor.max(end);
        }
        let offset = best.map(|(_, o)| o).unwrap_or(cursor);
        offsets[i] = offset;
        peak = peak.max(offset + size);
        let at = placed.partition_point(|&(s, e, _)| (s, e) <= (offset, offset + size));
        placed.insert(at, (offset, offset + size, i));
    }
    (offsets, peak)
}

/// Sum of all sizes: the arena without any reuse.
pub fn naive(intervals: &[Interval]) -> u64 {
    intervals.iter().map(|i| align(i.bytes)).sum()
}

/// What the planner is asked: `feeds` are the tensors the runtime writes before the first
/// step (boundary tensors, labels); `keep_alive` those it reads after the last (loss, model
/// output); `saved` the activations kept for the backward pass and `weight_grads` the
/// weights' gradients (for the buffers' kinds).
///
/// Leading steps of phase `Prefix` (the own frozen prefix) get their buffers planned on
/// their own into one block, and the arena holds `prefix_lanes` copies of that block side
/// by side (`exec::lanes`): other threads run other micro-batches in the copies.
pub struct Request<'a> {
    pub saved: &'a BTreeSet<TensorId>,
    pub weight_grads: &'a BTreeSet<TensorId>,
    pub feeds: &'a [TensorId],
    pub keep_alive: &'a [TensorId],
    pub prefix_lanes: usize,
}

/// Every buffer with its kind and offset, and the memory plan.
pub struct Layout {
    pub buffers: Vec<Buffer>,
    pub memory: Memory,
    /// Buffer id of each tensor that has one (ids in tensor order).
    pub buffer_of: BTreeMap<TensorId, u32>,
    /// The scratch buffer of each step (by position in the order) that needs one.
    pub workspace_of: BTreeMap<usize, u32>,
    /// Where the prefix lanes after the first begin (`Plan::prefix_lanes`).
    pub prefix_lanes: Vec<u64>,
}

/// Buffers for the tensors `order`'s steps touch, their lifetimes, and arena offsets.
pub fn layout(graph: &Graph, order: &[NodeIndex], req: &Request) -> Layout {
    let Request {
        saved,
        weight_grads,
        feeds,
        keep_alive,
        prefix_lanes,
    } = *req;

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
        if ops::kernel(node).is_some_and(|k| ops::room_of(k).aliases_input(k)) {
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
        let len = step_workspace_len(kind, &ins, &outs);
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

    let naive = naive(&intervals);
    let saved_bytes = saved.iter().map(|t| graph.tensor(*t).bytes() as u64).sum();
    Layout {
        buffers,
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
        workspace_of,
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
    let (block_offsets, block) = plan(&block_intervals);
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
    let (mut offsets, arena) = plan_pinned(&intervals, beside + lanes.min(1));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let iv = [
            Interval {
                bytes: 100,
                first: 0,
                last: 1,
            },
            Interval {
                bytes: 100,
                first: 2,
                last: 3,
            },
        ];
        let (off, peak) = plan(&iv);
        assert_eq!(off, vec![0, 0]);
        assert_eq!(peak, 128);
    }

    #[test]
    fn best_fit_picks_the_smallest_gap() {
        // A big and a small hole open while the probe lives; the probe takes the small one.
        let iv = [
            Interval {
                bytes: 640,
                first: 0,
                last: 9,
            }, // bottom, always live
            Interval {
                bytes: 640,
                first: 0,
                last: 1,
            }, // dies early: big hole
            Interval {
                bytes: 640,
                first: 0,
                last: 9,
            }, // above the big hole
            Interval {
                bytes: 64,
                first: 0,
                last: 1,
            }, // dies early: small hole at the top
            Interval {
                bytes: 64,
                first: 0,
                last: 9,
            },
            Interval {
                bytes: 64,
                first: 5,
                last: 6,
            }, // the probe
        ];
        let (off, _) = plan(&iv);
        assert_eq!(off[5], off[3], "probe should reuse the small hole");
    }
}
