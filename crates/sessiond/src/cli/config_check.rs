//! `sessiond config check`: is this configuration one `serve` would start with?
//!
//! Reads the configuration as `serve` does (defaults < file < environment < flags, the same
//! flags), prints the effective settings with every secret replaced by `***` (store
//! passwords, the first admin's password, the encryption key), then reaches each store.
//! Exit 0 when the configuration is valid and every store answers, 1 otherwise; each problem
//! is named on its own line.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sessiond_axum::auth::EncryptionKey;
use sessiond_core::{SessionStore as _, UserId, UserStore as _};
use sessiond_store_postgres::PostgresStore;
use sessiond_store_redis::RedisStore;
use sessiond_store_sqlite::SqliteStore;

use super::{runtime, serve, CliError, CliResult};
use crate::config::{Config, KeySource, Overrides};
use crate::stores::StoreUrl;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Validate the configuration, reach the stores, print the effective settings (secrets
    /// redacted); exit 0 when all is well, 1 otherwise
    Check(#[command(flatten)] serve::Args),
}

/// How long reaching one store may take in all (each store's own calls are bounded too).
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn run(file: Option<&PathBuf>, mut over: Overrides, cmd: Command) -> CliResult {
    let Command::Check(args) = cmd;
    args.apply(&mut over);
    // An invalid configuration is this command's finding, not a usage error: exit 1.
    let config = Config::load(file, over)
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("invalid configuration: {}", e.0)))?;
    let source = match file {
        Some(path) => path.display().to_string(),
        None => "none (defaults, environment and flags)".to_owned(),
    };
    print!("# config file: {source}\n{}", effective(&config));

    let rt = runtime()?;
    let mut failed = Vec::new();
    let mut reach = |what: &str, url: &StoreUrl| {
        let started = Instant::now();
        let result = rt.block_on(async {
            tokio::time::timeout(REACH_TIMEOUT, reach(url))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {REACH_TIMEOUT:?}")))
        });
        match result {
            Ok(note) => println!("# {what}: ok ({} ms){note}", started.elapsed().as_millis()),
            Err(e) => {
                println!("# {what}: FAILED: {e}");
                failed.push(format!("{what} {}: {e}", url.redacted()));
            }
        }
    };
    reach("database", &config.database);
    if config.session_store != config.database {
        reach("session_store", &config.session_store);
    }
    if let KeySource::BesideDatabase(path) = &config.two_factor.key {
        // `serve` refuses to start with a key file it cannot read or parse.
        if path.exists() {
            match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| EncryptionKey::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(_) => println!("# two_factor key file: ok"),
                Err(e) => {
                    println!("# two_factor key file: INVALID: {e}");
                    failed.push(format!("two_factor key file {}: {e}", path.display()));
                }
            }
        }
    }
    match failed.len() {
        0 => {
            println!("# configuration ok");
            Ok(())
        }
        // One line on stderr (the CLI's promise), naming every failure.
        _ => Err(CliError::Runtime(anyhow::anyhow!("{}", failed.join("; ")))),
    }
}

/// Opens the store as `serve` would and asks it something; `Ok` carries a note for the line.
///
/// A SQLite file that does not exist yet is not created here (a check leaves no files
/// behind): its directory must exist, and `serve` creates the file. An existing file, or a
/// PostgreSQL database, is opened like `serve` opens it, so pending migrations are applied.
async fn reach(url: &StoreUrl) -> Result<String, String> {
    // The whole chain: "unavailable" alone does not tell a refused connection from a
    // refused password. (Store errors name settings and causes, never a password.)
    let text = |e: sessiond_core::StoreError| {
        let mut msg = match &e {
            sessiond_core::StoreError::Unavailable(_) => "unreachable".to_owned(),
            other => other.to_string(),
        };
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            // Many errors repeat their source in their own message: say each thing once.
            let text = c.to_string();
            if !msg.contains(&text) {
                let _ = write!(msg, ": {text}");
            }
            cause = c.source();
        }
        msg
    };
    match url {
        StoreUrl::Sqlite { path, .. } => {
            if !path.exists() {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if !dir.is_dir() {
                    return Err(format!(
                        "{} does not exist, and neither does its directory {}",
                        path.display(),
                        dir.display()
                    ));
                }
                return Ok(format!(
                    "; {} does not exist yet: serve creates it",
                    path.display()
                ));
            }
            let store = SqliteStore::open(path).map_err(text)?;
            store.user_by_id(UserId(0)).await.map_err(text)?;
            store.ping().await.map_err(text)?;
            Ok(String::new())
        }
        StoreUrl::Postgres(url) => {
            let store = PostgresStore::connect(url).await.map_err(text)?;
            store.user_by_id(UserId(0)).await.map_err(text)?;
            store.ping().await.map_err(text)?;
            Ok(String::new())
        }
        StoreUrl::Redis(url) => {
            // Connects lazily: only the PING says whether Redis answers.
            let store = RedisStore::connect(url).await.map_err(text)?;
            store.ping().await.map_err(text)?;
            Ok(String::new())
        }
    }
}

/// The effective settings as TOML, secrets as `***` (store URLs through their redacting
/// `redacted()`, never `expose()`).
fn effective(c: &Config) -> String {
    let mut out = String::new();
    let q = |s: &str| format!("{s:?}");
    let dur = |d: Duration| q(&humantime::format_duration(d).to_string());
    let _ = writeln!(out, "listen = {}", q(&c.listen.to_string()));
    let _ = writeln!(out, "public_url = {}", q(&c.public_origin()));
    match c.metrics_listen {
        Some(addr) => {
            let _ = writeln!(out, "metrics_listen = {}", q(&addr.to_string()));
        }
        None => {
            let _ = writeln!(out, "# metrics_listen: off");
        }
    }
    let _ = writeln!(out, "database = {}", q(&c.database.redacted()));
    let _ = writeln!(out, "session_store = {}", q(&c.session_store.redacted()));
    let origins: Vec<String> = c.trusted_origins.iter().map(|o| q(o)).collect();
    let _ = writeln!(out, "trusted_origins = [{}]", origins.join(", "));
    let admin = if c.admin_password.is_some() {
        q("***")
    } else {
        "\"\" # not set: a random password is printed on first start".to_owned()
    };
    let _ = writeln!(out, "# SESSIOND_ADMIN_PASSWORD = {admin}");

    let _ = writeln!(out, "\n[session]");
    let _ = writeln!(out, "idle_timeout = {}", dur(c.policy.idle));
    let _ = writeln!(out, "absolute_timeout = {}", dur(c.policy.absolute));
    let _ = writeln!(out, "remember_me_timeout = {}", dur(c.policy.remember));
    let sweep = c.sweep_interval.map_or_else(|| q("off"), dur);
    let _ = writeln!(out, "sweep_interval = {sweep}");
    let _ = writeln!(
        out,
        "max_per_user = {}",
        c.max_sessions_per_user.unwrap_or(0)
    );

    let _ = writeln!(out, "\n[cookie]");
    let _ = writeln!(out, "# name = {}", q(c.cookie.name()));
    if let Some(domain) = c.cookie.domain() {
        let _ = writeln!(out, "domain = {}", q(domain));
    }
    let _ = writeln!(out, "secure = {}", c.cookie.secure());

    let _ = writeln!(out, "\n[proxy]");
    let proxies: Vec<String> = c
        .trusted_proxies
        .iter()
        .map(|n| q(&n.to_string()))
        .collect();
    let _ = writeln!(out, "trusted = [{}]", proxies.join(", "));

    let _ = writeln!(out, "\n[access]");
    let _ = writeln!(out, "# {} rule(s)", c.access.len());

    let _ = writeln!(out, "\n[hashing]");
    let worker = match c.hash_worker {
        crate::config::HashWorker::Auto => "auto",
        crate::config::HashWorker::Process => "process",
        crate::config::HashWorker::Threads => "threads",
    };
    let _ = writeln!(out, "worker = {}", q(worker));

    let _ = writeln!(out, "\n[server]");
    let _ = writeln!(
        out,
        "header_read_timeout = {}",
        dur(c.connections.header_read_timeout)
    );
    let _ = writeln!(out, "max_connections = {}", c.connections.max_connections);

    match &c.tls {
        None => {
            let _ = writeln!(out, "\n# [tls]: none, plain HTTP");
        }
        Some(tls) => {
            let _ = writeln!(out, "\n[tls]");
            let _ = writeln!(out, "cert = {}", q(&tls.cert.display().to_string()));
            let _ = writeln!(out, "key = {}", q(&tls.key.display().to_string()));
        }
    }

    let _ = writeln!(out, "\n[two_factor]");
    let required = match c.two_factor.required {
        crate::config::Required::Off => "off",
        crate::config::Required::Admins => "admins",
        crate::config::Required::All => "all",
    };
    let _ = writeln!(out, "required = {}", q(required));
    let _ = writeln!(out, "issuer = {}", q(&c.two_factor.issuer));
    let key = match &c.two_factor.key {
        KeySource::Given(_) => "***".to_owned(),
        KeySource::BesideDatabase(path) => {
            let state = if path.exists() {
                "exists"
            } else {
                "created on first start"
            };
            format!("the file {} ({state})", path.display())
        }
        KeySource::Missing => "none: second factors are off".to_owned(),
    };
    let _ = writeln!(out, "# encryption key = {}", q(&key));
    out
}
