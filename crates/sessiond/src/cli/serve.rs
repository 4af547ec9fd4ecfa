//! `sessiond serve`

use anyhow::Context as _;

use super::CliResult;
use crate::config::{Config, Overrides};
use crate::server;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Address to listen on [default: 127.0.0.1:7444]
    #[arg(long, env = "SESSIOND_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. 127.0.0.1:9959
    /// [default: off]
    #[arg(long, env = "SESSIOND_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Public URL of this server (login page and redirects) [default: http://<listen>]
    #[arg(long, env = "SESSIOND_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// Sliding inactivity limit, e.g. 30m [default: 30m]
    #[arg(long, env = "SESSIOND_IDLE_TIMEOUT", value_name = "DUR")]
    idle_timeout: Option<String>,
    /// Hard limit from login, e.g. 12h [default: 12h]
    #[arg(long, env = "SESSIOND_ABSOLUTE_TIMEOUT", value_name = "DUR")]
    absolute_timeout: Option<String>,
    /// Lifetime of "stay logged in" sessions, e.g. 30d [default: 30d]
    #[arg(long, env = "SESSIOND_REMEMBER_ME_TIMEOUT", value_name = "DUR")]
    remember_me_timeout: Option<String>,
    /// How often expired sessions are deleted in the background, or `off` [default: 1m]
    #[arg(long, env = "SESSIOND_SWEEP_INTERVAL", value_name = "DUR|off")]
    sweep_interval: Option<String>,
    /// Where passwords are hashed: a worker process, threads, or auto (a worker process when
    /// a store server runs on this host) [default: auto]
    #[arg(
        long,
        env = "SESSIOND_HASH_WORKER",
        value_name = "auto|process|threads"
    )]
    hash_worker: Option<String>,
    /// File holding the key that encrypts second-factor secrets [default: the
    /// two_factor.encryption_key_file setting, or <database>.key beside a SQLite database]
    #[arg(long, env = "SESSIOND_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    encryption_key_file: Option<std::path::PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first) [default: the tls.cert
    /// setting; without one, plain HTTP]
    #[arg(long, env = "SESSIOND_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM) [default: the tls.key setting]
    #[arg(long, env = "SESSIOND_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
}

impl Args {
    pub(super) fn apply(self, over: &mut Overrides) {
        over.listen = self.listen;
        over.metrics_listen = self.metrics_listen;
        over.public_url = self.public_url.or(over.public_url.take());
        over.idle_timeout = self.idle_timeout;
        over.absolute_timeout = self.absolute_timeout;
        over.remember_me_timeout = self.remember_me_timeout;
        over.sweep_interval = self.sweep_interval;
        over.hash_worker = self.hash_worker;
        over.encryption_key_file = self.encryption_key_file;
        over.tls_cert = self.tls_cert;
        over.tls_key = self.tls_key;
    }
}

pub(super) fn run(config: Config) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if !config.cookie.secure() {
            tracing::warn!("cookie.secure = false: session cookies will travel over plain HTTP; development only");
        }
        // Before anything else: a stop request from here on is a graceful shutdown.
        let shutdown = server::shutdown_signal();
        let listen = config.listen;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let public = config.public_url.clone();
        let state = server::build_state(config).await?;
        server::ensure_admin(&state).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%listen, public_url = %public, tls = scheme == "https", "sessiond listening");
        eprintln!("sessiond: listening on {scheme}://{listen} (open {public})");
        server::run(listener, state, shutdown).await?;
        tracing::info!("sessiond stopped");
        Ok(())
    })
}
