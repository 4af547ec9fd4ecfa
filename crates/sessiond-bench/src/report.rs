//! What a run found, and the one table it prints.

use std::fmt::Write as _;

use crate::hashrate::HashRate;
use crate::load::{CpuPerAnswer, Measure};
use crate::machine::Machine;
use crate::stores::StoreKind;

/// The result of one part of the run.
#[derive(Clone, Debug)]
pub enum Outcome<T> {
    Done(T),
    /// Not measured, for a stated reason that is not a fault (a service that is not there,
    /// peers left out).
    Skipped(String),
    /// Something broke; the run went on.
    Failed(String),
}

impl<T> Outcome<T> {
    pub fn done(&self) -> Option<&T> {
        match self {
            Outcome::Done(t) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn cell(&self, f: impl FnOnce(&T) -> String) -> String {
        match self {
            Outcome::Done(t) => f(t),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why) => format!("**failed**: {why}"),
        }
    }
}

impl<T> From<anyhow::Result<T>> for Outcome<T> {
    fn from(r: anyhow::Result<T>) -> Self {
        match r {
            Ok(t) => Outcome::Done(t),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }
}

/// The same measurement repeated in interleaved rounds; figures are medians over rounds.
#[derive(Clone, Debug, Default)]
pub struct Rounds(pub Vec<Measure>);

impl Rounds {
    pub fn median(&self, f: impl Fn(&Measure) -> f64) -> f64 {
        median(self.0.iter().map(f).collect())
    }

    pub fn rps(&self) -> f64 {
        self.median(|m| m.rps)
    }

    pub fn p50(&self) -> f64 {
        self.median(|m| m.p50_ms)
    }

    pub fn p99(&self) -> f64 {
        self.median(|m| m.p99_ms)
    }

    /// Median CPU per answer over the rounds that measured it.
    pub fn cpu(&self) -> Option<CpuPerAnswer> {
        let cpu: Vec<CpuPerAnswer> = self.0.iter().filter_map(|m| m.cpu).collect();
        if cpu.is_empty() {
            return None;
        }
        let of = |f: fn(&CpuPerAnswer) -> f64| median(cpu.iter().map(f).collect());
        Some(CpuPerAnswer {
            server_user_us: of(|c| c.server_user_us),
            server_kernel_us: of(|c| c.server_kernel_us),
            client_us: of(|c| c.client_us),
        })
    }

    /// Median over rounds of `self ÷ other` in the same round: drift in the machine's speed
    /// (another build starting) cancels out of each round's ratio.
    pub fn ratio_to(&self, other: &Rounds) -> f64 {
        median(
            self.0
                .iter()
                .zip(&other.0)
                .map(|(a, b)| if b.rps > 0.0 { a.rps / b.rps } else { 0.0 })
                .collect(),
        )
    }

    pub fn clean(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(Measure::clean)
    }

    fn cell(&self) -> String {
        format!(
            "{}/s · {} / {} ms",
            thousands(self.rps()),
            ms(self.p50()),
            ms(self.p99())
        )
    }
}

/// The median (of an even count, the mean of the middle two); 0 for none.
pub(crate) fn median_of(v: Vec<f64>) -> f64 {
    median(v)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Logins as fast as the server takes them, each round next to a window of hashing on
/// every core (the machine's hash rate at that moment).
#[derive(Clone, Debug, Default)]
pub struct LoginRounds {
    pub logins: Rounds,
    /// Each round's hash rate, in the same order.
    pub hash: Vec<HashRate>,
}

impl LoginRounds {
    /// Each round's logins/s ÷ its hash rate, in round order. Logins are the answered ones
    /// (200, and 401 for a wrong password): a 503 (the hashing queue full) is a refusal.
    pub fn ratios(&self) -> Vec<f64> {
        self.logins
            .0
            .iter()
            .zip(&self.hash)
            .map(|(l, h)| {
                if h.per_second > 0.0 {
                    l.rate_of(&[200, 401]) / h.per_second
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The median of [`Self::ratios`].
    pub fn ratio(&self) -> f64 {
        median(self.ratios())
    }

    /// The median hash rate, and the threads it was measured on.
    pub fn hash_rate(&self) -> (f64, usize) {
        (
            median(self.hash.iter().map(|h| h.per_second).collect()),
            self.hash.first().map_or(0, |h| h.threads),
        )
    }
}

/// The figures of one store.
#[derive(Clone, Debug)]
pub struct StoreFigures {
    pub healthz: Rounds,
    pub session: Rounds,
    /// `Err`: why the endpoint was not measured ("n/a").
    pub forward_auth: Result<Rounds, String>,
    pub login: LoginRounds,
    /// `GET /api/session` at a fixed rate, nothing else running.
    pub probe_idle: Measure,
    /// The same during a login flood the hash queue holds (nothing refused).
    pub probe_queue_flood: Measure,
    pub queue_flood: Measure,
    /// Flood p99 ÷ idle p99 of every probe round, ascending (the one above is the median).
    pub queue_flood_ratios: Vec<f64>,
    /// Verifications that read the store during each of those rounds (same order; `None`:
    /// `/metrics` did not say).
    pub queue_flood_store_reads: Vec<Option<u64>>,
    /// The same during a larger flood, whose surplus is refused (503) and retried at once.
    pub probe_flood: Measure,
    pub flood: Measure,
    pub rss_kib: Option<u64>,
    /// The second factors' rows, on a server of their own on the same store.
    pub second_factor: Outcome<SecondFactorFigures>,
}

/// What a TOTP check and a passkey assertion cost (issue 18): each of `users` one-factor
/// sessions takes its second step once per round (one-shot: a code is accepted once per
/// user per 30-second step, a ceremony once), next to verify in the same rounds.
#[derive(Clone, Debug, Default)]
pub struct SecondFactorFigures {
    /// Users, each with TOTP and a passkey; each round checks every one once per factor.
    pub users: usize,
    pub connections: usize,
    /// `GET /api/session`, closed loop, on the same server in the same rounds.
    pub verify: Rounds,
    /// `POST /api/2fa/totp`: checks/s over the pass, latencies, server CPU per check.
    pub totp: Rounds,
    /// `POST /api/2fa/passkey` (the finish): latencies; rate: whole ceremonies per second;
    /// CPU: the server's per ceremony (start and finish).
    pub passkey: Rounds,
    /// `POST /api/2fa/passkey/start`: latencies.
    pub passkey_start: Rounds,
    /// The client's own work within a ceremony (the software authenticator's signature).
    pub passkey_client: Rounds,
    /// Whole ceremonies, start to finish: latencies.
    pub passkey_whole: Rounds,
}

impl SecondFactorFigures {
    /// Verifications per TOTP check: the median of the rounds' verify/s ÷ checks/s.
    pub fn verify_per_totp(&self) -> f64 {
        self.verify.ratio_to(&self.totp)
    }

    /// Verifications per passkey ceremony, likewise.
    pub fn verify_per_passkey(&self) -> f64 {
        self.verify.ratio_to(&self.passkey)
    }

    /// The rounds' statuses, when any answer was not a 200.
    pub fn unclean(&self) -> Option<String> {
        let bad: Vec<String> = [&self.totp, &self.passkey, &self.verify]
            .into_iter()
            .filter(|r| !r.clean())
            .map(rounds_statuses)
            .collect();
        (!bad.is_empty()).then(|| bad.join("; "))
    }
}

#[derive(Clone, Debug)]
pub struct ScalePoint {
    pub stored: u64,
    pub verify: Rounds,
    pub rss_kib: Option<u64>,
    /// Verifications that read the store (cache miss) during the rounds, from the server's
    /// `/metrics` (`None`: it did not say).
    pub store_reads: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Scale {
    pub small: ScalePoint,
    pub large: ScalePoint,
}

#[derive(Clone, Debug)]
pub struct Purge {
    pub expired: u64,
    pub live: u64,
    /// As `sessiond session purge` reported.
    pub removed: u64,
    pub seconds: f64,
    pub probe_idle: Measure,
    pub probe_during: Measure,
    /// Expired sessions left afterwards (should be none).
    pub left: u64,
}

#[derive(Clone, Debug)]
pub struct PeerFigures {
    pub me: Rounds,
    /// The peer stack's bare route, when it has one.
    pub healthz: Option<Rounds>,
    /// sessiond's `GET /healthz` in the same rounds, measured when the peer has a bare route.
    pub our_healthz: Option<Rounds>,
    /// sessiond's `GET /api/session` on the comparable store, in the same rounds.
    pub ours: Rounds,
}

/// The example app's page with a session against its public page, in the same rounds.
#[derive(Clone, Debug)]
pub struct ExampleFigures {
    /// `GET /`: no session work.
    pub home: Rounds,
    /// `GET /private` with a valid cookie.
    pub private: Rounds,
}

impl ExampleFigures {
    /// `GET /private` ÷ `GET /`, the median of the rounds' ratios.
    pub fn ratio(&self) -> f64 {
        self.private.ratio_to(&self.home)
    }
}

#[derive(Clone, Debug)]
pub struct PeerRow {
    pub name: &'static str,
    /// The sessiond store it is compared with.
    pub versus: StoreKind,
    pub outcome: Outcome<PeerFigures>,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub smoke: bool,
    pub machine: Machine,
    /// How the load was applied, in words.
    pub method: String,
    pub stores: Vec<(StoreKind, Outcome<StoreFigures>)>,
    pub scale: Outcome<Scale>,
    pub purge: Outcome<Purge>,
    /// The storage-scale rows (PostgreSQL's purge and ten million sessions, Redis bytes per
    /// session, nginx `auth_request`).
    pub storage: crate::storage::Storage,
    pub peers: Vec<PeerRow>,
    /// The example app (`examples/example-app`).
    pub example: Outcome<ExampleFigures>,
    /// The cache's coherence across instances (issue 20): idle store load, revocation
    /// latency, a hundred simulated instances.
    pub coherence: crate::coherence::Coherence,
    /// Connections of the queue-sized and of the large login flood.
    pub floods: (usize, usize),
    pub seconds: f64,
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub label: String,
    /// SQLite, PostgreSQL, Redis.
    pub cells: [String; 3],
    pub target: String,
}

pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x < 100.0 {
        return format!("{x:.1}");
    }
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub(crate) fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// A mark against the second round's target (docs/reference/performance.md, "At scale"), and
/// the first round's when only that one is met.
fn two_rounds(now: bool, first: bool) -> &'static str {
    match (now, first) {
        (true, _) => "✓",
        (false, true) => "✗ (first round's ✓)",
        (false, false) => "✗",
    }
}

/// The first round's bar for verify and forward auth ÷ `/healthz`.
fn first_verify_bar(k: StoreKind) -> f64 {
    if k == StoreKind::Sqlite {
        0.85
    } else {
        0.5
    }
}

pub(crate) fn check(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

fn statuses_note(m: &Measure) -> String {
    m.status_summary()
}

/// What a login flood got: hashed answers (right and wrong) and refusals, per second.
fn flood_note(m: &Measure) -> String {
    let secs = m.seconds.max(1e-3);
    let hashed = (m.status(200) + m.status(401)) as f64 / secs;
    let mut note = format!(
        "logins hashed: {}/s ({}× 200, {}× 401)",
        thousands(hashed),
        m.status(200),
        m.status(401)
    );
    for (code, what) in [(503, "refused"), (429, "throttled")] {
        if m.status(code) > 0 {
            let _ = write!(
                note,
                ", {what} ({code}): {}/s",
                thousands(m.status(code) as f64 / secs)
            );
        }
    }
    if m.io_errors > 0 {
        let _ = write!(note, ", {} without answer", m.io_errors);
    }
    note
}

impl Report {
    pub fn store(&self, kind: StoreKind) -> &Outcome<StoreFigures> {
        self.stores
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, o)| o)
            .unwrap_or(&NOT_RUN)
    }

    /// The table's rows, in order.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let per_store =
            |label: &str, target: &str, f: &dyn Fn(StoreKind, &StoreFigures) -> String| Row {
                label: label.to_owned(),
                cells: StoreKind::ALL.map(|k| self.store(k).cell(|s| f(k, s))),
                target: target.to_owned(),
            };
        rows.push(per_store(
            "`GET /healthz` (no session work): req/s · p50 / p99",
            "",
            &|_, s| s.healthz.cell(),
        ));
        rows.push(per_store(
            "`GET /api/session` (verify): req/s · p50 / p99",
            "",
            &|_, s| s.session.cell(),
        ));
        rows.push(per_store(
            "`GET /api/authz/forward-auth` (verify): req/s · p50 / p99",
            "",
            &|_, s| match &s.forward_auth {
                Ok(r) => r.cell(),
                Err(why) => format!("n/a ({why})"),
            },
        ));
        rows.push(per_store(
            "`POST /api/login`: logins/s · p50 / p99",
            "",
            &|_, s| {
                let l = &s.login.logins;
                let mut c = format!(
                    "{}/s · {} / {} ms",
                    thousands(l.rps()),
                    ms(l.p50()),
                    ms(l.p99())
                );
                let unclean: Vec<String> =
                    l.0.iter()
                        .filter(|m| m.status(503) + m.status(429) > 0 || !m.clean())
                        .map(statuses_note)
                        .collect();
                if !unclean.is_empty() {
                    let _ = write!(c, " ({})", unclean.join("; "));
                }
                c
            },
        ));
        rows.push(per_store(
            "**verify ÷ `/healthz`** (`/api/session`)",
            "≥ 0.9 (first round: ≥ 0.85 SQLite; ≥ 0.5 PostgreSQL, Redis)",
            &|k, s| {
                let r = s.session.ratio_to(&s.healthz);
                format!(
                    "**{r:.2}** {}",
                    two_rounds(r >= 0.9, r >= first_verify_bar(k))
                )
            },
        ));
        rows.push(per_store(
            "**forward-auth ÷ `/healthz`**",
            "as verify",
            &|k, s| match &s.forward_auth {
                Ok(fa) => {
                    let r = fa.ratio_to(&s.healthz);
                    format!(
                        "**{r:.2}** {}",
                        two_rounds(r >= 0.9, r >= first_verify_bar(k))
                    )
                }
                Err(_) => "n/a".into(),
            },
        ));
        rows.push(per_store(
            "**logins/s ÷ argon2id hashes/s** (m=19456 KiB, t=2, p=1, one thread per core, \
             hashing in rounds that alternate with the logins)",
            "≥ 0.95 (first round: ≥ 0.9)",
            &|_, s| {
                let r = s.login.ratio();
                let (rate, threads) = s.login.hash_rate();
                let rounds: Vec<String> =
                    s.login.ratios().iter().map(|r| format!("{r:.2}")).collect();
                format!(
                    "**{r:.2}** {} (hash rate {}/s on {threads} threads; rounds {})",
                    two_rounds(r >= 0.95, r >= 0.9),
                    thousands(rate),
                    rounds.join(", ")
                )
            },
        ));
        let (queue_conns, flood_conns) = self.floods;
        rows.push(per_store(
            &format!(
                "**verify p99: idle → during a login flood the hash queue holds** ({queue_conns} \
                 connections: hashing never stops, nothing is refused)"
            ),
            "≤ 1.5× (first round: ≤ 2×)",
            &|_, s| {
                let x = s.probe_queue_flood.p99_ms / s.probe_idle.p99_ms.max(1e-9);
                let rounds: Vec<String> = s
                    .queue_flood_ratios
                    .iter()
                    .map(|r| format!("{r:.1}×"))
                    .collect();
                let reads: Vec<String> = s
                    .queue_flood_store_reads
                    .iter()
                    .map(|r| r.map_or("?".into(), |r| r.to_string()))
                    .collect();
                format!(
                    "{} → {} ms (**{x:.1}×**) {} (the median round; every round: {}; \
                     verifications the cache could not answer, in each: {}); {}",
                    ms(s.probe_idle.p99_ms),
                    ms(s.probe_queue_flood.p99_ms),
                    two_rounds(x <= 1.5, x <= 2.0),
                    rounds.join(", "),
                    reads.join(", "),
                    flood_note(&s.queue_flood)
                )
            },
        ));
        rows.push(per_store(
            &format!(
                "verify p99: idle → during a {flood_conns}-connection login flood (the surplus \
                 is refused with 503 and comes straight back)"
            ),
            "keeps answering (robustness)",
            &|_, s| {
                let x = s.probe_flood.p99_ms / s.probe_idle.p99_ms.max(1e-9);
                format!(
                    "{} → {} ms ({x:.1}×); {}",
                    ms(s.probe_idle.p99_ms),
                    ms(s.probe_flood.p99_ms),
                    flood_note(&s.flood)
                )
            },
        ));
        rows.push(per_store("server RSS after the rows above", "", &|_, s| {
            mib(s.rss_kib)
        }));
        rows.push(per_store(
            "**TOTP check** (`POST /api/2fa/totp`, one-factor session → two-factor): checks/s · \
             p50 / p99; server CPU per check; verifications per check (`GET /api/session` in the \
             same rounds)",
            "",
            &|_, s| {
                s.second_factor.cell(|f| {
                    let mut c = format!(
                        "{}/s · {} / {} ms; server CPU {} per check; **{:.0} verifications** per \
                         check (verify {}/s); {}",
                        thousands(f.totp.rps()),
                        ms(f.totp.p50()),
                        ms(f.totp.p99()),
                        cpu_us(f.totp.cpu()),
                        f.verify_per_totp(),
                        thousands(f.verify.rps()),
                        one_shot_note(f)
                    );
                    if let Some(bad) = f.unclean() {
                        let _ = write!(c, " (answers: {bad})");
                    }
                    c
                })
            },
        ));
        rows.push(per_store(
            "**passkey assertion** (`POST /api/2fa/passkey/start`, the signature by a software \
             authenticator, `POST /api/2fa/passkey`): ceremonies/s · finish p50 / p99; server CPU \
             per ceremony; verifications per ceremony",
            "",
            &|_, s| {
                s.second_factor.cell(|f| {
                    format!(
                        "{}/s · {} / {} ms (start {} / {} ms; whole ceremony {} / {} ms, the \
                         client's signature {} ms of it at p50); server CPU {} per ceremony; \
                         **{:.0} verifications** per ceremony; {}",
                        thousands(f.passkey.rps()),
                        ms(f.passkey.p50()),
                        ms(f.passkey.p99()),
                        ms(f.passkey_start.p50()),
                        ms(f.passkey_start.p99()),
                        ms(f.passkey_whole.p50()),
                        ms(f.passkey_whole.p99()),
                        ms(f.passkey_client.p50()),
                        cpu_us(f.passkey.cpu()),
                        f.verify_per_passkey(),
                        one_shot_note(f)
                    )
                })
            },
        ));
        let sqlite_only = |label: String, target: &str, cell: String| Row {
            label,
            cells: [cell, "—".into(), "—".into()],
            target: target.to_owned(),
        };
        let (small_n, large_n) = match self.scale.done() {
            Some(sc) => (
                thousands(sc.small.stored as f64),
                thousands(sc.large.stored as f64),
            ),
            None => ("1,000".into(), "1,000,000".into()),
        };
        rows.push(sqlite_only(
            format!("verify with {small_n} stored sessions: req/s · p99 · RSS"),
            "",
            self.scale.cell(|sc| {
                format!(
                    "{}/s · {} ms · {}; verifications that read the store in the rounds: {}",
                    thousands(sc.small.verify.rps()),
                    ms(sc.small.verify.p99()),
                    mib(sc.small.rss_kib),
                    sc.small.store_reads.map_or("?".into(), |n| n.to_string())
                )
            }),
        ));
        rows.push(sqlite_only(
            format!("verify with {large_n} stored sessions: req/s · p99 · RSS"),
            "",
            self.scale.cell(|sc| {
                format!(
                    "{}/s · {} ms · {}; verifications that read the store in the rounds: {}",
                    thousands(sc.large.verify.rps()),
                    ms(sc.large.verify.p99()),
                    mib(sc.large.rss_kib),
                    sc.large.store_reads.map_or("?".into(), |n| n.to_string())
                )
            }),
        ));
        rows.push(sqlite_only(
            format!("**verify at {large_n} ÷ at {small_n}**; RSS"),
            "≥ 0.9; memory flat",
            self.scale.cell(|sc| {
                let r = sc.large.verify.ratio_to(&sc.small.verify);
                let grew = match (sc.small.rss_kib, sc.large.rss_kib) {
                    (Some(a), Some(b)) if a > 0 => b as f64 / a as f64,
                    _ => 0.0,
                };
                format!("**{r:.2}** {}; RSS ×{grew:.2}", check(r >= 0.9))
            }),
        ));
        // The storage-scale rows (`crate::storage`): the purge on SQLite and PostgreSQL, then
        // PostgreSQL's ten million sessions, Redis bytes per session, nginx `auth_request`.
        rows.extend(crate::storage::rows(&self.purge, &self.storage));
        for peer in &self.peers {
            let mut cells: [String; 3] = ["—".into(), "—".into(), "—".into()];
            let col = StoreKind::ALL
                .iter()
                .position(|k| *k == peer.versus)
                .unwrap_or(0);
            cells[col] = peer.outcome.cell(|p| {
                let mut c = format!("{}/s · p99 {} ms", thousands(p.me.rps()), ms(p.me.p99()));
                if let Some(h) = &p.healthz {
                    let _ = write!(c, " (its bare route: {}/s)", thousands(h.rps()));
                }
                let r = p.ours.ratio_to(&p.me);
                let bar = peer_target(peer.name);
                let _ = write!(
                    c,
                    "; sessiond in the same rounds: {}/s; **sessiond ÷ it = {r:.1}** {}",
                    thousands(p.ours.rps()),
                    check(r >= bar)
                );
                c
            });
            rows.push(Row {
                label: format!("peer: {} `GET /me`", peer.name),
                cells,
                target: format!("sessiond verify ≥ {}×", peer_target(peer.name)),
            });
        }
        // The middleware's own cost: sessiond's `/healthz` beside the tower peer's bare axum
        // route, in the peer rows' rounds (docs/reference/performance.md, "At scale").
        let mut cells: [String; 3] = ["—".into(), "—".into(), "—".into()];
        for peer in self
            .peers
            .iter()
            .filter(|p| p.name.starts_with("axum-login"))
        {
            let col = StoreKind::ALL
                .iter()
                .position(|k| *k == peer.versus)
                .unwrap_or(0);
            cells[col] = peer.outcome.cell(|p| match (&p.our_healthz, &p.healthz) {
                (Some(ours), Some(theirs)) => {
                    let r = ours.ratio_to(theirs);
                    format!(
                        "**{r:.2}** {} ({}/s ÷ {}/s, {})",
                        check(r >= HEALTHZ_VS_BARE_TARGET),
                        thousands(ours.rps()),
                        thousands(theirs.rps()),
                        peer.name
                    )
                }
                _ => "—".into(),
            });
        }
        rows.push(Row {
            label: "**sessiond `GET /healthz` ÷ the tower peer's bare axum route** (`/healthz`, \
                    same rounds; the column is the peer's store, `/healthz` does no store work)"
                .into(),
            cells,
            target: format!("≥ {HEALTHZ_VS_BARE_TARGET}"),
        });
        rows.push(sqlite_only(
            "**example app: `GET /private` (valid cookie) ÷ its `GET /`**; next to it, \
             axum-login + tower-sessions: `GET /me` (cookie) ÷ its `/healthz`"
                .into(),
            &format!("≥ {EXAMPLE_TARGET}"),
            self.example.cell(|e| {
                let r = e.ratio();
                let mut c = format!(
                    "**{r:.2}** {} (`/private` {}/s · p99 {} ms, `/` {}/s",
                    check(r >= EXAMPLE_TARGET),
                    thousands(e.private.rps()),
                    ms(e.private.p99()),
                    thousands(e.home.rps()),
                );
                for (route, rounds) in [("`/private`", &e.private), ("`/`", &e.home)] {
                    if !rounds.clean() {
                        let _ = write!(c, "; {route} answered {}", rounds_statuses(rounds));
                    }
                }
                let peer = self
                    .tower_peer_ratio()
                    .map_or_else(|| "not measured".to_owned(), |r| format!("**{r:.2}**"));
                let _ = write!(c, "); the peer's: {peer}");
                c
            }),
        ));
        rows.extend(self.coherence.rows());
        rows
    }

    /// The tower peer's (SQLite store) `GET /me` ÷ its `/healthz`, from its row's rounds.
    pub fn tower_peer_ratio(&self) -> Option<f64> {
        self.peers
            .iter()
            .filter(|p| p.name.starts_with("axum-login") && p.versus == StoreKind::Sqlite)
            .find_map(|p| {
                let f = p.outcome.done()?;
                Some(f.me.ratio_to(f.healthz.as_ref()?))
            })
    }

    /// [`Self::rows`] with a reason stated once per column: later rows of a skipped or failed
    /// column only say so.
    fn compact_rows(&self) -> Vec<Row> {
        let mut rows = self.rows();
        for col in 0..3 {
            let mut seen: Vec<String> = Vec::new();
            for r in &mut rows {
                let cell = &mut r.cells[col];
                if cell.starts_with("skipped: ") || cell.starts_with("**failed**: ") {
                    if seen.contains(cell) {
                        *cell = if cell.starts_with("skipped") {
                            "skipped (above)".into()
                        } else {
                            "**failed** (above)".into()
                        };
                    } else {
                        seen.push(cell.clone());
                    }
                }
            }
        }
        rows
    }

    /// The table as Markdown.
    pub fn table(&self) -> String {
        let mut t =
            String::from("| | SQLite | PostgreSQL | Redis | target |\n|---|---|---|---|---|\n");
        for r in self.compact_rows() {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                r.label,
                r.cells[0].replace('|', "\\|"),
                r.cells[1].replace('|', "\\|"),
                r.cells[2].replace('|', "\\|"),
                r.target
            );
        }
        t
    }
}

/// sessiond's `/healthz` ÷ the tower peer's bare route (docs/reference/performance.md, "At
/// scale").
pub const HEALTHZ_VS_BARE_TARGET: f64 = 0.95;

/// The example app's `GET /private` ÷ its `GET /` (docs/reference/performance.md).
pub const EXAMPLE_TARGET: f64 = 0.9;

/// `123 µs (user 100 + kernel 23)` from a median CPU reading.
fn cpu_us(c: Option<CpuPerAnswer>) -> String {
    c.map_or_else(
        || "?".into(),
        |c| {
            format!(
                "{:.0} µs (user {:.0} + kernel {:.0})",
                c.server_user_us + c.server_kernel_us,
                c.server_user_us,
                c.server_kernel_us
            )
        },
    )
}

/// How a second-factor row was measured: one-shot passes, not windows.
fn one_shot_note(f: &SecondFactorFigures) -> String {
    let rounds = f.totp.0.len();
    format!(
        "{} users, each checked once per round over {} connections; median of {rounds} \
         round{}",
        f.users,
        f.connections,
        if rounds == 1 { "" } else { "s" }
    )
}

/// The statuses of every round that was not clean.
fn rounds_statuses(r: &Rounds) -> String {
    r.0.iter()
        .filter(|m| !m.clean())
        .map(Measure::status_summary)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The target for each peer (docs/reference/performance.md, "Targets").
pub fn peer_target(name: &str) -> f64 {
    if name.starts_with("Django") {
        80.0
    } else {
        5.0
    }
}

static NOT_RUN: Outcome<StoreFigures> = Outcome::Skipped(String::new());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(41.26), "41.3");
        assert_eq!(ms(0.4567), "0.46");
        assert_eq!(ms(12.34), "12.3");
        assert_eq!(ms(456.7), "457");
    }

    #[test]
    fn medians_and_ratios_by_round() {
        let m = |rps| Measure {
            rps,
            ..Measure::default()
        };
        let a = Rounds(vec![m(90.0), m(50.0), m(100.0)]);
        let b = Rounds(vec![m(100.0), m(50.0), m(200.0)]);
        assert_eq!(a.rps(), 90.0);
        // Per-round ratios 0.9, 1.0, 0.5: the median is 0.9.
        assert!((a.ratio_to(&b) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn cpu_medians_skip_rounds_without_a_reading() {
        let m = |u: f64| Measure {
            cpu: Some(CpuPerAnswer {
                server_user_us: u,
                server_kernel_us: 2.0 * u,
                client_us: 3.0 * u,
            }),
            ..Measure::default()
        };
        assert_eq!(Rounds(vec![Measure::default()]).cpu(), None);
        let r = Rounds(vec![m(1.0), Measure::default(), m(5.0), m(2.0)]);
        assert_eq!(
            r.cpu(),
            Some(CpuPerAnswer {
                server_user_us: 2.0,
                server_kernel_us: 4.0,
                client_us: 6.0
            })
        );
    }

    #[test]
    fn login_ratios_pair_each_round_with_its_own_hash_rate() {
        // Logins answered 200 in one second; the 503s beside them are refusals, not logins.
        let m = |rps: f64| Measure {
            rps: rps + 500.0,
            seconds: 1.0,
            statuses: [(200, rps as u64), (503, 500)].into_iter().collect(),
            ..Measure::default()
        };
        let h = |per_second| HashRate {
            per_second,
            threads: 2,
            hashes: 1,
            seconds: 1.0,
        };
        let l = LoginRounds {
            logins: Rounds(vec![m(45.0), m(60.0), m(38.0)]),
            hash: vec![h(50.0), h(60.0), h(40.0)],
        };
        // 0.9, 1.0, 0.95 (each round against its own hash rate), not 45, 60, 38 ÷ one rate.
        let r = l.ratios();
        assert!((r[0] - 0.9).abs() < 1e-9 && (r[1] - 1.0).abs() < 1e-9);
        assert!((l.ratio() - 0.95).abs() < 1e-9);
        assert_eq!(l.hash_rate(), (50.0, 2));
        // A round whose hashing measured nothing counts as 0, never as infinite.
        let z = LoginRounds {
            logins: Rounds(vec![m(10.0)]),
            hash: vec![h(0.0)],
        };
        assert_eq!(z.ratios(), vec![0.0]);
    }
}
