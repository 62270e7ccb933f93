//! Products whose B and C are one matrix per image of a batch (a 1×1 conv over `[n, c, p]`
//! activations): one product whose columns run over every image's pixels. Per image, a
//! product of a few dozen columns wastes much of its last NR-column panel (49 pixels are
//! three panels and one column, computed as a fourth whole panel); over the batch, only the
//! last panel of each thread's images is short.
//!
//! A panel that straddles two images is gathered from both when packed, and its tiles are
//! stored through a small buffer; the other tiles go straight into C.

use super::{
    A_SCRATCH, B_SCRATCH, Bias, Epilogue, KC, MR, NARROW, NC, Product, Strides, Tile, WIDE,
    block_size, blocks, extent, pack, panel_width, update, with_scratch,
};
use crate::threads;

/// Where the images of [`sgemm_images`] lie.
#[derive(Clone, Copy)]
pub struct Images {
    pub count: usize,
    /// Columns of each image's B and C: its pixels.
    pub pixels: usize,
    /// Floats from one image's B (k×pixels, row-major) to the next's.
    pub b_step: usize,
    /// Floats from one image's C (m×pixels, row-major) to the next's.
    pub c_step: usize,
}

/// Whether per-image products `n` columns wide waste enough of their last panel (over an
/// eighth of their work) for [`sgemm_images`] to gain: measured with 16-column panels, 7×7
/// images gained 20 % (49 = 3·16 + 1), 14×14 ones lost 5 % (196 = 12·16 + 4).
pub fn ragged(n: usize) -> bool {
    (n.next_multiple_of(panel_width()) - n) * 8 > n
}

/// `C_i ← alpha·A·B_i + beta·C_i` for every image `i`, `A` m×k with strides `sa`, then the
/// epilogue (its bias along the rows, if any). In parallel over runs of images, each thread
/// packing its own.
#[allow(clippy::too_many_arguments)] // sgemm's terms, B and C being the images'
pub fn sgemm_images(
    m: usize,
    k: usize,
    imgs: Images,
    alpha: f32,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
) {
    let (n, p) = (imgs.count, imgs.pixels);
    if m == 0 || n == 0 || p == 0 {
        return;
    }
    // The micro-kernel works through raw pointers: these bound what it reaches.
    assert!(imgs.c_step >= m * p, "sgemm_images: images' C overlap");
    assert!(extent(m, k, sa) <= a.len(), "sgemm_images: A too short");
    assert!(
        (n - 1) * imgs.b_step + k * p <= b.len(),
        "sgemm_images: B too short"
    );
    assert!(
        (n - 1) * imgs.c_step + m * p <= c.len(),
        "sgemm_images: C too short"
    );
    match epi.bias {
        Bias::None => {}
        Bias::Rows(b) => assert!(b.len() == m, "sgemm_images: the bias is not m long"),
        Bias::Cols(_) => panic!("sgemm_images: a bias along the columns"),
    }
    if k == 0 || alpha == 0.0 {
        for img in c.chunks_mut(imgs.c_step).take(n) {
            img[..m * p].iter_mut().for_each(|v| update(v, 0.0, beta));
            epi.apply(m, p, img, (p, 1));
        }
        return;
    }
    let parts = threads::parts_for(m * k * n * p).min(n);
    let wide = panel_width() == WIDE;
    threads::for_runs(c, n, imgs.c_step, 1, parts, |run, c| {
        let imgs = Images {
            count: run.len(),
            ..imgs
        };
        let columns = if wide {
            columns::<WIDE>
        } else {
            columns::<NARROW>
        };
        columns(
            m,
            k,
            imgs,
            alpha,
            (a, sa),
            &b[run.start * imgs.b_step..],
            beta,
            c,
            epi,
        );
    });
}

/// [`sgemm_images`] on one thread: the Goto/BLIS loops, B's panels gathered over images.
#[allow(clippy::too_many_arguments)] // as sgemm_images
fn columns<const NR: usize>(
    m: usize,
    k: usize,
    imgs: Images,
    alpha: f32,
    (a, sa): (&[f32], Strides),
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
) {
    let n = imgs.count * imgs.pixels;
    // A as a product sees it, for its packing and whether it is read in place.
    let prod = Product {
        m,
        n,
        k,
        a,
        sa,
        b: &[],
        sb: (0, 0),
        sc: (imgs.pixels, 1),
        seg_k: k,
        seg_a: 0,
        seg_b: 0,
        epi,
    };
    let (kc_max, nc_max, mc_max) = (
        block_size(k, KC, 1),
        block_size(n, NC, NR),
        block_size(m, prod.block_rows(), MR),
    );
    let a_in_place = prod.a_in_place();
    let a_len = if a_in_place { 0 } else { mc_max * kc_max };
    with_scratch(&B_SCRATCH, nc_max * kc_max, |bp| {
        with_scratch(&A_SCRATCH, a_len, |ap| {
            for (jc, nc) in blocks(n, nc_max) {
                for (pc, kc) in blocks(k, kc_max) {
                    // Later depth blocks add to what the first one wrote.
                    let beta = if pc == 0 { beta } else { 1.0 };
                    for (panel, j0) in bp.chunks_exact_mut(NR * kc).zip((0..nc).step_by(NR)) {
                        pack_columns::<NR>(panel, b, imgs, jc + j0, NR.min(nc - j0), pc, kc);
                    }
                    for (ic, mc) in blocks(m, mc_max) {
                        if !a_in_place {
                            let panels = ap.chunks_exact_mut(MR * kc);
                            for (panel, i0) in panels.zip((0..mc).step_by(MR)) {
                                prod.pack_a(panel, ic + i0, MR.min(mc - i0), pc, kc);
                            }
                        }
                        for (jr, j0) in (0..nc).step_by(NR).enumerate() {
                            let b_panel = &bp[jr * NR * kc..][..NR * kc];
                            for (ir, i0) in (0..mc).step_by(MR).enumerate() {
                                let (a_panel, sa) = if a_in_place {
                                    (&a[(ic + i0) * sa.0 + pc * sa.1..], sa)
                                } else {
                                    (&ap[ir * MR * kc..], (1, MR))
                                };
                                let tile = Tile {
                                    kc,
                                    a: a_panel,
                                    sa,
                                    b: b_panel,
                                    ldb: NR,
                                    mr: MR.min(mc - i0),
                                    nr: NR.min(nc - j0),
                                    epi: epi.last_block(
                                        pc + kc == k,
                                        ic + i0,
                                        MR.min(mc - i0),
                                        0,
                                        0,
                                    ),
                                };
                                store::<NR>(&tile, alpha, beta, c, imgs, ic + i0, jc + j0);
                            }
                        }
                    }
                }
            }
        });
    });
}

/// Packs columns `j0..j0 + nr` over depth `pc..pc + kc` as one NR-wide panel (zeros past
/// `nr`), gathering each depth row from the images the columns belong to.
fn pack_columns<const NR: usize>(
    dst: &mut [f32],
    b: &[f32],
    imgs: Images,
    j0: usize,
    nr: usize,
    pc: usize,
    kc: usize,
) {
    let p = imgs.pixels;
    let (img, px) = (j0 / p, j0 % p);
    if px + nr <= p {
        return pack::<NR>(dst, &b[img * imgs.b_step + pc * p + px..], nr, kc, (1, p));
    }
    for (t, row) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
        let mut r = 0;
        while r < nr {
            let (img, px) = ((j0 + r) / p, (j0 + r) % p);
            let len = (p - px).min(nr - r);
            row[r..r + len].copy_from_slice(&b[img * imgs.b_step + (pc + t) * p + px..][..len]);
            r += len;
        }
        row[nr..].fill(0.0);
    }
}

/// `C ← alpha·tile + beta·C` for the tile of rows `i0..` and columns `j0..`: straight into
/// C when its columns lie in one image, else through a buffer that C's runs in each image
/// are gathered into (when `beta` reads them) and scattered back from, so the kernel's own
/// store does the arithmetic.
fn store<const NR: usize>(
    tile: &Tile,
    alpha: f32,
    beta: f32,
    c: &mut [f32],
    imgs: Images,
    i0: usize,
    j0: usize,
) {
    let p = imgs.pixels;
    let (img, px) = (j0 / p, j0 % p);
    if px + tile.nr <= p {
        return tile.run::<NR>(
            alpha,
            beta,
            &mut c[img * imgs.c_step + i0 * p + px..],
            (p, 1),
        );
    }
    // (row, column in the tile, where in C, length) of each run inside one image.
    let runs = (0..tile.mr).flat_map(|r| {
        let mut col = 0;
        std::iter::from_fn(move || {
            (col < tile.nr).then(|| {
                let (img, px) = ((j0 + col) / p, (j0 + col) % p);
                let len = (p - px).min(tile.nr - col);
                col += len;
                (r, col - len, img * imgs.c_step + (i0 + r) * p + px, len)
            })
        })
    });
    let mut buf = [0.0; MR * WIDE];
    if beta != 0.0 {
        for (r, col, at, len) in runs.clone() {
            buf[r * NR + col..][..len].copy_from_slice(&c[at..][..len]);
        }
    }
    tile.run::<NR>(alpha, beta, &mut buf, (NR, 1));
    for (r, col, at, len) in runs {
        c[at..][..len].copy_from_slice(&buf[r * NR + col..][..len]);
    }
}
