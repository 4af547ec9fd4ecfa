//! [`ThrottleStore`] behaviours.

use std::sync::Arc;
use std::time::Duration;

use sessiond_core::{ThrottleRecord, ThrottleStore, Timestamp};

use crate::sessions::T0;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0.as_millis() + ms)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub async fn throttle_counters_count_within_a_window<S: ThrottleStore>(store: S) {
    let w = secs(900);
    let r = store
        .throttle_hit("p:alice|203.0.113.7", at(0), w)
        .await
        .unwrap();
    assert_eq!((r.count, r.last_at, r.expires_at), (1, at(0), at(900_000)));
    let r = store
        .throttle_hit("p:alice|203.0.113.7", at(5_000), w)
        .await
        .unwrap();
    assert_eq!(
        (r.count, r.last_at, r.expires_at),
        (2, at(5_000), at(900_000)),
        "window kept"
    );
    assert_eq!(
        store
            .throttle_get("p:alice|203.0.113.7", at(6_000))
            .await
            .unwrap(),
        Some(r)
    );
    // Keys are independent.
    assert_eq!(
        store
            .throttle_hit("i:203.0.113.7", at(5_000), w)
            .await
            .unwrap()
            .count,
        1
    );
    assert_eq!(
        store
            .throttle_get("p:bob|203.0.113.7", at(6_000))
            .await
            .unwrap(),
        None
    );
    // Once the window is over the counter is gone, and the next hit starts afresh.
    assert_eq!(
        store
            .throttle_get("p:alice|203.0.113.7", at(900_000))
            .await
            .unwrap(),
        None
    );
    let r = store
        .throttle_hit("p:alice|203.0.113.7", at(901_000), w)
        .await
        .unwrap();
    assert_eq!((r.count, r.expires_at), (1, at(1_801_000)));
}

pub async fn throttle_counters_list_and_delete<S: ThrottleStore>(store: S) {
    let w = secs(60);
    store.throttle_hit("p:b|1.1.1.1", at(0), w).await.unwrap();
    store.throttle_hit("a:b", at(0), secs(3600)).await.unwrap();
    store.throttle_hit("i:1.1.1.1", at(0), w).await.unwrap();
    let keys = |v: Vec<(String, ThrottleRecord)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.throttle_list(at(1_000)).await.unwrap()),
        ["a:b", "i:1.1.1.1", "p:b|1.1.1.1"]
    );
    assert!(store.throttle_delete("a:b").await.unwrap());
    assert!(!store.throttle_delete("a:b").await.unwrap());
    assert!(store
        .throttle_get("a:b", at(1_000))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        keys(store.throttle_list(at(1_000)).await.unwrap()),
        ["i:1.1.1.1", "p:b|1.1.1.1"]
    );
    // Closed windows are not listed (time only moves forward here: stores may sweep them).
    assert!(store.throttle_list(at(60_000)).await.unwrap().is_empty());
}

pub async fn throttle_get_many_answers_as_single_gets_in_order<S: ThrottleStore>(store: S) {
    let (w, long) = (secs(60), secs(3600));
    store.throttle_hit("p:m|1.1.1.1", at(0), w).await.unwrap();
    store.throttle_hit("p:m|1.1.1.1", at(10), w).await.unwrap();
    store.throttle_hit("a:m", at(0), long).await.unwrap();
    store
        .throttle_hit("i:1.1.1.1", at(0), secs(1))
        .await
        .unwrap();
    assert!(store
        .throttle_get_many(&[], at(100))
        .await
        .unwrap()
        .is_empty());
    let keys = ["a:m", "i:nobody", "p:m|1.1.1.1", "i:1.1.1.1", "a:m"];
    for now in [at(100), at(5_000), at(70_000), at(4_000_000)] {
        let many = store.throttle_get_many(&keys, now).await.unwrap();
        let mut single = Vec::new();
        for k in keys {
            single.push(store.throttle_get(k, now).await.unwrap());
        }
        assert_eq!(many, single, "at {now:?}");
    }
    let at_100 = store.throttle_get_many(&keys, at(100)).await.unwrap();
    assert_eq!(at_100[0].map(|r| r.count), Some(1));
    assert_eq!(at_100[1], None, "unknown key");
    assert_eq!(at_100[2].map(|r| r.count), Some(2));
    assert_eq!(at_100[3].map(|r| r.count), Some(1));
    assert_eq!(at_100[4], at_100[0], "a key asked twice answers twice");
    let at_5000 = store.throttle_get_many(&keys, at(5_000)).await.unwrap();
    assert_eq!(at_5000[3], None, "a closed window is no counter");
}

pub async fn throttle_changes_apply_in_order_as_single_calls_would<S: ThrottleStore>(store: S) {
    use sessiond_core::ThrottleChange::{Delete, Hit};
    let (w, long) = (secs(60), secs(3600));
    store.throttle_hit("p:d|1.1.1.1", at(0), w).await.unwrap();
    store.throttle_hit("df:dev", at(0), w).await.unwrap();
    store
        .throttle_apply(
            &[
                Delete { key: "p:d|1.1.1.1" },
                Delete { key: "df:dev" },
                Delete { key: "never-there" },
                Hit {
                    key: "dv:dev|d",
                    window: long,
                },
                Hit {
                    key: "a:d",
                    window: long,
                },
                Hit {
                    key: "a:d",
                    window: long,
                },
            ],
            at(1_000),
        )
        .await
        .unwrap();
    let get = |k: &'static str| {
        let s = &store;
        async move { s.throttle_get(k, at(2_000)).await.unwrap() }
    };
    assert!(get("p:d|1.1.1.1").await.is_none());
    assert!(get("df:dev").await.is_none());
    let dv = get("dv:dev|d").await.unwrap();
    assert_eq!((dv.count, dv.expires_at), (1, at(3_601_000)));
    // Two hits in one call count twice, the window from the first.
    let a = get("a:d").await.unwrap();
    assert_eq!(
        (a.count, a.last_at, a.expires_at),
        (2, at(1_000), at(3_601_000))
    );
    // A hit on a counter whose window is over starts it again.
    store
        .throttle_apply(
            &[Hit {
                key: "a:d",
                window: w,
            }],
            at(3_601_000),
        )
        .await
        .unwrap();
    let a = store
        .throttle_get("a:d", at(3_601_001))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.count, a.expires_at), (1, at(3_661_000)));
    store.throttle_apply(&[], at(3_601_000)).await.unwrap();
}

pub async fn throttle_hits_are_atomic_across_concurrent_callers<S: ThrottleStore>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = Arc::clone(&store);
            tokio::spawn(async move { s.throttle_hit("a:carol", at(i), secs(3600)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store
            .throttle_get("a:carol", at(100))
            .await
            .unwrap()
            .unwrap()
            .count,
        20
    );
}

pub async fn throttle_reserve_compares_then_applies<S: ThrottleStore>(store: S) {
    use sessiond_core::ThrottleChange::{Delete, Hit, Refund};
    use sessiond_core::ThrottleExpect::{Below, Exactly};
    let w = secs(900);
    let first = store.throttle_hit("p:e|1.1.1.1", at(0), w).await.unwrap();
    // A stale expectation (the counter moved on): nothing applied.
    let stale = store
        .throttle_reserve(
            &[("p:e|1.1.1.1", Exactly(None)), ("i:1.1.1.1", Exactly(None))],
            &[
                Hit {
                    key: "p:e|1.1.1.1",
                    window: w,
                },
                Hit {
                    key: "i:1.1.1.1",
                    window: w,
                },
            ],
            at(1_000),
        )
        .await
        .unwrap();
    assert!(!stale, "an expectation that no longer holds must refuse");
    assert_eq!(
        store.throttle_get("p:e|1.1.1.1", at(1_000)).await.unwrap(),
        Some(first)
    );
    assert_eq!(
        store.throttle_get("i:1.1.1.1", at(1_000)).await.unwrap(),
        None
    );
    // The current state: applied, in order.
    let ok = store
        .throttle_reserve(
            &[
                ("p:e|1.1.1.1", Exactly(Some(first))),
                ("i:1.1.1.1", Below(1)),
            ],
            &[
                Hit {
                    key: "p:e|1.1.1.1",
                    window: w,
                },
                Hit {
                    key: "i:1.1.1.1",
                    window: w,
                },
                Hit {
                    key: "i:1.1.1.1",
                    window: w,
                },
            ],
            at(1_000),
        )
        .await
        .unwrap();
    assert!(ok);
    let pair = store
        .throttle_get("p:e|1.1.1.1", at(1_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((pair.count, pair.last_at), (2, at(1_000)));
    // "Below n" holds for any live count under n, absent counters included.
    assert!(!store
        .throttle_reserve(&[("p:e|1.1.1.1", Below(2))], &[], at(1_000))
        .await
        .unwrap());
    assert!(store
        .throttle_reserve(
            &[("p:e|1.1.1.1", Below(3)), ("never-there", Below(1))],
            &[],
            at(1_000)
        )
        .await
        .unwrap());
    assert_eq!(
        store
            .throttle_get("i:1.1.1.1", at(1_000))
            .await
            .unwrap()
            .map(|r| r.count),
        Some(2)
    );
    // Refunds: one event back, window kept; a counter at one is removed; a missing one is
    // left alone.
    store
        .throttle_apply(
            &[
                Refund { key: "p:e|1.1.1.1" },
                Refund { key: "i:1.1.1.1" },
                Refund { key: "i:1.1.1.1" },
                Refund { key: "never-there" },
                Delete { key: "never-there" },
            ],
            at(2_000),
        )
        .await
        .unwrap();
    let pair = store
        .throttle_get("p:e|1.1.1.1", at(2_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((pair.count, pair.expires_at), (1, at(900_000)));
    assert_eq!(
        store.throttle_get("i:1.1.1.1", at(2_000)).await.unwrap(),
        None
    );
    assert_eq!(
        store.throttle_get("never-there", at(2_000)).await.unwrap(),
        None
    );
    // A counter whose window is over reads as absent.
    assert!(!store
        .throttle_reserve(&[("p:e|1.1.1.1", Exactly(Some(pair)))], &[], at(900_000))
        .await
        .unwrap());
    assert!(store
        .throttle_reserve(&[("p:e|1.1.1.1", Exactly(None))], &[], at(900_000))
        .await
        .unwrap());
}

/// The throttle's use of [`ThrottleStore::throttle_reserve`] under a burst: many callers read
/// the same counters, decide "under the limit", and try to reserve at once. Exactly the limit
/// may get through, however the burst interleaves (a check followed by a separate count
/// would let the whole burst through).
pub async fn throttle_reservations_admit_at_most_the_limit_in_a_burst<S: ThrottleStore>(store: S) {
    use sessiond_core::ThrottleChange::Hit;
    const LIMIT: u64 = 5;
    let store = Arc::new(store);
    let start = Arc::new(tokio::sync::Barrier::new(30));
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (s, start) = (Arc::clone(&store), Arc::clone(&start));
            tokio::spawn(async move {
                let keys = ["p:burst|9.9.9.9", "a:burst"];
                let now = at(1_000);
                start.wait().await;
                for _ in 0..1_000 {
                    let seen = s.throttle_get_many(&keys, now).await.unwrap();
                    if seen[0].is_some_and(|r| r.count >= LIMIT) {
                        return false; // refused: the limit is reached
                    }
                    // As the throttle does: below a threshold, "still below it".
                    let expected = [
                        (keys[0], sessiond_core::ThrottleExpect::Below(LIMIT)),
                        (keys[1], sessiond_core::ThrottleExpect::Below(100)),
                    ];
                    let changes = keys.map(|key| Hit {
                        key,
                        window: secs(900),
                    });
                    if s.throttle_reserve(&expected, &changes, now).await.unwrap() {
                        return true;
                    }
                    // Lost the race: read again. Jitter so the burst spreads out.
                    tokio::time::sleep(Duration::from_millis((i % 3) as u64)).await;
                }
                panic!("a reservation never went through");
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += u64::from(t.await.unwrap());
    }
    assert_eq!(
        admitted, LIMIT,
        "of a burst of 30, exactly the limit gets through"
    );
    let counts = store
        .throttle_get_many(&["p:burst|9.9.9.9", "a:burst"], at(1_000))
        .await
        .unwrap();
    assert_eq!(counts[0].map(|r| r.count), Some(LIMIT));
    assert_eq!(counts[1].map(|r| r.count), Some(LIMIT), "all or nothing");
}
