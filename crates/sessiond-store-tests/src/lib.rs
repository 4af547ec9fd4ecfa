//! # sessiond-store-tests
//!
//! The store contract, executable. Each behaviour of [`SessionStore`], [`ThrottleStore`] and
//! [`UserStore`] is one async function here, written once; a store crate runs all of them
//! against its real backend with one macro line in its tests:
//!
//! ```ignore
//! sessiond_store_tests::conformance_tests!(async { MyStore::connect(...).await.unwrap() });
//! ```
//!
//! A store that holds only sessions and counters (Redis) uses [`session_store_tests!`] and
//! [`throttle_store_tests!`]; one that holds only users would use [`user_store_tests!`]. The
//! calling crate needs `tokio` as a dev-dependency.
//!
//! [`SessionStore`]: sessiond_core::SessionStore
//! [`ThrottleStore`]: sessiond_core::ThrottleStore
//! [`UserStore`]: sessiond_core::UserStore

pub mod services;
pub mod sessions;
pub mod throttle;
pub mod users;

#[doc(hidden)]
pub use tokio as __tokio;

/// The session behaviours, listed once: hands `callback!` its prefix tokens followed by every
/// behaviour's name (used by [`session_store_tests!`] and [`run_session_suite`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __session_behaviours {
    ($($cb:ident)::+ { $($pre:tt)* }) => {
        $($cb)::+!($($pre)*
            create_then_load_round_trips,
            load_of_unknown_hash_is_none,
            duplicate_hash_is_a_conflict,
            touch_records_activity_and_never_goes_back,
            touch_after_delete_does_not_resurrect,
            delete_reports_whether_it_existed,
            rotate_swaps_old_for_new,
            rotate_when_old_is_gone_inserts_nothing,
            rotate_racing_with_revocation_never_revives,
            delete_oldest_for_user_keeps_the_newest,
            list_page_returns_each_session_once,
            list_for_user_is_per_user_and_oldest_first,
            delete_by_id_respects_the_owner,
            delete_for_user_can_keep_one,
            delete_all_empties_the_store,
            purge_removes_only_expired_in_bounded_batches,
            racing_touches_never_undo_a_delete,
            data_round_trips_and_goes_with_the_session,
            rotation_starts_with_empty_data,
            every_early_end_of_a_session_changes_the_generation,
            ping_answers,
        );
    };
}

/// The throttle behaviours, listed once (as [`__session_behaviours!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __throttle_behaviours {
    ($($cb:ident)::+ { $($pre:tt)* }) => {
        $($cb)::+!($($pre)*
            throttle_counters_count_within_a_window,
            throttle_counters_list_and_delete,
            throttle_get_many_answers_as_single_gets_in_order,
            throttle_changes_apply_in_order_as_single_calls_would,
            throttle_hits_are_atomic_across_concurrent_callers,
            throttle_reserve_compares_then_applies,
            throttle_reservations_admit_at_most_the_limit_in_a_burst,
        );
    };
}

/// Runs every session behaviour in turn, each on a fresh store from `make`: for a backend
/// that one test must set up and tear down around the whole suite (a Redis Cluster started
/// for the test).
pub async fn run_session_suite<S, F, Fut>(make: F)
where
    S: sessiond_core::SessionStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    macro_rules! each {
        ($($name:ident),* $(,)?) => {
            $(
                eprintln!("conformance: {}", stringify!($name));
                sessions::$name(make().await).await;
            )*
        };
    }
    crate::__session_behaviours!(each {});
}

/// [`run_session_suite`] for the throttle behaviours.
pub async fn run_throttle_suite<S, F, Fut>(make: F)
where
    S: sessiond_core::ThrottleStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    macro_rules! each {
        ($($name:ident),* $(,)?) => {
            $(
                eprintln!("conformance: {}", stringify!($name));
                throttle::$name(make().await).await;
            )*
        };
    }
    crate::__throttle_behaviours!(each {});
}

/// Whether a missing service (PostgreSQL, Redis, a browser) fails the run
/// (`SESSIOND_REQUIRE_SERVICES=1`, as in CI) instead of skipping with a notice.
pub fn services_required() -> bool {
    std::env::var("SESSIOND_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// For store factories that need a running service: `Ok(store)` passes through; an error
/// skips the test with a printed notice, or fails it when [`services_required`].
pub fn service_or_skip<S, E: std::fmt::Display>(service: &str, made: Result<S, E>) -> Option<S> {
    match made {
        Ok(s) => Some(s),
        Err(e) if services_required() => {
            panic!("{service} is required (SESSIOND_REQUIRE_SERVICES=1) but unavailable: {e}")
        }
        Err(e) => {
            eprintln!("SKIP: {service} unavailable: {e}");
            None
        }
    }
}

/// Runs the session and the user suites against the store built by `$make` (an async block
/// giving the store). With `optional`, the block gives an `Option` of a store (see
/// [`service_or_skip`]) and `None` skips.
#[macro_export]
macro_rules! conformance_tests {
    (optional $make:expr) => {
        $crate::session_store_tests!(optional $make);
        $crate::throttle_store_tests!(optional $make);
        $crate::user_store_tests!(optional $make);
    };
    ($make:expr) => {
        $crate::session_store_tests!($make);
        $crate::throttle_store_tests!($make);
        $crate::user_store_tests!($make);
    };
}

/// Runs every [`sessiond_core::SessionStore`] behaviour against the store built by `$make`.
#[macro_export]
macro_rules! session_store_tests {
    (optional $make:expr) => {
        $crate::session_store_tests!(@ optional $make);
    };
    ($make:expr) => {
        $crate::session_store_tests!(@ plain $make);
    };
    (@ $kind:ident $make:expr) => {
        $crate::__session_behaviours!($crate::__gen { $kind sessions; $make; });
    };
}

/// Runs every [`sessiond_core::ThrottleStore`] behaviour against the store built by `$make`.
#[macro_export]
macro_rules! throttle_store_tests {
    (optional $make:expr) => {
        $crate::throttle_store_tests!(@ optional $make);
    };
    ($make:expr) => {
        $crate::throttle_store_tests!(@ plain $make);
    };
    (@ $kind:ident $make:expr) => {
        $crate::__throttle_behaviours!($crate::__gen { $kind throttle; $make; });
    };
}

/// Runs every [`sessiond_core::UserStore`] behaviour against the store built by `$make`.
#[macro_export]
macro_rules! user_store_tests {
    (optional $make:expr) => {
        $crate::user_store_tests!(@ optional $make);
    };
    ($make:expr) => {
        $crate::user_store_tests!(@ plain $make);
    };
    (@ $kind:ident $make:expr) => {
        $crate::__gen!($kind users; $make;
            create_and_find_case_insensitively,
            duplicate_username_is_a_conflict_whatever_the_case,
            first_user_is_created_once_under_a_race,
            password_disable_and_delete,
            password_compare_and_set_never_undoes_a_reset,
            list_users_sorted_by_name,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __gen {
    (plain $module:ident; $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $make.await;
                $crate::$module::$name(store).await;
            }
        )*
    };
    (optional $module:ident; $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(store) = $make.await else { return };
                $crate::$module::$name(store).await;
            }
        )*
    };
}
