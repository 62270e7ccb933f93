//! Optimizers and learning-rate schedules with PyTorch's exact semantics, so a run matches
//! a `torch.optim` reference step for step.
//!
//! State lives in the plan's arena: each optimizer says how many f32s of state a parameter
//! of `numel` values needs (`state_len`, zeroed before the first step) and updates one
//! parameter slice at a time, so an update can run right after its gradient is produced.

/// `torch.optim.SGD` (with `maximize=False`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl From<&crate::ops::AdamW> for AdamW {
    fn from(a: &crate::ops::AdamW) -> AdamW {
        AdamW {
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.epsilon,
            weight_decay: a.weight_decay,
        }
    }
}

impl From<&crate::ops::Sgd> for Sgd {
    fn from(s: &crate::ops::Sgd) -> Sgd {
        Sgd {
            momentum: s.momentum,
            dampening: s.dampening,
            weight_decay: s.weight_decay,
            nesterov: s.nesterov,
        }
    }
}

impl Sgd {
    /// The momentum buffer, when there is momentum.
    pub fn state_len(&self, numel: usize) -> usize {
        if self.momentum != 0.0 { numel } else { 0 }
    }

    /// One update of `w` with gradient `g`. `step` counts this parameter's updates from 1:
    /// step 1 initialises the momentum buffer to the (decayed) gradient, undamped, as
    /// PyTorch does when the buffer does not exist yet.
    pub fn step(&self, lr: f32, step: u64, w: &mut [f32], g: &[f32], state: &mut [f32]) {
        debug_assert!(step >= 1);
        debug_assert_eq!(w.len(), g.len());
        debug_assert_eq!(state.len(), self.state_len(w.len()));
        in_parallel(w, g, state, |w, g, state| {
            self.update(lr, step, w, g, state)
        });
    }

    /// [`Sgd::step`] with a gradient that is never held: `grad(alpha, beta, dst)` stores
    /// `dst ← alpha·g + beta·dst` (a weight-gradient product's store). Without momentum it
    /// stores into `w` itself (`w ← (1 − lr·wd)·w − lr·g`); with momentum into the buffer,
    /// then `w ← w − lr·buf`. Nesterov reads the gradient twice: not here.
    pub fn step_fused(
        &self,
        lr: f32,
        step: u64,
        w: &mut [f32],
        state: &mut [f32],
        grad: impl FnOnce(f32, f32, &mut [f32]),
    ) {
        debug_assert!(step >= 1 && !self.nesterov);
        debug_assert_eq!(state.len(), self.state_len(w.len()));
        let (mu, wd) = (self.momentum, self.weight_decay);
        if mu == 0.0 {
            return grad(-lr, 1.0 - lr * wd, w);
        }
        // buf ← μ·buf + keep·(g + wd·w); on step 1, buf ← g + wd·w (PyTorch's first step).
        let (keep, carry) = if step == 1 {
            (1.0, 0.0)
        } else {
            (1.0 - self.dampening, mu)
        };
        let beta = if wd == 0.0 {
            carry
        } else {
            in_parallel(state, w, &mut [], |buf, w, _| {
                for (b, w) in buf.iter_mut().zip(w) {
                    *b = carry * *b + keep * wd * w;
                }
            });
            1.0
        };
        grad(keep, beta, state);
        in_parallel(w, state, &mut [], |w, buf, _| {
            for (w, b) in w.iter_mut().zip(buf) {
                *w -= lr * b;
            }
        });
    }

    fn update(&self, lr: f32, step: u64, w: &mut [f32], g: &[f32], state: &mut [f32]) {
        let (mu, wd) = (self.momentum, self.weight_decay);
        if mu == 0.0 {
            for (w, g) in w.iter_mut().zip(g) {
                let d = g + wd * *w;
                *w -= lr * d;
            }
            return;
        }
        let keep = 1.0 - self.dampening;
        for ((w, g), buf) in w.iter_mut().zip(g).zip(state.iter_mut()) {
            let d = g + wd * *w;
            *buf = if step == 1 { d } else { mu * *buf + keep * d };
            let d = if self.nesterov { d + mu * *buf } else { *buf };
            *w -= lr * d;
        }
    }
}

/// `f(w, g, state)` over matching runs of the three (`state` as long as `w`, or empty), in
/// parallel when the update is large: it is a few operations per element, bound by memory,
/// and a classifier-sized parameter (0.4 M values, with momentum 5 MB of traffic) took 1 ms
/// on one core at 64×3×32², a fifth of the steps after the prefix.
fn in_parallel(
    w: &mut [f32],
    g: &[f32],
    state: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32]) + Sync,
) {
    const MAX_PARTS: usize = 8;
    let parts = crate::threads::parts_for(8 * w.len()).min(MAX_PARTS);
    if parts <= 1 {
        return f(w, g, state);
    }
    // Whole cache lines per run.
    let per = w.len().div_ceil(parts).next_multiple_of(16);
    let mut runs: [(&mut [f32], &[f32], &mut [f32]); MAX_PARTS] =
        std::array::from_fn(|_| (&mut [][..], &[][..], &mut [][..]));
    let (mut w, mut g, mut state) = (w, g, state);
    let mut count = 0;
    while !w.is_empty() {
        let n = per.min(w.len());
        let (wh, wt) = w.split_at_mut(n);
        let (gh, gt) = g.split_at(n);
        let (sh, st) = state.split_at_mut(n.min(state.len()));
        runs[count] = (wh, gh, sh);
        (w, g, state) = (wt, gt, st);
        count += 1;
    }
    crate::threads::for_each_mut(&mut runs[..count], |_, (w, g, s)| f(w, g, s));
}

/// `torch.optim.AdamW` (with `amsgrad=False`, `maximize=False`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamW {
    /// The first and second moment estimates, one after the other.
    pub fn state_len(&self, numel: usize) -> usize {
        2 * numel
    }

    /// One update; `step` counts this parameter's updates from 1 (the bias corrections use
    /// it). The decay `w ← w·(1 − lr·wd)` comes first, decoupled from the moments.
    pub fn step(&self, lr: f32, step: u64, w: &mut [f32], g: &[f32], state: &mut [f32]) {
        debug_assert!(step >= 1);
        debug_assert_eq!(w.len(), g.len());
        debug_assert_eq!(state.len(), self.state_len(w.len()));
        let (m, v) = state.split_at_mut(w.len());
        // PyTorch computes the corrections as Python floats (f64) before they meet f32.
        let t = step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = 1.0 - lr * self.weight_decay;
        let (b1w, b2, b2w) = (1.0 - self.beta1, self.beta2, 1.0 - self.beta2);
        for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *w *= decay;
            // exp_avg.lerp_(grad, 1 − beta1), in the form PyTorch's lerp uses for weights < ½.
            *m += b1w * (g - *m);
            *v = b2 * *v + b2w * g * g;
            let denom = v.sqrt() / bc2_sqrt + self.eps;
            *w -= step_size * (*m / denom);
        }
    }
}

/// Learning rate as a function of the number of updates already taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    Constant,
    /// Half a cosine from the base rate to 0 over `total_steps`: CosineAnnealingLR with
    /// T_max = total_steps and eta_min = 0, stepped once per update.
    Cosine {
        total_steps: u64,
    },
    /// Linear from 0 to the base rate over `warmup_steps`, then the cosine above over the
    /// remaining `total_steps − warmup_steps` (Hugging Face's
    /// `get_cosine_schedule_with_warmup`). Warmup then cosine rather than warmup then
    /// constant: fine-tuning runs have a known length and end better annealed.
    LinearWarmup {
        warmup_steps: u64,
        total_steps: u64,
    },
}

impl LrSchedule {
    /// The rate for the update after `done` updates (the first update has `done == 0`).
    /// Past `total_steps` the rate stays 0.
    pub fn lr(&self, base: f32, done: u64) -> f32 {
        let cosine = |t: u64, span: u64| {
            if span == 0 || t >= span {
                return 0.0;
            }
            let x = std::f64::consts::PI * t as f64 / span as f64;
            (base as f64 * 0.5 * (1.0 + x.cos())) as f32
        };
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine { total_steps } => cosine(done, total_steps),
            LrSchedule::LinearWarmup {
                warmup_steps,
                total_steps,
            } => {
                if done < warmup_steps {
                    (base as f64 * done as f64 / warmup_steps as f64) as f32
                } else {
                    cosine(
                        done - warmup_steps,
                        total_steps.saturating_sub(warmup_steps),
                    )
                }
            }
        }
    }
}

/// Σ g² of one gradient (or any tensor: the HOSVD ε rule's total energy), in f64 so that
/// summing many parameters' stays exact enough; eight f64 lanes let it vectorise.
pub fn sum_of_squares(g: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let blocks = g.chunks_exact(8);
    let tail: f64 = blocks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for b in blocks {
        for (l, &v) in lanes.iter_mut().zip(b) {
            *l += f64::from(v) * f64::from(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// The factor `torch.nn.utils.clip_grad_norm_` multiplies every gradient by:
/// min(1, max_norm / (‖g‖ + 1e-6)), where ‖g‖² is the sum of [`sum_of_squares`] over all
/// clipped parameters.
pub fn clip_coefficient(total_sum_of_squares: f64, max_norm: f32) -> f32 {
    let norm = total_sum_of_squares.sqrt();
    (max_norm as f64 / (norm + 1e-6)).min(1.0) as f32
}

/// `g ← coef·g`.
pub fn scale_gradient(coef: f32, g: &mut [f32]) {
    g.iter_mut().for_each(|v| *v *= coef);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gradient stored straight into the update gives the update of the held gradient
    /// (to rounding: the store fuses a multiply-add), over three steps: with and without
    /// momentum, dampening and weight decay.
    #[test]
    fn fused_sgd_matches_the_update_of_the_held_gradient() {
        let n = 1000;
        let vals = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        for (momentum, dampening, weight_decay) in [
            (0.0, 0.0, 0.0),
            (0.0, 0.0, 0.01),
            (0.9, 0.0, 0.0),
            (0.9, 0.1, 0.01),
        ] {
            let sgd = Sgd {
                momentum,
                dampening,
                weight_decay,
                nesterov: false,
            };
            let (mut w, mut buf) = (vals(1), vec![0.0; sgd.state_len(n)]);
            let (mut w2, mut buf2) = (w.clone(), buf.clone());
            for step in 1..=3 {
                let g = vals(step as u32 + 7);
                sgd.step(0.1, step, &mut w, &g, &mut buf);
                sgd.step_fused(0.1, step, &mut w2, &mut buf2, |alpha, beta, dst| {
                    for (d, g) in dst.iter_mut().zip(&g) {
                        *d = alpha * g + if beta == 0.0 { 0.0 } else { beta * *d };
                    }
                });
                let worst = w
                    .iter()
                    .zip(&w2)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= 1e-6, "{sgd:?} step {step}: off by {worst}");
            }
        }
    }

    /// Updates large enough to run in parallel give what one pass over the whole gives,
    /// with and without momentum (and with Nesterov's), first step and later ones.
    #[test]
    fn parallel_sgd_matches_one_pass() {
        let n = 300_001;
        assert!(crate::threads::parts_for(8 * n) == crate::threads::threads());
        let vals = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        for (momentum, nesterov) in [(0.0, false), (0.9, false), (0.9, true)] {
            let sgd = Sgd {
                momentum,
                dampening: 0.1,
                weight_decay: 0.01,
                nesterov: nesterov && momentum > 0.0,
            };
            let (mut w, mut s) = (vals(1), vec![0.0; sgd.state_len(n)]);
            let (mut w1, mut s1) = (w.clone(), s.clone());
            for step in 1..=2 {
                let g = vals(step as u32 + 7);
                sgd.step(0.05, step, &mut w, &g, &mut s);
                sgd.update(0.05, step, &mut w1, &g, &mut s1);
                assert!(w == w1 && s == s1, "momentum {momentum} step {step}");
            }
        }
    }

    #[track_caller]
    fn assert_near(got: &[f32], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() <= 2e-6 * w.abs().max(1.0),
                "got {got:?}, want {want:?}"
            );
        }
    }

    /// Runs two steps with the given gradients and returns w after each.
    fn two_steps(
        opt: impl Fn(u64, &mut [f32], &[f32], &mut [f32]),
        w: &[f32],
        state_len: usize,
        g1: &[f32],
        g2: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let mut w = w.to_vec();
        let mut state = vec![0.0; state_len];
        opt(1, &mut w, g1, &mut state);
        let w1 = w.clone();
        opt(2, &mut w, g2, &mut state);
        (w1, w)
    }

    const W0: [f32; 2] = [1.0, -2.0];
    const G1: [f32; 2] = [0.5, 1.0];
    const G2: [f32; 2] = [-0.5, 2.0];

    #[test]
    fn sgd_momentum_weight_decay() {
        let sgd = Sgd {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.01,
            nesterov: false,
        };
        let (w1, w2) = two_steps(
            |t, w, g, s| sgd.step(0.1, t, w, g, s),
            &W0,
            sgd.state_len(2),
            &G1,
            &G2,
        );
        // Step 1: d = g + 0.01·w = [0.51, 0.98]; buf = d; w = w − 0.1·buf = [0.949, −2.098].
        assert_near(&w1, &[0.949, -2.098]);
        // Step 2: d = [−0.5 + 0.00949, 2 − 0.02098] = [−0.49051, 1.97902];
        // buf = 0.9·[0.51, 0.98] + d = [−0.03151, 2.86102];
        // w = [0.949 + 0.003151, −2.098 − 0.286102] = [0.952151, −2.384102].
        assert_near(&w2, &[0.952151, -2.384102]);
    }

    #[test]
    fn sgd_nesterov() {
        let sgd = Sgd {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: true,
        };
        let (w1, w2) = two_steps(
            |t, w, g, s| sgd.step(0.1, t, w, g, s),
            &W0,
            sgd.state_len(2),
            &G1,
            &G2,
        );
        // Step 1: buf = g = [0.5, 1]; d = g + 0.9·buf = [0.95, 1.9]; w = [0.905, −2.19].
        assert_near(&w1, &[0.905, -2.19]);
        // Step 2: buf = 0.9·[0.5, 1] + [−0.5, 2] = [−0.05, 2.9];
        // d = [−0.5 − 0.045, 2 + 2.61] = [−0.545, 4.61]; w = [0.9595, −2.651].
        assert_near(&w2, &[0.9595, -2.651]);
    }

    #[test]
    fn sgd_dampening_skips_the_first_step() {
        let sgd = Sgd {
            momentum: 0.5,
            dampening: 0.5,
            weight_decay: 0.0,
            nesterov: false,
        };
        let (w1, w2) = two_steps(
            |t, w, g, s| sgd.step(1.0, t, w, g, s),
            &W0,
            sgd.state_len(2),
            &G1,
            &G2,
        );
        // Step 1: buf = g (undamped) = [0.5, 1]; w = [0.5, −3].
        assert_near(&w1, &[0.5, -3.0]);
        // Step 2: buf = 0.5·[0.5, 1] + 0.5·[−0.5, 2] = [0, 1.5]; w = [0.5, −4.5].
        assert_near(&w2, &[0.5, -4.5]);
    }

    #[test]
    fn plain_sgd_needs_no_state() {
        let sgd = Sgd {
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.1,
            nesterov: false,
        };
        assert_eq!(sgd.state_len(2), 0);
        let (w1, _) = two_steps(|t, w, g, s| sgd.step(0.5, t, w, g, s), &W0, 0, &G1, &G2);
        // w − 0.5·(g + 0.1·w) = [1 − 0.5·0.6, −2 − 0.5·0.8] = [0.7, −2.4].
        assert_near(&w1, &[0.7, -2.4]);
    }

    #[test]
    fn adamw_two_steps() {
        let adam = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let (w1, w2) = two_steps(
            |t, w, g, s| adam.step(0.1, t, w, g, s),
            &[1.0],
            adam.state_len(1),
            &[0.5],
            &[-0.25],
        );
        // Step 1: w = 1·(1 − 0.1·0.01) = 0.999; m = 0.05; v = 0.001·0.25 = 2.5e-4;
        // bc1 = 0.1, bc2 = 0.001; denom = √2.5e-4/√0.001 + 1e-8 = 0.5 + 1e-8;
        // w = 0.999 − (0.1/0.1)·0.05/denom = 0.999 − 0.099999998 = 0.899000002.
        assert_near(&w1, &[0.899000002]);
        // Step 2: w = 0.899000002·0.999 = 0.898101002; m = 0.05 + 0.1·(−0.25 − 0.05) = 0.02;
        // v = 0.999·2.5e-4 + 0.001·0.0625 = 3.1225e-4; bc1 = 0.19, bc2 = 0.001999;
        // denom = 0.017670597/0.044710178 + 1e-8 = 0.39522539;
        // w = 0.898101002 − (0.1/0.19)·0.02/0.39522539 = 0.898101002 − 0.026633703 = 0.871467299.
        assert_near(&w2, &[0.871467299]);
    }

    #[test]
    fn schedules() {
        let c = LrSchedule::Cosine { total_steps: 4 };
        // 0.5·(1 + cos(π·t/4)) for t = 0..4: 1, 0.853553, 0.5, 0.146447, 0.
        let got: Vec<f32> = (0..6).map(|t| c.lr(1.0, t)).collect();
        assert_near(&got, &[1.0, 0.853553390, 0.5, 0.146446609, 0.0, 0.0]);
        assert_eq!(LrSchedule::Constant.lr(0.3, 1000), 0.3);
        let w = LrSchedule::LinearWarmup {
            warmup_steps: 2,
            total_steps: 6,
        };
        // Warmup 0, 1/2; then cosine over the remaining 4 steps.
        let got: Vec<f32> = (0..7).map(|t| w.lr(2.0, t)).collect();
        assert_near(&got, &[0.0, 1.0, 2.0, 1.707106781, 1.0, 0.292893219, 0.0]);
    }

    #[test]
    fn clipping() {
        // Two parameters, ‖(3, 4)‖ = 5 > max 1: coef = 1/(5 + 1e-6).
        let (mut a, mut b) = ([3.0f32], [4.0f32]);
        let coef = clip_coefficient(sum_of_squares(&a) + sum_of_squares(&b), 1.0);
        assert!((coef as f64 - 1.0 / 5.000001).abs() < 1e-7);
        scale_gradient(coef, &mut a);
        scale_gradient(coef, &mut b);
        assert_near(&[a[0], b[0]], &[0.6, 0.8]);
        // Under the limit the gradients stay as they are.
        assert_eq!(clip_coefficient(25.0, 10.0), 1.0);
    }
}
