//! The executor: a plan's trainable suffix, run step by step on actc's kernels in memory
//! allocated once. Nothing is allocated inside a training step.

pub mod geom;
mod memory;
mod step;

pub use memory::Memory;

use crate::optim::LrSchedule;
use crate::plan::{Buffer, BufferKind, DType, Phase, Plan, Schedule};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct ExecError(pub String);

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExecError {}

pub struct Executor {
    plan: Plan,
    mem: Memory,
    updates: u64,
    schedule: LrSchedule,
}

impl Executor {
    /// Checks the plan's internal consistency, allocates its memory and loads its weights.
    /// `total_steps` (the number of updates the run will take) shapes the lr schedule.
    pub fn new(plan: Plan, total_steps: u64) -> Result<Executor, ExecError> {
        validate(&plan)?;
        let mut mem = Memory::new(&plan);
        for w in &plan.weights {
            mem.bytes_of(plan.buffer(w.buffer)).copy_from_slice(&w.data);
        }
        let hyper = plan.hyper.clone().unwrap_or_default();
        let schedule = match hyper.schedule() {
            Schedule::Constant => LrSchedule::Constant,
            Schedule::Cosine => LrSchedule::Cosine { total_steps },
            Schedule::LinearWarmup => LrSchedule::LinearWarmup {
                warmup_steps: hyper.warmup_steps as u64,
                total_steps,
            },
        };
        Ok(Executor {
            plan,
            mem,
            updates: 0,
            schedule,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes of the arena and the persistent region.
    pub fn memory_bytes(&self) -> usize {
        self.mem.bytes()
    }

    /// The boundary tensors the prefix (or the data loader) fills, in the prefix's output
    /// order: their shapes.
    pub fn boundary_shapes(&self) -> Vec<Vec<usize>> {
        let n = self.plan.feeds.len() - 1;
        self.plan.feeds[..n]
            .iter()
            .map(|&b| {
                self.plan
                    .buffer(b)
                    .shape
                    .iter()
                    .map(|&d| d as usize)
                    .collect()
            })
            .collect()
    }

    pub fn boundary_mut(&mut self, i: usize) -> &mut [f32] {
        let b = self.plan.buffer(self.plan.feeds[i]).clone();
        // SAFETY: `&mut self` excludes every other borrow of the memory.
        unsafe { self.mem.f32_mut(&b) }
    }

    /// Class labels (cross-entropy) — one per batch row.
    pub fn labels_mut(&mut self) -> Result<&mut [u32], ExecError> {
        let b = self
            .plan
            .buffer(*self.plan.feeds.last().expect("validated"))
            .clone();
        if b.dtype() != DType::U32 {
            return Err(ExecError(
                "this plan trains with --loss mse: it takes float targets, not class labels".into(),
            ));
        }
        // SAFETY: as in `boundary_mut`.
        Ok(unsafe { self.mem.u32_mut(&b) })
    }

    /// Regression targets (MSE), shaped like the model output.
    pub fn targets_mut(&mut self) -> Result<&mut [f32], ExecError> {
        let b = self
            .plan
            .buffer(*self.plan.feeds.last().expect("validated"))
            .clone();
        if b.dtype() != DType::F32 {
            return Err(ExecError(
                "this plan trains with cross-entropy: it takes class labels".into(),
            ));
        }
        // SAFETY: as in `boundary_mut`.
        Ok(unsafe { self.mem.f32_mut(&b) })
    }

    /// The learning rate the next update will use.
    pub fn lr(&self) -> f32 {
        let base = self.plan.hyper.as_ref().map(|h| h.lr).unwrap_or(0.01);
        self.schedule.lr(base, self.updates)
    }

    /// One training step on the fed batch: forward, loss, backward, updates. Returns the loss.
    pub fn train_step(&mut self) -> f32 {
        self.train_step_observed(|_, _| {})
    }

    /// A training step that shows each weight gradient to `observe` as soon as it is
    /// complete (before its update, and before its memory is reused): for checking
    /// gradients against a reference.
    pub fn train_step_observed(&mut self, mut observe: impl FnMut(&Buffer, &[f32])) -> f32 {
        let ctx = step::UpdateCtx {
            lr: self.lr(),
            step: self.updates + 1,
        };
        self.updates += 1;
        let mut loss = f32::NAN;
        for s in &self.plan.steps {
            // SAFETY: the plan was validated and its buffers planned disjoint while live.
            if let Some(l) = unsafe { step::run(&self.plan, s, &self.mem, &ctx) } {
                loss = l;
            }
            for &o in &s.outputs {
                let b = self.plan.buffer(o);
                if b.kind() == BufferKind::WeightGradient {
                    // SAFETY: no step is running; a shared read.
                    observe(b, unsafe { self.mem.f32(b) });
                }
            }
        }
        loss
    }

    /// Inference on the fed batch: the forward steps only; read the result with [`output`].
    ///
    /// [`output`]: Executor::output
    pub fn forward(&mut self) {
        let ctx = step::UpdateCtx {
            lr: 0.0,
            step: self.updates.max(1),
        };
        for s in self
            .plan
            .steps
            .iter()
            .filter(|s| s.phase() == Phase::Forward)
        {
            // SAFETY: as in `train_step`.
            unsafe { step::run(&self.plan, s, &self.mem, &ctx) };
        }
    }

    /// The model output the loss reads (logits for cross-entropy).
    pub fn output(&self) -> &[f32] {
        // SAFETY: shared borrow of `self`; no step is running.
        unsafe { self.mem.f32(self.plan.buffer(self.plan.output)) }
    }

    pub fn output_shape(&self) -> Vec<usize> {
        self.plan
            .buffer(self.plan.output)
            .shape
            .iter()
            .map(|&d| d as usize)
            .collect()
    }

    /// Updates taken so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The plan with its weights replaced by the current ones: what `train` saves, and what
    /// `eval` and `export` read back.
    pub fn snapshot(&mut self) -> Plan {
        let mut plan = self.plan.clone();
        for w in plan.weights.iter_mut() {
            let b = self.plan.buffer(w.buffer).clone();
            w.data.copy_from_slice(self.mem.bytes_of(&b));
        }
        plan
    }
}

fn validate(plan: &Plan) -> Result<(), ExecError> {
    let bad = |what: String| {
        Err(ExecError(format!(
            "invalid plan: {what}; recompile the model"
        )))
    };
    let n = plan.buffers.len() as u32;
    if plan.memory.is_none() || plan.feeds.is_empty() {
        return bad("no memory plan or no inputs".into());
    }
    for s in &plan.steps {
        if s.op.as_ref().and_then(|o| o.kind.as_ref()).is_none() {
            return bad(format!(
                "step {} has no operation (written by a newer actc?)",
                s.name
            ));
        }
        if s.inputs
            .iter()
            .chain(&s.outputs)
            .chain(&s.workspace)
            .any(|&b| b >= n)
        {
            return bad(format!(
                "step {} names a buffer that does not exist",
                s.name
            ));
        }
    }
    if plan
        .feeds
        .iter()
        .chain([&plan.loss, &plan.output])
        .any(|&b| b >= n)
    {
        return bad("a feed or output names a buffer that does not exist".into());
    }
    for w in &plan.weights {
        if w.buffer >= n
            || plan.buffer(w.buffer).bytes != w.data.len() as u64
            || !plan.buffer(w.buffer).kind().is_persistent()
        {
            return bad(format!("weight {} does not fit its buffer", w.source));
        }
    }
    let m = plan.memory.clone().unwrap_or_default();
    for b in &plan.buffers {
        let region = if b.kind().is_persistent() {
            m.persistent
        } else {
            m.arena
        };
        if b.offset + b.bytes > region {
            return bad(format!("buffer {} lies outside its region", b.name));
        }
        if b.kind() == BufferKind::Loss && b.numel() != 1 {
            return bad("the loss is not a scalar".into());
        }
    }
    Ok(())
}
