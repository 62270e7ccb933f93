//! What holds for the whole process: the threads, the version, the last error's message.

use crate::status::{self, Failure, guard};
use std::ffi::{c_char, c_int};

/// Sets how many threads training uses in this process (by default, one per core): the
/// kernels' pool and the frozen prefix's. Call it before opening trainers: a pool already
/// started with fewer workers keeps its size. `n` is 1 to 1024.
#[unsafe(no_mangle)]
pub extern "C" fn actc_set_threads(n: usize) -> c_int {
    guard("actc_set_threads", || {
        actc_compiler::driver::cli::set_threads(n).map_err(|e| Failure::argument(e.0))
    })
}

/// The message of the last call that failed on this thread, naming the function, what was
/// wrong and what would work; "" before any call failed. The string belongs to actc and stays
/// valid until the next failing call on this thread (copy it to keep it); calls that
/// succeed leave it as it is. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn actc_last_error() -> *const c_char {
    status::last_error()
}

/// actc's version ("0.1.0"), a string that stays valid for the whole process.
#[unsafe(no_mangle)]
pub extern "C" fn actc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
