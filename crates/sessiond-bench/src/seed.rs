//! Many stored sessions without a million logins: rows written straight into the SQLite file
//! (schema of `sessiond-store-sqlite`'s migrations), in one transaction, while no server runs.
//!
//! The secrets are made here too (random, hashed like the server hashes them), so the
//! benchmark can verify sessions picked at random across the whole table: a million rows of
//! which only one is ever read would measure a cache, not a store.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rusqlite::{params, Connection};
use sessiond_core::{SessionToken, TOKEN_BYTES};

/// The server's default idle timeout (30 min), in ms.
const IDLE_MS: i64 = 30 * 60 * 1000;

/// Milliseconds since the Unix epoch (the stores' time unit).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Creates the file (migrations run) and the admin `name` with `password`, through the CLI.
pub fn add_user(
    sessiond: &Path,
    database_url: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<()> {
    add_user_as(sessiond, database_url, name, password, true)
}

/// [`add_user`], an admin or not.
pub fn add_user_as(
    sessiond: &Path,
    database_url: &str,
    name: &str,
    password: &str,
    admin: bool,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(sessiond);
    cmd.args(["user", "add", name]);
    if admin {
        cmd.arg("--admin");
    }
    let mut child = cmd
        .args(["--password-stdin", "--database", database_url])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", sessiond.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        writeln!(stdin, "{password}")?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "sessiond user add failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub fn user_id(db: &Path, name: &str) -> anyhow::Result<i64> {
    let c = Connection::open(db)?;
    Ok(c.query_row(
        "SELECT id FROM users WHERE username_key = ?1",
        [name.to_ascii_lowercase()],
        |r| r.get(0),
    )?)
}

/// Inserts `n` live sessions of `user_id` marked `marker` (their user agent), and returns
/// the cookie values of `sample` of them, spread evenly over the key space.
pub fn insert_sessions(
    db: &Path,
    user_id: i64,
    n: u64,
    marker: &str,
    sample: usize,
) -> anyhow::Result<Vec<String>> {
    let n_usize = usize::try_from(n)?;
    // Entropy for all secrets and ids at once: one getrandom call per MiB, not per row.
    let mut entropy = vec![0u8; n_usize * (TOKEN_BYTES + 16)];
    for chunk in entropy.chunks_mut(1 << 20) {
        getrandom::fill(chunk).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    }
    let mut rows: Vec<([u8; 32], String, Option<String>)> = Vec::with_capacity(n_usize);
    let every = (n_usize / sample.max(1)).max(1);
    for (i, e) in entropy.chunks_exact(TOKEN_BYTES + 16).enumerate() {
        let mut secret = [0u8; TOKEN_BYTES];
        secret.copy_from_slice(&e[..TOKEN_BYTES]);
        let token = SessionToken::from_entropy(secret);
        let id = base64_url(&e[TOKEN_BYTES..]);
        let keep = (i % every == 0).then(|| token.expose().to_owned());
        rows.push((*token.hash().as_bytes(), id, keep));
    }
    drop(entropy);
    // Key order: appends to the primary-key B-tree instead of random inserts.
    rows.sort_unstable_by_key(|r| r.0);
    // Last seen two minutes ago: an activity write is due on the first verification, so a
    // touch pass (see the harness) brings every probed session to the same state before
    // the measurement, whatever time the seeding took.
    let now = now_ms() - 120_000;
    let idle = IDLE_MS;
    let absolute = 12 * 3600 * 1000;
    let mut c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    // Setup only: the file is not the server's until it starts.
    c.pragma_update(None, "synchronous", "OFF")?;
    c.pragma_update(None, "cache_size", -262_144)?;
    let tx = c.transaction()?;
    let mut cookies = Vec::with_capacity(sample);
    {
        let mut stmt = tx.prepare(
            "INSERT INTO sessions (token_hash, id, user_id, created_at, last_seen_at, \
             absolute_expires_at, expires_at, remember, ip, user_agent) \
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, 0, '127.0.0.1', ?7)",
        )?;
        for (hash, id, keep) in rows {
            stmt.execute(params![
                hash.as_slice(),
                id,
                user_id,
                now,
                now + absolute,
                now + idle,
                marker
            ])?;
            if let Some(token) = keep {
                cookies.push(token);
            }
        }
    }
    tx.commit()?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    cookies.truncate(sample);
    Ok(cookies)
}

/// Moves the deadline of every session marked `marker` to `at_ms`; returns how many.
pub fn expire_at(db: &Path, marker: &str, at_ms: i64) -> anyhow::Result<u64> {
    let c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update(None, "synchronous", "OFF")?;
    c.pragma_update(None, "cache_size", -262_144)?;
    let n = c.execute(
        "UPDATE sessions SET expires_at = ?1, absolute_expires_at = ?1 WHERE user_agent = ?2",
        params![at_ms, marker],
    )?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(u64::try_from(n)?)
}

/// Sets the last activity of every session marked `marker` to `last_seen_ms` (and its
/// idle deadline to match), as if it had been idle since.
pub fn set_last_seen(db: &Path, marker: &str, last_seen_ms: i64) -> anyhow::Result<u64> {
    let c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    let n = c.execute(
        "UPDATE sessions SET last_seen_at = ?1, expires_at = min(absolute_expires_at, ?1 + ?2) \
         WHERE user_agent = ?3",
        params![last_seen_ms, IDLE_MS, marker],
    )?;
    Ok(u64::try_from(n)?)
}

/// Sessions marked `marker` whose last activity is at or after `since_ms`.
pub fn seen_since(db: &Path, marker: &str, since_ms: i64) -> anyhow::Result<u64> {
    let c = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(30))?;
    let n: i64 = c.query_row(
        "SELECT count(*) FROM sessions WHERE user_agent = ?1 AND last_seen_at >= ?2",
        params![marker, since_ms],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n)?)
}

/// `(expired, live)` session counts at `now_ms`.
pub fn count(db: &Path, now_ms: i64) -> anyhow::Result<(u64, u64)> {
    let c = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(30))?;
    let (expired, live): (i64, i64) = c.query_row(
        "SELECT count(*) FILTER (WHERE expires_at <= ?1), count(*) FILTER (WHERE expires_at > ?1) \
         FROM sessions",
        [now_ms],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((u64::try_from(expired)?, u64::try_from(live)?))
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_22_url_safe_characters() {
        let id = base64_url(&[0xff; 16]);
        assert_eq!(id.len(), 22);
        assert!(sessiond_core::SessionId::parse(&id).is_some());
    }
}
