use std::sync::Arc;

use reqwest::StatusCode;
use sessiond::Overrides;

use crate::helpers::*;

#[tokio::test]
async fn login_sets_a_host_only_secure_cookie_that_maps_to_the_user() {
    let app = spawn_app().await;
    app.add_user("alice").await;
    let c = app.client();

    assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);

    let res = app.api_login(&c, "alice", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let cookies = set_cookies(res.headers());
    assert_eq!(cookies.len(), 2, "session and device cookies: {cookies:?}");
    let cookie = cookies
        .iter()
        .find(|c| c.starts_with("__Host-sessiond="))
        .unwrap();
    // The device cookie of the login throttling: host-only, long-lived, not the session.
    let device = cookies
        .iter()
        .find(|c| c.starts_with("__Host-sessiond_device="))
        .unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=31536000",
    ] {
        assert!(device.contains(attr), "{device} lacks {attr}");
    }
    for attr in [
        "__Host-sessiond=",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    for attr in ["Domain", "Max-Age", "Expires"] {
        assert!(
            !cookie.contains(attr),
            "{cookie} has {attr}: it must be a host-only browser-session cookie"
        );
    }
    let token = session_cookie(&res).unwrap();
    assert_eq!(token.len(), 43);
    let body = json(res).await;
    assert_eq!(body["user"]["username"], "alice");
    let id = body["session"]["id"].as_str().unwrap().to_owned();
    assert_ne!(id, token, "the public id is not the secret");

    // The jar sends the cookie back and the server maps it to the user.
    let res = app.whoami(&c).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = json(res).await;
    assert_eq!(body["user"]["username"], "alice");
    assert_eq!(body["user"]["groups"], serde_json::json!(["dev"]));
    assert_eq!(body["session"]["id"], id.as_str());
    assert_eq!(body["session"]["remember"], false);
    assert!(!body.to_string().contains(&token), "no secret in the body");
    // RFC 3339 times
    assert!(body["session"]["created_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // Usernames match case-insensitively.
    assert_eq!(
        app.api_login(&app.client(), "ALICE", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn wrong_password_unknown_user_and_disabled_user_look_the_same() {
    let app = spawn_app().await;
    let bob = app.add_user("bob").await;
    let mallory = app.add_user("mallory").await;
    app.state
        .users
        .set_disabled(mallory.id, true)
        .await
        .unwrap();
    let _ = bob;

    let mut seen = Vec::new();
    for (name, pw) in [
        ("bob", "wrong password"),
        ("nobody", "wrong password"),
        ("mallory", PASSWORD),
        ("not a name!", "x"),
    ] {
        let res = app.api_login(&app.client(), name, pw).await;
        let status = res.status();
        let mut headers: Vec<String> = res
            .headers()
            .iter()
            // The date and the request's own id differ by design; nothing else may.
            .filter(|(k, _)| *k != "date" && *k != "x-request-id")
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        headers.sort();
        let body = res.text().await.unwrap();
        seen.push((status, headers, body));
    }
    assert_eq!(seen[0].0, StatusCode::UNAUTHORIZED);
    assert!(
        seen[0].2.contains("\"code\":\"invalid_credentials\""),
        "{}",
        seen[0].2
    );
    for other in &seen[1..] {
        assert_eq!(other, &seen[0]);
    }
}

#[tokio::test]
async fn a_planted_cookie_is_never_adopted() {
    let app = spawn_app().await;
    app.add_user("carol").await;
    let c = app.bare_client();
    let planted = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let res = c
        .post(app.url("/api/login"))
        .header("cookie", format!("__Host-sessiond={planted}"))
        .json(&serde_json::json!({ "username": "carol", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let issued = session_cookie(&res).unwrap();
    assert_ne!(issued, planted);
    let res = c
        .get(app.url("/api/session"))
        .header("cookie", format!("__Host-sessiond={planted}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.state.sessions.store().list_all().await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn relogin_rotates_the_token_and_ends_the_presented_session() {
    let app = spawn_app().await;
    app.add_user("dave").await;
    app.add_user("erin").await;
    let c = app.client();
    let first = session_cookie(&app.api_login(&c, "dave", PASSWORD).await).unwrap();
    // Same jar: the first cookie is presented with the second login.
    let second = session_cookie(&app.api_login(&c, "dave", PASSWORD).await).unwrap();
    assert_ne!(first, second);
    let bare = app.bare_client();
    let check = |t: String| {
        let bare = bare.clone();
        let url = app.url("/api/session");
        async move {
            bare.get(url)
                .header("cookie", format!("__Host-sessiond={t}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(check(first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(check(second.clone()).await, StatusCode::OK);
    // Logging in as someone else from the same browser also ends the old session.
    let third = session_cookie(&app.api_login(&c, "erin", PASSWORD).await).unwrap();
    assert_eq!(check(second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(json(app.whoami(&c).await).await["user"]["username"], "erin");
    assert_eq!(check(third).await, StatusCode::OK);
    assert_eq!(
        app.state.sessions.store().list_all().await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server() {
    let app = spawn_app().await;
    app.add_user("frank").await;
    let c = app.client();
    let token = session_cookie(&app.api_login(&c, "frank", PASSWORD).await).unwrap();
    let res = c.post(app.url("/api/logout")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let clearing = &set_cookies(res.headers())[0];
    for attr in [
        "__Host-sessiond=;",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=0",
    ] {
        assert!(clearing.contains(attr), "{clearing} lacks {attr}");
    }
    assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);
    // Replaying the old cookie (an attacker who copied it) gets nothing either.
    let res = app
        .bare_client()
        .get(app.url("/api/session"))
        .header("cookie", format!("__Host-sessiond={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(res).await["code"], "unauthenticated");
    // Logging out without a session is harmless.
    assert_eq!(
        c.post(app.url("/api/logout"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_session_survives_a_server_restart() {
    let app = spawn_app().await;
    app.add_user("grace").await;
    let token = session_cookie(&app.api_login(&app.client(), "grace", PASSWORD).await).unwrap();
    let dir = Arc::clone(&app.dir);
    app.stop().await;
    let app = spawn_app_in(dir, Overrides::default()).await;
    let res = app
        .bare_client()
        .get(app.url("/api/session"))
        .header("cookie", format!("__Host-sessiond={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json(res).await["user"]["username"], "grace");
}

#[tokio::test]
async fn the_database_never_holds_a_raw_cookie_value() {
    let app = spawn_app().await;
    app.add_user("heidi").await;
    let mut tokens = Vec::new();
    for _ in 0..5 {
        tokens
            .push(session_cookie(&app.api_login(&app.client(), "heidi", PASSWORD).await).unwrap());
    }
    let db = app.db_path();
    let dir = Arc::clone(&app.dir);
    app.stop().await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(bytes.len() > 4096, "read {db:?} and its WAL");
    for t in &tokens {
        assert!(
            !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
            "raw token found on disk"
        );
    }
}

#[tokio::test]
async fn html_login_account_and_logout() {
    let app = spawn_app().await;
    app.add_user("ivan").await;
    let c = app.client();

    // Not logged in: the account page sends us to the login page.
    let res = c.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/login");

    let res = c.get(app.url("/login?rd=/after")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let html = res.text().await.unwrap();
    assert!(html.contains("name=\"rd\" value=\"&#x2f;after\""), "{html}");
    let csrf = csrf_from(&html);

    // Wrong password: 401, the form again, one generic message.
    let res = c
        .post(app.url("/login"))
        .form(&[
            ("username", "ivan"),
            ("password", "nope nope"),
            ("csrf_token", &csrf),
            ("rd", "/after"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Invalid username or password."));

    // Without the form token (login CSRF): refused, no session.
    let res = app
        .client()
        .post(app.url("/login"))
        .form(&[("username", "ivan"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(session_cookie(&res).is_none());

    // Right password: 303 to the safe rd, with the cookie.
    let res = c
        .post(app.url("/login"))
        .form(&[
            ("username", "ivan"),
            ("password", PASSWORD),
            ("csrf_token", &csrf),
            ("rd", "/after"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/after");
    assert!(session_cookie(&res).is_some());

    let res = c.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("<span id=\"whoami\">ivan</span>"), "{html}");
    let logout_csrf = csrf_from(&html);

    // Logout needs the session-bound token.
    let res = c
        .post(app.url("/logout"))
        .form(&[("csrf_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.whoami(&c).await.status(), StatusCode::OK);
    let res = c
        .post(app.url("/logout"))
        .form(&[("csrf_token", &logout_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/login");
    assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.get(app.url("/")).send().await.unwrap().headers()["location"],
        "/login"
    );
}

#[tokio::test]
async fn unsafe_redirect_targets_fall_back_to_the_account_page() {
    let app = spawn_app().await;
    app.add_user("judy").await;
    for (rd, expected) in [
        ("https://evil.example/", "/"),
        ("//evil.example", "/"),
        ("/ok?x=1", "/ok?x=1"),
    ] {
        let c = app.client();
        let html = c
            .get(app.url("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = csrf_from(&html);
        let res = c
            .post(app.url("/login"))
            .form(&[
                ("username", "judy"),
                ("password", PASSWORD),
                ("csrf_token", &csrf),
                ("rd", rd),
            ])
            .send()
            .await
            .unwrap();
        let status = res.status();
        let loc = res.headers().get("location").cloned();
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "{}",
            res.text().await.unwrap()
        );
        assert_eq!(loc.unwrap(), expected, "rd={rd}");
    }
}

#[tokio::test]
async fn cross_site_unsafe_requests_are_refused() {
    let app = spawn_app().await;
    app.add_user("ken").await;
    let c = app.client();
    let body = serde_json::json!({ "username": "ken", "password": PASSWORD });
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ] {
        let res = c
            .post(app.url("/api/login"))
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        assert_eq!(json(res).await["code"], "csrf_rejected");
    }
    // Same origin and same-origin fetch metadata pass; so do clients that send neither.
    let res = c
        .post(app.url("/api/login"))
        .header("origin", app.base.as_str())
        .header("sec-fetch-site", "same-origin")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = c
        .post(app.url("/api/logout"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.whoami(&c).await.status(),
        StatusCode::OK,
        "a refused logout changes nothing"
    );
}

/// A chunked body (no `Content-Length` to refuse it by) is cut off at the limit too: `413`
/// with the JSON error body, after at most the limit has been read.
#[tokio::test]
async fn a_chunked_body_past_the_limit_is_refused() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app().await;
    let host = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /api/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // 70 chunks of 1 KiB: past 64 KiB before the end. The server may answer and close
    // before all are sent; a write error then is the refusal, not a failure.
    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
    for _ in 0..70 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
}

#[tokio::test]
async fn malformed_login_requests_get_4xx_json() {
    let app = spawn_app().await;
    let c = app.client();
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            c.post(app.url("/api/login"))
                .header("content-type", "text/plain")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            c.post(app.url("/api/login"))
                .header("content-type", "application/json")
                .body("{\"username\":"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            c.post(app.url("/api/login"))
                .json(&serde_json::json!({ "username": 1, "password": [] })),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            c.post(app.url("/api/login"))
                .header("content-type", "application/json")
                .body(vec![b'x'; 70 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // Exactly the limit is read (and is not JSON).
            c.post(app.url("/api/login"))
                .header("content-type", "application/json")
                .body(vec![b'x'; 64 * 1024]),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            c.post(app.url("/api/login"))
                .header("content-type", "application/json")
                .body(vec![b'x'; 64 * 1024 + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            c.post(app.url("/api/login"))
                .json(&serde_json::json!({ "username": "a", "password": "x".repeat(1025) })),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (c.get(app.url("/nope")), StatusCode::NOT_FOUND, "not_found"),
        (
            c.get(app.url("/api/login")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            c.get(app.url(&format!("/{}", "a".repeat(9 * 1024)))),
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
        ),
    ];
    for (req, status, code) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), status, "{code}");
        assert_eq!(json(res).await["code"], code);
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let c = app.client();
    let res = c.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = c.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json(res).await["status"], "ready");
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions_and_blocks_login() {
    let app = spawn_app().await;
    let user = app.add_user("leo").await;
    let c = app.client();
    assert_eq!(
        app.api_login(&c, "leo", PASSWORD).await.status(),
        StatusCode::OK
    );
    let sessions = app.state.sessions.store();
    let ended = sessiond::accounts::disable(app.state.users.as_ref(), sessions.as_ref(), user.id)
        .await
        .unwrap();
    assert_eq!(ended, 1);
    assert_eq!(app.whoami(&c).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.api_login(&c, "leo", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
