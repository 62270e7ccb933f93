//! Writing the files the commands make (plans, trained weights, exported models, IR dumps).

use crate::{Result, bail, err};
use std::io::Write;
use std::path::Path;

/// Writes through a temporary file in the same folder and renames it, so a failure never
/// leaves a partial file behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |f| f.write_all(bytes))
}

/// [`write_atomically`] of what `write` writes into the temporary file (a plan encoded
/// straight into it, say).
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err!("{}: not a file path", path.display()))?;
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    remove_stale(dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| write(&mut f).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path))
        // The rename itself reaches the disk with the folder's entry: without this a power
        // loss may bring back the old file, or none. Folders that cannot be synced (some
        // network file systems) still had the rename.
        .map(|_| {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err!("{}: cannot write: {e}", path.display()));
    }
    Ok(())
}

/// Removes the temporary files a killed run left for this target: `<prefix><pid>` whose
/// process is gone (a kill during a save left 6–18 MB that nothing cleaned).
fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let gone = pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        });
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
