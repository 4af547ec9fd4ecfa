//! The stores a configuration names: their URLs, parsed once into a [`StoreUrl`] that knows
//! its kind, and opening them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sessiond_axum::async_trait;
use sessiond_core::{
    ChangeFeed, FactorStore, FactorSummary, NewUser, RecoveryHash, SessionData, SessionId,
    SessionRecord, SessionStore, StoreError, StoredPasskey, ThrottleChange, ThrottleExpect,
    ThrottleRecord, ThrottleStore, Timestamp, TokenHash, TotpState, User, UserCredentials, UserId,
    UserStore, Username,
};
use sessiond_store_postgres::PostgresStore;
use sessiond_store_redis::RedisStore;
use sessiond_store_sqlite::SqliteStore;

use crate::metrics::{Metrics, StoreRole, StoreStats};

/// A store URL, its scheme decided once, when the configuration is read. `Debug` shows it
/// with its password replaced, so a logged or printed configuration never leaks database
/// credentials; the code that connects reads the full URL with [`StoreUrl::expose`].
/// (No `Display`: formatting it by mistake does not compile.)
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    /// `sqlite://PATH` or `sqlite:PATH`.
    Sqlite { url: String, path: PathBuf },
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `redis://…`, `redis+sentinel://…` or `redis+cluster://…`; over TLS `rediss://…` or
    /// `rediss+cluster://…` (and `rediss+sentinel://`, which the store refuses with a reason).
    Redis(String),
}

const REDIS_SCHEMES: [&str; 6] = [
    "redis://",
    "redis+sentinel://",
    "redis+cluster://",
    "rediss://",
    "rediss+sentinel://",
    "rediss+cluster://",
];

impl StoreUrl {
    /// Reads the scheme. The message of an error names what is accepted and shows the URL
    /// redacted.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("sqlite URL needs a path, e.g. sqlite://sessiond.db".into());
            }
            return Ok(Self::Sqlite {
                url: url.to_owned(),
                path: path.into(),
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Ok(Self::Redis(url.to_owned()));
        }
        Err(format!(
            "{} is not a sqlite://, postgres://, redis://, rediss://, redis+sentinel://, \
             redis+cluster:// or rediss+cluster:// URL",
            redact(url)
        ))
    }

    /// The whole URL, password included: for connecting, never for messages.
    pub(crate) fn expose(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres(url) | Self::Redis(url) => url,
        }
    }

    /// The backend's name, for the store metrics' label: `sqlite`, `postgres`, `redis`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
        }
    }

    /// The URL fit for messages: the password, if any, replaced.
    pub(crate) fn redacted(&self) -> String {
        redact(self.expose())
    }

    /// Whether the store's server runs on this machine (loopback or a Unix socket): then the
    /// password hashes are better done in a worker process of their own (`hashing.worker`).
    pub(crate) fn server_on_this_host(&self) -> bool {
        let rest = match self {
            Self::Sqlite { .. } => return false,
            Self::Postgres(url) | Self::Redis(url) => {
                url.split_once("://").map_or("", |(_, rest)| rest)
            }
        };
        if rest.contains("host=/") || rest.contains("host=%2F") {
            return true;
        }
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if hosts.is_empty() {
            return true; // postgres:///db: the default Unix socket
        }
        hosts.split(',').any(|h| {
            let host = match h.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => h.split(':').next().unwrap_or(""),
            }
            .to_ascii_lowercase();
            host == "localhost"
                || host.starts_with("%2f")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback())
        })
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.redacted(), f)
    }
}

/// A URL fit for messages: the password, if any, replaced: in the userinfo, and in a
/// `password=` query parameter (PostgreSQL URLs accept one).
fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, query)) if query.contains("password=") => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{}?{}", redact_userinfo(base), query.join("&"))
        }
        _ => redact_userinfo(url),
    }
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => format!("{}***{}", &url[..s + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

/// The stores a configuration names.
#[derive(Debug, Clone)]
pub(crate) struct Stores {
    pub(crate) users: Arc<dyn UserStore>,
    /// Second factors: beside the users (the users' store object, as a [`FactorStore`]).
    pub(crate) factors: Arc<dyn FactorStore>,
    pub(crate) sessions: Arc<dyn SessionStore>,
    /// The login throttle's counters: the session store's object, as a [`ThrottleStore`].
    pub(crate) throttle: Arc<dyn ThrottleStore>,
}

/// A session store object as both its capabilities.
type SessionStores = (Arc<dyn SessionStore>, Arc<dyn ThrottleStore>);

fn both<S: SessionStore + ThrottleStore>(store: Arc<S>) -> SessionStores {
    (store.clone(), store)
}

/// Opens (and migrates) the stores: users in `database`; sessions there too, or in Redis
/// when `session_store` names it. (The configuration allows no other combination.)
pub(crate) async fn open(database: &StoreUrl, session_store: &StoreUrl) -> anyhow::Result<Stores> {
    let context = || format!("cannot open database {}", database.redacted());
    type UserStores = (Arc<dyn UserStore>, Arc<dyn FactorStore>);
    let ((users, factors), db_sessions): (UserStores, SessionStores) = match database {
        StoreUrl::Postgres(url) => {
            let pg = Arc::new(PostgresStore::connect(url).await.with_context(context)?);
            ((pg.clone(), pg.clone()), both(pg))
        }
        StoreUrl::Sqlite { path, .. } => {
            let sqlite = Arc::new(SqliteStore::open(path).with_context(context)?);
            if let Some(mode) = sqlite.loose_permissions() {
                // New files are created 0600; an older one keeps its mode (docs/security.md).
                tracing::warn!(
                    path = %path.display(),
                    mode = %format!("{mode:o}"),
                    "the database file (password hashes, emails, IP addresses) is readable by \
                     other users: chmod 600 it and its -wal and -shm files"
                );
            }
            ((sqlite.clone(), sqlite.clone()), both(sqlite))
        }
        StoreUrl::Redis(_) => anyhow::bail!(
            "database {}: Redis holds sessions only; the database must be sqlite:// or postgres://",
            database.redacted()
        ),
    };
    let (sessions, throttle) = match session_store {
        same if same == database => db_sessions,
        StoreUrl::Redis(url) => both(Arc::new(RedisStore::connect(url).await.with_context(
            || format!("cannot open session store {}", session_store.redacted()),
        )?)),
        other => anyhow::bail!(
            "session store {}: must be the database URL or a Redis URL",
            other.redacted()
        ),
    };
    Ok(Stores {
        users,
        factors,
        sessions,
        throttle,
    })
}

/// A store that times every call and counts its errors, for the store metrics
/// (`sessiond_store_*`). Wraps each of [`Stores`]' objects once, under its role's label; the
/// cost is two clock reads and a few atomic additions per call.
#[derive(Debug)]
pub(crate) struct Timed<T: ?Sized> {
    inner: Arc<T>,
    stats: Arc<StoreStats>,
}

impl<T: ?Sized> Timed<T> {
    fn wrap(inner: Arc<T>, stats: &Arc<StoreStats>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            stats: Arc::clone(stats),
        })
    }

    fn record<R>(&self, started: Instant, r: &Result<R, StoreError>) {
        self.stats.latency.observe(started.elapsed());
        if r.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Times one call of the wrapped store.
macro_rules! timed {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let started = Instant::now();
        let r = $self.inner.$method($($arg),*).await;
        $self.record(started, &r);
        r
    }};
}

impl Stores {
    /// Every store wrapped in [`Timed`], under its role in `metrics`.
    pub(crate) fn timed(self, metrics: &Metrics, database: &StoreUrl, sessions: &StoreUrl) -> Self {
        for (role, url) in [
            (StoreRole::Users, database),
            (StoreRole::Factors, database),
            (StoreRole::Sessions, sessions),
            (StoreRole::Throttle, sessions),
        ] {
            let _ = metrics.store(role).backend.set(url.kind());
        }
        Self {
            users: Timed::wrap(self.users, metrics.store(StoreRole::Users)),
            factors: Timed::wrap(self.factors, metrics.store(StoreRole::Factors)),
            sessions: Timed::wrap(self.sessions, metrics.store(StoreRole::Sessions)),
            throttle: Timed::wrap(self.throttle, metrics.store(StoreRole::Throttle)),
        }
    }
}

#[async_trait]
impl SessionStore for Timed<dyn SessionStore> {
    async fn create(&self, s: &SessionRecord) -> Result<(), StoreError> {
        timed!(self.create(s))
    }
    async fn load(&self, h: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        timed!(self.load(h))
    }
    async fn touch(&self, h: &TokenHash, l: Timestamp, e: Timestamp) -> Result<(), StoreError> {
        timed!(self.touch(h, l, e))
    }
    async fn delete(&self, h: &TokenHash) -> Result<bool, StoreError> {
        timed!(self.delete(h))
    }
    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
        timed!(self.rotate(old, new))
    }
    async fn list_for_user(&self, u: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        timed!(self.list_for_user(u))
    }
    async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        timed!(self.list_all())
    }
    async fn delete_by_id(
        &self,
        id: &SessionId,
        owner: Option<UserId>,
    ) -> Result<bool, StoreError> {
        timed!(self.delete_by_id(id, owner))
    }
    async fn delete_for_user(
        &self,
        u: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        timed!(self.delete_for_user(u, keep))
    }
    async fn delete_all(&self) -> Result<u64, StoreError> {
        timed!(self.delete_all())
    }
    async fn delete_oldest_for_user(&self, u: UserId, keep: usize) -> Result<u64, StoreError> {
        timed!(self.delete_oldest_for_user(u, keep))
    }
    async fn list_page(
        &self,
        u: Option<UserId>,
        after: Option<(Timestamp, SessionId)>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        timed!(self.list_page(u, after, limit))
    }
    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
        timed!(self.purge_expired(now, limit))
    }
    async fn load_data(&self, h: &TokenHash) -> Result<Option<SessionData>, StoreError> {
        timed!(self.load_data(h))
    }
    async fn save_data(&self, h: &TokenHash, d: &SessionData) -> Result<bool, StoreError> {
        timed!(self.save_data(h, d))
    }
    async fn patch_data(
        &self,
        h: &TokenHash,
        set: &SessionData,
        remove: &[String],
    ) -> Result<bool, StoreError> {
        timed!(self.patch_data(h, set, remove))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        timed!(self.ping())
    }
    async fn generation(&self) -> Result<u64, StoreError> {
        timed!(self.generation())
    }
    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        // Once per (re)subscription; the feed's heartbeats are not timed.
        self.inner.subscribe().await
    }
    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        timed!(self.count_active(now))
    }
}

#[async_trait]
impl ThrottleStore for Timed<dyn ThrottleStore> {
    async fn throttle_hit(
        &self,
        key: &str,
        now: Timestamp,
        window: Duration,
    ) -> Result<ThrottleRecord, StoreError> {
        timed!(self.throttle_hit(key, now, window))
    }
    async fn throttle_get(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<ThrottleRecord>, StoreError> {
        timed!(self.throttle_get(key, now))
    }
    async fn throttle_get_many(
        &self,
        keys: &[&str],
        now: Timestamp,
    ) -> Result<Vec<Option<ThrottleRecord>>, StoreError> {
        timed!(self.throttle_get_many(keys, now))
    }
    async fn throttle_list(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, ThrottleRecord)>, StoreError> {
        timed!(self.throttle_list(now))
    }
    async fn throttle_delete(&self, key: &str) -> Result<bool, StoreError> {
        timed!(self.throttle_delete(key))
    }
    async fn throttle_apply(
        &self,
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        timed!(self.throttle_apply(changes, now))
    }
    async fn throttle_reserve(
        &self,
        expected: &[(&str, ThrottleExpect)],
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        timed!(self.throttle_reserve(expected, changes, now))
    }
}

#[async_trait]
impl UserStore for Timed<dyn UserStore> {
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        timed!(self.create_user(new))
    }
    async fn create_user_if_none(&self, new: &NewUser) -> Result<Option<User>, StoreError> {
        timed!(self.create_user_if_none(new))
    }
    async fn user_by_name(&self, name: &Username) -> Result<Option<UserCredentials>, StoreError> {
        timed!(self.user_by_name(name))
    }
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        timed!(self.user_by_id(id))
    }
    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        timed!(self.list_users())
    }
    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<bool, StoreError> {
        timed!(self.set_password_hash(id, phc))
    }
    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        phc: &str,
    ) -> Result<bool, StoreError> {
        timed!(self.set_password_hash_if(id, expected, phc))
    }
    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError> {
        timed!(self.set_disabled(id, disabled))
    }
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        timed!(self.delete_user(id))
    }
}

#[async_trait]
impl FactorStore for Timed<dyn FactorStore> {
    async fn factor_summary(&self, user: UserId) -> Result<FactorSummary, StoreError> {
        timed!(self.factor_summary(user))
    }
    async fn totp_state(&self, user: UserId) -> Result<Option<TotpState>, StoreError> {
        timed!(self.totp_state(user))
    }
    async fn totp_begin(
        &self,
        user: UserId,
        secret: &[u8],
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        timed!(self.totp_begin(user, secret, at))
    }
    async fn totp_confirm(
        &self,
        user: UserId,
        pending: &[u8],
        step: i64,
        recovery: &[RecoveryHash],
    ) -> Result<bool, StoreError> {
        timed!(self.totp_confirm(user, pending, step, recovery))
    }
    async fn totp_use_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        timed!(self.totp_use_step(user, step))
    }
    async fn totp_remove(&self, user: UserId) -> Result<bool, StoreError> {
        timed!(self.totp_remove(user))
    }
    async fn recovery_use(&self, user: UserId, hash: &RecoveryHash) -> Result<bool, StoreError> {
        timed!(self.recovery_use(user, hash))
    }
    async fn recovery_replace(
        &self,
        user: UserId,
        hashes: &[RecoveryHash],
    ) -> Result<bool, StoreError> {
        timed!(self.recovery_replace(user, hashes))
    }
    async fn passkey_add(
        &self,
        key: &StoredPasskey,
        max_per_user: usize,
    ) -> Result<bool, StoreError> {
        timed!(self.passkey_add(key, max_per_user))
    }
    async fn passkeys_of(&self, user: UserId) -> Result<Vec<StoredPasskey>, StoreError> {
        timed!(self.passkeys_of(user))
    }
    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskey>, StoreError> {
        timed!(self.passkey_by_credential(credential_id))
    }
    async fn passkey_update(
        &self,
        user: UserId,
        credential_id: &[u8],
        data: &str,
        used_at: Timestamp,
    ) -> Result<bool, StoreError> {
        timed!(self.passkey_update(user, credential_id, data, used_at))
    }
    async fn passkey_remove(&self, user: UserId, credential_id: &[u8]) -> Result<bool, StoreError> {
        timed!(self.passkey_remove(user, credential_id))
    }
    async fn factors_reset(&self, user: UserId) -> Result<bool, StoreError> {
        timed!(self.factors_reset(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_read_once() {
        for (url, kind) in [
            ("sqlite://sessiond.db", "sqlite"),
            ("sqlite:/var/lib/s.db", "sqlite"),
            ("postgres://u@h/db", "postgres"),
            ("postgresql://u@h/db", "postgres"),
            ("redis://127.0.0.1", "redis"),
            ("redis+sentinel://h/mymaster", "redis"),
            ("redis+cluster://h1,h2", "redis"),
            ("rediss://h:6380?ca=/etc/ca.pem", "redis"),
            ("rediss+cluster://h1,h2#insecure", "redis"),
        ] {
            let got = match StoreUrl::parse(url).unwrap() {
                StoreUrl::Sqlite { .. } => "sqlite",
                StoreUrl::Postgres(_) => "postgres",
                StoreUrl::Redis(_) => "redis",
            };
            assert_eq!(got, kind, "{url}");
        }
        for bad in ["sqlite://", "mysql://x", "redisx://h", "", "sessiond.db"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
        let e = StoreUrl::parse("mysql://root:hunter2@db/x").unwrap_err();
        assert!(e.contains("root:***@db") && !e.contains("hunter2"), "{e}");
        let pg = StoreUrl::parse("postgres://u@db/x?sslmode=disable&password=hunter2").unwrap();
        assert_eq!(
            pg.redacted(),
            "postgres://***@db/x?sslmode=disable&password=***"
        );
    }
}
