//! Many instances on one store (issue 4): what one instance changes, every other sees at once,
//! and when the store is gone every instance fails closed and heals by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::config::Overrides;
use sessiond_store_tests::services::{
    fresh_prefix, redis_server_available, spare_port, RedisServer,
};

use crate::helpers::*;

/// The session-store URLs to run the shared-instance tests on: the database itself (SQLite,
/// shared file) and Redis when it answers.
async fn stores() -> Vec<Option<String>> {
    let mut v = vec![None];
    let url = std::env::var("SESSIOND_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let probe = sessiond_store_redis::RedisStore::connect(&url).await;
    let up = match probe {
        Ok(s) => sessiond_core::SessionStore::ping(&s).await.map(|_| s),
        Err(e) => Err(e),
    };
    if sessiond_store_tests::service_or_skip("Redis", up).is_some() {
        v.push(Some(format!("{url}?prefix={}", fresh_prefix())));
    }
    v
}

/// Two servers on the same database file (users) and the same session store.
async fn pair(session_store: Option<String>) -> (TestApp, TestApp) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let over = || Overrides {
        session_store: session_store.clone(),
        ..Overrides::default()
    };
    let a = spawn_app_in(dir.clone(), over()).await;
    let b = spawn_app_in(dir, over()).await;
    (a, b)
}

/// A client of `app` presenting `token`.
async fn status_on(app: &TestApp, token: &str) -> StatusCode {
    app.bare_client()
        .get(app.url("/api/session"))
        .header("cookie", format!("__Host-sessiond={token}"))
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls A until it refuses `token`; the time from the change on B to the refusal on A.
async fn refused_within(app: &TestApp, token: &str, since: Instant) -> Duration {
    loop {
        if status_on(app, token).await == StatusCode::UNAUTHORIZED {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn what_one_instance_changes_every_other_sees_at_once() {
    for store in stores().await {
        let label = store.as_deref().map_or("sqlite", |_| "redis");
        let (a, b) = pair(store).await;
        a.add_user("fay").await;
        let bound = Duration::from_millis(100);

        // A login on A is valid on B.
        let on_a = a.client();
        let token = session_cookie(&a.api_login(&on_a, "fay", PASSWORD).await).unwrap();
        assert_eq!(status_on(&b, &token).await, StatusCode::OK, "{label}");

        // Logout on B: refused on A.
        let res = b
            .bare_client()
            .post(b.url("/api/logout"))
            .header("cookie", format!("__Host-sessiond={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        // The bound runs from the moment B has made the change.
        let start = Instant::now();
        let took = refused_within(&a, &token, start).await;
        assert!(took < bound, "{label}: logout seen after {took:?}");

        // Revoke on B (by id): refused on A.
        let t1 = session_cookie(&a.api_login(&a.client(), "fay", PASSWORD).await).unwrap();
        let on_b = b.client();
        b.api_login(&on_b, "fay", PASSWORD).await;
        let id = json(
            a.bare_client()
                .get(a.url("/api/session"))
                .header("cookie", format!("__Host-sessiond={t1}"))
                .send()
                .await
                .unwrap(),
        )
        .await["session"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            on_b.delete(b.url(&format!("/api/sessions/{id}")))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NO_CONTENT
        );
        let start = Instant::now();
        let took = refused_within(&a, &t1, start).await;
        assert!(took < bound, "{label}: revoke seen after {took:?}");

        // Password change on B: A refuses the user's other sessions.
        let t2 = session_cookie(&a.api_login(&a.client(), "fay", PASSWORD).await).unwrap();
        let res = on_b
            .post(b.url("/api/password"))
            .json(&serde_json::json!({ "current_password": PASSWORD, "new_password": "fay's new password" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let start = Instant::now();
        let took = refused_within(&a, &t2, start).await;
        assert!(took < bound, "{label}: password change seen after {took:?}");
        assert_eq!(
            a.api_login(&a.client(), "fay", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED
        );

        // Disable on B: A refuses.
        let t3 =
            session_cookie(&a.api_login(&a.client(), "fay", "fay's new password").await).unwrap();
        let user = b
            .state
            .users
            .user_by_name(&sessiond_core::Username::parse("fay").unwrap())
            .await
            .unwrap()
            .unwrap()
            .user;
        sessiond::accounts::disable(
            b.state.users.as_ref(),
            b.state.sessions.store().as_ref(),
            user.id,
        )
        .await
        .unwrap();
        let start = Instant::now();
        let took = refused_within(&a, &t3, start).await;
        assert!(took < bound, "{label}: disable seen after {took:?}");
        eprintln!("{label}: changes on B refused on A within {bound:?}");
    }
}

/// A server whose session store is a `redis-server` of the test's own.
async fn app_on_own_redis() -> Option<(TestApp, RedisServer)> {
    if !redis_server_available() {
        return None;
    }
    let port = spare_port();
    // Append-only file: a restarted Redis still has the sessions.
    let redis = RedisServer::start(port, &["--appendonly", "yes", "--appendfsync", "always"]);
    let over = Overrides {
        session_store: Some(format!(
            "redis://127.0.0.1:{port}/0?prefix={}",
            fresh_prefix()
        )),
        ..Overrides::default()
    };
    Some((
        spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), over).await,
        redis,
    ))
}

async fn timed(req: reqwest::RequestBuilder) -> (StatusCode, String, Duration) {
    let start = Instant::now();
    let res = req.timeout(Duration::from_secs(10)).send().await.unwrap();
    let status = res.status();
    let body = res.text().await.unwrap();
    (status, body, start.elapsed())
}

/// While the store is gone: every verifying route answers 503 within 2 s, never 200, and
/// readiness says so.
async fn assert_fails_closed(app: &TestApp, token: &str, what: &str) {
    let c = app.bare_client();
    let cookie = format!("__Host-sessiond={token}");
    for path in ["/api/session", "/api/sessions"] {
        let (status, body, took) = timed(c.get(app.url(path)).header("cookie", &cookie)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what} {path}: {body}"
        );
        assert!(body.contains("\"code\":\"store_unavailable\""), "{body}");
        assert!(
            took < Duration::from_secs(2),
            "{what} {path}: answered after {took:?}"
        );
    }
    let (status, _, took) = timed(c.get(app.url("/")).header("cookie", &cookie)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: account page"
    );
    assert!(took < Duration::from_secs(2));
    let (status, _, took) = timed(c.get(app.url("/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: readyz");
    assert!(took < Duration::from_secs(2));
    // A login cannot create a session either: 503, not 200 and not 401.
    let (status, _, _) = timed(
        c.post(app.url("/api/login"))
            .json(&serde_json::json!({ "username": "gus", "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: login");
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

/// Polls until the session answers 200 again; the time it took.
async fn heals(app: &TestApp, token: &str) -> Duration {
    let start = Instant::now();
    loop {
        if status_on(app, token).await == StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no recovery within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_killed_session_store_fails_closed_and_heals_without_a_restart() {
    let Some((app, mut redis)) = app_on_own_redis().await else {
        return;
    };
    app.add_user("gus").await;
    let token = session_cookie(&app.api_login(&app.client(), "gus", PASSWORD).await).unwrap();
    assert_eq!(status_on(&app, &token).await, StatusCode::OK);

    redis.kill();
    assert_fails_closed(&app, &token, "killed").await;

    redis.restart();
    let took = heals(&app, &token).await;
    eprintln!("redis killed and restarted: first good answer {took:?} after the restart");
    assert_eq!(
        app.client()
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_frozen_session_store_fails_closed_and_heals_without_a_restart() {
    let Some((app, redis)) = app_on_own_redis().await else {
        return;
    };
    app.add_user("gus").await;
    let token = session_cookie(&app.api_login(&app.client(), "gus", PASSWORD).await).unwrap();

    redis.signal("-STOP");
    assert_fails_closed(&app, &token, "frozen").await;

    redis.signal("-CONT");
    let took = heals(&app, &token).await;
    eprintln!("redis frozen and resumed: first good answer {took:?} after SIGCONT");
}
