//! Versioned schema migrations. Append only: a released step is never edited, a change is a
//! new step.

use deadpool_postgres::Object;
use tokio_postgres::Error;

/// `(version, SQL)`, in order. Unqualified names: the tables land in the connection's
/// `search_path` (the store's schema, or the database default).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE users (
        -- An identity is a sequence: ids of deleted users are never handed out again, so a
        -- stale reference can never point at a newer user. ALWAYS: only the sequence assigns.
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        username      TEXT NOT NULL,
        -- Lowercase, unique case-insensitively. "C" collation: byte order, like SQLite and the
        -- memory store, so every store lists users in the same order whatever the locale.
        username_key  TEXT COLLATE "C" NOT NULL UNIQUE,
        name          TEXT NOT NULL DEFAULT '',
        email         TEXT NOT NULL DEFAULT '',
        groups        TEXT[] NOT NULL DEFAULT '{}',
        admin         BOOLEAN NOT NULL DEFAULT false,
        disabled      BOOLEAN NOT NULL DEFAULT false,
        created_at    BIGINT NOT NULL,                -- ms since the Unix epoch
        password_hash TEXT NOT NULL                   -- argon2id PHC string
    );
    CREATE TABLE sessions (
        token_hash          BYTEA PRIMARY KEY CHECK (octet_length(token_hash) = 32), -- SHA-256
        id                  TEXT COLLATE "C" NOT NULL UNIQUE,  -- public id; "C": byte order
        user_id             BIGINT NOT NULL,
        created_at          BIGINT NOT NULL,
        last_seen_at        BIGINT NOT NULL,
        absolute_expires_at BIGINT NOT NULL,
        expires_at          BIGINT NOT NULL,
        remember            BOOLEAN NOT NULL,
        ip                  TEXT,
        user_agent          TEXT,
        data                JSONB                       -- a JSON object; NULL = empty
    );
    CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);
    "#,
    ),
    (
        2,
        r#"
    -- Login throttling counters (and device cookies), shared by every instance.
    CREATE TABLE throttle (
        key        TEXT COLLATE "C" PRIMARY KEY,
        count      BIGINT NOT NULL,
        last_at    BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX throttle_by_expiry ON throttle (expires_at);
    "#,
    ),
    (
        3,
        r#"
    -- Changes whenever a session ends early or a user's credentials or status change, in the
    -- same transaction (statement-level triggers: one bump per statement, whatever it
    -- deleted). Verification caches of every instance poll it to stay coherent.
    CREATE TABLE generation (
        id    INT PRIMARY KEY CHECK (id = 1),
        value BIGINT NOT NULL
    );
    INSERT INTO generation (id, value) VALUES (1, 0);
    CREATE FUNCTION sessiond_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE generation SET value = value + 1 WHERE id = 1;
        RETURN NULL;
    END $$;
    CREATE TRIGGER sessions_gone AFTER DELETE ON sessions
        FOR EACH STATEMENT EXECUTE FUNCTION sessiond_bump_generation();
    CREATE TRIGGER users_changed AFTER UPDATE OF password_hash, disabled ON users
        FOR EACH STATEMENT EXECUTE FUNCTION sessiond_bump_generation();
    CREATE TRIGGER users_gone AFTER DELETE ON users
        FOR EACH STATEMENT EXECUTE FUNCTION sessiond_bump_generation();
    "#,
    ),
    (
        4,
        r#"
    -- A user's admin flag and groups decide forward-auth answers and the admin pages, so a
    -- change to them made straight in the database (there is no CLI for it) must reach
    -- every verification cache too, like a password or disabled change.
    DROP TRIGGER users_changed ON users;
    CREATE TRIGGER users_changed AFTER UPDATE OF password_hash, disabled, admin, groups ON users
        FOR EACH STATEMENT EXECUTE FUNCTION sessiond_bump_generation();
    "#,
    ),
    (
        5,
        r#"
    -- How each session was authenticated: 1 one factor, 2 two factors (`AuthLevel::as_i64`).
    -- Sessions from before second factors were one-factor sessions.
    ALTER TABLE sessions ADD COLUMN level BIGINT NOT NULL DEFAULT 1;

    -- Second factors; their secrets are ciphertexts (the library encrypts them before they
    -- reach a store). Each row belongs to a user and goes with it (ON DELETE CASCADE, in the
    -- statement that deletes the user, whoever runs it): no passkey of a deleted user is left
    -- to sign in with, or to hold its credential id.
    CREATE TABLE totp (
        user_id    BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        secret     BYTEA,                     -- the confirmed secret; NULL = none active
        last_step  BIGINT NOT NULL DEFAULT 0, -- last accepted time step: never accepted again
        pending    BYTEA,                     -- a secret handed out, not yet confirmed
        pending_at BIGINT                     -- when it was handed out (ms)
    );
    -- SHA-256 of each unspent recovery code.
    CREATE TABLE recovery_codes (
        user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        hash    BYTEA NOT NULL CHECK (octet_length(hash) = 32),
        PRIMARY KEY (user_id, hash)
    );
    CREATE TABLE passkeys (
        credential_id BYTEA PRIMARY KEY,      -- unique across all users
        user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        data          TEXT NOT NULL,          -- the WebAuthn credential, serialised
        created_at    BIGINT NOT NULL,
        last_used_at  BIGINT,
        -- Registration order, for passkeys registered in the same millisecond.
        seq           BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX passkeys_by_user ON passkeys (user_id, created_at);
    "#,
    ),
    (
        6,
        r#"
    -- Push invalidation: every bump also notifies, so verification caches learn of a change
    -- as it commits instead of polling (`PostgresStore::subscribe`). The payload is the
    -- schema of the table that changed: deployments sharing a database in different schemas
    -- share the channel, and each listener keeps only its own schema's notifications.
    -- NOTIFY is sent at commit (never for a rollback) and duplicates within one transaction
    -- collapse into one. Only this function notifies: a hand-made update of `generation`
    -- does not, and the listeners' heartbeat is what catches it.
    CREATE OR REPLACE FUNCTION sessiond_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE generation SET value = value + 1 WHERE id = 1;
        PERFORM pg_notify('sessiond_generation', TG_TABLE_SCHEMA);
        RETURN NULL;
    END $$;
    "#,
    ),
    (
        7,
        r#"
    -- A statement-level trigger fires even when its statement changed no row, and every
    -- login runs a DELETE (the per-user session cap) that almost always deletes nothing: each
    -- login moved the generation, so every instance's verification cache was flushed at the
    -- rate of logins, and each login sent a NOTIFY (whose commit is serialised with every
    -- other notifying commit). The sessions trigger now sees the rows it deleted (a
    -- transition table; the users trigger with a column list cannot have one) and moves the
    -- generation only if there were any.
    CREATE OR REPLACE FUNCTION sessiond_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_TABLE_NAME = 'sessions' THEN
            -- Nested, not ANDed: only the sessions trigger has `gone`, and PL/pgSQL plans
            -- this statement only when it runs it.
            IF NOT EXISTS (SELECT FROM gone) THEN
                RETURN NULL;
            END IF;
        END IF;
        UPDATE generation SET value = value + 1 WHERE id = 1;
        PERFORM pg_notify('sessiond_generation', TG_TABLE_SCHEMA);
        RETURN NULL;
    END $$;
    DROP TRIGGER sessions_gone ON sessions;
    CREATE TRIGGER sessions_gone AFTER DELETE ON sessions REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION sessiond_bump_generation();
    "#,
    ),
    (
        8,
        r#"
    -- A purge that removes only sessions whose deadline passed a while ago changes no
    -- verification cache's answer (each refuses them by their deadline already), so it leaves
    -- the generation alone (`SessionStore::purge_expired`): a NOTIFY once a batch flushed
    -- every instance's cache throughout a sweep. The purge sets `sessiond.purge_quiet_until`
    -- (the database's clock less `PURGE_GRACE`, ms) for its own transaction only
    -- (`set_config(..., true)`); while it is set, the DELETE moves the generation only if it
    -- removed a session that expired after it. Unset (every other DELETE, hand-made ones
    -- included) it reads as NULL or '', and any removed row moves it, as before.
    CREATE OR REPLACE FUNCTION sessiond_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        quiet BIGINT;
    BEGIN
        IF TG_TABLE_NAME = 'sessions' THEN
            quiet := nullif(current_setting('sessiond.purge_quiet_until', true), '')::bigint;
            -- Nested, not ANDed: only the sessions trigger has `gone`, and PL/pgSQL plans
            -- this statement only when it runs it.
            IF NOT EXISTS (SELECT FROM gone WHERE quiet IS NULL OR expires_at > quiet) THEN
                RETURN NULL;
            END IF;
        END IF;
        UPDATE generation SET value = value + 1 WHERE id = 1;
        PERFORM pg_notify('sessiond_generation', TG_TABLE_SCHEMA);
        RETURN NULL;
    END $$;
    "#,
    ),
];

/// Key of the advisory lock that serialises migrations (and schema creation) across every
/// process connecting to the database. Arbitrary, fixed forever: `b"sessiond"` as an integer.
const MIGRATION_LOCK: i64 = 0x7365_7373_696f_6e64;

/// Creates `schema` if it does not exist, under the migration lock.
///
/// Its own transaction on purpose: PostgreSQL resolves a connection's `search_path` through
/// its catalog cache, which it refreshes at the start of a transaction but not when an
/// advisory lock is granted (on 15, `current_schemas()` still came back empty right after
/// waiting out another connection that created the schema). Committed here first, the schema
/// exists before the migration transaction starts on any connection, so name resolution in
/// that transaction never depends on when the cache happens to catch up.
pub async fn create_schema(conn: &mut Object, schema: &str) -> Result<(), Error> {
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // A plain catalog query reads a fresh snapshot, where `CREATE SCHEMA IF NOT EXISTS` would
    // ask the cache described above.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?
        .is_some();
    if !exists {
        // `schema` was checked to be a plain lowercase identifier, so quoting cannot break.
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await?;
    }
    tx.commit().await
}

/// Applies the steps the database lacks, each with its version row, in one transaction that
/// first takes the migration advisory lock: of several instances starting at once, one applies
/// the steps and the others, once it commits, find nothing left to do.
pub async fn apply(conn: &mut Object) -> Result<(), Error> {
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
                 DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying schema migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.commit().await
}
