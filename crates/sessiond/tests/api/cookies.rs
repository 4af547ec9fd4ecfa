//! Whatever arrives in the Cookie header, the answer is "no session" (401) or a refusal
//! (4xx), never a 5xx and never someone's session.

use reqwest::header::HeaderValue;
use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn hostile_cookies_never_get_a_session_or_a_5xx() {
    let app = spawn_app().await;
    app.add_user("mia").await;
    let token = session_cookie(&app.api_login(&app.client(), "mia", PASSWORD).await).unwrap();
    let mut flipped = token.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();

    let good = format!("__Host-sessiond={token}");
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        (
            "tampered",
            format!("__Host-sessiond={flipped}").into_bytes(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "truncated",
            format!("__Host-sessiond={}", &token[..42]).into_bytes(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "extended",
            format!("__Host-sessiond={token}A").into_bytes(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "empty",
            b"__Host-sessiond=".to_vec(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong name",
            format!("sessiond={token}").into_bytes(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "large",
            format!("__Host-sessiond={}", "A".repeat(6000)).into_bytes(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "oversized",
            format!("__Host-sessiond={}", "A".repeat(9000)).into_bytes(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (
            "non-utf8",
            b"__Host-sessiond=\xff\xfe\xfd; x=\xc3\x28".to_vec(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "duplicate",
            format!("{good}; {good}").into_bytes(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "no equals",
            b"__Host-sessiond".to_vec(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "quoted garbage",
            b"__Host-sessiond=\"\"\"".to_vec(),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    let c = app.bare_client();
    for (name, value, expected) in cases {
        let res = c
            .get(app.url("/api/session"))
            .header("cookie", HeaderValue::from_bytes(&value).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), expected, "{name}");
        let body = json(res).await;
        assert!(body["code"].is_string(), "{name}: JSON error body");
    }
    // The good cookie, in a second Cookie header next to a duplicate, is still ambiguous.
    let res = c
        .get(app.url("/api/session"))
        .header("cookie", good.as_str())
        .header("cookie", good.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Among unrelated cookies, it works; nothing above created a session.
    let res = c
        .get(app.url("/api/session"))
        .header("cookie", format!("a=1; {good}; b=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.state.sessions.store().list_all().await.unwrap().len(),
        1
    );
}
