//! `memplan`: arena offsets from lifetimes, decided before anything runs.
//!
//! Each transient buffer lives from the step that writes it to the last step that reads it.
//! Buffers are placed largest first; each goes into the smallest gap, among the buffers
//! already placed whose lifetimes overlap its own, that fits it (best fit), else on top.
//! The arena size is then the planned peak of transient memory.

use super::schedule;
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
    let steps = intervals.iter().map(|iv| iv.last + 1).max().unwrap_or(0);
    let mut arena = Arena::new(steps);
    let mut offsets = vec![0u64; intervals.len()];
    let mut peak = 0;
    for i in order {
        let me = intervals[i];
        let size = align(me.bytes);
        let offset = arena.best_fit(me, size);
        arena.insert(me, offset, size);
        offsets[i] = offset;
        peak = peak.max(offset + size);
    }
    (offsets, peak)
}

/// The smallest gap of at least `size` between `placed` (offset ranges sorted by start) and
/// below their top, the lowest such; else the top.
fn best_gap(placed: &[(u64, u64)], size: u64) -> u64 {
    let mut best: Option<(u64, u64)> = None; // (gap size, offset)
    let mut cursor = 0;
    for &(start, end) in placed {
        if start >= cursor + size {
            let gap = start - cursor;
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, cursor));
            }
        }
        cursor = cursor.max(end);
    }
    best.map(|(_, o)| o).unwrap_or(cursor)
}

/// The placed buffers, indexed by time so that placing one costs in the buffers whose
/// lifetimes overlap its own, and less while those are packed: scanning all placed buffers
/// for every placement made a long chain's planning quadratic.
///
/// A segment tree over the steps. Each node holds offset ranges, sorted, disjoint and merged
/// where they meet: `own`, the buffers whose lifetime covers the node's span but not its
/// parent's, and `sub`, all those of its subtree. The buffers overlapping a lifetime are those
/// in the `own` of the nodes above the ones that tile it and in the `sub` of those: a few
/// dozen short lists, where buffers packed back to back count as one range.
///
/// Seen as closed ranges, merging those that touch changes no gap a buffer of nonzero size
/// fits in. A zero-size buffer fits in a gap of zero, where two ranges touch: those are
/// placed by scanning every placed buffer (there are none in practice).
struct Arena {
    leaves: usize,
    own: Vec<Vec<(u64, u64)>>,
    sub: Vec<Vec<(u64, u64)>>,
    /// Every placed buffer's range and lifetime, for the zero-size ones.
    placed: Vec<(u64, u64, Interval)>,
    /// The ranges overlapping the lifetime being placed, gathered from the tree.
    near: Vec<(u64, u64)>,
}

impl Arena {
    fn new(steps: usize) -> Arena {
        let leaves = steps.next_power_of_two();
        Arena {
            leaves,
            own: vec![Vec::new(); 2 * leaves],
            sub: vec![Vec::new(); 2 * leaves],
            placed: Vec::new(),
            near: Vec::new(),
        }
    }

    /// Where best fit places a buffer of `size` bytes live during `me`.
    fn best_fit(&mut self, me: Interval, size: u64) -> u64 {
        if size == 0 {
            let mut near: Vec<(u64, u64)> = self
                .placed
                .iter()
                .filter(|(_, _, iv)| iv.overlaps(&me))
                .map(|&(start, end, _)| (start, end))
                .collect();
            near.sort_unstable();
            return best_gap(&near, size);
        }
        self.near.clear();
        // A buffer no step touches (first past last) overlaps none.
        if me.first <= me.last {
            self.gather(1, 0, self.leaves - 1, me);
        }
        self.near.sort_unstable_by_key(|&(start, _)| start);
        best_gap(&self.near, size)
    }

    /// Pushes onto `near` the ranges of `node` (spanning steps `lo..=hi`) and below that are
    /// live during `me`.
    fn gather(&mut self, node: usize, lo: usize, hi: usize, me: Interval) {
        if me.first <= lo && hi <= me.last {
            self.near.extend_from_slice(&self.sub[node]);
            return;
        }
        self.near.extend_from_slice(&self.own[node]);
        let mid = lo + (hi - lo) / 2;
        if me.first <= mid {
            self.gather(2 * node, lo, mid, me);
        }
        if me.last > mid {
            self.gather(2 * node + 1, mid + 1, hi, me);
        }
    }

    fn insert(&mut self, me: Interval, offset: u64, size: u64) {
        let range = (offset, offset + size);
        self.placed.push((range.0, range.1, me));
        if me.first <= me.last {
            self.store(1, 0, self.leaves - 1, me, range);
        }
    }

    fn store(&mut self, node: usize, lo: usize, hi: usize, me: Interval, range: (u64, u64)) {
        merge_into(&mut self.sub[node], range);
        if me.first <= lo && hi <= me.last {
            merge_into(&mut self.own[node], range);
            return;
        }
        let mid = lo + (hi - lo) / 2;
        if me.first <= mid {
            self.store(2 * node, lo, mid, me, range);
        }
        if me.last > mid {
            self.store(2 * node + 1, mid + 1, hi, me, range);
        }
    }
}

/// Adds the closed range `[start, end]` to sorted disjoint closed `ranges`, merged with those
/// it meets.
fn merge_into(ranges: &mut Vec<(u64, u64)>, (start, end): (u64, u64)) {
    let lo = ranges.partition_point(|r| r.1 < start);
    let hi = ranges.partition_point(|r| r.0 <= end);
    if lo == hi {
        ranges.insert(lo, (start, end));
        return;
    }
    ranges[lo] = (start.min(ranges[lo].0), end.max(ranges[hi - 1].1));
    ranges.drain(lo + 1..hi);
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
    // Steps that run side by side share their time: whatever either touches (its scratch
    // too) is live through both, so neither writes where the other reads.
    for s in schedule::side_by_side(graph, order) {
        for step in [s, s + 1] {
            let node = &graph.nodes[order[step]];
            let tensors = node.inputs.iter().chain(&node.outputs);
            let scratch = workspace_of.get(&step).map(|&b| b as usize);
            for b in tensors.map(|t| buffer_of[t] as usize).chain(scratch) {
                first[b] = first[b].min(s);
                last[b] = last[b].max(s + 1);
            }
        }
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

    /// The planner as it was before `Arena`: every placement scans all placed buffers.
    fn plan_by_scanning(intervals: &[Interval], pinned: usize) -> (Vec<u64>, u64) {
        let mut order: Vec<usize> = (0..intervals.len()).collect();
        order[pinned..]
            .sort_by_key(|&i| (std::cmp::Reverse(intervals[i].bytes), intervals[i].first, i));
        let mut offsets = vec![0u64; intervals.len()];
        let mut placed: Vec<(u64, u64, usize)> = Vec::new();
        let mut peak = 0;
        for i in order {
            let me = intervals[i];
            let size = align(me.bytes);
            let mut best: Option<(u64, u64)> = None;
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

    /// Random interval sets: few distinct sizes (ties, zero), lifetimes short, long or nested
    /// around a middle step, and a pinned prefix.
    fn random_case(next: &mut impl FnMut(u64) -> u64) -> (Vec<Interval>, usize) {
        let steps = 1 + next(40) as usize;
        let sizes = [0, 1, 64, 100, 128, 200, 640, 1000];
        let n = next(120) as usize;
        let intervals: Vec<Interval> = (0..n)
            .map(|_| {
                let bytes = match next(3) {
                    0 => sizes[next(sizes.len() as u64) as usize],
                    _ => next(2000),
                };
                let (first, last) = match next(3) {
                    0 => {
                        let d = next(steps as u64 / 2 + 1) as usize;
                        (d.min(steps / 2), (steps - 1 - d).max(steps / 2))
                    }
                    _ => {
                        let a = next(steps as u64) as usize;
                        let b = next(steps as u64) as usize;
                        (a.min(b), a.max(b))
                    }
                };
                Interval { bytes, first, last }
            })
            .collect();
        let pinned = next(n as u64 / 4 + 1) as usize;
        (intervals, pinned)
    }

    #[test]
    fn places_as_scanning_every_placed_buffer_does() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |below: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % below.max(1)
        };
        for case in 0..4000 {
            let (intervals, pinned) = random_case(&mut next);
            assert_eq!(
                plan_pinned(&intervals, pinned),
                plan_by_scanning(&intervals, pinned),
                "case {case}: {intervals:?}, {pinned} pinned"
            );
        }
    }

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
