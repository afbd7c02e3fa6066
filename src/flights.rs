//! In-process single flight per key: one task at a time does a key's work (looks a merchant's
//! token up, adds a merchant's template), the others wait for it and then find its result, so
//! only one task per process waits on the key's row lock in Postgres (holding a pooled
//! connection) however many deliveries need the same key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The keys' locks, made on first use.
pub(crate) struct Flights<K>(Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>);

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<K: Eq + Hash + Clone> Flights<K> {
    /// Waits for `key`'s turn; the turn lasts as long as the guard.
    pub(crate) async fn enter(&self, key: &K) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().expect("flights lock");
            locks.entry(key.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Drops `key`'s lock once its result is known for good (a newcomer finds the result first).
    pub(crate) fn forget(&self, key: &K) {
        self.0.lock().expect("flights lock").remove(key);
    }
}
