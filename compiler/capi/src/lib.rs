//! The C API, `libactc`: training in process from C (or any language with a C FFI) through
//! opaque handles, over the compiler package's [`Trainer`](actc_compiler::driver::trainer::Trainer).
//! The header, `include/actc.h`, is generated from this crate by cbindgen (`tests/header.rs`
//! keeps it current) and says the conventions C sees.
//!
//! Each exported function checks its arguments (`args`), looks its handle up in the
//! registry of open trainers (`registry`) and runs in `status::guard`, which turns the
//! outcome, a panic included, into a status code and the message `actc_last_error` gives.
//! The functions are in `trainer` (open, shapes, steps, save, export), `weights` and
//! `process` (threads, version, last error).

mod args;
pub mod process;
mod registry;
pub mod status;
pub mod trainer;
pub mod weights;

#[cfg(test)]
mod tests;
