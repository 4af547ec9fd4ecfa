//! Forward auth (docs/reference/endpoints.md, "Forward auth"), Authelia-compatible so
//! existing proxy snippets work unchanged:
//! `/api/authz/forward-auth` (alias `/api/verify`) for Traefik and Caddy,
//! `/api/authz/auth-request` for nginx `auth_request`.
//!
//! This is the hot path: every request of every protected app comes through here. It reads
//! no body, hashes no password, writes nothing on the request's path (activity writes are
//! coalesced and spawned), and never sets a cookie (proxies drop it anyway).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use sessiond_axum::auth::AuthError;
use sessiond_axum::AuthLevel;
use url::Url;

use super::extract::CurrentUser;
use super::schema::ErrorBody;
use crate::config::access::Policy;
use crate::error::{ApiError, ApiResult};
use crate::forward_auth::headers::{Forwarded, TargetError};
use crate::forward_auth::identity::answer_headers;
use crate::metrics::Outcome;
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

/// Forward auth for Traefik and Caddy (alias `/api/verify`): may the forwarded request
/// pass? Only from a trusted proxy; the first access rule matching the target decides.
#[utoipa::path(
    get,
    path = "/api/authz/forward-auth",
    tag = "forward auth",
    operation_id = "forward_auth",
    params(
        ("X-Forwarded-Proto" = String, Header, description = "The target's scheme (`http`, `https`, any case)", pattern = "^[Hh][Tt][Tt][Pp][Ss]?$"),
        ("X-Forwarded-Host" = String, Header, description = "The target's host (a DNS name or IP literal, optionally with a port)"),
        ("X-Forwarded-Uri" = Option<String>, Header, description = "The target's path and query (default `/`)"),
        ("X-Forwarded-Method" = Option<String>, Header, description = "The target request's method"),
    ),
    security((), ("session" = [])),
    responses(
        (status = 200, description = "Allowed. An empty body and the identity headers (sent empty for a `bypass` rule, so a proxy that copies them overwrites what the client sent).",
            headers(
                ("Remote-User" = String, description = "The username"),
                ("Remote-Groups" = String, description = "The user's groups, comma-separated"),
                ("Remote-Email" = String, description = "The user's email"),
                ("Remote-Name" = String, description = "The user's display name (control characters replaced by spaces)"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 302, description = "No valid session (`unauthenticated`), or a `one_factor` session on a `two_factor` rule, for a browser navigation: to the portal's login page or second-factor step with the target as `rd`.", body = ErrorBody,
            headers(
                ("Location" = String, description = "`<public_url>/login?rd=<target>` or `<public_url>/login/2fa?rd=<target>`"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: the peer is not a trusted proxy; forwarded headers missing, repeated or malformed; a non-canonical path; a host the session cookie cannot belong to.", body = ErrorBody),
        (status = 401, description = "No valid session (`unauthenticated`), or a `one_factor` session on a `two_factor` rule (`second_factor_required`), for anything but a browser navigation.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a `deny` rule, or the user is in none of the rule's groups.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn forward_auth(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Response> {
    decide(&state, peer(&req)?, req.headers(), Flavour::ForwardAuth).await
}

/// Forward auth for nginx `auth_request`: may the forwarded request pass? Only from a
/// trusted proxy; the first access rule matching the target decides.
#[utoipa::path(
    get,
    path = "/api/authz/auth-request",
    tag = "forward auth",
    operation_id = "auth_request",
    params(
        ("X-Original-URL" = Option<String>, Header, description = "The target's absolute URL; else the `X-Forwarded-*` headers"),
        ("X-Original-Method" = Option<String>, Header, description = "The target request's method; else `X-Forwarded-Method` when the target came from `X-Forwarded-*`"),
        ("X-Forwarded-Proto" = Option<String>, Header, description = "The target's scheme (`http`, `https`)"),
        ("X-Forwarded-Host" = Option<String>, Header, description = "The target's host (a DNS name or IP literal, optionally with a port)"),
        ("X-Forwarded-Uri" = Option<String>, Header, description = "The target's path and query (default `/`)"),
        ("X-Forwarded-Method" = Option<String>, Header, description = "The target request's method"),
    ),
    security((), ("session" = [])),
    responses(
        (status = 200, description = "Allowed. An empty body and the identity headers (sent empty for a `bypass` rule, so a proxy that copies them overwrites what the client sent).",
            headers(
                ("Remote-User" = String, description = "The username"),
                ("Remote-Groups" = String, description = "The user's groups, comma-separated"),
                ("Remote-Email" = String, description = "The user's email"),
                ("Remote-Name" = String, description = "The user's display name (control characters replaced by spaces)"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: the peer is not a trusted proxy; forwarded headers missing, repeated or malformed; a non-canonical path; a host the session cookie cannot belong to.", body = ErrorBody),
        (status = 401, description = "No valid session (`unauthenticated`), or a `one_factor` session on a `two_factor` rule (`unauthenticated` for a browser navigation, else `second_factor_required`). A browser navigation gets `Location` (the login page or the second-factor step, with the target as `rd`), which the nginx snippet turns into a redirect.", body = ErrorBody,
            headers(("Location" = String, description = "For a browser navigation only: `<public_url>/login?rd=<target>` or `<public_url>/login/2fa?rd=<target>`"))),
        (status = 403, description = "`forbidden`: a `deny` rule, or the user is in none of the rule's groups.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn auth_request(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Response> {
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

fn bad(e: TargetError) -> Refusal {
    bad_request(ApiError::BadRequest(format!("forward auth: {e}")))
}

/// [`decide_counted`], with its outcome counted (`sessiond_forward_auth_decisions_total`).
async fn decide(
    state: &AppState,
    peer: SocketAddr,
    h: &HeaderMap,
    flavour: Flavour,
) -> ApiResult<Response> {
    let (outcome, answer) = match decide_counted(state, peer, h, flavour).await {
        Ok(res) => (Outcome::Allowed, Ok(res)),
        Err((outcome, e)) => (outcome, Err(e)),
    };
    state.metrics.forward_auth(outcome);
    answer
}

/// The refusal of a forward-auth request: why (for the metrics), and the answer.
type Refusal = (Outcome, ApiError);

fn bad_request(e: ApiError) -> Refusal {
    (Outcome::BadRequest, e)
}

/// A failure on the way (a store): fail closed.
fn failed(e: impl Into<ApiError>) -> Refusal {
    (Outcome::Error, e.into())
}

async fn decide_counted(
    state: &AppState,
    peer: SocketAddr,
    h: &HeaderMap,
    flavour: Flavour,
) -> Result<Response, Refusal> {
    // Forwarded headers from anyone but our proxies could name any target: refuse, rather
    // than answer about a request the caller made up.
    if !state.config.is_trusted_proxy(peer.ip()) {
        return Err(bad_request(ApiError::BadRequest(
            "forward auth: request did not come from a trusted proxy".into(),
        )));
    }
    let forwarded = Forwarded::scan(h);
    let parts = match flavour {
        Flavour::ForwardAuth => forwarded.forward_auth_parts(),
        Flavour::AuthRequest => forwarded.auth_request_parts(),
    }
    .map_err(bad)?;
    let target = (state.targets.resolve(&state.config, &parts)).map_err(bad)?;
    match flavour {
        Flavour::ForwardAuth => forwarded.forward_auth_method(),
        Flavour::AuthRequest => forwarded.auth_request_method(),
    }
    .map_err(bad)?;
    // The session cookie can only have come with the request if the target's host is one
    // the cookie is scoped to; anything else is a misconfiguration (or an attempt to use us
    // as an open redirect).
    if !target.ours {
        return Err(bad_request(ApiError::BadRequest(format!(
            "forward auth: {} is neither the public URL's host nor under the cookie domain",
            target.host
        ))));
    }
    let decision = state.config.access.decision(target.rule);
    match decision.policy {
        Policy::Bypass => return Ok(allowed(state, None)),
        Policy::Deny => return Err((Outcome::Forbidden, ApiError::Forbidden)),
        Policy::Authenticated | Policy::TwoFactor => {}
    }
    let me = match state.sessions.verify(h).await.map_err(failed)? {
        Some(session) => CurrentUser::resolve(state, session).await.map_err(failed)?,
        None => None,
    };
    let Some(me) = me else {
        return Err((
            Outcome::Unauthenticated,
            to_portal(state, Step::Login, &target.url, h, flavour),
        ));
    };
    // The level is in the (cached) session record: no store read for any rule. It is checked
    // before the groups, so a one-factor session (a password alone, perhaps a stolen one)
    // learns nothing of the rule beyond "a second factor is needed". Whether the user has a
    // factor to give is the second-factor step's question (it sends users without one to
    // enrolment), not the hot path's.
    // `two_factor.required` makes every rule that lets users in a `two_factor` rule for the
    // users it covers: a mandatory second factor that a protected app could be reached
    // without would be no requirement (docs/reference/second-factor.md, "Who needs which
    // level"). Still no store read: the flag is in the cached user.
    let needs_two = decision.policy == Policy::TwoFactor
        || state.config.two_factor.required.applies_to(me.user.admin);
    if needs_two && me.session.record().level < AuthLevel::TwoFactor {
        return Err((
            Outcome::SecondFactorRequired,
            to_portal(state, Step::SecondFactor, &target.url, h, flavour),
        ));
    }
    if !decision.groups.is_empty() && !me.user.groups.iter().any(|g| decision.groups.contains(g)) {
        return Err((Outcome::Forbidden, ApiError::Forbidden));
    }
    Ok(allowed(state, Some(&me)))
}

/// The step of the portal a request is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// No valid session: the login page.
    Login,
    /// A `one_factor` session where the rule needs `two_factor`: the second-factor step.
    SecondFactor,
}

/// The answer for a request that lacks `step`: a browser navigation is sent to the portal's
/// page for it with the target as `rd` (`302` on forward-auth, `401` with `Location` on
/// auth-request, which the nginx snippet turns into a redirect); anything else gets a plain
/// `401` it can act on (`unauthenticated`, or `second_factor_required`).
fn to_portal(
    state: &AppState,
    step: Step,
    target: &Url,
    h: &HeaderMap,
    flavour: Flavour,
) -> ApiError {
    if !is_navigation(h) {
        return match step {
            Step::Login => ApiError::LoginRequired {
                location: None,
                redirect: false,
            },
            Step::SecondFactor => AuthError::SecondFactorRequired.into(),
        };
    }
    let path = match step {
        Step::Login => "/login",
        Step::SecondFactor => "/login/2fa",
    };
    let mut portal = state
        .config
        .public_url
        .join(path)
        .expect("a path joins any base");
    portal.query_pairs_mut().append_pair("rd", target.as_str());
    let location = HeaderValue::from_str(portal.as_str()).ok();
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
    // into a fresh map; docs/performance.md, "Identity headers").
    let mut res = Response::new(axum::body::Body::empty());
    *res.headers_mut() = HeaderMap::clone(&headers);
    res
}
