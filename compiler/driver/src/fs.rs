//! Writing the files the commands make (plans, trained weights, exported models, IR dumps).

use actc::{Result, bail, err};
use std::io::Write;
use std::path::Path;

/// Writes through a temporary file in the same folder and renames it, so a failure never
/// leaves a partial file behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err!("{}: cannot write: {e}", path.display()));
    }
    Ok(())
}

/// Refuses an output path that names one of the command's inputs, or anything but a
/// regular file (a folder, a device): writing there would destroy what the command reads,
/// or put a file in a device's place.
pub fn check_output(out: &Path, inputs: &[&Path]) -> Result<()> {
    let Ok(meta) = std::fs::metadata(out) else {
        return Ok(());
    };
    if !meta.is_file() {
        bail!(
            "{}: exists and is not a regular file; give a new path or a file to replace",
            out.display()
        );
    }
    let real = out.canonicalize().ok();
    if let Some(input) = inputs.iter().find(|i| i.canonicalize().ok() == real) {
        bail!(
            "{}: is the input {}, which writing it would destroy; give another output path",
            out.display(),
            input.display()
        );
    }
    Ok(())
}
