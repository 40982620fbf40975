//! Process-wide progress of the running executor, for progress bars: chunks done and total.
//!
//! Executors update it as they go; a front end (the `liger` binary) polls it from another
//! thread. It is advisory only: nothing reads it for correctness.

use std::sync::atomic::{AtomicUsize, Ordering};

static DONE: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

/// `(chunks done, chunks in total)` of the run in progress (`(0, 0)` before any).
pub fn get() -> (usize, usize) {
    (DONE.load(Ordering::Relaxed), TOTAL.load(Ordering::Relaxed))
}

pub(crate) fn start(total: usize) {
    DONE.store(0, Ordering::Relaxed);
    TOTAL.store(total, Ordering::Relaxed);
}

pub(crate) fn step() {
    DONE.fetch_add(1, Ordering::Relaxed);
}
