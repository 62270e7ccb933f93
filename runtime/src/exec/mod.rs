//! The executor: a plan's trainable suffix, run step by step on actc's kernels in memory
//! allocated once. Nothing is allocated inside a training step.

pub mod geom;
pub mod lanes;
mod memory;
mod step;
pub use step::workspace_len;
mod turns;

pub use memory::{Memory, View};

use crate::kernels::chain;
use crate::kernels::layout::MAX_RANK;
use crate::ops::Kind;
use crate::optim::LrSchedule;
use crate::plan::{Buffer, BufferKind, DType, Phase, Plan, PlanFile, Progress, Schedule, Weight};
use crate::threads;
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
    /// Without its weights' bytes (they live in `mem`), and without the ONNX parts when
    /// they were left in `file`.
    plan: Plan,
    file: Option<PlanFile>,
    mem: Memory,
    /// Views of the prefix lanes, lane 0's being the memory's own (`lanes`).
    lanes: Vec<View>,
    updates: u64,
    schedule: LrSchedule,
    /// Per step, its index into `compression` (compression steps only).
    compression_of: Vec<Option<usize>>,
    compression: Vec<CompressionStats>,
    /// The paper's metric summed over the compressed layers, per training step.
    paper_total: Tally,
    /// Sequential freezing's turns, when the plan has them.
    turns: Option<turns::Turns>,
    /// All threads or one, whichever runs a step (with the prefix of the next) faster.
    pacer: crate::pacer::Pacer,
}

/// What one compression step kept over the training steps since the last reset: the ranks
/// (per mode) and the paper's memory metric, beside the vanilla and the planned bytes.
#[derive(Clone, Debug)]
pub struct CompressionStats {
    /// The forward node whose input this compresses.
    pub layer: String,
    pub modes: usize,
    /// The activation kept as is.
    pub vanilla_bytes: usize,
    /// The compressed buffer the plan reserves (at the rank caps).
    pub planned_bytes: usize,
    pub rank_sum: [u64; 4],
    pub rank_min: [usize; 4],
    pub rank_max: [usize; 4],
    /// Steps whose ε rule asked for more than a cap allowed.
    pub truncated: u64,
    pub paper_bytes: Tally,
}

/// Count, sum and maximum of a per-step quantity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}

impl Tally {
    fn add(&mut self, v: u64) {
        self.count += 1;
        self.sum += v;
        self.max = self.max.max(v);
    }

    pub fn mean(&self) -> f64 {
        self.sum as f64 / self.count.max(1) as f64
    }
}

impl CompressionStats {
    fn new(layer: String, c: &crate::ops::Compressor, planned_bytes: usize) -> Self {
        CompressionStats {
            layer,
            modes: match c.method {
                Some(crate::ops::Method::Hosvd(_)) => c.shape.len(),
                Some(crate::ops::Method::Svd(_)) => 1,
                _ => 0,
            },
            vanilla_bytes: c.vanilla_bytes(),
            planned_bytes,
            rank_sum: [0; 4],
            rank_min: [usize::MAX; 4],
            rank_max: [0; 4],
            truncated: 0,
            paper_bytes: Tally::default(),
        }
    }

    fn record(&mut self, r: &crate::compress::hosvd::Ranks, paper_bytes: usize) {
        for m in 0..self.modes {
            self.rank_sum[m] += r.used[m] as u64;
            self.rank_min[m] = self.rank_min[m].min(r.used[m]);
            self.rank_max[m] = self.rank_max[m].max(r.used[m]);
        }
        if (0..self.modes).any(|m| r.wanted[m] > r.used[m]) {
            self.truncated += 1;
        }
        self.paper_bytes.add(paper_bytes as u64);
    }

    /// Mean rank of mode `m` over the recorded steps.
    pub fn rank_mean(&self, m: usize) -> f64 {
        self.rank_sum[m] as f64 / self.paper_bytes.count.max(1) as f64
    }
}

impl Executor {
    /// Checks the plan's internal consistency, allocates its memory and loads its weights.
    /// `total_steps` (the number of updates the run will take) shapes the lr schedule.
    pub fn new(plan: Plan, total_steps: u64) -> Result<Executor, ExecError> {
        Executor::with_weights_from(plan, None, total_steps)
    }

    /// [`Executor::new`] for a plan from [`Plan::open`]: its weights are read from the file
    /// straight into the executor's memory, and the file is kept for the bytes a snapshot
    /// needs.
    pub fn open(plan: Plan, file: PlanFile, total_steps: u64) -> Result<Executor, ExecError> {
        Executor::with_weights_from(plan, Some(file), total_steps)
    }

    fn with_weights_from(
        mut plan: Plan,
        file: Option<PlanFile>,
        total_steps: u64,
    ) -> Result<Executor, ExecError> {
        let weight_len = |i: usize| match &file {
            Some(f) => f.weight_len(i),
            None => plan.weights[i].data.len() as u64,
        };
        validate(&plan, weight_len)?;
        let turns = turns::Turns::load(&plan)
            .map_err(|e| ExecError(format!("invalid plan: {e}; recompile the model")))?;
        let mut mem = Memory::new(&plan)?;
        // The memory holds the only copy of the weights: each one's bytes in the plan are
        // freed once copied.
        for (i, w) in plan.weights.iter_mut().enumerate() {
            let dst = mem.bytes_of(&plan.buffers[w.buffer as usize]);
            match &file {
                Some(f) => f
                    .read_weight(i, dst)
                    .map_err(|e| ExecError(format!("cannot read weight {}: {e}", w.source)))?,
                None => dst.copy_from_slice(&std::mem::take(&mut w.data)),
            }
        }
        // A checkpoint's state, now in memory, is saved again only with a checkpoint.
        plan.weights
            .retain(|w| !is_state(&plan.buffers[w.buffer as usize]));
        let schedule = schedule_of(&plan, total_steps);
        let mut compression = Vec::new();
        let compression_of = plan
            .steps
            .iter()
            .map(|s| match s.kind() {
                Some(Kind::Compress(c)) => {
                    let planned = plan.buffer(s.outputs[0]).bytes as usize;
                    let layer = s.origin.clone();
                    compression.push(CompressionStats::new(layer, c, planned));
                    Some(compression.len() - 1)
                }
                _ => None,
            })
            .collect();
        let region = lanes::region(&plan);
        let lanes = std::iter::once(*mem)
            .chain(
                plan.prefix_lanes
                    .iter()
                    .map(|&to| mem.lane(region.start, region.end, to)),
            )
            .collect();
        Ok(Executor {
            plan,
            file,
            mem,
            lanes,
            updates: 0,
            schedule,
            compression_of,
            compression,
            paper_total: Tally::default(),
            turns,
            pacer: crate::pacer::Pacer::default(),
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

    /// Whether the plan runs its frozen prefix itself (else tract runs `prefix_onnx`, or
    /// there is no prefix).
    pub fn runs_prefix(&self) -> bool {
        self.plan.prefix_steps > 0
    }

    /// Boundary tensor `i` as the prefix left it.
    pub fn boundary(&self, i: usize) -> &[f32] {
        // SAFETY: shared borrow of `self`; no step is running.
        unsafe { self.mem.f32(self.plan.buffer(self.plan.feeds[i])) }
    }

    pub fn boundary_mut(&mut self, i: usize) -> &mut [f32] {
        // Borrowed, not cloned: a clone of a buffer allocates (its name), and training calls
        // this every step.
        let b = self.plan.buffer(self.plan.feeds[i]);
        // SAFETY: `&mut self` excludes every other borrow of the memory.
        unsafe { self.mem.f32_mut(b) }
    }

    /// Class labels (cross-entropy) — one per batch row.
    pub fn labels_mut(&mut self) -> Result<&mut [u32], ExecError> {
        let b = self
            .plan
            .buffer(*self.plan.feeds.last().expect("validated"));
        if b.dtype() != DType::U32 {
            return Err(ExecError(
                "this plan trains with --loss mse: it takes float targets, not class labels".into(),
            ));
        }
        // SAFETY: as in `boundary_mut`.
        Ok(unsafe { self.mem.u32_mut(b) })
    }

    /// Regression targets (MSE), shaped like the model output.
    pub fn targets_mut(&mut self) -> Result<&mut [f32], ExecError> {
        let b = self
            .plan
            .buffer(*self.plan.feeds.last().expect("validated"));
        if b.dtype() != DType::F32 {
            return Err(ExecError(
                "this plan trains with cross-entropy: it takes class labels".into(),
            ));
        }
        // SAFETY: as in `boundary_mut`.
        Ok(unsafe { self.mem.f32_mut(b) })
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
    pub fn train_step_observed(&mut self, observe: impl FnMut(&Buffer, &[f32])) -> f32 {
        self.run_training_step(observe, None)
    }

    /// A training step that adds each plan step's wall time, in seconds, to `seconds[i]`
    /// (one entry per plan step): where a step's time goes.
    pub fn train_step_timed(&mut self, seconds: &mut [f64]) -> f32 {
        self.run_training_step(|_, _| {}, Some(seconds))
    }

    fn run_training_step(
        &mut self,
        observe: impl FnMut(&Buffer, &[f32]),
        seconds: Option<&mut [f64]>,
    ) -> f32 {
        let ctx = step::UpdateCtx {
            lr: self.lr(),
            step: self.updates + 1,
        };
        let turn = self.turn();
        self.updates += 1;
        self.pacer.tick();
        let steps = self.plan.prefix_steps as usize..self.plan.steps.len();
        let (loss, paper_total) = self.run_steps(steps, turn, &ctx, observe, seconds);
        if !self.compression.is_empty() {
            self.paper_total.add(paper_total);
        }
        loss
    }

    /// The plan's own prefix (when it has one, see [`runs_prefix`]) on a batch of model
    /// input, one micro-batch at a time: afterwards the boundary tensors are in place for a
    /// step. Adds each prefix step's wall time to `seconds[i]` when given (indexed like the
    /// plan's steps).
    ///
    /// [`runs_prefix`]: Executor::runs_prefix
    pub fn run_prefix(&mut self, input: &[f32], seconds: Option<&mut [f64]>) {
        let per = self.plan.buffer(self.plan.input).numel();
        let micro_batch = self.plan.buffer(self.plan.input).shape[0].max(1) as usize;
        self.run_prefix_with(
            |first, micro| micro.copy_from_slice(&input[first / micro_batch * per..][..per]),
            seconds,
        );
    }

    /// [`Executor::run_prefix`] with each micro-batch's model input written straight into
    /// the plan's input buffer by `fill(first, input)`, `first` being the batch index of its
    /// first sample: the batch's input need never exist whole. With prefix lanes, one
    /// micro-batch per lane runs at a time, each on its own thread; `seconds` then gets lane
    /// 0's times, which the others run beside, times the lanes each thread takes in turn
    /// (two lanes on one thread take twice lane 0's time).
    pub fn run_prefix_with(
        &mut self,
        mut fill: impl FnMut(usize, &mut [f32]),
        mut seconds: Option<&mut [f64]>,
    ) {
        let ctx = step::UpdateCtx {
            lr: 0.0,
            step: self.updates.max(1),
        };
        let plan = &self.plan;
        let micro_batch = plan.buffer(plan.input).shape[0].max(1) as usize;
        let (from, to) = (plan.prefix_outputs[0], plan.feeds[0]);
        let micro_batches = plan.buffer(to).numel() / plan.buffer(from).numel();
        let steps = &plan.steps[..plan.prefix_steps as usize];
        let mut lanes: [(Option<View>, Option<&mut [f64]>); lanes::MAX_LANES] = Default::default();
        for first in (0..micro_batches).step_by(self.lanes.len()) {
            let count = self.lanes.len().min(micro_batches - first);
            for (l, view) in self.lanes[..count].iter().enumerate() {
                // SAFETY: no step is running; the input buffer is live before the first step.
                fill((first + l) * micro_batch, unsafe {
                    view.f32_mut(plan.buffer(plan.input))
                });
                lanes[l] = (Some(*view), None);
            }
            lanes[0].1 = seconds.take();
            let turns = count.div_ceil(threads::threads().min(count)) as f64;
            threads::for_each_mut(&mut lanes[..count], |_, (view, seconds)| {
                let view = view.as_ref().expect("filled above");
                for (i, s) in steps.iter().enumerate() {
                    let start = seconds.is_some().then(std::time::Instant::now);
                    // SAFETY: the plan was validated, its buffers planned disjoint while live,
                    // and each lane's view holds the prefix's buffers in bytes of its own.
                    unsafe { step::run(plan, s, view, &ctx) };
                    if let (Some(t), Some(start)) = (seconds.as_deref_mut(), start) {
                        t[i] += start.elapsed().as_secs_f64() * turns;
                    }
                }
            });
            for (l, view) in self.lanes[..count].iter().enumerate() {
                let r = first + l;
                for (&from, &to) in plan.prefix_outputs.iter().zip(&plan.feeds) {
                    let (from, to) = (plan.buffer(from), plan.buffer(to));
                    let n = from.numel();
                    // SAFETY: the boundary tensors are live through the prefix, in bytes no
                    // lane's prefix outputs use.
                    unsafe { self.mem.f32_mut(to)[r * n..][..n].copy_from_slice(view.f32(from)) };
                }
            }
            seconds = lanes[0].1.take();
        }
    }

    /// The turn of sequential freezing the next update is in (`None`: the plan trains
    /// every weight every step).
    pub fn turn(&self) -> Option<usize> {
        self.turns.as_ref().map(|t| t.turn(self.updates))
    }

    /// Tells a plan that rotates its frozen factors per epoch how many updates an epoch
    /// takes (other plans ignore it).
    pub fn set_epoch_steps(&mut self, steps: u64) {
        if let Some(t) = &mut self.turns {
            t.set_epoch(steps);
        }
    }

    /// Runs `steps` in order, less those `turn` leaves out; returns the loss (NaN if none of
    /// them computes it) and the paper's metric summed over the compressions they ran.
    fn run_steps(
        &mut self,
        steps: std::ops::Range<usize>,
        turn: Option<usize>,
        ctx: &step::UpdateCtx,
        mut observe: impl FnMut(&Buffer, &[f32]),
        mut seconds: Option<&mut [f64]>,
    ) -> (f32, u64) {
        let mut loss = f32::NAN;
        let mut paper_total = 0;
        let skipped = match (&self.turns, turn) {
            (Some(t), Some(turn)) => t.skipped(turn),
            _ => &[],
        };
        let runs = |i: usize| skipped.get(i) != Some(&true);
        let mut i = steps.start;
        while i < steps.end {
            if !runs(i) {
                i += 1;
                continue;
            }
            let beside = self.plan.steps[i].beside_next && i + 1 < steps.end && runs(i + 1);
            let count = 1 + usize::from(beside);
            let start = seconds.is_some().then(std::time::Instant::now);
            let mut ran = [step::Ran::Nothing, step::Ran::Nothing];
            let (plan, mem) = (&self.plan, &self.mem);
            // SAFETY: the plan was validated and its buffers planned disjoint while live; a
            // pair's steps were planned (and checked, `check_beside`) to touch no bytes the
            // other writes.
            threads::for_each_mut(&mut ran[..count], |k, r| {
                *r = unsafe { step::run(plan, &plan.steps[i + k], mem, ctx) }
            });
            if let (Some(t), Some(start)) = (seconds.as_deref_mut(), start) {
                // A pair's time, halved between its steps.
                let took = start.elapsed().as_secs_f64() / count as f64;
                t[i..i + count].iter_mut().for_each(|t| *t += took);
            }
            for (k, ran) in ran.into_iter().take(count).enumerate() {
                let s = &self.plan.steps[i + k];
                match ran {
                    step::Ran::Loss(l) => loss = l,
                    step::Ran::Compressed(r) => {
                        if let (Some(Kind::Compress(c)), Some(slot)) =
                            (s.kind(), self.compression_of[i + k])
                        {
                            let bytes = c.paper_bytes(&r);
                            self.compression[slot].record(&r, bytes);
                            paper_total += bytes as u64;
                        }
                    }
                    step::Ran::Nothing => {}
                }
                for &o in &s.outputs {
                    let b = self.plan.buffer(o);
                    if b.kind() == BufferKind::WeightGradient {
                        // SAFETY: no step is running; a shared read.
                        observe(b, unsafe { self.mem.f32(b) });
                    }
                }
            }
            i += count;
        }
        (loss, paper_total)
    }

    /// Each compression step's ranks and memory since the last [`reset_compression_stats`].
    ///
    /// [`reset_compression_stats`]: Executor::reset_compression_stats
    pub fn compression_stats(&self) -> &[CompressionStats] {
        &self.compression
    }

    /// The paper's metric summed over the compressed layers: per-step mean and peak.
    pub fn paper_total(&self) -> Tally {
        self.paper_total
    }

    pub fn reset_compression_stats(&mut self) {
        for c in self.compression.iter_mut() {
            c.rank_sum = [0; 4];
            c.rank_min = [usize::MAX; 4];
            c.rank_max = [0; 4];
            c.truncated = 0;
            c.paper_bytes = Tally::default();
        }
        self.paper_total = Tally::default();
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
            // Compressed forms and masks serve only the backward pass.
            .filter(|s| {
                s.phase() == Phase::Forward
                    && !matches!(s.kind(), Some(Kind::Compress(_) | Kind::PassMask(_)))
            })
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

    /// The plan with its weights replaced by the current ones: what `eval` and `export` read.
    pub fn snapshot(&mut self) -> Result<Plan, ExecError> {
        self.with_current_weights(None, true, |p, _, _| p.clone())
    }

    /// A checkpoint that a run resumes from, as plan-file bytes: [`Executor::snapshot`] with
    /// `progress` and the optimizer's and compressions' state among the weights (what the
    /// next update reads besides the weights; [`Executor::open`] loads them back like
    /// weights).
    pub fn checkpoint_bytes(&mut self, progress: Progress) -> Result<Vec<u8>, ExecError> {
        self.with_current_weights(Some(progress), true, |p, _, _| p.to_bytes())
    }

    /// The plan file of [`Executor::snapshot`] (without `progress`) or of
    /// [`Executor::checkpoint_bytes`], written into `w` as it is encoded, without a copy of
    /// the plan or a plan-sized buffer in between (what `train` saves each epoch).
    pub fn write_checkpoint(
        &mut self,
        progress: Option<Progress>,
        w: &mut impl std::io::Write,
    ) -> Result<(), ExecError> {
        self.with_current_weights(progress, false, |plan, mem, file| {
            let weights = std::mem::take(&mut plan.weights);
            let written = {
                let plan = &*plan;
                // SAFETY: `&mut self` is held and no step is running: nothing writes the
                // weights while they are read.
                let data = |w: &Weight| unsafe { mem.raw(plan.buffer(w.buffer)) };
                plan.write_with(w, &weights, data, file)
            };
            plan.weights = weights;
            written
        })?
        .map_err(|e| ExecError(format!("cannot write the plan: {e}")))
    }

    /// Sets the length of the run the lr schedule spans (a run whose length was not known
    /// when the executor was made).
    pub fn set_total_steps(&mut self, total_steps: u64) {
        self.schedule = schedule_of(&self.plan, total_steps);
    }

    /// The trainable weights, in the plan's order: the ONNX initializer each came from, its
    /// shape and its current values.
    pub fn trainable(&self) -> impl Iterator<Item = (&str, &[u64], &[f32])> {
        self.plan.weights.iter().filter_map(|w| {
            let b = self.plan.buffer(w.buffer);
            // SAFETY: shared borrow of `self`; no step is running.
            (b.kind() == BufferKind::Trainable).then(|| {
                (w.source.as_str(), b.shape.as_slice(), unsafe {
                    self.mem.f32(b)
                })
            })
        })
    }

    /// The values of the trainable weight from ONNX initializer `name`, to overwrite.
    pub fn trainable_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let w = self.plan.weights.iter().find(|w| w.source == name)?;
        let b = self.plan.buffer(w.buffer);
        // SAFETY: as in `boundary_mut`.
        (b.kind() == BufferKind::Trainable).then(|| unsafe { self.mem.f32_mut(b) })
    }

    /// Continues the count of updates of a resumed run (the lr schedule's position and
    /// Adam's bias correction).
    pub fn resume_at(&mut self, updates: u64) {
        self.updates = updates;
    }

    /// Runs `f` on the plan as a file would hold it now: with `progress` (and the state
    /// buffers among the weights) and, with `copy`, every weight's current values in its
    /// `data` and the ONNX parts read back from the plan file; else `f` reads those from
    /// the memory and the plan file (if any: a plan made in memory holds its parts) it is
    /// given.
    fn with_current_weights<T>(
        &mut self,
        progress: Option<Progress>,
        copy: bool,
        f: impl FnOnce(&mut Plan, &Memory, Option<&PlanFile>) -> T,
    ) -> Result<T, ExecError> {
        let Executor {
            plan, mem, file, ..
        } = self;
        let weights = plan.weights.len();
        if progress.is_some() {
            let state: Vec<Weight> = (0..plan.buffers.len() as u32)
                .filter(|&b| is_state(plan.buffer(b)))
                .map(|b| Weight {
                    buffer: b,
                    source: plan.buffer(b).name.clone(),
                    data: Vec::new(),
                })
                .collect();
            plan.weights.extend(state);
            plan.progress = progress;
        }
        if copy {
            for w in &mut plan.weights {
                w.data = mem.bytes_of(&plan.buffers[w.buffer as usize]).to_vec();
            }
        }
        let parts = file
            .as_ref()
            .filter(|_| copy)
            .map(|f| Ok::<_, std::io::Error>((f.prefix_onnx()?, f.rest_onnx()?)))
            .transpose();
        let out = parts.map(|parts| {
            if let Some((prefix, rest)) = parts {
                (plan.prefix_onnx, plan.rest_onnx) = (prefix, rest);
            }
            f(plan, mem, file.as_ref().filter(|_| !copy))
        });
        plan.weights.truncate(weights);
        plan.progress = None;
        plan.weights.iter_mut().for_each(|w| w.data = Vec::new());
        if file.is_some() {
            (plan.prefix_onnx, plan.rest_onnx) = Default::default();
        }
        out.map_err(|e| ExecError(format!("cannot read the plan file again: {e}")))
    }
}

/// The plan's lr schedule over a run of `total_steps` updates.
fn schedule_of(plan: &Plan, total_steps: u64) -> LrSchedule {
    let hyper = plan.hyper.clone().unwrap_or_default();
    match hyper.schedule() {
        Schedule::Constant => LrSchedule::Constant,
        Schedule::Cosine => LrSchedule::Cosine { total_steps },
        Schedule::LinearWarmup => LrSchedule::LinearWarmup {
            warmup_steps: hyper.warmup_steps as u64,
            total_steps,
        },
    }
}

/// What the optimizer and the compressions carry from step to step.
fn is_state(b: &Buffer) -> bool {
    matches!(
        b.kind(),
        BufferKind::OptimizerState | BufferKind::CompressorState
    )
}

fn validate(plan: &Plan, weight_len: impl Fn(usize) -> u64) -> Result<(), ExecError> {
    let bad = |what: String| {
        Err(ExecError(format!(
            "invalid plan: {what}; recompile the model"
        )))
    };
    let n = plan.buffers.len() as u32;
    if plan.memory.is_none() || plan.feeds.is_empty() {
        return bad("no memory plan or no inputs".into());
    }
    // No machine maps more (48-bit addresses): sizes below this leave the kernels' index
    // arithmetic, which multiplies a few of them, far from overflowing.
    let m = plan.memory.clone().unwrap_or_default();
    if m.arena
        .checked_add(m.persistent)
        .is_none_or(|b| b > 1 << 48)
    {
        return bad("the plan needs more memory than any machine addresses".into());
    }
    for s in &plan.steps {
        if s.kind().is_none() {
            return bad(format!(
                "step {} has no operation (written by a newer actc?)",
                s.name
            ));
        }
        if matches!(s.kind(), Some(Kind::ConvClip(cc)) if cc.conv.is_none()) {
            return bad(format!("step {} is a fused conv without its conv", s.name));
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
    // Every buffer's size follows from its shape and type, and it lies inside its region:
    // kernels index by shape, so a size that does not fit the shape reaches other memory.
    for b in &plan.buffers {
        let region = if b.kind().is_persistent() {
            m.persistent
        } else {
            m.arena
        };
        let bytes = b
            .shape
            .iter()
            .try_fold(b.dtype().size() as u64, |n, &d| n.checked_mul(d));
        if bytes != Some(b.bytes) {
            return bad(format!(
                "buffer {} holds {} bytes, but its shape {:?} needs another size",
                b.name, b.bytes, b.shape
            ));
        }
        if b.offset.checked_add(b.bytes).is_none_or(|end| end > region) {
            return bad(format!("buffer {} lies outside its region", b.name));
        }
        if !b.offset.is_multiple_of(b.dtype().size() as u64) {
            return bad(format!("buffer {} is not aligned to its type", b.name));
        }
        // The N-d kernels walk shapes of at most MAX_RANK axes; an empty axis makes a
        // tensor whose geometry divides by zero.
        if b.shape.len() > MAX_RANK || b.shape.contains(&0) {
            return bad(format!("buffer {} has shape {:?}", b.name, b.shape));
        }
        if b.kind() == BufferKind::Loss && b.numel() != 1 {
            return bad("the loss is not a scalar".into());
        }
    }
    let prefix = plan.prefix_steps as usize;
    if prefix > plan.steps.len()
        || plan
            .steps
            .iter()
            .enumerate()
            .any(|(i, s)| (i < prefix) != (s.phase() == Phase::Prefix))
    {
        return bad("the prefix steps are not the leading steps".into());
    }
    if prefix > 0 {
        let batch = plan.hyper.as_ref().map_or(0, |h| h.batch as usize);
        let m = plan.prefix_batch as usize;
        let whole = |micro: u32, full: u32| {
            micro < n
                && full < n
                && plan.buffer(micro).numel() * batch == plan.buffer(full).numel() * m
        };
        let input_len = plan
            .source
            .as_ref()
            .map_or(0, |s| s.input_shape.iter().product::<u64>());
        if m == 0
            || !batch.is_multiple_of(m)
            || plan.input >= n
            || plan.buffer(plan.input).kind() != BufferKind::Input
            || plan.buffer(plan.input).dtype() != DType::F32
            || plan.buffer(plan.input).numel() as u64 * batch as u64 != input_len * m as u64
        {
            return bad("the prefix has no float model input of its micro-batch".into());
        }
        if plan.prefix_outputs.is_empty()
            || plan.prefix_outputs.len() + 1 != plan.feeds.len()
            || plan
                .prefix_outputs
                .iter()
                .zip(&plan.feeds)
                .any(|(&a, &b)| !whole(a, b))
        {
            return bad("the prefix outputs do not match the boundary tensors".into());
        }
    }
    for (i, s) in plan.steps.iter().enumerate() {
        let checked = check_compression(plan, s)
            .and_then(|()| check_chain(plan, s))
            .and_then(|()| check_fused_update(plan, s))
            .and_then(|()| step::check(plan, s))
            .and_then(|()| check_disjoint(plan, s))
            .and_then(|()| check_beside(plan, i));
        if let Err(e) = checked {
            return bad(format!("step {}: {e}", s.name));
        }
    }
    if plan
        .feeds
        .iter()
        .chain([&plan.loss, &plan.output])
        .chain(&plan.prefix_outputs)
        .any(|&b| b >= n)
    {
        return bad("a feed or output names a buffer that does not exist".into());
    }
    // The runtime writes the feeds as floats (the last one: or labels) and the prefix's
    // outputs into the boundary tensors, each in bytes of its own.
    let (labels, boundary) = plan.feeds.split_last().expect("checked above");
    let feeds_typed = boundary
        .iter()
        .chain(&plan.prefix_outputs)
        .all(|&b| plan.buffer(b).dtype() == DType::F32)
        && matches!(plan.buffer(*labels).dtype(), DType::F32 | DType::U32)
        && plan.buffer(plan.output).dtype() == DType::F32;
    let distinct = |ids: &[u32]| (1..ids.len()).all(|i| !ids[..i].contains(&ids[i]));
    let fed: Vec<u32> = plan
        .feeds
        .iter()
        .chain(&plan.prefix_outputs)
        .copied()
        .collect();
    if !feeds_typed || !distinct(&fed) || overlapping(plan, fed.into_iter()).is_some() {
        return bad("the feeds are not float tensors (and labels) in bytes of their own".into());
    }
    if !plan.prefix_lanes.is_empty() {
        if prefix == 0 {
            return bad("prefix lanes without prefix steps".into());
        }
        if let Err(e) = lanes::check(plan) {
            return bad(e);
        }
    }
    for (i, w) in plan.weights.iter().enumerate() {
        if w.buffer >= n
            || plan.buffer(w.buffer).bytes != weight_len(i)
            || !plan.buffer(w.buffer).kind().is_persistent()
        {
            return bad(format!("weight {} does not fit its buffer", w.source));
        }
    }
    Ok(())
}

/// A step's buffers lie in bytes of their own, as the planner lays out buffers that are
/// live at once: a kernel holds its outputs as `&mut` beside its inputs. Only an output
/// that [`step::shares_input`] may be its input's very bytes.
fn check_disjoint(plan: &Plan, s: &crate::plan::Step) -> Result<(), String> {
    let reshape = step::shares_input(s);
    let written: Vec<u32> = s.outputs.iter().chain(&s.workspace).copied().collect();
    let aliased = (0..written.len())
        .any(|i| written[..i].contains(&written[i]) || s.inputs.contains(&written[i]));
    if aliased && !reshape {
        return Err("a buffer it writes is also one it reads or writes".into());
    }
    let shared = |a: &Buffer, b: &Buffer| reshape && a.offset == b.offset && a.bytes == b.bytes;
    match overlapping(plan, lanes::step_buffers(s)) {
        Some((a, b)) if !shared(a, b) => Err(format!("buffers {} and {} overlap", a.name, b.name)),
        _ => Ok(()),
    }
}

/// A step that runs beside the next ([`crate::plan::Step::beside_next`]): both are
/// compressions after the prefix, the next one is not paired again, and they share no
/// bytes but the map both may read.
fn check_beside(plan: &Plan, i: usize) -> Result<(), String> {
    let s = &plan.steps[i];
    if !s.beside_next {
        return Ok(());
    }
    let Some(next) = plan.steps.get(i + 1) else {
        return Err("runs beside a next step, but it is the last".into());
    };
    let compression = |s: &crate::plan::Step| {
        matches!(s.kind(), Some(Kind::Compress(_))) && s.phase() != Phase::Prefix
    };
    if !compression(s) || !compression(next) || next.beside_next {
        return Err(format!(
            "runs beside {}, but only two compressions run side by side",
            next.name
        ));
    }
    let ids = |s| lanes::step_buffers(s).collect::<Vec<u32>>();
    let (a, b) = (ids(s), ids(next));
    let read_by_both = |id: &u32| s.inputs.first() == Some(id) && next.inputs.first() == Some(id);
    if a.iter().any(|id| b.contains(id) && !read_by_both(id)) {
        return Err(format!(
            "shares a buffer with {}, which runs beside it",
            next.name
        ));
    }
    match overlapping(plan, a.into_iter().chain(b)) {
        Some((x, y)) => Err(format!(
            "buffers {} and {} overlap, but the steps run side by side",
            x.name, y.name
        )),
        None => Ok(()),
    }
}

/// Two of the distinct buffers `ids` whose bytes overlap, if any.
fn overlapping(plan: &Plan, ids: impl Iterator<Item = u32>) -> Option<(&Buffer, &Buffer)> {
    let mut ids: Vec<u32> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    for (i, &a) in ids.iter().enumerate() {
        for &b in &ids[i + 1..] {
            let (a, b) = (plan.buffer(a), plan.buffer(b));
            if a.kind().is_persistent() == b.kind().is_persistent()
                && a.offset < b.offset + b.bytes
                && b.offset < a.offset + a.bytes
            {
                return Some((a, b));
            }
        }
    }
    None
}

/// A fused chain's stages against what `kernels::chain` assumes: shapes that chain from
/// the input to the output, stages it can run, a band height, lanes, scratch.
fn check_chain(plan: &Plan, s: &crate::plan::Step) -> Result<(), String> {
    let Some(Kind::ConvChain(cc)) = s.kind() else {
        return Ok(());
    };
    let shape = |b: Option<&u32>| b.map(|&b| &plan.buffer(b).shape[..]);
    let ch = geom::chain(cc, |i| shape(s.inputs.get(i)))
        .filter(|ch| ch.inputs == s.inputs.len())
        .ok_or("a fused chain whose inputs do not chain")?;
    let stages = ch.stages();
    let last = &stages[stages.len() - 1];
    let out = [last.n, last.c_out, last.out_h(), last.out_w()].map(|d| d as u64);
    if shape(s.outputs.first()) != Some(&out[..])
        || (cc.residual && shape(s.inputs.first()) != Some(&out[..]))
    {
        return Err("a fused chain whose output is not its last stage's".into());
    }
    let int8_fits = stages
        .iter()
        .zip(&cc.stages)
        .all(|(g, s)| !s.int8 || g.is_pointwise());
    if stages.len() < 2
        || !int8_fits
        || !stages
            .iter()
            .enumerate()
            .all(|(i, g)| chain::stage_fits(g, i == 0))
        || cc.rows == 0
        || !(1..=chain::MAX_LANES).contains(&(cc.lanes as usize))
    {
        return Err("a fused chain the kernel cannot run".into());
    }
    let want = chain::workspace_len(stages, cc.rows as usize, cc.lanes as usize) as u64;
    match s.workspace.map(|b| plan.buffer(b)) {
        Some(b) if b.numel() as u64 >= want => Ok(()),
        _ => Err(format!(
            "a fused chain without its {want} floats of scratch"
        )),
    }
}

/// A weight gradient fused into its SGD update: a conv that is not depthwise (whose weight
/// gradient has no product to store through), SGD without Nesterov, the momentum buffer
/// when there is momentum. A compressed input is checked with the other compressions.
fn check_fused_update(plan: &Plan, s: &crate::plan::Step) -> Result<(), String> {
    let Some(Kind::ConvBackwardWeightSgd(cs)) = s.kind() else {
        return Ok(());
    };
    let (Some(c), Some(sgd)) = (&cs.conv, &cs.sgd) else {
        return Err("a fused weight update without its conv or optimizer".into());
    };
    let inputs = 3 + usize::from(sgd.momentum != 0.0);
    let shape = |i: usize| &plan.buffer(s.inputs[i]).shape[..];
    let x = cs.compressor.as_ref().map_or(shape(0), |c| &c.shape[..]);
    let fits = !sgd.nesterov
        && s.inputs.len() == inputs
        && x.len() == 4
        && shape(2).len() == 4
        && !geom::conv(c, x, shape(2)).is_depthwise();
    if fits {
        Ok(())
    } else {
        Err("a fused weight update the kernels cannot run".into())
    }
}

/// A compression step's attributes against what its kernels assume: a method they know,
/// a compressed buffer of the size the caps give, a fused form that exists.
fn check_compression(plan: &Plan, s: &crate::plan::Step) -> Result<(), String> {
    let kind = s.kind();
    let (c, packed, fused) = match kind {
        Some(Kind::Compress(c)) => (c, s.outputs.first(), None),
        Some(Kind::Decompress(c)) => (c, s.inputs.first(), Some(false)),
        Some(Kind::ConvBackwardWeightCompressed(cc)) => match (&cc.conv, &cc.compressor) {
            (Some(_), Some(c)) => (c, s.inputs.first(), Some(true)),
            _ => return Err("a fused conv gradient without its conv or compressor".into()),
        },
        Some(Kind::ConvBackwardWeightSgd(cs)) => match &cs.compressor {
            Some(c) => (c, s.inputs.first(), Some(true)),
            None => return Ok(()),
        },
        Some(Kind::LinearGradWCompressed(cl)) => match &cl.compressor {
            Some(c) => (c, s.inputs.first(), Some(false)),
            None => return Err("a fused dense gradient without its compressor".into()),
        },
        _ => return Ok(()),
    };
    c.check()?;
    let fuses = |conv| c.fuses_into(conv);
    match (kind, fused) {
        (Some(Kind::Decompress(_)), _) if fuses(true) && !fuses(false) => {
            return Err("gradient filtering has no decompressed form".into());
        }
        (
            Some(
                Kind::ConvBackwardWeightCompressed(_)
                | Kind::ConvBackwardWeightSgd(_)
                | Kind::LinearGradWCompressed(_),
            ),
            Some(conv),
        ) if !fuses(conv) => {
            return Err("this compressor has no fused weight gradient here".into());
        }
        _ => {}
    }
    if matches!(kind, Some(Kind::Compress(_))) {
        let state = s.inputs.get(1).map(|&b| plan.buffer(b));
        match (c.state_len(), state) {
            (0, None) => {}
            (n, Some(b)) if n > 0 && b.numel() == n && b.kind() == BufferKind::CompressorState => {}
            (n, _) => return Err(format!("a compression whose state is not {n} elements")),
        }
    }
    let want = c.packed_len();
    match packed.map(|&b| plan.buffer(b)) {
        Some(b) if b.numel() == want => Ok(()),
        _ => Err(format!("compressed buffer is not {want} elements")),
    }
}
