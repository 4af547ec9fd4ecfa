//! The admin CLI, run as the real binary against a real database file.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use sessiond::Overrides;

use crate::helpers::*;

fn sessiond(db: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(args)
        .env("SESSIOND_DATABASE", db)
        .env_remove("SESSIOND_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sessiond binary runs");
    if let Some(input) = stdin {
        // The command may exit before reading (e.g. refusing a duplicate user first): a
        // broken pipe here is not the test's concern.
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
}

#[tokio::test]
async fn users_are_managed_from_the_cli_and_changes_end_sessions() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db = db_url(dir.path());
    let run = |args: &[&str], stdin: Option<&str>| sessiond(&db, args, stdin);

    let out = run(
        &[
            "user",
            "add",
            "Nina",
            "--password-stdin",
            "--email",
            "nina@example.com",
            "--name",
            "Nina N",
            "--groups",
            "ops, dev",
            "--admin",
        ],
        Some("first password\n"),
    );
    assert!(ok(&out).contains("created user Nina (admin)"));
    fails(
        &run(
            &["user", "add", "nina", "--password-stdin"],
            Some("another password\n"),
        ),
        1,
        "already exists",
    );
    fails(
        &run(
            &["user", "add", "bad name", "--password-stdin"],
            Some("long enough\n"),
        ),
        2,
        "username",
    );
    fails(
        &run(
            &["user", "add", "shorty", "--password-stdin"],
            Some("short\n"),
        ),
        2,
        "at least 8 bytes",
    );
    fails(
        &run(&["user", "add", "nostdin"], None),
        2,
        "--password-stdin",
    );
    fails(&run(&["user", "frobnicate"], None), 2, "frobnicate");
    fails(
        &run(&["user", "disable", "ghost"], None),
        1,
        "no user named",
    );

    let list: serde_json::Value =
        serde_json::from_str(&ok(&run(&["user", "list", "--json"], None))).unwrap();
    assert_eq!(list[0]["username"], "Nina");
    assert_eq!(list[0]["groups"], serde_json::json!(["ops", "dev"]));
    assert_eq!(list[0]["admin"], true);
    assert!(
        !list.to_string().contains("argon2"),
        "no hashes in listings"
    );
    assert!(ok(&run(&["user", "list"], None)).contains("nina@example.com"));

    // A server on the same file: the CLI's changes reach it through the store.
    let app = spawn_app_in(dir.clone(), Overrides::default()).await;
    let c = app.client();
    // The password is the line without its newline.
    assert_eq!(
        app.api_login(&c, "nina", "first password").await.status(),
        StatusCode::OK
    );

    let sessions: serde_json::Value =
        serde_json::from_str(&ok(&run(&["session", "list", "--json"], None))).unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    assert_eq!(sessions[0]["user"], "Nina");
    assert!(sessions[0]["id"].as_str().unwrap().len() == 22);

    assert!(ok(&run(
        &["user", "passwd", "nina", "--password-stdin"],
        Some("second password\r\n")
    ))
    .contains("1 session(s) ended"));
    whoami_becomes(
        &app,
        &c,
        StatusCode::UNAUTHORIZED,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        app.api_login(&c, "nina", "first password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.api_login(&c, "nina", "second password").await.status(),
        StatusCode::OK
    );

    // Nina is about to be disabled and deleted: she must not be the last enabled admin.
    ok(&run(
        &["user", "add", "zed-keeper", "--admin", "--password-stdin"],
        Some("zed-keeper password\n"),
    ));
    assert!(ok(&run(&["user", "disable", "nina"], None)).contains("1 session(s) ended"));
    whoami_becomes(
        &app,
        &c,
        StatusCode::UNAUTHORIZED,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        app.api_login(&c, "nina", "second password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    ok(&run(&["user", "enable", "nina"], None));
    assert_eq!(
        app.api_login(&c, "nina", "second password").await.status(),
        StatusCode::OK
    );

    assert!(ok(&run(&["user", "delete", "nina"], None)).contains("1 session(s) ended"));
    whoami_becomes(
        &app,
        &c,
        StatusCode::UNAUTHORIZED,
        Duration::from_millis(100),
    )
    .await;
    let list: serde_json::Value =
        serde_json::from_str(&ok(&run(&["user", "list", "--json"], None))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["username"], "zed-keeper");
}

#[tokio::test]
async fn sessions_are_listed_revoked_and_purged_from_the_cli() {
    let app = spawn_app().await;
    let db = db_url(app.dir.path());
    let run = |args: &[&str]| sessiond(&db, args, None);
    app.add_user("olga").await;
    app.add_user("pete").await;
    let olga1 = app.client();
    let olga2 = app.client();
    let pete = app.client();
    let t1 = session_cookie(&app.api_login(&olga1, "olga", PASSWORD).await).unwrap();
    app.api_login(&olga2, "olga", PASSWORD).await;
    app.api_login(&pete, "pete", PASSWORD).await;

    let listing = ok(&run(&["session", "list", "--user", "olga", "--json"]));
    assert!(!listing.contains(&t1), "listing shows no secrets");
    let listed: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    assert!(ok(&run(&["session", "revoke", &id])).contains("revoked 1"));
    whoami_becomes(
        &app,
        &olga1,
        StatusCode::UNAUTHORIZED,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(app.whoami(&olga2).await.status(), StatusCode::OK);
    fails(&run(&["session", "revoke", &id]), 1, "no session");
    fails(
        &run(&["session", "revoke", "not-an-id"]),
        2,
        "not a session id",
    );
    fails(&run(&["session", "revoke"]), 2, "required");

    assert!(ok(&run(&["session", "revoke", "--user", "olga"])).contains("revoked 1"));
    whoami_becomes(
        &app,
        &olga2,
        StatusCode::UNAUTHORIZED,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(app.whoami(&pete).await.status(), StatusCode::OK);
    assert!(ok(&run(&["session", "revoke", "--all"])).contains("revoked 1"));
    whoami_becomes(
        &app,
        &pete,
        StatusCode::UNAUTHORIZED,
        Duration::from_millis(100),
    )
    .await;

    // Purge removes only expired sessions.
    app.api_login(&pete, "pete", PASSWORD).await;
    let store = app.state.sessions.store();
    let (_, mut old) =
        sessiond_store_tests::sessions::session_at(1, sessiond_core::Timestamp::from_millis(0));
    old.expires_at = sessiond_core::Timestamp::from_millis(1);
    store.create(&old).await.unwrap();
    assert!(ok(&run(&["session", "purge"])).contains("removed 1 expired session(s)"));
    assert_eq!(store.list_all().await.unwrap().len(), 1);
    assert_eq!(app.whoami(&pete).await.status(), StatusCode::OK);
}

#[test]
fn hash_password_prints_a_phc_string() {
    let out = sessiond(
        "sqlite:///nonexistent/never-opened.db",
        &["hash-password", "--password-stdin"],
        Some("hunter2hunter2\n"),
    );
    let phc = ok(&out);
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(!phc.contains("hunter2"));
    let help = sessiond("sqlite://x.db", &["--help"], None);
    let text = ok(&help);
    for cmd in ["serve", "user", "session", "hash-password"] {
        assert!(text.contains(cmd), "--help lists {cmd}");
    }
}

/// A store URL that passes the configuration's checks but that its store cannot use (a
/// Redis key prefix with a space, a PostgreSQL port out of range: only the store reads
/// those) is a configuration error: one line naming the setting, exit 2 like any bad
/// setting, from `serve` as from the admin commands; never "corrupt", never the password.
#[test]
fn a_store_url_its_store_refuses_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_url(dir.path());
    let redis = "redis://127.0.0.1:6379/0?prefix=two words";
    for args in [
        &["user", "list", "--session-store", redis][..],
        &["serve", "--listen", "127.0.0.1:0", "--session-store", redis],
    ] {
        let out = sessiond(&db, args, None);
        fails(&out, 2, "session store URL (redis://…): prefix must be");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    }
    let out = sessiond(
        "postgres://sessiond:pg-hunter2@127.0.0.1:99999/sessiond",
        &["user", "list"],
        None,
    );
    fails(&out, 2, "invalid PostgreSQL URL");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("corrupt") && !stderr.contains("pg-hunter2"),
        "{stderr}"
    );
}

/// The CLI refuses to disable or delete the last enabled admin (one clear line, exit 1),
/// and `user add` / `user enable` write audit events (saying whether the user is an admin).
#[tokio::test]
async fn the_cli_keeps_the_last_admin_and_audits_enable() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db = db_url(dir.path());
    let audited = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(args)
            .env("SESSIOND_DATABASE", &db)
            .env("RUST_LOG", "sessiond::audit=info")
            .env("SESSIOND_LOG_FORMAT", "json")
            .env_remove("SESSIOND_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let out = audited(
        &["user", "add", "root", "--admin", "--password-stdin"],
        Some("first password\n"),
    );
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("\"event\":\"user_created\"") && log.contains("\"admin\":true"),
        "{log}"
    );
    fails(
        &sessiond(&db, &["user", "disable", "root"], None),
        1,
        "last enabled admin",
    );
    fails(
        &sessiond(&db, &["user", "delete", "root"], None),
        1,
        "last enabled admin",
    );
    ok(&sessiond(&db, &["user", "list"], None));

    ok(&sessiond(
        &db,
        &["user", "add", "second", "--admin", "--password-stdin"],
        Some("second password\n"),
    ));
    assert!(ok(&sessiond(&db, &["user", "disable", "root"], None)).contains("disabled root"));
    fails(
        &sessiond(&db, &["user", "delete", "second"], None),
        1,
        "last enabled admin",
    );
    let out = audited(&["user", "enable", "root"], None);
    assert!(ok(&out).contains("enabled root"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("\"event\":\"user_enabled\""), "{log}");
    assert!(ok(&sessiond(&db, &["user", "delete", "second"], None)).contains("deleted second"));
    let out = audited(
        &["user", "add", "plain", "--password-stdin"],
        Some("third password\n"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"admin\":false"));
    // `.` and `..` are not usernames.
    for bad in [".", ".."] {
        fails(
            &sessiond(
                &db,
                &["user", "add", bad, "--password-stdin"],
                Some("a password\n"),
            ),
            2,
            "username",
        );
    }
}
