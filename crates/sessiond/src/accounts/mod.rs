//! The account use cases, free of HTTP: who is asking (`caller.rs`), logging in
//! (`login.rs`), the throttle in front of every password check (`throttle.rs`), and every
//! account change that must end sessions (`changes.rs`). The routes and the CLI call these;
//! `crate::error` turns an `AuthError` into an HTTP answer.

mod caller;
mod changes;
mod error;
pub(crate) mod login;
pub(crate) mod throttle;

pub(crate) use caller::{ClientInfo, CurrentUser};

pub(crate) use changes::{change_password, enable};
pub use changes::{delete, disable, set_password};
pub(crate) use error::AuthError;
pub use error::ChangeError;
pub use throttle::MAX_NEW_DEVICES;
