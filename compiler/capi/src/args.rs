//! The C arguments as Rust values, checked first: NULL, misalignment, lengths past what any
//! array can hold and strings that are not UTF-8 are refused, never dereferenced.

use crate::status::{Failure, Result};
use std::ffi::{CStr, c_char};

fn check<T>(ptr: *const T, what: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(Failure::argument(format!("{what} is NULL")));
    }
    if !ptr.is_aligned() {
        return Err(Failure::argument(format!(
            "{what} is not aligned to {} bytes, as its type needs",
            align_of::<T>()
        )));
    }
    Ok(())
}

fn check_len<T>(len: usize, what: &str) -> Result<()> {
    if len > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(Failure::argument(format!(
            "{what} is said to hold {len} values, more than any array can"
        )));
    }
    Ok(())
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives the call.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    check(ptr, what)?;
    // SAFETY: not NULL, and the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|e| {
        Failure::argument(format!(
            "{what} is not UTF-8 (byte {} of '{}'); pass UTF-8 text",
            e.valid_up_to(),
            bytes.to_string_lossy()
        ))
    })
}

/// An array argument of `len` values.
///
/// # Safety
/// `ptr` is NULL or points to `len` initialized values that nothing writes during the call.
pub(crate) unsafe fn array<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    check(ptr, what)?;
    check_len::<T>(len, what)?;
    // SAFETY: not NULL, aligned, a size an array can have; the caller promises the values.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Room for `len` values that the call fills. Only written, never read: the caller's
/// memory may be uninitialized.
pub(crate) struct Room<T> {
    ptr: *mut T,
    len: usize,
}

impl<T: Copy> Room<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes `values` at the start of the room.
    pub fn fill(self, values: &[T]) {
        assert!(values.len() <= self.len, "the room was measured first");
        // SAFETY: `room` checked the pointer and the caller promised `len` values' room.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr, values.len()) }
    }
}

/// A buffer argument: room for `len` values.
///
/// # Safety
/// `ptr` is NULL or points to room for `len` values that nothing else reads or writes
/// during the call.
pub(crate) unsafe fn room<T>(ptr: *mut T, len: usize, what: &str) -> Result<Room<T>> {
    check(ptr, what)?;
    check_len::<T>(len, what)?;
    Ok(Room { ptr, len })
}

/// Where a call puts one result; only written, like [`Room`].
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    pub fn set(&self, value: T) {
        // SAFETY: `out` checked the pointer and the caller promised the room.
        unsafe { self.0.write(value) }
    }
}

/// Where a call puts one result.
///
/// # Safety
/// `ptr` is NULL or points to room for a `T` that nothing else uses during the call.
pub(crate) unsafe fn out<T>(ptr: *mut T, what: &str) -> Result<Out<T>> {
    check(ptr, what)?;
    Ok(Out(ptr))
}

/// A `(buf, cap, needed)` argument triple's buffer: NULL with `cap` 0 asks for the size alone.
///
/// # Safety
/// As for [`room`], with `cap` values.
pub(crate) unsafe fn sized_room<T>(ptr: *mut T, cap: usize, what: &str) -> Result<Option<Room<T>>> {
    if ptr.is_null() && cap == 0 {
        return Ok(None);
    }
    // SAFETY: the caller's promise.
    unsafe { room(ptr, cap, what) }.map(Some)
}

/// Gives `values` through a `(buf, cap, needed)` triple, whose parts C names `names`:
/// `needed` is set even when `buf` is too small, so the caller learns what to allocate.
pub(crate) fn give<T: Copy>(
    values: &[T],
    buf: Option<Room<T>>,
    needed: &Out<usize>,
    names: [&str; 2],
) -> Result<()> {
    needed.set(values.len());
    let [buf_name, needed_name] = names;
    match buf {
        None => Ok(()),
        Some(room) if room.len() < values.len() => Err(Failure::argument(format!(
            "{buf_name} has room for {} and this needs {}, as *{needed_name} now says",
            room.len(),
            values.len()
        ))),
        Some(room) => {
            room.fill(values);
            Ok(())
        }
    }
}
