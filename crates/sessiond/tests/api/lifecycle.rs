//! Session lifecycle (issue 3): timeouts enforced on the server, remember-me, per-user
//! listing and revocation, password change, and races. Time moves through the server's
//! injected clock, never through sleeps.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use sessiond::Overrides;

use crate::helpers::*;

const MIN: Duration = Duration::from_secs(60);

fn timeouts(idle: &str, absolute: &str, remember: &str) -> Overrides {
    Overrides {
        idle_timeout: Some(idle.into()),
        absolute_timeout: Some(absolute.into()),
        remember_me_timeout: Some(remember.into()),
        ..Overrides::default()
    }
}

async fn app_with(over: Overrides) -> TestApp {
    spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), over).await
}

#[tokio::test]
async fn idle_timeout_slides_with_activity_and_ends_an_unused_session() {
    let app = app_with(timeouts("10m", "12h", "30d")).await;
    app.add_user("quinn").await;
    let c = app.client();
    assert_eq!(
        app.api_login(&c, "quinn", PASSWORD).await.status(),
        StatusCode::OK
    );

    // Used every 9 minutes (under the 10-minute idle limit): stays valid for an hour.
    for _ in 0..7 {
        app.advance(9 * MIN);
        let t = app.state.sessions.now();
        assert_eq!(app.whoami(&c).await.status(), StatusCode::OK);
        wait_for_activity_write(&app, t).await;
    }
    // Then 10 minutes without a request: gone, on the server.
    app.advance(10 * MIN);
    let res = app.whoami(&c).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(res).await["code"], "unauthenticated");
}

#[tokio::test]
async fn absolute_timeout_ends_a_session_despite_activity() {
    let app = app_with(timeouts("30m", "1h", "30d")).await;
    app.add_user("rita").await;
    let c = app.client();
    app.api_login(&c, "rita", PASSWORD).await;
    for _ in 0..5 {
        app.advance(11 * MIN);
        let t = app.state.sessions.now();
        assert_eq!(app.whoami(&c).await.status(), StatusCode::OK);
        wait_for_activity_write(&app, t).await;
    }
    // 55 minutes in and active; the activity never pushed the deadline past one hour.
    let body = json(app.whoami(&c).await).await;
    let expires = body["session"]["expires_at"].as_str().unwrap().to_owned();
    let created = body["session"]["created_at"].as_str().unwrap().to_owned();
    let secs = |t: &str| humantime::parse_rfc3339(t).unwrap();
    assert_eq!(
        secs(&expires).duration_since(secs(&created)).unwrap(),
        Duration::from_secs(3600)
    );
    app.advance(5 * MIN);
    assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn remember_me_gives_a_persistent_cookie_and_one_lifetime() {
    let app = app_with(timeouts("10m", "1h", "3d")).await;
    app.add_user("sam").await;
    let c = app.client();
    let res = c
        .post(app.url("/api/login"))
        .json(&serde_json::json!({ "username": "sam", "password": PASSWORD, "remember": true }))
        .send()
        .await
        .unwrap();
    let cookie = set_cookies(res.headers()).remove(0);
    assert!(
        cookie.contains(&format!("Max-Age={}", 3 * 86400)),
        "{cookie}"
    );
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert_eq!(json(res).await["session"]["remember"], true);
    // Neither the idle nor the absolute limit applies: two days without a request is fine.
    app.advance(Duration::from_secs(2 * 86400));
    assert_eq!(app.whoami(&c).await.status(), StatusCode::OK);
    // The remember-me lifetime from login is the one limit.
    app.advance(Duration::from_secs(86400));
    assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn activity_writes_are_coalesced() {
    let app = app_with(timeouts("30m", "12h", "30d")).await;
    app.add_user("tess").await;
    let c = app.client();
    app.api_login(&c, "tess", PASSWORD).await;
    let before = app.state.sessions.store().list_all().await.unwrap()[0].clone();
    for _ in 0..50 {
        assert_eq!(app.whoami(&c).await.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = app.state.sessions.store().list_all().await.unwrap()[0].clone();
    assert_eq!(before, after, "no activity write within the touch interval");
    app.advance(2 * MIN);
    let t = app.state.sessions.now();
    assert_eq!(app.whoami(&c).await.status(), StatusCode::OK);
    wait_for_activity_write(&app, t).await;
}

async fn login_as(app: &TestApp, name: &str, ua: &str) -> (reqwest::Client, String) {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .user_agent(ua)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = app.api_login(&c, name, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = json(res).await["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (c, id)
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
const SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

#[tokio::test]
async fn users_list_and_revoke_their_own_sessions_only() {
    let app = spawn_app().await;
    app.add_user("uma").await;
    app.add_user("vic").await;
    let (laptop, laptop_id) = login_as(&app, "uma", FIREFOX).await;
    let (phone, phone_id) = login_as(&app, "uma", SAFARI).await;
    let (tablet, _) = login_as(&app, "uma", "curl/8.5.0").await;
    let (vic, vic_id) = login_as(&app, "vic", FIREFOX).await;

    let res = laptop.get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let text = res.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = body["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 3, "only uma's sessions");
    assert!(!text.contains(&vic_id));
    let laptop_row = list.iter().find(|s| s["id"] == laptop_id.as_str()).unwrap();
    assert_eq!(laptop_row["current"], true);
    assert_eq!(laptop_row["device"], "Firefox on Linux");
    assert_eq!(laptop_row["ip"], "127.0.0.1");
    assert_eq!(laptop_row["remember"], false);
    for key in ["created_at", "last_seen_at", "expires_at", "user_agent"] {
        assert!(laptop_row[key].is_string(), "{key}");
    }
    let phone_row = list.iter().find(|s| s["id"] == phone_id.as_str()).unwrap();
    assert_eq!(phone_row["current"], false);
    assert_eq!(phone_row["device"], "Safari on iOS");
    // No secret anywhere in the listing.
    for stored in app.state.sessions.store().list_all().await.unwrap() {
        assert!(!text.contains(&stored.token_hash.to_hex()));
    }

    // Someone else's session id: 404, exactly like an unknown one, and it stays alive.
    let res = laptop
        .delete(app.url(&format!("/api/sessions/{vic_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(res).await["code"], "not_found");
    assert_eq!(app.whoami(&vic).await.status(), StatusCode::OK);
    let res = laptop
        .delete(app.url("/api/sessions/AAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = laptop
        .delete(app.url("/api/sessions/..%2F..%2Fetc"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Revoke one.
    let res = laptop
        .delete(app.url(&format!("/api/sessions/{phone_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.whoami(&phone).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&laptop).await.status(), StatusCode::OK);

    // Revoke all others.
    let res = laptop
        .delete(app.url("/api/sessions?others=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.whoami(&tablet).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&laptop).await.status(), StatusCode::OK);
    assert_eq!(app.whoami(&vic).await.status(), StatusCode::OK);

    // Revoke all, this one included.
    let (phone2, _) = login_as(&app, "uma", SAFARI).await;
    let res = laptop
        .delete(app.url("/api/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(set_cookies(res.headers())[0].contains("Max-Age=0"));
    assert_eq!(app.whoami(&laptop).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&phone2).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&vic).await.status(), StatusCode::OK);
    assert_eq!(
        laptop
            .get(app.url("/api/sessions"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn password_change_rotates_the_session_and_ends_the_others() {
    let app = spawn_app().await;
    app.add_user("wes").await;
    let (me, _) = login_as(&app, "wes", FIREFOX).await;
    let (other, _) = login_as(&app, "wes", SAFARI).await;
    let old_token = app.state.sessions.store().list_all().await.unwrap();
    assert_eq!(old_token.len(), 2);
    let before = json(app.whoami(&me).await).await["session"]["id"].clone();

    let change = |current: &str, new: &str| {
        me.post(app.url("/api/password"))
            .json(&serde_json::json!({ "current_password": current, "new_password": new }))
            .send()
    };
    let res = change("wrong password", "a brand new password")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(res).await["code"], "invalid_credentials");
    assert_eq!(
        app.whoami(&me).await.status(),
        StatusCode::OK,
        "a failed attempt changes nothing"
    );
    let res = change(PASSWORD, "short").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.whoami(&other).await.status(), StatusCode::OK);

    let res = change(PASSWORD, "a brand new password").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(session_cookie(&res).is_some(), "rotated: a new cookie");
    let after = json(res).await["session"]["id"].clone();
    assert_ne!(before, after);
    assert_eq!(app.whoami(&me).await.status(), StatusCode::OK);
    assert_eq!(app.whoami(&other).await.status(), StatusCode::UNAUTHORIZED);
    let all = app.state.sessions.store().list_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(
        old_token.iter().all(|s| s.token_hash != all[0].token_hash),
        "the old secret is dead"
    );
    assert_eq!(
        app.api_login(&app.client(), "wes", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.api_login(&app.client(), "wes", "a brand new password")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_logout_racing_with_requests_is_never_undone() {
    let app = app_with(timeouts("10s", "12h", "30d")).await;
    app.add_user("xena").await;
    for round in 0..5 {
        let c = app.client();
        app.api_login(&c, "xena", PASSWORD).await;
        // Every verification in the race is due for an activity write.
        app.advance(Duration::from_secs(6));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let c = c.clone();
            let url = app.url("/api/session");
            tasks.push(tokio::spawn(async move {
                c.get(url).send().await.unwrap().status()
            }));
        }
        let res = c.post(app.url("/api/logout")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        for t in tasks {
            let status = t.await.unwrap();
            assert!(
                status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
                "{status}"
            );
        }
        // Let any spawned activity write land, then check nothing came back.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            app.state
                .sessions
                .store()
                .list_all()
                .await
                .unwrap()
                .is_empty(),
            "round {round}: resurrected"
        );
        assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_revoke_racing_with_requests_is_never_undone() {
    let app = app_with(timeouts("10s", "12h", "30d")).await;
    app.add_user("yuri").await;
    let (c, id) = login_as(&app, "yuri", FIREFOX).await;
    let (admin, _) = login_as(&app, "yuri", SAFARI).await;
    app.advance(Duration::from_secs(6));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        let url = app.url("/api/sessions");
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    let res = admin
        .delete(app.url(&format!("/api/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.state.sessions.store().list_all().await.unwrap().len(),
        1
    );
}
