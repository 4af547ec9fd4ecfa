//! Every request's id: set around all its work (`logging::in_request`, so every log line and
//! audit event it causes carries `request_id`), and echoed as `X-Request-Id` on its answer.
//!
//! The id comes from `X-Request-Id` only when the socket's peer is a trusted proxy
//! (`proxy.trusted`, as for `X-Forwarded-For`) and the value is sane
//! (`logging::RequestId::given`); otherwise it is made here. A client talking to us directly
//! cannot choose the id its requests are logged under (to pin its requests on another's
//! id, or to plant text in the logs).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use crate::logging::{in_request, RequestId};
use crate::state::AppState;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The outermost layer of [`super::app`]: the id, for the logs and the echoed header.
#[derive(Clone, Debug)]
pub(super) struct RequestIdLayer {
    state: AppState,
}

impl RequestIdLayer {
    pub(super) fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> WithRequestId<S> {
        WithRequestId {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`RequestIdLayer`] wraps around the app. Like the guard, a plain tower
/// service: the inner service is called from `call`, its future wrapped, nothing boxed.
#[derive(Clone, Debug)]
pub(super) struct WithRequestId<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for WithRequestId<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The peer is looked up only for a request that sends an id (most send none).
        let id = req
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|_| {
                req.extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .is_some_and(|ConnectInfo(peer)| self.state.config.is_trusted_proxy(peer.ip()))
            })
            .and_then(RequestId::given)
            .unwrap_or_else(RequestId::make);
        // The header's value is written now; the logs write the id again only for a line
        // they print (most requests print none).
        let value = id.header_value();
        RequestIdFuture {
            inner: in_request(id, self.inner.call(req)),
            id: Some(value),
        }
    }
}

pin_project! {
    /// The app's answer, produced as the request's (its id in every log line), with
    /// `X-Request-Id` added.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: TaskLocalFuture<RequestId, F>,
        id: Option<HeaderValue>,
    }
}

impl<F, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.inner.poll(cx).map_ok(|mut res| {
            if let Some(id) = this.id.take() {
                res.headers_mut().insert(X_REQUEST_ID.clone(), id);
            }
            res
        })
    }
}
