use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::request_session::{Pending, RequestSession};
use crate::SessionManager;

/// Makes a [`SessionManager`] available to the extractors, and saves modified session data
/// (see [`crate::SessionMap`]) once the handler has answered.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    manager: SessionManager,
}

impl SessionLayer {
    pub fn new(manager: SessionManager) -> Self {
        Self { manager }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around an app.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    manager: SessionManager,
}

impl<S> Service<Request> for SessionService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = SessionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The inner service is called here, right after its `poll_ready`, and its future
        // wrapped: no boxed future and no clone of the inner service per request (this layer
        // is on the path of every request).
        let session = RequestSession::new(self.manager.clone());
        req.extensions_mut().insert(session.clone());
        SessionFuture::running(self.inner.call(req), session)
    }
}

pin_project! {
    /// The answer of a [`SessionService`]: the inner service's, after saving the session data
    /// a handler modified (if any).
    pub struct SessionFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F> SessionFuture<F> {
    fn running(inner: F, session: RequestSession) -> Self {
        Self {
            state: State::Running { inner, session },
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] inner: F, session: RequestSession },
        Saving { save: Pin<Box<dyn Future<Output = ()> + Send>>, res: Option<Response> },
    }
}

impl<F, E> Future for SessionFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { inner, session } => {
                    let mut res = ready!(inner.poll(cx))?;
                    let Pending { data, cookies } = session.take_pending();
                    if !cookies.is_empty() {
                        let headers = res.headers_mut();
                        for cookie in cookies {
                            headers.append(header::SET_COOKIE, cookie);
                        }
                        // A response carrying a secret must never be stored by a cache.
                        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    }
                    let Some(pending) = data else {
                        return Poll::Ready(Ok(res));
                    };
                    // Rare (a handler changed session data): the save gets a boxed future.
                    let manager = session.manager().clone();
                    let save = Box::pin(async move { pending.save(&manager).await });
                    state.set(State::Saving {
                        save,
                        res: Some(res),
                    });
                }
                StateProj::Saving { save, res } => {
                    ready!(save.as_mut().poll(cx));
                    return Poll::Ready(Ok(res
                        .take()
                        .expect("SessionFuture polled after completion")));
                }
            }
        }
    }
}
