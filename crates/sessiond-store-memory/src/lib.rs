//! # sessiond-store-memory
//!
//! The reference implementation of [`SessionStore`], [`ThrottleStore`], [`UserStore`] and
//! [`FactorStore`]: plain maps behind a mutex. It is the simplest thing that passes the
//! conformance suite, which makes it the executable documentation of the store contract, and
//! a handy store for unit tests of code built on sessiond. Nothing survives a restart.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use sessiond_core::{
    ChangeFeed, FactorStore, FactorSummary, NewUser, RecoveryHash, SessionData, SessionId,
    SessionRecord, SessionStore, StoreError, StoredPasskey, ThrottleChange, ThrottleExpect,
    ThrottleRecord, ThrottleStore, Timestamp, TokenHash, TotpState, User, UserCredentials, UserId,
    UserStore, Username, PURGE_GRACE,
};

#[derive(Debug, Default)]
struct Inner {
    /// Keyed by the token hash's bytes.
    sessions: HashMap<[u8; 32], SessionRecord>,
    /// Session data, same keys; removed with the session (see `Inner::forget_orphans`).
    data: HashMap<[u8; 32], SessionData>,
    throttle: std::collections::BTreeMap<String, ThrottleRecord>,
    /// See `SessionStore::generation`; bumped under the same lock as the change.
    generation: u64,
    users: Vec<UserCredentials>,
    next_user_id: i64,
    /// Second factors by user id.
    totp: HashMap<i64, TotpState>,
    recovery: HashMap<i64, Vec<RecoveryHash>>,
    passkeys: Vec<StoredPasskey>,
}

/// Sessions and users in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl Inner {
    /// Drops data whose session is gone; called after every removal so no path can leave
    /// data behind.
    fn forget_orphans(&mut self) {
        let sessions = &self.sessions;
        self.data.retain(|k, _| sessions.contains_key(k));
        // Every removal path comes through here: one place to mark the change.
        self.generation += 1;
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still consistent for maps
        // we only insert into and remove from, so recover instead of poisoning every caller.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn sorted(mut v: Vec<SessionRecord>) -> Vec<SessionRecord> {
    v.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
    v
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.sessions.contains_key(session.token_hash.as_bytes()) {
            return Err(StoreError::Conflict);
        }
        g.sessions
            .insert(*session.token_hash.as_bytes(), session.clone());
        Ok(())
    }

    async fn load(&self, hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.lock().sessions.get(hash.as_bytes()).cloned())
    }

    async fn touch(
        &self,
        hash: &TokenHash,
        last_seen_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        if let Some(s) = self.lock().sessions.get_mut(hash.as_bytes()) {
            s.last_seen_at = s.last_seen_at.max(last_seen_at);
            s.expires_at = s.expires_at.max(expires_at);
        }
        Ok(())
    }

    async fn delete(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let existed = g.sessions.remove(hash.as_bytes()).is_some();
        g.forget_orphans();
        Ok(existed)
    }

    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if g.sessions.contains_key(new.token_hash.as_bytes()) {
            return Err(StoreError::Conflict);
        }
        // Under the same lock as the insert: a revoked session is never carried on.
        if g.sessions.remove(old.as_bytes()).is_none() {
            return Ok(false);
        }
        g.sessions.insert(*new.token_hash.as_bytes(), new.clone());
        g.forget_orphans();
        Ok(true)
    }

    async fn list_for_user(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        let g = self.lock();
        Ok(sorted(
            g.sessions
                .values()
                .filter(|s| s.user_id == user)
                .cloned()
                .collect(),
        ))
    }

    async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(sorted(self.lock().sessions.values().cloned().collect()))
    }

    async fn delete_by_id(
        &self,
        id: &SessionId,
        owner: Option<UserId>,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let before = g.sessions.len();
        g.sessions
            .retain(|_, s| !(&s.id == id && owner.is_none_or(|o| o == s.user_id)));
        g.forget_orphans();
        Ok(g.sessions.len() < before)
    }

    async fn delete_for_user(
        &self,
        user: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let before = g.sessions.len();
        g.sessions
            .retain(|_, s| s.user_id != user || keep.is_some_and(|k| k == &s.id));
        g.forget_orphans();
        Ok((before - g.sessions.len()) as u64)
    }

    async fn delete_all(&self) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let n = g.sessions.len() as u64;
        g.sessions.clear();
        g.data.clear();
        g.generation += 1;
        Ok(n)
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let doomed: Vec<[u8; 32]> = g
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(k, _)| *k)
            .take(limit)
            .collect();
        // The store's clock (this process's), not the caller's `now`: see
        // `SessionStore::purge_expired` on which removals move the generation.
        let quiet_until = Timestamp::from_system_time(SystemTime::now()).minus(PURGE_GRACE);
        let mut ended_early = false;
        for k in &doomed {
            if let Some(s) = g.sessions.remove(k) {
                ended_early |= s.expires_at > quiet_until;
            }
            g.data.remove(k);
        }
        // The sweeper's call also drops throttle counters whose window is over,
        // as the other stores do.
        g.throttle.retain(|_, r| r.expires_at > now);
        if ended_early {
            g.generation += 1;
        }
        Ok(doomed.len() as u64)
    }

    async fn load_data(&self, hash: &TokenHash) -> Result<Option<SessionData>, StoreError> {
        let g = self.lock();
        if !g.sessions.contains_key(hash.as_bytes()) {
            return Ok(None);
        }
        Ok(Some(
            g.data.get(hash.as_bytes()).cloned().unwrap_or_default(),
        ))
    }

    async fn save_data(&self, hash: &TokenHash, data: &SessionData) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if !g.sessions.contains_key(hash.as_bytes()) {
            return Ok(false);
        }
        g.data.insert(*hash.as_bytes(), data.clone());
        Ok(true)
    }

    async fn patch_data(
        &self,
        hash: &TokenHash,
        set: &SessionData,
        remove: &[String],
    ) -> Result<bool, StoreError> {
        // Check, read and write under one lock: atomic.
        let mut g = self.lock();
        if !g.sessions.contains_key(hash.as_bytes()) {
            return Ok(false);
        }
        let data = g.data.entry(*hash.as_bytes()).or_default();
        for (k, v) in set {
            data.insert(k.clone(), v.clone());
        }
        for k in remove {
            data.remove(k);
        }
        Ok(true)
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.lock().generation)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        // In process: a poll of the generation is a mutex and a load.
        Ok(None)
    }

    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        let g = self.lock();
        Ok(Some(
            g.sessions.values().filter(|s| s.expires_at > now).count() as u64,
        ))
    }
}

#[async_trait]
impl ThrottleStore for MemoryStore {
    async fn throttle_hit(
        &self,
        key: &str,
        now: Timestamp,
        window: std::time::Duration,
    ) -> Result<ThrottleRecord, StoreError> {
        let mut g = self.lock();
        let rec = match g.throttle.get(key) {
            Some(r) if r.expires_at > now => ThrottleRecord {
                count: r.count + 1,
                last_at: now,
                expires_at: r.expires_at,
            },
            _ => ThrottleRecord {
                count: 1,
                last_at: now,
                expires_at: now.plus(window),
            },
        };
        g.throttle.insert(key.to_owned(), rec);
        Ok(rec)
    }

    async fn throttle_get(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<ThrottleRecord>, StoreError> {
        Ok(self
            .lock()
            .throttle
            .get(key)
            .filter(|r| r.expires_at > now)
            .copied())
    }

    async fn throttle_list(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, ThrottleRecord)>, StoreError> {
        let mut g = self.lock();
        g.throttle.retain(|_, r| r.expires_at > now);
        Ok(g.throttle.iter().map(|(k, r)| (k.clone(), *r)).collect())
    }

    async fn throttle_delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.lock().throttle.remove(key).is_some())
    }

    async fn throttle_apply(
        &self,
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        apply_throttle(&mut g.throttle, changes, now);
        Ok(())
    }

    async fn throttle_reserve(
        &self,
        expected: &[(&str, ThrottleExpect)],
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        // Compare and apply under one lock: atomic.
        let mut g = self.lock();
        let unchanged = expected
            .iter()
            .all(|(k, e)| e.holds(g.throttle.get(*k).filter(|r| r.expires_at > now).copied()));
        if unchanged {
            apply_throttle(&mut g.throttle, changes, now);
        }
        Ok(unchanged)
    }
}

fn apply_throttle(
    map: &mut std::collections::BTreeMap<String, ThrottleRecord>,
    changes: &[ThrottleChange<'_>],
    now: Timestamp,
) {
    for change in changes {
        match *change {
            ThrottleChange::Hit { key, window } => {
                let rec = match map.get(key) {
                    Some(r) if r.expires_at > now => ThrottleRecord {
                        count: r.count + 1,
                        last_at: now,
                        expires_at: r.expires_at,
                    },
                    _ => ThrottleRecord {
                        count: 1,
                        last_at: now,
                        expires_at: now.plus(window),
                    },
                };
                map.insert(key.to_owned(), rec);
            }
            ThrottleChange::Delete { key } => {
                map.remove(key);
            }
            ThrottleChange::Refund { key } => match map.get_mut(key) {
                Some(r) if r.expires_at > now && r.count > 1 => r.count -= 1,
                Some(_) => {
                    map.remove(key);
                }
                None => {}
            },
        }
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        let mut g = self.lock();
        insert_user(&mut g, new)
    }

    async fn create_user_if_none(&self, new: &NewUser) -> Result<Option<User>, StoreError> {
        let mut g = self.lock();
        if !g.users.is_empty() {
            return Ok(None);
        }
        insert_user(&mut g, new).map(Some)
    }

    async fn user_by_name(&self, name: &Username) -> Result<Option<UserCredentials>, StoreError> {
        let key = name.key();
        Ok(self
            .lock()
            .users
            .iter()
            .find(|u| u.user.username.key() == key)
            .cloned())
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self
            .lock()
            .users
            .iter()
            .find(|u| u.user.id == id)
            .map(|u| u.user.clone()))
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let mut v: Vec<User> = self.lock().users.iter().map(|u| u.user.clone()).collect();
        v.sort_by_key(|u| u.username.key());
        Ok(v)
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<bool, StoreError> {
        let mut g = self.lock();
        Ok(match g.users.iter_mut().find(|u| u.user.id == id) {
            Some(u) => {
                u.password_hash = phc.to_owned();
                g.generation += 1;
                true
            }
            None => false,
        })
    }

    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        phc: &str,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        Ok(
            match g
                .users
                .iter_mut()
                .find(|u| u.user.id == id && u.password_hash == expected)
            {
                Some(u) => {
                    u.password_hash = phc.to_owned();
                    g.generation += 1;
                    true
                }
                None => false,
            },
        )
    }

    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError> {
        let mut g = self.lock();
        Ok(match g.users.iter_mut().find(|u| u.user.id == id) {
            Some(u) => {
                u.user.disabled = disabled;
                g.generation += 1;
                true
            }
            None => false,
        })
    }

    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let before = g.users.len();
        g.users.retain(|u| u.user.id != id);
        forget_factors(&mut g, id);
        g.generation += 1;
        Ok(g.users.len() < before)
    }
}

fn insert_user(g: &mut Inner, new: &NewUser) -> Result<User, StoreError> {
    let key = new.username.key();
    if g.users.iter().any(|u| u.user.username.key() == key) {
        return Err(StoreError::Conflict);
    }
    g.next_user_id += 1;
    let user = User {
        id: UserId(g.next_user_id),
        username: new.username.clone(),
        name: new.name.clone(),
        email: new.email.clone(),
        groups: new.groups.clone(),
        admin: new.admin,
        disabled: false,
        created_at: new.created_at,
    };
    g.users.push(UserCredentials {
        user: user.clone(),
        password_hash: new.password_hash.clone(),
    });
    Ok(user)
}

/// Removes every factor of `user`; `true` if there was any.
fn forget_factors(g: &mut Inner, user: UserId) -> bool {
    let totp = g.totp.remove(&user.0).is_some();
    let codes = g.recovery.remove(&user.0).is_some_and(|c| !c.is_empty());
    let before = g.passkeys.len();
    g.passkeys.retain(|k| k.user_id != user);
    totp || codes || g.passkeys.len() < before
}

impl Inner {
    fn has_user(&self, user: UserId) -> bool {
        self.users.iter().any(|u| u.user.id == user)
    }
}

#[async_trait]
impl FactorStore for MemoryStore {
    async fn factor_summary(&self, user: UserId) -> Result<FactorSummary, StoreError> {
        let g = self.lock();
        Ok(FactorSummary {
            totp: g.totp.get(&user.0).is_some_and(|t| t.active.is_some()),
            recovery_codes: g.recovery.get(&user.0).map_or(0, |c| c.len() as u32),
            passkeys: g.passkeys.iter().filter(|k| k.user_id == user).count() as u32,
        })
    }

    async fn totp_state(&self, user: UserId) -> Result<Option<TotpState>, StoreError> {
        Ok(self.lock().totp.get(&user.0).cloned())
    }

    async fn totp_begin(
        &self,
        user: UserId,
        secret: &[u8],
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if !g.has_user(user) {
            return Ok(false);
        }
        g.totp.entry(user.0).or_default().pending = Some((secret.to_vec(), at));
        Ok(true)
    }

    async fn totp_confirm(
        &self,
        user: UserId,
        pending: &[u8],
        step: i64,
        recovery: &[RecoveryHash],
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let Some(t) = g.totp.get_mut(&user.0) else {
            return Ok(false);
        };
        if t.pending.as_ref().map(|(p, _)| p.as_slice()) != Some(pending) {
            return Ok(false);
        }
        t.active = t.pending.take().map(|(p, _)| p);
        t.last_step = step;
        g.recovery.insert(user.0, recovery.to_vec());
        Ok(true)
    }

    async fn totp_use_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        let mut g = self.lock();
        Ok(match g.totp.get_mut(&user.0) {
            Some(t) if t.active.is_some() && t.last_step < step => {
                t.last_step = step;
                true
            }
            _ => false,
        })
    }

    async fn totp_remove(&self, user: UserId) -> Result<bool, StoreError> {
        Ok(self.lock().totp.remove(&user.0).is_some())
    }

    async fn recovery_use(&self, user: UserId, hash: &RecoveryHash) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let Some(codes) = g.recovery.get_mut(&user.0) else {
            return Ok(false);
        };
        let before = codes.len();
        codes.retain(|c| c != hash);
        Ok(codes.len() < before)
    }

    async fn recovery_replace(
        &self,
        user: UserId,
        hashes: &[RecoveryHash],
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if !g.has_user(user) {
            return Ok(false);
        }
        g.recovery.insert(user.0, hashes.to_vec());
        Ok(true)
    }

    async fn passkey_add(
        &self,
        key: &StoredPasskey,
        max_per_user: usize,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if g.passkeys
            .iter()
            .any(|k| k.credential_id == key.credential_id)
        {
            return Err(StoreError::Conflict);
        }
        if !g.has_user(key.user_id)
            || g.passkeys
                .iter()
                .filter(|k| k.user_id == key.user_id)
                .count()
                >= max_per_user
        {
            return Ok(false);
        }
        g.passkeys.push(key.clone());
        Ok(true)
    }

    async fn passkeys_of(&self, user: UserId) -> Result<Vec<StoredPasskey>, StoreError> {
        let mut v: Vec<StoredPasskey> = self
            .lock()
            .passkeys
            .iter()
            .filter(|k| k.user_id == user)
            .cloned()
            .collect();
        v.sort_by_key(|k| k.created_at);
        Ok(v)
    }

    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskey>, StoreError> {
        Ok(self
            .lock()
            .passkeys
            .iter()
            .find(|k| k.credential_id == credential_id)
            .cloned())
    }

    async fn passkey_update(
        &self,
        user: UserId,
        credential_id: &[u8],
        data: &str,
        used_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        Ok(
            match g
                .passkeys
                .iter_mut()
                .find(|k| k.user_id == user && k.credential_id == credential_id)
            {
                Some(k) => {
                    k.data = data.to_owned();
                    k.last_used_at = Some(used_at);
                    true
                }
                None => false,
            },
        )
    }

    async fn passkey_remove(&self, user: UserId, credential_id: &[u8]) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let before = g.passkeys.len();
        g.passkeys
            .retain(|k| !(k.user_id == user && k.credential_id == credential_id));
        Ok(g.passkeys.len() < before)
    }

    async fn factors_reset(&self, user: UserId) -> Result<bool, StoreError> {
        Ok(forget_factors(&mut self.lock(), user))
    }
}

#[cfg(test)]
mod conformance {
    sessiond_store_tests::conformance_tests!(async { crate::MemoryStore::new() });
}
