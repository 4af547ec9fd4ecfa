use std::fmt;

use crate::{Timestamp, ValidationError};

/// Database id of a user.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// A validated username: 1–64 ASCII letters, digits, `.`, `_`, `-` or `@`.
///
/// ASCII only on purpose: Unicode letters bring look-alikes (`аdmin` with a Cyrillic `а`) and
/// locale-dependent case folding, both of which break "unique, matched case-insensitively".
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    /// Checks `s` against the username rule (docs/reference/accounts.md).
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        // `.` and `..` are refused: they are path segments, and usernames end up in paths
        // (URLs like `/admin/users/{name}/…`, files an operator may name after a user).
        let ok = (1..=64).contains(&s.len())
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::Username)
        }
    }

    /// A name read back from a store: the rules of [`Username::parse`] except the refusal of
    /// `.` and `..`, so a database holding such a name from before that rule still lists
    /// and loads; such a user can no longer log in (logins parse what is typed) and an
    /// operator renames it in the database.
    pub fn from_stored(s: &str) -> Result<Self, ValidationError> {
        match s {
            "." | ".." => Ok(Self(s.to_owned())),
            _ => Self::parse(s),
        }
    }

    /// As the user typed it at creation.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form stores match and enforce uniqueness on.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({})", self.0)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated group name: 1–64 bytes, no control characters, no `,`, no whitespace at
/// either end. Groups are matched by exact bytes (access rules, `Remote-Groups`).
///
/// The rule is the one place that decides what a group may be: the admin page, the CLI and
/// the access rules of the configuration all parse with it, and stores parse what they read
/// (a stored group that breaks it is [`crate::StoreError::Corrupt`]). Commas are refused
/// because groups travel as comma-separated lists (`--groups a,b`, the admin form,
/// `Remote-Groups: a,b`); control characters because they would end up in headers and logs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Group(String);

impl Group {
    /// The longest group name, in bytes.
    pub const MAX_BYTES: usize = 64;

    /// Checks `s` against the group name rule.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let ok = (1..=Self::MAX_BYTES).contains(&s.len())
            && s.trim() == s
            && !s.chars().any(|c| c == ',' || c.is_control());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::Group(s.to_owned()))
        }
    }

    /// A comma-separated list as typed (the admin form, `--groups`): each entry trimmed,
    /// blank entries skipped, every other one parsed; the error names the first bad one.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, ValidationError> {
        s.split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(Self::parse)
            .collect()
    }

    /// The group name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// So a list of groups joins like strings (`groups.join(",")`).
impl std::borrow::Borrow<str> for Group {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group({:?})", self.0)
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plaintext password, 8 to 1,024 bytes of UTF-8. Redacted in `Debug`.
///
/// The upper bound is a cap, never a truncation: a longer input is refused, because silently
/// hashing a prefix would make two different passwords equal, and an unbounded input would let
/// one request buy unbounded hashing work.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// The shortest password a user may choose, in bytes.
    pub const MIN_BYTES: usize = 8;
    /// The longest password accepted anywhere, in bytes.
    pub const MAX_BYTES: usize = 1024;

    /// A password that a user is choosing: the length rules apply.
    pub fn new(s: String) -> Result<Self, ValidationError> {
        // NUL is valid UTF-8, but C-based tools (and some hashing front ends) stop at it: a
        // password "abc\0xyz" could end up checked as "abc". Refused everywhere.
        if s.contains('\0') {
            Err(ValidationError::PasswordNul)
        } else if s.len() < Self::MIN_BYTES {
            Err(ValidationError::PasswordTooShort)
        } else if s.len() > Self::MAX_BYTES {
            Err(ValidationError::PasswordTooLong)
        } else {
            Ok(Self(s))
        }
    }

    /// A password presented at login: only the cap applies (a short one simply won't match).
    pub fn presented(s: String) -> Result<Self, ValidationError> {
        if s.len() > Self::MAX_BYTES {
            Err(ValidationError::PasswordTooLong)
        } else if s.contains('\0') {
            Err(ValidationError::PasswordNul)
        } else {
            Ok(Self(s))
        }
    }

    /// The password itself, for hashing (never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A user as the rest of the system sees it (no password hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user's id (the key sessions are kept under).
    pub id: UserId,
    /// The login name (unique, case-insensitively).
    pub username: Username,
    /// The display name.
    pub name: String,
    /// The e-mail address (may be empty).
    pub email: String,
    /// Groups, for forward-auth rules.
    pub groups: Vec<Group>,
    /// Administers the server.
    pub admin: bool,
    /// May not log in; has no sessions.
    pub disabled: bool,
    /// When the user was created.
    pub created_at: Timestamp,
}

/// A user together with the PHC string of its password hash, for login only.
#[derive(Clone)]
pub struct UserCredentials {
    /// The user.
    pub user: User,
    /// The PHC string of the password hash (argon2id).
    pub password_hash: String,
}

impl fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What it takes to create a user.
#[derive(Clone)]
pub struct NewUser {
    /// The login name.
    pub username: Username,
    /// The display name.
    pub name: String,
    /// The e-mail address (may be empty).
    pub email: String,
    /// Groups, for forward-auth rules.
    pub groups: Vec<Group>,
    /// Administers the server.
    pub admin: bool,
    /// PHC string (argon2id).
    pub password_hash: String,
    /// When the user is created.
    pub created_at: Timestamp,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        for ok in ["a", "alice", "a.b_c-d@e", "ALICE", &"x".repeat(64)] {
            assert!(Username::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", " ", "a b", "a/b", "é", "аdmin", &"x".repeat(65), "a\0"] {
            assert_eq!(
                Username::parse(bad),
                Err(ValidationError::Username),
                "{bad:?}"
            );
        }
        assert_eq!(Username::parse("Alice").unwrap().key(), "alice");
    }

    /// `.` and `..` are path segments, not names; names that merely contain dots
    /// stay valid.
    #[test]
    fn dot_segments_are_not_usernames() {
        for bad in [".", ".."] {
            assert_eq!(
                Username::parse(bad),
                Err(ValidationError::Username),
                "{bad:?}"
            );
        }
        for ok in ["...", ".a", "a.", "a..b", ".alice"] {
            assert!(Username::parse(ok).is_ok(), "{ok:?}");
        }
        // Names stored before the rule still load.
        assert_eq!(Username::from_stored("..").unwrap().as_str(), "..");
        assert!(Username::from_stored("a/b").is_err());
    }

    #[test]
    fn group_rules() {
        for ok in [
            "ops",
            "a",
            "site admins",
            "dév",
            "x.y-z_@/",
            &"g".repeat(64),
        ] {
            assert_eq!(Group::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            " ",
            " ops",
            "ops ",
            "a,b",
            "a\tb",
            "a\nb",
            "a\0",
            &"g".repeat(65),
        ] {
            assert_eq!(
                Group::parse(bad),
                Err(ValidationError::Group(bad.to_owned())),
                "{bad:?}"
            );
        }
        // 64 bytes, not characters: the bound of the column and of a header value.
        assert!(Group::parse(&"é".repeat(33)).is_err());
        let list = Group::parse_list(" ops, dev ,,").unwrap();
        assert_eq!(list.join(","), "ops,dev");
        assert!(Group::parse_list("").unwrap().is_empty());
        assert_eq!(
            Group::parse_list("ops, a\u{1}b, x"),
            Err(ValidationError::Group("a\u{1}b".into()))
        );
    }

    #[test]
    fn password_rules() {
        assert_eq!(
            Password::new("short".into()).unwrap_err(),
            ValidationError::PasswordTooShort
        );
        assert!(Password::new("12345678".into()).is_ok());
        assert!(Password::new("é".repeat(512)).is_ok());
        assert_eq!(
            Password::new("x".repeat(1025)).unwrap_err(),
            ValidationError::PasswordTooLong
        );
        assert!(Password::presented("x".into()).is_ok());
        assert_eq!(
            Password::new("abcdefgh\0".into()).unwrap_err(),
            ValidationError::PasswordNul
        );
        assert_eq!(
            Password::presented("a\0".into()).unwrap_err(),
            ValidationError::PasswordNul
        );
        assert!(Password::presented("x".repeat(1025)).is_err());
        assert_eq!(
            format!("{:?}", Password::new("hunter2hunter2".into()).unwrap()),
            "Password(<redacted>)"
        );
    }
}
