//! # sessiond
//!
//! The standalone server and admin CLI built from the sessiond crates. `main.rs` only calls
//! [`cli::main`]; the server itself is [`server::run`] on a listener, so tests run the real
//! router on a real socket.
//!
//! Module map:
//! * [`config`]: defaults < TOML < env < flags, validated into one [`config::Config`].
//! * [`server`]: opening stores, the first admin, the background sweep, serving.
//! * [`routes`]: one module per area (pages, JSON API, health) plus the request guards
//!   (limits, CSRF origin check, security headers).
//! * [`accounts`]: authentication and user changes (shared by the HTTP routes and the CLI).
//! * [`password`]: argon2id on a bounded thread pool.
//! * [`error`]: the one place that maps failures to HTTP statuses and JSON bodies.
//! * [`cli`]: one module per subcommand.

#![warn(unreachable_pub)]

pub mod accounts;
mod cli;
mod config;
mod error;
mod forward_auth;
#[cfg(test)]
mod layers;
mod logging;
mod memo;
mod password;
mod redirect;
mod routes;
mod server;
mod state;
mod stores;
mod templates;
mod user_agent;

// The public surface, kept small on purpose: what `main.rs`, the integration tests and the
// fuzz targets need. Everything else is `pub(crate)`, so the compiler reports what is dead.
pub use cli::main;
pub use config::{Config, FileConfig, Overrides};
pub use forward_auth::client_ip;
pub use password::{hash_blocking, HashError, Hasher};
pub use redirect::safe_redirect;
pub use routes::app;
pub use server::{build_state, build_state_with_clock, now, run};
pub use state::AppState;
