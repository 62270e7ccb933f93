//! The prefix cache: boundary tensors per sample, kept after the first epoch. With no data
//! augmentation they are a pure function of the sample (DESIGN §2), so later epochs cost only
//! the trainable suffix. Samples are kept in memory up to a budget, then in a spill file up to
//! a second budget; the rest go through the prefix every time.

use crate::data::{Dataset, Preprocess};
use std::fs::File;
use std::path::{Path, PathBuf};

pub struct PrefixCache {
    memory_budget: usize,
    memory_used: usize,
    spill: Option<Spill>,
    /// One entry per data set (and preprocessing): training and validation data differ.
    entries: Vec<CacheEntry>,
    /// Samples served from the cache, and computed by the prefix, since the last reset.
    pub hits: usize,
    pub misses: usize,
}

/// Samples beyond the memory budget, in a file the cache alone knows: unlinked as soon as it
/// is made, so neither a crash nor a kill leaves it behind. Reads come from the page cache
/// while the machine has memory to spare, and that memory is not the process's.
struct Spill {
    dir: PathBuf,
    budget: usize,
    used: usize,
    file: Option<File>,
    /// Set when the file could not be made or written: nothing more is spilled (what was
    /// written stays readable).
    stopped: bool,
    /// Why it stopped, until reported.
    failure: Option<String>,
    /// One sample's bytes on their way to or from the file.
    scratch: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Place {
    /// Index of the sample among those of the entry held in memory.
    Memory(u32),
    /// Index of the sample in the spill file (shared by all entries).
    Disk(u32),
}

struct CacheEntry {
    dataset: u64,
    prep: Preprocess,
    /// Per sample of the data set: where it is kept, if it is.
    place: Vec<Option<Place>>,
    /// Per boundary tensor: the values of the samples kept in memory, one after another.
    values: Vec<Vec<f32>>,
}

impl PrefixCache {
    /// A cache of at most `memory_budget` bytes in memory (0 turns it off) and no spill file.
    pub fn new(memory_budget: usize) -> PrefixCache {
        PrefixCache {
            memory_budget,
            memory_used: 0,
            spill: None,
            entries: Vec::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Keeps up to `budget` more bytes in a file in `dir` once the memory budget is spent.
    pub fn spill_to(mut self, dir: &Path, budget: usize) -> PrefixCache {
        self.spill = (budget > 0).then(|| Spill {
            dir: dir.to_path_buf(),
            budget,
            used: 0,
            file: None,
            stopped: false,
            failure: None,
            scratch: Vec::new(),
        });
        self
    }

    /// Whether any sample can be kept.
    pub fn enabled(&self) -> bool {
        self.memory_budget > 0 || self.spill.is_some()
    }

    /// Bytes of boundary values held in memory.
    pub fn bytes(&self) -> usize {
        self.memory_used
    }

    /// Bytes of boundary values held in the spill file.
    pub fn disk_bytes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.used)
    }

    /// Why the cache stopped spilling to disk, if it did (reported once: taken).
    pub fn take_spill_failure(&mut self) -> Option<String> {
        self.spill.as_mut().and_then(|s| s.failure.take())
    }

    /// The entry of `data` under `prep`, if any sample of it is kept.
    fn entry(&self, data: &Dataset, prep: &Preprocess) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.dataset == data.id() && &e.prep == prep)
    }

    fn place(&self, data: &Dataset, prep: &Preprocess, i: usize) -> Option<(usize, Place)> {
        let k = self.entry(data, prep)?;
        self.entries[k]
            .place
            .get(i)
            .copied()
            .flatten()
            .map(|p| (k, p))
    }

    /// Whether sample `i` is kept.
    pub(crate) fn holds(&self, data: &Dataset, prep: &Preprocess, i: usize) -> bool {
        self.place(data, prep, i).is_some()
    }

    /// Sample `i`'s boundary tensors into row `r` of `boundary` (a batch of `batch`). The
    /// sample must be kept ([`PrefixCache::holds`]).
    pub(crate) fn read(
        &mut self,
        data: &Dataset,
        prep: &Preprocess,
        i: usize,
        boundary: &mut [Vec<f32>],
        r: usize,
        batch: usize,
    ) -> std::io::Result<()> {
        let boundary_len: usize = boundary.iter().map(|b| b.len() / batch).sum();
        let rows = boundary.iter_mut().map(|b| {
            let per = b.len() / batch;
            &mut b[r * per..(r + 1) * per]
        });
        match self.place(data, prep, i).expect("checked by holds") {
            (k, Place::Memory(slot)) => {
                for (dst, src) in rows.zip(&self.entries[k].values) {
                    let at = slot as usize * dst.len();
                    dst.copy_from_slice(&src[at..at + dst.len()]);
                }
                Ok(())
            }
            (_, Place::Disk(slot)) => {
                use std::os::unix::fs::FileExt;
                let s = self.spill.as_mut().expect("placed on disk");
                let n: usize = boundary_len * 4;
                s.scratch.resize(n, 0);
                let file = s.file.as_ref().expect("placed on disk");
                file.read_exact_at(&mut s.scratch, slot as u64 * n as u64)?;
                let mut bytes = s.scratch.chunks_exact(4);
                for dst in rows {
                    for (d, b) in dst.iter_mut().zip(&mut bytes) {
                        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                Ok(())
            }
        }
    }

    /// Keeps row `r` of the batch's boundary tensors as sample `i`'s, if a budget allows.
    pub(crate) fn store(
        &mut self,
        data: &Dataset,
        prep: &Preprocess,
        i: usize,
        boundary: &[Vec<f32>],
        r: usize,
        batch: usize,
    ) {
        if self.holds(data, prep, i) {
            return;
        }
        let sample_bytes: usize = boundary.iter().map(|b| b.len() / batch * 4).sum();
        let rows = || {
            boundary.iter().map(move |b| {
                let per = b.len() / batch;
                &b[r * per..(r + 1) * per]
            })
        };
        let place = if self.memory_used + sample_bytes <= self.memory_budget {
            let e = self.entry_mut(data, prep, boundary.len());
            let slot = e.values[0].len() / (boundary[0].len() / batch);
            for (v, row) in e.values.iter_mut().zip(rows()) {
                v.extend_from_slice(row);
            }
            self.memory_used += sample_bytes;
            Place::Memory(slot as u32)
        } else {
            match self
                .spill
                .as_mut()
                .and_then(|s| s.write(rows(), sample_bytes))
            {
                Some(slot) => Place::Disk(slot),
                None => return,
            }
        };
        self.entry_mut(data, prep, boundary.len()).place[i] = Some(place);
    }

    fn entry_mut(&mut self, data: &Dataset, prep: &Preprocess, tensors: usize) -> &mut CacheEntry {
        let k = match self.entry(data, prep) {
            Some(k) => k,
            None => {
                self.entries.push(CacheEntry {
                    dataset: data.id(),
                    prep: prep.clone(),
                    place: vec![None; data.len()],
                    values: vec![Vec::new(); tensors],
                });
                self.entries.len() - 1
            }
        };
        &mut self.entries[k]
    }
}

impl Spill {
    /// Appends one sample, returning its index in the file; `None` once the budget is spent
    /// or the file failed (then spilling stops for good and the failure is kept).
    fn write<'a>(
        &mut self,
        rows: impl Iterator<Item = &'a [f32]>,
        sample_bytes: usize,
    ) -> Option<u32> {
        if self.stopped || self.used + sample_bytes > self.budget {
            return None;
        }
        if self.file.is_none() {
            match self.create() {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.stop(format!(
                        "cannot make a cache file in {}: {e}; pass --cache-dir DIR (a writable folder) or --cache-disk 0",
                        self.dir.display()
                    ));
                    return None;
                }
            }
        }
        self.scratch.clear();
        for row in rows {
            self.scratch
                .extend(row.iter().flat_map(|v| v.to_le_bytes()));
        }
        let slot = self.used / sample_bytes;
        use std::os::unix::fs::FileExt;
        let file = self.file.as_ref().expect("made above");
        if let Err(e) = file.write_all_at(&self.scratch, self.used as u64) {
            self.stop(format!(
                "cannot write the cache file in {}: {e}; the remaining samples go through the prefix every epoch",
                self.dir.display()
            ));
            return None;
        }
        self.used += sample_bytes;
        Some(slot as u32)
    }

    fn create(&self) -> std::io::Result<File> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = self
            .dir
            .join(format!(".actc-cache-{}-{nanos}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }

    fn stop(&mut self, why: String) {
        self.stopped = true;
        self.failure = Some(why);
    }
}
