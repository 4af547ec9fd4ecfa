//! The JSON API (SPEC §4).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sessiond_axum::ActiveSession;
use sessiond_core::{NewSession, SessionId, SessionRecord, SessionToken, Timestamp, User, UserId};

use super::extract::{ClientInfo, CurrentUser, JsonBody, Presented};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::{accounts, throttle};
use sessiond_axum::{find_cookie, CookieLookup};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
    #[serde(default)]
    remember: bool,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
pub struct UserView<'a> {
    username: &'a str,
    name: &'a str,
    email: &'a str,
    groups: &'a [sessiond_core::Group],
    admin: bool,
}

impl<'a> UserView<'a> {
    pub fn of(u: &'a User) -> Self {
        Self {
            username: u.username.as_str(),
            name: &u.name,
            email: &u.email,
            groups: &u.groups,
            admin: u.admin,
        }
    }
}

#[derive(Serialize)]
pub struct SessionView<'a> {
    id: &'a str,
    created_at: Rfc3339,
    last_seen_at: Rfc3339,
    expires_at: Rfc3339,
    remember: bool,
}

/// A timestamp serialised as RFC 3339 straight into the output (no `String` per field: this
/// is on the path of every `GET /api/session`).
pub struct Rfc3339(Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.to_rfc3339().as_str())
    }
}

pub fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339().as_str().to_owned()
}

impl<'a> SessionView<'a> {
    pub fn of(state: &AppState, s: &'a SessionRecord) -> Self {
        Self {
            id: s.id.as_str(),
            created_at: Rfc3339(s.created_at),
            last_seen_at: Rfc3339(s.last_seen_at),
            // When the session ends if it sees no more activity (as of its last write).
            expires_at: Rfc3339(state.sessions.policy().deadline(s, s.last_seen_at)),
            remember: s.remember,
        }
    }
}

#[derive(Serialize)]
struct Whoami<'a> {
    user: UserView<'a>,
    session: SessionView<'a>,
}

/// A successful login: the user, the new session with its secret, and a new device cookie
/// secret when the browser had none.
pub(super) struct LoggedIn {
    pub user: User,
    pub token: SessionToken,
    pub record: SessionRecord,
    pub device: Option<SessionToken>,
}

impl LoggedIn {
    /// `Set-Cookie` (session, and device when new) and `Cache-Control: no-store`.
    pub fn headers(&self, state: &AppState) -> HeaderMap {
        let mut h = cookie_headers(state.sessions.session_cookie(&self.token, &self.record));
        if let Some(d) = &self.device {
            let c = &state.config.device_cookie;
            h.append(
                header::SET_COOKIE,
                c.build(c.name(), d.expose(), Some(throttle::DEVICE_LIFETIME)),
            );
        }
        h
    }
}

/// Checks the throttles, then the credentials, and starts a session with a fresh secret. A
/// valid session the request presented ends in the same atomic step (rotation), whoever it
/// belonged to.
pub(super) async fn log_in(
    state: &AppState,
    client: ClientInfo,
    headers: &HeaderMap,
    presented: Option<ActiveSession>,
    username: &str,
    password: String,
    remember: bool,
) -> ApiResult<LoggedIn> {
    let device_cookie = match find_cookie(headers, state.config.device_cookie.name()) {
        CookieLookup::One(v) => Some(v),
        _ => None,
    };
    // A full hashing pool refuses at once, before the throttle reads: under a login flood
    // each refusal must cost as little as possible, so verification keeps its CPU.
    if state.hasher.saturated() {
        state
            .metrics
            .hash_overloaded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ApiError::Overloaded { retry_after: 1 });
    }
    let attempt = throttle::Attempt::new(username, client.ip.as_deref(), device_cookie);
    // Reserved atomically before any password work (issue 15 #4).
    let reserved = throttle::check(state, &attempt).await?;
    let authenticated = crate::password::with_owners(
        attempt.owners(None),
        accounts::authenticate_verified(state, username, password),
    );
    let (user, verified_phc) = match authenticated.await {
        Ok(u) => u,
        Err(e) => {
            if !matches!(e, ApiError::InvalidCredentials) {
                // No verdict on the password: the attempt is given back.
                throttle::release(state, &reserved).await?;
            }
            let counter = match e {
                ApiError::InvalidCredentials => {
                    tracing::info!(target: "sessiond::audit", event = "login_failed", user = %attempt.account(), ip = ?client.ip);
                    throttle::failed(state, &reserved).await?;
                    &state.metrics.logins_failed
                }
                ApiError::Overloaded { .. } => &state.metrics.hash_overloaded,
                _ => return Err(e),
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
    };
    state
        .metrics
        .logins_succeeded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = throttle::succeeded(state, &attempt, &reserved, device_cookie).await?;
    let new = NewSession {
        user_id: user.id,
        remember,
        ip: client.ip,
        user_agent: client.user_agent,
    };
    let (token, record) = state.sessions.begin(new, presented.as_ref()).await?;
    // A password change, reset or disable that landed while this password was being
    // verified must not leave this session behind it (issue 15 #12): checked now that the
    // session exists, so either the change's sweep ends it or this sees the change.
    if !accounts::still_current(state, &user, &verified_phc).await? {
        state.sessions.store().delete(&record.token_hash).await?;
        tracing::info!(target: "sessiond::audit", event = "login_failed", reason = "changed_meanwhile", user = %user.username, ip = ?record.ip);
        return Err(ApiError::InvalidCredentials);
    }
    if let Some(cap) = state.config.max_sessions_per_user {
        // The per-user cap (issue 15 #16): the oldest sessions end first.
        let ended = state
            .sessions
            .store()
            .delete_oldest_for_user(user.id, cap)
            .await?;
        if ended > 0 {
            tracing::info!(target: "sessiond::audit", event = "sessions_capped", user = %user.username, count = ended);
        }
    }
    tracing::info!(target: "sessiond::audit", event = "login", user = %user.username, session = %record.id, ip = ?record.ip);
    Ok(LoggedIn {
        user,
        token,
        record,
        device,
    })
}

/// Headers of a response that sets (or clears) the session cookie.
pub(super) fn cookie_headers(cookie: HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, cookie);
    // A response carrying a secret must never be stored by a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
}

pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Presented(presented): Presented,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Response> {
    let login = log_in(
        &state,
        client,
        &headers,
        presented,
        &req.username,
        req.password,
        req.remember,
    );
    let done = login.await?;
    let body = Whoami {
        user: UserView::of(&done.user),
        session: SessionView::of(&state, &done.record),
    };
    Ok((done.headers(&state), Json(body)).into_response())
}

pub async fn logout(
    State(state): State<AppState>,
    Presented(presented): Presented,
) -> ApiResult<Response> {
    if let Some(s) = presented {
        state.sessions.end(&s).await?;
        tracing::info!(target: "sessiond::audit", event = "logout", session = %s.record().id);
    }
    Ok((
        StatusCode::NO_CONTENT,
        cookie_headers(state.sessions.removal_cookie()),
    )
        .into_response())
}

pub async fn session(State(state): State<AppState>, me: CurrentUser) -> ApiResult<Response> {
    let body = state
        .session_bodies
        .get_or_render(me.session.shared_record(), &me.user, || {
            let view = Whoami {
                user: UserView::of(&me.user),
                session: SessionView::of(&state, me.session.record()),
            };
            // Serialised into one right-sized `Vec` rather than through `Json`'s `BytesMut`
            // writer.
            let mut buf = Vec::with_capacity(512);
            serde_json::to_writer(&mut buf, &view).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("cannot serialise the session: {e}"))
            })?;
            Ok(buf)
        })?;
    let mut res = Response::new(axum::body::Body::from(body));
    let h = res.headers_mut();
    // Room for these and what the guard and hyper add, allocated once.
    h.reserve(6);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Rendered `GET /api/session` bodies, one per session.
///
/// This is the verify endpoint's whole body, and rendering it (JSON, three RFC 3339
/// timestamps) was the largest item of session-specific work in its callgrind profile. The
/// body is a pure function of the session record, the user and the expiry policy (fixed for
/// the process), and the caches hand out the *same* objects until something changes: the
/// session cache the same `Arc<SessionRecord>` until an activity write or a reload makes a
/// new one, the user cache the same `Arc<User>` until any change moves its epoch on. So an
/// entry is served only while both are the very objects it was rendered from
/// (`Arc::ptr_eq`; the entry holds them, so their addresses cannot be reused meanwhile).
/// Verification always runs first: an entry is never a way to reach a revoked session, it
/// only spares re-rendering an answer already decided.
#[derive(Default)]
pub struct SessionBodies {
    entries: Mutex<HashMap<[u8; 32], BodyEntry, sessiond_core::TokenHashState>>,
}

struct BodyEntry {
    record: Arc<SessionRecord>,
    user: Arc<User>,
    body: Bytes,
}

impl std::fmt::Debug for SessionBodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBodies").finish_non_exhaustive()
    }
}

impl SessionBodies {
    /// Bounds memory: at most this many bodies (a few hundred bytes each) are kept; when full,
    /// the map starts over (each live session re-renders once).
    const CAPACITY: usize = 16_384;

    fn get_or_render(
        &self,
        record: &Arc<SessionRecord>,
        user: &Arc<User>,
        render: impl FnOnce() -> ApiResult<Vec<u8>>,
    ) -> ApiResult<Bytes> {
        let key = *record.token_hash.as_bytes();
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = entries.get(&key) {
                if Arc::ptr_eq(&e.record, record) && Arc::ptr_eq(&e.user, user) {
                    return Ok(e.body.clone());
                }
            }
        }
        let body = Bytes::from(render()?);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::CAPACITY {
            entries.clear();
        }
        entries.insert(
            key,
            BodyEntry {
                record: Arc::clone(record),
                user: Arc::clone(user),
                body: body.clone(),
            },
        );
        Ok(body)
    }
}

#[derive(Serialize)]
pub struct SessionListItem {
    pub id: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub remember: bool,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub device: String,
    pub current: bool,
}

/// `?limit=&after=` of a session list (issue 15 #16: one user with 50,000 sessions made
/// `/api/sessions` 37 MB). `after` is the `next` cursor of the previous page.
#[derive(Deserialize, Default, Debug, Clone)]
pub struct PageQuery {
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub after: Option<String>,
}

/// Sessions per page unless `limit` says otherwise (the default per-user cap: one page
/// shows a capped user's sessions whole).
pub const DEFAULT_PAGE: usize = 100;
/// The largest `limit` accepted.
pub const MAX_PAGE: usize = 500;

impl PageQuery {
    /// Validated `limit` and decoded cursor; anything malformed is `400`.
    fn parse(&self) -> ApiResult<(usize, Option<(Timestamp, SessionId)>)> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        let after = match self.after.as_deref() {
            None | Some("") => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                ApiError::BadRequest("after: not a cursor from a previous page".into())
            })?),
        };
        Ok((limit, after))
    }
}

/// The cursor after `s`: `<created_at ms>.<session id>` (URL-safe as it is; both parts
/// public).
pub fn cursor_of(s: &SessionRecord) -> String {
    format!("{}.{}", s.created_at.as_millis(), s.id)
}

fn parse_cursor(c: &str) -> Option<(Timestamp, SessionId)> {
    let (ms, id) = c.split_once('.')?;
    let ms: i64 = ms.parse().ok()?;
    Some((Timestamp::from_millis(ms), SessionId::parse(id)?))
}

/// One page of `user`'s sessions (all sessions with `None`) and the cursor of the next page,
/// if there is one.
pub(super) async fn session_page(
    state: &AppState,
    user: Option<UserId>,
    q: &PageQuery,
) -> ApiResult<(Vec<SessionRecord>, Option<String>)> {
    let (limit, after) = q.parse()?;
    // One more than asked: whether a next page exists, without an empty last page.
    let mut page = state
        .sessions
        .store()
        .list_page(user, after, limit + 1)
        .await?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(cursor_of)
    } else {
        None
    };
    Ok((page, next))
}

/// One page of the caller's sessions, oldest first, without any secret, and the next
/// page's cursor.
pub(super) async fn list_own(
    state: &AppState,
    me: &CurrentUser,
    q: &PageQuery,
) -> ApiResult<(Vec<SessionListItem>, Option<String>)> {
    let policy = state.sessions.policy();
    let now = state.sessions.now();
    let current = &me.session.record().id;
    let mut out = Vec::new();
    let (page, next) = session_page(state, Some(me.user.id), q).await?;
    for s in page {
        // Expired but not swept yet: not a session any more.
        if matches!(policy.evaluate(&s, now), sessiond_core::Verdict::Expired(_)) {
            continue;
        }
        out.push(SessionListItem {
            id: s.id.to_string(),
            created_at: rfc3339(s.created_at),
            last_seen_at: rfc3339(s.last_seen_at),
            expires_at: rfc3339(policy.deadline(&s, s.last_seen_at)),
            remember: s.remember,
            device: crate::device::label(s.user_agent.as_deref()),
            current: &s.id == current,
            ip: s.ip,
            user_agent: s.user_agent,
        });
    }
    Ok((out, next))
}

/// `GET /api/sessions[?limit=N&after=CURSOR]` → `{"sessions": [...], "next": CURSOR|null}`.
pub async fn sessions(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (list, next) = list_own(&state, &me, &q).await?;
    let mut res = Json(serde_json::json!({ "sessions": list, "next": next })).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Ends one of the caller's sessions. Someone else's id is `404`, exactly like an unknown
/// one: the API never confirms that another user's session exists.
pub async fn revoke_session(
    State(state): State<AppState>,
    me: CurrentUser,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let id = sessiond_core::SessionId::parse(&id).ok_or(ApiError::NotFound)?;
    if !state
        .sessions
        .store()
        .delete_by_id(&id, Some(me.user.id))
        .await?
    {
        return Err(ApiError::NotFound);
    }
    tracing::info!(target: "sessiond::audit", event = "revoke", user = %me.user.username, session = %id);
    if id == me.session.record().id {
        return Ok((
            StatusCode::NO_CONTENT,
            cookie_headers(state.sessions.removal_cookie()),
        )
            .into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct RevokeQuery {
    #[serde(default)]
    others: bool,
}

/// `?others=true`: every session of the caller but this one. Without it: all of them,
/// this one included (and the cookie is cleared).
pub async fn revoke_sessions(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<axum::extract::Query<RevokeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let keep = q.others.then(|| me.session.record().id.clone());
    let n = state
        .sessions
        .store()
        .delete_for_user(me.user.id, keep.as_ref())
        .await?;
    tracing::info!(target: "sessiond::audit", event = "revoke", user = %me.user.username, others_only = q.others, count = n);
    if q.others {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok((
            StatusCode::NO_CONTENT,
            cookie_headers(state.sessions.removal_cookie()),
        )
            .into_response())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    current_password: String,
    new_password: String,
}

impl std::fmt::Debug for PasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordRequest(<redacted>)")
    }
}

/// Changes the caller's password: rotates their session, ends all their others.
pub async fn password(
    State(state): State<AppState>,
    client: ClientInfo,
    me: CurrentUser,
    JsonBody(req): JsonBody<PasswordRequest>,
) -> ApiResult<Response> {
    // The current password is checked under the login throttle (issue 15 #3).
    let attempt = throttle::Attempt::for_user(&me, client.ip.as_deref());
    let owners = attempt.owners(Some(me.session.record().id.as_str()));
    let change =
        accounts::change_password(&state, &me, req.current_password, req.new_password, client);
    let (token, record) = throttle::guarded(&state, &attempt, owners, change).await?;
    let body = Whoami {
        user: UserView::of(&me.user),
        session: SessionView::of(&state, &record),
    };
    Ok((
        cookie_headers(state.sessions.session_cookie(&token, &record)),
        Json(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use sessiond_core::{
        SessionId, SessionRecord, SessionToken, Timestamp, User, UserId, Username,
    };

    use super::SessionBodies;

    fn record(token: &SessionToken, last_seen_ms: i64) -> Arc<SessionRecord> {
        Arc::new(SessionRecord {
            id: SessionId::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap(),
            token_hash: token.hash(),
            user_id: UserId(1),
            created_at: Timestamp::from_millis(0),
            last_seen_at: Timestamp::from_millis(last_seen_ms),
            absolute_expires_at: Timestamp::from_millis(10_000_000),
            expires_at: Timestamp::from_millis(1_000_000),
            remember: false,
            ip: None,
            user_agent: None,
        })
    }

    fn user() -> Arc<User> {
        Arc::new(User {
            id: UserId(1),
            username: Username::parse("alice").unwrap(),
            name: String::new(),
            email: String::new(),
            groups: Vec::new(),
            admin: false,
            disabled: false,
            created_at: Timestamp::from_millis(0),
        })
    }

    /// A body is reused only for the very record and user objects it was rendered from: a
    /// new record (an activity write) or a reloaded user renders again.
    #[test]
    fn session_bodies_follow_the_record_and_user_objects() {
        let bodies = SessionBodies::default();
        let render = |text: &str| {
            let v = text.as_bytes().to_vec();
            move || Ok(v)
        };
        let token = SessionToken::generate();
        let (r1, u1) = (record(&token, 1), user());
        let a = bodies.get_or_render(&r1, &u1, render("one")).unwrap();
        let b = bodies.get_or_render(&r1, &u1, render("ignored")).unwrap();
        assert_eq!((&a[..], &b[..]), (&b"one"[..], &b"one"[..]));
        let r2 = record(&token, 2);
        let c = bodies.get_or_render(&r2, &u1, render("two")).unwrap();
        assert_eq!(&c[..], b"two");
        let u2 = user();
        let d = bodies.get_or_render(&r2, &u2, render("three")).unwrap();
        assert_eq!(&d[..], b"three");
        assert_eq!(bodies.get_or_render(&r2, &u2, render("x")).unwrap(), d);
    }

    proptest! {
        /// Our allocation-free formatter writes what humantime's RFC 3339 formatter writes,
        /// over the whole range humantime accepts (1970 to 9999).
        #[test]
        fn rfc3339_matches_humantime(ms in 0i64..253_402_300_800_000) {
            let t = Timestamp::from_millis(ms);
            prop_assert_eq!(
                super::rfc3339(t),
                humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
            );
        }
    }
}
