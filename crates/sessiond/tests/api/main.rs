//! Integration tests: the real router on a real socket, driven by a real HTTP client with a
//! real cookie jar. One test binary (faster to link); one module per area.

mod accounts;
mod authz;
mod cli;
mod cookies;
mod crash;
mod hashing;
mod helpers;
mod hostile;
mod lenient;
mod lifecycle;
mod logfmt;
mod login;
mod metrics;
mod net;
mod openapi;
mod ops;
mod pages;
mod passkeys;
mod paths;
mod proxies;
mod second_factor_step;
mod shared;
mod throttle;
mod tls;
mod two_factor;
