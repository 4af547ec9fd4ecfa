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
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

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
            // A request's span records its id this way on every request: plain writes, no
            // `fmt` (docs/performance.md, "The request id").
            (self.writer.write_str(sep))
                .and_then(|()| self.writer.write_str(field.name()))
                .and_then(|()| self.writer.write_str("="))
                .and_then(|()| self.writer.write_str(value))
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

/// The JSON log (`SESSIOND_LOG_FORMAT=json`): one object a line, the event's fields at the
/// top level beside `timestamp`, `level` and `target`, and the fields of the spans it happened
/// in at the top level too (the request's `request_id`), so a log shipper finds them where it
/// finds the rest. An event's own field wins over a span field of the same name; an inner
/// span's over an outer one's. Every value is a JSON string, number or boolean, escaped by
/// construction.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        use serde_json::Value;
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = JsonVisitor(vec![
            ("timestamp".to_owned(), Value::String(timestamp)),
            (
                "level".to_owned(),
                Value::String(meta.level().as_str().to_owned()),
            ),
        ]);
        event.record(&mut fields);
        fields.push("target", Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            // Innermost first: the first value of a name is kept.
            for span in scope {
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                // Written by `JsonFields` (the field formatter this format is paired with).
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<Value>(&formatted.fields)
                {
                    for (name, value) in map {
                        fields.push_if_absent(name, value);
                    }
                }
            }
        }
        let map: serde_json::Map<String, Value> = fields.0.into_iter().collect();
        let line = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// An event's fields, in order, as JSON values.
struct JsonVisitor(Vec<(String, serde_json::Value)>);

impl JsonVisitor {
    fn push(&mut self, name: &str, value: serde_json::Value) {
        self.push_if_absent(name.to_owned(), value);
    }

    fn push_if_absent(&mut self, name: String, value: serde_json::Value) {
        if !self.0.iter().any(|(n, _)| *n == name) {
            self.0.push((name, value));
        }
    }
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field.name(), format!("{value:?}").into());
    }
}

/// A request's id (`request_id` in the logs, `X-Request-Id` on the answer): the one a trusted
/// proxy sent when it is [`sane`](RequestId::given), else one made here.
#[derive(Debug, Clone)]
pub(crate) enum RequestId {
    /// This process's prefix and a counter: unique without a system call per request.
    Made(u64),
    /// From a trusted proxy's `X-Request-Id`, checked by [`RequestId::given`].
    Given(axum::http::HeaderValue),
}

/// Longest `X-Request-Id` accepted from a proxy (a UUID is 36 characters; trace ids such as
/// AWS's `Root=1-…;Parent=…` fit easily).
pub(crate) const MAX_REQUEST_ID: usize = 128;

impl RequestId {
    /// A new id: 12 hex digits drawn once per process, then a counter.
    pub(crate) fn make() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self::Made(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// A proxy's id, when it is 1 to [`MAX_REQUEST_ID`] characters of letters, digits and
    /// `-_.:/+@=;`: never a space, quote, newline or anything else a log reader could take for
    /// a separator, so it cannot plant a field or a line, whatever the log format.
    pub(crate) fn given(value: &axum::http::HeaderValue) -> Option<Self> {
        let b = value.as_bytes();
        let sane = !b.is_empty()
            && b.len() <= MAX_REQUEST_ID
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+@=;".contains(c));
        sane.then(|| Self::Given(value.clone()))
    }

    /// The id as a header value. Every request makes one: written by hand, not through
    /// `fmt` (docs/performance.md, "The request id").
    pub(crate) fn header_value(&self) -> axum::http::HeaderValue {
        match self {
            Self::Given(v) => v.clone(),
            Self::Made(n) => {
                let mut buf = [0u8; MADE_MAX];
                let len = made(*n, &mut buf);
                axum::http::HeaderValue::from_bytes(&buf[..len])
                    .expect("hex digits are a valid header value")
            }
        }
    }
}

/// The longest made id: the prefix's 12 hex digits and a counter's 16.
const MADE_MAX: usize = 12 + 16;

/// Writes a made id into `buf`: the process's prefix, then the counter in lower-case hex,
/// at least 6 digits (`{prefix}{n:06x}`); returns its length.
fn made(n: u64, buf: &mut [u8; MADE_MAX]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = process_prefix().as_bytes();
    buf[..prefix.len()].copy_from_slice(prefix);
    let digits = ((64 - n.leading_zeros() as usize).div_ceil(4)).max(6);
    let end = prefix.len() + digits;
    for (i, b) in buf[prefix.len()..end].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        // Digits past the 16th do not occur: `digits` is at most 16.
        *b = HEX[((n >> shift) & 0xf) as usize];
    }
    end
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Made(n) => {
                let mut buf = [0u8; MADE_MAX];
                let len = made(*n, &mut buf);
                f.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
            }
            // Checked to be visible ASCII by `given`.
            Self::Given(v) => f.write_str(v.to_str().unwrap_or("-")),
        }
    }
}

/// 12 hex digits from the OS CSPRNG, drawn once: ids of two processes (instances, restarts)
/// do not collide. Not a secret: a request id only names a request.
fn process_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut raw = [0u8; 6];
        // Without the CSPRNG the counter alone still tells this process's requests apart.
        let _ = getrandom::fill(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    })
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

    #[test]
    fn json_lines_carry_span_fields_at_the_top_level() {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("request", request_id = "r-1", user = "span-user");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", request_id = "r-2");
            let _inner = inner.enter();
            tracing::info!(target: "sessiond::audit", event = "login", user = "bob\n{\"x\":1}", n = 3, ok = true);
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["request_id"], "r-2", "the innermost span wins: {line}");
        assert_eq!(
            line["user"], "bob\n{\"x\":1}",
            "the event's field wins: {line}"
        );
        assert_eq!(line["n"], 3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["event"], "login");
        assert_eq!(line["target"], "sessiond::audit");
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    }

    #[test]
    fn request_ids_from_proxies_are_bounded_plain_tokens() {
        use axum::http::HeaderValue;
        for ok in [
            "a",
            "0af7651916cd43dd8448eb211c80319c",
            "Root=1-5759e988-bd862e3f;Parent=53995c3f",
            "req_1.2:3/4+5@6",
        ] {
            let id = RequestId::given(&HeaderValue::from_static(ok)).expect(ok);
            assert_eq!(id.to_string(), ok);
        }
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        for bad in ["", "a b", "a\tb", "x\"y", "a,b", "{}", long.as_str()] {
            assert!(
                RequestId::given(&HeaderValue::from_str(bad).unwrap()).is_none(),
                "{bad:?}"
            );
        }
        assert!(RequestId::given(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
        let (a, b) = (RequestId::make().to_string(), RequestId::make().to_string());
        assert_ne!(a, b);
        assert!(
            a.len() >= 18 && a.bytes().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
        assert_eq!(a[..12], b[..12], "one prefix per process");
    }

    /// A made id is the prefix and the counter in hex, at least 6 digits, however large the
    /// counter: the hand-written digits read as `format!("{prefix}{n:06x}")` would.
    #[test]
    fn made_ids_are_the_prefix_and_the_counter_in_hex() {
        for n in [0, 1, 0xf, 0xabcdef, 0x100_0000, 0x1234_5678_9abc, u64::MAX] {
            let want = format!("{}{n:06x}", process_prefix());
            let id = RequestId::Made(n);
            assert_eq!(id.to_string(), want);
            assert_eq!(id.header_value().to_str().unwrap(), want);
        }
    }
}
