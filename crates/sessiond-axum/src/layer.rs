use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::data::PendingData;
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

/// Where a `SessionMap` extracted during the request leaves itself for the save afterwards.
#[derive(Clone, Default)]
pub(crate) struct DataSlot(pub(crate) Arc<Mutex<Option<PendingData>>>);

/// What the layer leaves in every request's extensions: one entry rather than two (each
/// insert into the extensions map costs a hash-map insert on every request).
#[derive(Clone)]
pub(crate) struct Layered {
    pub(crate) manager: SessionManager,
    pub(crate) slot: DataSlot,
}

impl<S> Service<Request> for SessionService<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slot = DataSlot::default();
        req.extensions_mut().insert(Layered {
            manager: self.manager.clone(),
            slot: slot.clone(),
        });
        let manager = self.manager.clone();
        Box::pin(async move {
            let res = inner.call(req).await?;
            let pending = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(pending) = pending {
                pending.save(&manager).await;
            }
            Ok(res)
        })
    }
}
