use super::*;
use crate::kernels::gemm::sgemm;
use crate::kernels::simd::PORTABLE;
use crate::kernels::testutil::Lcg;

/// A (rows × k) weight and an input of `images` planes of (k × cols), both random, the
/// input's values in [lo, lo + 2).
fn case(
    rows: usize,
    k: usize,
    images: usize,
    cols: usize,
    lo: f32,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Lcg::new(seed);
    let w = rng.vec(rows * k);
    let x = rng
        .vec(images * k * cols)
        .iter()
        .map(|v| v + 1.0 + lo)
        .collect();
    (w, x)
}

fn planes(images: usize, rows: usize, cols: usize) -> Planes {
    Planes {
        images,
        cols,
        image_stride: rows * cols,
        row_stride: cols,
        col_stride: 1,
    }
}

/// `qgemm` of the case, and the float product image by image.
fn both(
    (rows, k, images, cols): (usize, usize, usize, usize),
    w: &[f32],
    x: &[f32],
    epi: Epilogue,
    parts: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (q, scale, sum) = quantize_rows(w, rows, k);
    let qw = QWeights {
        q: &q,
        scale: &scale,
        sum: &sum,
        rows,
        k,
    };
    let mut got = vec![f32::NAN; images * rows * cols];
    qgemm(
        &qw,
        x,
        planes(images, k, cols),
        &mut got,
        planes(images, rows, cols),
        epi,
        parts,
    );
    let mut want = vec![0.0; images * rows * cols];
    for b in 0..images {
        let yb = &mut want[b * rows * cols..][..rows * cols];
        sgemm(
            rows,
            cols,
            k,
            1.0,
            w,
            (k, 1),
            &x[b * k * cols..],
            (cols, 1),
            0.0,
            yb,
            (cols, 1),
        );
        for (i, row) in yb.chunks_exact_mut(cols).enumerate() {
            for v in row {
                *v += epi.bias.map_or(0.0, |b| b[i]);
                if let Some((lo, hi)) = epi.clip {
                    *v = v.clamp(lo, hi);
                }
            }
        }
    }
    (got, want)
}

/// The error an output may have: half a step of each operand's rounding, summed over the
/// depth (`Σ_k |w|·s_x/2 + |x|·t_w/2`), bounded with the largest of each.
fn bound(k: usize, w: &[f32], x: &[f32]) -> f32 {
    let wmax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let xmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let xspan = 2.0;
    k as f32 * (wmax * xspan / 255.0 / 2.0 + xmax * wmax / 127.0 / 2.0) * 1.01
}

#[test]
fn matches_the_float_product_within_the_rounding() {
    // Shapes: k a multiple of four and not, rows a multiple of MR and not, columns one
    // whole panel, ragged panels, and panels across images.
    for (i, &(rows, k, images, cols)) in [
        (8, 16, 1, 16),
        (24, 96, 1, 224),
        (13, 30, 3, 49),
        (5, 7, 4, 1),
        (17, 3, 2, 5),
        (96, 576, 2, 196),
    ]
    .iter()
    .enumerate()
    {
        let (w, x) = case(rows, k, images, cols, -1.0, i as u64);
        let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.1).collect();
        let epi = Epilogue {
            bias: Some(&bias),
            clip: None,
        };
        let (got, want) = both((rows, k, images, cols), &w, &x, epi, 2);
        let tol = bound(k, &w, &x);
        for (j, (g, f)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - f).abs() <= tol,
                "{rows}x{k} · {images}x{cols}: [{j}] {g} vs {f} (tolerance {tol})"
            );
        }
        let rel = got
            .iter()
            .zip(&want)
            .map(|(g, f)| (g - f).powi(2))
            .sum::<f32>()
            .sqrt()
            / want.iter().map(|f| f * f).sum::<f32>().sqrt();
        assert!(
            rel < 0.01,
            "{rows}x{k} · {images}x{cols}: relative error {rel}"
        );
    }
}

#[test]
fn the_portable_and_the_vnni_paths_agree() {
    for (i, &(rows, k, images, cols)) in [(13, 30, 3, 49), (9, 64, 1, 40), (3, 5, 5, 3)]
        .iter()
        .enumerate()
    {
        let (w, x) = case(rows, k, images, cols, 0.5, 10 + i as u64);
        let epi = Epilogue {
            bias: None,
            clip: Some((0.0, 6.0)),
        };
        let (fast, _) = both((rows, k, images, cols), &w, &x, epi, 1);
        PORTABLE.set(true);
        let (portable, want) = both((rows, k, images, cols), &w, &x, epi, 1);
        PORTABLE.set(false);
        // The same integers; the store's float rounding may differ (fused multiply-adds).
        for (f, p) in fast.iter().zip(&portable) {
            assert!((f - p).abs() <= 1e-5 * p.abs().max(1.0), "{f} vs {p}");
        }
        let tol = bound(k, &w, &x);
        assert!(
            portable
                .iter()
                .zip(&want)
                .all(|(g, f)| (g - f).abs() <= tol)
        );
    }
}

#[test]
fn a_constant_column_is_exact_and_a_nan_stays_in_its_column() {
    let (rows, k, cols) = (4, 12, 16);
    let (w, mut x) = case(rows, k, 1, cols, 0.0, 3);
    for r in 0..k {
        x[r * cols + 2] = 0.75;
    }
    x[5 * cols + 9] = f32::NAN;
    for portable in [false, true] {
        PORTABLE.set(portable);
        let (got, want) = both((rows, k, 1, cols), &w, &x, Epilogue::default(), 1);
        PORTABLE.set(false);
        for i in 0..rows {
            let (g, f) = (got[i * cols + 2], want[i * cols + 2]);
            assert!(
                (g - f).abs() <= 1e-5 * f.abs().max(1.0),
                "row {i}: {g} vs {f}"
            );
            assert!(got[i * cols + 9].is_nan());
            assert!(
                got[i * cols..][..cols]
                    .iter()
                    .enumerate()
                    .all(|(j, v)| j == 9 || v.is_finite())
            );
        }
    }
}

/// A row-major X (tokens × k) times a weight, as `(Wᵀ·Xᵀ)ᵀ` with both read and written
/// transposed: each token quantized over its own features, on both paths.
#[test]
fn transposed_operands_give_the_row_major_product() {
    for (i, &(tokens, k, n)) in [(37, 64, 24), (16, 13, 9), (3, 200, 40)].iter().enumerate() {
        let mut rng = Lcg::new(20 + i as u64);
        let (x, w) = (rng.vec(tokens * k), rng.vec(k * n));
        let bias = rng.vec(n);
        // Wᵀ, n rows of k: what the compiler stores for a MatMul's (k, n) weight.
        let wt: Vec<f32> = (0..n * k).map(|e| w[(e % k) * n + e / k]).collect();
        let (q, scale, sum) = quantize_rows(&wt, n, k);
        let qw = QWeights {
            q: &q,
            scale: &scale,
            sum: &sum,
            rows: n,
            k,
        };
        let mut want = vec![0.0; tokens * n];
        sgemm(
            tokens,
            n,
            k,
            1.0,
            &x,
            (k, 1),
            &w,
            (n, 1),
            0.0,
            &mut want,
            (n, 1),
        );
        want.iter_mut()
            .enumerate()
            .for_each(|(e, v)| *v += bias[e % n]);
        let tol = bound(k, &w, &x) * 1.5;
        for portable in [false, true] {
            PORTABLE.set(portable);
            let mut got = vec![f32::NAN; tokens * n];
            let epi = Epilogue {
                bias: Some(&bias),
                clip: None,
            };
            // The portable paths on this thread alone (the flag is per thread).
            let parts = if portable { 1 } else { 2 };
            let (xp, yp) = (Planes::transposed(tokens, k), Planes::transposed(tokens, n));
            qgemm(&qw, &x, xp, &mut got, yp, epi, parts);
            PORTABLE.set(false);
            for (e, (g, f)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - f).abs() <= tol,
                    "{tokens}x{k}·{k}x{n} [{e}]: {g} vs {f} (portable {portable})"
                );
            }
        }
    }
}

#[test]
fn weights_quantize_per_row_within_half_a_step() {
    let (rows, k) = (6, 33);
    let mut w = Lcg::new(7).vec(rows * k);
    w[k..2 * k].fill(0.0);
    let (q, scale, sum) = quantize_rows(&w, rows, k);
    for i in 0..rows {
        let row = &w[i * k..][..k];
        assert!((sum[i] - row.iter().sum::<f32>()).abs() < 1e-6);
        let max = q[i * k..][..k]
            .iter()
            .map(|v| v.unsigned_abs())
            .max()
            .unwrap_or(0);
        assert!(i == 1 || max == 127, "row {i} uses the whole range");
        for (v, &qv) in row.iter().zip(&q[i * k..][..k]) {
            assert!((v - qv as f32 * scale[i]).abs() <= scale[i] / 2.0 + 1e-7);
        }
    }
}

/// GFLOP/s-equivalents of qgemm against sgemm at MobileNetV2's 1×1 shapes, one thread. Run
/// with `cargo test -p actc-runtime --release --lib qgemm::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
fn bench() {
    use std::time::Instant;
    crate::threads::set_threads(1);
    for &(label, rows, k, cols) in &[
        ("expand 16>96 112x2", 96, 16, 224),
        ("project 96>24 56x4", 24, 96, 224),
        ("expand 24>144 56x4", 144, 24, 224),
        ("project 144>32 28x8", 32, 144, 224),
        ("expand 96>576 14x14", 576, 96, 196),
        ("project 576>96 14x14", 96, 576, 196),
        ("1x1 960>160 7x7 x8", 160, 960, 392),
        ("1x1 320>1280 7x7 x8", 1280, 320, 392),
    ] {
        let (w, x) = case(rows, k, 1, cols, 0.0, 1);
        let (q, scale, sum) = quantize_rows(&w, rows, k);
        let qw = QWeights {
            q: &q,
            scale: &scale,
            sum: &sum,
            rows,
            k,
        };
        let mut y = vec![0.0; rows * cols];
        let reps = (2e9 / (rows * k * cols) as f64).ceil() as usize;
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            2.0 * (rows * k * cols) as f64 / best / 1e9
        };
        let f32_rate = time(&mut || {
            sgemm(
                rows,
                cols,
                k,
                1.0,
                &w,
                (k, 1),
                &x,
                (cols, 1),
                0.0,
                &mut y,
                (cols, 1),
            )
        });
        let i8_rate = time(&mut || {
            qgemm(
                &qw,
                &x,
                Planes::single(cols, cols),
                &mut y,
                Planes::single(cols, cols),
                Epilogue::default(),
                1,
            )
        });
        println!(
            "{label:24} f32 {f32_rate:6.1}  int8 {i8_rate:6.1} GOP/s  ({:.2}x)",
            i8_rate / f32_rate
        );
    }
}
