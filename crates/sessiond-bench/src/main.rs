//! `sessiond-bench`: builds sessiond in release, measures it on every store and against the
//! peers, prints one table and writes `BENCHMARKS.md` with a chart.
//!
//! Run with: `cargo run --release -p sessiond-bench -- [--rounds N] [--round-seconds S] [--no-peers] [--no-example] [--coherence-only] [--out FILE]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use sessiond_bench::{binaries, chart, document, peers, run, Config, ExampleSetup, PeerSetup};

/// The sessiond load benchmark (targets: docs/reference/performance.md): one run, one table.
#[derive(Debug, Parser)]
#[command(name = "sessiond-bench")]
struct Args {
    /// Seconds per login, hash-rate and idle-probe window (floods get twice as long)
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds per closed-loop window (one round of one endpoint)
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    round_seconds: f64,
    /// Interleaved rounds of each closed-loop row (figures are medians)
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Leave out the peers (axum-login + tower-sessions, Django)
    #[arg(long)]
    no_peers: bool,
    /// Leave out the example app's row (`examples/example-app`)
    #[arg(long)]
    no_example: bool,
    /// Benchmark this example-app binary instead of building one
    #[arg(long, value_name = "PATH")]
    example_app: Option<PathBuf>,
    /// The peers' folder
    #[arg(long, value_name = "DIR")]
    peers: Option<PathBuf>,
    /// Where to write the report; relative paths are taken from the workspace root
    #[arg(long, value_name = "FILE", default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Where to write the chart (PNG); relative paths are taken from the workspace root
    #[arg(
        long,
        value_name = "FILE",
        default_value = "crates/sessiond-bench/benchmarks.png"
    )]
    chart: PathBuf,
    /// Stored sessions for the large-store rows
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    sessions: u64,
    /// Load-generator threads
    #[arg(long, value_name = "N", default_value_t = 2)]
    client_threads: usize,
    /// Every path once with tiny windows (what the test suite runs); prints, writes nothing
    #[arg(long)]
    smoke: bool,
    /// Benchmark this sessiond binary instead of building one
    #[arg(long, value_name = "PATH")]
    sessiond: Option<PathBuf>,
    /// Only the SQLite latency probe, idle and during the queue-sized login flood, `N` times
    /// (for tuning; prints, writes nothing)
    #[arg(long, value_name = "N")]
    probe_only: Option<usize>,
    /// Only the next round's ratio rows (docs/reference/performance.md, "At scale"), `N`
    /// runs: verify and forward auth ÷ `/healthz`, logins ÷ hashes and verify p99 in a login
    /// flood on every store, sessiond's `/healthz` ÷ the tower peers' bare route; each run's
    /// figures and their medians (prints, writes nothing)
    #[arg(long, value_name = "N")]
    ratios_only: Option<usize>,
    /// Only the peer rows (for tuning; prints, writes nothing)
    #[arg(long)]
    peers_only: bool,
    /// Only SQLite's `/healthz`, `/api/session` and forward-auth rounds, `N` of them, with
    /// their ratios (for tuning; prints, writes nothing)
    #[arg(long, value_name = "N")]
    ratio_only: Option<usize>,
    /// Only the example app's `GET /` and `GET /private` (valid cookie), `N` rounds, with the
    /// tower peer's `/healthz` and `GET /me` in the same rounds unless --no-peers; prints each
    /// round's ratios and their medians (for tuning; prints, writes nothing)
    #[arg(long, value_name = "N")]
    example_only: Option<usize>,
    /// Only correct logins on every store, `N` rounds each next to the machine's hash rate,
    /// with their medians (for comparing two builds' login path; prints, writes nothing)
    #[arg(long, value_name = "N")]
    logins_only: Option<usize>,
    /// Only the second-factor rows (a TOTP check, a passkey assertion, verify beside them) on
    /// every store, `N` rounds each, with their medians (for tuning; prints, writes nothing)
    #[arg(long, value_name = "N")]
    second_factor_only: Option<usize>,
    /// Only the storage-scale rows: purge on SQLite and PostgreSQL, PostgreSQL with
    /// --pg-sessions stored sessions, Redis bytes per session, nginx `auth_request` (for tuning;
    /// prints, writes nothing)
    #[arg(long)]
    storage_only: bool,
    /// Only SQLite's purge row, `N` runs (each on a fresh file of --sessions expired
    /// sessions), with their medians (for tuning; prints, writes nothing)
    #[arg(long, value_name = "N")]
    purge_only: Option<usize>,
    /// Only the Redis bytes-per-session row, with --redis-sessions sessions (for tuning;
    /// prints, writes nothing; builds no sessiond)
    #[arg(long)]
    redis_bytes_only: bool,
    /// Stored sessions of PostgreSQL's large-store row
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pg_sessions: u64,
    /// Sessions of the Redis bytes-per-session row
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    redis_sessions: u64,
    /// Only the coherence rows (idle store requests per instance, revocation across
    /// instances, a hundred simulated instances) on PostgreSQL and Redis (for tuning; prints,
    /// writes nothing)
    #[arg(long)]
    coherence_only: bool,
    /// Users of the second-factor rows: each round logs each in twice (argon2id) and checks
    /// each once per factor
    #[arg(long, value_name = "N", default_value_t = 200)]
    second_factor_users: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiond-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    let root = binaries::workspace_root();
    let sessiond = match &args.sessiond {
        Some(p) => p.clone(),
        // Writes through the Redis store's code in this process: no server to build.
        None if args.redis_bytes_only => PathBuf::new(),
        None if args.smoke => binaries::test_sessiond()?,
        None => {
            eprintln!("sessiond-bench: building sessiond (release) …");
            binaries::release_sessiond()?
        }
    };
    let mut cfg = if args.smoke {
        Config::smoke(sessiond)
    } else {
        let round = std::time::Duration::try_from_secs_f64(args.round_seconds)
            .map_err(|e| anyhow::anyhow!("--round-seconds {}: {e}", args.round_seconds))?;
        Config::real(sessiond, args.seconds, round)
    };
    if !args.smoke {
        cfg.rounds = args.rounds.max(1);
        cfg.large_sessions = args.sessions.max(1);
        cfg.client_threads = args.client_threads.max(1);
        cfg.second_factor_users = args.second_factor_users.max(1);
        cfg.storage.pg_large_sessions = args.pg_sessions.max(1);
        cfg.storage.redis_sessions = args.redis_sessions.max(1);
        cfg.storage.redis_users = (cfg.storage.redis_sessions / 40).max(1);
        cfg.peers = if args.no_peers {
            PeerSetup::Skip("--no-peers".into())
        } else if args.second_factor_only.is_some()
            || args.storage_only
            || args.purge_only.is_some()
            || args.redis_bytes_only
            || args.coherence_only
            || args.ratio_only.is_some()
        {
            PeerSetup::Skip("not in this mode".into())
        } else {
            peer_setup(args.peers.clone(), &root)
        };
    }
    cfg.example = example_setup(&args);
    if let Some(times) = args.example_only {
        return sessiond_bench::example_only(&cfg, times);
    }
    if let Some(times) = args.probe_only {
        return sessiond_bench::probe_only(&cfg, times);
    }
    if let Some(times) = args.logins_only {
        return sessiond_bench::logins_only(&cfg, times);
    }
    if let Some(times) = args.ratio_only {
        return sessiond_bench::ratio_only(&cfg, times);
    }
    if let Some(times) = args.ratios_only {
        return sessiond_bench::ratios_only(&cfg, times);
    }
    if let Some(times) = args.second_factor_only {
        return sessiond_bench::second_factor_only(&cfg, times);
    }
    if args.storage_only {
        return sessiond_bench::storage::storage_only(&cfg);
    }
    if let Some(times) = args.purge_only {
        return sessiond_bench::storage::purge_only(&cfg, times);
    }
    if args.redis_bytes_only {
        return sessiond_bench::storage::redis_bytes_only(&cfg);
    }
    if args.coherence_only {
        return sessiond_bench::coherence_only(&cfg);
    }
    if args.peers_only {
        sessiond_bench::peers_only(&cfg);
        return Ok(());
    }
    let report = run(&cfg)?;
    println!("\n{}", report.table());
    if args.smoke {
        return Ok(());
    }
    let out = absolute(&root, &args.out);
    let chart_path = absolute(&root, &args.chart);
    let chart_ref = match chart::write(&report, &chart_path) {
        Ok(()) => Some(relative_to(&chart_path, out.parent().unwrap_or(&root))),
        Err(e) => {
            eprintln!("sessiond-bench: no chart: {e:#}");
            None
        }
    };
    std::fs::write(&out, document::render(&report, chart_ref.as_deref()))?;
    eprintln!(
        "sessiond-bench: wrote {} and {} in {:.0} s",
        out.display(),
        chart_path.display(),
        report.seconds
    );
    Ok(())
}

/// The example app for its row: the one given, else built (release, or the test build in
/// smoke mode); left out with `--no-example` and in the tuning modes that do not use it.
fn example_setup(args: &Args) -> ExampleSetup {
    let tuning_elsewhere = args.probe_only.is_some()
        || args.logins_only.is_some()
        || args.ratio_only.is_some()
        || args.ratios_only.is_some()
        || args.second_factor_only.is_some()
        || args.storage_only
        || args.purge_only.is_some()
        || args.redis_bytes_only
        || args.coherence_only
        || args.peers_only;
    if args.no_example {
        return ExampleSetup::Skip("--no-example".into());
    }
    if tuning_elsewhere && args.example_only.is_none() {
        return ExampleSetup::Skip("not in this mode".into());
    }
    if let Some(p) = &args.example_app {
        return ExampleSetup::Use(Ok(p.clone()));
    }
    let built = if args.smoke {
        binaries::test_example_app()
    } else {
        eprintln!("sessiond-bench: building example-app (release) …");
        binaries::release_example_app()
    };
    ExampleSetup::Use(built.map_err(|e| format!("{e:#}")))
}

fn peer_setup(dir: Option<PathBuf>, root: &Path) -> PeerSetup {
    // `shared/` sits beside the checkout, or beside a folder of worktrees: the nearest
    // ancestor that has it.
    let dir = dir.unwrap_or_else(|| {
        root.ancestors()
            .map(|a| a.join("shared").join("peers"))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| root.join("..").join("shared").join("peers"))
    });
    if !dir.is_dir() {
        return PeerSetup::Skip(format!("no peers at {}", dir.display()));
    }
    eprintln!("sessiond-bench: building the tower peer (release) …");
    let tower = peers::build_tower(&dir, &binaries::target_dir().join("peers"))
        .map_err(|e| format!("{e:#}"));
    PeerSetup::Use { dir, tower }
}

fn absolute(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// `path` relative to `base` when it lies below it (for the Markdown image link).
fn relative_to(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}
