//! The worker threads behind the kernels' parallel loops.
//!
//! A training step must not allocate, so the usual tools are out: `std::thread::scope`
//! spawns (and allocates) per call, and rayon's injector queue allocates a block every few
//! dozen jobs. This pool starts its workers once; a parallel loop then publishes a pointer to
//! its closure and wakes the workers through a futex-backed condvar; each thread runs a
//! fixed share of the parts. The caller works too, so with `n` threads there are `n − 1`
//! workers. A worker that finished watches for the next loop for a while ([`SPIN`]) before
//! it sleeps: a step runs hundreds of short loops back to back, and waking a sleeping
//! thread costs more than the smaller of them take.
//!
//! A parallel loop started from inside another one (a worker calling a kernel that would
//! split again) runs serially on that thread: the outer loop already keeps every thread busy.

use std::cell::Cell;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Threads the kernels use, the caller's included; 0 until set or first read.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Most threads a loop takes part in for now (0: all of them): the choice of a
/// [`crate::pacer::Pacer`], which may find one thread faster on a busy device.
static CAP: AtomicUsize = AtomicUsize::new(0);

/// Limits the threads each parallel loop takes part in to `n` (0: no limit) until set again.
pub(crate) fn cap(n: usize) {
    CAP.store(n, Ordering::Relaxed);
}

/// Sets how many threads the kernels use (at least 1). Call it before training; a pool
/// already started with fewer workers keeps its size.
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

/// Threads the kernels use now: [`configured`], or fewer while a [`cap`] holds. The
/// kernels size their parts by it, so under a cap of one they take their one-thread paths,
/// as with `--threads 1`.
pub fn threads() -> usize {
    match CAP.load(Ordering::Relaxed) {
        0 => configured(),
        cap => cap.min(configured()),
    }
}

/// What [`set_threads`] said, else every core.
pub(crate) fn configured() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            THREADS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Calls `f(i, &mut items[i])` for every item, spread over the pool's threads; returns when
/// all calls have. Items are the parts of the work (a chunk of an output, say); each is
/// handed to exactly one call, so `f` may write through it.
pub fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    let parts = items.len();
    let threads = threads().min(parts);
    if threads <= 1 || IN_POOL.get() {
        for (i, item) in items.iter_mut().enumerate() {
            f(i, item);
        }
        return;
    }
    let base = SendPtr(items.as_mut_ptr());
    let task = move |i: usize| {
        let base = &base;
        // SAFETY: `i < parts` and the pool hands out every index once, so this is the only
        // reference to `items[i]` while `items` stays borrowed by this call.
        f(i, unsafe { &mut *base.0.add(i) })
    };
    pool(threads).run(parts, &task);
}

/// Runs `f(units, run)` over `data` cut into at most `parts` runs of whole units (unit `u`
/// is `data[u·stride..(u + 1)·stride]`, the last run takes whatever follows), each run a
/// multiple of `align` units but the last; in parallel when there are two runs or more.
pub fn for_runs<T: Send>(
    data: &mut [T],
    units: usize,
    stride: usize,
    align: usize,
    parts: usize,
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    let mut runs: [(Range<usize>, &mut [T]); MAX_PARTS] =
        std::array::from_fn(|_| (0..0, &mut [][..]));
    let mut rest = data;
    let mut count = 0;
    for r in split(units, parts.min(MAX_PARTS), align) {
        let (run, tail) = if r.end < units {
            rest.split_at_mut(r.len() * stride)
        } else {
            (rest, &mut [][..])
        };
        runs[count] = (r, run);
        rest = tail;
        count += 1;
    }
    for_each_mut(&mut runs[..count], |_, (r, run)| f(r.clone(), run));
}

/// How many parts a loop of `work` multiply-adds (or like operations) is worth: waking a
/// worker costs tens of microseconds, about what a million of them take on one core.
pub fn parts_for(work: usize) -> usize {
    threads().min(work >> 20).max(1)
}

/// `0..len` split into at most `max_parts` near-equal ranges, each a multiple of `unit`
/// long but the last.
fn split(len: usize, max_parts: usize, unit: usize) -> impl Iterator<Item = Range<usize>> {
    let unit = unit.max(1);
    let units = len.div_ceil(unit);
    let parts = max_parts.clamp(1, units.max(1));
    let per = (units.div_ceil(parts) * unit).max(1);
    (0..len).step_by(per).map(move |s| s..(s + per).min(len))
}

/// Most parts one parallel loop splits into: bounds the stack arrays of [`for_runs`].
pub(crate) const MAX_PARTS: usize = 16;

struct SendPtr<T>(*mut T);
// SAFETY: only used to hand disjoint items to other threads inside `for_each_mut`.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; each thread dereferences it at indices no other thread uses.
unsafe impl<T: Send> Sync for SendPtr<T> {}

thread_local! {
    /// Set on pool workers and on a caller while it runs a loop's parts.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// The job being run: a lifetime-erased pointer to the caller's closure, valid until the
/// caller's `run` returns (it waits for every participant to finish first).
#[derive(Clone, Copy)]
struct Job {
    task: *const (dyn Fn(usize) + Sync),
    parts: usize,
    /// Threads taking part, the caller included: thread `t` runs parts `t, t + n, …`.
    participants: usize,
}
// SAFETY: the closure is `Sync` and outlives every use (see `Job`).
unsafe impl Send for Job {}

impl Job {
    /// Thread `t`'s parts. A fixed assignment rather than claiming from a counter: the same
    /// thread then gets the same part at every step, so the scratch each thread grows in
    /// the first step fits all later ones (a step must not allocate) and stays in its cache.
    fn run_share(&self, t: usize) -> bool {
        // SAFETY: the caller is inside `run` until every participant has returned.
        let f = unsafe { &*self.task };
        let parts = (t..self.parts).step_by(self.participants);
        catch_unwind(AssertUnwindSafe(|| parts.for_each(f))).is_ok()
    }
}

/// How long a worker that finished its share watches for the next loop before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

struct Pool {
    workers: usize,
    /// The current job and its generation; workers sleep on `wake` until it changes.
    job: Mutex<(u64, Option<Job>)>,
    /// The generation, readable without the lock: what a watching worker polls.
    generation: AtomicU64,
    /// Workers asleep on `wake` (counted under `job`'s lock): a new job wakes them only
    /// when there are any, so a loop whose workers watch costs no system call.
    sleeping: AtomicUsize,
    wake: Condvar,
    /// Participants still running their share.
    running: AtomicUsize,
    /// A share panicked: the caller re-raises once all are done.
    panicked: AtomicBool,
    /// One loop at a time (the pool has one job slot).
    caller: Mutex<()>,
}

fn pool(threads: usize) -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = threads.max(configured()).saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            job: Mutex::new((0, None)),
            generation: AtomicU64::new(0),
            sleeping: AtomicUsize::new(0),
            wake: Condvar::new(),
            running: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            caller: Mutex::new(()),
        }));
        for w in 1..=workers {
            std::thread::Builder::new()
                .name(format!("actc-worker-{w}"))
                .spawn(move || pool.work(w))
                .expect("starting a kernel worker thread");
        }
        pool
    })
}

impl Pool {
    fn run(&self, parts: usize, task: &(dyn Fn(usize) + Sync)) {
        let _one_at_a_time = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: erases the closure's lifetime; `run` does not return before every
        // participant is done with it (`running` reaches 0 only then).
        let task: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(task) };
        let job = Job {
            task,
            parts,
            participants: parts.min(self.workers + 1),
        };
        {
            let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
            self.running.store(job.participants - 1, Ordering::Release);
            slot.0 += 1;
            slot.1 = Some(job);
            self.generation.store(slot.0, Ordering::Release);
        }
        // A worker counts itself asleep under the lock before it waits: it either saw the
        // new generation there, or is counted here.
        if self.sleeping.load(Ordering::Acquire) > 0 {
            self.wake.notify_all();
        }
        IN_POOL.set(true);
        let ok = job.run_share(0);
        IN_POOL.set(false);
        // The workers' shares are about as long as ours: spin, then yield.
        let mut spins = 0u32;
        while self.running.load(Ordering::Acquire) != 0 {
            if spins < 10_000 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.job.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
        if !ok || self.panicked.swap(false, Ordering::AcqRel) {
            resume_unwind(Box::new("a parallel kernel part panicked"));
        }
    }

    fn work(&self, t: usize) {
        IN_POOL.set(true);
        let mut seen = 0;
        loop {
            self.watch(seen);
            let job = {
                let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                if slot.0 == seen {
                    self.sleeping.fetch_add(1, Ordering::AcqRel);
                    while slot.0 == seen {
                        slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                    }
                    self.sleeping.fetch_sub(1, Ordering::AcqRel);
                }
                seen = slot.0;
                slot.1
            };
            // A job this worker takes no part in may already be gone.
            if let Some(job) = job.filter(|j| t < j.participants) {
                if !job.run_share(t) {
                    self.panicked.store(true, Ordering::Release);
                }
                self.running.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Spins until the generation moves past `seen` or [`SPIN`] has passed.
    fn watch(&self, seen: u64) {
        let start = Instant::now();
        for i in 0u32.. {
            if self.generation.load(Ordering::Acquire) != seen {
                return;
            }
            std::hint::spin_loop();
            if i % 64 == 63 && start.elapsed() > SPIN {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_and_nested_loops_run_serially() {
        set_threads(2);
        for round in 0..200 {
            let mut items = [0usize; 7];
            for_each_mut(&mut items, |i, v| {
                let mut inner = [0usize; 3];
                for_each_mut(&mut inner, |j, w| *w = j + 1);
                *v = i + round + inner.iter().sum::<usize>();
            });
            let want: Vec<usize> = (0..7).map(|i| i + round + 6).collect();
            assert_eq!(items.to_vec(), want);
        }
    }

    #[test]
    fn runs_cover_the_data_in_aligned_units() {
        set_threads(2);
        assert_eq!(
            split(100, 3, 16).collect::<Vec<_>>(),
            [0..48, 48..96, 96..100]
        );
        assert!(split(10, 4, 16).eq(std::iter::once(0..10)));
        assert_eq!(split(0, 4, 1).count(), 0);
        // 5 units of 3 and a 2-element tail that belongs to the last run.
        let mut data: Vec<usize> = vec![0; 17];
        for_runs(&mut data, 5, 3, 2, 2, |r, run| {
            assert_eq!(
                run.len(),
                if r.end == 5 {
                    17 - r.start * 3
                } else {
                    r.len() * 3
                }
            );
            run.fill(r.start + 1);
        });
        assert_eq!(data[..12], [1; 12]);
        assert_eq!(data[12..], [5; 5]);
    }

    #[test]
    fn a_panicking_part_reaches_the_caller() {
        set_threads(2);
        let mut items = [0u8; 4];
        let r = catch_unwind(AssertUnwindSafe(|| {
            for_each_mut(&mut items, |i, _| assert!(i != 2, "part 2 fails"));
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        for_each_mut(&mut items, |i, v| *v = i as u8);
        assert_eq!(items, [0, 1, 2, 3]);
    }
}
