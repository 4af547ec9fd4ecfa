//! The coherence rows (issue 20): what keeping every instance's verification cache coherent
//! costs the store, and how fast a revocation made on one instance reaches the others.
//!
//! * **Idle store requests per instance**: `N` servers on one fresh store, nothing else
//!   running; the store's own request counter over a window, ÷ `N` ÷ seconds. PostgreSQL:
//!   the scans of the bench's database's tables (`pg_stat_user_tables`: every statement
//!   sessiond sends reads or changes a table; the database's transaction count would add
//!   PostgreSQL's own, autovacuum's and one per notification a listener reads). Redis: a `redis-server`
//!   of the bench's own on a spare port (the shared one has other clients), its
//!   `total_commands_processed` less our own `INFO`.
//! * **Cross-instance revocation**: `N` servers on one store; per trial a login on one
//!   instance (A, in turn), the session verified on every instance until each serves it from
//!   its cache (its `/metrics` counts no store read for the last verification), a logout on
//!   A, and every other instance asked as fast as it answers (one keep-alive connection each)
//!   until it says 401. Timed from A's `204` to each instance's `401`.
//! * **100 simulated instances**: a hundred store handles in this process, each running the
//!   loop of the cache's watcher (`crates/sessiond-axum/src/cache.rs`): with a feed
//!   (`SessionStore::subscribe`), await `changed()` or read the generation over the feed every
//!   1.25 s; without one, read the generation every 20 ms. The store's load idle, then with
//!   revocations made through one more handle at a fixed rate. PostgreSQL runs on a cluster
//!   of the bench's own (`initdb` in a temporary directory, `max_connections` 400): a hundred
//!   instances hold more connections than the shared server allows.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{COOKIE, HOST};
use hyper::Request;
use sessiond_core::{
    AuthLevel, ChangeFeed, ExpiryPolicy, NewSession, SessionStore, SessionToken, Timestamp, UserId,
};

use crate::harness::{self, Config, COOKIE as COOKIE_NAME, PASSWORD};
use crate::load::{self, Req, Sender};
use crate::process::{free_port, Process};
use crate::report::{ms, thousands, Outcome, Row};
use crate::stores::{random_tag, Services, Store, StoreKind, Unavailable};

/// The cache watcher's heartbeat over a feed (`HEARTBEAT_EVERY` in sessiond-axum's cache.rs).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(1250);
/// The cache watcher's poll of a store that does not push (`POLL_EVERY`, same file).
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Targets (docs/reference/performance.md, issue 20).
pub const IDLE_TARGET: f64 = 1.0;
pub const REVOKE_P99_TARGET_MS: f64 = 25.0;

/// How much of each row to run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub idle_instances: Vec<usize>,
    pub idle_settle: Duration,
    pub idle_window: Duration,
    pub revoke_instances: Vec<usize>,
    pub trials: usize,
    pub feeds: usize,
    pub sim_settle: Duration,
    pub sim_window: Duration,
    /// Revocations per second during the simulation's second window.
    pub churn_rate: f64,
}

impl Settings {
    pub fn for_config(cfg: &Config) -> Self {
        if cfg.smoke {
            Self {
                idle_instances: vec![1, 2],
                idle_settle: Duration::from_millis(500),
                idle_window: Duration::from_secs(1),
                revoke_instances: vec![2, 3],
                trials: 3,
                feeds: 5,
                sim_settle: Duration::from_millis(500),
                sim_window: Duration::from_secs(1),
                churn_rate: 20.0,
            }
        } else {
            Self {
                idle_instances: vec![1, 8],
                // PostgreSQL: a backend that went idle less than a second after its last
                // report keeps its counts until its 10 s idle timeout, so the servers'
                // start-up work (migrations, the first sweep and gauge) would land in the
                // window; settle past it.
                idle_settle: Duration::from_secs(12),
                idle_window: Duration::from_secs(10),
                revoke_instances: vec![2, 8],
                trials: 200,
                feeds: 100,
                sim_settle: Duration::from_secs(3),
                sim_window: Duration::from_secs(10),
                churn_rate: 100.0,
            }
        }
    }
}

/// How the caches learn of changes on a store, as its `subscribe()` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A change feed: notifications and a heartbeat every 1.25 s.
    Push,
    /// No feed (`subscribe()` is `None`): the generation every 20 ms.
    Poll,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Push => "push",
            Mode::Poll => "**poll** every 20 ms (no push)",
        }
    }
}

/// Store requests of `instances` idle servers over `seconds`.
#[derive(Clone, Debug)]
pub struct Idle {
    pub instances: usize,
    pub requests: u64,
    pub seconds: f64,
}

impl Idle {
    pub fn per_instance(&self) -> f64 {
        self.requests as f64 / self.instances.max(1) as f64 / self.seconds.max(1e-9)
    }
}

/// Revocation latencies with `instances` servers.
#[derive(Clone, Debug, Default)]
pub struct Revocation {
    pub instances: usize,
    pub trials: usize,
    /// ms from A's answer to each other instance's 401, every (trial, instance).
    pub each_ms: Vec<f64>,
    /// ms from A's answer until every other instance said 401, per trial.
    pub all_ms: Vec<f64>,
    /// (trial, instance) pairs where the session was not yet served from the cache when
    /// revoked (after five tries): their 401 may have come from a store read.
    pub uncached: usize,
    /// Trials that could not start (a login or a verification failed), and why.
    pub failed: Vec<String>,
}

/// A hundred watchers in one process.
#[derive(Clone, Debug)]
pub struct Simulation {
    pub feeds: usize,
    pub mode: Mode,
    /// Store requests over the idle window.
    pub idle: Idle,
    /// PostgreSQL backends of the database / Redis clients, at the end of the idle window
    /// (ours for measuring left out).
    pub connections: u64,
    /// Where the store ran.
    pub server: String,
    pub churn: Churn,
}

#[derive(Clone, Debug, Default)]
pub struct Churn {
    /// Revocations made (one create and one delete each) and over how long.
    pub revocations: usize,
    pub seconds: f64,
    /// Store requests over the window, all clients (the revoking handle's too).
    pub requests: u64,
    /// `changed()` answers (or, polling, generation changes seen) over all watchers.
    pub notifications: u64,
    /// Per revocation: ms from sending its delete until the last watcher was told.
    pub fanout_ms: Vec<f64>,
    /// Watcher-revocation pairs never told within the window and a second after it.
    pub missed: u64,
    /// Watchers that failed (their error), if any.
    pub errors: Vec<String>,
}

/// One store's coherence figures.
#[derive(Clone, Debug)]
pub struct StoreCoherence {
    pub mode: Mode,
    pub idle: Vec<Outcome<Idle>>,
    pub revocation: Vec<Outcome<Revocation>>,
    pub simulation: Outcome<Simulation>,
    /// Where the store ran, when it matters for reading the figures.
    pub note: Option<String>,
}

/// The coherence rows of a run.
#[derive(Clone, Debug)]
pub struct Coherence {
    pub settings: Settings,
    pub postgres: Outcome<StoreCoherence>,
    pub redis: Outcome<StoreCoherence>,
}

impl Coherence {
    /// Nothing measured, for `why` (a report made without these rows).
    pub fn skipped(why: &str) -> Self {
        Self {
            settings: Settings::for_config(&Config::smoke(PathBuf::new())),
            postgres: Outcome::Skipped(why.into()),
            redis: Outcome::Skipped(why.into()),
        }
    }
}

/// Runs the coherence rows on PostgreSQL and Redis.
pub fn bench(cfg: &Config) -> Coherence {
    let settings = Settings::for_config(cfg);
    let say = |s: String| {
        if !cfg.quiet {
            eprintln!("sessiond-bench: {s}");
        }
    };
    say("[coherence] PostgreSQL …".into());
    let postgres = bench_store(cfg, &settings, StoreKind::Postgres, &say);
    if let Outcome::Skipped(why) | Outcome::Failed(why) = &postgres {
        say(format!("[coherence] PostgreSQL not measured: {why}"));
    }
    say("[coherence] Redis …".into());
    let redis = bench_store(cfg, &settings, StoreKind::Redis, &say);
    if let Outcome::Skipped(why) | Outcome::Failed(why) = &redis {
        say(format!("[coherence] Redis not measured: {why}"));
    }
    Coherence {
        settings,
        postgres,
        redis,
    }
}

/// `--coherence-only`: these rows alone, printed (for tuning; writes nothing).
pub fn coherence_only(cfg: &Config) -> anyhow::Result<()> {
    let c = bench(cfg);
    println!("\n{}", table(&c.rows()));
    Ok(())
}

/// `rows` as the benchmark's Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut t = String::from("| | SQLite | PostgreSQL | Redis | target |\n|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            r.label,
            r.cells[0].replace('|', "\\|"),
            r.cells[1].replace('|', "\\|"),
            r.cells[2].replace('|', "\\|"),
            r.target
        );
    }
    t
}

fn bench_store(
    cfg: &Config,
    settings: &Settings,
    kind: StoreKind,
    say: &dyn Fn(String),
) -> Outcome<StoreCoherence> {
    // Redis: a server of our own, so that its command counter counts only our servers.
    let own_redis = match kind {
        StoreKind::Redis => match OwnRedis::start(cfg) {
            Ok(r) => Some(r),
            Err(e) => {
                say(format!(
                    "[coherence] no redis-server of our own ({e:#}); using the shared Redis, \
                     whose other clients are counted too"
                ));
                None
            }
        },
        _ => None,
    };
    let services = Services {
        postgres: cfg.services.postgres.clone(),
        redis: own_redis
            .as_ref()
            .map_or_else(|| cfg.services.redis.clone(), |r| r.url()),
    };
    let note = match (kind, &own_redis) {
        (StoreKind::Redis, Some(_)) => None,
        (StoreKind::Redis, None) => Some("shared Redis: other clients' commands counted".into()),
        _ => None,
    };
    // Whether the store pushes: asked of the store crate directly.
    let mode = match probe_mode(kind, &services) {
        Ok(m) => m,
        Err(Unavailable::Absent(why)) if !cfg.require_services => return Outcome::Skipped(why),
        Err(Unavailable::Absent(why)) => {
            return Outcome::Failed(format!("{why} (SESSIOND_REQUIRE_SERVICES=1)"))
        }
        Err(Unavailable::Failed(e)) => return Outcome::Failed(format!("{e:#}")),
    };
    say(format!(
        "[coherence] {kind}: {}",
        match mode {
            Mode::Push => "subscribe() gives a feed: push",
            Mode::Poll => "subscribe() gives none: the caches poll every 20 ms",
        }
    ));
    let mut idle = Vec::new();
    for &n in &settings.idle_instances {
        let r = measure_idle(cfg, settings, kind, &services, n);
        match &r {
            Ok(i) => say(format!(
                "[coherence] {kind}: {n} idle instance(s): {} store requests in {:.1} s, {:.2}/s \
                 per instance",
                i.requests,
                i.seconds,
                i.per_instance()
            )),
            Err(e) => say(format!("[coherence] {kind}: idle, {n} instance(s): {e:#}")),
        }
        idle.push(r.into());
    }
    let mut revocation = Vec::new();
    for &n in &settings.revoke_instances {
        let r = measure_revocation(cfg, settings, kind, &services, n);
        match &r {
            Ok(r) => say(format!(
                "[coherence] {kind}: revocation with {n} instances: every other refuses in p50 \
                 {} / p99 {} ms (each instance p50 {} / p99 {} ms; {} trials, {} not cached)",
                ms(percentile(&r.all_ms, 0.5)),
                ms(percentile(&r.all_ms, 0.99)),
                ms(percentile(&r.each_ms, 0.5)),
                ms(percentile(&r.each_ms, 0.99)),
                r.trials,
                r.uncached
            )),
            Err(e) => say(format!(
                "[coherence] {kind}: revocation, {n} instances: {e:#}"
            )),
        }
        revocation.push(r.into());
    }
    say(format!(
        "[coherence] {kind}: {} simulated instances …",
        settings.feeds
    ));
    let simulation = simulate(cfg, settings, kind, &services);
    match &simulation {
        Ok(s) => say(format!("[coherence] {kind}: {}", simulation_line(s))),
        Err(e) => say(format!("[coherence] {kind}: simulation: {e:#}")),
    }
    drop(own_redis);
    Outcome::Done(StoreCoherence {
        mode,
        idle,
        revocation,
        simulation: simulation.into(),
        note,
    })
}

fn simulation_line(s: &Simulation) -> String {
    format!(
        "{} watchers ({}, {}): idle {:.0} store requests/s ({:.2} per instance), {} connections; \
         {} revocations in {:.1} s: {:.0} store requests/s, {:.0} notifications/s, fan-out p50 {} \
         / p99 {} ms, {} missed{}",
        s.feeds,
        match s.mode {
            Mode::Push => "push",
            Mode::Poll => "polling",
        },
        s.server,
        s.idle.requests as f64 / s.idle.seconds.max(1e-9),
        s.idle.per_instance(),
        s.connections,
        s.churn.revocations,
        s.churn.seconds,
        s.churn.requests as f64 / s.churn.seconds.max(1e-9),
        s.churn.notifications as f64 / s.churn.seconds.max(1e-9),
        ms(percentile(&s.churn.fanout_ms, 0.5)),
        ms(percentile(&s.churn.fanout_ms, 0.99)),
        s.churn.missed,
        if s.churn.errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", s.churn.errors.join("; "))
        }
    )
}

/// The `q` quantile of `v` (nearest rank); 0 when empty.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------
// Store handles and counters

/// A store handle of the store crates, for `url` (the database or session-store URL a
/// server gets).
async fn open_store(kind: StoreKind, url: &str) -> anyhow::Result<Arc<dyn SessionStore>> {
    Ok(match kind {
        StoreKind::Postgres => Arc::new(
            sessiond_store_postgres::PostgresStore::connect(url)
                .await
                .map_err(|e| anyhow::anyhow!("PostgreSQL: {e}"))?,
        ),
        StoreKind::Redis => Arc::new(
            sessiond_store_redis::RedisStore::connect(url)
                .await
                .map_err(|e| anyhow::anyhow!("Redis: {e}"))?,
        ),
        StoreKind::Sqlite => anyhow::bail!("SQLite has no coherence rows"),
    })
}

/// The URL a server of `store` keeps its sessions at.
fn session_url(store: &Store) -> String {
    store
        .session_store
        .clone()
        .unwrap_or_else(|| store.database.clone())
}

/// Push or poll: what a fresh store of `kind` answers to `subscribe()`.
fn probe_mode(kind: StoreKind, services: &Services) -> Result<Mode, Unavailable> {
    let store = Store::create(kind, services)?;
    let url = session_url(&store);
    runtime()?.block_on(async {
        let s = open_store(kind, &url).await?;
        let feed = s
            .subscribe()
            .await
            .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
        Ok(if feed.is_some() {
            Mode::Push
        } else {
            Mode::Poll
        })
    })
}

/// Reads a store's request counter and its connections.
enum Counter {
    /// The statistics of `database`'s tables, over a connection to it.
    Postgres {
        client: tokio_postgres::Client,
        database: String,
    },
    /// `INFO` over one connection of ours.
    Redis {
        conn: redis::aio::MultiplexedConnection,
    },
}

impl Counter {
    /// For the store a server reaches at `url` (PostgreSQL: the database's URL; Redis: the
    /// session store's).
    async fn open(kind: StoreKind, url: &str) -> anyhow::Result<Self> {
        match kind {
            StoreKind::Postgres => {
                let u = url::Url::parse(url).context("PostgreSQL URL")?;
                let database = u.path().trim_start_matches('/').to_owned();
                let (client, conn) = tokio_postgres::connect(u.as_str(), tokio_postgres::NoTls)
                    .await
                    .context("PostgreSQL (counter)")?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Counter::Postgres { client, database })
            }
            StoreKind::Redis => {
                let base = url.split('?').next().unwrap_or(url);
                let client = redis::Client::open(base).context("Redis URL")?;
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .context("Redis (counter)")?;
                Ok(Counter::Redis { conn })
            }
            StoreKind::Sqlite => anyhow::bail!("no counter for SQLite"),
        }
    }

    /// The store's requests so far. PostgreSQL: the scans of the database's tables (every
    /// statement sessiond sends reads or changes a table, so each counts once; not the
    /// database's transactions, which also count PostgreSQL's own: autovacuum's and
    /// analyze's, and one per notification a listening backend reads from its queue; a
    /// backend reports its counts when it goes idle, at most once a second: the window's
    /// edges blur by about a second's worth). Redis: commands processed by the whole server,
    /// our own `INFO` readings included (see [`Counter::requests_between`]).
    async fn requests(&mut self) -> anyhow::Result<u64> {
        match self {
            Counter::Postgres { client, .. } => {
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)::bigint \
                         FROM pg_stat_user_tables",
                        &[],
                    )
                    .await?;
                Ok(row.get::<_, i64>(0).max(0) as u64)
            }
            Counter::Redis { conn } => {
                let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
                info_field(&info, "total_commands_processed")
                    .context("no total_commands_processed in INFO")
            }
        }
    }

    /// `after - before` less our own readings: one `INFO` falls between two readings
    /// (Redis); nothing for PostgreSQL (reading the statistics scans no table of ours).
    fn requests_between(&self, before: u64, after: u64) -> u64 {
        match self {
            Counter::Postgres { .. } => after.saturating_sub(before),
            Counter::Redis { .. } => after.saturating_sub(before).saturating_sub(1),
        }
    }

    /// PostgreSQL backends connected to the database; Redis clients but ours.
    async fn connections(&mut self) -> anyhow::Result<u64> {
        match self {
            Counter::Postgres { client, database } => {
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                         AND pid <> pg_backend_pid()",
                        &[&*database],
                    )
                    .await?;
                Ok(row.get::<_, i64>(0).max(0) as u64)
            }
            Counter::Redis { conn } => {
                let info: String = redis::cmd("INFO").arg("clients").query_async(conn).await?;
                Ok(info_field(&info, "connected_clients")
                    .context("no connected_clients in INFO")?
                    .saturating_sub(1))
            }
        }
    }
}

fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// Row 1: idle store requests per instance

fn start_servers(
    cfg: &Config,
    store: &Store,
    n: usize,
    what: &str,
) -> anyhow::Result<Vec<Process>> {
    (0..n)
        .map(|i| harness::start_sessiond(cfg, store.dir(), &store.args(), &format!("{what}-{i}")))
        .collect()
}

fn measure_idle(
    cfg: &Config,
    settings: &Settings,
    kind: StoreKind,
    services: &Services,
    n: usize,
) -> anyhow::Result<Idle> {
    let store = Store::create(kind, services).map_err(unavailable)?;
    let servers = start_servers(cfg, &store, n, "idle")?;
    let url = session_url(&store);
    let idle = runtime()?.block_on(async {
        let mut counter = Counter::open(kind, &url).await?;
        tokio::time::sleep(settings.idle_settle).await;
        let t = Instant::now();
        let before = counter.requests().await?;
        tokio::time::sleep(settings.idle_window).await;
        let after = counter.requests().await?;
        let seconds = t.elapsed().as_secs_f64();
        anyhow::Ok(Idle {
            instances: n,
            requests: counter.requests_between(before, after),
            seconds,
        })
    })?;
    drop(servers);
    Ok(idle)
}

fn unavailable(e: Unavailable) -> anyhow::Error {
    match e {
        Unavailable::Absent(why) => anyhow::anyhow!(why),
        Unavailable::Failed(e) => e,
    }
}

// ---------------------------------------------------------------------------------------
// Row 2: cross-instance revocation latency

/// One server as the trials see it: its address, its host header, a keep-alive connection.
struct Instance {
    addr: SocketAddr,
    host: String,
    conn: Option<Sender>,
}

impl Instance {
    async fn sender(&mut self) -> anyhow::Result<&mut Sender> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            self.conn = Some(load::connect(self.addr, None).await?);
        }
        let s = self.conn.as_mut().context("a connection")?;
        s.ready().await?;
        Ok(s)
    }

    /// `GET /api/session` with `cookie` on the keep-alive connection: the status.
    async fn verify(&mut self, cookie: &str) -> anyhow::Result<u16> {
        let req = Request::get("/api/session")
            .header(HOST, &self.host)
            .header(COOKIE, cookie)
            .body(Full::new(Bytes::new()))?;
        self.send(req).await
    }

    /// `POST /api/logout` with `cookie`.
    async fn logout(&mut self, cookie: &str) -> anyhow::Result<u16> {
        let req = Request::post("/api/logout")
            .header(HOST, &self.host)
            .header(COOKIE, cookie)
            .body(Full::new(Bytes::new()))?;
        self.send(req).await
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<u16> {
        let fut = async {
            let res = self.sender().await?.send_request(req).await?;
            let status = res.status().as_u16();
            res.into_body().collect().await?;
            anyhow::Ok(status)
        };
        let r = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .context("no answer within 10 s")
            .and_then(|r| r);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// `sessiond_verify_store_reads_total` from its metrics listener.
    async fn store_reads(&self) -> anyhow::Result<u64> {
        let metrics = harness::metrics_addr(self.addr).context("no metrics listener")?;
        let a = load::once(metrics, &Req::get(&metrics.to_string(), "/metrics")).await?;
        std::str::from_utf8(&a.body)?
            .lines()
            .find_map(|l| l.strip_prefix("sessiond_verify_store_reads_total "))
            .and_then(|v| v.trim().parse().ok())
            .context("no sessiond_verify_store_reads_total in /metrics")
    }
}

async fn log_in(addr: SocketAddr) -> anyhow::Result<String> {
    let req = Req::api_login(&addr.to_string(), "admin", PASSWORD);
    // A login is an argon2id hash: on a machine busy with other work (a build) one can take
    // longer than `once`'s 10 s; a second try before giving up.
    let a = match load::once(addr, &req).await {
        Ok(a) => a,
        Err(_) => load::once(addr, &req).await?,
    };
    anyhow::ensure!(
        a.status == 200,
        "login answered {}: {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let token = a
        .set_cookie(COOKIE_NAME)
        .with_context(|| format!("login set no {COOKIE_NAME} cookie"))?;
    Ok(format!("{COOKIE_NAME}={token}"))
}

fn measure_revocation(
    cfg: &Config,
    settings: &Settings,
    kind: StoreKind,
    services: &Services,
    n: usize,
) -> anyhow::Result<Revocation> {
    anyhow::ensure!(n >= 2, "revocation needs two instances");
    let store = Store::create(kind, services).map_err(unavailable)?;
    let servers = start_servers(cfg, &store, n, "revoke")?;
    let r =
        runtime()?.block_on(async {
            let mut inst: Vec<Instance> = servers
                .iter()
                .map(|p| Instance {
                    addr: p.addr,
                    host: p.addr.to_string(),
                    conn: None,
                })
                .collect();
            let mut out = Revocation {
                instances: n,
                ..Revocation::default()
            };
            for trial in 0..settings.trials {
                let a = trial % n;
                // A trial that cannot start (a login or a warm-up answered 503 or not at all, as
                // on a machine busy with other work) is counted and skipped, not fatal.
                let warm = async {
                    let cookie = log_in(inst[a].addr)
                        .await
                        .with_context(|| format!("trial {trial}: login on instance {a}"))?;
                    // Every instance serves the session from its cache: verified until the last
                    // verification read no store (a cache that is off, or an entry dropped by a
                    // generation change, reads it again).
                    let mut uncached = 0;
                    for (i, x) in inst.iter_mut().enumerate() {
                        let mut cached = false;
                        for _ in 0..5 {
                            let before = x.store_reads().await?;
                            let s = x.verify(&cookie).await.with_context(|| {
                                format!("trial {trial}: verify on instance {i}")
                            })?;
                            anyhow::ensure!(s == 200, "instance {i} refused a fresh session: {s}");
                            let s = x.verify(&cookie).await?;
                            anyhow::ensure!(s == 200, "instance {i} refused a fresh session: {s}");
                            let mid = x.store_reads().await?;
                            if mid == before {
                                cached = true;
                                break;
                            }
                        }
                        if !cached && i != a {
                            uncached += 1;
                        }
                    }
                    anyhow::Ok((cookie, uncached))
                }
                .await;
                let cookie = match warm {
                    Ok((cookie, uncached)) => {
                        out.uncached += uncached;
                        cookie
                    }
                    Err(e) => {
                        out.failed.push(format!("{e:#}"));
                        anyhow::ensure!(
                            out.failed.len() <= settings.trials / 10 + 1,
                            "{} trials could not start: {}",
                            out.failed.len(),
                            out.failed.join("; ")
                        );
                        continue;
                    }
                };
                let s = inst[a]
                    .logout(&cookie)
                    .await
                    .with_context(|| format!("trial {trial}: logout on instance {a}"))?;
                anyhow::ensure!(s == 204, "logout answered {s}");
                let revoked = Instant::now();
                let mut polls = tokio::task::JoinSet::new();
                for (i, mut x) in std::mem::take(&mut inst).into_iter().enumerate() {
                    let cookie = cookie.clone();
                    polls.spawn(async move {
                        if i == a {
                            return (i, x, Ok(None));
                        }
                        let r = async {
                            loop {
                                match x.verify(&cookie).await.with_context(|| {
                                    format!("trial {trial}: polling instance {i}")
                                })? {
                                    200 => {}
                                    401 => return anyhow::Ok(Some(Instant::now())),
                                    s => anyhow::bail!("instance {i} answered {s}"),
                                }
                                anyhow::ensure!(
                                    revoked.elapsed() < Duration::from_secs(5),
                                    "instance {i} still accepts the session 5 s after its logout"
                                );
                            }
                        }
                        .await;
                        (i, x, r)
                    });
                }
                let mut back: Vec<(usize, Instance)> = Vec::with_capacity(n);
                let mut worst: f64 = 0.0;
                while let Some(j) = polls.join_next().await {
                    let (i, x, r) = j?;
                    if let Some(at) = r? {
                        let lat = at.duration_since(revoked).as_secs_f64() * 1e3;
                        out.each_ms.push(lat);
                        worst = worst.max(lat);
                    }
                    back.push((i, x));
                }
                back.sort_by_key(|(i, _)| *i);
                inst = back.into_iter().map(|(_, x)| x).collect();
                out.all_ms.push(worst);
                out.trials += 1;
            }
            anyhow::Ok(out)
        });
    let r = r.map_err(|e| {
        // What the servers said, for a failure's cause.
        let tails: Vec<String> = servers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("instance {i}: {}", p.log_tail()))
            .collect();
        e.context(tails.join(" / "))
    });
    drop(servers);
    r
}

// ---------------------------------------------------------------------------------------
// Row 3: a hundred simulated instances

/// What one watcher saw: the moments it was told of a change.
type Seen = Arc<Mutex<Vec<Instant>>>;

/// Errors the watchers met (each followed, as in the cache, by a new subscription or the
/// next poll).
type Errors = Arc<Mutex<Vec<String>>>;

/// The cache watcher's loop on one store handle: follows the feed (notifications and a
/// heartbeat) or polls the generation, recording when it learnt of a change; after an error,
/// subscribes again 100 ms later, or polls on, as the cache does.
async fn watch(store: Arc<dyn SessionStore>, seen: Seen, errors: Errors) {
    loop {
        let r = match store.subscribe().await {
            Ok(Some(feed)) => follow(feed, &seen).await,
            Ok(None) => return poll(&*store, &seen, &errors).await,
            Err(e) => Err(anyhow::anyhow!("subscribe: {e}")),
        };
        if let Err(e) = r {
            lock(&errors).push(format!("{e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn follow(mut feed: Box<dyn ChangeFeed>, seen: &Seen) -> anyhow::Result<()> {
    let mut next_beat = tokio::time::Instant::now();
    loop {
        tokio::select! {
            changed = feed.changed() => {
                changed.map_err(|e| anyhow::anyhow!("changed: {e}"))?;
                lock(seen).push(Instant::now());
            }
            () = tokio::time::sleep_until(next_beat) => {
                next_beat = tokio::time::Instant::now() + HEARTBEAT_EVERY;
                feed.generation().await.map_err(|e| anyhow::anyhow!("heartbeat: {e}"))?;
            }
        }
    }
}

async fn poll(store: &dyn SessionStore, seen: &Seen, errors: &Errors) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<u64> = None;
    loop {
        tick.tick().await;
        match store.generation().await {
            Ok(g) => {
                if last.is_some_and(|l| l != g) {
                    lock(seen).push(Instant::now());
                }
                last = Some(g);
            }
            Err(e) => {
                lock(errors).push(format!("generation: {e}"));
                last = None;
            }
        }
    }
}

/// Where the simulation's store runs: its URL, what to call it, and what keeps it alive.
struct SimStore {
    url: String,
    server: String,
    _own_pg: Option<OwnPostgres>,
    _store: Option<Store>,
}

fn sim_store(
    cfg: &Config,
    settings: &Settings,
    kind: StoreKind,
    services: &Services,
) -> anyhow::Result<SimStore> {
    if kind == StoreKind::Postgres {
        // Each simulated instance holds a connection for its feed and its store's pools.
        let needed = settings.feeds * 3 + 20;
        match OwnPostgres::start(cfg, needed.max(100)) {
            Ok(pg) => {
                let name = format!("sessiond_bench_sim_{}", random_tag());
                runtime()?.block_on(async {
                    let (client, conn) =
                        tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client
                        .batch_execute(&format!("CREATE DATABASE {name}"))
                        .await?;
                    anyhow::Ok(())
                })?;
                return Ok(SimStore {
                    url: pg.url(&name),
                    server: format!("own PostgreSQL, max_connections {}", needed.max(100)),
                    _own_pg: Some(pg),
                    _store: None,
                });
            }
            // The shared server takes a few feeds, not a hundred.
            Err(e) if settings.feeds * 3 > 30 => {
                anyhow::bail!(
                    "no PostgreSQL of our own for {} feeds: {e:#}",
                    settings.feeds
                )
            }
            Err(_) => {}
        }
    }
    let store = Store::create(kind, services).map_err(unavailable)?;
    Ok(SimStore {
        url: session_url(&store),
        server: match kind {
            StoreKind::Redis if services.redis != cfg.services.redis => "own redis-server".into(),
            _ => "shared server".into(),
        },
        _own_pg: None,
        _store: Some(store),
    })
}

fn simulate(
    cfg: &Config,
    settings: &Settings,
    kind: StoreKind,
    services: &Services,
) -> anyhow::Result<Simulation> {
    let sim = sim_store(cfg, settings, kind, services)?;
    let url = sim.url.clone();
    let out = runtime()?.block_on(async {
        let mut counter = Counter::open(kind, &url).await?;
        // One handle per simulated instance, as each instance has its own, and one more that
        // revokes.
        let mut handles = Vec::with_capacity(settings.feeds);
        for _ in 0..settings.feeds {
            handles.push(open_store(kind, &url).await?);
        }
        let revoker = open_store(kind, &url).await?;
        let mode = match revoker
            .subscribe()
            .await
            .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?
        {
            Some(_) => Mode::Push,
            None => Mode::Poll,
        };
        let seen: Vec<Seen> = (0..settings.feeds).map(|_| Seen::default()).collect();
        let errors = Errors::default();
        let mut watchers = tokio::task::JoinSet::new();
        for (h, s) in handles.iter().zip(&seen) {
            watchers.spawn(watch(Arc::clone(h), Arc::clone(s), Arc::clone(&errors)));
        }
        tokio::time::sleep(settings.sim_settle).await;
        // Idle.
        let t = Instant::now();
        let before = counter.requests().await?;
        tokio::time::sleep(settings.sim_window).await;
        let after = counter.requests().await?;
        let idle = Idle {
            instances: settings.feeds,
            requests: counter.requests_between(before, after),
            seconds: t.elapsed().as_secs_f64(),
        };
        let connections = counter.connections().await?;
        // Revocations at a fixed rate, each a session created and deleted through one handle.
        let policy = ExpiryPolicy::default();
        let mut sent: Vec<Instant> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.churn_rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let t = Instant::now();
        let before = counter.requests().await?;
        let notified_before: usize = seen.iter().map(|s| lock(s).len()).sum();
        while t.elapsed() < settings.sim_window {
            tick.tick().await;
            let token = SessionToken::generate();
            let record = policy.start(
                NewSession {
                    user_id: UserId(1),
                    remember: false,
                    ip: None,
                    user_agent: None,
                    level: AuthLevel::OneFactor,
                },
                token.hash(),
                Timestamp::from_system_time(SystemTime::now()),
            );
            revoker
                .create(&record)
                .await
                .map_err(|e| anyhow::anyhow!("create: {e}"))?;
            sent.push(Instant::now());
            let deleted = revoker
                .delete(&record.token_hash)
                .await
                .map_err(|e| anyhow::anyhow!("delete: {e}"))?;
            anyhow::ensure!(deleted, "the session to revoke was not there");
        }
        let after = counter.requests().await?;
        let seconds = t.elapsed().as_secs_f64();
        let notified_after: usize = seen.iter().map(|s| lock(s).len()).sum();
        // A second more for the last notifications.
        tokio::time::sleep(Duration::from_secs(1)).await;
        watchers.abort_all();
        while watchers.join_next().await.is_some() {}
        let mut errors = lock(&errors).clone();
        let error_count = errors.len();
        errors.sort();
        errors.dedup();
        if error_count > errors.len() {
            errors.push(format!("{error_count} errors in all"));
        }
        // Each revocation against each watcher: the first change it saw at or after the
        // delete was sent. Revocations 10 ms apart make this an upper bound only while
        // notifications come in order, which they do on one connection.
        let seen: Vec<Vec<Instant>> = seen.iter().map(|s| lock(s).clone()).collect();
        let mut fanout_ms = Vec::with_capacity(sent.len());
        let mut missed = 0;
        for &s in &sent {
            let mut worst: f64 = 0.0;
            for w in &seen {
                let i = w.partition_point(|&at| at < s);
                match w.get(i) {
                    Some(&at) => worst = worst.max(at.duration_since(s).as_secs_f64() * 1e3),
                    None => missed += 1,
                }
            }
            fanout_ms.push(worst);
        }
        anyhow::Ok(Simulation {
            feeds: settings.feeds,
            mode,
            idle,
            connections,
            server: sim.server.clone(),
            churn: Churn {
                revocations: sent.len(),
                seconds,
                requests: counter.requests_between(before, after),
                notifications: (notified_after - notified_before) as u64,
                fanout_ms,
                missed,
                errors,
            },
        })
    });
    drop(sim);
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Servers of our own

/// A `redis-server` of the bench's own on a free port (no other client moves its counters or
/// its memory), stopped when dropped. The coherence rows and Redis's bytes per session
/// (`crate::storage`) use it.
pub(crate) struct OwnRedis {
    process: Process,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    pub(crate) fn start(cfg: &Config) -> anyhow::Result<Self> {
        let _ = cfg;
        let dir = tempfile::Builder::new()
            .prefix("sessiond-bench-redis-")
            .tempdir()?;
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let process = Process::spawn("redis-server", cmd, addr, &dir.path().join("redis.log"))?;
        let url = format!("redis://127.0.0.1:{port}/0");
        let deadline = Instant::now() + Duration::from_secs(10);
        let rt = runtime()?;
        loop {
            let up = rt.block_on(async {
                let client = redis::Client::open(url.as_str())?;
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut c).await
            });
            if up.is_ok() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s: {}",
                process.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { process, _dir: dir })
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}/0", self.process.addr)
    }
}

/// A PostgreSQL cluster of the bench's own (`initdb` in a temporary directory), run as the
/// `postgres` user when the bench runs as root (the server refuses root); stopped and
/// removed when dropped.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl OwnPostgres {
    fn start(cfg: &Config, max_connections: usize) -> anyhow::Result<Self> {
        let _ = cfg;
        let dir = tempfile::Builder::new()
            .prefix("sessiond-bench-pg-")
            .tempdir()?;
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let pg = Self {
            dir,
            port: free_port()?,
            as_postgres,
        };
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(pg.dir.path()))?;
        }
        let data = pg.data();
        run(pg.cmd("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        run(pg
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.path().join("postgres.log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c max_connections={max_connections}",
                pg.port,
                pg.dir.path().display()
            ))
            .arg("start"))?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        }
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ =
            run(self
                .cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]));
    }
}

/// Runs `cmd` to its end; its output in the error when it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed ({}): {}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The rows

fn check(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

impl Coherence {
    fn stores(&self) -> [&Outcome<StoreCoherence>; 2] {
        [&self.postgres, &self.redis]
    }

    /// The coherence rows of the table: SQLite | PostgreSQL | Redis | target.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let per_store =
            |label: String, sqlite: &str, target: &str, f: &dyn Fn(&StoreCoherence) -> String| {
                let [pg, redis] = self.stores().map(|o| o.cell(f));
                Row {
                    label,
                    cells: [sqlite.to_owned(), pg, redis],
                    target: target.to_owned(),
                }
            };
        let s = &self.settings;
        for (i, &n) in s.idle_instances.iter().enumerate() {
            rows.push(per_store(
                format!(
                    "**idle store requests/s per instance, {n} instance{}** (the store's own \
                     counter over {:.0} s, nothing else running)",
                    if n == 1 { "" } else { "s" },
                    s.idle_window.as_secs_f64()
                ),
                "local reads (`PRAGMA data_version` every 20 ms), not counted",
                &format!("≤ {IDLE_TARGET}/s"),
                &|c| {
                    let cell = c.idle.get(i).map_or_else(
                        || "not run".to_owned(),
                        |o| {
                            o.cell(|x| {
                                let r = x.per_instance();
                                format!(
                                    "**{:.2}/s** {} ({}; {} requests by {n} in {:.1} s)",
                                    r,
                                    check(r <= IDLE_TARGET),
                                    c.mode.label(),
                                    x.requests,
                                    x.seconds
                                )
                            })
                        },
                    );
                    with_note(cell, c)
                },
            ));
        }
        for (i, &n) in s.revoke_instances.iter().enumerate() {
            rows.push(per_store(
                format!(
                    "**revocation across {n} instances**: logout on one, until every other \
                     answers 401: p50 / p99 (each instance alone: p50 / p99)"
                ),
                "—",
                &format!("p99 ≤ {REVOKE_P99_TARGET_MS} ms"),
                &|c| {
                    c.revocation.get(i).map_or_else(
                        || "not run".to_owned(),
                        |o| {
                            o.cell(|r| {
                                let p99 = percentile(&r.all_ms, 0.99);
                                let mut cell = format!(
                                    "**{} / {} ms** {} ({}; each {} / {} ms, max {} ms; {} \
                                     revocations",
                                    ms(percentile(&r.all_ms, 0.5)),
                                    ms(p99),
                                    check(p99 <= REVOKE_P99_TARGET_MS),
                                    c.mode.label(),
                                    ms(percentile(&r.each_ms, 0.5)),
                                    ms(percentile(&r.each_ms, 0.99)),
                                    ms(percentile(&r.all_ms, 1.0)),
                                    r.trials
                                );
                                if !r.failed.is_empty() {
                                    let _ = write!(
                                        cell,
                                        "; {} trials could not start (503 or no answer)",
                                        r.failed.len()
                                    );
                                }
                                if r.uncached > 0 {
                                    let _ = write!(
                                        cell,
                                        "; {} times an instance had not cached the session",
                                        r.uncached
                                    );
                                }
                                cell.push(')');
                                cell
                            })
                        },
                    )
                },
            ));
        }
        rows.push(per_store(
            format!(
                "**{} simulated instances, idle**: store requests/s in all (per instance); \
                 connections",
                s.feeds
            ),
            "—",
            &format!("shown (≈ {} × the idle figure, ≤ {IDLE_TARGET}/s)", s.feeds),
            &|c| {
                c.simulation.cell(|x| {
                    let r = x.idle.per_instance();
                    format!(
                        "{}: {}/s (**{:.2}** per instance) {}; {} {} ({})",
                        x.mode.label(),
                        thousands(x.idle.requests as f64 / x.idle.seconds.max(1e-9)),
                        r,
                        check(r <= IDLE_TARGET),
                        x.connections,
                        if x.server.contains("PostgreSQL") {
                            "backends"
                        } else {
                            "connections"
                        },
                        x.server
                    )
                })
            },
        ));
        rows.push(per_store(
            format!(
                "{} simulated instances, **{} revocations/s** through one more handle: store \
                 requests/s; notifications delivered/s; fan-out p50 / p99 (delete sent → the \
                 last instance told)",
                s.feeds, s.churn_rate
            ),
            "—",
            "shown",
            &|c| {
                c.simulation.cell(|x| {
                    let ch = &x.churn;
                    let secs = ch.seconds.max(1e-9);
                    let p99 = percentile(&ch.fanout_ms, 0.99);
                    let mut cell = format!(
                        "{}: {}/s; {}/s notifications; **{} / {} ms** ({} revocations in \
                         {:.1} s",
                        x.mode.label(),
                        thousands(ch.requests as f64 / secs),
                        thousands(ch.notifications as f64 / secs),
                        ms(percentile(&ch.fanout_ms, 0.5)),
                        ms(p99),
                        ch.revocations,
                        ch.seconds
                    );
                    if ch.missed > 0 {
                        let _ = write!(cell, "; {} instance-revocations never told", ch.missed);
                    }
                    if !ch.errors.is_empty() {
                        let _ = write!(cell, "; watcher errors: {}", ch.errors.join("; "));
                    }
                    cell.push(')');
                    cell
                })
            },
        ));
        rows
    }
}

fn with_note(cell: String, c: &StoreCoherence) -> String {
    match &c.note {
        Some(n) => format!("{cell} ({n})"),
        None => cell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Stats\r\ntotal_connections_received:7\r\ntotal_commands_processed:1234\r\n";
        assert_eq!(info_field(info, "total_commands_processed"), Some(1234));
        assert_eq!(info_field(info, "total_connections_received"), Some(7));
        assert_eq!(info_field(info, "total_commands"), None);
    }
}
