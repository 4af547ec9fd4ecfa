//! The identity headers forward auth answers with (`Remote-User`, `Remote-Groups`,
//! `Remote-Email`, `Remote-Name`), and their memo by user object.

use std::cell::RefCell;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use sessiond_core::{User, UserId};

use sessiond_core::Memo;

/// Every header of a `200` answer for `user` (`None`: a bypass, identity headers empty):
/// `Cache-Control: no-store`, the identity headers, and the `nosniff` the guard sets on
/// every answer (present already, the guard's insert replaces it in place rather than
/// growing the map).
pub(crate) fn answer_headers(user: Option<&User>) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in IDENTITY_HEADERS.iter().zip(identity_values(user)) {
        h.insert(name, value);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h
}

static IDENTITY_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("remote-user"),
    HeaderName::from_static("remote-groups"),
    HeaderName::from_static("remote-email"),
    HeaderName::from_static("remote-name"),
];

/// The values of [`IDENTITY_HEADERS`] for `user` (all empty for none).
fn identity_values(user: Option<&User>) -> [HeaderValue; 4] {
    match user {
        Some(u) => [
            header_value(u.username.as_str()),
            header_value(&u.groups.join(",")),
            header_value(&u.email),
            header_value(&u.name),
        ],
        None => std::array::from_fn(|_| HeaderValue::from_static("")),
    }
}

/// Answer headers by user ([`answer_headers`]), built once per user *object*: an entry is
/// used only for the very `Arc<User>` it was built from (`Arc::ptr_eq`), and the user cache
/// hands out a new one whenever the user may have changed, so a stale name or group list is
/// never sent. On the hot path this saves a `join`, four copies and five inserts per request.
/// Bounded: emptied when full.
#[derive(Debug)]
pub(crate) struct IdentityCache(Memo<UserId, (Arc<User>, Arc<HeaderMap>)>);

impl Default for IdentityCache {
    fn default() -> Self {
        Self(Memo::new(50_000))
    }
}

thread_local! {
    /// The last user object a thread answered for, and its headers: the same user asking
    /// again (one person's browser loading a page and its assets) is answered by comparing a
    /// pointer, without hashing the id or taking the memo's lock (docs/performance.md,
    /// "Forward auth in instructions"). The same rule as the memo's: used only for the very
    /// object it was built from, which it holds, so its address cannot be reused meanwhile.
    /// The headers depend on the user alone, so any memo may answer from it.
    static LAST: RefCell<Option<(Arc<User>, Arc<HeaderMap>)>> = const { RefCell::new(None) };
}

impl IdentityCache {
    pub(crate) fn of(&self, user: &Arc<User>) -> Arc<HeaderMap> {
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((u, values)) = &*last {
                if Arc::ptr_eq(u, user) {
                    return Arc::clone(values);
                }
            }
            let values = self.of_memo(user);
            *last = Some((Arc::clone(user), Arc::clone(&values)));
            values
        })
    }

    fn of_memo(&self, user: &Arc<User>) -> Arc<HeaderMap> {
        let hit = self.0.get(&user.id, |(u, values)| {
            Arc::ptr_eq(u, user).then(|| Arc::clone(values))
        });
        if let Some(values) = hit {
            return values;
        }
        let values = Arc::new(answer_headers(Some(user)));
        self.0
            .insert(user.id, (Arc::clone(user), Arc::clone(&values)));
        values
    }
}

/// Display names and emails come from admins and may hold anything; a header carries them
/// with control characters replaced (never a header-splitting newline).
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let clean: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static(""))
    })
}

#[cfg(test)]
mod tests {
    use sessiond_core::{Group, Timestamp, Username};

    use super::*;

    fn user(name: &str, groups: &[&str]) -> Arc<User> {
        Arc::new(User {
            id: UserId(7),
            username: Username::parse("alice").unwrap(),
            name: name.into(),
            email: "a@example.com".into(),
            groups: groups.iter().map(|g| Group::parse(g).unwrap()).collect(),
            admin: false,
            disabled: false,
            created_at: Timestamp::from_millis(0),
        })
    }

    #[test]
    fn identity_headers_follow_the_user_object_they_were_built_from() {
        let cache = IdentityCache::default();
        let a = user("Alice\nInjected: 1", &["dev", "ops"]);
        let first = cache.of(&a);
        assert_eq!(first["remote-user"], "alice");
        assert_eq!(first["remote-groups"], "dev,ops");
        assert_eq!(first["remote-email"], "a@example.com");
        // Control characters never reach a header.
        assert_eq!(first["remote-name"], "Alice Injected: 1");
        assert_eq!(first[header::CACHE_CONTROL], "no-store");
        assert_eq!(first.len(), 6, "cache-control, four identities, nosniff");
        assert!(Arc::ptr_eq(&first, &cache.of(&a)), "same object: reused");
        // The same user reloaded (a new object), now in other groups: rebuilt.
        let b = user("Alice", &["ops"]);
        let second = cache.of(&b);
        assert_eq!(second["remote-groups"], "ops");
        assert_eq!(second["remote-name"], "Alice");
        assert!(!Arc::ptr_eq(&first, &second));
        // The first object again, right after the second (the thread's last answer is the
        // second's): its own headers, never the last ones.
        let again = cache.of(&a);
        assert_eq!(again["remote-groups"], "dev,ops");
        assert_eq!(again["remote-name"], "Alice Injected: 1");
        // Another memo on the same thread answers the same for the same object (the headers
        // depend on the user alone).
        let other = IdentityCache::default().of(&b);
        assert_eq!(*other, *second);
        assert_eq!(
            identity_values(None),
            std::array::from_fn(|_| HeaderValue::from_static(""))
        );
    }
}
