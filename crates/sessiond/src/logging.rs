//! The text log's field format: every value a client could have chosen is quoted.
//!
//! tracing-subscriber's default text format prints `%` and `?` values as they are, so a
//! username typed as `alice ip=1.2.3.4` printed `user=alice ip=1.2.3.4 ip=…`: a planted field
//! in an audit line, and a typed newline a planted line. [`QuotedFields`]
//! writes any value that is not a plain token (letters, digits and `._-:/@+,[]()`) as a
//! Rust string literal: in quotes, with `"`, `\` and control characters escaped. A log
//! reader (logfmt, `grep 'user='`) then sees exactly one field per name, whatever the client
//! sent. The message itself is code's text: kept unquoted, control characters, `"` and `\`
//! escaped. (`SESSIOND_LOG_FORMAT=json` escapes by construction.)
//!
//! Also here: the lines' formats ([`Text`], [`FlatJson`]), which add the running request's
//! id from a task-local ([`in_request`]), and the request id itself ([`RequestId`]).

use std::fmt::{self, Write as _};
use std::future::Future;

use tokio::task::futures::TaskLocalFuture;
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
            // As `str::escape_debug` (control characters, so no planted line; `"` and `\`,
            // so a logfmt reader never sees a quoted value open in it) but for `'`, which
            // it escaped too ("the public URL\'s host") and which no reader gives a meaning.
            (self.writer.write_str(sep)).and_then(|()| {
                value.chars().try_for_each(|c| match c {
                    '\'' => self.writer.write_char(c),
                    c => write!(self.writer, "{}", c.escape_debug()),
                })
            })
        } else if is_plain(value) {
            // Plain writes, no `fmt`: most values are tokens (ids, event names).
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
/// in and the running request's `request_id` ([`in_request`]) at the top level too, so a log
/// shipper finds them where it finds the rest. An event's own field wins over a span field of
/// the same name; an inner span's over an outer one's, any span's over the request's id. Every value is a JSON string, number or boolean, escaped by
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
        // The request's id last: it stands for the outermost scope (the request), so an
        // event's or a span's own `request_id` wins, as the request's span did.
        with_request_id(|id| fields.push_if_absent("request_id".to_owned(), id.into()));
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

/// The text log's line: tracing-subscriber's default ("full") format, `{time} {level}
/// {spans}: {target}: {message} {fields}`, colours included when writing to a terminal,
/// with the running request's id (see [`in_request`]) as its outermost span,
/// `request{request_id=…}:`, as when every request had a tracing span of its own.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Text;

impl<S, N> FormatEvent<S, N> for Text
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
        let meta = event.metadata();
        // The escapes of tracing-subscriber's `nu-ansi-term` styles: dimmed, bold, a colour.
        let ansi = writer.has_ansi_escapes();
        let style = |code: &'static str| if ansi { code } else { "" };
        let (dim, bold, reset) = (style("\x1b[2m"), style("\x1b[1m"), style("\x1b[0m"));
        writer.write_str(dim)?;
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        let (colour, level) = match *meta.level() {
            tracing::Level::TRACE => ("\x1b[35m", "TRACE"),
            tracing::Level::DEBUG => ("\x1b[34m", "DEBUG"),
            tracing::Level::INFO => ("\x1b[32m", " INFO"),
            tracing::Level::WARN => ("\x1b[33m", " WARN"),
            tracing::Level::ERROR => ("\x1b[31m", "ERROR"),
        };
        write!(writer, "{reset} {}{level}{reset} ", style(colour))?;
        let mut spans = false;
        with_request_id(|id| {
            spans = true;
            write!(writer, "{bold}request{reset}{bold}{{{reset}")?;
            // As `QuotedFields` writes a field: a proxy's id may hold `=` or `;`.
            if is_plain(id) {
                write!(writer, "request_id={id}")?;
            } else {
                write!(writer, "request_id={id:?}")?;
            }
            write!(writer, "{bold}}}{reset}{dim}:{reset}")
        })
        .transpose()?;
        for span in ctx.event_scope().into_iter().flat_map(|s| s.from_root()) {
            spans = true;
            write!(writer, "{bold}{}{reset}", span.metadata().name())?;
            if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                if !fields.is_empty() {
                    write!(writer, "{bold}{{{reset}{fields}{bold}}}{reset}")?;
                }
            }
            write!(writer, "{dim}:{reset}")?;
        }
        if spans {
            writer.write_char(' ')?;
        }
        write!(writer, "{dim}{}{reset}{dim}:{reset} ", meta.target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

tokio::task_local! {
    /// The id of the request whose work the running task is doing: set around all of it by
    /// `routes/request_id.rs` ([`in_request`]), read by the log formats ([`Text`],
    /// [`FlatJson`]), so every line a request causes carries `request_id`. A task-local
    /// instead of a tracing span per request: making, entering, leaving and closing that span
    /// was the largest cost of `/healthz` beside the answer itself (docs/performance.md, "The
    /// request id"); this costs a thread-local swap per poll, and formats the id only for a
    /// line that is written. Like a span, it does not follow work into tasks the request
    /// spawns.
    static REQUEST_ID: RequestId;
}

/// Runs `work` as the request `id`'s: each log line it writes carries the id.
pub(crate) fn in_request<F: Future>(id: RequestId, work: F) -> TaskLocalFuture<RequestId, F> {
    REQUEST_ID.scope(id, work)
}

/// `f` of the running request's id as text, if a request is running.
fn with_request_id<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    REQUEST_ID.try_with(|id| id.with_text(f)).ok()
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

impl RequestId {
    /// `f` of the id as text, written on the stack.
    fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Self::Made(n) => {
                let mut buf = [0u8; MADE_MAX];
                let len = made(*n, &mut buf);
                f(std::str::from_utf8(&buf[..len]).unwrap_or("-"))
            }
            // Checked to be visible ASCII by `given`.
            Self::Given(v) => f(v.to_str().unwrap_or("-")),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| f.write_str(text))
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

    /// The text log as the server writes it.
    fn logged(emit: impl FnOnce()) -> String {
        logged_as(false, true, emit)
    }

    /// The text log: with colours or not, in our format ([`Text`]) or tracing-subscriber's
    /// default one, each with `QuotedFields`.
    fn logged_as(ansi: bool, ours: bool, emit: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let out = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .with_ansi(ansi)
            .with_max_level(tracing::Level::TRACE)
            .fmt_fields(QuotedFields);
        if ours {
            tracing::subscriber::with_default(builder.event_format(Text).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    /// Each line without its timestamp (everything up to its first `Z`, the end of the UTC
    /// time).
    fn untimed(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| l.split_once('Z').expect(l).1.to_owned())
            .collect()
    }

    /// The text format is tracing-subscriber's default one, colours and all, with the
    /// running request's id where the request's span used to print it: the same lines, byte
    /// for byte but the time, as when every request had a span `request{request_id=…}`.
    #[test]
    fn text_lines_read_as_with_a_span_per_request() {
        let events = || {
            tracing::warn!(target: "sessiond::audit", event = "login_failed", user = %"a b", "refused");
            let inner = tracing::info_span!("verify", user = 7);
            let _inner = inner.enter();
            tracing::error!(cause = ?Some("gone"), "store unavailable");
            let bare = tracing::info_span!("bare");
            let _bare = bare.enter();
            tracing::debug!(n = 1u8, "deeper");
            tracing::trace!("deepest");
        };
        for ansi in [false, true] {
            for id in [
                RequestId::Made(0x2a),
                // A proxy's id that `QuotedFields` quotes (`=` and `;` are not plain).
                RequestId::given(&axum::http::HeaderValue::from_static("Root=1-ab;P=2")).unwrap(),
            ] {
                let text = id.to_string();
                let with_span = logged_as(ansi, false, || {
                    let span = tracing::error_span!("request", request_id = text.as_str());
                    let _request = span.enter();
                    events();
                });
                let ours = logged_as(ansi, true, || REQUEST_ID.sync_scope(id.clone(), events));
                assert_eq!(untimed(&ours), untimed(&with_span), "ansi {ansi}: {ours}");
                assert_eq!(ours.lines().count(), 4, "{ours}");
            }
            // Outside a request: no request in the line, and still the default format.
            assert_eq!(
                untimed(&logged_as(ansi, true, events)),
                untimed(&logged_as(ansi, false, events))
            );
        }
        let ours = logged(|| REQUEST_ID.sync_scope(RequestId::Made(0x2a), events));
        let id = RequestId::Made(0x2a).to_string();
        assert!(
            ours.lines().next().unwrap().ends_with(&format!(
                " WARN request{{request_id={id}}}: sessiond::audit: refused event=login_failed user=\"a b\""
            )),
            "{ours}"
        );
        assert!(!logged(events).contains("request"));
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

        // Plain values stay readable; the message is kept, its control characters, `"` and
        // `\` escaped, its `'` as it is.
        let out = logged(|| {
            tracing::info!(target: "sessiond::audit", event = "revoke", user = %"carol", count = 3, "done\nforged \"it's\"\t\u{1b}[31m");
        });
        assert!(
            out.contains(r#"done\nforged \"it's\"\t\u{1b}[31m event=revoke user=carol count=3"#),
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

    /// The running request's id is a top-level `request_id` of each JSON line it writes, as
    /// the outermost scope: a span's or the event's own `request_id` wins over it.
    #[test]
    fn json_lines_carry_the_request_id() {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(FlatJson)
            .finish();
        let id = RequestId::Made(7);
        tracing::subscriber::with_default(subscriber, || {
            REQUEST_ID.sync_scope(id.clone(), || {
                tracing::info!(target: "sessiond::audit", event = "login");
                let span = tracing::info_span!("inner", request_id = "from-a-span");
                let _span = span.enter();
                tracing::info!(event = "in-span");
                tracing::info!(event = "own", request_id = "from-the-event");
            });
            tracing::info!(event = "outside");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0]["request_id"], id.to_string().as_str(), "{text}");
        assert_eq!(lines[1]["request_id"], "from-a-span", "{text}");
        assert_eq!(lines[2]["request_id"], "from-the-event", "{text}");
        assert!(lines[3].get("request_id").is_none(), "{text}");
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
