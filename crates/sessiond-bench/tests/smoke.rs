//! The benchmark in smoke mode: it starts, drives a few requests through every path and prints
//! the table. It asserts that every row was produced and every request answered as expected;
//! it asserts nothing about speed (the performance targets, docs/reference/performance.md, are
//! measured by the benchmark itself).

use std::time::Instant;

use sessiond_bench::coherence::StoreCoherence;
use sessiond_bench::report::StoreFigures;
use sessiond_bench::stores::StoreKind;
use sessiond_bench::{binaries, chart, run, Config, ExampleSetup, Outcome};

#[test]
fn every_row_of_the_benchmark_runs() {
    let started = Instant::now();
    let sessiond = binaries::test_sessiond().expect("the sessiond binary");
    eprintln!(
        "sessiond binary ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut cfg = Config::smoke(sessiond);
    cfg.example = ExampleSetup::Use(binaries::test_example_app().map_err(|e| format!("{e:#}")));
    let report = run(&cfg).expect("the smoke run");
    let table = report.table();
    println!("{table}");
    eprintln!("smoke run: {:.1} s", started.elapsed().as_secs_f64());

    let require = std::env::var("SESSIOND_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    for (kind, outcome) in &report.stores {
        match outcome {
            Outcome::Done(s) => check_store(*kind, s),
            Outcome::Skipped(why) if *kind != StoreKind::Sqlite && !require => {
                eprintln!("notice: {kind} skipped: {why}");
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    let scale = match &report.scale {
        Outcome::Done(s) => s,
        other => panic!("scale: {other:?}"),
    };
    for point in [&scale.small, &scale.large] {
        assert!(
            point.verify.clean(),
            "verify at {}: {:?}",
            point.stored,
            point.verify
        );
        assert!(
            point.rss_kib.is_some_and(|k| k > 0),
            "RSS at {}",
            point.stored
        );
    }
    assert_eq!(scale.large.stored, 2_200, "200 + 2,000 stored sessions");
    // The servers' /metrics said how many verifications missed the cache.
    assert!(
        scale.small.store_reads.is_some() && scale.large.store_reads.is_some(),
        "{scale:?}"
    );
    let purge = match &report.purge {
        Outcome::Done(p) => p,
        other => panic!("purge: {other:?}"),
    };
    assert_eq!(purge.expired, 2_000);
    assert_eq!(purge.removed, 2_000, "{purge:?}");
    assert_eq!(purge.left, 0);
    assert!(
        purge.probe_idle.clean() && purge.probe_during.clean(),
        "{purge:?}"
    );
    check_storage(&report.storage, require);
    for peer in &report.peers {
        assert!(
            matches!(peer.outcome, Outcome::Skipped(_)),
            "peers are left out in smoke mode"
        );
    }

    // The example app was logged in through its form and every request of its rounds got
    // the expected 200 (the page with the session, not a redirect to the login form).
    match &report.example {
        Outcome::Done(e) => {
            assert!(e.home.clean(), "example GET /: {:?}", e.home);
            assert!(e.private.clean(), "example GET /private: {:?}", e.private);
            assert!(e.ratio() > 0.0, "{e:?}");
        }
        other => panic!("example app: {other:?}"),
    }

    // The coherence rows: every store that answers was measured, every trial revoked.
    for (kind, outcome) in [
        (StoreKind::Postgres, &report.coherence.postgres),
        (StoreKind::Redis, &report.coherence.redis),
    ] {
        match outcome {
            Outcome::Done(c) => check_coherence(kind, c),
            Outcome::Skipped(why) if !require => eprintln!("notice: {kind} coherence: {why}"),
            other => panic!("{kind} coherence: {other:?}"),
        }
    }

    // Every row is in the table, none of them failed.
    let rows = report.rows();
    for label in [
        "`GET /healthz`",
        "`GET /api/session`",
        "`GET /api/authz/forward-auth`",
        "`POST /api/login`",
        "verify ÷ `/healthz`",
        "logins/s ÷ argon2id hashes/s",
        "idle → during a login flood the hash queue holds",
        "-connection login flood",
        "server RSS",
        "**TOTP check**",
        "**passkey assertion**",
        "verify with 200 stored",
        "verify with 2,200 stored",
        "`sessiond session purge`",
        "verify with 3,000 stored",
        "**Redis bytes per session**",
        "**nginx `auth_request`**",
        "peer: axum-login",
        "peer: Django",
        "example app: `GET /private`",
        "idle store requests/s per instance, 1 instance",
        "idle store requests/s per instance, 2 instances",
        "revocation across 2 instances",
        "revocation across 3 instances",
        "5 simulated instances, idle",
        "5 simulated instances, **20 revocations/s**",
    ] {
        assert!(
            rows.iter().any(|r| r.label.contains(label)),
            "no row {label:?} in\n{table}"
        );
    }
    assert!(!table.contains("failed"), "{table}");

    // The chart renders (the smoke run writes no file).
    let png = chart::render(&report).expect("chart");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let doc = sessiond_bench::document::render(&report, Some("chart.png"));
    assert!(doc.contains(&table));
}

fn check_coherence(kind: StoreKind, c: &StoreCoherence) {
    assert_eq!(c.idle.len(), 2, "{kind}: {c:?}");
    for idle in &c.idle {
        let Outcome::Done(i) = idle else {
            panic!("{kind} idle: {idle:?}")
        };
        assert!(i.seconds > 0.5, "{kind}: {i:?}");
    }
    assert_eq!(c.revocation.len(), 2, "{kind}: {c:?}");
    for r in &c.revocation {
        let Outcome::Done(r) = r else {
            panic!("{kind} revocation: {r:?}")
        };
        // Every trial saw every other instance refuse the revoked session.
        assert_eq!(r.trials, 3, "{kind}: {r:?}");
        assert_eq!(r.all_ms.len(), 3, "{kind}: {r:?}");
        assert_eq!(r.each_ms.len(), 3 * (r.instances - 1), "{kind}: {r:?}");
    }
    let Outcome::Done(sim) = &c.simulation else {
        panic!("{kind} simulation: {:?}", c.simulation)
    };
    assert_eq!(sim.feeds, 5, "{kind}: {sim:?}");
    assert!(
        sim.idle.requests > 0,
        "heartbeats or polls reach the store: {sim:?}"
    );
    assert!(sim.churn.revocations > 0, "{kind}: {sim:?}");
    assert!(sim.churn.errors.is_empty(), "{kind}: {sim:?}");
    assert_eq!(
        sim.churn.missed, 0,
        "every watcher learnt of every revocation: {sim:?}"
    );
}

fn check_store(kind: StoreKind, s: &StoreFigures) {
    assert!(s.healthz.clean(), "{kind} /healthz: {:?}", s.healthz);
    assert!(s.session.clean(), "{kind} /api/session: {:?}", s.session);
    if let Ok(fa) = &s.forward_auth {
        assert!(fa.clean(), "{kind} forward auth: {fa:?}");
    }
    // Logins: every answer a success or a counted refusal, at least one success, and a hash
    // rate measured next to each login round.
    assert!(!s.login.logins.0.is_empty(), "{kind} login: {:?}", s.login);
    assert_eq!(s.login.hash.len(), s.login.logins.0.len(), "{kind}");
    for (l, h) in s.login.logins.0.iter().zip(&s.login.hash) {
        assert!(l.status(200) > 0, "{kind} login: {l:?}");
        assert_eq!(l.io_errors, 0, "{kind} login: {l:?}");
        assert!(
            l.statuses.keys().all(|c| [200, 429, 503].contains(c)),
            "{kind} login: {l:?}"
        );
        assert!(h.hashes >= 1, "{kind} hash rate: {h:?}");
    }
    assert!(s.login.ratio() > 0.0, "{kind} login: {:?}", s.login);
    assert!(
        s.probe_idle.clean(),
        "{kind} idle probe: {:?}",
        s.probe_idle
    );
    assert!(
        s.probe_flood.clean(),
        "{kind} probe in the flood: {:?}",
        s.probe_flood
    );
    assert!(s.flood.clean(), "{kind} flood: {:?}", s.flood);
    assert!(
        s.probe_queue_flood.clean(),
        "{kind} probe in the queue-sized flood: {:?}",
        s.probe_queue_flood
    );
    assert!(
        s.queue_flood.clean(),
        "{kind} queue-sized flood: {:?}",
        s.queue_flood
    );
    assert!(s.rss_kib.is_some_and(|k| k > 0), "{kind} RSS");
    // Second factors: every user enrolled, every session's TOTP check and passkey ceremony
    // answered 200 (a refused code or assertion would be a fault of the harness or the
    // server), verify beside them.
    let f = match &s.second_factor {
        Outcome::Done(f) => f,
        other => panic!("{kind} second factors: {other:?}"),
    };
    assert_eq!(f.users, 4, "{kind}");
    for (what, rounds) in [
        ("TOTP", &f.totp),
        ("passkey finish", &f.passkey),
        ("passkey start", &f.passkey_start),
        ("verify", &f.verify),
    ] {
        assert!(rounds.clean(), "{kind} {what}: {rounds:?}");
    }
    for m in f.totp.0.iter().chain(&f.passkey.0) {
        assert_eq!(m.ok, 4, "{kind}: one check per user: {m:?}");
    }
    assert!(
        f.verify_per_totp() > 0.0 && f.verify_per_passkey() > 0.0,
        "{kind}: {f:?}"
    );
}

/// The storage-scale rows: PostgreSQL's purge and large store, Redis bytes per session, nginx
/// `auth_request`. Each may be skipped when its service or program is absent (unless
/// `SESSIOND_REQUIRE_SERVICES=1`), never failed.
fn check_storage(s: &sessiond_bench::storage::Storage, require: bool) {
    let skipped = |what: &str, why: &str| {
        assert!(!require, "{what} skipped: {why}");
        eprintln!("notice: {what} skipped: {why}");
    };
    match &s.pg_purge {
        Outcome::Done(p) => {
            assert_eq!(p.expired, 2_000, "{p:?}");
            assert_eq!(p.removed, 2_000, "{p:?}");
            assert_eq!((p.left, p.live), (0, 200), "{p:?}");
            assert!(p.probe_idle.clean() && p.probe_during.clean(), "{p:?}");
        }
        Outcome::Skipped(why) => skipped("PostgreSQL purge", why),
        other => panic!("PostgreSQL purge: {other:?}"),
    }
    match &s.pg_scale {
        Outcome::Done(sc) => {
            assert_eq!((sc.small.stored, sc.large.stored), (200, 3_000));
            for point in [&sc.small, &sc.large] {
                assert!(point.verify.clean(), "{point:?}");
                assert!(point.store_reads.is_some(), "{point:?}");
            }
        }
        Outcome::Skipped(why) => skipped("PostgreSQL large store", why),
        other => panic!("PostgreSQL large store: {other:?}"),
    }
    match &s.redis_bytes {
        Outcome::Done(b) => {
            assert_eq!(b.sessions, 400);
            assert!(b.after > b.before, "{b:?}");
            // A login's session id is derived from its hash: no id index. The session is one
            // string, a user's few sessions a listpack; 400 deadlines outgrow one.
            let kinds: Vec<&str> = b.per_key.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                kinds,
                [
                    "session `s:` (raw)",
                    "user index `u:` (listpack)",
                    "deadline index `exp` (skiplist)"
                ],
                "{b:?}"
            );
            assert!(b.per_key.iter().all(|(_, v)| *v > 0.0), "{b:?}");
        }
        Outcome::Skipped(why) => skipped("Redis bytes", why),
        other => panic!("Redis bytes: {other:?}"),
    }
    match &s.nginx {
        Outcome::Done(n) => {
            // Every protected request was answered 200 (the page, not a 401 or a redirect).
            assert!(n.bare.clean() && n.protected.clean(), "{n:?}");
            assert!(n.ratio() > 0.0, "{n:?}");
        }
        Outcome::Skipped(why) => skipped("nginx", why),
        other => panic!("nginx: {other:?}"),
    }
}
