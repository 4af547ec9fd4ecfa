//! Running sessiond as a service (issue 19): `--version`, `config check`, graceful shutdown
//! on SIGTERM, progress of long CLI work, request ids in the logs, the systemd unit.

use std::process::{Command, Output, Stdio};

use sessiond_store_tests::services::spare_port;

fn sessiond(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
    cmd.args(args)
        .env_remove("SESSIOND_CONFIG")
        .env_remove("SESSIOND_DATABASE")
        .env_remove("SESSIOND_SESSION_STORE")
        .env_remove("SESSIOND_ADMIN_PASSWORD")
        .env_remove("SESSIOND_ENCRYPTION_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("sessiond binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--version` names the git revision the binary was built from (`build.rs`).
#[test]
fn version_names_the_git_revision() {
    let out = sessiond(&["--version"], &[]);
    assert!(out.status.success());
    let line = text(&out.stdout);
    let line = line.trim_end();
    let expected_revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        line,
        format!(
            "sessiond {} (git {expected_revision})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// A valid configuration whose stores answer: exit 0, the effective settings printed, every
/// secret (the admin password, the encryption key, the store password) as `***`.
#[tokio::test]
async fn config_check_prints_the_effective_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(
        &file,
        "public_url = \"https://auth.example.com\"\n\
         [session]\nidle_timeout = \"10m\"\n\
         [proxy]\ntrusted = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let key = "ab".repeat(32);
    let secrets = [
        ("SESSIOND_ADMIN_PASSWORD", "admin-hunter2-secret"),
        ("SESSIOND_ENCRYPTION_KEY", key.as_str()),
    ];
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let out = sessiond(
        &[
            "config",
            "check",
            "--config",
            file.to_str().unwrap(),
            "--database",
            &db,
        ],
        &secrets,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "public_url = \"https://auth.example.com\"",
        "idle_timeout = \"10m\"",
        "trusted = [\"10.0.0.0/8\"]",
        "# SESSIOND_ADMIN_PASSWORD = \"***\"",
        "# encryption key = \"***\"",
        "# configuration ok",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert!(stdout.contains("# database: ok"), "{stdout}");
    for (_, secret) in secrets {
        assert!(!stdout.contains(secret), "a secret printed:\n{stdout}");
    }
    // A check leaves no files behind: the database is created by `serve`.
    assert!(!dir.path().join("s.db").exists());

    // A store URL with a password: shown redacted, the store reached (PostgreSQL trusts the
    // test's connections, so the password is not checked, only printed).
    if let Some(pg) = crate::shared::fresh_postgres().await {
        let pg = pg.replacen("://postgres@", "://postgres:pg-hunter2@", 1);
        let out = sessiond(&["config", "check", "--database", &pg], &[]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        assert!(stdout.contains("# database: ok"), "{stdout}");
        assert!(!stdout.contains("pg-hunter2"), "{stdout}");
    }
}

/// An invalid file: exit 1, one line naming the key, nothing printed as if it were valid.
#[test]
fn config_check_refuses_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[session]\nidle_timeout = \"soon\"\n").unwrap();
    let out = sessiond(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid configuration: idle_timeout"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!text(&out.stdout).contains("configuration ok"));

    std::fs::write(&file, "no_such_key = 1\n").unwrap();
    let out = sessiond(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no_such_key"), "{out:?}");
}

/// Unreachable stores: exit 1, each named with its (redacted) URL and its cause.
#[test]
fn config_check_names_each_unreachable_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let (pg_port, redis_port) = (spare_port(), spare_port());
    let redis = format!("redis://:redis-hunter2@127.0.0.1:{redis_port}/0");
    let out = sessiond(
        &[
            "config",
            "check",
            "--database",
            &db,
            "--session-store",
            &redis,
        ],
        &[],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("# database: ok"), "{stdout}");
    assert!(stdout.contains("# session_store: FAILED"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "session_store redis://:***@127.0.0.1:{redis_port}/0: unreachable"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "the cause: {stderr}");
    assert!(!stdout.contains("redis-hunter2") && !stderr.contains("redis-hunter2"));

    let pg = format!("postgres://sessiond:pg-hunter2@127.0.0.1:{pg_port}/sessiond");
    let out = sessiond(&["config", "check", "--database", &pg], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("database postgres://sessiond:***@127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stdout.contains("pg-hunter2") && !stderr.contains("pg-hunter2"));

    let missing = "sqlite:///nonexistent-dir-of-sessiond/s.db";
    let out = sessiond(&["config", "check", "--database", missing], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("neither does its directory"));
}
