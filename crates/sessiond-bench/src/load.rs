//! The load generator: keep-alive HTTP/1.1 connections, latencies in an HDR histogram.
//!
//! * **Built like wrk**: `threads` OS threads, each with its own current-thread tokio runtime
//!   driving its share of the connections. No work stealing and no cross-thread wake-ups: the
//!   generator shares the machine's two cores with the server, so every microsecond it spends
//!   is one the server does not get.
//! * **As lean as wrk on the wire**: each request is written from bytes serialised once per
//!   variant and each answer is parsed in place with `httparse` (status, `Content-Length` or
//!   chunked framing, `Connection: close`) and its body skipped, without building header maps
//!   or collecting bodies. With hyper's full client here instead, the generator's own cost
//!   grew with every answer header: forward auth (five identity headers) measured 0.71 of
//!   `/healthz` with it and ~0.85 under wrk on the same server.
//! * **Closed loop** (`rate: None`): every connection sends its next request as soon as the
//!   previous answer is in; that measures throughput.
//! * **Fixed rate** (`rate: Some(r)`): requests are scheduled at `r` per second in total, and a
//!   request that could not leave on time (its connection was still waiting for a slow answer)
//!   is timed from when it should have left, so stalls are not hidden (no coordinated
//!   omission). That measures latency at a given load, e.g. during a login flood.
//! * **Only completions inside the window count**: requests still in flight when it closes are
//!   abandoned, so a slow endpoint (login, ~50 ms) is not credited with answers that came later.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, HOST};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// How a request changes from one send to the next.
#[derive(Clone, Debug)]
pub enum Vary {
    /// Always the same request.
    Nothing,
    /// A `Cookie` header from the list, a different one on each request, every one in turn
    /// (many sessions).
    Cookie(Arc<[HeaderValue]>),
    /// A JSON login for a fresh unknown username and a wrong password on every request.
    UnknownUser,
}

/// One request, ready to be sent many times.
#[derive(Clone, Debug)]
pub struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    vary: Vary,
    /// Statuses that count as the expected answer.
    ok: Vec<u16>,
    /// After an answer with one of these statuses the connection is closed and the next
    /// request comes from a new loopback address (see [`Req::new_client_after`]).
    new_client_after: Vec<u16>,
}

impl Req {
    pub fn get(host: &str, path: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, value(host));
        Self {
            method: Method::GET,
            uri: path.parse().expect("static paths are valid URIs"),
            headers,
            body: Bytes::new(),
            vary: Vary::Nothing,
            ok: vec![200],
            new_client_after: Vec::new(),
        }
    }

    pub fn post(host: &str, path: &str, content_type: &str, body: impl Into<Bytes>) -> Self {
        let mut r = Self::get(host, path);
        r.method = Method::POST;
        r.headers.insert(CONTENT_TYPE, value(content_type));
        r.body = body.into();
        r
    }

    /// `POST /api/login` as JSON.
    pub fn api_login(host: &str, username: &str, password: &str) -> Self {
        let body = serde_json::json!({ "username": username, "password": password }).to_string();
        Self::post(host, "/api/login", "application/json", body)
    }

    pub fn header(mut self, name: &'static str, v: &str) -> Self {
        self.headers.insert(HeaderName::from_static(name), value(v));
        self
    }

    pub fn cookie(self, cookie: &str) -> Self {
        let mut r = self;
        r.headers.insert(COOKIE, value(cookie));
        r
    }

    pub fn vary(mut self, vary: Vary) -> Self {
        self.vary = vary;
        self
    }

    /// After an answer with one of `statuses`, the next request comes from another client: a
    /// new connection from a loopback address never used before in this job (127.a.b.c, a and
    /// b ≥ 1). A guessing attack spread over many addresses looks like this, and each address
    /// then has one failure to its name, so per-address back-off (docs/reference/security.md,
    /// "Login throttling") does not turn the flood into a stream of cheap `429`s.
    pub fn new_client_after(mut self, statuses: &[u16]) -> Self {
        self.new_client_after = statuses.to_vec();
        self
    }

    pub fn expect(mut self, ok: &[u16]) -> Self {
        self.ok = ok.to_vec();
        self
    }

    /// The body of send number `n`.
    fn body(&self, n: u64) -> Bytes {
        match &self.vary {
            Vary::UnknownUser => Bytes::from(
                serde_json::json!({
                    "username": format!("nobody-{n}"),
                    "password": format!("not the password {n}"),
                })
                .to_string(),
            ),
            _ => self.body.clone(),
        }
    }

    fn build(&self, n: u64) -> Request<Full<Bytes>> {
        let body = self.body(n);
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if let Vary::Cookie(list) = &self.vary {
            let i = usize::try_from(n % list.len() as u64).unwrap_or(0);
            req.headers_mut().insert(COOKIE, list[i].clone());
        }
        req
    }
}

impl Req {
    /// The request as bytes on the wire (what [`Req::build`] would send), into `out`.
    fn encode(&self, n: u64, out: &mut Vec<u8>) {
        out.clear();
        let body = self.body(n);
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            self.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let cookie = match &self.vary {
            Vary::Cookie(list) => Some(&list[usize::try_from(n % list.len() as u64).unwrap_or(0)]),
            _ => None,
        };
        for (name, v) in &self.headers {
            if cookie.is_some() && name == COOKIE {
                continue;
            }
            header_line(out, name.as_str(), v.as_bytes());
        }
        if let Some(c) = cookie {
            header_line(out, "cookie", c.as_bytes());
        }
        if !body.is_empty() || self.method == Method::POST {
            header_line(out, "content-length", body.len().to_string().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }

    /// Whether every send is the same bytes (then they are serialised once).
    fn fixed(&self) -> bool {
        matches!(self.vary, Vary::Nothing)
    }
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header values built here are visible ASCII")
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Job {
    pub addr: SocketAddr,
    /// Connection `i` sends `reqs[i % reqs.len()]`.
    pub reqs: Vec<Req>,
    pub connections: usize,
    pub threads: usize,
    /// Sent but not counted: connections open, caches and pools warm.
    pub warmup: Duration,
    /// Counted. The run ends after it, or earlier when `stop` is raised.
    pub window: Duration,
    /// Total requests per second (fixed-rate mode); `None`: closed loop.
    pub rate: Option<f64>,
    /// Connection `i` comes from 127.0.0.`(2 + i % 250)` instead of 127.0.0.1: many clients,
    /// as a distributed flood would be.
    pub spread_sources: bool,
    pub stop: Option<Arc<AtomicBool>>,
    /// The server's process: its CPU time over the window is read from `/proc` (with the
    /// load generator's own), so each answer's cost can be split between the two.
    pub watch: Option<u32>,
}

impl Job {
    pub fn closed(addr: SocketAddr, req: Req, connections: usize, threads: usize) -> Self {
        Self {
            addr,
            reqs: vec![req],
            connections,
            threads,
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(5),
            rate: None,
            spread_sources: false,
            stop: None,
            watch: None,
        }
    }

    /// Reads `pid`'s CPU time (and this process's) at the window's start and end.
    pub fn watching(mut self, pid: u32) -> Self {
        self.watch = Some(pid);
        self
    }

    pub fn timing(mut self, warmup: Duration, window: Duration) -> Self {
        self.warmup = warmup;
        self.window = window;
        self
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Measure {
    /// Answers per second of the window (all statuses).
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Answers in the window.
    pub count: u64,
    /// Answers with an expected status.
    pub ok: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Connects or exchanges that failed (no HTTP answer).
    pub io_errors: u64,
    /// Counted seconds.
    pub seconds: f64,
    /// CPU time per answer in the window, when the job watched the server.
    pub cpu: Option<CpuPerAnswer>,
}

/// CPU time per answer, in µs: the server's in user space and in the kernel (its system
/// calls, and the network stack's work done on its threads), and the load generator's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuPerAnswer {
    pub server_user_us: f64,
    pub server_kernel_us: f64,
    pub client_us: f64,
}

/// A process's CPU time so far in clock ticks (user, system), from `/proc/PID/stat`.
pub(crate) fn cpu_ticks(pid: &str) -> Option<(u64, u64)> {
    stat_times(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime and stime of a `/proc/PID/stat` line.
fn stat_times(stat: &str) -> Option<(u64, u64)> {
    // Fields after the command name (which may hold spaces and parentheses, so find the
    // last ')'); utime and stime are fields 14 and 15, the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// `/proc` counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second for
/// userspace on every architecture.
pub(crate) const TICK_US: f64 = 10_000.0;

/// What the window cost, per answer, from two readings of the server's and our own ticks.
fn per_answer(
    server: ((u64, u64), (u64, u64)),
    client: ((u64, u64), (u64, u64)),
    answers: u64,
) -> Option<CpuPerAnswer> {
    if answers == 0 {
        return None;
    }
    let n = answers as f64;
    let d = |a: u64, b: u64| b.saturating_sub(a) as f64 * TICK_US / n;
    let ((su0, sk0), (su1, sk1)) = server;
    let ((cu0, ck0), (cu1, ck1)) = client;
    Some(CpuPerAnswer {
        server_user_us: d(su0, su1),
        server_kernel_us: d(sk0, sk1),
        client_us: d(cu0, cu1) + d(ck0, ck1),
    })
}

impl Measure {
    /// Answers with this status.
    pub fn status(&self, s: u16) -> u64 {
        self.statuses.get(&s).copied().unwrap_or(0)
    }

    /// Answers a second with one of `statuses` (over the counted seconds).
    pub fn rate_of(&self, statuses: &[u16]) -> f64 {
        let n: u64 = statuses.iter().map(|s| self.status(*s)).sum();
        if self.seconds > 0.0 {
            n as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Every answer was expected and nothing failed.
    pub fn clean(&self) -> bool {
        self.count > 0 && self.ok == self.count && self.io_errors == 0
    }

    /// `200×123 401×4` …
    pub fn status_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        if self.io_errors > 0 {
            parts.push(format!("io-errors×{}", self.io_errors));
        }
        parts.join(" ")
    }
}

struct ConnStats {
    hist: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    ok: u64,
    io_errors: u64,
}

impl ConnStats {
    fn new() -> Self {
        Self {
            // 1 µs .. 10 min, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            ok: 0,
            io_errors: 0,
        }
    }

    fn merge(&mut self, other: ConnStats) {
        let _ = self.hist.add(&other.hist);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.ok += other.ok;
        self.io_errors += other.io_errors;
    }
}

struct Shared {
    job: Job,
    /// When counting begins.
    measure_from: Instant,
    /// When the run ends at the latest.
    end: Instant,
    /// When connection 0's schedule begins (fixed rate).
    start: Instant,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.job
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// Runs `job` on its own threads and returns when it is over.
pub fn run(job: &Job) -> anyhow::Result<Measure> {
    anyhow::ensure!(!job.reqs.is_empty(), "a load job needs a request");
    let connections = job.connections.max(1);
    let threads = job.threads.clamp(1, connections);
    // A little slack so every thread is up before the schedule starts.
    let start = Instant::now() + Duration::from_millis(20);
    let shared = Arc::new(Shared {
        job: Job {
            connections,
            threads,
            ..job.clone()
        },
        measure_from: start + job.warmup,
        end: start + job.warmup + job.window,
        start,
    });
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let shared = Arc::clone(&shared);
        let mine: Vec<usize> = (t..connections).step_by(threads).collect();
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || -> anyhow::Result<ConnStats> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let tasks: Vec<_> = mine
                            .into_iter()
                            .map(|i| tokio::spawn(connection(Arc::clone(&shared), i)))
                            .collect();
                        let mut total = ConnStats::new();
                        for t in tasks {
                            total.merge(t.await?);
                        }
                        Ok(total)
                    })
                })?,
        );
    }
    // The server's and our own CPU time at the window's edges (the load threads run on
    // their own meanwhile).
    let readings = job.watch.map(|pid| {
        let pid = pid.to_string();
        let read = |at: Instant| {
            while Instant::now() < at && !shared.stopped() {
                std::thread::sleep(
                    Duration::from_millis(5).min(at.saturating_duration_since(Instant::now())),
                );
            }
            (cpu_ticks(&pid), cpu_ticks("self"))
        };
        (read(shared.measure_from), read(shared.end))
    });
    let mut total = ConnStats::new();
    for h in handles {
        let stats = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        total.merge(stats);
    }
    let ended = Instant::now().min(shared.end);
    let seconds = ended
        .saturating_duration_since(shared.measure_from)
        .as_secs_f64()
        .max(1e-3);
    let count = total.hist.len();
    let ms = |q: f64| {
        if count == 0 {
            0.0
        } else {
            total.hist.value_at_quantile(q) as f64 / 1000.0
        }
    };
    Ok(Measure {
        rps: count as f64 / seconds,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        max_ms: if count == 0 {
            0.0
        } else {
            total.hist.max() as f64 / 1000.0
        },
        count,
        ok: total.ok,
        statuses: total.statuses,
        io_errors: total.io_errors,
        seconds,
        cpu: match readings {
            Some(((Some(s0), Some(c0)), (Some(s1), Some(c1)))) => {
                per_answer((s0, s1), (c0, c1), count)
            }
            _ => None,
        },
    })
}

/// Runs two jobs at once (e.g. a latency probe during a flood).
pub fn run_pair(a: &Job, b: &Job) -> anyhow::Result<(Measure, Measure)> {
    std::thread::scope(|s| {
        let ha = s.spawn(|| run(a));
        let mb = run(b);
        let ma = ha
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        Ok((ma?, mb?))
    })
}

/// The `k`-th address of 127.1.1.1 … 127.254.254.254 (no octet 0 or 255, never 127.0.0.x).
fn client_address(k: u64) -> IpAddr {
    let octet = |d: u64| u8::try_from(1 + d % 254).unwrap_or(1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        octet(k / (254 * 254)),
        octet(k / 254),
        octet(k),
    ))
}

fn source_for(addr: SocketAddr, i: usize, spread: bool) -> Option<IpAddr> {
    match addr.ip() {
        IpAddr::V4(v4) if spread && v4.is_loopback() => {
            let last = u8::try_from(2 + i % 250).unwrap_or(2);
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        }
        _ => None,
    }
}

async fn connection(shared: Arc<Shared>, i: usize) -> ConnStats {
    let job = &shared.job;
    let req = &job.reqs[i % job.reqs.len()];
    let mut source = source_for(job.addr, i, job.spread_sources);
    let mut clients: u64 = 0;
    let mut stats = ConnStats::new();
    let mut conn: Option<Conn> = None;
    let mut wire = Vec::with_capacity(1024);
    if req.fixed() {
        req.encode(0, &mut wire);
    }
    let interval = job
        .rate
        .map(|r| Duration::from_secs_f64(job.connections as f64 / r.max(1e-3)));
    // Fixed rate: connections take turns, evenly spread over one interval.
    let mut next = shared.start
        + interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(i as f64 / job.connections as f64)
        });
    let mut prev_done = Instant::now();
    // Request numbers unique within the job without a shared counter: connection i sends
    // i, i + C, i + 2C, … (C connections), so cookies are taken in turn and all of them
    // within len / C requests of each connection.
    let stride = job.connections as u64;
    let mut n = i as u64;
    loop {
        if shared.stopped() {
            break;
        }
        let origin = match interval {
            Some(iv) => {
                let intended = next;
                next += iv;
                if intended >= shared.end {
                    break;
                }
                if prev_done > intended {
                    // Behind schedule because an answer was slow: the wait is latency too.
                    intended
                } else {
                    tokio::time::sleep_until(intended.into()).await;
                    Instant::now()
                }
            }
            None => {
                let now = Instant::now();
                if now >= shared.end {
                    break;
                }
                now
            }
        };
        if !req.fixed() {
            req.encode(n, &mut wire);
        }
        let outcome = tokio::time::timeout_at(
            shared.end.into(),
            exchange(&mut conn, job.addr, source, &wire),
        )
        .await;
        n += stride;
        let done = Instant::now();
        prev_done = done;
        let counted = done >= shared.measure_from && !shared.stopped();
        match outcome {
            Err(_) => break, // the window closed with this request in flight
            Ok(Ok(status)) => {
                if counted {
                    let us =
                        u64::try_from(done.duration_since(origin).as_micros()).unwrap_or(u64::MAX);
                    stats.hist.saturating_record(us.max(1));
                    *stats.statuses.entry(status).or_default() += 1;
                    if req.ok.contains(&status) {
                        stats.ok += 1;
                    }
                }
                if req.new_client_after.contains(&status) && job.addr.ip().is_loopback() {
                    conn = None;
                    source = Some(client_address(clients * job.connections as u64 + i as u64));
                    clients += 1;
                }
            }
            Ok(Err(_)) => {
                if counted {
                    stats.io_errors += 1;
                }
                conn = None;
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    stats
}

async fn open(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match source {
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// hyper's client on a new connection (one-off requests, where headers and body matter).
pub(crate) async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<Sender> {
    let (sender, conn) = http1::handshake(TokioIo::new(open(addr, source).await?)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One keep-alive connection of the load loop: requests written from ready bytes, answers
/// parsed in place.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not consumed yet.
    buf: Vec<u8>,
}

/// Why an exchange failed.
enum Failure {
    /// Nothing came back on a connection that had answered before: the server closed it while
    /// it was idle (keep-alive timeout). Retried on a new connection, not counted.
    Stale,
    Broken(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Broken(e.into())
    }
}

/// How an answer's body ends.
enum Framing {
    Length(usize),
    Chunked,
    /// Neither length nor chunks: the body runs until the server closes.
    UntilClose,
}

impl Conn {
    /// Reads more bytes; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        self.buf.reserve(16 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Sends `wire` and reads the whole answer: its status, and whether the connection is
    /// over afterwards.
    async fn roundtrip(&mut self, wire: &[u8]) -> Result<(u16, bool), Failure> {
        self.buf.clear();
        if self.stream.write_all(wire).await.is_err() {
            return Err(Failure::Stale);
        }
        let (status, framing, mut close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf)? {
                httparse::Status::Complete(head) => {
                    let status = res.code.unwrap_or(0);
                    let mut framing = match status {
                        100..=199 | 204 | 304 => Framing::Length(0),
                        _ => Framing::UntilClose,
                    };
                    let mut close = res.version == Some(0);
                    for h in res.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(h.value)?.trim().parse()?;
                            if !matches!(framing, Framing::Chunked) {
                                framing = Framing::Length(n);
                            }
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && h.value.eq_ignore_ascii_case(b"chunked")
                        {
                            framing = Framing::Chunked;
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    self.buf.drain(..head);
                    break (status, framing, close);
                }
                httparse::Status::Partial => {
                    if self.fill().await? == 0 {
                        return if self.buf.is_empty() {
                            Err(Failure::Stale)
                        } else {
                            Err(anyhow::anyhow!("connection closed within an answer's head").into())
                        };
                    }
                }
            }
        };
        match framing {
            Framing::Length(n) => self.skip(n).await?,
            Framing::Chunked => loop {
                let (line, size) = loop {
                    match httparse::parse_chunk_size(&self.buf)
                        .map_err(|_| anyhow::anyhow!("invalid chunk size"))?
                    {
                        httparse::Status::Complete(c) => break c,
                        httparse::Status::Partial => self.fill_or_fail().await?,
                    }
                };
                self.buf.drain(..line);
                if size == 0 {
                    // Trailers (none expected) up to the empty line.
                    while !self.buf.starts_with(b"\r\n") {
                        self.fill_or_fail().await?;
                    }
                    self.buf.drain(..2);
                    break;
                }
                self.skip(usize::try_from(size)? + 2).await?;
            },
            Framing::UntilClose => {
                while self.fill().await? > 0 {
                    self.buf.clear();
                }
                close = true;
            }
        }
        Ok((status, close))
    }

    async fn fill_or_fail(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.fill().await? > 0, "connection closed within an answer");
        Ok(())
    }

    /// Consumes `n` bytes of body.
    async fn skip(&mut self, mut n: usize) -> anyhow::Result<()> {
        loop {
            let have = n.min(self.buf.len());
            self.buf.drain(..have);
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.fill_or_fail().await?;
        }
    }
}

/// Sends one request (`wire`) on the connection, opening one when there is none, and reads the
/// whole answer. A connection the server closed after its last answer is replaced without
/// counting an error; one it announced to close (`Connection: close`, e.g. gunicorn) is
/// dropped.
async fn exchange(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    source: Option<IpAddr>,
    wire: &[u8],
) -> anyhow::Result<u16> {
    loop {
        let reused = conn.is_some();
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Conn {
                stream: open(addr, source).await?,
                buf: Vec::with_capacity(16 * 1024),
            }),
        };
        match c.roundtrip(wire).await {
            Ok((status, close)) => {
                if close {
                    *conn = None;
                }
                return Ok(status);
            }
            Err(Failure::Stale) if reused => *conn = None,
            Err(Failure::Stale) => {
                *conn = None;
                anyhow::bail!("the server closed a new connection without answering");
            }
            Err(Failure::Broken(e)) => {
                *conn = None;
                return Err(e);
            }
        }
    }
}

/// An answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The value of the cookie `name` set by this answer.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(hyper::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    }
}

/// Sends one request on a fresh connection (setup and readiness checks).
pub async fn once(addr: SocketAddr, req: &Req) -> anyhow::Result<Answer> {
    let fut = async {
        let mut s = connect(addr, None).await?;
        let res = s.send_request(req.build(1)).await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .context("no answer within 10 s")?
}

/// [`once`] on a throwaway runtime, for synchronous callers.
pub fn once_blocking(addr: SocketAddr, req: &Req) -> anyhow::Result<Answer> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(once(addr, req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_come_from_the_stat_line() {
        // A command name with spaces and parentheses, as `/proc` prints it.
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1061 0 0 0 731 256 0 0 20 0 \
                    6 0 12345 123456789 2345 18446744073709551615";
        assert_eq!(stat_times(line), Some((731, 256)));
        assert_eq!(stat_times("no parenthesis"), None);
        assert_eq!(stat_times("1 (short) S 1"), None);
        // Our own process has a readable line.
        assert!(cpu_ticks("self").is_some());
    }

    #[test]
    fn cpu_per_answer_divides_the_window_by_its_answers() {
        // 100 answers; the server spent 2 ticks in user space, 3 in the kernel; we spent
        // 1 + 1: 20 ms = 20,000 µs over 100 answers is 200 µs each, and so on.
        let c = per_answer(((10, 20), (12, 23)), ((5, 5), (6, 6)), 100).unwrap();
        assert_eq!(
            c,
            CpuPerAnswer {
                server_user_us: 200.0,
                server_kernel_us: 300.0,
                client_us: 200.0
            }
        );
        assert_eq!(per_answer(((0, 0), (1, 1)), ((0, 0), (1, 1)), 0), None);
    }

    /// A server that answers each request on a connection with the next of `answers`
    /// (raw bytes), closing the connection after any answer marked `close`.
    async fn scripted(answers: Vec<(&'static [u8], bool)>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                loop {
                    // One request: up to the blank line (these have no body).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        break;
                    };
                    buf.drain(..end + 4);
                    let (bytes, close) = answers[next % answers.len()];
                    next += 1;
                    sock.write_all(bytes).await.unwrap();
                    if close {
                        break;
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn answers_are_framed_by_length_chunks_or_close_and_stale_connections_are_replaced() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addr = scripted(vec![
                (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
                (
                    b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n\
                      3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
                    false,
                ),
                (b"HTTP/1.1 204 No Content\r\n\r\n", false),
                // Announced close (gunicorn's way).
                (
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                    true,
                ),
                // Neither length nor chunks: the body runs to the close.
                (b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy, busy", true),
                // Closed silently after a complete answer (keep-alive timeout).
                (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            ])
            .await;
            let wire = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
            let mut conn = None;
            let mut statuses = Vec::new();
            for _ in 0..7 {
                statuses.push(exchange(&mut conn, addr, None, wire).await.unwrap());
            }
            // The 7th went out on the silently closed connection's replacement.
            assert_eq!(statuses, [200, 401, 204, 200, 503, 200, 200]);
        });
    }

    #[test]
    fn client_addresses_are_loopback_distinct_and_avoid_0_and_255() {
        let mut seen = std::collections::HashSet::new();
        for k in (0..200_000u64).chain([254 * 254 * 254 - 1, 254 * 254 * 254]) {
            let ip = client_address(k);
            let IpAddr::V4(v4) = ip else { panic!("{ip}") };
            let o = v4.octets();
            assert_eq!(o[0], 127);
            assert!(o[1..].iter().all(|x| (1..=254).contains(x)), "{v4}");
            if k < 200_000 {
                assert!(seen.insert(v4), "{v4} twice");
            }
        }
        assert_eq!(client_address(0), IpAddr::V4(Ipv4Addr::new(127, 1, 1, 1)));
    }
}
