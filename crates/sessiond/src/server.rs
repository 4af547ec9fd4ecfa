//! Turning a [`Config`] into a running server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use axum::ServiceExt as _;
use base64::Engine as _;
use sessiond_axum::SessionManager;
use sessiond_core::{NewUser, Password, SessionStore, Timestamp, UserStore, Username};
use sessiond_store_postgres::PostgresStore;
use sessiond_store_redis::RedisStore;
use sessiond_store_sqlite::SqliteStore;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::password::Hasher;
use crate::routes;
use crate::state::AppState;

/// Sessions removed per sweep batch: small enough that one batch holds the writer for a few
/// milliseconds, so requests never stall behind a sweep.
pub const SWEEP_BATCH: usize = 1_000;
/// Sessions kept in the verification cache (a few hundred bytes each).
pub const VERIFY_CACHE_CAPACITY: usize = 100_000;

/// The stores a configuration names.
#[derive(Debug, Clone)]
pub struct Stores {
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
}

/// Opens (and migrates) the stores of `config`: users in the database; sessions there too,
/// or in Redis when `session_store` names it.
pub async fn open_stores(config: &Config) -> anyhow::Result<Stores> {
    let db = &config.database;
    let (users, db_sessions): (Arc<dyn UserStore>, Arc<dyn SessionStore>) =
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            let pg = Arc::new(
                PostgresStore::connect(db)
                    .await
                    .with_context(|| format!("cannot open database {}", redact(db)))?,
            );
            (pg.clone(), pg)
        } else {
            let sqlite = Arc::new(
                SqliteStore::open_url(db)
                    .with_context(|| format!("cannot open database {}", redact(db)))?,
            );
            (sqlite.clone(), sqlite)
        };
    let sessions: Arc<dyn SessionStore> = if config.session_store == config.database {
        db_sessions
    } else {
        Arc::new(
            RedisStore::connect(&config.session_store)
                .await
                .with_context(|| {
                    format!(
                        "cannot open session store {}",
                        redact(&config.session_store)
                    )
                })?,
        )
    };
    Ok(Stores { users, sessions })
}

/// A store URL fit for messages: the password, if any, replaced.
pub fn redact(url: &str) -> String {
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

pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// Opens the stores and starts the hashing pool, in a worker process of its own when
/// `hashing.worker` asks for one and it can start (see `password::worker`): this is what
/// `sessiond serve` runs.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let hasher = if config.hash_worker.wants_process(&config) {
        Hasher::for_the_server()
    } else {
        Hasher::for_this_machine()
    }
    .context("cannot start the password hashing pool")?;
    build_state_with(config, now, hasher).await
}

/// [`build_state`] with another clock for session decisions (tests that move time), hashing
/// on threads of this process.
pub async fn build_state_with_clock(
    config: Config,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
) -> anyhow::Result<AppState> {
    let hasher = Hasher::for_this_machine().context("cannot start the password hashing pool")?;
    build_state_with(config, clock, hasher).await
}

async fn build_state_with(
    config: Config,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
    hasher: Hasher,
) -> anyhow::Result<AppState> {
    let stores = open_stores(&config).await?;
    let sessions = SessionManager::new(stores.sessions, config.cookie.clone(), config.policy)
        .with_clock(clock)
        .with_cache(VERIFY_CACHE_CAPACITY);
    Ok(AppState::new(config, stores.users, sessions, hasher))
}

/// On an empty user table, creates `admin` (password from `SESSIOND_ADMIN_PASSWORD`, or a
/// random one printed once to stderr). Atomic in the store, so several instances starting at
/// once create it once.
pub async fn ensure_admin(state: &AppState) -> anyhow::Result<()> {
    if !state.users.list_users().await?.is_empty() {
        return Ok(());
    }
    let (password, generated) = match &state.config.admin_password {
        Some(p) => (
            Password::new(p.clone())
                .map_err(|e| anyhow::anyhow!("SESSIOND_ADMIN_PASSWORD: {e}"))?,
            false,
        ),
        None => {
            let mut raw = [0u8; 18];
            getrandom::fill(&mut raw)
                .map_err(|e| anyhow::anyhow!("the OS CSPRNG is unavailable: {e}"))?;
            let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            (
                Password::new(p).expect("24 characters is a valid password"),
                true,
            )
        }
    };
    let shown = password.clone();
    let phc = state.hasher.hash(password).await?;
    let new = NewUser {
        username: Username::parse("admin").expect("valid"),
        name: "Administrator".into(),
        email: String::new(),
        groups: vec!["admins".into()],
        admin: true,
        password_hash: phc,
        created_at: now(),
    };
    if state.users.create_user_if_none(&new).await?.is_some() {
        if generated {
            // Printed once, to stderr only, never logged through tracing.
            eprintln!(
                "sessiond: created user 'admin' with password: {}\n\
                 sessiond: change it after logging in (or: sessiond user passwd admin)",
                shown.expose()
            );
        } else {
            eprintln!(
                "sessiond: created user 'admin' with the password from SESSIOND_ADMIN_PASSWORD"
            );
        }
    }
    Ok(())
}

/// Deletes expired sessions in bounded batches until none are left; returns how many.
pub async fn purge_expired(
    sessions: &dyn SessionStore,
    now: Timestamp,
) -> Result<u64, sessiond_core::StoreError> {
    let mut total = 0;
    loop {
        let n = sessions.purge_expired(now, SWEEP_BATCH).await?;
        total += n;
        if n < SWEEP_BATCH as u64 {
            return Ok(total);
        }
        // Let requests queued behind the writer go first.
        tokio::task::yield_now().await;
    }
}

/// Serves the app on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = state.config.sweep_interval.map(|every| {
        let manager = state.sessions.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match purge_expired(manager.store().as_ref(), manager.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "swept expired sessions"),
                    Err(e) => tracing::warn!(error = %e, "session sweep failed"),
                }
            }
        })
    });
    let app = routes::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    result
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
