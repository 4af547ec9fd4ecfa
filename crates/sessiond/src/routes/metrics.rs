//! `GET /metrics`: Prometheus text format, counters only, no labels that could carry user
//! data.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let c = state.sessions.counters();
    let m = state.auth.counters();
    let rows: [(&str, &str, u64); 7] = [
        (
            "sessiond_verifications_total",
            "Session cookies checked against the store.",
            c.verifications.load(Ordering::Relaxed),
        ),
        (
            "sessiond_verify_store_reads_total",
            "Verifications the cache could not answer (miss, or cache off): store reads.",
            c.store_reads.load(Ordering::Relaxed),
        ),
        (
            "sessiond_activity_writes_total",
            "Coalesced last-seen writes issued.",
            c.activity_writes.load(Ordering::Relaxed),
        ),
        (
            "sessiond_sessions_started_total",
            "Sessions created by logins and rotations.",
            c.sessions_started.load(Ordering::Relaxed),
        ),
        (
            "sessiond_logins_succeeded_total",
            "Successful logins.",
            m.logins_succeeded.load(Ordering::Relaxed),
        ),
        (
            "sessiond_logins_failed_total",
            "Failed logins (wrong password, unknown or disabled user).",
            m.logins_failed.load(Ordering::Relaxed),
        ),
        (
            "sessiond_hash_overloaded_total",
            "Password hashing refused because the queue was full.",
            m.hash_overloaded.load(Ordering::Relaxed),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
