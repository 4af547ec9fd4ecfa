//! The storage-scale rows (issue 20): what grows with the number of stored sessions.
//!
//! * **Purge on PostgreSQL**, next to SQLite's (whose row the scale rows produce): a database
//!   of its own with the live sessions the probe verifies and a million sessions already
//!   expired, `sessiond session purge` while the server serves.
//! * **PostgreSQL with ten million sessions**: verify at 1,000 and at 10,000,000 stored
//!   sessions, two databases, two servers, interleaved rounds (as SQLite's large-store rows).
//!   The filler rows are written by PostgreSQL itself (`INSERT … SELECT generate_series`, the
//!   indexes dropped meanwhile and built once after), the probed ones with secrets made here.
//! * **Redis bytes per session**: a `redis-server` of the bench's own on a spare port (no
//!   other client moves `used_memory`), sessions written through the Redis store's own code,
//!   `INFO memory` before and after, and `MEMORY USAGE` of one key of each kind.
//! * **nginx `auth_request`**: the example config (`examples/nginx.conf`) serving a static
//!   page, once behind `auth_request` with a valid cookie and once from a location without
//!   it, same nginx, interleaved rounds.
//!
//! `--storage-only` runs these (and SQLite's purge) alone.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sessiond_core::{SessionToken, TOKEN_BYTES};

use crate::coherence::OwnRedis;
use crate::harness::{
    cookies, run_purge, run_rounds, start_sessiond, start_sessiond_with, store_reads,
    store_reads_since, Config, PASSWORD,
};
use crate::load::{self, once_blocking, Job, Measure, Req};
use crate::process::free_port;
use crate::report::{check, mib, ms, thousands, Outcome, Purge, Rounds, Row, Scale, ScalePoint};
use crate::seed;
use crate::stores::{Store, StoreKind, Unavailable};

/// How large the storage rows are.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Stored sessions of PostgreSQL's large-store row.
    pub pg_large_sessions: u64,
    /// Sessions written to the bench's own Redis, and the users they belong to.
    pub redis_sessions: u64,
    pub redis_users: u64,
}

impl StorageConfig {
    pub fn real() -> Self {
        Self {
            pg_large_sessions: 10_000_000,
            redis_sessions: 100_000,
            // 40 sessions per user, as the sizing measurement of docs/deployment.md.
            redis_users: 2_500,
        }
    }

    pub fn smoke() -> Self {
        Self {
            pg_large_sessions: 3_000,
            redis_sessions: 400,
            redis_users: 10,
        }
    }
}

/// What the storage rows found.
#[derive(Clone, Debug)]
pub struct Storage {
    pub pg_scale: Outcome<Scale>,
    pub pg_purge: Outcome<Purge>,
    pub redis_bytes: Outcome<RedisBytes>,
    pub nginx: Outcome<NginxFigures>,
}

impl Default for Storage {
    fn default() -> Self {
        let no = "not in this mode";
        Self {
            pg_scale: Outcome::Skipped(no.into()),
            pg_purge: Outcome::Skipped(no.into()),
            redis_bytes: Outcome::Skipped(no.into()),
            nginx: Outcome::Skipped(no.into()),
        }
    }
}

/// Redis memory for `sessions` sessions of `users` users.
#[derive(Clone, Debug)]
pub struct RedisBytes {
    pub sessions: u64,
    pub users: u64,
    /// `used_memory` before and after writing them.
    pub before: u64,
    pub after: u64,
    /// `MEMORY USAGE` per kind of key, as bytes per session: `(kind, bytes)`.
    pub per_key: Vec<(String, f64)>,
}

impl RedisBytes {
    pub fn per_session(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.sessions.max(1) as f64
    }
}

/// The Redis target (issue 20): bytes per session.
pub const REDIS_BYTES_TARGET: f64 = 500.0;
/// The purge target (issue 20): expired sessions removed per second.
pub const PURGE_TARGET: f64 = 100_000.0;

/// A static page through nginx, with and without `auth_request`, in the same rounds.
#[derive(Clone, Debug)]
pub struct NginxFigures {
    /// The page from a location without `auth_request`.
    pub bare: Rounds,
    /// The same page behind `auth_request` (a valid session cookie).
    pub protected: Rounds,
}

impl NginxFigures {
    pub fn ratio(&self) -> f64 {
        self.protected.ratio_to(&self.bare)
    }
}

/// All storage rows but SQLite's purge (the scale rows make that one).
pub fn bench(cfg: &Config) -> Storage {
    let say_outcome = |what: &str, failed: Option<&String>| {
        if let Some(why) = failed {
            cfg.say(format!("[{what}] not measured: {why}"));
        }
    };
    let pg_scale: Outcome<Scale> =
        skip_absent(cfg, StoreKind::Postgres, |store| bench_pg_scale(cfg, store));
    say_outcome("postgres scale", why(&pg_scale));
    let pg_purge: Outcome<Purge> =
        skip_absent(cfg, StoreKind::Postgres, |store| bench_pg_purge(cfg, store));
    say_outcome("postgres purge", why(&pg_purge));
    let redis_bytes = bench_redis_bytes(cfg);
    say_outcome("redis bytes", why(&redis_bytes));
    let nginx = bench_nginx(cfg);
    say_outcome("nginx", why(&nginx));
    Storage {
        pg_scale,
        pg_purge,
        redis_bytes,
        nginx,
    }
}

fn why<T>(o: &Outcome<T>) -> Option<&String> {
    match o {
        Outcome::Done(_) => None,
        Outcome::Skipped(w) | Outcome::Failed(w) => Some(w),
    }
}

/// `f` on a fresh store of `kind`, skipped when its service is absent (unless required).
fn skip_absent<T>(
    cfg: &Config,
    kind: StoreKind,
    f: impl FnOnce(&Store) -> anyhow::Result<T>,
) -> Outcome<T> {
    match Store::create(kind, &cfg.services) {
        Ok(store) => f(&store).into(),
        Err(Unavailable::Absent(why)) if !cfg.require_services => Outcome::Skipped(why),
        Err(Unavailable::Absent(why)) => {
            Outcome::Failed(format!("{why} (SESSIOND_REQUIRE_SERVICES=1)"))
        }
        Err(Unavailable::Failed(e)) => Outcome::Failed(format!("{e:#}")),
    }
}

/// `--storage-only`: SQLite's purge and every storage row, printed (for tuning; writes
/// nothing).
pub fn storage_only(cfg: &Config) -> anyhow::Result<()> {
    let started = Instant::now();
    cfg.say("[purge] SQLite …");
    let sqlite_purge: Outcome<Purge> = sqlite_purge(cfg).into();
    let storage = bench(cfg);
    let mut t = String::from("| | SQLite | PostgreSQL | Redis | target |\n|---|---|---|---|---|\n");
    for r in rows(&sqlite_purge, &storage) {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.label, r.cells[0], r.cells[1], r.cells[2], r.target
        ));
    }
    println!("\n{t}");
    eprintln!(
        "sessiond-bench: storage rows in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--purge-only N`: SQLite's purge row alone, `N` times (a fresh file each), with the
/// medians of its rate and of its p99 ratio (for tuning; prints, writes nothing).
pub fn purge_only(cfg: &Config, times: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let times = times.max(1);
    let (mut rates, mut ratios) = (Vec::new(), Vec::new());
    for i in 1..=times {
        cfg.say(format!("[purge] SQLite, run {i}/{times} …"));
        let p = sqlite_purge(cfg)?;
        let rate = p.removed as f64 / p.seconds.max(1e-9);
        let ratio = p.probe_during.p99_ms / p.probe_idle.p99_ms.max(1e-9);
        println!(
            "run {i}: removed {} of {} in {:.2} s ({rate:.0}/s), {} left; verify p99 {:.2} → {:.2} ms \
             ({ratio:.1}×, max {:.2} ms), {} verifications during",
            p.removed,
            p.expired,
            p.seconds,
            p.left,
            p.probe_idle.p99_ms,
            p.probe_during.p99_ms,
            p.probe_during.max_ms,
            p.probe_during.count,
        );
        rates.push(rate);
        ratios.push(ratio);
    }
    println!(
        "median of {}: {:.0} sessions/s, verify p99 during ÷ idle {:.1}×",
        rates.len(),
        crate::report::median_of(rates),
        crate::report::median_of(ratios)
    );
    eprintln!(
        "sessiond-bench: purge rows in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--redis-bytes-only`: the Redis bytes-per-session row alone, printed (for tuning; writes
/// nothing, needs no sessiond).
pub fn redis_bytes_only(cfg: &Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let storage = Storage {
        redis_bytes: bench_redis_bytes(cfg),
        ..Storage::default()
    };
    if let Some(why) = why(&storage.redis_bytes) {
        anyhow::bail!("redis bytes not measured: {why}");
    }
    if let Some(b) = storage.redis_bytes.done() {
        println!(
            "used_memory {} → {} bytes: {:.1} bytes per session",
            b.before,
            b.after,
            b.per_session()
        );
    }
    let rows = more_rows(&storage);
    let row = rows
        .iter()
        .find(|r| r.label.contains("Redis bytes"))
        .context("no Redis row")?;
    println!("\n| {} | {} | {} |", row.label, row.cells[2], row.target);
    eprintln!(
        "sessiond-bench: redis bytes in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// SQLite's purge on its own: the live set and the expired set in one fresh file (in the full
/// run the scale rows' large file is purged instead).
fn sqlite_purge(cfg: &Config) -> anyhow::Result<Purge> {
    let dir = tempfile::Builder::new()
        .prefix("sessiond-bench-purge-")
        .tempdir()?;
    let db = dir.path().join("sessiond.db");
    let url = format!("sqlite://{}", db.display());
    seed::add_user(&cfg.sessiond, &url, "admin", PASSWORD)?;
    let uid = seed::user_id(&db, "admin")?;
    let live = seed::insert_sessions(
        &db,
        uid,
        cfg.small_sessions,
        crate::harness::SMALL_MARK,
        cfg.cookie_sample,
    )?;
    cfg.say(format!(
        "[purge] storing {} sessions to expire …",
        cfg.large_sessions
    ));
    seed::insert_sessions(&db, uid, cfg.large_sessions, crate::harness::LARGE_MARK, 1)?;
    // The seeding wrote without syncing: flushed now, or the kernel's writeback of the
    // whole file would land in the measurement (each commit's fsync waiting behind it).
    std::fs::File::open(&db)?.sync_all()?;
    crate::harness::bench_purge(cfg, dir.path(), &db, &url, &live)
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn pg(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Sessions with secrets made here (so the load can present their cookies).
struct Known {
    cookies: Vec<String>,
    hashes: Vec<Vec<u8>>,
}

/// The server's default idle timeout (30 min), in ms.
const IDLE_MS: i64 = 30 * 60 * 1000;
const ABSOLUTE_MS: i64 = 12 * 3600 * 1000;

/// Inserts `n` live sessions of `uid` marked `marker`, last seen two minutes ago (an activity
/// write is due at their first verification, which the touch pass awaits).
async fn insert_known(
    c: &mut tokio_postgres::Client,
    uid: i64,
    n: u64,
    marker: &str,
) -> anyhow::Result<Known> {
    let seen = seed::now_ms() - 120_000;
    let tx = c.transaction().await?;
    let stmt = tx
        .prepare(
            "INSERT INTO sessions (token_hash, id, user_id, created_at, last_seen_at, \
             absolute_expires_at, expires_at, remember, ip, user_agent) \
             VALUES ($1, $2, $3, $4, $4, $5, $6, false, '127.0.0.1', $7)",
        )
        .await?;
    let mut known = Known {
        cookies: Vec::new(),
        hashes: Vec::new(),
    };
    for _ in 0..n {
        let mut secret = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
        let token = SessionToken::from_entropy(secret);
        let hash = token.hash().as_bytes().to_vec();
        let id = sessiond_core::SessionId::generate();
        tx.execute(
            &stmt,
            &[
                &hash,
                &id.as_str(),
                &uid,
                &seen,
                &(seen + ABSOLUTE_MS),
                &(seen + IDLE_MS),
                &marker,
            ],
        )
        .await?;
        known.cookies.push(token.expose().to_owned());
        known.hashes.push(hash);
    }
    tx.commit().await?;
    Ok(known)
}

/// Adds `n` sessions of `uid` made by PostgreSQL itself (`generate_series`; secrets nobody
/// knows), created at `created`, deadline `expires`. The table's indexes are dropped first
/// and built once at the end (faster than ten million random B-tree inserts), then the table
/// is vacuumed and analysed, as a table that grew over months would be.
async fn insert_filler(
    c: &tokio_postgres::Client,
    uid: i64,
    n: u64,
    created: i64,
    expires: i64,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    let constraints = c
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'sessions'::regclass AND contype IN ('p', 'u')",
            &[],
        )
        .await?;
    let indexes = c
        .query(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index \
             WHERE indrelid = 'sessions'::regclass AND indexrelid NOT IN \
             (SELECT conindid FROM pg_constraint WHERE conrelid = 'sessions'::regclass)",
            &[],
        )
        .await?;
    let mut rebuild = Vec::new();
    for r in &indexes {
        let (name, def): (String, String) = (r.get(0), r.get(1));
        c.batch_execute(&format!("DROP INDEX {name}")).await?;
        rebuild.push(def);
    }
    for r in &constraints {
        let (name, def): (String, String) = (r.get(0), r.get(1));
        c.batch_execute(&format!("ALTER TABLE sessions DROP CONSTRAINT \"{name}\""))
            .await?;
        rebuild.insert(
            0,
            format!("ALTER TABLE sessions ADD CONSTRAINT \"{name}\" {def}"),
        );
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let salt = salt.to_vec();
    let n = i64::try_from(n)?;
    let chunk = 1_000_000_i64;
    let t = Instant::now();
    let mut from = 1_i64;
    while from <= n {
        let to = (from + chunk - 1).min(n);
        c.execute(
            "INSERT INTO sessions (token_hash, id, user_id, created_at, last_seen_at, \
             absolute_expires_at, expires_at, remember, ip, user_agent) \
             SELECT sha256(int8send(g) || $1::bytea), 'f' || lpad(g::text, 21, '0'), $2, $3, $3, \
             $4, $4, false, '127.0.0.1', 'sessiond-bench filler' \
             FROM generate_series($5::bigint, $6::bigint) g",
            &[&salt, &uid, &created, &expires, &from, &to],
        )
        .await?;
        from = to + 1;
        if n > chunk {
            say(format!(
                "[postgres] {to} of {n} rows in {:.0} s",
                t.elapsed().as_secs_f64()
            ));
        }
    }
    c.batch_execute("SET maintenance_work_mem = '512MB'")
        .await?;
    for sql in &rebuild {
        c.batch_execute(sql).await?;
    }
    c.batch_execute("VACUUM ANALYZE sessions").await?;
    say(format!(
        "[postgres] {n} rows and their indexes in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn pg_user_id(c: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(
        c.query_one("SELECT id FROM users WHERE username_key = 'admin'", &[])
            .await?
            .get(0),
    )
}

/// Sessions of `hashes` whose last activity is at or after `since`.
async fn pg_seen_since(
    c: &tokio_postgres::Client,
    hashes: &[Vec<u8>],
    since: i64,
) -> anyhow::Result<u64> {
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM sessions WHERE token_hash = ANY($1) AND last_seen_at >= $2",
            &[&hashes, &since],
        )
        .await?
        .get(0);
    Ok(u64::try_from(n)?)
}

/// Verifies every session of `req` (cookies of `known`) until their activity writes have
/// landed, so the rounds after it see sessions in one state (as the SQLite rows' touch pass).
fn touch_all_pg(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    c: &tokio_postgres::Client,
    addr: std::net::SocketAddr,
    req: &Req,
    known: &Known,
) -> anyhow::Result<()> {
    crate::harness::touch_until(cfg, addr, req, known.hashes.len() as u64, |since| {
        rt.block_on(pg_seen_since(c, &known.hashes, since))
    })
}

/// Verify with 1,000 and with `pg_large_sessions` stored sessions on PostgreSQL: two
/// databases (the second is `store`, the first one more of the same kind), a server on each,
/// interleaved rounds.
fn bench_pg_scale(cfg: &Config, large_store: &Store) -> anyhow::Result<Scale> {
    let small_store = Store::create(StoreKind::Postgres, &cfg.services)
        .map_err(|e| anyhow::anyhow!("a second PostgreSQL database: {e:?}"))?;
    let rt = runtime()?;
    let large_n = cfg.storage.pg_large_sessions.max(cfg.cookie_sample as u64);
    let mut seeded = Vec::new();
    for (store, filler) in [
        (&small_store, 0),
        (large_store, large_n - cfg.cookie_sample as u64),
    ] {
        seed::add_user(&cfg.sessiond, &store.database, "admin", PASSWORD)?;
        let mut c = rt.block_on(pg(&store.database))?;
        let uid = rt.block_on(pg_user_id(&c))?;
        let sample = if filler == 0 {
            cfg.small_sessions
        } else {
            cfg.cookie_sample as u64
        };
        let known = rt.block_on(insert_known(&mut c, uid, sample, "sessiond-bench probed"))?;
        if filler > 0 {
            cfg.say(format!("[postgres] storing {large_n} sessions …"));
            let now = seed::now_ms();
            rt.block_on(insert_filler(
                &c,
                uid,
                filler,
                now,
                now + ABSOLUTE_MS,
                &|s| cfg.say(s),
            ))?;
        }
        seeded.push((c, known));
    }
    let small_server = start_sessiond(cfg, small_store.dir(), &small_store.args(), "pg-small")?;
    let large_server = start_sessiond(cfg, large_store.dir(), &large_store.args(), "pg-large")?;
    let reqs: Vec<Req> = [&small_server, &large_server]
        .iter()
        .zip(&seeded)
        .map(|(s, (_, k))| Req::get(&s.addr.to_string(), "/api/session").vary(cookies(&k.cookies)))
        .collect();
    for ((server, req), (c, known)) in [&small_server, &large_server]
        .iter()
        .zip(&reqs)
        .zip(&seeded)
    {
        touch_all_pg(cfg, &rt, c, server.addr, req, known)?;
    }
    let jobs = [
        cfg.closed(small_server.addr, reqs[0].clone()),
        cfg.closed(large_server.addr, reqs[1].clone()),
    ];
    let before = [
        store_reads(small_server.addr),
        store_reads(large_server.addr),
    ];
    let small_n = cfg.small_sessions;
    let [small_rounds, large_rounds]: [Rounds; 2] = run_rounds(&jobs, cfg.rounds, |round, m| {
        cfg.say(format!(
            "[postgres scale] round {round}/{}: verify {:.0}/s with {small_n} stored ({}), \
             {:.0}/s with {large_n} stored ({})",
            cfg.rounds,
            m[0].rps,
            m[0].status_summary(),
            m[1].rps,
            m[1].status_summary()
        ));
    })?
    .try_into()
    .map_err(|_| anyhow::anyhow!("two jobs, two results"))?;
    let small = ScalePoint {
        stored: small_n,
        verify: small_rounds,
        rss_kib: small_server.rss_kib(),
        store_reads: store_reads_since(small_server.addr, before[0]),
    };
    let large = ScalePoint {
        stored: large_n,
        verify: large_rounds,
        rss_kib: large_server.rss_kib(),
        store_reads: store_reads_since(large_server.addr, before[1]),
    };
    small_server.stop();
    large_server.stop();
    Ok(Scale { small, large })
}

/// `sessiond session purge` on PostgreSQL: the live sessions the probe verifies, and
/// `large_sessions` sessions whose deadline passed a minute ago, in a database of their own.
fn bench_pg_purge(cfg: &Config, store: &Store) -> anyhow::Result<Purge> {
    let rt = runtime()?;
    seed::add_user(&cfg.sessiond, &store.database, "admin", PASSWORD)?;
    let mut c = rt.block_on(pg(&store.database))?;
    let uid = rt.block_on(pg_user_id(&c))?;
    let known = rt.block_on(insert_known(&mut c, uid, cfg.small_sessions, "live"))?;
    cfg.say(format!(
        "[postgres purge] storing {} expired sessions …",
        cfg.large_sessions
    ));
    let now = seed::now_ms();
    rt.block_on(insert_filler(
        &c,
        uid,
        cfg.large_sessions,
        now - 2 * IDLE_MS,
        now - 60_000,
        &|s| cfg.say(s),
    ))?;
    // The server's own sweep is off: the command alone purges.
    let mut args = store.args();
    args.extend(["--sweep-interval".into(), "off".into()]);
    let server = start_sessiond(cfg, store.dir(), &args, "pg-purge")?;
    let count = |at: i64| -> anyhow::Result<(u64, u64)> {
        let r = rt.block_on(c.query_one(
            "SELECT count(*) FILTER (WHERE expires_at <= $1), \
             count(*) FILTER (WHERE expires_at > $1) FROM sessions",
            &[&at],
        ))?;
        Ok((
            u64::try_from(r.get::<_, i64>(0))?,
            u64::try_from(r.get::<_, i64>(1))?,
        ))
    };
    let (expired, live) = count(seed::now_ms())?;
    let req = Req::get(&server.addr.to_string(), "/api/session").vary(cookies(&known.cookies));
    touch_all_pg(cfg, &rt, &c, server.addr, &req, &known)?;
    let (probe_idle, probe_during, removed, seconds) =
        purge_under_probe(cfg, server.addr, &req, &store.database)?;
    let (left, _) = count(seed::now_ms() - 1_000)?;
    cfg.say(format!(
        "[postgres purge] removed {removed} in {seconds:.1} s ({:.0}/s); verify p99 {:.2} ms \
         idle, {:.2} ms during",
        removed as f64 / seconds.max(1e-3),
        probe_idle.p99_ms,
        probe_during.p99_ms
    ));
    server.stop();
    Ok(Purge {
        expired,
        live,
        removed,
        seconds,
        probe_idle,
        probe_during,
        left,
    })
}

/// The idle probe, then `sessiond session purge` of `url` with the probe running during it;
/// returns `(idle, during, removed, seconds)`. SQLite's purge row (`harness.rs`) and
/// PostgreSQL's both measure this way.
pub(crate) fn purge_under_probe(
    cfg: &Config,
    addr: std::net::SocketAddr,
    req: &Req,
    url: &str,
) -> anyhow::Result<(Measure, Measure, u64, f64)> {
    let probe_idle = load::run(&cfg.probe(addr, req.clone(), cfg.warmup, cfg.window))?;
    let stop = Arc::new(AtomicBool::new(false));
    let probe = Job {
        stop: Some(Arc::clone(&stop)),
        ..cfg.probe(addr, req.clone(), cfg.warmup, Duration::from_secs(900))
    };
    let (during, purge) = std::thread::scope(|s| {
        let h = s.spawn(|| load::run(&probe));
        std::thread::sleep(cfg.warmup + Duration::from_millis(30));
        let t = Instant::now();
        let out = run_purge(&cfg.sessiond, url);
        let seconds = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let probe = h
            .join()
            .map_err(|_| anyhow::anyhow!("the probe panicked"))
            .and_then(|r| r);
        (probe, out.map(|removed| (removed, seconds)))
    });
    let (removed, seconds) = purge?;
    Ok((probe_idle, during?, removed, seconds))
}

// ---------------------------------------------------------------------------------------------
// Redis

fn bench_redis_bytes(cfg: &Config) -> Outcome<RedisBytes> {
    let server = match OwnRedis::start(cfg).map_err(|e| format!("{e:#}")) {
        Ok(s) => s,
        Err(why) if !cfg.require_services => return Outcome::Skipped(why),
        Err(why) => return Outcome::Failed(format!("{why} (SESSIOND_REQUIRE_SERVICES=1)")),
    };
    redis_bytes(cfg, &server).into()
}

fn redis_bytes(cfg: &Config, server: &OwnRedis) -> anyhow::Result<RedisBytes> {
    use sessiond_core::SessionStore as _;
    let n = cfg.storage.redis_sessions.max(1);
    let users = cfg.storage.redis_users.clamp(1, n);
    let base = server.url();
    let prefix = "bench";
    let rt = runtime()?;
    rt.block_on(async {
        let store = sessiond_store_redis::RedisStore::connect(&format!("{base}?prefix={prefix}"))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut raw = redis::Client::open(base.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        // Anything the store writes on its first use (its scripts) is counted as "before".
        store
            .generation()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let before = used_memory(&mut raw).await?;
        let now = seed::now_ms();
        let mut tasks = tokio::task::JoinSet::new();
        let workers = 16_u64;
        for w in 0..workers {
            let store = store.clone();
            tasks.spawn(async move {
                let mut i = w;
                while i < n {
                    store
                        .create(&redis_record(i, users, now))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    i += workers;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let after = used_memory(&mut raw).await?;
        let mut per_key = Vec::new();
        // `{p}:i:` keys only exist for sessions whose id is not derived from their hash (none
        // of a login's, so none here): counted when there are any.
        for (kind, pattern, count, may_be_absent) in [
            ("session `s:`", format!("{{{prefix}}}:s:*"), n, false),
            ("id index `i:`", format!("{{{prefix}}}:i:*"), n, true),
            ("user index `u:`", format!("{{{prefix}}}:u:*"), users, false),
        ] {
            let mut usages = Vec::new();
            let mut encoding = None;
            let mut cursor = 0_u64;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut raw)
                    .await?;
                for k in keys {
                    if usages.len() < 200 {
                        usages.push(memory_usage(&mut raw, &k).await?);
                    }
                    if encoding.is_none() {
                        encoding = Some(object_encoding(&mut raw, &k).await?);
                    }
                }
                cursor = next;
                if cursor == 0 || usages.len() >= 200 {
                    break;
                }
            }
            if usages.is_empty() && may_be_absent {
                continue;
            }
            anyhow::ensure!(!usages.is_empty(), "no key matches {pattern}");
            let mean = usages.iter().sum::<u64>() as f64 / usages.len() as f64;
            let encoding = encoding.unwrap_or_default();
            per_key.push((
                format!("{kind} ({encoding})"),
                mean * count as f64 / n as f64,
            ));
        }
        let exp = format!("{{{prefix}}}:exp");
        let usage = memory_usage(&mut raw, exp.as_bytes()).await?;
        let encoding = object_encoding(&mut raw, exp.as_bytes()).await?;
        per_key.push((
            format!("deadline index `exp` ({encoding})"),
            usage as f64 / n as f64,
        ));
        Ok(RedisBytes {
            sessions: n,
            users,
            before,
            after,
            per_key,
        })
    })
}

/// Session `i` of `users` users, as a browser login makes it (a typical user agent, no data,
/// the id `ExpiryPolicy::start` gives it: derived from the hash).
fn redis_record(i: u64, users: u64, now: i64) -> sessiond_core::SessionRecord {
    use sessiond_core::{AuthLevel, SessionRecord, Timestamp, UserId};
    let token = SessionToken::generate();
    SessionRecord {
        id: sessiond_core::SessionId::for_hash(&token.hash()),
        token_hash: token.hash(),
        user_id: UserId(1 + (i % users) as i64),
        created_at: Timestamp::from_millis(now),
        last_seen_at: Timestamp::from_millis(now),
        absolute_expires_at: Timestamp::from_millis(now + ABSOLUTE_MS),
        expires_at: Timestamp::from_millis(now + IDLE_MS),
        remember: false,
        ip: Some("203.0.113.54".into()),
        user_agent: Some(
            "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0".into(),
        ),
        level: AuthLevel::OneFactor,
    }
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

async fn memory_usage(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &[u8],
) -> anyhow::Result<u64> {
    let n: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await?;
    n.with_context(|| format!("no key {}", String::from_utf8_lossy(key)))
}

/// How Redis holds the key (`OBJECT ENCODING`: a string `embstr` or `raw`, a small sorted
/// set `listpack`, a large one `skiplist`).
async fn object_encoding(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &[u8],
) -> anyhow::Result<String> {
    let e: Option<String> = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query_async(conn)
        .await?;
    e.with_context(|| format!("no key {}", String::from_utf8_lossy(key)))
}

// ---------------------------------------------------------------------------------------------
// nginx

fn nginx_installed() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn bench_nginx(cfg: &Config) -> Outcome<NginxFigures> {
    if !nginx_installed() {
        return Outcome::Skipped("nginx is not installed".into());
    }
    nginx_rows(cfg).into()
}

/// An nginx process of the bench's own, stopped when dropped.
struct OwnNginx {
    child: Child,
}

impl Drop for OwnNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PAGE: &str = "<!doctype html>\n<html><head><title>app</title></head><body><h1>The app</h1>\
                    <p>A static page served by nginx.</p></body></html>\n";

/// `examples/nginx.conf` as a deployment would use it, with this run's ports, the app's
/// upstream replaced by files nginx serves itself (`root`), and one location without
/// `auth_request` serving the same files (`/bare/`).
fn nginx_config(dir: &Path, port: u16, sessiond: std::net::SocketAddr) -> anyhow::Result<String> {
    let path = crate::binaries::workspace_root().join("examples/nginx.conf");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let files = dir.join("www");
    let upstream = "        proxy_pass http://127.0.0.1:8080;";
    let protected = "    location / {\n        auth_request";
    anyhow::ensure!(
        text.contains(upstream) && text.contains(protected) && text.contains("listen 80;"),
        "examples/nginx.conf changed shape: the bench cannot adapt it"
    );
    let site = text
        .replace(upstream, &format!("        root {};", files.display()))
        .replace(
            protected,
            &format!(
                "    location /bare/ {{\n        alias {}/;\n    }}\n\n{protected}",
                files.display()
            ),
        )
        .replace("example.com", "example.test")
        .replace("127.0.0.1:7444", &sessiond.to_string())
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    let d = dir.display();
    Ok(format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path \
         {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    ))
}

fn nginx_rows(cfg: &Config) -> anyhow::Result<NginxFigures> {
    let store = Store::create(StoreKind::Sqlite, &cfg.services)
        .map_err(|e| anyhow::anyhow!("SQLite store: {e:?}"))?;
    let port = free_port()?;
    let server = start_sessiond_with(cfg, store.dir(), &store.args(), "nginx", |_| {
        format!(
            "public_url = \"http://auth.example.test:{port}\"\n[cookie]\ndomain = \
             \"example.test\"\nsecure = false\n"
        )
    })?;
    let dir = store.dir().join("nginx");
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), PAGE)?;
    std::fs::write(
        dir.join("nginx.conf"),
        nginx_config(&dir, port, server.addr)?,
    )?;
    let d = dir.display().to_string();
    let child = Command::new("nginx")
        .args(["-p", &d, "-c", &format!("{d}/nginx.conf"), "-e"])
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nginx")?;
    let _nginx = OwnNginx { child };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let app = format!("app.example.test:{port}");
    let bare = Req::get(&app, "/bare/index.html");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match once_blocking(addr, &bare) {
            Ok(a) if a.status == 200 => break,
            other if Instant::now() >= deadline => {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                anyhow::bail!("nginx did not serve the page: {other:?}; {log}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // Logged in through nginx, as a browser would: the cookie is the one sessiond sets for
    // the cookie domain.
    let a = once_blocking(
        addr,
        &Req::api_login(&format!("auth.example.test:{port}"), "admin", PASSWORD),
    )?;
    anyhow::ensure!(a.status == 200, "login through nginx answered {}", a.status);
    let cookie = ["sessiond", "__Secure-sessiond", "__Host-sessiond"]
        .iter()
        .find_map(|name| a.set_cookie(name).map(|v| format!("{name}={v}")))
        .context("the login set no session cookie")?;
    let protected = Req::get(&app, "/index.html").cookie(&cookie);
    let first = once_blocking(addr, &protected)?;
    anyhow::ensure!(
        first.status == 200 && first.body.as_ref() == PAGE.as_bytes(),
        "the protected page answered {} with a valid cookie",
        first.status
    );
    // Without the cookie, the same page is refused: the location does ask sessiond.
    let refused = once_blocking(addr, &Req::get(&app, "/index.html"))?.status;
    anyhow::ensure!(
        refused == 401,
        "the protected page answered {refused} without a cookie"
    );
    let jobs = [cfg.closed(addr, bare), cfg.closed(addr, protected)];
    let [bare_rounds, protected_rounds]: [Rounds; 2] =
        run_rounds(&jobs, cfg.rounds, |round, m| {
            cfg.say(format!(
                "[nginx] round {round}/{}: static page {:.0}/s ({}), behind auth_request \
                 {:.0}/s ({}): {:.2}",
                cfg.rounds,
                m[0].rps,
                m[0].status_summary(),
                m[1].rps,
                m[1].status_summary(),
                m[1].rps / m[0].rps.max(1e-9)
            ));
        })?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two jobs, two results"))?;
    server.stop();
    Ok(NginxFigures {
        bare: bare_rounds,
        protected: protected_rounds,
    })
}

// ---------------------------------------------------------------------------------------------
// Rows

/// The purge row's cell.
pub fn purge_cell(p: &Outcome<Purge>) -> String {
    p.cell(|p| {
        let rate = p.removed as f64 / p.seconds.max(1e-3);
        let x = p.probe_during.p99_ms / p.probe_idle.p99_ms.max(1e-9);
        let mut c = format!(
            "{:.2} s (**{}/s** {}); verify p99 {} → {} ms (**{x:.1}×** {})",
            p.seconds,
            thousands(rate),
            check(rate >= PURGE_TARGET),
            ms(p.probe_idle.p99_ms),
            ms(p.probe_during.p99_ms),
            check(x <= 2.0)
        );
        if p.left > 0 {
            c.push_str(&format!(" ({} expired left!)", p.left));
        }
        if p.removed != p.expired {
            c.push_str(&format!(" (removed {} of {})", p.removed, p.expired));
        }
        c
    })
}

/// The purge row: SQLite's (from the scale rows) and PostgreSQL's.
pub fn purge_row(sqlite: &Outcome<Purge>, storage: &Storage) -> Row {
    let label = match (sqlite.done(), storage.pg_purge.done()) {
        (Some(p), _) | (None, Some(p)) => format!(
            "**`sessiond session purge`** of {} expired ({} live): time (expired sessions/s); \
             verify p99 idle → during",
            thousands(p.expired as f64),
            thousands(p.live as f64)
        ),
        (None, None) => "**`sessiond session purge`** of the expired sessions".into(),
    };
    Row {
        label,
        cells: [
            purge_cell(sqlite),
            purge_cell(&storage.pg_purge),
            "—".into(),
        ],
        target: "≥ 100,000/s; p99 during ≤ 2× idle".into(),
    }
}

/// The storage rows after the purge row.
pub fn more_rows(s: &Storage) -> Vec<Row> {
    let pg = |label: String, target: &str, cell: String| Row {
        label,
        cells: ["—".into(), cell, "—".into()],
        target: target.to_owned(),
    };
    let (small_n, large_n) = match s.pg_scale.done() {
        Some(sc) => (
            thousands(sc.small.stored as f64),
            thousands(sc.large.stored as f64),
        ),
        None => ("1,000".into(), "10,000,000".into()),
    };
    let point = |p: &ScalePoint| {
        format!(
            "{}/s · {} ms · {}; verifications that read the store in the rounds: {}",
            thousands(p.verify.rps()),
            ms(p.verify.p99()),
            mib(p.rss_kib),
            p.store_reads.map_or("?".into(), |n| n.to_string())
        )
    };
    let mut rows = vec![
        pg(
            format!("verify with {small_n} stored sessions: req/s · p99 · RSS"),
            "",
            s.pg_scale.cell(|sc| point(&sc.small)),
        ),
        pg(
            format!("verify with {large_n} stored sessions: req/s · p99 · RSS"),
            "",
            s.pg_scale.cell(|sc| point(&sc.large)),
        ),
        pg(
            format!("**verify at {large_n} ÷ at {small_n}**; RSS"),
            "≥ 0.9; memory flat",
            s.pg_scale.cell(|sc| {
                let r = sc.large.verify.ratio_to(&sc.small.verify);
                let grew = match (sc.small.rss_kib, sc.large.rss_kib) {
                    (Some(a), Some(b)) if a > 0 => b as f64 / a as f64,
                    _ => 0.0,
                };
                format!("**{r:.2}** {}; RSS ×{grew:.2}", check(r >= 0.9))
            }),
        ),
    ];
    rows.push(Row {
        label: match s.redis_bytes.done() {
            Some(b) => format!(
                "**Redis bytes per session** ({} sessions of {} users, `INFO memory`); \
                 `MEMORY USAGE` per session by key",
                thousands(b.sessions as f64),
                b.users
            ),
            None => "**Redis bytes per session** (`INFO memory`)".into(),
        },
        cells: [
            "—".into(),
            "—".into(),
            s.redis_bytes.cell(|b| {
                let per = b.per_session();
                let keys: Vec<String> = b
                    .per_key
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.0}"))
                    .collect();
                format!(
                    "**{per:.0} B** {} ({})",
                    check(per <= REDIS_BYTES_TARGET),
                    keys.join(", ")
                )
            }),
        ],
        target: format!("≤ {REDIS_BYTES_TARGET:.0} B"),
    });
    rows.push(Row {
        label: "**nginx `auth_request`**: a static page behind it (valid cookie) ÷ the same page \
                without it, same nginx (`examples/nginx.conf`), same rounds"
            .into(),
        cells: [
            s.nginx.cell(|n| {
                let mut c = format!(
                    "**{:.2}** (protected {}/s · p99 {} ms, bare {}/s · p99 {} ms)",
                    n.ratio(),
                    thousands(n.protected.rps()),
                    ms(n.protected.p99()),
                    thousands(n.bare.rps()),
                    ms(n.bare.p99())
                );
                for (what, r) in [("protected", &n.protected), ("bare", &n.bare)] {
                    if !r.clean() {
                        c.push_str(&format!("; {what} answered {}", r.0[0].status_summary()));
                    }
                }
                c
            }),
            "—".into(),
            "—".into(),
        ],
        target: String::new(),
    });
    rows
}

/// Every storage row, the purge row first.
pub fn rows(sqlite_purge: &Outcome<Purge>, s: &Storage) -> Vec<Row> {
    let mut rows = vec![purge_row(sqlite_purge, s)];
    rows.extend(more_rows(s));
    rows
}
