//! Passkeys through the server's JSON API (issue 18), on every store this machine runs, with a
//! software authenticator (`webauthn-authenticator-rs`) answering the ceremonies as a browser
//! and its authenticator would: registration, the list, a passkey as the second step of a
//! password login, passwordless login, a spent ceremony replayed, another user's passkey, and
//! removal. The browser's own run is `tests/browser.rs`.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::Overrides;
use sessiond_axum::auth::webauthn::{CreationChallengeResponse, RequestChallengeResponse};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;

use crate::helpers::*;
use crate::shared::{deployments, Stores};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";

/// A server whose public URL has a host name (a relying party cannot be an IP address).
async fn app_on(stores: &Stores) -> TestApp {
    let over = Overrides {
        database: stores.database.clone(),
        session_store: stores.session_store.clone(),
        encryption_key: Some(KEY.into()),
        ..Overrides::default()
    };
    let file = "public_url = \"http://localhost:{port}\"\n";
    spawn_app_full(Arc::new(tempfile::tempdir().unwrap()), file, over).await
}

fn origin(app: &TestApp) -> url::Url {
    let port = url::Url::parse(&app.base).unwrap().port().unwrap();
    url::Url::parse(&format!("http://localhost:{port}")).unwrap()
}

async fn post(app: &TestApp, c: &reqwest::Client, path: &str, body: Value) -> reqwest::Response {
    c.post(app.url(path)).json(&body).send().await.unwrap()
}

async fn level(app: &TestApp, c: &reqwest::Client) -> Option<String> {
    let res = app.whoami(c).await;
    if res.status() != StatusCode::OK {
        return None;
    }
    let body = json(res).await;
    body["authentication_level"].as_str().map(str::to_owned)
}

/// The soft authenticator keeps no resident keys, so the test plays that part of the
/// browser: registration asks it for none (the server does not require one at finish), and
/// for a passwordless login the test names the credential (`allowCredentials` is not signed;
/// a discoverable authenticator finds it by the site) and adds the user handle a discoverable
/// credential returns (not signed either: the server must check it against the credential's
/// owner, which the tests below hold it to).
fn without_resident_key(mut options: Value) -> CreationChallengeResponse {
    let sel = &mut options["publicKey"]["authenticatorSelection"];
    sel["residentKey"] = "discouraged".into();
    sel["requireResidentKey"] = false.into();
    serde_json::from_value(options).unwrap()
}

async fn register(app: &TestApp, c: &reqwest::Client, key: &mut SoftPasskey, name: &str) -> Value {
    let res = post(app, c, "/api/2fa/passkeys/register/start", json!({})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let start = json(res).await;
    let ccr = without_resident_key(start["options"].clone());
    let user_handle = start["options"]["publicKey"]["user"]["id"].clone();
    let credential = key
        .do_registration(origin(app), ccr)
        .expect("the authenticator registers");
    let res = post(
        app,
        c,
        "/api/2fa/passkeys/register/finish",
        json!({ "ceremony": start["ceremony"], "name": name, "credential": credential }),
    )
    .await;
    let status = res.status();
    let mut body = json(res).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["user_handle"] = user_handle;
    body
}

/// Runs an assertion ceremony from `start` to `finish`; the finish's status and body, and the
/// finish request's body (for a replay).
async fn assert_with(
    app: &TestApp,
    c: &reqwest::Client,
    key: &mut SoftPasskey,
    start: &str,
    finish: &str,
    discoverable: Option<(&str, &Value)>,
) -> (StatusCode, Value, Value) {
    let res = post(app, c, start, json!({})).await;
    assert_eq!(res.status(), StatusCode::OK, "{start}");
    let started = json(res).await;
    let mut options = started["options"].clone();
    if let Some((id, _)) = discoverable {
        options["publicKey"]["allowCredentials"] = json!([{ "type": "public-key", "id": id }]);
    }
    let rcr: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let allowed = rcr.public_key.allow_credentials.len();
    let credential = key.do_authentication(origin(app), rcr).unwrap_or_else(|e| {
        panic!("the authenticator signs for {start} ({allowed} allowed): {e:?}")
    });
    let mut credential = serde_json::to_value(credential).unwrap();
    if let Some((_, handle)) = discoverable {
        credential["response"]["userHandle"] = handle.clone();
    }
    let body = json!({ "ceremony": started["ceremony"], "credential": credential });
    let res = post(app, c, finish, body.clone()).await;
    let status = res.status();
    (status, json(res).await, body)
}

#[tokio::test]
async fn passkeys_register_and_sign_in_with_and_without_the_password_on_every_store() {
    for stores in deployments().await {
        let label = stores.label;
        let app = app_on(&stores).await;
        app.add_user("pia").await;
        app.add_user("quin").await;
        // The authenticator claims user verification (a PIN), as platform authenticators do.
        let mut key = SoftPasskey::new(true);

        // Registered from a password session: listed, and the session is raised.
        let c = app.client();
        assert_eq!(
            app.api_login(&c, "pia", PASSWORD).await.status(),
            StatusCode::OK
        );
        let other = app.client();
        assert_eq!(
            app.api_login(&other, "pia", PASSWORD).await.status(),
            StatusCode::OK
        );
        let done = register(&app, &c, &mut key, "laptop").await;
        assert_eq!(done["authentication_level"], "two_factor", "{label}");
        assert_eq!(done["passkey"]["name"], "laptop", "{label}");
        assert_eq!(
            level(&app, &c).await.as_deref(),
            Some("two_factor"),
            "{label}"
        );
        assert_eq!(
            level(&app, &other).await,
            None,
            "{label}: other sessions end"
        );
        let listed = json(c.get(app.url("/api/2fa/passkeys")).send().await.unwrap()).await;
        assert_eq!(listed["passkeys"].as_array().unwrap().len(), 1, "{label}");
        let id = listed["passkeys"][0]["id"].as_str().unwrap().to_owned();
        let handle = done["user_handle"].clone();

        // A password login is one factor and names the passkey as what comes next; the
        // passkey raises it (rotated: a new cookie).
        let c = app.client();
        let login = json(app.api_login(&c, "pia", PASSWORD).await).await;
        assert_eq!(login["authentication_level"], "one_factor", "{label}");
        assert_eq!(login["second_factor"]["passkeys"], 1, "{label}");
        assert_eq!(login["second_factor"]["next"], "verify", "{label}");
        let (status, body, _) = assert_with(
            &app,
            &c,
            &mut key,
            "/api/2fa/passkey/start",
            "/api/2fa/passkey",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{label}: {body}");
        assert_eq!(body["authentication_level"], "two_factor", "{label}");
        assert_eq!(
            level(&app, &c).await.as_deref(),
            Some("two_factor"),
            "{label}"
        );

        // Passwordless: a fresh client, the passkey alone, at two factors.
        let c = app.client();
        let (status, body, sent) = assert_with(
            &app,
            &c,
            &mut key,
            "/api/login/passkey/start",
            "/api/login/passkey",
            Some((&id, &handle)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{label}: {body}");
        assert_eq!(body["user"]["username"], "pia", "{label}");
        assert_eq!(body["authentication_level"], "two_factor", "{label}");
        // The same signed answer again (captured): the ceremony was spent.
        let replay = app.bare_client();
        let res = post(&app, &replay, "/api/login/passkey", sent).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{label}");
        assert!(session_cookie(&res).is_none(), "{label}");

        // The passkey with another user's handle: refused (the handle is not signed).
        let quin = app.client();
        assert_eq!(
            app.api_login(&quin, "quin", PASSWORD).await.status(),
            StatusCode::OK
        );
        let mut quins_key = SoftPasskey::new(true);
        let quins = register(&app, &quin, &mut quins_key, "phone").await;
        let c = app.client();
        let (status, body, _) = assert_with(
            &app,
            &c,
            &mut key,
            "/api/login/passkey/start",
            "/api/login/passkey",
            Some((&id, &quins["user_handle"])),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}: {body}");
        assert_eq!(body["code"], "invalid_credentials", "{label}");
        assert_eq!(level(&app, &c).await, None, "{label}");

        // Removed (from a two-factor session): gone from the list, and it signs in no more.
        let c = app.client();
        let (status, _, _) = assert_with(
            &app,
            &c,
            &mut key,
            "/api/login/passkey/start",
            "/api/login/passkey",
            Some((&id, &handle)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{label}");
        let res = c
            .delete(app.url(&format!("/api/2fa/passkeys/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{label}");
        let res = c
            .delete(app.url(&format!("/api/2fa/passkeys/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{label}");
        let fresh = app.client();
        let (status, _, _) = assert_with(
            &app,
            &fresh,
            &mut key,
            "/api/login/passkey/start",
            "/api/login/passkey",
            Some((&id, &handle)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}");
    }
}
