//! [`UserStore`] behaviours.

use std::sync::Arc;

use sessiond_core::{Group, NewUser, StoreError, UserId, UserStore, Username};

use crate::sessions::T0;

fn groups(names: &[&str]) -> Vec<Group> {
    names.iter().map(|g| Group::parse(g).unwrap()).collect()
}

pub fn new_user(name: &str) -> NewUser {
    NewUser {
        username: Username::parse(name).unwrap(),
        name: format!("{name} Example"),
        email: format!("{}@example.com", name.to_ascii_lowercase()),
        groups: groups(&["dev", "ops"]),
        admin: false,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        created_at: T0,
    }
}

pub async fn create_and_find_case_insensitively<S: UserStore>(store: S) {
    let mut nu = new_user("Alice");
    nu.admin = true;
    let alice = store.create_user(&nu).await.unwrap();
    assert_eq!(alice.username.as_str(), "Alice");
    assert_eq!(alice.groups, groups(&["dev", "ops"]));
    assert!(alice.admin);
    assert!(!alice.disabled);
    assert_eq!(alice.created_at, T0);

    for spelling in ["alice", "ALICE", "Alice"] {
        let found = store
            .user_by_name(&Username::parse(spelling).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.user, alice);
        assert_eq!(found.password_hash, nu.password_hash);
    }
    assert_eq!(
        store.user_by_id(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert!(store
        .user_by_name(&Username::parse("bob").unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(store
        .user_by_id(UserId(alice.id.0 + 1000))
        .await
        .unwrap()
        .is_none());

    // Groups come back byte for byte, spaces and non-ASCII included.
    let mut nd = new_user("dora");
    nd.groups = groups(&["Site Admins", "équipe/ops"]);
    let dora = store.create_user(&nd).await.unwrap();
    assert_eq!(dora.groups, nd.groups);
    assert_eq!(
        store.user_by_id(dora.id).await.unwrap().unwrap().groups,
        nd.groups
    );

    // Empty groups round-trip as empty, not as [""].
    let mut nb = new_user("bob");
    nb.groups.clear();
    let bob = store.create_user(&nb).await.unwrap();
    assert!(store
        .user_by_id(bob.id)
        .await
        .unwrap()
        .unwrap()
        .groups
        .is_empty());
    assert_ne!(bob.id, alice.id);
}

pub async fn duplicate_username_is_a_conflict_whatever_the_case<S: UserStore>(store: S) {
    store.create_user(&new_user("carol")).await.unwrap();
    assert!(matches!(
        store.create_user(&new_user("CAROL")).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}

pub async fn first_user_is_created_once_under_a_race<S: UserStore>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = Arc::clone(&store);
            tokio::spawn(async move {
                s.create_user_if_none(&new_user(&format!("admin{i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(created, 1);
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    assert!(store
        .create_user_if_none(&new_user("late"))
        .await
        .unwrap()
        .is_none());
}

pub async fn password_disable_and_delete<S: UserStore>(store: S) {
    let dave = store.create_user(&new_user("dave")).await.unwrap();
    let name = dave.username.clone();
    assert!(store
        .set_password_hash(dave.id, "$argon2id$new")
        .await
        .unwrap());
    assert_eq!(
        store
            .user_by_name(&name)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "$argon2id$new"
    );

    assert!(store.set_disabled(dave.id, true).await.unwrap());
    assert!(store.user_by_id(dave.id).await.unwrap().unwrap().disabled);
    assert!(
        store
            .user_by_name(&name)
            .await
            .unwrap()
            .unwrap()
            .user
            .disabled
    );
    assert!(store.set_disabled(dave.id, false).await.unwrap());
    assert!(!store.user_by_id(dave.id).await.unwrap().unwrap().disabled);

    assert!(store.delete_user(dave.id).await.unwrap());
    assert!(store.user_by_id(dave.id).await.unwrap().is_none());
    assert!(store.user_by_name(&name).await.unwrap().is_none());
    assert!(!store.delete_user(dave.id).await.unwrap());
    assert!(!store.set_disabled(dave.id, true).await.unwrap());
    assert!(!store.set_password_hash(dave.id, "x").await.unwrap());
    // The name is free again.
    store.create_user(&new_user("Dave")).await.unwrap();
}

/// `set_password_hash_if` writes only over the hash that was verified: a change in flight
/// (current password checked against the old hash) can never overwrite a reset that landed
/// meanwhile, and of racing changes from one hash exactly one wins.
pub async fn password_compare_and_set_never_undoes_a_reset<S: UserStore>(store: S) {
    let erin = store.create_user(&new_user("erin")).await.unwrap();
    let name = erin.username.clone();
    let hash = |store: &Arc<S>| {
        let (store, name) = (Arc::clone(store), name.clone());
        async move {
            store
                .user_by_name(&name)
                .await
                .unwrap()
                .unwrap()
                .password_hash
        }
    };
    let store = Arc::new(store);
    let verified = hash(&store).await;
    // The admin's reset lands between the user's verification and write.
    assert!(store
        .set_password_hash(erin.id, "$admin$reset")
        .await
        .unwrap());
    assert!(!store
        .set_password_hash_if(erin.id, &verified, "$attacker$choice")
        .await
        .unwrap());
    assert_eq!(hash(&store).await, "$admin$reset");
    // Over the current hash it writes.
    assert!(store
        .set_password_hash_if(erin.id, "$admin$reset", "$user$new")
        .await
        .unwrap());
    assert_eq!(hash(&store).await, "$user$new");
    // Unknown user: false.
    assert!(!store
        .set_password_hash_if(UserId(erin.id.0 + 1000), "$user$new", "x")
        .await
        .unwrap());
    // Racing writers from the same verified hash: exactly one wins, and the stored hash is
    // the winner's.
    for round in 0..10 {
        let from = hash(&store).await;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (s, from) = (Arc::clone(&store), from.clone());
                tokio::spawn(async move {
                    let to = format!("$r{round}$w{i}");
                    s.set_password_hash_if(erin.id, &from, &to)
                        .await
                        .unwrap()
                        .then_some(to)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(hash(&store).await, winners[0]);
    }
}

pub async fn list_users_sorted_by_name<S: UserStore>(store: S) {
    for n in ["zoe", "Bob", "alice"] {
        store.create_user(&new_user(n)).await.unwrap();
    }
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username.as_str().to_owned())
        .collect();
    assert_eq!(names, ["alice", "Bob", "zoe"]);
}
