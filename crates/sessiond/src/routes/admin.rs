//! `/admin`: users (create, disable, enable, reset password) and sessions (list, revoke one,
//! one user's, or all), for users with the admin flag. Every change that must end sessions
//! goes through `accounts`, like the CLI's.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sessiond_axum::csrf::form_token;
use sessiond_core::{Group, NewUser, Password, SessionId, StoreError, User, UserId, Username};

use super::extract::{CurrentUser, FormBody};
use super::html::{check_form_token, page, see_other, sentence, TokenForm};
use super::views::{cookie_headers, rfc3339, session_page, PageQuery};
use crate::accounts;
use crate::error::{ApiError, HtmlResult};
use crate::state::AppState;

/// A logged-in admin, or `403` (`401` → the login page when not logged in). An admin who has
/// a second factor needs a `two_factor` session (a one-factor one is sent to the
/// second-factor step); one held to enrolment by `two_factor.required` is sent to it.
pub(super) struct Admin(pub CurrentUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = crate::error::HtmlError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let me = CurrentUser::from_request_parts(parts, state).await?;
        if !me.user.admin {
            return Err(ApiError::Forbidden.into());
        }
        if let Err(e) = state.auth.require_level_for(&me.session).await {
            // A page comes back here after the second-factor step.
            let back = (parts.method == axum::http::Method::GET)
                .then(|| parts.uri.path_and_query().map(|p| p.as_str().to_owned()))
                .flatten();
            return Err(crate::error::HtmlError(e.into(), back));
        }
        Ok(Self(me))
    }
}

#[derive(Deserialize, Default)]
pub(super) struct Done {
    done: Option<String>,
}

fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "created" => Some("User created."),
        "disabled" => Some("User disabled and logged out everywhere."),
        "enabled" => Some("User enabled."),
        "password" => Some("Password reset; the user was logged out everywhere."),
        "revoked" => Some("Sessions logged out."),
        "2fa_reset" => Some("Second factors removed; the user was logged out everywhere."),
        _ => None,
    }
}

#[derive(Serialize)]
struct UserRow<'a> {
    username: &'a str,
    name: &'a str,
    email: &'a str,
    groups: String,
    admin: bool,
    disabled: bool,
    sessions: String,
    /// The user's second factors, e.g. `TOTP, 9 recovery codes` (empty: none).
    factors: String,
}

#[derive(Serialize)]
struct SessionRow {
    id: String,
    user: String,
    device: String,
    ip: Option<String>,
    created_at: String,
    last_seen_at: String,
    remember: bool,
    current: bool,
}

#[derive(Serialize)]
struct AdminPage<'a> {
    me: &'a str,
    users: Vec<UserRow<'a>>,
    sessions: Vec<SessionRow>,
    /// The next page's cursor (`/admin?after=…`), if there are more sessions.
    next: Option<String>,
    csrf_token: String,
    notice: Option<&'static str>,
    error: Option<String>,
}

/// `TOTP, 9 recovery codes`, or empty when the user has none.
pub(crate) fn factors_label(f: &sessiond_core::FactorSummary) -> String {
    let mut parts = Vec::new();
    if f.totp {
        parts.push("TOTP".to_owned());
    }
    if f.passkeys > 0 {
        parts.push(format!("{} passkey(s)", f.passkeys));
    }
    if f.recovery_codes > 0 {
        parts.push(format!("{} recovery codes", f.recovery_codes));
    }
    parts.join(", ")
}

/// Users' session counts are read up to this many (shown as "N+" beyond).
const COUNT_BOUND: usize = 1_000;

async fn render(
    state: &AppState,
    me: &CurrentUser,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
) -> HtmlResult<Response> {
    render_page(state, me, status, notice, error, &PageQuery::default()).await
}

async fn render_page(
    state: &AppState,
    me: &CurrentUser,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
    q: &PageQuery,
) -> HtmlResult<Response> {
    let users: Vec<User> = state.users.list_users().await?;
    let names: HashMap<UserId, &str> = users.iter().map(|u| (u.id, u.username.as_str())).collect();
    // One page of all sessions: a page of every session grows without bound.
    let (all, next) = session_page(state, None, q).await?;
    // Per-user counts from indexed, bounded reads (at most the cap + 1 records each), not
    // from a list of every session.
    let bound = state
        .config
        .max_sessions_per_user
        .unwrap_or(COUNT_BOUND)
        .min(COUNT_BOUND);
    let mut counts: HashMap<UserId, String> = HashMap::new();
    let mut factors: HashMap<UserId, String> = HashMap::new();
    for u in &users {
        factors.insert(u.id, factors_label(&state.auth.factors_of(u.id).await?));
        let n = state
            .sessions
            .store()
            .list_page(Some(u.id), None, bound + 1)
            .await?
            .len();
        let shown = if n > bound {
            format!("{bound}+")
        } else {
            n.to_string()
        };
        counts.insert(u.id, shown);
    }
    let sessions = all
        .iter()
        .map(|s| SessionRow {
            id: s.id.to_string(),
            user: names
                .get(&s.user_id)
                .map_or_else(|| format!("#{}", s.user_id.0), |n| (*n).to_owned()),
            device: crate::user_agent::label(s.user_agent.as_deref()),
            ip: s.ip.clone(),
            created_at: rfc3339(s.created_at),
            last_seen_at: rfc3339(s.last_seen_at),
            remember: s.remember,
            current: s.id == me.session.record().id,
        })
        .collect();
    let users = users
        .iter()
        .map(|u| UserRow {
            username: u.username.as_str(),
            name: &u.name,
            email: &u.email,
            groups: u.groups.join(", "),
            admin: u.admin,
            disabled: u.disabled,
            sessions: counts.remove(&u.id).unwrap_or_default(),
            factors: factors.remove(&u.id).unwrap_or_default(),
        })
        .collect();
    let ctx = AdminPage {
        me: me.user.username.as_str(),
        users,
        sessions,
        next,
        csrf_token: form_token(&me.session),
        notice,
        error,
    };
    page(status, "admin.html", ctx)
}

pub(super) async fn index(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(q): Query<Done>,
    page: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> HtmlResult<Response> {
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let done = notice(q.done.as_deref());
    render_page(&state, &me, StatusCode::OK, done, None, &page).await
}

#[derive(Deserialize)]
pub(super) struct CreateForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    groups: String,
    admin: Option<String>,
}

pub(super) async fn create_user(
    State(state): State<AppState>,
    Admin(me): Admin,
    form: Result<FormBody<CreateForm>, ApiError>,
) -> HtmlResult<Response> {
    let FormBody(f) = form?;
    check_form_token(&me.session, &f.csrf_token)?;
    let invalid = |msg: String| render(&state, &me, StatusCode::BAD_REQUEST, None, Some(msg));
    let username = match Username::parse(f.username.trim()) {
        Ok(u) => u,
        Err(e) => return invalid(sentence(&e.to_string())).await,
    };
    let password = match Password::new(f.password) {
        Ok(p) => p,
        Err(e) => return invalid(sentence(&e.to_string())).await,
    };
    let groups = match Group::parse_list(&f.groups) {
        Ok(g) => g,
        Err(e) => return invalid(sentence(&e.to_string())).await,
    };
    let phc = state.auth.hasher().hash(password).await?;
    let new = NewUser {
        username,
        name: f.name.trim().to_owned(),
        email: f.email.trim().to_owned(),
        groups,
        admin: f.admin.is_some_and(|v| !v.is_empty()),
        password_hash: phc,
        created_at: state.sessions.now(),
    };
    match state.users.create_user(&new).await {
        Ok(u) => {
            tracing::info!(target: "sessiond::audit", event = "user_created", user = %u.username, admin = u.admin, by = %me.user.username);
            Ok(see_other("/admin?done=created"))
        }
        Err(StoreError::Conflict) => {
            invalid(format!("A user named {} already exists.", new.username)).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn target(state: &AppState, name: &str) -> HtmlResult<User> {
    let name = Username::parse(name).map_err(|_| ApiError::NotFound)?;
    Ok(state
        .users
        .user_by_name(&name)
        .await?
        .ok_or(ApiError::NotFound)?
        .user)
}

/// After a change that may have ended the admin's own session.
fn after(me: &CurrentUser, affected: UserId, done: &str, state: &AppState) -> Response {
    if me.user.id == affected {
        let mut res = see_other("/login");
        res.headers_mut()
            .extend(cookie_headers(state.sessions.removal_cookie()));
        return res;
    }
    see_other(&format!("/admin?done={done}"))
}

pub(super) async fn user_action(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path((name, action)): Path<(String, String)>,
    form: Result<FormBody<ActionForm>, ApiError>,
) -> HtmlResult<Response> {
    let FormBody(f) = form?;
    check_form_token(&me.session, &f.csrf_token)?;
    let user = target(&state, &name).await?;
    let (users, sessions) = (state.users.as_ref(), state.sessions.store().as_ref());
    let done = match action.as_str() {
        "disable" => {
            match accounts::disable(users, sessions, user.id).await {
                Ok(_) => {}
                Err(e @ accounts::ChangeError::LastAdmin(_)) => {
                    // The page again with the reason; the status comes from `ApiError`.
                    let e = ApiError::from(e);
                    let msg = sentence(&e.to_string());
                    return render(&state, &me, e.status(), None, Some(msg)).await;
                }
                Err(e) => return Err(ApiError::from(e).into()),
            }
            "disabled"
        }
        "enable" => {
            sessiond_axum::auth::enable(users, user.id).await?;
            tracing::info!(target: "sessiond::audit", event = "admin_action", action = "enable", user = %user.username, by = %me.user.username);
            return Ok(see_other("/admin?done=enabled"));
        }
        "password" => {
            let password = match Password::new(f.new_password) {
                Ok(p) => p,
                Err(e) => {
                    return render(
                        &state,
                        &me,
                        StatusCode::BAD_REQUEST,
                        None,
                        Some(sentence(&e.to_string())),
                    )
                    .await
                }
            };
            let phc = state.auth.hasher().hash(password).await?;
            accounts::set_password(users, sessions, user.id, &phc).await?;
            "password"
        }
        "revoke" => {
            sessions.delete_for_user(user.id, None).await?;
            "revoked"
        }
        "2fa-reset" => {
            // Ends all the user's sessions, removes every factor, ends them again (the
            // library's order: a failure leaves the factors in place and is reported).
            crate::accounts::second_factors_configured(&state)?;
            state.auth.reset_second_factors(user.id).await?;
            "2fa_reset"
        }
        _ => return Err(ApiError::NotFound.into()),
    };
    tracing::info!(target: "sessiond::audit", event = "admin_action", action = %action, user = %user.username, by = %me.user.username);
    Ok(after(&me, user.id, done, &state))
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    new_password: String,
}

pub(super) async fn revoke_session(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let FormBody(f) = form?;
    check_form_token(&me.session, &f.csrf_token)?;
    let id = SessionId::parse(&id).ok_or(ApiError::NotFound)?;
    if !state.sessions.store().delete_by_id(&id, None).await? {
        return Err(ApiError::NotFound.into());
    }
    tracing::info!(target: "sessiond::audit", event = "revoke", session = %id, by = %me.user.username);
    if id == me.session.record().id {
        return Ok(after(&me, me.user.id, "revoked", &state));
    }
    Ok(see_other("/admin?done=revoked"))
}

pub(super) async fn revoke_all(
    State(state): State<AppState>,
    Admin(me): Admin,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let FormBody(f) = form?;
    check_form_token(&me.session, &f.csrf_token)?;
    let n = state.sessions.store().delete_all().await?;
    tracing::info!(target: "sessiond::audit", event = "revoke_all", count = n, by = %me.user.username);
    Ok(after(&me, me.user.id, "revoked", &state))
}
