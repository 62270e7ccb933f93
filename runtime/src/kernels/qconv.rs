//! The int8 forward of a conv of one group in a quantized frozen prefix: the conv as one
//! int8 product per image (`qgemm`), its bias and clip in the product's store.
//!
//! 1×1 stride-1 unpadded convs read the input planes where they lie, the whole batch's
//! pixels as the columns of one product, so a 7×7 map's 49 pixels do not leave a panel
//! mostly empty (over 1×1 maps the batch is a row-major matrix, read transposed); other
//! convs im2col one image at a time.

use super::conv::{Conv2dGeom, im2col};
use super::direct;
use super::qgemm::{Epilogue, Planes, QWeights, qgemm};
use crate::threads;

/// Whether a conv runs int8 in a quantized prefix: one group, and not one the float
/// `direct` kernel takes (a few input channels, a small window: MobileNet's 3×3 stem over
/// RGB), which runs faster than an im2col product would.
pub fn fits(g: &Conv2dGeom) -> bool {
    g.groups == 1 && !direct::applies(g)
}

/// Scratch, in f32s, that [`forward`] needs: one image's im2col matrix, unless 1×1.
pub fn workspace_len(g: &Conv2dGeom) -> usize {
    if g.is_pointwise() {
        0
    } else {
        g.col_rows() * g.out_h() * g.out_w()
    }
}

/// `y = clip(conv(x, w) + bias)` with `w` quantized (`c_out` rows of `c_in·kh·kw`).
pub fn forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &QWeights,
    bias: Option<&[f32]>,
    clip: Option<(f32, f32)>,
    y: &mut [f32],
    ws: &mut [f32],
) {
    debug_assert_eq!(g.groups, 1);
    debug_assert_eq!(x.len(), g.input_len());
    debug_assert_eq!((w.rows, w.k), (g.c_out, g.col_rows()));
    debug_assert_eq!(y.len(), g.output_len());
    debug_assert!(ws.len() >= workspace_len(g));
    let (hw, p) = (g.h * g.w, g.out_h() * g.out_w());
    let epi = Epilogue { bias, clip };
    // An int8 multiply-add costs about a quarter of a float one.
    let parts = |images: usize| threads::parts_for(images * g.c_out * g.col_rows() * p / 4);
    if g.is_pointwise() {
        let planes = |rows: usize, cols: usize| match cols {
            // 1×1 maps: the batch is a row-major (images, channels) matrix, read transposed.
            1 => Planes::transposed(g.n, rows),
            _ => Planes {
                images: g.n,
                cols,
                image_stride: rows * cols,
                row_stride: cols,
                col_stride: 1,
            },
        };
        qgemm(
            w,
            x,
            planes(g.c_in, hw),
            y,
            planes(g.c_out, p),
            epi,
            parts(g.n),
        );
        return;
    }
    let col = &mut ws[..g.col_rows() * p];
    for (xb, yb) in x
        .chunks_exact(g.c_in * hw)
        .zip(y.chunks_exact_mut(g.c_out * p))
    {
        im2col(g, xb, col);
        qgemm(
            w,
            col,
            Planes::single(p, p),
            yb,
            Planes::single(p, p),
            epi,
            parts(1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv;
    use crate::kernels::qgemm::quantize_rows;
    use crate::kernels::testutil::{Lcg, square_conv};

    /// The int8 conv against the float one with the same weights, relative to the output's
    /// size: 1×1 over a batch of small maps and of 1×1 maps, a padded strided 3×3, with and
    /// without clip.
    #[test]
    fn follows_the_float_conv() {
        for (n, c_in, h, c_out, k, stride, clip) in [
            (3, 24, 7, 40, 1, 1, None),
            (2, 16, 9, 12, 3, 2, Some((0.0, 6.0))),
            (1, 5, 6, 7, 3, 1, None),
            // 1×1 maps: the batch read as a transposed matrix.
            (5, 40, 1, 24, 1, 1, None),
        ] {
            let g = square_conv(n, c_in, h, h, c_out, k, stride, 1);
            let mut rng = Lcg::new(n as u64);
            let (x, w, bias) = (
                rng.vec(g.input_len()),
                rng.vec(g.weight_len()),
                rng.vec(c_out),
            );
            let mut want = vec![0.0; g.output_len()];
            let mut ws = vec![0.0; conv::forward_workspace_len(&g).max(workspace_len(&g))];
            match clip {
                Some(c) => conv::forward_clipped(&g, &x, &w, Some(&bias), c, &mut want, &mut ws),
                None => conv::forward(&g, &x, &w, Some(&bias), &mut want, &mut ws),
            }
            let (q, scale, sum) = quantize_rows(&w, c_out, g.col_rows());
            let qw = QWeights {
                q: &q,
                scale: &scale,
                sum: &sum,
                rows: c_out,
                k: g.col_rows(),
            };
            let mut got = vec![f32::NAN; g.output_len()];
            forward(&g, &x, &qw, Some(&bias), clip, &mut got, &mut ws);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt();
            let size = want.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(err < 0.01 * size, "{g:?}: error {err} of {size}");
            if let Some((lo, hi)) = clip {
                assert!(got.iter().all(|v| (lo..=hi).contains(v)));
            }
        }
    }
}
