//! # sessiond-store-redis
//!
//! Sessions in Redis (standalone, Sentinel or Cluster), shared by any number of `sessiond`
//! instances. Users stay in the database; this store implements [`SessionStore`] only.
//!
//! ## Keys
//!
//! Every key of one deployment carries the same hash tag, `{prefix}`:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}:s:<k>` | string | one session in the compact format (below), keyed by `k`, the 16 bytes of [`SessionId::bytes_for_hash`] of its hash, which its public id also encodes; TTL to its deadline |
//! | `{p}:i:<id>` | string | public id → `k`, only for a session whose id is not the one derived from its hash (made by an older sessiond, or by a caller with an id of its own: none of a login's); the session's TTL |
//! | `{p}:u:<user>` | sorted set | the user's sessions' `k`, scored by creation time; trimmed of sessions Redis dropped by TTL (up to 64 per new session) |
//! | `{p}:exp` | sorted set | every session's `k`, scored by its deadline, for bounded sweeps and the active count; also the routing key of scripts that span the deployment |
//! | `{p}:gen` | string | the generation: incremented by every script that removes a session (verification caches read it at each heartbeat) |
//! | `{p}:changes` | pub/sub channel | the new generation, published by every script that moved it, once at its end ([`SessionStore::subscribe`]) |
//! | `{p}:t:<key>` | hash | a throttle counter (`c` count, `l` latest, `e` window end), with a TTL to its window's end |
//! | `{p}:tidx` | sorted set | throttle keys by window end, trimmed on every counter write, expiring with the longest |
//!
//! One hash tag puts all of a deployment's keys in one Cluster slot. That is what lets every
//! change be one Lua script, atomic on Cluster exactly as on a single server: a rotation
//! inserts the new session and deletes the old one in one step, a revocation removes the
//! session and its index entries together, and an activity write (`touch`) checks that the
//! session still exists in the same step that updates it, so it can never resurrect a
//! revoked session. The price: one Cluster shard holds a deployment's sessions (about 460
//! bytes each with their index entries, so a million sessions need roughly 460 MB), while
//! Cluster still brings failover. Separate deployments (prefixes) land on separate slots.
//!
//! Verification is one `GETRANGE` of the session's key (its first 1,024 bytes: the record
//! without its data); revocation by id finds the same key from the id, with no second key in
//! between. That is why new sessions' ids are derived from their hash
//! ([`SessionId::for_hash`], whose comment says why that gives nothing away).
//!
//! ## The compact format
//!
//! A session's value (`{p}:s:<k>`): its record, then its data (session data as JSON text;
//! nothing when it never saved any). The record, numbers big-endian:
//!
//! | offset | bytes | what |
//! |---|---|---|
//! | 0 | 1 | format: `1` |
//! | 1 | 6 | `last_seen_at`, ms since 1970, signed (`touch` rewrites it in place) |
//! | 7 | 6 | `expires_at` (likewise) |
//! | 13 | 6 | `created_at` |
//! | 19 | 6 | `absolute_expires_at` |
//! | 25 | 1 | flags: 1 remember; 2 and 4 the level minus one (0: one factor, 1: two; 2 and 3 are corrupt); 8 an address; 16 the address as text; 32 a user agent; 64 an id of its own |
//! | 26 | 2 | the record's length (the data starts there) |
//! | 28 | 32 | the hash (checked against the one asked for; listings return it) |
//! | 60 | 1 + n | the user id as decimal text, after its length |
//! | | 22 | with flag 64: the id (else it is [`SessionId::for_hash`] of the hash) |
//! | | 1 + 4 or 16 | with flag 8: the address, after its length, as the bytes of an IPv4 or IPv6 address when that gives back the same text; with flag 16 too: its text after its length (LEB128) |
//! | | n + n | with flag 32: the user agent after its length (LEB128) |
//!
//! For a session a browser's login makes (Firefox's user agent of 70 bytes, an IPv4 address)
//! that is 138 bytes. `sessiond-bench --redis-bytes-only` writes 100,000 of them (2,500
//! users) through this code: 456 bytes per session in `used_memory` (the string key 232 with
//! its TTL, its `{p}:exp` entry 120, its `{p}:u:` entry 33, the rest the key tables), where
//! the hash format below took 1,503. A user agent past 88 bytes (76 with an IPv6 address)
//! moves the value to jemalloc's next size class, 32 bytes more.
//!
//! ## Upgrading from the hash format
//!
//! sessiond before the compact format kept a session as a hash `{p}:s:<64 hex of its hash>`
//! (fields `id`, `uid`, `c`, `l`, `a`, `e`, `r`, `ip`, `ua`, `f` written only for two
//! factors, `d` data), a key `{p}:i:<id>` → the hex for every session (ids were random), and
//! the hex as the member in `{p}:u:<user>` and `{p}:exp`. Nobody is logged out by the
//! upgrade: such sessions are read, touched, given data, listed, rotated and ended (by hash,
//! by id, by user, all, by purge) in place, in that format; members of 64 bytes are theirs
//! and of 16 the compact ones', so every script tells them apart. A load that finds no
//! compact session asks for the hash too (one more round trip, only for those sessions and
//! for hashes of no session). Every session created after the upgrade is compact, a rotation
//! of an old one included; the old ones end as they always did, at the latest at their
//! absolute limit. No migration step. Upgrade every instance of a deployment together: an
//! older sessiond does not read compact sessions, so one still running would refuse the
//! sessions the new ones create (and going back to one logs out every session created since
//! the upgrade).
//!
//! ## Expiry
//!
//! Each session key has a TTL equal to its remaining life as of its last write
//! (`expires_at - last_seen_at`: the idle deadline, capped by the absolute one), so Redis drops
//! abandoned sessions by itself; the TTL is relative, so clocks of Redis and sessiond need not
//! agree. `{p}:exp` lets [`SessionStore::purge_expired`] clean index entries in bounded
//! batches (an `{p}:i:` key expires with its session).
//!
//! ## Notifications
//!
//! [`SessionStore::subscribe`] opens a RESP3 connection of its own (named
//! `sessiond-changes-PREFIX`, [`FEED_CLIENT_NAME`]), subscribed to `{p}:changes`; in RESP3 a
//! subscribed connection still runs commands, so the same connection answers the cache's
//! heartbeat (`GET {p}:gen`, bounded by [`OP_TIMEOUT`]) and a heartbeat that answers proves
//! the subscription alive. Standalone: the store's server, with its TLS; Sentinel: the master
//! the sentinels name at subscription; Cluster: the node that owns the deployment's slot (by
//! `CLUSTER SLOTS`), since classic `PUBLISH` reaches every node but the `GET` must go to the
//! owner (after a slot move or a failover the `GET` fails and the cache subscribes again). A
//! lost connection ends the feed with an error at once; dropping the feed closes it. A Redis
//! before 6 (no RESP3) gets no feed: caches poll [`SessionStore::generation`] there.
//!
//! ## Failure
//!
//! Every call is bounded by [`OP_TIMEOUT`]; a Redis that is down or hangs (SIGSTOP) gives
//! [`StoreError::Unavailable`] within it, never a hang, and callers fail closed. Connections
//! are re-established by themselves when Redis comes back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, ProtocolVersion, PushInfo, PushKind, RedisFuture, Script, Value};
use sessiond_core::{
    AuthLevel, ChangeFeed, SessionData, SessionId, SessionRecord, SessionStore, StoreError,
    ThrottleChange, ThrottleExpect, ThrottleRecord, ThrottleStore, Timestamp, TokenHash, UserId,
};
use tokio::sync::mpsc;

/// Longest any store call may take before it is reported as unavailable. Below the two
/// seconds of docs/reference/security.md, "Store failures", so a `503` reaches the client in
/// time even with the request's other work.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Sessions removed per script run by `delete_all` (keeps Redis responsive meanwhile).
const BATCH: usize = 1000;
/// Members of a user's session set one revoke-all script visits at most.
pub const REVOKE_BATCH: usize = 500;

/// Sessions in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// Standalone: a connection of its own for [`SessionStore::generation`] (opened when
    /// first used: verification caches follow [`SessionStore::subscribe`] instead, whose
    /// connection is its own too). A poll that waits behind a login flood's commands on the
    /// multiplexed connection the logins share comes late (docs/performance.md, "The cache's
    /// own store connection").
    watch: Option<Conn>,
    /// Where [`SessionStore::subscribe`] opens its notification connections.
    feeds: Arc<Feeds>,
    /// `{prefix}`: the hash tag every key starts with.
    tag: Arc<str>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.conn {
            Conn::Single(_) => "standalone",
            Conn::Cluster(_) => "cluster",
            Conn::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("tag", &self.tag)
            .finish()
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable(e)
}

fn bad_url(url: &str, why: &str) -> StoreError {
    // The URL may hold a password: show only its scheme.
    let scheme = url.split("://").next().unwrap_or("");
    StoreError::Config(format!("session store URL ({scheme}://…): {why}"))
}

/// A store call that took longer than [`OP_TIMEOUT`].
#[derive(Debug)]
struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis did not answer within {OP_TIMEOUT:?}")
    }
}

impl std::error::Error for TimedOut {}

async fn bounded<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(TimedOut)),
    }
}

impl RedisStore {
    /// Connects to `redis://[user:password@]host:port[/db]`,
    /// `redis+sentinel://[password@]host:port[,host:port…]/master-name[/db]` or
    /// `redis+cluster://[password@]host:port[,host:port…]`, each optionally followed by
    /// `?prefix=NAME` (default `sessiond`).
    ///
    /// TLS: `rediss://…` and `rediss+cluster://…` verify the server's certificate against the
    /// system's roots, or against the CA certificates (PEM) of `?ca=FILE`; a `#insecure`
    /// fragment at the end (the redis crate's own syntax) skips verification, host name and
    /// chain alike. Sentinel over TLS is not supported.
    ///
    /// A standalone or Sentinel store connects lazily: it can start while Redis is down and
    /// answers `Unavailable` until it is back.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // `#insecure` ends the URL, after the query; the redis crate reads it from the base.
        let (url_body, fragment) = match url.split_once('#') {
            Some((body, f)) => (body, Some(f)),
            None => (url, None),
        };
        let mut ca = None;
        let (base, prefix) = match url_body.split_once('?') {
            None => (url_body, "sessiond".to_owned()),
            Some((base, query)) => {
                let mut prefix = None;
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("prefix", v)) if valid_prefix(v) => prefix = Some(v.to_owned()),
                        Some(("prefix", _)) => {
                            return Err(bad_url(
                                url,
                                "prefix must be 1-64 letters, digits, '_', '-', '.' or ':'",
                            ))
                        }
                        Some(("ca", v)) if !v.is_empty() => ca = Some(v.to_owned()),
                        _ => {
                            return Err(bad_url(
                                url,
                                "the only query parameters are prefix and ca (rediss://)",
                            ))
                        }
                    }
                }
                (base, prefix.unwrap_or_else(|| "sessiond".to_owned()))
            }
        };
        let tls = base.starts_with("rediss://") || base.starts_with("rediss+cluster://");
        match fragment {
            None => {}
            Some("insecure") if tls => {}
            Some(_) => {
                return Err(bad_url(
                    url,
                    "the only fragment is #insecure, on rediss:// and rediss+cluster://",
                ))
            }
        }
        if ca.is_some() && !tls {
            return Err(bad_url(url, "ca= is for rediss:// and rediss+cluster://"));
        }
        let certs = match &ca {
            Some(path) => Some(tls_roots(url, path)?),
            None => None,
        };
        if tls {
            // The redis crate builds its rustls configurations with the process's default
            // provider: make it ring, the one this workspace builds (a no-op if one is set).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let insecure = if fragment.is_some() { "#insecure" } else { "" };
        let mut watch = None;
        let feeds;
        let conn = if let Some((scheme, rest)) = base
            .strip_prefix("redis+cluster://")
            .map(|r| ("redis", r))
            .or_else(|| {
                base.strip_prefix("rediss+cluster://")
                    .map(|r| ("rediss", r))
            }) {
            let (auth, hosts) = split_auth(rest);
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{auth}{h}{insecure}"))
                .collect();
            if nodes.is_empty() {
                return Err(bad_url(
                    url,
                    "redis+cluster:// needs host:port[,host:port…]",
                ));
            }
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(OP_TIMEOUT)
                .retries(2);
            if tls {
                // Nodes the cluster reports later are reached with the same TLS.
                builder = builder.tls(if fragment.is_some() {
                    redis::TlsMode::Insecure
                } else {
                    redis::TlsMode::Secure
                });
            }
            if let Some(certs) = certs.clone() {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(|e| bad_url(url, &e.to_string()))?;
            let conn = bounded(client.get_async_connection()).await?;
            let auth = auth.to_owned();
            feeds = Feeds::Cluster {
                conn: conn.clone(),
                node_url: Box::new(move |host: &str| format!("{scheme}://{auth}{host}{insecure}")),
                certs: certs.clone(),
            };
            Conn::Cluster(conn)
        } else if let Some(rest) = base.strip_prefix("redis+sentinel://") {
            let (auth, rest) = split_auth(rest);
            let (hosts, path) = rest
                .split_once('/')
                .ok_or_else(|| bad_url(url, "redis+sentinel:// needs /master-name"))?;
            let (service, db) = match path.split_once('/') {
                Some((s, db)) => (s, Some(db)),
                None => (path, None),
            };
            if service.is_empty() {
                return Err(bad_url(url, "redis+sentinel:// needs /master-name"));
            }
            let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}")).collect();
            let mut node = redis::sentinel::SentinelNodeConnectionInfo::default();
            let mut info = redis::RedisConnectionInfo::default();
            if let Some(db) = db.filter(|d| !d.is_empty()) {
                info = info.set_db(
                    db.parse()
                        .map_err(|_| bad_url(url, "db must be a number"))?,
                );
            }
            if let Some(pw) = auth.strip_suffix('@').filter(|a| !a.is_empty()) {
                let pw = pw.rsplit(':').next().unwrap_or(pw);
                info = info.set_password(pw);
            }
            // The notification connections reach the same master, in RESP3.
            let feed_node = node
                .clone()
                .set_redis_connection_info(info.clone().set_protocol(ProtocolVersion::RESP3));
            node = node.set_redis_connection_info(info);
            let client = SentinelClient::build(
                sentinels.clone(),
                service,
                Some(node),
                SentinelServerType::Master,
            )
            .map_err(|e| bad_url(url, &e.to_string()))?;
            feeds = Feeds::Sentinel(tokio::sync::Mutex::new(
                SentinelClient::build(
                    sentinels,
                    service,
                    Some(feed_node),
                    SentinelServerType::Master,
                )
                .map_err(|e| bad_url(url, &e.to_string()))?,
            ));
            Conn::Sentinel(Arc::new(SentinelConn {
                client: tokio::sync::Mutex::new(client),
                current: tokio::sync::RwLock::new(None),
            }))
        } else if base.starts_with("redis://") || base.starts_with("rediss://") {
            // TCP_NODELAY (the crate's default is off): on one multiplexed connection a small
            // command written while another's bytes are unacknowledged otherwise waits for the
            // peer's delayed ACK, and the cache's generation polls come late
            // (docs/performance.md, "The cache's own store connection").
            let info = redis::IntoConnectionInfo::into_connection_info(format!("{base}{insecure}"))
                .map_err(|e| bad_url(url, &e.to_string()))?;
            let info =
                info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
            let feed_info = info.clone().set_redis_settings(
                info.redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3),
            );
            let open = |info: redis::ConnectionInfo| match &certs {
                None => redis::Client::open(info),
                Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            };
            feeds = Feeds::Single(open(feed_info).map_err(|e| bad_url(url, &e.to_string()))?);
            let client = open(info).map_err(|e| bad_url(url, &e.to_string()))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(OP_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            watch = Some(Conn::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(|e| bad_url(url, &e.to_string()))?,
            ));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| bad_url(url, &e.to_string()))?,
            )
        } else if base.starts_with("rediss+sentinel://") {
            return Err(bad_url(
                url,
                "Sentinel over TLS is not supported; use rediss:// to the master or \
                 rediss+cluster://",
            ));
        } else {
            return Err(bad_url(
                url,
                "expected redis://, rediss://, redis+sentinel://, redis+cluster:// or \
                 rediss+cluster://",
            ));
        };
        Ok(Self {
            conn,
            watch,
            feeds: Arc::new(feeds),
            tag: format!("{{{prefix}}}").into(),
            scripts: Arc::new(Scripts::new()),
        })
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.tag)
    }

    /// The deadline index (also the routing key of scripts that span the deployment).
    fn exp_key(&self) -> String {
        format!("{}:exp", self.tag)
    }

    /// The key of the session with this hash in the compact format: `{p}:s:` and the 16
    /// bytes its derived id encodes ([`SessionId::bytes_for_hash`]).
    fn session_key(&self, hash: &TokenHash) -> Vec<u8> {
        self.compact_key(&SessionId::bytes_for_hash(hash))
    }

    /// `{p}:s:` and the 16 bytes of a compact session's key name (its index member).
    fn compact_key(&self, name: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.tag.len() + 3 + name.len());
        k.extend_from_slice(self.tag.as_bytes());
        k.extend_from_slice(b":s:");
        k.extend_from_slice(name);
        k
    }

    /// The key of the session with this hash in the hash format of before (sessiond up to
    /// the compact format: read, changed and ended in place until they end).
    fn legacy_key(&self, hash: &TokenHash) -> String {
        self.key("s", &hash.to_hex())
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        bounded(cmd.query_async(&mut conn)).await
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn)).await
    }

    /// The compact value of the session with this hash without its data (the first
    /// [`LOAD_BYTES`], and the rest of the record only if it is longer), or `None`.
    async fn compact_record(&self, hash: &TokenHash) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.session_key(hash);
        let head: Vec<u8> = self
            .query(redis::cmd("GETRANGE").arg(&key).arg(0).arg(LOAD_BYTES - 1))
            .await?;
        if head.is_empty() {
            return Ok(None);
        }
        if record_len(&head)? <= head.len() {
            return Ok(Some(head));
        }
        // A record longer than the first read (a user agent of hundreds of bytes).
        let all: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key)).await?;
        Ok(all)
    }

    /// The session's data as stored: `None` if the session is gone, `Some(None)` if it never
    /// saved any.
    async fn stored_data(&self, hash: &TokenHash) -> Result<Option<Option<String>>, StoreError> {
        let value: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(self.session_key(hash)))
            .await?;
        if let Some(v) = value {
            let data = &v[record_len(&v)?..];
            if data.is_empty() {
                return Ok(Some(None));
            }
            return String::from_utf8(data.to_vec())
                .map(|d| Some(Some(d)))
                .map_err(|_| StoreError::Corrupt("session data is not UTF-8".into()));
        }
        let (id, data): (Option<String>, Option<String>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.legacy_key(hash))
                    .arg("id")
                    .arg("d"),
            )
            .await?;
        Ok(id.map(|_| data))
    }

    /// Fetches the records of index members (a compact session's 16-byte key name, or the
    /// 64 hex characters of a session in the format of before), skipping those that are gone.
    async fn records(&self, members: &[Vec<u8>]) -> Result<Vec<SessionRecord>, StoreError> {
        let mut out = Vec::with_capacity(members.len());
        for chunk in members.chunks(500) {
            let mut pipe = redis::pipe();
            for m in chunk {
                if m.len() == LEGACY_MEMBER_LEN {
                    pipe.cmd("HGETALL")
                        .arg(self.key("s", &String::from_utf8_lossy(m)));
                } else {
                    pipe.cmd("GET").arg(self.compact_key(m));
                }
            }
            let mut conn = self.conn.clone();
            let values: Vec<Value> = bounded(pipe.query_async(&mut conn)).await?;
            for (m, value) in chunk.iter().zip(values) {
                let corrupt = |e: redis::ParsingError| StoreError::Corrupt(e.to_string());
                if m.len() == LEGACY_MEMBER_LEN {
                    let map: HashMap<String, String> =
                        redis::from_redis_value(value).map_err(corrupt)?;
                    if map.is_empty() {
                        continue;
                    }
                    let h = String::from_utf8_lossy(m);
                    let hash = hex_to_hash(&h)
                        .ok_or_else(|| StoreError::Corrupt(format!("bad hash key {h}")))?;
                    out.push(record_from(hash, &map)?);
                } else {
                    let v: Option<Vec<u8>> = redis::from_redis_value(value).map_err(corrupt)?;
                    let Some(v) = v else { continue };
                    let r = decode(&v)?;
                    if SessionId::bytes_for_hash(&r.token_hash)[..] != m[..] {
                        return Err(StoreError::Corrupt("session under another key".into()));
                    }
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
        Ok(out)
    }
}

/// The CA certificates of `?ca=FILE`, read now: a missing or empty file is a configuration
/// error at start, not a failure of every call. (The path is shown; it is no secret.)
fn tls_roots(url: &str, path: &str) -> Result<redis::TlsCertificates, StoreError> {
    let pem = std::fs::read(path).map_err(|e| bad_url(url, &format!("ca {path}: {e}")))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(bad_url(
            url,
            &format!("ca {path}: no PEM certificate in it"),
        ));
    }
    Ok(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    })
}

fn valid_prefix(p: &str) -> bool {
    (1..=64).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// `user:pw@rest` → (`user:pw@`, `rest`).
fn split_auth(s: &str) -> (&str, &str) {
    match s.rfind('@') {
        Some(i) => (&s[..=i], &s[i + 1..]),
        None => ("", s),
    }
}

fn hex_to_hash(h: &str) -> Option<TokenHash> {
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(TokenHash::from_bytes(out))
}

fn record_from(hash: TokenHash, m: &HashMap<String, String>) -> Result<SessionRecord, StoreError> {
    let corrupt = |f: &str| StoreError::Corrupt(format!("session field {f}"));
    let int = |f: &str| -> Result<i64, StoreError> {
        m.get(f)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(f))
    };
    Ok(SessionRecord {
        id: m
            .get("id")
            .and_then(|v| SessionId::parse(v))
            .ok_or_else(|| corrupt("id"))?,
        token_hash: hash,
        user_id: UserId(int("uid")?),
        created_at: Timestamp::from_millis(int("c")?),
        last_seen_at: Timestamp::from_millis(int("l")?),
        absolute_expires_at: Timestamp::from_millis(int("a")?),
        expires_at: Timestamp::from_millis(int("e")?),
        remember: int("r")? == 1,
        ip: m.get("ip").cloned(),
        user_agent: m.get("ua").cloned(),
        // Absent: one factor. Present, it must be a level we know: it decides access, so
        // anything else is corrupt, never read as some level.
        level: match m.get("f") {
            None => AuthLevel::OneFactor,
            Some(v) => v
                .parse()
                .ok()
                .and_then(AuthLevel::from_i64)
                .ok_or_else(|| corrupt("f"))?,
        },
    })
}

/// Index members (of `{p}:u:<uid>` and `{p}:exp`) of sessions in the hash format of before:
/// the 64 hex characters of the hash. Compact sessions' members are 16 bytes.
const LEGACY_MEMBER_LEN: usize = 64;
/// Bytes `load` reads of a compact value: every record `ExpiryPolicy::start` makes fits (a
/// user agent is cut at 512 bytes), so its data (after the record) is not read with it.
const LOAD_BYTES: usize = 1024;

/// The compact format's first byte.
const FORMAT: u8 = 1;
/// Offsets in a compact value (see the crate docs, "The compact format"). The Lua scripts
/// read and write the same offsets (1-based there).
const AT_LAST: usize = 1;
const AT_DEADLINE: usize = 7;
const AT_CREATED: usize = 13;
const AT_ABSOLUTE: usize = 19;
const AT_FLAGS: usize = 25;
const AT_LEN: usize = 26;
const AT_HASH: usize = 28;
const AT_UID: usize = 60;
/// Flags.
const F_REMEMBER: u8 = 1;
/// Two bits: the level minus one (0: one factor, 1: two factors).
const F_LEVEL_SHIFT: u8 = 1;
const F_LEVEL_MASK: u8 = 0b110;
const F_IP: u8 = 8;
/// The address as text (it is not the canonical text of an IPv4 or IPv6 address).
const F_IP_TEXT: u8 = 16;
const F_UA: u8 = 32;
/// The session's id is stored (22 characters after the uid): it is not the one derived from
/// the hash (a session made by an older sessiond, or a caller's own id), so `{p}:i:<id>`
/// maps it to the key.
const F_OWN_ID: u8 = 64;
/// A millisecond timestamp fits in 6 bytes (signed): ±4,400 years around 1970.
const I48: std::ops::Range<i64> = -(1 << 47)..(1 << 47);

fn put_i48(v: &mut Vec<u8>, t: Timestamp) -> Result<(), StoreError> {
    let ms = t.as_millis();
    if !I48.contains(&ms) {
        return Err(StoreError::Corrupt(format!(
            "timestamp {ms} ms is out of the Redis store's range"
        )));
    }
    v.extend_from_slice(&ms.to_be_bytes()[2..]);
    Ok(())
}

fn get_i48(b: &[u8]) -> Timestamp {
    // Sign-extends the 6 bytes.
    let fill = if b[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut w = [fill; 8];
    w[2..].copy_from_slice(&b[..6]);
    Timestamp::from_millis(i64::from_be_bytes(w))
}

/// A length (LEB128: 7 bits a byte, the high bit set on all but the last).
fn put_len(v: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            v.push(b);
            return;
        }
        v.push(b | 0x80);
    }
}

/// The session's address as stored: 4 or 16 bytes when that gives back the same text, else
/// the text itself.
fn ip_bytes(ip: &str) -> Option<Vec<u8>> {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) if a.to_string() == ip => Some(a.octets().to_vec()),
        Ok(std::net::IpAddr::V6(a)) if a.to_string() == ip => Some(a.octets().to_vec()),
        _ => None,
    }
}

/// The compact value of `s`, without data: see the crate docs, "The compact format".
fn encode(s: &SessionRecord, own_id: bool) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(160);
    v.push(FORMAT);
    for t in [
        s.last_seen_at,
        s.expires_at,
        s.created_at,
        s.absolute_expires_at,
    ] {
        put_i48(&mut v, t)?;
    }
    let level = (s.level.as_i64() - 1) as u8;
    let mut flags = u8::from(s.remember) | (level << F_LEVEL_SHIFT) & F_LEVEL_MASK;
    v.extend_from_slice(&[0, 0, 0]); // flags and the record's length, below
    v.extend_from_slice(s.token_hash.as_bytes());
    let uid = s.user_id.0.to_string();
    v.push(uid.len() as u8);
    v.extend_from_slice(uid.as_bytes());
    if own_id {
        flags |= F_OWN_ID;
        v.extend_from_slice(s.id.as_str().as_bytes());
    }
    if let Some(ip) = &s.ip {
        flags |= F_IP;
        match ip_bytes(ip) {
            Some(b) => {
                v.push(b.len() as u8);
                v.extend_from_slice(&b);
            }
            None => {
                flags |= F_IP_TEXT;
                put_len(&mut v, ip.len());
                v.extend_from_slice(ip.as_bytes());
            }
        }
    }
    if let Some(ua) = &s.user_agent {
        flags |= F_UA;
        put_len(&mut v, ua.len());
        v.extend_from_slice(ua.as_bytes());
    }
    let len = u16::try_from(v.len()).map_err(|_| {
        StoreError::Corrupt(format!(
            "a session record of {} bytes is over the Redis store's 65,535",
            v.len()
        ))
    })?;
    v[AT_FLAGS] = flags;
    v[AT_LEN..AT_LEN + 2].copy_from_slice(&len.to_be_bytes());
    Ok(v)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("compact session: {what}"))
}

/// The length of the record at the start of a compact value (its data follows).
fn record_len(v: &[u8]) -> Result<usize, StoreError> {
    if v.len() < AT_UID + 1 || v[0] != FORMAT {
        return Err(corrupt("not the compact format"));
    }
    Ok(usize::from(u16::from_be_bytes([v[AT_LEN], v[AT_LEN + 1]])))
}

/// Reads a compact record front to back.
struct Cursor<'a> {
    v: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let b = self
            .v
            .get(self.at..self.at + n)
            .ok_or_else(|| corrupt("cut short"))?;
        self.at += n;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn text(&mut self, n: usize, what: &str) -> Result<String, StoreError> {
        std::str::from_utf8(self.take(n)?)
            .map(str::to_owned)
            .map_err(|_| corrupt(what))
    }

    /// A length written by [`put_len`] (at most four bytes: 256 MiB).
    fn len(&mut self) -> Result<usize, StoreError> {
        let mut n = 0usize;
        for shift in [0, 7, 14, 21] {
            let b = self.byte()?;
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(corrupt("length"))
    }
}

/// A compact value (its record, at least) back into the record it was made of.
fn decode(v: &[u8]) -> Result<SessionRecord, StoreError> {
    let len = record_len(v)?;
    let v = v.get(..len).ok_or_else(|| corrupt("cut short"))?;
    let flags = v[AT_FLAGS];
    if flags & !(F_REMEMBER | F_LEVEL_MASK | F_IP | F_IP_TEXT | F_UA | F_OWN_ID) != 0 {
        return Err(corrupt("flags"));
    }
    // The level decides access: anything but a level we know is corrupt, never read as
    // some level.
    let level = AuthLevel::from_i64(i64::from((flags & F_LEVEL_MASK) >> F_LEVEL_SHIFT) + 1)
        .ok_or_else(|| corrupt("level"))?;
    let token_hash =
        TokenHash::from_slice(&v[AT_HASH..AT_HASH + 32]).ok_or_else(|| corrupt("hash"))?;
    let mut c = Cursor { v, at: AT_UID };
    let ulen = usize::from(c.byte()?);
    let user_id = c
        .text(ulen, "uid")?
        .parse()
        .map(UserId)
        .map_err(|_| corrupt("uid"))?;
    let id = if flags & F_OWN_ID != 0 {
        SessionId::parse(&c.text(22, "id")?).ok_or_else(|| corrupt("id"))?
    } else {
        SessionId::for_hash(&token_hash)
    };
    let ip = if flags & F_IP == 0 {
        None
    } else if flags & F_IP_TEXT != 0 {
        let n = c.len()?;
        Some(c.text(n, "ip")?)
    } else {
        let n = usize::from(c.byte()?);
        let b = c.take(n)?;
        Some(if let Ok(a) = <[u8; 4]>::try_from(b) {
            std::net::Ipv4Addr::from(a).to_string()
        } else if let Ok(a) = <[u8; 16]>::try_from(b) {
            std::net::Ipv6Addr::from(a).to_string()
        } else {
            return Err(corrupt("ip"));
        })
    };
    let user_agent = if flags & F_UA == 0 {
        None
    } else {
        let n = c.len()?;
        Some(c.text(n, "user agent")?)
    };
    if c.at != len {
        return Err(corrupt("length"));
    }
    Ok(SessionRecord {
        id,
        token_hash,
        user_id,
        created_at: get_i48(&v[AT_CREATED..]),
        last_seen_at: get_i48(&v[AT_LAST..]),
        absolute_expires_at: get_i48(&v[AT_ABSOLUTE..]),
        expires_at: get_i48(&v[AT_DEADLINE..]),
        remember: flags & F_REMEMBER != 0,
        ip,
        user_agent,
        level,
    })
}

/// Remaining life as of the last activity, used as a relative TTL (at least 1 ms: Redis
/// refuses 0).
fn ttl_ms(s: &SessionRecord) -> i64 {
    (s.expires_at.as_millis() - s.last_seen_at.as_millis()).max(1)
}

/// Lua shared by the scripts. Every key is built from the `{prefix}` tag (ARGV[1]), so all
/// of them live in the same Cluster slot as the key passed in KEYS[1].
const PRELUDE: &str = r#"
local tag = ARGV[1]
local USER_TRIM = 64
-- The generation after this script's last removal (nil: none), published once at its end.
local gen = nil
-- Bytes of a compact value its fixed part, uid and own id fit in (GETRANGE 0 HEAD).
local HEAD = 127
-- A compact value's owner (uid, as text) and its own id ('' when its id is the one derived
-- from its key, so no `{p}:i:` key maps it). Offsets: the crate docs, "The compact format".
local function owner(v)
  local ul = string.byte(v, 61)
  local id = ''
  if bit.band(string.byte(v, 26), 64) ~= 0 then id = string.sub(v, 62 + ul, 83 + ul) end
  return string.sub(v, 62, 61 + ul), id
end
-- Removes the session of an index member: a compact session's 16-byte key name, or the 64 hex
-- characters of a session in the hash format of before.
local function del(m)
  local sk = tag .. ':s:' .. m
  redis.call('ZREM', tag .. ':exp', m)
  local uid, id
  if #m == 64 then
    local f = redis.call('HMGET', sk, 'id', 'uid')
    if not f[1] then return 0 end
    id, uid = f[1], f[2]
  else
    local v = redis.call('GETRANGE', sk, 0, HEAD)
    if v == '' then return 0 end
    uid, id = owner(v)
  end
  gen = redis.call('INCR', tag .. ':gen')
  if id ~= '' then redis.call('DEL', sk, tag .. ':i:' .. id) else redis.call('DEL', sk) end
  redis.call('ZREM', tag .. ':u:' .. uid, m)
  return 1
end
-- The index member of the session whose hash gives the compact key name k and the hex h:
-- k if it is compact, h if it is in the format of before, nil if there is none.
local function member(k, h)
  if redis.call('EXISTS', tag .. ':s:' .. k) == 1 then return k end
  if redis.call('EXISTS', tag .. ':s:' .. h) == 1 then return h end
  return nil
end
-- Whether the session of member m has the id `id` (text), or, compact with no id of its own,
-- the key name `idk` (the 16 bytes `id` encodes; '' if it encodes none).
local function has_id(m, id, idk)
  if #m == 64 then return redis.call('HGET', tag .. ':s:' .. m, 'id') == id end
  local v = redis.call('GETRANGE', tag .. ':s:' .. m, 0, HEAD)
  if v == '' then return false end
  local _, own = owner(v)
  if own ~= '' then return own == id end
  return m == idk
end
-- The uid (text) of the session of member m; nil if it is gone.
local function uid_of(m)
  if #m == 64 then return redis.call('HGET', tag .. ':s:' .. m, 'uid') or nil end
  local v = redis.call('GETRANGE', tag .. ':s:' .. m, 0, HEAD)
  if v == '' then return nil end
  return (owner(v))
end
-- Login throttling counters: `{p}:t:<key>` hashes (c count, l latest, e window end) with a TTL
-- to the window's end, listed in `{p}:tidx` by window end. The index is trimmed by score on
-- every write and expires with its longest counter, so it never outgrows the live counters.
local function thit(key, now, window)
  local k = tag .. ':t:' .. key
  local idx = tag .. ':tidx'
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
  local f = redis.call('HMGET', k, 'e')
  if f[1] and tonumber(f[1]) > now then
    local c = redis.call('HINCRBY', k, 'c', 1)
    redis.call('HSET', k, 'l', now)
    return {c, now, tonumber(f[1])}
  end
  local e = now + window
  redis.call('HSET', k, 'c', 1, 'l', now, 'e', e)
  redis.call('PEXPIRE', k, window)
  redis.call('ZADD', idx, e, key)
  if redis.call('PTTL', idx) < window then redis.call('PEXPIRE', idx, window) end
  return {1, now, e}
end
local function tdel(key)
  redis.call('ZREM', tag .. ':tidx', key)
  return redis.call('DEL', tag .. ':t:' .. key)
end
local function trefund(key, now)
  local k = tag .. ':t:' .. key
  local f = redis.call('HMGET', k, 'c', 'e')
  if not f[1] then return 0 end
  if tonumber(f[2]) > now and tonumber(f[1]) > 1 then
    redis.call('HINCRBY', k, 'c', -1)
  else
    tdel(key)
  end
  return 1
end
-- ARGV from `at`: n, then n triples of op ('h' hit, 'd' delete, 'r' refund), key, window ms.
local function tapply(at, now)
  local n = tonumber(ARGV[at])
  for i = 0, n - 1 do
    local op, key, w = ARGV[at + 1 + 3 * i], ARGV[at + 2 + 3 * i], tonumber(ARGV[at + 3 + 3 * i])
    if op == 'h' then thit(key, now, w) elseif op == 'd' then tdel(key) else trefund(key, now) end
  end
end
-- ARGV from `at`: k (the compact key name), the compact value, uid, id, '1' if the id is
-- its own (not derived from k: mapped by `{p}:i:<id>`), c, e, ttl, the hash in hex (no
-- session of the format of before may have it), and for an id of its own the 16 bytes it
-- encodes or '' (no compact session may have it as its derived id).
local function create(at)
  local k, uid, id = ARGV[at], ARGV[at + 2], ARGV[at + 3]
  local sk = tag .. ':s:' .. k
  if redis.call('EXISTS', sk, tag .. ':s:' .. ARGV[at + 8], tag .. ':i:' .. id) > 0 then
    return 0
  end
  if ARGV[at + 9] ~= '' and redis.call('EXISTS', tag .. ':s:' .. ARGV[at + 9]) == 1 then
    return 0
  end
  local ttl = tonumber(ARGV[at + 7])
  redis.call('SET', sk, ARGV[at + 1], 'PX', ttl)
  if ARGV[at + 4] == '1' then redis.call('SET', tag .. ':i:' .. id, k, 'PX', ttl) end
  -- The user's set keeps the members of sessions Redis dropped by TTL (their uid is gone
  -- with them, so the sweeper cannot find them): trim them here, on write, from the oldest,
  -- a bounded number per login, so the set never grows far past the live sessions.
  local uk = tag .. ':u:' .. uid
  for _, old in ipairs(redis.call('ZRANGE', uk, 0, USER_TRIM - 1)) do
    if redis.call('EXISTS', tag .. ':s:' .. old) == 0 then redis.call('ZREM', uk, old) end
  end
  redis.call('ZADD', uk, ARGV[at + 5], k)
  redis.call('ZADD', tag .. ':exp', ARGV[at + 6], k)
  return 1
end
-- Replaces the value of the compact session key sk, keeping its TTL.
local function rewrite(sk, v)
  local ttl = redis.call('PTTL', sk)
  if ttl > 0 then redis.call('SET', sk, v, 'PX', ttl) else redis.call('SET', sk, v) end
end
"#;

struct Scripts {
    create: Script,
    rotate: Script,
    touch: Script,
    delete: Script,
    delete_by_id: Script,
    delete_for_user: Script,
    purge: Script,
    save_data: Script,
    patch_data: Script,
    throttle_hit: Script,
    throttle_apply: Script,
    throttle_reserve: Script,
}

impl Scripts {
    fn new() -> Self {
        // Each body runs as a function, so that whatever it returns, a script that bumped
        // the generation publishes it (once, however many sessions it removed) before it
        // ends: the notification is part of the change, atomic with it.
        let with = |body: &str| {
            Script::new(&format!(
                "{PRELUDE}\nlocal function body()\n{body}\nend\nlocal out = body()\n\
                 if gen then redis.call('PUBLISH', tag .. ':changes', gen) end\nreturn out"
            ))
        };
        Self {
            create: with("return create(2)"),
            // ARGV: tag, the old session's compact key name and hex, then as `create`. Only
            // while the old session exists (a revoked one is never carried on under a new
            // secret): 2 = old gone, nothing done. Then insert first: if the new session
            // cannot be created, the old one stays (0).
            rotate: with(
                r#"
                local old = member(ARGV[2], ARGV[3])
                if not old then return 2 end
                if create(4) == 0 then return 0 end
                del(old)
                return 1
                "#,
            ),
            // ARGV: tag, k, hex, l, e, ttl. Never recreates a session that is gone; never
            // moves activity backwards. A compact session's `l` and `e` are rewritten in
            // place (SETRANGE keeps the key's TTL).
            touch: with(
                r#"
                local l, e = tonumber(ARGV[4]), tonumber(ARGV[5])
                local sk = tag .. ':s:' .. ARGV[2]
                local v = redis.call('GETRANGE', sk, 0, HEAD)
                if v ~= '' then
                  local l0, e0 = struct.unpack('>i6i6', v, 2)
                  if l > l0 then redis.call('SETRANGE', sk, 1, struct.pack('>i6', l)) end
                  if e > e0 then
                    redis.call('SETRANGE', sk, 7, struct.pack('>i6', e))
                    redis.call('PEXPIRE', sk, ARGV[6])
                    local _, id = owner(v)
                    if id ~= '' then redis.call('PEXPIRE', tag .. ':i:' .. id, ARGV[6]) end
                    redis.call('ZADD', tag .. ':exp', ARGV[5], ARGV[2])
                  end
                  return 1
                end
                sk = tag .. ':s:' .. ARGV[3]
                local f = redis.call('HMGET', sk, 'l', 'e', 'id')
                if not f[1] then return 0 end
                if l > tonumber(f[1]) then redis.call('HSET', sk, 'l', ARGV[4]) end
                if e > tonumber(f[2]) then
                  redis.call('HSET', sk, 'e', ARGV[5])
                  redis.call('PEXPIRE', sk, ARGV[6])
                  redis.call('PEXPIRE', tag .. ':i:' .. f[3], ARGV[6])
                  redis.call('ZADD', tag .. ':exp', ARGV[5], ARGV[3])
                end
                return 1
                "#,
            ),
            // ARGV: tag, k, hex. Either way the deadline index loses the entry (a session
            // Redis dropped by TTL leaves one).
            delete: with("local n = del(ARGV[2]) if n == 0 then n = del(ARGV[3]) end return n"),
            // ARGV: tag, id, owner or '', the 16 bytes the id encodes or ''. An id of a
            // session's own is mapped by `{p}:i:<id>`; a derived one is the key name itself.
            delete_by_id: with(
                r#"
                local m = redis.call('GET', tag .. ':i:' .. ARGV[2])
                if not m then
                  if ARGV[4] == '' or not has_id(ARGV[4], ARGV[2], ARGV[4]) then return 0 end
                  m = ARGV[4]
                end
                if ARGV[3] ~= '' and uid_of(m) ~= ARGV[3] then return 0 end
                return del(m)
                "#,
            ),
            // ARGV: tag, uid, keep id or '', batch size, the 16 bytes the kept id encodes or
            // ''. One batch of the user's set: each member but the kept one is deleted (and
            // taken off the set even when its session already expired by TTL, so every call
            // shrinks the set). Returns {deleted, members visited other than the kept one};
            // the caller calls again until a call visits none, so no single script holds
            // Redis for more than one batch.
            delete_for_user: with(
                r#"
                local uk = tag .. ':u:' .. ARGV[2]
                local n, visited = 0, 0
                local batch = tonumber(ARGV[4])
                for _, m in ipairs(redis.call('ZRANGE', uk, 0, batch)) do
                  if ARGV[3] == '' or not has_id(m, ARGV[3], ARGV[5]) then
                    if visited < batch then
                      n = n + del(m)
                      redis.call('ZREM', uk, m)
                      visited = visited + 1
                    end
                  end
                end
                return {n, visited}
                "#,
            ),
            // ARGV: tag, now, limit. Counts every expired entry it clears (Redis may have
            // dropped the session key itself already, by TTL).
            purge: with(
                r#"
                local ms = redis.call('ZRANGEBYSCORE', tag .. ':exp', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
                for _, m in ipairs(ms) do del(m) end
                return #ms
                "#,
            ),
            // ARGV: tag, key, now, window ms. A live counter is incremented; a missing or
            // expired one starts again. `{p}:tidx` lists counters by the end of their window.
            throttle_hit: with("return thit(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))"),
            // ARGV: tag, now, then the changes (see `tapply`).
            throttle_apply: with("tapply(3, tonumber(ARGV[2])) return 1"),
            // ARGV: tag, now, m, then m quintuples key, kind, c, l, e (kind 'n': expected
            // absent; 'x': exactly c, l, e; 'b': a live count below c), then the changes.
            // Compare and apply in one script: atomic.
            throttle_reserve: with(
                r#"
                local now = tonumber(ARGV[2])
                local m = tonumber(ARGV[3])
                for i = 0, m - 1 do
                  local at = 4 + 5 * i
                  local f = redis.call('HMGET', tag .. ':t:' .. ARGV[at], 'c', 'l', 'e')
                  local live = f[1] and f[2] and f[3] and tonumber(f[3]) > now
                  local kind = ARGV[at + 1]
                  if kind == 'n' then
                    if live then return 0 end
                  elseif kind == 'b' then
                    if live and tonumber(f[1]) >= tonumber(ARGV[at + 2]) then return 0 end
                  elseif not live or tonumber(f[1]) ~= tonumber(ARGV[at + 2])
                      or tonumber(f[2]) ~= tonumber(ARGV[at + 3])
                      or tonumber(f[3]) ~= tonumber(ARGV[at + 4]) then
                    return 0
                  end
                end
                tapply(4 + 5 * m, now)
                return 1
                "#,
            ),
            // ARGV: tag, k, hex, json. A compact session's data is whatever follows its
            // record (the record's length is at offset 26).
            save_data: with(
                r#"
                local sk = tag .. ':s:' .. ARGV[2]
                local v = redis.call('GET', sk)
                if v then
                  rewrite(sk, string.sub(v, 1, struct.unpack('>H', v, 27)) .. ARGV[4])
                  return 1
                end
                sk = tag .. ':s:' .. ARGV[3]
                if redis.call('EXISTS', sk) == 0 then return 0 end
                redis.call('HSET', sk, 'd', ARGV[4])
                return 1
                "#,
            ),
            // ARGV: tag, k, hex, '1' if data was stored when read (else '0'), that data, the
            // new data. Compare and set: 0 = session gone, 2 = the data changed since it was
            // read (nothing written), 1 = written.
            patch_data: with(
                r#"
                local sk = tag .. ':s:' .. ARGV[2]
                local v = redis.call('GET', sk)
                if v then
                  local n = struct.unpack('>H', v, 27)
                  local want = ''
                  if ARGV[4] == '1' then want = ARGV[5] end
                  if string.sub(v, n + 1) ~= want then return 2 end
                  rewrite(sk, string.sub(v, 1, n) .. ARGV[6])
                  return 1
                end
                sk = tag .. ':s:' .. ARGV[3]
                if redis.call('EXISTS', sk) == 0 then return 0 end
                local want = false
                if ARGV[4] == '1' then want = ARGV[5] end
                if redis.call('HGET', sk, 'd') ~= want then return 2 end
                redis.call('HSET', sk, 'd', ARGV[6])
                return 1
                "#,
            ),
        }
    }
}

/// A list of throttle changes as `tapply` reads them.
fn change_args(inv: &mut redis::ScriptInvocation<'_>, changes: &[ThrottleChange<'_>]) {
    inv.arg(changes.len());
    for c in changes {
        match *c {
            ThrottleChange::Hit { key, window } => {
                inv.arg("h").arg(key).arg(window.as_millis().max(1) as u64)
            }
            ThrottleChange::Delete { key } => inv.arg("d").arg(key).arg(0),
            ThrottleChange::Refund { key } => inv.arg("r").arg(key).arg(0),
        };
    }
}

/// `create`'s arguments for `s` (see `create` in the Lua prelude).
fn create_args(inv: &mut redis::ScriptInvocation<'_>, s: &SessionRecord) -> Result<(), StoreError> {
    let k = SessionId::bytes_for_hash(&s.token_hash);
    let own_id = s.id.to_bytes() != Some(k);
    inv.arg(&k[..])
        .arg(encode(s, own_id)?)
        .arg(s.user_id.0)
        .arg(s.id.as_str())
        .arg(if own_id { "1" } else { "0" })
        .arg(s.created_at.as_millis())
        .arg(s.expires_at.as_millis())
        .arg(ttl_ms(s))
        .arg(s.token_hash.to_hex())
        .arg(match s.id.to_bytes() {
            Some(b) if own_id => b.to_vec(),
            _ => Vec::new(),
        });
    Ok(())
}

/// A hash as the scripts find its session: the compact key name, then the hex of the format
/// of before.
fn hash_args(inv: &mut redis::ScriptInvocation<'_>, hash: &TokenHash) {
    inv.arg(&SessionId::bytes_for_hash(hash)[..])
        .arg(hash.to_hex());
}

/// The 16 bytes `id` encodes, or none (an id that encodes none is never a derived one).
fn id_bytes(id: &SessionId) -> Vec<u8> {
    id.to_bytes().map(|b| b.to_vec()).unwrap_or_default()
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut inv = self
            .scripts
            .create
            .key(self.session_key(&session.token_hash));
        inv.arg(&*self.tag);
        create_args(&mut inv, session)?;
        match self.run::<i64>(inv).await? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict),
        }
    }

    async fn load(&self, hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        if let Some(v) = self.compact_record(hash).await? {
            let r = decode(&v)?;
            // The key is 128 bits of a hash of the hash: a session under it with another
            // hash would be a collision nobody can make, or a corrupt store. Never served as
            // this one either way.
            if r.token_hash != *hash {
                return Err(corrupt("another hash under this key"));
            }
            return Ok(Some(r));
        }
        // A session of the format of before (until they end): one more round trip, only for
        // those and for hashes of no session at all.
        let map: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.legacy_key(hash)))
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        record_from(*hash, &map).map(Some)
    }

    async fn touch(
        &self,
        hash: &TokenHash,
        last_seen_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        // The scripts write these in 6 bytes: refuse what would not fit rather than wrap.
        for t in [last_seen_at, expires_at] {
            put_i48(&mut Vec::new(), t)?;
        }
        let ttl = (expires_at.as_millis() - last_seen_at.as_millis()).max(1);
        let mut inv = self.scripts.touch.key(self.session_key(hash));
        inv.arg(&*self.tag);
        hash_args(&mut inv, hash);
        inv.arg(last_seen_at.as_millis())
            .arg(expires_at.as_millis())
            .arg(ttl);
        self.run::<i64>(inv).await.map(|_| ())
    }

    async fn delete(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        let mut inv = self.scripts.delete.key(self.session_key(hash));
        inv.arg(&*self.tag);
        hash_args(&mut inv, hash);
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
        let mut inv = self.scripts.rotate.key(self.session_key(&new.token_hash));
        inv.arg(&*self.tag);
        hash_args(&mut inv, old);
        create_args(&mut inv, new)?;
        match self.run::<i64>(inv).await? {
            1 => Ok(true),
            2 => Ok(false),
            _ => Err(StoreError::Conflict),
        }
    }

    async fn list_for_user(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        let members: Vec<Vec<u8>> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.key("u", &user.0.to_string()))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        self.records(&members).await
    }

    async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let members: Vec<Vec<u8>> = self
            .query(redis::cmd("ZRANGE").arg(self.exp_key()).arg(0).arg(-1))
            .await?;
        self.records(&members).await
    }

    async fn delete_by_id(
        &self,
        id: &SessionId,
        owner: Option<UserId>,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.delete_by_id.key(self.key("i", id.as_str()));
        inv.arg(&*self.tag)
            .arg(id.as_str())
            .arg(owner.map(|o| o.0.to_string()).unwrap_or_default())
            .arg(id_bytes(id));
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn delete_for_user(
        &self,
        user: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        // In batches of `REVOKE_BATCH` members, one script each: "log out everywhere" of a
        // user with many sessions must not block the shared Redis for long.
        // Each call is atomic; sessions created between calls are new logins, not survivors.
        let mut total = 0;
        loop {
            let mut inv = self
                .scripts
                .delete_for_user
                .key(self.key("u", &user.0.to_string()));
            inv.arg(&*self.tag)
                .arg(user.0)
                .arg(keep.map(|k| k.as_str()).unwrap_or(""))
                .arg(REVOKE_BATCH)
                .arg(keep.map(id_bytes).unwrap_or_default());
            let (n, visited): (i64, i64) = self.run(inv).await?;
            total += n.max(0) as u64;
            if visited == 0 {
                return Ok(total);
            }
        }
    }

    async fn delete_oldest_for_user(
        &self,
        user: UserId,
        keep_newest: usize,
    ) -> Result<u64, StoreError> {
        // Every login asks; almost always nobody is over the cap: one ZCARD, no records read.
        // The set may still hold members that expired by TTL, so over the cap by its count,
        // the records decide (the default: list, then delete the oldest live ones).
        let held: usize = self
            .query(redis::cmd("ZCARD").arg(self.key("u", &user.0.to_string())))
            .await?;
        if held <= keep_newest {
            return Ok(0);
        }
        let all = self.list_for_user(user).await?;
        let excess = all.len().saturating_sub(keep_newest);
        let mut n = 0;
        for s in all.iter().take(excess) {
            n += u64::from(self.delete_by_id(&s.id, Some(user)).await?);
        }
        Ok(n)
    }

    async fn delete_all(&self) -> Result<u64, StoreError> {
        // Batches by deadline, each one script: Redis stays responsive meanwhile.
        let mut total = 0;
        loop {
            let mut inv = self.scripts.purge.key(self.exp_key());
            inv.arg(&*self.tag).arg("+inf").arg(BATCH);
            let n = self.run::<i64>(inv).await?.max(0) as u64;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
        let mut inv = self.scripts.purge.key(self.exp_key());
        inv.arg(&*self.tag).arg(now.as_millis()).arg(limit);
        Ok(self.run::<i64>(inv).await?.max(0) as u64)
    }

    async fn load_data(&self, hash: &TokenHash) -> Result<Option<SessionData>, StoreError> {
        match self.stored_data(hash).await? {
            None => Ok(None),
            Some(None) => Ok(Some(SessionData::new())),
            Some(Some(text)) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("session data: {e}"))),
        }
    }

    async fn save_data(&self, hash: &TokenHash, data: &SessionData) -> Result<bool, StoreError> {
        let text = serde_json::Value::Object(data.clone()).to_string();
        let mut inv = self.scripts.save_data.key(self.session_key(hash));
        inv.arg(&*self.tag);
        hash_args(&mut inv, hash);
        inv.arg(text);
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn patch_data(
        &self,
        hash: &TokenHash,
        set: &SessionData,
        remove: &[String],
    ) -> Result<bool, StoreError> {
        // Merged here and written with a compare-and-set script, retried when another write
        // landed in between: atomic, since the script checks and writes in one step. Not
        // merged inside Lua, because its cjson does not round-trip JSON (an empty array comes
        // back as an object, integers past 14 digits lose precision), and a patch must keep
        // the keys it does not touch exactly as stored.
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        loop {
            let Some(stored) = self.stored_data(hash).await? else {
                return Ok(false);
            };
            let mut data = match &stored {
                None => SessionData::new(),
                Some(text) => serde_json::from_str::<SessionData>(text)
                    .map_err(|e| StoreError::Corrupt(format!("session data: {e}")))?,
            };
            data.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            for k in remove {
                data.remove(k);
            }
            let text = serde_json::Value::Object(data).to_string();
            let mut inv = self.scripts.patch_data.key(self.session_key(hash));
            inv.arg(&*self.tag);
            hash_args(&mut inv, hash);
            inv.arg(if stored.is_some() { "1" } else { "0" })
                .arg(stored.as_deref().unwrap_or(""))
                .arg(text);
            match self.run::<i64>(inv).await? {
                0 => return Ok(false),
                1 => return Ok(true),
                // Each conflict means another write landed, so the writers as a whole make
                // progress; the deadline bounds how long one of them may keep losing.
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(unavailable(TimedOut));
                }
                _ => {}
            }
        }
    }

    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        // The expiry index is scored by `expires_at`: one ZCOUNT, O(log n).
        let n: u64 = self
            .query(
                redis::cmd("ZCOUNT")
                    .arg(self.exp_key())
                    .arg(format!("({}", now.as_millis()))
                    .arg("+inf"),
            )
            .await?;
        Ok(Some(n))
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        let open = async {
            let client = match &*self.feeds {
                Feeds::Single(client) => client.clone(),
                Feeds::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await?,
                Feeds::Cluster {
                    conn,
                    node_url,
                    certs,
                } => self.slot_owner(conn, &**node_url, certs.as_ref()).await?,
            };
            self.open_feed(client).await
        };
        match tokio::time::timeout(OP_TIMEOUT, open).await {
            Ok(Ok(feed)) => Ok(Some(Box::new(feed))),
            // Redis before 6 speaks no RESP3: no notifications there, caches poll instead.
            Ok(Err(e)) if e.kind() == redis::ErrorKind::RESP3NotSupported => Ok(None),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(TimedOut)),
        }
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        // `{p}:gen` is bumped by every script that removes a session, in the same script.
        // Expiry by TTL does not bump it: an expired session is refused by its deadline.
        let mut conn = self.watch.as_ref().unwrap_or(&self.conn).clone();
        let g: Option<u64> = bounded(
            redis::cmd("GET")
                .arg(format!("{}:gen", self.tag))
                .query_async(&mut conn),
        )
        .await?;
        Ok(g.unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!("PING answered {pong:?}")))
        }
    }
}

#[async_trait]
impl ThrottleStore for RedisStore {
    async fn throttle_hit(
        &self,
        key: &str,
        now: Timestamp,
        window: Duration,
    ) -> Result<ThrottleRecord, StoreError> {
        let mut inv = self.scripts.throttle_hit.key(self.key("t", key));
        inv.arg(&*self.tag)
            .arg(key)
            .arg(now.as_millis())
            .arg(window.as_millis().max(1) as u64);
        let (count, last, expires): (i64, i64, i64) = self.run(inv).await?;
        Ok(ThrottleRecord {
            count: count.max(0) as u64,
            last_at: Timestamp::from_millis(last),
            expires_at: Timestamp::from_millis(expires),
        })
    }

    async fn throttle_get(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<ThrottleRecord>, StoreError> {
        let (c, l, e): (Option<i64>, Option<i64>, Option<i64>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.key("t", key))
                    .arg("c")
                    .arg("l")
                    .arg("e"),
            )
            .await?;
        Ok(match (c, l, e) {
            (Some(c), Some(l), Some(e)) if e > now.as_millis() => Some(ThrottleRecord {
                count: c.max(0) as u64,
                last_at: Timestamp::from_millis(l),
                expires_at: Timestamp::from_millis(e),
            }),
            _ => None,
        })
    }

    async fn throttle_list(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, ThrottleRecord)>, StoreError> {
        let index = format!("{}:tidx", self.tag);
        let _: i64 = self
            .query(
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(now.as_millis()),
            )
            .await?;
        let keys: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1))
            .await?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(r) = self.throttle_get(&k, now).await? {
                out.push((k, r));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn throttle_apply(
        &self,
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut inv = self
            .scripts
            .throttle_apply
            .key(format!("{}:tidx", self.tag));
        inv.arg(&*self.tag).arg(now.as_millis());
        change_args(&mut inv, changes);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    async fn throttle_reserve(
        &self,
        expected: &[(&str, ThrottleExpect)],
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut inv = self
            .scripts
            .throttle_reserve
            .key(format!("{}:tidx", self.tag));
        inv.arg(&*self.tag).arg(now.as_millis()).arg(expected.len());
        for (key, want) in expected {
            inv.arg(*key);
            match want {
                ThrottleExpect::Exactly(Some(r)) => inv
                    .arg("x")
                    .arg(r.count.to_string())
                    .arg(r.last_at.as_millis().to_string())
                    .arg(r.expires_at.as_millis().to_string()),
                ThrottleExpect::Exactly(None) => inv.arg("n").arg(0).arg(0).arg(0),
                ThrottleExpect::Below(n) => inv.arg("b").arg(n.to_string()).arg(0).arg(0),
            };
        }
        change_args(&mut inv, changes);
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn throttle_delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.key("t", key))
            .cmd("ZREM")
            .arg(format!("{}:tidx", self.tag))
            .arg(key);
        let mut conn = self.conn.clone();
        let (deleted, _): (i64, i64) = bounded(pipe.query_async(&mut conn)).await?;
        Ok(deleted > 0)
    }
}

/// Where notification connections ([`SessionStore::subscribe`]) go: the server, the current
/// master, or the Cluster node that owns the deployment's slot.
enum Feeds {
    /// The store's own server, in RESP3 and with its TLS.
    Single(redis::Client),
    /// Asks the sentinels for the master at each subscription (RESP3 node settings).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// Classic `PUBLISH` reaches every node of a Cluster, so the subscription could be on any
    /// of them; the heartbeat's `GET` must reach the owner of the deployment's slot. So the
    /// feed's one connection goes to that owner, found by `CLUSTER SLOTS` over the store's
    /// connection at each subscription; after a slot moves or a failover its `GET` fails
    /// (`MOVED`, or a closed connection) and the cache subscribes again, to the new owner.
    Cluster {
        conn: ClusterConnection,
        /// `host:port` → the node's URL, with the store's scheme, credentials and
        /// `#insecure` (so: never shown).
        node_url: Box<dyn Fn(&str) -> String + Send + Sync>,
        certs: Option<redis::TlsCertificates>,
    },
}

/// The name notification connections give themselves (`CLIENT LIST` shows it), after the
/// deployment's prefix.
pub const FEED_CLIENT_NAME: &str = "sessiond-changes";

/// A subscription to `{p}:changes` on a RESP3 connection of its own, which also answers the
/// heartbeat's `GET {p}:gen` (RESP3 lets a subscribed connection run commands). Dropping it
/// closes the connection.
struct RedisFeed {
    conn: MultiplexedConnection,
    /// Push messages from the connection's driver; it sends `Disconnection` and then closes
    /// this channel when the connection is lost.
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    gen_key: String,
    /// A disconnection seen while coalescing messages, to be reported by the next call.
    lost: bool,
}

impl std::fmt::Debug for RedisFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFeed")
            .field("gen_key", &self.gen_key)
            .finish_non_exhaustive()
    }
}

/// The notification connection is gone.
#[derive(Debug)]
struct FeedLost;

impl std::fmt::Display for FeedLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("redis notification connection lost")
    }
}

impl std::error::Error for FeedLost {}

#[async_trait]
impl ChangeFeed for RedisFeed {
    async fn changed(&mut self) -> Result<(), StoreError> {
        // Cancel-safe: the only await is the channel's `recv`, which loses nothing.
        loop {
            if self.lost {
                return Err(unavailable(FeedLost));
            }
            match self.pushes.recv().await {
                None => self.lost = true,
                Some(p) if p.kind == PushKind::Disconnection => self.lost = true,
                Some(p) if p.kind == PushKind::Message => {
                    // Messages already queued are the same news: one flush covers them.
                    while let Ok(p) = self.pushes.try_recv() {
                        if p.kind == PushKind::Disconnection {
                            self.lost = true;
                        }
                    }
                    return Ok(());
                }
                // Confirmations of the subscription.
                Some(_) => {}
            }
        }
    }

    async fn generation(&mut self) -> Result<u64, StoreError> {
        let g: Option<u64> = bounded(
            redis::cmd("GET")
                .arg(&self.gen_key)
                .query_async(&mut self.conn),
        )
        .await?;
        Ok(g.unwrap_or(0))
    }
}

impl RedisStore {
    /// A notification connection through `client`, subscribed to the deployment's channel.
    async fn open_feed(&self, client: redis::Client) -> redis::RedisResult<RedisFeed> {
        let (tx, pushes) = mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_push_sender(tx);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let prefix = self.tag.trim_start_matches('{').trim_end_matches('}');
        // A name for operators (and tests) to find it by; an ACL user not allowed to name its
        // connections still gets its notifications.
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("{FEED_CLIENT_NAME}-{prefix}"))
            .query_async(&mut conn)
            .await;
        conn.subscribe(format!("{}:changes", self.tag)).await?;
        Ok(RedisFeed {
            conn,
            pushes,
            gen_key: format!("{}:gen", self.tag),
            lost: false,
        })
    }

    /// The client of the Cluster node that owns the deployment's slot, as `CLUSTER SLOTS`
    /// reports it now.
    async fn slot_owner(
        &self,
        conn: &ClusterConnection,
        node_url: &(dyn Fn(&str) -> String + Send + Sync),
        certs: Option<&redis::TlsCertificates>,
    ) -> redis::RedisResult<redis::Client> {
        let mut c = conn.clone();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{}:gen", self.tag))
            .query_async(&mut c)
            .await?;
        // [[start, end, [host, port, id, …], replicas…], …]
        let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await?;
        let owner = ranges.iter().find_map(|r| {
            let start: i64 = redis::from_redis_value_ref(r.first()?).ok()?;
            let end: i64 = redis::from_redis_value_ref(r.get(1)?).ok()?;
            if !(start..=end).contains(&slot) {
                return None;
            }
            let (host, port): (String, u16) = match r.get(2)? {
                Value::Array(node) => (
                    redis::from_redis_value_ref(node.first()?).ok()?,
                    redis::from_redis_value_ref(node.get(1)?).ok()?,
                ),
                _ => return None,
            };
            Some(format!("{host}:{port}"))
        });
        let owner = owner.ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "no node owns the deployment's slot",
            ))
        })?;
        let info = redis::IntoConnectionInfo::into_connection_info(node_url(&owner))?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info
            .set_redis_settings(resp3)
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        match certs {
            None => redis::Client::open(info),
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
        }
    }
}

/// The three ways to reach Redis, behind one `ConnectionLike`.
#[derive(Clone)]
enum Conn {
    /// Reconnects by itself.
    Single(ConnectionManager),
    /// Follows slot moves and reconnects by itself.
    Cluster(ClusterConnection),
    /// Asks the sentinels for the master; asks again after any error (a failover).
    Sentinel(Arc<SentinelConn>),
}

struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    current: tokio::sync::RwLock<Option<MultiplexedConnection>>,
}

impl SentinelConn {
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.read().await.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT));
        let c = self
            .client
            .lock()
            .await
            .get_async_connection_with_config(&config)
            .await?;
        *self.current.write().await = Some(c.clone());
        Ok(c)
    }

    async fn forget(&self) {
        *self.current.write().await = None;
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.connection().await?;
                let out = c.req_packed_command(cmd).await;
                if out.is_err() {
                    s.forget().await;
                }
                out
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.connection().await?;
                let out = c.req_packed_commands(cmd, offset, count).await;
                if out.is_err() {
                    s.forget().await;
                }
                out
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests;
