//! A count of the worker's heap allocations, for the benchmarks (docs/testing.md, "Benchmarks").
//!
//! The binary (`src/main.rs`) wraps the system allocator in [`Counting`]. It counts nothing
//! until [`enable`] runs, which `cli::main` does when `WXNOTIFY_COUNT_ALLOCATIONS=1`; until then
//! each allocation costs one relaxed load of a flag that never changes. The count is exposed as
//! `wxnotify_allocations_total` on `/metrics`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting calls that allocate (`alloc`, `alloc_zeroed`, `realloc`) once
/// enabled.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counting;

/// Starts counting (for the rest of the process).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Allocations counted so far; 0 while counting is off.
pub(crate) fn count() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

fn counted() {
    if ENABLED.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// the counting touches only two atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: the caller's guarantees for `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this wrapper with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        // SAFETY: as for `dealloc`; `new_size` as the caller gave it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_once_enabled() {
        let a = Counting;
        let layout = Layout::from_size_align(64, 8).expect("layout");
        let before = count();
        // SAFETY: a non-zero layout, freed with the same layout.
        unsafe { a.dealloc(a.alloc(layout), layout) };
        assert_eq!(count(), before, "off by default");
        enable();
        // SAFETY: as above.
        unsafe { a.dealloc(a.alloc(layout), layout) };
        assert!(count() > before, "counted once enabled");
    }
}
