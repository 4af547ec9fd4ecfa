//! What the JSON API and the pages show alike: users, sessions, pages of session lists, and
//! the headers that set cookies.

use axum::http::{header, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sessiond_axum::auth::LoggedIn;
use sessiond_core::{FactorSummary, SessionId, SessionRecord, Timestamp, User, UserId};
use utoipa::{IntoParams, ToSchema};

use crate::accounts::{CurrentUser, NextStep};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::user_agent;

/// `USER`: who a session belongs to.
#[derive(Serialize, ToSchema)]
#[schema(as = User)]
pub(super) struct UserView<'a> {
    username: &'a str,
    /// The display name (may be empty).
    name: &'a str,
    /// May be empty.
    email: &'a str,
    #[schema(value_type = Vec<String>)]
    groups: &'a [sessiond_core::Group],
    admin: bool,
}

impl<'a> UserView<'a> {
    pub(super) fn of(u: &'a User) -> Self {
        Self {
            username: u.username.as_str(),
            name: &u.name,
            email: &u.email,
            groups: &u.groups,
            admin: u.admin,
        }
    }
}

/// `SESSION`: a session as its owner sees it (never its secret).
#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
pub(super) struct SessionView<'a> {
    /// The public id (22 URL-safe characters); it reveals nothing of the cookie's secret.
    id: &'a str,
    #[schema(value_type = String, format = DateTime)]
    created_at: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    last_seen_at: Rfc3339,
    /// When the session ends if it sees no more activity (as of its last activity write).
    #[schema(value_type = String, format = DateTime)]
    expires_at: Rfc3339,
    /// "Stay logged in" was chosen: a persistent cookie, no idle timeout.
    remember: bool,
}

/// A timestamp serialised as RFC 3339 straight into the output (no `String` per field: this
/// is on the path of every `GET /api/session`).
pub(super) struct Rfc3339(Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.to_rfc3339().as_str())
    }
}

pub(super) fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339().as_str().to_owned()
}

impl<'a> SessionView<'a> {
    pub(super) fn of(state: &AppState, s: &'a SessionRecord) -> Self {
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

/// A user's second factors and what is expected next (`null`: nothing; `"verify"`;
/// `"enrol"`), in the login answer and `GET /api/2fa`.
#[derive(Serialize, Debug, ToSchema)]
#[schema(as = SecondFactors)]
pub(super) struct SecondFactorView {
    /// TOTP is enrolled.
    totp: bool,
    /// Unspent recovery codes.
    recovery_codes: u32,
    /// Registered passkeys.
    passkeys: u32,
    /// A hint for the client (the server enforces every level itself): `verify` for a
    /// `one_factor` session of a user who has a factor, `enrol` when `two_factor.required`
    /// holds the session to enrolment, `null` otherwise.
    #[schema(required = true)]
    next: Option<NextStep>,
}

impl SecondFactorView {
    pub(super) fn of(s: &FactorSummary, next: Option<NextStep>) -> Self {
        Self {
            totp: s.totp,
            recovery_codes: s.recovery_codes,
            passkeys: s.passkeys,
            next,
        }
    }
}

/// The answer about a session: `GET /api/session`, a login, a password change, a second
/// factor verified.
#[derive(Serialize, ToSchema)]
#[schema(as = Whoami)]
pub(super) struct Whoami<'a> {
    pub(super) user: UserView<'a>,
    pub(super) session: SessionView<'a>,
    /// `one_factor` or `two_factor`.
    #[schema(value_type = super::schema::AuthenticationLevel)]
    pub(super) authentication_level: &'static str,
    /// A login's answer only: the user's factors and what is expected next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) second_factor: Option<SecondFactorView>,
}

impl<'a> Whoami<'a> {
    pub(super) fn of(state: &AppState, user: &'a User, record: &'a SessionRecord) -> Self {
        Self {
            user: UserView::of(user),
            session: SessionView::of(state, record),
            authentication_level: record.level.as_str(),
            second_factor: None,
        }
    }
}

/// `Cache-Control: no-store`, for answers that hold a secret (a TOTP secret, recovery codes).
pub(super) fn no_store() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
}

/// `Set-Cookie` for a raised session (a second factor given: rotated) and
/// `Cache-Control: no-store`.
pub(super) fn raised_cookie(state: &AppState, raised: &sessiond_axum::auth::Raised) -> HeaderMap {
    cookie_headers(state.sessions.session_cookie(&raised.token, &raised.record))
}

/// Headers of a response that sets (or clears) the session cookie.
pub(crate) fn cookie_headers(cookie: HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, cookie);
    // A response carrying a secret must never be stored by a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
}

/// The headers of a successful login: `Set-Cookie` (session, and device when new) and
/// `Cache-Control: no-store`.
pub(crate) fn login_headers(state: &AppState, done: &LoggedIn<User>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for cookie in state.auth.login_cookies(done) {
        h.append(header::SET_COOKIE, cookie);
    }
    // A response carrying a secret must never be stored by a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
}

/// One of the caller's sessions in `GET /api/sessions`.
#[derive(Serialize, ToSchema)]
#[schema(as = SessionListItem)]
pub(super) struct SessionListItem {
    /// The public id (22 URL-safe characters).
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_seen_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub remember: bool,
    /// The client address recorded at login, if known.
    #[schema(required = true)]
    pub ip: Option<String>,
    /// The `User-Agent` recorded at login, if known.
    #[schema(required = true)]
    pub user_agent: Option<String>,
    /// A short label such as `Firefox on Linux`.
    pub device: String,
    /// The session making the request.
    pub current: bool,
}

/// `?limit=&after=` of a session list: pages keep an answer bounded however many sessions a
/// user has. `after` is the `next` cursor of the previous page.
#[derive(Deserialize, Default, Debug, Clone, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Sessions per page, 1–500 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page (`<created ms>.<session id>`); empty: the
    /// first page.
    #[serde(default)]
    #[param(pattern = r"^([+-]?[0-9]{1,19}\.[A-Za-z0-9_-]{22})?$")]
    pub after: Option<String>,
}

/// Sessions per page unless `limit` says otherwise (the default per-user cap: one page
/// shows a capped user's sessions whole).
pub(super) const DEFAULT_PAGE: usize = 100;
/// The largest `limit` accepted.
pub(super) const MAX_PAGE: usize = 500;

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
pub(super) fn cursor_of(s: &SessionRecord) -> String {
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
    let mut page = match user {
        Some(user) => state.auth.sessions_of(user, after, limit + 1).await?,
        None => {
            state
                .sessions
                .store()
                .list_page(None, after, limit + 1)
                .await?
        }
    };
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
            device: user_agent::label(s.user_agent.as_deref()),
            current: &s.id == current,
            ip: s.ip,
            user_agent: s.user_agent,
        });
    }
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sessiond_core::Timestamp;

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
