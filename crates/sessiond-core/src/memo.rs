//! One bounded memo: a map behind a mutex that starts over when full.
//!
//! The library and the server keep a few answers it would otherwise recompute on every request (resolved
//! forward-auth targets, rendered session bodies, identity headers, users of verified
//! sessions). Each is a pure function of what its entry holds, so the memo never needs an
//! eviction order: when it reaches its capacity it is emptied, and each live key is computed
//! once more. Memory stays bounded by `capacity` entries whatever clients send.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};

/// A bounded map behind a mutex, emptied when full (see the module docs).
pub struct Memo<K, V, S = RandomState> {
    entries: Mutex<HashMap<K, V, S>>,
    capacity: usize,
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> Memo<K, V, S> {
    /// An empty memo holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::with_hasher(S::default())),
            capacity,
        }
    }

    /// What `read` makes of the entry for `key`, if there is one (`read` may also refuse a
    /// stale entry by answering `None`). The lock is held only while `read` runs.
    pub fn get<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> Option<R>) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().get(key).and_then(read)
    }

    /// Keeps `value` for `key`, emptying the memo first when it is full.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
    }

    /// How many entries it holds now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, V, S>> {
        // A panic while the lock was held cannot leave an entry half written (each change
        // is one `HashMap` call), so a poisoned lock is safe to keep using.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K, V, S> fmt::Debug for Memo<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memo")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_over_when_full_and_serves_only_what_read_accepts() {
        let m: Memo<u32, &str> = Memo::new(3);
        for k in 0..3 {
            m.insert(k, "v");
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&1, |v| Some(*v)), Some("v"));
        assert_eq!(m.get(&1, |_| None::<&str>), None);
        m.insert(3, "w");
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&0, |v| Some(*v)), None);
        assert_eq!(m.get(&3, |v| Some(*v)), Some("w"));
    }
}
