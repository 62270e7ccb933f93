//! Sequential freezing at run time: which turn an update is in, and which steps it leaves out
//! (the plan's [`Freeze`]).
//!
//! [`Freeze`]: crate::plan::Freeze

use crate::plan::{Phase, Plan};

pub struct Turns {
    /// Per turn, per plan step: whether the turn leaves the step out.
    skip: Vec<Vec<bool>>,
    /// Updates per turn.
    length: u64,
    /// Turns last an epoch, whose length the trainer gives.
    per_epoch: bool,
}

impl Turns {
    /// The plan's turns, checked: each names training steps only, and at most once.
    pub fn load(plan: &Plan) -> Result<Option<Turns>, String> {
        let Some(freeze) = &plan.freeze else {
            return Ok(None);
        };
        if freeze.turns.is_empty() {
            return Err("a freeze schedule without turns".into());
        }
        let n = plan.steps.len();
        let mut skip = Vec::with_capacity(freeze.turns.len());
        for (t, turn) in freeze.turns.iter().enumerate() {
            let mut mask = vec![false; n];
            for &s in &turn.skip {
                let s = s as usize;
                let training = s < n && !matches!(plan.steps[s].phase(), Phase::Prefix);
                if !training || std::mem::replace(&mut mask[s], true) {
                    return Err(format!(
                        "turn {} of the freeze schedule leaves out step {s}, which is not a training step or is named twice",
                        t + 1
                    ));
                }
            }
            skip.push(mask);
        }
        Ok(Some(Turns {
            skip,
            // Per epoch (0): one update per turn until the trainer gives an epoch's length.
            length: freeze.every.max(1) as u64,
            per_epoch: freeze.every == 0,
        }))
    }

    /// Sets the turn's length to an epoch of `steps` updates, when the plan rotates per
    /// epoch (`every` = 0).
    pub fn set_epoch(&mut self, steps: u64) {
        if self.per_epoch {
            self.length = steps.max(1);
        }
    }

    /// The turn of the update that follows `updates` updates.
    pub fn turn(&self, updates: u64) -> usize {
        ((updates / self.length) % self.skip.len() as u64) as usize
    }

    /// The steps turn `t` leaves out.
    pub fn skipped(&self, t: usize) -> &[bool] {
        &self.skip[t]
    }
}
