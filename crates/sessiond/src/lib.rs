//! # sessiond
//!
//! The standalone server and admin CLI built from the sessiond crates. `main.rs` only calls
//! [`main`]; the server itself is [`run`] on a listener, so tests run the real router on a
//! real socket.
//!
//! The modules form layers, bottom first; each imports only the layers below it (the order
//! and the test that enforces it: `layers.rs`; the codemap: ARCHITECTURE.md):
//! 1. `logging`, `metrics`, `templates`, `tls`, `user_agent`: leaves.
//! 2. `stores`: store URLs, parsed once, and opening the stores.
//! 3. `config`: defaults < TOML < env < flags, validated into one [`Config`], with the
//!    forward-auth access rules.
//! 4. `forward_auth`: what trusted proxies say, the canonical paths, targets, identity headers.
//! 5. `state`: what every handler shares ([`AppState`]).
//! 6. [`accounts`]: who is asking (`CurrentUser`); the use cases themselves
//!    (login, throttle, password checks, account changes) are the library's
//!    (`sessiond_axum::auth`), which the server uses like any app.
//! 7. `error`: the one place that maps failures to HTTP statuses and JSON bodies.
//! 8. `routes`: the HTTP surface (shared extractors, HTML and views; one file per area).
//! 9. `server`: building the state, the sweeper, the accept loop.
//! 10. `cli`: one module per subcommand.

#![warn(unreachable_pub)]

pub mod accounts;
mod cli;
mod config;
mod error;
mod forward_auth;
#[cfg(test)]
mod layers;
mod logging;
mod metrics;
mod routes;
mod server;
mod state;
mod stores;
mod templates;
mod tls;
mod user_agent;

// The public surface, kept small on purpose: what `main.rs`, the integration tests and the
// fuzz targets need. Everything else is `pub(crate)`, so the compiler reports what is dead.
pub use cli::main;
pub use config::{Config, FileConfig, Overrides};
pub use forward_auth::client_ip;
pub use routes::app;
pub use server::{build_state, build_state_with_clock, now, run};
pub use sessiond_axum::password::{hash_blocking, HashError, Hasher};
pub use sessiond_axum::redirect::safe_redirect;
pub use state::AppState;
