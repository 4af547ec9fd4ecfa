//! Who is asking: the signed-in user of a request ([`CurrentUser`]) and the client
//! ([`ClientInfo`]). `routes::extract` reads them from requests.

use std::sync::Arc;

use sessiond_axum::ActiveSession;
use sessiond_core::{StoreError, User};

use crate::state::AppState;

/// Who is asking: the client's address and user agent, kept with a new session for the
/// session list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
}

/// A valid session of an enabled user.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser {
    pub(crate) user: Arc<User>,
    pub(crate) session: ActiveSession,
}

impl CurrentUser {
    /// Resolves a verified session to its user. A session whose user is gone or disabled is
    /// no session (and is ended; disabling a user also revokes, this is the backstop).
    pub(crate) async fn resolve(
        state: &AppState,
        session: ActiveSession,
    ) -> Result<Option<Self>, StoreError> {
        let id = session.record().user_id;
        // Cached under the session cache's epoch, read before the store (see UserCache): the
        // one the session was verified under, read before the session record was.
        let epoch = session.cache_epoch();
        if let Some(user) = epoch.and_then(|e| state.user_cache.get(id, e)) {
            return Ok(Some(Self { user, session }));
        }
        match state.users.user_by_id(id).await? {
            Some(user) if !user.disabled => {
                let user = Arc::new(user);
                if let Some(e) = epoch {
                    state.user_cache.put(e, Arc::clone(&user));
                }
                Ok(Some(Self { user, session }))
            }
            _ => {
                state.sessions.end(&session).await?;
                Ok(None)
            }
        }
    }
}
