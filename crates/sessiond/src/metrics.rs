//! The server's own measurements (the library keeps its own: `sessiond_axum::metrics`): request
//! durations per route group, forward-auth decisions, store calls per store, and the active
//! sessions gauge. All plain atomics, updated on the request's path without a lock or an
//! allocation; `routes/metrics.rs` reads them when the metrics listener is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sessiond_axum::metrics::{Histogram, LATENCY_BUCKETS};

/// What requests are timed by: a few groups of routes, fixed at compile time (a label per
/// path would let clients mint series).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteGroup {
    /// `/api/authz/*`, `/api/verify`.
    ForwardAuth,
    /// `GET /api/session`.
    Session,
    /// Logging in and out: `/login`, `/logout`, `/api/login…`, `/api/logout`.
    Login,
    /// The second factors: `/login/2fa`, `/api/2fa/…`, `/2fa/…`.
    SecondFactor,
    /// The rest of the JSON API.
    Api,
    /// The account and admin pages.
    Pages,
    /// `/healthz`, `/readyz`.
    Health,
    /// `/static/…`.
    Static,
    /// Anything else (not found).
    Other,
}

impl RouteGroup {
    pub(crate) const ALL: [Self; 9] = [
        Self::ForwardAuth,
        Self::Session,
        Self::Login,
        Self::SecondFactor,
        Self::Api,
        Self::Pages,
        Self::Health,
        Self::Static,
        Self::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ForwardAuth => "forward_auth",
            Self::Session => "session",
            Self::Login => "login",
            Self::SecondFactor => "second_factor",
            Self::Api => "api",
            Self::Pages => "pages",
            Self::Health => "health",
            Self::Static => "static",
            Self::Other => "other",
        }
    }

    /// The group of a request path (as received: a path the router would not match lands
    /// in its group's prefix or in `other`, which is only a label, never a decision).
    pub(crate) fn of(path: &str) -> Self {
        if let Some(api) = path.strip_prefix("/api/") {
            return match api {
                "session" => Self::Session,
                "verify" => Self::ForwardAuth,
                _ if api.starts_with("authz/") => Self::ForwardAuth,
                "logout" => Self::Login,
                _ if api == "login" || api.starts_with("login/") => Self::Login,
                _ if api == "2fa" || api.starts_with("2fa/") => Self::SecondFactor,
                _ => Self::Api,
            };
        }
        match path {
            "/healthz" | "/readyz" => Self::Health,
            "/login/2fa" => Self::SecondFactor,
            "/login" | "/logout" => Self::Login,
            "/" | "/password" | "/admin" => Self::Pages,
            _ if path.starts_with("/static/") => Self::Static,
            _ if path.starts_with("/2fa/") => Self::SecondFactor,
            _ if path.starts_with("/admin/") || path.starts_with("/sessions/") => Self::Pages,
            _ => Self::Other,
        }
    }
}

/// How a forward-auth request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `200`: a bypass rule, or a session that the rule lets in.
    Allowed,
    /// No valid session: the login page, or `401`.
    Unauthenticated,
    /// A `one_factor` session where the rule needs `two_factor`.
    SecondFactorRequired,
    /// `403`: a deny rule, or the user is in none of the rule's groups.
    Forbidden,
    /// `400`: not from a trusted proxy, a target that is not canonical or not ours.
    BadRequest,
    /// `503` or `500`: a store failed (fail closed).
    Error,
}

impl Outcome {
    pub(crate) const ALL: [Self; 6] = [
        Self::Allowed,
        Self::Unauthenticated,
        Self::SecondFactorRequired,
        Self::Forbidden,
        Self::BadRequest,
        Self::Error,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::SecondFactorRequired => "second_factor_required",
            Self::Forbidden => "forbidden",
            Self::BadRequest => "bad_request",
            Self::Error => "error",
        }
    }
}

/// Which store a call went to: the label of the store metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreRole {
    Sessions,
    Throttle,
    Users,
    Factors,
}

impl StoreRole {
    pub(crate) const ALL: [Self; 4] = [Self::Sessions, Self::Throttle, Self::Users, Self::Factors];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Sessions => "sessions",
            Self::Throttle => "throttle",
            Self::Users => "users",
            Self::Factors => "factors",
        }
    }
}

/// One store's calls: their durations and their errors.
#[derive(Debug)]
pub(crate) struct StoreStats {
    pub(crate) latency: Histogram,
    pub(crate) errors: AtomicU64,
    /// `sqlite`, `postgres` or `redis` (set when the stores are opened; empty until then).
    pub(crate) backend: std::sync::OnceLock<&'static str>,
}

impl Default for StoreStats {
    fn default() -> Self {
        Self {
            latency: Histogram::new(LATENCY_BUCKETS),
            errors: AtomicU64::new(0),
            backend: std::sync::OnceLock::new(),
        }
    }
}

/// The server's measurements (see the module docs).
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: [Histogram; RouteGroup::ALL.len()],
    forward_auth: [AtomicU64; Outcome::ALL.len()],
    stores: [std::sync::Arc<StoreStats>; StoreRole::ALL.len()],
    /// Sessions whose deadline has not passed, as last counted (`u64::MAX`: not yet).
    active_sessions: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: RouteGroup::ALL.map(|_| Histogram::new(LATENCY_BUCKETS)),
            forward_auth: Outcome::ALL.map(|_| AtomicU64::new(0)),
            stores: StoreRole::ALL.map(|_| std::sync::Arc::default()),
            active_sessions: AtomicU64::new(u64::MAX),
        }
    }
}

impl Metrics {
    pub(crate) fn request(&self, group: RouteGroup, took: Duration) {
        self.requests[group as usize].observe(took);
    }

    pub(crate) fn requests(&self, group: RouteGroup) -> &Histogram {
        &self.requests[group as usize]
    }

    pub(crate) fn forward_auth(&self, outcome: Outcome) {
        self.forward_auth[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn forward_auth_count(&self, outcome: Outcome) -> u64 {
        self.forward_auth[outcome as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn store(&self, role: StoreRole) -> &std::sync::Arc<StoreStats> {
        &self.stores[role as usize]
    }

    pub(crate) fn set_active_sessions(&self, n: u64) {
        self.active_sessions.store(n, Ordering::Relaxed);
    }

    /// The last count of active sessions, if one was made.
    pub(crate) fn active_sessions(&self) -> Option<u64> {
        Some(self.active_sessions.load(Ordering::Relaxed)).filter(|n| *n != u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fall_in_their_groups() {
        for (path, group) in [
            ("/api/authz/forward-auth", RouteGroup::ForwardAuth),
            ("/api/authz/auth-request", RouteGroup::ForwardAuth),
            ("/api/verify", RouteGroup::ForwardAuth),
            ("/api/session", RouteGroup::Session),
            ("/api/sessions", RouteGroup::Api),
            ("/api/login", RouteGroup::Login),
            ("/api/login/passkey", RouteGroup::Login),
            ("/api/logout", RouteGroup::Login),
            ("/login", RouteGroup::Login),
            ("/login/2fa", RouteGroup::SecondFactor),
            ("/api/2fa/totp", RouteGroup::SecondFactor),
            ("/2fa/totp/setup", RouteGroup::SecondFactor),
            ("/", RouteGroup::Pages),
            ("/admin/users", RouteGroup::Pages),
            ("/sessions/x/revoke", RouteGroup::Pages),
            ("/healthz", RouteGroup::Health),
            ("/static/style.css", RouteGroup::Static),
            ("/metrics", RouteGroup::Other),
            ("/nope", RouteGroup::Other),
        ] {
            assert_eq!(RouteGroup::of(path), group, "{path}");
        }
    }
}
