//! The run: which servers start on which stores, what load each gets, in what order.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::header::HeaderValue;

use crate::example;
use crate::hashrate;
use crate::load::{self, once_blocking, Job, Measure, Req, Vary};
use crate::machine::{load_average, Machine};
use crate::peers;
use crate::process::{free_port, Process};
use crate::report::{
    ms, ExampleFigures, LoginRounds, Outcome, PeerFigures, PeerRow, Purge, Report, Rounds, Scale,
    ScalePoint, SecondFactorFigures, StoreFigures,
};
use crate::second_factor::{self, Enrolled, PasskeyRound};
use crate::seed;
use crate::storage::{self, StorageConfig};
use crate::stores::{Services, Store, StoreKind, Unavailable};

/// The first user's password on every server the bench starts.
pub const PASSWORD: &str = "sessiond-bench admin password";
/// The session cookie's name with the default `[cookie]` settings.
pub const COOKIE: &str = "__Host-sessiond";

/// Where the peers come from, or why they are left out.
#[derive(Clone, Debug)]
pub enum PeerSetup {
    Skip(String),
    Use {
        /// `shared/peers`
        dir: PathBuf,
        /// The built tower peer, or why there is none.
        tower: Result<PathBuf, String>,
    },
}

/// The example app's binary, or why its row is left out.
#[derive(Clone, Debug)]
pub enum ExampleSetup {
    Skip(String),
    /// The built `example-app`, or why the build failed.
    Use(Result<PathBuf, String>),
}

/// What to run and how hard.
#[derive(Clone, Debug)]
pub struct Config {
    pub smoke: bool,
    /// The `sessiond` binary under test.
    pub sessiond: PathBuf,
    /// Each closed-loop window (one round of one endpoint) and its warm-up.
    pub round_window: Duration,
    pub round_warmup: Duration,
    /// Interleaved repetitions of the closed-loop rows; figures are medians.
    pub rounds: usize,
    /// The latency probe's idle window, and the warm-up of probes, logins and floods.
    pub window: Duration,
    pub warmup: Duration,
    /// Interleaved repetitions of the idle probe and the queue-sized flood.
    pub probe_rounds: usize,
    /// Interleaved repetitions of the login window and the hash-rate window.
    pub login_rounds: usize,
    pub login_window: Duration,
    pub flood_window: Duration,
    /// The latency probe's rate (requests/s in total) and connections.
    pub probe_rate: f64,
    pub probe_connections: usize,
    pub connections: usize,
    pub login_connections: usize,
    pub flood_connections: usize,
    /// A flood the hash queue holds exactly (nothing refused).
    pub queue_flood_connections: usize,
    /// Load-generator threads.
    pub client_threads: usize,
    /// Each hash-rate window, and the threads it hashes on (one per core).
    pub hash_time: Duration,
    pub hash_threads: usize,
    pub small_sessions: u64,
    pub large_sessions: u64,
    /// Distinct sessions the scale rows verify.
    pub cookie_sample: usize,
    /// Users of the second-factor rows (each a password login per round and factor: an
    /// argon2id verification, so hundreds, not thousands), their rounds and connections.
    pub second_factor_users: usize,
    pub second_factor_rounds: usize,
    pub second_factor_connections: usize,
    /// Deadline of the sessions to purge, counted from when they are marked.
    pub expire_after: Duration,
    pub peers: PeerSetup,
    pub example: ExampleSetup,
    pub services: Services,
    /// A missing PostgreSQL or Redis fails the run instead of being skipped.
    pub require_services: bool,
    pub quiet: bool,
    /// The storage-scale rows' sizes (`crate::storage`).
    pub storage: StorageConfig,
}

impl Config {
    /// The full benchmark: `round` per closed-loop window, `seconds` per login, hash-rate
    /// and probe window.
    ///
    /// Many short closed-loop rounds rather than a few long ones: on a shared VM the
    /// machine's speed swings by a quarter from one second to the next (the same server's
    /// `/healthz` measured 41k and 83k/s in consecutive one-second windows), and five-second
    /// windows swing as much, so what tightens a ratio is the number of rounds its median is
    /// taken over, not their length.
    pub fn real(sessiond: PathBuf, seconds: u64, round: Duration) -> Self {
        let s = Duration::from_secs(seconds.max(1));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            smoke: false,
            sessiond,
            round_window: round.max(Duration::from_millis(100)),
            round_warmup: Duration::from_millis(250),
            rounds: 12,
            window: s,
            warmup: Duration::from_millis(500),
            probe_rounds: 3,
            login_rounds: 3,
            login_window: s,
            flood_window: s * 2,
            probe_rate: 1000.0,
            probe_connections: 4,
            connections: 32,
            login_connections: 16,
            flood_connections: 64,
            // The server's queue: 16 jobs per core.
            queue_flood_connections: 16 * cores,
            client_threads: 2,
            hash_time: s,
            hash_threads: cores,
            small_sessions: 1_000,
            large_sessions: 1_000_000,
            cookie_sample: 1_000,
            second_factor_users: 200,
            second_factor_rounds: 3,
            second_factor_connections: 16,
            expire_after: Duration::from_secs(3),
            peers: PeerSetup::Skip("--no-peers".into()),
            example: ExampleSetup::Skip("--no-example".into()),
            services: Services::from_env(),
            require_services: false,
            quiet: false,
            storage: StorageConfig::real(),
        }
    }

    /// Every path once, briefly: for the test suite. No figure of it means anything.
    pub fn smoke(sessiond: PathBuf) -> Self {
        let ms = Duration::from_millis;
        Self {
            smoke: true,
            round_window: ms(300),
            round_warmup: ms(100),
            rounds: 1,
            window: ms(300),
            warmup: ms(100),
            probe_rounds: 1,
            login_rounds: 1,
            login_window: ms(600),
            flood_window: ms(800),
            probe_rate: 200.0,
            probe_connections: 2,
            connections: 8,
            login_connections: 4,
            flood_connections: 16,
            queue_flood_connections: 8,
            hash_time: ms(1),
            small_sessions: 200,
            large_sessions: 2_000,
            cookie_sample: 100,
            second_factor_users: 4,
            second_factor_rounds: 1,
            second_factor_connections: 2,
            expire_after: ms(1_500),
            peers: PeerSetup::Skip("smoke mode".into()),
            example: ExampleSetup::Skip("no example-app binary given".into()),
            require_services: std::env::var("SESSIOND_REQUIRE_SERVICES").is_ok_and(|v| v == "1"),
            storage: StorageConfig::smoke(),
            ..Self::real(sessiond, 1, ms(300))
        }
    }

    pub(crate) fn say(&self, what: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("sessiond-bench: {}", what.as_ref());
        }
    }

    fn method(&self) -> String {
        format!(
            "load generator: this crate's HTTP/1.1 client (requests serialised once, answers \
             parsed in place with httparse, as wrk does), keep-alive, {} connections on {} \
             threads (logins: {} connections; latency probe: {} req/s at a fixed rate over {} \
             connections, timed from when each request was due; login floods: {} and {} \
             connections); \
             closed-loop rows are the median of {} interleaved rounds of {:.2} s after {:.2} s \
             of warm-up, in reverse order every other round; logins: {} rounds of {:.1} s, each \
             next to {:.1} s of hashing on every core (the hash rate), order alternating",
            self.connections,
            self.client_threads,
            self.login_connections,
            self.probe_rate,
            self.probe_connections,
            self.queue_flood_connections,
            self.flood_connections,
            self.rounds,
            self.round_window.as_secs_f64(),
            self.round_warmup.as_secs_f64(),
            self.login_rounds,
            self.login_window.as_secs_f64(),
            self.hash_time.as_secs_f64(),
        )
    }

    pub(crate) fn closed(&self, addr: std::net::SocketAddr, req: Req) -> Job {
        Job::closed(addr, req, self.connections, self.client_threads)
            .timing(self.round_warmup, self.round_window)
    }

    /// [`Self::closed`] on `server`, reading its CPU time over the window.
    pub(crate) fn watched(&self, server: &Process, req: Req) -> Job {
        self.closed(server.addr, req).watching(server.pid())
    }

    pub(crate) fn probe(
        &self,
        addr: std::net::SocketAddr,
        req: Req,
        warmup: Duration,
        window: Duration,
    ) -> Job {
        Job {
            rate: Some(self.probe_rate),
            ..Job::closed(addr, req, self.probe_connections, 1).timing(warmup, window)
        }
    }
}

/// Runs the whole benchmark described by `cfg`.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    anyhow::ensure!(
        cfg.sessiond.is_file(),
        "no sessiond binary at {}",
        cfg.sessiond.display()
    );
    let mut machine = Machine::describe();
    cfg.say(format!("machine: {}", machine.one_line()));
    let mut stores = Vec::new();
    for kind in StoreKind::ALL {
        cfg.say(format!("[{kind}] …"));
        let outcome = bench_store(cfg, kind);
        if let Outcome::Skipped(why) | Outcome::Failed(why) = &outcome {
            cfg.say(format!("[{kind}] not measured: {why}"));
        }
        stores.push((kind, outcome));
    }
    let (scale, purge) = bench_scale(cfg);
    let storage = storage::bench(cfg);
    let peers = bench_peers(cfg);
    let example = bench_example(cfg);
    if let Outcome::Skipped(why) | Outcome::Failed(why) = &example {
        cfg.say(format!("[example] not measured: {why}"));
    }
    let coherence = crate::coherence::bench(cfg);
    machine.load_after = load_average();
    Ok(Report {
        smoke: cfg.smoke,
        machine,
        method: cfg.method(),
        stores,
        scale,
        purge,
        storage,
        peers,
        example,
        coherence,
        floods: (cfg.queue_flood_connections, cfg.flood_connections),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Starts `sessiond serve` on a free port with `args` (the store flags) and waits for it.
pub(crate) fn start_sessiond(
    cfg: &Config,
    dir: &Path,
    args: &[String],
    tag: &str,
) -> anyhow::Result<Process> {
    start_sessiond_with(cfg, dir, args, tag, |_| String::new())
}

/// [`start_sessiond`] with more configuration: `config(port)` is put first in the file
/// (top-level keys, then any tables).
pub(crate) fn start_sessiond_with(
    cfg: &Config,
    dir: &Path,
    args: &[String],
    tag: &str,
    config: impl FnOnce(u16) -> String,
) -> anyhow::Result<Process> {
    let port = free_port()?;
    let extra = config(port);
    let addr = format!("127.0.0.1:{port}").parse()?;
    // The login rows log one user in thousands of times while the probe's session of that
    // user must stay valid: the per-user session cap (default 100, oldest ended first) would
    // end it, and add a delete to every login. Off, so the rows measure what they did before.
    let config = dir.join(format!("sessiond-{tag}.toml"));
    // Metrics are served on a listener of their own (never the public one): the rows read
    // `sessiond_verify_store_reads_total` there. A top-level key: before `extra`'s tables.
    let metrics_port = free_port()?;
    std::fs::write(
        &config,
        format!(
            "metrics_listen = \"127.0.0.1:{metrics_port}\"\n{extra}[session]\nmax_per_user = 0\n"
        ),
    )?;
    METRICS_PORTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(addr, metrics_port);
    let mut cmd = Command::new(&cfg.sessiond);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("SESSIOND_ADMIN_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn");
    // Only the flags above configure it: no stray config file or variable of the caller's.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SESSIOND_") && k != "SESSIOND_ADMIN_PASSWORD" {
            cmd.env_remove(k);
        }
    }
    let mut p = Process::spawn(
        "sessiond",
        cmd,
        addr,
        &dir.join(format!("sessiond-{tag}.log")),
    )?;
    p.wait_ready(
        &Req::get(&addr.to_string(), "/healthz"),
        |s| s == 200,
        Duration::from_secs(30),
    )?;
    Ok(p)
}

/// Logs in as `admin` and returns the `Cookie` header value.
fn login(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let a = once_blocking(addr, &Req::api_login(&addr.to_string(), "admin", PASSWORD))?;
    anyhow::ensure!(
        a.status == 200,
        "login answered {}: {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let token = a
        .set_cookie(COOKIE)
        .with_context(|| format!("login set no {COOKIE} cookie"))?;
    Ok(format!("{COOKIE}={token}"))
}

fn forward_auth(addr: std::net::SocketAddr, cookie: &str) -> Req {
    let host = addr.to_string();
    Req::get(&host, "/api/authz/forward-auth")
        .cookie(cookie)
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", &host)
        .header("x-forwarded-uri", "/")
}

fn bench_store(cfg: &Config, kind: StoreKind) -> Outcome<StoreFigures> {
    let store = match Store::create(kind, &cfg.services) {
        Ok(s) => s,
        Err(Unavailable::Absent(why)) if !cfg.require_services => return Outcome::Skipped(why),
        Err(Unavailable::Absent(why)) => {
            return Outcome::Failed(format!("{why} (SESSIOND_REQUIRE_SERVICES=1)"))
        }
        Err(Unavailable::Failed(e)) => return Outcome::Failed(format!("{e:#}")),
    };
    measure_store(cfg, &store).into()
}

/// `--probe-only N`: on every store that answers, the latency probe idle and during the
/// queue-sized login flood, `times` times on one server, each pair printed (for tuning what
/// the flood rows measure).
pub fn probe_only(cfg: &Config, times: usize) -> anyhow::Result<()> {
    for kind in StoreKind::ALL {
        let store = match Store::create(kind, &cfg.services) {
            Ok(s) => s,
            Err(e) => {
                println!("[{kind}] skipped: {e:?}");
                continue;
            }
        };
        let server = start_sessiond(cfg, store.dir(), &store.args(), "probe")?;
        let addr = server.addr;
        let session = Req::get(&addr.to_string(), "/api/session").cookie(&login(addr)?);
        for i in 1..=times.max(1) {
            let idle = load::run(&cfg.probe(addr, session.clone(), cfg.warmup, cfg.window))?;
            let reads_before = store_reads(addr);
            let (flood, during) = flood(cfg, addr, &session, cfg.queue_flood_connections)?;
            let reads = store_reads_since(addr, reads_before).map_or("?".into(), |n| n.to_string());
            println!(
                "[{kind}] {i}: verify p99 idle {:.3} ms, during the login flood {:.3} ms \
                 ({:.1}×); p50 {:.3} → {:.3} ms; {}; verifications that read the store \
                 (cache off or miss) during the flood: {reads}",
                idle.p99_ms,
                during.p99_ms,
                during.p99_ms / idle.p99_ms.max(1e-6),
                idle.p50_ms,
                during.p50_ms,
                flood.status_summary()
            );
        }
        server.stop();
    }
    Ok(())
}

/// The order of `n` jobs in round `round` (counted from 1): as given in odd rounds,
/// reversed in even ones (ABC, CBA, ABC …), so a steady drift of the machine's speed weighs
/// on every job alike instead of always on the last one.
fn round_order(round: usize, n: usize) -> impl Iterator<Item = usize> {
    let forward = round % 2 == 1;
    (0..n).map(move |i| if forward { i } else { n - 1 - i })
}

/// `jobs` in `rounds` interleaved rounds, each job once a round in [`round_order`]; `seen`
/// gets every round's measures in the jobs' own order. Returns each job's rounds.
pub(crate) fn run_rounds(
    jobs: &[Job],
    rounds: usize,
    mut seen: impl FnMut(usize, &[Measure]),
) -> anyhow::Result<Vec<Rounds>> {
    let mut out = vec![Rounds::default(); jobs.len()];
    for round in 1..=rounds.max(1) {
        let mut got = Vec::with_capacity(jobs.len());
        for i in round_order(round, jobs.len()) {
            got.push((i, load::run(&jobs[i])?));
        }
        got.sort_by_key(|(i, _)| *i);
        let got: Vec<Measure> = got.into_iter().map(|(_, m)| m).collect();
        seen(round, &got);
        for (r, m) in out.iter_mut().zip(got) {
            r.0.push(m);
        }
    }
    Ok(out)
}

/// `--ratio-only N`: on SQLite only, `times` interleaved rounds of `/healthz`,
/// `/api/session` and forward auth on one server, each round's ratios printed and their
/// medians at the end (for tuning what the verify ÷ `/healthz` row measures; comparing two
/// builds means alternating runs of this, as the machine's speed drifts).
pub fn ratio_only(cfg: &Config, times: usize) -> anyhow::Result<()> {
    let store = Store::create(StoreKind::Sqlite, &cfg.services)
        .map_err(|e| anyhow::anyhow!("SQLite store: {e:?}"))?;
    let Rows {
        server,
        healthz,
        session,
        forward_auth: fa,
    } = start_rows(cfg, &store, "ratio")?;
    let (mut verify, mut forward) = (Vec::new(), Vec::new());
    let jobs = [healthz, session, fa].map(|r| cfg.watched(&server, r));
    run_rounds(&jobs, times, |i, m| {
        let [h, s, f] = [&m[0], &m[1], &m[2]];
        let (v, fw) = (s.rps / h.rps.max(1e-9), f.rps / h.rps.max(1e-9));
        println!(
            "{i}: /healthz {:.0}/s, /api/session {:.0}/s ({v:.3}), forward auth {:.0}/s ({fw:.3}); \
             CPU per answer, server user + kernel, client: {}",
            h.rps,
            s.rps,
            f.rps,
            [h, s, f]
                .map(|m| m.cpu.map_or("n/a".into(), |c| format!(
                    "{:.2} + {:.2}, {:.2} µs",
                    c.server_user_us, c.server_kernel_us, c.client_us
                )))
                .join("; ")
        );
        verify.push(v);
        forward.push(fw);
    })?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median of {} rounds: verify ÷ /healthz {:.3}, forward auth ÷ /healthz {:.3}",
        verify.len(),
        median(&mut verify),
        median(&mut forward)
    );
    server.stop();
    Ok(())
}

/// The example app's row: `GET /` and `GET /private` with a valid cookie, in interleaved
/// rounds on one running app.
fn bench_example(cfg: &Config) -> Outcome<ExampleFigures> {
    let bin = match &cfg.example {
        ExampleSetup::Skip(why) => return Outcome::Skipped(why.clone()),
        ExampleSetup::Use(Err(why)) => return Outcome::Failed(why.clone()),
        ExampleSetup::Use(Ok(bin)) => bin,
    };
    cfg.say("[example] example-app …");
    (|| {
        let app = example::start(bin)?;
        let jobs = [
            cfg.watched(&app.process, app.home()),
            cfg.watched(&app.process, app.private()),
        ];
        let [home, private]: [Rounds; 2] = run_rounds(&jobs, cfg.rounds, |round, m| {
            cfg.say(format!(
                "[example] round {round}/{}: / {:.0}/s, /private {:.0}/s ({:.2}; {})",
                cfg.rounds,
                m[0].rps,
                m[1].rps,
                m[1].rps / m[0].rps.max(1e-9),
                m[1].status_summary()
            ));
        })?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two jobs, two results"))?;
        app.process.stop();
        Ok(ExampleFigures { home, private })
    })()
    .into()
}

/// `--example-only N`: the example app's `GET /` and `GET /private` (valid cookie), and, when
/// the tower peer is built, its `/healthz` and `GET /me` (cookie), `times` interleaved rounds
/// of the four, each round's two ratios printed and their medians at the end (for tuning the
/// example row; prints, writes nothing).
pub fn example_only(cfg: &Config, times: usize) -> anyhow::Result<()> {
    let bin = match &cfg.example {
        ExampleSetup::Use(Ok(bin)) => bin,
        ExampleSetup::Use(Err(why)) => anyhow::bail!("no example-app: {why}"),
        ExampleSetup::Skip(why) => anyhow::bail!("no example-app: {why}"),
    };
    let app = example::start(bin)?;
    let mut jobs = vec![
        cfg.watched(&app.process, app.home()),
        cfg.watched(&app.process, app.private()),
    ];
    let peer = match &cfg.peers {
        PeerSetup::Use {
            tower: Ok(tower), ..
        } => {
            let peer = peers::start_tower(tower, "sqlite", &cfg.services.redis)?;
            let host = peer.process.addr.to_string();
            jobs.push(cfg.closed(peer.process.addr, Req::get(&host, "/healthz")));
            jobs.push(cfg.closed(
                peer.process.addr,
                Req::get(&host, "/me").cookie(&peer.cookie),
            ));
            Some(peer)
        }
        PeerSetup::Use {
            tower: Err(why), ..
        }
        | PeerSetup::Skip(why) => {
            println!("the tower peer is left out: {why}");
            None
        }
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    run_rounds(&jobs, times, |i, m| {
        let r = m[1].rps / m[0].rps.max(1e-9);
        let mut line = format!(
            "{i}: example / {:.0}/s, /private {:.0}/s ({r:.3}; {})",
            m[0].rps,
            m[1].rps,
            m[1].status_summary()
        );
        ours.push(r);
        if let [_, _, healthz, me] = m {
            let p = me.rps / healthz.rps.max(1e-9);
            line.push_str(&format!(
                "; tower peer /healthz {:.0}/s, /me {:.0}/s ({p:.3})",
                healthz.rps, me.rps
            ));
            theirs.push(p);
        }
        println!("{line}");
    })?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    println!(
        "median of {} rounds: example /private ÷ / {:.3} (target ≥ {}), tower peer /me ÷ /healthz {}",
        ours.len(),
        median(&mut ours).unwrap_or(0.0),
        crate::report::EXAMPLE_TARGET,
        median(&mut theirs).map_or("not measured".into(), |r| format!("{r:.3}"))
    );
    app.process.stop();
    drop(peer);
    Ok(())
}

/// `--logins-only N`: on every store that answers, `times` rounds of correct `POST /api/login`
/// as fast as the server takes them, each next to a window of hashing on every core, each
/// round printed and the medians at the end (for comparing the login path of two builds).
pub fn logins_only(cfg: &Config, times: usize) -> anyhow::Result<()> {
    for kind in StoreKind::ALL {
        let store = match Store::create(kind, &cfg.services) {
            Ok(s) => s,
            Err(e) => {
                println!("[{kind}] skipped: {e:?}");
                continue;
            }
        };
        let server = start_sessiond(cfg, store.dir(), &store.args(), "logins")?;
        let addr = server.addr;
        let host = addr.to_string();
        // Each connection from an address of its own, as in the full run's login rows.
        let job = Job {
            spread_sources: true,
            ..Job::closed(
                addr,
                Req::api_login(&host, "admin", PASSWORD).expect(&[200]),
                cfg.login_connections,
                cfg.client_threads,
            )
            .timing(cfg.warmup, cfg.login_window)
        };
        let (mut rates, mut ratios) = (Vec::new(), Vec::new());
        for round in 1..=times.max(1) {
            let (mut logins, mut hash) = (None, None);
            for step in round_order(round, 2) {
                if step == 0 {
                    hash = Some(hashrate::measure(cfg.hash_threads, cfg.hash_time)?);
                } else {
                    logins = Some(load::run(&job)?);
                }
            }
            let (l, h) = logins.zip(hash).context("a login round ran both steps")?;
            // Logins are the answered ones (200, and 401 for a wrong password): a 503 (the
            // hashing queue full) is a refusal, not a login, and a busy machine makes many.
            let answered = l.rate_of(&[200, 401]);
            let ratio = answered / h.per_second.max(1e-9);
            println!(
                "[{kind}] {round}: {answered:.1} logins/s ({}), {:.1} hashes/s, ratio {ratio:.3}",
                l.status_summary(),
                h.per_second
            );
            rates.push(answered);
            ratios.push(ratio);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "[{kind}] median of {} rounds: {:.1} logins/s, logins/s ÷ hashes/s {:.3}",
            rates.len(),
            median(&mut rates),
            median(&mut ratios)
        );
        server.stop();
    }
    Ok(())
}

/// The metrics listener of each sessiond started, by its public address.
static METRICS_PORTS: std::sync::Mutex<std::collections::BTreeMap<std::net::SocketAddr, u16>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The metrics listener of the sessiond started at `addr`.
pub(crate) fn metrics_addr(addr: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    let port = *METRICS_PORTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&addr)?;
    Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// `sessiond_verify_store_reads_total` from the server's metrics listener.
pub(crate) fn store_reads(addr: std::net::SocketAddr) -> Option<u64> {
    let port = *METRICS_PORTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&addr)?;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let a = once_blocking(metrics, &Req::get(&metrics.to_string(), "/metrics")).ok()?;
    let text = std::str::from_utf8(&a.body).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("sessiond_verify_store_reads_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// The verifications that read the store since `before` (an earlier [`store_reads`]).
pub(crate) fn store_reads_since(addr: std::net::SocketAddr, before: Option<u64>) -> Option<u64> {
    before
        .zip(store_reads(addr))
        .map(|(a, b)| b.saturating_sub(a))
}

/// A server on `store` and the closed-loop rows' requests: `/healthz`, and `/api/session`
/// and forward auth with the cookie of a fresh login.
struct Rows {
    server: Process,
    healthz: Req,
    session: Req,
    forward_auth: Req,
}

fn start_rows(cfg: &Config, store: &Store, tag: &str) -> anyhow::Result<Rows> {
    let server = start_sessiond(cfg, store.dir(), &store.args(), tag)?;
    let addr = server.addr;
    let host = addr.to_string();
    let cookie = login(addr)?;
    Ok(Rows {
        healthz: Req::get(&host, "/healthz"),
        session: Req::get(&host, "/api/session").cookie(&cookie),
        forward_auth: forward_auth(addr, &cookie),
        server,
    })
}

fn measure_store(cfg: &Config, store: &Store) -> anyhow::Result<StoreFigures> {
    let kind = store.kind;
    let Rows {
        server,
        healthz,
        session,
        forward_auth: fa,
    } = start_rows(cfg, store, kind.label())?;
    let addr = server.addr;
    let host = addr.to_string();
    let fa_status = once_blocking(addr, &fa).map(|a| a.status);
    let fa = match fa_status {
        Ok(200) => Ok(fa),
        Ok(s) => Err(format!("answers {s}")),
        Err(e) => Err(format!("{e:#}")),
    };

    let mut jobs = vec![
        cfg.watched(&server, healthz.clone()),
        cfg.watched(&server, session.clone()),
    ];
    if let Ok(fa) = &fa {
        jobs.push(cfg.watched(&server, fa.clone()));
    }
    let mut rounds = run_rounds(&jobs, cfg.rounds, |round, m| {
        let mut line = format!(
            "[{kind}] round {round}/{}: /healthz {:.0}/s, /api/session {:.0}/s",
            cfg.rounds, m[0].rps, m[1].rps
        );
        if let Some(f) = m.get(2) {
            line.push_str(&format!(", forward-auth {:.0}/s", f.rps));
        }
        cfg.say(line);
    })?
    .into_iter();
    let (healthz_rounds, session_rounds) = (
        rounds.next().unwrap_or_default(),
        rounds.next().unwrap_or_default(),
    );
    let fa_rounds = rounds.next().unwrap_or_default();
    // Logins next to the machine's hash rate, in alternating rounds: the hash rate measured
    // once, minutes away from the logins, moved with the machine's speed (one run here gave
    // 0.80 on SQLite and 1.05 on Redis against the same hash rate).
    // Each connection from an address of its own: the throttle reserves an attempt before
    // its password is checked, so one address has at most 5 logins of one
    // account in flight; 16 from one address would measure the throttle, not the logins.
    let login_job = Job {
        spread_sources: true,
        ..Job::closed(
            addr,
            Req::api_login(&host, "admin", PASSWORD).expect(&[200]),
            cfg.login_connections,
            cfg.client_threads,
        )
        .timing(cfg.warmup, cfg.login_window)
    };
    let mut login = LoginRounds::default();
    for round in 1..=cfg.login_rounds.max(1) {
        let (mut logins, mut hash) = (None, None);
        for step in round_order(round, 2) {
            if step == 0 {
                hash = Some(hashrate::measure(cfg.hash_threads, cfg.hash_time)?);
            } else {
                logins = Some(load::run(&login_job)?);
            }
        }
        let (logins, hash) = logins.zip(hash).context("a login round ran both steps")?;
        cfg.say(format!(
            "[{kind}] login round {round}/{}: {:.1} logins/s ({}), {:.1} hashes/s on {} threads",
            cfg.login_rounds,
            logins.rps,
            logins.status_summary(),
            hash.per_second,
            hash.threads
        ));
        login.logins.0.push(logins);
        login.hash.push(hash);
    }

    // The latency probe, alone, then during two floods of logins (half of them wrong, for
    // unknown users, from many loopback addresses like a distributed guessing attack): one
    // the size of the hash queue (it stays full, nothing is refused), and a larger one whose
    // surplus is refused at once with 503 and comes straight back.
    //
    // A p99 of ~0.1 ms is within reach of the machine's own jitter (another VM on the host,
    // a timer), so the idle probe and the queue-sized flood run in interleaved rounds like the
    // closed-loop rows; the table shows the round with the median ratio, and every round's
    // ratio next to it.
    //
    // Each round also counts the verifications that had to read the store during the flood
    // (`sessiond_verify_store_reads_total`): the cache serves none while its last generation
    // poll is too old, so a high p99 with reads > 0 is a late poll, not slow verification.
    let mut probe_rounds = Vec::with_capacity(cfg.probe_rounds);
    for round in 1..=cfg.probe_rounds.max(1) {
        let idle = load::run(&cfg.probe(addr, session.clone(), cfg.warmup, cfg.window))?;
        let before = store_reads(addr);
        let (queue_flood, during) = flood(cfg, addr, &session, cfg.queue_flood_connections)?;
        let reads = store_reads_since(addr, before);
        cfg.say(format!(
            "[{kind}] probe round {round}/{}: verify p99 idle {:.3} ms, during a queue-sized \
             login flood {:.3} ms; verifications that read the store: {}",
            cfg.probe_rounds,
            idle.p99_ms,
            during.p99_ms,
            reads.map_or("?".into(), |r| r.to_string())
        ));
        probe_rounds.push((idle, during, queue_flood, reads));
    }
    let ratio = |r: &(Measure, Measure, Measure, Option<u64>)| r.1.p99_ms / r.0.p99_ms.max(1e-9);
    probe_rounds.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let queue_flood_ratios: Vec<f64> = probe_rounds.iter().map(ratio).collect();
    let queue_flood_store_reads: Vec<Option<u64>> = probe_rounds.iter().map(|r| r.3).collect();
    let (probe_idle, probe_queue_flood, queue_flood, _) =
        probe_rounds.swap_remove(probe_rounds.len() / 2);
    let (flood, probe_flood) = flood(cfg, addr, &session, cfg.flood_connections)?;
    cfg.say(format!(
        "[{kind}] verify p99 idle {:.2} ms, in a queue-sized login flood {:.2} ms ({}), \
         in a {}-connection flood {:.2} ms ({})",
        probe_idle.p99_ms,
        probe_queue_flood.p99_ms,
        queue_flood.status_summary(),
        cfg.flood_connections,
        probe_flood.p99_ms,
        flood.status_summary()
    ));
    let rss_kib = server.rss_kib();
    server.stop();
    let second_factor = if cfg.second_factor_rounds == 0 {
        Err(anyhow::anyhow!("left out in this mode"))
    } else {
        cfg.say(format!("[{kind}] second factors …"));
        bench_second_factor(cfg, store, cfg.second_factor_rounds, |round, r| {
            cfg.say(format!("[{kind}] {}", second_factor_line(round, r)));
        })
    };
    if let Err(e) = &second_factor {
        cfg.say(format!("[{kind}] second factors not measured: {e:#}"));
    }
    Ok(StoreFigures {
        healthz: healthz_rounds,
        session: session_rounds,
        forward_auth: fa.map(|_| fa_rounds),
        login,
        probe_idle,
        probe_queue_flood,
        queue_flood,
        queue_flood_ratios,
        queue_flood_store_reads,
        probe_flood,
        flood,
        rss_kib,
        second_factor: second_factor.into(),
    })
}

/// One round of the second-factor rows: verify (closed loop), TOTP, passkeys.
struct SecondFactorRound {
    verify: Measure,
    totp: Measure,
    passkey: PasskeyRound,
}

fn second_factor_line(round: usize, r: &SecondFactorRound) -> String {
    let cpu = |m: &Measure| {
        m.cpu.map_or("?".into(), |c| {
            format!("{:.0} µs", c.server_user_us + c.server_kernel_us)
        })
    };
    let p = &r.passkey;
    format!(
        "second factors, round {round}: TOTP {:.0} checks/s, p50 {} / p99 {} ms, server CPU {} \
         per check ({}); passkey {:.0} ceremonies/s, finish p50 {} / p99 {} ms, start p50 {} / \
         p99 {} ms, client signature p50 {} ms, server CPU {} per ceremony ({}); verify {:.0}/s \
         ({}): {:.1} verifications per TOTP check, {:.1} per passkey ceremony",
        r.totp.rps,
        ms(r.totp.p50_ms),
        ms(r.totp.p99_ms),
        cpu(&r.totp),
        r.totp.status_summary(),
        p.finish.rps,
        ms(p.finish.p50_ms),
        ms(p.finish.p99_ms),
        ms(p.start.p50_ms),
        ms(p.start.p99_ms),
        ms(p.client.p50_ms),
        cpu(&p.finish),
        p.finish.status_summary(),
        r.verify.rps,
        r.verify.status_summary(),
        r.verify.rps / r.totp.rps.max(1e-9),
        r.verify.rps / p.finish.rps.max(1e-9),
    )
}

/// The second-factor rows on `store`, `rounds` rounds; `seen` gets each round.
///
/// A server of its own on the store: its public URL has a host name (`localhost`: passkeys
/// need a relying party, which cannot be an IP address) and it has an encryption key (a
/// file written here). `second_factor_users` users are created with the CLI and enrolled
/// through the JSON API (TOTP set up and confirmed, a passkey registered by a software
/// authenticator). Each round logs every user in twice (one-factor sessions, not measured),
/// then, in alternating order, verify as a closed loop, every session's TOTP check, and
/// every other session's passkey ceremony.
fn bench_second_factor(
    cfg: &Config,
    store: &Store,
    rounds: usize,
    mut seen: impl FnMut(usize, &SecondFactorRound),
) -> anyhow::Result<SecondFactorFigures> {
    let names = second_factor::user_names(cfg.second_factor_users.max(1));
    let t = Instant::now();
    second_factor::add_users(&cfg.sessiond, &store.database, &names, cfg.hash_threads)?;
    let key_file = store.dir().join("second-factor.key");
    write_key_file(&key_file)?;
    let server = start_sessiond_with(cfg, store.dir(), &store.args(), "second-factor", |port| {
        format!(
            "public_url = \"http://localhost:{port}\"\n[two_factor]\nencryption_key_file = {:?}\n",
            key_file.display().to_string()
        )
    })?;
    let mut enrolled = Enrolled::enrol(
        server.addr,
        names,
        cfg.second_factor_connections,
        cfg.client_threads,
    )?;
    cfg.say(format!(
        "[{}] {} users created and enrolled in {:.1} s",
        store.kind,
        enrolled.users(),
        t.elapsed().as_secs_f64()
    ));
    let verify = cfg.watched(
        &server,
        Req::get(&server.addr.to_string(), "/api/session").cookie(&enrolled.cookie),
    );
    let mut f = SecondFactorFigures {
        users: enrolled.users(),
        connections: cfg.second_factor_connections,
        ..SecondFactorFigures::default()
    };
    for round in 1..=rounds.max(1) {
        // Sessions for this round, one per user and factor (the one-shot resources).
        let mut for_totp = Some(enrolled.log_in()?);
        let mut for_passkey = Some(enrolled.log_in()?);
        let (mut v, mut totp, mut passkey) = (None, None, None);
        for step in round_order(round, 3) {
            match step {
                0 => v = Some(load::run(&verify)?),
                1 => {
                    let sessions = for_totp.take().unwrap_or_default();
                    totp = Some(enrolled.totp(sessions, server.pid())?);
                }
                _ => {
                    let sessions = for_passkey.take().unwrap_or_default();
                    passkey = Some(enrolled.passkey(sessions, server.pid())?);
                }
            }
        }
        let r = SecondFactorRound {
            verify: v.context("verify ran")?,
            totp: totp.context("TOTP ran")?,
            passkey: passkey.context("passkeys ran")?,
        };
        seen(round, &r);
        f.verify.0.push(r.verify);
        f.totp.0.push(r.totp);
        f.passkey.0.push(r.passkey.finish);
        f.passkey_start.0.push(r.passkey.start);
        f.passkey_client.0.push(r.passkey.client);
        f.passkey_whole.0.push(r.passkey.whole);
    }
    server.stop();
    Ok(f)
}

/// A fresh 256-bit key for the second factors' encryption, as hex, in a file only we read.
fn write_key_file(path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{hex}")?;
    Ok(())
}

/// `--second-factor-only N`: on every store that answers, the second-factor rows alone, `N`
/// rounds, each printed, and their medians (for tuning; prints, writes nothing).
pub fn second_factor_only(cfg: &Config, times: usize) -> anyhow::Result<()> {
    for kind in StoreKind::ALL {
        let store = match Store::create(kind, &cfg.services) {
            Ok(s) => s,
            Err(e) => {
                println!("[{kind}] skipped: {e:?}");
                continue;
            }
        };
        let f = bench_second_factor(cfg, &store, times, |round, r| {
            println!("[{kind}] {}", second_factor_line(round, r));
        })?;
        let cpu = |r: &Rounds| {
            r.cpu().map_or("?".into(), |c| {
                format!(
                    "{:.0} µs (user {:.0} + kernel {:.0})",
                    c.server_user_us + c.server_kernel_us,
                    c.server_user_us,
                    c.server_kernel_us
                )
            })
        };
        println!(
            "[{kind}] median of {} rounds, {} users over {} connections: TOTP {:.0} checks/s, \
             p50 {} / p99 {} ms, server CPU {} per check; passkey {:.0} ceremonies/s, finish \
             p50 {} / p99 {} ms, start p50 {} / p99 {} ms, whole p50 {} / p99 {} ms, server CPU \
             {} per ceremony; verify {:.0}/s: {:.1} verifications per TOTP check, {:.1} per \
             passkey ceremony",
            f.totp.0.len(),
            f.users,
            f.connections,
            f.totp.rps(),
            ms(f.totp.p50()),
            ms(f.totp.p99()),
            cpu(&f.totp),
            f.passkey.rps(),
            ms(f.passkey.p50()),
            ms(f.passkey.p99()),
            ms(f.passkey_start.p50()),
            ms(f.passkey_start.p99()),
            ms(f.passkey_whole.p50()),
            ms(f.passkey_whole.p99()),
            cpu(&f.passkey),
            f.verify.rps(),
            f.verify_per_totp(),
            f.verify_per_passkey()
        );
    }
    Ok(())
}

/// A login flood of `connections` and, during it, the latency probe on `session`; returns
/// `(flood, probe)`.
fn flood(
    cfg: &Config,
    addr: std::net::SocketAddr,
    session: &Req,
    connections: usize,
) -> anyhow::Result<(Measure, Measure)> {
    let host = addr.to_string();
    let warmup = cfg.warmup * 2;
    let flood = Job {
        reqs: vec![
            Req::api_login(&host, "nobody", "wrong")
                .vary(Vary::UnknownUser)
                .new_client_after(&[401, 429])
                .expect(&[401, 429, 503]),
            Req::api_login(&host, "admin", PASSWORD).expect(&[200, 429, 503]),
        ],
        spread_sources: true,
        ..Job::closed(addr, Req::get(&host, "/"), connections, 1).timing(warmup, cfg.flood_window)
    };
    // The probe starts once the flood is under way and ends with it.
    let window = cfg.flood_window.saturating_sub(cfg.warmup).max(cfg.warmup);
    let probe = cfg.probe(addr, session.clone(), warmup + cfg.warmup, window);
    load::run_pair(&flood, &probe)
}

pub(crate) const SMALL_MARK: &str = "sessiond-bench small set";
pub(crate) const LARGE_MARK: &str = "sessiond-bench large set";

pub(crate) fn cookies(tokens: &[String]) -> Vary {
    let list: Vec<HeaderValue> = tokens
        .iter()
        .filter_map(|t| HeaderValue::from_str(&format!("{COOKIE}={t}")).ok())
        .collect();
    Vary::Cookie(list.into())
}

/// Verify throughput with few and with many stored sessions (SQLite), then the purge.
///
/// Two files, one with the small set and a copy of it with the large set added, each served
/// by its own server; the rounds alternate between the two, so the ratio compares the same
/// moments of the machine (two phases one after the other differed by half when a build
/// started on the other core).
fn bench_scale(cfg: &Config) -> (Outcome<Scale>, Outcome<Purge>) {
    let dir = match tempfile::Builder::new()
        .prefix("sessiond-bench-scale-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            let why = format!("temporary directory: {e}");
            return (Outcome::Failed(why.clone()), Outcome::Failed(why));
        }
    };
    let (small_dir, large_dir) = (dir.path().join("small"), dir.path().join("large"));
    let (small_db, large_db) = (small_dir.join("sessiond.db"), large_dir.join("sessiond.db"));
    let url = |db: &Path| format!("sqlite://{}", db.display());
    let mut small_cookies = Vec::new();
    let scale: anyhow::Result<Scale> = (|| {
        std::fs::create_dir_all(&small_dir)?;
        std::fs::create_dir_all(&large_dir)?;
        seed::add_user(&cfg.sessiond, &url(&small_db), "admin", PASSWORD)?;
        let uid = seed::user_id(&small_db, "admin")?;
        cfg.say(format!("[scale] storing {} sessions …", cfg.small_sessions));
        small_cookies = seed::insert_sessions(
            &small_db,
            uid,
            cfg.small_sessions,
            SMALL_MARK,
            cfg.cookie_sample,
        )?;
        // The seeding checkpointed the WAL into the file: the file alone is the database.
        std::fs::copy(&small_db, &large_db)?;
        cfg.say(format!(
            "[scale] storing {} more sessions in a copy …",
            cfg.large_sessions
        ));
        let t = Instant::now();
        let large_cookies = seed::insert_sessions(
            &large_db,
            uid,
            cfg.large_sessions,
            LARGE_MARK,
            cfg.cookie_sample,
        )?;
        cfg.say(format!(
            "[scale] stored in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        let small_server = start_sessiond(
            cfg,
            &small_dir,
            &["--database".into(), url(&small_db)],
            "scale",
        )?;
        let large_server = start_sessiond(
            cfg,
            &large_dir,
            &["--database".into(), url(&large_db)],
            "scale",
        )?;
        let small_req =
            Req::get(&small_server.addr.to_string(), "/api/session").vary(cookies(&small_cookies));
        let large_req =
            Req::get(&large_server.addr.to_string(), "/api/session").vary(cookies(&large_cookies));
        touch_all(
            cfg,
            small_server.addr,
            &small_req,
            &small_db,
            SMALL_MARK,
            small_cookies.len(),
        )?;
        touch_all(
            cfg,
            large_server.addr,
            &large_req,
            &large_db,
            LARGE_MARK,
            large_cookies.len(),
        )?;
        let jobs = [
            cfg.closed(small_server.addr, small_req.clone()),
            cfg.closed(large_server.addr, large_req.clone()),
        ];
        // Every verification in the rounds should come from the cache (the sessions were
        // verified once above): a read of the store would make the row measure SQLite's
        // B-tree depth instead, so the count goes next to the figures.
        let reads_before = [
            store_reads(small_server.addr),
            store_reads(large_server.addr),
        ];
        let [small_rounds, large_rounds]: [Rounds; 2] =
            run_rounds(&jobs, cfg.rounds, |round, m| {
                cfg.say(format!(
                "[scale] round {round}/{}: verify {:.0}/s with {} stored ({}), {:.0}/s with {} \
                 stored ({})",
                cfg.rounds,
                m[0].rps,
                cfg.small_sessions,
                m[0].status_summary(),
                m[1].rps,
                cfg.small_sessions + cfg.large_sessions,
                m[1].status_summary()
            ));
            })?
            .try_into()
            .map_err(|_| anyhow::anyhow!("two jobs, two results"))?;
        let small = ScalePoint {
            stored: cfg.small_sessions,
            verify: small_rounds,
            rss_kib: small_server.rss_kib(),
            store_reads: store_reads_since(small_server.addr, reads_before[0]),
        };
        let large = ScalePoint {
            stored: cfg.small_sessions + cfg.large_sessions,
            verify: large_rounds,
            rss_kib: large_server.rss_kib(),
            store_reads: store_reads_since(large_server.addr, reads_before[1]),
        };
        cfg.say(format!(
            "[scale] verifications that read the store during the rounds: {:?} with {} stored, \
             {:?} with {} stored",
            small.store_reads, small.stored, large.store_reads, large.stored
        ));
        small_server.stop();
        large_server.stop();
        Ok(Scale { small, large })
    })();
    if let Err(e) = &scale {
        let why = format!("{e:#}");
        return (
            Outcome::Failed(why),
            Outcome::Skipped("no scale figures".into()),
        );
    }
    let purge = bench_purge(cfg, &large_dir, &large_db, &url(&large_db), &small_cookies);
    (scale.into(), purge.into())
}

/// Verifies every session of `tokens` until the activity writes that were due have landed,
/// so that the measurement after it sees sessions in one state (fresh, no write due for a
/// minute) whatever time the seeding took.
fn touch_all(
    cfg: &Config,
    addr: std::net::SocketAddr,
    req: &Req,
    db: &Path,
    marker: &str,
    tokens: usize,
) -> anyhow::Result<()> {
    touch_until(cfg, addr, req, tokens as u64, |since| {
        seed::seen_since(db, marker, since)
    })
}

/// Passes of `req` over every session until `seen_since(start)` (how many of them the store
/// shows active since the first pass) reaches `tokens`; every store's touch pass.
pub(crate) fn touch_until(
    cfg: &Config,
    addr: std::net::SocketAddr,
    req: &Req,
    tokens: u64,
    mut seen_since: impl FnMut(i64) -> anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let since = seed::now_ms();
    let mut seen = 0;
    for _ in 0..10 {
        let pass = Job::closed(addr, req.clone(), cfg.connections, cfg.client_threads)
            .timing(Duration::ZERO, Duration::from_millis(500));
        load::run(&pass)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            seen = seen_since(since)?;
            if seen >= tokens {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    anyhow::bail!("only {seen} of {tokens} sessions recorded their activity")
}

/// `sessiond session purge` of the large set, expired, while the server serves the small set.
pub(crate) fn bench_purge(
    cfg: &Config,
    dir: &Path,
    db: &Path,
    url: &str,
    live_tokens: &[String],
) -> anyhow::Result<Purge> {
    // The server's own background sweep is off (`--sweep-interval off`), so the command alone
    // purges, however long the run takes on a slow machine. The deadline lies a moment ahead
    // all the same, so nothing is expired before the measurement starts.
    let deadline = seed::now_ms() + i64::try_from(cfg.expire_after.as_millis())?;
    let marked = seed::expire_at(db, LARGE_MARK, deadline)?;
    // The live sessions were last verified a while ago: make their activity write due now,
    // so that the touch pass below takes them all to the same state.
    seed::set_last_seen(db, SMALL_MARK, seed::now_ms() - 120_000)?;
    let server = start_sessiond(
        cfg,
        dir,
        &[
            "--database".into(),
            url.into(),
            "--sweep-interval".into(),
            "off".into(),
        ],
        "purge",
    )?;
    let wait = deadline - seed::now_ms() + 200;
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(u64::try_from(wait)?));
    }
    let (expired, live) = seed::count(db, seed::now_ms())?;
    anyhow::ensure!(
        expired == marked,
        "{marked} sessions were marked to expire, {expired} are expired: the server swept early"
    );
    let req = Req::get(&server.addr.to_string(), "/api/session").vary(cookies(live_tokens));
    touch_all(cfg, server.addr, &req, db, SMALL_MARK, live_tokens.len())
        .with_context(|| format!("the server said: {}", server.log_tail()))?;
    // A sweep finds most sessions expired for longer than the store's grace, and those it
    // removes without moving the generation (`sessiond_core::PURGE_GRACE`): the purge starts
    // (after the idle probe) no sooner than that after the deadline, however fast the touch
    // pass was.
    let quiet_from = deadline + i64::try_from(sessiond_core::PURGE_GRACE.as_millis())?;
    let wait = quiet_from - seed::now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(u64::try_from(wait)?));
    }
    cfg.say(format!(
        "[purge] purging {expired} expired sessions ({live} live) …"
    ));
    let (probe_idle, probe_during, removed, seconds) =
        crate::storage::purge_under_probe(cfg, server.addr, &req, url)?;
    let (left, _) = seed::count(db, seed::now_ms() - 1_000)?;
    cfg.say(format!(
        "[purge] removed {removed} in {seconds:.1} s; verify p99 {:.2} ms idle, {:.2} ms during",
        probe_idle.p99_ms, probe_during.p99_ms
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

/// Runs `sessiond session purge`; returns how many sessions it says it removed.
pub(crate) fn run_purge(sessiond: &Path, url: &str) -> anyhow::Result<u64> {
    let mut child = Command::new(sessiond)
        .args(["session", "purge", "--database", url])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            anyhow::bail!("sessiond session purge ran for more than 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "sessiond session purge failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // "removed N expired session(s) in …"
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "removed")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected purge output: {}", stdout.trim()))
}

/// `--ratios-only N`: the next round's ratio rows (docs/reference/performance.md, "At scale"),
/// `N` runs of them: on every store the closed-loop rounds, the logins beside the hash rate
/// and the queue-sized login flood (as in the full run, without the second factors), and
/// the two tower peers' rounds with sessiond's `/healthz` beside their bare route. Each run's
/// figures are printed as it ends, then every figure's runs and their median. With a full
/// run's table, two more runs give the median of three runs the targets ask for. Prints,
/// writes nothing.
pub fn ratios_only(cfg: &Config, times: usize) -> anyhow::Result<()> {
    let mut cfg = cfg.clone();
    cfg.second_factor_rounds = 0;
    let mut figures: Vec<(String, &'static str, Vec<f64>)> = Vec::new();
    let mut record = |label: String, target: &'static str, value: f64| match figures
        .iter_mut()
        .find(|(l, _, _)| *l == label)
    {
        Some((_, _, v)) => v.push(value),
        None => figures.push((label, target, vec![value])),
    };
    for run in 1..=times.max(1) {
        let mut lines = Vec::new();
        for kind in StoreKind::ALL {
            cfg.say(format!("[ratios {run}/{times}] [{kind}] …"));
            let s = match bench_store(&cfg, kind) {
                Outcome::Done(s) => s,
                Outcome::Skipped(why) | Outcome::Failed(why) => {
                    cfg.say(format!("[{kind}] not measured: {why}"));
                    continue;
                }
            };
            let mut put = |what: &str, target: &'static str, value: f64| {
                lines.push(format!("{kind} {what} {value:.2}"));
                record(format!("{kind}: {what}"), target, value);
            };
            put("verify ÷ /healthz", "≥ 0.9", s.session.ratio_to(&s.healthz));
            if let Ok(fa) = &s.forward_auth {
                put("forward auth ÷ /healthz", "≥ 0.9", fa.ratio_to(&s.healthz));
            }
            put("logins ÷ hashes", "≥ 0.95", s.login.ratio());
            put(
                "verify p99 in a login flood ÷ idle",
                "≤ 1.5",
                s.probe_queue_flood.p99_ms / s.probe_idle.p99_ms.max(1e-9),
            );
        }
        for peer in bench_peers_of(&cfg, 2) {
            let Outcome::Done(p) = &peer.outcome else {
                continue;
            };
            if let (Some(ours), Some(theirs)) = (&p.our_healthz, &p.healthz) {
                let r = ours.ratio_to(theirs);
                lines.push(format!("/healthz ÷ {} bare route {r:.2}", peer.name));
                record(
                    format!("sessiond /healthz ÷ the bare route of {}", peer.name),
                    "≥ 0.95",
                    r,
                );
            }
        }
        println!("run {run}: {}", lines.join("; "));
    }
    println!("\n| figure | runs | median | target |\n|---|---|---|---|");
    for (label, target, values) in &figures {
        let runs: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        println!(
            "| {label} | {} | **{:.2}** | {target} |",
            runs.join(", "),
            crate::report::median_of(values.clone())
        );
    }
    Ok(())
}

/// `--peers-only`: the peer rows alone, each round printed as it comes.
pub fn peers_only(cfg: &Config) {
    for row in bench_peers(cfg) {
        cfg.say(format!("{row:?}"));
    }
}

fn bench_peers(cfg: &Config) -> Vec<PeerRow> {
    bench_peers_of(cfg, 3)
}

/// The first `how_many` peers of [`bench_peers`] (the two tower peers come first).
fn bench_peers_of(cfg: &Config, how_many: usize) -> Vec<PeerRow> {
    let names: [(&'static str, StoreKind); 3] = [
        (
            "axum-login 0.18 + tower-sessions 0.14 (SQLite store)",
            StoreKind::Sqlite,
        ),
        (
            "axum-login 0.18 + tower-sessions 0.14 (Redis store)",
            StoreKind::Redis,
        ),
        (
            "Django 5.2, DB sessions on SQLite, gunicorn -w 2",
            StoreKind::Sqlite,
        ),
    ];
    let names = &names[..how_many.min(names.len())];
    let (dir, tower) = match &cfg.peers {
        PeerSetup::Skip(why) => {
            return names
                .iter()
                .copied()
                .map(|(name, versus)| PeerRow {
                    name,
                    versus,
                    outcome: Outcome::Skipped(why.clone()),
                })
                .collect()
        }
        PeerSetup::Use { dir, tower } => (dir, tower),
    };
    let mut rows = Vec::new();
    for (i, (name, versus)) in names.iter().copied().enumerate() {
        cfg.say(format!("[peer] {name} …"));
        let started = match i {
            0 | 1 => match tower {
                Err(why) => Err(Outcome::Failed(why.clone())),
                Ok(bin) if i == 1 => match redis_available(&cfg.services.redis) {
                    Ok(()) => peers::start_tower(bin, "redis", &cfg.services.redis)
                        .map_err(|e| Outcome::Failed(format!("{e:#}"))),
                    Err(why) => Err(Outcome::Skipped(why)),
                },
                Ok(bin) => peers::start_tower(bin, "sqlite", &cfg.services.redis)
                    .map_err(|e| Outcome::Failed(format!("{e:#}"))),
            },
            _ => match peers::django_ready() {
                Err(why) => Err(Outcome::Skipped(why)),
                Ok(()) => peers::start_django(dir).map_err(|e| Outcome::Failed(format!("{e:#}"))),
            },
        };
        let outcome = match started {
            Err(o) => o,
            Ok(peer) => Reference::start(cfg, versus)
                .and_then(|ours| measure_peer(cfg, &peer, &ours, i < 2))
                .into(),
        };
        if let Outcome::Skipped(why) | Outcome::Failed(why) = &outcome {
            cfg.say(format!("[peer] {name}: not measured: {why}"));
        }
        rows.push(PeerRow {
            name,
            versus,
            outcome,
        });
    }
    rows
}

/// sessiond on a fresh store of `kind`, logged in: measured in the same rounds as a peer.
struct Reference {
    // Dropped in this order: the server stops before its store is removed.
    server: Process,
    session: Req,
    healthz: Req,
    _store: Store,
}

impl Reference {
    fn start(cfg: &Config, kind: StoreKind) -> anyhow::Result<Self> {
        let store = Store::create(kind, &cfg.services).map_err(|e| match e {
            Unavailable::Absent(why) => anyhow::anyhow!(why),
            Unavailable::Failed(e) => e,
        })?;
        let server = start_sessiond(cfg, store.dir(), &store.args(), "reference")?;
        let cookie = login(server.addr)?;
        let session = Req::get(&server.addr.to_string(), "/api/session").cookie(&cookie);
        let healthz = Req::get(&server.addr.to_string(), "/healthz");
        Ok(Self {
            server,
            session,
            healthz,
            _store: store,
        })
    }
}

fn measure_peer(
    cfg: &Config,
    peer: &peers::RunningPeer,
    ours: &Reference,
    bare: bool,
) -> anyhow::Result<PeerFigures> {
    let addr = peer.process.addr;
    let host = addr.to_string();
    let me = Req::get(&host, "/me").cookie(&peer.cookie);
    anyhow::ensure!(
        once_blocking(addr, &me)?.status == 200,
        "the peer does not accept its own session cookie"
    );
    // sessiond first (verify, then its `/healthz` when the peer has a bare route to set it
    // beside), the peer's /me last (reversed every other round), its bare route between them.
    let mut jobs = vec![cfg.closed(ours.server.addr, ours.session.clone())];
    if bare {
        jobs.push(cfg.closed(ours.server.addr, ours.healthz.clone()));
        jobs.push(cfg.closed(addr, Req::get(&host, "/healthz")));
    }
    jobs.push(cfg.closed(addr, me));
    let mut rounds = run_rounds(&jobs, cfg.rounds, |round, m| {
        let (o, me) = (&m[0], &m[m.len() - 1]);
        let mut line = format!(
            "[peer] round {round}/{}: sessiond verify {:.0}/s;",
            cfg.rounds, o.rps
        );
        if let [_, ours, theirs, _] = m {
            line.push_str(&format!(
                " sessiond /healthz {:.0}/s, its /healthz {:.0}/s ({:.3});",
                ours.rps,
                theirs.rps,
                ours.rps / theirs.rps.max(1e-9)
            ));
        }
        line.push_str(&format!(" /me {:.0}/s ({})", me.rps, me.status_summary()));
        cfg.say(line);
    })?;
    let me_rounds = rounds.pop().unwrap_or_default();
    let bare_rounds = bare.then(|| {
        let theirs = rounds.pop().unwrap_or_default();
        let ours = rounds.pop().unwrap_or_default();
        (ours, theirs)
    });
    let our_rounds = rounds.pop().unwrap_or_default();
    let (our_healthz, healthz) = bare_rounds.unzip();
    Ok(PeerFigures {
        me: me_rounds,
        healthz,
        our_healthz,
        ours: our_rounds,
    })
}

fn redis_available(url: &str) -> Result<(), String> {
    let addr = url
        .strip_prefix("redis://")
        .and_then(|r| r.split(['/', '?']).next())
        .and_then(|hp| hp.rsplit('@').next())
        .ok_or_else(|| format!("cannot read Redis URL {url}"))?;
    let sock = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("Redis at {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("Redis at {addr}: no address"))?;
    std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map(|_| ())
        .map_err(|e| format!("Redis at {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn rounds_alternate_their_order() {
        let order = |r| round_order(r, 3).collect::<Vec<_>>();
        assert_eq!(order(1), [0, 1, 2]);
        assert_eq!(order(2), [2, 1, 0]);
        assert_eq!(order(3), [0, 1, 2]);
        assert_eq!(round_order(2, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(round_order(1, 0).count(), 0);
    }
}
