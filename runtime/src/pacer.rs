//! All threads or one, whichever runs a training step faster right now.
//!
//! A device's other work may hold a core. Every parallel loop then waits for the thread
//! that work displaces, and two threads step slower than one (BENCHMARKS.md, sessions 17
//! and 18: 32.2 against 24.4 ms at 64×3×32² with a spin loop beside). Which one a loop's
//! caller waits for is random: the scheduler spreads the other work's time over both, so
//! no loop can tell from its own timing. Whole steps can: a [`Pacer`] times them with all
//! threads and with one, alternately, and keeps the faster.
//!
//! The trials alternate (all, one, all, one, …) so that a passing disturbance slows both
//! settings alike: with the trials in two runs, one run after a build had ended picked one
//! thread for a quiet machine and stepped 2× slower for the rest of its period (session 17).
//! Each setting's median trial step stands for it: the fastest would favour the setting
//! whose steps vary more, and with a core busy two threads' steps vary most. A chosen
//! setting that then runs much slower than its trial, step after step, starts the trials
//! again at once; otherwise they come back every [`PERIOD`] steps. On a quiet device the
//! trials cost their steps on one thread: 4 of 400, about 1 % of the time at 2 threads.
//! Results do not depend on the choice: the kernels split outputs among threads, never a
//! sum (an epoch of MobileNetV2 with HOSVD, and of the ViT, at 1 and at 2 threads ends with
//! the same validation loss to the last digit).

use crate::threads;
use std::time::{Duration, Instant};

/// Steps from one round of trials to the next.
const PERIOD: u64 = 400;
/// Trial steps of each setting.
const TRIALS: u64 = 4;
/// One thread is chosen unless all threads' median trial is faster by more than this
/// factor. With a core busy, two threads' trials look better than their steady state
/// (224², busy: trials 120 against 113 ms, then 122 against one thread's 106); on a quiet
/// device one thread's trials take 1.4–1.8× as long (measured), far past this.
const MARGIN: f64 = 1.05;
/// A chosen setting's steps this much slower than its trial, [`SLOW_RUN`] in a row, start
/// the trials again.
const SLOWER: f64 = 1.3;
const SLOW_RUN: u32 = 6;

pub struct Pacer {
    /// Steps since this round of trials began.
    phase: u64,
    started: Option<Instant>,
    /// The trial steps' times with all threads, and with one.
    trials: [[Duration; TRIALS as usize]; 2],
    /// Each setting's median trial step.
    typical: [Duration; 2],
    /// 0: all threads, 1: one.
    choice: usize,
    slow: u32,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            phase: 0,
            started: None,
            trials: [[Duration::ZERO; TRIALS as usize]; 2],
            typical: [Duration::ZERO; 2],
            choice: 0,
            slow: 0,
        }
    }
}

impl Pacer {
    /// A step starts: the last one (since the previous call) is timed, and the loops until
    /// the next call take part on as many threads as this step's turn says.
    pub fn tick(&mut self) {
        if threads::configured() <= 1 {
            return;
        }
        let now = Instant::now();
        if let Some(start) = self.started {
            self.timed(self.phase - 1, now - start);
        }
        if self.phase == PERIOD {
            self.phase = 0;
        }
        let alone = match self.phase {
            p if p < 2 * TRIALS => p % 2 == 1,
            _ => self.choice == 1,
        };
        threads::cap(usize::from(alone));
        self.started = Some(now);
        self.phase += 1;
    }

    /// Step `phase` of this round took `took`.
    fn timed(&mut self, phase: u64, took: Duration) {
        if phase < 2 * TRIALS {
            self.trials[(phase % 2) as usize][(phase / 2) as usize] = took;
            if phase + 1 == 2 * TRIALS {
                self.typical = self.trials.map(|mut t| {
                    t.sort_unstable();
                    t[t.len() / 2]
                });
                let [all, one] = self.typical.map(|d| d.as_secs_f64());
                self.choice = usize::from(one < all * MARGIN);
                self.slow = 0;
            }
            return;
        }
        let trial = self.typical[self.choice].as_secs_f64();
        self.slow = match took.as_secs_f64() > trial * SLOWER {
            true => self.slow + 1,
            false => 0,
        };
        if self.slow >= SLOW_RUN {
            // The device changed since the trials: try again from the next step.
            self.phase = PERIOD;
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        threads::cap(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a parallel loop now runs on the calling thread alone.
    fn runs_alone() -> bool {
        let caller = std::thread::current().id();
        let mut who = [None; 2];
        threads::for_each_mut(&mut who, |_, w| *w = Some(std::thread::current().id()));
        who.iter().all(|w| *w == Some(caller))
    }

    /// Steps of `ms(step, alone)` milliseconds under a pacer: which ran alone.
    fn paced(steps: u64, ms: impl Fn(u64, bool) -> u64) -> Vec<bool> {
        threads::set_threads(2);
        let mut pacer = Pacer::default();
        let alone: Vec<bool> = (0..steps)
            .map(|step| {
                pacer.tick();
                let alone = runs_alone();
                std::thread::sleep(Duration::from_millis(ms(step, alone)));
                alone
            })
            .collect();
        drop(pacer);
        assert!(
            !runs_alone(),
            "a dropped pacer leaves every thread to the loops"
        );
        alone
    }

    /// One test, as the cap the pacer sets is the whole process's: trials alternate and the
    /// faster setting runs; a chosen setting that turns much slower than its trial, step after
    /// step, starts the trials again without waiting for the period's end.
    #[test]
    fn trials_alternate_the_faster_setting_runs_and_a_change_tries_again() {
        let t = 2 * TRIALS as usize;
        // One thread faster (a busy device): trials all, one, all, …; then one.
        let alone = paced(t as u64 + 4, |_, alone| if alone { 2 } else { 10 });
        let trials: Vec<bool> = (0..t).map(|p| p % 2 == 1).collect();
        assert_eq!(alone[..t], trials[..]);
        assert!(alone[t..].iter().all(|&a| a), "{alone:?}");
        // All threads faster: all threads.
        let alone = paced(t as u64 + 3, |_, alone| if alone { 10 } else { 2 });
        assert!(alone[t..].iter().all(|&a| !a), "{alone:?}");
        // Quiet during the trials (all threads chosen), then all threads turn slow.
        let t = t as u64;
        let alone = paced(t + SLOW_RUN as u64 + t + 2, |step, alone| {
            match (step >= t, alone) {
                (false, false) => 2,
                (false, true) => 10,
                (true, false) => 20,
                (true, true) => 4,
            }
        });
        let again = (t + SLOW_RUN as u64) as usize;
        assert!(alone[t as usize..again].iter().all(|&a| !a), "{alone:?}");
        // The new trials (all, one, …), then one thread.
        assert!(!alone[again] && alone[again + 1], "{alone:?}");
        assert!(alone[again + t as usize..].iter().all(|&a| a), "{alone:?}");
    }
}
