//! Turning a [`Config`] into a running server.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse as _;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sessiond_axum::auth::{EncryptionKey, SecondFactors};
use sessiond_axum::{Auth, BuiltinUsers, HashError, Hasher, SessionManager};
use sessiond_core::{Group, NewUser, Password, SessionStore, Timestamp, Username};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt as _;

use crate::config::{Config, KeySource};
use crate::metrics::Metrics;
use crate::routes;
use crate::state::AppState;
use crate::stores;
use crate::tls::Tls;

/// Sessions the first sweep batch removes at most; later batches are sized by the time the
/// one before took ([`SWEEP_BATCH_TIME`]).
pub(crate) const SWEEP_BATCH: usize = 1_000;
/// Store time each sweep batch aims at. Short, so requests queued behind the writer (logins,
/// activity writes; and on SQLite any other process's writes) wait no longer than this; long
/// enough that each batch's fixed cost (its commit and fsync, the generation change) is a
/// small share of it (docs/performance.md, "Purging expired sessions").
const SWEEP_BATCH_TIME: Duration = Duration::from_millis(20);
/// Bounds of a sweep batch, whatever the timing says.
const SWEEP_BATCH_MIN: usize = 100;
const SWEEP_BATCH_MAX: usize = 100_000;
/// Sessions kept in the verification cache (a few hundred bytes each).
pub(crate) const VERIFY_CACHE_CAPACITY: usize = 100_000;

pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// Opens the stores and starts the hashing pool, in a worker process of its own when
/// `hashing.worker` asks for one and it can start (see `password::worker`): this is what
/// `sessiond serve` runs.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let process = config.hash_worker.wants_process(&config);
    build_state_with(config, now, move || {
        if process {
            Hasher::for_the_server()
        } else {
            Hasher::for_this_machine()
        }
    })
    .await
}

/// [`build_state`] with another clock for session decisions (tests that move time), hashing
/// on threads of this process.
pub async fn build_state_with_clock(
    config: Config,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
) -> anyhow::Result<AppState> {
    build_state_with(config, clock, Hasher::for_this_machine).await
}

/// The stores open first: a store the config names wrongly is refused before a hashing worker
/// process exists (which would otherwise start only to be stopped again).
async fn build_state_with(
    config: Config,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
    hasher: impl FnOnce() -> Result<Hasher, HashError>,
) -> anyhow::Result<AppState> {
    let metrics = Arc::new(Metrics::default());
    let stores = stores::open(&config.database, &config.session_store)
        .await?
        .timed(&metrics, &config.database, &config.session_store);
    let hasher = hasher().context("cannot start the password hashing pool")?;
    let sessions = SessionManager::new(stores.sessions, config.cookie.clone(), config.policy)
        .with_clock(clock)
        .with_cache(VERIFY_CACHE_CAPACITY);
    let mut builder = Auth::builder(BuiltinUsers::new(stores.users), sessions, stores.throttle)
        .hasher(hasher)
        .max_sessions_per_user(config.max_sessions_per_user);
    if let Some(key) = encryption_key(&config)? {
        let factors = SecondFactors::new(stores.factors, key).issuer(&config.two_factor.issuer);
        builder = builder.second_factors(with_passkeys(factors, &config));
    }
    let auth = builder.build()?;
    Ok(AppState::with_metrics(config, auth, metrics))
}

/// Passkeys for the relying party of the public URL: its host, or the cookie domain when one
/// is set (its subdomains then share passkeys). A public URL whose host cannot be a relying
/// party (an IP address: browsers refuse them) leaves passkeys off, said once at start; TOTP
/// and recovery codes work regardless (docs/reference/second-factor.md, "Passkeys").
fn with_passkeys(factors: SecondFactors, config: &Config) -> SecondFactors {
    let host = config.public_url.host_str().unwrap_or_default();
    let rp_id = config.cookie.domain().unwrap_or(host).to_owned();
    let ip = host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok();
    if ip {
        tracing::warn!(
            public_url = %config.public_url,
            "passkeys are off: the public URL's host is an IP address, which browsers refuse as a relying party (use a host name, e.g. localhost)"
        );
        return factors;
    }
    match factors
        .clone()
        .passkeys(&rp_id, &config.public_url, &config.two_factor.issuer)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "passkeys are off");
            factors
        }
    }
}

/// The key that encrypts second-factor secrets: given, or the key file beside the SQLite
/// database (created `0600` with a fresh key on first start). `None` on PostgreSQL without a
/// key: second factors are off, said once at start (docs/reference/second-factor.md).
fn encryption_key(config: &Config) -> anyhow::Result<Option<EncryptionKey>> {
    match &config.two_factor.key {
        KeySource::Given(key) => Ok(Some(key.clone())),
        KeySource::BesideDatabase(path) => {
            // A key file that exists but cannot be read or parsed stops the start: running
            // on would leave every enrolled user unable to use their factor, or worse, make a
            // new key that can never open the stored secrets.
            let key = EncryptionKey::load_or_create(path)
                .with_context(|| "two_factor: the encryption key beside the database")?;
            Ok(Some(key))
        }
        KeySource::Missing => {
            tracing::warn!(
                "second factors are off: no encryption key (set SESSIOND_ENCRYPTION_KEY or \
                 two_factor.encryption_key_file); the 2FA endpoints answer \
                 second_factor_unavailable"
            );
            Ok(None)
        }
    }
}

/// On an empty user table, creates `admin` (password from `SESSIOND_ADMIN_PASSWORD`, or a
/// random one printed once to stderr). Atomic in the store, so several instances starting at
/// once create it once.
pub(crate) async fn ensure_admin(state: &AppState) -> anyhow::Result<()> {
    if !state.users.list_users().await?.is_empty() {
        return Ok(());
    }
    let (password, generated) = match &state.config.admin_password {
        Some(p) => (
            Password::new(p.expose().to_owned())
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
    let phc = state.auth.hasher().hash(password).await?;
    let new = NewUser {
        username: Username::parse("admin").expect("valid"),
        name: "Administrator".into(),
        email: String::new(),
        groups: vec![Group::parse("admins").expect("valid")],
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
pub(crate) async fn purge_expired(
    sessions: &dyn SessionStore,
    now: Timestamp,
) -> Result<u64, sessiond_core::StoreError> {
    purge_expired_reporting(sessions, now, |_| {}).await
}

/// [`purge_expired`], telling `batch_done` how many each batch removed (`session purge`
/// shows its progress).
pub(crate) async fn purge_expired_reporting(
    sessions: &dyn SessionStore,
    now: Timestamp,
    mut batch_done: impl FnMut(u64),
) -> Result<u64, sessiond_core::StoreError> {
    let mut total = 0;
    let mut limit = SWEEP_BATCH;
    loop {
        let started = std::time::Instant::now();
        let n = with_retries(PURGE_RETRY_PAUSES, || sessions.purge_expired(now, limit)).await?;
        let took = started.elapsed();
        batch_done(n);
        total += n;
        if n < limit as u64 {
            return Ok(total);
        }
        limit = next_sweep_batch(limit, took);
        // Let requests queued behind the writer go first.
        tokio::task::yield_now().await;
    }
}

/// Pauses before each retry of a purge batch the store refused as unavailable. A batch
/// waits for the store's lock only within its write budget (SQLite: 1 s), and the server's
/// own writes, or a `sqlite3` shell inside a transaction, can hold the lock longer than that
/// while a long purge runs: without a retry, `session purge` stopped half-way with "database
/// is locked". A purge is idempotent (it deletes what is expired as of `now`), so trying a
/// batch again can only finish the work; five tries span about 8 s of a lock held elsewhere
/// (each waits up to its budget, then these pauses), after which the error is reported.
const PURGE_RETRY_PAUSES: &[Duration] = &[
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(800),
    Duration::from_millis(1600),
];

/// Runs `op`, and again after each of `pauses` while it fails with
/// [`StoreError::Unavailable`](sessiond_core::StoreError::Unavailable); any other error, or
/// the last one, is returned.
async fn with_retries<T, F, Fut>(
    pauses: &[Duration],
    mut op: F,
) -> Result<T, sessiond_core::StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sessiond_core::StoreError>>,
{
    let mut pauses = pauses.iter();
    loop {
        match op().await {
            Err(e @ sessiond_core::StoreError::Unavailable(_)) => match pauses.next() {
                Some(pause) => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "purge batch failed; trying again");
                    tokio::time::sleep(*pause).await;
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// The next sweep batch after one of `limit` sessions that took `took`: as many as take
/// [`SWEEP_BATCH_TIME`] at that pace, but at most twice or half the last, so one batch that
/// met a checkpoint or a cold cache does not swing the size.
fn next_sweep_batch(limit: usize, took: Duration) -> usize {
    let pace = limit as f64 / took.as_secs_f64().max(1e-6);
    let want = (pace * SWEEP_BATCH_TIME.as_secs_f64()) as usize;
    want.clamp(limit / 2, limit.saturating_mul(2))
        .clamp(SWEEP_BATCH_MIN, SWEEP_BATCH_MAX)
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
    let metrics = match state.config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, &state).await?),
        None => None,
    };
    let limits = state.config.connections;
    let tls = match &state.config.tls {
        None => None,
        Some(files) => Some(Tls::load(&files.cert, &files.key).map_err(std::io::Error::other)?),
    };
    let reloader = tls.clone().map(|tls| tokio::spawn(reload_on_sighup(tls)));
    let result = serve(listener, routes::app(state), limits, tls, shutdown).await;
    for task in [sweeper, reloader]
        .into_iter()
        .flatten()
        .chain(metrics.into_iter().flatten())
    {
        task.abort();
    }
    result
}

/// Reads the certificate and key again on every SIGHUP (what `systemctl reload` and
/// certbot's deploy hooks send): new handshakes get the new pair, open connections keep the
/// one they were made with. A pair that does not load is logged and the old one stays.
///
/// The handler is installed before this returns (not in the task it runs in), so a SIGHUP
/// sent once the server answers never meets the default action, which ends the process.
fn reload_on_sighup(tls: Tls) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hup = match hup {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGHUP: the TLS certificate will not be reloaded");
                    return;
                }
            };
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: TLS certificate not reloaded; still serving the previous one"
                    ),
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tls;
    }
}

/// How often the active sessions are counted in the store for the metrics (a range of the
/// expiry index: cheap, but not per scrape).
const COUNT_SESSIONS_EVERY: Duration = Duration::from_secs(15);

/// The metrics listener (`metrics_listen`): `GET /metrics` on an address of its own, with
/// axum's plain server (a scraper is no public client: none of the public accept loop's
/// limits are needed), and the task that counts active sessions for it.
async fn serve_metrics(
    addr: SocketAddr,
    state: &AppState,
) -> std::io::Result<[tokio::task::JoinHandle<()>; 2]> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("metrics_listen: cannot listen on {addr}: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(metrics_listen = %bound, "metrics listening");
    let app = routes::metrics_app(state.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    let (manager, metrics) = (state.sessions.clone(), Arc::clone(&state.metrics));
    let counter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(COUNT_SESSIONS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match manager.store().count_active(manager.now()).await {
                Ok(Some(n)) => metrics.set_active_sessions(n),
                Ok(None) => return,
                Err(e) => tracing::debug!(error = %e, "counting active sessions failed"),
            }
        }
    });
    Ok([server, counter])
}

/// Connections past the cap that get a `503 overloaded` answer (each for at most
/// [`REFUSAL_READ_TIMEOUT`]); beyond these, new connections are closed at once.
const MAX_REFUSING: usize = 64;
/// How long a connection past the cap may take to send its request head before it is closed.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The accept loop: HTTP/1.1 over hyper, or with `[tls]` HTTPS (HTTP/2 or HTTP/1.1 by ALPN),
/// with the limits that keep a slow or idle client from holding the server's descriptors and
/// memory (docs/reference/security.md, "Request limits").
///
/// * a header-read timeout: a connection on which no request head has arrived in full for
///   `header_read_timeout` (idle, or sending a head slowly), with no request in flight, is
///   closed (`Watchdog`). So it is also the idle keep-alive timeout, and it ends a client that
///   does not read its answer too. Over TLS the handshake gets the same timeout, before it.
///   (On HTTP/2 a client's PINGs make the server write, which the watchdog counts as
///   activity: that holds a connection open no longer than a keep-alive HTTP/1.1 client
///   sending a cheap request now and then could.)
/// * a cap on open connections (a semaphore permit per connection); a connection past it is
///   answered `503 overloaded` (a few at a time, quickly) rather than left to exhaust file
///   descriptors.
///
/// Per request: the body wrapped as axum's `Body`, the peer address inserted as `ConnectInfo`
/// (forward auth and throttling read it), the service cloned and called through `Oneshot`;
/// no boxed future.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: crate::config::ConnectionLimits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // No timer: hyper's own header-read timeout would allocate and arm a timer for every
    // request head; the watchdog below costs a timer per connection and a counter per request.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    // HTTP/2, on TLS connections that negotiate it. Streams at once per connection are
    // bounded (hyper's default is 200): one connection's share of the server stays close to
    // that of a few HTTP/1.1 connections. hyper's h2 keeps its own defences against reset
    // floods (CVE-2023-44487) and bounds header lists to 16 KiB.
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.max_concurrent_streams(H2_MAX_STREAMS);
    let builders = Arc::new((http, h2));
    let mut refusal = hyper::server::conn::http1::Builder::new();
    refusal
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_READ_TIMEOUT)
        .keep_alive(false);
    let refusal = Arc::new(refusal);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Every connection task holds a receiver: `closed()` resolves once all have ended.
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept: back
                    // off a little rather than spin; the connections we hold will end.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Ok(permit) = Arc::clone(&open).try_acquire_owned() {
            let activity = Arc::new(Activity::default());
            let io = Counted {
                stream,
                activity: Arc::clone(&activity),
            };
            let service = Connection {
                app: std::cell::RefCell::new(app.clone()),
                remote,
                body_timeout: limits.header_read_timeout,
                activity: Arc::clone(&activity),
            };
            let close = close_rx.clone();
            let timeout = limits.header_read_timeout;
            match &tls {
                None => {
                    let conn = builders.0.serve_connection(TokioIo::new(io), service);
                    let watchdog = Watchdog::new(activity, timeout);
                    tokio::spawn(drive(conn, close, watchdog, permit));
                }
                Some(tls) => {
                    let acceptor = tls.acceptor().clone();
                    let builders = Arc::clone(&builders);
                    tokio::spawn(async move {
                        // The handshake is bounded by the header-read timeout too: a client
                        // that opens a connection and sends its ClientHello slowly, or never
                        // finishes the handshake, holds its place under the cap no longer
                        // than one that sends a request head slowly. (The watchdog starts
                        // after it: it counts request heads, which only follow a handshake.)
                        let stream = match tokio::time::timeout(timeout, acceptor.accept(io)).await
                        {
                            Ok(Ok(stream)) => stream,
                            // Scanners and clients that distrust the certificate fail here all
                            // day: not worth more than a debug line.
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = TokioIo::new(stream);
                        let watchdog = Watchdog::new(activity, timeout);
                        if h2 {
                            // The protocol ALPN chose, not sniffed from the first bytes.
                            let conn = builders.1.serve_connection(io, service);
                            drive(conn, close, watchdog, permit).await;
                        } else {
                            let conn = builders.0.serve_connection(io, service);
                            drive(conn, close, watchdog, permit).await;
                        }
                    });
                }
            }
        } else if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
            let refusal = Arc::clone(&refusal);
            let acceptor = tls.as_ref().map(|t| t.refusal().clone());
            tokio::spawn(async move {
                let _permit = permit;
                let answer = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        crate::error::ApiError::Overloaded { retry_after: 1 }.into_response(),
                    )
                });
                match acceptor {
                    None => {
                        let _ = refusal.serve_connection(TokioIo::new(stream), answer).await;
                    }
                    // Over TLS the refusal needs a handshake first (HTTP/1.1 only: one
                    // answer, then the connection closes); handshake and request together
                    // get the refusal's short timeout.
                    Some(acceptor) => {
                        let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT, async {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ =
                                    refusal.serve_connection(TokioIo::new(stream), answer).await;
                            }
                        })
                        .await;
                    }
                }
            });
        } else {
            drop(stream);
        }
    }
    // Shutdown: new connections are refused from here (the listening socket is closed), and
    // every open connection finishes the request it is serving, answering it normally, then
    // closes (`graceful_shutdown`: an idle keep-alive connection closes at once). Requests
    // cannot hold the exit for long: a body must arrive within the header-read timeout and
    // every store call is bounded; a client reading its answer slowly is cut off after
    // `DRAIN_TIMEOUT`, so a service manager's stop timeout is never the one that ends us.
    drop(listener);
    let _ = close_tx.send(());
    drop(close_rx);
    if tokio::time::timeout(DRAIN_TIMEOUT, close_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = close_tx.receiver_count(),
            "shutdown: connections still open after {DRAIN_TIMEOUT:?}, closed"
        );
    }
    Ok(())
}

/// Streams at once on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 64;

/// A served connection that can be asked to finish: HTTP/1.1 or HTTP/2.
trait Graceful: Future {
    /// Stop taking requests, finish those in flight, then resolve.
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, Connection<S>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S> Graceful for hyper::server::conn::http2::Connection<I, Connection<S>, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// Runs one connection to its end: it ends by itself, or finishes its requests once the
/// server shuts down, or is dropped (its socket closed) when its watchdog expires. The permit
/// (its place under the cap) is held until then.
async fn drive<C: Graceful>(
    conn: C,
    mut close: watch::Receiver<()>,
    mut watchdog: Watchdog,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _permit = permit;
    let side = Arc::new(Side::default());
    let events = {
        let side = Arc::clone(&side);
        async move {
            tokio::select! {
                _ = close.changed() => side.closing.store(true, Relaxed),
                // Dropping the connection closes its socket.
                () = watchdog.expired() => return,
            }
            // Finishing its requests, it is still watched (a client that stops reading).
            watchdog.expired().await;
        }
    };
    Supervised::new(conn, events, side).await;
}

/// What a connection's side events (the shutdown, its watchdog) share with it.
#[derive(Debug, Default)]
struct Side {
    /// Set by the side events' own waker: they have something to look at.
    woken: AtomicBool,
    /// Set once the server shuts down.
    closing: AtomicBool,
    /// The connection task's waker, which a side event wakes.
    task: std::sync::Mutex<Option<Waker>>,
}

impl std::task::Wake for Side {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before the task is woken: the poll it leads to sees it.
        self.woken.store(true, Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection with its side events, each polled only when its own waker fired.
    ///
    /// `tokio::select!` polls every branch on every wake of the task, and a connection's task
    /// wakes for each request: its shutdown receiver (a lock in `Notify`) and its watchdog's
    /// timer (an `AtomicWaker`) were polled each time, about 2 % of the server's CPU on
    /// `/healthz` (docs/performance.md, "A connection's side events, and histograms in
    /// shards"). Here the side events get a waker of their own ([`Side`]), and a request
    /// costs one relaxed load for them.
    struct Supervised<C, E> {
        #[pin]
        conn: C,
        #[pin]
        events: E,
        side: Arc<Side>,
        // The side events' waker, made once.
        side_waker: Waker,
        // The task waker last handed to `side`.
        task: Option<Waker>,
        closing: bool,
    }
}

impl<C: Graceful, E: Future<Output = ()>> Supervised<C, E> {
    fn new(conn: C, events: E, side: Arc<Side>) -> Self {
        // The first poll polls the side events (they register their wakers then).
        side.woken.store(true, Relaxed);
        Self {
            conn,
            events,
            side_waker: Waker::from(Arc::clone(&side)),
            side,
            task: None,
            closing: false,
        }
    }
}

impl<C: Graceful, E: Future<Output = ()>> Future for Supervised<C, E> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // First poll, or the future moved to another task (a spawned task's waker never
            // changes): side events wake this one from now on, and are looked at now in case
            // one woke the old one.
            *this
                .side
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx.waker().clone());
            *this.task = Some(cx.waker().clone());
            this.side.woken.store(true, Relaxed);
        }
        // A plain load first: the swap (a locked instruction) only when it is set.
        if this.side.woken.load(Relaxed) && this.side.woken.swap(false, Acquire) {
            if this
                .events
                .poll(&mut Context::from_waker(this.side_waker))
                .is_ready()
            {
                // The watchdog expired: the connection is dropped with this future.
                return Poll::Ready(());
            }
            if !*this.closing && this.side.closing.load(Relaxed) {
                *this.closing = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx).map(|_| ())
    }
}

/// How long a shutdown waits for open connections to finish their requests (the systemd unit
/// in `examples/` allows a little more before it kills the process).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection's [`Watchdog`] looks at: request heads parsed, requests in flight, and
/// bytes of answers written (a client reading a long answer slowly is not idle).
#[derive(Debug, Default)]
struct Activity {
    heads: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicU32,
    written: std::sync::atomic::AtomicU64,
}

/// The socket, counting the bytes written to it for the [`Watchdog`]. (Bytes read do not
/// count: a slowloris client sends bytes too, just never a whole head.)
#[derive(Debug)]
struct Counted {
    stream: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl Counted {
    fn wrote(&self, r: &std::task::Poll<std::io::Result<usize>>) {
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.activity
                .written
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Closes a connection on which, for the header-read timeout, no request head has completed,
/// no request was in flight and no answer bytes were written: a client sending its head
/// slowly (slowloris), an idle keep-alive connection, a client that stopped reading. It looks every quarter of
/// the timeout and closes after three looks in a row saw nothing new, so a connection is
/// closed between ¾ of the timeout and the timeout after its last request. One timer per
/// connection, none per request.
#[derive(Debug)]
struct Watchdog {
    activity: Arc<Activity>,
    tick: tokio::time::Interval,
    last: (u64, u64),
    quiet: u8,
}

impl Watchdog {
    fn new(activity: Arc<Activity>, timeout: Duration) -> Self {
        let period = timeout / 4;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            activity,
            tick,
            last: (0, 0),
            quiet: 0,
        }
    }

    /// Resolves when the connection has been quiet for the timeout.
    async fn expired(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            self.tick.tick().await;
            let now = (
                self.activity.heads.load(Relaxed),
                self.activity.written.load(Relaxed),
            );
            if now != self.last || self.activity.in_flight.load(Relaxed) > 0 {
                self.last = now;
                self.quiet = 0;
            } else {
                self.quiet += 1;
                if self.quiet >= 3 {
                    return;
                }
            }
        }
    }
}

/// A request in flight, for the [`Watchdog`]: counted from its head to its answer.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        activity.heads.fetch_add(1, Relaxed);
        activity.in_flight.fetch_add(1, Relaxed);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The app's answer to one request, with its [`InFlight`] mark (dropped with it).
    struct Answer<F> {
        #[pin]
        inner: F,
        _in_flight: InFlight,
    }
}

impl<F: Future> Future for Answer<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

/// One accepted connection's hyper service: the app, told the peer's address.
///
/// The connection keeps its own copy of the app and calls it in place (`RefCell`: hyper
/// calls a connection's service from that connection's task only, one call at a time, and the
/// call returns before the request runs). The usual way, a clone of the app per request for
/// `oneshot`, incremented and decremented the reference counts of every layer's shared state
/// (the app state, the session manager, the router), counters both worker threads write, on
/// every request (docs/performance.md, "The app called in place").
#[derive(Debug)]
struct Connection<S> {
    app: std::cell::RefCell<S>,
    remote: SocketAddr,
    /// How long a request body may take to arrive, from its head (see [`BodyDeadline`]).
    body_timeout: Duration,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Connection<S>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Answer<InPlace<S>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        // Bodiless requests (every GET: verification, forward auth) skip the deadline's timer.
        let timeout = self.body_timeout;
        let mut req = req.map(|body| {
            if hyper::body::Body::is_end_stream(&body) {
                axum::body::Body::new(body)
            } else {
                axum::body::Body::new(BodyDeadline {
                    inner: body,
                    deadline: tokio::time::sleep(timeout),
                })
            }
        });
        req.extensions_mut().insert(ConnectInfo(self.remote));
        if req.version() == hyper::Version::HTTP_2 {
            host_from_authority(&mut req);
        }
        // Every service of the app is always ready (the router, and layers that only pass
        // readiness on); should one ever not be, the request takes the usual way (a clone,
        // driven to readiness by `oneshot`) rather than being called unready.
        let mut app = self.app.borrow_mut();
        let inner = match app.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => InPlace::Called {
                inner: app.call(req),
            },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => InPlace::Waiting {
                inner: app.clone().oneshot(req),
            },
        };
        Answer {
            inner,
            _in_flight: in_flight,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's call of the app: called in place (the usual case), or through a clone
    /// driven to readiness first (see [`Connection`]).
    #[project = InPlaceProj]
    enum InPlace<S: tower::Service<axum::extract::Request>> {
        Called { #[pin] inner: S::Future },
        Waiting { #[pin] inner: tower::util::Oneshot<S, axum::extract::Request> },
    }
}

impl<S> Future for InPlace<S>
where
    S: tower::Service<axum::extract::Request>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            InPlaceProj::Called { inner } => inner.poll(cx),
            InPlaceProj::Waiting { inner } => inner.poll(cx),
        }
    }
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, which hyper puts in the URI, not
/// in a `Host` header; everything above (the CSRF check's same-host origin, redirects, forward
/// auth's own host) reads `Host`. So an HTTP/2 request without one gets one made from its
/// authority (as HTTP/1.1 would have sent it; userinfo, forbidden in `:authority`, dropped).
/// A request that sends both keeps its own `Host`: RFC 9113 §8.3.1 requires them to agree.
fn host_from_authority(req: &mut axum::extract::Request) {
    if req.headers().contains_key(axum::http::header::HOST) {
        return;
    }
    let Some(authority) = req.uri().authority() else {
        return;
    };
    let host = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h);
    if let Ok(value) = axum::http::HeaderValue::from_str(host) {
        req.headers_mut().insert(axum::http::header::HOST, value);
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: called before the listener is bound, a SIGTERM that
/// arrives as soon as the server says it listens (a service manager stopping it at once) is a
/// graceful shutdown, never the default action that kills the process mid-request.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            async fn wait(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = wait(term.as_mut()) => {},
                () = wait(int.as_mut()) => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    }
}

pin_project_lite::pin_project! {
    /// A request body that must arrive in full within a deadline: the header-read timeout
    /// ends "slowloris" heads, and this ends their twin, a body sent a byte at a time (a
    /// handler waiting for it would hold its connection, and a place under the connection cap,
    /// for as long as the client liked). Past the deadline reading fails, and the extractor
    /// answers `400`.
    struct BodyDeadline {
        #[pin]
        inner: hyper::body::Incoming,
        #[pin]
        deadline: tokio::time::Sleep,
    }
}

impl hyper::body::Body for BodyDeadline {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let std::task::Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.poll(cx) {
            std::task::Poll::Ready(()) => {
                std::task::Poll::Ready(Some(Err("the request body did not arrive in time".into())))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn purge_batches_are_tried_again_while_the_store_is_unavailable() {
        use sessiond_core::StoreError;
        let pauses = [Duration::from_millis(100), Duration::from_millis(300)];
        let calls = std::cell::Cell::new(0);
        let failing_first = |fails: u32| {
            let calls = &calls;
            move || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n <= fails {
                        Err(StoreError::Unavailable("database is locked".into()))
                    } else {
                        Ok(n)
                    }
                }
            }
        };
        // Two failures, two pauses: the third try answers.
        assert_eq!(with_retries(&pauses, failing_first(2)).await.unwrap(), 3);
        // One failure too many: the last error comes back, after every pause was taken.
        calls.set(0);
        let started = tokio::time::Instant::now();
        let err = with_retries(&pauses, failing_first(3)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(calls.get(), 3);
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        // Errors that a retry cannot cure are not retried.
        calls.set(0);
        let corrupt = with_retries(&pauses, || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(StoreError::Corrupt("bad row".into())) }
        })
        .await;
        assert!(matches!(corrupt, Err(StoreError::Corrupt(_))));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn sweep_batches_follow_the_time_they_take() {
        let ms = Duration::from_millis;
        // 1,000 sessions in 2 ms: the next batch doubles (not the 10,000 the pace allows).
        assert_eq!(next_sweep_batch(1_000, ms(2)), 2_000);
        // On target: unchanged.
        assert_eq!(next_sweep_batch(4_000, ms(20)), 4_000);
        // Four times too slow: halved, not quartered.
        assert_eq!(next_sweep_batch(4_000, ms(80)), 2_000);
        // 30 ms for 3,000: 2,000.
        assert_eq!(next_sweep_batch(3_000, ms(30)), 2_000);
        // Bounded both ways, and a zero-length timing does not divide by zero.
        assert_eq!(next_sweep_batch(100_000, Duration::ZERO), SWEEP_BATCH_MAX);
        assert_eq!(
            next_sweep_batch(150, Duration::from_secs(5)),
            SWEEP_BATCH_MIN
        );
    }

    #[test]
    fn http2_requests_get_a_host_header_from_their_authority() {
        let req = |uri: &str, host: Option<&str>| {
            let mut b = axum::http::Request::builder()
                .version(hyper::Version::HTTP_2)
                .uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            let mut req = b.body(axum::body::Body::empty()).unwrap();
            host_from_authority(&mut req);
            req.headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_owned())
        };
        assert_eq!(
            req("https://auth.example.com:8443/login", None).as_deref(),
            Some("auth.example.com:8443")
        );
        assert_eq!(
            req("https://u:p@auth.example.com/x", None).as_deref(),
            Some("auth.example.com")
        );
        // A Host the client sent stays; a request without authority gets none.
        assert_eq!(
            req("https://a.example.com/", Some("b.example.com")).as_deref(),
            Some("b.example.com")
        );
        assert_eq!(req("/login", None), None);
    }

    /// A served connection that stays open until asked to finish, counting its polls.
    struct FakeConn {
        polls: Arc<std::sync::atomic::AtomicUsize>,
        finishing: bool,
    }

    impl Future for FakeConn {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Relaxed);
            if self.finishing {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Graceful for FakeConn {
        fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
            self.get_mut().finishing = true;
        }
    }

    fn fake_conn() -> (FakeConn, Arc<std::sync::atomic::AtomicUsize>) {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conn = FakeConn {
            polls: Arc::clone(&polls),
            finishing: false,
        };
        (conn, polls)
    }

    /// The connection is polled on every wake, its side events only when their own waker
    /// fired; a side event that asks the connection to finish gets `graceful_shutdown`.
    #[test]
    fn side_events_are_polled_only_when_they_wake() {
        let (conn, conn_polls) = fake_conn();
        let side = Arc::new(Side::default());
        let side_polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let side_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let events = {
            let (polls, waker) = (Arc::clone(&side_polls), Arc::clone(&side_waker));
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Relaxed);
                *waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
        };
        let mut s = std::pin::pin!(Supervised::new(conn, events, Arc::clone(&side)));
        // A waker of our own: clones of `Waker::noop()` need not `will_wake` each other, as a
        // task's do.
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: Arc<Self>) {}
        }
        let task = Waker::from(Arc::new(Task));
        let mut cx = Context::from_waker(&task);
        for _ in 0..50 {
            assert!(s.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(conn_polls.load(Relaxed), 50);
        assert_eq!(
            side_polls.load(Relaxed),
            1,
            "the side events: polled once, at first"
        );

        // Their waker fires: they are polled at the next wake, once.
        side_waker.lock().unwrap().as_ref().unwrap().wake_by_ref();
        assert!(s.as_mut().poll(&mut cx).is_pending());
        assert!(s.as_mut().poll(&mut cx).is_pending());
        assert_eq!(side_polls.load(Relaxed), 2);
        assert_eq!(conn_polls.load(Relaxed), 52);

        // The shutdown: the connection is asked to finish, and here finishes.
        side.closing.store(true, Relaxed);
        side_waker.lock().unwrap().as_ref().unwrap().wake_by_ref();
        assert!(s.as_mut().poll(&mut cx).is_ready());
        assert_eq!(side_polls.load(Relaxed), 3);
    }

    /// A connection calls its app in place: no clone of it per request. An app that is not
    /// ready still gets the request, through a clone driven to readiness first.
    #[tokio::test]
    async fn the_app_is_called_in_place_and_an_unready_app_still_answers() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        /// Counts its clones; says "not yet" (and wakes the caller) `unready` more times.
        #[derive(Debug)]
        struct App {
            clones: Arc<std::sync::atomic::AtomicUsize>,
            unready: Arc<std::sync::atomic::AtomicUsize>,
            called: Arc<std::sync::atomic::AtomicUsize>,
        }
        impl Clone for App {
            fn clone(&self) -> Self {
                self.clones.fetch_add(1, Relaxed);
                Self {
                    clones: Arc::clone(&self.clones),
                    unready: Arc::clone(&self.unready),
                    called: Arc::clone(&self.called),
                }
            }
        }
        impl tower::Service<axum::extract::Request> for App {
            type Response = axum::response::Response;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                let left = self.unready.load(Relaxed);
                if left > 0 {
                    self.unready.store(left - 1, Relaxed);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _: axum::extract::Request) -> Self::Future {
                self.called.fetch_add(1, Relaxed);
                std::future::ready(Ok("ok".into_response()))
            }
        }

        let counter = || Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = App {
            clones: counter(),
            unready: counter(),
            called: counter(),
        };
        let (clones, unready, called) = (
            Arc::clone(&app.clones),
            Arc::clone(&app.unready),
            Arc::clone(&app.called),
        );
        let activity = Arc::new(Activity::default());
        let service = Connection {
            app: std::cell::RefCell::new(app),
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            body_timeout: Duration::from_secs(5),
            activity,
        };
        let (mut client, server) = tokio::io::duplex(4096);
        let conn = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service),
        );
        let mut ask = async |n: usize| {
            let before = called.load(Relaxed);
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\nok") {
                let k = client.read(&mut buf).await.unwrap();
                assert!(k > 0, "the connection closed before answering request {n}");
                got.extend_from_slice(&buf[..k]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200 OK"), "request {n}");
            assert_eq!(called.load(Relaxed), before + 1, "request {n}");
        };
        for n in 1..=3 {
            ask(n).await;
        }
        assert_eq!(clones.load(Relaxed), 0, "no clone of the app per request");
        // Not ready twice: this request goes to a clone, which `oneshot` polls until ready.
        unready.store(2, Relaxed);
        ask(4).await;
        assert_eq!(clones.load(Relaxed), 1);
        assert_eq!(unready.load(Relaxed), 0);
        // Ready again: in place again.
        ask(5).await;
        assert_eq!(clones.load(Relaxed), 1);
        drop(client);
        conn.await.unwrap().unwrap();
    }

    /// The task is woken by a side event (the server's shutdown), though it is its own
    /// waker that they hold: a waiting connection finishes.
    #[tokio::test]
    async fn a_shutdown_reaches_a_waiting_connection() {
        let (conn, _) = fake_conn();
        let (close_tx, close_rx) = watch::channel(());
        let activity = Arc::new(Activity::default());
        let watchdog = Watchdog::new(activity, Duration::from_secs(3600));
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let task = tokio::spawn(drive(conn, close_rx, watchdog, permit));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished());
        close_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the connection finished on the shutdown")
            .unwrap();
    }

    /// A connection that shows no activity is dropped by its watchdog after three quiet
    /// quarters of the timeout, though nothing but the watchdog's timer wakes its task.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_dropped_by_its_watchdog() {
        let (conn, conn_polls) = fake_conn();
        let (_close_tx, close_rx) = watch::channel(());
        let activity = Arc::new(Activity::default());
        let watchdog = Watchdog::new(Arc::clone(&activity), Duration::from_secs(4));
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let started = tokio::time::Instant::now();
        drive(conn, close_rx, watchdog, permit).await;
        // Ticks every second from 1 s; quiet at each (nothing since the start): the third.
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // Polled at first, then once for each tick's wake.
        assert!(conn_polls.load(Relaxed) <= 5, "{conn_polls:?}");
    }
}
