//! The one matrix multiply every kernel goes through.
//!
//! Our own blocked, packed SGEMM in the Goto/BLIS structure: NC columns of B at a time, KC
//! of depth, MC rows of A, with A packed into MR-row micro-panels and B into NR-column
//! micro-panels so the micro-kernel streams both from contiguous memory. It exists because
//! `matrixmultiply` and `gemm` allocate their packing buffers on every call, and a training
//! step must not allocate: the buffers here live in a thread-local scratch that grows on its
//! first use and is reused afterwards.
//!
//! A row-major A, and a row-major B meeting a single block of A's rows, are read where they
//! lie instead of packed. C = A·B may be computed as Cᵀ = Bᵀ·Aᵀ (strides swapped) when that
//! packs, stores or wastes less, and products with one column go through a GEMV.
//!
//! The micro-kernel is AVX-512 on x86_64 CPUs whose 512-bit FMAs outrun their 256-bit ones
//! (module `avx512`, tiles WIDE columns wide), AVX2+FMA on the others that have it (module
//! `avx2`) and portable Rust elsewhere (both NARROW columns wide). The loops around it take
//! the tile's width as a constant parameter, chosen once per product. The two x86 kernels
//! give the same bits: each element is one FMA chain along the depth in the same KC blocks,
//! stored as `fma(beta, C, alpha·sum)`, whichever tile it falls in and whichever of C or Cᵀ
//! is computed.

use std::cell::RefCell;

use super::simd::{self, dispatch_avx2};
use super::{activation, mul_add};
use crate::threads;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod images;

pub use images::{Images, ragged, sgemm_images};

/// Row stride and column stride of a matrix inside its slice. Swapping them transposes the
/// matrix without moving data.
pub type Strides = (usize, usize);

/// Rows of a micro-tile: the 6×16 AVX2 tile (two registers per row) holds its 12
/// accumulators, 2 B vectors and an A broadcast in the 16 AVX registers; the 6×32 AVX-512
/// tile has as many accumulators, each twice as wide.
const MR: usize = 6;
/// Columns of the AVX2 and portable micro-tiles.
const NARROW: usize = 16;
/// Columns of the AVX-512 micro-tile.
const WIDE: usize = 32;
/// Depth of a packed block: a KC×NR B micro-panel (16 or 32 KiB) stays in L1 while it meets
/// every A micro-panel of the block. The same for both widths, so both sum in the same
/// blocks.
const KC: usize = 256;
/// Rows of an A block at full depth: its MC×KC floats (up to 120 KiB, packed or in place)
/// stay in L2 while they meet every B micro-panel. Shallower products take more rows in
/// the same bytes ([`Product::block_rows`]).
const MC: usize = 120;
/// Columns of a packed B block (up to 4 MiB, in L3).
const NC: usize = 4096;

/// `C ← alpha·A·B + beta·C`, with `A` m×k, `B` k×n and `C` m×n, each addressed by its
/// strides. With `beta == 0` the old content of `C` is ignored (NaN included); so is `A·B`
/// when `alpha == 0` or `k == 0`.
///
/// Allocates only when a product needs more scratch than this thread's earlier ones did.
#[allow(clippy::too_many_arguments)] // the BLAS signature: every argument is one of the product's terms
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    a_strides: Strides,
    b: &[f32],
    b_strides: Strides,
    beta: f32,
    c: &mut [f32],
    c_strides: Strides,
) {
    sgemm_with(
        m,
        n,
        k,
        alpha,
        a,
        a_strides,
        b,
        b_strides,
        beta,
        c,
        c_strides,
        Epilogue::NONE,
    );
}

/// [`sgemm`], then the [`Epilogue`] (a bias along C's rows or columns, a clip) on every
/// element of C, in the store of the tiles while they are in registers rather than in a
/// pass of its own over C.
#[allow(clippy::too_many_arguments)] // sgemm's signature and the epilogue
pub fn sgemm_with(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    a_strides: Strides,
    b: &[f32],
    b_strides: Strides,
    beta: f32,
    c: &mut [f32],
    c_strides: Strides,
    epi: Epilogue,
) {
    let one = Segments {
        count: 1,
        a_step: 0,
        b_step: 0,
    };
    sgemm_sum(
        m, n, k, one, alpha, a, a_strides, b, b_strides, beta, c, c_strides, epi,
    );
}

/// Where the terms of [`sgemm_sum`] lie: `count` pairs, the s-th A at `a[s·a_step..]` and
/// the s-th B at `b[s·b_step..]`.
#[derive(Clone, Copy)]
pub struct Segments {
    pub count: usize,
    pub a_step: usize,
    pub b_step: usize,
}

/// `C ← alpha·Σ_s A_s·B_s + beta·C` over the [`Segments`] of `A` (each m×k) and `B` (each
/// k×n): one product of depth `count·k`. A 1×1 conv's weight gradient is such a sum over
/// the images of a batch, each a few dozen pixels deep; as separate products, C would be
/// read and written once per image. Then the epilogue ([`sgemm_with`]).
#[allow(clippy::too_many_arguments)] // sgemm's signature, the segments and the epilogue
pub fn sgemm_sum(
    m: usize,
    n: usize,
    k: usize,
    seg: Segments,
    alpha: f32,
    a: &[f32],
    a_strides: Strides,
    b: &[f32],
    b_strides: Strides,
    beta: f32,
    c: &mut [f32],
    c_strides: Strides,
    epi: Epilogue,
) {
    match epi.bias {
        Bias::None => {}
        Bias::Rows(b) => assert!(b.len() == m, "sgemm: a row bias is not m long"),
        Bias::Cols(b) => assert!(b.len() == n, "sgemm: a column bias is not n long"),
    }
    // The micro-kernel reads and writes through raw pointers: these O(1) checks are what
    // keeps it inside the slices, so they stay on in release builds.
    let last = seg.count.saturating_sub(1);
    let (a_end, b_end) = (extent(m, k, a_strides), extent(k, n, b_strides));
    assert!(
        a_end == 0 || last * seg.a_step + a_end <= a.len(),
        "sgemm: A too short"
    );
    assert!(
        b_end == 0 || last * seg.b_step + b_end <= b.len(),
        "sgemm: B too short"
    );
    assert!(extent(m, n, c_strides) <= c.len(), "sgemm: C too short");
    debug_assert!(
        m <= 1 || n <= 1 || c_strides.0 >= n * c_strides.1 || c_strides.1 >= m * c_strides.0,
        "sgemm: C's strides make elements alias"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || seg.count == 0 || alpha == 0.0 {
        scale(m, n, beta, c, c_strides);
        return epi.apply(m, n, c, c_strides);
    }
    let p = Product {
        m,
        n,
        k: k * seg.count,
        a,
        sa: a_strides,
        b,
        sb: b_strides,
        sc: c_strides,
        seg_k: k,
        seg_a: seg.a_step,
        seg_b: seg.b_step,
        epi,
    };
    match panel_width() {
        WIDE => product::<WIDE>(p, alpha, beta, c),
        _ => product::<NARROW>(p, alpha, beta, c),
    }
}

/// The width of the micro-tiles the GEMM takes on this machine ([`simd::wide_fma`]'s choice).
fn panel_width() -> usize {
    #[cfg(target_arch = "x86_64")]
    if simd::wide_fma() {
        return WIDE;
    }
    NARROW
}

/// [`sgemm_sum`] past its checks, with micro-tiles NR columns wide.
fn product<const NR: usize>(mut p: Product, alpha: f32, beta: f32, c: &mut [f32]) {
    // Computing Cᵀ = Bᵀ·Aᵀ instead only swaps strides: it turns a row into the GEMV path's
    // column, and otherwise may pack, store or waste less (see `cost`).
    if p.m == 1 && p.n > 1 {
        p = p.transposed();
    } else if p.m > 1 && p.n > 1 {
        let t = p.transposed();
        if t.cost::<NR>() < p.cost::<NR>() {
            p = t;
        }
    }
    if p.n == 1 && !p.segmented() && (p.sa.0 == 1 || p.sa.1 == 1) {
        gemv(&p, alpha, beta, c);
        p.epi.apply(p.m, p.n, c, p.sc);
    } else {
        parallel::<NR>(&p, alpha, beta, c);
    }
}

/// [`blocked`], split across the pool's threads along C's outer dimension (rows when its
/// rows are contiguous, else columns) when the product is large enough to gain: each
/// thread then writes its own contiguous run of C. Split by columns, each thread packs its
/// own B panels. Split by rows, each thread meets all of B: with one block of rows per
/// thread each packs (or reads in place) one panel at a time, used at once and still in L1,
/// which costs one fork and join per product; with more, the threads pack each B block
/// together once, to share it ([`shared_b`]).
fn parallel<const NR: usize>(p: &Product, alpha: f32, beta: f32, c: &mut [f32]) {
    let (outer, unit, stride) = match p.sc {
        (_, 1) => (p.m, MR, p.sc.0),
        (1, _) => (p.n, NR, p.sc.1),
        _ => return blocked::<NR>(p, alpha, beta, c),
    };
    let parts = threads::parts_for(p.m * p.n * p.k);
    if parts > 1 && p.sc.1 == 1 && p.m.div_ceil(parts) > p.block_rows() {
        return shared_b::<NR>(p, alpha, beta, c, parts);
    }
    threads::for_runs(c, outer, stride, unit, parts, |r, run| {
        let mut q = *p;
        if p.sc.1 == 1 {
            q.m = r.len();
            q.a = &p.a[r.start * p.sa.0..];
            q.epi = p.epi.rows_of(r.start, r.len());
        } else {
            q.n = r.len();
            q.b = &p.b[r.start * p.sb.1..];
            q.epi = p.epi.cols_of(r.start, r.len());
        }
        blocked::<NR>(&q, alpha, beta, run);
    });
}

/// The operands of a product, C's data apart (it is the one mutable borrow).
#[derive(Clone, Copy)]
struct Product<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: &'a [f32],
    sa: Strides,
    b: &'a [f32],
    sb: Strides,
    sc: Strides,
    /// The depth of each segment (`k` when there is one), and where in `a` and `b` each
    /// segment starts after the one before (see [`sgemm_sum`]).
    seg_k: usize,
    seg_a: usize,
    seg_b: usize,
    epi: Epilogue<'a>,
}

/// What the store of a product does to each element of C after the sum: adds a bias, then
/// clips. `clip(alpha·A·B + beta·C + bias)`, the bias and the clip optional.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Bias<'a>,
    pub clip: Option<(f32, f32)>,
}

/// A vector added to C after the product: along its rows (`bias[i]` to row `i`: a conv's
/// output channels) or its columns (`bias[j]` to column `j`: a dense layer's outputs).
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    None,
    Rows(&'a [f32]),
    Cols(&'a [f32]),
}

impl<'a> Epilogue<'a> {
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: Bias::None,
        clip: None,
    };

    /// A bias per row of C (none with `None`) and the clip.
    pub fn rows(bias: Option<&'a [f32]>, clip: Option<(f32, f32)>) -> Self {
        let bias = bias.map_or(Bias::None, Bias::Rows);
        Epilogue { bias, clip }
    }

    fn is_none(&self) -> bool {
        matches!(self.bias, Bias::None) && self.clip.is_none()
    }

    fn transposed(self) -> Self {
        Epilogue {
            bias: self.bias.transposed(),
            ..self
        }
    }

    /// The epilogue of rows `start..start + len` of C.
    fn rows_of(self, start: usize, len: usize) -> Self {
        Epilogue {
            bias: self.bias.rows(start, len),
            ..self
        }
    }

    /// The epilogue of columns `start..start + len` of C.
    fn cols_of(self, start: usize, len: usize) -> Self {
        Epilogue {
            bias: self.bias.cols(start, len),
            ..self
        }
    }

    /// The epilogue of the tile at rows `i0..i0 + mr`, columns `j0..j0 + nr`: none but
    /// with the `last` depth block, which completes the sum.
    fn last_block(self, last: bool, i0: usize, mr: usize, j0: usize, nr: usize) -> Self {
        match last {
            true => self.rows_of(i0, mr).cols_of(j0, nr),
            false => Epilogue::NONE,
        }
    }

    /// The clip's bounds, unbounded without one.
    fn bounds(&self) -> (f32, f32) {
        self.clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY))
    }

    /// Element (i, j) of C after the epilogue, `v` before.
    #[inline(always)]
    fn value(&self, i: usize, j: usize, v: f32) -> f32 {
        let b = match self.bias {
            Bias::None => 0.0,
            Bias::Rows(b) => b[i],
            Bias::Cols(b) => b[j],
        };
        let (lo, hi) = self.bounds();
        activation::clip(v + b, lo, hi)
    }

    /// Applies the epilogue to the `m`×`n` matrix at the start of `c`.
    fn apply(&self, m: usize, n: usize, c: &mut [f32], (rs, cs): Strides) {
        if self.is_none() {
            return;
        }
        for i in 0..m {
            for j in 0..n {
                let v = &mut c[i * rs + j * cs];
                *v = self.value(i, j, *v);
            }
        }
    }
}

impl<'a> Bias<'a> {
    fn transposed(self) -> Self {
        match self {
            Bias::None => Bias::None,
            Bias::Cols(b) => Bias::Rows(b),
            Bias::Rows(b) => Bias::Cols(b),
        }
    }

    /// The bias of rows `start..start + len` of C.
    fn rows(self, start: usize, len: usize) -> Self {
        match self {
            Bias::Rows(b) => Bias::Rows(&b[start..start + len]),
            other => other,
        }
    }

    /// The bias of columns `start..start + len` of C.
    fn cols(self, start: usize, len: usize) -> Self {
        match self {
            Bias::Cols(b) => Bias::Cols(&b[start..start + len]),
            other => other,
        }
    }
}

impl Product<'_> {
    fn transposed(self) -> Self {
        let t = |(r, c): Strides| (c, r);
        Product {
            m: self.n,
            n: self.m,
            k: self.k,
            a: self.b,
            sa: t(self.sb),
            b: self.a,
            sb: t(self.sa),
            sc: t(self.sc),
            seg_k: self.seg_k,
            seg_a: self.seg_b,
            seg_b: self.seg_a,
            epi: self.epi.transposed(),
        }
    }

    fn segmented(&self) -> bool {
        self.seg_k < self.k
    }

    /// Packs rows `i0..i0 + rows` of A over depth `pc..pc + kc` as MR-wide groups.
    fn pack_a(&self, dst: &mut [f32], i0: usize, rows: usize, pc: usize, kc: usize) {
        let src = Operand {
            data: self.a,
            at: i0 * self.sa.0,
            strides: self.sa,
            seg: (self.seg_k, self.seg_a),
        };
        src.pack::<MR>(dst, rows, pc, kc);
    }

    /// Packs columns `j0..j0 + cols` of B over depth `pc..pc + kc` as NR-wide groups.
    fn pack_b<const NR: usize>(
        &self,
        dst: &mut [f32],
        j0: usize,
        cols: usize,
        pc: usize,
        kc: usize,
    ) {
        let src = Operand {
            data: self.b,
            at: j0 * self.sb.1,
            strides: (self.sb.1, self.sb.0),
            seg: (self.seg_k, self.seg_b),
        };
        src.pack::<NR>(dst, cols, pc, kc);
    }

    /// Most rows of an A block: MC at full depth, more for a shallower product, in the same
    /// bytes. An expand 1×1 conv (depth 16 to 96, a few hundred rows) is then one block, so
    /// its B is read in place rather than packed, and each B panel is loaded once for all
    /// of A (measured: a 192×840×32 product 4 % faster).
    fn block_rows(&self) -> usize {
        MC * KC / self.k.clamp(1, KC) / MR * MR
    }

    /// Whether all of A's rows are one block: each B panel then meets all of A right after
    /// it is packed, so one panel of scratch serves every panel in turn.
    fn one_row_block(&self) -> bool {
        self.m <= self.block_rows()
    }

    /// A row-major A is read where it lies: the kernel broadcasts single elements, so only
    /// the depth needs a unit stride. Not when its rows are a multiple of 4 KiB apart,
    /// though: they would all fall into the same cache sets.
    fn a_in_place(&self) -> bool {
        !self.segmented() && self.sa.1 == 1 && !self.sa.0.is_multiple_of(1024)
    }

    /// With a single block of rows each B micro-panel meets the A block once, right away:
    /// a row-major B is then read in place (it stays in L1 across the A micro-panels), as
    /// packing it would only be a copy.
    fn b_in_place(&self) -> bool {
        !self.segmented() && self.sb.1 == 1 && self.one_row_block()
    }

    /// A rough count of cycles, to choose between computing C and Cᵀ. The kernel's depth
    /// step takes R·V/2 cycles on an R×V-vector tile (two FMAs a cycle; a tile row is two
    /// vectors) but no less than the FMA latency, 4: narrow edge tiles cost nearly as much
    /// as full ones. Packing takes ~1/2 cycle an element, storing into a C whose rows are
    /// not contiguous ~4 an element for each depth block (measured on the 2-core AMD EPYC
    /// the project targets).
    fn cost<const NR: usize>(&self) -> usize {
        let (m, n, k) = (self.m, self.n, self.k);
        let step = |rows: usize, vectors: usize| (rows * vectors / 2).max(4);
        let (full_rows, edge_rows) = (m / MR, m % MR);
        let (full_cols, edge_vectors) = (n / NR, (n % NR).div_ceil(NR / 2));
        let mut steps = full_rows * full_cols * step(MR, 2);
        if edge_vectors > 0 {
            steps += full_rows * step(MR, edge_vectors);
        }
        if edge_rows > 0 {
            steps += full_cols * step(edge_rows, 2);
            if edge_vectors > 0 {
                steps += step(edge_rows, edge_vectors);
            }
        }
        let pack_a = if self.a_in_place() {
            0
        } else {
            m * k * n.div_ceil(NC)
        };
        let pack_b = if self.b_in_place() { 0 } else { k * n };
        let store = if self.sc.1 == 1 {
            0
        } else {
            4 * m * n * k.div_ceil(KC)
        };
        steps * k + (pack_a + pack_b) / 2 + store
    }
}

/// One past the largest offset a rows×cols matrix with these strides touches.
fn extent(rows: usize, cols: usize, (rs, cs): Strides) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

fn scale(m: usize, n: usize, beta: f32, c: &mut [f32], (rs, cs): Strides) {
    for i in 0..m {
        for j in 0..n {
            let cij = &mut c[i * rs + j * cs];
            *cij = if beta == 0.0 { 0.0 } else { beta * *cij };
        }
    }
}

thread_local! {
    /// Packed B blocks and GEMV temporaries. Grown, never shrunk: after the first step of a
    /// training loop every product finds it large enough.
    static B_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed A blocks: apart from B's, as a thread computing rows against a B block that
    /// another thread's scratch holds needs its own A scratch only.
    static A_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Cache-line alignment of the scratch: a packed B row (NR floats) is one or two lines.
const ALIGN_FLOATS: usize = 16;

/// Runs `f` on `len` floats of this thread's `scratch`, starting on a cache line (the
/// depthwise lanes' scratch too).
pub(super) fn with_scratch<R>(
    scratch: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    scratch.with_borrow_mut(|v| {
        let need = len + ALIGN_FLOATS;
        if v.len() < need {
            v.resize(need, 0.0);
        }
        let skip = v.as_ptr().align_offset(ALIGN_FLOATS * size_of::<f32>());
        f(&mut v[skip..skip + len])
    })
}

/// `n` split into near-equal blocks of at most `max`, each rounded up to a multiple of
/// `unit`: 320 becomes 160 + 160 rather than 256 + 64, whose thin second block would pay
/// the per-block overhead for little work.
fn block_size(n: usize, max: usize, unit: usize) -> usize {
    n.div_ceil(n.div_ceil(max)).next_multiple_of(unit)
}

/// The Goto/BLIS loops around the micro-kernel.
fn blocked<const NR: usize>(p: &Product, alpha: f32, beta: f32, c: &mut [f32]) {
    let (kc_max, nc_max) = (block_size(p.k, KC, 1), block_size(p.n, NC, NR));
    // With one block of rows, one panel of scratch, where a whole block would stay
    // resident (up to 4 MiB).
    let b_len = if p.one_row_block() { NR } else { nc_max } * kc_max;
    with_scratch(&B_SCRATCH, b_len, |bp| {
        for (jc, nc) in blocks(p.n, nc_max) {
            for (pc, kc) in blocks(p.k, kc_max) {
                // Later depth blocks add to what the first one wrote.
                let beta = if pc == 0 { beta } else { 1.0 };
                let block = Block { jc, nc, pc, kc };
                row_blocks::<NR>(p, block, BPanels::Lazy(bp), alpha, beta, c);
            }
        }
    });
}

/// [`blocked`] for a product split by rows across `parts` threads: each B block is packed
/// once, its panels shared out among the threads, into the calling thread's scratch, which
/// every thread then reads. Per extra thread this saves a B block of scratch (up to 4 MiB)
/// and packing it again.
fn shared_b<const NR: usize>(p: &Product, alpha: f32, beta: f32, c: &mut [f32], parts: usize) {
    let (kc_max, nc_max) = (block_size(p.k, KC, 1), block_size(p.n, NC, NR));
    with_scratch(&B_SCRATCH, nc_max * kc_max, |bp| {
        for (jc, nc) in blocks(p.n, nc_max) {
            for (pc, kc) in blocks(p.k, kc_max) {
                let panels = nc.div_ceil(NR);
                let packed = &mut bp[..panels * NR * kc];
                threads::for_runs(packed, panels, NR * kc, 1, parts, |r, run| {
                    for (jr, panel) in r.zip(run.chunks_exact_mut(NR * kc)) {
                        let j0 = jc + jr * NR;
                        p.pack_b::<NR>(panel, j0, NR.min(jc + nc - j0), pc, kc);
                    }
                });
                let packed = &*packed;
                let beta = if pc == 0 { beta } else { 1.0 };
                let block = Block { jc, nc, pc, kc };
                threads::for_runs(c, p.m, p.sc.0, MR, parts, |r, run| {
                    let q = Product {
                        m: r.len(),
                        a: &p.a[r.start * p.sa.0..],
                        epi: p.epi.rows_of(r.start, r.len()),
                        ..*p
                    };
                    row_blocks::<NR>(&q, block, BPanels::Packed(packed), alpha, beta, run);
                });
            }
        }
    });
}

/// Blocks of at most `size` along a dimension of `len`: (start, length).
fn blocks(len: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len).step_by(size).map(move |s| (s, size.min(len - s)))
}

/// A block of B: columns `jc..jc + nc`, depth `pc..pc + kc`.
#[derive(Clone, Copy)]
struct Block {
    jc: usize,
    nc: usize,
    pc: usize,
    kc: usize,
}

/// Where a B block's micro-panels come from.
enum BPanels<'s> {
    /// Packed into this scratch by the first row block (then still in cache for it), into
    /// its first panel again and again when that is the only row block, or read in place
    /// where [`Product::b_in_place`] allows.
    Lazy(&'s mut [f32]),
    /// Already packed, every panel.
    Packed(&'s [f32]),
}

/// All row blocks of A against B block `blk`: `C[.., jc..jc + nc] ← alpha·A·B + beta·C`
/// over the block's depth.
fn row_blocks<const NR: usize>(
    p: &Product,
    blk: Block,
    mut b: BPanels,
    alpha: f32,
    beta: f32,
    c: &mut [f32],
) {
    let Block { jc, nc, pc, kc } = blk;
    let mc_max = block_size(p.m, p.block_rows(), MR);
    let a_in_place = p.a_in_place();
    let b_in_place = matches!(b, BPanels::Lazy(_)) && p.b_in_place();
    let one_panel = p.one_row_block();
    let a_len = if a_in_place { 0 } else { mc_max * kc };
    with_scratch(&A_SCRATCH, a_len, |ap| {
        for (ic, mc) in blocks(p.m, mc_max) {
            if !a_in_place {
                let panels = ap.chunks_exact_mut(MR * kc);
                for (panel, i0) in panels.zip((0..mc).step_by(MR)) {
                    p.pack_a(panel, ic + i0, MR.min(mc - i0), pc, kc);
                }
            }
            for (jr, j0) in (0..nc).step_by(NR).enumerate() {
                let nr = NR.min(nc - j0);
                let (b_panel, ldb) = match &mut b {
                    BPanels::Lazy(_) if b_in_place && nr == NR => {
                        (&p.b[pc * p.sb.0 + (jc + j0) * p.sb.1..], p.sb.0)
                    }
                    BPanels::Lazy(bp) => {
                        let at = if one_panel { 0 } else { jr * NR * kc };
                        let panel = &mut bp[at..][..NR * kc];
                        if ic == 0 {
                            p.pack_b::<NR>(panel, jc + j0, nr, pc, kc);
                        }
                        (&*panel, NR)
                    }
                    BPanels::Packed(bp) => (&bp[jr * NR * kc..][..NR * kc], NR),
                };
                let (a, sa, a_step) = if a_in_place {
                    (&p.a[ic * p.sa.0 + pc * p.sa.1..], p.sa, MR * p.sa.0)
                } else {
                    (&ap[..], (1, MR), MR * kc)
                };
                let column = Column {
                    kc,
                    a,
                    sa,
                    a_step,
                    b: b_panel,
                    ldb,
                    mc,
                    nr,
                    epi: p.epi.last_block(pc + kc == p.k, ic, mc, jc + j0, nr),
                };
                let c0 = ic * p.sc.0 + (jc + j0) * p.sc.1;
                column.run::<NR>(alpha, beta, &mut c[c0..], p.sc);
            }
        }
    });
}

/// One operand seen from its packing: element (r, t) of its `w` side and depth `t` is at
/// `data[at + (t / seg_k)·seg_step + r·s_w + (t % seg_k)·s_k]`.
struct Operand<'a> {
    data: &'a [f32],
    at: usize,
    /// (s_w, s_k)
    strides: Strides,
    /// (seg_k, seg_step)
    seg: (usize, usize),
}

impl Operand<'_> {
    /// Depth `pc..pc + kc` of `w` lines, packed as `W`-wide groups, a segment's run at a time.
    fn pack<const W: usize>(&self, dst: &mut [f32], w: usize, pc: usize, kc: usize) {
        let (seg_k, step) = self.seg;
        let mut t = pc;
        while t < pc + kc {
            let (s, r) = (t / seg_k, t % seg_k);
            let len = (seg_k - r).min(pc + kc - t);
            let src = &self.data[self.at + s * step + r * self.strides.1..];
            pack::<W>(&mut dst[(t - pc) * W..], src, w, len, self.strides);
            t += len;
        }
    }
}

/// Packs a `w`×`kc` slice of a matrix, whose `w` side steps by `s_w` and depth by `s_k`,
/// as `kc` groups of `W`: `dst[p·W + r] = src[r·s_w + p·s_k]`, zero past `w`, so the kernel
/// computes edge tiles like full ones.
fn pack<const W: usize>(dst: &mut [f32], src: &[f32], w: usize, kc: usize, (s_w, s_k): Strides) {
    let dst = &mut dst[..W * kc];
    if s_w == 1 {
        let groups = dst.chunks_exact_mut(W).enumerate();
        if w == W {
            // A constant-length copy, which compiles to a few moves instead of a memcpy call.
            groups.for_each(|(p, d)| d.copy_from_slice(&src[p * s_k..][..W]));
        } else {
            for (p, d) in groups {
                d[..w].copy_from_slice(&src[p * s_k..][..w]);
                d[w..].fill(0.0);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if W.is_multiple_of(8) && w == W && s_k == 1 {
        // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
        dispatch_avx2!(unsafe { simd::pack_lines::<W>(dst, src, kc, s_w) });
    }
    if w < W {
        dst.chunks_exact_mut(W).for_each(|d| d[w..].fill(0.0));
    }
    // One source line at a time: with s_k == 1 (the transposed layouts) each is read
    // contiguously.
    for r in 0..w {
        let line = &src[r * s_w..];
        for (p, d) in dst.chunks_exact_mut(W).enumerate() {
            d[r] = line[p * s_k];
        }
    }
}

/// A column of micro-tiles: rows `0..mc` of an A block, as micro-panels `a_step` apart
/// (each with strides `sa`), times one kc×NR B micro-panel, stored into the top-left
/// `mc`×`nr` of C. The SIMD kernels loop over its tiles themselves: on shallow products
/// (an expand 1×1 conv's 16 to 32 input channels) the per-tile call, dispatch and bounds
/// checks cost nearly as much as the tile's arithmetic.
struct Column<'a> {
    kc: usize,
    a: &'a [f32],
    sa: Strides,
    a_step: usize,
    b: &'a [f32],
    ldb: usize,
    mc: usize,
    nr: usize,
    /// The column's own slice of the product's epilogue.
    epi: Epilogue<'a>,
}

impl Column<'_> {
    /// The tile of rows `i0..i0 + MR` (fewer at the bottom).
    #[inline(always)]
    fn tile(&self, i0: usize) -> Tile<'_> {
        let mr = MR.min(self.mc - i0);
        Tile {
            kc: self.kc,
            a: &self.a[i0 / MR * self.a_step..],
            sa: self.sa,
            b: self.b,
            ldb: self.ldb,
            mr,
            nr: self.nr,
            epi: self.epi.rows_of(i0, mr),
        }
    }

    /// `C ← alpha·column + beta·C` for the `mc`×`nr` block at the start of `c`, B's panel
    /// NR columns wide.
    fn run<const NR: usize>(&self, alpha: f32, beta: f32, c: &mut [f32], sc: Strides) {
        #[cfg(target_arch = "x86_64")]
        if sc.1 == 1 && self.mc > 0 {
            // Every tile's bounds at once: the last tile reaches furthest into A (its rows
            // at the same strides as the others'), and B and C are as `Tile::run` asserts.
            let last = (self.mc - 1) / MR * MR;
            let mr = self.mc - last;
            assert!((1..=NR).contains(&self.nr) && self.kc > 0);
            assert!(last / MR * self.a_step + extent(mr, self.kc, self.sa) <= self.a.len());
            assert!((self.kc - 1) * self.ldb + NR <= self.b.len());
            assert!(extent(self.mc, self.nr, sc) <= c.len());
            if NR == WIDE && simd::has_avx512f() {
                // SAFETY: the CPU has AVX-512F (just checked); the asserts above bound
                // every tile's pointers, for tiles WIDE columns wide.
                return unsafe { avx512::column(self, &[alpha, beta], c, sc.0) };
            }
            if NR == NARROW {
                // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks); the asserts
                // above bound every tile's pointers, for tiles NARROW columns wide.
                dispatch_avx2!(unsafe { avx2::column(self, &[alpha, beta], c, sc.0) });
            }
        }
        for i0 in (0..self.mc).step_by(MR) {
            self.tile(i0)
                .run::<NR>(alpha, beta, &mut c[i0 * sc.0..], sc);
        }
    }
}

/// One micro-tile: an `mr`×kc A micro-panel with strides `sa` ((1, MR) when packed, A's
/// own when read in place) times a kc×NR B micro-panel whose rows are `ldb` apart (NR when
/// packed, B's row stride when read in place), of which the top-left `mr`×`nr` is stored
/// into C.
struct Tile<'a> {
    kc: usize,
    a: &'a [f32],
    sa: Strides,
    b: &'a [f32],
    ldb: usize,
    mr: usize,
    nr: usize,
    /// Applied in the store: the tile's own slice of the product's epilogue.
    epi: Epilogue<'a>,
}

impl Tile<'_> {
    /// `C ← alpha·tile + beta·C` for the `mr`×`nr` tile at the start of `c`, B's panel NR
    /// columns wide.
    fn run<const NR: usize>(&self, alpha: f32, beta: f32, c: &mut [f32], sc: Strides) {
        // These bound every pointer the kernels form.
        assert!((1..=MR).contains(&self.mr) && (1..=NR).contains(&self.nr) && self.kc > 0);
        assert!(extent(self.mr, self.kc, self.sa) <= self.a.len());
        assert!((self.kc - 1) * self.ldb + NR <= self.b.len());
        assert!(extent(self.mr, self.nr, sc) <= c.len());
        #[cfg(target_arch = "x86_64")]
        if NR == WIDE && simd::has_avx512f() {
            // SAFETY: the CPU has AVX-512F (just checked), and the asserts above are the
            // kernel's bounds preconditions for a tile WIDE columns wide.
            return unsafe { avx512::tile(self, alpha, beta, c, sc) };
        }
        if NR == NARROW {
            // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks), and the asserts
            // above are the kernel's bounds preconditions for a tile NARROW columns wide.
            dispatch_avx2!(unsafe { avx2::tile(self, alpha, beta, c, sc) });
        }
        self.portable(alpha, beta, c, sc);
        self.epi.apply(self.mr, self.nr, c, sc);
    }

    /// Plain Rust that LLVM vectorizes with the target's baseline SIMD, half a tile at a
    /// time so the 6×8 accumulators fit the 16 registers of SSE2 (NEON has 32).
    fn portable(&self, alpha: f32, beta: f32, c: &mut [f32], sc: Strides) {
        for j0 in (0..self.nr).step_by(HALF) {
            let t = self.half_tile(j0);
            let cols = HALF.min(self.nr - j0);
            for (r, row) in t.iter().enumerate().take(self.mr) {
                let c_row = &mut c[r * sc.0 + j0 * sc.1..];
                store_row(&row[..cols], alpha, beta, c_row, sc.1);
            }
        }
    }

    /// Columns `j0..j0 + HALF` of the tile. Out of line: inlined next to the stores, which
    /// borrow the accumulators as slices, LLVM leaves them scalar and in memory.
    #[inline(never)]
    fn half_tile(&self, j0: usize) -> [[f32; HALF]; MR] {
        let (rs, ks) = self.sa;
        // Rows past `mr` repeat the last one instead of branching; they are never stored.
        let rows: [usize; MR] = std::array::from_fn(|r| r.min(self.mr - 1) * rs);
        let mut t = [[0.0; HALF]; MR];
        for p in 0..self.kc {
            let bp: &[f32; HALF] = self.b[p * self.ldb + j0..][..HALF].try_into().unwrap();
            // All loads (and their bounds checks) first, so the arithmetic below is one
            // straight block for the vectorizer.
            let ap: [f32; MR] = std::array::from_fn(|r| self.a[rows[r] + p * ks]);
            for (tr, &ar) in t.iter_mut().zip(&ap) {
                for (t, &b) in tr.iter_mut().zip(bp) {
                    *t = mul_add(ar, b, *t);
                }
            }
        }
        t
    }
}

/// Half a micro-tile's width: one SSE2 or NEON register pair.
const HALF: usize = NARROW / 2;

/// A SIMD micro-kernel instance for one tile shape (`kernel::<R, V>`). Alpha and beta come
/// by reference: in registers they would stay live through the depth loop, and the
/// register allocator spilled an accumulator to keep them there (a shallow product ran
/// 1.5× slower).
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(&Tile, &[f32; 2], &mut [f32], Strides);

/// Every instance of a SIMD micro-kernel, indexed by [rows − 1][vectors − 1]: an edge tile
/// computes only the rows and vectors it stores (a 10-row product is a 6-row and a 4-row
/// tile, not two 6-row ones).
#[cfg(target_arch = "x86_64")]
macro_rules! kernels {
    ($k:ident) => {
        [
            [$k::<1, 1>, $k::<1, 2>],
            [$k::<2, 1>, $k::<2, 2>],
            [$k::<3, 1>, $k::<3, 2>],
            [$k::<4, 1>, $k::<4, 2>],
            [$k::<5, 1>, $k::<5, 2>],
            [$k::<6, 1>, $k::<6, 2>],
        ]
    };
}
#[cfg(target_arch = "x86_64")]
use kernels;

/// The vector operations of the SIMD micro-kernels: `__m256` for the AVX2 kernel, `__m512`
/// for the AVX-512 one.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    /// Floats per vector.
    const WIDTH: usize;
    /// Which lanes of a vector a masked load or store touches.
    type Mask: Copy;

    /// # Safety
    /// Each of these needs the CPU to have the vector's instructions; `load` and `store`
    /// also `WIDTH` floats at `p`, their masked forms the floats of the mask's lanes.
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `min(hi, max(lo, v))`, as `activation::clip`: the value second, so a NaN stays NaN.
    unsafe fn clip(v: Self, lo: Self, hi: Self) -> Self;
    /// The first `lanes` lanes (1 to `WIDTH`).
    unsafe fn first(lanes: usize) -> Self::Mask;
    /// The mask's lanes from `p`, zero in the others.
    unsafe fn load_masked(p: *const f32, m: Self::Mask) -> Self;
    unsafe fn store(p: *mut f32, v: Self);
    unsafe fn store_masked(p: *mut f32, m: Self::Mask, v: Self);
}

/// A micro-kernel: the tile's sums, stored from the registers when C's columns are
/// contiguous, else through a row buffer. Always inlined into each ISA's target-feature
/// function, which is all that differs between the AVX2 and AVX-512 kernels.
///
/// # Safety
/// The CPU must have `L`'s instructions; `R == t.mr`, `t.nr` within the last of the `V`
/// vectors, and the tile must pass [`Tile::run`]'s asserts for a panel `V·L::WIDTH` wide.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel<L: Lanes, const R: usize, const V: usize>(
    t: &Tile,
    &[alpha, beta]: &[f32; 2],
    c: &mut [f32],
    (rsc, csc): Strides,
) {
    debug_assert!(R == t.mr && t.nr.div_ceil(L::WIDTH) == V);
    // SAFETY: passed on from the caller.
    let acc = unsafe { accumulate::<L, R, V>(t) };
    if csc == 1 {
        // SAFETY: as above, and `c` has the tile's extent (`Tile::run`'s asserts).
        return unsafe { store_tile::<L, R, V>(t, acc, alpha, beta, c.as_mut_ptr(), rsc) };
    }
    for (r, acc) in acc.iter().enumerate() {
        let mut row = [0.0; WIDE];
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: WIDTH·(v + 1) ≤ WIDTH·V ≤ WIDE floats of the row.
            unsafe { L::store(row[L::WIDTH * v..].as_mut_ptr(), *acc) };
        }
        store_row_fused(t, r, &row[..t.nr], alpha, beta, &mut c[r * rsc..], csc);
    }
}

/// A column's tiles: the full-height ones through [`kernel`] inlined here, the bottom one
/// through `edges` (the ISA's kernels for every height). Always inlined, as [`kernel`].
///
/// # Safety
/// As [`kernel`], for every tile: the column must pass [`Column::run`]'s asserts for a panel
/// `V·L::WIDTH` wide, with `V` vectors covering `p.nr`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn column_tiles<L: Lanes, const V: usize>(
    p: &Column,
    scale: &[f32; 2],
    c: &mut [f32],
    rsc: usize,
    edges: &[[Kernel; 2]; MR],
) {
    for i0 in (0..p.mc).step_by(MR) {
        let t = p.tile(i0);
        let c = &mut c[i0 * rsc..];
        // SAFETY: the column's asserts bound this tile's pointers; `R == t.mr`.
        unsafe {
            match t.mr {
                MR => kernel::<L, MR, V>(&t, scale, c, (rsc, 1)),
                mr => edges[mr - 1][V - 1](&t, scale, c, (rsc, 1)),
            }
        }
    }
}

/// The sums of an `R` × `V`-vector tile over its depth, one FMA per accumulator and step,
/// the B vectors loaded once per step and each A element broadcast once: the whole of a
/// micro-kernel but its store. Always inlined into the kernels' target-feature functions.
///
/// # Safety
/// The CPU must have `L`'s instructions; `R == t.mr`, and the tile must pass
/// [`Tile::run`]'s asserts for a panel of at least `V·L::WIDTH` columns.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn accumulate<L: Lanes, const R: usize, const V: usize>(t: &Tile) -> [[L; V]; R] {
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    let (rsa, ksa) = t.sa;
    // SAFETY (every vector operation below): the CPU has `L`'s instructions (the contract).
    let mut acc = [[unsafe { L::zero() }; V]; R];
    for p in 0..t.kc {
        let mut bv = [unsafe { L::zero() }; V];
        for (v, bv) in bv.iter_mut().enumerate() {
            // SAFETY: row p of the B micro-panel starts at p·ldb and holds at least
            // V·WIDTH floats (the contract).
            *bv = unsafe { L::load(b.add(p * t.ldb + L::WIDTH * v)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < mr and p < kc, inside the A micro-panel's extent (the contract).
            let ar = unsafe { L::splat(*a.add(r * rsa + p * ksa)) };
            for (acc, bv) in acc.iter_mut().zip(&bv) {
                *acc = unsafe { L::fma(ar, *bv, *acc) };
            }
        }
    }
    acc
}

/// `C ← clip(alpha·acc + beta·C + bias)` for a tile whose rows are contiguous in C (at
/// `c`, `rsc` apart): `alpha·acc`, `fma(beta, C, ·)`, `+ bias`, then the clip, each step
/// skipped where it leaves every value's bits as they are (alpha 1, beta 0, no bias, no
/// clip). Every choice is made once per tile, outside the fully unrolled loops over its
/// registers, so the accumulators never leave them. Always inlined into the kernels'
/// target-feature functions.
///
/// # Safety
/// The CPU must have `L`'s instructions; `R == t.mr`, `t.nr` within the last of the `V`
/// vectors, and the tile must pass [`Tile::run`]'s asserts with `c`'s column stride 1.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // see the first comment inside
unsafe fn store_tile<L: Lanes, const R: usize, const V: usize>(
    t: &Tile,
    mut acc: [[L; V]; R],
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rsc: usize,
) {
    // Plain index loops only: an iterator adaptor's `fold` or a closure that the inliner
    // leaves out of line has no target features, so the intrinsics inside it become calls
    // (a fat-LTO build once ran every clip as two calls, the prefix 2× slower).
    // SAFETY (every vector operation below): the CPU has `L`'s instructions; the pointers
    // are row r < mr of the tile and columns up to nr (the last vector masked to them) in
    // `c` and in a column bias (nr long), all within the extents `Tile::run` asserted.
    unsafe {
        let tail = L::first(t.nr - L::WIDTH * (V - 1));
        let masked = t.nr < L::WIDTH * V;
        if alpha != 1.0 {
            let alpha = L::splat(alpha);
            for r in 0..R {
                for v in 0..V {
                    acc[r][v] = L::mul(alpha, acc[r][v]);
                }
            }
        }
        if beta != 0.0 {
            let beta = L::splat(beta);
            for r in 0..R {
                for v in 0..V {
                    let p = c.add(r * rsc + L::WIDTH * v);
                    let old = match masked && v + 1 == V {
                        true => L::load_masked(p, tail),
                        false => L::load(p),
                    };
                    acc[r][v] = L::fma(beta, old, acc[r][v]);
                }
            }
        }
        match t.epi.bias {
            Bias::Rows(b) => {
                for r in 0..R {
                    let b = L::splat(b[r]);
                    for v in 0..V {
                        acc[r][v] = L::add(acc[r][v], b);
                    }
                }
            }
            Bias::Cols(b) => {
                let mut bv = [L::zero(); V];
                for v in 0..V {
                    let p = b.as_ptr().add(L::WIDTH * v);
                    bv[v] = match masked && v + 1 == V {
                        true => L::load_masked(p, tail),
                        false => L::load(p),
                    };
                }
                for r in 0..R {
                    for v in 0..V {
                        acc[r][v] = L::add(acc[r][v], bv[v]);
                    }
                }
            }
            // `Epilogue::value` adds a zero bias: a −0 then clips as +0.
            Bias::None if t.epi.clip.is_some() => {
                for r in 0..R {
                    for v in 0..V {
                        acc[r][v] = L::add(acc[r][v], L::zero());
                    }
                }
            }
            Bias::None => {}
        }
        if let Some((lo, hi)) = t.epi.clip {
            let (lo, hi) = (L::splat(lo), L::splat(hi));
            for r in 0..R {
                for v in 0..V {
                    acc[r][v] = L::clip(acc[r][v], lo, hi);
                }
            }
        }
        for r in 0..R {
            for v in 0..V {
                let p = c.add(r * rsc + L::WIDTH * v);
                match masked && v + 1 == V {
                    true => L::store_masked(p, tail, acc[r][v]),
                    false => L::store(p, acc[r][v]),
                }
            }
        }
    }
}

/// `c[j·cs] ← alpha·row[j] + beta·c[j·cs]`: one row of a portable tile.
#[inline]
fn store_row(row: &[f32], alpha: f32, beta: f32, c: &mut [f32], cs: usize) {
    for (j, &v) in row.iter().enumerate() {
        update(&mut c[j * cs], alpha * v, beta);
    }
}

/// `c[j·cs] ← fma(beta, c[j·cs], alpha·row[j])` (`alpha·row[j]` when `beta == 0`), then
/// row `r` of the tile's epilogue: one row of a SIMD kernel's tile of a C whose rows are
/// not contiguous, rounded as their vector stores are. Always inlined into their
/// target-feature functions, where `mul_add` is one FMA instruction rather than a call.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn store_row_fused(
    t: &Tile,
    r: usize,
    row: &[f32],
    alpha: f32,
    beta: f32,
    c: &mut [f32],
    cs: usize,
) {
    for (j, &v) in row.iter().enumerate() {
        let y = &mut c[j * cs];
        let sum = if beta == 0.0 {
            alpha * v
        } else {
            beta.mul_add(*y, alpha * v)
        };
        *y = if t.epi.is_none() {
            sum
        } else {
            t.epi.value(r, j, sum)
        };
    }
}

/// `y ← alpha·A·x + beta·y` for n == 1, with A's rows or columns contiguous: each A element
/// is used once, so packing would only add traffic and a 16-wide tile would waste 15/16.
fn gemv(p: &Product, alpha: f32, beta: f32, y: &mut [f32]) {
    let ((rsa, csa), incx, incy) = (p.sa, p.sb.0, p.sc.0);
    // Unit-stride x for the dot products, an accumulator of A's columns for the axpys.
    let rows_contiguous = csa == 1;
    let len = if rows_contiguous { p.k } else { p.m };
    with_scratch(&B_SCRATCH, len, |tmp| {
        if rows_contiguous {
            for (j, t) in tmp.iter_mut().enumerate() {
                *t = p.b[j * incx];
            }
            let x = &*tmp;
            let dots = (0..p.m).map(|i| dot(&p.a[i * rsa..][..p.k], x));
            for (i, d) in dots.enumerate() {
                update(&mut y[i * incy], alpha * d, beta);
            }
        } else {
            tmp.fill(0.0);
            for j in 0..p.k {
                axpy(p.b[j * incx], &p.a[j * csa..][..p.m], tmp);
            }
            for (i, acc) in tmp.iter().enumerate() {
                update(&mut y[i * incy], alpha * acc, beta);
            }
        }
    });
}

/// `y ← v + beta·y`, never reading `y` when `beta == 0`.
fn update(y: &mut f32, v: f32, beta: f32) {
    *y = if beta == 0.0 { v } else { v + beta * *y };
}

// The GEMV loops are plain Rust that LLVM vectorizes; compiled a second time with AVX2
// enabled they use 8-wide registers where the CPU has them.

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { dot_avx2(a, b) });
    dot_body(a, b)
}

fn axpy(s: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: the CPU has AVX2 and FMA (`dispatch_avx2!` checks).
    dispatch_avx2!(unsafe { axpy_avx2(s, x, y) });
    axpy_body(s, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn axpy_avx2(s: f32, x: &[f32], y: &mut [f32]) {
    axpy_body(s, x, y)
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    // 32 lanes: four 8-wide accumulators, enough independent sums to hide the add latency
    // (f32 addition is not reassociated for us, so the lanes have to be written out).
    const L: usize = 32;
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0.0f32; L];
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_body(s: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += s * x;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::simd::{PORTABLE, WIDE as WIDE_KERNEL};
    use crate::kernels::testutil::{Lcg, assert_close};

    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
            }
        }
        c
    }

    /// Per-image products over the batch as one: panels inside one image and straddling
    /// two (and three, with images narrower than a panel), depth blocks, A in place and
    /// packed (transposed), beta 0 over NaN and 0.5, one thread's images and several;
    /// the gaps between images' C untouched.
    #[test]
    fn image_products_match_per_image_reference() {
        let mut rng = Lcg::new(9);
        for (m, k, count, p, ta) in [
            (13, 7, 3, 49, false),
            (20, 300, 4, 49, true),
            (7, 5, 5, 5, false),
            (130, 40, 2, 20, false),
            (96, 160, 8, 49, true),
            (64, 96, 8, 196, false),
        ] {
            let (b_step, c_step) = (k * p + 3, m * p + 5);
            let a = rng.vec(m * k);
            let b = rng.vec((count - 1) * b_step + k * p);
            let c0 = rng.vec((count - 1) * c_step + m * p);
            let sa = if ta { (1, m) } else { (k, 1) };
            let imgs = Images {
                count,
                pixels: p,
                b_step,
                c_step,
            };
            for beta in [0.0, 0.5] {
                let mut c = c0.clone();
                if beta == 0.0 {
                    for img in c.chunks_mut(c_step) {
                        let len = (m * p).min(img.len());
                        img[..len].fill(f32::NAN);
                    }
                }
                sgemm_images(m, k, imgs, 1.5, &a, sa, &b, beta, &mut c, Epilogue::NONE);
                for img in 0..count {
                    let bi = &b[img * b_step..];
                    let want: Vec<f64> =
                        reference(m, p, k, |i, t| a[i * sa.0 + t * sa.1], |t, j| bi[t * p + j])
                            .iter()
                            .zip(&c0[img * c_step..])
                            .map(|(&v, &c)| 1.5 * v + beta as f64 * c as f64)
                            .collect();
                    let got = &c[img * c_step..][..m * p];
                    assert_close(
                        &format!("{m}x{k} {count}x{p} image {img}"),
                        got,
                        &want,
                        1e-5,
                    );
                    if img + 1 < count {
                        assert_eq!(
                            c[img * c_step + m * p..][..5],
                            c0[img * c_step + m * p..][..5]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn all_transposes_and_beta() {
        let mut rng = Lcg::new(1);
        let (m, n, k) = (5, 7, 3);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let c0 = rng.vec(m * n);
        for ta in [false, true] {
            for tb in [false, true] {
                // The same numbers stored as A or Aᵀ: only the strides change.
                let a_s = if ta { (1, m) } else { (k, 1) };
                let b_s = if tb { (1, k) } else { (n, 1) };
                let want = reference(
                    m,
                    n,
                    k,
                    |i, p| a[i * a_s.0 + p * a_s.1],
                    |p, j| b[p * b_s.0 + j * b_s.1],
                );
                let want: Vec<f64> = want
                    .iter()
                    .zip(&c0)
                    .map(|(w, c)| 2.0 * w + 0.5 * *c as f64)
                    .collect();
                let mut c = c0.clone();
                sgemm(m, n, k, 2.0, &a, a_s, &b, b_s, 0.5, &mut c, (n, 1));
                assert_close("sgemm", &c, &want, 1e-6);
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_and_transposed_output() {
        let mut rng = Lcg::new(2);
        let (m, n, k) = (4, 3, 6);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let want = reference(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
        // C stored column-major.
        let mut c = vec![f32::NAN; m * n];
        sgemm(m, n, k, 1.0, &a, (k, 1), &b, (n, 1), 0.0, &mut c, (1, m));
        let got: Vec<f32> = (0..m * n).map(|i| c[(i % n) * m + i / n]).collect();
        assert_close("sgemm colmajor C", &got, &want, 1e-6);
    }

    /// Strides of a rows×cols matrix stored row-major (or column-major when `trans`), with
    /// `pad` unused elements after each stored line so no stride is the tight one.
    fn layout(rows: usize, cols: usize, trans: bool, pad: usize) -> (Strides, usize) {
        let line = if trans { rows } else { cols };
        let ld = line + pad;
        let s = if trans { (1, ld) } else { (ld, 1) };
        (s, extent(rows, cols, s))
    }

    /// Checks one product against the f64 reference, C's padding included: it must keep its
    /// sentinel.
    #[allow(clippy::too_many_arguments)] // one product's full description
    fn check(
        rng: &mut Lcg,
        (m, n, k): (usize, usize, usize),
        (ta, tb, tc): (bool, bool, bool),
        pad: usize,
        alpha: f32,
        beta: f32,
    ) {
        let (sa, la) = layout(m, k, ta, pad);
        let (sb, lb) = layout(k, n, tb, pad);
        let (sc, lc) = layout(m, n, tc, pad);
        let a = rng.vec(la);
        let b = rng.vec(lb);
        const SENTINEL: f32 = 1234.5;
        let mut c: Vec<f32> = rng.vec(lc);
        if pad > 0 {
            c.iter_mut().for_each(|v| *v = SENTINEL);
        }
        for i in 0..m {
            for j in 0..n {
                c[i * sc.0 + j * sc.1] = if beta == 0.0 { f32::NAN } else { rng.uniform() };
            }
        }
        let c0 = c.clone();
        let ab = reference(
            m,
            n,
            k,
            |i, p| a[i * sa.0 + p * sa.1],
            |p, j| b[p * sb.0 + j * sb.1],
        );
        sgemm(m, n, k, alpha, &a, sa, &b, sb, beta, &mut c, sc);
        let mut got = Vec::with_capacity(m * n);
        let mut want = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let at = i * sc.0 + j * sc.1;
                got.push(c[at]);
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c0[at] as f64
                };
                want.push(alpha as f64 * ab[i * n + j] + old);
                c[at] = SENTINEL;
            }
        }
        let what = format!("{m}x{n}x{k} t{ta}{tb}{tc} pad {pad} alpha {alpha} beta {beta}");
        // A sum of k products, each rounded in f32, relative to the largest entry.
        assert_close(&what, &got, &want, 1e-6 * (k as f64).sqrt().max(1.0) * 4.0);
        if pad > 0 {
            assert!(c.iter().all(|&v| v == SENTINEL), "{what}: wrote outside C");
        }
    }

    #[test]
    fn edge_sizes_match_the_reference() {
        edge_sizes();
    }

    #[test]
    fn portable_paths_match_the_reference() {
        PORTABLE.set(true);
        edge_sizes();
        every_scalar_combination_on_edge_tiles();
        crosses_every_block_boundary();
    }

    /// Both x86 kernels whatever the CPU's measured peaks chose (the AVX2 one twice where
    /// the CPU lacks AVX-512).
    #[test]
    fn avx2_and_avx512_paths_match_the_reference() {
        for wide in [false, true] {
            WIDE_KERNEL.set(Some(wide));
            edge_sizes();
            every_scalar_combination_on_edge_tiles();
            crosses_every_block_boundary();
        }
    }

    /// The AVX-512 kernel's results are the AVX2 kernel's, bit for bit, on every path:
    /// edge tiles of both widths, C computed transposed, strided C, depth blocks, bias,
    /// segments, images straddling panels, one thread and two.
    #[test]
    fn both_kernels_give_the_same_bits() {
        WIDE_KERNEL.set(Some(true));
        if !crate::kernels::simd::wide_fma() {
            println!("this CPU lacks AVX-512F: nothing to compare");
            return;
        }
        let run = |wide: bool, f: &dyn Fn() -> Vec<f32>| {
            WIDE_KERNEL.set(Some(wide));
            let out = f();
            WIDE_KERNEL.set(None);
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let mut rng = Lcg::new(31);
        for threads in [1, 2] {
            crate::threads::set_threads(threads);
            for (m, n, k) in [
                (7, 17, 9),
                (13, 33, 300),
                (2 * MC + 7, 49, KC + 3),
                (24, 3136, 96),
                (1, 40, 33),
                (40, 1, 33),
                (MC - 20, 8 * WIDE + 5, KC + 40),
            ] {
                for bits in [0, 3, 5, 6] {
                    let t = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
                    let (sa, la) = layout(m, k, t.0, 0);
                    let (sb, lb) = layout(k, n, t.1, 0);
                    let (sc, lc) = layout(m, n, t.2, 0);
                    let (a, b, c0) = (rng.vec(la), rng.vec(lb), rng.vec(lc));
                    let (rows, cols) = (rng.vec(m), rng.vec(n));
                    for (alpha, beta) in [(1.0, 0.0), (0.7, 1.3)] {
                        let product = || {
                            let mut c = c0.clone();
                            // Along the columns without a clip, along the rows with one.
                            let epi = match beta == 0.0 {
                                true => Epilogue {
                                    bias: Bias::Cols(&cols),
                                    clip: None,
                                },
                                false => Epilogue::rows(Some(&rows), Some((-0.5, 0.5))),
                            };
                            sgemm_with(m, n, k, alpha, &a, sa, &b, sb, beta, &mut c, sc, epi);
                            c
                        };
                        let what = format!("{m}x{n}x{k} t{t:?} beta {beta} on {threads}");
                        assert!(run(false, &product) == run(true, &product), "{what}");
                    }
                }
            }
            let (m, k, count, p) = (20, 70, 5, 49);
            let (a, b, c0) = (
                rng.vec(m * k),
                rng.vec(count * k * p),
                rng.vec(count * m * p),
            );
            let imgs = Images {
                count,
                pixels: p,
                b_step: k * p,
                c_step: m * p,
            };
            let images = || {
                let mut c = c0.clone();
                let epi = Epilogue::rows(Some(&a[..m]), Some((-0.5, 0.5)));
                sgemm_images(m, k, imgs, 0.5, &a, (k, 1), &b, 1.5, &mut c, epi);
                c
            };
            assert!(run(false, &images) == run(true, &images), "images");
            let seg = Segments {
                count: 3,
                a_step: 40 * 9,
                b_step: 9 * 37,
            };
            let (a, b, c0) = (rng.vec(3 * 40 * 9), rng.vec(3 * 9 * 37), rng.vec(40 * 37));
            let sum = || {
                let mut c = c0.clone();
                sgemm_sum(
                    40,
                    37,
                    9,
                    seg,
                    1.0,
                    &a,
                    (9, 1),
                    &b,
                    (37, 1),
                    1.0,
                    &mut c,
                    (37, 1),
                    Epilogue::NONE,
                );
                c
            };
            assert!(run(false, &sum) == run(true, &sum), "segments");
        }
    }

    fn edge_sizes() {
        const SIZES: [usize; 11] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 65, 300];
        const SCALARS: [(f32, f32); 3] = [(1.0, 0.0), (-1.5, 1.0), (0.75, 0.5)];
        let mut rng = Lcg::new(3);
        let mut case = 0;
        for m in SIZES {
            for n in SIZES {
                for k in SIZES {
                    for ta in [false, true] {
                        for tb in [false, true] {
                            // C's layout, padding and scalars rotate so every combination
                            // of them meets many shapes without multiplying the run time.
                            let tc = case % 3 == 0;
                            let pad = [0, 3][case % 2];
                            let (alpha, beta) = SCALARS[case % SCALARS.len()];
                            check(&mut rng, (m, n, k), (ta, tb, tc), pad, alpha, beta);
                            case += 1;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_scalar_combination_on_edge_tiles() {
        let mut rng = Lcg::new(4);
        for (m, n, k) in [(7, 17, 9), (13, 33, 5), (1, 19, 7), (19, 1, 7)] {
            for layout in 0..8 {
                let t = (layout & 1 != 0, layout & 2 != 0, layout & 4 != 0);
                for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (1.0, 0.5), (-2.0, 0.0), (0.5, 0.5)] {
                    check(&mut rng, (m, n, k), t, 2, alpha, beta);
                }
            }
        }
    }

    #[test]
    fn crosses_every_block_boundary() {
        let mut rng = Lcg::new(5);
        // Two or more KC, MC and NC blocks, with ragged ends.
        for (m, n, k) in [
            (2 * MC + 7, 40, 2 * KC + 3),
            (9, NC + 21, 20),
            (MC + 1, 18, KC + 1),
        ] {
            for t in [
                (false, false, false),
                (true, true, false),
                (false, true, true),
            ] {
                check(&mut rng, (m, n, k), t, 1, 1.0, 0.5);
            }
        }
        // Split by rows across two threads, each share too tall to read B in place: B
        // packed once per block for both (`shared_b`), over two NC and two KC blocks.
        if threads::threads() > 1 {
            let (m, n, k) = (2 * MC + 13, NC + 21, KC + 3);
            check(&mut rng, (m, n, k), (false, false, false), 1, 1.0, 0.5);
            check(&mut rng, (m, n, k), (true, true, false), 0, 0.5, 0.0);
            // Each share one block of rows: every thread packs its B panels one at a time
            // into a single panel of scratch (B transposed), or reads B in place and packs
            // only the ragged last panel.
            let (m, n, k) = (MC - 20, 8 * WIDE + 5, KC + 40);
            check(&mut rng, (m, n, k), (false, true, false), 1, 1.0, 0.5);
            check(&mut rng, (m, n, k), (false, false, false), 0, 1.0, 0.0);
        }
        // A shallow product: more rows to a block (`block_rows`), and still two of them.
        let m = MC * KC / 20 + 7;
        check(&mut rng, (m, 40, 20), (false, false, false), 0, 1.0, 0.0);
        check(&mut rng, (m, 40, 20), (true, false, false), 1, 0.5, 1.5);
        // Rows 4 KiB apart: a row-major A packed instead of read in place.
        check(&mut rng, (13, 20, 1024), (false, false, false), 0, 1.0, 0.0);
    }

    /// [`sgemm_with`] against [`sgemm`] then the bias and the clip, on every path: several
    /// depth and column blocks, C computed transposed, row and column splits across threads
    /// (B shared or not), GEMV (a column, a row) and zero depth; a bias along the rows and
    /// one along the columns, with a clip and without.
    #[test]
    fn epilogue_is_applied_once_on_every_path() {
        let mut rng = Lcg::new(21);
        let shapes = [
            (2 * MC + 13, NC + 21, KC + 3),
            (MC - 20, 8 * WIDE + 5, KC + 40),
            (7, 300, 2 * KC + 1),
            (300, 7, 9),
            (40, 1, 33),
            (1, 40, 33),
            (5, 6, 0),
        ];
        for threads in [1, 2] {
            crate::threads::set_threads(threads);
            for (m, n, k) in shapes {
                for (tb, tc) in [(false, false), (true, true)] {
                    let (sa, la) = layout(m, k, false, 0);
                    let (sb, lb) = layout(k, n, tb, 0);
                    let (sc, lc) = layout(m, n, tc, 0);
                    let (a, b, c0) = (rng.vec(la), rng.vec(lb), rng.vec(lc));
                    let (rows, cols) = (rng.vec(m), rng.vec(n));
                    let clip = Some((-0.5, 0.75));
                    for (along, clip) in [("cols", None), ("rows", clip), ("none", clip)] {
                        let (lo, hi) = clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
                        let mut want = c0.clone();
                        sgemm(m, n, k, 1.5, &a, sa, &b, sb, 0.5, &mut want, sc);
                        for i in 0..m {
                            for j in 0..n {
                                let b = match along {
                                    "rows" => rows[i],
                                    "cols" => cols[j],
                                    _ => 0.0,
                                };
                                let v = &mut want[i * sc.0 + j * sc.1];
                                *v = (*v + b).clamp(lo, hi);
                            }
                        }
                        let bias = match along {
                            "rows" => Bias::Rows(&rows),
                            "cols" => Bias::Cols(&cols),
                            _ => Bias::None,
                        };
                        let mut got = c0.clone();
                        let epi = Epilogue { bias, clip };
                        sgemm_with(m, n, k, 1.5, &a, sa, &b, sb, 0.5, &mut got, sc, epi);
                        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
                        let what = format!("{m}x{n}x{k} {tb} {tc} bias along {along}");
                        assert_close(&what, &got, &want, 1e-6);
                    }
                }
            }
        }
    }

    /// Segmented depth ([`sgemm_sum`]) against the sum of every term, on segments shorter
    /// and longer than a depth block, blocks that start mid-segment, a row (transposed to a
    /// column), a column (not the GEMV path) and shapes large enough to split by rows.
    #[test]
    fn segmented_sums_match_the_reference() {
        let mut rng = Lcg::new(11);
        for (m, n, k, count) in [
            (7, 19, 5, 3),
            (MC + 5, 33, 49, 8),
            (20, 2 * WIDE + 3, 300, 2),
            (1, 9, 7, 4),
            (9, 1, 7, 4),
            (2 * MC + 13, 320, 49, 8),
        ] {
            for (ta, tb) in [(false, true), (true, false), (false, false)] {
                let (sa, la) = layout(m, k, ta, 0);
                let (sb, lb) = layout(k, n, tb, 0);
                // Gaps between the segments, as between a batch's images.
                let (a_step, b_step) = (la + 3, lb + 5);
                let a = rng.vec(a_step * count);
                let b = rng.vec(b_step * count);
                let mut c = rng.vec(m * n);
                let c0 = c.clone();
                let seg = Segments {
                    count,
                    a_step,
                    b_step,
                };
                sgemm_sum(
                    m,
                    n,
                    k,
                    seg,
                    0.5,
                    &a,
                    sa,
                    &b,
                    sb,
                    2.0,
                    &mut c,
                    (n, 1),
                    Epilogue::NONE,
                );
                let want: Vec<f64> = (0..m * n)
                    .map(|at| {
                        let (i, j) = (at / n, at % n);
                        let sum: f64 = (0..count * k)
                            .map(|t| {
                                let (s, p) = (t / k, t % k);
                                a[s * a_step + i * sa.0 + p * sa.1] as f64
                                    * b[s * b_step + p * sb.0 + j * sb.1] as f64
                            })
                            .sum();
                        0.5 * sum + 2.0 * c0[at] as f64
                    })
                    .collect();
                let what = format!("{m}x{n}x{k} in {count} segments, t{ta}{tb}");
                assert_close(&what, &c, &want, 1e-5 * ((count * k) as f64).sqrt());
            }
        }
    }

    #[test]
    fn zero_depth_or_alpha_scales_c() {
        let mut c = vec![f32::NAN, 2.0, 4.0, f32::INFINITY];
        sgemm(2, 2, 0, 1.0, &[], (0, 0), &[], (0, 0), 0.0, &mut c, (2, 1));
        assert_eq!(c, [0.0; 4]);
        let mut c = vec![1.0, 2.0, 3.0, 4.0];
        let nan = [f32::NAN; 4];
        sgemm(
            2,
            2,
            2,
            0.0,
            &nan,
            (2, 1),
            &nan,
            (2, 1),
            0.5,
            &mut c,
            (2, 1),
        );
        assert_eq!(c, [0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    #[should_panic(expected = "C too short")]
    fn short_c_panics() {
        let x = [0.0; 4];
        sgemm(
            2,
            2,
            2,
            1.0,
            &x,
            (2, 1),
            &x,
            (2, 1),
            0.0,
            &mut [0.0; 3],
            (2, 1),
        );
    }

    pub(crate) mod counting {
        //! Counts this thread's allocations, so tests running in parallel do not disturb
        //! each other's tallies. It is the test binary's global allocator: other modules'
        //! tests count with it too.

        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Counting;

        thread_local! {
            static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
        }

        // SAFETY: forwards every call to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
                // SAFETY: the caller's contract is passed through.
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from `System.alloc` with this layout.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        pub fn allocations() -> usize {
            ALLOCATIONS.with(|c| c.get())
        }
    }

    #[global_allocator]
    static COUNTING: counting::Counting = counting::Counting;

    #[test]
    fn warm_products_do_not_allocate() {
        let shapes = [
            (300, 200, 600),
            (24, 3136, 96),
            (10, 64, 1280),
            (1, 64, 300),
            (70, 1, 33),
        ];
        let mut rng = Lcg::new(6);
        let mut operands: Vec<_> = shapes
            .iter()
            .map(|&(m, n, k)| (rng.vec(m * k), rng.vec(k * n), vec![0.0; m * n]))
            .collect();
        // Like a training step: the same products in the same order, in several layouts
        // (each may need its own amount of scratch).
        let mut step = || {
            for (&(m, n, k), (a, b, c)) in shapes.iter().zip(&mut operands) {
                for (sa, sb) in [((k, 1), (n, 1)), ((1, m), (1, k))] {
                    sgemm(m, n, k, 1.0, a, sa, b, sb, 0.0, c, (n, 1));
                    sgemm(m, n, k, 1.0, a, sa, b, sb, 0.5, c, (1, m));
                }
            }
        };
        step();
        let before = counting::allocations();
        for _ in 0..3 {
            step();
        }
        assert_eq!(counting::allocations() - before, 0);
    }

    /// GFLOP/s against matrixmultiply (single thread), ours on one and on two threads. Run with
    /// `cargo test -p actc-runtime --release --lib gemm::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run in release with --ignored --nocapture"]
    fn bench() {
        use std::time::{Duration, Instant};
        // (label, m, n, k, A, B and C transposed)
        let shapes = [
            ("1x1 conv 7x7", 960, 49, 160, false, false, false),
            ("expand 96>576 14", 576, 196, 96, false, false, false),
            ("project 576>96 14", 96, 196, 576, false, false, false),
            ("project 960>160 7", 160, 49, 960, false, false, false),
            ("dX 1280>320 7 (A^T)", 320, 49, 1280, true, false, false),
            ("dW 1280x320 392 (B^T)", 1280, 320, 392, false, true, false),
            ("dW 1280x320 64 (A^T)", 1280, 320, 64, true, false, false),
            ("dW 960x160 64 (A^T)", 960, 160, 64, true, false, false),
            ("dW 320x960 64 (A^T)", 320, 960, 64, true, false, false),
            ("dW 160x960 64 (A^T)", 160, 960, 64, true, false, false),
            ("1x1 conv 56x56", 24, 3136, 96, false, false, false),
            ("1x1 conv 112x112", 96, 12544, 16, false, false, false),
            ("3x3 im2col 56x56", 144, 3136, 1296, false, false, false),
            ("linear fwd", 10, 64, 1280, false, false, false),
            ("linear", 1280, 64, 320, false, false, false),
            ("conv dW (B^T)", 24, 96, 3136, false, true, false),
            ("conv dX (A^T)", 96, 3136, 24, true, false, false),
            ("1x1 on 1x1 (C^T)", 1280, 10, 320, false, true, true),
            ("1x1 fwd, 64 px (B^T)", 64, 1280, 320, false, true, false),
            ("1x1 fwd, 64 px (B^T)", 64, 960, 160, false, true, false),
            ("square", 256, 256, 256, false, false, false),
            ("square", 512, 512, 512, false, false, false),
            ("square (A 4KiB)", 1024, 1024, 1024, false, false, false),
            ("k=1", 256, 256, 1, false, false, false),
            ("gemv n=1", 1280, 1, 320, false, false, false),
            ("gemv m=1", 1, 1280, 320, false, false, false),
        ];
        let mut rng = Lcg::new(7);
        println!(
            "{:<16} {:>5} {:>5} {:>5} {:>8} {:>8} {:>6} {:>8}",
            "shape", "m", "n", "k", "ours", "mm", "ratio", "ours x2"
        );
        for (label, m, n, k, ta, tb, tc) in shapes {
            let (a, b) = (rng.vec(m * k), rng.vec(k * n));
            let mut c = vec![0.0; m * n];
            let sa = if ta { (1, m) } else { (k, 1) };
            let sb = if tb { (1, k) } else { (n, 1) };
            let sc = if tc { (1, m) } else { (n, 1) };
            let mut call = |which: usize| {
                if which != 1 {
                    crate::threads::set_threads(if which == 0 { 1 } else { 2 });
                    sgemm(m, n, k, 1.0, &a, sa, &b, sb, 0.0, &mut c, sc);
                    return;
                }
                // SAFETY: the strides address m×k, k×n and m×n matrices inside the vectors.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        sa.0 as isize,
                        sa.1 as isize,
                        b.as_ptr(),
                        sb.0 as isize,
                        sb.1 as isize,
                        0.0,
                        c.as_mut_ptr(),
                        sc.0 as isize,
                        sc.1 as isize,
                    )
                }
            };
            // The machine is shared: the best of many short rounds, the two alternating so
            // a busy spell hits both.
            let mut best = [f64::INFINITY; 3];
            for _ in 0..20 {
                for (which, best) in best.iter_mut().enumerate() {
                    call(which);
                    let (start, mut calls) = (Instant::now(), 0u32);
                    while start.elapsed() < Duration::from_millis(10) {
                        call(which);
                        calls += 1;
                    }
                    *best = best.min(start.elapsed().as_secs_f64() / calls as f64);
                }
            }
            let [ours, mm, ours2] = best;
            let gflops = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            println!(
                "{label:<16} {m:>5} {n:>5} {k:>5} {:>8.1} {:>8.1} {:>6.2} {:>8.1}",
                gflops(ours),
                gflops(mm),
                mm / ours,
                gflops(ours2)
            );
        }
    }
}
