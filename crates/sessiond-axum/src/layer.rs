use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::data::PendingData;
use crate::{ActiveSession, SessionManager, SessionRejection};

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

/// The request's own state, shared by the extractors and the layer: the outcome of the
/// verification (so a request verifies once, whatever extractors it uses) and where a
/// `SessionMap` extracted during the request leaves itself for the save afterwards. One
/// allocation per request, inside the one extension the layer inserts.
#[derive(Clone, Default)]
pub(crate) struct DataSlot(pub(crate) Arc<SlotState>);

#[derive(Default)]
pub(crate) struct SlotState {
    pub(crate) pending: Mutex<Option<PendingData>>,
    pub(crate) verified: OnceLock<Result<Option<ActiveSession>, SessionRejection>>,
}

/// What the layer leaves in every request's extensions: one entry rather than two (each
/// insert into the extensions map costs a hash-map insert on every request).
#[derive(Clone)]
pub(crate) struct Layered {
    pub(crate) manager: SessionManager,
    pub(crate) slot: DataSlot,
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
        let slot = DataSlot::default();
        req.extensions_mut().insert(Layered {
            manager: self.manager.clone(),
            slot: slot.clone(),
        });
        SessionFuture::running(self.inner.call(req), slot, self.manager.clone())
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
    fn running(inner: F, slot: DataSlot, manager: SessionManager) -> Self {
        Self {
            state: State::Running {
                inner,
                slot,
                manager,
            },
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] inner: F, slot: DataSlot, manager: SessionManager },
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
                StateProj::Running {
                    inner,
                    slot,
                    manager,
                } => {
                    let res = ready!(inner.poll(cx))?;
                    let pending = slot
                        .0
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    let Some(pending) = pending else {
                        return Poll::Ready(Ok(res));
                    };
                    // Rare (a handler changed session data): the save gets a boxed future.
                    let manager = manager.clone();
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
