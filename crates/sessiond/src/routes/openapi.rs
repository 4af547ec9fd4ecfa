//! The OpenAPI 3.1 description of the JSON API (`GET /api/openapi.json`), generated from the
//! handlers' `#[utoipa::path]` annotations and the types they serialise, so it cannot drift
//! from the code. docs/reference/openapi.json is a copy; a test fails when it differs (run
//! `SESSIOND_BLESS=1 cargo test -p sessiond --lib -- openapi` to write it again).
//!
//! Each handler lists the answers of its own; what the guard in front of every route
//! answers (`414`, `431`, the cross-site check's `403`, the body limits' `413`/`415`), the
//! connection cap's `503` and `500 internal` are added to every operation here
//! ([`Refusals`]), as docs/reference/endpoints.md, "Conventions", states them once.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiond",
        description = "Cookie-based user sessions: the JSON API. The written reference is \
docs/reference/endpoints.md (routes) and docs/reference/errors.md (the error body and codes).\n\n\
A session is the `__Host-sessiond` cookie (its name follows `[cookie] name`, `secure` and \
`domain`: docs/reference/sessions.md, \"The cookie\"). Unsafe requests marked cross-site \
(`Sec-Fetch-Site: cross-site`, or an `Origin` that is neither the public URL's nor a trusted \
origin) are refused with `403 csrf_rejected`. Every `GET` route answers `HEAD` too; an unknown \
path is `404 not_found`, a known path with another method `405 method_not_allowed`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    paths(
        super::api::login,
        super::api::logout,
        super::api::session,
        super::api::sessions,
        super::api::revoke_sessions,
        super::api::revoke_session,
        super::api::password,
        super::two_factor::summary,
        super::two_factor::totp_setup,
        super::two_factor::totp_confirm,
        super::two_factor::verify_totp,
        super::two_factor::totp_remove,
        super::two_factor::verify_recovery,
        super::two_factor::regenerate,
        super::passkeys::list,
        super::passkeys::register_start,
        super::passkeys::register_finish,
        super::passkeys::remove,
        super::passkeys::second_factor_start,
        super::passkeys::second_factor_finish,
        super::passkeys::login_start,
        super::passkeys::login_finish,
        super::authz::forward_auth,
        super::authz::auth_request,
        super::health::healthz,
        super::health::readyz,
        openapi_json,
    ),
    components(schemas(super::schema::ErrorCode)),
    modifiers(&Refusals),
    tags(
        (name = "sessions", description = "Login, logout, the caller's sessions and password"),
        (name = "second factors", description = "TOTP and recovery codes (docs/reference/second-factor.md)"),
        (name = "passkeys", description = "WebAuthn ceremonies: each is a start answering the options and a sealed `ceremony`, and a finish that takes the ceremony back with the browser's answer"),
        (name = "forward auth", description = "For reverse proxies (Authelia-compatible); keep off the public auth host"),
        (name = "operations", description = "Health, readiness and this description"),
    ),
)]
struct ApiDoc;

/// The description as served: built once, the same bytes for every request.
pub(super) fn spec() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut s = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the description serialises");
        s.push('\n');
        s
    })
}

/// This description.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of the JSON API.",
        content_type = "application/json", body = Object,
        headers(("Cache-Control" = String, description = "`public, max-age=3600`")))),
)]
pub(super) async fn openapi_json() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            // The same for every caller and every request of a build.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        spec(),
    )
        .into_response()
}

/// Adds to every operation what the layers in front of the routes can answer, the cookie
/// security scheme, and `/api/verify` (an alias of `/api/authz/forward-auth`).
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-sessiond",
                "The session cookie set by a login (its name follows `[cookie]`).",
            ))),
        );
        for item in api.paths.paths.values_mut() {
            for (unsafe_method, op) in operations(item) {
                add_refusals(op, unsafe_method);
            }
        }
        let alias = api.paths.paths.get("/api/authz/forward-auth").map(|item| {
            let mut item = item.clone();
            if let Some(op) = item.get.as_mut() {
                op.operation_id = Some("verify".into());
                op.summary = Some("Forward auth (alias of `/api/authz/forward-auth`)".into());
            }
            item
        });
        if let Some(alias) = alias {
            api.paths.paths.insert("/api/verify".into(), alias);
        }
    }
}

/// Every operation of `item`, with whether its method is unsafe (the cross-site check
/// applies).
fn operations(item: &mut PathItem) -> impl Iterator<Item = (bool, &mut Operation)> {
    [
        (false, item.get.as_mut()),
        (true, item.post.as_mut()),
        (true, item.put.as_mut()),
        (true, item.patch.as_mut()),
        (true, item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(u, op)| op.map(|op| (u, op)))
}

fn add_refusals(op: &mut Operation, unsafe_method: bool) {
    let has_body = op.request_body.is_some();
    let mut add = |status: &str, text: &str| {
        let responses = &mut op.responses.responses;
        match responses.get_mut(status) {
            Some(RefOr::T(r)) => {
                r.description = format!("{} Or {text}", r.description);
            }
            _ => {
                let body = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build();
                responses.insert(
                    status.into(),
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(text)
                            .content("application/json", body)
                            .build(),
                    ),
                );
            }
        }
    };
    if unsafe_method {
        add(
            "403",
            "`csrf_rejected`: marked cross-site (`Sec-Fetch-Site: cross-site`, or a foreign `Origin`).",
        );
    }
    if has_body {
        add("413", "`payload_too_large`: a body over 64 KiB.");
        add(
            "415",
            "`unsupported_media_type`: a body without `Content-Type: application/json`.",
        );
    }
    add("414", "`uri_too_long`: a request target over 8 KiB.");
    add(
        "431",
        "`headers_too_large`: headers over 16 KiB in all, or `Cookie` headers over 8 KiB.",
    );
    add(
        "500",
        "`internal`: a bug (the message is `internal error`).",
    );
    add(
        "503",
        "`overloaded`: a connection beyond `server.max_connections` (then closed).",
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    /// Every route of the router (routes/mod.rs) under `/api/`, and `/healthz` and
    /// `/readyz`, with each of its methods, is an operation of the description, and the
    /// description has no other (`/api/verify` shares its handler with
    /// `/api/authz/forward-auth`). `/metrics` (Prometheus text) and the pages are not part
    /// of the JSON API.
    #[test]
    fn every_api_route_is_described() {
        let router = include_str!("mod.rs");
        let mut routed = BTreeSet::new();
        for call in router.split(".route(").skip(1) {
            let path = call.split('"').nth(1).unwrap();
            if !(path.starts_with("/api/") || path == "/healthz" || path == "/readyz") {
                continue;
            }
            let call = call.split(".route(").next().unwrap();
            let call = call.split(".fallback(").next().unwrap();
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = call
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                if called {
                    routed.insert(format!("{method} {path}"));
                }
            }
        }
        let spec: serde_json::Value = serde_json::from_str(super::spec()).unwrap();
        let mut described = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                described.insert(format!("{method} {path}"));
            }
        }
        assert!(
            routed.len() > 20,
            "the router's routes were not found: {routed:?}"
        );
        assert_eq!(routed, described);
    }

    /// docs/reference/openapi.json is what the code describes. On a difference, write it
    /// again with `SESSIOND_BLESS=1 cargo test -p sessiond --lib -- openapi` and review the
    /// diff (and docs/reference/endpoints.md and errors.md, which must say the same).
    #[test]
    fn committed_description_is_current() {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference/openapi.json");
        let spec = super::spec();
        if std::env::var_os("SESSIOND_BLESS").is_some() {
            std::fs::write(&path, spec).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == spec,
            "docs/reference/openapi.json differs from what the code describes: run \
             `SESSIOND_BLESS=1 cargo test -p sessiond --lib -- openapi` and commit the result"
        );
    }
}
