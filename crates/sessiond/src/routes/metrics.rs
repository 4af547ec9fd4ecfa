//! `GET /metrics` on the metrics listener (`metrics_listen`), never on the public one: the
//! Prometheus text format (0.0.4), encoded by `prometheus-client` from the atomics the library
//! and the server keep (`sessiond_axum::metrics`, `crate::metrics`). A scrape reads them; no
//! request of the public listener ever waits for a scrape.
//!
//! No label carries a value a client chose: methods, results, outcomes, route groups and
//! stores are fixed lists, so neither a user name nor a path can reach the output, and a
//! client cannot mint series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sessiond_axum::metrics::{AuthMethod, AuthResult, Histogram};

use crate::metrics::{Outcome, RouteGroup, StoreRole};
use crate::state::AppState;

/// The version and git revision `sessiond_build_info` shows: the revision `sessiond
/// --version` names (build.rs: `git rev-parse`, or `SESSIOND_BUILD_REVISION`, or `unknown`).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const REVISION: &str = env!("SESSIOND_GIT_REVISION");

/// The metrics listener's router: `GET /metrics`, and `404` for everything else.
pub(crate) fn router(state: AppState) -> Router {
    let mut registry = Registry::with_prefix("sessiond");
    registry.register_collector(Box::new(Collect(state)));
    let registry = Arc::new(registry);
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Reads every measurement at scrape time.
#[derive(Debug)]
struct Collect(AppState);

type Labels<'a> = [(&'static str, &'a str)];

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&Labels, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&Labels, i64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&Labels, &Histogram)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let s = h.snapshot();
        // The encoder adds the buckets up itself: it takes each bucket's own count.
        let mut below = 0;
        let own: Vec<(f64, u64)> = (s.buckets.iter())
            .map(|&(bound, cumulative)| {
                let n = cumulative - below;
                below = cumulative;
                (bound, n)
            })
            .collect();
        if labels.is_empty() {
            m.encode_histogram::<NoLabelSet>(s.sum, s.count, &own, None)?;
        } else {
            m.encode_family(labels)?
                .encode_histogram::<NoLabelSet>(s.sum, s.count, &own, None)?;
        }
    }
    Ok(())
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let state = &self.0;
        let enc = &mut enc;
        gauge(
            enc,
            "build_info",
            "The running build: its version and git revision (always 1).",
            &[(&[("version", VERSION), ("revision", REVISION)], 1)],
        )?;

        // Authentications, by method and result.
        let outcomes = &state.auth.counters().outcome;
        let labels: Vec<[(&str, &str); 2]> = AuthMethod::ALL
            .iter()
            .flat_map(|m| {
                AuthResult::ALL
                    .iter()
                    .map(move |r| [("method", m.as_str()), ("result", r.as_str())])
            })
            .collect();
        let rows: Vec<(&Labels, u64)> = AuthMethod::ALL
            .iter()
            .flat_map(|m| AuthResult::ALL.iter().map(move |r| outcomes.get(*m, *r)))
            .zip(&labels)
            .map(|(v, l)| (&l[..], v))
            .collect();
        counter(
            enc,
            "authentications",
            "Authentications by method (password, totp, recovery, passkey) and result (success, \
             failure, throttled, overloaded, error).",
            &rows,
        )?;

        // Forward auth.
        let m = &state.metrics;
        let labels: Vec<[(&str, &str); 1]> = Outcome::ALL
            .iter()
            .map(|o| [("outcome", o.as_str())])
            .collect();
        let rows: Vec<(&Labels, u64)> = Outcome::ALL
            .iter()
            .zip(&labels)
            .map(|(o, l)| (&l[..], m.forward_auth_count(*o)))
            .collect();
        counter(
            enc,
            "forward_auth_decisions",
            "Forward-auth answers by outcome (allowed, unauthenticated, second_factor_required, \
             forbidden, bad_request, error).",
            &rows,
        )?;

        // Requests, by route group.
        let labels: Vec<[(&str, &str); 1]> = RouteGroup::ALL
            .iter()
            .map(|g| [("group", g.as_str())])
            .collect();
        let rows: Vec<(&Labels, &Histogram)> = RouteGroup::ALL
            .iter()
            .zip(&labels)
            .map(|(g, l)| (&l[..], m.requests(*g)))
            .collect();
        histogram(
            enc,
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer's head, by route group.",
            &rows,
        )?;

        // Sessions and the verification cache.
        if let Some(n) = m.active_sessions() {
            gauge(
                enc,
                "active_sessions",
                "Sessions whose deadline has not passed, as last counted in the store (every \
                 15 s).",
                &[(&[], i64::try_from(n).unwrap_or(i64::MAX))],
            )?;
        }
        let c = state.sessions.counters();
        counter(
            enc,
            "verifications",
            "Session cookies checked (well-formed ones; a missing or malformed cookie is no \
             session without a check).",
            &[(&[], load(&c.verifications))],
        )?;
        counter(
            enc,
            "verify_cache_hits",
            "Verifications the verification cache answered (no store read).",
            &[(&[], load(&c.cache_hits))],
        )?;
        counter(
            enc,
            "verify_store_reads",
            "Verifications the cache could not answer (a miss, or the cache off): store reads.",
            &[(&[], load(&c.store_reads))],
        )?;
        gauge(
            enc,
            "verify_cache_entries",
            "Session records in the verification cache.",
            &[(
                &[],
                i64::try_from(state.sessions.cached_sessions()).unwrap_or(i64::MAX),
            )],
        )?;
        counter(
            enc,
            "cache_invalidations",
            "Epoch changes of the verification cache: an early end of a session made by this \
             instance (source=local), or a change of the store's generation seen by its \
             watcher (source=store: revocations and user changes made elsewhere, propagated \
             here).",
            &[
                (&[("source", "local")], load(&c.epoch_changes_local)),
                (&[("source", "store")], load(&c.epoch_changes_remote)),
            ],
        )?;
        counter(
            enc,
            "cache_watch_failures",
            "Polls of the session store's generation that failed (the cache serves nothing \
             until one succeeds).",
            &[(&[], load(&c.generation_poll_failures))],
        )?;
        counter(
            enc,
            "activity_writes",
            "Coalesced last-seen writes issued.",
            &[(&[], load(&c.activity_writes))],
        )?;
        counter(
            enc,
            "sessions_started",
            "Sessions created by logins and rotations.",
            &[(&[], load(&c.sessions_started))],
        )?;

        // Stores.
        let labels: Vec<[(&str, &str); 2]> = StoreRole::ALL
            .iter()
            .map(|r| {
                let backend = m.store(*r).backend.get().copied().unwrap_or("none");
                [("store", r.as_str()), ("backend", backend)]
            })
            .collect();
        let rows: Vec<(&Labels, &Histogram)> = StoreRole::ALL
            .iter()
            .zip(&labels)
            .map(|(r, l)| (&l[..], &m.store(*r).latency))
            .collect();
        histogram(
            enc,
            "store_request_duration_seconds",
            "Store calls by store (sessions, throttle, users, factors), errors included; the \
             session store's include the cache watcher's polls (50 a second).",
            &rows,
        )?;
        let rows: Vec<(&Labels, u64)> = StoreRole::ALL
            .iter()
            .zip(&labels)
            .map(|(r, l)| (&l[..], load(&m.store(*r).errors)))
            .collect();
        counter(
            enc,
            "store_errors",
            "Store calls that failed (unreachable, timed out, corrupt answer).",
            &rows,
        )?;

        // The hashing pool.
        let hasher = state.auth.hasher();
        gauge(
            enc,
            "hash_jobs",
            "Password hashing jobs in the pool: running or waiting in its queue.",
            &[(&[], i64::try_from(hasher.in_flight()).unwrap_or(i64::MAX))],
        )?;
        gauge(
            enc,
            "hash_capacity",
            "Jobs the hashing pool takes at once (threads + queue); past it, logins are refused \
             with 503 overloaded.",
            &[(&[], i64::try_from(hasher.capacity()).unwrap_or(i64::MAX))],
        )?;
        histogram(
            enc,
            "hash_duration_seconds",
            "Hashing jobs from submission to answer: the wait in the queue plus the hash.",
            &[(&[], &hasher.metrics().duration)],
        )?;
        Ok(())
    }
}
