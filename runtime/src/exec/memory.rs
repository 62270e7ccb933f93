//! The two memory regions a plan runs in, allocated once: the arena (transient buffers at
//! their planned offsets) and the persistent region (weights, frozen constants, optimizer
//! state), and the views through which steps reach them.

use super::ExecError;
use crate::plan::{Buffer, Plan};

/// 64-byte aligned storage, so every planned offset (a multiple of 64) is aligned too.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

pub struct Memory {
    // Owned storage; never resized after `new`, so the view's pointers stay valid.
    _arena: Vec<Line>,
    _persistent: Vec<Line>,
    view: View,
}

/// Where a plan's buffers lie: what steps read and write through. Copied per prefix lane
/// ([`Memory::lane`]), whose view puts the prefix's arena buffers in the lane's own bytes.
#[derive(Clone, Copy)]
pub struct View {
    arena: Region,
    persistent: Region,
}

/// Offsets `lo..hi` of a region, the byte at offset `o` being at `base + (o − lo)`.
#[derive(Clone, Copy)]
struct Region {
    // Taken once with `as_mut_ptr`, so writes through it are allowed while `&self` is shared
    // (the regions are handed out in disjoint pieces, like an allocator's).
    base: *mut u8,
    lo: u64,
    hi: u64,
}

// SAFETY: a view hands out the planned buffers, which are disjoint while live; the prefix
// lanes that run on several threads at once each write only their own lane's bytes.
unsafe impl Send for View {}
// SAFETY: as above.
unsafe impl Sync for View {}

/// `n` zeroed lines straight from the allocator: large blocks come as fresh zero pages that
/// take no memory until used. `vec![Line([0; 64]); n]` wrote every byte, so planned but
/// idle bytes (a phase's part of the arena, a weight not yet loaded) counted from the start.
/// `None` when the allocator cannot give them (a plan asking for more than the machine has).
fn zeroed_lines(n: usize) -> Option<Vec<Line>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<Line>(n).ok()?;
    // SAFETY: a non-zero size; all-zero bytes are a valid `Line`; the Vec frees the block with
    // the same layout (n lines of Line's alignment) it was allocated with.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Line;
        (!ptr.is_null()).then(|| Vec::from_raw_parts(ptr, n, n))
    }
}

impl Memory {
    pub fn new(plan: &Plan) -> Result<Memory, ExecError> {
        let m = plan.memory.clone().unwrap_or_default();
        let lines = |bytes: u64| {
            usize::try_from(bytes.div_ceil(64))
                .ok()
                .and_then(zeroed_lines)
                .ok_or_else(|| {
                    ExecError(format!(
                        "the plan needs {} bytes of memory ({} arena, {} persistent), which this machine cannot give",
                        m.arena.saturating_add(m.persistent),
                        m.arena,
                        m.persistent
                    ))
                })
        };
        let (mut arena, mut persistent) = (lines(m.arena)?, lines(m.persistent)?);
        let region = |lines: &mut Vec<Line>| Region {
            base: lines.as_mut_ptr() as *mut u8,
            lo: 0,
            hi: 64 * lines.len() as u64,
        };
        Ok(Memory {
            view: View {
                arena: region(&mut arena),
                persistent: region(&mut persistent),
            },
            _arena: arena,
            _persistent: persistent,
        })
    }

    /// Bytes held, both regions.
    pub fn bytes(&self) -> usize {
        (self.view.arena.hi + self.view.persistent.hi) as usize
    }

    /// The view in which arena offsets `lo..hi` lie at `to..to + (hi − lo)` instead: a
    /// prefix lane's copy of the prefix's buffers. Other arena offsets are out of bounds.
    pub fn lane(&self, lo: u64, hi: u64, to: u64) -> View {
        let arena = self.view.arena;
        assert!(
            lo <= hi && to + (hi - lo) <= arena.hi,
            "a lane outside the arena"
        );
        View {
            arena: Region {
                // SAFETY: in bounds, checked above.
                base: unsafe { arena.base.add(to as usize) },
                lo,
                hi,
            },
            ..self.view
        }
    }

    /// Raw bytes of a buffer (for loading and saving weights).
    pub fn bytes_of(&mut self, b: &Buffer) -> &mut [u8] {
        // SAFETY: `&mut self` excludes every other borrow.
        unsafe { std::slice::from_raw_parts_mut(self.view.ptr(b), b.bytes as usize) }
    }
}

impl std::ops::Deref for Memory {
    type Target = View;

    fn deref(&self) -> &View {
        &self.view
    }
}

impl View {
    fn ptr(&self, b: &Buffer) -> *mut u8 {
        let r = if b.kind().is_persistent() {
            self.persistent
        } else {
            self.arena
        };
        assert!(
            r.lo <= b.offset && b.offset + b.bytes <= r.hi,
            "buffer {} lies outside its region",
            b.name
        );
        // SAFETY: in bounds, checked above.
        unsafe { r.base.add((b.offset - r.lo) as usize) }
    }

    /// # Safety
    /// No `&mut` to overlapping bytes may be alive while the returned slice is.
    pub unsafe fn f32(&self, b: &Buffer) -> &[f32] {
        unsafe { std::slice::from_raw_parts(self.ptr(b) as *const f32, b.numel()) }
    }

    /// # Safety
    /// No other reference to overlapping bytes may be alive while the returned slice is.
    #[allow(clippy::mut_from_ref)] // interior: the planner hands out disjoint byte ranges
    pub unsafe fn f32_mut(&self, b: &Buffer) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr(b) as *mut f32, b.numel()) }
    }

    /// # Safety
    /// As [`View::f32`].
    pub unsafe fn u32(&self, b: &Buffer) -> &[u32] {
        unsafe { std::slice::from_raw_parts(self.ptr(b) as *const u32, b.numel()) }
    }

    /// # Safety
    /// As [`View::f32_mut`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn u32_mut(&self, b: &Buffer) -> &mut [u32] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr(b) as *mut u32, b.numel()) }
    }

    /// The buffer's bytes, whatever it holds.
    ///
    /// # Safety
    /// As [`View::f32`].
    pub unsafe fn raw(&self, b: &Buffer) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr(b), b.bytes as usize) }
    }

    /// # Safety
    /// As [`View::f32`].
    pub unsafe fn u8(&self, b: &Buffer) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr(b), b.numel()) }
    }

    /// # Safety
    /// As [`View::f32`].
    pub unsafe fn i8(&self, b: &Buffer) -> &[i8] {
        unsafe { std::slice::from_raw_parts(self.ptr(b) as *const i8, b.numel()) }
    }

    /// # Safety
    /// As [`View::f32_mut`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn u8_mut(&self, b: &Buffer) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr(b), b.numel()) }
    }
}
