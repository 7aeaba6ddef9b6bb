//! Progress of a running backup or restore, shared with whoever reports it
//! (the agent's heartbeats): plain bytes done, the total when known, and
//! the phase.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    /// 0 = not known (yet).
    total: AtomicU64,
    phase: Mutex<&'static str>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_done(&self, bytes: u64) {
        self.done.store(bytes, Ordering::Relaxed);
    }

    pub fn add_done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }

    /// The total plain bytes, when known.
    pub fn total(&self) -> Option<u64> {
        match self.total.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

/// Calls `f` on the progress when there is one.
pub(crate) fn report(progress: &Option<std::sync::Arc<Progress>>, f: impl FnOnce(&Progress)) {
    if let Some(p) = progress {
        f(p);
    }
}
