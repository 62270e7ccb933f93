//! 2-D convolution as ONNX `Conv` defines it: NCHW input, weight (c_out, c_in/groups, kh, kw),
//! any stride, asymmetric padding, dilation and groups. Forward, input gradient, weight
//! gradient and bias gradient.
//!
//! Three paths: depthwise convs go to `depthwise` (direct loops, since im2col would turn
//! the work into many tiny products); a plain gemm for 1×1 stride-1 unpadded convs (the
//! input already is the im2col matrix); otherwise im2col + gemm, one image and one group at a
//! time so the scratch stays a single column matrix. The forward of a conv with a few input
//! channels goes to `direct` instead (its im2col matrix would be many times its input).
//!
//! 1×1 convs over images of a few dozen pixels (7×7) run the whole batch as one product
//! (`gemm::sgemm_images`), and over a few pixels (≤ 16) as one product on rows copied to the
//! workspace.
//!
//! Threads: 1×1 convs share the batch's images out among the threads, each image's product
//! on one; other products are split inside the gemm. im2col and col2im stay serial: they
//! move memory that one core already streams at full speed.

// Re-exported where it used to live, for the compiler's imports.
use super::gemm::{Epilogue, Images, Segments, ragged, sgemm, sgemm_images, sgemm_sum, sgemm_with};
pub use super::geometry::Conv2dGeom;
use super::geometry::{gather, scatter_axpy, tap_offset};
use super::rows::{RowCache, RowSplit};
use super::window::valid_range;
use super::{depthwise, direct};
use crate::threads;

// The choice between conv's own paths, which hangs on its thresholds, stays with them.
impl Conv2dGeom {
    /// A 1×1 conv over small images: the whole batch as one product (see [`rows_path`]).
    fn is_batched_pointwise(&self) -> bool {
        let p = self.out_h() * self.out_w();
        self.is_pointwise() && self.groups == 1 && p > 1 && p <= BATCHED_PIXELS
    }

    /// A 1×1 conv over images whose pixels leave a short GEMM panel (7×7): the batch
    /// as one product over all images' pixels, in place ([`sgemm_images`]).
    fn is_image_product(&self) -> bool {
        self.is_pointwise() && self.groups == 1 && self.n > 1 && ragged(self.out_h() * self.out_w())
    }
}

/// Scratch, in f32s, that [`forward`], [`backward_data`] and [`backward_weight`] need: one
/// im2col matrix (one image, one group); for a batched 1×1 conv its input and output with
/// one row per channel; none for the depthwise and other pointwise paths.
pub fn workspace_len(g: &Conv2dGeom) -> usize {
    if g.is_batched_pointwise() {
        (g.c_in + g.c_out) * g.n * g.out_h() * g.out_w()
    } else if g.is_depthwise() || g.is_pointwise() {
        0
    } else {
        g.col_rows() * g.out_h() * g.out_w()
    }
}

/// Scratch [`forward`] alone needs: [`workspace_len`], but none where it takes the direct
/// path (a stem over RGB), whose backward still needs the im2col matrix.
pub fn forward_workspace_len(g: &Conv2dGeom) -> usize {
    if direct::applies(g) {
        0
    } else {
        workspace_len(g)
    }
}

/// `y = conv(x, w) + bias`.
pub fn forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) {
    forward_with(g, x, w, bias, None, y, ws);
}

/// [`forward`], then `y ← min(max(y, lo), hi)` (a conv and the ReLU6 or ReLU after it).
/// Where the conv is a product, the bias and the clip are applied in the product's store,
/// as each tile of the output leaves the registers: filling the output with the bias first,
/// reading that back in the product and clipping in a pass of its own went through memory
/// three times on a MobileNet's large 1×1 convs.
#[allow(clippy::too_many_arguments)]
pub fn forward_clipped(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: (f32, f32),
    y: &mut [f32],
    ws: &mut [f32],
) {
    forward_with(g, x, w, bias, Some(clip), y, ws);
}

#[allow(clippy::too_many_arguments)]
fn forward_with(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
    ws: &mut [f32],
) {
    g.debug_check();
    debug_assert_eq!(x.len(), g.input_len());
    debug_assert_eq!(w.len(), g.weight_len());
    debug_assert!(bias.is_none_or(|b| b.len() == g.c_out));
    debug_assert_eq!(y.len(), g.output_len());
    debug_assert!(ws.len() >= forward_workspace_len(g));
    let p = g.out_h() * g.out_w();
    if g.is_depthwise() {
        depthwise::forward(g, x, w, bias, clip, y)
    } else if direct::applies(g) {
        direct::forward(g, x, w, bias, clip, y)
    } else if g.is_pointwise() && p == 1 {
        single_pixel_forward(g, x, w, bias, clip, y)
    } else if g.is_batched_pointwise() {
        rows_forward(g, x, w, bias, clip, y, ws)
    } else if g.is_image_product() {
        images_forward(g, x, w, bias, clip, y)
    } else {
        per_image_forward(g, x, w, bias, clip, y, ws)
    }
}

/// One product per image and group (im2col first unless 1×1), the bias and the clip in its
/// store.
///
/// 1×1 convs (no im2col scratch to share) split the batch across the threads, each image a
/// product of its own: split inside, the product of one 28×28 image woke the other thread
/// twice (to pack B, then to multiply), sixteen times per conv at batch 8, and two threads
/// ran it barely faster than one.
fn per_image_forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
    ws: &mut [f32],
) {
    let (hw, p) = (g.h * g.w, g.out_h() * g.out_w());
    let (cig, cog, rows) = (g.cin_per_group(), g.cout_per_group(), g.col_rows());
    let image = |b: usize, yb: &mut [f32], ws: &mut [f32]| {
        for gi in 0..g.groups {
            let xg = &x[(b * g.c_in + gi * cig) * hw..][..cig * hw];
            let wg = &w[gi * cog * rows..][..cog * rows];
            let yg = &mut yb[gi * cog * p..][..cog * p];
            let epi = Epilogue::rows(bias.map(|bias| &bias[gi * cog..][..cog]), clip);
            let (b, depth) = if g.is_pointwise() {
                (xg, cig)
            } else {
                let col = &mut ws[..rows * p];
                im2col(g, xg, col);
                (&*col, rows)
            };
            sgemm_with(
                cog,
                p,
                depth,
                1.0,
                wg,
                (depth, 1),
                b,
                (p, 1),
                0.0,
                yg,
                (p, 1),
                epi,
            );
        }
    };
    each_image(g, y, ws, image);
}

/// `f(b, out_b, ws)` for every image `b`, `out_b` being image `b`'s part of `out`. 1×1
/// convs (no scratch to share) split the batch across the threads when the images share
/// out evenly (or nearly: four or more each) and the work is worth them; the products inside
/// then run on their thread alone.
fn each_image(
    g: &Conv2dGeom,
    out: &mut [f32],
    ws: &mut [f32],
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    let per_image = out.len() / g.n;
    let t = threads::parts_for(g.output_len() * g.col_rows()).min(g.n);
    if t > 1 && g.is_pointwise() && (g.n.is_multiple_of(t) || g.n >= 4 * t) {
        threads::for_runs(out, g.n, per_image, 1, t, |run, outs| {
            for (b, o) in run.zip(outs.chunks_exact_mut(per_image)) {
                f(b, o, &mut []);
            }
        });
    } else {
        for (b, o) in out.chunks_exact_mut(per_image).enumerate() {
            f(b, o, ws);
        }
    }
}

/// The 1×1 conv of the whole batch as one product ([`Conv2dGeom::is_image_product`]), the
/// bias and the clip in its store.
fn images_forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
) {
    let p = g.out_h() * g.out_w();
    let imgs = Images {
        count: g.n,
        pixels: p,
        b_step: g.c_in * p,
        c_step: g.c_out * p,
    };
    let epi = Epilogue::rows(bias, clip);
    sgemm_images(g.c_out, g.c_in, imgs, 1.0, w, (g.c_in, 1), x, 0.0, y, epi);
}

/// dx from dy and the weight (no activation needed).
pub fn backward_data(g: &Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32], ws: &mut [f32]) {
    g.debug_check();
    debug_assert_eq!(w.len(), g.weight_len());
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(dx.len(), g.input_len());
    debug_assert!(ws.len() >= workspace_len(g));
    if g.is_depthwise() {
        return depthwise::backward_data(g, w, dy, dx);
    }
    let (hw, p) = (g.h * g.w, g.out_h() * g.out_w());
    if g.is_pointwise() && p == 1 {
        return single_pixel_backward_data(g, w, dy, dx);
    }
    if g.is_batched_pointwise() {
        return rows_backward_data(g, w, dy, dx, ws);
    }
    if g.is_image_product() {
        // Wᵀ·dy over the batch's pixels: the weight read column-wise.
        let imgs = Images {
            count: g.n,
            pixels: p,
            b_step: g.c_out * p,
            c_step: g.c_in * p,
        };
        let epi = Epilogue::NONE;
        return sgemm_images(g.c_in, g.c_out, imgs, 1.0, w, (1, g.c_in), dy, 0.0, dx, epi);
    }
    let (cig, cog, rows) = (g.cin_per_group(), g.cout_per_group(), g.col_rows());
    each_image(g, dx, ws, |b, dxb, ws| {
        for gi in 0..g.groups {
            let dxg = &mut dxb[gi * cig * hw..][..cig * hw];
            let wg = &w[gi * cog * rows..][..cog * rows];
            let dyg = &dy[(b * g.c_out + gi * cog) * p..][..cog * p];
            // Wᵀ·dy: the weight read column-wise.
            if g.is_pointwise() {
                sgemm(
                    cig,
                    p,
                    cog,
                    1.0,
                    wg,
                    (1, cig),
                    dyg,
                    (p, 1),
                    0.0,
                    dxg,
                    (p, 1),
                );
            } else {
                let col = &mut ws[..rows * p];
                sgemm(
                    rows,
                    p,
                    cog,
                    1.0,
                    wg,
                    (1, rows),
                    dyg,
                    (p, 1),
                    0.0,
                    col,
                    (p, 1),
                );
                col2im(g, col, dxg);
            }
        }
    });
}

/// dw from the input and dy, summed over the batch.
pub fn backward_weight(g: &Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32], ws: &mut [f32]) {
    if g.is_depthwise() {
        g.debug_check();
        return depthwise::backward_weight(g, x, dy, dw);
    }
    backward_weight_into(g, x, dy, 1.0, 0.0, dw, ws);
}

/// `dst ← alpha·dw + beta·dst` for a conv that is not depthwise: the weight gradient stored
/// by its product straight into an optimizer's buffer (`optim::Sgd::step_fused`), never held
/// on its own. With `beta == 0`, `dst`'s old content is ignored.
#[allow(clippy::too_many_arguments)]
pub fn backward_weight_into(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    alpha: f32,
    beta: f32,
    dw: &mut [f32],
    ws: &mut [f32],
) {
    g.debug_check();
    debug_assert!(!g.is_depthwise());
    debug_assert_eq!(x.len(), g.input_len());
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(dw.len(), g.weight_len());
    debug_assert!(ws.len() >= workspace_len(g));
    let (hw, p) = (g.h * g.w, g.out_h() * g.out_w());
    if g.is_pointwise() && p == 1 {
        return single_pixel_backward_weight(g, x, dy, alpha, beta, dw);
    }
    if g.is_batched_pointwise() {
        return rows_backward_weight(g, x, dy, alpha, beta, dw, ws);
    }
    let (cig, cog, rows) = (g.cin_per_group(), g.cout_per_group(), g.col_rows());
    if g.is_pointwise() {
        // dy·xᵀ summed over the batch as one product whose depth runs over every image's
        // pixels: per image, C (the whole weight gradient) would be read and written again.
        for gi in 0..g.groups {
            let images = Segments {
                count: g.n,
                a_step: g.c_out * p,
                b_step: g.c_in * hw,
            };
            sgemm_sum(
                cog,
                cig,
                p,
                images,
                alpha,
                &dy[gi * cog * p..],
                (p, 1),
                &x[gi * cig * hw..],
                (1, p),
                beta,
                &mut dw[gi * cog * cig..][..cog * cig],
                (cig, 1),
                Epilogue::NONE,
            );
        }
        return;
    }
    if beta == 0.0 {
        dw.fill(0.0);
    } else {
        dw.iter_mut().for_each(|v| *v *= beta);
    }
    for b in 0..g.n {
        for gi in 0..g.groups {
            let xg = &x[(b * g.c_in + gi * cig) * hw..][..cig * hw];
            let dyg = &dy[(b * g.c_out + gi * cog) * p..][..cog * p];
            let dwg = &mut dw[gi * cog * rows..][..cog * rows];
            // dy·colᵀ: the column matrix read transposed.
            let col = &mut ws[..rows * p];
            im2col(g, xg, col);
            sgemm(
                cog,
                rows,
                p,
                alpha,
                dyg,
                (p, 1),
                col,
                (1, p),
                1.0,
                dwg,
                (rows, 1),
            );
        }
    }
}

// ONNX ConvTranspose is the input gradient of a conv: `g` below is that conv, whose input is
// the transposed conv's output `y` and whose output is its input `x` (the weight, (C_in,
// C_out/groups, kh, kw) in ConvTranspose's terms, is the conv's own (c_out, c_in/groups, kh,
// kw)). Its three products are then the conv's own, with the roles exchanged: no im2col of
// its own.

/// ONNX ConvTranspose: `y = backward_data(g, w, x) + bias` (bias per channel of `y`, which
/// is `g`'s input). Scratch: [`workspace_len`].
pub fn transpose_forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) {
    debug_assert!(bias.is_none_or(|b| b.len() == g.c_in));
    backward_data(g, w, x, y, ws);
    if let Some(bias) = bias {
        let p = g.h * g.w;
        for (i, plane) in y.chunks_exact_mut(p.max(1)).enumerate() {
            let b = bias[i % g.c_in];
            plane.iter_mut().for_each(|v| *v += b);
        }
    }
}

/// dx of [`transpose_forward`]: the conv of dy by the weight. Scratch:
/// [`forward_workspace_len`].
pub fn transpose_backward_data(
    g: &Conv2dGeom,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    ws: &mut [f32],
) {
    forward(g, dy, w, None, dx, ws);
}

/// dw of [`transpose_forward`]: the conv's weight gradient with dy as its input and x as
/// its output gradient. Scratch: [`workspace_len`].
pub fn transpose_backward_weight(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    ws: &mut [f32],
) {
    backward_weight(g, dy, x, dw, ws);
}

// A 1×1 conv over images of a few pixels: per image, a product a few columns wide, whose
// packing costs more than its arithmetic. With the batch laid out as one row per channel
// ([c, n·p] instead of [n, c, p], in the workspace) it is one wide product; the two copies
// move (c_in + c_out)·n·p values against c_in·c_out·n·p multiply-adds.

/// Up to this many pixels per image a 1×1 conv takes the batched path.
const BATCHED_PIXELS: usize = 16;

/// `[n, c, p]` planes to `[c, n·p]` rows.
fn planes_to_rows(src: &[f32], n: usize, c: usize, p: usize, dst: &mut [f32]) {
    swap_blocks(src, n, c, p, dst);
}

/// `[c, n·p]` rows back to `[n, c, p]` planes.
fn rows_to_planes(src: &[f32], n: usize, c: usize, p: usize, dst: &mut [f32]) {
    swap_blocks(src, c, n, p, dst);
}

/// `src` as `[a, b, p]` into `dst` as `[b, a, p]`. A 2×2 or 4×4 plane is a few floats: moved
/// as fixed-size arrays, not by a `memcpy` call each (those calls took a third of a 2×2
/// 1×1 conv's time at batch 8).
fn swap_blocks(src: &[f32], a: usize, b: usize, p: usize, dst: &mut [f32]) {
    match p {
        2 => swap_fixed::<2>(src, a, b, dst),
        4 => swap_fixed::<4>(src, a, b, dst),
        8 => swap_fixed::<8>(src, a, b, dst),
        16 => swap_fixed::<16>(src, a, b, dst),
        _ => {
            for (i, row) in src.chunks_exact(b * p).take(a).enumerate() {
                for (j, block) in row.chunks_exact(p).enumerate() {
                    dst[(j * a + i) * p..][..p].copy_from_slice(block);
                }
            }
        }
    }
}

fn swap_fixed<const P: usize>(src: &[f32], a: usize, b: usize, dst: &mut [f32]) {
    let (src, dst) = (src.as_chunks::<P>().0, dst.as_chunks_mut::<P>().0);
    for (i, row) in src.chunks_exact(b).take(a).enumerate() {
        for (j, block) in row.iter().enumerate() {
            dst[j * a + i] = *block;
        }
    }
}

/// The batched 1×1 conv's product, the bias and the clip in its store.
#[allow(clippy::too_many_arguments)]
fn rows_forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
    ws: &mut [f32],
) {
    let np = g.n * g.out_h() * g.out_w();
    let (xr, rest) = ws.split_at_mut(g.c_in * np);
    let yr = &mut rest[..g.c_out * np];
    planes_to_rows(x, g.n, g.c_in, np / g.n, xr);
    sgemm_with(
        g.c_out,
        np,
        g.c_in,
        1.0,
        w,
        (g.c_in, 1),
        xr,
        (np, 1),
        0.0,
        yr,
        (np, 1),
        Epilogue::rows(bias, clip),
    );
    rows_to_planes(yr, g.n, g.c_out, np / g.n, y);
}

fn rows_backward_data(g: &Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32], ws: &mut [f32]) {
    let np = g.n * g.out_h() * g.out_w();
    let (dxr, rest) = ws.split_at_mut(g.c_in * np);
    let dyr = &mut rest[..g.c_out * np];
    planes_to_rows(dy, g.n, g.c_out, np / g.n, dyr);
    sgemm(
        g.c_in,
        np,
        g.c_out,
        1.0,
        w,
        (1, g.c_in),
        dyr,
        (np, 1),
        0.0,
        dxr,
        (np, 1),
    );
    rows_to_planes(dxr, g.n, g.c_in, np / g.n, dx);
}

fn rows_backward_weight(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    alpha: f32,
    beta: f32,
    dw: &mut [f32],
    ws: &mut [f32],
) {
    let np = g.n * g.out_h() * g.out_w();
    let (xr, rest) = ws.split_at_mut(g.c_in * np);
    let dyr = &mut rest[..g.c_out * np];
    planes_to_rows(x, g.n, g.c_in, np / g.n, xr);
    planes_to_rows(dy, g.n, g.c_out, np / g.n, dyr);
    sgemm(
        g.c_out,
        g.c_in,
        np,
        alpha,
        dyr,
        (np, 1),
        xr,
        (1, np),
        beta,
        dw,
        (g.c_in, 1),
    );
}

// A 1×1 conv over 1×1 images (the last blocks of a net at a small input size) is a plain
// matrix product over the whole batch: image n's channels are column n, at stride C. One
// product per group instead of one tiny product per image, whose packing would dominate.

fn single_pixel_forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
) {
    let (cig, cog) = (g.cin_per_group(), g.cout_per_group());
    for gi in 0..g.groups {
        let (xg, wg) = (&x[gi * cig..], &w[gi * cog * cig..][..cog * cig]);
        let yg = &mut y[gi * cog..];
        sgemm_with(
            cog,
            g.n,
            cig,
            1.0,
            wg,
            (cig, 1),
            xg,
            (1, g.c_in),
            0.0,
            yg,
            (1, g.c_out),
            Epilogue::rows(bias.map(|b| &b[gi * cog..][..cog]), clip),
        );
    }
}

fn single_pixel_backward_data(g: &Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (cig, cog) = (g.cin_per_group(), g.cout_per_group());
    for gi in 0..g.groups {
        let (dyg, wg) = (&dy[gi * cog..], &w[gi * cog * cig..][..cog * cig]);
        let dxg = &mut dx[gi * cig..];
        sgemm(
            cig,
            g.n,
            cog,
            1.0,
            wg,
            (1, cig),
            dyg,
            (1, g.c_out),
            0.0,
            dxg,
            (1, g.c_in),
        );
    }
}

fn single_pixel_backward_weight(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    alpha: f32,
    beta: f32,
    dw: &mut [f32],
) {
    let (cig, cog) = (g.cin_per_group(), g.cout_per_group());
    for gi in 0..g.groups {
        let (xg, dyg) = (&x[gi * cig..], &dy[gi * cog..]);
        let dwg = &mut dw[gi * cog * cig..][..cog * cig];
        sgemm(
            cog,
            cig,
            g.n,
            alpha,
            dyg,
            (1, g.c_out),
            xg,
            (g.c_in, 1),
            beta,
            dwg,
            (cig, 1),
        );
    }
}

/// d bias: dy summed over batch and space.
pub fn backward_bias(g: &Conv2dGeom, dy: &[f32], db: &mut [f32]) {
    debug_assert_eq!(dy.len(), g.output_len());
    debug_assert_eq!(db.len(), g.c_out);
    db.fill(0.0);
    let p = g.out_h() * g.out_w();
    if p == 0 {
        return;
    }
    for (i, plane) in dy.chunks_exact(p).enumerate() {
        db[i % g.c_out] += super::sum8(p, |i| plane[i]);
    }
}

/// The im2col matrix of one image's group: row (c, ky, kx), column (oy, ox), zeros where
/// the tap falls in the padding. Each input row is padded and split into its stride phases
/// once, so that every row of the matrix is made of contiguous copies (gathering stride-2
/// taps one by one cost as much as the product of the first conv of a network).
pub(super) fn im2col(g: &Conv2dGeom, x: &[f32], col: &mut [f32]) {
    let span = g.dilation[0] * (g.kh - 1) + 1;
    let Some(split) = RowSplit::new(g).filter(|&s| RowCache::fits(s, 1, span)) else {
        return im2col_gathered(g, x, col);
    };
    let (oh, ow, kw) = (g.out_h(), g.out_w(), g.kw);
    let p = oh * ow;
    let mut cache = RowCache::new(split, 1, span);
    let channels = x.chunks_exact(g.h * g.w);
    for (xc, taps) in channels.zip(col.chunks_exact_mut(g.kh * kw * p)) {
        cache.clear();
        for oy in 0..oh {
            for (ky, rows) in taps.chunks_exact_mut(kw * p).enumerate() {
                let iy = (oy * g.stride[0]) as isize + tap_offset(ky, g.dilation[0], g.pad[0]);
                let at = cache.row(0, xc, iy);
                let src = &cache.buf()[at..];
                let dsts = rows
                    .chunks_exact_mut(p)
                    .map(|row| &mut row[oy * ow..][..ow]);
                for (kx, dst) in dsts.enumerate() {
                    dst.copy_from_slice(&src[split.tap_start(kx)..][..ow]);
                }
            }
        }
    }
}

/// [`im2col`] for rows too wide, or windows too tall, to split on the stack: taps gathered
/// one by one.
fn im2col_gathered(g: &Conv2dGeom, x: &[f32], col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let ([sh, sw], [dh, dw]) = (g.stride, g.dilation);
    let mut rows = col.chunks_exact_mut(oh * ow);
    for xc in x.chunks_exact(g.h * g.w) {
        for ky in 0..g.kh {
            let offy = tap_offset(ky, dh, g.pad[0]);
            let ys = valid_range(oh, g.h, sh, offy);
            for kx in 0..g.kw {
                let offx = tap_offset(kx, dw, g.pad[1]);
                let xs = valid_range(ow, g.w, sw, offx);
                let row = rows.next().expect("im2col: col matches the geometry");
                row[..ys.start * ow].fill(0.0);
                row[ys.end * ow..].fill(0.0);
                for oy in ys.clone() {
                    let iy = (oy * sh) as isize + offy;
                    let src = &xc[iy as usize * g.w..][..g.w];
                    let dst = &mut row[oy * ow..][..ow];
                    dst[..xs.start].fill(0.0);
                    dst[xs.end..].fill(0.0);
                    if !xs.is_empty() {
                        let ix0 = ((xs.start * sw) as isize + offx) as usize;
                        gather(&mut dst[xs.clone()], src, ix0, sw);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: each column entry added back to the input pixel it came from.
fn col2im(g: &Conv2dGeom, col: &[f32], dx: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let ([sh, sw], [dh, dw]) = (g.stride, g.dilation);
    dx.fill(0.0);
    let mut rows = col.chunks_exact(oh * ow);
    for dxc in dx.chunks_exact_mut(g.h * g.w) {
        for ky in 0..g.kh {
            let offy = tap_offset(ky, dh, g.pad[0]);
            let ys = valid_range(oh, g.h, sh, offy);
            for kx in 0..g.kw {
                let offx = tap_offset(kx, dw, g.pad[1]);
                let xs = valid_range(ow, g.w, sw, offx);
                let row = rows.next().expect("col2im: col matches the geometry");
                if xs.is_empty() {
                    continue;
                }
                let ix0 = ((xs.start * sw) as isize + offx) as usize;
                for oy in ys.clone() {
                    let iy = (oy * sh) as isize + offy;
                    let dst = &mut dxc[iy as usize * g.w..][..g.w];
                    scatter_axpy(dst, ix0, sw, 1.0, &row[oy * ow..][xs.clone()]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rows::ROW_MAX;
    use crate::kernels::testutil::{Lcg, assert_close, check_grad, weighted_sum};

    /// Direct convolution, every index spelled out.
    fn reference(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let (cig, cog) = (g.cin_per_group(), g.cout_per_group());
        let mut y = vec![0.0; g.output_len()];
        for b in 0..g.n {
            for oc in 0..g.c_out {
                let group = oc / cog;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias.map_or(0.0, |bias| bias[oc] as f64);
                        for c in 0..cig {
                            let ic = group * cig + c;
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                        - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                        - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * g.c_in + ic) * g.h + iy as usize) * g.w
                                        + ix as usize];
                                    let wv = w[((oc * cig + c) * g.kh + ky) * g.kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((b * g.c_out + oc) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: [usize; 2],
        stride: usize,
        pad: [usize; 4],
        dilation: usize,
        groups: usize,
    ) -> Conv2dGeom {
        Conv2dGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k[0],
            kw: k[1],
            stride: [stride, stride],
            pad,
            dilation: [dilation, dilation],
            groups,
        }
    }

    fn cases() -> Vec<Conv2dGeom> {
        vec![
            geom(2, 3, 7, 6, 4, [3, 3], 1, [1, 1, 1, 1], 1, 1),
            geom(2, 3, 9, 8, 5, [3, 2], 2, [0, 1, 2, 1], 1, 1),
            geom(1, 2, 9, 9, 3, [3, 3], 1, [2, 2, 2, 2], 2, 1),
            geom(2, 4, 6, 7, 6, [3, 3], 2, [1, 0, 1, 2], 1, 2),
            geom(1, 6, 5, 5, 3, [2, 2], 1, [0, 0, 1, 1], 2, 3),
            geom(2, 4, 8, 7, 4, [3, 3], 2, [1, 1, 0, 2], 1, 4),
            geom(2, 3, 7, 9, 6, [3, 3], 1, [2, 1, 2, 1], 2, 3),
            geom(2, 4, 5, 3, 4, [1, 1], 1, [0; 4], 1, 1),
            geom(1, 4, 5, 3, 6, [1, 1], 1, [0; 4], 1, 2),
            geom(2, 3, 7, 5, 2, [1, 1], 2, [0; 4], 1, 1),
            geom(1, 2, 5, 6, 3, [5, 5], 1, [2, 1, 1, 2], 1, 1),
            // a network's first conv (few input channels, stride 2), odd and even widths;
            // im2col's split rows with every stride phase, padding and dilation
            geom(2, 3, 11, 13, 5, [3, 3], 2, [1, 1, 1, 1], 1, 1),
            geom(1, 1, 9, 10, 3, [3, 3], 2, [1, 1, 1, 1], 1, 1),
            geom(1, 4, 8, 9, 4, [3, 3], 2, [0, 1, 2, 0], 1, 1),
            geom(1, 3, 10, 11, 2, [3, 4], 3, [1, 2, 1, 0], 1, 1),
            geom(1, 2, 11, 12, 3, [3, 3], 2, [2, 3, 2, 1], 2, 1),
            geom(1, 2, 6, 7, 2, [2, 2], 1, [0, 0, 0, 0], 3, 1),
            // the direct path over rows of several tiles, and im2col's forward at stride 2
            geom(1, 3, 5, 40, 6, [3, 3], 1, [1, 1, 1, 1], 1, 1),
            geom(2, 3, 6, 37, 9, [3, 3], 2, [1, 1, 1, 1], 1, 1),
            geom(1, 5, 9, 8, 3, [3, 3], 2, [1, 1, 1, 1], 1, 1),
            // 1×1 over planes of 2, 4, 8 and 16 pixels: the batch as one product on rows
            // moved in fixed-size blocks
            geom(3, 2, 1, 2, 3, [1, 1], 1, [0; 4], 1, 1),
            geom(3, 5, 2, 2, 7, [1, 1], 1, [0; 4], 1, 1),
            geom(2, 4, 2, 4, 3, [1, 1], 1, [0; 4], 1, 1),
            geom(2, 3, 4, 4, 5, [1, 1], 1, [0; 4], 1, 1),
            // 1×1 images: the whole-batch product path
            geom(3, 6, 1, 1, 4, [1, 1], 1, [0; 4], 1, 1),
            geom(3, 6, 1, 1, 4, [1, 1], 1, [0; 4], 1, 2),
            // depthwise, 22 planes: three groups of eight lanes, the last one short
            geom(2, 11, 5, 4, 11, [3, 3], 1, [1, 0, 1, 1], 1, 11),
            // depthwise, channels in groups of eight moved in and out of the lanes by
            // transposes: 2×2 planes (a 4×4 transpose only), 3×4 at stride 2 (8 + 4), 5×5 (8
            // + 8 + 8 + 1), and 16×16 at stride 2 (which the row layout would take at
            // stride 1)
            geom(2, 16, 2, 2, 16, [3, 3], 1, [1, 1, 1, 1], 1, 16),
            geom(3, 8, 3, 4, 8, [3, 3], 2, [1, 1, 1, 1], 1, 8),
            geom(1, 24, 5, 5, 24, [3, 3], 1, [1, 1, 1, 1], 1, 24),
            geom(2, 8, 16, 16, 8, [3, 3], 2, [1, 1, 1, 1], 1, 8),
            // depthwise on 1×1 planes: the centre tap, a corner tap (channel multiplier 2)
            geom(3, 4, 1, 1, 4, [3, 3], 1, [1, 1, 1, 1], 1, 4),
            geom(2, 3, 1, 1, 6, [3, 3], 1, [0, 2, 2, 0], 1, 3),
            // ... over more channels than one block of the 1×1 passes
            geom(2, 70, 1, 1, 70, [3, 3], 1, [1, 1, 1, 1], 1, 70),
            geom(2, 35, 1, 1, 70, [3, 3], 1, [0, 2, 2, 0], 1, 35),
            // depthwise with planes too big for the lane path: the row loops (stride 2 with a
            // channel multiplier; stride 1 dilated; stride 3); a kernel with too many taps
            // for them, its taps gathered
            geom(1, 2, 36, 33, 4, [3, 3], 2, [1, 1, 0, 1], 1, 2),
            geom(2, 2, 34, 35, 2, [3, 3], 1, [2, 2, 1, 2], 2, 2),
            geom(1, 2, 40, 33, 2, [3, 2], 3, [1, 1, 1, 1], 1, 2),
            geom(1, 2, 32, 33, 2, [5, 13], 2, [2, 6, 2, 6], 1, 2),
            // 1×1 over images too big for the batched path: one product per image (the
            // weight gradient one product over the batch's pixels), also grouped
            geom(2, 3, 6, 5, 4, [1, 1], 1, [0; 4], 1, 1),
            geom(3, 4, 5, 4, 6, [1, 1], 1, [0; 4], 1, 2),
            // 1×1 over 7×7 images: the batch's pixels as one product
            geom(3, 3, 7, 7, 5, [1, 1], 1, [0; 4], 1, 1),
        ]
    }

    #[test]
    fn rows_too_wide_to_split_are_gathered() {
        let mut rng = Lcg::new(12);
        let g = geom(1, 2, 3, ROW_MAX, 3, [3, 3], 2, [1, 1, 1, 1], 1, 1);
        assert!(RowSplit::new(&g).is_none());
        let (x, w) = (rng.vec(g.input_len()), rng.vec(g.weight_len()));
        let mut ws = vec![f32::NAN; workspace_len(&g)];
        let mut y = vec![f32::NAN; g.output_len()];
        forward(&g, &x, &w, None, &mut y, &mut ws);
        assert_close("wide rows", &y, &reference(&g, &x, &w, None), 1e-5);
    }

    /// Depthwise planes too large for one buffer go row by row (the cases' planes are laid
    /// out whole): stride 1, and stride 2 with a channel multiplier; plain and clipped.
    #[test]
    fn large_depthwise_planes_match_reference() {
        let mut rng = Lcg::new(14);
        for g in [
            geom(1, 2, 130, 131, 2, [3, 3], 1, [1, 1, 1, 1], 1, 2),
            geom(1, 2, 150, 140, 4, [3, 3], 2, [1, 1, 0, 1], 1, 2),
        ] {
            let (x, w) = (rng.vec(g.input_len()), rng.vec(g.weight_len()));
            let bias = rng.vec(g.c_out);
            let want = reference(&g, &x, &w, Some(&bias));
            let mut y = vec![f32::NAN; g.output_len()];
            forward(&g, &x, &w, Some(&bias), &mut y, &mut []);
            assert_close(&format!("{g:?}"), &y, &want, 1e-5);
            forward_clipped(&g, &x, &w, Some(&bias), (-0.5, 0.75), &mut y, &mut []);
            let clipped: Vec<f64> = want.iter().map(|v| v.clamp(-0.5, 0.75)).collect();
            assert_close(&format!("clipped {g:?}"), &y, &clipped, 1e-5);
        }
    }

    #[test]
    fn paths_are_chosen_as_documented() {
        let cs = cases();
        assert!(cs[5].is_depthwise() && cs[6].is_depthwise() && !cs[3].is_depthwise());
        assert!(cs[7].is_pointwise() && cs[8].is_pointwise() && !cs[9].is_pointwise());
        // a few pixels per image: the batched path, with its rows in the workspace
        assert_eq!(workspace_len(&cs[7]), (4 + 4) * 2 * 15);
        assert_eq!(workspace_len(&cs[8]), 0);
        assert_eq!(workspace_len(cs.last().unwrap()), 0);
        assert_eq!(workspace_len(&cs[0]), 3 * 9 * 7 * 6);
    }

    #[test]
    fn forward_matches_direct_convolution() {
        forward_matches_reference();
    }

    #[test]
    fn portable_forward_matches_direct_convolution() {
        crate::kernels::simd::PORTABLE.set(true);
        forward_matches_reference();
    }

    fn forward_matches_reference() {
        let mut rng = Lcg::new(10);
        for g in cases() {
            let x = rng.vec(g.input_len());
            let w = rng.vec(g.weight_len());
            let bias = rng.vec(g.c_out);
            let mut ws = vec![f32::NAN; workspace_len(&g)];
            for bias in [None, Some(&bias[..])] {
                let mut y = vec![f32::NAN; g.output_len()];
                forward(&g, &x, &w, bias, &mut y, &mut ws);
                assert_close(&format!("{g:?}"), &y, &reference(&g, &x, &w, bias), 1e-5);
            }
        }
    }

    #[test]
    fn clipped_forward_is_the_forward_clipped() {
        let mut rng = Lcg::new(13);
        // and outputs large enough for the clip image by image: 1×1, 3×3 through im2col
        let large = [
            geom(2, 4, 64, 64, 16, [1, 1], 1, [0; 4], 1, 1),
            geom(1, 5, 70, 70, 16, [3, 3], 1, [1; 4], 1, 1),
        ];
        for g in cases().into_iter().chain(large) {
            let x = rng.vec(g.input_len());
            let w = rng.vec(g.weight_len());
            let bias = rng.vec(g.c_out);
            let mut ws = vec![f32::NAN; workspace_len(&g)];
            for bias in [None, Some(&bias[..])] {
                let want: Vec<f64> = reference(&g, &x, &w, bias)
                    .iter()
                    .map(|v| v.clamp(-0.5, 0.75))
                    .collect();
                let mut y = vec![f32::NAN; g.output_len()];
                forward_clipped(&g, &x, &w, bias, (-0.5, 0.75), &mut y, &mut ws);
                assert_close(&format!("{g:?}"), &y, &want, 1e-5);
            }
        }
    }

    /// A NaN in the input stays NaN through the fused clip on every path (as PyTorch's
    /// clamp), where the reference's output is NaN and nowhere else.
    #[test]
    fn a_nan_input_stays_nan_through_the_clip() {
        let mut rng = Lcg::new(14);
        let large = geom(1, 5, 70, 70, 16, [3, 3], 1, [1; 4], 1, 1);
        let mut reached = 0;
        for g in cases().into_iter().chain([large]) {
            let mut x = rng.vec(g.input_len());
            let mid = x.len() / 2;
            x[mid] = f32::NAN;
            let w = rng.vec(g.weight_len());
            let mut ws = vec![0.0; workspace_len(&g)];
            let want = reference(&g, &x, &w, None);
            let mut y = vec![0.0; g.output_len()];
            forward_clipped(&g, &x, &w, None, (-0.5, 0.75), &mut y, &mut ws);
            for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                assert_eq!(got.is_nan(), want.is_nan(), "{g:?}: output {i}");
            }
            reached += y.iter().any(|v| v.is_nan()) as usize;
        }
        // (a strided or dilated conv may skip the NaN's position)
        assert!(
            reached > cases().len() / 2,
            "the NaN reached {reached} outputs"
        );
    }

    /// 1×1 convs with work enough to split the batch across threads (too large for finite
    /// differences), per image and as one product: the forward against the reference, the input gradient by the adjoint
    /// identity ⟨conv(x), r⟩ = ⟨x, backward_data(r)⟩.
    #[test]
    fn batch_split_pointwise_matches_reference() {
        let mut rng = Lcg::new(12);
        // per-image products (also grouped); the batch's pixels as one product (7×7)
        for (n, c_in, hw, groups) in [(4, 96, 16, 1), (4, 96, 16, 2), (8, 160, 7, 1)] {
            let g = geom(n, c_in, hw, hw, 64, [1, 1], 1, [0; 4], 1, groups);
            assert!(threads::parts_for(g.output_len() * g.col_rows()) == threads::threads());
            let (x, w, r) = (
                rng.vec(g.input_len()),
                rng.vec(g.weight_len()),
                rng.vec(g.output_len()),
            );
            let (mut y, mut dx) = (
                vec![f32::NAN; g.output_len()],
                vec![f32::NAN; g.input_len()],
            );
            forward(&g, &x, &w, None, &mut y, &mut []);
            let want = reference(&g, &x, &w, None);
            assert_close(&format!("{g:?}"), &y, &want, 1e-5);
            backward_data(&g, &w, &r, &mut dx, &mut []);
            let lhs: f64 = want.iter().zip(&r).map(|(&a, &b)| a * b as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    /// ONNX ConvTranspose by its definition: every input pixel's taps scattered into the
    /// output, `y[oy·] += x[iy·]·w` at `oy = iy·stride + ky·dilation − pad_top`. `g` is the
    /// conv whose input gradient it is (its input the output here).
    fn transpose_reference(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let (ih, iw) = (g.out_h(), g.out_w());
        let (ci_n, co_n) = (g.c_out, g.c_in);
        let (cig, cog) = (ci_n / g.groups, co_n / g.groups);
        let mut y = vec![0.0; g.input_len()];
        for b in 0..g.n {
            for co in 0..co_n {
                let plane = &mut y[(b * co_n + co) * g.h * g.w..][..g.h * g.w];
                plane.fill(bias.map_or(0.0, |bias| bias[co] as f64));
                let group = co / cog;
                for c in 0..cig {
                    let ci = group * cig + c;
                    for iy in 0..ih {
                        for ix in 0..iw {
                            let xv = x[((b * ci_n + ci) * ih + iy) * iw + ix] as f64;
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let oy = (iy * g.stride[0] + ky * g.dilation[0]) as isize
                                        - g.pad[0] as isize;
                                    let ox = (ix * g.stride[1] + kx * g.dilation[1]) as isize
                                        - g.pad[1] as isize;
                                    if oy < 0 || ox < 0 || oy >= g.h as isize || ox >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let wv = w[((ci * cog + co % cog) * g.kh + ky) * g.kw + kx];
                                    plane[oy as usize * g.w + ox as usize] += xv * wv as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    /// The transposed conv of every conv case (strides with output padding, asymmetric
    /// pads, dilation, groups, depthwise): forward against its definition, its three
    /// gradients by central differences.
    #[test]
    fn transposed_conv_matches_definition_and_finite_differences() {
        let mut rng = Lcg::new(15);
        let mut cs = cases();
        // output padding 1 at stride 2 (a decoder's ×2 upsampling: 4 → 8), and grouped
        // with dilation at stride 1
        cs.push(geom(2, 6, 8, 8, 4, [3, 3], 2, [1, 1, 1, 1], 1, 1));
        cs.push(geom(1, 4, 8, 8, 4, [3, 3], 1, [2, 2, 2, 2], 2, 2));
        for g in cs {
            let x = rng.vec(g.output_len());
            let w = rng.vec(g.weight_len());
            let bias = rng.vec(g.c_in);
            let r = rng.vec(g.input_len());
            let mut ws = vec![f32::NAN; workspace_len(&g)];
            let name = format!("{g:?}");
            let mut y = vec![f32::NAN; g.input_len()];
            transpose_forward(&g, &x, &w, Some(&bias), &mut y, &mut ws);
            let want = transpose_reference(&g, &x, &w, Some(&bias));
            assert_close(&format!("transposed {name}"), &y, &want, 1e-5);

            let mut dx = vec![f32::NAN; g.output_len()];
            let mut dw = vec![f32::NAN; g.weight_len()];
            transpose_backward_data(&g, &w, &r, &mut dx, &mut ws);
            transpose_backward_weight(&g, &x, &r, &mut dw, &mut ws);
            check_grad(&format!("transposed dx {name}"), &x, &dx, |xp| {
                transpose_forward(&g, xp, &w, Some(&bias), &mut y, &mut ws);
                weighted_sum(&y, &r)
            });
            check_grad(&format!("transposed dw {name}"), &w, &dw, |wp| {
                transpose_forward(&g, &x, wp, Some(&bias), &mut y, &mut ws);
                weighted_sum(&y, &r)
            });
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Lcg::new(11);
        for g in cases() {
            let x = rng.vec(g.input_len());
            let w = rng.vec(g.weight_len());
            let bias = rng.vec(g.c_out);
            let r = rng.vec(g.output_len());
            let mut ws = vec![f32::NAN; workspace_len(&g)];
            let mut y = vec![0.0; g.output_len()];

            let mut dx = vec![f32::NAN; g.input_len()];
            let mut dw = vec![f32::NAN; g.weight_len()];
            let mut db = vec![f32::NAN; g.c_out];
            backward_data(&g, &w, &r, &mut dx, &mut ws);
            backward_weight(&g, &x, &r, &mut dw, &mut ws);
            backward_bias(&g, &r, &mut db);

            let name = format!("{g:?}");
            check_grad(&format!("dx {name}"), &x, &dx, |xp| {
                forward(&g, xp, &w, Some(&bias), &mut y, &mut ws);
                weighted_sum(&y, &r)
            });
            check_grad(&format!("dw {name}"), &w, &dw, |wp| {
                forward(&g, &x, wp, Some(&bias), &mut y, &mut ws);
                weighted_sum(&y, &r)
            });
            // The bias gradient is a plain sum of r, checked exactly: a finite difference
            // over the whole output resolves it only to ~1e-3.
            let p = g.out_h() * g.out_w();
            let exact: Vec<f64> = (0..g.c_out)
                .map(|c| {
                    let planes = (0..g.n).map(|b| &r[(b * g.c_out + c) * p..][..p]);
                    planes.flatten().map(|&v| f64::from(v)).sum()
                })
                .collect();
            assert_close(&format!("db {name}"), &db, &exact, 1e-5);
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use crate::kernels::testutil::Lcg;

    /// Milliseconds per call of the frozen prefix's slowest convs (MobileNetV2 at 224² and
    /// 32²), on one and two threads. Run with `cargo test -p actc-runtime --release --lib
    /// conv::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run in release with --ignored --nocapture"]
    fn bench() {
        use std::time::{Duration, Instant};
        let conv = |n, c_in, hw, c_out, k, s, groups| {
            crate::kernels::testutil::square_conv(n, c_in, hw, hw, c_out, k, s, groups)
        };
        let shapes = [
            ("first conv 224", conv(1, 3, 224, 32, 3, 2, 1)),
            ("expand 16>96 112", conv(1, 16, 112, 96, 1, 1, 1)),
            ("dw s2 96 112", conv(1, 96, 112, 96, 3, 2, 96)),
            ("dw s1 144 56", conv(1, 144, 56, 144, 3, 1, 144)),
            ("dw s2 144 56", conv(1, 144, 56, 144, 3, 2, 144)),
            ("dw s1 32 112", conv(1, 32, 112, 32, 3, 1, 32)),
            ("first conv 32", conv(16, 3, 32, 32, 3, 2, 1)),
            ("dw s2 96 16", conv(16, 96, 16, 96, 3, 2, 96)),
            ("dw s1 192 28 x8", conv(8, 192, 28, 192, 3, 1, 192)),
            ("dw s2 192 28 x8", conv(8, 192, 28, 192, 3, 2, 192)),
            ("dw s1 32 16 x64", conv(64, 32, 16, 32, 3, 1, 32)),
            ("dw s2 96 16 x64", conv(64, 96, 16, 96, 3, 2, 96)),
            ("dw s1 144 8 x64", conv(64, 144, 8, 144, 3, 1, 144)),
            ("dw s1 384 14 x8", conv(8, 384, 14, 384, 3, 1, 384)),
            ("expand 32>192 28 x8", conv(8, 32, 28, 192, 1, 1, 1)),
            ("project 192>32 28 x8", conv(8, 192, 28, 32, 1, 1, 1)),
            ("expand 64>384 14 x8", conv(8, 64, 14, 384, 1, 1, 1)),
            ("expand 96>576 14 x8", conv(8, 96, 14, 576, 1, 1, 1)),
            ("expand 160>960 7 x8", conv(8, 160, 7, 960, 1, 1, 1)),
            ("1x1 320>1280 7 x8", conv(8, 320, 7, 1280, 1, 1, 1)),
            ("project 960>320 7 x8", conv(8, 960, 7, 320, 1, 1, 1)),
            ("project 384>64 14 x8", conv(8, 384, 14, 64, 1, 1, 1)),
            ("dw s2 144 8 x64", conv(64, 144, 8, 144, 3, 2, 144)),
            ("dw s1 192 4 x64", conv(64, 192, 4, 192, 3, 1, 192)),
            ("dw s1 384 2 x64", conv(64, 384, 2, 384, 3, 1, 384)),
            ("dw s1 960 1 x64", conv(64, 960, 1, 960, 3, 1, 960)),
            ("1x1 320>1280 1 x64", conv(64, 320, 1, 1280, 1, 1, 1)),
            ("dw s1 192 4 x8", conv(8, 192, 4, 192, 3, 1, 192)),
            ("dw s1 576 2 x8", conv(8, 576, 2, 576, 3, 1, 576)),
            ("dw s2 576 2 x8", conv(8, 576, 2, 576, 3, 2, 576)),
            ("expand 24>144 8 x8", conv(8, 24, 8, 144, 1, 1, 1)),
            ("expand 32>192 4 x8", conv(8, 32, 4, 192, 1, 1, 1)),
            ("project 192>32 4 x8", conv(8, 192, 4, 32, 1, 1, 1)),
            ("expand 64>384 2 x8", conv(8, 64, 2, 384, 1, 1, 1)),
            ("expand 96>576 2 x8", conv(8, 96, 2, 576, 1, 1, 1)),
            ("project 576>96 2 x8", conv(8, 576, 2, 96, 1, 1, 1)),
            ("expand 160>960 1 x8", conv(8, 160, 1, 960, 1, 1, 1)),
            ("project 960>160 1 x8", conv(8, 960, 1, 160, 1, 1, 1)),
        ];
        let mut rng = Lcg::new(7);
        println!("{:<18} {:>8} {:>8}", "shape", "1 thread", "2");
        for (label, g) in shapes {
            let (x, w, b) = (
                rng.vec(g.input_len()),
                rng.vec(g.weight_len()),
                rng.vec(g.c_out),
            );
            let mut y = vec![0.0; g.output_len()];
            let mut ws = vec![0.0; workspace_len(&g)];
            let mut best = [f64::INFINITY; 2];
            for _ in 0..20 {
                for (t, best) in best.iter_mut().enumerate() {
                    crate::threads::set_threads(t + 1);
                    forward(&g, &x, &w, Some(&b), &mut y, &mut ws);
                    let (start, mut calls) = (Instant::now(), 0u32);
                    while start.elapsed() < Duration::from_millis(20) {
                        forward(&g, &x, &w, Some(&b), &mut y, &mut ws);
                        calls += 1;
                    }
                    *best = best.min(start.elapsed().as_secs_f64() * 1e3 / calls as f64);
                }
            }
            println!("{label:<18} {:>8.3} {:>8.3}", best[0], best[1]);
        }
    }
}
