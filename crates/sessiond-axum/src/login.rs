//! Logging in over HTTP: the layer that hands requests their [`Auth`], the extractors
//! ([`AuthSession`], [`CurrentUser`], [`MaybeUser`]), the [`login_required`] middleware, and
//! the cookies a login sets and reads (the session cookie, and the login throttle's device
//! cookie).

use std::future::Future;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sessiond_core::StoreError;
use tower::{Layer, Service};

use crate::auth::{
    throttle::DEVICE_LIFETIME, Auth, AuthError, BuiltinUsers, ClientInfo, FactorKind, LoggedIn,
    LoginAttempt, PasskeyInfo, Raised, RecoveryCodes, TotpSetup, UserBackend,
};
use crate::csrf::CsrfService;
use crate::error_body::json_error;
use crate::password::HashError;
use crate::request_session::RequestSession;
use crate::unauthenticated::{is_page_navigation, LoginRedirect};
use crate::{
    find_cookie, ActiveSession, CookieLookup, MaybeSession, SessionLayer, SessionRejection,
    SessionService,
};
use sessiond_core::AuthLevel;

/// The client's address by default: the socket's peer, when the app is served with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub(crate) fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

impl<B: UserBackend> Auth<B> {
    /// The client's address for a request ([`crate::auth::AuthBuilder::client_ip`]).
    pub fn client_ip_of(&self, parts: &Parts) -> Option<IpAddr> {
        (self.core().client_ip)(parts)
    }

    /// The throttle's device cookie the browser presented, if exactly one (a duplicate is
    /// ambiguous: none).
    pub fn device_cookie<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        match find_cookie(headers, self.core().device_cookie.name()) {
            CookieLookup::One(v) => Some(v),
            _ => None,
        }
    }

    /// The `Set-Cookie` values of a successful login: the session cookie, and the device
    /// cookie when the login issued a new one.
    pub fn login_cookies(&self, done: &LoggedIn<B::User>) -> Vec<HeaderValue> {
        let mut cookies = vec![self.sessions().session_cookie(&done.token, &done.record)];
        if let Some(d) = &done.device {
            let c = &self.core().device_cookie;
            cookies.push(c.build(c.name(), d.expose(), Some(DEVICE_LIFETIME)));
        }
        cookies
    }
}

/// Puts an [`Auth`] in every request's extensions (under the [`SessionLayer`] of its
/// manager), for [`AuthSession`], [`CurrentUser`], [`MaybeUser`] and [`login_required`].
/// Made by [`Auth::layer`].
#[derive(Debug)]
pub struct AuthLayer<B: UserBackend> {
    auth: Auth<B>,
}

impl<B: UserBackend> Clone for AuthLayer<B> {
    fn clone(&self) -> Self {
        Self {
            auth: self.auth.clone(),
        }
    }
}

impl<B: UserBackend> Auth<B> {
    /// The layer an app adds once, around its whole router: sessions (the
    /// [`SessionLayer`]: verification, session data, the cookies a login or logout sets),
    /// this `Auth` for the extractors, and the CSRF check of every unsafe request
    /// ([`crate::csrf`]: `403 csrf_rejected` for a request a browser marks cross-site; the
    /// origins are [`crate::auth::AuthBuilder::csrf_origins`]).
    pub fn layer(&self) -> AuthLayer<B> {
        AuthLayer { auth: self.clone() }
    }
}

impl<S, B: UserBackend> Layer<S> for AuthLayer<B> {
    type Service = SessionService<AuthService<CsrfService<S>, B>>;

    fn layer(&self, inner: S) -> Self::Service {
        let checked = self.auth.core().csrf.layer(inner);
        SessionLayer::new(self.auth.sessions().clone()).layer(AuthService {
            inner: checked,
            auth: self.auth.clone(),
        })
    }
}

/// The service under [`AuthLayer`]: hands the request its [`Auth`].
#[derive(Debug)]
pub struct AuthService<S, B: UserBackend> {
    inner: S,
    auth: Auth<B>,
}

impl<S: Clone, B: UserBackend> Clone for AuthService<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            auth: self.auth.clone(),
        }
    }
}

impl<S: Service<Request>, B: UserBackend> Service<Request> for AuthService<S, B> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        req.extensions_mut().insert(self.auth.clone());
        self.inner.call(req)
    }
}

/// Why [`CurrentUser`], [`MaybeUser`], [`AuthSession`] or [`login_required`] refused a
/// request. Each variant has one answer:
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthRejection {
    /// No signed-in user. A page navigation is sent to the login page, `location`
    /// (`{login_path}?next=<this path and query>`, `303 See Other`); anything else (an API
    /// call, a `fetch`) gets `401` with the JSON error body `{"code": "unauthenticated", …}`.
    Unauthenticated {
        /// Where a page navigation goes; `None` for other requests.
        location: Option<HeaderValue>,
    },
    /// A signed-in user whose session is `one_factor` where `two_factor` is needed. A page
    /// navigation is sent to the second-factor page (`{second_factor_path}?next=…`, `303`);
    /// anything else gets `401` `{"code": "second_factor_required", …}`.
    SecondFactorRequired {
        /// Where a page navigation goes; `None` for other requests.
        location: Option<HeaderValue>,
    },
    /// The store failed: `503 store_unavailable` with `Retry-After: 1` (fail closed).
    StoreUnavailable(Arc<StoreError>),
    /// The app forgot `auth.layer()`: `500` (a bug, logged).
    MissingLayer,
}

impl AuthRejection {
    /// The refusal of a request without a signed-in user (see
    /// [`AuthRejection::Unauthenticated`] and [`is_page_navigation`]).
    pub fn unauthenticated(parts: &Parts, login: &LoginRedirect) -> Self {
        let location =
            is_page_navigation(&parts.method, &parts.headers).then(|| login.location(&parts.uri));
        Self::Unauthenticated { location }
    }

    /// The refusal of a `one_factor` session where `two_factor` is needed (see
    /// [`AuthRejection::SecondFactorRequired`]).
    pub fn second_factor_required(parts: &Parts, step: &LoginRedirect) -> Self {
        let location =
            is_page_navigation(&parts.method, &parts.headers).then(|| step.location(&parts.uri));
        Self::SecondFactorRequired { location }
    }
}

fn see_other(location: HeaderValue) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    let headers = res.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthenticated {
                location: Some(location),
            }
            | Self::SecondFactorRequired {
                location: Some(location),
            } => see_other(location),
            Self::SecondFactorRequired { location: None } => json_error(
                StatusCode::UNAUTHORIZED,
                "second_factor_required",
                "this needs a second factor: verify one first",
            ),
            Self::Unauthenticated { location: None } => json_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "authentication required",
            ),
            Self::StoreUnavailable(e) => {
                let cause = std::error::Error::source(&*e);
                tracing::error!(error = %e, cause = ?cause, "session store unavailable");
                let mut res = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "session store unavailable",
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                res
            }
            Self::MissingLayer => {
                tracing::error!("no Auth in the request: add `auth.layer()` around the router");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<SessionRejection> for AuthRejection {
    fn from(e: SessionRejection) -> Self {
        match e {
            SessionRejection::StoreUnavailable(e) => Self::StoreUnavailable(e),
            SessionRejection::Unauthenticated => Self::Unauthenticated { location: None },
            _ => Self::MissingLayer,
        }
    }
}

/// The request's user, if its session is valid and its user active (verified once per
/// request, whatever extractors ask).
async fn user_of<B: UserBackend>(
    parts: &mut Parts,
) -> Result<(Auth<B>, Option<ActiveSession>, Option<Arc<B::User>>), AuthRejection> {
    let auth = parts
        .extensions
        .get::<Auth<B>>()
        .cloned()
        .ok_or(AuthRejection::MissingLayer)?;
    let MaybeSession(session) = MaybeSession::from_request_parts(parts, &()).await?;
    let user = match &session {
        Some(s) => auth
            .user_of(s)
            .await
            .map_err(|e| AuthRejection::StoreUnavailable(Arc::new(e)))?,
        None => None,
    };
    Ok((auth, session, user))
}

/// The signed-in user; refuses the request without one: a page navigation is sent to the
/// login page with `?next=` (`303`), anything else gets `401` with the JSON error body
/// (`{"code": "unauthenticated", …}`). Like Django's `request.user` behind
/// `@login_required`.
///
/// ```no_run
/// # use sessiond_axum::{BuiltinUsers, CurrentUser};
/// async fn private(CurrentUser(user): CurrentUser<BuiltinUsers>) -> String {
///     format!("hello {}", user.username)
/// }
/// ```
#[derive(Debug)]
pub struct CurrentUser<B: UserBackend = BuiltinUsers>(pub Arc<B::User>);

impl<S: Send + Sync, B: UserBackend> FromRequestParts<S> for CurrentUser<B> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AuthRejection> {
        match user_of::<B>(parts).await? {
            (_, _, Some(user)) => Ok(Self(user)),
            (auth, _, None) => Err(AuthRejection::unauthenticated(parts, auth.login_redirect())),
        }
    }
}

/// The signed-in user, if any (Django's `request.user`, anonymous as `None`).
#[derive(Debug)]
pub struct MaybeUser<B: UserBackend = BuiltinUsers>(pub Option<Arc<B::User>>);

impl<S: Send + Sync, B: UserBackend> FromRequestParts<S> for MaybeUser<B> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AuthRejection> {
        Ok(Self(user_of::<B>(parts).await?.2))
    }
}

/// The signed-in user of a `two_factor` session; refuses the request otherwise: without a
/// user as [`CurrentUser`] does, and a `one_factor` session with
/// [`AuthRejection::SecondFactorRequired`] (the second-factor page for page navigations,
/// `401 second_factor_required` otherwise). Like Authelia's `two_factor` policy for one
/// handler; [`two_factor_required`] does it for a whole router.
#[derive(Debug)]
pub struct TwoFactorUser<B: UserBackend = BuiltinUsers>(pub Arc<B::User>);

impl<S: Send + Sync, B: UserBackend> FromRequestParts<S> for TwoFactorUser<B> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AuthRejection> {
        let (auth, session, user) = user_of::<B>(parts).await?;
        check_level(parts, &auth, session.as_ref(), user, AuthLevel::TwoFactor).map(Self)
    }
}

/// The user when the session is at `level` or above, else the refusal for the request.
fn check_level<B: UserBackend>(
    parts: &Parts,
    auth: &Auth<B>,
    session: Option<&ActiveSession>,
    user: Option<Arc<B::User>>,
    level: AuthLevel,
) -> Result<Arc<B::User>, AuthRejection> {
    match (session, user) {
        (Some(s), Some(user)) if s.record().level >= level => Ok(user),
        (Some(_), Some(_)) => Err(AuthRejection::second_factor_required(
            parts,
            auth.second_factor_redirect(),
        )),
        _ => Err(AuthRejection::unauthenticated(parts, auth.login_redirect())),
    }
}

/// Refuses, for a whole router, requests without a signed-in user, as [`CurrentUser`] does
/// (Django's `@login_required` on every route of it):
///
/// ```
/// use axum::{routing::get, Router};
/// use sessiond_axum::{login_required, BuiltinUsers};
///
/// let private: Router = Router::new()
///     .route("/private", get(|| async { "only for users" }))
///     .route_layer(login_required::<BuiltinUsers>());
/// ```
///
/// `route_layer`, not `layer`: an unknown path then still gets `404`, not a login page. The
/// router must sit inside `auth.layer()`.
pub fn login_required<B: UserBackend>() -> LoginRequired<B> {
    LoginRequired(AuthLevel::OneFactor, PhantomData)
}

/// Refuses, for a whole router, requests without a signed-in user of a `two_factor` session,
/// as [`TwoFactorUser`] does (Authelia's `two_factor` policy). Use it with `route_layer`,
/// inside `auth.layer()`, like [`login_required`]:
///
/// ```
/// use axum::{routing::get, Router};
/// use sessiond_axum::{two_factor_required, BuiltinUsers};
///
/// let admin: Router = Router::new()
///     .route("/admin", get(|| async { "only after a second factor" }))
///     .route_layer(two_factor_required::<BuiltinUsers>());
/// ```
pub fn two_factor_required<B: UserBackend>() -> LoginRequired<B> {
    LoginRequired(AuthLevel::TwoFactor, PhantomData)
}

/// The layer of [`login_required`] and [`two_factor_required`]: the level it asks for.
pub struct LoginRequired<B>(AuthLevel, PhantomData<fn() -> B>);

impl<B> Clone for LoginRequired<B> {
    fn clone(&self) -> Self {
        Self(self.0, PhantomData)
    }
}

impl<B> std::fmt::Debug for LoginRequired<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoginRequired({})", self.0.as_str())
    }
}

impl<S, B> Layer<S> for LoginRequired<B> {
    type Service = LoginRequiredService<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        LoginRequiredService {
            inner,
            level: self.0,
            backend: PhantomData,
        }
    }
}

/// The service of [`LoginRequired`].
pub struct LoginRequiredService<S, B> {
    inner: S,
    level: AuthLevel,
    backend: PhantomData<fn() -> B>,
}

impl<S: Clone, B> Clone for LoginRequiredService<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            level: self.level,
            backend: PhantomData,
        }
    }
}

impl<S, B> std::fmt::Debug for LoginRequiredService<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginRequiredService")
    }
}

impl<S, B> Service<Request> for LoginRequiredService<S, B>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    B: UserBackend,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone that was made ready is the one called (tower's usual dance); the check
        // is async (a store lookup), so the future is boxed.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let level = self.level;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let checked = match user_of::<B>(&mut parts).await {
                Ok((auth, session, user)) => {
                    check_level(&parts, &auth, session.as_ref(), user, level).map(drop)
                }
                Err(e) => Err(e),
            };
            match checked {
                Ok(()) => inner.call(Request::from_parts(parts, body)).await,
                Err(e) => Ok(e.into_response()),
            }
        })
    }
}

/// Login, logout and password change for a handler, with the cookies written on its
/// response (by the [`AuthLayer`]): like axum-login's `AuthSession`, and Django's `login()`,
/// `logout()` and `update_session_auth_hash()`.
///
/// ```no_run
/// use axum::{response::Redirect, Form};
/// use sessiond_axum::{AuthSession, BuiltinUsers};
///
/// #[derive(serde::Deserialize)]
/// struct Login { username: String, password: String }
///
/// async fn login(mut auth: AuthSession<BuiltinUsers>, Form(f): Form<Login>) -> Redirect {
///     match auth.log_in(&f.username, f.password, false).await {
///         Ok(_) => Redirect::to("/private"),
///         Err(_) => Redirect::to("/login?failed"),
///     }
/// }
/// ```
pub struct AuthSession<B: UserBackend = BuiltinUsers> {
    auth: Auth<B>,
    request: RequestSession,
    session: Option<ActiveSession>,
    user: Option<Arc<B::User>>,
    client: ClientInfo,
    device: Option<String>,
}

impl<B: UserBackend> std::fmt::Debug for AuthSession<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSession")
            .field("session", &self.session.as_ref().map(|s| &s.record().id))
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync, B: UserBackend> FromRequestParts<S> for AuthSession<B> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AuthRejection> {
        let (auth, session, user) = user_of::<B>(parts).await?;
        let request = RequestSession::of(parts)?.clone();
        let client = ClientInfo {
            // `AuthBuilder::client_ip`, by default the socket's peer.
            ip: auth
                .client_ip_of(parts)
                .map(|a| a.to_canonical().to_string()),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let device = auth.device_cookie(&parts.headers).map(str::to_owned);
        Ok(Self {
            auth,
            request,
            session,
            user,
            client,
            device,
        })
    }
}

impl<B: UserBackend> AuthSession<B> {
    /// The signed-in user, if any.
    pub fn user(&self) -> Option<&Arc<B::User>> {
        self.user.as_ref()
    }

    /// The request's valid session, if any.
    pub fn session(&self) -> Option<&ActiveSession> {
        self.session.as_ref()
    }

    /// The [`Auth`] (for the use cases this type does not wrap).
    pub fn auth(&self) -> &Auth<B> {
        &self.auth
    }

    /// Logs in ([`Auth::log_in`]: throttled, argon2id on the pool, rotating the presented
    /// session) and sets the session cookie (and a new device cookie) on the response.
    pub async fn log_in(
        &mut self,
        username: &str,
        password: String,
        remember: bool,
    ) -> Result<Arc<B::User>, AuthError> {
        let done = self
            .auth
            .log_in(LoginAttempt {
                username,
                password,
                remember,
                client: self.client.clone(),
                device_cookie: self.device.as_deref(),
                presented: self.session.as_ref(),
            })
            .await?;
        for cookie in self.auth.login_cookies(&done) {
            self.request.set_cookie_later(cookie);
        }
        let user = Arc::new(done.user);
        self.session = None;
        self.user = Some(Arc::clone(&user));
        Ok(user)
    }

    /// Ends the request's session (if any) and removes the cookie on the response.
    pub async fn log_out(&mut self) -> Result<(), StoreError> {
        if let Some(s) = self.session.take() {
            self.auth.log_out(&s).await?;
            tracing::info!(target: "sessiond::audit", event = "logout", session = %s.record().id);
        }
        self.user = None;
        self.request
            .set_cookie_later(self.auth.sessions().removal_cookie());
        Ok(())
    }

    /// Ends every other session of the signed-in user; how many ended (`0` when signed out).
    pub async fn log_out_others(&self) -> Result<u64, StoreError> {
        match &self.session {
            Some(s) => self.auth.log_out_others(s).await,
            None => Ok(0),
        }
    }

    /// Changes the signed-in user's password ([`Auth::change_password`]: the other sessions
    /// end, this one is rotated and its new cookie set on the response).
    pub async fn change_password(&mut self, current: String, new: String) -> Result<(), AuthError> {
        let (Some(session), Some(user)) = (&self.session, &self.user) else {
            return Err(AuthError::SessionEnded);
        };
        let changed = self
            .auth
            .change_password(session, user, current, new, self.client.clone())
            .await?;
        self.request.set_cookie_later(
            self.auth
                .sessions()
                .session_cookie(&changed.token, &changed.record),
        );
        self.session = None;
        Ok(())
    }
}

/// Second factors (see [`Auth::verify_second_factor`] and the other second-factor use
/// cases): each sets the raised session's cookie on the response.
impl<B: UserBackend> AuthSession<B> {
    /// The session's level (`None` when signed out).
    pub fn level(&self) -> Option<AuthLevel> {
        self.session.as_ref().map(|s| s.record().level)
    }

    fn signed_in(&self) -> Result<(&ActiveSession, &Arc<B::User>), AuthError> {
        match (&self.session, &self.user) {
            (Some(s), Some(u)) => Ok((s, u)),
            _ => Err(AuthError::SessionEnded),
        }
    }

    fn adopt(&mut self, raised: &Raised) {
        self.request.set_cookie_later(
            self.auth
                .sessions()
                .session_cookie(&raised.token, &raised.record),
        );
        // The presented session is gone (rotated): nothing more may act on it.
        self.session = None;
    }

    /// The second step of a login: a TOTP code or a recovery code raises the session to
    /// `two_factor` ([`Auth::verify_second_factor`]: throttled, each code once) and sets the
    /// new cookie.
    pub async fn verify_second_factor(
        &mut self,
        kind: FactorKind,
        code: &str,
    ) -> Result<(), AuthError> {
        let (session, user) = self.signed_in()?;
        let raised = self
            .auth
            .verify_second_factor(
                session,
                user,
                kind,
                code,
                &self.client,
                self.device.as_deref(),
            )
            .await?;
        self.adopt(&raised);
        Ok(())
    }

    /// Starts TOTP enrolment after checking the password again ([`Auth::totp_setup`]).
    pub async fn totp_setup(&self, password: String) -> Result<TotpSetup, AuthError> {
        let (session, user) = self.signed_in()?;
        self.auth
            .totp_setup(session, user, password, &self.client)
            .await
    }

    /// Confirms TOTP enrolment with a code ([`Auth::totp_confirm`]): this session is raised
    /// to `two_factor` (its new cookie set), the other sessions end; gives the recovery codes
    /// to show once.
    pub async fn totp_confirm(&mut self, code: &str) -> Result<RecoveryCodes, AuthError> {
        let (session, user) = self.signed_in()?;
        let (raised, codes) = self.auth.totp_confirm(session, user, code).await?;
        self.adopt(&raised);
        Ok(codes)
    }

    /// Finishes registering a passkey ([`Auth::passkey_register_finish`]; start it with
    /// [`Auth::passkey_register_start`]): this session is raised to `two_factor` and its new
    /// cookie set.
    pub async fn passkey_register_finish(
        &mut self,
        ceremony: &str,
        credential: &crate::auth::webauthn::RegisterPublicKeyCredential,
        name: &str,
    ) -> Result<PasskeyInfo, AuthError> {
        let (session, user) = self.signed_in()?;
        let (raised, info) = self
            .auth
            .passkey_register_finish(session, user, ceremony, credential, name)
            .await?;
        self.adopt(&raised);
        Ok(info)
    }

    /// Finishes the passkey step of a login ([`Auth::passkey_second_factor_finish`]; start
    /// it with [`Auth::passkey_second_factor_start`]) and sets the raised session's cookie.
    pub async fn passkey_second_factor_finish(
        &mut self,
        ceremony: &str,
        credential: &crate::auth::webauthn::PublicKeyCredential,
    ) -> Result<(), AuthError> {
        let (session, user) = self.signed_in()?;
        let raised = self
            .auth
            .passkey_second_factor_finish(
                session,
                user,
                ceremony,
                credential,
                &self.client,
                self.device.as_deref(),
            )
            .await?;
        self.adopt(&raised);
        Ok(())
    }

    /// Logs in with a passkey alone ([`Auth::passkey_login_finish`]; start it with
    /// [`Auth::passkey_login_start`]): a `two_factor` session, its cookie set.
    pub async fn passkey_log_in(
        &mut self,
        ceremony: &str,
        credential: &crate::auth::webauthn::PublicKeyCredential,
        remember: bool,
    ) -> Result<Arc<B::User>, AuthError> {
        let done = self
            .auth
            .passkey_login_finish(
                ceremony,
                credential,
                remember,
                self.client.clone(),
                self.session.as_ref(),
            )
            .await?;
        for cookie in self.auth.login_cookies(&done) {
            self.request.set_cookie_later(cookie);
        }
        let user = Arc::new(done.user);
        self.session = None;
        self.user = Some(Arc::clone(&user));
        Ok(user)
    }
}

impl AuthError {
    /// The status an app answers with: `401` wrong credentials or an ended session, `400`
    /// invalid input, `409` a password changed meanwhile, `429` throttled, `503` an
    /// overloaded hashing pool or a failed store, `500` otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidCredentials
            | Self::SessionEnded
            | Self::InvalidSecondFactor
            | Self::SecondFactorRequired => StatusCode::UNAUTHORIZED,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Hash(HashError::Overloaded) | Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Hash(_) | Self::Internal(_) | Self::SecondFactorUnavailable(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The error body's `code` (docs/reference/errors.md).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid_credentials",
            Self::SessionEnded => "unauthenticated",
            Self::Invalid(_) => "bad_request",
            Self::Conflict(_) => "conflict",
            Self::Throttled { .. } => "throttled",
            Self::InvalidSecondFactor => "invalid_second_factor",
            Self::SecondFactorRequired => "second_factor_required",
            Self::SecondFactorUnavailable(_) => "second_factor_unavailable",
            Self::Hash(HashError::Overloaded) => "overloaded",
            Self::Store(_) => "store_unavailable",
            Self::Hash(_) | Self::Internal(_) => "internal",
        }
    }

    /// A message safe to show the user: the error's own words, except for failures inside
    /// (a store, the hashing pool, a bug), whose causes go to the log only.
    pub fn message(&self) -> String {
        match self {
            Self::Hash(HashError::Overloaded) => "server busy; try again".to_owned(),
            Self::Store(_) => "session store unavailable".to_owned(),
            Self::Hash(_) | Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The JSON error body (`{"code": …, "message": …}`) with [`AuthError::status`], and
/// `Retry-After` when throttled or overloaded: for an app's JSON login route.
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            let cause = std::error::Error::source(&self);
            tracing::error!(error = %self, cause = ?cause, "login or account change failed");
        }
        let body = serde_json::json!({ "code": self.code(), "message": self.message() });
        let mut res = (status, axum::Json(body)).into_response();
        let headers = res.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let retry = match &self {
            Self::Throttled { retry_after } => Some(*retry_after),
            Self::Hash(HashError::Overloaded) | Self::Store(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}
