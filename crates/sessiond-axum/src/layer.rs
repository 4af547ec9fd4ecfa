use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::request_session::RequestSession;
use crate::SessionManager;

/// Makes a [`SessionManager`] available to the extractors, and once the handler has
/// answered, saves modified session data (see [`crate::SessionMap`]) and writes the cookies
/// the library was asked for during the request (a login's, a logout's) on the response.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    manager: SessionManager,
}

impl SessionLayer {
    /// The layer of `manager` (the same as [`SessionManager::layer`]).
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
    /// The answer of a [`SessionService`]: the inner service's, with the cookies asked for
    /// during the request, after saving the session data a handler modified (if any).
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
                    let later = session.take_later();
                    if later.is_empty() {
                        return Poll::Ready(Ok(res));
                    }
                    if !later.cookies.is_empty() {
                        let headers = res.headers_mut();
                        for cookie in later.cookies {
                            headers.append(header::SET_COOKIE, cookie);
                        }
                        // A response that sets a session secret must never be cached.
                        headers.insert(
                            header::CACHE_CONTROL,
                            axum::http::HeaderValue::from_static("no-store"),
                        );
                    }
                    let Some(pending) = later.data else {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::{Extension, Router};
    use sessiond_core::{ExpiryPolicy, NewSession, SessionStore, UserId};
    use sessiond_store_memory::MemoryStore;
    use tower::ServiceExt;

    use super::*;
    use crate::{CookieConfig, SessionMap};

    fn set_cookies(res: &Response) -> Vec<&str> {
        res.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn cookies_asked_for_during_the_request_are_written_on_its_response() {
        let store = Arc::new(MemoryStore::new());
        let manager = SessionManager::new(
            store.clone(),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        let app = Router::new()
            .route(
                "/two",
                get(|Extension(s): Extension<RequestSession>| async move {
                    s.set_cookie_later(HeaderValue::from_static("a=1; Path=/"));
                    s.set_cookie_later(HeaderValue::from_static("b=2; Path=/"));
                    // The handler's own cookie stays, and comes first.
                    ([(header::SET_COOKIE, "own=0")], "two")
                }),
            )
            .route(
                "/refused",
                get(|Extension(s): Extension<RequestSession>| async move {
                    s.set_cookie_later(HeaderValue::from_static("gone=; Max-Age=0"));
                    StatusCode::FORBIDDEN.into_response()
                }),
            )
            .route("/none", get(|| async { "none" }))
            .route(
                "/data",
                get(
                    |Extension(s): Extension<RequestSession>, data: SessionMap| async move {
                        data.insert("n", 1).await.unwrap();
                        s.set_cookie_later(HeaderValue::from_static("c=3"));
                        "data"
                    },
                ),
            )
            .layer(manager.layer());
        let get = |path: &'static str, cookie: Option<String>| {
            let app = app.clone();
            async move {
                let mut req = Request::get(path);
                if let Some(c) = cookie {
                    req = req.header(header::COOKIE, c);
                }
                app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
            }
        };

        let res = get("/two", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(set_cookies(&res), ["own=0", "a=1; Path=/", "b=2; Path=/"]);
        // Every request starts with nothing pending: nothing carries over.
        let res = get("/none", None).await;
        assert!(set_cookies(&res).is_empty());
        let res = get("/two", None).await;
        assert_eq!(set_cookies(&res).len(), 3);
        // Whatever the status the handler chose.
        let res = get("/refused", None).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(set_cookies(&res), ["gone=; Max-Age=0"]);

        // With session data to save as well: both happen.
        let (token, _) = manager
            .begin(
                NewSession {
                    user_id: UserId(1),
                    remember: false,
                    ip: None,
                    user_agent: None,
                    level: Default::default(),
                },
                None,
            )
            .await
            .unwrap();
        let res = get("/data", Some(format!("__Host-sessiond={}", token.expose()))).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(set_cookies(&res), ["c=3"]);
        let stored = store.load_data(&token.hash()).await.unwrap().unwrap();
        assert_eq!(stored["n"], 1);
    }
}
