//! Metrics (docs/reference/endpoints.md, "Metrics"): served on `metrics_listen` only, never on
//! the public listener; counting what happened; valid for `promtool check metrics`; and the
//! example dashboard and alert rules in `examples/` reading only metrics that exist.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use reqwest::StatusCode;
use sessiond::Overrides;

use crate::helpers::*;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `promtool`, if installed (Debian's `prometheus` package). Missing: a notice and `None`
/// locally, a failure under `SESSIOND_REQUIRE_SERVICES=1` (CI installs it).
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var("SESSIOND_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "promtool is not installed (apt-get install prometheus) and SESSIOND_REQUIRE_SERVICES=1"
    );
    eprintln!(
        "skipping the promtool checks: promtool is not installed (apt-get install prometheus)"
    );
    None
}

/// A port free a moment ago, for the metrics listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the sample `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_their_own_listener_and_count_what_happened() {
    let port = free_port();
    let app = spawn_app_in(
        Arc::new(tempfile::tempdir().unwrap()),
        Overrides {
            metrics_listen: Some(format!("127.0.0.1:{port}")),
            ..Overrides::default()
        },
    )
    .await;
    app.add_user("mia").await;
    let scrape = || async move {
        let res = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        res.text().await.unwrap()
    };

    // The public listener does not serve them.
    let res = app
        .bare_client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(!res.text().await.unwrap().contains("# TYPE"));

    // A failed login, a successful one, two verifications, one forward-auth refusal.
    let client = app.client();
    let res = app.api_login(&client, "mia", "not the password").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app.api_login(&client, "mia", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(app.whoami(&client).await.status(), StatusCode::OK);
    }
    let host = app.base.trim_start_matches("http://").to_owned();
    let res = app
        .bare_client()
        .get(app.url("/api/authz/forward-auth"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", &host)
        .header("x-forwarded-uri", "/app")
        .header("x-forwarded-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let text = scrape().await;
    let want = [
        (
            r#"sessiond_authentications_total{method="password",result="failure"}"#,
            1.0,
        ),
        (
            r#"sessiond_authentications_total{method="password",result="success"}"#,
            1.0,
        ),
        (
            r#"sessiond_authentications_total{method="totp",result="success"}"#,
            0.0,
        ),
        (
            r#"sessiond_forward_auth_decisions_total{outcome="unauthenticated"}"#,
            1.0,
        ),
        (
            r#"sessiond_forward_auth_decisions_total{outcome="allowed"}"#,
            0.0,
        ),
        (
            r#"sessiond_http_request_duration_seconds_count{group="session"}"#,
            2.0,
        ),
        (
            r#"sessiond_http_request_duration_seconds_count{group="login"}"#,
            2.0,
        ),
        (
            r#"sessiond_http_request_duration_seconds_count{group="other"}"#,
            1.0,
        ),
        ("sessiond_verifications_total", 2.0),
        ("sessiond_sessions_started_total", 1.0),
        (
            r#"sessiond_store_errors_total{store="sessions",backend="sqlite"}"#,
            0.0,
        ),
        ("sessiond_hash_jobs", 0.0),
    ];
    for (series, value) in want {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    // Histograms are cumulative: the `+Inf` bucket is the count, and no bucket holds more
    // than the next one.
    for (series, count) in [
        (
            r#"sessiond_http_request_duration_seconds_bucket{group="session","#,
            r#"sessiond_http_request_duration_seconds_count{group="session"}"#,
        ),
        (
            "sessiond_hash_duration_seconds_bucket{",
            "sessiond_hash_duration_seconds_count",
        ),
    ] {
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{series}: {buckets:?}"
        );
        assert_eq!(
            buckets.last().copied(),
            sample(&text, count),
            "{series}\n{text}"
        );
    }
    let hits = sample(&text, "sessiond_verify_cache_hits_total").unwrap();
    let reads = sample(&text, "sessiond_verify_store_reads_total").unwrap();
    assert_eq!(hits + reads, 2.0, "{text}");
    assert!(text.contains(r#"sessiond_build_info{version=""#), "{text}");
    assert!(
        sample(&text, "sessiond_hash_duration_seconds_count").unwrap() >= 2.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"sessiond_store_request_duration_seconds_count{store="users",backend="sqlite"}"#
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    // No label value a client chose: the user's name appears nowhere.
    assert!(!text.contains("mia"), "{text}");

    // The metric names the example dashboard and alert rules use all exist.
    let mut used = String::new();
    for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
        used.push_str(&std::fs::read_to_string(examples().join(file)).unwrap());
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("grafana-dashboard.json")).unwrap(),
    )
    .expect("the example dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 6));
    let names: Vec<&str> = used
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sessiond_"))
        .collect();
    assert!(names.len() > 10);
    for name in names {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "examples/ use {name}, which sessiond does not export"
        );
    }

    // promtool: the exposition is valid and follows the naming conventions; the rules load.
    if let Some(promtool) = promtool() {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(promtool)
            .args(["check", "rules"])
            .arg(examples().join("prometheus-alerts.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    app.stop().await;
}
