//! [`FactorStore`] behaviours: second factors hang on users, so every behaviour takes a store
//! that is a [`UserStore`] too.

use std::future::Future;
use std::sync::Arc;

use sessiond_core::{
    FactorStore, FactorSummary, RecoveryHash, StoreError, StoredPasskey, Timestamp, TotpState,
    User, UserId, UserStore,
};

use crate::sessions::T0;
use crate::users::new_user;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0.as_millis() + ms)
}

/// Creates the user `name`.
// Helpers of a behaviour file are plain fns returning futures: `build.rs` takes every
// `async fn` here for a behaviour.
#[allow(clippy::manual_async_fn)]
fn user<'a, S: UserStore>(store: &'a S, name: &'a str) -> impl Future<Output = User> + 'a {
    async move { store.create_user(&new_user(name)).await.unwrap() }
}

/// A user id no store has handed out.
fn nobody(known: &User) -> UserId {
    UserId(known.id.0 + 1000)
}

/// A recovery code's hash, distinct per `n`.
fn code(n: u8) -> RecoveryHash {
    let mut h = [n; 32];
    h[0] = 0xc0;
    h
}

/// A passkey of `user` registered at `at(ms)`. Credential ids are binary, zero bytes included.
fn passkey(user: UserId, credential: &[u8], ms: i64) -> StoredPasskey {
    StoredPasskey {
        credential_id: credential.to_vec(),
        user_id: user,
        name: format!("Clé n°{}", credential.len()),
        data: format!(r#"{{"cred":{credential:?},"counter":0}}"#),
        created_at: at(ms),
        last_used_at: None,
    }
}

/// Sets up every kind of factor for `u`: an active TOTP secret (and a pending one), three
/// recovery codes, two passkeys.
#[allow(clippy::manual_async_fn)] // a plain fn, as `user` above
fn enroll<S: FactorStore>(store: &S, u: UserId, seed: u8) -> impl Future<Output = ()> + '_ {
    async move {
        assert!(store.totp_begin(u, &[seed, 1], at(0)).await.unwrap());
        assert!(store
            .totp_confirm(
                u,
                &[seed, 1],
                10,
                &[code(seed), code(seed + 1), code(seed + 2)]
            )
            .await
            .unwrap());
        assert!(store.totp_begin(u, &[seed, 2], at(1)).await.unwrap());
        for (i, cred) in [[seed, 0, 1], [seed, 0, 2]].iter().enumerate() {
            assert!(store
                .passkey_add(&passkey(u, cred, i as i64), 10)
                .await
                .unwrap());
        }
        assert_eq!(
            store.factor_summary(u).await.unwrap(),
            FactorSummary {
                totp: true,
                recovery_codes: 3,
                passkeys: 2
            }
        );
    }
}

pub async fn factors_of_an_unknown_or_new_user_are_none<S: UserStore + FactorStore>(store: S) {
    let ann = user(&store, "ann").await;
    for u in [ann.id, nobody(&ann)] {
        assert_eq!(
            store.factor_summary(u).await.unwrap(),
            FactorSummary::default()
        );
        assert!(!store.factor_summary(u).await.unwrap().any());
        assert_eq!(store.totp_state(u).await.unwrap(), None);
        assert!(store.passkeys_of(u).await.unwrap().is_empty());
        assert!(!store.totp_use_step(u, 1).await.unwrap());
        assert!(!store.totp_remove(u).await.unwrap());
        assert!(!store.recovery_use(u, &code(1)).await.unwrap());
        assert!(!store.totp_confirm(u, b"x", 1, &[]).await.unwrap());
        assert!(!store.factors_reset(u).await.unwrap());
        assert!(!store.passkey_update(u, b"cred", "{}", at(0)).await.unwrap());
        assert!(!store.passkey_remove(u, b"cred").await.unwrap());
    }
    assert_eq!(store.passkey_by_credential(b"cred").await.unwrap(), None);
    // Nothing is created for a user that does not exist.
    let ghost = nobody(&ann);
    assert!(!store.totp_begin(ghost, b"secret", at(0)).await.unwrap());
    assert!(!store.recovery_replace(ghost, &[code(1)]).await.unwrap());
    assert!(!store
        .passkey_add(&passkey(ghost, b"ghost", 0), 10)
        .await
        .unwrap());
    assert_eq!(store.totp_state(ghost).await.unwrap(), None);
    assert_eq!(
        store.factor_summary(ghost).await.unwrap(),
        FactorSummary::default()
    );
    assert_eq!(store.passkey_by_credential(b"ghost").await.unwrap(), None);
}

/// Setup hands out a pending secret; until it is confirmed, an active factor stays exactly as
/// it was (its secret and its last step), and confirming makes the pending one active.
pub async fn totp_begin_leaves_the_active_factor_until_confirmed<S: UserStore + FactorStore>(
    store: S,
) {
    let bea = user(&store, "bea").await.id;
    assert!(store.totp_begin(bea, b"first", at(5)).await.unwrap());
    assert_eq!(
        store.totp_state(bea).await.unwrap(),
        Some(TotpState {
            active: None,
            last_step: 0,
            pending: Some((b"first".to_vec(), at(5))),
        })
    );
    // Pending is not a factor.
    assert!(!store.factor_summary(bea).await.unwrap().totp);
    assert!(!store.totp_use_step(bea, 1).await.unwrap());

    assert!(store
        .totp_confirm(bea, b"first", 100, &[code(1)])
        .await
        .unwrap());
    let active = TotpState {
        active: Some(b"first".to_vec()),
        last_step: 100,
        pending: None,
    };
    assert_eq!(store.totp_state(bea).await.unwrap(), Some(active.clone()));
    assert!(store.factor_summary(bea).await.unwrap().totp);
    assert!(store.totp_use_step(bea, 101).await.unwrap());

    // A new setup, twice (the second replaces the first pending secret): the active factor
    // is untouched and keeps working.
    assert!(store.totp_begin(bea, b"second", at(6)).await.unwrap());
    assert!(store.totp_begin(bea, b"third", at(7)).await.unwrap());
    assert_eq!(
        store.totp_state(bea).await.unwrap(),
        Some(TotpState {
            active: Some(b"first".to_vec()),
            last_step: 101,
            pending: Some((b"third".to_vec(), at(7))),
        })
    );
    assert!(store.factor_summary(bea).await.unwrap().totp);
    assert!(store.totp_use_step(bea, 102).await.unwrap());

    assert!(store
        .totp_confirm(bea, b"third", 200, &[code(2)])
        .await
        .unwrap());
    assert_eq!(
        store.totp_state(bea).await.unwrap(),
        Some(TotpState {
            active: Some(b"third".to_vec()),
            last_step: 200,
            pending: None,
        })
    );
}

/// A confirmation of a pending secret that is no longer the pending one (another setup
/// replaced it, or another confirmation took it) fails and changes nothing at all.
pub async fn totp_confirm_of_a_stale_secret_changes_nothing<S: UserStore + FactorStore>(store: S) {
    let cy = user(&store, "cy").await.id;
    // Nothing pending.
    assert!(!store.totp_confirm(cy, b"s1", 50, &[code(9)]).await.unwrap());
    assert_eq!(store.totp_state(cy).await.unwrap(), None);

    assert!(store
        .recovery_replace(cy, &[code(1), code(2)])
        .await
        .unwrap());
    assert!(store.totp_begin(cy, b"s1", at(1)).await.unwrap());
    assert!(store.totp_begin(cy, b"s2", at(2)).await.unwrap());
    let before = store.totp_state(cy).await.unwrap();
    assert!(!store.totp_confirm(cy, b"s1", 50, &[code(9)]).await.unwrap());
    // A prefix or an extension of the pending secret is not it either.
    assert!(!store.totp_confirm(cy, b"s", 50, &[code(9)]).await.unwrap());
    assert!(!store
        .totp_confirm(cy, b"s2x", 50, &[code(9)])
        .await
        .unwrap());
    assert_eq!(store.totp_state(cy).await.unwrap(), before);
    assert_eq!(
        store.factor_summary(cy).await.unwrap(),
        FactorSummary {
            totp: false,
            recovery_codes: 2,
            passkeys: 0
        }
    );
    assert!(!store.recovery_use(cy, &code(9)).await.unwrap());

    // The current one confirms, once.
    assert!(store.totp_confirm(cy, b"s2", 50, &[code(3)]).await.unwrap());
    let after = store.totp_state(cy).await.unwrap();
    assert!(!store.totp_confirm(cy, b"s2", 60, &[code(4)]).await.unwrap());
    assert_eq!(store.totp_state(cy).await.unwrap(), after);
    assert!(!store.recovery_use(cy, &code(4)).await.unwrap());
    assert!(store.recovery_use(cy, &code(3)).await.unwrap());
}

/// Confirming replaces every recovery code (the old ones die) and records the confirming
/// code's step as used; a later re-enrolment starts from its own step.
pub async fn totp_confirm_replaces_recovery_codes_and_sets_the_step<S: UserStore + FactorStore>(
    store: S,
) {
    let dot = user(&store, "dot").await.id;
    assert!(store
        .recovery_replace(dot, &[code(1), code(2), code(3)])
        .await
        .unwrap());
    assert!(store.totp_begin(dot, b"k", at(0)).await.unwrap());
    assert!(store
        .totp_confirm(dot, b"k", 500, &[code(4), code(5)])
        .await
        .unwrap());
    assert_eq!(store.factor_summary(dot).await.unwrap().recovery_codes, 2);
    for old in [1, 2, 3] {
        assert!(!store.recovery_use(dot, &code(old)).await.unwrap());
    }
    assert!(store.recovery_use(dot, &code(4)).await.unwrap());
    // The confirming code's step is spent.
    assert!(!store.totp_use_step(dot, 500).await.unwrap());
    assert!(store.totp_use_step(dot, 501).await.unwrap());

    // Re-enrolment: a new secret, its own step, a new set of codes.
    assert!(store.totp_begin(dot, b"k2", at(1)).await.unwrap());
    assert!(store
        .totp_confirm(dot, b"k2", 300, &[code(6)])
        .await
        .unwrap());
    assert_eq!(store.totp_state(dot).await.unwrap().unwrap().last_step, 300);
    assert!(!store.recovery_use(dot, &code(5)).await.unwrap());
    assert_eq!(store.factor_summary(dot).await.unwrap().recovery_codes, 1);
    // An empty set is a valid set: no codes.
    assert!(store.totp_begin(dot, b"k3", at(2)).await.unwrap());
    assert!(store.totp_confirm(dot, b"k3", 301, &[]).await.unwrap());
    assert_eq!(store.factor_summary(dot).await.unwrap().recovery_codes, 0);
}

/// A code's time step is accepted once: never again, and no earlier step after it. Without
/// an active factor nothing is accepted.
pub async fn totp_use_step_accepts_each_step_once<S: UserStore + FactorStore>(store: S) {
    let eve = user(&store, "eve").await.id;
    let other = user(&store, "eli").await.id;
    assert!(!store.totp_use_step(eve, 11).await.unwrap());
    assert!(store.totp_begin(eve, b"k", at(0)).await.unwrap());
    assert!(!store.totp_use_step(eve, 11).await.unwrap(), "pending only");
    assert!(store.totp_confirm(eve, b"k", 10, &[]).await.unwrap());
    assert!(!store.totp_use_step(eve, 10).await.unwrap());
    assert!(!store.totp_use_step(eve, 9).await.unwrap());
    assert!(store.totp_use_step(eve, 11).await.unwrap());
    assert!(!store.totp_use_step(eve, 11).await.unwrap());
    assert!(!store.totp_use_step(eve, 10).await.unwrap());
    assert!(store.totp_use_step(eve, 13).await.unwrap());
    assert!(!store.totp_use_step(eve, 12).await.unwrap());
    assert_eq!(store.totp_state(eve).await.unwrap().unwrap().last_step, 13);
    // Another user's factor is another counter.
    assert!(store.totp_begin(other, b"o", at(0)).await.unwrap());
    assert!(store.totp_confirm(other, b"o", 1, &[]).await.unwrap());
    assert!(store.totp_use_step(other, 12).await.unwrap());
    assert_eq!(store.totp_state(eve).await.unwrap().unwrap().last_step, 13);

    // Removed: active and pending go, nothing is accepted.
    assert!(store.totp_begin(eve, b"next", at(1)).await.unwrap());
    assert!(store.totp_remove(eve).await.unwrap());
    assert_eq!(store.totp_state(eve).await.unwrap(), None);
    assert!(!store.totp_use_step(eve, 14).await.unwrap());
    assert!(!store.totp_remove(eve).await.unwrap());
    assert!(!store.factor_summary(eve).await.unwrap().totp);
    assert!(store.factor_summary(other).await.unwrap().totp);
}

/// One code sent by many requests at once (a replay racing the real login, or two
/// instances): exactly one is accepted.
pub async fn concurrent_uses_of_one_totp_step_have_one_winner<S: UserStore + FactorStore>(
    store: S,
) {
    const TASKS: usize = 8;
    let fay = user(&store, "fay").await.id;
    assert!(store.totp_begin(fay, b"k", at(0)).await.unwrap());
    assert!(store.totp_confirm(fay, b"k", 1, &[]).await.unwrap());
    let store = Arc::new(store);
    for round in 0..10 {
        let step = 100 + round;
        let start = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (s, start) = (Arc::clone(&store), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    s.totp_use_step(fay, step).await.unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1, "round {round}");
        assert_eq!(
            store.totp_state(fay).await.unwrap().unwrap().last_step,
            step
        );
    }
}

/// A recovery code works once, for its own user only.
pub async fn recovery_codes_are_spent_once<S: UserStore + FactorStore>(store: S) {
    let gus = user(&store, "gus").await.id;
    let hal = user(&store, "hal").await.id;
    assert!(store
        .recovery_replace(gus, &[code(1), code(2), code(3)])
        .await
        .unwrap());
    assert!(store.recovery_replace(hal, &[code(4)]).await.unwrap());
    assert!(store.recovery_use(gus, &code(1)).await.unwrap());
    assert!(!store.recovery_use(gus, &code(1)).await.unwrap());
    assert!(
        !store.recovery_use(gus, &code(4)).await.unwrap(),
        "hal's code"
    );
    assert!(!store.recovery_use(gus, &code(9)).await.unwrap());
    assert_eq!(store.factor_summary(gus).await.unwrap().recovery_codes, 2);
    assert_eq!(store.factor_summary(hal).await.unwrap().recovery_codes, 1);
    // Recovery codes alone are not an enrolled factor.
    assert!(!store.factor_summary(gus).await.unwrap().any());
    assert!(store.recovery_use(gus, &code(3)).await.unwrap());
    assert!(store.recovery_use(gus, &code(2)).await.unwrap());
    assert_eq!(store.factor_summary(gus).await.unwrap().recovery_codes, 0);
    assert!(store.recovery_use(hal, &code(4)).await.unwrap());
}

/// One recovery code sent by many requests at once: exactly one spends it.
pub async fn concurrent_uses_of_one_recovery_code_have_one_winner<S: UserStore + FactorStore>(
    store: S,
) {
    const TASKS: usize = 8;
    let ida = user(&store, "ida").await.id;
    let codes: Vec<RecoveryHash> = (0..10).map(code).collect();
    assert!(store.recovery_replace(ida, &codes).await.unwrap());
    let store = Arc::new(store);
    for (round, c) in codes.iter().enumerate() {
        let start = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (s, start, c) = (Arc::clone(&store), Arc::clone(&start), *c);
                tokio::spawn(async move {
                    start.wait().await;
                    s.recovery_use(ida, &c).await.unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1, "round {round}");
        assert_eq!(
            store.factor_summary(ida).await.unwrap().recovery_codes as usize,
            codes.len() - round - 1
        );
    }
}

/// A new set of recovery codes replaces the old one entirely.
pub async fn recovery_replace_kills_the_old_set<S: UserStore + FactorStore>(store: S) {
    let jo = user(&store, "jo").await.id;
    let kim = user(&store, "kim").await.id;
    assert!(store
        .recovery_replace(jo, &[code(1), code(2)])
        .await
        .unwrap());
    assert!(store.recovery_replace(kim, &[code(1)]).await.unwrap());
    assert!(store.recovery_replace(jo, &[code(3)]).await.unwrap());
    assert!(!store.recovery_use(jo, &code(1)).await.unwrap());
    assert!(!store.recovery_use(jo, &code(2)).await.unwrap());
    assert_eq!(store.factor_summary(jo).await.unwrap().recovery_codes, 1);
    assert!(store.recovery_use(jo, &code(3)).await.unwrap());
    // Another user's set is its own.
    assert!(store.recovery_use(kim, &code(1)).await.unwrap());
    // Replaced by nothing: no codes.
    assert!(store.recovery_replace(jo, &[code(4)]).await.unwrap());
    assert!(store.recovery_replace(jo, &[]).await.unwrap());
    assert_eq!(store.factor_summary(jo).await.unwrap().recovery_codes, 0);
    assert!(!store.recovery_use(jo, &code(4)).await.unwrap());
}

/// Passkeys: registered, listed oldest first, found by credential id whoever owns them,
/// updated and removed by their owner only.
pub async fn passkeys_add_list_find_update_remove<S: UserStore + FactorStore>(store: S) {
    let lea = user(&store, "lea").await.id;
    let max = user(&store, "max").await.id;
    let newer = passkey(lea, &[0, 1, 0, 255], 2_000);
    let older = passkey(lea, &[7; 64], 1_000);
    let maxs = passkey(max, b"max-key", 500);
    for k in [&newer, &older, &maxs] {
        assert!(store.passkey_add(k, 10).await.unwrap());
    }
    assert_eq!(
        store.passkeys_of(lea).await.unwrap(),
        vec![older.clone(), newer.clone()]
    );
    assert_eq!(store.passkeys_of(max).await.unwrap(), vec![maxs.clone()]);
    assert_eq!(
        store.factor_summary(lea).await.unwrap(),
        FactorSummary {
            totp: false,
            recovery_codes: 0,
            passkeys: 2
        }
    );
    assert!(store.factor_summary(lea).await.unwrap().any());
    assert_eq!(
        store
            .passkey_by_credential(&newer.credential_id)
            .await
            .unwrap(),
        Some(newer.clone())
    );
    assert_eq!(
        store.passkey_by_credential(b"max-key").await.unwrap(),
        Some(maxs.clone())
    );
    assert_eq!(store.passkey_by_credential(&[0, 1, 0]).await.unwrap(), None);

    // Update: the owner's, of that key only.
    assert!(!store
        .passkey_update(max, &newer.credential_id, "{\"stolen\":1}", at(9_000))
        .await
        .unwrap());
    assert!(store
        .passkey_update(lea, &newer.credential_id, "{\"counter\":7}", at(9_000))
        .await
        .unwrap());
    let updated = StoredPasskey {
        data: "{\"counter\":7}".into(),
        last_used_at: Some(at(9_000)),
        ..newer.clone()
    };
    assert_eq!(
        store
            .passkey_by_credential(&newer.credential_id)
            .await
            .unwrap(),
        Some(updated.clone())
    );
    assert_eq!(
        store.passkeys_of(lea).await.unwrap(),
        vec![older.clone(), updated.clone()]
    );

    // Remove: the owner's only.
    assert!(!store
        .passkey_remove(max, &older.credential_id)
        .await
        .unwrap());
    assert!(store
        .passkey_remove(lea, &older.credential_id)
        .await
        .unwrap());
    assert!(!store
        .passkey_remove(lea, &older.credential_id)
        .await
        .unwrap());
    assert_eq!(
        store
            .passkey_by_credential(&older.credential_id)
            .await
            .unwrap(),
        None
    );
    assert!(!store
        .passkey_update(lea, &older.credential_id, "{}", at(9_500))
        .await
        .unwrap());
    assert_eq!(store.passkeys_of(lea).await.unwrap(), vec![updated]);
    assert_eq!(store.passkeys_of(max).await.unwrap(), vec![maxs]);
}

/// A user holds at most `max_per_user` passkeys; a refused one is not stored, and other
/// users are not counted.
pub async fn passkeys_are_capped_per_user<S: UserStore + FactorStore>(store: S) {
    let ned = user(&store, "ned").await.id;
    let ola = user(&store, "ola").await.id;
    assert!(store.passkey_add(&passkey(ned, b"n1", 1), 2).await.unwrap());
    assert!(store.passkey_add(&passkey(ola, b"o1", 1), 2).await.unwrap());
    assert!(store.passkey_add(&passkey(ned, b"n2", 2), 2).await.unwrap());
    assert!(!store.passkey_add(&passkey(ned, b"n3", 3), 2).await.unwrap());
    assert_eq!(store.passkey_by_credential(b"n3").await.unwrap(), None);
    assert_eq!(store.passkeys_of(ned).await.unwrap().len(), 2);
    assert!(store.passkey_add(&passkey(ola, b"o2", 2), 2).await.unwrap());
    // A cap of zero refuses every passkey.
    let pia = user(&store, "pia").await.id;
    assert!(!store.passkey_add(&passkey(pia, b"p1", 1), 0).await.unwrap());
    // Room again after a removal.
    assert!(store.passkey_remove(ned, b"n1").await.unwrap());
    assert!(store.passkey_add(&passkey(ned, b"n3", 3), 2).await.unwrap());
    assert_eq!(store.factor_summary(ned).await.unwrap().passkeys, 2);
}

/// A credential id belongs to one passkey: registering it again, for anyone, is a conflict
/// and changes nothing.
pub async fn a_registered_credential_id_is_a_conflict<S: UserStore + FactorStore>(store: S) {
    let quinn = user(&store, "quinn").await.id;
    let rex = user(&store, "rex").await.id;
    let key = passkey(quinn, b"shared-id", 1);
    assert!(store.passkey_add(&key, 10).await.unwrap());
    for (owner, name) in [(quinn, "again"), (rex, "hijack")] {
        let mut again = passkey(owner, b"shared-id", 2);
        again.name = name.into();
        assert!(
            matches!(
                store.passkey_add(&again, 10).await,
                Err(StoreError::Conflict)
            ),
            "{name}"
        );
    }
    // Even when the user is at the cap, or unknown: the id is taken, whatever else holds.
    for owner in [quinn, UserId(rex.0 + 1000)] {
        assert!(matches!(
            store.passkey_add(&passkey(owner, b"shared-id", 3), 1).await,
            Err(StoreError::Conflict)
        ));
    }
    assert_eq!(
        store.passkey_by_credential(b"shared-id").await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.passkeys_of(quinn).await.unwrap(), vec![key]);
    assert!(store.passkeys_of(rex).await.unwrap().is_empty());
}

/// A reset removes every factor of the user (and only theirs), and finds nothing the second
/// time.
pub async fn factors_reset_removes_every_factor<S: UserStore + FactorStore>(store: S) {
    let sam = user(&store, "sam").await.id;
    let tia = user(&store, "tia").await.id;
    enroll(&store, sam, 10).await;
    enroll(&store, tia, 20).await;
    assert!(store.factors_reset(sam).await.unwrap());
    assert_eq!(
        store.factor_summary(sam).await.unwrap(),
        FactorSummary::default()
    );
    assert_eq!(store.totp_state(sam).await.unwrap(), None);
    assert!(store.passkeys_of(sam).await.unwrap().is_empty());
    assert_eq!(
        store.passkey_by_credential(&[10, 0, 1]).await.unwrap(),
        None
    );
    assert!(!store.recovery_use(sam, &code(10)).await.unwrap());
    assert!(!store.totp_use_step(sam, 11).await.unwrap());
    assert!(!store.factors_reset(sam).await.unwrap());
    // Each kind of factor alone counts as something to reset.
    assert!(store.recovery_replace(sam, &[code(1)]).await.unwrap());
    assert!(store.factors_reset(sam).await.unwrap());
    assert!(store.totp_begin(sam, b"pending", at(0)).await.unwrap());
    assert!(store.factors_reset(sam).await.unwrap());
    assert!(store
        .passkey_add(&passkey(sam, b"one", 0), 10)
        .await
        .unwrap());
    assert!(store.factors_reset(sam).await.unwrap());
    assert!(!store.factors_reset(sam).await.unwrap());
    // The other user's factors are untouched.
    assert_eq!(
        store.factor_summary(tia).await.unwrap(),
        FactorSummary {
            totp: true,
            recovery_codes: 3,
            passkeys: 2
        }
    );
    assert!(store.recovery_use(tia, &code(20)).await.unwrap());
}

/// Deleting a user deletes its factors: no passkey of a deleted user can sign anyone in.
pub async fn deleting_a_user_removes_its_factors<S: UserStore + FactorStore>(store: S) {
    let uma = user(&store, "uma").await.id;
    let vic = user(&store, "vic").await.id;
    enroll(&store, uma, 30).await;
    enroll(&store, vic, 40).await;
    assert!(store.delete_user(uma).await.unwrap());
    assert_eq!(
        store.passkey_by_credential(&[30, 0, 1]).await.unwrap(),
        None
    );
    assert_eq!(
        store.passkey_by_credential(&[30, 0, 2]).await.unwrap(),
        None
    );
    assert_eq!(
        store.factor_summary(uma).await.unwrap(),
        FactorSummary::default()
    );
    assert_eq!(store.totp_state(uma).await.unwrap(), None);
    assert!(store.passkeys_of(uma).await.unwrap().is_empty());
    assert!(!store.recovery_use(uma, &code(30)).await.unwrap());
    assert!(!store.factors_reset(uma).await.unwrap());
    // Its credential ids are free again.
    assert!(store
        .passkey_add(&passkey(vic, &[30, 0, 1], 5), 10)
        .await
        .unwrap());
    assert_eq!(store.factor_summary(vic).await.unwrap().passkeys, 3);
}
