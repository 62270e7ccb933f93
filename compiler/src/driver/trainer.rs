//! Training in process, for the bindings (Python, C): a plan in memory, steps on the
//! caller's arrays, the trainable weights by ONNX initializer name, checkpoints and export;
//! `fit` is `actc train`'s loop on the trainer's own weights.

use crate::driver::data::{DataOptions, load_data, reads};
use crate::driver::fs::{check_output, write_atomically};
use crate::driver::run::{self, RunData, TrainOptions};
use crate::{ModelProto, Result, bail, err};
use actc_runtime::data::Dataset;
use actc_runtime::plan::{DType, Plan, Progress};
use actc_runtime::train::{Metrics, Session};
use std::path::Path;

/// What a step's batch is scored against.
#[derive(Clone, Copy)]
pub enum Targets<'a> {
    /// One class index per sample (a plan compiled with cross-entropy).
    Classes(&'a [i64]),
    /// Values shaped like the model output (a plan compiled with `--loss mse`).
    Values(&'a [f32]),
}

/// An evaluation step's result: the loss, and for class labels the share of samples whose
/// top-scoring class is the label.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub loss: f64,
    pub accuracy: Option<f64>,
}

pub struct Trainer {
    session: Session,
    /// Names the plan in messages.
    name: String,
    /// The plan file's CRC: what a run's checkpoints record of it.
    crc: u32,
}

impl Trainer {
    /// A trainer for the plan file `bytes` (a compiled plan, or a checkpoint saved by `train`
    /// or by [`Trainer::save`], whose optimizer state and update count it takes up);
    /// `name` names it in messages.
    pub fn new(bytes: &[u8], name: &str) -> Result<Trainer> {
        let mut plan = Plan::from_bytes(bytes).map_err(|e| err!("{name}: {e}"))?;
        let updates = plan.progress.take().map_or(0, |p| p.updates);
        let crc = bytes
            .last_chunk::<4>()
            .map_or(0, |c| u32::from_le_bytes(*c));
        // Steps taken one by one have no known end: a schedule then stays at its start
        // (after any warm-up) until `set_total_steps` or a fit gives it a length.
        let mut session = Session::new(plan, u64::MAX).map_err(|e| err!("{name}: {e}"))?;
        session.executor().resume_at(updates);
        Ok(Trainer {
            session,
            name: name.to_string(),
            crc,
        })
    }

    /// The model input's shape, the batch first.
    pub fn input_shape(&self) -> Vec<usize> {
        std::iter::once(self.session.batch())
            .chain(self.session.sample_shape().iter().copied())
            .collect()
    }

    /// The trained output's shape, the batch first.
    pub fn output_shape(&mut self) -> Vec<usize> {
        self.session.executor().output_shape()
    }

    /// Whether steps take class labels (else regression targets).
    pub fn takes_classes(&mut self) -> bool {
        let plan = self.session.executor().plan();
        plan.buffer(*plan.feeds.last().expect("validated")).dtype() == DType::U32
    }

    /// The number of updates the lr schedule (cosine, linear warm-up) spans, for steps taken
    /// one by one; `fit` sets it to its own run's length.
    pub fn set_total_steps(&mut self, total: u64) {
        self.session.executor().set_total_steps(total);
    }

    /// Updates taken so far.
    pub fn updates(&mut self) -> u64 {
        self.session.executor().updates()
    }

    /// The model input and the targets into the plan's memory, checked first.
    fn feed(&mut self, inputs: &[f32], targets: Option<Targets>) -> Result<()> {
        let shape = self.input_shape();
        let want: usize = shape.iter().product();
        if inputs.len() != want {
            bail!(
                "inputs hold {} values; this plan takes a batch of shape {shape:?} ({want} values): the batch size is compiled in",
                inputs.len()
            );
        }
        if let Some(i) = inputs.iter().position(|x| !x.is_finite()) {
            bail!(
                "inputs hold {} at index {i}; clean the data first",
                inputs[i]
            );
        }
        let out = self.output_shape();
        let classes = self.takes_classes();
        match targets {
            Some(Targets::Classes(labels)) => {
                if !classes {
                    bail!(
                        "this plan trains with --loss mse: pass float targets of shape {out:?}, not class labels"
                    );
                }
                let n = out.last().copied().unwrap_or(0);
                if labels.len() != shape[0] {
                    bail!("{} labels for a batch of {}", labels.len(), shape[0]);
                }
                if let Some(&l) = labels.iter().find(|&&l| l < 0 || l as usize >= n) {
                    bail!("label {l} is not a class of the model's {n} outputs");
                }
            }
            Some(Targets::Values(values)) => {
                if classes {
                    bail!(
                        "this plan trains with cross-entropy: pass one integer class label per sample, not float targets"
                    );
                }
                let want: usize = out.iter().product();
                if values.len() != want {
                    bail!(
                        "targets hold {} values; the trained output has shape {out:?} ({want} values)",
                        values.len()
                    );
                }
                if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                    bail!("targets hold {} at index {i}", values[i]);
                }
            }
            None => {}
        }
        let per: usize = shape[1..].iter().product();
        let sample = |r: usize, dst: &mut [f32]| dst.copy_from_slice(&inputs[r * per..][..per]);
        let name = &self.name;
        self.session
            .feed_inputs(&sample, None)
            .map_err(|e| err!("{name}: {e}"))?;
        let exec = self.session.executor();
        match targets {
            Some(Targets::Classes(labels)) => {
                let dst = exec.labels_mut().map_err(|e| err!("{e}"))?;
                for (d, &l) in dst.iter_mut().zip(labels) {
                    *d = l as u32;
                }
            }
            Some(Targets::Values(values)) => exec
                .targets_mut()
                .map_err(|e| err!("{e}"))?
                .copy_from_slice(values),
            None => {}
        }
        Ok(())
    }

    /// One training step (forward, loss, backward, update) on a batch; returns its loss.
    pub fn train_step(&mut self, inputs: &[f32], targets: Targets) -> Result<f32> {
        self.feed(inputs, Some(targets))?;
        let loss = self.session.executor().train_step();
        if !loss.is_finite() {
            bail!(
                "the loss became {loss} at update {}; lower the learning rate (compile with a smaller lr)",
                self.updates()
            );
        }
        Ok(loss)
    }

    /// The model output of a batch, as the trained output's shape says.
    pub fn predict(&mut self, inputs: &[f32]) -> Result<Vec<f32>> {
        self.feed(inputs, None)?;
        self.session.executor().forward();
        Ok(self.session.executor().output().to_vec())
    }

    /// The loss (and accuracy) of a batch without training: cross-entropy's mean over the
    /// batch, or the mean squared error over every output value.
    pub fn eval_step(&mut self, inputs: &[f32], targets: Targets) -> Result<Scores> {
        self.feed(inputs, Some(targets))?;
        self.session.executor().forward();
        let b = self.session.batch();
        Ok(match targets {
            Targets::Classes(labels) => {
                let (hits, loss) = self.session.score_labels(|r| labels[r] as usize, b);
                Scores {
                    loss: loss / b as f64,
                    accuracy: Some(hits as f64 / b as f64),
                }
            }
            Targets::Values(values) => {
                let out = self.session.executor().output();
                let sq: f64 = out
                    .iter()
                    .zip(values)
                    .map(|(&o, &t)| ((o - t) as f64).powi(2))
                    .sum();
                Scores {
                    loss: sq / out.len().max(1) as f64,
                    accuracy: None,
                }
            }
        })
    }

    /// The trainable weights: ONNX initializer name, shape, values.
    pub fn weights(&mut self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.session
            .executor()
            .trainable()
            .map(|(name, shape, values)| {
                let shape = shape.iter().map(|&d| d as usize).collect();
                (name.to_string(), shape, values.to_vec())
            })
            .collect()
    }

    /// Overwrites the trainable weight from initializer `name` with `values` of `shape`.
    pub fn set_weight(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        self.set_weights(&[(name, shape, values)])
    }

    /// Overwrites trainable weights (initializer name, shape, values); every one is checked
    /// before any is written.
    pub fn set_weights(&mut self, weights: &[(&str, &[usize], &[f32])]) -> Result<()> {
        for &(name, shape, values) in weights {
            self.check_weight(name, shape, values)?;
        }
        for &(name, _, values) in weights {
            let dst = self
                .session
                .executor()
                .trainable_mut(name)
                .expect("a checked trainable weight");
            dst.copy_from_slice(values);
        }
        Ok(())
    }

    fn check_weight(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        let known = self.weights_shape(name).ok_or_else(|| {
            let names: Vec<String> = self.weights().into_iter().map(|w| w.0).collect();
            err!(
                "'{name}' is not a trainable weight of this plan; it trains {}",
                names.join(", ")
            )
        })?;
        if known != shape {
            bail!("weight '{name}' has shape {known:?}, not {shape:?}");
        }
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            bail!("weight '{name}' holds {} at index {i}", values[i]);
        }
        Ok(())
    }

    fn weights_shape(&mut self, name: &str) -> Option<Vec<usize>> {
        self.session
            .executor()
            .trainable()
            .find(|w| w.0 == name)
            .map(|(_, shape, _)| shape.iter().map(|&d| d as usize).collect())
    }

    /// The plan with the current weights and the optimizer's state: what [`Trainer::new`]
    /// goes on from, and what `actc eval`, `actc export --weights` and `actc train` read.
    pub fn checkpoint(&mut self) -> Result<Vec<u8>> {
        let progress = Progress {
            updates: self.updates(),
            ..Progress::default()
        };
        self.session
            .executor()
            .checkpoint_bytes(progress)
            .map_err(|e| err!("{}: {e}", self.name))
    }

    /// Writes [`Trainer::checkpoint`] to `path` (through a temporary file).
    pub fn save(&mut self, path: &Path) -> Result<()> {
        check_output(path, &[])?;
        let bytes = self.checkpoint()?;
        write_atomically(path, &bytes)
    }

    /// The fine-tuned model as ONNX at `out` (see `actc export`).
    pub fn export(&mut self, out: &Path, external_data: bool) -> Result<()> {
        run::write_onnx(self.model()?, out, &[], external_data)
    }

    /// The fine-tuned model as ONNX.
    pub fn model(&mut self) -> Result<ModelProto> {
        let trained = self
            .session
            .executor()
            .snapshot()
            .map_err(|e| err!("{}: {e}", self.name))?;
        crate::export(&trained, &trained).map_err(|e| err!("{}: {}", self.name, e.0))
    }

    /// `actc eval` of these weights on `data` (read from `path`, else from `path`'s file),
    /// its samples prepared as `prep` says.
    pub fn evaluate(
        &mut self,
        data: Option<Dataset>,
        path: &Path,
        prep: &DataOptions,
    ) -> Result<Metrics> {
        let data = match data {
            Some(d) => d,
            None => {
                let what = reads(self.session.executor().plan());
                load_data(path, prep, &what)?
            }
        };
        run::evaluate(&mut self.session, &self.name, &data, path, prep)
    }

    /// `actc train`'s loop with `opts` on these weights, over `data` (else `opts.data` and
    /// `opts.val` are read); saves `SAVE.best.actc` and `SAVE.last.actc` only when
    /// `opts.save` names them. Returns the best validation accuracy, or for regression
    /// targets the lowest validation loss (`None` without validation data).
    pub fn fit(&mut self, opts: &TrainOptions, data: Option<RunData>) -> Result<Option<f64>> {
        if opts.resume {
            bail!(
                "resume: a trainer goes on from its own weights; to continue a saved run, load its checkpoint and fit again"
            );
        }
        let data = match data {
            Some(d) => d,
            None => {
                let what = reads(self.session.executor().plan());
                RunData::load(opts, &what)?
            }
        };
        let progress = Progress {
            run: Some(run::run_key(self.crc, opts, &data)),
            updates: self.updates(),
            ..Progress::default()
        };
        let paths = opts
            .save
            .as_deref()
            .map(|stem| run::save_paths(Path::new(""), Some(stem)));
        let save = paths.as_ref().map(|(b, l)| (b.as_path(), l.as_path()));
        let best = run::fit(
            &mut self.session,
            &self.name,
            &data,
            opts,
            progress,
            save,
            None,
        )?;
        // The run ranks epochs by a score where higher is better: a loss is negated there.
        Ok(best.map(|s| if self.takes_classes() { s } else { -s }))
    }
}
