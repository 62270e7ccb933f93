//! Strided walks over N-d index spaces: the index arithmetic behind broadcasting,
//! transposes, padding and reductions, with no allocation (ranks up to [`MAX_RANK`]).

/// Highest tensor rank the N-d kernels take.
pub const MAX_RANK: usize = 8;

pub(crate) type Dims = [usize; MAX_RANK];

#[track_caller]
fn check_rank(shape: &[usize]) {
    assert!(
        shape.len() <= MAX_RANK,
        "rank {} exceeds MAX_RANK {MAX_RANK}",
        shape.len()
    );
}

/// Row-major strides of `shape`, padded with zeros.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Dims {
    check_rank(shape);
    let mut s = [0; MAX_RANK];
    let mut acc = 1;
    for (d, &len) in shape.iter().enumerate().rev() {
        s[d] = acc;
        acc *= len;
    }
    s
}

/// Numpy broadcasting of two shapes: (the result's dims, its rank), or None if a pair of
/// dims is neither equal nor 1.
pub(crate) fn broadcast_dims(a: &[usize], b: &[usize]) -> Option<(Dims, usize)> {
    check_rank(a);
    check_rank(b);
    let rank = a.len().max(b.len());
    let mut out = [0; MAX_RANK];
    for i in 0..rank {
        // Aligned at the right; a missing leading dim acts as 1.
        let da = if i < a.len() { a[a.len() - 1 - i] } else { 1 };
        let db = if i < b.len() { b[b.len() - 1 - i] } else { 1 };
        out[rank - 1 - i] = match (da, db) {
            _ if da == db => da,
            (1, d) | (d, 1) => d,
            _ => return None,
        };
    }
    Some((out, rank))
}

/// Strides with which a tensor of `shape` is read while walking `out` in numpy
/// broadcasting: aligned at the right, size-1 (and missing) dims repeat with stride 0.
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Dims {
    check_rank(out);
    debug_assert!(shape.len() <= out.len());
    let own = contiguous_strides(shape);
    let lead = out.len() - shape.len();
    let mut s = [0; MAX_RANK];
    for (d, &len) in shape.iter().enumerate() {
        debug_assert!(
            len == out[lead + d] || len == 1,
            "{shape:?} does not broadcast to {out:?}"
        );
        s[lead + d] = if len == 1 { 0 } else { own[d] };
    }
    s
}

/// A row-major walk over an index space that carries, for two operands, the offset of each
/// point. Size-1 dims are dropped and neighbours that are contiguous for both operands are
/// merged, so the runs handed to the caller are as long as the layouts allow.
pub(crate) struct Walk {
    rank: usize,
    dims: Dims,
    steps: [Dims; 2],
}

impl Walk {
    /// `s0`, `s1`: per dim of `dims`, the step of each operand's offset.
    pub(crate) fn new(dims: &[usize], s0: &Dims, s1: &Dims) -> Walk {
        check_rank(dims);
        let mut w = Walk {
            rank: 0,
            dims: [0; MAX_RANK],
            steps: [[0; MAX_RANK]; 2],
        };
        if dims.contains(&0) {
            w.rank = 1;
            return w;
        }
        for (d, &len) in dims.iter().enumerate() {
            if len == 1 {
                continue;
            }
            let r = w.rank;
            let mergeable =
                r > 0 && w.steps[0][r - 1] == s0[d] * len && w.steps[1][r - 1] == s1[d] * len;
            if mergeable {
                w.dims[r - 1] *= len;
                w.steps[0][r - 1] = s0[d];
                w.steps[1][r - 1] = s1[d];
            } else {
                w.dims[r] = len;
                w.steps[0][r] = s0[d];
                w.steps[1][r] = s1[d];
                w.rank += 1;
            }
        }
        if w.rank == 0 {
            // A single point.
            w.rank = 1;
            w.dims[0] = 1;
        }
        w
    }

    /// (length of each run, step of operand 0 within a run, step of operand 1).
    pub(crate) fn run(&self) -> (usize, usize, usize) {
        let last = self.rank - 1;
        (self.dims[last], self.steps[0][last], self.steps[1][last])
    }

    /// Calls `f(dense, o0, o1)` at the start of every run: the row-major offset in the
    /// walked space and the two operands' offsets.
    pub(crate) fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let last = self.rank - 1;
        let len = self.dims[last];
        let runs: usize = self.dims[..last].iter().product();
        if len == 0 {
            return;
        }
        let mut idx = [0usize; MAX_RANK];
        let (mut o0, mut o1) = (0, 0);
        for r in 0..runs {
            f(r * len, o0, o1);
            // Odometer over the outer dims, innermost first.
            for d in (0..last).rev() {
                idx[d] += 1;
                o0 += self.steps[0][d];
                o1 += self.steps[1][d];
                if idx[d] < self.dims[d] {
                    break;
                }
                idx[d] = 0;
                o0 -= self.steps[0][d] * self.dims[d];
                o1 -= self.steps[1][d] * self.dims[d];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (dense, o0, o1) point of a walk, expanded from its runs.
    fn points(w: &Walk) -> Vec<(usize, usize, usize)> {
        let (len, a, b) = w.run();
        let mut v = vec![];
        w.for_each_run(|d, o0, o1| v.extend((0..len).map(|i| (d + i, o0 + i * a, o1 + i * b))));
        v
    }

    #[test]
    fn walk_visits_every_point_with_its_offsets() {
        let dims = [2, 1, 3, 4];
        let s0 = broadcast_strides(&[3, 1], &dims);
        let s1 = contiguous_strides(&[2, 1, 3, 4]);
        let w = Walk::new(&dims, &s0, &s1);
        let want: Vec<_> = (0..24).map(|i| (i, (i / 4) % 3, i)).collect();
        assert_eq!(points(&w), want);
    }

    #[test]
    fn contiguous_dims_merge_into_one_run() {
        let s = contiguous_strides(&[2, 3, 4]);
        let w = Walk::new(&[2, 3, 4], &s, &s);
        assert_eq!(w.run(), (24, 1, 1));
        // (N, C, H, W) against a per-channel (C, 1, 1): H and W merge, the channel stays.
        let dims = [2, 3, 4, 5];
        let w = Walk::new(
            &dims,
            &contiguous_strides(&dims),
            &broadcast_strides(&[3, 1, 1], &dims),
        );
        assert_eq!(w.run(), (20, 1, 0));
    }

    #[test]
    fn broadcast_rules() {
        let (d, r) = broadcast_dims(&[2, 1, 4], &[3, 1]).unwrap();
        assert_eq!(&d[..r], &[2, 3, 4]);
        let (_, r) = broadcast_dims(&[], &[]).unwrap();
        assert_eq!(r, 0);
        assert!(broadcast_dims(&[2, 3], &[4, 3]).is_none());
    }

    #[test]
    fn scalar_and_empty_walks() {
        let z = [0; MAX_RANK];
        assert_eq!(points(&Walk::new(&[], &z, &z)), vec![(0, 0, 0)]);
        assert!(points(&Walk::new(&[3, 0, 2], &z, &z)).is_empty());
    }
}
