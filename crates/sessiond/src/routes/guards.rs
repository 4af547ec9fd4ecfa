//! Checks every request passes before (and headers every response gets after) the handlers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::metrics::{Metrics, RouteGroup};
use crate::state::AppState;

/// All request headers together.
pub(super) const MAX_HEADERS: usize = 16 * 1024;
/// All `Cookie` headers together.
pub(super) const MAX_COOKIE: usize = 8 * 1024;
/// Request target.
pub(super) const MAX_URI: usize = 8 * 1024;

/// The checks every request passes and the headers every response gets, as one layer around
/// the whole router: the request limits (docs/reference/security.md, "Request limits"), then
/// the CSRF check, then the handler; security headers on every answer, refusals included.
///
/// Written as a plain tower service rather than `middleware::from_fn`: the checks are
/// synchronous, so the inner service is called from `call` itself and its future wrapped,
/// with no boxed future, no clone of the inner service and no `Next` per request
/// (docs/performance.md, "The guard as one service").
#[derive(Clone, Debug)]
pub(super) struct GuardLayer {
    state: AppState,
    hsts: bool,
}

impl GuardLayer {
    pub(super) fn new(state: AppState) -> Self {
        let hsts = state.config.public_url.scheme() == "https";
        Self { state, hsts }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            state: self.state.clone(),
            hsts: self.hsts,
        }
    }
}

/// The service [`GuardLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub(super) struct Guard<S> {
    inner: S,
    state: AppState,
    /// Whether answers carry HSTS (an https public URL).
    hsts: bool,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // Timed from here to the answer's head (the body streams after): a clock read and a
        // match on the path, no allocation.
        let started = Instant::now();
        let req = limit_body(req);
        let group = RouteGroup::of(req.uri().path());
        match limits(&req).or_else(|| csrf_origin(&self.state, &req)) {
            Some(refused) => {
                let mut res = refused.into_response();
                security_headers(self.hsts, &mut res);
                self.state.metrics.request(group, started.elapsed());
                GuardFuture::Refused { res: Some(res) }
            }
            None => GuardFuture::Running {
                inner: self.inner.call(req),
                hsts: self.hsts,
                timing: Timing {
                    metrics: Arc::clone(&self.state.metrics),
                    group,
                    started,
                },
            },
        }
    }
}

/// What a running request is timed by.
#[derive(Debug)]
pub(super) struct Timing {
    metrics: Arc<Metrics>,
    group: RouteGroup,
    started: Instant,
}

pin_project! {
    /// The answer of a [`Guard`]: the handler's with the security headers added, or a refusal.
    #[project = GuardProj]
    pub enum GuardFuture<F> {
        Running { #[pin] inner: F, hsts: bool, timing: Timing },
        Refused { res: Option<Response> },
    }
}

impl<F, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Running {
                inner,
                hsts,
                timing,
            } => inner.poll(cx).map_ok(|mut res| {
                security_headers(*hsts, &mut res);
                (timing.metrics).request(timing.group, timing.started.elapsed());
                res
            }),
            GuardProj::Refused { res } => {
                Poll::Ready(Ok(res.take().expect("GuardFuture polled after completion")))
            }
        }
    }
}

/// The request limits (docs/reference/security.md, "Request limits"): oversized header
/// blocks, cookies and URIs are refused before any handler parses them.
fn limits(req: &Request) -> Option<ApiError> {
    // Measured without re-serialising the URI (this runs on every request).
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > MAX_URI {
        return Some(ApiError::UriTooLong);
    }
    let mut total = 0;
    let mut cookies = 0;
    for (name, value) in req.headers() {
        let n = name.as_str().len() + value.len() + 4;
        total += n;
        if name == header::COOKIE {
            cookies += value.len();
        }
    }
    if total > MAX_HEADERS || cookies > MAX_COOKIE {
        return Some(ApiError::HeadersTooLarge);
    }
    None
}

/// The body limit, [`MAX_BODY`](super::MAX_BODY): a body is read through
/// `http_body_util::Limited`, which fails once more than that has arrived (at once when its
/// `Content-Length` says so, chunked bodies included). Axum's body extractors find its error
/// in theirs and answer `413`, which `extract.rs` turns into `payload_too_large`.
///
/// Here instead of axum's `DefaultBodyLimit` layer: that layer inserts an extension into
/// every request, the fourth (with `ConnectInfo`, the session slot and the router's URL
/// parameters), which regrew the extension map on every request, bodiless ones included
/// (docs/performance.md, "`/healthz` beside a bare axum route"). A request without a body
/// (every `GET`: verification, forward auth) is passed as it is.
fn limit_body(req: Request) -> Request {
    if hyper::body::Body::is_end_stream(req.body()) {
        return req;
    }
    req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, super::MAX_BODY)))
}

/// Refuses cross-site unsafe requests with `403 csrf_rejected`: the library's check
/// (`sessiond_axum::csrf::Origins::allows`; docs/reference/security.md, "CSRF") against the
/// public URL's origin and `trusted_origins`. Login is covered too (login CSRF). Forms carry
/// a token as well (see `html.rs`).
fn csrf_origin(state: &AppState, req: &Request) -> Option<ApiError> {
    (!state.origins.allows(req.method(), req.headers())).then_some(ApiError::CsrfRejected)
}

/// Headers every response carries. On HTML a strict CSP: no script at all, nothing framed.
/// With an https public URL, HSTS: browsers never try plain HTTP again (a downgrade would
/// expose the cookie's first request to a network attacker).
fn security_headers(hsts: bool, res: &mut Response) {
    let is_html = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    if is_html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
}
