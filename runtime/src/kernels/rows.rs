//! Input rows padded and split into their stride phases, so that every kernel column of a
//! strided, dilated, padded window reads one contiguous run of a row: the gathers of im2col
//! and of depthwise convs become copies and vector loads. Shared by `conv` and `depthwise`.
//!
//! With stride 2 and one column of padding, row `a b c d e` is padded to `0 a b c d e 0`
//! and split into its even columns `0 b d 0` and odd ones `a c e`; output column `ox` of
//! kernel column 0 reads even `ox`, of column 1 odd `ox`, of column 2 even `ox + 1`.

use super::geometry::Conv2dGeom;
use super::simd::dispatch_avx2;
use std::ops::Range;

/// The padded width of a row, in f32s, up to which [`RowCache`] takes it.
pub(super) const ROW_MAX: usize = 2048;
/// Split rows kept: [`RowCache`]'s buffer, in f32s (32 KiB on the stack, L1-sized).
const CACHE_LEN: usize = 4 * ROW_MAX;
/// At most this many rows are kept, however narrow they are.
const MAX_SLOTS: usize = 16;

/// How the rows of one input plane are split, for a conv's width geometry.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowSplit {
    h: usize,
    w: usize,
    pad_left: usize,
    stride: usize,
    dilation: usize,
    /// Length of each phase in a split row (phase `q` holds padded columns `q, q + s, …`).
    phase_len: usize,
}

impl RowSplit {
    /// `None` when the padded row is wider than [`ROW_MAX`].
    pub(super) fn new(g: &Conv2dGeom) -> Option<RowSplit> {
        let padded = g.pad[1] + g.w + g.pad[3];
        let stride = g.stride[1];
        let phase_len = padded.div_ceil(stride);
        (phase_len * stride <= ROW_MAX).then_some(RowSplit {
            h: g.h,
            w: g.w,
            pad_left: g.pad[1],
            stride,
            dilation: g.dilation[1],
            phase_len,
        })
    }

    /// Length of a split row.
    pub(super) fn len(&self) -> usize {
        self.phase_len * self.stride
    }

    /// Where, in a split row, kernel column `kx`'s run for output columns `0..` starts.
    /// The run is as long as the conv's output row: the geometry puts the last output's
    /// tap inside the padded row.
    pub(super) fn tap_start(&self, kx: usize) -> usize {
        let t = kx * self.dilation;
        t % self.stride * self.phase_len + t / self.stride
    }

    /// `row` padded with zeros and split into its phases, into `dst[..self.len()]`.
    pub(super) fn split(&self, row: &[f32], dst: &mut [f32]) {
        let dst = &mut dst[..self.len()];
        match self.stride {
            1 => {
                dst[..self.pad_left].fill(0.0);
                dst[self.pad_left + self.w..].fill(0.0);
            }
            2 => {
                let ([a, b], _) = self.halves();
                let n = self.phase_len;
                dst[a.0..a.0 + a.1.start].fill(0.0);
                dst[a.0 + a.1.end..a.0 + n].fill(0.0);
                dst[b.0..b.0 + b.1.start].fill(0.0);
                dst[b.0 + b.1.end..b.0 + n].fill(0.0);
            }
            _ => dst.fill(0.0),
        }
        self.place(row, dst);
    }

    /// `row`'s values where [`RowSplit::split`] puts them, the padding's places left as they
    /// are: a buffer zeroed once then takes row after row.
    pub(super) fn place(&self, row: &[f32], dst: &mut [f32]) {
        let (s, pl, n) = (self.stride, self.pad_left, self.phase_len);
        let dst = &mut dst[..s * n];
        match s {
            1 => dst[pl..pl + self.w].copy_from_slice(row),
            2 => {
                let ([a, b], even_first) = self.halves();
                let (lo, hi) = dst.split_at_mut(n);
                let (even, odd) = if even_first {
                    (&mut lo[a.1], &mut hi[b.1])
                } else {
                    (&mut hi[a.1], &mut lo[b.1])
                };
                deinterleave(row, even, odd);
            }
            _ => {
                for (col, &v) in row.iter().enumerate() {
                    let c = pl + col;
                    dst[c % s * n + c / s] = v;
                }
            }
        }
    }

    /// At stride 2, where the row's even values (`row[2j]`, padded column pl + 2j: phase
    /// pl % 2, index pl / 2 + j) and its odd ones (the other phase, from ⌈pl / 2⌉) go: each
    /// as (where its phase starts, its range inside the phase); and whether the even values'
    /// phase comes first.
    fn halves(&self) -> ([(usize, Range<usize>); 2], bool) {
        let (pl, n, w) = (self.pad_left, self.phase_len, self.w);
        let even_first = pl.is_multiple_of(2);
        let (ea, oa) = if even_first { (0, n) } else { (n, 0) };
        let even = pl / 2..pl / 2 + w.div_ceil(2);
        let odd = pl.div_ceil(2)..pl.div_ceil(2) + w / 2;
        ([(ea, even), (oa, odd)], even_first)
    }
}

/// `even[j] = row[2j]`, `odd[j] = row[2j + 1]`.
fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    assert!(even.len() == row.len().div_ceil(2) && odd.len() == row.len() / 2);
    // SAFETY: the CPU has AVX2 (`dispatch_avx2!` checks it, with FMA); the lengths are
    // as asserted.
    dispatch_avx2!(unsafe { deinterleave_avx2(row, even, odd) });
    deinterleave_tail(row, even, odd);
}

/// # Safety
/// The CPU must have AVX2; `even` and `odd` as long as [`deinterleave`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave_avx2(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = row.len() / 16;
    for j in 0..blocks {
        // SAFETY: 16j + 16 ≤ row.len(), so 8j + 8 ≤ both halves' lengths.
        unsafe {
            let lo = _mm256_loadu_ps(row.as_ptr().add(16 * j));
            let hi = _mm256_loadu_ps(row.as_ptr().add(16 * j + 8));
            // Within each 128-bit lane: lo's even (odd) pair, then hi's; then the lanes'
            // 64-bit halves reordered so that lo's four come before hi's.
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
            let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)));
            let o = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o)));
            _mm256_storeu_ps(even.as_mut_ptr().add(8 * j), e);
            _mm256_storeu_ps(odd.as_mut_ptr().add(8 * j), o);
        }
    }
    let done = 16 * blocks;
    deinterleave_tail(&row[done..], &mut even[done / 2..], &mut odd[done / 2..]);
}

fn deinterleave_tail(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.chunks_exact(2);
    if let Some(&last) = pairs.remainder().first() {
        even[row.len() / 2] = last;
    }
    for ((pair, e), o) in pairs.zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// The last few split rows of each of a few input planes, so that a row read by several
/// output rows (three kernel rows at stride 1, two at stride 2) is split once. Plane `c`'s
/// row `iy` lives in slot `c·per + iy % per`, `per` being `rows` rounded up to a power of
/// two (a mask, not a division, per row): with `rows` at least a window's height, every row
/// of one output row's window is there at once. After the slots, a row of zeros stands for
/// the rows of the padding.
pub(super) struct RowCache {
    /// Then [`SLACK`] more, so that a vector load may run past the end of any row.
    buf: [f32; CACHE_LEN + SLACK],
    /// The input row each slot holds, `usize::MAX` for none.
    held: [usize; MAX_SLOTS],
    per: usize,
    /// Where the row of zeros starts: after every plane's slots.
    zeros: usize,
    split: RowSplit,
}

/// Floats after a split row that a kernel may load (and ignore): one AVX-512 vector.
pub(super) const SLACK: usize = 16;

impl RowCache {
    /// Whether `rows` split rows of each of `planes` planes, and the row of zeros, fit.
    pub(super) fn fits(split: RowSplit, planes: usize, rows: usize) -> bool {
        let slots = planes * rows.next_power_of_two();
        slots <= MAX_SLOTS && (slots + 1) * split.len() <= CACHE_LEN
    }

    /// See [`RowCache::fits`] for what `planes` and `rows` may be.
    pub(super) fn new(split: RowSplit, planes: usize, rows: usize) -> RowCache {
        assert!(Self::fits(split, planes, rows));
        let per = rows.next_power_of_two();
        RowCache {
            buf: [0.0; CACHE_LEN + SLACK],
            held: [usize::MAX; MAX_SLOTS],
            per,
            zeros: planes * per * split.len(),
            split,
        }
    }

    /// Forget the rows held: the next reads are of other planes.
    pub(super) fn clear(&mut self) {
        self.held = [usize::MAX; MAX_SLOTS];
    }

    /// Where, in [`RowCache::buf`], row `iy` of plane `c` (`data`, the conv's input plane)
    /// starts once split; the row of zeros for rows outside the plane.
    pub(super) fn row(&mut self, c: usize, data: &[f32], iy: isize) -> usize {
        let (len, w) = (self.split.len(), self.split.w);
        if !(0..self.split.h as isize).contains(&iy) {
            return self.zeros;
        }
        let iy = iy as usize;
        let slot = c * self.per + (iy & (self.per - 1));
        if self.held[slot] != iy {
            self.split
                .split(&data[iy * w..][..w], &mut self.buf[slot * len..][..len]);
            self.held[slot] = iy;
        }
        slot * len
    }

    pub(super) fn buf(&self) -> &[f32] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::Lcg;

    fn geom(w: usize, kw: usize, stride: usize, pad: [usize; 2], dilation: usize) -> Conv2dGeom {
        Conv2dGeom {
            n: 1,
            c_in: 1,
            h: 3,
            w,
            c_out: 1,
            kh: 1,
            kw,
            stride: [1, stride],
            pad: [0, pad[0], 0, pad[1]],
            dilation: [1, dilation],
            groups: 1,
        }
    }

    #[test]
    fn every_tap_reads_its_padded_column() {
        let mut rng = Lcg::new(3);
        for w in [1, 2, 5, 8, 13, 16, 37] {
            for kw in 1..5 {
                for stride in 1..5 {
                    for pad in [[0, 0], [1, 1], [2, 1], [1, 3], [3, 0]] {
                        for dilation in 1..3 {
                            let g = geom(w, kw, stride, pad, dilation);
                            let ow = g.out_w();
                            if ow == 0 {
                                continue;
                            }
                            let split = RowSplit::new(&g).unwrap();
                            let plane = rng.vec(2 * 3 * w);
                            let mut cache = RowCache::new(split, 2, 2);
                            for (c, iy) in [
                                (0, 0),
                                (1, 2),
                                (0, 1),
                                (1, 1),
                                (0, 0),
                                (1, -1),
                                (0, 2),
                                (0, 0),
                            ] {
                                let data = &plane[c * 3 * w..][..3 * w];
                                let at = cache.row(c, data, iy);
                                let row = &cache.buf()[at..];
                                for kx in 0..kw {
                                    let run = &row[split.tap_start(kx)..][..ow];
                                    for (ox, &v) in run.iter().enumerate() {
                                        let col = (ox * stride + kx * dilation) as isize
                                            - pad[0] as isize;
                                        let inside =
                                            (0..3).contains(&iy) && (0..w as isize).contains(&col);
                                        let want = if inside {
                                            data[iy as usize * w + col as usize]
                                        } else {
                                            0.0
                                        };
                                        assert_eq!(v, want, "{g:?} row {iy} kx {kx} ox {ox}");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn too_wide_rows_are_refused() {
        assert!(RowSplit::new(&geom(ROW_MAX, 3, 1, [0, 0], 1)).is_some());
        assert!(RowSplit::new(&geom(ROW_MAX, 3, 1, [1, 0], 1)).is_none());
        assert!(RowSplit::new(&geom(ROW_MAX - 1, 3, 2, [0, 0], 1)).is_some());
    }
}
