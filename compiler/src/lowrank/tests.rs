use super::*;

/// A fixed-seed uniform stream in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// Standard normal, by Box–Muller.
    fn normal(&mut self) -> f64 {
        let (u, v) = ((self.next() + 1.0) / 2.0, (self.next() + 1.0) / 2.0);
        (-2.0 * u.max(1e-300).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn product(a: &Matrix, b: &Matrix) -> Matrix {
    Matrix::from_fn(a.rows, b.cols, |i, j| {
        (0..a.cols).map(|k| a.at(i, k) * b.at(k, j)).sum()
    })
}

#[test]
fn svd_factors_reconstruct_at_full_rank() {
    let mut g = Lcg(1);
    let w = Matrix::from_fn(7, 12, |_, _| g.next());
    let d = svd(&w).unwrap();
    assert!(d.s.windows(2).all(|p| p[0] >= p[1]));
    let (a, b) = split(&d, 7);
    let back = product(&a, &b);
    let worst = w
        .data
        .iter()
        .zip(&back.data)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst < 1e-12, "{worst}");
    // Truncated: the error is the dropped singular values' share.
    let (a, b) = split(&d, 3);
    let back = product(&a, &b);
    let diff: f64 = w
        .data
        .iter()
        .zip(&back.data)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let norm: f64 = w.data.iter().map(|x| x * x).sum();
    assert!(((diff / norm).sqrt() - truncation_error(&d.s, 3)).abs() < 1e-12);
}

#[test]
fn ranks_follow_the_rule() {
    let s = [4.0, 2.0, 1.0, 1.0];
    // Squares 16, 4, 1, 1 of 22.
    assert_eq!(energy_rank(&s, 0.5), 1);
    assert_eq!(energy_rank(&s, 0.9), 2);
    assert_eq!(energy_rank(&s, 0.95), 3);
    assert_eq!(energy_rank(&s, 1.0), 4);
    // 100 × 50 at half the parameters: r·150 ≤ 2500.
    let many = vec![1.0; 50];
    assert_eq!(mode_rank(Rule::Ratio(0.5), &many, 100, 50).unwrap(), 16);
    assert_eq!(mode_rank(Rule::Ratio(1e-6), &many, 100, 50).unwrap(), 1);
    assert_eq!(mode_rank(Rule::Fixed(7), &many, 100, 50).unwrap(), 7);
    let err = mode_rank(Rule::Fixed(51), &many, 100, 50).unwrap_err().0;
    assert!(err.contains("above the full rank 50"), "{err}");
}

#[test]
fn vbmf_finds_the_rank_of_a_noisy_low_rank_matrix() {
    let mut g = Lcg(7);
    for (rows, cols, rank) in [(64, 128, 5), (128, 64, 3), (40, 40, 8)] {
        let a = Matrix::from_fn(rows, rank, |_, _| g.normal());
        let b = Matrix::from_fn(rank, cols, |_, _| g.normal());
        let mut w = product(&a, &b);
        w.data.iter_mut().for_each(|v| *v += 0.1 * g.normal());
        let d = svd(&w).unwrap();
        assert_eq!(
            mode_rank(Rule::Vbmf, &d.s, rows, cols).unwrap(),
            rank,
            "{rows}×{cols}"
        );
    }
    // Pure noise has no structure to keep; the rule still keeps one direction.
    let noise = Matrix::from_fn(30, 60, |_, _| g.normal());
    assert_eq!(
        mode_rank(Rule::Vbmf, &svd(&noise).unwrap().s, 30, 60).unwrap(),
        1
    );
}

#[test]
fn tucker2_reconstructs_at_full_energy_and_fits_a_ratio() {
    let mut g = Lcg(3);
    let (m, c, taps) = (6, 5, 9);
    let w: Vec<f64> = (0..m * c * taps).map(|_| g.next()).collect();
    // ‖W − Ŵ‖ / ‖W‖ with Ŵ = G ×₀ U_out ×₁ U_in built element by element.
    let rebuilt_error = |t: &Tucker2| {
        let (ro, ri) = (t.out.cols, t.input.cols);
        let (mut diff, mut total) = (0.0, 0.0);
        for o in 0..m {
            for i in 0..c {
                for k in 0..taps {
                    let mut v = 0.0;
                    for a in 0..ro {
                        for b in 0..ri {
                            v +=
                                t.out.at(o, a) * t.input.at(i, b) * t.core[(a * ri + b) * taps + k];
                        }
                    }
                    let x = w[(o * c + i) * taps + k];
                    diff += (x - v) * (x - v);
                    total += x * x;
                }
            }
        }
        (diff / total).sqrt()
    };
    let t = tucker2(&w, m, c, taps, Rule::Energy(1.0)).unwrap();
    assert_eq!((t.out.cols, t.input.cols), (6, 5));
    assert!(t.error < 1e-6 && rebuilt_error(&t) < 1e-12, "{}", t.error);
    let t = tucker2(&w, m, c, taps, Rule::Energy(0.6)).unwrap();
    assert!(t.out.cols < 6 && t.input.cols < 5 && t.error > 0.05);
    assert!(
        (t.error - rebuilt_error(&t)).abs() < 1e-9,
        "{} {}",
        t.error,
        rebuilt_error(&t)
    );
    let params = |(ro, ri): (usize, usize)| 32 * ri + ro * ri * 9 + ro * 64;
    for q in [0.2, 0.5, 0.8] {
        let r = tucker_ratio_ranks(q, 64, 32, 9);
        assert!(params(r) as f64 <= q * (64 * 32 * 9) as f64, "{q}: {r:?}");
        assert!(
            params((r.0 + 2, r.1 + 1)) as f64 > q * (64 * 32 * 9) as f64,
            "{q}: {r:?}"
        );
    }
}

#[test]
fn rank_candidates_step_by_vector_width_within_the_window() {
    use super::speed::candidates;
    assert_eq!(candidates(68, 160, 0.1), [64, 68, 72, 80]);
    assert_eq!(candidates(68, 70, 0.0), [68]);
    assert_eq!(candidates(10, 64, 0.5), [8, 10, 12, 16]);
    assert_eq!(candidates(1, 4, 0.9), [1, 4]);
}
