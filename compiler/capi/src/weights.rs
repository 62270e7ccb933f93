//! The trainable weights, by ONNX initializer name: listing them, reading and overwriting.

use crate::args;
use crate::registry;
use crate::status::{Failure, guard};
use crate::trainer::ActcTrainer;
use std::ffi::{c_char, c_int};

/// Sets `*count` to how many trainable weights the plan has (they are numbered from 0 for
/// `actc_trainer_weight_name`).
///
/// # Safety
/// `count` points to a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_weight_count(
    trainer: ActcTrainer,
    count: *mut usize,
) -> c_int {
    guard("actc_trainer_weight_count", || {
        // SAFETY: the caller's promise.
        let count = unsafe { args::out(count, "count")? };
        count.set(registry::with(trainer, |o| Ok(o.weights.len()))?);
        Ok(())
    })
}

/// Copies the name of trainable weight `index` (its ONNX initializer's name), NUL-terminated,
/// into `buf`, which has room for `cap` bytes; `*needed` is set to the bytes it takes, the
/// NUL included. With `buf` NULL and `cap` 0, only `*needed` is set; when `cap` is too small,
/// `*needed` is set and the call fails with `ACTC_ERR_ARGUMENT`.
///
/// # Safety
/// `buf` is NULL (with `cap` 0) or has room for `cap` bytes; `needed` points to a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_weight_name(
    trainer: ActcTrainer,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    guard("actc_trainer_weight_name", || {
        // SAFETY (both): the caller's promises, as this function's doc says.
        let buf = unsafe { args::sized_room(buf, cap, "buf")? };
        let needed = unsafe { args::out(needed, "needed")? };
        let name = registry::with(trainer, |o| match o.weights.get(index) {
            Some(w) => Ok(w.name.clone()),
            None => Err(Failure::argument(format!(
                "weight {index}: this plan trains {} weights, numbered from 0",
                o.weights.len()
            ))),
        })?;
        let text: Vec<c_char> = name.bytes().chain([0]).map(|b| b as c_char).collect();
        args::give(&text, buf, &needed, ["buf", "needed"])
    })
}

/// The shape of the trainable weight `name`: its rank in `*rank` and its dimensions in
/// `dims`, as `actc_trainer_input_shape` gives a shape.
///
/// # Safety
/// `name` is a NUL-terminated string; `dims` is NULL (with `cap` 0) or has room for `cap`
/// values; `rank` points to a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_weight_shape(
    trainer: ActcTrainer,
    name: *const c_char,
    dims: *mut usize,
    cap: usize,
    rank: *mut usize,
) -> c_int {
    guard("actc_trainer_weight_shape", || {
        // SAFETY (every call): the caller's promises, as this function's doc says.
        let name = unsafe { args::text(name, "name")? };
        let dims = unsafe { args::sized_room(dims, cap, "dims")? };
        let rank = unsafe { args::out(rank, "rank")? };
        let shape = registry::with(trainer, |o| Ok(o.weight(name)?.shape.clone()))?;
        args::give(&shape, dims, &rank, ["dims", "rank"])
    })
}

/// Sets `*len` to how many values the trainable weight `name` holds (its shape's product).
///
/// # Safety
/// `name` is a NUL-terminated string; `len` points to a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_weight_len(
    trainer: ActcTrainer,
    name: *const c_char,
    len: *mut usize,
) -> c_int {
    guard("actc_trainer_weight_len", || {
        // SAFETY (both): the caller's promises, as this function's doc says.
        let name = unsafe { args::text(name, "name")? };
        let len = unsafe { args::out(len, "len")? };
        len.set(registry::with(trainer, |o| {
            Ok(o.weight(name)?.shape.iter().product())
        })?);
        Ok(())
    })
}

/// Copies the current values of the trainable weight `name` (row-major, as in the ONNX
/// initializer) into `dst`, which holds exactly `actc_trainer_weight_len` values.
///
/// # Safety
/// `name` is a NUL-terminated string; `dst` has room for `len` values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_get_weight(
    trainer: ActcTrainer,
    name: *const c_char,
    dst: *mut f32,
    len: usize,
) -> c_int {
    guard("actc_trainer_get_weight", || {
        // SAFETY (both): the caller's promises, as this function's doc says.
        let name = unsafe { args::text(name, "name")? };
        let dst = unsafe { args::room(dst, len, "dst")? };
        registry::with(trainer, |o| {
            let shape = &o.weight(name)?.shape;
            check_len(name, shape, len, "dst")?;
            // The trainer hands out copies of all its weights at once, not one by reference.
            let (_, _, values) = o
                .trainer
                .weights()
                .into_iter()
                .find(|w| w.0 == name)
                .expect("a weight the plan listed");
            dst.fill(&values);
            Ok(())
        })
    })
}

/// Overwrites the trainable weight `name` with the `len` values at `src` (exactly
/// `actc_trainer_weight_len` of them, finite). The optimizer's state is kept.
///
/// # Safety
/// `name` is a NUL-terminated string; `src` points to `len` values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn actc_trainer_set_weight(
    trainer: ActcTrainer,
    name: *const c_char,
    src: *const f32,
    len: usize,
) -> c_int {
    guard("actc_trainer_set_weight", || {
        // SAFETY (both): the caller's promises, as this function's doc says.
        let name = unsafe { args::text(name, "name")? };
        let src = unsafe { args::array(src, len, "src")? };
        registry::with(trainer, |o| {
            let shape = o.weight(name)?.shape.clone();
            check_len(name, &shape, len, "src")?;
            Ok(o.trainer.set_weight(name, &shape, src)?)
        })
    })
}

fn check_len(name: &str, shape: &[usize], len: usize, what: &str) -> Result<(), Failure> {
    let want: usize = shape.iter().product();
    if len != want {
        return Err(Failure::argument(format!(
            "{what} holds {len} values; weight '{name}' has shape {shape:?} ({want} values)"
        )));
    }
    Ok(())
}
