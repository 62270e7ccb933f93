//! Prefix lanes: the frozen prefix run on several micro-batches at once, one per thread.
//!
//! The prefix's products are small (a micro-batch of small maps), and split across threads
//! they spend more time waking and waiting than computing: two threads ran MobileNetV2's
//! 32² prefix barely faster than one. So each thread runs whole micro-batches through every
//! prefix step on its own, in its own copy of the arena bytes the prefix steps use (its
//! *region*). Lane 0 is the planned region itself; lane `l ≥ 1` is the same layout moved to
//! `prefix_lanes[l − 1]`, in arena bytes nothing else uses while the prefix runs (the
//! compiler's `emit` plans the region as a block and reserves the copies beside it).

use std::ops::Range;

use crate::plan::{Plan, Step};

/// Most lanes a plan may have: bounds the executor's per-round stack array.
pub const MAX_LANES: usize = 8;

/// The arena bytes the prefix steps read and write (the model input and the prefix outputs
/// included), as `lo..hi`; empty without prefix steps.
pub fn region(plan: &Plan) -> Range<u64> {
    let prefix = &plan.steps[..plan.prefix_steps as usize];
    let buffers = prefix
        .iter()
        .flat_map(step_buffers)
        .chain(prefix.first().map(|_| plan.input))
        .map(|b| plan.buffer(b))
        .filter(|b| !b.kind().is_persistent());
    buffers
        .map(|b| b.offset..b.offset + b.bytes)
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
        .unwrap_or(0..0)
}

/// Every buffer a step names: its inputs, outputs and scratch.
pub(super) fn step_buffers(s: &Step) -> impl Iterator<Item = u32> + '_ {
    s.inputs
        .iter()
        .chain(&s.outputs)
        .chain(&s.workspace)
        .copied()
}

/// The arena bytes of the buffers the prefix runs beside: the boundary tensors and labels.
fn fed(plan: &Plan) -> impl Iterator<Item = Range<u64>> + '_ {
    plan.feeds
        .iter()
        .map(|&b| plan.buffer(b))
        .filter(|b| !b.kind().is_persistent())
        .map(|b| b.offset..b.offset + b.bytes)
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The lanes' copies are inside the arena, 64-byte aligned, and each meets neither the
/// region, another copy, nor a fed buffer.
pub fn check(plan: &Plan) -> Result<(), String> {
    let r = region(plan);
    let span = r.end - r.start;
    let arena = plan.memory.as_ref().map_or(0, |m| m.arena);
    if plan.prefix_lanes.len() >= MAX_LANES {
        return Err(format!(
            "{} prefix lanes, more than {MAX_LANES}",
            plan.prefix_lanes.len() + 1
        ));
    }
    let mut taken: Vec<Range<u64>> = fed(plan).chain([r]).collect();
    for &at in &plan.prefix_lanes {
        let lane = at..at.saturating_add(span);
        if !at.is_multiple_of(64) || lane.end > arena || taken.iter().any(|t| overlaps(t, &lane)) {
            return Err(format!(
                "a prefix lane at arena offset {at} overlaps live buffers or leaves the arena"
            ));
        }
        taken.push(lane);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Buffer, BufferKind, Memory, Phase};

    fn buffer(offset: u64, bytes: u64) -> Buffer {
        Buffer {
            offset,
            bytes,
            kind: BufferKind::Activation as i32,
            ..Default::default()
        }
    }

    /// A prefix over bytes 128..1152 and a boundary tensor at 1280..1536 in a 3584-byte
    /// arena: copies of the region may go after the boundary, not over it or each other.
    #[test]
    fn lanes_go_where_nothing_else_lives() {
        let mut plan = Plan {
            buffers: vec![buffer(128, 512), buffer(640, 512), buffer(1280, 256)],
            steps: vec![Step {
                inputs: vec![0],
                outputs: vec![1],
                phase: Phase::Prefix as i32,
                ..Default::default()
            }],
            prefix_steps: 1,
            input: 0,
            feeds: vec![2],
            memory: Some(Memory {
                arena: 3584,
                ..Default::default()
            }),
            prefix_lanes: vec![1536, 2560],
            ..Default::default()
        };
        assert_eq!(region(&plan), 128..1152);
        assert_eq!(check(&plan), Ok(()));
        for bad in [1600, 1024, 1216, 2600] {
            plan.prefix_lanes[1] = bad;
            assert!(check(&plan).is_err(), "a lane at {bad}");
        }
    }
}
