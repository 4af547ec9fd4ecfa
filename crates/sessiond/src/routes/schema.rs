//! What the OpenAPI description (`GET /api/openapi.json`, docs/reference/openapi.json) says
//! about the types the handlers do not declare themselves: the error body and its codes
//! (error.rs serialises them), the levels, and the library's answers (`sessiond_axum`'s
//! `TotpSetup`, `PasskeyChallenge`, `PasskeyInfo`) and WebAuthn's JSON. These types exist for
//! the description only; the tests below hold each to what is really serialised.

#![allow(dead_code)] // Described, never built: the handlers build the real types.

use utoipa::ToSchema;

/// The JSON error body of every refusal (docs/reference/errors.md): `code` is what clients
/// act on; `message` is for people and may change.
#[derive(ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody {
    code: ErrorCode,
    /// Human text; never a secret, a cause or a stack (`internal error` for `internal`).
    message: String,
}

/// The error codes (docs/reference/errors.md, "Codes"). Each status's description in an
/// operation says which of them it can carry.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(super) enum ErrorCode {
    InvalidCredentials,
    Unauthenticated,
    Forbidden,
    CsrfRejected,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    UriTooLong,
    HeadersTooLarge,
    Throttled,
    Overloaded,
    StoreUnavailable,
    Internal,
    Conflict,
    InvalidSecondFactor,
    SecondFactorRequired,
    SecondFactorEnrolmentRequired,
    SecondFactorUnavailable,
}

/// How a session signed in: `one_factor` (a password), `two_factor` (raised by a second
/// factor, or a passkey login).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(super) enum AuthenticationLevel {
    OneFactor,
    TwoFactor,
}

/// `POST /api/2fa/totp/setup`'s answer: a pending secret, which changes nothing until
/// confirmed.
#[derive(ToSchema)]
pub(super) struct TotpSetup {
    /// The secret in base32 without padding.
    secret: String,
    /// `otpauth://totp/ISSUER:USER?secret=…&issuer=ISSUER`, for authenticator apps.
    uri: String,
}

/// The start of a passkey ceremony.
#[derive(ToSchema)]
pub(super) struct PasskeyChallenge {
    /// `{"publicKey": {…}}`: hand `publicKey` to
    /// `PublicKeyCredential.parseCreationOptionsFromJSON` (registration) or
    /// `parseRequestOptionsFromJSON` (authentication), then to `navigator.credentials`.
    #[schema(value_type = Object)]
    options: (),
    /// The ceremony's sealed state: post it back with the authenticator's answer (5 minutes,
    /// spent by its first use).
    ceremony: String,
}

/// A registered passkey.
#[derive(ToSchema)]
pub(super) struct PasskeyInfo {
    /// The credential id, base64url (to name it for removal).
    id: String,
    /// The name the user gave it.
    name: String,
    /// When it was registered.
    #[schema(format = DateTime)]
    created_at: String,
    /// When it last signed in, if ever.
    #[schema(format = DateTime, required = true)]
    last_used_at: Option<String>,
}

/// The browser's answer to a ceremony, as `PublicKeyCredential.toJSON()` writes it
/// (WebAuthn Level 3; base64url strings). Checked by the server; anything else is
/// `400 bad_request` (or `401` where the answer is a refused assertion).
#[derive(ToSchema)]
pub(super) struct WebAuthnCredential {
    /// The credential id, base64url.
    id: String,
    /// The same, base64url.
    #[schema(rename = "rawId")]
    raw_id: String,
    /// `clientDataJSON` and `attestationObject` (registration) or `authenticatorData` and
    /// `signature` (authentication), base64url.
    #[schema(value_type = Object)]
    response: (),
    /// `public-key`.
    #[schema(rename = "type")]
    kind: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::response::IntoResponse;
    use utoipa::PartialSchema;

    use super::*;
    use crate::error::ApiError;

    fn json<T: PartialSchema>() -> serde_json::Value {
        serde_json::to_value(T::schema()).unwrap()
    }

    fn properties(schema: &serde_json::Value) -> BTreeSet<String> {
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// One of every variant; the match makes a new variant a compile error here, so its
    /// code cannot be left out of the description.
    fn every_error() -> Vec<ApiError> {
        let all = vec![
            ApiError::InvalidCredentials,
            ApiError::Unauthenticated,
            ApiError::LoginRequired {
                location: None,
                redirect: true,
            },
            ApiError::Forbidden,
            ApiError::CsrfRejected,
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::BadRequest("x".into()),
            ApiError::PayloadTooLarge,
            ApiError::UnsupportedMediaType("x"),
            ApiError::UriTooLong,
            ApiError::HeadersTooLarge,
            ApiError::Throttled { retry_after: 1 },
            ApiError::Overloaded { retry_after: 1 },
            ApiError::StoreUnavailable(std::sync::Arc::new(sessiond_core::StoreError::Conflict)),
            ApiError::Internal(anyhow::anyhow!("x")),
            ApiError::Conflict("x".into()),
            ApiError::InvalidSecondFactor,
            ApiError::SecondFactorRequired,
            ApiError::EnrolmentRequired,
            ApiError::SecondFactorUnavailable("x".into()),
        ];
        for e in &all {
            match e {
                ApiError::InvalidCredentials
                | ApiError::Unauthenticated
                | ApiError::LoginRequired { .. }
                | ApiError::Forbidden
                | ApiError::CsrfRejected
                | ApiError::NotFound
                | ApiError::MethodNotAllowed
                | ApiError::BadRequest(_)
                | ApiError::PayloadTooLarge
                | ApiError::UnsupportedMediaType(_)
                | ApiError::UriTooLong
                | ApiError::HeadersTooLarge
                | ApiError::Throttled { .. }
                | ApiError::Overloaded { .. }
                | ApiError::StoreUnavailable(_)
                | ApiError::Internal(_)
                | ApiError::Conflict(_)
                | ApiError::InvalidSecondFactor
                | ApiError::SecondFactorRequired
                | ApiError::EnrolmentRequired
                | ApiError::SecondFactorUnavailable(_) => {}
            }
        }
        all
    }

    #[test]
    fn error_codes_are_the_described_enum() {
        let described: BTreeSet<String> = json::<ErrorCode>()["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let sent: BTreeSet<String> = every_error().iter().map(|e| e.code().into()).collect();
        assert_eq!(described, sent);
    }

    #[tokio::test]
    async fn error_body_is_the_described_object() {
        let res = ApiError::NotFound.into_response();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(keys(&body), properties(&json::<ErrorBody>()));
    }

    #[test]
    fn library_answers_are_the_described_objects() {
        let setup = sessiond_axum::auth::TotpSetup {
            secret: "S".into(),
            uri: "otpauth://x".into(),
        };
        assert_eq!(
            keys(&serde_json::to_value(setup).unwrap()),
            properties(&json::<TotpSetup>())
        );
        let challenge = sessiond_axum::auth::PasskeyChallenge {
            options: serde_json::json!({}),
            ceremony: "c".into(),
        };
        assert_eq!(
            keys(&serde_json::to_value(challenge).unwrap()),
            properties(&json::<PasskeyChallenge>())
        );
        let info = sessiond_axum::auth::PasskeyInfo {
            id: "i".into(),
            name: "n".into(),
            created_at: "t".into(),
            last_used_at: None,
        };
        assert_eq!(
            keys(&serde_json::to_value(info).unwrap()),
            properties(&json::<PasskeyInfo>())
        );
    }
}
