//! Configuration: defaults < TOML file < `SESSIOND_*` environment < command-line flags.
//!
//! Raw inputs ([`FileConfig`], [`Overrides`]) are turned into a validated [`Config`] in one
//! place, [`Config::resolve`]; nothing else reads files or the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use sessiond_axum::auth::EncryptionKey;
use sessiond_axum::csrf::Origins;
use sessiond_axum::redirect::host_is_ours;
use sessiond_axum::{CookieConfig, SameSite};
use sessiond_core::ExpiryPolicy;
use url::Url;

pub(crate) mod access;

use crate::stores::StoreUrl;
use access::AccessRules;

/// A configuration error: the message names the key and says what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The TOML file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// Where `GET /metrics` is served (a listener of its own; off unless set).
    pub metrics_listen: Option<String>,
    pub database: Option<String>,
    pub session_store: Option<String>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub session: FileSession,
    #[serde(default)]
    pub cookie: FileCookie,
    #[serde(default)]
    pub proxy: FileProxy,
    #[serde(default)]
    pub access: FileAccess,
    #[serde(default)]
    pub hashing: FileHashing,
    /// Origins besides the public URL's that may send unsafe requests (CSRF check).
    pub trusted_origins: Option<Vec<String>>,
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub two_factor: FileTwoFactor,
    #[serde(default)]
    pub tls: FileTls,
}

/// `[tls]`: HTTPS on the listener (docs/deployment.md, "TLS").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// The certificate chain, PEM, leaf first.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, RSA or EC).
    pub key: Option<PathBuf>,
}

/// `[two_factor]`: second factors (docs/reference/second-factor.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTwoFactor {
    /// A file holding the key that encrypts TOTP secrets (base64 or hex, 32 bytes).
    pub encryption_key_file: Option<PathBuf>,
    /// `"off"`, `"admins"` or `"all"`: who must enrol a second factor.
    pub required: Option<String>,
    /// The issuer name authenticator apps show (default: `sessiond`).
    pub issuer: Option<String>,
}

/// `[server]`: connection limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub header_read_timeout: Option<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHashing {
    pub worker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSession {
    pub idle_timeout: Option<String>,
    pub absolute_timeout: Option<String>,
    pub remember_me_timeout: Option<String>,
    pub sweep_interval: Option<String>,
    /// Sessions one user may hold at once (`0`: no cap); a login beyond it ends the oldest.
    pub max_per_user: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCookie {
    pub name: Option<String>,
    pub domain: Option<String>,
    pub secure: Option<bool>,
    pub same_site: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxy {
    pub trusted: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccess {
    #[serde(default)]
    pub rules: Vec<toml::Table>,
}

/// Values from the environment or flags (flags win; clap merges the two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    /// `SESSIOND_METRICS_LISTEN` / `--metrics-listen`.
    pub metrics_listen: Option<String>,
    pub database: Option<String>,
    pub session_store: Option<String>,
    pub public_url: Option<String>,
    pub idle_timeout: Option<String>,
    pub absolute_timeout: Option<String>,
    pub remember_me_timeout: Option<String>,
    pub sweep_interval: Option<String>,
    pub hash_worker: Option<String>,
    pub admin_password: Option<String>,
    /// Comma-separated (`SESSIOND_TRUSTED_ORIGINS`); replaces the file's list.
    pub trusted_origins: Option<String>,
    /// The key that encrypts second-factor secrets (`SESSIOND_ENCRYPTION_KEY`); wins over
    /// `two_factor.encryption_key_file`.
    pub encryption_key: Option<String>,
    /// `SESSIOND_ENCRYPTION_KEY_FILE` / `--encryption-key-file`.
    pub encryption_key_file: Option<PathBuf>,
    /// `SESSIOND_TLS_CERT` / `--tls-cert`: wins over `tls.cert`.
    pub tls_cert: Option<PathBuf>,
    /// `SESSIOND_TLS_KEY` / `--tls-key`: wins over `tls.key`.
    pub tls_key: Option<PathBuf>,
}

/// The validated configuration. Its `Debug` output is safe to log: store URLs show no
/// password and the admin password shows as `***`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The metrics listener (`metrics_listen`): Prometheus metrics on an address of their
    /// own, never on the public listener; `None`: no metrics served.
    pub metrics_listen: Option<SocketAddr>,
    pub(crate) database: StoreUrl,
    pub(crate) session_store: StoreUrl,
    pub public_url: Url,
    pub policy: ExpiryPolicy,
    /// How often the server deletes expired sessions; `None`: never (left to
    /// `sessiond session purge`, e.g. from cron).
    pub sweep_interval: Option<Duration>,
    pub cookie: CookieConfig,
    /// The login form's CSRF cookie: same attributes as the session cookie, but always
    /// host-only (it never needs to reach other subdomains).
    pub csrf_cookie: CookieConfig,
    /// The device cookie of the login throttling (OWASP's device-cookie scheme): host-only,
    /// long-lived, marks a browser that has logged in to an account before.
    pub device_cookie: CookieConfig,
    /// Peers whose `X-Forwarded-*` / `X-Original-*` headers are believed
    /// (docs/reference/security.md, "Proxies and the client address").
    pub trusted_proxies: Vec<IpNet>,
    /// Forward-auth access rules.
    pub access: AccessRules,
    /// Password for the first `admin` user, when the user table is empty at start.
    pub admin_password: Option<Secret>,
    /// Where the server hashes passwords.
    pub hash_worker: HashWorker,
    /// Origins (`scheme://host[:port]`, as browsers send them in `Origin`) besides the public
    /// URL's whose unsafe requests pass the CSRF check (`trusted_origins`).
    pub trusted_origins: Vec<String>,
    /// Limits on client connections (`[server]`).
    pub connections: ConnectionLimits,
    /// `[session] max_per_user`: sessions one user may hold at once (`None`: no cap). A
    /// login beyond it ends that user's oldest sessions.
    pub max_sessions_per_user: Option<usize>,
    /// Second factors (`[two_factor]`).
    pub two_factor: TwoFactor,
    /// `[tls]`: the listener speaks HTTPS with this pair (`None`: plain HTTP, e.g. behind a
    /// proxy that terminates TLS).
    pub tls: Option<TlsFiles>,
}

/// `[tls]`, validated: both files were read and hold a certificate chain and its key. The
/// server reads them again at start and on every SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// `[two_factor]`, validated. Its `Debug` never shows the key.
#[derive(Debug, Clone)]
pub struct TwoFactor {
    /// Where the key that encrypts TOTP secrets comes from.
    pub(crate) key: KeySource,
    /// Who must enrol a second factor.
    pub required: Required,
    /// The issuer name authenticator apps show.
    pub issuer: String,
}

/// Where the encryption key of second-factor secrets comes from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// `SESSIOND_ENCRYPTION_KEY`, or a key file that was read (its `Debug` is redacted).
    Given(EncryptionKey),
    /// Neither set, SQLite: the key file beside the database, created `0600` on first start
    /// (`EncryptionKey::load_or_create`, when the state is built: reading a configuration
    /// never creates files).
    BesideDatabase(PathBuf),
    /// Neither set, PostgreSQL: second factors are off (a warning at start; the 2FA
    /// endpoints answer `second_factor_unavailable`).
    Missing,
}

/// `two_factor.required`: whose one-factor sessions are limited to enrolling a second factor
/// until they have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// Nobody must (default).
    Off,
    /// Users with the admin flag.
    Admins,
    /// Every user.
    All,
}

impl Required {
    /// Whether a user (admin or not) must have a second factor.
    pub fn applies_to(self, admin: bool) -> bool {
        match self {
            Self::Off => false,
            Self::Admins => admin,
            Self::All => true,
        }
    }
}

/// A secret from the configuration (the first admin's password): `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Limits on client connections: a client that sends its request head slowly,
/// or holds a connection idle, or opens many, cannot exhaust the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection on which, for this long, no request head has arrived in full, no request
    /// was in flight and no answer bytes were written is closed (`server::serve`): a slow head,
    /// an idle keep-alive connection, a client that stopped reading. A request body must
    /// arrive within this long of its head too.
    pub header_read_timeout: Duration,
    /// Open connections at most; one more is answered `503 overloaded` and closed.
    pub max_connections: usize,
}

/// Default `server.header_read_timeout`.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.max_connections` ceiling (lower when the descriptor limit is lower).
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The default connection cap: 10,000, or three quarters of the process's file descriptor
/// limit less a reserve for stores, logs and the hashing worker, whichever is lower; so the
/// cap is reached (and answered `503`) before `accept` fails for lack of descriptors.
pub(crate) fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let usable = soft.saturating_sub(128).saturating_mul(3) / 4;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(16, DEFAULT_MAX_CONNECTIONS)
}

/// Where `sessiond serve` runs password hashing (`hashing.worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashWorker {
    /// A worker process when a store server runs on this host, else threads.
    Auto,
    /// A worker process of its own scheduling group (Linux; threads where it cannot start).
    Process,
    /// Threads of the server process.
    Threads,
}

impl HashWorker {
    /// Whether this configuration asks for a worker process.
    pub fn wants_process(self, config: &Config) -> bool {
        match self {
            Self::Process => true,
            Self::Threads => false,
            Self::Auto => {
                // A PostgreSQL or Redis server on this host is a process outside sessiond's
                // scheduling group that verification and login wait on (`password::worker`).
                config.database.server_on_this_host() || config.session_store.server_on_this_host()
            }
        }
    }
}

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7444";
pub(crate) const DEFAULT_DATABASE: &str = "sqlite://sessiond.db";
/// `[session] max_per_user` unless configured.
pub(crate) const DEFAULT_MAX_SESSIONS_PER_USER: usize = 100;
/// How often a running server deletes expired sessions, unless configured.
pub(crate) const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl Config {
    /// Reads `file` (if any) and applies `over` on top.
    pub fn load(file: Option<&PathBuf>, over: Overrides) -> Result<Self, ConfigError> {
        let file_cfg = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .or_else(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
                toml::from_str(&text)
                    .or_else(|e| err(format!("config file {}: {}", path.display(), e.message())))?
            }
        };
        Self::resolve(file_cfg, over)
    }

    pub fn resolve(f: FileConfig, o: Overrides) -> Result<Self, ConfigError> {
        let listen_text = o
            .listen
            .or(f.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().or_else(|_| {
            err(format!(
                "listen: {listen_text:?} is not an address like 127.0.0.1:7444"
            ))
        })?;
        let tls = tls_files(f.tls, o.tls_cert, o.tls_key)?;

        let metrics_listen = match o.metrics_listen.or(f.metrics_listen) {
            None => None,
            Some(text) if text.is_empty() || text == "off" => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().or_else(|_| {
                    err(format!(
                        "metrics_listen: {text:?} is not an address like 127.0.0.1:9959"
                    ))
                })?;
                if addr == listen {
                    return err(format!(
                        "metrics_listen: {addr} is the public listener's address; metrics need \
                         one of their own (the public listener never serves them)"
                    ));
                }
                Some(addr)
            }
        };

        let database = o
            .database
            .or(f.database)
            .unwrap_or_else(|| DEFAULT_DATABASE.into());
        let database = match StoreUrl::parse(&database) {
            Ok(url @ (StoreUrl::Sqlite { .. } | StoreUrl::Postgres(_))) => url,
            Ok(url) => {
                return err(format!(
                    "database: must be sqlite://PATH or postgres://… (got {})",
                    url.redacted()
                ))
            }
            Err(e) => return err(format!("database: {e}")),
        };
        let session_store = match o.session_store.or(f.session_store) {
            None => database.clone(),
            Some(text) => match StoreUrl::parse(&text) {
                Ok(url) if url == database || matches!(url, StoreUrl::Redis(_)) => url,
                Ok(url) => {
                    return err(format!(
                        "session_store: must be the database URL or a redis://, rediss://, \
                         redis+sentinel://, redis+cluster:// or rediss+cluster:// URL (got {})",
                        url.redacted()
                    ))
                }
                Err(e) => return err(format!("session_store: {e}")),
            },
        };

        let public_url = match o.public_url.or(f.public_url) {
            Some(u) => {
                let url = Url::parse(&u).or_else(|e| err(format!("public_url: {u:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return err(format!("public_url: {u:?} must be an http:// or https:// URL with a host"));
                }
                if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                    return err(format!("public_url: {u:?} must be an origin (no path, query or fragment)"));
                }
                url
            }
            None if listen.ip().is_unspecified() => {
                return err(format!(
                    "public_url is required when listening on {listen} (browsers must be sent to a real host)"
                ))
            }
            None => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                Url::parse(&format!("{scheme}://{listen}")).or_else(|e| err(format!("listen: {e}")))?
            }
        };

        let duration =
            |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => {
                        let d = humantime::parse_duration(s.trim()).or_else(|e| {
                            err(format!(
                                "{key}: {s:?} is not a duration like 30m or 12h: {e}"
                            ))
                        })?;
                        if d < Duration::from_secs(1) {
                            return err(format!("{key}: {s:?} must be at least 1s"));
                        }
                        Ok(d)
                    }
                }
            };
        let defaults = ExpiryPolicy::default();
        let policy = ExpiryPolicy {
            idle: duration(
                "idle_timeout",
                o.idle_timeout.or(f.session.idle_timeout),
                defaults.idle,
            )?,
            absolute: duration(
                "absolute_timeout",
                o.absolute_timeout.or(f.session.absolute_timeout),
                defaults.absolute,
            )?,
            remember: duration(
                "remember_me_timeout",
                o.remember_me_timeout.or(f.session.remember_me_timeout),
                defaults.remember,
            )?,
        };

        let sweep_interval = match o.sweep_interval.or(f.session.sweep_interval) {
            Some(s) if s.trim().eq_ignore_ascii_case("off") => None,
            s => Some(duration("sweep_interval", s, DEFAULT_SWEEP_INTERVAL)?),
        };

        // Bounded by default: without a cap one account could grow its sessions (and every
        // list, page and revoke-all over them) without limit.
        let max_sessions_per_user = match f.session.max_per_user {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(DEFAULT_MAX_SESSIONS_PER_USER),
        };

        let hash_worker = match o.hash_worker.or(f.hashing.worker).as_deref().map(str::trim) {
            None | Some("auto") => HashWorker::Auto,
            Some("process") => HashWorker::Process,
            Some("threads") => HashWorker::Threads,
            Some(other) => {
                return err(format!(
                    "hashing.worker: {other:?} must be \"auto\", \"process\" or \"threads\""
                ))
            }
        };

        let base = f.cookie.name.unwrap_or_else(|| "sessiond".into());
        if base.is_empty()
            || !base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return err(format!(
                "cookie.name: {base:?} must be letters, digits, '_' or '-'"
            ));
        }
        let secure = f.cookie.secure.unwrap_or(true);
        let domain = match f.cookie.domain {
            None => None,
            Some(d) => {
                let d = d.trim_start_matches('.').to_ascii_lowercase();
                if d.is_empty()
                    || !d.contains('.')
                    || !d
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                {
                    return err(format!(
                        "cookie.domain: {d:?} must be a domain name such as example.com"
                    ));
                }
                Some(d)
            }
        };
        let same_site = match f
            .cookie
            .same_site
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("lax") => SameSite::Lax,
            Some("strict") => SameSite::Strict,
            Some(other) => {
                return err(format!(
                    "cookie.same_site: {other:?} must be \"lax\" or \"strict\""
                ))
            }
        };
        let cookie = CookieConfig::new(&base, secure, domain.clone(), same_site);
        let csrf_cookie = CookieConfig::new(&format!("{base}_csrf"), secure, None, same_site);
        let device_cookie = CookieConfig::new(&format!("{base}_device"), secure, None, same_site);

        let trusted_proxies = match f.proxy.trusted {
            None => vec![
                "127.0.0.0/8".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
            Some(list) => list
                .iter()
                .map(|c| {
                    c.parse::<IpNet>()
                        .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            ConfigError(format!(
                                "proxy.trusted: {c:?} is not a CIDR such as 10.0.0.0/8"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let access = AccessRules::parse(&f.access.rules).map_err(ConfigError)?;

        let trusted_origins = match o.trusted_origins {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(origin)
                .collect::<Result<Vec<_>, _>>()?,
            None => f
                .trusted_origins
                .unwrap_or_default()
                .iter()
                .map(|s| origin(s.trim()))
                .collect::<Result<Vec<_>, _>>()?,
        };

        let header_read_timeout = duration(
            "server.header_read_timeout",
            f.server.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
        )?;
        if header_read_timeout > Duration::from_secs(300) {
            return err("server.header_read_timeout: must be at most 5m");
        }
        let max_connections = match f.server.max_connections {
            None => default_max_connections(),
            Some(0) => return err("server.max_connections: must be at least 1"),
            Some(n) => n,
        };
        let connections = ConnectionLimits {
            header_read_timeout,
            max_connections,
        };

        let two_factor = two_factor(
            f.two_factor,
            o.encryption_key,
            o.encryption_key_file,
            &database,
        )?;

        Ok(Self {
            listen,
            metrics_listen,
            database,
            session_store,
            public_url,
            policy,
            sweep_interval,
            cookie,
            csrf_cookie,
            device_cookie,
            trusted_proxies,
            access,
            admin_password: o.admin_password.filter(|p| !p.is_empty()).map(Secret),
            hash_worker,
            max_sessions_per_user,
            trusted_origins,
            connections,
            two_factor,
            tls,
        })
    }

    /// Whether `peer` is a configured proxy.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    /// Whether the session cookie can belong to `host` (lowercase, no port): the public URL's
    /// host, or a host under the cookie domain.
    pub fn host_is_ours(&self, host: &str) -> bool {
        host_is_ours(host, &self.public_url, self.cookie.domain())
    }

    /// `scheme://host[:port]` of the public URL, as browsers send it in `Origin`.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }
}

/// `[tls]` with its overrides: both files or neither, and they must load now (a typo in a path
/// is a configuration error at start, not a server that comes up without its certificate).
fn tls_files(
    f: FileTls,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert.or(f.cert), key.or(f.key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            crate::tls::load(&cert, &key).map_err(ConfigError)?;
            Ok(Some(TlsFiles { cert, key }))
        }
        (Some(_), None) => err("tls.key: required with tls.cert"),
        (None, Some(_)) => err("tls.cert: required with tls.key"),
    }
}

/// `[two_factor]` with the key's overrides. A key given in the environment must parse, and a
/// key file named in the configuration must be readable and hold a key: either is a
/// configuration error at start, never a server that runs without its second factors.
fn two_factor(
    f: FileTwoFactor,
    env_key: Option<String>,
    key_file: Option<PathBuf>,
    database: &StoreUrl,
) -> Result<TwoFactor, ConfigError> {
    let key = if let Some(text) = env_key {
        KeySource::Given(
            EncryptionKey::parse(&text)
                .or_else(|e| err(format!("SESSIOND_ENCRYPTION_KEY: {e}")))?,
        )
    } else if let Some(path) = key_file.or(f.encryption_key_file) {
        let text = std::fs::read_to_string(&path).or_else(|e| {
            err(format!(
                "two_factor.encryption_key_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        KeySource::Given(EncryptionKey::parse(&text).or_else(|e| {
            err(format!(
                "two_factor.encryption_key_file: {}: {e}",
                path.display()
            ))
        })?)
    } else {
        match database {
            StoreUrl::Sqlite { path, .. } => {
                let mut file = path.clone().into_os_string();
                file.push(".key");
                KeySource::BesideDatabase(file.into())
            }
            _ => KeySource::Missing,
        }
    };
    let required = match f.required.as_deref().map(str::trim) {
        None | Some("off") => Required::Off,
        Some("admins") => Required::Admins,
        Some("all") => Required::All,
        Some(other) => {
            return err(format!(
                "two_factor.required: {other:?} must be \"off\", \"admins\" or \"all\""
            ))
        }
    };
    if required != Required::Off && matches!(key, KeySource::Missing) {
        // Nobody could enrol: every one-factor session would be limited to a dead end.
        return err(
            "two_factor.required needs an encryption key on PostgreSQL: set \
             SESSIOND_ENCRYPTION_KEY or two_factor.encryption_key_file",
        );
    }
    let issuer = f.issuer.unwrap_or_else(|| "sessiond".into());
    let issuer = issuer.trim();
    if issuer.is_empty() || issuer.len() > 64 || issuer.chars().any(char::is_control) {
        return err("two_factor.issuer: must be 1 to 64 characters without control characters");
    }
    Ok(TwoFactor {
        key,
        required,
        issuer: issuer.to_owned(),
    })
}

/// A `trusted_origins` entry as browsers send it in `Origin` (`scheme://host[:port]`, the
/// port left out when it is the scheme's default), by the library's rule of what an origin is
/// (`sessiond_axum::csrf::Origins`, which the CSRF check is then built from).
fn origin(s: &str) -> Result<String, ConfigError> {
    Origins::new(s)
        .map(|o| o.own().to_owned())
        .map_err(|e| ConfigError(format!("trusted_origins: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(file: &str, over: Overrides) -> Result<Config, String> {
        let f: FileConfig = toml::from_str(file).map_err(|e| e.to_string())?;
        Config::resolve(f, over).map_err(|e| e.0)
    }

    #[test]
    fn hash_worker_is_a_process_for_store_servers_on_this_host() {
        let d = Overrides::default();
        let c = check("", d.clone()).unwrap();
        assert_eq!(c.hash_worker, HashWorker::Auto);
        assert!(!c.hash_worker.wants_process(&c), "SQLite: threads");
        let local = check(
            "database = \"postgres://postgres@127.0.0.1:5432/test\"",
            d.clone(),
        )
        .unwrap();
        assert!(local.hash_worker.wants_process(&local));
        let remote = Overrides {
            database: Some("postgres://db.internal/sessiond".into()),
            session_store: Some("redis://[::1]:6379".into()),
            ..Overrides::default()
        };
        let c = check("", remote).unwrap();
        assert!(
            c.hash_worker.wants_process(&c),
            "the Redis session store is local"
        );
        for (url, local) in [
            ("sqlite://sessiond.db", false),
            ("postgres://u:p@localhost/db", true),
            ("postgres://u@LOCALHOST:5433/db", true),
            ("postgres:///db", true),
            ("postgres://u@%2Fvar%2Frun%2Fpostgresql/db", true),
            ("postgres://u@/db?host=/var/run/postgresql", true),
            ("postgres://u@10.0.0.5:5432/db", false),
            ("postgres://u@db.example.com/db", false),
            ("redis://127.0.0.53:6379/0", true),
            ("redis://[::1]:6379", true),
            ("redis://[2001:db8::1]:6379", false),
            (
                "redis+sentinel://10.0.0.1:26379,127.0.0.1:26379/mymaster",
                true,
            ),
            ("redis+cluster://10.0.0.1:7000,10.0.0.2:7000", false),
        ] {
            let url = StoreUrl::parse(url).unwrap();
            assert_eq!(url.server_on_this_host(), local, "{url:?}");
        }
        let forced = check("[hashing]\nworker = \"threads\"", d.clone()).unwrap();
        assert_eq!(forced.hash_worker, HashWorker::Threads);
        let flag = Overrides {
            hash_worker: Some("process".into()),
            ..Overrides::default()
        };
        let c = check("[hashing]\nworker = \"threads\"", flag).unwrap();
        assert!(
            c.hash_worker.wants_process(&c),
            "the flag wins over the file"
        );
        let e = check("[hashing]\nworker = \"gpu\"", d).unwrap_err();
        assert!(e.starts_with("hashing.worker:"), "{e}");
    }

    #[test]
    fn sweep_interval_defaults_to_a_minute_and_can_be_turned_off() {
        let d = Overrides::default();
        assert_eq!(
            check("", d.clone()).unwrap().sweep_interval,
            Some(Duration::from_secs(60))
        );
        let f = "[session]\nsweep_interval = \"5m\"";
        assert_eq!(
            check(f, d.clone()).unwrap().sweep_interval,
            Some(Duration::from_secs(300))
        );
        let off = Overrides {
            sweep_interval: Some("off".into()),
            ..Overrides::default()
        };
        assert_eq!(check(f, off).unwrap().sweep_interval, None);
        for bad in ["0s", "soon"] {
            let e =
                check(&format!("[session]\nsweep_interval = \"{bad}\""), d.clone()).unwrap_err();
            assert!(e.starts_with("sweep_interval:"), "{e}");
        }
    }

    #[test]
    fn defaults() {
        let c = check("", Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7444");
        assert_eq!(c.database.expose(), "sqlite://sessiond.db");
        assert_eq!(c.session_store, c.database);
        assert_eq!(c.public_origin(), "http://127.0.0.1:7444");
        assert_eq!(c.policy, ExpiryPolicy::default());
        assert_eq!(c.cookie.name(), "__Host-sessiond");
        assert_eq!(c.csrf_cookie.name(), "__Host-sessiond_csrf");
    }

    #[test]
    fn layering_file_then_overrides() {
        let file = r#"
            listen = "127.0.0.1:9000"
            public_url = "https://auth.example.com"
            [session]
            idle_timeout = "10m"
            absolute_timeout = "1h"
            [cookie]
            domain = "example.com"
            same_site = "strict"
        "#;
        let c = check(file, Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.policy.idle, Duration::from_secs(600));
        assert_eq!(c.cookie.name(), "__Secure-sessiond");
        let c = check(
            file,
            Overrides {
                idle_timeout: Some("2s".into()),
                listen: Some("127.0.0.1:9001".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.policy.idle, Duration::from_secs(2));
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.policy.absolute, Duration::from_secs(3600));
    }

    #[test]
    fn clear_errors() {
        let cases = [
            ("listen = \"nope\"", "listen"),
            ("[session]\nidle_timeout = \"soon\"", "idle_timeout"),
            ("listen = \"0.0.0.0:80\"", "public_url is required"),
            ("public_url = \"ftp://x\"", "public_url"),
            ("public_url = \"https://x.example/path\"", "origin"),
            ("[cookie]\nsame_site = \"none\"", "same_site"),
            ("database = \"mysql://x\"", "database"),
            ("session_store = \"memcached://x\"", "session_store"),
        ];
        for (file, needle) in cases {
            let e = check(file, Overrides::default()).unwrap_err();
            assert!(e.contains(needle), "{file:?}: {e}");
        }
        assert!(check("bogus = 1", Overrides::default())
            .unwrap_err()
            .contains("bogus"));
    }

    #[test]
    fn trusted_proxies_default_to_loopback() {
        let c = check("", Overrides::default()).unwrap();
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(c.is_trusted_proxy(ip.parse().unwrap()), "{ip}");
        }
        assert!(!c.is_trusted_proxy("10.0.0.1".parse().unwrap()));
        let c = check(
            "[proxy]\ntrusted = [\"10.0.0.0/8\", \"192.0.2.1\"]",
            Overrides::default(),
        )
        .unwrap();
        assert!(c.is_trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(c.is_trusted_proxy("192.0.2.1".parse().unwrap()));
        assert!(
            !c.is_trusted_proxy("127.0.0.1".parse().unwrap()),
            "a list replaces the default"
        );
    }

    #[test]
    fn hosts_the_cookie_can_belong_to() {
        let c = check(
            "public_url = \"https://auth.example.com\"\n[cookie]\ndomain = \"example.com\"",
            Overrides::default(),
        )
        .unwrap();
        for (host, ours) in [
            ("auth.example.com", true),
            ("app.example.com", true),
            ("example.com", true),
            ("a.b.example.com", true),
            ("evilexample.com", false),
            ("example.com.evil.net", false),
        ] {
            assert_eq!(c.host_is_ours(host), ours, "{host}");
        }
        let c = check(
            "public_url = \"https://auth.example.com\"",
            Overrides::default(),
        )
        .unwrap();
        assert!(c.host_is_ours("auth.example.com"));
        assert!(!c.host_is_ours("app.example.com"));
    }

    #[test]
    fn debug_output_shows_no_secrets() {
        let over = Overrides {
            database: Some("postgres://sessiond:pg-hunter2@db.internal:5432/sessiond".into()),
            session_store: Some("redis://:redis-s3cret@redis.internal:6379/0".into()),
            admin_password: Some("first admin pw".into()),
            ..Overrides::default()
        };
        let c = check("", over).unwrap();
        let shown = format!("{c:?}");
        for secret in ["pg-hunter2", "redis-s3cret", "first admin pw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://sessiond:***@db.internal:5432/sessiond"),
            "{shown}"
        );
        assert!(shown.contains("admin_password: Some(***)"), "{shown}");
        // The code that connects still gets the real URL.
        assert!(c.database.expose().contains("pg-hunter2"));
        assert_eq!(c.admin_password.unwrap().expose(), "first admin pw");
    }

    #[test]
    fn trusted_origins_and_connection_limits() {
        let c = check("", Overrides::default()).unwrap();
        assert!(c.trusted_origins.is_empty());
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(10));
        assert!(c.connections.max_connections >= 16);
        let c = check(
            "trusted_origins = [\"https://App.Example.com:443\", \"http://dev.example.com:8080\"]\n\
             [server]\nheader_read_timeout = \"3s\"\nmax_connections = 50",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.trusted_origins,
            ["https://app.example.com", "http://dev.example.com:8080"]
        );
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.connections.max_connections, 50);
        let env = Overrides {
            trusted_origins: Some("https://a.example.com, https://b.example.com".into()),
            ..Overrides::default()
        };
        let c = check("trusted_origins = [\"https://c.example.com\"]", env).unwrap();
        assert_eq!(
            c.trusted_origins,
            ["https://a.example.com", "https://b.example.com"]
        );
        for (file, needle) in [
            (
                "trusted_origins = [\"https://a.example.com/path\"]",
                "trusted_origins",
            ),
            ("trusted_origins = [\"*.example.com\"]", "trusted_origins"),
            (
                "trusted_origins = [\"https://*.example.com\"]",
                "trusted_origins",
            ),
            ("trusted_origins = [\"null\"]", "trusted_origins"),
            ("[server]\nmax_connections = 0", "max_connections"),
            (
                "[server]\nheader_read_timeout = \"1h\"",
                "header_read_timeout",
            ),
        ] {
            let e = check(file, Overrides::default()).unwrap_err();
            assert!(e.contains(needle), "{file:?}: {e}");
        }
    }

    #[test]
    fn two_factor_key_sources_and_policy() {
        let d = Overrides::default();
        let c = check("database = \"sqlite:///var/lib/sessiond/s.db\"", d.clone()).unwrap();
        match &c.two_factor.key {
            KeySource::BesideDatabase(p) => {
                assert_eq!(p, &PathBuf::from("/var/lib/sessiond/s.db.key"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.two_factor.required, Required::Off);
        assert_eq!(c.two_factor.issuer, "sessiond");
        let pg = "database = \"postgres://u@db.internal/s\"";
        assert!(matches!(
            check(pg, d.clone()).unwrap().two_factor.key,
            KeySource::Missing
        ));
        let e = check(
            &format!("{pg}\n[two_factor]\nrequired = \"all\""),
            d.clone(),
        )
        .unwrap_err();
        assert!(
            e.contains("two_factor.required needs an encryption key"),
            "{e}"
        );

        let key = EncryptionKey::generate().to_text();
        let env = Overrides {
            encryption_key: Some(key.clone()),
            ..Overrides::default()
        };
        let c = check(
            &format!("{pg}\n[two_factor]\nrequired = \"admins\"\nissuer = \"Example\""),
            env,
        )
        .unwrap();
        assert!(matches!(c.two_factor.key, KeySource::Given(_)));
        assert!(c.two_factor.required.applies_to(true));
        assert!(!c.two_factor.required.applies_to(false));
        assert_eq!(c.two_factor.issuer, "Example");
        let shown = format!("{c:?}");
        assert!(!shown.contains(&key), "the key in {shown}");

        let bad = Overrides {
            encryption_key: Some("too short".into()),
            ..Overrides::default()
        };
        let e = check("", bad).unwrap_err();
        assert!(e.starts_with("SESSIOND_ENCRYPTION_KEY:"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, format!("{key}\n")).unwrap();
        let c = check(
            &format!(
                "[two_factor]\nencryption_key_file = {:?}",
                good.display().to_string()
            ),
            d.clone(),
        )
        .unwrap();
        assert!(matches!(c.two_factor.key, KeySource::Given(_)));
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "not a key").unwrap();
        let missing = dir.path().join("missing.key");
        for path in [junk, missing] {
            let file = format!(
                "[two_factor]\nencryption_key_file = {:?}",
                path.display().to_string()
            );
            let e = check(&file, d.clone()).unwrap_err();
            assert!(e.starts_with("two_factor.encryption_key_file:"), "{e}");
        }
        for bad in [
            "[two_factor]\nrequired = \"some\"",
            "[two_factor]\nissuer = \"\"",
        ] {
            let e = check(bad, d.clone()).unwrap_err();
            assert!(e.contains("two_factor."), "{bad}: {e}");
        }
    }

    #[test]
    fn insecure_cookie_drops_the_prefix() {
        let c = check("[cookie]\nsecure = false", Overrides::default()).unwrap();
        assert_eq!(c.cookie.name(), "sessiond");
        assert!(!c.cookie.secure());
    }
}
