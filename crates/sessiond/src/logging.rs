//! The text log's field format: every value a client could have chosen is quoted.
//!
//! tracing-subscriber's default text format prints `%` and `?` values as they are, so a
//! username typed as `alice ip=1.2.3.4` printed `user=alice ip=1.2.3.4 ip=…`: a planted field
//! in an audit line, and a typed newline a planted line. [`QuotedFields`]
//! writes any value that is not a plain token (letters, digits and `._-:/@+,[]()`) as a
//! Rust string literal: in quotes, with `"`, `\` and control characters escaped. A log
//! reader (logfmt, `grep 'user='`) then sees exactly one field per name, whatever the client
//! sent. The message itself is code's text: kept unquoted, control characters escaped.
//! (`SESSIOND_LOG_FORMAT=json` escapes by construction.)

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The field formatter of the text log (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct QuotedFields;

impl<'w> FormatFields<'w> for QuotedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{}", value.escape_debug())
        } else if is_plain(value) {
            write!(self.writer, "{sep}{}={value}", field.name())
        } else {
            write!(self.writer, "{sep}{}={value:?}", field.name())
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.write(field, &text);
    }
}

/// A value that reads as one token: nothing a reader could take for a separator, a quote or
/// another field.
fn is_plain(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@+,[]()".contains(&b))
}

/// The logfmt reader of the integration tests, shared.
#[cfg(test)]
#[path = "../tests/api/logfmt.rs"]
#[allow(unreachable_pub)] // `pub` for the integration tests that share the file
mod logfmt;

#[cfg(test)]
mod tests {
    use super::logfmt::field_names;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(emit: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .with_ansi(false)
            .fmt_fields(QuotedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn client_chosen_values_cannot_plant_fields_or_lines() {
        let typed = "alice ip=1.2.3.4";
        let ip = Some("198.51.100.7".to_owned());
        let out = logged(|| {
            tracing::info!(target: "sessiond::audit", event = "login_failed", user = %typed, ip = ?ip);
        });
        assert!(out.contains(r#"user="alice ip=1.2.3.4""#), "{out}");
        assert_eq!(
            field_names(out.trim_end()),
            ["event", "user", "ip"],
            "{out}"
        );
        assert!(out.contains(r#"ip="Some(\"198.51.100.7\")""#), "{out}");

        let out = logged(|| {
            tracing::info!(target: "sessiond::audit", event = "login", user = %"bob\nINFO sessiond::audit: event=\"login\" user=admin", session = %"s1");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains(r#"user="bob\nINFO"#), "{out}");
        assert_eq!(
            field_names(out.trim_end()),
            ["event", "user", "session"],
            "{out}"
        );

        // Plain values stay readable; the message is kept, its control characters escaped.
        let out = logged(|| {
            tracing::info!(target: "sessiond::audit", event = "revoke", user = %"carol", count = 3, "done\nforged");
        });
        assert!(
            out.contains("done\\nforged event=revoke user=carol count=3"),
            "{out}"
        );
    }
}
