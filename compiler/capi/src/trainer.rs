//! Opening a plan, its shapes, the steps, checkpoints and export.

use crate::args;
use crate::registry::{self, Open, Weight};
use crate::status::{Failure, guard};
use actc_compiler::driver::trainer::{Targets, Trainer};
use std::ffi::{c_char, c_int};
use std::path::Path;

/// A trainer: a plan opened for training. 0 is never a trainer.
pub type ActcTrainer = u64;

/// Opens the plan file at `plan_path` (compiled by `actc compile`, or a checkpoint saved by
/// `actc train` or `actc_trainer_save`, whose weights, optimizer state and update count it
/// goes on from) and puts its handle in `*out`; on failure `*out` is set to 0.
///
/// # Safety
/// `plan_path` is a NUL-terminated string; `out` points to room for a handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_open(
    plan_path: *const c_char,
    out: *mut ActcTrainer,
) -> c_int {
    guard("actc_trainer_open", || {
        // SAFETY (every call below): the caller's promises, as this function's doc says.
        let out = unsafe { args::out(out, "out")? };
        // A failure after this leaves 0, which close accepts: cleanup needs no extra flag.
        out.set(0);
        let path = unsafe { args::text(plan_path, "plan_path")? };
        let bytes = std::fs::read(path)
            .map_err(|e| Failure::failed(format!("{path}: cannot read: {e}")))?;
        let mut trainer = Trainer::new(&bytes, path)?;
        let weights = trainer
            .weights()
            .into_iter()
            .map(|(name, shape, _)| Weight { name, shape })
            .collect();
        out.set(registry::insert(Open { trainer, weights })?);
        Ok(())
    })
}

/// Closes `trainer` and frees what it holds. Closing 0 does nothing (and succeeds), so a
/// handle that `actc_trainer_open` failed to fill can be closed like any other; closing a
/// closed handle is `ACTC_ERR_HANDLE`. A call another thread is making on the trainer at
/// that moment still finishes, and the trainer is freed after it; later calls on the handle
/// are refused.
#[unsafe(no_mangle)]
pub extern "C" fn actc_trainer_close(trainer: ActcTrainer) -> c_int {
    guard("actc_trainer_close", || match trainer {
        0 => Ok(()),
        h => registry::remove(h),
    })
}

/// The model input's shape, the batch first (the batch size is compiled into the plan):
/// its rank in `*rank` and its dimensions in `dims`, which has room for `cap` of them. With
/// `dims` NULL and `cap` 0, only `*rank` is set; when `cap` is too small, `*rank` is set and
/// the call fails with `ACTC_ERR_ARGUMENT`.
///
/// # Safety
/// `dims` is NULL (with `cap` 0) or has room for `cap` values; `rank` points to a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_input_shape(
    trainer: ActcTrainer,
    dims: *mut usize,
    cap: usize,
    rank: *mut usize,
) -> c_int {
    // SAFETY: the caller's promises, as this function's doc says.
    unsafe {
        give_shape("actc_trainer_input_shape", trainer, dims, cap, rank, |t| {
            t.input_shape()
        })
    }
}

/// The trained output's shape, the batch first, as `actc_trainer_input_shape` gives it:
/// what `actc_trainer_predict` fills and what regression targets hold.
///
/// # Safety
/// As for `actc_trainer_input_shape`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_output_shape(
    trainer: ActcTrainer,
    dims: *mut usize,
    cap: usize,
    rank: *mut usize,
) -> c_int {
    // SAFETY: the caller's promises, as `actc_trainer_input_shape`'s doc says.
    unsafe {
        give_shape("actc_trainer_output_shape", trainer, dims, cap, rank, |t| {
            t.output_shape()
        })
    }
}

/// A shape of the trainer's plan through the `(dims, cap, rank)` triple, for the function
/// `name`.
///
/// # Safety
/// `dims` is NULL (with `cap` 0) or has room for `cap` values; `rank` points to a `size_t`.
unsafe fn give_shape(
    name: &str,
    trainer: ActcTrainer,
    dims: *mut usize,
    cap: usize,
    rank: *mut usize,
    shape: impl Fn(&mut actc_compiler::driver::trainer::Trainer) -> Vec<usize>,
) -> c_int {
    guard(name, || {
        // SAFETY (both): this function's promises.
        let dims = unsafe { args::sized_room(dims, cap, "dims")? };
        let rank = unsafe { args::out(rank, "rank")? };
        let shape = registry::with(trainer, |o| Ok(shape(&mut o.trainer)))?;
        args::give(&shape, dims, &rank, ["dims", "rank"])
    })
}

/// Sets `*classes` to whether the plan's steps take class labels (a plan compiled with
/// cross-entropy: `actc_trainer_train_step`, `actc_trainer_eval_step`) or float targets
/// shaped like the output (`--loss mse`: the `_targets` steps).
///
/// # Safety
/// `classes` points to a `bool`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_takes_classes(
    trainer: ActcTrainer,
    classes: *mut bool,
) -> c_int {
    guard("actc_trainer_takes_classes", || {
        // SAFETY: the caller's promise.
        let classes = unsafe { args::out(classes, "classes")? };
        classes.set(registry::with(trainer, |o| Ok(o.trainer.takes_classes()))?);
        Ok(())
    })
}

/// Sets `*updates` to the optimizer updates taken so far (a checkpoint's count included).
///
/// # Safety
/// `updates` points to a `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_updates(trainer: ActcTrainer, updates: *mut u64) -> c_int {
    guard("actc_trainer_updates", || {
        // SAFETY: the caller's promise.
        let updates = unsafe { args::out(updates, "updates")? };
        updates.set(registry::with(trainer, |o| Ok(o.trainer.updates()))?);
        Ok(())
    })
}

/// Sets how many updates a plan's lr schedule (`--schedule cosine` or `linear-warmup`)
/// spans when steps are taken one by one; without it the lr stays at its start (after any
/// warm-up).
#[unsafe(no_mangle)]
pub extern "C" fn actc_trainer_set_total_steps(trainer: ActcTrainer, total: u64) -> c_int {
    guard("actc_trainer_set_total_steps", || {
        registry::with(trainer, |o| {
            o.trainer.set_total_steps(total);
            Ok(())
        })
    })
}

/// One training step (forward, loss, backward, optimizer update) on a batch with class
/// labels: `inputs` holds the whole input shape's values (row-major, the batch first),
/// `labels` one class index per sample. The batch's loss goes to `*loss`.
///
/// # Safety
/// `inputs` and `labels` point to `n_inputs` and `n_labels` values; `loss` to a `float`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_train_step(
    trainer: ActcTrainer,
    inputs: *const f32,
    n_inputs: usize,
    labels: *const i64,
    n_labels: usize,
    loss: *mut f32,
) -> c_int {
    guard("actc_trainer_train_step", || {
        // SAFETY (every call): the caller's promises, as this function's doc says.
        let inputs = unsafe { args::array(inputs, n_inputs, "inputs")? };
        let labels = unsafe { args::array(labels, n_labels, "labels")? };
        let loss = unsafe { args::out(loss, "loss")? };
        let targets = Targets::Classes(labels);
        loss.set(registry::with(trainer, |o| {
            Ok(o.trainer.train_step(inputs, targets)?)
        })?);
        Ok(())
    })
}

/// One training step on a batch with float targets, for a plan compiled with `--loss mse`:
/// `targets` holds the output shape's values. The batch's loss goes to `*loss`.
///
/// # Safety
/// `inputs` and `targets` point to `n_inputs` and `n_targets` values; `loss` to a `float`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_train_step_targets(
    trainer: ActcTrainer,
    inputs: *const f32,
    n_inputs: usize,
    targets: *const f32,
    n_targets: usize,
    loss: *mut f32,
) -> c_int {
    guard("actc_trainer_train_step_targets", || {
        // SAFETY (every call): the caller's promises, as this function's doc says.
        let inputs = unsafe { args::array(inputs, n_inputs, "inputs")? };
        let targets = Targets::Values(unsafe { args::array(targets, n_targets, "targets")? });
        let loss = unsafe { args::out(loss, "loss")? };
        loss.set(registry::with(trainer, |o| {
            Ok(o.trainer.train_step(inputs, targets)?)
        })?);
        Ok(())
    })
}

/// The loss and accuracy of a batch with class labels, without training: the mean
/// cross-entropy over the batch in `*loss`, the share of samples whose top-scoring class is
/// their label in `*accuracy`.
///
/// # Safety
/// As for `actc_trainer_train_step`; `accuracy` points to a `float`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_eval_step(
    trainer: ActcTrainer,
    inputs: *const f32,
    n_inputs: usize,
    labels: *const i64,
    n_labels: usize,
    loss: *mut f32,
    accuracy: *mut f32,
) -> c_int {
    guard("actc_trainer_eval_step", || {
        // SAFETY (every call): the caller's promises, as this function's doc says.
        let inputs = unsafe { args::array(inputs, n_inputs, "inputs")? };
        let labels = unsafe { args::array(labels, n_labels, "labels")? };
        let loss = unsafe { args::out(loss, "loss")? };
        let accuracy = unsafe { args::out(accuracy, "accuracy")? };
        let targets = Targets::Classes(labels);
        let scores = registry::with(trainer, |o| Ok(o.trainer.eval_step(inputs, targets)?))?;
        loss.set(scores.loss as f32);
        accuracy.set(scores.accuracy.expect("class labels score an accuracy") as f32);
        Ok(())
    })
}

/// The loss of a batch with float targets (`--loss mse`) without training: the mean squared
/// error over every output value, in `*loss`.
///
/// # Safety
/// As for `actc_trainer_train_step_targets`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_eval_step_targets(
    trainer: ActcTrainer,
    inputs: *const f32,
    n_inputs: usize,
    targets: *const f32,
    n_targets: usize,
    loss: *mut f32,
) -> c_int {
    guard("actc_trainer_eval_step_targets", || {
        // SAFETY (every call): the caller's promises, as this function's doc says.
        let inputs = unsafe { args::array(inputs, n_inputs, "inputs")? };
        let targets = Targets::Values(unsafe { args::array(targets, n_targets, "targets")? });
        let loss = unsafe { args::out(loss, "loss")? };
        let scores = registry::with(trainer, |o| Ok(o.trainer.eval_step(inputs, targets)?))?;
        loss.set(scores.loss as f32);
        Ok(())
    })
}

/// The model output of a batch, without training, into `out`, which holds exactly the
/// output shape's values (see `actc_trainer_output_shape`).
///
/// # Safety
/// `inputs` points to `n_inputs` values; `out` has room for `out_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_predict(
    trainer: ActcTrainer,
    inputs: *const f32,
    n_inputs: usize,
    out: *mut f32,
    out_len: usize,
) -> c_int {
    guard("actc_trainer_predict", || {
        // SAFETY (both): the caller's promises, as this function's doc says.
        let inputs = unsafe { args::array(inputs, n_inputs, "inputs")? };
        let out = unsafe { args::room(out, out_len, "out")? };
        registry::with(trainer, |o| {
            let shape = o.trainer.output_shape();
            let want: usize = shape.iter().product();
            if out.len() != want {
                return Err(Failure::argument(format!(
                    "out holds {out_len} values; the output has shape {shape:?} ({want} values)"
                )));
            }
            out.fill(&o.trainer.predict(inputs)?);
            Ok(())
        })
    })
}

/// Saves a checkpoint at `plan_path`: the plan with the current weights, the optimizer's
/// state and the update count, which `actc_trainer_open` goes on from (and `actc eval`,
/// `actc export --weights` and `actc train` read). Written through a temporary file, so a
/// failure leaves no partial file.
///
/// # Safety
/// `plan_path` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_save(
    trainer: ActcTrainer,
    plan_path: *const c_char,
) -> c_int {
    guard("actc_trainer_save", || {
        // SAFETY: the caller's promise.
        let path = unsafe { args::text(plan_path, "plan_path")? };
        registry::with(trainer, |o| Ok(o.trainer.save(Path::new(path))?))
    })
}

/// Exports the fine-tuned model as ONNX at `onnx_path`, which any inference runtime runs
/// (as `actc export`; a model past protobuf's 2 GiB keeps its weights in a file beside it).
///
/// # Safety
/// `onnx_path` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_export(
    trainer: ActcTrainer,
    onnx_path: *const c_char,
) -> c_int {
    guard("actc_trainer_export", || {
        // SAFETY: the caller's promise.
        let path = unsafe { args::text(onnx_path, "onnx_path")? };
        registry::with(trainer, |o| Ok(o.trainer.export(Path::new(path), false)?))
    })
}
