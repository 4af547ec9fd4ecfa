//! Second factors through the server (issue 18): TOTP enrolment and use, recovery codes,
//! levels and rotation, replay, skew, throttling, races, resets from `/admin` and the CLI, a
//! lost key and `two_factor.required`, on every store this machine runs.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::Overrides;
use sessiond_axum::auth::{totp_code, TOTP_STEP_SECS};

use crate::helpers::*;
use crate::shared::{deployments, Stores};

/// The deployments' shared encryption key (PostgreSQL has no key file beside it).
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";
/// Another key: a deployment that lost its own.
const OTHER_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA";

const STEP_MS: i64 = TOTP_STEP_SECS * 1000;

fn over(stores: &Stores, key: &str) -> Overrides {
    Overrides {
        database: stores.database.clone(),
        session_store: stores.session_store.clone(),
        encryption_key: Some(key.into()),
        ..Overrides::default()
    }
}

async fn app_on(stores: &Stores) -> TestApp {
    spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), over(stores, KEY)).await
}

/// The TOTP step of the server's clock.
fn step(app: &TestApp) -> i64 {
    app.state.sessions.now().as_millis().div_euclid(STEP_MS)
}

/// Moves the server's clock to the middle of a step at least `steps` ahead (so a test has
/// 15 s of wall clock before its codes change step).
fn to_mid_step(app: &TestApp, steps: i64) {
    let pos = app.state.sessions.now().as_millis().rem_euclid(STEP_MS);
    let delta = (STEP_MS / 2 - pos).rem_euclid(STEP_MS) + steps * STEP_MS;
    app.advance(Duration::from_millis(delta as u64));
}

async fn post(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    body: Value,
) -> reqwest::Response {
    client.post(app.url(path)).json(&body).send().await.unwrap()
}

/// A client presenting `token` as its session cookie (and nothing else).
async fn post_as(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    app.bare_client()
        .post(app.url(path))
        .header("cookie", format!("__Host-sessiond={token}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn status_of(app: &TestApp, token: &str) -> StatusCode {
    app.bare_client()
        .get(app.url("/api/session"))
        .header("cookie", format!("__Host-sessiond={token}"))
        .send()
        .await
        .unwrap()
        .status()
}

async fn level(app: &TestApp, client: &reqwest::Client) -> String {
    let res = app.whoami(client).await;
    assert_eq!(res.status(), StatusCode::OK);
    json(res).await["authentication_level"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn decode_secret(b32: &str) -> Vec<u8> {
    base32::decode(base32::Alphabet::Rfc4648 { padding: false }, b32).expect("base32 secret")
}

/// Logs `client` in with the password; the answer's JSON.
async fn log_in(app: &TestApp, client: &reqwest::Client, name: &str) -> Value {
    let res = app.api_login(client, name, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    json(res).await
}

/// Enrols TOTP for `client`'s user: the secret and the recovery codes. The server's clock is
/// left in the middle of the confirming step.
async fn enrol(app: &TestApp, client: &reqwest::Client) -> (Vec<u8>, Vec<String>) {
    let res = post(
        app,
        client,
        "/api/2fa/totp/setup",
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let setup = json(res).await;
    let uri = setup["uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let secret = decode_secret(setup["secret"].as_str().unwrap());
    to_mid_step(app, 0);
    let code = totp_code(&secret, step(app));
    let res = post(
        app,
        client,
        "/api/2fa/totp/confirm",
        json!({ "code": code }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        session_cookie(&res).is_some(),
        "the raised session's cookie"
    );
    let body = json(res).await;
    assert_eq!(body["authentication_level"], "two_factor");
    let codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

/// A one-factor session of `name` held by hand (no cookie jar, no device cookie): its token.
async fn one_factor_token(app: &TestApp, name: &str) -> String {
    let res = app.api_login(&app.bare_client(), name, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let token = session_cookie(&res).unwrap();
    let body = json(res).await;
    assert_eq!(body["authentication_level"], "one_factor");
    token
}

#[tokio::test]
async fn totp_enrol_log_in_and_raise_on_every_store() {
    for stores in deployments().await {
        let label = stores.label;
        let app = app_on(&stores).await;
        app.add_user("tess").await;
        let c = app.client();
        let login = log_in(&app, &c, "tess").await;
        assert_eq!(login["authentication_level"], "one_factor", "{label}");
        assert_eq!(
            login["second_factor"],
            json!({"totp": false, "recovery_codes": 0, "passkeys": 0, "next": null}),
            "{label}"
        );
        let (secret, _) = enrol(&app, &c).await;
        assert_eq!(level(&app, &c).await, "two_factor", "{label}");
        let summary = json(c.get(app.url("/api/2fa")).send().await.unwrap()).await;
        assert_eq!(summary["totp"], true, "{label}");
        assert_eq!(summary["recovery_codes"], 10, "{label}");
        assert_eq!(summary["next"], Value::Null, "{label}");
        assert_eq!(summary["available"], true, "{label}");

        // Log out, log in: one_factor, and the answer says a second step is expected.
        let res = c.post(app.url("/api/logout")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let login = log_in(&app, &c, "tess").await;
        assert_eq!(login["authentication_level"], "one_factor", "{label}");
        assert_eq!(login["second_factor"]["next"], "verify", "{label}");
        assert_eq!(login["second_factor"]["totp"], true, "{label}");
        assert_eq!(level(&app, &c).await, "one_factor", "{label}");

        // Managing factors needs two_factor now.
        let res = post(&app, &c, "/api/2fa/recovery/regenerate", json!({})).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{label}");
        assert_eq!(json(res).await["code"], "second_factor_required", "{label}");

        // The second step: a new cookie at two_factor; the one-factor cookie is dead.
        let old = one_factor_token(&app, "tess").await;
        to_mid_step(&app, 1);
        let code = totp_code(&secret, step(&app));
        let res = post_as(&app, &old, "/api/2fa/totp", json!({ "code": code })).await;
        assert_eq!(res.status(), StatusCode::OK, "{label}");
        let new = session_cookie(&res).expect("a new cookie");
        assert_ne!(new, old);
        let body = json(res).await;
        assert_eq!(body["authentication_level"], "two_factor", "{label}");
        assert_eq!(body["user"]["username"], "tess", "{label}");
        assert_eq!(
            status_of(&app, &old).await,
            StatusCode::UNAUTHORIZED,
            "{label}"
        );
        assert_eq!(status_of(&app, &new).await, StatusCode::OK, "{label}");

        // The same code again, on another one-factor session: a replay, refused.
        let other = one_factor_token(&app, "tess").await;
        let res = post_as(&app, &other, "/api/2fa/totp", json!({ "code": code })).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{label}");
        assert_eq!(json(res).await["code"], "invalid_second_factor", "{label}");
        assert_eq!(
            status_of(&app, &other).await,
            StatusCode::OK,
            "still one_factor"
        );
    }
}

#[tokio::test]
async fn a_code_used_on_one_instance_is_refused_on_another() {
    for stores in deployments().await {
        let label = stores.label;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let a = spawn_app_in(dir.clone(), over(&stores, KEY)).await;
        let b = spawn_app_in(dir, over(&stores, KEY)).await;
        a.add_user("uma").await;
        let c = a.client();
        log_in(&a, &c, "uma").await;
        let (secret, _) = enrol(&a, &c).await;
        // Both clocks on the same step.
        to_mid_step(&a, 1);
        let delta = a.state.sessions.now().as_millis() - b.state.sessions.now().as_millis();
        b.advance(Duration::from_millis(delta.max(0) as u64));
        assert_eq!(step(&a), step(&b));
        let code = totp_code(&secret, step(&a));
        let on_a = one_factor_token(&a, "uma").await;
        let on_b = one_factor_token(&b, "uma").await;
        let res = post_as(&a, &on_a, "/api/2fa/totp", json!({ "code": code })).await;
        assert_eq!(res.status(), StatusCode::OK, "{label}");
        let res = post_as(&b, &on_b, "/api/2fa/totp", json!({ "code": code })).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "{label}: replay on B"
        );
    }
}

#[tokio::test]
async fn one_step_of_skew_is_accepted_two_are_not() {
    let app = spawn_app().await;
    app.add_user("vic").await;
    let c = app.client();
    log_in(&app, &c, "vic").await;
    let (secret, _) = enrol(&app, &c).await;
    // Three steps on from the confirming step s: now = s + 3.
    to_mid_step(&app, 3);
    let now = step(&app);
    let raise = |delta: i64| {
        let (app, secret) = (&app, &secret);
        async move {
            let token = one_factor_token(app, "vic").await;
            let code = totp_code(secret, now + delta);
            post_as(app, &token, "/api/2fa/totp", json!({ "code": code }))
                .await
                .status()
        }
    };
    assert_eq!(
        raise(-2).await,
        StatusCode::UNAUTHORIZED,
        "two steps behind"
    );
    assert_eq!(raise(-1).await, StatusCode::OK, "one step behind");
    assert_eq!(raise(2).await, StatusCode::UNAUTHORIZED, "two steps ahead");
    assert_eq!(raise(1).await, StatusCode::OK, "one step ahead");
    // Its own step is now older than the last one used: refused.
    assert_eq!(raise(0).await, StatusCode::UNAUTHORIZED, "an older step");
}

#[tokio::test]
async fn wrong_codes_are_throttled_and_the_owners_device_is_spared() {
    let app = spawn_app().await;
    app.add_user("wes").await;
    // The owner's browser, with its device cookie, at its own address.
    let owner = app.client();
    let res = owner
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "192.0.2.10")
        .json(&json!({ "username": "wes", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (secret, _) = enrol(&app, &owner).await;
    owner.post(app.url("/api/logout")).send().await.unwrap();

    // Someone with the password, elsewhere, guessing codes.
    let res = app
        .bare_client()
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "203.0.113.5")
        .json(&json!({ "username": "wes", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let thief = session_cookie(&res).unwrap();
    // The right code of this step, known before the guesses (the server's clock stays put).
    to_mid_step(&app, 1);
    let right = totp_code(&secret, step(&app));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = app
            .bare_client()
            .post(app.url("/api/2fa/totp"))
            .header("x-forwarded-for", "203.0.113.5")
            .header("cookie", format!("__Host-sessiond={thief}"))
            .json(&json!({ "code": "000000" }))
            .send()
            .await
            .unwrap();
        statuses.push(res.status());
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED, "{statuses:?}");
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let res = app
        .bare_client()
        .post(app.url("/api/2fa/totp"))
        .header("x-forwarded-for", "203.0.113.5")
        .header("cookie", format!("__Host-sessiond={thief}"))
        .json(&json!({ "code": right }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "no oracle while the back-off holds"
    );
    assert!(res.headers().contains_key("retry-after"));

    // The owner, with the device cookie, logs in and verifies meanwhile.
    let res = owner
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "192.0.2.10")
        .json(&json!({ "username": "wes", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = owner
        .post(app.url("/api/2fa/totp"))
        .header("x-forwarded-for", "192.0.2.10")
        .json(&json!({ "code": right }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(level(&app, &owner).await, "two_factor");
}

#[tokio::test]
async fn recovery_codes_are_single_use_and_regenerating_kills_the_old_set() {
    for stores in deployments().await {
        let label = stores.label;
        let app = app_on(&stores).await;
        app.add_user("xia").await;
        let c = app.client();
        log_in(&app, &c, "xia").await;
        let (_, codes) = enrol(&app, &c).await;

        let t = one_factor_token(&app, "xia").await;
        // Typed loosely: lower case, spaces for dashes.
        let typed = codes[0].to_lowercase().replace('-', " ");
        let res = post_as(&app, &t, "/api/2fa/recovery", json!({ "code": typed })).await;
        assert_eq!(res.status(), StatusCode::OK, "{label}");
        assert!(session_cookie(&res).is_some());
        assert_eq!(
            json(res).await["authentication_level"],
            "two_factor",
            "{label}"
        );
        let t = one_factor_token(&app, "xia").await;
        let res = post_as(&app, &t, "/api/2fa/recovery", json!({ "code": codes[0] })).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{label}: spent");
        assert_eq!(json(res).await["code"], "invalid_second_factor");

        // A new set from the two-factor session: the old codes die.
        let res = post(&app, &c, "/api/2fa/recovery/regenerate", json!({})).await;
        assert_eq!(res.status(), StatusCode::OK, "{label}");
        let fresh: Vec<String> = json(res).await["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(fresh.len(), 10);
        let t = one_factor_token(&app, "xia").await;
        let res = post_as(&app, &t, "/api/2fa/recovery", json!({ "code": codes[1] })).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{label}: old set");
        let res = post_as(&app, &t, "/api/2fa/recovery", json!({ "code": fresh[1] })).await;
        assert_eq!(res.status(), StatusCode::OK, "{label}: new set");
    }
}

#[tokio::test]
async fn one_recovery_code_raced_by_two_requests_raises_exactly_one() {
    for stores in deployments().await {
        let label = stores.label;
        let app = app_on(&stores).await;
        app.add_user("yan").await;
        let c = app.client();
        log_in(&app, &c, "yan").await;
        let (_, codes) = enrol(&app, &c).await;
        for (round, code) in codes.iter().take(3).enumerate() {
            let (t1, t2) = (
                one_factor_token(&app, "yan").await,
                one_factor_token(&app, "yan").await,
            );
            let (r1, r2) = tokio::join!(
                post_as(&app, &t1, "/api/2fa/recovery", json!({ "code": code })),
                post_as(&app, &t2, "/api/2fa/recovery", json!({ "code": code })),
            );
            let mut got = [r1.status(), r2.status()];
            got.sort();
            assert_eq!(
                got,
                [StatusCode::OK, StatusCode::UNAUTHORIZED],
                "{label}, round {round}"
            );
        }
    }
}

#[tokio::test]
async fn bad_bodies_are_4xx_and_missing_key_is_second_factor_unavailable() {
    let app = spawn_app().await;
    app.add_user("zed").await;
    let c = app.client();
    log_in(&app, &c, "zed").await;
    for (path, body) in [
        ("/api/2fa/totp/setup", "{}"),
        ("/api/2fa/totp/setup", "{\"password\": 5}"),
        ("/api/2fa/totp/confirm", "not json"),
        ("/api/2fa/totp", "{\"code\": \"1\", \"extra\": 1}"),
        ("/api/2fa/recovery", "[]"),
    ] {
        let res = c
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        assert_eq!(json(res).await["code"], "bad_request");
    }
    let res = c
        .post(app.url("/api/2fa/totp"))
        .body("code=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Without a session.
    let res = post(
        &app,
        &app.client(),
        "/api/2fa/totp",
        json!({ "code": "123456" }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(res).await["code"], "unauthenticated");
    // No factor: confirming without a setup, verifying without TOTP.
    let res = post(
        &app,
        &c,
        "/api/2fa/totp/confirm",
        json!({ "code": "123456" }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = post(&app, &c, "/api/2fa/totp", json!({ "code": "123456" })).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = c.delete(app.url("/api/2fa/totp")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = post(
        &app,
        &c,
        "/api/2fa/totp/setup",
        json!({ "password": "wrong" }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(res).await["code"], "invalid_credentials");

    // The SQLite default made its key file beside the database, 0600.
    let key = app.dir.path().join("sessiond.db.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // PostgreSQL without a key: second factors are off, and the answer says what to set.
    let Some(pg) = deployments()
        .await
        .into_iter()
        .find(|s| s.label == "postgres")
    else {
        return;
    };
    let app = spawn_app_in(
        Arc::new(tempfile::tempdir().unwrap()),
        Overrides {
            database: pg.database.clone(),
            ..Overrides::default()
        },
    )
    .await;
    app.add_user("zed").await;
    let c = app.client();
    let login = log_in(&app, &c, "zed").await;
    assert_eq!(login["second_factor"]["next"], Value::Null);
    let res = post(
        &app,
        &c,
        "/api/2fa/totp/setup",
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = json(res).await;
    assert_eq!(body["code"], "second_factor_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("SESSIOND_ENCRYPTION_KEY"),
        "{body}"
    );
    let summary = json(c.get(app.url("/api/2fa")).send().await.unwrap()).await;
    assert_eq!(summary["available"], false);
}

#[tokio::test]
async fn a_lost_key_stops_totp_but_not_recovery_codes() {
    for stores in deployments().await {
        let label = stores.label;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let app = spawn_app_in(dir.clone(), over(&stores, KEY)).await;
        app.add_user("abe").await;
        let c = app.client();
        log_in(&app, &c, "abe").await;
        let (secret, codes) = enrol(&app, &c).await;
        app.stop().await;

        // The same stores, started with another key.
        let app = spawn_app_in(dir, over(&stores, OTHER_KEY)).await;
        to_mid_step(&app, 1);
        let t = one_factor_token(&app, "abe").await;
        let code = totp_code(&secret, step(&app));
        let res = post_as(&app, &t, "/api/2fa/totp", json!({ "code": code })).await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "{label}");
        let body = json(res).await;
        assert_eq!(body["code"], "second_factor_unavailable", "{label}");
        assert!(body["message"].as_str().unwrap().contains("key"), "{body}");
        assert_eq!(status_of(&app, &t).await, StatusCode::OK, "not raised");
        let res = post_as(&app, &t, "/api/2fa/recovery", json!({ "code": codes[0] })).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{label}: recovery still works"
        );
    }
}

#[tokio::test]
async fn resets_from_admin_and_cli_end_sessions_and_remove_factors() {
    let app = spawn_app().await;
    app.add_user_with("root", PASSWORD, true).await;
    app.add_user("bea").await;
    let bea = app.client();
    log_in(&app, &bea, "bea").await;
    enrol(&app, &bea).await;
    let bea_other = one_factor_token(&app, "bea").await;

    // The admin (no factor of their own) resets bea from /admin.
    let admin = app.client();
    assert_eq!(
        app.form_login(&admin, "root", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let (status, html, csrf) = app.page(&admin, "/admin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("/admin/users/bea/2fa-reset"),
        "a reset button"
    );
    assert!(html.contains("TOTP, 10 recovery codes"), "{html}");
    // Without the form token: refused, nothing changes.
    let res = admin
        .post(app.url("/admin/users/bea/2fa-reset"))
        .form(&[("csrf_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(level(&app, &bea).await, "two_factor");
    let res = admin
        .post(app.url("/admin/users/bea/2fa-reset"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/admin?done=2fa_reset");
    whoami_becomes(&app, &bea, StatusCode::UNAUTHORIZED, Duration::from_secs(1)).await;
    assert_eq!(status_of(&app, &bea_other).await, StatusCode::UNAUTHORIZED);
    let login = log_in(&app, &bea, "bea").await;
    assert_eq!(
        login["second_factor"],
        json!({"totp": false, "recovery_codes": 0, "passkeys": 0, "next": null})
    );

    // Enrol again; the CLI resets.
    enrol(&app, &bea).await;
    let db = db_url(app.dir.path());
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(args)
            .env("SESSIOND_DATABASE", &db)
            .env_remove("SESSIOND_CONFIG")
            .env_remove("SESSIOND_ENCRYPTION_KEY")
            .output()
            .unwrap()
    };
    let out = cli(&["user", "2fa", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bea_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["username"] == "bea")
        .unwrap();
    assert_eq!(bea_row["totp"], true);
    assert_eq!(bea_row["recovery_codes"], 10);
    let out = cli(&["user", "2fa", "list"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("USERNAME"), "{table}");
    let out = cli(&["user", "2fa", "reset", "bea"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("second factors of bea removed"), "{said}");
    whoami_becomes(&app, &bea, StatusCode::UNAUTHORIZED, Duration::from_secs(1)).await;
    let login = log_in(&app, &bea, "bea").await;
    assert_eq!(login["second_factor"]["totp"], false);
    let out = cli(&["user", "2fa", "reset", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn an_admin_with_a_factor_needs_two_factor_for_admin_pages() {
    let app = spawn_app().await;
    app.add_user_with("root", PASSWORD, true).await;
    let c = app.client();
    assert_eq!(
        app.form_login(&c, "root", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    enrol(&app, &c).await;
    let (status, _, _) = app.page(&c, "/admin").await;
    assert_eq!(status, StatusCode::OK, "two_factor: the admin pages");
    c.post(app.url("/api/logout")).send().await.unwrap();
    app.form_login(&c, "root", PASSWORD).await;
    assert_eq!(level(&app, &c).await, "one_factor");
    let res = c.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // To the step, and back to /admin after it.
    assert_eq!(res.headers()["location"], "/login/2fa?rd=%2Fadmin");
    // The account page links to the second-factor step and hides the factor forms.
    let (status, html, _) = app.page(&c, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("id=\"verify-first\""), "{html}");
    assert!(!html.contains("/2fa/totp/remove"));
    // And the forms refuse a one-factor session anyway.
    let csrf = csrf_from(&html);
    let res = c
        .post(app.url("/2fa/totp/remove"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/login/2fa");
    let res = c.delete(app.url("/api/2fa/totp")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(res).await["code"], "second_factor_required");
}

#[tokio::test]
async fn the_account_page_enrols_with_a_qr_code_and_shows_recovery_codes_once() {
    let app = spawn_app().await;
    app.add_user("cai").await;
    let c = app.client();
    app.form_login(&c, "cai", PASSWORD).await;
    let (_, html, csrf) = app.page(&c, "/").await;
    assert!(html.contains("data-level=\"one_factor\""), "{html}");
    assert!(html.contains("id=\"totp-setup\""));
    // Wrong password: the page again, 401.
    let res = c
        .post(app.url("/2fa/totp/setup"))
        .form(&[("csrf_token", csrf.as_str()), ("password", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = c
        .post(app.url("/2fa/totp/setup"))
        .form(&[("csrf_token", csrf.as_str()), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "an inline QR code"
    );
    let marker = "id=\"totp-secret\">";
    let i = html.find(marker).unwrap() + marker.len();
    let secret_b32 = html[i..].split('<').next().unwrap().to_owned();
    let secret = decode_secret(&secret_b32);
    let field = |name: &str| {
        let m = format!("name=\"{name}\" value=\"");
        let i = html.find(&m).unwrap() + m.len();
        html[i..].split('"').next().unwrap().to_owned()
    };
    // As a browser posts it: the attribute's entities decoded.
    let uri = field("uri")
        .replace("&#x2f;", "/")
        .replace("&#x3d;", "=")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    // A wrong code: the same setup shown again, nothing enabled.
    let res = c
        .post(app.url("/2fa/totp/confirm"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("code", "000000"),
            ("secret", secret_b32.as_str()),
            ("uri", uri.as_str()),
        ])
        .send()
        .await
        .unwrap();
    // (000000 is right one time in a million: then this test reports it.)
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.text().await.unwrap().contains(&secret_b32));
    to_mid_step(&app, 0);
    let code = totp_code(&secret, step(&app));
    let res = c
        .post(app.url("/2fa/totp/confirm"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("code", code.as_str()),
            ("secret", secret_b32.as_str()),
            ("uri", uri.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(session_cookie(&res).is_some());
    let html = res.text().await.unwrap();
    assert_eq!(html.matches("<li><code>").count(), 10, "{html}");
    assert_eq!(level(&app, &c).await, "two_factor");
    let (_, html, csrf) = app.page(&c, "/").await;
    assert!(html.contains("data-level=\"two_factor\""));
    assert!(html.contains("id=\"totp-status\">on"));
    assert!(!html.contains("<li><code>"), "codes are shown once");
    // Regenerate from the page: ten new codes.
    let res = c
        .post(app.url("/2fa/recovery/regenerate"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap().matches("<li><code>").count(), 10);
    // Remove TOTP from the page.
    let res = c
        .post(app.url("/2fa/totp/remove"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/?done=totp_removed");
    let summary = json(c.get(app.url("/api/2fa")).send().await.unwrap()).await;
    assert_eq!(summary["totp"], false);
}

#[tokio::test]
async fn a_required_second_factor_holds_new_sessions_to_enrolment() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        "[two_factor]\nrequired = \"admins\"",
        Overrides::default(),
    )
    .await;
    app.add_user_with("root", PASSWORD, true).await;
    app.add_user("dee").await;

    // Not an admin: nothing required.
    let dee = app.client();
    let login = log_in(&app, &dee, "dee").await;
    assert_eq!(login["second_factor"]["next"], Value::Null);
    let res = dee.get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // An admin without a factor: held to enrolment.
    let c = app.client();
    let login = log_in(&app, &c, "root").await;
    assert_eq!(login["second_factor"]["next"], "enrol");
    let res = c.get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(res).await["code"], "second_factor_enrolment_required");
    let res = post(
        &app,
        &c,
        "/api/password",
        json!({"current_password": PASSWORD, "new_password": "another long password"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        level(&app, &c).await,
        "one_factor",
        "GET /api/session answers"
    );
    let summary = json(c.get(app.url("/api/2fa")).send().await.unwrap()).await;
    assert_eq!(summary["next"], "enrol");
    // Pages: /admin sends to the enrolment, the account page shows only it.
    let res = c.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/#two-factor");
    let (status, html, _) = app.page(&c, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("id=\"must-enrol\""));
    assert!(!html.contains("id=\"sessions\""), "only the enrolment");

    // A held session may log out.
    let held = one_factor_token(&app, "root").await;
    let res = app
        .bare_client()
        .get(app.url("/api/sessions"))
        .header("cookie", format!("__Host-sessiond={held}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = post_as(&app, &held, "/api/logout", json!({})).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(status_of(&app, &held).await, StatusCode::UNAUTHORIZED);

    // Enrolment lifts the limit; the only factor cannot be removed.
    enrol(&app, &c).await;
    let res = c.get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, _, _) = app.page(&c, "/admin").await;
    assert_eq!(status, StatusCode::OK);
    let res = c.delete(app.url("/api/2fa/totp")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
}
