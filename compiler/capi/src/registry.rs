//! The open trainers behind the handles C holds. A handle is a number, never a pointer, so
//! a closed or made-up one is found out and refused instead of read as memory: its low 32
//! bits are the slot's index plus one (so 0 is never a handle), its high 32 bits the slot's
//! generation, which closing advances so a reused slot does not bring a stale handle back.

use crate::status::{ACTC_ERR_HANDLE, ACTC_ERR_INTERNAL, Failure, Result};
use actc_compiler::driver::trainer::Trainer;
use std::sync::{Arc, Mutex, PoisonError};

/// A trainable weight as `actc_trainer_weight_*` list it: fixed for the trainer's life.
pub(crate) struct Weight {
    pub name: String,
    pub shape: Vec<usize>,
}

/// An open trainer with what the C calls ask of it often.
pub(crate) struct Open {
    pub trainer: Trainer,
    pub weights: Vec<Weight>,
}

impl Open {
    pub fn weight(&self, name: &str) -> Result<&Weight> {
        self.weights.iter().find(|w| w.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.weights.iter().map(|w| w.name.as_str()).collect();
            Failure::argument(format!(
                "'{name}' is not a trainable weight of this plan; it trains {}",
                names.join(", ")
            ))
        })
    }
}

struct Slot {
    generation: u32,
    /// Each trainer has its own lock, so calls on one handle from two threads take turns
    /// while other trainers run; the registry's lock is held only to look a handle up.
    open: Option<Arc<Mutex<Open>>>,
}

static SLOTS: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

/// The registry's own updates cannot be left half done by a panic: a poisoned lock is
/// still consistent.
fn slots() -> std::sync::MutexGuard<'static, Vec<Slot>> {
    SLOTS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn handle(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (index as u64 + 1)
}

/// Keeps `open` and returns its new handle.
pub(crate) fn insert(open: Open) -> Result<u64> {
    let open = Some(Arc::new(Mutex::new(open)));
    let mut slots = slots();
    // A slot whose generation ran out is never reused: its next handle would repeat one.
    if let Some(i) = slots
        .iter()
        .position(|s| s.open.is_none() && s.generation < u32::MAX)
    {
        slots[i].open = open;
        return Ok(handle(i, slots[i].generation));
    }
    if slots.len() >= u32::MAX as usize {
        return Err(Failure::failed(
            "too many trainers are open; close some first",
        ));
    }
    slots.push(Slot {
        generation: 0,
        open,
    });
    Ok(handle(slots.len() - 1, 0))
}

/// Closes `h`: its trainer is dropped once a call another thread is making on it returns.
pub(crate) fn remove(h: u64) -> Result<()> {
    let open = {
        let mut slots = slots();
        let i = find(&slots, h)?;
        slots[i].generation += 1;
        slots[i].open.take()
    };
    drop(open);
    Ok(())
}

/// Runs `f` on the trainer of `h`, after any call another thread is making on it.
pub(crate) fn with<R>(h: u64, f: impl FnOnce(&mut Open) -> Result<R>) -> Result<R> {
    let open = {
        let slots = slots();
        let i = find(&slots, h)?;
        Arc::clone(slots[i].open.as_ref().expect("find checked it"))
    };
    let mut open = open.lock().map_err(|_| Failure {
        code: ACTC_ERR_INTERNAL,
        message: "an earlier call on this trainer stopped on an internal error, which may have left it half updated; close it and open the plan again".into(),
    })?;
    f(&mut open)
}

/// The slot of an open handle, else why `h` is no handle.
fn find(slots: &[Slot], h: u64) -> Result<usize> {
    let refuse = |why: String| Failure {
        code: ACTC_ERR_HANDLE,
        message: why,
    };
    if h == 0 {
        return Err(refuse(
            "handle 0 is no trainer (actc_trainer_open failed, or was not called)".into(),
        ));
    }
    let index = (h & u64::from(u32::MAX)) as usize;
    let generation = (h >> 32) as u32;
    match slots.get(index.wrapping_sub(1)) {
        Some(s) if s.generation == generation && s.open.is_some() => Ok(index - 1),
        Some(s) if s.generation > generation => Err(refuse(format!(
            "trainer {h} was closed; open the plan again for a new handle"
        ))),
        _ => Err(refuse(format!(
            "{h} is not a handle actc_trainer_open returned"
        ))),
    }
}
