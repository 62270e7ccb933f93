//! The rank that empirical variational Bayes matrix factorization (EVBMF) estimates for a
//! matrix from its singular values: Nakajima, Sugiyama, Babacan and Tomioka, "Global analytic
//! solution of fully-observed variational Bayesian matrix factorization" (JMLR 2013), and the
//! noise-variance estimate of Nakajima et al. (2015), as Kim et al. use it to pick the ranks
//! of a Tucker-2 decomposition of conv kernels ("Compression of deep convolutional neural
//! networks for fast and low power mobile applications", ICLR 2016).
//!
//! For an L × M matrix (L ≤ M, α = L/M) with singular values γ_h and noise variance σ², a
//! component survives when γ_h exceeds √(M σ² (1 + τ̄)(1 + α/τ̄)), τ̄ ≈ 2.5129 √α; σ² itself
//! minimizes the free energy below over the range the theory bounds it to.

/// The estimated rank of an `rows × cols` matrix with singular values `s` (non-increasing).
pub fn rank(s: &[f64], rows: usize, cols: usize) -> usize {
    let (l, m) = (rows.min(cols) as f64, rows.max(cols) as f64);
    let h = s.len();
    if h == 0 || s[0] <= 0.0 {
        return 0;
    }
    let alpha = l / m;
    let tau_bar = 2.5129 * alpha.sqrt();
    let x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar);
    let sq: Vec<f64> = s.iter().map(|v| v * v).collect();
    // The bounds of σ² from the theory: above, all energy is noise; below, at least the
    // components past the largest rank VB can recover are.
    let upper = sq.iter().sum::<f64>() / (l * m);
    let first_noise = ((l / (1.0 + alpha)).ceil() as usize)
        .saturating_sub(1)
        .min(h - 1);
    let tail = &sq[first_noise..];
    let lower =
        (sq[first_noise] / (m * x_bar)).max(tail.iter().sum::<f64>() / tail.len() as f64 / m);
    let (lo, hi) = if lower < upper {
        (lower, upper)
    } else {
        (upper, lower)
    };
    let sigma2 = golden_min(|v| free_energy(v, &sq, l, m, alpha, x_bar), lo, hi);
    let threshold = m * sigma2 * (1.0 + tau_bar) * (1.0 + alpha / tau_bar);
    sq.iter().filter(|&&g| g > threshold).count()
}

/// The free energy of EVBMF at noise variance `sigma2` (up to constants), every component
/// of the thin SVD counted (`l` of them, so no residual term).
fn free_energy(sigma2: f64, sq: &[f64], l: f64, m: f64, alpha: f64, x_bar: f64) -> f64 {
    let mut f = (l - sq.len() as f64) * sigma2.ln();
    for &g in sq {
        let x = g / (m * sigma2);
        if x > x_bar {
            let tau = tau(x, alpha);
            f += x - tau + ((tau + 1.0) / x).ln() + alpha * (tau / alpha + 1.0).ln();
        } else {
            f += x - x.ln();
        }
    }
    f
}

/// τ(x) = ½ (x − (1 + α) + √((x − (1 + α))² − 4α)).
fn tau(x: f64, alpha: f64) -> f64 {
    let b = x - (1.0 + alpha);
    0.5 * (b + (b * b - 4.0 * alpha).max(0.0).sqrt())
}

/// The minimum of `f` on [lo, hi] by golden-section search.
fn golden_min(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (lo, hi);
    let (mut c, mut d) = (b - phi * (b - a), a + phi * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..200 {
        if (b - a).abs() <= 1e-12 * (a.abs() + b.abs()) {
            break;
        }
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - phi * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + phi * (b - a);
            fd = f(d);
        }
    }
    (a + b) / 2.0
}
