//! Training and evaluation loops over a dataset: batches assembled from preprocessed samples,
//! the frozen prefix on actc's kernels (or tract), the suffix on the executor.

use crate::cache::PrefixCache;
use crate::data::{Dataset, Preprocess};
use crate::exec::{ExecError, Executor};
use crate::plan::{DType, Plan, PlanFile, Progress};
use crate::prefix::Prefix;
use std::time::Instant;

/// A plan ready to run: its prefix optimized, its memory allocated.
pub struct Session {
    exec: Executor,
    /// The prefix when tract runs it (`None` when the plan runs it itself, or has none).
    tract: Option<Prefix>,
    input_shape: Vec<usize>,
    /// One batch of preprocessed model input, for tract (reused for every batch; empty
    /// otherwise: the plan's own prefix takes its input a micro-batch at a time).
    input: Vec<f32>,
    /// Where the prefix's outputs land before they are copied into the arena (the arena may
    /// reuse a boundary buffer's memory during the step, so they cannot live there between
    /// steps).
    boundary: Vec<Vec<f32>>,
    cache: PrefixCache,
    /// How a regression's row of outputs splits into the trained outputs: each one's values
    /// and weight in the loss (one segment of weight 1 for a plan of one output).
    segments: Vec<(usize, f64)>,
    /// The trained outputs' names, beside `segments` when there are several.
    output_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy, or for regression targets the mean squared error (over several
    /// trained outputs, the weighted sum of each one's, as the loss).
    pub loss: f64,
    /// Top-1 accuracy (0 for regression targets).
    pub accuracy: f64,
    /// Mean absolute error of regression targets (0 for class labels).
    pub mae: f64,
    pub samples: usize,
    pub regression: bool,
    /// With several trained outputs, each one's name and mean squared error (unweighted),
    /// in the plan's order; empty otherwise.
    pub outputs: Vec<(String, f64)>,
}

impl Metrics {
    /// Higher is better: the accuracy, or for regression targets the negated loss (what a
    /// run's best epoch is chosen by).
    pub fn score(&self) -> f64 {
        if self.regression {
            -self.loss
        } else {
            self.accuracy
        }
    }
}

/// What a batch's rows scored: top-1 hits, summed per-sample loss, summed absolute error,
/// and with several trained outputs each one's summed per-sample squared error.
#[derive(Clone, Default)]
struct Tally {
    hits: usize,
    loss: f64,
    abs: f64,
    outputs: Vec<f64>,
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.hits += t.hits;
        self.loss += t.loss;
        self.abs += t.abs;
        add_into(&mut self.outputs, &t.outputs);
    }
}

/// `sums += more`, element by element (`sums` grown to fit: an empty tally adds to any).
fn add_into(sums: &mut Vec<f64>, more: &[f64]) {
    if sums.len() < more.len() {
        sums.resize(more.len(), 0.0);
    }
    sums.iter_mut().zip(more).for_each(|(s, m)| *s += m);
}

/// Some rows of a dataset.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a Dataset,
    pub rows: &'a [usize],
}

/// What a training run is: its data, its length, its order, how often it saves.
pub struct TrainRun<'a> {
    pub train: Rows<'a>,
    pub val: Rows<'a>,
    pub prep: &'a Preprocess,
    pub epochs: usize,
    pub seed: u64,
    /// Steps between checkpoints within an epoch (0: at the end of each epoch only).
    pub checkpoint_every: usize,
}

/// What the training loop reports as it goes.
pub enum Event<'a> {
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f32,
        /// The epoch's top-1 accuracy so far, or for regression targets its mean absolute
        /// error so far.
        score: f64,
        samples_per_s: f64,
        lr: f32,
    },
    Epoch {
        epoch: usize,
        train: Metrics,
        val: Metrics,
        seconds: f64,
        /// The validation accuracy is the best so far.
        improved: bool,
        session: &'a mut Session,
    },
    /// Time to save a checkpoint: the run stands at `progress` (after the epoch's report,
    /// at an epoch's end).
    Checkpoint {
        progress: Progress,
        session: &'a mut Session,
    },
}

impl Session {
    pub fn new(plan: Plan, total_updates: u64) -> Result<Session, ExecError> {
        Session::with_file(plan, None, total_updates)
    }

    /// [`Session::new`] for a plan from [`Plan::open`] (see [`Executor::open`]).
    pub fn open(plan: Plan, file: PlanFile, total_updates: u64) -> Result<Session, ExecError> {
        Session::with_file(plan, Some(file), total_updates)
    }

    fn with_file(
        plan: Plan,
        file: Option<PlanFile>,
        total_updates: u64,
    ) -> Result<Session, ExecError> {
        let src = plan.source.clone().unwrap_or_default();
        let input_shape: Vec<usize> = src.input_shape.iter().map(|&d| d as usize).collect();
        let prefix = |onnx: &[u8]| match src.inputs.is_empty() {
            true => Prefix::new(onnx, &input_shape),
            false => Prefix::packed(onnx, &src.inputs),
        };
        let tract = if plan.prefix_steps > 0 {
            None
        } else if let Some(f) = &file {
            let onnx = f
                .prefix_onnx()
                .map_err(|e| ExecError(format!("cannot read the frozen prefix: {e}")))?;
            (!onnx.is_empty()).then(|| prefix(&onnx)).transpose()?
        } else {
            (!plan.prefix_onnx.is_empty())
                .then(|| prefix(&plan.prefix_onnx))
                .transpose()?
        };
        let exec = match file {
            Some(f) => Executor::open(plan, f, total_updates)?,
            None => Executor::new(plan, total_updates)?,
        };
        let boundary = exec
            .boundary_shapes()
            .iter()
            .map(|s| vec![0.0; s.iter().product()])
            .collect();
        let input = match tract {
            Some(_) => vec![0.0; input_shape.iter().product()],
            None => Vec::new(),
        };
        let segments = segments_of(exec.plan());
        let output_names = (0..segments.len())
            .map(|k| match src.outputs.get(k) {
                Some(o) if src.outputs.len() == segments.len() => o.name.clone(),
                _ => format!("output {k}"),
            })
            .collect();
        Ok(Session {
            segments,
            output_names,
            input,
            exec,
            tract,
            input_shape,
            boundary,
            cache: PrefixCache::new(0),
        })
    }

    /// Caches boundary tensors as `cache` allows (by default nothing is cached).
    pub fn set_cache(&mut self, cache: PrefixCache) {
        self.cache = cache;
    }

    pub fn cache(&mut self) -> &mut PrefixCache {
        &mut self.cache
    }

    pub fn batch(&self) -> usize {
        self.input_shape[0]
    }

    pub fn executor(&mut self) -> &mut Executor {
        &mut self.exec
    }

    /// Per-sample input shape of the model (without the batch).
    pub fn sample_shape(&self) -> &[usize] {
        &self.input_shape[1..]
    }

    /// Runs the prefix on the batch whose model input `sample(r, dst)` writes (sample `r`
    /// into `dst`), and writes the boundary tensors and `labels` into the executor: what
    /// every step needs first. With `seconds`, adds the wall time of each of the plan's own
    /// prefix steps there (indexed like the plan's steps).
    pub fn feed(
        &mut self,
        sample: &(dyn Fn(usize, &mut [f32]) + Sync),
        labels: impl Fn(usize) -> u32,
        seconds: Option<&mut [f64]>,
    ) -> Result<(), ExecError> {
        self.feed_inputs(sample, seconds)?;
        self.write_labels(labels)
    }

    /// [`Session::feed`] without the labels: the caller writes them (or a regression's
    /// targets) into the executor.
    pub fn feed_inputs(
        &mut self,
        sample: &(dyn Fn(usize, &mut [f32]) + Sync),
        seconds: Option<&mut [f64]>,
    ) -> Result<(), ExecError> {
        self.run_prefix(sample, seconds)?;
        self.write_boundaries();
        Ok(())
    }

    /// The model input, sample by sample, through the prefix into `boundary`. The plan's own
    /// prefix takes it a micro-batch at a time, written straight into its input buffer: a
    /// whole batch of input (4.8 MB at 8×3×224²) is never held.
    fn run_prefix(
        &mut self,
        sample: &(dyn Fn(usize, &mut [f32]) + Sync),
        seconds: Option<&mut [f64]>,
    ) -> Result<(), ExecError> {
        let per: usize = self.sample_shape().iter().product();
        match &self.tract {
            Some(p) => {
                fill_samples(&mut self.input, 0, per, sample);
                let boundary = &mut self.boundary;
                p.run(&self.input, |k, v| boundary[k].copy_from_slice(v))?;
            }
            None if self.exec.runs_prefix() => {
                let fill = |first, micro: &mut [f32]| fill_samples(micro, first, per, sample);
                self.exec.run_prefix_with(fill, seconds);
                for (k, b) in self.boundary.iter_mut().enumerate() {
                    b.copy_from_slice(self.exec.boundary(k));
                }
            }
            None => fill_samples(&mut self.boundary[0], 0, per, sample),
        }
        Ok(())
    }

    /// `boundary` into the executor.
    fn write_boundaries(&mut self) {
        for (k, b) in self.boundary.iter().enumerate() {
            self.exec.boundary_mut(k).copy_from_slice(b);
        }
    }

    fn write_labels(&mut self, labels: impl Fn(usize) -> u32) -> Result<(), ExecError> {
        for (r, l) in self.exec.labels_mut()?.iter_mut().enumerate() {
            *l = labels(r);
        }
        Ok(())
    }

    /// Feeds the batch of `rows`; rows beyond `rows.len()` repeat the last sample (a short
    /// final batch in evaluation). From the cache when it holds every sample of the batch,
    /// else through preprocessing and the prefix (then caching what the budget allows).
    pub fn load(
        &mut self,
        data: &Dataset,
        prep: &Preprocess,
        rows: &[usize],
    ) -> Result<(), ExecError> {
        let b = self.batch();
        let row = |r: usize| rows[r.min(rows.len() - 1)];
        let cached = (0..b).all(|r| self.cache.holds(data, prep, row(r)));
        if cached {
            for r in 0..b {
                self.cache
                    .read(data, prep, row(r), &mut self.boundary, r, b)
                    .map_err(|e| ExecError(format!("cannot read the prefix cache's file: {e}")))?;
            }
            self.cache.hits += b;
        } else {
            self.run_prefix(&|r, dst| data.write_sample(row(r), prep, dst), None)?;
            if self.cache.enabled() {
                for (r, &i) in rows.iter().take(b).enumerate() {
                    self.cache.store(data, prep, i, &self.boundary, r, b);
                }
            }
            self.cache.misses += b;
        }
        self.write_boundaries();
        if self.regression() {
            let per = data
                .target_shape()
                .map_or(0, |s| s.iter().product::<usize>());
            let targets = self.exec.targets_mut()?;
            for r in 0..b {
                targets[r * per..(r + 1) * per].copy_from_slice(data.target(row(r)));
            }
            Ok(())
        } else {
            self.write_labels(|r| data.label(row(r)))
        }
    }

    /// Whether the plan trains on regression targets (`--loss mse`), not class labels.
    pub fn regression(&self) -> bool {
        let plan = self.exec.plan();
        plan.buffer(*plan.feeds.last().expect("validated")).dtype() == DType::F32
    }

    /// What the first `valid` rows of the output scored against `rows` of `data`.
    fn score(&self, data: &Dataset, rows: &[usize], valid: usize) -> Tally {
        if !self.regression() {
            let (hits, loss) = self.score_labels(|r| data.label(rows[r]) as usize, valid);
            return Tally {
                hits,
                loss,
                ..Tally::default()
            };
        }
        let out = self.exec.output();
        let per = out.len() / self.batch();
        let several = self.segments.len() > 1;
        let mut t = Tally {
            outputs: vec![0.0; if several { self.segments.len() } else { 0 }],
            ..Tally::default()
        };
        for (r, &i) in rows.iter().enumerate().take(valid) {
            let (mut row, mut target) = (&out[r * per..(r + 1) * per], data.target(i));
            let mut abs = 0.0f64;
            for (k, &(len, weight)) in self.segments.iter().enumerate() {
                let len = len.min(row.len()).min(target.len());
                let mut sq = 0.0f64;
                for (&o, &y) in row[..len].iter().zip(&target[..len]) {
                    let d = (o - y) as f64;
                    sq += d * d;
                    abs += d.abs();
                }
                let mse = sq / len.max(1) as f64;
                t.loss += weight * mse;
                if several {
                    t.outputs[k] += mse;
                }
                (row, target) = (&row[len..], &target[len..]);
            }
            t.abs += abs / per.max(1) as f64;
        }
        t
    }

    /// Top-1 hits and the summed cross-entropy of the output's first `valid` rows, row
    /// `r`'s class being `label(r)`.
    pub fn score_labels(&self, label: impl Fn(usize) -> usize, valid: usize) -> (usize, f64) {
        let out = self.exec.output();
        let classes = out.len() / self.batch();
        let (mut hits, mut loss) = (0, 0.0f64);
        for r in 0..valid {
            let z = &out[r * classes..(r + 1) * classes];
            let label = label(r);
            let best = z
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k);
            hits += (best == Some(label)) as usize;
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            loss += lse - z.get(label).copied().unwrap_or(0.0) as f64;
        }
        (hits, loss)
    }

    /// Loss and top-1 accuracy over `rows` of `data` (every row counted once).
    pub fn evaluate(
        &mut self,
        data: &Dataset,
        prep: &Preprocess,
        rows: &[usize],
    ) -> Result<Metrics, ExecError> {
        self.check_data(data)?;
        let mut sum = Tally::default();
        for chunk in rows.chunks(self.batch()) {
            self.load(data, prep, chunk)?;
            self.exec.forward();
            sum.add(&self.score(data, chunk, chunk.len()));
        }
        let n = rows.len().max(1) as f64;
        Ok(Metrics {
            loss: sum.loss / n,
            accuracy: sum.hits as f64 / n,
            mae: sum.abs / n,
            samples: rows.len(),
            regression: self.regression(),
            outputs: self.named(&sum.outputs, n),
        })
    }

    /// Per-output sums over `n` samples as each output's name and mean.
    fn named(&self, sums: &[f64], n: f64) -> Vec<(String, f64)> {
        self.output_names
            .iter()
            .zip(sums)
            .map(|(name, s)| (name.clone(), s / n))
            .collect()
    }

    /// Refuses data whose kind of target the plan does not train on: class labels for a
    /// `--loss mse` plan, regression targets (or ones of another size) for cross-entropy.
    pub fn check_data(&self, data: &Dataset) -> Result<(), ExecError> {
        let out = self.exec.output_shape();
        let per: usize = out[1..].iter().product();
        match (self.regression(), data.target_shape()) {
            (false, Some(_)) => Err(ExecError(format!(
                "{}: holds regression targets, but this plan trains with cross-entropy on class labels",
                data.source().display()
            ))),
            (true, None) => Err(ExecError(format!(
                "{}: holds class labels, but this plan trains with --loss mse on float targets of shape {:?} per sample",
                data.source().display(),
                &out[1..]
            ))),
            (true, Some(s)) if s.iter().product::<usize>() != per => Err(ExecError(format!(
                "{}: its targets have shape {s:?} per sample; the trained output has {:?} ({per} values)",
                data.source().display(),
                &out[1..]
            ))),
            _ => Ok(()),
        }
    }

    /// Trains as `run` says, from where `from` left off (`Progress::default()`: the start),
    /// evaluating `run.val` after each epoch. Each epoch shuffles the order of the one
    /// before with `seed + epoch`; a final partial batch is dropped, as the batch size is
    /// compiled in. `on` hears every step, epoch and checkpoint; an `Err` from it stops
    /// training there with that message (a log or checkpoint that cannot be written, a
    /// divergence).
    pub fn train(
        &mut self,
        run: &TrainRun,
        from: Progress,
        mut on: impl FnMut(Event) -> Result<(), String>,
    ) -> Result<(), ExecError> {
        let (data, train_rows) = (run.train.data, run.train.rows);
        self.check_data(data)?;
        self.check_data(run.val.data)?;
        let b = self.batch();
        let steps = train_rows.len() / b;
        if steps == 0 {
            return Err(ExecError(format!(
                "{} training samples do not fill one batch of {b}; compile with a smaller --batch",
                train_rows.len()
            )));
        }
        let mut at = from;
        if at.steps_done as usize >= steps {
            return Err(ExecError(format!(
                "the checkpoint is at step {} of an epoch of {steps} steps: it comes from other data or another batch size",
                at.steps_done
            )));
        }
        self.exec.resume_at(at.updates);
        self.exec.set_epoch_steps(steps as u64);
        let mut order = train_rows.to_vec();
        for epoch in 1..=at.epochs_done as usize {
            crate::data::split::shuffle(&mut order, run.seed.wrapping_add(epoch as u64));
        }
        for epoch in at.epochs_done as usize + 1..=run.epochs {
            crate::data::split::shuffle(&mut order, run.seed.wrapping_add(epoch as u64));
            let start = Instant::now();
            let first = at.steps_done as usize;
            for step in first..steps {
                let rows = &order[step * b..(step + 1) * b];
                self.load(data, run.prep, rows)?;
                let lr = self.exec.lr();
                let loss = self.exec.train_step();
                if !loss.is_finite() {
                    return Err(ExecError(format!(
                        "the loss became {loss} at epoch {epoch}, step {}; lower --lr",
                        step + 1
                    )));
                }
                // The plan keeps the output alive to the end of the step, so it still holds
                // this batch's logits from before the update.
                let t = self.score(data, rows, b);
                at.hits += t.hits as u64;
                at.abs_error_sum += t.abs;
                add_into(&mut at.output_sq_sums, &t.outputs);
                at.loss_sum += loss as f64;
                at.steps_done += 1;
                at.updates = self.exec.updates();
                let seen = (at.steps_done as usize * b) as f64;
                on(Event::Step {
                    epoch,
                    step: step + 1,
                    steps,
                    loss,
                    score: match self.regression() {
                        true => at.abs_error_sum / seen,
                        false => at.hits as f64 / seen,
                    },
                    samples_per_s: ((step + 1 - first) * b) as f64
                        / start.elapsed().as_secs_f64().max(1e-9),
                    lr,
                })
                .map_err(ExecError)?;
                let due = run.checkpoint_every > 0 && (step + 1) % run.checkpoint_every == 0;
                if due && step + 1 < steps {
                    on(Event::Checkpoint {
                        progress: at.clone(),
                        session: self,
                    })
                    .map_err(ExecError)?;
                }
            }
            // The samples this epoch's dropped partial batch held are in later epochs'
            // batches: through the prefix once now, they do not force whole batches back
            // through it then.
            let leftover = &order[steps * b..];
            if epoch == 1 && self.cache.enabled() && !leftover.is_empty() {
                self.load(data, run.prep, leftover)?;
            }
            let seconds = start.elapsed().as_secs_f64();
            let train = Metrics {
                loss: at.loss_sum / steps as f64,
                accuracy: at.hits as f64 / (steps * b) as f64,
                mae: at.abs_error_sum / (steps * b) as f64,
                samples: steps * b,
                regression: self.regression(),
                outputs: self.named(&at.output_sq_sums, (steps * b) as f64),
            };
            let val = if run.val.rows.is_empty() {
                Metrics::default()
            } else {
                self.evaluate(run.val.data, run.prep, run.val.rows)?
            };
            // Without validation data there is no best epoch: each one counts as improved,
            // so the last one is kept, and no score is recorded.
            let validated = !run.val.rows.is_empty();
            let improved = !validated || at.best.is_none_or(|best| val.score() > best);
            if improved && validated {
                at.best = Some(val.score());
            }
            (at.epochs_done, at.steps_done, at.hits, at.loss_sum) = (epoch as u32, 0, 0, 0.0);
            at.abs_error_sum = 0.0;
            at.output_sq_sums.clear();
            on(Event::Epoch {
                epoch,
                train,
                val,
                seconds,
                improved,
                session: self,
            })
            .map_err(ExecError)?;
            on(Event::Checkpoint {
                progress: at.clone(),
                session: self,
            })
            .map_err(ExecError)?;
        }
        Ok(())
    }
}

/// Each trained output's values per sample and weight in the loss, from the plan's MSE step;
/// one segment of weight 1 for a plan of one output (or of class labels).
fn segments_of(plan: &Plan) -> Vec<(usize, f64)> {
    let whole = || {
        let out = &plan.buffer(plan.output).shape;
        vec![(out.iter().skip(1).product::<u64>() as usize, 1.0)]
    };
    let mse = plan.steps.iter().find_map(|s| match &s.op.as_ref()?.kind {
        Some(crate::ops::Kind::Mse(m)) => Some(m),
        _ => None,
    });
    match mse {
        Some(m) if !m.sizes.is_empty() => m
            .sizes
            .iter()
            .zip(&m.weights)
            .map(|(&n, &w)| (n as usize, w as f64))
            .collect(),
        _ => whole(),
    }
}

/// Samples `first..` of the model input into `dst` (`per` floats each), in parallel:
/// resizing to the model's input is the first epoch's largest cost after the prefix
/// (224×224 from 28×28).
fn fill_samples(
    dst: &mut [f32],
    first: usize,
    per: usize,
    sample: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let n = dst.len() / per;
    let parts = crate::threads::parts_for(dst.len() * 16);
    crate::threads::for_runs(dst, n, per, 1, parts, |run, out| {
        for (r, d) in run.zip(out.chunks_exact_mut(per)) {
            sample(first + r, d);
        }
    });
}
