//! Forward auth (SPEC §4), Authelia-compatible so existing proxy snippets work unchanged:
//! `/api/authz/forward-auth` (alias `/api/verify`) for Traefik and Caddy,
//! `/api/authz/auth-request` for nginx `auth_request`.
//!
//! This is the hot path: every request of every protected app comes through here. It reads
//! no body, hashes no password, writes nothing on the request's path (activity writes are
//! coalesced and spawned), and never sets a cookie (proxies drop it anyway).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use sessiond_core::{User, UserId};
use url::Url;

use super::extract::CurrentUser;
use crate::access::Policy;
use crate::error::{ApiError, ApiResult};
use crate::forwarded::{Forwarded, TargetError};
use crate::state::AppState;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// Traefik, Caddy: `302` to the login page for a browser.
    ForwardAuth,
    /// nginx: always `401`; `Location` for a browser, which the nginx snippet turns into a
    /// redirect with `error_page 401 =302 $redirection_url`.
    AuthRequest,
}

// The handlers take the whole request and read its headers and peer in place: axum's
// `HeaderMap` extractor would clone every header of every forward-auth request.

pub async fn forward_auth(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    decide(&state, peer(&req)?, req.headers(), Flavour::ForwardAuth).await
}

pub async fn auth_request(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    decide(&state, peer(&req)?, req.headers(), Flavour::AuthRequest).await
}

/// The connection's peer (set by the server for every connection).
fn peer(req: &Request) -> ApiResult<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no connection info on the request")))
}

/// A browser navigating (it can follow a redirect to a login page), as opposed to a
/// `fetch`/XHR/API client, which needs a plain `401` it can act on.
fn is_navigation(h: &HeaderMap) -> bool {
    let accepts_html = h
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let xhr = h.contains_key("x-requested-with");
    let navigate = h
        .get("sec-fetch-mode")
        .is_none_or(|m| m.as_bytes().eq_ignore_ascii_case(b"navigate"));
    accepts_html && !xhr && navigate
}

fn bad(e: TargetError) -> ApiError {
    ApiError::BadRequest(format!("forward auth: {e}"))
}

async fn decide(
    state: &AppState,
    peer: SocketAddr,
    h: &HeaderMap,
    flavour: Flavour,
) -> ApiResult<Response> {
    // Forwarded headers from anyone but our proxies could name any target: refuse, rather
    // than answer about a request the caller made up.
    if !state.config.is_trusted_proxy(peer.ip()) {
        return Err(ApiError::BadRequest(
            "forward auth: request did not come from a trusted proxy".into(),
        ));
    }
    let forwarded = Forwarded::scan(h);
    let parts = match flavour {
        Flavour::ForwardAuth => forwarded.forward_auth_parts(),
        Flavour::AuthRequest => forwarded.auth_request_parts(),
    }
    .map_err(bad)?;
    let target = state.targets.resolve(&state.config, &parts).map_err(bad)?;
    match flavour {
        Flavour::ForwardAuth => forwarded.forward_auth_method(),
        Flavour::AuthRequest => forwarded.auth_request_method(),
    }
    .map_err(bad)?;
    // The session cookie can only have come with the request if the target's host is one
    // the cookie is scoped to; anything else is a misconfiguration (or an attempt to use us
    // as an open redirect).
    if !target.ours {
        return Err(ApiError::BadRequest(format!(
            "forward auth: {} is neither the public URL's host nor under the cookie domain",
            target.host
        )));
    }
    let decision = state.config.access.decision(target.rule);
    match decision.policy {
        Policy::Bypass => return Ok(allowed(state, None)),
        Policy::Deny => return Err(ApiError::Forbidden),
        Policy::Authenticated => {}
    }
    let me = match state.sessions.verify(h).await? {
        Some(session) => CurrentUser::resolve(state, session).await?,
        None => None,
    };
    let Some(me) = me else {
        return Err(login_required(state, &target.url, h, flavour));
    };
    if !decision.groups.is_empty() && !me.user.groups.iter().any(|g| decision.groups.contains(g)) {
        return Err(ApiError::Forbidden);
    }
    Ok(allowed(state, Some(&me)))
}

fn login_required(state: &AppState, target: &Url, h: &HeaderMap, flavour: Flavour) -> ApiError {
    if !is_navigation(h) {
        return ApiError::LoginRequired {
            location: None,
            redirect: false,
        };
    }
    let mut login = state
        .config
        .public_url
        .join("/login")
        .expect("a path joins any base");
    login.query_pairs_mut().append_pair("rd", target.as_str());
    let location = HeaderValue::from_str(login.as_str()).ok();
    ApiError::LoginRequired {
        location,
        redirect: flavour == Flavour::ForwardAuth,
    }
}

/// `200`, empty body, the identity headers, never cached.
///
/// A bypass sends the identity headers *empty* rather than leaving them out: proxies copy
/// them onto the upstream request, and some (Caddy 2.6's `copy_headers`) write a literal
/// placeholder such as `{http.reverse_proxy.header.Remote-User}` when one is missing, which
/// an app could take for a user name. Empty, they overwrite whatever the client sent.
fn allowed(state: &AppState, me: Option<&CurrentUser>) -> Response {
    let headers = match me {
        Some(me) => state.identities.of(&me.user),
        None => Arc::new(answer_headers(None)),
    };
    // A copy of the user's ready header map: cheaper than building it (five hashed inserts
    // into a fresh map were ~2,000 instructions of forward auth's profile).
    let mut res = Response::new(axum::body::Body::empty());
    *res.headers_mut() = HeaderMap::clone(&headers);
    res
}

/// Every header of a `200` answer for `user` (`None`: a bypass, identity headers empty):
/// `Cache-Control: no-store`, the identity headers, and the `nosniff` the guard sets on
/// every answer (present already, the guard's insert replaces it in place rather than
/// growing the map).
fn answer_headers(user: Option<&User>) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in IDENTITY_HEADERS.iter().zip(identity_values(user)) {
        h.insert(name, value);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h
}

static IDENTITY_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("remote-user"),
    HeaderName::from_static("remote-groups"),
    HeaderName::from_static("remote-email"),
    HeaderName::from_static("remote-name"),
];

/// The values of [`IDENTITY_HEADERS`] for `user` (all empty for none).
fn identity_values(user: Option<&User>) -> [HeaderValue; 4] {
    match user {
        Some(u) => [
            header_value(u.username.as_str()),
            header_value(&u.groups.join(",")),
            header_value(&u.email),
            header_value(&u.name),
        ],
        None => std::array::from_fn(|_| HeaderValue::from_static("")),
    }
}

/// Answer headers by user ([`answer_headers`]), built once per user *object*: an entry is
/// used only for the very `Arc<User>` it was built from (`Arc::ptr_eq`), and the user cache
/// hands out a new one whenever the user may have changed, so a stale name or group list is
/// never sent. On the hot path this saves a `join`, four copies and five inserts per request.
/// Bounded: emptied when full.
#[derive(Debug, Default)]
pub struct IdentityCache {
    entries: Mutex<HashMap<UserId, IdentityEntry>>,
}

type IdentityEntry = (Arc<User>, Arc<HeaderMap>);

impl IdentityCache {
    const CAPACITY: usize = 50_000;

    fn of(&self, user: &Arc<User>) -> Arc<HeaderMap> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((u, values)) = entries.get(&user.id) {
            if Arc::ptr_eq(u, user) {
                return Arc::clone(values);
            }
        }
        let values = Arc::new(answer_headers(Some(user)));
        if entries.len() >= Self::CAPACITY {
            entries.clear();
        }
        entries.insert(user.id, (Arc::clone(user), Arc::clone(&values)));
        values
    }
}

/// Display names and emails come from admins and may hold anything; a header carries them
/// with control characters replaced (never a header-splitting newline).
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let clean: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static(""))
    })
}

#[cfg(test)]
mod tests {
    use sessiond_core::{Group, Timestamp, Username};

    use super::*;

    fn user(name: &str, groups: &[&str]) -> Arc<User> {
        Arc::new(User {
            id: UserId(7),
            username: Username::parse("alice").unwrap(),
            name: name.into(),
            email: "a@example.com".into(),
            groups: groups.iter().map(|g| Group::parse(g).unwrap()).collect(),
            admin: false,
            disabled: false,
            created_at: Timestamp::from_millis(0),
        })
    }

    #[test]
    fn identity_headers_follow_the_user_object_they_were_built_from() {
        let cache = IdentityCache::default();
        let a = user("Alice\nInjected: 1", &["dev", "ops"]);
        let first = cache.of(&a);
        assert_eq!(first["remote-user"], "alice");
        assert_eq!(first["remote-groups"], "dev,ops");
        assert_eq!(first["remote-email"], "a@example.com");
        // Control characters never reach a header.
        assert_eq!(first["remote-name"], "Alice Injected: 1");
        assert_eq!(first[header::CACHE_CONTROL], "no-store");
        assert_eq!(first.len(), 6, "cache-control, four identities, nosniff");
        assert!(Arc::ptr_eq(&first, &cache.of(&a)), "same object: reused");
        // The same user reloaded (a new object), now in other groups: rebuilt.
        let b = user("Alice", &["ops"]);
        let second = cache.of(&b);
        assert_eq!(second["remote-groups"], "ops");
        assert_eq!(second["remote-name"], "Alice");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(
            identity_values(None),
            std::array::from_fn(|_| HeaderValue::from_static(""))
        );
    }
}
