//! What every call returns (a status code), the message kept for the last failed call on each
//! thread, and the wrapper that turns a call's body into both, panics included.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The call succeeded.
pub const ACTC_OK: c_int = 0;
/// An argument was unusable before the trainer looked at it: a NULL pointer, a pointer not
/// aligned for its type, a string that is not UTF-8, an output buffer or weight array of the
/// wrong size, an unknown weight name or index, a thread count out of range.
pub const ACTC_ERR_ARGUMENT: c_int = 1;
/// actc could not do what was asked: a plan file that cannot be read or is not a plan of this
/// version, a batch that does not fit the plan (counts of inputs, labels or targets; NaN or
/// infinite values; labels out of range; labels for a `--loss mse` plan or the reverse), a
/// loss that became infinite, a file that cannot be written.
pub const ACTC_ERR_FAILED: c_int = 2;
/// The trainer handle is not open: 0, closed already, or never returned by
/// `actc_trainer_open`.
pub const ACTC_ERR_HANDLE: c_int = 3;
/// A bug in actc stopped the call (a panic, caught before it reached the caller). A trainer
/// it happened in refuses further calls with this code: close it and open the plan again.
pub const ACTC_ERR_INTERNAL: c_int = 4;

/// Why a call failed: its status code and a message for `actc_last_error`.
pub(crate) struct Failure {
    pub code: c_int,
    pub message: String,
}

impl Failure {
    pub fn argument(message: impl Into<String>) -> Failure {
        Failure {
            code: ACTC_ERR_ARGUMENT,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: ACTC_ERR_FAILED,
            message: message.into(),
        }
    }
}

/// actc's own errors, whose text is the message.
impl From<actc_compiler::Error> for Failure {
    fn from(e: actc_compiler::Error) -> Failure {
        Failure::failed(e.0)
    }
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Runs the body of the C function `name`: its status code, with the message kept for
/// `actc_last_error` when it fails. No panic crosses into the caller's frames.
pub(crate) fn guard(name: &str, body: impl FnOnce() -> Result<()>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ACTC_OK,
        Ok(Err(failure)) => {
            keep_error(name, &failure.message);
            failure.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic");
            keep_error(
                name,
                &format!("internal error, a bug in actc (please report it): {what}"),
            );
            ACTC_ERR_INTERNAL
        }
    }
}

fn keep_error(name: &str, message: &str) {
    // A C string ends at its first NUL: a name from a model could hold one and cut the rest.
    let text = format!("{name}: {message}").replace('\0', "\\0");
    let text = CString::new(text).expect("NULs were escaped");
    // During the thread's own teardown the slot is gone; the status code still tells.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = Some(text));
}

/// The message of the last failed call on this thread, "" before any.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|last| last.borrow().as_ref().map_or(c"".as_ptr(), |m| m.as_ptr()))
        .unwrap_or(c"".as_ptr())
}
