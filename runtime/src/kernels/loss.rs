//! Training losses (mean over the batch, as PyTorch's defaults) and top-1 accuracy.

/// The softmax cross-entropy of `logits` (batch × classes) against integer `labels`, averaged
/// over the batch. Writes the softmax probabilities to `probs` (the backward needs them) and
/// returns the loss. Log-sum-exp is max-subtracted, so large logits do not overflow.
pub fn softmax_cross_entropy_forward(
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    probs: &mut [f32],
) -> f32 {
    let batch = labels.len();
    debug_assert_eq!(logits.len(), batch * classes);
    debug_assert_eq!(probs.len(), logits.len());
    if batch == 0 || classes == 0 {
        return 0.0;
    }
    let mut total = 0.0f64;
    for ((row, p), &label) in logits
        .chunks_exact(classes)
        .zip(probs.chunks_exact_mut(classes))
        .zip(labels)
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (p, &z) in p.iter_mut().zip(row) {
            *p = (z - max).exp();
        }
        let sum = super::blocked_sum(p.len(), |k| p[k]);
        let inv = 1.0 / sum;
        p.iter_mut().for_each(|p| *p *= inv);
        // −log softmax[label] = log Σ exp(z − max) − (z_label − max)
        // The data loader checks labels against the classes; bytes that are not labels (a
        // plan whose buffers overlap them) give a loss that is not a number, not a panic.
        let z = row.get(label as usize).map_or(f32::NAN, |z| z - max);
        total += (sum.ln() - z) as f64;
    }
    (total / batch as f64) as f32
}

/// d loss / d logits = (p − onehot(label)) / batch.
pub fn softmax_cross_entropy_backward(
    classes: usize,
    probs: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
) {
    let batch = labels.len();
    debug_assert_eq!(probs.len(), batch * classes);
    debug_assert_eq!(dlogits.len(), probs.len());
    if batch == 0 || classes == 0 {
        return;
    }
    let inv = 1.0 / batch as f32;
    for ((p, d), &label) in probs
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(labels)
    {
        d.iter_mut().zip(p).for_each(|(d, p)| *d = p * inv);
        if let Some(d) = d.get_mut(label as usize) {
            *d -= inv;
        }
    }
}

/// The squared error of `pred` against `target`, as a weighted sum of means over segments:
/// each row (one sample) holds the segments' values back to back, segment k `sizes[k]` of
/// them, and adds `weights[k]` × the mean of its squared differences over the batch
/// (several outputs trained at once). No segments: the mean over every element.
pub fn mse_forward(pred: &[f32], target: &[f32], sizes: &[u32], weights: &[f32]) -> f32 {
    debug_assert_eq!(pred.len(), target.len());
    let mut total = 0.0f64;
    for_segments(pred.len(), sizes, weights, |offset, len, rows, scale| {
        let mut sum = 0.0f64;
        for r in 0..rows {
            let at = r * (pred.len() / rows) + offset;
            for (p, t) in pred[at..at + len].iter().zip(&target[at..at + len]) {
                sum += ((p - t) as f64).powi(2);
            }
        }
        total += scale as f64 * sum / (rows * len) as f64;
    });
    total as f32
}

/// d mse / d pred = 2·weight·(pred − target) / (batch × the segment's values).
pub fn mse_backward(
    pred: &[f32],
    target: &[f32],
    sizes: &[u32],
    weights: &[f32],
    dpred: &mut [f32],
) {
    debug_assert!(pred.len() == target.len() && pred.len() == dpred.len());
    for_segments(pred.len(), sizes, weights, |offset, len, rows, weight| {
        let scale = 2.0 * weight / (rows * len) as f32;
        for r in 0..rows {
            let at = r * (pred.len() / rows) + offset;
            let (p, t) = (&pred[at..at + len], &target[at..at + len]);
            for ((d, p), t) in dpred[at..at + len].iter_mut().zip(p).zip(t) {
                *d = scale * (p - t);
            }
        }
    });
}

/// Calls `f(offset in a row, values, rows, weight)` per segment of `numel` values laid out
/// as `sizes` says (no sizes: one row, one segment of weight 1). The executor checked that
/// the sizes divide `numel` and that the weights match them.
fn for_segments(
    numel: usize,
    sizes: &[u32],
    weights: &[f32],
    mut f: impl FnMut(usize, usize, usize, f32),
) {
    if sizes.is_empty() {
        if numel > 0 {
            f(0, numel, 1, 1.0);
        }
        return;
    }
    let row: usize = sizes.iter().map(|&s| s as usize).sum();
    let rows = numel / row.max(1);
    let mut offset = 0;
    for (&len, &w) in sizes.iter().zip(weights) {
        if len > 0 && rows > 0 {
            f(offset, len as usize, rows, w);
        }
        offset += len as usize;
    }
}

/// How many rows of `logits` have their largest value (the first, on ties) at the label.
pub fn correct_count(classes: usize, logits: &[f32], labels: &[u32]) -> usize {
    debug_assert_eq!(logits.len(), labels.len() * classes);
    if classes == 0 {
        return 0;
    }
    logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, label)| {
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, v)| if *v > row[best] { i } else { best });
            arg == **label as usize
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{Lcg, check_grad};

    #[test]
    fn a_long_class_axis_keeps_its_probabilities_accurate() {
        // PP-OCRv4's recognition head has 6625 classes; summed term by term in f32 its
        // softmax normalizer drifts by hundreds of ulps.
        let mut rng = Lcg::new(81);
        let classes = 6625;
        let logits: Vec<f32> = rng.vec(classes).iter().map(|v| 2.0 * v).collect();
        let mut probs = vec![0.0; classes];
        softmax_cross_entropy_forward(classes, &logits, &[3], &mut probs);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = logits.iter().map(|&z| ((z - max) as f64).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let worst = probs
            .iter()
            .zip(&exps)
            .map(|(&p, e)| ((p as f64 - e / sum) / (e / sum)).abs())
            .fold(0.0, f64::max);
        let sequential = {
            let s: f32 = logits.iter().map(|&z| (z - max).exp()).sum();
            ((s as f64 - sum) / sum).abs()
        };
        println!("relative error: blocked {worst:.2e}, the sequential sum alone {sequential:.2e}");
        assert!(worst < 6e-7, "{worst:e}");
    }

    #[test]
    fn cross_entropy_value_and_gradient() {
        let mut rng = Lcg::new(80);
        let (batch, classes) = (5, 7);
        let logits: Vec<f32> = rng.vec(batch * classes).iter().map(|v| 4.0 * v).collect();
        let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes) as u32).collect();
        let mut probs = vec![f32::NAN; logits.len()];
        let loss = softmax_cross_entropy_forward(classes, &logits, &labels, &mut probs);
        let want: f64 = logits
            .chunks(classes)
            .zip(&labels)
            .map(|(row, &l)| {
                row.iter().map(|z| (*z as f64).exp()).sum::<f64>().ln() - row[l as usize] as f64
            })
            .sum::<f64>()
            / batch as f64;
        assert!(
            (loss as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
            "{loss} vs {want}"
        );
        for row in probs.chunks(classes) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let mut d = vec![f32::NAN; logits.len()];
        softmax_cross_entropy_backward(classes, &probs, &labels, &mut d);
        let mut scratch = vec![0.0; logits.len()];
        check_grad("ce", &logits, &d, |lp| {
            softmax_cross_entropy_forward(classes, lp, &labels, &mut scratch) as f64
        });
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() {
        let mut p = [0.0; 2];
        let loss = softmax_cross_entropy_forward(2, &[1000.0, 0.0], &[1], &mut p);
        assert_eq!((loss, p), (1000.0, [1.0, 0.0]));
    }

    #[test]
    fn mse_value_and_gradient() {
        let mut rng = Lcg::new(81);
        let (pred, target) = (rng.vec(12), rng.vec(12));
        let want = pred
            .iter()
            .zip(&target)
            .map(|(p, t)| ((p - t) as f64).powi(2))
            .sum::<f64>()
            / 12.0;
        assert!((mse_forward(&pred, &target, &[], &[]) as f64 - want).abs() < 1e-7);
        let mut d = vec![f32::NAN; 12];
        mse_backward(&pred, &target, &[], &[], &mut d);
        check_grad("mse", &pred, &d, |pp| {
            mse_forward(pp, &target, &[], &[]) as f64
        });
    }

    /// Two samples of rows [a a a | b]: 0.5 × mean over the a's + 2 × mean over the b's.
    #[test]
    fn segmented_mse_is_the_weighted_sum_of_each_segments_mean() {
        let mut rng = Lcg::new(82);
        let (pred, target) = (rng.vec(8), rng.vec(8));
        let sq = |i: usize| ((pred[i] - target[i]) as f64).powi(2);
        let a = [0, 1, 2, 4, 5, 6].map(sq).iter().sum::<f64>() / 6.0;
        let b = (sq(3) + sq(7)) / 2.0;
        let (sizes, weights) = ([3, 1], [0.5, 2.0]);
        let got = mse_forward(&pred, &target, &sizes, &weights) as f64;
        assert!((got - (0.5 * a + 2.0 * b)).abs() < 1e-6, "{got}");
        let mut d = vec![f32::NAN; 8];
        mse_backward(&pred, &target, &sizes, &weights, &mut d);
        check_grad("segmented mse", &pred, &d, |pp| {
            mse_forward(pp, &target, &sizes, &weights) as f64
        });
    }

    #[test]
    fn top1() {
        let logits = [
            0.1, 0.9, 0.0, /**/ 2.0, 1.0, 2.0, /**/ -1.0, -3.0, -2.0,
        ];
        // Row 1 ties between 0 and 2: the first wins.
        assert_eq!(correct_count(3, &logits, &[1, 0, 2]), 2);
    }
}
