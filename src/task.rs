//! Helpers for tokio tasks.

use tokio::task::JoinHandle;

/// Aborts its task when dropped: a task spawned for a caller that was
/// cancelled (an ended connection, a failed backup) does not outlive it.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
