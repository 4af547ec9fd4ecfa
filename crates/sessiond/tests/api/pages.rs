//! The account and admin pages, driven like a browser without JavaScript would: GET a page,
//! post its forms with their CSRF token.

use reqwest::StatusCode;

use crate::helpers::*;

fn location(res: &reqwest::Response) -> String {
    res.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_account_page_lists_sessions_and_revokes_them() {
    let app = spawn_app().await;
    app.add_user("zara").await;
    let me = app.client();
    let other = app.client();
    let third = app.client();
    assert_eq!(
        app.form_login(&me, "zara", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    app.form_login(&other, "zara", PASSWORD).await;
    app.form_login(&third, "zara", PASSWORD).await;

    let (status, html, csrf) = app.page(&me, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("class=\"revoke\"").count(), 3);
    assert!(html.contains("(this one)"));
    assert!(html.contains("127.0.0.1"));

    // Revoke one (not ours).
    let ids = app.state.sessions.store().list_all().await.unwrap();
    let other_id = json(app.whoami(&other).await).await["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ids.iter().any(|s| s.id.as_str() == other_id));
    let res = me
        .post(app.url(&format!("/sessions/{other_id}/revoke")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/?done=revoked");
    assert_eq!(app.whoami(&other).await.status(), StatusCode::UNAUTHORIZED);
    let (_, html, _) = app.page(&me, "/?done=revoked").await;
    assert!(html.contains("Session logged out."));

    // Without the token: refused.
    let res = me
        .post(app.url("/sessions/revoke-others"))
        .form(&[("csrf_token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.whoami(&third).await.status(), StatusCode::OK);
    let res = me
        .post(app.url("/sessions/revoke-others"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&res), "/?done=others");
    assert_eq!(app.whoami(&third).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&me).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_account_page_changes_the_password() {
    let app = spawn_app().await;
    app.add_user("abe").await;
    let me = app.client();
    let other = app.client();
    app.form_login(&me, "abe", PASSWORD).await;
    app.form_login(&other, "abe", PASSWORD).await;
    let (_, _, csrf) = app.page(&me, "/").await;
    let post = |current: &str, new: &str, confirm: &str| {
        me.post(app.url("/password"))
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("current_password", current),
                ("new_password", new),
                ("confirm_password", confirm),
            ])
            .send()
    };
    let res = post(PASSWORD, "new password one", "new password two")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("do not match"));
    let res = post("not it at all", "new password one", "new password one")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("current password is not right"));
    let res = post(PASSWORD, "short", "short").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.whoami(&other).await.status(), StatusCode::OK);

    let res = post(PASSWORD, "new password one", "new password one")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/?done=password");
    assert!(session_cookie(&res).is_some());
    let (status, html, _) = app.page(&me, "/?done=password").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Password changed."));
    assert_eq!(app.whoami(&other).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.api_login(&app.client(), "abe", "new password one")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn admin_pages_manage_users_and_sessions() {
    let app = spawn_app().await;
    app.add_user_with("boss", PASSWORD, true).await;
    app.add_user("carl").await;
    let admin = app.client();
    let carl = app.client();
    app.form_login(&admin, "boss", PASSWORD).await;
    app.form_login(&carl, "carl", PASSWORD).await;

    // Not logged in → login page; not an admin → 403.
    let res = app.client().get(app.url("/admin")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/login");
    let (status, _, _) = app.page(&carl, "/admin").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Even with a valid form token of their own.
    let (_, _, carl_csrf) = app.page(&carl, "/").await;
    let res = carl
        .post(app.url("/admin/users/boss/disable"))
        .form(&[("csrf_token", carl_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "a user cannot act as admin"
    );

    let (status, html, csrf) = app.page(&admin, "/admin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("carl") && html.contains("boss"));
    let post = |path: String, extra: Vec<(&'static str, String)>| {
        let mut form = vec![("csrf_token", csrf.clone())];
        form.extend(extra);
        admin.post(app.url(&path)).form(&form).send()
    };

    // Create.
    let res = post(
        "/admin/users".into(),
        vec![
            ("username", "dora".into()),
            ("password", "dora's password".into()),
            ("groups", "ops, dev".into()),
            ("email", "dora@example.com".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(location(&res), "/admin?done=created");
    let dora = app.client();
    assert_eq!(
        app.api_login(&dora, "dora", "dora's password")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        json(app.whoami(&dora).await).await["user"]["groups"],
        serde_json::json!(["ops", "dev"])
    );
    let res = post(
        "/admin/users".into(),
        vec![
            ("username", "DORA".into()),
            ("password", "long enough".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("already exists"));
    let res = post(
        "/admin/users".into(),
        vec![("username", "eve".into()), ("password", "short".into())],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // Disable ends the sessions; enable lets the user back in.
    let res = post("/admin/users/carl/disable".into(), vec![])
        .await
        .unwrap();
    assert_eq!(location(&res), "/admin?done=disabled");
    assert_eq!(app.whoami(&carl).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.api_login(&carl, "carl", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    post("/admin/users/carl/enable".into(), vec![])
        .await
        .unwrap();
    assert_eq!(
        app.api_login(&carl, "carl", PASSWORD).await.status(),
        StatusCode::OK
    );

    // Reset password ends the sessions.
    let res = post(
        "/admin/users/carl/password".into(),
        vec![("new_password", "reset by boss".into())],
    )
    .await
    .unwrap();
    assert_eq!(location(&res), "/admin?done=password");
    assert_eq!(app.whoami(&carl).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.api_login(&carl, "carl", "reset by boss").await.status(),
        StatusCode::OK
    );

    // Revoke one user's sessions, then one session by id.
    post("/admin/users/carl/revoke".into(), vec![])
        .await
        .unwrap();
    assert_eq!(app.whoami(&carl).await.status(), StatusCode::UNAUTHORIZED);
    let dora_id = json(app.whoami(&dora).await).await["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = post(format!("/admin/sessions/{dora_id}/revoke"), vec![])
        .await
        .unwrap();
    assert_eq!(location(&res), "/admin?done=revoked");
    assert_eq!(app.whoami(&dora).await.status(), StatusCode::UNAUTHORIZED);
    let res = post("/admin/users/nobody/disable".into(), vec![])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Revoke all: everyone, the admin included.
    app.api_login(&carl, "carl", "reset by boss").await;
    let res = post("/admin/sessions/revoke-all".into(), vec![])
        .await
        .unwrap();
    assert_eq!(location(&res), "/login");
    assert_eq!(app.whoami(&carl).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&admin).await.status(), StatusCode::UNAUTHORIZED);
}

/// The admin page refuses the groups `sessiond user add --groups` refuses (it once took
/// any string), with the page's own `400` and message, and creates nobody; both go through
/// `Group`, so they refuse the same inputs with the same words.
#[tokio::test]
async fn the_admin_page_refuses_the_groups_the_cli_refuses() {
    let app = spawn_app().await;
    app.add_user_with("boss", PASSWORD, true).await;
    let admin = app.client();
    app.form_login(&admin, "boss", PASSWORD).await;
    let (_, _, csrf) = app.page(&admin, "/admin").await;
    let rule = "1 to 64 bytes, no commas or control characters, no spaces at either end";
    let long = "g".repeat(65);
    for (i, groups) in [
        format!("ops, {long}"),
        "a\tb".to_owned(),
        "dev, ops\u{7f}".to_owned(),
        "x\u{85}y".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let name = format!("ursula{i}");
        let res = admin
            .post(app.url("/admin/users"))
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("username", &name),
                ("password", "ursula's password"),
                ("groups", groups),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{groups:?}");
        let html = res.text().await.unwrap();
        assert!(html.contains(rule), "{groups:?}: {html}");
        assert_eq!(
            app.api_login(&app.client(), &name, "ursula's password")
                .await
                .status(),
            StatusCode::UNAUTHORIZED,
            "{groups:?}: created anyway"
        );

        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(["user", "add", &name, "--password-stdin", "--groups", groups])
            .env("SESSIOND_DATABASE", db_url(app.dir.path()))
            .env_remove("SESSIOND_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&cli.stderr);
        assert_eq!(cli.status.code(), Some(2), "{groups:?}: {stderr}");
        assert!(stderr.contains(rule), "{groups:?}: {stderr}");
    }
    // What both accept: trimmed entries, blanks skipped, spaces and non-ASCII inside.
    let res = admin
        .post(app.url("/admin/users"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", "vera"),
            ("password", "vera's password"),
            ("groups", " site admins ,, équipe "),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&res), "/admin?done=created");
    let vera = app.client();
    app.api_login(&vera, "vera", "vera's password").await;
    assert_eq!(
        json(app.whoami(&vera).await).await["user"]["groups"],
        serde_json::json!(["site admins", "équipe"])
    );
}
