//! Data-loading errors. Each names the file it is about: a training run reads several files
//! (images, labels, a validation set), and "truncated" alone would not say which.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum DataError {
    /// The file or folder could not be read at all.
    Io { path: PathBuf, source: io::Error },
    /// It was read, but its contents are not a data set actc can use.
    Invalid { path: PathBuf, reason: String },
    /// The data set is sound but cannot feed the model's input as asked.
    Incompatible { path: PathBuf, reason: String },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn incompatible(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Incompatible {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            DataError::Io { path, .. }
            | DataError::Invalid { path, .. }
            | DataError::Incompatible { path, .. } => path,
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path().display();
        match self {
            // The OS wording ("No such file or directory (os error 2)") adds nothing here.
            DataError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                write!(f, "{path}: not found")
            }
            DataError::Io { source, .. } => write!(f, "{path}: {source}"),
            DataError::Invalid { reason, .. } | DataError::Incompatible { reason, .. } => {
                write!(f, "{path}: {reason}")
            }
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
