//! What holds for the whole process: the threads, the version, the last error's message.

use crate::status::{self, Failure, guard};
use std::ffi::{c_char, c_int};

/// More threads than any device has cores: a typo, not a request (as `actc --threads`).
const MAX_THREADS: usize = 1024;

/// Sets how many threads training uses in this process (by default, one per core): the
/// kernels' pool and the frozen prefix's. Call it before opening trainers: a pool already
/// started with fewer workers keeps its size. `n` is 1 to 1024.
#[unsafe(no_mangle)]
pub extern "C" fn actc_set_threads(n: usize) -> c_int {
    guard("actc_set_threads", || {
        if n == 0 || n > MAX_THREADS {
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            return Err(Failure::argument(format!(
                "{n} threads: give 1 to {MAX_THREADS}, at most the cores you have ({cores} here)"
            )));
        }
        actc_runtime::threads::set_threads(n);
        actc_runtime::prefix::set_threads(n);
        Ok(())
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
