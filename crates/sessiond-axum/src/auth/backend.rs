//! Where users come from: the [`UserBackend`] trait (bring your own users table), and
//! [`BuiltinUsers`], the built-in user store behind it.

use std::sync::Arc;

use async_trait::async_trait;
use sessiond_core::{StoreError, User, UserId, UserStore, Username};

/// A user as [`crate::auth::Auth`] needs to see it.
pub trait AuthUser: Clone + Send + Sync + 'static {
    /// The id sessions are kept under (your primary key, if it is an integer).
    fn id(&self) -> UserId;
    /// The name the user logs in with: [`UserBackend::by_username`] must find the user by
    /// it (a login checks, once its session exists, that the password it verified is still
    /// the user's by looking the user up again under this name; a password change reads the
    /// stored hash the same way). Also the audit logs' name and the throttle's account
    /// counter.
    fn username(&self) -> &str;
    /// Whether the user may log in and keep their sessions (default: always). A user who is
    /// not active is treated like a wrong password at login, and their sessions end at their
    /// next request.
    fn is_active(&self) -> bool {
        true
    }
}

/// Your users, wherever they live: the trait an app implements to keep its own users table
/// (its schema, its hash column, its ids) while sessiond keeps the sessions, the throttling and
/// CSRF. Like axum-login's `AuthnBackend`, without the password check: that stays in the
/// library (argon2id on the bounded pool, the same cost for unknown users), so every backend
/// gets it right.
///
/// Password hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$…`, as
/// [`crate::password::Hasher::hash`] makes them); a hash of other parameters is verified and
/// upgraded at the next login through [`UserBackend::set_password_hash_if`].
///
/// ```
/// use sessiond_axum::async_trait;
/// use sessiond_axum::auth::{AuthUser, UserBackend};
/// use sessiond_axum::core::{StoreError, UserId};
///
/// #[derive(Clone)]
/// struct Member { id: i64, email: String, active: bool }
///
/// impl AuthUser for Member {
///     fn id(&self) -> UserId { UserId(self.id) }
///     fn username(&self) -> &str { &self.email }
///     fn is_active(&self) -> bool { self.active }
/// }
///
/// struct Members; // a database pool, in a real app
///
/// #[async_trait]
/// impl UserBackend for Members {
///     type User = Member;
///     async fn by_username(&self, name: &str) -> Result<Option<(Member, String)>, StoreError> {
///         // SELECT id, email, active, password_hash FROM members WHERE email = ?
///         Ok(None)
///     }
///     async fn by_id(&self, id: UserId) -> Result<Option<Member>, StoreError> {
///         Ok(None)
///     }
/// }
/// ```
#[async_trait]
pub trait UserBackend: Send + Sync + 'static {
    /// Your user type.
    type User: AuthUser;

    /// The user who logs in with `name` (exactly as typed; match it however your app
    /// matches names, e.g. case-insensitively), with their password hash (a PHC string).
    /// `None` when there is no such user: the login then costs the same as a wrong password.
    async fn by_username(&self, name: &str) -> Result<Option<(Self::User, String)>, StoreError>;

    /// The user a session belongs to.
    async fn by_id(&self, id: UserId) -> Result<Option<Self::User>, StoreError>;

    /// Replaces the user's password hash with `new`, only if it is still `expected`
    /// (compare-and-set, so a reset that landed meanwhile wins); `Ok(true)` when written.
    /// Used by password changes and to upgrade outdated hashes at login. The default writes
    /// nothing; implement it together with [`UserBackend::writes_password_hashes`].
    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let _ = (id, expected, new);
        Ok(false)
    }

    /// Whether [`UserBackend::set_password_hash_if`] writes (default `false`, like its
    /// default): answer `true` when you implement it. A backend that writes no hashes gets
    /// [`crate::auth::AuthError::Conflict`] from [`crate::Auth::change_password`] before any
    /// password work or session change (the user's sessions stay as they were), and no hash
    /// upgrades at login.
    fn writes_password_hashes(&self) -> bool {
        false
    }
}

/// The built-in users ([`UserStore`]: SQLite, PostgreSQL or memory), the default backend.
#[derive(Clone, Debug)]
pub struct BuiltinUsers(Arc<dyn UserStore>);

impl BuiltinUsers {
    /// Users from `store`.
    pub fn new(store: Arc<dyn UserStore>) -> Self {
        Self(store)
    }

    /// The store (to create users, list them, change groups).
    pub fn store(&self) -> &Arc<dyn UserStore> {
        &self.0
    }
}

impl AuthUser for User {
    fn id(&self) -> UserId {
        self.id
    }
    fn username(&self) -> &str {
        self.username.as_str()
    }
    fn is_active(&self) -> bool {
        !self.disabled
    }
}

#[async_trait]
impl UserBackend for BuiltinUsers {
    type User = User;

    /// Names that break the username rule cannot exist: no lookup.
    async fn by_username(&self, name: &str) -> Result<Option<(User, String)>, StoreError> {
        let Ok(name) = Username::parse(name) else {
            return Ok(None);
        };
        Ok(self
            .0
            .user_by_name(&name)
            .await?
            .map(|c| (c.user, c.password_hash)))
    }

    async fn by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.0.user_by_id(id).await
    }

    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.0.set_password_hash_if(id, expected, new).await
    }

    fn writes_password_hashes(&self) -> bool {
        true
    }
}
