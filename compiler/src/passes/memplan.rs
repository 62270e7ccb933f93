//! `memplan`: arena offsets from lifetimes, decided before anything runs.
//!
//! Each transient buffer lives from the step that writes it to the last step that reads it.
//! Buffers are placed largest first; each goes into the smallest gap, among the buffers
//! already placed whose lifetimes overlap its own, that fits it (best fit), else on top.
//! The arena size is then the planned peak of transient memory.

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
    let mut placed: Vec<usize> = Vec::with_capacity(intervals.len());
    let mut peak = 0;
    for i in order {
        let me = intervals[i];
        let size = align(me.bytes);
        let mut live: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&j| intervals[j].overlaps(&me))
            .map(|&j| (offsets[j], offsets[j] + align(intervals[j].bytes)))
            .collect();
        live.sort_unstable();
        let mut best: Option<(u64, u64)> = None; // (gap size, offset)
        let mut cursor = 0;
        for &(start, end) in &live {
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
        placed.push(i);
    }
    (offsets, peak)
}

/// Sum of all sizes: the arena without any reuse.
pub fn naive(intervals: &[Interval]) -> u64 {
    intervals.iter().map(|i| align(i.bytes)).sum()
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
