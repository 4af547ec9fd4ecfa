//! Logging in over HTTP: the cookies a login sets and reads (the session cookie, and the
//! login throttle's device cookie).

use axum::http::{HeaderMap, HeaderValue};

use crate::auth::{throttle::DEVICE_LIFETIME, Auth, LoggedIn, UserBackend};
use crate::{find_cookie, CookieLookup};

impl<B: UserBackend> Auth<B> {
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
