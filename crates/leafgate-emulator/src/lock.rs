//! Poisoned std mutexes are recovered, never propagated. One helper, so every lock in the
//! emulator makes the same choice.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, recovering the data if a previous holder panicked: every critical section in
/// the emulator leaves the data consistent between statements, so poisoning carries no meaning.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
