//! Who is asking: the signed-in user of a request (`CurrentUser`). The account use cases
//! themselves (logging in, the throttle, password checks and changes, disabling and deleting
//! users) are the library's (`sessiond_axum::auth`): the server calls them like any app, and
//! re-exports the ones its tests and CLI name.

use std::sync::Arc;

use sessiond_axum::ActiveSession;
use sessiond_core::{StoreError, User};

pub use sessiond_axum::auth::{delete, disable, set_password, ChangeError, MAX_NEW_DEVICES};

use crate::state::AppState;

/// A valid session of an enabled user.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser {
    pub(crate) user: Arc<User>,
    pub(crate) session: ActiveSession,
}

impl CurrentUser {
    /// Resolves a verified session to its user ([`sessiond_axum::Auth::user_of`]: a session
    /// whose user is gone or disabled is no session, and ends).
    pub(crate) async fn resolve(
        state: &AppState,
        session: ActiveSession,
    ) -> Result<Option<Self>, StoreError> {
        Ok(state
            .auth
            .user_of(&session)
            .await?
            .map(|user| Self { user, session }))
    }
}
