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

pub mod access;
pub mod accounts;
pub mod cli;
pub mod config;
pub mod device;
pub mod error;
pub mod forwarded;
pub mod logging;
pub mod password;
pub mod redirect;
pub mod routes;
pub mod server;
pub mod state;
pub mod templates;
pub mod throttle;
