//! # sessiond-store-sqlite
//!
//! The embedded default store: users and sessions in one SQLite file.
//!
//! * **WAL mode** so readers never wait for the writer and the writer never waits for readers;
//!   `busy_timeout` so several processes (the server and the CLI) can share the file.
//! * **Versioned migrations** ([`MIGRATIONS`]) applied at open inside an `IMMEDIATE`
//!   transaction, so several processes opening a fresh file at once apply each step once.
//! * **Reads run inline** on a small pool of read-only connections: a point lookup by primary
//!   key takes microseconds, far less than a hop to a blocking thread would. **Writes go to one
//!   writer connection on tokio's blocking pool**, since they may wait for the file lock or an
//!   fsync.
//! * Sessions live in a `WITHOUT ROWID` table keyed by the token hash, with indexes on the user
//!   (per-user listing and revocation) and on the expiry (bounded sweeps). A sweep that finds
//!   a backlog of long-expired sessions beside few others clears the table at once and puts
//!   the others back (`purge_by_truncation`).
//! * **Second factors** ([`FactorStore`]) live beside the users: TOTP state, recovery-code
//!   hashes, passkeys. Every change is one statement or one `IMMEDIATE` transaction, so two
//!   requests racing on one code never both win; a trigger deletes a user's factors with the
//!   user (foreign keys are not enforced on every SQLite connection, triggers are).

mod migrations;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};
use sessiond_core::{
    AuthLevel, ChangeFeed, FactorStore, FactorSummary, Group, NewUser, RecoveryHash, SessionData,
    SessionId, SessionRecord, SessionStore, StoreError, StoredPasskey, ThrottleChange,
    ThrottleExpect, ThrottleOp, ThrottleRecord, ThrottleStore, Timestamp, TokenHash, TotpState,
    User, UserCredentials, UserId, UserStore, Username, PURGE_GRACE,
};

pub use migrations::MIGRATIONS;

/// How long a write may wait, in all, for the file's write lock (held by another process such
/// as the CLI or another server) and for this store's own writer connection, before it fails
/// as `Unavailable`. The contract is a `503 store_unavailable` within 2 s
/// (docs/reference/security.md, "Store failures"); 1 s leaves room for the request's other
/// work (a login hashes a password first, which takes longer on a loaded machine). Shared by
/// the server and the CLI: every writer holds the lock for milliseconds (sweeps are batched),
/// so a longer wait would only hide a stuck process.
pub const WRITE_BUDGET: Duration = Duration::from_secs(1);
/// How long a read waits for a lock (in WAL mode only recovery or a checkpoint truncation
/// takes one): the same budget.
const BUSY_TIMEOUT: Duration = WRITE_BUDGET;
/// Opening a file may apply migrations, which another process opening it at the same moment
/// may be applying: startup waits longer than a request.
const OPEN_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 16;

/// Users and sessions in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// When a purge may clear the table at once instead of row by row (`purge_by_truncation`).
    bulk: BulkPurge,
    /// The `now` of the last purge call that found no backlog to clear at once: the batches
    /// of one sweep share their `now`, so the checks run once a sweep, not once a batch.
    bulk_refused_for: Mutex<Option<i64>>,
    /// Data patches waiting for the writer, written together (see [`SqliteStore::patch_data`]).
    patches: Mutex<Patches>,
    /// Calls of [`SqliteStore::write`] waiting for the writer connection: the thread writing
    /// data patches lets them have it before its next batch ([`write_queued_patches`]).
    writes_waiting: AtomicUsize,
}

/// The data patches waiting for the writer connection, and whether a thread is writing them.
#[derive(Debug, Default)]
struct Patches {
    queue: Vec<PatchJob>,
    /// A thread of the blocking pool is writing the queue ([`write_queued_patches`]): a new
    /// patch joins the queue and waits; otherwise it starts such a thread.
    writing: bool,
}

/// One session-data patch waiting for the writer connection.
#[derive(Debug)]
struct PatchJob {
    hash: TokenHash,
    set: SessionData,
    remove: Vec<String>,
    /// When it was asked for: its [`WRITE_BUDGET`] runs from here, as a [`SqliteStore::write`]'s.
    asked: Instant,
    /// Where its outcome goes, once the commit that holds it is done.
    reply: tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
}

impl PatchJob {
    fn finish(self, outcome: Result<bool, StoreError>) {
        // The caller may have gone (its request was dropped): nobody to tell.
        let _ = self.reply.send(outcome);
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    match e {
        // A value that does not decode (see `user_from_row`): the data, not the store.
        rusqlite::Error::FromSqlConversionFailure(column, _, cause) => {
            StoreError::Corrupt(format!("column {column}: {cause}"))
        }
        e if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => StoreError::Conflict,
        e => StoreError::unavailable(e),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic mid-query leaves the connection usable (SQLite rolls back open transactions on
    // the next statement), so recover the guard instead of poisoning the store for good.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        create_private(&path).map_err(StoreError::unavailable)?;
        let mut writer = Connection::open(&path).map_err(unavailable)?;
        configure(&writer).map_err(unavailable)?;
        writer
            .busy_timeout(OPEN_BUSY_TIMEOUT)
            .map_err(unavailable)?;
        // WAL is a property of the file: set once by the writer, every later connection sees it.
        enable_wal(&writer, OPEN_BUSY_TIMEOUT).map_err(unavailable)?;
        migrations::apply(&mut writer).map_err(unavailable)?;
        writer.busy_timeout(WRITE_BUDGET).map_err(unavailable)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                bulk: BulkPurge::DEFAULT,
                bulk_refused_for: Mutex::new(None),
                patches: Mutex::new(Patches::default()),
                writes_waiting: AtomicUsize::new(0),
            }),
        })
    }

    /// The database file's permission bits, when group or others have any access to it (a
    /// file from before sessiond created them `0600`, or made by hand): the server warns.
    /// An existing file's mode is left as the operator set it.
    pub fn loose_permissions(&self) -> Option<u32> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&self.inner.path)
                .ok()?
                .permissions()
                .mode()
                & 0o777;
            (mode & 0o077 != 0).then_some(mode)
        }
        #[cfg(not(unix))]
        None
    }

    /// The schema version the file is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT max(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
        })
    }

    /// Runs `f` on a pooled read connection, on the calling thread.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = lock(&self.inner.readers).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.inner.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(unavailable)?;
                configure(&c).map_err(unavailable)?;
                c
            }
        };
        let out = f(&conn).map_err(unavailable);
        let mut pool = lock(&self.inner.readers);
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Runs `f` on the writer connection, on tokio's blocking pool (it may wait on a lock or an
    /// fsync, which must not stall the async threads).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let start = Instant::now();
        tokio::task::spawn_blocking(move || {
            inner.writes_waiting.fetch_add(1, Ordering::SeqCst);
            let mut writer = lock(&inner.writer);
            inner.writes_waiting.fetch_sub(1, Ordering::SeqCst);
            // One budget for the whole write: the time spent queued behind this store's other
            // writes (each of which may itself be waiting for another process's lock) counts,
            // so a burst behind a held lock fails within the budget too, not one budget each.
            let left = WRITE_BUDGET.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(StoreError::Unavailable(
                    "the database stayed locked by another connection".into(),
                ));
            }
            writer.busy_timeout(left).map_err(unavailable)?;
            f(&mut writer).map_err(unavailable)
        })
        .await
        .map_err(StoreError::unavailable)?
    }
}

/// The thread that writes the queued data patches ([`SqliteStore::patch_data`]): a batch at a
/// time, the writer connection let go between batches so other writes get their turn, until
/// the queue is empty.
fn write_queued_patches(inner: &Inner) {
    /// If the thread panics, the patches still queued fail (nobody would write them) and the
    /// next patch starts a thread again. Not on a normal return: by then a new patch may
    /// have started the next thread.
    struct OnPanic<'a>(&'a Inner);
    impl Drop for OnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let mut patches = lock(&self.0.patches);
                patches.writing = false;
                for job in patches.queue.drain(..) {
                    job.finish(Err(StoreError::Unavailable(
                        "the thread writing data patches failed".into(),
                    )));
                }
            }
        }
    }
    let _on_panic = OnPanic(inner);
    loop {
        let mut writer = lock(&inner.writer);
        let batch = {
            let mut patches = lock(&inner.patches);
            if patches.queue.is_empty() {
                patches.writing = false;
                return;
            }
            std::mem::take(&mut patches.queue)
        };
        write_patches(&mut writer, batch);
        drop(writer);
        // Other writes first. A mutex lets whoever asks first after an unlock have it, and
        // this thread asks again at once, while the write it woke still has to be scheduled:
        // under a steady stream of patches a session insert waited 260 to 412 ms for the
        // writer (test `a_stream_of_patches_leaves_the_writer_to_other_writes`), and a write
        // that waits past its budget fails. So the thread waits (yielding its core) until the
        // writes waiting now have had the connection, at most 2 ms a batch so that a stream of
        // other writes cannot hold the patches back either.
        let until = Instant::now() + Duration::from_millis(2);
        while inner.writes_waiting.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::yield_now();
        }
    }
}

/// Writes `batch` (data patches, in the order they were queued) in one `IMMEDIATE`
/// transaction on the writer connection and sets each one's outcome. A patch that waited past
/// its [`WRITE_BUDGET`] fails as a [`SqliteStore::write`] would, without being written; the
/// others wait for the file's lock at most as long as the oldest of them still may.
///
/// A patch whose stored data does not decode fails alone (`Corrupt`, the row left as it is)
/// and a patch of a session that is gone comes to `false`, without touching the others. An
/// error of SQLite itself (an I/O error, a full disk, the lock not had in time) undoes the
/// whole batch and fails every patch in it: such an error is the file's, not one patch's.
fn write_patches(c: &mut Connection, batch: Vec<PatchJob>) {
    let mut left = WRITE_BUDGET;
    let mut live = Vec::with_capacity(batch.len());
    for job in batch {
        let job_left = WRITE_BUDGET.saturating_sub(job.asked.elapsed());
        if job_left.is_zero() {
            job.finish(Err(StoreError::Unavailable(
                "the database stayed locked by another connection".into(),
            )));
        } else {
            left = left.min(job_left);
            live.push(job);
        }
    }
    if live.is_empty() {
        return;
    }
    match c
        .busy_timeout(left)
        .and_then(|()| patch_in_one_transaction(c, &mut live))
    {
        Ok(outcomes) => {
            for (job, outcome) in live.into_iter().zip(outcomes) {
                job.finish(outcome);
            }
        }
        Err(e) => {
            let first = unavailable(e);
            let cause = match &first {
                StoreError::Unavailable(cause) => cause.to_string(),
                other => other.to_string(),
            };
            let mut live = live.into_iter();
            if let Some(job) = live.next() {
                job.finish(Err(first));
            }
            for job in live {
                job.finish(Err(StoreError::Unavailable(
                    format!("{cause} (a data patch written in the same transaction)").into(),
                )));
            }
        }
    }
}

/// The patches of [`write_patches`], each read, merged and written under one write lock,
/// committed once: the outcome of each, or SQLite's error (the transaction then undone).
fn patch_in_one_transaction(
    c: &mut Connection,
    jobs: &mut [PatchJob],
) -> rusqlite::Result<Vec<Result<bool, StoreError>>> {
    // IMMEDIATE: it holds the database's write lock from the first read on, so no other
    // connection (of this process or another) can write a row between a patch's read and its
    // write.
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    {
        let mut read = tx.prepare_cached("SELECT data FROM sessions WHERE token_hash = ?1")?;
        let mut write = tx.prepare_cached("UPDATE sessions SET data = ?2 WHERE token_hash = ?1")?;
        for job in jobs {
            let key = job.hash.as_bytes().as_slice();
            let raw: Option<Option<String>> = read.query_row([key], |r| r.get(0)).optional()?;
            let Some(raw) = raw else {
                outcomes.push(Ok(false)); // gone: nothing to patch, nothing recreated
                continue;
            };
            let mut data = match raw {
                None => SessionData::new(),
                Some(text) => match serde_json::from_str::<SessionData>(&text) {
                    Ok(d) => d,
                    // Not overwritten: what is stored stays there for a look.
                    Err(e) => {
                        outcomes.push(Err(StoreError::Corrupt(format!("session data: {e}"))));
                        continue;
                    }
                },
            };
            // Merged here rather than with SQLite's `json_patch`, which would treat a JSON
            // `null` value as "remove the key".
            // Taken, not copied: the patch is not needed again whatever the batch comes to.
            data.extend(std::mem::take(&mut job.set));
            for k in &job.remove {
                data.remove(k);
            }
            let text = serde_json::Value::Object(data).to_string();
            write.execute(params![key, text])?;
            outcomes.push(Ok(true));
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Creates the database file, if absent, readable and writable by its owner only: it holds
/// password hashes, emails and IP addresses. Created here with mode 0600 (`O_CREAT` with that
/// mode, so there is no moment at which it exists with a wider one, whatever the umask),
/// before SQLite opens it; SQLite then gives its `-wal`, `-shm` and `-journal` files the
/// database file's mode. An existing file keeps the mode it has (see `docs/security.md`).
fn create_private(path: &Path) -> std::io::Result<()> {
    let name = path.to_string_lossy();
    if name.is_empty() || name == ":memory:" || name.starts_with("file:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// SQLite's `wal_autocheckpoint`: a commit that leaves the WAL longer than this many pages
/// copies it back into the database file (a checkpoint, with an fsync of the file).
const DEFAULT_AUTOCHECKPOINT: i64 = 1_000;
/// The same for the purge's commits: 10,000 pages (40 MiB of WAL). A purge's deletes are
/// spread over the table and its indexes (the token hash and the public id are random), so
/// each batch dirties about a page per session, and at the default every batch of a sweep
/// ended in a checkpoint that copied its pages to the file again and fsynced it: most of a
/// purge's time (`sqlite3` on 300,000 expired sessions in batches of 700: 8,500 sessions/s,
/// 16,500/s at 10,000 pages, docs/performance.md). A page deleted from in several batches
/// between two checkpoints is now copied once. The WAL grows to about 40 MiB during a sweep;
/// another connection's commit that finds it longer than its own limit checkpoints it then
/// (at most those 40 MiB, once).
const PURGE_AUTOCHECKPOINT: i64 = 10_000;

/// When [`purge_by_truncation`] may clear the sessions table at once.
#[derive(Debug, Clone, Copy)]
struct BulkPurge {
    /// At most this many sessions may stay (they are copied out and back in).
    max_survivors: i64,
    /// At least this many long-expired sessions, and at least four per survivor.
    min_expired: i64,
    /// At most this many long-expired sessions: clearing the table's pages holds the write
    /// lock for a time that grows with them (1,000,000 sessions: about 0.2 s here), and other
    /// writers wait for it within their budget of [`WRITE_BUDGET`]. A larger backlog goes
    /// row by row, oldest first, until what is left is below this.
    max_expired: i64,
}

impl BulkPurge {
    const DEFAULT: Self = Self {
        max_survivors: 20_000,
        min_expired: 20_000,
        max_expired: 2_000_000,
    };
}

/// Removes every session whose deadline is at or before `cut` in one go, when they are a
/// backlog beside few others: copies the others out, clears the table and puts them back.
/// `None` (nothing done) when [`BulkPurge`] says no, or when the table has a trigger besides
/// ours (a trigger of the operator's would not see the rows go).
///
/// Why: a row-by-row `DELETE` costs each session a page of every random B-tree it is in (the
/// table, keyed by the token hash, and the public id's index), and every batch's commit
/// writes each page it dirtied to the WAL again: 10,000 to 40,000 sessions/s on this machine,
/// whatever the batch size (docs/performance.md, "Purging expired sessions"). SQLite clears a
/// table that has no trigger without visiting its rows one by one (its truncate
/// optimisation): 1,000,000 sessions in about 0.2 s. So the trigger (`sessions_gone`,
/// migration 7) is dropped and made again from its own stored SQL, in this transaction: no
/// other connection ever sees the table without it. Leaving the generation alone is right
/// because `cut` is at or before the purge's `quiet_until`: every session cleared had
/// expired at least [`PURGE_GRACE`] ago, which the trigger would not have counted either.
/// Readers (verification) are not held up: in WAL mode they read the snapshot before the
/// commit, then the table after it.
fn purge_by_truncation(
    tx: &rusqlite::Transaction<'_>,
    cut: i64,
    limits: &BulkPurge,
) -> rusqlite::Result<Option<u64>> {
    // Each check is bounded by its own limit, so a refusal costs at most a walk of
    // `max_survivors + min_expired` index entries, and the last (up to `max_expired`) is made
    // only when the clearing follows.
    let staying: i64 = tx
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE expires_at > ?1 LIMIT ?2)",
        )?
        .query_row(params![cut, limits.max_survivors + 1], |r| r.get(0))?;
    if staying > limits.max_survivors {
        return Ok(None);
    }
    let expired_beyond = |n: i64| -> rusqlite::Result<bool> {
        tx.prepare_cached(
            "SELECT 1 FROM sessions WHERE expires_at <= ?1 ORDER BY expires_at LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![cut, n], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
    };
    let least = limits.min_expired.max(4 * staying);
    if !expired_beyond(least - 1)? || expired_beyond(limits.max_expired)? {
        return Ok(None);
    }
    let triggers: Vec<(String, String)> = tx
        .prepare_cached(
            "SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' \
             AND tbl_name = 'sessions'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let [(name, trigger)] = triggers.as_slice() else {
        return Ok(None);
    };
    if name != "sessions_gone" {
        return Ok(None);
    }
    // The survivors wait in memory (at most `max_survivors` rows, every column as SQLite
    // holds it), not in a temporary table: that could need a temporary file, which a
    // read-only root file system or a sandbox without a writable temporary directory refuses.
    let mut select = tx.prepare("SELECT * FROM main.sessions WHERE expires_at > ?1")?;
    let columns = select.column_count();
    let survivors: Vec<Vec<rusqlite::types::Value>> = select
        .query_map([cut], |r| (0..columns).map(|i| r.get(i)).collect())?
        .collect::<rusqlite::Result<_>>()?;
    drop(select);
    tx.execute_batch("DROP TRIGGER main.sessions_gone")?;
    // No WHERE, no trigger: the truncate optimisation (its count is still the rows removed).
    let cleared = tx.execute("DELETE FROM main.sessions", [])?;
    let mut insert = tx.prepare(&format!(
        "INSERT INTO main.sessions VALUES ({})",
        vec!["?"; columns].join(", ")
    ))?;
    for row in &survivors {
        insert.execute(rusqlite::params_from_iter(row))?;
    }
    drop(insert);
    tx.execute_batch(trigger)?;
    Ok(Some(cleared.saturating_sub(survivors.len()) as u64))
}

/// `PRAGMA journal_mode = WAL`, tried again while another connection holds the file.
///
/// The busy timeout does not cover this statement's race: on a file still in rollback mode
/// the switch takes a read lock and then upgrades it to a write lock, and SQLite does not
/// wait on an upgrade (a connection that holds a read lock and waits for the write lock
/// could wait forever on another doing the same), it answers `SQLITE_BUSY` at once. Two
/// processes opening a fresh file together (the server and the CLI, or two servers) would
/// each try the switch, and one would fail to start with "database is locked" (test
/// `concurrent_opens_of_a_fresh_file_migrate_once`). The loser has let its lock go when it
/// gets the error, so the other finishes; trying again then finds the file in WAL already,
/// which needs no lock beyond reading. Bounded by `budget`, as every other wait at open.
fn enable_wal(c: &Connection, budget: Duration) -> rusqlite::Result<()> {
    let start = Instant::now();
    loop {
        match c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())) {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && start.elapsed() < budget =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            done => return done,
        }
    }
}

fn set_autocheckpoint(c: &Connection, pages: i64) -> rusqlite::Result<()> {
    c.query_row(&format!("PRAGMA wal_autocheckpoint = {pages}"), [], |_| {
        Ok(())
    })
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(BUSY_TIMEOUT)?;
    // Durability (docs/deployment.md, "Durability"). In WAL mode every setting keeps a commit
    // through a crash of the process (`kill -9`, test `crash::kill_9_during_writes…`): the
    // WAL is written before the commit returns. `synchronous` decides what a power loss or an
    // OS crash keeps: FULL fsyncs the WAL at every commit, so every acknowledged change
    // survives; NORMAL syncs only at checkpoints, so the last commits can roll back, and here
    // those include logouts, revokes and password changes: a revoked session or a replaced
    // password would work again. FULL costs a login a few milliseconds of waiting on the disk
    // (not CPU), and the one writer still takes several times what the cores can hash (the
    // measurement, `login_write_cost` below: docs/deployment.md, "Durability"). Cheap for what
    // it buys, so FULL.
    c.pragma_update(None, "synchronous", "FULL")?;
    c.set_prepared_statement_cache_capacity(32);
    Ok(())
}

const SESSION_COLUMNS: &str = "token_hash, id, user_id, created_at, last_seen_at, \
     absolute_expires_at, expires_at, remember, ip, user_agent, level";

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    let hash: Vec<u8> = r.get(0)?;
    let id: String = r.get(1)?;
    let level: i64 = r.get(10)?;
    let bad = |column: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Blob,
            format!("bad {what}").into(),
        )
    };
    Ok(SessionRecord {
        token_hash: TokenHash::from_slice(&hash).ok_or_else(|| bad(0, "token hash"))?,
        id: SessionId::parse(&id).ok_or_else(|| bad(1, "session id"))?,
        user_id: UserId(r.get(2)?),
        created_at: Timestamp::from_millis(r.get(3)?),
        last_seen_at: Timestamp::from_millis(r.get(4)?),
        absolute_expires_at: Timestamp::from_millis(r.get(5)?),
        expires_at: Timestamp::from_millis(r.get(6)?),
        remember: r.get(7)?,
        ip: r.get(8)?,
        user_agent: r.get(9)?,
        // An unknown level is corrupt, never read as some level: it decides access.
        level: AuthLevel::from_i64(level).ok_or_else(|| bad(10, "authentication level"))?,
    })
}

fn insert_session(c: &Connection, s: &SessionRecord) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    ))?
    .execute(params![
        s.token_hash.as_bytes().as_slice(),
        s.id.as_str(),
        s.user_id.0,
        s.created_at.as_millis(),
        s.last_seen_at.as_millis(),
        s.absolute_expires_at.as_millis(),
        s.expires_at.as_millis(),
        s.remember,
        s.ip,
        s.user_agent,
        s.level.as_i64(),
    ])?;
    Ok(())
}

fn collect_sessions(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<Vec<SessionRecord>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(p, session_from_row)?;
    rows.collect()
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let s = session.clone();
        self.write(move |c| insert_session(c, &s)).await
    }

    async fn load(&self, hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?1"
            ))?
            .query_row([hash.as_bytes().as_slice()], session_from_row)
            .optional()
        })
    }

    async fn touch(
        &self,
        hash: &TokenHash,
        last_seen_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let hash = *hash;
        // An UPDATE of a row that is gone changes nothing: a touch can never resurrect a
        // session that a logout or revoke deleted. `max` keeps a late write from an older
        // request from moving activity backwards.
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE sessions SET last_seen_at = max(last_seen_at, ?2), expires_at = max(expires_at, ?3) \
                 WHERE token_hash = ?1",
            )?
            .execute(params![hash.as_bytes().as_slice(), last_seen_at.as_millis(), expires_at.as_millis()])?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        let hash = *hash;
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                    .execute([hash.as_bytes().as_slice()])?
                    > 0,
            )
        })
        .await
    }

    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
        let old = *old;
        let new = new.clone();
        // One transaction: another reader sees either the old session or the new one, never
        // both, never neither. The delete comes first and decides: when the old session is
        // gone (revoked meanwhile), nothing is inserted and the transaction rolls back.
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gone = tx
                .prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                .execute([old.as_bytes().as_slice()])?
                == 0;
            if gone {
                return Ok(false); // dropped: rolled back
            }
            insert_session(&tx, &new)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn list_for_user(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(|c| {
            collect_sessions(
                c,
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 ORDER BY created_at, id"),
                [user.0],
            )
        })
    }

    async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(|c| {
            collect_sessions(
                c,
                &format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at, id"),
                [],
            )
        })
    }

    async fn delete_by_id(
        &self,
        id: &SessionId,
        owner: Option<UserId>,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write(move |c| {
            let n = match owner {
                Some(o) => c
                    .prepare_cached("DELETE FROM sessions WHERE id = ?1 AND user_id = ?2")?
                    .execute(params![id.as_str(), o.0])?,
                None => c
                    .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                    .execute([id.as_str()])?,
            };
            Ok(n > 0)
        })
        .await
    }

    async fn delete_for_user(
        &self,
        user: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let keep = keep.map(|k| k.as_str().to_owned());
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND id IS NOT ?2")?
                .execute(params![user.0, keep])?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete_oldest_for_user(
        &self,
        user: UserId,
        keep_newest: usize,
    ) -> Result<u64, StoreError> {
        let keep = i64::try_from(keep_newest).unwrap_or(i64::MAX);
        // Every login asks; almost always nobody is over the cap. A count on a reader (the
        // user index, microseconds) spares the writer, and its commit, in that case.
        let held: i64 = self.read(|c| {
            c.prepare_cached("SELECT count(*) FROM sessions WHERE user_id = ?1")?
                .query_row([user.0], |r| r.get(0))
        })?;
        if held <= keep {
            return Ok(0);
        }
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM sessions WHERE user_id = ?1 AND token_hash NOT IN \
                     (SELECT token_hash FROM sessions WHERE user_id = ?1 \
                      ORDER BY created_at DESC, id DESC LIMIT ?2)",
                )?
                .execute(params![user.0, keep])?;
            Ok(n as u64)
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
        // Two statements rather than `?1 IS NULL OR …`, so the per-user one uses the
        // (user_id, created_at) index: a page costs its size, not the user's whole list.
        self.read(|c| match user {
            Some(u) => collect_sessions(
                c,
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions \
                     WHERE user_id = ?1 AND (created_at, id) > (?2, ?3) \
                     ORDER BY created_at, id LIMIT ?4"
                ),
                params![u.0, t, id, limit],
            ),
            None => collect_sessions(
                c,
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE (created_at, id) > (?1, ?2) \
                     ORDER BY created_at, id LIMIT ?3"
                ),
                params![t, id, limit],
            ),
        })
    }

    async fn delete_all(&self) -> Result<u64, StoreError> {
        self.write(|c| Ok(c.execute("DELETE FROM sessions", [])? as u64))
            .await
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Sessions expired before this, by the clock of the machine that holds the file,
        // go without moving the generation (migration 7; `SessionStore::purge_expired`).
        let quiet_until = Timestamp::from_system_time(SystemTime::now()).minus(PURGE_GRACE);
        // A backlog of long-expired sessions beside few others is cleared at once
        // (`purge_by_truncation`); what it leaves, and every sweep without such a backlog, goes
        // row by row: the sub-select walks the expiry index, so each batch costs O(limit),
        // however many live sessions there are; the writer lock is held for one batch only.
        let inner = Arc::clone(&self.inner);
        let cut = now.as_millis().min(quiet_until.as_millis());
        self.write(move |c| {
            set_autocheckpoint(c, PURGE_AUTOCHECKPOINT)?;
            let purged = (|| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if *lock(&inner.bulk_refused_for) != Some(now.as_millis()) {
                    match purge_by_truncation(&tx, cut, &inner.bulk)? {
                        Some(n) => {
                            tx.commit()?;
                            return Ok(n);
                        }
                        None => *lock(&inner.bulk_refused_for) = Some(now.as_millis()),
                    }
                }
                tx.prepare_cached("UPDATE generation SET quiet_until = ?1 WHERE id = 1")?
                    .execute([quiet_until.as_millis()])?;
                let n = tx
                    .prepare_cached(
                        "DELETE FROM sessions WHERE token_hash IN \
                         (SELECT token_hash FROM sessions WHERE expires_at <= ?1 \
                          ORDER BY expires_at LIMIT ?2)",
                    )?
                    .execute(params![now.as_millis(), limit])?;
                tx.prepare_cached("UPDATE generation SET quiet_until = NULL WHERE id = 1")?
                    .execute([])?;
                tx.commit()?;
                Ok(n as u64)
            })();
            // Every other write of this connection checkpoints at SQLite's default again.
            let restored = set_autocheckpoint(c, DEFAULT_AUTOCHECKPOINT);
            purged.and_then(|n| restored.map(|()| n))
        })
        .await
    }

    async fn load_data(&self, hash: &TokenHash) -> Result<Option<SessionData>, StoreError> {
        let raw: Option<Option<String>> = self.read(|c| {
            c.prepare_cached("SELECT data FROM sessions WHERE token_hash = ?1")?
                .query_row([hash.as_bytes().as_slice()], |r| r.get(0))
                .optional()
        })?;
        match raw {
            None => Ok(None),
            Some(None) => Ok(Some(SessionData::new())),
            Some(Some(text)) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("session data: {e}"))),
        }
    }

    async fn save_data(&self, hash: &TokenHash, data: &SessionData) -> Result<bool, StoreError> {
        let hash = *hash;
        let text = serde_json::Value::Object(data.clone()).to_string();
        self.write(move |c| {
            Ok(
                c.prepare_cached("UPDATE sessions SET data = ?2 WHERE token_hash = ?1")?
                    .execute(params![hash.as_bytes().as_slice(), text])?
                    > 0,
            )
        })
        .await
    }

    async fn patch_data(
        &self,
        hash: &TokenHash,
        set: &SessionData,
        remove: &[String],
    ) -> Result<bool, StoreError> {
        // Group commit. Every request that changed session data waits for its patch to be
        // durable before its answer goes out (`synchronous = FULL`: an fsync per commit), and
        // commits are serialised on the one writer connection, so a commit per patch bounded
        // an app that writes on every request (the example app's visit counter) at one fsync
        // per request: 7,500 requests/s against 100,000 for a page that writes nothing
        // (docs/performance.md, "The example app's `/private`"). Instead each patch is queued,
        // and one thread of the blocking pool at a time writes the queue: every patch queued
        // by the time it has the writer, in one `IMMEDIATE` transaction and one commit, then
        // the next batch, until the queue is empty. Each patch still reads, merges and writes
        // its row under the write lock, in the order the patches were queued, and nobody is
        // answered before the commit that holds their patch: the same atomicity and
        // durability as a transaction each, at one fsync per batch.
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let job = PatchJob {
            hash: *hash,
            set: set.clone(),
            remove: remove.to_vec(),
            asked: Instant::now(),
            reply,
        };
        let start_writing = {
            let mut patches = lock(&self.inner.patches);
            patches.queue.push(job);
            !std::mem::replace(&mut patches.writing, true)
        };
        if start_writing {
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || write_queued_patches(&inner));
        }
        // Dropped unanswered only if the writing thread panicked with this patch in hand.
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the batch holding this data patch failed".into(),
            ))
        })
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM generation WHERE id = 1")?
                .query_row([], |r| r.get::<_, i64>(0))
        })
        .map(|v| v as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        // A poll of the generation is a point read of a local file on a pooled read-only
        // connection (microseconds, no network), so caches keep polling SQLite; every
        // process that writes the file moves the generation in the same transaction.
        Ok(None)
    }

    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        // A range of the expiry index, on a read connection: the writer is not held.
        self.read(|c| {
            c.prepare_cached("SELECT count(*) FROM sessions WHERE expires_at > ?1")?
                .query_row([now.as_millis()], |r| r.get::<_, i64>(0))
        })
        .map(|n| Some(n.max(0) as u64))
    }
}

#[async_trait]
impl ThrottleStore for SqliteStore {
    async fn throttle_hit(
        &self,
        key: &str,
        now: Timestamp,
        window: Duration,
    ) -> Result<ThrottleRecord, StoreError> {
        let key = key.to_owned();
        let fresh_until = now.plus(window).as_millis();
        let now = now.as_millis();
        // One statement: the write lock makes the read-modify-write atomic across processes.
        // Expired counters are swept in the same transaction (bounded: they expire within an
        // hour); one commit, one fsync.
        self.write(move |c| {
            let tx = c.transaction()?;
            sweep_throttle(&tx, now)?;
            let rec = hit_throttle(&tx, &key, now, fresh_until)?;
            tx.commit()?;
            Ok(rec)
        })
        .await
    }

    async fn throttle_apply(
        &self,
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        // Owned for the writer thread: (key, what to do).
        let owned: Vec<(String, ThrottleOp)> = changes.iter().map(|c| c.to_op_at(now)).collect();
        let now = now.as_millis();
        // All of a login's counter changes in one transaction: one fsync (synchronous=FULL)
        // instead of one per change (docs/performance.md, "SQLite commits").
        self.write(move |c| {
            let tx = c.transaction()?;
            sweep_throttle(&tx, now)?;
            apply_throttle(&tx, &owned, now)?;
            tx.commit()
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
        let owned: Vec<(String, ThrottleOp)> = changes.iter().map(|c| c.to_op_at(now)).collect();
        let now = now.as_millis();
        // Compare and apply in one write transaction: SQLite's write lock (`BEGIN
        // IMMEDIATE` on the writer) makes it atomic across every process on the file.
        self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut unchanged = true;
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT count, last_at, expires_at FROM throttle WHERE key = ?1 AND expires_at > ?2",
                )?;
                for (key, want) in &expected {
                    let got = stmt.query_row(params![key, now], throttle_from_row).optional()?;
                    if !want.holds(got) {
                        unchanged = false;
                        break;
                    }
                }
            }
            if !unchanged {
                return Ok(false);
            }
            sweep_throttle(&tx, now)?;
            apply_throttle(&tx, &owned, now)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn throttle_get(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<ThrottleRecord>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT count, last_at, expires_at FROM throttle WHERE key = ?1 AND expires_at > ?2")?
                .query_row(params![key, now.as_millis()], throttle_from_row)
                .optional()
        })
    }

    async fn throttle_get_many(
        &self,
        keys: &[&str],
        now: Timestamp,
    ) -> Result<Vec<Option<ThrottleRecord>>, StoreError> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        // One reader connection and one prepared statement for all of them.
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT count, last_at, expires_at FROM throttle WHERE key = ?1 AND expires_at > ?2",
            )?;
            keys.iter()
                .map(|k| {
                    stmt.query_row(params![k, now.as_millis()], throttle_from_row)
                        .optional()
                })
                .collect()
        })
    }

    async fn throttle_list(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, ThrottleRecord)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT count, last_at, expires_at, key FROM throttle WHERE expires_at > ?1 ORDER BY key",
            )?;
            let rows = stmt.query_map([now.as_millis()], |r| Ok((r.get(3)?, throttle_from_row(r)?)))?;
            rows.collect()
        })
    }

    async fn throttle_delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM throttle WHERE key = ?1")?
                .execute([key])?
                > 0)
        })
        .await
    }
}

/// Applies owned throttle changes in order, inside the caller's transaction.
fn apply_throttle(
    c: &Connection,
    owned: &[(String, ThrottleOp)],
    now: i64,
) -> rusqlite::Result<()> {
    for (key, op) in owned {
        match op {
            ThrottleOp::Hit(until) => {
                hit_throttle(c, key, now, *until)?;
            }
            ThrottleOp::Delete => {
                c.prepare_cached("DELETE FROM throttle WHERE key = ?1")?
                    .execute([key])?;
            }
            ThrottleOp::Refund => {
                // Remove first (a counter at one, or over), then decrement what is left.
                c.prepare_cached(
                    "DELETE FROM throttle WHERE key = ?1 AND (count <= 1 OR expires_at <= ?2)",
                )?
                .execute(params![key, now])?;
                c.prepare_cached(
                    "UPDATE throttle SET count = count - 1 WHERE key = ?1 AND expires_at > ?2 AND count > 1",
                )?
                .execute(params![key, now])?;
            }
        }
    }
    Ok(())
}

/// Removes counters whose window is over.
fn sweep_throttle(c: &Connection, now_ms: i64) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM throttle WHERE expires_at <= ?1")?
        .execute([now_ms])?;
    Ok(())
}

/// One more event under `key` (see `ThrottleStore::throttle_hit`), after the sweep.
fn hit_throttle(
    c: &Connection,
    key: &str,
    now_ms: i64,
    fresh_until_ms: i64,
) -> rusqlite::Result<ThrottleRecord> {
    c.prepare_cached(
        "INSERT INTO throttle (key, count, last_at, expires_at) VALUES (?1, 1, ?2, ?3) \
         ON CONFLICT (key) DO UPDATE SET count = count + 1, last_at = ?2 \
         RETURNING count, last_at, expires_at",
    )?
    .query_row(params![key, now_ms, fresh_until_ms], |r| {
        Ok(ThrottleRecord {
            count: r.get::<_, i64>(0)? as u64,
            last_at: Timestamp::from_millis(r.get(1)?),
            expires_at: Timestamp::from_millis(r.get(2)?),
        })
    })
}

fn throttle_from_row(r: &Row<'_>) -> rusqlite::Result<ThrottleRecord> {
    Ok(ThrottleRecord {
        count: r.get::<_, i64>(0)? as u64,
        last_at: Timestamp::from_millis(r.get(1)?),
        expires_at: Timestamp::from_millis(r.get(2)?),
    })
}

const USER_COLUMNS: &str =
    "id, username, name, email, groups, admin, disabled, created_at, password_hash";

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<UserCredentials> {
    let username: String = r.get(1)?;
    let groups: String = r.get(4)?;
    let conv = |column, e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e)
    };
    let groups: Vec<String> = serde_json::from_str(&groups).map_err(|e| conv(4, Box::new(e)))?;
    Ok(UserCredentials {
        user: User {
            id: UserId(r.get(0)?),
            username: Username::from_stored(&username).map_err(|e| conv(1, Box::new(e)))?,
            name: r.get(2)?,
            email: r.get(3)?,
            groups: groups
                .iter()
                .map(|g| Group::parse(g))
                .collect::<Result<_, _>>()
                .map_err(|e| conv(4, Box::new(e)))?,
            admin: r.get(5)?,
            disabled: r.get(6)?,
            created_at: Timestamp::from_millis(r.get(7)?),
        },
        password_hash: r.get(8)?,
    })
}

fn insert_user(c: &Connection, new: &NewUser) -> rusqlite::Result<User> {
    let groups = serde_json::to_string(&new.groups).expect("a list of strings serialises");
    let id = c
        .prepare_cached(
            "INSERT INTO users (username, username_key, name, email, groups, admin, disabled, created_at, password_hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8) RETURNING id",
        )?
        .query_row(
            params![
                new.username.as_str(),
                new.username.key(),
                new.name,
                new.email,
                groups,
                new.admin,
                new.created_at.as_millis(),
                new.password_hash,
            ],
            |r| r.get(0),
        )?;
    Ok(User {
        id: UserId(id),
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
impl UserStore for SqliteStore {
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        let new = new.clone();
        self.write(move |c| insert_user(c, &new)).await
    }

    async fn create_user_if_none(&self, new: &NewUser) -> Result<Option<User>, StoreError> {
        let new = new.clone();
        // IMMEDIATE takes the write lock before the check, so of several processes starting
        // on an empty database exactly one sees it empty.
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM users)", [], |r| r.get(0))?;
            let created = if exists {
                None
            } else {
                Some(insert_user(&tx, &new)?)
            };
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    async fn user_by_name(&self, name: &Username) -> Result<Option<UserCredentials>, StoreError> {
        let key = name.key();
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE username_key = ?1"
            ))?
            .query_row([key], user_from_row)
            .optional()
        })
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
                .query_row([id.0], user_from_row)
                .optional()
        })
        .map(|u| u.map(|u| u.user))
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users ORDER BY username_key"
            ))?;
            let rows = stmt.query_map([], |r| user_from_row(r).map(|u| u.user))?;
            rows.collect()
        })
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<bool, StoreError> {
        let phc = phc.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![id.0, phc],
            )? > 0)
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
        // One statement on the one writer: the comparison and the write are atomic.
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
                params![id.0, expected, phc],
            )? > 0)
        })
        .await
    }

    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError> {
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE users SET disabled = ?2 WHERE id = ?1",
                params![id.0, disabled],
            )? > 0)
        })
        .await
    }

    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.write(move |c| Ok(c.execute("DELETE FROM users WHERE id = ?1", [id.0])? > 0))
            .await
    }
}

const PASSKEY_COLUMNS: &str = "credential_id, user_id, name, data, created_at, last_used_at";

fn passkey_from_row(r: &Row<'_>) -> rusqlite::Result<StoredPasskey> {
    Ok(StoredPasskey {
        credential_id: r.get(0)?,
        user_id: UserId(r.get(1)?),
        name: r.get(2)?,
        data: r.get(3)?,
        created_at: Timestamp::from_millis(r.get(4)?),
        last_used_at: r.get::<_, Option<i64>>(5)?.map(Timestamp::from_millis),
    })
}

/// A stored count as the summary's `u32`.
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Replaces every recovery code of `user` by `hashes`, inside the caller's transaction.
fn replace_recovery(c: &Connection, user: UserId, hashes: &[RecoveryHash]) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM recovery_codes WHERE user_id = ?1")?
        .execute([user.0])?;
    let mut insert = c.prepare_cached(
        "INSERT INTO recovery_codes (user_id, hash) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?;
    for h in hashes {
        insert.execute(params![user.0, h.as_slice()])?;
    }
    Ok(())
}

/// Every change below is one statement, or one `IMMEDIATE` transaction (it takes the file's
/// write lock before its first read), on the writer: atomic against this process's other
/// writes and against every other process on the file, so of two requests racing on one TOTP
/// step or one recovery code exactly one wins.
#[async_trait]
impl FactorStore for SqliteStore {
    async fn factor_summary(&self, user: UserId) -> Result<FactorSummary, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM totp WHERE user_id = ?1 AND secret IS NOT NULL), \
                 (SELECT count(*) FROM recovery_codes WHERE user_id = ?1), \
                 (SELECT count(*) FROM passkeys WHERE user_id = ?1)",
            )?
            .query_row([user.0], |r| {
                Ok(FactorSummary {
                    totp: r.get(0)?,
                    recovery_codes: count(r.get(1)?),
                    passkeys: count(r.get(2)?),
                })
            })
        })
    }

    async fn totp_state(&self, user: UserId) -> Result<Option<TotpState>, StoreError> {
        let row: Option<(Option<Vec<u8>>, i64, Option<Vec<u8>>, Option<i64>)> = self.read(|c| {
            c.prepare_cached(
                "SELECT secret, last_step, pending, pending_at FROM totp WHERE user_id = ?1",
            )?
            .query_row([user.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })?;
        let Some((active, last_step, pending, pending_at)) = row else {
            return Ok(None);
        };
        let pending = match (pending, pending_at) {
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
            last_step,
            pending,
        }))
    }

    async fn totp_begin(
        &self,
        user: UserId,
        secret: &[u8],
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let secret = secret.to_vec();
        // One statement: the user's existence is checked where the row is written. Only the
        // pending columns are set: an active secret and its last step stay as they are.
        self.write(move |c| {
            Ok(c.prepare_cached(
                "INSERT INTO totp (user_id, pending, pending_at) \
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM users WHERE id = ?1) \
                 ON CONFLICT (user_id) DO UPDATE \
                 SET pending = excluded.pending, pending_at = excluded.pending_at",
            )?
            .execute(params![user.0, secret, at.as_millis()])?
                > 0)
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
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Compare-and-set on the pending secret: a setup that replaced it, or a confirm
            // that took it, makes this one match nothing, and the transaction rolls back.
            let confirmed = tx
                .prepare_cached(
                    "UPDATE totp SET secret = pending, last_step = ?3, \
                     pending = NULL, pending_at = NULL \
                     WHERE user_id = ?1 AND pending = ?2",
                )?
                .execute(params![user.0, pending, step])?
                > 0;
            if !confirmed {
                return Ok(false);
            }
            replace_recovery(&tx, user, &recovery)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn totp_use_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        // Compare-and-set in one statement: of two requests with one code, the second finds
        // `last_step` already at `step` and changes nothing.
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE totp SET last_step = ?2 \
                 WHERE user_id = ?1 AND secret IS NOT NULL AND last_step < ?2",
            )?
            .execute(params![user.0, step])?
                > 0)
        })
        .await
    }

    async fn totp_remove(&self, user: UserId) -> Result<bool, StoreError> {
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM totp WHERE user_id = ?1")?
                .execute([user.0])?
                > 0)
        })
        .await
    }

    async fn recovery_use(&self, user: UserId, hash: &RecoveryHash) -> Result<bool, StoreError> {
        let hash = *hash;
        // The delete is the check: only the caller whose statement removed the row wins.
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM recovery_codes WHERE user_id = ?1 AND hash = ?2")?
                    .execute(params![user.0, hash.as_slice()])?
                    > 0,
            )
        })
        .await
    }

    async fn recovery_replace(
        &self,
        user: UserId,
        hashes: &[RecoveryHash],
    ) -> Result<bool, StoreError> {
        let hashes = hashes.to_vec();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")?
                .query_row([user.0], |r| r.get(0))?;
            if !exists {
                return Ok(false);
            }
            replace_recovery(&tx, user, &hashes)?;
            tx.commit()?;
            Ok(true)
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
        // The id check, the cap and the insert in one IMMEDIATE transaction: two
        // registrations racing cannot both fit under the cap. A taken credential id is a
        // conflict before anything else (as in the reference store); the primary key would
        // refuse it anyway.
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let taken: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM passkeys WHERE credential_id = ?1)")?
                .query_row([key.credential_id.as_slice()], |r| r.get(0))?;
            if taken {
                return Ok(Err(StoreError::Conflict));
            }
            let room: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1) \
                     AND (SELECT count(*) FROM passkeys WHERE user_id = ?1) < ?2",
                )?
                .query_row(params![key.user_id.0, max], |r| r.get(0))?;
            if !room {
                return Ok(Ok(false));
            }
            tx.prepare_cached(&format!(
                "INSERT INTO passkeys ({PASSKEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))?
            .execute(params![
                key.credential_id.as_slice(),
                key.user_id.0,
                key.name,
                key.data,
                key.created_at.as_millis(),
                key.last_used_at.map(Timestamp::as_millis),
            ])?;
            tx.commit()?;
            Ok(Ok(true))
        })
        .await?
    }

    async fn passkeys_of(&self, user: UserId) -> Result<Vec<StoredPasskey>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = ?1 \
                 ORDER BY created_at, rowid"
            ))?;
            let rows = stmt.query_map([user.0], passkey_from_row)?;
            rows.collect()
        })
    }

    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskey>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = ?1"
            ))?
            .query_row([credential_id], passkey_from_row)
            .optional()
        })
    }

    async fn passkey_update(
        &self,
        user: UserId,
        credential_id: &[u8],
        data: &str,
        used_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let (credential_id, data) = (credential_id.to_vec(), data.to_owned());
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE passkeys SET data = ?3, last_used_at = ?4 \
                 WHERE user_id = ?1 AND credential_id = ?2",
            )?
            .execute(params![user.0, credential_id, data, used_at.as_millis()])?
                > 0)
        })
        .await
    }

    async fn passkey_remove(&self, user: UserId, credential_id: &[u8]) -> Result<bool, StoreError> {
        let credential_id = credential_id.to_vec();
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM passkeys WHERE user_id = ?1 AND credential_id = ?2")?
                    .execute(params![user.0, credential_id])?
                    > 0,
            )
        })
        .await
    }

    async fn factors_reset(&self, user: UserId) -> Result<bool, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut removed = 0;
            for sql in [
                "DELETE FROM totp WHERE user_id = ?1",
                "DELETE FROM recovery_codes WHERE user_id = ?1",
                "DELETE FROM passkeys WHERE user_id = ?1",
            ] {
                removed += tx.prepare_cached(sql)?.execute([user.0])?;
            }
            tx.commit()?;
            Ok(removed > 0)
        })
        .await
    }
}

#[cfg(test)]
mod conformance {
    sessiond_store_tests::conformance_tests!(async {
        // Leaked on purpose: the directory must outlive the store inside the test.
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        crate::SqliteStore::open(dir.path().join("test.db")).unwrap()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_versioned_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let a = SqliteStore::open(&path).unwrap();
        let latest = MIGRATIONS.last().unwrap().0;
        assert_eq!(a.schema_version().unwrap(), latest);
        drop(a);
        let b = SqliteStore::open(&path).unwrap();
        assert_eq!(b.schema_version().unwrap(), latest);
        let rows: i64 = b
            .read(|c| c.query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(rows, MIGRATIONS.len() as i64);
    }

    /// A change of a user's admin flag or groups made straight in the database (another
    /// process, no sessiond code) moves the generation, so verification caches reload the
    /// user.
    #[tokio::test]
    async fn direct_changes_of_admin_or_groups_move_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path).unwrap();
        let u = store
            .create_user(&sessiond_store_tests::users::new_user("gina"))
            .await
            .unwrap();
        let raw = Connection::open(&path).unwrap();
        raw.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        for sql in [
            "UPDATE users SET admin = 1 WHERE id = ?1",
            "UPDATE users SET groups = '[\"ops\"]' WHERE id = ?1",
        ] {
            let before = store.generation().await.unwrap();
            raw.execute(sql, [u.id.0]).unwrap();
            assert_ne!(store.generation().await.unwrap(), before, "{sql}");
        }
        // Unrelated columns leave it alone (no needless cache flushes).
        let before = store.generation().await.unwrap();
        raw.execute(
            "UPDATE users SET email = 'g@example.com' WHERE id = ?1",
            [u.id.0],
        )
        .unwrap();
        assert_eq!(store.generation().await.unwrap(), before);
    }

    /// Only the purge's own transaction is quiet about long-expired sessions: a DELETE
    /// anywhere else (another process, by hand) moves the generation for any row, even
    /// right after a purge on the same connection, and the purge leaves no `quiet_until`
    /// behind.
    #[tokio::test]
    async fn only_the_purge_is_quiet_about_long_expired_sessions() {
        use sessiond_store_tests::sessions::{session_at, T0};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).unwrap();
        // T0 (2026-01-01): its sessions expired long before any clock this test runs on.
        // `a` a minute before the others: the only one due at its deadline.
        let (_, a) = session_at(1, Timestamp::from_millis(T0.as_millis() - 60_000));
        let (b_token, b) = session_at(1, T0);
        let (_, c) = session_at(1, T0);
        for r in [&a, &b, &c] {
            store.create(r).await.unwrap();
        }
        let before = store.generation().await.unwrap();
        assert_eq!(store.purge_expired(a.expires_at, 1).await.unwrap(), 1);
        assert_eq!(store.generation().await.unwrap(), before);
        let quiet: Option<i64> = store
            .read(|c| c.query_row("SELECT quiet_until FROM generation", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(quiet, None);
        assert!(store.delete(&b_token.hash()).await.unwrap());
        assert_ne!(store.generation().await.unwrap(), before);
        let before = store.generation().await.unwrap();
        let raw = Connection::open(&path).unwrap();
        raw.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        raw.execute("DELETE FROM sessions", []).unwrap();
        assert_ne!(store.generation().await.unwrap(), before);
    }

    /// The purge's larger checkpoint interval is its own: the writer's other commits
    /// checkpoint at SQLite's default again after it.
    #[tokio::test]
    async fn the_purge_leaves_the_writer_checkpointing_at_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("c.db")).unwrap();
        let pages = |store: &SqliteStore| {
            let store = store.clone();
            async move {
                store
                    .write(|c| c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get::<_, i64>(0)))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(pages(&store).await, DEFAULT_AUTOCHECKPOINT);
        store
            .purge_expired(Timestamp::from_millis(0), 10)
            .await
            .unwrap();
        assert_eq!(pages(&store).await, DEFAULT_AUTOCHECKPOINT);
    }

    /// Sessions stored before authentication levels existed (schema 5) load as one-factor
    /// sessions; a level no version writes is corrupt, never read as some level.
    #[tokio::test]
    async fn session_levels_migrate_as_one_factor_and_unknown_ones_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let (t, rec) =
            sessiond_store_tests::sessions::session_at(1, sessiond_store_tests::sessions::T0);
        {
            // A file at schema 5, with a session in it.
            let raw = Connection::open(&path).unwrap();
            raw.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, \
                 applied_at INTEGER NOT NULL DEFAULT 0)",
            )
            .unwrap();
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 5) {
                raw.execute_batch(sql).unwrap();
                raw.execute(
                    "INSERT INTO schema_migrations (version) VALUES (?1)",
                    [version],
                )
                .unwrap();
            }
            raw.execute(
                "INSERT INTO sessions (token_hash, id, user_id, created_at, last_seen_at, \
                 absolute_expires_at, expires_at, remember, ip, user_agent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    rec.token_hash.as_bytes().as_slice(),
                    rec.id.as_str(),
                    rec.user_id.0,
                    rec.created_at.as_millis(),
                    rec.last_seen_at.as_millis(),
                    rec.absolute_expires_at.as_millis(),
                    rec.expires_at.as_millis(),
                    rec.remember,
                    rec.ip,
                    rec.user_agent,
                ],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load(&t.hash()).await.unwrap(), Some(rec.clone()));
        assert_eq!(rec.level, AuthLevel::OneFactor);

        for bad in [0, 3, -1] {
            Connection::open(&path)
                .unwrap()
                .execute(
                    "UPDATE sessions SET level = ?1 WHERE token_hash = ?2",
                    params![bad, t.hash().as_bytes().as_slice()],
                )
                .unwrap();
            assert!(
                matches!(store.load(&t.hash()).await, Err(StoreError::Corrupt(_))),
                "{bad}"
            );
            assert!(matches!(
                store.list_for_user(UserId(1)).await,
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    /// The factors of a user deleted by hand (a connection with foreign keys off, as SQLite
    /// connections are by default) go with it: the trigger, not the store's code, removes them.
    #[tokio::test]
    async fn factors_go_with_a_user_deleted_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let store = SqliteStore::open(&path).unwrap();
        let u = store
            .create_user(&sessiond_store_tests::users::new_user("fred"))
            .await
            .unwrap();
        assert!(store
            .totp_begin(u.id, b"s", Timestamp::from_millis(1))
            .await
            .unwrap());
        assert!(store.recovery_replace(u.id, &[[1; 32]]).await.unwrap());
        let key = StoredPasskey {
            credential_id: b"cred".to_vec(),
            user_id: u.id,
            name: "key".into(),
            data: "{}".into(),
            created_at: Timestamp::from_millis(1),
            last_used_at: None,
        };
        assert!(store.passkey_add(&key, 10).await.unwrap());
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM users WHERE id = ?1", [u.id.0])
            .unwrap();
        assert_eq!(store.passkey_by_credential(b"cred").await.unwrap(), None);
        let left: i64 = store
            .read(|c| {
                c.query_row(
                    "SELECT (SELECT count(*) FROM totp) + (SELECT count(*) FROM recovery_codes) \
                     + (SELECT count(*) FROM passkeys)",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(left, 0);
    }

    /// A user named `..` stored before `Username::parse` refused it still lists and loads.
    #[tokio::test]
    async fn names_refused_later_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.db");
        let store = SqliteStore::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO users (username, username_key, created_at, password_hash) \
                 VALUES ('..', '..', 0, 'x')",
                [],
            )
            .unwrap();
        let users = store.list_users().await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].username.as_str(), "..");
        assert!(store.user_by_id(users[0].id).await.unwrap().is_some());
    }

    /// A group that breaks `Group`'s rule, written straight into the file (no sessiond path
    /// can write one), makes the user's row corrupt, not a user with a group nobody could
    /// type; so does a groups column that is not a JSON list of strings.
    #[tokio::test]
    async fn a_stored_group_that_breaks_the_rule_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path).unwrap();
        let u = store
            .create_user(&sessiond_store_tests::users::new_user("hugo"))
            .await
            .unwrap();
        for groups in [r#"["ops","a,b"]"#, r#"["ops", 7]"#] {
            Connection::open(&path)
                .unwrap()
                .execute(
                    "UPDATE users SET groups = ?1 WHERE id = ?2",
                    params![groups, u.id.0],
                )
                .unwrap();
            assert!(
                matches!(store.user_by_id(u.id).await, Err(StoreError::Corrupt(_))),
                "{groups}"
            );
            assert!(matches!(
                store.list_users().await,
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    /// Data that is not a JSON object, written straight into the file, is reported as
    /// corrupt by a patch, and left as it is for a look (not replaced by the patch's keys).
    #[tokio::test]
    async fn a_patch_of_corrupt_data_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let store = SqliteStore::open(&path).unwrap();
        let (t, rec) =
            sessiond_store_tests::sessions::session_at(1, sessiond_store_tests::sessions::T0);
        store.create(&rec).await.unwrap();
        let mut set = SessionData::new();
        set.insert("k".into(), serde_json::json!(1));
        for bad in ["[1,2]", "{\"a\":", "42"] {
            Connection::open(&path)
                .unwrap()
                .execute(
                    "UPDATE sessions SET data = ?1 WHERE token_hash = ?2",
                    params![bad, t.hash().as_bytes().as_slice()],
                )
                .unwrap();
            assert!(
                matches!(
                    store.patch_data(&t.hash(), &set, &[]).await,
                    Err(StoreError::Corrupt(_))
                ),
                "{bad}"
            );
            let stored: String = Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT data FROM sessions WHERE token_hash = ?1",
                    [t.hash().as_bytes().as_slice()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(stored, bad);
        }
    }

    /// The server and the CLI (or several servers) started at once on a file that does not
    /// exist yet: every open succeeds and the migrations run once. Twenty fresh files, six
    /// opens each released together by a barrier: the race that made one open fail with
    /// "database is locked" (two connections switching the file to WAL, see `enable_wal`)
    /// showed up once in a CI run of the four-thread version of this test; here it did in
    /// most runs before the fix.
    #[test]
    fn concurrent_opens_of_a_fresh_file_migrate_once() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("race{round}.db"));
            let start = Arc::new(std::sync::Barrier::new(6));
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let p = path.clone();
                    let start = Arc::clone(&start);
                    std::thread::spawn(move || {
                        start.wait();
                        SqliteStore::open(p).map(|_| ())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(
                store.schema_version().unwrap(),
                MIGRATIONS.last().unwrap().0
            );
            let applied: i64 = store
                .read(|c| c.query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0)))
                .unwrap();
            assert_eq!(applied, MIGRATIONS.len() as i64, "each migration once");
        }
    }

    /// Another process holding the write lock (`BEGIN IMMEDIATE`): every write, including a
    /// burst queued behind the one connection that waits, gives up within the budget, so the
    /// server answers `503 store_unavailable` within 2 s (docs/reference/security.md, "Store
    /// failures").
    #[test]
    fn writes_blocked_by_another_process_fail_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let store = SqliteStore::open(&path).unwrap();
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..6)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let key = format!("k{i}");
                        let change = ThrottleChange::Hit {
                            key: &key,
                            window: Duration::from_secs(60),
                        };
                        let r = store
                            .throttle_apply(&[change], Timestamp::from_millis(1))
                            .await;
                        (r.is_err(), start.elapsed())
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for (failed, after) in results {
            assert!(failed, "a write went through another process's lock");
            assert!(
                after < WRITE_BUDGET + Duration::from_millis(700),
                "gave up only after {after:?}"
            );
        }
        assert!(WRITE_BUDGET <= Duration::from_secs(1));
        holder.execute_batch("ROLLBACK").unwrap();
        // The lock gone, writes go through again.
        let key = "after".to_owned();
        rt.block_on(store.throttle_apply(
            &[ThrottleChange::Hit {
                key: &key,
                window: Duration::from_secs(60),
            }],
            Timestamp::from_millis(1),
        ))
        .unwrap();
    }

    /// The file holds argon2 hashes, emails and IP addresses: readable by its owner only,
    /// and so are the `-wal` and `-shm` files SQLite creates beside it (they take its mode).
    #[cfg(unix)]
    #[test]
    fn database_files_are_created_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.db");
        let store = SqliteStore::open(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let key = "k".to_owned();
        rt.block_on(store.throttle_apply(
            &[ThrottleChange::Hit {
                key: &key,
                window: Duration::from_secs(60),
            }],
            Timestamp::from_millis(1),
        ))
        .unwrap();
        let mut seen = 0;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = dir.path().join(format!("private.db{suffix}"));
            if let Ok(meta) = std::fs::metadata(&file) {
                seen += 1;
                let mode = meta.permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
            }
        }
        assert!(seen >= 3, "the database, its -wal and -shm files exist");
        assert_eq!(store.loose_permissions(), None);

        // A file from an earlier version keeps its mode, and is reported.
        let old = dir.path().join("old.db");
        std::fs::write(&old, b"").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            SqliteStore::open(&old).unwrap().loose_permissions(),
            Some(0o644)
        );
    }

    /// A `kill -9` cannot tell FULL from NORMAL (both keep a commit through a crash of the
    /// process), so the setting that makes commits survive a power loss is checked here: on
    /// the writer of a fresh file and of a reopened one, and on every connection `configure`
    /// sets up (readers, other processes such as the CLI).
    #[test]
    fn commits_are_fsynced_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.db");
        for _reopen in 0..2 {
            let store = SqliteStore::open(&path).unwrap();
            let w = lock(&store.inner.writer);
            let mode: String = w
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let sync: i64 = w.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
            assert_eq!((mode.as_str(), sync), ("wal", 2), "2 is FULL");
            drop(w);
            let read: i64 = store
                .read(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)))
                .unwrap();
            assert_eq!(read, 2);
        }
    }

    /// What `synchronous = FULL` costs a login's store writes, against `NORMAL` (both in WAL
    /// mode): one login is one `throttle_apply` (its counter bookkeeping) and one `create`,
    /// two commits. Timed on the file system the temporary directory is on (set `TMPDIR` to
    /// measure another). Run with
    /// `cargo test --release -p sessiond-store-sqlite --lib login_write_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn login_write_cost() {
        const LOGINS: usize = 400;
        const RUNS: usize = 7;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("cost.db")).unwrap();
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        // Interleaved, so a change in the machine's load hits both settings alike.
        for _ in 0..RUNS {
            for (i, mode) in ["FULL", "NORMAL"].into_iter().enumerate() {
                lock(&store.inner.writer)
                    .pragma_update(None, "synchronous", mode)
                    .unwrap();
                let start = std::time::Instant::now();
                rt.block_on(async {
                    for n in 0..LOGINS {
                        let token = sessiond_core::SessionToken::generate();
                        let now = Timestamp::from_millis(1_700_000_000_000 + n as i64);
                        let (pair, failures, device) =
                            (format!("p:u{n}|ip"), format!("df:{n}"), format!("dr:{n}"));
                        store
                            .throttle_apply(
                                &[
                                    ThrottleChange::Delete { key: &pair },
                                    ThrottleChange::Delete { key: &failures },
                                    ThrottleChange::Hit {
                                        key: &device,
                                        window: Duration::from_secs(86400),
                                    },
                                ],
                                now,
                            )
                            .await
                            .unwrap();
                        let rec = SessionRecord {
                            id: SessionId::generate(),
                            token_hash: token.hash(),
                            user_id: UserId(1),
                            created_at: now,
                            last_seen_at: now,
                            absolute_expires_at: now.plus(Duration::from_secs(3600)),
                            expires_at: now.plus(Duration::from_secs(1800)),
                            remember: false,
                            ip: Some("203.0.113.9".into()),
                            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
                            level: Default::default(),
                        };
                        store.create(&rec).await.unwrap();
                    }
                });
                rates[i].push(LOGINS as f64 / start.elapsed().as_secs_f64());
            }
        }
        for (i, mode) in ["FULL", "NORMAL"].into_iter().enumerate() {
            let r = &mut rates[i];
            r.sort_by(f64::total_cmp);
            eprintln!(
                "synchronous={mode:<6}: median {:>6.0} logins/s ({:.2} ms each; runs {:?})",
                r[RUNS / 2],
                1000.0 / r[RUNS / 2],
                r.iter().map(|x| x.round() as i64).collect::<Vec<_>>()
            );
        }
    }
}

/// The purge's clearing of a backlog at once (`purge_by_truncation`), with small thresholds.
#[cfg(test)]
mod bulk_purge {
    use super::*;
    use sessiond_store_tests::sessions::{session_at, T0};

    const SMALL: BulkPurge = BulkPurge {
        max_survivors: 10,
        min_expired: 50,
        max_expired: 1_000,
    };

    fn open(dir: &tempfile::TempDir, limits: BulkPurge) -> SqliteStore {
        let mut store = SqliteStore::open(dir.path().join("b.db")).unwrap();
        Arc::get_mut(&mut store.inner).unwrap().bulk = limits;
        store
    }

    fn wall_clock() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// `n` sessions whose deadline passed long ago (T0 is 2026-01-01).
    async fn long_expired(store: &SqliteStore, n: usize) {
        for _ in 0..n {
            store.create(&session_at(1, T0).1).await.unwrap();
        }
    }

    fn schema_of_sessions(store: &SqliteStore) -> Vec<(String, String)> {
        store
            .read(|c| {
                c.prepare(
                    "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'sessions' ORDER BY name",
                )?
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    ))
                })?
                .collect()
            })
            .unwrap()
    }

    /// 200 long-expired sessions beside 3 live ones and 1 that expired within the grace:
    /// the first call clears the 200 at once without moving the generation; the next removes
    /// the recent one row by row and moves it. The live sessions come back whole (every
    /// column, their data), the table keeps its indexes and its trigger, and the trigger
    /// still counts a revoke.
    #[tokio::test]
    async fn a_backlog_of_long_expired_sessions_is_cleared_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, SMALL);
        long_expired(&store, 200).await;
        let now = wall_clock();
        let mut live = Vec::new();
        for i in 0..3 {
            let (token, mut rec) = session_at(2 + i, now);
            if i == 1 {
                rec.level = AuthLevel::TwoFactor;
                rec.remember = true;
                rec.user_agent = None;
            }
            store.create(&rec).await.unwrap();
            live.push((token, rec));
        }
        let mut data = SessionData::new();
        data.insert("cart".into(), serde_json::json!({"items": [1, 2, 3]}));
        assert!(store.save_data(&live[0].0.hash(), &data).await.unwrap());
        // Expired a second ago: inside the grace, so its removal must move the generation.
        let (_, recent) = session_at(9, Timestamp::from_millis(now.as_millis() - 1_801_000));
        assert!(recent.expires_at < now);
        store.create(&recent).await.unwrap();
        let schema = schema_of_sessions(&store);
        assert!(
            schema.iter().any(|(n, _)| n == "sessions_gone"),
            "{schema:?}"
        );

        let before = store.generation().await.unwrap();
        assert_eq!(store.purge_expired(now, 10).await.unwrap(), 200);
        assert_eq!(store.generation().await.unwrap(), before);
        assert_eq!(store.purge_expired(now, 10).await.unwrap(), 1);
        let after_recent = store.generation().await.unwrap();
        assert_ne!(after_recent, before);
        assert_eq!(store.purge_expired(now, 10).await.unwrap(), 0);

        for (token, rec) in &live {
            assert_eq!(store.load(&token.hash()).await.unwrap().as_ref(), Some(rec));
        }
        assert_eq!(
            store.load_data(&live[0].0.hash()).await.unwrap(),
            Some(data)
        );
        assert_eq!(store.list_all().await.unwrap().len(), 3);
        assert_eq!(schema_of_sessions(&store), schema);
        let check: String = store
            .read(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(check, "ok");
        assert!(store.delete(&live[2].0.hash()).await.unwrap());
        assert_ne!(store.generation().await.unwrap(), after_recent);
    }

    /// Whatever is not a backlog beside few others goes row by row, `limit` at a time: too
    /// many survivors, too few expired, more expired than one clearing may take, or a
    /// trigger of the operator's (which then sees every row go).
    #[tokio::test]
    async fn anything_else_goes_row_by_row() {
        let now = wall_clock();
        let row_by_row = |store: SqliteStore| async move {
            assert_eq!(store.purge_expired(now, 10).await.unwrap(), 10);
            assert_eq!(store.purge_expired(now, 10).await.unwrap(), 10);
        };

        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, SMALL);
        long_expired(&store, 200).await;
        for i in 0..11 {
            store.create(&session_at(2 + i, now).1).await.unwrap();
        }
        row_by_row(store).await;

        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, SMALL);
        long_expired(&store, 49).await;
        row_by_row(store).await;

        let dir = tempfile::tempdir().unwrap();
        let store = open(
            &dir,
            BulkPurge {
                max_expired: 100,
                ..SMALL
            },
        );
        long_expired(&store, 200).await;
        row_by_row(store).await;

        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, SMALL);
        long_expired(&store, 200).await;
        store
            .write(|c| {
                c.execute_batch(
                    "CREATE TABLE audit (id TEXT);
                     CREATE TRIGGER sessions_audit AFTER DELETE ON sessions
                         BEGIN INSERT INTO audit VALUES (old.id); END;",
                )
            })
            .await
            .unwrap();
        row_by_row(store.clone()).await;
        let audited: i64 = store
            .read(|c| c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(audited, 20);
    }

    /// A sweep whose first batch found no backlog does not look again in its later batches
    /// (they share its `now`); the next sweep does.
    #[tokio::test]
    async fn a_sweep_looks_for_a_backlog_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, SMALL);
        long_expired(&store, 40).await;
        let now = wall_clock();
        assert_eq!(store.purge_expired(now, 10).await.unwrap(), 10);
        long_expired(&store, 100).await;
        // The same sweep: row by row although there is a backlog now.
        assert_eq!(store.purge_expired(now, 10).await.unwrap(), 10);
        let next = Timestamp::from_millis(now.as_millis() + 1);
        assert_eq!(store.purge_expired(next, 10).await.unwrap(), 120);
    }
}

/// Session-data patches written together (`SqliteStore::patch_data`, group commit).
#[cfg(test)]
mod group_commit {
    use std::path::Path;

    use sessiond_store_tests::sessions::{session_at, T0};

    use super::*;

    fn one(key: &str, value: i64) -> SessionData {
        let mut d = SessionData::new();
        d.insert(key.to_owned(), serde_json::json!(value));
        d
    }

    fn wal_bytes(db: &Path) -> u64 {
        std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len())
    }

    /// Takes the writer connection (as a long write would) and returns once it holds it; the
    /// thread lets it go once `n` patches are queued behind it and `hold_at_least` has passed.
    fn hold_the_writer(
        store: &SqliteStore,
        n: usize,
        hold_at_least: Duration,
    ) -> std::thread::JoinHandle<()> {
        let store = store.clone();
        let (held, is_held) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let writer = lock(&store.inner.writer);
            let since = Instant::now();
            held.send(()).unwrap();
            let deadline = since + Duration::from_secs(10);
            while lock(&store.inner.patches).queue.len() < n {
                assert!(Instant::now() < deadline, "the patches never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(hold_at_least.saturating_sub(since.elapsed()));
            drop(writer);
        });
        is_held.recv().unwrap();
        holder
    }

    /// Fifty patches of one session, one of a session whose stored data does not decode and
    /// one of a session that is gone, all queued while the writer is busy: each gets its own
    /// outcome, every key of the fifty is kept, the undecodable row is left as it was, and the
    /// fifty went to the file in one commit (the WAL holds a few pages, where fifty
    /// transactions would have appended the session's page fifty times).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn patches_queued_behind_the_writer_are_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path).unwrap();
        let (a_token, a) = session_at(1, T0);
        let (b_token, b) = session_at(1, T0);
        let (gone_token, _) = session_at(1, T0);
        store.create(&a).await.unwrap();
        store.create(&b).await.unwrap();
        let raw = Connection::open(&path).unwrap();
        raw.busy_timeout(Duration::from_secs(5)).unwrap();
        raw.execute(
            "UPDATE sessions SET data = 'not json' WHERE token_hash = ?1",
            [b_token.hash().as_bytes().as_slice()],
        )
        .unwrap();
        raw.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        assert_eq!(wal_bytes(&path), 0);
        let page: u64 = raw.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();

        let patch = |token: &sessiond_core::SessionToken, key: String, value: i64| {
            let (store, hash) = (store.clone(), token.hash());
            tokio::spawn(async move { store.patch_data(&hash, &one(&key, value), &[]).await })
        };
        let holder = hold_the_writer(&store, 52, Duration::ZERO);
        let fifty: Vec<_> = (0..50)
            .map(|i| patch(&a_token, format!("k{i}"), i))
            .collect();
        let corrupt = patch(&b_token, "x".into(), 1);
        let gone = patch(&gone_token, "x".into(), 1);
        tokio::task::spawn_blocking(move || holder.join().unwrap())
            .await
            .unwrap();

        for t in fifty {
            assert!(t.await.unwrap().unwrap(), "a live session's patch");
        }
        assert!(matches!(
            corrupt.await.unwrap(),
            Err(StoreError::Corrupt(_))
        ));
        assert!(
            !gone.await.unwrap().unwrap(),
            "a gone session is not recreated"
        );
        assert!(lock(&store.inner.patches).queue.is_empty());

        let data = store.load_data(&a_token.hash()).await.unwrap().unwrap();
        assert_eq!(data.len(), 50);
        for i in 0..50 {
            assert_eq!(data[&format!("k{i}")], serde_json::json!(i));
        }
        let b_raw: String = raw
            .query_row(
                "SELECT data FROM sessions WHERE token_hash = ?1",
                [b_token.hash().as_bytes().as_slice()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b_raw, "not json", "left for a look");
        // The WAL's header is 32 bytes and each frame a page and 24 bytes: one commit of the
        // session's page (and perhaps an index page) is a frame or two; fifty commits would
        // be fifty at least.
        let frames = (wal_bytes(&path) - 32) / (page + 24);
        assert!(
            (1..=4).contains(&frames),
            "{frames} WAL frames for fifty patches"
        );
    }

    /// Many patches of many sessions at once, with other writes (new sessions) between them:
    /// every patch is written and answered, and the writing thread stops once the queue is
    /// empty (a later patch starts another).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_patches_are_all_written_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("c.db")).unwrap();
        let mut tokens = Vec::new();
        for _ in 0..8 {
            let (t, r) = session_at(1, T0);
            store.create(&r).await.unwrap();
            tokens.push(t);
        }
        let mut tasks = Vec::new();
        for i in 0..400_i64 {
            let (store, hash) = (store.clone(), tokens[(i % 8) as usize].hash());
            tasks.push(tokio::spawn(async move {
                if i % 50 == 0 {
                    let (_, r) = session_at(2, T0);
                    store.create(&r).await.unwrap();
                }
                store
                    .patch_data(&hash, &one(&format!("k{i}"), i), &[])
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().unwrap());
        }
        for (n, t) in tokens.iter().enumerate() {
            let data = store.load_data(&t.hash()).await.unwrap().unwrap();
            assert_eq!(data.len(), 50, "session {n}");
        }
        // The thread answers a batch before it looks at the queue again and stops.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&store.inner.patches).writing {
            assert!(
                Instant::now() < deadline,
                "the writing thread never stopped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(lock(&store.inner.patches).queue.is_empty());
        // And the next patch is written by a new thread.
        assert!(store
            .patch_data(&tokens[0].hash(), &one("late", 1), &[])
            .await
            .unwrap());
    }

    /// A steady stream of patches does not keep the writer from other writes: the writing
    /// thread lets the writer go between batches, and a session insert waiting meanwhile gets
    /// it well within its budget.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_of_patches_leaves_the_writer_to_other_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let (token, rec) = session_at(1, T0);
        store.create(&rec).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut streams = Vec::new();
        for n in 0..16_i64 {
            let (store, hash, stop) = (store.clone(), token.hash(), Arc::clone(&stop));
            streams.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store
                        .patch_data(&hash, &one(&format!("s{n}"), i), &[])
                        .await
                        .unwrap();
                    i += 1;
                }
                i
            }));
        }
        let mut slowest = Duration::ZERO;
        for _ in 0..40 {
            let (_, r) = session_at(2, T0);
            let started = Instant::now();
            store.create(&r).await.unwrap();
            slowest = slowest.max(started.elapsed());
            // Spread over a while, the patches streaming meanwhile.
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(5)))
                .await
                .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut patched = 0;
        for s in streams {
            patched += s.await.unwrap();
        }
        assert!(patched > 0);
        assert!(
            slowest < WRITE_BUDGET / 4,
            "a session insert waited {slowest:?} for the writer ({patched} patches meanwhile)"
        );
    }

    /// A patch that waited for the writer longer than its budget fails like any write that
    /// did (`Unavailable`, within the 2 s the contract allows) and is not written later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patch_past_its_budget_fails_and_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("b.db")).unwrap();
        let (token, rec) = session_at(1, T0);
        store.create(&rec).await.unwrap();
        let (late, hash) = (store.clone(), token.hash());
        let holder = hold_the_writer(&store, 1, WRITE_BUDGET + Duration::from_millis(100));
        let asked = Instant::now();
        let patch = tokio::spawn(async move { late.patch_data(&hash, &one("k", 1), &[]).await });
        tokio::task::spawn_blocking(move || holder.join().unwrap())
            .await
            .unwrap();
        assert!(matches!(
            patch.await.unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert!(asked.elapsed() < Duration::from_secs(2));
        assert_eq!(
            store.load_data(&token.hash()).await.unwrap(),
            Some(SessionData::new())
        );
        assert!(lock(&store.inner.patches).queue.is_empty());
    }
}
