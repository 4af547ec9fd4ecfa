//! # sessiond-bench
//!
//! The project's load benchmark of the performance targets (docs/reference/performance.md):
//! one command builds the release server, starts it on each store, drives it with a real HTTP
//! load generator on the same machine and prints one table, every ratio taken from figures of
//! the same run.
//!
//! ```sh
//! cargo run --release -p sessiond-bench              # full run, writes BENCHMARKS.md
//! cargo run --release -p sessiond-bench -- --help    # --rounds, --round-seconds, --no-peers, --out, …
//! ```
//!
//! ## What it measures, and why this way
//!
//! * **Verify against a route that does no session work.** `GET /healthz` on the same server
//!   is the floor of the HTTP stack on this machine; `GET /api/session` (and forward auth)
//!   with a valid cookie adds exactly the session work. Their ratio survives a change of
//!   machine, absolute numbers do not.
//! * **Ratios per round.** The closed-loop rows run in many short interleaved rounds
//!   (`/healthz`, verify, forward auth; then the reverse order; …); a ratio is the median of
//!   the per-round ratios, so a build that starts on the other core in round 2 does not land
//!   on one side of it only, and a shared VM's second-to-second swings average out over the
//!   rounds.
//! * **Login against the machine's hashing.** The same `argon2` crate at the same parameters
//!   hashes on every core in windows that alternate with the login windows; logins/s over
//!   the hashes/s of the same round is the share of the CPU that reaches argon2.
//! * **Latency under a login flood** is probed at a fixed rate, timed from when each request
//!   was due, while 64 connections of right and wrong logins keep the hashing pool full.
//! * **Store size.** A million sessions are written straight into the SQLite file (not a
//!   million logins), with secrets made here, so the verifications pick sessions all over the
//!   table; then a million of them are made expired and `sessiond session purge` removes
//!   them while the server serves.
//! * **The example app** (`examples/example-app`, built in release like the server) is
//!   logged in once through its HTML form; its `GET /private` with that cookie (verify, the
//!   visit counter read and written in the session's data, a page) is measured against its
//!   own `GET /`, next to the same ratio of the tower-sessions peer (`GET /me` ÷ `/healthz`).
//! * **Second factors** (issue 18): a server of its own on each store (public URL
//!   `http://localhost:PORT`, an encryption key), a few hundred users created with the CLI
//!   and enrolled through the JSON API (TOTP, and a passkey registered by a software
//!   authenticator). A code is good once per user per 30-second step and a passkey ceremony
//!   once, so each round logs every user in (one-factor sessions) and takes each session
//!   through `POST /api/2fa/totp`, or through a passkey ceremony, exactly once, from a few
//!   connections at a time: checks per second over the pass, every request's latency, the
//!   server's CPU time per check; verify runs in the same rounds, so the cost also reads as
//!   a number of verifications. `--second-factor-only N` runs just these rows.
//! * **Coherence across instances** (issue 20, `coherence.rs`), on PostgreSQL and Redis: the
//!   store requests an idle instance makes (1 and 8 servers on one store, the store's own
//!   counter), how long a logout on one instance takes to be refused by every other (2 and 8
//!   servers), and a hundred instances simulated in this process (a hundred store handles
//!   running the cache watcher's loop) idle and with revocations at 100 a second.
//!   `--coherence-only` runs just these rows.
//! * **Peers** from `shared/peers/` (axum-login + tower-sessions, Django) run on the same
//!   machine with the same generator.
//!
//! The test suite runs all of it in a smoke mode (tiny windows, 2,000 stored sessions, no
//! peers) that asserts only that every row was produced and every request answered: no speed
//! assertion lives in the tests.
//!
//! Linux only: memory comes from `/proc/PID/status`, the machine from `/proc`.

pub mod binaries;
pub mod chart;
pub mod coherence;
pub mod document;
pub mod example;
mod harness;
pub mod hashrate;
pub mod load;
pub mod machine;
pub mod peers;
pub mod process;
pub mod report;
pub mod second_factor;
pub mod seed;
pub mod storage;
pub mod stores;

pub use coherence::coherence_only;
pub use harness::{
    example_only, logins_only, peers_only, probe_only, ratio_only, ratios_only, run,
    second_factor_only, Config, ExampleSetup, PeerSetup, COOKIE, PASSWORD,
};
pub use report::{Outcome, Report};
