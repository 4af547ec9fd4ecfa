//! Versioned schema migrations. Append only: a released step is never edited, a change is a
//! new step.

use rusqlite::{params, Connection, TransactionBehavior};

/// `(version, SQL)`, in order.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "
    CREATE TABLE users (
        -- AUTOINCREMENT: ids of deleted users are never reused, so a stale reference can
        -- never point at a newer user.
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT NOT NULL,
        username_key  TEXT NOT NULL UNIQUE,       -- lowercase: unique case-insensitively
        name          TEXT NOT NULL DEFAULT '',
        email         TEXT NOT NULL DEFAULT '',
        groups        TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
        admin         INTEGER NOT NULL DEFAULT 0,
        disabled      INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL,           -- ms since the Unix epoch
        password_hash TEXT NOT NULL               -- argon2id PHC string
    );
    CREATE TABLE sessions (
        token_hash          BLOB PRIMARY KEY,     -- SHA-256 of the cookie secret
        id                  TEXT NOT NULL UNIQUE, -- public id
        user_id             INTEGER NOT NULL,
        created_at          INTEGER NOT NULL,
        last_seen_at        INTEGER NOT NULL,
        absolute_expires_at INTEGER NOT NULL,
        expires_at          INTEGER NOT NULL,
        remember            INTEGER NOT NULL,
        ip                  TEXT,
        user_agent          TEXT
    ) WITHOUT ROWID;
    CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);
    ",
    ),
    (
        2,
        "
    -- Key-value data of library users (JSON object); NULL = empty. Read only on demand.
    ALTER TABLE sessions ADD COLUMN data TEXT;
    ",
    ),
    (
        3,
        "
    -- Login throttling counters (and device cookies), shared by every process on the file.
    CREATE TABLE throttle (
        key        TEXT PRIMARY KEY,
        count      INTEGER NOT NULL,
        last_at    INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX throttle_by_expiry ON throttle (expires_at);
    ",
    ),
    (
        4,
        "
    -- Changes whenever a session ends early or a user's credentials or status change, in the
    -- same transaction (triggers: no code path, not even a hand-written DELETE, can forget).
    -- Verification caches of every process poll it to stay coherent.
    CREATE TABLE generation (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO generation (id, value) VALUES (1, 0);
    CREATE TRIGGER sessions_gone AFTER DELETE ON sessions
        BEGIN UPDATE generation SET value = value + 1 WHERE id = 1; END;
    CREATE TRIGGER users_changed AFTER UPDATE OF password_hash, disabled ON users
        BEGIN UPDATE generation SET value = value + 1 WHERE id = 1; END;
    CREATE TRIGGER users_gone AFTER DELETE ON users
        BEGIN UPDATE generation SET value = value + 1 WHERE id = 1; END;
    ",
    ),
    (
        5,
        "
    -- A user's admin flag and groups decide forward-auth answers and the admin pages, so a
    -- change to them made straight in the database (there is no CLI for it) must reach
    -- every verification cache too, like a password or disabled change.
    DROP TRIGGER users_changed;
    CREATE TRIGGER users_changed AFTER UPDATE OF password_hash, disabled, admin, groups ON users
        BEGIN UPDATE generation SET value = value + 1 WHERE id = 1; END;
    ",
    ),
    (
        6,
        "
    -- How each session was authenticated: 1 one factor, 2 two factors (`AuthLevel::as_i64`).
    -- Sessions from before second factors were one-factor sessions.
    ALTER TABLE sessions ADD COLUMN level INTEGER NOT NULL DEFAULT 1;

    -- Second factors; their secrets are ciphertexts (the library encrypts them before they
    -- reach a store). No REFERENCES clauses: SQLite enforces foreign keys only on connections
    -- that turn them on (`PRAGMA foreign_keys`), which a hand-made connection may not, so an
    -- ON DELETE CASCADE would be a promise the file cannot keep. A trigger always runs: the
    -- factors of a deleted user go in the statement that deletes the user, whatever deletes
    -- it (no passkey of a deleted user is left to sign in with, or to hold its credential id).
    CREATE TABLE totp (
        user_id    INTEGER PRIMARY KEY,
        secret     BLOB,                       -- the confirmed secret; NULL = none active
        last_step  INTEGER NOT NULL DEFAULT 0, -- last accepted time step: never accepted again
        pending    BLOB,                       -- a secret handed out, not yet confirmed
        pending_at INTEGER                     -- when it was handed out (ms)
    );
    -- SHA-256 of each unspent recovery code.
    CREATE TABLE recovery_codes (
        user_id INTEGER NOT NULL,
        hash    BLOB NOT NULL,
        PRIMARY KEY (user_id, hash)
    ) WITHOUT ROWID;
    -- A rowid table: the rowid orders passkeys registered in the same millisecond.
    CREATE TABLE passkeys (
        credential_id BLOB PRIMARY KEY,        -- unique across all users
        user_id       INTEGER NOT NULL,
        name          TEXT NOT NULL,
        data          TEXT NOT NULL,           -- the WebAuthn credential, serialised
        created_at    INTEGER NOT NULL,
        last_used_at  INTEGER
    );
    CREATE INDEX passkeys_by_user ON passkeys (user_id, created_at);
    CREATE TRIGGER users_factors_gone AFTER DELETE ON users
        BEGIN
            DELETE FROM totp WHERE user_id = old.id;
            DELETE FROM recovery_codes WHERE user_id = old.id;
            DELETE FROM passkeys WHERE user_id = old.id;
        END;
    ",
    ),
    (
        7,
        "
    -- A purge that removes only sessions whose deadline passed a while ago changes no
    -- verification cache's answer (each refuses them by their deadline already), so it leaves
    -- the generation alone (`SessionStore::purge_expired`): moving it once a batch flushed
    -- every instance's cache throughout a sweep. The purge sets `quiet_until` (the store's
    -- clock less `PURGE_GRACE`, ms) in its own transaction and clears it before committing;
    -- while it is set, a deleted session moves the generation only if it expired after it.
    -- NULL otherwise, so every other DELETE, hand-made ones included, moves it as before.
    ALTER TABLE generation ADD COLUMN quiet_until INTEGER;
    DROP TRIGGER sessions_gone;
    CREATE TRIGGER sessions_gone AFTER DELETE ON sessions
        WHEN old.expires_at > coalesce((SELECT quiet_until FROM generation WHERE id = 1),
                                       old.expires_at - 1)
        BEGIN UPDATE generation SET value = value + 1 WHERE id = 1; END;
    ",
    ),
];

/// Applies the steps the file lacks, each with its version row, in one `IMMEDIATE` transaction
/// (taken before reading the version, so concurrent openers serialise and none applies a step
/// twice).
pub fn apply(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
         )",
    )?;
    let current: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying schema migration");
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES (?1)",
            params![version],
        )?;
    }
    tx.commit()
}
