//! Second factors (issue 18): what a TOTP check and a passkey assertion cost the server.
//!
//! Both are one-shot: a TOTP code is accepted once per user per 30-second step (the store
//! keeps the last step used and refuses any step not after it), and each passkey ceremony is
//! spent by its finish. So these rows are not closed loops over one request: each round logs
//! in `K` users with their password (one-factor sessions; each login is an argon2id
//! verification, which is why `K` stays in the hundreds), then takes each of those sessions
//! through the second step exactly once, `K` at a time over a few keep-alive connections,
//! and times every request.
//!
//! * **TOTP**: `POST /api/2fa/totp {"code"}`. The code is the next step's (the server accepts
//!   one step of skew either way), so it is always after the step the user last spent, even
//!   right after enrolment; the next round waits for the clock's next step.
//! * **Passkey**: `POST /api/2fa/passkey/start`, then the software authenticator
//!   (`webauthn-authenticator-rs`'s `SoftPasskey`, one per user, as a browser's would be)
//!   signs the challenge here, then `POST /api/2fa/passkey {"ceremony", "credential"}`. The
//!   finish request's latency is the server's check (the ceremony opened and spent, the
//!   signature verified, the passkey's counter stored, the session rotated); the rate is
//!   whole ceremonies per second.
//!
//! Next to them, in the same rounds, `GET /api/session` (verify) as a closed loop, so each
//! cost reads as a number of verifications.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, COOKIE, HOST};
use hyper::{Method, Request};
use serde_json::{json, Value};
use url::Url;
use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;

use crate::harness::COOKIE as COOKIE_NAME;
use crate::load::{self, Answer, CpuPerAnswer, Measure, Sender};

/// The password of every user these rows create.
pub const PASSWORD: &str = "sessiond-bench second-factor password";
/// The TOTP step, as the server counts it.
const STEP_SECS: u64 = 30;

/// One user with both factors: the TOTP secret and the authenticator holding the passkey.
struct Account {
    name: String,
    /// Set at enrolment.
    secret: OnceLock<Vec<u8>>,
    /// Locked by the one connection working on this user at a time.
    key: Mutex<SoftPasskey>,
}

/// Users with both factors on a running server, and the client's settings.
pub struct Enrolled {
    addr: SocketAddr,
    /// `http://localhost:PORT`: the relying party's origin, as a browser would see it.
    origin: Url,
    accounts: Arc<[Account]>,
    connections: usize,
    threads: usize,
    /// The last TOTP step spent by every user (a later round needs a later one).
    last_step: i64,
    /// A two-factor session of the first user, for the verify rows beside.
    pub cookie: String,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secrets (the cookie, the TOTP secrets, the passkeys' private keys).
        f.debug_struct("Enrolled")
            .field("addr", &self.addr)
            .field("users", &self.accounts.len())
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// The names of `n` users for these rows.
pub fn user_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("second-factor-{i}")).collect()
}

/// The TOTP step of now.
fn now_step() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / STEP_SECS).unwrap_or(i64::MAX)
}

/// The code of `step` for `secret` (SHA-1, 6 digits, 30 s: the server's parameters).
fn totp_code(secret: &[u8], step: i64) -> String {
    let t = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        0,
        STEP_SECS,
        secret.to_vec(),
        None,
        String::new(),
    );
    t.generate(u64::try_from(step).unwrap_or(0) * STEP_SECS)
}

/// What each item of a phase does.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Password login, TOTP set up and confirmed, a passkey registered; yields the
    /// two-factor session's cookie.
    Enrol,
    /// Password login; yields the one-factor session's cookie.
    Login,
    /// `POST /api/2fa/totp` with the code of this step.
    Totp(i64),
    /// The passkey ceremony of the second step.
    Passkey,
}

/// One pass over `n` items, shared by the connections (each takes the next item).
struct Phase {
    addr: SocketAddr,
    host: String,
    origin: Url,
    accounts: Arc<[Account]>,
    step: Step,
    /// Item `i` is user `i % accounts` with the cookie `cookies[i]` (none for logins).
    cookies: Vec<String>,
    n: usize,
    next: AtomicUsize,
    /// The cookie each item yielded.
    out: Mutex<Vec<Option<String>>>,
}

/// Timings of one connection (then of the phase).
struct Stats {
    /// The measured request: the TOTP check, the passkey finish, or the login.
    main: Histogram<u64>,
    /// `POST /api/2fa/passkey/start`.
    start: Histogram<u64>,
    /// The client's own work between the two: reading the options, the signature.
    client: Histogram<u64>,
    /// The whole ceremony.
    whole: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    ok: u64,
    io_errors: u64,
    /// The first failure, for the report.
    error: Option<String>,
    began: Option<Instant>,
    ended: Option<Instant>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Stats {
    fn new() -> Self {
        Self {
            main: histogram(),
            start: histogram(),
            client: histogram(),
            whole: histogram(),
            statuses: BTreeMap::new(),
            ok: 0,
            io_errors: 0,
            error: None,
            began: None,
            ended: None,
        }
    }

    fn merge(&mut self, o: Stats) {
        let _ = self.main.add(&o.main);
        let _ = self.start.add(&o.start);
        let _ = self.client.add(&o.client);
        let _ = self.whole.add(&o.whole);
        for (s, n) in o.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.ok += o.ok;
        self.io_errors += o.io_errors;
        self.error = self.error.take().or(o.error);
        self.began = match (self.began, o.began) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.ended = self.ended.max(o.ended);
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        self.io_errors += 1;
        if self.error.is_none() {
            self.error = Some(e.to_string());
        }
    }
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.max(1));
}

/// A keep-alive connection for JSON requests whose answers matter.
struct Client {
    addr: SocketAddr,
    host: String,
    source: Option<IpAddr>,
    sender: Option<Sender>,
}

impl Client {
    async fn call(
        &mut self,
        path: &str,
        cookie: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        let fut = async {
            // A connection the server closed while idle is replaced before anything is sent;
            // a request that went out is never sent again (each is one-shot).
            if let Some(s) = &mut self.sender {
                if s.ready().await.is_err() {
                    self.sender = None;
                }
            }
            let sender = match &mut self.sender {
                Some(s) => s,
                None => self
                    .sender
                    .insert(load::connect(self.addr, self.source).await?),
            };
            let mut req = Request::new(Full::new(Bytes::from(body.to_string())));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = path.parse()?;
            let h = req.headers_mut();
            h.insert(HOST, self.host.parse()?);
            h.insert(CONTENT_TYPE, "application/json".parse()?);
            if let Some(c) = cookie {
                h.insert(COOKIE, c.parse()?);
            }
            let res = sender.send_request(req).await?;
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Answer {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(Duration::from_secs(30), fut).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                anyhow::bail!("no answer to {path} within 30 s")
            }
        }
    }

    /// [`Self::call`] for a request that hashes a password (setup, not measured): sent
    /// again after a `503 overloaded` (the hash queue was full: refused before any work, so
    /// nothing was spent), as a client would after a pause. A busy machine fills the queue
    /// with these logins alone.
    async fn hashing(
        &mut self,
        path: &str,
        cookie: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        let mut pause = Duration::from_millis(50);
        for _ in 0..20 {
            let a = self.call(path, cookie, body).await?;
            if a.status != 503 {
                return Ok(a);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        self.call(path, cookie, body).await
    }

    /// [`Self::call`] (or [`Self::hashing`]), requiring a 200; returns the JSON body and the
    /// session cookie set.
    async fn ok(
        &mut self,
        path: &str,
        cookie: Option<&str>,
        body: &Value,
        hashes: bool,
    ) -> anyhow::Result<(Value, Option<String>)> {
        let a = if hashes {
            self.hashing(path, cookie, body).await?
        } else {
            self.call(path, cookie, body).await?
        };
        anyhow::ensure!(
            a.status == 200,
            "{path} answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        let json = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        let cookie = a
            .set_cookie(COOKIE_NAME)
            .map(|t| format!("{COOKIE_NAME}={t}"));
        Ok((json, cookie))
    }
}

/// Connection `j`'s address: each its own (127.0.0.2 …), as each user's browser would be,
/// so the login throttle's per-address budget of attempts in flight is not what is measured.
fn source(addr: SocketAddr, j: usize) -> Option<IpAddr> {
    addr.ip().is_loopback().then(|| {
        let last = u8::try_from(2 + j % 250).unwrap_or(2);
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    })
}

/// The registration options with no resident key asked for: the software authenticator
/// keeps none (the server does not require one at finish; the JSON API test does the same).
fn without_resident_key(mut options: Value) -> anyhow::Result<CreationChallengeResponse> {
    let sel = &mut options["publicKey"]["authenticatorSelection"];
    sel["residentKey"] = "discouraged".into();
    sel["requireResidentKey"] = false.into();
    Ok(serde_json::from_value(options)?)
}

/// Password login, TOTP set up and confirmed (the session is raised), a passkey registered
/// from the raised session; returns the last raised session's cookie.
async fn enrol(p: &Phase, c: &mut Client, account: &Account) -> anyhow::Result<String> {
    let login = json!({ "username": account.name, "password": PASSWORD });
    let (_, one) = c.ok("/api/login", None, &login, true).await?;
    let one = one.context("the login set no session cookie")?;
    let (setup, _) = c
        .ok(
            "/api/2fa/totp/setup",
            Some(&one),
            &json!({ "password": PASSWORD }),
            true,
        )
        .await?;
    let secret = setup["secret"]
        .as_str()
        .and_then(|s| base32::decode(base32::Alphabet::Rfc4648 { padding: false }, s))
        .context("the TOTP setup's answer has no base32 secret")?;
    let code = totp_code(&secret, now_step());
    let (_, two) = c
        .ok(
            "/api/2fa/totp/confirm",
            Some(&one),
            &json!({ "code": code }),
            false,
        )
        .await?;
    let two = two.context("the TOTP confirmation set no session cookie")?;
    let _ = account.secret.set(secret);
    let (start, _) = c
        .ok(
            "/api/2fa/passkeys/register/start",
            Some(&two),
            &json!({}),
            false,
        )
        .await?;
    let ccr = without_resident_key(start["options"].clone())?;
    let credential = {
        let mut key = account
            .key
            .lock()
            .map_err(|_| anyhow::anyhow!("an authenticator's lock is poisoned"))?;
        key.do_registration(p.origin.clone(), ccr)
            .map_err(|e| anyhow::anyhow!("the authenticator did not register: {e:?}"))?
    };
    let body = json!({ "ceremony": start["ceremony"], "name": "bench", "credential": credential });
    let (_, raised) = c
        .ok(
            "/api/2fa/passkeys/register/finish",
            Some(&two),
            &body,
            false,
        )
        .await?;
    raised.context("the passkey registration set no session cookie")
}

/// Runs item `i` of the phase on connection `c`; returns the status of the measured request
/// and the cookie the item yielded.
async fn item(
    p: &Phase,
    c: &mut Client,
    i: usize,
    stats: &mut Stats,
) -> anyhow::Result<(u16, Option<String>)> {
    let account = &p.accounts[i % p.accounts.len()];
    let cookie = p.cookies.get(i).map(String::as_str);
    match p.step {
        Step::Enrol => Ok((200, Some(enrol(p, c, account).await?))),
        Step::Login => {
            let body = json!({ "username": account.name, "password": PASSWORD });
            let t = Instant::now();
            let a = c.hashing("/api/login", None, &body).await?;
            record(&mut stats.main, t.elapsed());
            let cookie = a
                .set_cookie(COOKIE_NAME)
                .map(|v| format!("{COOKIE_NAME}={v}"));
            Ok((a.status, cookie))
        }
        Step::Totp(step) => {
            let secret = account.secret.get().context("the user is not enrolled")?;
            let body = json!({ "code": totp_code(secret, step) });
            let t = Instant::now();
            let a = c.call("/api/2fa/totp", cookie, &body).await?;
            record(&mut stats.main, t.elapsed());
            Ok((a.status, None))
        }
        Step::Passkey => {
            let t = Instant::now();
            let a = c.call("/api/2fa/passkey/start", cookie, &json!({})).await?;
            record(&mut stats.start, t.elapsed());
            if a.status != 200 {
                return Ok((a.status, None));
            }
            let signed = Instant::now();
            let started: Value = serde_json::from_slice(&a.body)?;
            let rcr: RequestChallengeResponse = serde_json::from_value(started["options"].clone())?;
            let credential = {
                let mut key = account
                    .key
                    .lock()
                    .map_err(|_| anyhow::anyhow!("an authenticator's lock is poisoned"))?;
                key.do_authentication(p.origin.clone(), rcr)
                    .map_err(|e| anyhow::anyhow!("the authenticator did not sign: {e:?}"))?
            };
            let body = json!({ "ceremony": started["ceremony"], "credential": credential });
            record(&mut stats.client, signed.elapsed());
            let f = Instant::now();
            let a = c.call("/api/2fa/passkey", cookie, &body).await?;
            record(&mut stats.main, f.elapsed());
            record(&mut stats.whole, t.elapsed());
            Ok((a.status, None))
        }
    }
}

/// One connection of a phase: takes items until there are none left.
async fn connection(p: Arc<Phase>, j: usize) -> Stats {
    let mut stats = Stats::new();
    let mut c = Client {
        addr: p.addr,
        host: p.host.clone(),
        source: source(p.addr, j),
        sender: None,
    };
    loop {
        let i = p.next.fetch_add(1, Ordering::Relaxed);
        if i >= p.n {
            break;
        }
        let began = Instant::now();
        stats.began.get_or_insert(began);
        match item(&p, &mut c, i, &mut stats).await {
            Ok((status, cookie)) => {
                *stats.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    stats.ok += 1;
                } else if stats.error.is_none() {
                    stats.error = Some(format!("{:?} answered {status}", p.step));
                }
                if let (Some(cookie), Ok(mut out)) = (cookie, p.out.lock()) {
                    out[i] = Some(cookie);
                }
            }
            Err(e) => stats.fail(format!("{:?}: {e:#}", p.step)),
        }
        stats.ended = Some(Instant::now());
    }
    stats
}

/// What one pass measured, and what it yielded.
struct Pass {
    stats: Stats,
    seconds: f64,
    cpu: Option<CpuPerAnswer>,
    out: Vec<Option<String>>,
}

impl Pass {
    /// `h`'s latencies, the pass's rate of items and CPU per item.
    fn measure(&self, h: &Histogram<u64>) -> Measure {
        let count: u64 = self.stats.statuses.values().sum();
        let q = |x: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(x) as f64 / 1000.0
            }
        };
        Measure {
            rps: count as f64 / self.seconds.max(1e-6),
            p50_ms: q(0.50),
            p99_ms: q(0.99),
            max_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
            count,
            ok: self.stats.ok,
            statuses: self.stats.statuses.clone(),
            io_errors: self.stats.io_errors,
            seconds: self.seconds,
            cpu: self.cpu,
        }
    }

    /// Fails with the first error when not every item got its 200.
    fn ensure_clean(&self, what: &str) -> anyhow::Result<()> {
        let n = self.out.len() as u64;
        anyhow::ensure!(
            self.stats.ok == n && self.stats.io_errors == 0,
            "{what}: {} of {n} succeeded ({}); first failure: {}",
            self.stats.ok,
            self.stats
                .statuses
                .iter()
                .map(|(s, n)| format!("{s}×{n}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.stats.error.as_deref().unwrap_or("none")
        );
        Ok(())
    }
}

/// Runs `step` for `n` items over `connections` connections on `threads` threads (each its
/// own current-thread runtime, as the load generator's), reading the server's CPU time
/// (`watch`) before and after.
fn run_phase(
    e: &Enrolled,
    accounts: Arc<[Account]>,
    step: Step,
    cookies: Vec<String>,
    n: usize,
    watch: Option<u32>,
) -> anyhow::Result<Pass> {
    let p = Arc::new(Phase {
        addr: e.addr,
        host: e.addr.to_string(),
        origin: e.origin.clone(),
        accounts,
        step,
        cookies,
        n,
        next: AtomicUsize::new(0),
        out: Mutex::new(vec![None; n]),
    });
    let connections = e.connections.clamp(1, n.max(1));
    let threads = e.threads.clamp(1, connections);
    let ticks = |pid: Option<u32>| {
        let pid = pid?.to_string();
        Some((load::cpu_ticks(&pid)?, load::cpu_ticks("self")?))
    };
    let before = ticks(watch);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let p = Arc::clone(&p);
        let mine: Vec<usize> = (t..connections).step_by(threads).collect();
        handles.push(
            std::thread::Builder::new()
                .name(format!("second-factor-{t}"))
                .spawn(move || -> anyhow::Result<Stats> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let tasks: Vec<_> = mine
                            .into_iter()
                            .map(|j| tokio::spawn(connection(Arc::clone(&p), j)))
                            .collect();
                        let mut total = Stats::new();
                        for task in tasks {
                            total.merge(task.await?);
                        }
                        Ok(total)
                    })
                })?,
        );
    }
    let mut stats = Stats::new();
    for h in handles {
        stats.merge(
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let after = ticks(watch);
    let seconds = match (stats.began, stats.ended) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let cpu = match (before, after) {
        (Some(((su0, sk0), (cu0, ck0))), Some(((su1, sk1), (cu1, ck1)))) if n > 0 => {
            let per = |a: u64, b: u64| b.saturating_sub(a) as f64 * load::TICK_US / n as f64;
            Some(CpuPerAnswer {
                server_user_us: per(su0, su1),
                server_kernel_us: per(sk0, sk1),
                client_us: per(cu0, cu1) + per(ck0, ck1),
            })
        }
        _ => None,
    };
    let out = std::mem::take(
        &mut *p
            .out
            .lock()
            .map_err(|_| anyhow::anyhow!("a phase's results are poisoned"))?,
    );
    Ok(Pass {
        stats,
        seconds,
        cpu,
        out,
    })
}

/// The passkey step of one round.
#[derive(Clone, Debug, Default)]
pub struct PasskeyRound {
    /// `POST /api/2fa/passkey` (the finish): latencies; rate: whole ceremonies per second;
    /// CPU: the server's per ceremony (start and finish).
    pub finish: Measure,
    /// `POST /api/2fa/passkey/start`: latencies.
    pub start: Measure,
    /// The client's work between them (reading the options, the signature): latencies.
    pub client: Measure,
    /// The whole ceremony: latencies.
    pub whole: Measure,
}

impl Enrolled {
    /// Enrols the users `names` (created already, with [`PASSWORD`]) on the server at `addr`,
    /// whose public URL is `http://localhost:PORT`: each logs in, sets up and confirms TOTP,
    /// and registers a passkey, over `connections` connections on `threads` threads.
    pub fn enrol(
        addr: SocketAddr,
        names: Vec<String>,
        connections: usize,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let origin = Url::parse(&format!("http://localhost:{}", addr.port()))?;
        let accounts: Arc<[Account]> = names
            .into_iter()
            .map(|name| Account {
                name,
                secret: OnceLock::new(),
                // It claims user verification (a PIN), as platform authenticators do.
                key: Mutex::new(SoftPasskey::new(true)),
            })
            .collect();
        anyhow::ensure!(!accounts.is_empty(), "no users to enrol");
        let mut e = Self {
            addr,
            origin,
            accounts: Arc::clone(&accounts),
            connections,
            threads,
            last_step: 0,
            cookie: String::new(),
        };
        let n = accounts.len();
        let pass = run_phase(&e, accounts, Step::Enrol, Vec::new(), n, None)?;
        pass.ensure_clean("enrolment")?;
        // Every confirmation spent a step no later than this one.
        e.last_step = now_step();
        e.cookie = pass
            .out
            .into_iter()
            .next()
            .flatten()
            .context("no session after enrolment")?;
        Ok(e)
    }

    /// Users enrolled.
    pub fn users(&self) -> usize {
        self.accounts.len()
    }

    /// A fresh one-factor session (password login) of every user, in user order.
    pub fn log_in(&self) -> anyhow::Result<Vec<String>> {
        let n = self.accounts.len();
        let pass = run_phase(
            self,
            Arc::clone(&self.accounts),
            Step::Login,
            Vec::new(),
            n,
            None,
        )?;
        pass.ensure_clean("logins")?;
        pass.out
            .into_iter()
            .map(|c| c.context("a login set no cookie"))
            .collect()
    }

    /// Each session of `sessions` (one per user, in user order) checks a TOTP code once;
    /// watches the server `pid`'s CPU time. Waits first for a TOTP step after the last one
    /// spent (at most 30 s).
    pub fn totp(&mut self, sessions: Vec<String>, pid: u32) -> anyhow::Result<Measure> {
        let mut now = now_step();
        while now < self.last_step {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let step_ms = u128::from(STEP_SECS) * 1000;
            let wait = step_ms - secs % step_ms + 50;
            std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(1000)));
            now = now_step();
        }
        // The next step's code: accepted (one step of skew) and after every step spent.
        let step = now + 1;
        let n = sessions.len();
        let pass = run_phase(
            self,
            Arc::clone(&self.accounts),
            Step::Totp(step),
            sessions,
            n,
            Some(pid),
        )?;
        self.last_step = step;
        Ok(pass.measure(&pass.stats.main))
    }

    /// Each session of `sessions` (one per user, in user order) runs the passkey step once;
    /// watches the server `pid`'s CPU time.
    pub fn passkey(&self, sessions: Vec<String>, pid: u32) -> anyhow::Result<PasskeyRound> {
        let n = sessions.len();
        let pass = run_phase(
            self,
            Arc::clone(&self.accounts),
            Step::Passkey,
            sessions,
            n,
            Some(pid),
        )?;
        Ok(PasskeyRound {
            finish: pass.measure(&pass.stats.main),
            start: pass.measure(&pass.stats.start),
            client: pass.measure(&pass.stats.client),
            whole: pass.measure(&pass.stats.whole),
        })
    }
}

/// Creates the users `names` with [`PASSWORD`] through `sessiond user add` (each one an
/// argon2id hash), `parallel` at a time.
pub fn add_users(
    sessiond: &Path,
    database_url: &str,
    names: &[String],
    parallel: usize,
) -> anyhow::Result<()> {
    // The first alone: it may create the database (migrations), which two processes must not
    // race for.
    let Some((first, rest)) = names.split_first() else {
        return Ok(());
    };
    crate::seed::add_user_as(sessiond, database_url, first, PASSWORD, false)?;
    let names = rest;
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(name) = names.get(i) else {
                            return Ok(());
                        };
                        crate::seed::add_user_as(sessiond, database_url, name, PASSWORD, false)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a user-adding thread panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_rfc_6238() {
        // RFC 6238, appendix B: SHA-1, T = 59 s (step 1), 8 digits 94287082: 6 digits 287082.
        assert_eq!(totp_code(b"12345678901234567890", 1), "287082");
    }
}
