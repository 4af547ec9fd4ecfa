use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sessiond_core::StoreError;

use crate::request_session::RequestSession;
use crate::ActiveSession;

/// Why a session extractor refused a request. Each variant has one fixed status.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionRejection {
    /// `401`: no valid session.
    Unauthenticated,
    /// `503`: the store could not be asked. Never treated as "no session" or as "valid".
    /// Carries the store's error to whoever answers the request, which logs it once
    /// (shared: a request's verification outcome is kept for every extractor).
    StoreUnavailable(Arc<StoreError>),
    /// `500`: the app forgot `.layer(manager.layer())`.
    MissingManager,
    /// `500`: a value given to [`crate::SessionMap::insert`] cannot be serialised.
    InvalidData,
}

impl SessionRejection {
    /// The status this rejection answers with (one per variant, as listed above).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MissingManager | Self::InvalidData => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for SessionRejection {
    /// The answer, after logging a store failure (with its cause: the only line it gets).
    fn into_response(self) -> Response {
        if let Self::StoreUnavailable(e) = &self {
            let cause = std::error::Error::source(&**e);
            tracing::error!(error = %e, cause = ?cause, "session store unavailable");
        }
        let msg = match self {
            Self::Unauthenticated => "no valid session",
            Self::StoreUnavailable(_) => "session store unavailable",
            Self::MissingManager => "session manager missing",
            Self::InvalidData => "session data not serialisable",
        };
        (self.status(), msg).into_response()
    }
}

/// The request's session, verified once per request (see [`RequestSession::verified`]).
async fn verify(parts: &Parts) -> Result<Option<ActiveSession>, SessionRejection> {
    RequestSession::of(parts)?.verified(&parts.headers).await
}

/// The request's session, if it has a valid one.
#[derive(Debug, Clone)]
pub struct MaybeSession(pub Option<ActiveSession>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeSession {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        verify(parts).await.map(MaybeSession)
    }
}

/// The request's session; refuses the request without one.
#[derive(Debug, Clone)]
pub struct RequireSession(pub ActiveSession);

impl<S: Send + Sync> FromRequestParts<S> for RequireSession {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        verify(parts)
            .await?
            .map(RequireSession)
            .ok_or(SessionRejection::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{header, Request};
    use axum::routing::get;
    use axum::Router;
    use sessiond_core::{ExpiryPolicy, NewSession, SessionStore, UserId};
    use sessiond_store_memory::MemoryStore;
    use tower::ServiceExt;

    use super::*;
    use crate::{CookieConfig, SessionManager};

    #[tokio::test]
    async fn extractors_verify_the_cookie() {
        let manager = SessionManager::new(
            Arc::new(MemoryStore::new()),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        let app =
            Router::new()
                .route(
                    "/me",
                    get(|RequireSession(s): RequireSession| async move {
                        s.record().user_id.0.to_string()
                    }),
                )
                .route(
                    "/maybe",
                    get(|MaybeSession(s): MaybeSession| async move { s.is_some().to_string() }),
                )
                .layer(manager.layer());
        let (token, _) = manager
            .begin(
                NewSession {
                    user_id: UserId(7),
                    remember: false,
                    ip: None,
                    user_agent: None,
                    level: Default::default(),
                },
                None,
            )
            .await
            .unwrap();

        let req = |path: &str, cookie: Option<String>| {
            let mut b = Request::get(path);
            if let Some(c) = cookie {
                b = b.header(header::COOKIE, c);
            }
            b.body(Body::empty()).unwrap()
        };
        let good = Some(format!("__Host-sessiond={}", token.expose()));
        let res = app.clone().oneshot(req("/me", good.clone())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"7");

        let res = app.clone().oneshot(req("/me", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app
            .clone()
            .oneshot(req("/me", Some("__Host-sessiond=nope".into())))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app.clone().oneshot(req("/maybe", None)).await.unwrap();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"false");
    }

    #[tokio::test]
    async fn session_map_is_saved_after_the_response_only_when_changed() {
        use crate::SessionMap;
        let store = Arc::new(MemoryStore::new());
        let manager = SessionManager::new(
            store.clone(),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        let app = Router::new()
            .route(
                "/inc",
                get(|data: SessionMap| async move {
                    let n: u32 = data.get("n").await.unwrap().unwrap_or(0) + 1;
                    data.insert("n", n).await.unwrap();
                    n.to_string()
                }),
            )
            .route(
                "/peek",
                get(|data: SessionMap| async move {
                    format!("{:?}", data.get::<u32>("n").await.unwrap())
                }),
            )
            .layer(manager.layer());
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
        let call = |path: &'static str| {
            let app = app.clone();
            let cookie = format!("__Host-sessiond={}", token.expose());
            async move {
                let res = app
                    .oneshot(
                        Request::get(path)
                            .header(header::COOKIE, cookie)
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = res.status();
                let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        assert_eq!(call("/peek").await.1, "None");
        assert_eq!(call("/inc").await.1, "1");
        assert_eq!(call("/inc").await.1, "2");
        assert_eq!(call("/peek").await.1, "Some(2)");
        let stored = store.load_data(&token.hash()).await.unwrap().unwrap();
        assert_eq!(stored["n"], 2);
        // Without a session the extractor refuses.
        let res = app
            .clone()
            .oneshot(Request::get("/inc").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn the_cache_honours_revocations_here_at_once_and_elsewhere_within_100_ms() {
        let store = Arc::new(MemoryStore::new());
        let cached = SessionManager::new(
            store.clone(),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        )
        .with_cache(100);
        let headers = |t: &sessiond_core::SessionToken| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(
                header::COOKIE,
                format!("__Host-sessiond={}", t.expose()).parse().unwrap(),
            );
            h
        };
        let new = || NewSession {
            user_id: UserId(1),
            remember: false,
            ip: None,
            user_agent: None,
            level: Default::default(),
        };
        // Wait for the watcher's first poll, then fill the cache.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (t1, _) = cached.begin(new(), None).await.unwrap();
        let (t2, _) = cached.begin(new(), None).await.unwrap();
        for t in [&t1, &t2] {
            assert!(cached.verify(&headers(t)).await.unwrap().is_some());
        }
        assert_eq!(cached.cached_sessions(), 2);

        // Ended through this manager: refused at once.
        let s1 = cached.verify(&headers(&t1)).await.unwrap().unwrap();
        cached.end(&s1).await.unwrap();
        assert!(cached.verify(&headers(&t1)).await.unwrap().is_none());

        // Ended by another process (straight in the store): refused within 100 ms.
        store.delete(&t2.hash()).await.unwrap();
        let start = std::time::Instant::now();
        while cached.verify(&headers(&t2)).await.unwrap().is_some() {
            assert!(
                start.elapsed() < std::time::Duration::from_millis(100),
                "still served"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}
