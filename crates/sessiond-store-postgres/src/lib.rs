//! # sessiond-store-postgres
//!
//! Users and sessions in PostgreSQL: the store for several sessiond instances behind one load
//! balancer, or for a deployment that runs PostgreSQL anyway. Every instance reads and writes
//! the same rows, so a logout, a revoke or a disabled account holds on all of them at once.
//!
//! * **A bounded pool** of [`POOL_SIZE`] connections (`deadpool-postgres`), each statement
//!   prepared once per connection (`prepare_cached`) so a lookup is one round trip. Pooled
//!   connections are reused without a test query: a dead one fails its next query, that one
//!   call reports the store unavailable, and the pool drops the connection for good.
//! * **Nothing waits forever.** Opening a TCP connection is bounded by [`CONNECT_TIMEOUT`];
//!   every store call, *including* waiting for a pooled connection and opening a new one
//!   (`tokio-postgres`' own connect timeout ends at the TCP handshake, not at the startup
//!   exchange after it), by [`OP_TIMEOUT`]. Past it the call fails with
//!   [`StoreError::Unavailable`], so a hung server turns into fast `503`s (fail closed), never
//!   into requests that hang. A connection whose call timed out is discarded rather than
//!   pooled: it may still have a request in flight or a transaction open, and the next caller
//!   must not queue behind it. The pool runs without a runtime feature for the same reason:
//!   our deadline covers every wait, so deadpool's optional timeouts would only duplicate it.
//! * **Versioned migrations** ([`MIGRATIONS`]) at connect, in one transaction that first takes
//!   a fixed `pg_advisory_xact_lock`: of several instances starting on an empty database, one
//!   migrates and the rest find nothing to do. The lock is released by the commit, or by the
//!   server if the process dies. The connect-time migration has a longer bound,
//!   [`MIGRATION_TIMEOUT`], since it may wait out another instance's migration.
//! * **One schema per store, optionally.** [`PostgresStore::connect_in_schema`] puts the
//!   tables in a dedicated schema (created if needed) by setting `search_path` in the startup
//!   options of every pooled connection, so no query names a schema and no connection can
//!   miss the setting. The tests use it to give each test its own empty store in one database.
//! * **Push invalidation** ([`SessionStore::subscribe`], `feed.rs`). The trigger function
//!   that moves the generation also runs `pg_notify('sessiond_generation', <schema>)`, sent
//!   as the transaction commits. A subscription is one connection of its own, outside the
//!   pool (same config, TLS and `search_path`; `application_name` + `" listen"`, so it can
//!   be told apart in `pg_stat_activity`), bounded by [`OP_TIMEOUT`] or [`CONNECT_TIMEOUT`]
//!   while it opens: it reads which schema its tables are in, `LISTEN`s, and a task drives the
//!   connection, forwarding the notifications of that schema only (deployments sharing a
//!   database in different schemas share the channel). [`ChangeFeed::generation`] reads the
//!   generation over that connection within [`OP_TIMEOUT`]. The connection ending is an error
//!   of [`ChangeFeed::changed`]; dropping the feed closes the connection and ends the task.
//!   A hand-made `UPDATE generation` notifies nobody: the verification cache's heartbeat
//!   catches it.
//!   A `DELETE FROM sessions` that deletes nothing (every login's trim to the per-user cap)
//!   neither moves the generation nor notifies: otherwise every login would flush every
//!   instance's cache.
//! * **The same contract as SQLite**, statement by statement: a touch is an `UPDATE` with
//!   `GREATEST` (never resurrects, never moves activity back); a rotation inserts and deletes
//!   in one transaction; the first admin is created under `LOCK TABLE users IN EXCLUSIVE
//!   MODE`, which orders it against every other write to `users` while leaving reads (logins)
//!   alone; sweeps delete a bounded batch found through the expiry index. Session data is a
//!   `JSONB` column read only by [`SessionStore::load_data`]. User ids come from an identity
//!   column, so a deleted user's id is never reused; usernames and session ids compare in the
//!   `"C"` collation, so listings come back in byte order as in every other store.
//! * **Second factors** ([`FactorStore`]): TOTP state, recovery-code hashes and passkeys, each
//!   row referencing its user `ON DELETE CASCADE`. A TOTP step or a recovery code is spent by
//!   one conditional `UPDATE`/`DELETE` (its row lock and READ COMMITTED's re-check make
//!   exactly one of racing callers win); a change that reads before it writes (the passkey
//!   cap, replacing the recovery codes) runs in a transaction holding the user's row lock.
//! * **Errors:** a unique violation (SQLSTATE `23505`) is [`StoreError::Conflict`]; a row that
//!   does not decode is [`StoreError::Corrupt`]; a URL or schema name that cannot work is
//!   [`StoreError::Config`]; anything else, [`StoreError::Unavailable`] with the driver's error
//!   as its source.
//!
//! * **TLS** with rustls, chosen by the connection string's `sslmode` (and `sslrootcert`):
//!   `require` encrypts without verifying the server, `verify-ca` verifies the chain,
//!   `verify-full` the chain and the host name; `disable` and the default `prefer` connect in
//!   plain text (`tls.rs` has the table). A mode that asks for TLS never falls back to plain
//!   text: a server without TLS fails the connect.

mod feed;
mod migrations;
mod tls;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::future::{try_join, try_join_all};
use sessiond_core::{
    AuthLevel, ChangeFeed, FactorStore, FactorSummary, Group, NewUser, RecoveryHash, SessionData,
    SessionId, SessionRecord, SessionStore, StoreError, StoredPasskey, ThrottleChange,
    ThrottleExpect, ThrottleOp, ThrottleRecord, ThrottleStore, Timestamp, TokenHash, TotpState,
    User, UserCredentials, UserId, UserStore, Username, PURGE_GRACE,
};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Json, ToSql};
use tokio_postgres::{NoTls, Row};

pub use migrations::MIGRATIONS;

/// Connections per store. Queries are point lookups of a millisecond or less, so a few
/// connections serve thousands of requests a second; the bound keeps many instances from
/// exhausting the server's `max_connections` (100 by default).
pub const POOL_SIZE: usize = 16;
/// Bound on opening a TCP connection to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one store call, from asking for a connection to the last row.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bound on the migration at connect, which may wait for another instance's.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Users and sessions in a PostgreSQL database. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// The pool's connection config with its own `application_name`, for the connections of
    /// [`SessionStore::subscribe`].
    listen: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    schema: Option<String>,
}

impl fmt::Debug for PostgresStore {
    // By hand: the pool's own `Debug` prints the whole connection config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// What a store call returns to [`PostgresStore::run`]: a boxed future borrowing the
/// connection, since a closure cannot otherwise return a future that borrows its argument.
type OpFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;

/// The server did not answer within a deadline; the source of [`StoreError::Unavailable`].
#[derive(Debug)]
struct TimedOut(Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgreSQL did not answer within {} ms",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for TimedOut {}

fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict
    } else {
        StoreError::unavailable(e)
    }
}

/// `schema` as a plain lowercase identifier: it is spliced into the startup options and into
/// `CREATE SCHEMA`, so it must need no quoting or escaping anywhere. `pg_` names are reserved
/// for the system.
fn check_schema(schema: &str) -> Result<(), StoreError> {
    let ok = (1..=63).contains(&schema.len())
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "invalid schema name {schema:?}: use 1 to 63 of a-z, 0-9 and '_', not starting \
             with a digit or 'pg_'"
        )))
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`, or the
    /// `key=value` form) and applies pending migrations to the tables in the connection's
    /// default schema (normally `public`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, None).await
    }

    /// Like [`PostgresStore::connect`], with every table in `schema` (a lowercase identifier),
    /// which is created if it does not exist.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        check_schema(schema)?;
        Self::open(url, Some(schema)).await
    }

    async fn open(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        // TLS options tokio-postgres does not know are taken out first (`tls.rs`).
        let split = tls::split(url)?;
        let tls = match &split.tls {
            None => None,
            Some(verify) => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                tls::client_config(verify)?,
            )),
        };
        // The parser names the option at fault, never its value: no password reaches a log.
        let mut config: tokio_postgres::Config = split
            .url
            .parse()
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            // Names our connections in `pg_stat_activity`.
            config.application_name("sessiond");
        }
        if let Some(schema) = schema {
            // In the startup packet, so it holds from the connection's first statement and
            // survives anything short of an explicit `SET`; kept after any options of the URL.
            let set = format!("-c search_path={schema}");
            let options = match config.get_options() {
                Some(o) if !o.is_empty() => format!("{o} {set}"),
                _ => set,
            };
            config.options(options);
        }
        let pool_of = |config: tokio_postgres::Config, size: usize| {
            let manager_config = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                None => Manager::from_config(config, NoTls, manager_config),
                Some(tls) => Manager::from_config(config, tls.clone(), manager_config),
            };
            Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(StoreError::unavailable)
        };
        let mut listen = config.clone();
        let name = config.get_application_name().unwrap_or("sessiond");
        listen.application_name(format!("{name}{}", feed::APPLICATION_SUFFIX));
        let store = Self {
            pool: pool_of(config, POOL_SIZE)?,
            listen,
            tls,
            schema: schema.map(str::to_owned),
        };
        let schema = store.schema.clone();
        store
            .run_within(
                OP_TIMEOUT.max(CONNECT_TIMEOUT),
                MIGRATION_TIMEOUT,
                move |c| {
                    Box::pin(async move {
                        if let Some(schema) = &schema {
                            migrations::create_schema(c, schema).await.map_err(pg)?;
                        }
                        migrations::apply(c).await.map_err(pg)
                    })
                },
            )
            .await?;
        Ok(store)
    }

    /// The schema given to [`PostgresStore::connect_in_schema`], if any.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                col(
                    &query_one(
                        &*c,
                        "SELECT coalesce(max(version), 0) FROM schema_migrations",
                        &[],
                    )
                    .await?,
                    0,
                )
            })
        })
        .await
    }

    /// Runs `op` on a pooled connection within [`OP_TIMEOUT`].
    async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'c> FnOnce(&'c mut Object) -> OpFuture<'c, T> + Send,
    {
        self.run_within(OP_TIMEOUT, OP_TIMEOUT, op).await
    }

    /// Runs `op` on a pooled connection obtained within `connect` of the start, finishing
    /// within `total` of it.
    async fn run_within<T, F>(
        &self,
        connect: Duration,
        total: Duration,
        op: F,
    ) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'c> FnOnce(&'c mut Object) -> OpFuture<'c, T> + Send,
    {
        run_on(&self.pool, connect, total, op).await
    }
}

/// Runs `op` on a connection of `pool` obtained within `connect` of the start, finishing
/// within `total` of it.
async fn run_on<T, F>(
    pool: &Pool,
    connect: Duration,
    total: Duration,
    op: F,
) -> Result<T, StoreError>
where
    T: Send,
    F: for<'c> FnOnce(&'c mut Object) -> OpFuture<'c, T> + Send,
{
    let start = Instant::now();
    let mut conn = match timeout_at(start + connect, pool.get()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(StoreError::unavailable(e)),
        Err(_) => return Err(StoreError::unavailable(TimedOut(connect))),
    };
    match timeout_at(start + total, op(&mut conn)).await {
        Ok(result) => result,
        Err(_) => {
            // The connection may have a request in flight (or a transaction open) that
            // nobody will wait for. Take it out of the pool and close it: the server rolls
            // back what was open, and the next caller gets a connection of its own.
            drop(Object::take(conn));
            Err(StoreError::unavailable(TimedOut(total)))
        }
    }
}

/// Prepares (once per connection) and runs `sql`; the number of rows it changed.
async fn exec<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&stmt, params).await.map_err(pg)
}

async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&stmt, params).await.map_err(pg)
}

async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&stmt, params).await.map_err(pg)
}

async fn query_one<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_one(&stmt, params).await.map_err(pg)
}

/// Column `i` of `row`; a value of the wrong type or an unexpected NULL means the table is not
/// what the migrations made.
fn col<'r, T: FromSql<'r>>(row: &'r Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| {
        let name = row.columns().get(i).map_or("?", |c| c.name());
        StoreError::Corrupt(format!("column {name}: {e}"))
    })
}

// Columns and statements as literals, so each statement text is a `&'static str`, built once
// at compile time and used as the key of the per-connection statement cache.
macro_rules! session_columns {
    () => {
        "token_hash, id, user_id, created_at, last_seen_at, absolute_expires_at, expires_at, \
         remember, ip, user_agent, level"
    };
}
macro_rules! user_columns {
    () => {
        "id, username, name, email, groups, admin, disabled, created_at, password_hash"
    };
}

const INSERT_SESSION: &str = concat!(
    "INSERT INTO sessions (",
    session_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
);
/// Makes the rest of the transaction's commit not wait for the disk (`SET LOCAL`, as a
/// statement that can be prepared and pipelined).
const RELAX_COMMIT: &str = "SELECT set_config('synchronous_commit', 'off', true)";
const LOAD_SESSION: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE token_hash = $1"
);
const DELETE_SESSION: &str = "DELETE FROM sessions WHERE token_hash = $1";
const LIST_FOR_USER: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE user_id = $1 ORDER BY created_at, id"
);
const LIST_ALL: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions ORDER BY created_at, id"
);
/// One page of a user's sessions in `(created_at, id)` order after a cursor (indexed).
const LIST_PAGE_FOR_USER: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE user_id = $1 AND (created_at, id) > ($2, $3) \
     ORDER BY created_at, id LIMIT $4"
);
/// One page of every session in `(created_at, id)` order after a cursor.
const LIST_PAGE_ALL: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE (created_at, id) > ($1, $2) ORDER BY created_at, id LIMIT $3"
);
const USER_BY_NAME: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE username_key = $1"
);
const USER_BY_ID: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
const LIST_USERS: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users ORDER BY username_key"
);
const INSERT_USER: &str = "INSERT INTO users \
     (username, username_key, name, email, groups, admin, created_at, password_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";

fn session_from_row(r: &Row) -> Result<SessionRecord, StoreError> {
    let hash: &[u8] = col(r, 0)?;
    let id: &str = col(r, 1)?;
    Ok(SessionRecord {
        token_hash: TokenHash::from_slice(hash)
            .ok_or_else(|| StoreError::Corrupt("bad token hash".into()))?,
        id: SessionId::parse(id).ok_or_else(|| StoreError::Corrupt("bad session id".into()))?,
        user_id: UserId(col(r, 2)?),
        created_at: Timestamp::from_millis(col(r, 3)?),
        last_seen_at: Timestamp::from_millis(col(r, 4)?),
        absolute_expires_at: Timestamp::from_millis(col(r, 5)?),
        expires_at: Timestamp::from_millis(col(r, 6)?),
        remember: col(r, 7)?,
        ip: col(r, 8)?,
        user_agent: col(r, 9)?,
        // An unknown level is corrupt, never read as some level: it decides access.
        level: AuthLevel::from_i64(col(r, 10)?)
            .ok_or_else(|| StoreError::Corrupt("bad authentication level".into()))?,
    })
}

fn sessions_from_rows(rows: &[Row]) -> Result<Vec<SessionRecord>, StoreError> {
    rows.iter().map(session_from_row).collect()
}

async fn insert_session<C: GenericClient>(c: &C, s: &SessionRecord) -> Result<(), StoreError> {
    exec(
        c,
        INSERT_SESSION,
        &[
            &s.token_hash.as_bytes().as_slice(),
            &s.id.as_str(),
            &s.user_id.0,
            &s.created_at.as_millis(),
            &s.last_seen_at.as_millis(),
            &s.absolute_expires_at.as_millis(),
            &s.expires_at.as_millis(),
            &s.remember,
            &s.ip,
            &s.user_agent,
            &s.level.as_i64(),
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create(&self, session: &SessionRecord) -> Result<(), StoreError> {
        // Owned copies here and below: the operation's future must not borrow the caller's
        // arguments (see `OpFuture`).
        let s = session.clone();
        self.run(move |c| Box::pin(async move { insert_session(&*c, &s).await }))
            .await
    }

    async fn load(&self, hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        let hash = *hash;
        self.run(move |c| {
            Box::pin(async move {
                query_opt(&*c, LOAD_SESSION, &[&hash.as_bytes().as_slice()])
                    .await?
                    .map(|r| session_from_row(&r))
                    .transpose()
            })
        })
        .await
    }

    async fn touch(
        &self,
        hash: &TokenHash,
        last_seen_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let hash = *hash;
        // An UPDATE of a row that is gone changes nothing: a touch can never resurrect a
        // session that a logout or revoke deleted. GREATEST keeps a late write from an older
        // request (or another instance) from moving activity backwards; the row lock orders
        // racing touches, and each sees the value the previous one committed.
        self.run(move |c| {
            Box::pin(async move {
                exec(
                    &*c,
                    "UPDATE sessions SET last_seen_at = GREATEST(last_seen_at, $2), \
                     expires_at = GREATEST(expires_at, $3) WHERE token_hash = $1",
                    &[
                        &hash.as_bytes().as_slice(),
                        &last_seen_at.as_millis(),
                        &expires_at.as_millis(),
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn delete(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        let hash = *hash;
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(&*c, DELETE_SESSION, &[&hash.as_bytes().as_slice()]).await? > 0)
            })
        })
        .await
    }

    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
        let old = *old;
        let new = new.clone();
        // One transaction: another reader sees either the old session or the new one, never
        // both, never neither. The delete comes first and decides (it locks the row, so a
        // concurrent revocation is either before it — nothing deleted, nothing inserted — or
        // after the commit). On an error or `false` the dropped transaction rolls back.
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                if exec(&tx, DELETE_SESSION, &[&old.as_bytes().as_slice()]).await? == 0 {
                    return Ok(false);
                }
                insert_session(&tx, &new).await?;
                tx.commit().await.map_err(pg)?;
                Ok(true)
            })
        })
        .await
    }

    async fn list_for_user(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        self.run(move |c| {
            Box::pin(
                async move { sessions_from_rows(&query(&*c, LIST_FOR_USER, &[&user.0]).await?) },
            )
        })
        .await
    }

    async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.run(|c| Box::pin(async move { sessions_from_rows(&query(&*c, LIST_ALL, &[]).await?) }))
            .await
    }

    async fn delete_by_id(
        &self,
        id: &SessionId,
        owner: Option<UserId>,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            Box::pin(async move {
                let n = match owner {
                    Some(o) => {
                        exec(
                            &*c,
                            "DELETE FROM sessions WHERE id = $1 AND user_id = $2",
                            &[&id.as_str(), &o.0],
                        )
                        .await?
                    }
                    None => {
                        exec(&*c, "DELETE FROM sessions WHERE id = $1", &[&id.as_str()]).await?
                    }
                };
                Ok(n > 0)
            })
        })
        .await
    }

    async fn delete_for_user(
        &self,
        user: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let keep = keep.map(|k| k.as_str().to_owned());
        // Twice, as two statements (two snapshots): a rotation of one of these sessions that
        // was in flight when the first began inserted its successor in a snapshot the first
        // cannot see (under READ COMMITTED it waits on the old row's lock, then finds it
        // gone). The first statement ends only after that rotation committed, so the second
        // sees and ends the successor: a rotation never carries a session past a revocation.
        self.run(move |c| {
            Box::pin(async move {
                let sql = "DELETE FROM sessions WHERE user_id = $1 AND id IS DISTINCT FROM $2";
                let first = exec(&*c, sql, &[&user.0, &keep]).await?;
                Ok(first + exec(&*c, sql, &[&user.0, &keep]).await?)
            })
        })
        .await
    }

    async fn delete_oldest_for_user(
        &self,
        user: UserId,
        keep_newest: usize,
    ) -> Result<u64, StoreError> {
        let keep = i64::try_from(keep_newest).unwrap_or(i64::MAX);
        self.run(move |c| {
            Box::pin(async move {
                exec(
                    &*c,
                    "DELETE FROM sessions WHERE user_id = $1 AND token_hash NOT IN \
                     (SELECT token_hash FROM sessions WHERE user_id = $1 \
                      ORDER BY created_at DESC, id DESC LIMIT $2)",
                    &[&user.0, &keep],
                )
                .await
            })
        })
        .await
    }

    async fn list_page(
        &self,
        user: Option<UserId>,
        after: Option<(Timestamp, SessionId)>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let (t, id) = after.map_or((i64::MIN, String::new()), |(t, id)| {
            (t.as_millis(), id.as_str().to_owned())
        });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            Box::pin(async move {
                let rows = match user {
                    Some(u) => query(&*c, LIST_PAGE_FOR_USER, &[&u.0, &t, &id, &limit]).await?,
                    None => query(&*c, LIST_PAGE_ALL, &[&t, &id, &limit]).await?,
                };
                sessions_from_rows(&rows)
            })
        })
        .await
    }

    async fn delete_all(&self) -> Result<u64, StoreError> {
        // Twice, for the reason given in `delete_for_user`: a rotation in flight.
        self.run(|c| {
            Box::pin(async move {
                let first = exec(&*c, "DELETE FROM sessions", &[]).await?;
                Ok(first + exec(&*c, "DELETE FROM sessions", &[]).await?)
            })
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let grace = i64::try_from(PURGE_GRACE.as_millis()).unwrap_or(i64::MAX);
        // The sub-select walks the expiry index, so each batch costs O(limit) however many
        // live sessions there are, and locks only the rows it deletes.
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                // Sessions expired before this, by the database's clock, go without moving
                // the generation (migration 8; `SessionStore::purge_expired`). For this
                // transaction only: every other DELETE moves it for any row.
                exec(
                    &tx,
                    "SELECT set_config('sessiond.purge_quiet_until', \
                     ((extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1)::text, true)",
                    &[&grace],
                )
                .await?;
                let n = exec(
                    &tx,
                    "DELETE FROM sessions WHERE token_hash IN \
                     (SELECT token_hash FROM sessions WHERE expires_at <= $1 \
                      ORDER BY expires_at LIMIT $2)",
                    &[&now.as_millis(), &limit],
                )
                .await?;
                tx.commit().await.map_err(pg)?;
                let c = &*c;
                // The sweeper's call also sweeps throttle counters whose window is over
                // (otherwise a spray of usernames and addresses would grow the table for
                // good). Same bound, same index walk; not counted in the sessions purged.
                exec(
                    c,
                    "DELETE FROM throttle WHERE key IN \
                     (SELECT key FROM throttle WHERE expires_at <= $1 \
                      ORDER BY expires_at LIMIT $2)",
                    &[&now.as_millis(), &limit],
                )
                .await?;
                Ok(n)
            })
        })
        .await
    }

    async fn load_data(&self, hash: &TokenHash) -> Result<Option<SessionData>, StoreError> {
        let hash = *hash;
        self.run(move |c| {
            Box::pin(async move {
                let Some(row) = query_opt(
                    &*c,
                    "SELECT data FROM sessions WHERE token_hash = $1",
                    &[&hash.as_bytes().as_slice()],
                )
                .await?
                else {
                    return Ok(None);
                };
                match col::<Option<serde_json::Value>>(&row, 0)? {
                    None => Ok(Some(SessionData::new())),
                    Some(serde_json::Value::Object(map)) => Ok(Some(map)),
                    Some(_) => Err(StoreError::Corrupt(
                        "session data: not a JSON object".into(),
                    )),
                }
            })
        })
        .await
    }

    async fn save_data(&self, hash: &TokenHash, data: &SessionData) -> Result<bool, StoreError> {
        let hash = *hash;
        let data = data.clone();
        // An UPDATE, like `touch`: a late save of a revoked session changes nothing.
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "UPDATE sessions SET data = $2 WHERE token_hash = $1",
                    &[&hash.as_bytes().as_slice(), &Json(&data)],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn patch_data(
        &self,
        hash: &TokenHash,
        set: &SessionData,
        remove: &[String],
    ) -> Result<bool, StoreError> {
        let hash = *hash;
        let set = set.clone();
        let remove = remove.to_vec();
        // One UPDATE: the row lock it takes orders it against every other write of the row,
        // and the merge reads the row as it is under that lock, so concurrent patches of
        // different keys all land. A row gone (revoked) matches nothing: nothing recreated.
        // Data that is not an object (corrupt) is left as it is and reported.
        self.run(move |c| {
            Box::pin(async move {
                let row = query_opt(
                    &*c,
                    "UPDATE sessions SET data = CASE \
                       WHEN data IS NULL OR jsonb_typeof(data) = 'object' \
                       THEN (coalesce(data, '{}'::jsonb) || $2::jsonb) - $3::text[] \
                       ELSE data END \
                     WHERE token_hash = $1 RETURNING jsonb_typeof(data)",
                    &[&hash.as_bytes().as_slice(), &Json(&set), &remove],
                )
                .await?;
                match row {
                    None => Ok(false),
                    Some(row) if col::<String>(&row, 0)? == "object" => Ok(true),
                    Some(_) => Err(StoreError::Corrupt(
                        "session data: not a JSON object".into(),
                    )),
                }
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A round trip, not just a pool checkout: a pooled connection is not proof of a
        // reachable server.
        self.run(|c| Box::pin(async move { exec(&*c, "SELECT 1", &[]).await.map(drop) }))
            .await
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let row = query_one(&*c, "SELECT value FROM generation WHERE id = 1", &[]).await?;
                Ok(col::<i64>(&row, 0)?.max(0) as u64)
            })
        })
        .await
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        // Bounded like opening the store: the startup exchange after the TCP handshake has
        // no deadline of its own, and the cache stays off until this returns.
        let bound = OP_TIMEOUT.max(CONNECT_TIMEOUT);
        match tokio::time::timeout(bound, feed::subscribe(&self.listen, self.tls.as_ref())).await {
            Ok(Ok(feed)) => Ok(Some(Box::new(feed))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::unavailable(TimedOut(bound))),
        }
    }

    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        let now = now.as_millis();
        self.run(|c| {
            Box::pin(async move {
                let row = query_one(
                    &*c,
                    "SELECT count(*) FROM sessions WHERE expires_at > $1",
                    &[&now],
                )
                .await?;
                Ok(Some(col::<i64>(&row, 0)?.max(0) as u64))
            })
        })
        .await
    }
}

#[async_trait]
impl ThrottleStore for PostgresStore {
    async fn throttle_hit(
        &self,
        key: &str,
        now: Timestamp,
        window: std::time::Duration,
    ) -> Result<ThrottleRecord, StoreError> {
        let key = key.to_owned();
        let (now, fresh_until) = (now.as_millis(), now.plus(window).as_millis());
        // One statement, atomic under concurrency: a live counter is incremented, a missing
        // or expired one starts again.
        self.run(move |c| {
            Box::pin(async move {
                let row = query_one(&*c, THROTTLE_HIT, &[&key, &now, &fresh_until]).await?;
                throttle_from_row(&row)
            })
        })
        .await
    }

    async fn throttle_apply(
        &self,
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        // (key, end of a fresh window or None to delete), sorted by key (stably: changes to one
        // key keep their order): concurrent logins then lock their rows in one global order
        // and never deadlock each other.
        let mut owned: Vec<(String, ThrottleOp)> =
            changes.iter().map(|c| c.to_op_at(now)).collect();
        owned.sort_by(|a, b| a.0.cmp(&b.0));
        let now = now.as_millis();
        // One transaction: one round trip of commit per login instead of one per change
        // (the server's CPU under a login flood is the machine's), and a commit that does not
        // wait for the disk. The changes this is called with give back or forget (refunds,
        // the counters a right password clears, a device's registration): lost in a crash of
        // PostgreSQL or its machine (at most three `wal_writer_delay`s, 0.6 s by default),
        // they leave a stricter throttle, never a laxer one. What would make it laxer, the
        // failures an attempt reserves (`throttle_reserve`) and a new device counted
        // (`throttle_hit`), still waits for the disk, and its flush takes every earlier
        // change with it. The trait's contract allows it (`ThrottleStore::throttle_apply`).
        // What it saves: one of the four disk flushes a login waited for, which bound logins
        // below the hash rate on a disk with slow flushes (docs/performance.md, "Logins on
        // PostgreSQL").
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                let relax = tx.prepare_cached(RELAX_COMMIT).await.map_err(pg)?;
                // Sent first (polled first), so it precedes the changes' statements.
                try_join(
                    async { tx.execute(&relax, &[]).await.map_err(pg) },
                    apply_throttle(&tx, &owned, now),
                )
                .await?;
                tx.commit().await.map_err(pg)
            })
        })
        .await
    }

    async fn throttle_reserve(
        &self,
        expected: &[(&str, ThrottleExpect)],
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let expected: Vec<(String, ThrottleExpect)> = expected
            .iter()
            .map(|(k, r)| ((*k).to_owned(), *r))
            .collect();
        let mut owned: Vec<(String, ThrottleOp)> =
            changes.iter().map(|c| c.to_op_at(now)).collect();
        owned.sort_by(|a, b| a.0.cmp(&b.0));
        // Every key read or written, locked in one global order (no deadlock between two
        // reservations). Transaction-scoped advisory locks, because a counter that does not
        // exist yet has no row to lock: the compare and the apply are then one atomic step
        // against every other reservation, on every instance.
        let mut lock_keys: Vec<String> = expected
            .iter()
            .map(|(k, _)| k.clone())
            .chain(owned.iter().map(|(k, _)| k.clone()))
            .collect();
        lock_keys.sort();
        lock_keys.dedup();
        let now = now.as_millis();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                let lock = tx
                    .prepare_cached(
                        "SELECT pg_advisory_xact_lock(hashtextextended('sessiond.throttle:' || k, 0)) \
                         FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
                    )
                    .await
                    .map_err(pg)?;
                let read = tx.prepare_cached(THROTTLE_READ_MANY).await.map_err(pg)?;
                let keys: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
                // The locks and the read in one round trip (both prepared above, so each goes
                // out when first polled, in `try_join`'s order; see `apply_throttle`). The
                // read still runs after the locks are ours: PostgreSQL runs the statements in
                // order, and at READ COMMITTED each takes its snapshot when it starts, so it
                // sees every reservation committed before this one got the locks.
                let (_, rows) = try_join(
                    tx.execute(&lock, &[&lock_keys]),
                    tx.query(&read, &[&keys, &now]),
                )
                .await
                .map_err(pg)?;
                let rows = throttle_rows(&rows)?;
                for (key, want) in &expected {
                    let got = rows.iter().find(|(k, _)| k == key).map(|(_, rec)| *rec);
                    if !want.holds(got) {
                        return Ok(false); // dropped: rolled back
                    }
                }
                apply_throttle(&tx, &owned, now).await?;
                tx.commit().await.map_err(pg)?;
                Ok(true)
            })
        })
        .await
    }

    async fn throttle_get(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<ThrottleRecord>, StoreError> {
        let key = key.to_owned();
        let now = now.as_millis();
        self.run(move |c| {
            Box::pin(async move {
                query_opt(
                    &*c,
                    "SELECT count, last_at, expires_at FROM throttle WHERE key = $1 AND expires_at > $2",
                    &[&key, &now],
                )
                .await?
                .map(|r| throttle_from_row(&r))
                .transpose()
            })
        })
        .await
    }

    async fn throttle_get_many(
        &self,
        keys: &[&str],
        now: Timestamp,
    ) -> Result<Vec<Option<ThrottleRecord>>, StoreError> {
        let owned: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let now = now.as_millis();
        // One query for every counter a login checks (three or four), instead of one round
        // trip each.
        let rows = self
            .run(move |c| {
                Box::pin(async move {
                    throttle_rows(&query(&*c, THROTTLE_READ_MANY, &[&owned, &now]).await?)
                })
            })
            .await?;
        Ok(keys
            .iter()
            .map(|k| rows.iter().find(|(key, _)| key == k).map(|(_, rec)| *rec))
            .collect())
    }

    async fn throttle_list(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, ThrottleRecord)>, StoreError> {
        let now = now.as_millis();
        self.run(move |c| {
            Box::pin(async move {
                exec(&*c, "DELETE FROM throttle WHERE expires_at <= $1", &[&now]).await?;
                let rows = query(
                    &*c,
                    "SELECT count, last_at, expires_at, key FROM throttle WHERE expires_at > $1 ORDER BY key",
                    &[&now],
                )
                .await?;
                rows.iter().map(|r| Ok((col::<String>(r, 3)?, throttle_from_row(r)?))).collect()
            })
        })
        .await
    }

    async fn throttle_delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(&*c, "DELETE FROM throttle WHERE key = $1", &[&key]).await? > 0)
            })
        })
        .await
    }
}

/// Applies owned throttle changes in order, inside the caller's transaction.
async fn apply_throttle<C: GenericClient>(
    tx: &C,
    owned: &[(String, ThrottleOp)],
    now: i64,
) -> Result<(), StoreError> {
    // One round trip for all of them (a login's settlement is five to seven statements, and
    // each round trip costs both processes a wake-up and a few system calls on a machine
    // whose cores a login flood already gives to hashing; docs/performance.md, "Logins on
    // PostgreSQL"). Every statement is prepared first (from the connection's cache after its
    // first use there), so each request below goes out when its future is first polled, and
    // `try_join_all` polls them in order: PostgreSQL runs one connection's statements in the
    // order they arrive, the order of this loop (a refund's UPDATE before its DELETE). A
    // failure aborts the transaction, the statements after it fail with it, and the first
    // error is the one returned.
    let hit = tx.prepare_cached(THROTTLE_HIT).await.map_err(pg)?;
    let delete = tx.prepare_cached(THROTTLE_DELETE).await.map_err(pg)?;
    let refund = tx.prepare_cached(THROTTLE_REFUND).await.map_err(pg)?;
    let sweep = tx.prepare_cached(THROTTLE_SWEEP).await.map_err(pg)?;
    let mut steps = Vec::with_capacity(owned.len() * 2);
    for (key, op) in owned {
        let key: &(dyn ToSql + Sync) = key;
        match op {
            ThrottleOp::Hit(until) => steps.push(tx.execute_raw(&hit, vec![key, &now, until])),
            ThrottleOp::Delete => steps.push(tx.execute_raw(&delete, vec![key])),
            ThrottleOp::Refund => {
                // Decrement first, then remove a counter that reached zero (or is over). The
                // UPDATE locks the row until commit, so concurrent refunds of one counter
                // queue behind each other; a DELETE-first order let two refunds at two both
                // skip the delete and decrement once (one event never given back).
                steps.push(tx.execute_raw(&refund, vec![key, &now]));
                steps.push(tx.execute_raw(&sweep, vec![key, &now]));
            }
        }
    }
    try_join_all(steps).await.map_err(pg)?;
    Ok(())
}

const THROTTLE_DELETE: &str = "DELETE FROM throttle WHERE key = $1";
const THROTTLE_REFUND: &str =
    "UPDATE throttle SET count = count - 1 WHERE key = $1 AND expires_at > $2";
const THROTTLE_SWEEP: &str =
    "DELETE FROM throttle WHERE key = $1 AND (count <= 0 OR expires_at <= $2)";

/// One more event under $1 at $2 (a fresh window ends at $3), atomic under concurrency: a
/// live counter is incremented, a missing or expired one starts again.
const THROTTLE_HIT: &str =
    "INSERT INTO throttle (key, count, last_at, expires_at) VALUES ($1, 1, $2, $3) \
     ON CONFLICT (key) DO UPDATE SET \
       count = CASE WHEN throttle.expires_at > $2 THEN throttle.count + 1 ELSE 1 END, \
       expires_at = CASE WHEN throttle.expires_at > $2 THEN throttle.expires_at ELSE $3 END, \
       last_at = $2 \
     RETURNING count, last_at, expires_at";

/// The live counters among the keys $1 at $2 (rows for [`throttle_rows`]).
const THROTTLE_READ_MANY: &str = "SELECT count, last_at, expires_at, key FROM throttle \
     WHERE key = ANY($1) AND expires_at > $2";

/// [`THROTTLE_READ_MANY`]'s rows as (key, counter).
fn throttle_rows(rows: &[Row]) -> Result<Vec<(String, ThrottleRecord)>, StoreError> {
    rows.iter()
        .map(|r| Ok((col::<String>(r, 3)?, throttle_from_row(r)?)))
        .collect()
}

fn throttle_from_row(r: &Row) -> Result<ThrottleRecord, StoreError> {
    Ok(ThrottleRecord {
        count: col::<i64>(r, 0)?.max(0) as u64,
        last_at: Timestamp::from_millis(col(r, 1)?),
        expires_at: Timestamp::from_millis(col(r, 2)?),
    })
}

fn user_from_row(r: &Row) -> Result<UserCredentials, StoreError> {
    let username: &str = col(r, 1)?;
    Ok(UserCredentials {
        user: User {
            id: UserId(col(r, 0)?),
            username: Username::from_stored(username)
                .map_err(|e| StoreError::Corrupt(format!("username {username:?}: {e}")))?,
            name: col(r, 2)?,
            email: col(r, 3)?,
            groups: col::<Vec<String>>(r, 4)?
                .iter()
                .map(|g| Group::parse(g))
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Corrupt(format!("column groups: {e}")))?,
            admin: col(r, 5)?,
            disabled: col(r, 6)?,
            created_at: Timestamp::from_millis(col(r, 7)?),
        },
        password_hash: col(r, 8)?,
    })
}

async fn insert_user<C: GenericClient>(c: &C, new: &NewUser) -> Result<User, StoreError> {
    let groups: Vec<&str> = new.groups.iter().map(Group::as_str).collect();
    let row = query_one(
        c,
        INSERT_USER,
        &[
            &new.username.as_str(),
            &new.username.key(),
            &new.name,
            &new.email,
            &groups,
            &new.admin,
            &new.created_at.as_millis(),
            &new.password_hash,
        ],
    )
    .await?;
    Ok(User {
        id: UserId(col(&row, 0)?),
        username: new.username.clone(),
        name: new.name.clone(),
        email: new.email.clone(),
        groups: new.groups.clone(),
        admin: new.admin,
        disabled: false,
        created_at: new.created_at,
    })
}

#[async_trait]
impl UserStore for PostgresStore {
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        let new = new.clone();
        self.run(move |c| Box::pin(async move { insert_user(&*c, &new).await }))
            .await
    }

    async fn create_user_if_none(&self, new: &NewUser) -> Result<Option<User>, StoreError> {
        let new = new.clone();
        // EXCLUSIVE conflicts with itself and with every INSERT, UPDATE and DELETE on `users`,
        // but not with plain reads. Taken before the check, it makes "no users yet" true until
        // we commit: of several instances starting at once exactly one creates the first
        // admin, and no `create_user` can slip in between the check and the insert. (In READ
        // COMMITTED the check's snapshot is taken after the lock is granted, so it sees what
        // the previous holder committed.)
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                tx.batch_execute("LOCK TABLE users IN EXCLUSIVE MODE")
                    .await
                    .map_err(pg)?;
                let exists: bool = col(
                    &query_one(&tx, "SELECT EXISTS (SELECT 1 FROM users)", &[]).await?,
                    0,
                )?;
                let created = if exists {
                    None
                } else {
                    Some(insert_user(&tx, &new).await?)
                };
                tx.commit().await.map_err(pg)?;
                Ok(created)
            })
        })
        .await
    }

    async fn user_by_name(&self, name: &Username) -> Result<Option<UserCredentials>, StoreError> {
        let key = name.key();
        self.run(move |c| {
            Box::pin(async move {
                query_opt(&*c, USER_BY_NAME, &[&key])
                    .await?
                    .map(|r| user_from_row(&r))
                    .transpose()
            })
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                query_opt(&*c, USER_BY_ID, &[&id.0])
                    .await?
                    .map(|r| user_from_row(&r).map(|u| u.user))
                    .transpose()
            })
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                query(&*c, LIST_USERS, &[])
                    .await?
                    .iter()
                    .map(|r| user_from_row(r).map(|u| u.user))
                    .collect()
            })
        })
        .await
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<bool, StoreError> {
        let phc = phc.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "UPDATE users SET password_hash = $2 WHERE id = $1",
                    &[&id.0, &phc],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        phc: &str,
    ) -> Result<bool, StoreError> {
        let (expected, phc) = (expected.to_owned(), phc.to_owned());
        // One statement: the row lock makes the comparison and the write atomic (a concurrent
        // writer re-evaluates the WHERE after the first commits, under READ COMMITTED).
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                    &[&id.0, &expected, &phc],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "UPDATE users SET disabled = $2 WHERE id = $1",
                    &[&id.0, &disabled],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(&*c, "DELETE FROM users WHERE id = $1", &[&id.0]).await? > 0)
            })
        })
        .await
    }
}

macro_rules! passkey_columns {
    () => {
        "credential_id, user_id, name, data, created_at, last_used_at"
    };
}

const PASSKEYS_OF: &str = concat!(
    "SELECT ",
    passkey_columns!(),
    " FROM passkeys WHERE user_id = $1 ORDER BY created_at, seq"
);
const PASSKEY_BY_CREDENTIAL: &str = concat!(
    "SELECT ",
    passkey_columns!(),
    " FROM passkeys WHERE credential_id = $1"
);
const INSERT_PASSKEY: &str = concat!(
    "INSERT INTO passkeys (",
    passkey_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6)"
);

fn passkey_from_row(r: &Row) -> Result<StoredPasskey, StoreError> {
    Ok(StoredPasskey {
        credential_id: col(r, 0)?,
        user_id: UserId(col(r, 1)?),
        name: col(r, 2)?,
        data: col(r, 3)?,
        created_at: Timestamp::from_millis(col(r, 4)?),
        last_used_at: col::<Option<i64>>(r, 5)?.map(Timestamp::from_millis),
    })
}

/// A stored count as the summary's `u32`.
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Locks the user's row until the transaction ends; `false` if there is no such user.
///
/// `FOR NO KEY UPDATE` conflicts with itself and with the lock a `DELETE` of the user takes,
/// not with reads (logins) or foreign-key checks: two changes of one user's factors that
/// read before they write (the passkey cap, replacing the recovery codes) run one after the
/// other, each seeing what the other committed (every statement of a READ COMMITTED
/// transaction takes a fresh snapshot), and the user cannot be deleted in between, so no
/// write fails on the foreign key.
async fn lock_user<C: GenericClient>(tx: &C, user: UserId) -> Result<bool, StoreError> {
    Ok(query_opt(
        tx,
        "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE",
        &[&user.0],
    )
    .await?
    .is_some())
}

/// Replaces every recovery code of `user` by `hashes`, inside the caller's transaction (which
/// holds the user's lock: see [`lock_user`]).
async fn replace_recovery<C: GenericClient>(
    tx: &C,
    user: UserId,
    hashes: &[RecoveryHash],
) -> Result<(), StoreError> {
    exec(
        tx,
        "DELETE FROM recovery_codes WHERE user_id = $1",
        &[&user.0],
    )
    .await?;
    let hashes: Vec<&[u8]> = hashes.iter().map(|h| h.as_slice()).collect();
    exec(
        tx,
        "INSERT INTO recovery_codes (user_id, hash) SELECT $1, unnest($2::bytea[]) \
         ON CONFLICT DO NOTHING",
        &[&user.0, &hashes],
    )
    .await?;
    Ok(())
}

/// Every change below is one statement (its row lock orders racing callers, and under READ
/// COMMITTED a waiting statement re-checks its condition on the row as committed) or one
/// transaction holding the user's lock (`lock_user`): of two requests racing on one TOTP
/// step or one recovery code, on any instance, exactly one wins.
#[async_trait]
impl FactorStore for PostgresStore {
    async fn factor_summary(&self, user: UserId) -> Result<FactorSummary, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let row = query_one(
                    &*c,
                    "SELECT EXISTS (SELECT 1 FROM totp WHERE user_id = $1 AND secret IS NOT NULL), \
                     (SELECT count(*) FROM recovery_codes WHERE user_id = $1), \
                     (SELECT count(*) FROM passkeys WHERE user_id = $1)",
                    &[&user.0],
                )
                .await?;
                Ok(FactorSummary {
                    totp: col(&row, 0)?,
                    recovery_codes: count(col(&row, 1)?),
                    passkeys: count(col(&row, 2)?),
                })
            })
        })
        .await
    }

    async fn totp_state(&self, user: UserId) -> Result<Option<TotpState>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let Some(row) = query_opt(
                    &*c,
                    "SELECT secret, last_step, pending, pending_at FROM totp WHERE user_id = $1",
                    &[&user.0],
                )
                .await?
                else {
                    return Ok(None);
                };
                let active: Option<Vec<u8>> = col(&row, 0)?;
                let pending = match (
                    col::<Option<Vec<u8>>>(&row, 2)?,
                    col::<Option<i64>>(&row, 3)?,
                ) {
                    (Some(secret), Some(at)) => Some((secret, Timestamp::from_millis(at))),
                    (None, _) => None,
                    (Some(_), None) => {
                        return Err(StoreError::Corrupt(
                            "totp: a pending secret without its time".into(),
                        ))
                    }
                };
                if active.is_none() && pending.is_none() {
                    return Ok(None);
                }
                Ok(Some(TotpState {
                    active,
                    last_step: col(&row, 1)?,
                    pending,
                }))
            })
        })
        .await
    }

    async fn totp_begin(
        &self,
        user: UserId,
        secret: &[u8],
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let secret = secret.to_vec();
        // Only the pending columns are set: an active secret and its last step stay as they
        // are.
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                if !lock_user(&tx, user).await? {
                    return Ok(false);
                }
                exec(
                    &tx,
                    "INSERT INTO totp (user_id, pending, pending_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id) DO UPDATE \
                     SET pending = excluded.pending, pending_at = excluded.pending_at",
                    &[&user.0, &secret, &at.as_millis()],
                )
                .await?;
                tx.commit().await.map_err(pg)?;
                Ok(true)
            })
        })
        .await
    }

    async fn totp_confirm(
        &self,
        user: UserId,
        pending: &[u8],
        step: i64,
        recovery: &[RecoveryHash],
    ) -> Result<bool, StoreError> {
        let (pending, recovery) = (pending.to_vec(), recovery.to_vec());
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                if !lock_user(&tx, user).await? {
                    return Ok(false);
                }
                // Compare-and-set on the pending secret: a setup that replaced it, or a
                // confirm that took it, makes this one match nothing, and the dropped
                // transaction rolls back.
                let confirmed = exec(
                    &tx,
                    "UPDATE totp SET secret = pending, last_step = $3, \
                     pending = NULL, pending_at = NULL \
                     WHERE user_id = $1 AND pending = $2",
                    &[&user.0, &pending, &step],
                )
                .await?
                    > 0;
                if !confirmed {
                    return Ok(false);
                }
                replace_recovery(&tx, user, &recovery).await?;
                tx.commit().await.map_err(pg)?;
                Ok(true)
            })
        })
        .await
    }

    async fn totp_use_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        // Compare-and-set in one statement: a second request with the same code waits on the
        // row lock, then re-checks `last_step < step` on the committed row and matches nothing.
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "UPDATE totp SET last_step = $2 \
                     WHERE user_id = $1 AND secret IS NOT NULL AND last_step < $2",
                    &[&user.0, &step],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn totp_remove(&self, user: UserId) -> Result<bool, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(&*c, "DELETE FROM totp WHERE user_id = $1", &[&user.0]).await? > 0)
            })
        })
        .await
    }

    async fn recovery_use(&self, user: UserId, hash: &RecoveryHash) -> Result<bool, StoreError> {
        let hash = *hash;
        // The delete is the check: a second request with the same code waits on the row
        // lock, then finds the row gone.
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "DELETE FROM recovery_codes WHERE user_id = $1 AND hash = $2",
                    &[&user.0, &hash.as_slice()],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn recovery_replace(
        &self,
        user: UserId,
        hashes: &[RecoveryHash],
    ) -> Result<bool, StoreError> {
        let hashes = hashes.to_vec();
        // Under the user's lock: two replacements racing cannot both keep their set (each
        // delete would miss the rows the other inserted in a snapshot it cannot see).
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                if !lock_user(&tx, user).await? {
                    return Ok(false);
                }
                replace_recovery(&tx, user, &hashes).await?;
                tx.commit().await.map_err(pg)?;
                Ok(true)
            })
        })
        .await
    }

    async fn passkey_add(
        &self,
        key: &StoredPasskey,
        max_per_user: usize,
    ) -> Result<bool, StoreError> {
        let key = key.clone();
        let max = i64::try_from(max_per_user).unwrap_or(i64::MAX);
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                // A taken credential id is a conflict before anything else (as in the
                // reference store). One registered meanwhile by another transaction makes
                // the insert below wait for it, then fail as a unique violation: a conflict
                // too.
                let taken = query_opt(
                    &tx,
                    "SELECT 1 FROM passkeys WHERE credential_id = $1",
                    &[&key.credential_id],
                )
                .await?
                .is_some();
                if taken {
                    return Err(StoreError::Conflict);
                }
                // The cap is counted under the user's lock: two registrations racing cannot
                // both fit under it.
                if !lock_user(&tx, key.user_id).await? {
                    return Ok(false);
                }
                let held: i64 = col(
                    &query_one(
                        &tx,
                        "SELECT count(*) FROM passkeys WHERE user_id = $1",
                        &[&key.user_id.0],
                    )
                    .await?,
                    0,
                )?;
                if held >= max {
                    return Ok(false);
                }
                exec(
                    &tx,
                    INSERT_PASSKEY,
                    &[
                        &key.credential_id,
                        &key.user_id.0,
                        &key.name,
                        &key.data,
                        &key.created_at.as_millis(),
                        &key.last_used_at.map(Timestamp::as_millis),
                    ],
                )
                .await?;
                tx.commit().await.map_err(pg)?;
                Ok(true)
            })
        })
        .await
    }

    async fn passkeys_of(&self, user: UserId) -> Result<Vec<StoredPasskey>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                query(&*c, PASSKEYS_OF, &[&user.0])
                    .await?
                    .iter()
                    .map(passkey_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskey>, StoreError> {
        let credential_id = credential_id.to_vec();
        self.run(move |c| {
            Box::pin(async move {
                query_opt(&*c, PASSKEY_BY_CREDENTIAL, &[&credential_id])
                    .await?
                    .map(|r| passkey_from_row(&r))
                    .transpose()
            })
        })
        .await
    }

    async fn passkey_update(
        &self,
        user: UserId,
        credential_id: &[u8],
        data: &str,
        used_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let (credential_id, data) = (credential_id.to_vec(), data.to_owned());
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "UPDATE passkeys SET data = $3, last_used_at = $4 \
                     WHERE user_id = $1 AND credential_id = $2",
                    &[&user.0, &credential_id, &data, &used_at.as_millis()],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn passkey_remove(&self, user: UserId, credential_id: &[u8]) -> Result<bool, StoreError> {
        let credential_id = credential_id.to_vec();
        self.run(move |c| {
            Box::pin(async move {
                Ok(exec(
                    &*c,
                    "DELETE FROM passkeys WHERE user_id = $1 AND credential_id = $2",
                    &[&user.0, &credential_id],
                )
                .await?
                    > 0)
            })
        })
        .await
    }

    async fn factors_reset(&self, user: UserId) -> Result<bool, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg)?;
                // Under the user's lock (when the user exists): ordered against a confirm or
                // a registration in flight, which then find nothing or commit first and are
                // removed here.
                lock_user(&tx, user).await?;
                let mut removed = 0;
                for sql in [
                    "DELETE FROM totp WHERE user_id = $1",
                    "DELETE FROM recovery_codes WHERE user_id = $1",
                    "DELETE FROM passkeys WHERE user_id = $1",
                ] {
                    removed += exec(&tx, sql, &[&user.0]).await?;
                }
                tx.commit().await.map_err(pg)?;
                Ok(removed > 0)
            })
        })
        .await
    }
}

#[cfg(test)]
mod conformance {
    sessiond_store_tests::conformance_tests!(optional async {
        sessiond_store_tests::service_or_skip("PostgreSQL", crate::tests::fresh_store().await)
    });
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
