//! Forward auth's own logic, free of HTTP handlers: what a reverse proxy tells us
//! ([`headers`]: the client's address, the request it asks about), the one form of a path
//! decided on ([`path`]), a target resolved against the configuration and its rules
//! ([`target`]), and the identity headers answered for a user ([`identity`]). Everything
//! here is a pure function of the headers and the configuration, so it is table-tested and
//! fuzzed; `routes::authz` turns it into answers.

pub(crate) mod headers;
pub(crate) mod identity;
pub(crate) mod path;
pub(crate) mod target;

pub use headers::client_ip;
