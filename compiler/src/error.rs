//! One error type for everything the compiler rejects. Every message names the file, node or
//! flag at fault and, where one exists, what would work instead; the CLI prints it as one
//! line and exits with code 2.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// `bail!("node {name}: …")` returns an [`Error`] from the current function.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error(format!($($arg)*)))
    };
}

/// Builds an [`Error`] without returning, for `ok_or_else` and `map_err`.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::Error(format!($($arg)*))
    };
}
