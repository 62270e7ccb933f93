//! int8 matrix products for a frozen prefix compiled with `--prefix-precision int8`.
//!
//! `Y = W·X` with `W` quantized ahead of time (by the compiler: signed 8 bits, symmetric,
//! one step per row, i.e. per output channel) and `X` quantized here as it is packed:
//! unsigned 8 bits per column (a pixel's channels, for a conv) over that column's own range.
//! With `x ≈ s_j·q + m_j` and `w ≈ t_i·r`,
//!
//! `Σ_k w_ik·x_kj ≈ t_i·s_j·Σ_k r_ik·q_kj + m_j·Σ_k w_ik`,
//!
//! the integer sum exact in i32 and the last sum taken from the float weights (the
//! compiler stores it), so only the two roundings to 8 bits cost accuracy. A column's own
//! range, found while packing, needs no calibration and keeps a dark pixel's features as
//! fine as a bright one's; its cost is one more read of the panel, which is in cache.
//!
//! The integer sums are VNNI's `vpdpbusd` (four u8·i8 products added into each i32 lane)
//! where the CPU has AVX512-VNNI and AVX512-VL (module `vnni`, 256-bit vectors), portable
//! Rust elsewhere; both compute the same integers from the same panels.
//!
//! Columns may run across images (`Planes`): a 7×7 map's 49 pixels fill three panels and
//! one column of a fourth, a batch of them fills panels whole. A row-major matrix may also
//! be read and written transposed (`Planes::transposed`): a transformer's `X·W` is computed
//! as `(Wᵀ·Xᵀ)ᵀ`, each token a column quantized over its own features.

use crate::threads;
use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
mod vnni;

/// Columns per packed panel (two 8-lane vectors).
pub const NR: usize = 16;
/// Rows per micro-tile.
const MR: usize = 8;

/// A weight matrix quantized per row.
#[derive(Clone, Copy)]
pub struct QWeights<'a> {
    /// `rows × k`, row-major.
    pub q: &'a [i8],
    /// Each row's step `t_i`.
    pub scale: &'a [f32],
    /// Each row's sum of its float weights, `Σ_k w_ik`.
    pub sum: &'a [f32],
    pub rows: usize,
    pub k: usize,
}

/// Where a matrix's `(row, column)` lies when its columns run across `images` planes of
/// `cols` columns each: `image·image_stride + row·row_stride + (column in the image)·col_stride`.
/// Columns are contiguous (`col_stride` 1), or else one plane's rows are (`row_stride` 1):
/// a row-major matrix read transposed.
#[derive(Clone, Copy, Debug)]
pub struct Planes {
    pub images: usize,
    pub cols: usize,
    pub image_stride: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Planes {
    /// One plane of `cols` columns, rows `row_stride` apart.
    pub fn single(cols: usize, row_stride: usize) -> Planes {
        Planes {
            images: 1,
            cols,
            image_stride: 0,
            row_stride,
            col_stride: 1,
        }
    }

    /// A row-major matrix of `cols` rows of `len` values, read transposed: column `j` is
    /// its row `j`.
    pub fn transposed(cols: usize, len: usize) -> Planes {
        Planes {
            images: 1,
            cols,
            image_stride: 0,
            row_stride: 1,
            col_stride: len,
        }
    }

    fn is_transposed(&self) -> bool {
        self.col_stride != 1
    }

    fn columns(&self) -> usize {
        self.images * self.cols
    }

    /// One past the last element of `rows` rows.
    fn extent(&self, rows: usize) -> usize {
        (self.images - 1) * self.image_stride
            + (rows - 1) * self.row_stride
            + (self.cols - 1) * self.col_stride
            + 1
    }

    /// The runs of contiguous columns making up global columns `j0..j0 + n`: (offset of
    /// row 0, first column in the run's panel slot, length).
    fn runs(&self, j0: usize, n: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let mut j = j0;
        std::iter::from_fn(move || {
            (j < j0 + n).then(|| {
                let (image, col) = (j / self.cols, j % self.cols);
                let len = (self.cols - col).min(j0 + n - j);
                let run = (image * self.image_stride + col, j - j0, len);
                j += len;
                run
            })
        })
    }
}

/// What the product's store adds: a bias per row, then a clip.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub clip: Option<(f32, f32)>,
}

/// One packed panel of `X`: NR columns quantized, `k` rounded up to a multiple of four,
/// as groups of four depths per column (`q[(g·NR + j)·4 + t]` is depth `4g + t`), and each
/// column's step and offset.
struct Panel<'a> {
    q: &'a [u8],
    step: [f32; NR],
    offset: [f32; NR],
}

thread_local! {
    /// The packed panel, and the staged floats of a panel whose columns are not one run.
    /// Grown, never shrunk: the first step of a run sizes them.
    static PANEL: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether this CPU runs the int8 products on 8-bit dot-product instructions. Without them
/// (x86 before AVX512-VNNI, other architectures for now) the portable code runs, correct but
/// slower than the f32 kernels: an int8 prefix only pays where this holds.
pub fn accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::simd::has_vnni();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `y = epilogue(W·x)`, the columns shared out in at most `parts` runs of whole panels.
pub fn qgemm(
    w: &QWeights,
    x: &[f32],
    xp: Planes,
    y: &mut [f32],
    yp: Planes,
    epi: Epilogue,
    parts: usize,
) {
    let n = xp.columns();
    debug_assert_eq!(n, yp.columns());
    debug_assert!(w.q.len() >= w.rows * w.k && w.scale.len() >= w.rows && w.sum.len() >= w.rows);
    debug_assert!(epi.bias.is_none_or(|b| b.len() >= w.rows));
    let layout_ok = |p: &Planes| !p.is_transposed() || (p.images == 1 && p.row_stride == 1);
    assert!(layout_ok(&xp) && layout_ok(&yp));
    if n == 0 || w.rows == 0 || w.k == 0 {
        return;
    }
    assert!(x.len() >= xp.extent(w.k) && y.len() >= yp.extent(w.rows));
    let panels = n.div_ceil(NR);
    let out = OutPtr(y.as_mut_ptr());
    // The runs are indices alone: run `i` takes panels `i·per..`.
    let mut runs = [(); threads::MAX_PARTS];
    let parts = parts.clamp(1, panels.min(threads::MAX_PARTS));
    let per = panels.div_ceil(parts);
    threads::for_each_mut(&mut runs[..parts], |i, _| {
        PANEL.with_borrow_mut(|(packed, staged)| {
            let k4 = w.k.next_multiple_of(4);
            if packed.len() < k4 * NR {
                packed.resize(k4 * NR, 0);
            }
            if staged.len() < w.k * NR {
                staged.resize(w.k * NR, 0.0);
            }
            for p in i * per..((i + 1) * per).min(panels) {
                let (j0, cols) = (p * NR, NR.min(n - p * NR));
                let panel = pack(x, xp, w.k, j0, cols, packed, staged);
                // SAFETY: this run alone writes columns j0..j0 + cols of `y`, whose
                // extent the assert above checked.
                unsafe { multiply(w, &panel, &out, yp, j0, cols, epi) };
            }
        })
    });
}

/// `y`'s base pointer, shared by the runs: each writes columns no other run writes.
struct OutPtr(*mut f32);
// SAFETY: see `qgemm`: the runs' writes are disjoint.
unsafe impl Sync for OutPtr {}

/// Quantizes columns `j0..j0 + cols` of `x` (`k` rows) into `packed`.
fn pack<'s>(
    x: &[f32],
    xp: Planes,
    k: usize,
    j0: usize,
    cols: usize,
    packed: &'s mut [u8],
    staged: &mut [f32],
) -> Panel<'s> {
    let k4 = k.next_multiple_of(4);
    let packed = &mut packed[..k4 * NR];
    let mut panel = Panel {
        q: &[],
        step: [0.0; NR],
        offset: [0.0; NR],
    };
    if xp.is_transposed() {
        quantize_transposed(
            &x[j0 * xp.col_stride..],
            xp.col_stride,
            k,
            cols,
            packed,
            &mut panel,
        );
        panel.q = packed;
        return panel;
    }
    let mut runs = xp.runs(j0, cols);
    let first = runs.next().expect("a panel has a column");
    if first.2 == NR {
        quantize(&x[first.0..], xp.row_stride, k, packed, &mut panel);
    } else {
        // Ragged: copy the runs side by side (zeros past the last column), then quantize.
        let staged = &mut staged[..k * NR];
        staged.fill(0.0);
        for (at, slot, len) in std::iter::once(first).chain(runs) {
            for (r, row) in staged.chunks_exact_mut(NR).enumerate() {
                copy_run(&mut row[slot..slot + len], &x[at + r * xp.row_stride..]);
            }
        }
        quantize(staged, NR, k, packed, &mut panel);
    }
    panel.q = packed;
    panel
}

/// `dst` from the start of `src`. The runs of a small map's panel are a few floats each
/// (2×2 maps: 4), and a `memmove` call per run cost more than the panel's products.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let src: &[f32; N] = src[..N].try_into().expect("N floats");
        <&mut [f32; N]>::try_from(dst)
            .expect("N floats")
            .copy_from_slice(src);
    }
    match dst.len() {
        1 => dst[0] = src[0],
        2 => fixed::<2>(dst, src),
        4 => fixed::<4>(dst, src),
        8 => fixed::<8>(dst, src),
        n => dst.copy_from_slice(&src[..n]),
    }
}

/// Each of NR columns of `k` rows (`src[r·stride + j]`) quantized over its own range into
/// `q`, with the step and offset that undo it.
fn quantize(src: &[f32], stride: usize, k: usize, q: &mut [u8], panel: &mut Panel) {
    crate::kernels::simd::dispatch_vnni!(unsafe {
        vnni::quantize(src, stride, k, q, &mut panel.step, &mut panel.offset)
    });
    let (mut lo, mut hi) = ([f32::INFINITY; NR], [f32::NEG_INFINITY; NR]);
    let mut bad = [false; NR];
    for r in 0..k {
        for (j, &v) in src[r * stride..][..NR].iter().enumerate() {
            lo[j] = lo[j].min(v);
            hi[j] = hi[j].max(v);
            bad[j] |= v.is_nan();
        }
    }
    let mut inv = [0.0f32; NR];
    for j in 0..NR {
        let (step, scale) = steps(lo[j], hi[j], bad[j]);
        (panel.step[j], panel.offset[j], inv[j]) = (step, lo[j], scale);
    }
    q.fill(0);
    for r in 0..k {
        let (g, t) = (r / 4, r % 4);
        for (j, &v) in src[r * stride..][..NR].iter().enumerate() {
            q[(g * NR + j) * 4 + t] = ((v - lo[j]) * inv[j]).round_ties_even() as u8;
        }
    }
}

/// [`quantize`] for `cols` ≤ NR columns that are each `k` contiguous floats, `stride` apart
/// (the rows of a row-major matrix read transposed); the panel's other columns are zeros.
fn quantize_transposed(
    src: &[f32],
    stride: usize,
    k: usize,
    cols: usize,
    q: &mut [u8],
    panel: &mut Panel,
) {
    q.fill(0);
    for j in 0..cols {
        (panel.step[j], panel.offset[j]) = quantize_column(&src[j * stride..][..k], j, q);
    }
}

/// Column `j` of a panel from its `k` values, contiguous in `col`: its step and offset.
fn quantize_column(col: &[f32], j: usize, q: &mut [u8]) -> (f32, f32) {
    crate::kernels::simd::dispatch_vnni!(unsafe { vnni::quantize_column(col, j, q) });
    let (mut lo, mut hi, mut nan) = (f32::INFINITY, f32::NEG_INFINITY, false);
    for &v in col {
        (lo, hi, nan) = (lo.min(v), hi.max(v), nan | v.is_nan());
    }
    let (step, inv) = steps(lo, hi, nan);
    for (r, &v) in col.iter().enumerate() {
        q[((r / 4) * NR + j) * 4 + r % 4] = ((v - lo) * inv).round_ties_even() as u8;
    }
    (step, lo)
}

/// A column's step and its inverse from its range: 255 steps span it. A constant column
/// is all offset (step 0, quantized to zeros); a NaN anywhere makes the step NaN, so the
/// column's outputs are NaN as the float product's would be.
#[inline(always)]
fn steps(lo: f32, hi: f32, nan: bool) -> (f32, f32) {
    let step = (hi - lo) / 255.0;
    if nan {
        (f32::NAN, 0.0)
    } else if step > 0.0 && step.is_finite() {
        (step, 1.0 / step)
    } else {
        (step, 0.0)
    }
}

/// What turns a tile's integer sums into its outputs: rows `i0..` of the weights' steps
/// and sums, and of the bias; the clip.
#[derive(Clone, Copy)]
struct Dequant<'a> {
    scale: &'a [f32],
    sum: &'a [f32],
    bias: Option<&'a [f32]>,
    clip: (f32, f32),
}

impl Dequant<'_> {
    /// Output `(r, j)` of the tile from its integer sum.
    #[inline(always)]
    fn value(&self, panel: &Panel, r: usize, j: usize, acc: i32) -> f32 {
        let bias = self.bias.map_or(0.0, |b| b[r]);
        let v =
            acc as f32 * (self.scale[r] * panel.step[j]) + (panel.offset[j] * self.sum[r] + bias);
        crate::kernels::activation::clip(v, self.clip.0, self.clip.1)
    }
}

/// Every row tile of `W` against `panel`, stored into columns `j0..j0 + cols` of `y`.
///
/// # Safety
/// No other thread may touch those columns of `y` meanwhile, and they must lie inside it.
unsafe fn multiply(
    w: &QWeights,
    panel: &Panel,
    y: &OutPtr,
    yp: Planes,
    j0: usize,
    cols: usize,
    epi: Epilogue,
) {
    let mut rows_out = [[0.0f32; NR]; MR];
    // A whole panel of one image is stored in place; a ragged or transposed one through
    // `rows_out`.
    let direct = match yp.is_transposed() {
        true => None,
        false => Some(yp.runs(j0, cols).next().expect("a panel has a column"))
            .filter(|run| run.2 == NR)
            .map(|run| run.0),
    };
    for i0 in (0..w.rows).step_by(MR) {
        let rows = MR.min(w.rows - i0);
        let a = &w.q[i0 * w.k..(i0 + rows) * w.k];
        let dq = Dequant {
            scale: &w.scale[i0..i0 + rows],
            sum: &w.sum[i0..i0 + rows],
            bias: epi.bias.map(|b| &b[i0..i0 + rows]),
            clip: epi.clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY)),
        };
        let (out, stride) = match direct {
            // SAFETY: rows i0..i0 + rows of the run's NR columns are inside `y` and this
            // call's alone (the function's contract).
            Some(at) => (unsafe { y.0.add(at + i0 * yp.row_stride) }, yp.row_stride),
            None => (rows_out.as_mut_ptr() as *mut f32, NR),
        };
        // SAFETY: `out` has `rows` rows of NR floats, `stride` apart (above).
        unsafe { tile(a, w.k, rows, panel, &dq, out, stride) };
        if yp.is_transposed() {
            for (j, col) in (j0..j0 + cols).enumerate() {
                for (r, row) in rows_out[..rows].iter().enumerate() {
                    // SAFETY: output (i0 + r, col) is inside `y` and this call's alone (the
                    // function's contract).
                    unsafe { *y.0.add(col * yp.col_stride + i0 + r) = row[j] };
                }
            }
        } else if direct.is_none() {
            for (at, slot, len) in yp.runs(j0, cols) {
                for (r, row) in rows_out[..rows].iter().enumerate() {
                    // SAFETY: as above, for this run's columns.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(y.0.add(at + (i0 + r) * yp.row_stride), len)
                    };
                    copy_run(dst, &row[slot..]);
                }
            }
        }
    }
}

/// `out[r·stride + j]` = the dequantized `Σ_k a[r·k + kk]·q(kk, j)` for `rows` rows of `a`.
///
/// # Safety
/// `out` must be valid for `rows` rows of NR floats, `stride` apart.
unsafe fn tile(
    a: &[i8],
    k: usize,
    rows: usize,
    panel: &Panel,
    dq: &Dequant,
    out: *mut f32,
    stride: usize,
) {
    assert!((1..=MR).contains(&rows) && a.len() >= rows * k);
    assert!(panel.q.len() >= k.next_multiple_of(4) * NR);
    let fits = |v: &[f32]| v.len() >= rows;
    assert!(fits(dq.scale) && fits(dq.sum) && dq.bias.is_none_or(fits));
    // SAFETY: the extents are asserted above; `out` is the caller's to vouch for.
    crate::kernels::simd::dispatch_vnni!(unsafe {
        vnni::TILES[rows - 1](a, k, panel, dq, out, stride)
    });
    let q = panel.q;
    for r in 0..rows {
        let mut acc = [0i32; NR];
        for (kk, &wv) in a[r * k..][..k].iter().enumerate() {
            let (g, t) = (kk / 4, kk % 4);
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc += wv as i32 * q[(g * NR + j) * 4 + t] as i32;
            }
        }
        for (j, &acc) in acc.iter().enumerate() {
            // SAFETY: row r < rows, column j < NR (the function's contract).
            unsafe { *out.add(r * stride + j) = dq.value(panel, r, j, acc) };
        }
    }
}

/// Rows of `w` (`rows × k`, row-major) quantized as [`QWeights`] wants them: `(q, scale,
/// sum)`. What the compiler stores; here for the tests and benchmarks.
pub fn quantize_rows(w: &[f32], rows: usize, k: usize) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let mut q = vec![0i8; rows * k];
    let (mut scale, mut sum) = (vec![0.0; rows], vec![0.0; rows]);
    for i in 0..rows {
        let row = &w[i * k..][..k];
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        scale[i] = if max > 0.0 { max / 127.0 } else { 1.0 };
        sum[i] = row.iter().sum();
        for (q, &v) in q[i * k..][..k].iter_mut().zip(row) {
            *q = (v / scale[i]).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (q, scale, sum)
}

#[cfg(test)]
mod tests;
