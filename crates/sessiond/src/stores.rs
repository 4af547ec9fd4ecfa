//! The stores a configuration names: their URLs, parsed once into a [`StoreUrl`] that knows
//! its kind, and opening them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use sessiond_core::{FactorStore, SessionStore, ThrottleStore, UserStore};
use sessiond_store_postgres::PostgresStore;
use sessiond_store_redis::RedisStore;
use sessiond_store_sqlite::SqliteStore;

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
