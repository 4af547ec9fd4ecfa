//! The command line (docs/reference/cli.md): one module per subcommand.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 usage error; every error is one line on stderr.

mod config_check;
mod hash_password;
mod progress;
mod serve;
mod session;
mod throttle;
mod user;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessiond_core::{Password, StoreError};

use crate::config::{Config, Overrides};

/// `sessiond --version`: the crate's version and the git revision it was built from
/// (`build.rs`; `unknown` when built outside a git checkout).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SESSIOND_GIT_REVISION"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "sessiond",
    version = VERSION,
    about = "Cookie-based user sessions done right"
)]
pub(crate) struct Cli {
    /// Database URL: sqlite://PATH or postgres://…
    #[arg(long, global = true, env = "SESSIOND_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// Session store URL (default: the database)
    #[arg(
        long,
        global = true,
        env = "SESSIOND_SESSION_STORE",
        value_name = "URL"
    )]
    session_store: Option<String>,
    /// TOML config file
    #[arg(long, global = true, env = "SESSIOND_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server
    Serve(serve::Args),
    /// Manage users
    #[command(subcommand)]
    User(user::Command),
    /// Manage sessions
    #[command(subcommand)]
    Session(session::Command),
    /// Login back-offs in force
    #[command(subcommand)]
    Throttle(throttle::Command),
    /// Check a configuration: valid, stores reachable; print the effective settings
    #[command(subcommand)]
    Config(config_check::Command),
    /// Print the argon2id PHC hash of a password
    HashPassword(hash_password::Args),
    /// The server's password hashing worker (started by `serve`, not by hand)
    #[command(name = sessiond_axum::password::worker::SUBCOMMAND, hide = true)]
    HashWorker {
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

/// A CLI failure, with the exit code it maps to.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad input: exit code 2.
    Usage(String),
    /// Something failed while doing the work: exit code 1.
    Runtime(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        let e = e.into();
        // A store that refuses its configuration (a URL or option it cannot use) is a bad
        // setting like those `Config` refuses: exit 2.
        let config = |c: &(dyn std::error::Error + 'static)| {
            matches!(c.downcast_ref(), Some(StoreError::Config(_)))
        };
        if e.chain().any(config) {
            return Self::Usage(format!("{e:#}"));
        }
        Self::Runtime(e)
    }
}

pub(crate) type CliResult = Result<(), CliError>;

pub(crate) fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap prints them to stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sessiond: {}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let default_log = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    init_tracing(default_log);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("sessiond: error: {msg}");
            ExitCode::from(2)
        }
        Err(CliError::Runtime(e)) => {
            eprintln!("sessiond: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// clap's usage errors span several lines (message, usage, tip); we promise one line. Keep
/// the message, folded, and point at `--help`.
fn one_line(rendered: &str) -> String {
    let message = rendered.split("\n\n").next().unwrap_or(rendered);
    let folded: Vec<&str> = message.split_whitespace().collect();
    format!("{} (see --help)", folded.join(" "))
}

/// Logs go to stderr, as text, or as one JSON object a line with `SESSIOND_LOG_FORMAT=json`
/// (for log shippers). Audit events have the target `sessiond::audit`
/// (`RUST_LOG=sessiond::audit=info` selects them alone).
fn init_tracing(default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (targets, env_filter) = log_filter(std::env::var("RUST_LOG").ok().as_deref(), default);
    let registry = tracing_subscriber::registry()
        .with(targets)
        .with(env_filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = if env("SESSIOND_LOG_FORMAT").as_deref() == Some("json") {
        // Span fields and the request's `request_id` at the top level, beside the event's.
        registry
            .with(
                layer
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(crate::logging::FlatJson),
            )
            .try_init()
    } else {
        // Client-chosen values (a typed username) quoted, so they cannot plant fields; the
        // request's id as the line's outermost span.
        registry
            .with(
                layer
                    .with_ansi(std::io::stderr().is_terminal())
                    .fmt_fields(crate::logging::QuotedFields)
                    .event_format(crate::logging::Text),
            )
            .try_init()
    };
}

/// The log filter of `RUST_LOG` (else `default`): one of the two. A filter of targets and
/// levels only (`warn`, `sessiond::audit=info,tower=off`), which is what anyone sets, is
/// served by `Targets`, which decides at each call site once and keeps nothing per span;
/// `EnvFilter` takes a shared lock on every span's creation, entry, exit and close (the
/// library's debug spans; a request used to have a span of its own, entered and left on every
/// poll: docs/performance.md, "The log filter"). A filter that needs `EnvFilter` (span and field
/// directives, `target[span{field=value}]=level`) gets it, and so does anything `Targets`
/// does not read the same way: what `RUST_LOG` selects is unchanged.
fn log_filter(
    rust_log: Option<&str>,
    default: &str,
) -> (
    Option<tracing_subscriber::filter::Targets>,
    Option<tracing_subscriber::EnvFilter>,
) {
    use tracing_subscriber::EnvFilter;
    // As before: an unset or unreadable `RUST_LOG` means the default.
    let spec = match rust_log {
        Some(s) if EnvFilter::try_new(s).is_ok() => s,
        _ => default,
    };
    let plain = !spec.is_empty() && !spec.contains('[');
    match spec.parse::<tracing_subscriber::filter::Targets>() {
        Ok(targets) if plain => (Some(targets), None),
        _ => (None, Some(EnvFilter::new(spec))),
    }
}

fn run(cli: Cli) -> CliResult {
    let mut over = Overrides {
        database: cli.database,
        session_store: cli.session_store,
        public_url: env("SESSIOND_PUBLIC_URL"),
        admin_password: env("SESSIOND_ADMIN_PASSWORD"),
        trusted_origins: env("SESSIOND_TRUSTED_ORIGINS"),
        // The key from the environment only, never a flag: argv is visible to every user.
        encryption_key: env("SESSIOND_ENCRYPTION_KEY"),
        ..Overrides::default()
    };
    match cli.command {
        Command::Serve(args) => {
            args.apply(&mut over);
            let config = load_config(cli.config.as_ref(), over)?;
            serve::run(config)
        }
        Command::User(cmd) => user::run(load_config(cli.config.as_ref(), over)?, cmd),
        Command::Session(cmd) => session::run(load_config(cli.config.as_ref(), over)?, cmd),
        Command::Throttle(cmd) => throttle::run(load_config(cli.config.as_ref(), over)?, cmd),
        Command::Config(cmd) => config_check::run(cli.config.as_ref(), over, cmd),
        Command::HashPassword(args) => hash_password::run(args),
        Command::HashWorker { threads } => Ok(sessiond_axum::password::worker::serve(threads)?),
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn load_config(file: Option<&PathBuf>, over: Overrides) -> Result<Config, CliError> {
    Config::load(file, over).map_err(|e| usage(e.0))
}

/// A runtime for the short-lived admin commands.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Reads a password: one line from stdin with `--password-stdin` (the trailing newline is not
/// part of it), else a no-echo prompt on the terminal, twice when `confirm`. Never from argv.
fn read_password(from_stdin: bool, prompt: &str, confirm: bool) -> Result<String, CliError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.ends_with('\n') {
            line.pop();
            if line.ends_with('\r') {
                line.pop();
            }
        }
        return Ok(line);
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "no terminal to prompt for a password on; use --password-stdin",
        ));
    }
    let first = rpassword::prompt_password(prompt)?;
    if confirm {
        let second = rpassword::prompt_password("Repeat password: ")?;
        if first != second {
            return Err(usage("the passwords do not match"));
        }
    }
    Ok(first)
}

/// A new password, checked against the rules of docs/reference/accounts.md, "Usernames and
/// passwords".
fn read_new_password(from_stdin: bool) -> Result<Password, CliError> {
    let raw = read_password(from_stdin, "New password: ", true)?;
    Password::new(raw).map_err(|e| usage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    /// Targets and levels get the lock-free `Targets`, selecting what `EnvFilter` did; span
    /// and field directives, an empty filter and a filter `EnvFilter` refuses keep what they
    /// got before.
    #[test]
    fn plain_log_filters_get_targets_and_the_rest_an_env_filter() {
        use tracing::Level;
        let targets = |rust_log| match log_filter(rust_log, "info") {
            (Some(t), None) => t,
            other => panic!("{rust_log:?}: Targets only, not {other:?}"),
        };
        let env = |rust_log| match log_filter(rust_log, "info") {
            (None, Some(e)) => e,
            other => panic!("{rust_log:?}: EnvFilter only, not {other:?}"),
        };
        let t = targets(None);
        assert!(t.would_enable("sessiond", &Level::INFO));
        assert!(!t.would_enable("sessiond", &Level::DEBUG));
        let t = targets(Some("warn,sessiond::audit=info"));
        assert!(t.would_enable("sessiond::audit", &Level::INFO));
        assert!(!t.would_enable("sessiond::routes", &Level::INFO));
        assert!(t.would_enable("sessiond::routes", &Level::WARN));
        // Refused by `EnvFilter`: the default, as before.
        assert!(targets(Some("sessiond=loud")).would_enable("x", &Level::INFO));
        env(Some("sessiond[request]=debug"));
        env(Some(""));
    }
}
