//! Password hashing: argon2id on a bounded pool of dedicated threads.
//!
//! * **argon2id, m = 19 MiB, t = 2, p = 1**: OWASP's recommended floor; memory-hard, so GPUs
//!   and ASICs gain little over our CPU.
//! * **Dedicated threads, bounded queue**: a hash takes tens of milliseconds of CPU and
//!   19 MiB of memory.
//!   Running it on tokio's worker threads would stall every other request; an unbounded queue
//!   would let a login flood exhaust memory. Work past the queue is refused at once
//!   ([`HashError::Overloaded`], a `503` with `Retry-After`).
//! * **Unknown users cost the same**: [`Hasher::verify_dummy`] verifies against a real hash of
//!   a random password, so response time does not reveal whether a username exists.
//! * **Parameters from stored hashes are bounded** (m ≤ 64 MiB, t ≤ 16, p ≤ 8): a tampered or hostile
//!   hash in the database cannot make one login allocate gigabytes.

pub mod worker;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sessiond_core::Password;
use tokio::sync::oneshot;

pub(crate) const M_KIB: u32 = 19 * 1024;
pub(crate) const T_COST: u32 = 2;
pub(crate) const P_COST: u32 = 1;

/// Limits on parameters read from stored hashes. The memory bound is also what one hashing
/// thread may keep allocated for good (see `with_blocks`).
pub(crate) const MAX_M_KIB: u32 = 64 * 1024;
pub(crate) const MAX_T_COST: u32 = 16;
pub(crate) const MAX_P_COST: u32 = 8;

/// Why a password could not be hashed or verified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HashError {
    /// The pool's queue is full: refused at once rather than queued without bound (answer
    /// `503` with `Retry-After`; [`crate::AuthError::status`] does).
    #[error("password hashing queue is full")]
    Overloaded,
    /// The pool could not do the work (no randomness, a thread or the worker process gone, a
    /// pool that could not start). A malformed stored hash is not this: it verifies as a
    /// mismatch (and is logged).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password is the one the hash was made from.
    pub matches: bool,
    /// The stored hash uses other parameters than ours: re-hash it now that we know the
    /// password.
    pub needs_rehash: bool,
}

type Job = Box<dyn FnOnce() + Send>;

/// Who a password job is for (an account, an address, a session), for the pool's fairness:
/// see [`Hasher`]. Set around a request's password work with [`with_owners`]; jobs
/// submitted outside one have no owner.
#[derive(Clone, Debug, Default)]
pub(crate) struct Owners(Vec<String>);

impl Owners {
    /// Owners from labelled keys (`"a:alice"`, `"i:192.0.2.1"`, `"s:<session id>"`).
    pub(crate) fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self(keys.into_iter().collect())
    }
}

tokio::task_local! {
    static OWNERS: Owners;
}

/// Runs `f` with its password jobs counted against `owners`' shares of the pool.
pub(crate) async fn with_owners<F: std::future::Future>(owners: Owners, f: F) -> F::Output {
    OWNERS.scope(owners, f).await
}

/// The places of the pool each owner holds (jobs submitted and not finished).
#[derive(Default)]
struct Shares(Mutex<HashMap<String, usize>>);

/// One job's places, given back when the job is finished (or refused).
struct Share {
    shares: Arc<Shares>,
    keys: Vec<String>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut m = self.shares.0.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = m.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
    }
}

/// A pool of hashing threads with a bounded queue: in this process, or in a worker process of
/// its own (see `password::worker`). Cheap to clone.
#[derive(Clone)]
pub struct Hasher {
    backend: Backend,
    dummy: Arc<String>,
    /// Jobs submitted and not yet finished, and how many the pool takes (threads + queue).
    busy: Arc<AtomicUsize>,
    room: usize,
    /// Places held per owner, so one user's parallel password checks cannot fill the pool
    /// and refuse everyone else's logins.
    shares: Arc<Shares>,
    /// How long jobs took (for metrics).
    metrics: Arc<HashMetrics>,
}

/// What the hashing pool did (for metrics; see [`Hasher::metrics`]).
#[derive(Debug)]
pub struct HashMetrics {
    /// Each admitted job, from its submission to its answer: the wait in the queue plus the
    /// hash itself (argon2id's own time is the floor; anything above it is queueing).
    pub duration: crate::metrics::Histogram,
}

impl Default for HashMetrics {
    fn default() -> Self {
        Self {
            duration: crate::metrics::Histogram::new(crate::metrics::HASH_BUCKETS),
        }
    }
}

#[derive(Clone)]
enum Backend {
    Threads(SyncSender<Job>),
    /// The worker process, and threads in this process for the jobs it cannot take (not
    /// started until one needs them).
    Process(Arc<worker::WorkerProcess>, Arc<Fallback>),
}

/// In-process threads for a worker process that died and cannot start again.
struct Fallback {
    threads: usize,
    queue: usize,
    tx: std::sync::OnceLock<Result<SyncSender<Job>, HashError>>,
}

impl Fallback {
    fn sender(&self) -> Result<&SyncSender<Job>, HashError> {
        self.tx
            .get_or_init(|| spawn_threads(self.threads, self.queue))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// `threads` hashing threads at the lowest priority, fed by a queue of `queue` jobs.
fn spawn_threads(threads: usize, queue: usize) -> Result<SyncSender<Job>, HashError> {
    let (tx, rx) = mpsc::sync_channel::<Job>(queue);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                lower_priority();
                loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return, // every sender dropped: shut down
                    };
                    job();
                }
            })
            .map_err(|e| HashError::Failed(e.to_string()))?;
    }
    Ok(tx)
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

thread_local! {
    /// This thread's argon2 memory, allocated once and reused for every hash. Allocating
    /// 19 MiB per hash instead leaves the allocator holding freed blocks in per-thread arenas,
    /// and RSS grows with every login (docs/performance.md, "One argon2 buffer per thread").
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn with_blocks<T>(count: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    BLOCKS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < count {
            b.resize(count, Block::default());
        }
        f(&mut b[..count])
    })
}

/// Argon2id with `params`, into `out`, on this thread's reusable memory.
fn compute(
    password: &Password,
    salt: &[u8],
    version: Version,
    params: Params,
    out: &mut [u8],
) -> Result<(), HashError> {
    let count = params.block_count();
    let a = Argon2::new(Algorithm::Argon2id, version, params);
    with_blocks(count, |blocks| {
        a.hash_password_into_with_memory(password.expose().as_bytes(), salt, out, blocks)
    })
    .map_err(|e| HashError::Failed(e.to_string()))
}

/// Hashes on the calling thread. For the CLI and for the pool's workers.
pub fn hash_blocking(password: &Password) -> Result<String, HashError> {
    let failed = |e: argon2::password_hash::Error| HashError::Failed(e.to_string());
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| HashError::Failed(e.to_string()))?;
    let params = Params::new(M_KIB, T_COST, P_COST, Some(32))
        .map_err(|e| HashError::Failed(e.to_string()))?;
    let mut out = [0u8; 32];
    compute(password, &salt, Version::V0x13, params.clone(), &mut out)?;
    let salt = SaltString::encode_b64(&salt).map_err(failed)?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(failed)?,
        salt: Some(Salt::from(&salt)),
        hash: Some(Output::new(&out).map_err(failed)?),
    };
    Ok(phc.to_string())
}

/// Verifies on the calling thread. A malformed, non-argon2id or out-of-bounds stored hash
/// never matches (and is logged, without the hash).
pub(crate) fn verify_blocking(password: &Password, phc: &str) -> Verified {
    let no = Verified {
        matches: false,
        needs_rehash: false,
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        tracing::warn!("stored password hash is not a PHC string");
        return no;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        tracing::warn!(algorithm = %parsed.algorithm, "stored password hash is not argon2id");
        return no;
    }
    let (Ok(stored), Some(expected), Some(salt)) =
        (Params::try_from(&parsed), parsed.hash, parsed.salt)
    else {
        tracing::warn!("stored password hash has invalid parameters");
        return no;
    };
    if stored.m_cost() > MAX_M_KIB || stored.t_cost() > MAX_T_COST || stored.p_cost() > MAX_P_COST {
        tracing::warn!(
            m = stored.m_cost(),
            t = stored.t_cost(),
            p = stored.p_cost(),
            "stored password hash parameters out of bounds"
        );
        return no;
    }
    let version = parsed.version.map_or(Ok(Version::V0x13), Version::try_from);
    let mut salt_buf = [0u8; 64];
    let (Ok(version), Ok(salt_bytes)) = (version, salt.decode_b64(&mut salt_buf)) else {
        tracing::warn!("stored password hash has an invalid version or salt");
        return no;
    };
    let Ok(params) = Params::new(
        stored.m_cost(),
        stored.t_cost(),
        stored.p_cost(),
        Some(expected.len()),
    ) else {
        return no;
    };
    // The hash's own parameters drive the verification (that is what the PHC string is for).
    let mut out = vec![0u8; expected.len()];
    if compute(password, salt_bytes, version, params, &mut out).is_err() {
        return no;
    }
    // `Output`'s equality is constant-time: no timing hint of how much of a guess matched.
    let matches = Output::new(&out).is_ok_and(|o| o == expected);
    let needs_rehash = matches
        && (stored.m_cost() != M_KIB
            || stored.t_cost() != T_COST
            || stored.p_cost() != P_COST
            || version != Version::V0x13);
    Verified {
        matches,
        needs_rehash,
    }
}

/// Puts the calling (hashing) thread below every request-serving thread.
///
/// The performance targets (docs/reference/performance.md): verify p99 during a login flood
/// stays within 2× of idle. A hash takes tens of milliseconds of CPU; a request that needs
/// no password must not wait behind it.
/// * First choice, `SCHED_IDLE` (Linux): the scheduler runs these threads only when no normal
///   thread wants the core, and a request thread that wakes up preempts them at once. With
///   `nice 10` instead the kernel lets the running hash finish its time slice first (EEVDF's
///   run-to-parity; docs/performance.md, "Hashing threads below request threads"). The cost:
///   on a machine whose cores are kept fully busy by other normal work, logins wait until a
///   core is free (the queue is bounded, so they are refused with `503`, never piled up).
/// * Elsewhere, or if refused: nice 10 (crossplatform priority 22 maps to it on Linux).
///
/// Either only ranks these threads within sessiond's scheduling group. Processes in other
/// groups (a Linux autogroup per session, or a cgroup with the CPU controller), such as a
/// PostgreSQL or Redis on the same host, share the cores with sessiond's group as equals, so
/// their answers to sessiond wait for hashes (docs/performance.md, "Hashing beside a store on
/// the same host"; README, "Brute force").
fn lower_priority() {
    use thread_priority::{set_current_thread_priority, ThreadPriority, ThreadPriorityValue};
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        let idle = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
        match idle {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = ?e, "SCHED_IDLE refused; using nice 10"),
        }
    }
    let lowered = ThreadPriorityValue::try_from(22u8)
        .map_err(|e| format!("{e:?}"))
        .and_then(|v| {
            set_current_thread_priority(ThreadPriority::Crossplatform(v))
                .map_err(|e| format!("{e:?}"))
        });
    if let Err(e) = lowered {
        tracing::warn!(error = %e, "could not lower the hashing threads' priority");
    }
}

impl Hasher {
    /// Starts `threads` workers with room for `queue` waiting jobs, and computes the dummy
    /// hash (one real hash).
    pub fn start(threads: usize, queue: usize) -> Result<Self, HashError> {
        let backend = Backend::Threads(spawn_threads(threads, queue)?);
        Self::with_backend(backend, Arc::default(), threads.max(1) + queue)
    }

    /// Like [`Self::start`], with the threads in a worker process started from `exe` (this
    /// program: `sessiond __hash-worker`), in a scheduling group of its own (see `password::worker`).
    pub fn start_isolated(exe: &Path, threads: usize, queue: usize) -> Result<Self, HashError> {
        let busy = Arc::new(AtomicUsize::new(0));
        let process = worker::WorkerProcess::start(exe, threads, Arc::clone(&busy))?;
        let fallback = Fallback {
            threads: threads.max(1),
            // As many as the pool takes: a job the pool admitted always finds a place.
            queue: threads.max(1) + queue,
            tx: std::sync::OnceLock::new(),
        };
        Self::with_backend(
            Backend::Process(Arc::new(process), Arc::new(fallback)),
            busy,
            threads.max(1) + queue,
        )
    }

    fn with_backend(
        backend: Backend,
        busy: Arc<AtomicUsize>,
        room: usize,
    ) -> Result<Self, HashError> {
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).map_err(|e| HashError::Failed(e.to_string()))?;
        let dummy_pw = Password::new(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            random,
        ))
        .expect("32 characters is a valid password");
        let dummy = hash_blocking(&dummy_pw)?;
        Ok(Self {
            backend,
            dummy: Arc::new(dummy),
            busy,
            room,
            shares: Arc::default(),
            metrics: Arc::default(),
        })
    }

    /// Most places one owner may hold while the pool is at least half full: a small share
    /// (an eighth), so a single account, address or session never crowds out the others.
    fn small_share(&self) -> usize {
        (self.room / 8).max(1)
    }

    /// Takes places for the current task's owners, or refuses ([`HashError::Overloaded`],
    /// a `503` like a full pool). Fairness rule: no owner ever holds more than half the
    /// pool's places; once the pool is half full, no owner holding its small share may take
    /// another. The other half therefore always has room for everyone else: one account,
    /// address or session flooding the pool cannot refuse another's login. (Below half full
    /// nothing is refused, so one client's honest burst, such as the benchmark's logins,
    /// runs at full speed.)
    fn admit(&self) -> Result<Share, HashError> {
        let owners = OWNERS.try_with(|o| o.0.clone()).unwrap_or_default();
        let mut m = self.shares.0.lock().unwrap_or_else(|e| e.into_inner());
        let cap = self.owner_cap();
        if owners.iter().any(|k| m.get(k).copied().unwrap_or(0) >= cap) {
            return Err(HashError::Overloaded);
        }
        for k in &owners {
            *m.entry(k.clone()).or_default() += 1;
        }
        drop(m);
        Ok(Share {
            shares: Arc::clone(&self.shares),
            keys: owners,
        })
    }

    /// The places an owner may hold now ([`Self::admit`]'s rule): half the pool, or only
    /// its small share once the pool is half full.
    fn owner_cap(&self) -> usize {
        let half = (self.room / 2).max(1);
        if self.busy.load(Ordering::Acquire) >= half {
            self.small_share()
        } else {
            half
        }
    }

    /// Whether a job for `owners` submitted now would be refused: the pool full
    /// ([`Self::saturated`]), or one of them holding all the places [`Self::admit`] lets it
    /// have. A hint for refusing a login before doing any other work for it (a login flood
    /// of one account or address is refused here, before its throttle reservation costs the
    /// store a write and its release another); the submission itself still decides.
    pub(crate) fn would_refuse(&self, owners: &Owners) -> bool {
        if self.saturated() {
            return true;
        }
        let cap = self.owner_cap();
        let m = self.shares.0.lock().unwrap_or_else(|e| e.into_inner());
        owners
            .0
            .iter()
            .any(|k| m.get(k).copied().unwrap_or(0) >= cap)
    }

    /// The server's pool: [`Self::for_this_machine`]'s size, in a worker process started
    /// from this executable where that works (Linux: out of the server's scheduling group),
    /// else in this process.
    pub fn for_the_server() -> Result<Self, HashError> {
        if cfg!(target_os = "linux") {
            let (threads, queue) = machine_size();
            let isolated = std::env::current_exe()
                .map_err(|e| HashError::Failed(e.to_string()))
                .and_then(|exe| Self::start_isolated(&exe, threads, queue));
            match isolated {
                Ok(h) => return Ok(h),
                Err(e) => tracing::warn!(
                    error = %e,
                    "password hashing stays in the server process (no worker process)"
                ),
            }
        }
        Self::for_this_machine()
    }

    /// The worker process's id, when hashing runs in one (tests, diagnostics).
    pub fn worker_pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Threads(_) => None,
            Backend::Process(p, _) => p.pid(),
        }
    }

    /// A pool sized for this machine: one thread per core, a queue of 16 per thread.
    pub fn for_this_machine() -> Result<Self, HashError> {
        let (threads, queue) = machine_size();
        Self::start(threads, queue)
    }

    async fn run<T: Send + 'static>(
        &self,
        tx: &SyncSender<Job>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = oneshot::channel();
        let share = self.admit()?;
        let busy = Arc::clone(&self.busy);
        busy.fetch_add(1, Ordering::AcqRel);
        // The share travels with the job: it is held until the job is done, even if the
        // request that submitted it went away.
        let job: Job = Box::new(move || {
            let out = f();
            busy.fetch_sub(1, Ordering::AcqRel);
            drop(share);
            let _ = done.send(out);
        });
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.busy.fetch_sub(1, Ordering::AcqRel);
                return Err(HashError::Overloaded);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.busy.fetch_sub(1, Ordering::AcqRel);
                return Err(HashError::Failed("hashing pool stopped".into()));
            }
        }
        result
            .await
            .map_err(|_| HashError::Failed("hashing worker died".into()))
    }

    /// Whether a job submitted now would be refused (every thread busy, the queue full). A
    /// hint for refusing a login before doing any other work for it; the submission itself
    /// still decides.
    pub fn saturated(&self) -> bool {
        self.busy.load(Ordering::Acquire) >= self.room
    }

    /// Jobs submitted and not finished: running on a thread, or waiting in the queue.
    pub fn in_flight(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// How many jobs the pool takes at once (threads + queue); past it, jobs are refused
    /// with [`HashError::Overloaded`].
    pub fn capacity(&self) -> usize {
        self.room
    }

    /// How long jobs took.
    pub fn metrics(&self) -> &HashMetrics {
        &self.metrics
    }

    /// Records a job's time unless it was refused at the door.
    fn timed<T>(&self, started: Instant, r: Result<T, HashError>) -> Result<T, HashError> {
        if !matches!(r, Err(HashError::Overloaded)) {
            self.metrics.duration.observe(started.elapsed());
        }
        r
    }

    /// Runs `op` in the worker process, counted in `busy` until it answers (or dies).
    async fn call(
        &self,
        process: &Arc<worker::WorkerProcess>,
        fallback: &Arc<Fallback>,
        op: worker::Op,
    ) -> Result<worker::Reply, HashError> {
        let share = self.admit()?;
        if self.busy.fetch_add(1, Ordering::AcqRel) >= self.room {
            self.busy.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Overloaded);
        }
        // On a task of its own, which holds the share until the job is done, even if the
        // request that submitted it went away.
        let (process, fallback, busy) = (
            Arc::clone(process),
            Arc::clone(fallback),
            Arc::clone(&self.busy),
        );
        tokio::spawn(async move {
            let reply = match process.call(&op).await {
                Ok(reply) => Ok(reply),
                // No worker answered (none running, or it died with the job): the job runs
                // here instead. Safe to repeat: hashing and verifying change nothing.
                Err(e) => {
                    tracing::debug!(error = %e, "hashing in the server's threads");
                    run_in_fallback(&fallback, &busy, op).await
                }
            };
            drop(share);
            reply
        })
        .await
        .map_err(|_| HashError::Failed("hashing task failed".into()))?
    }

    /// Hashes `password` (argon2id, a fresh random salt) into a PHC string, on the pool.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        let started = Instant::now();
        let r = self.hash_untimed(password).await;
        self.timed(started, r)
    }

    async fn hash_untimed(&self, password: Password) -> Result<String, HashError> {
        match &self.backend {
            Backend::Threads(tx) => self.run(tx, move || hash_blocking(&password)).await?,
            Backend::Process(p, f) => match self.call(p, f, worker::Op::Hash(password)).await? {
                worker::Reply::Hashed(h) => Ok(h),
                worker::Reply::Failed(e) => Err(HashError::Failed(e)),
                other => Err(unexpected(&other)),
            },
        }
    }

    /// Checks `password` against the PHC string `phc`, on the pool.
    pub async fn verify(&self, password: Password, phc: String) -> Result<Verified, HashError> {
        let started = Instant::now();
        let r = self.verify_untimed(password, phc).await;
        self.timed(started, r)
    }

    async fn verify_untimed(&self, password: Password, phc: String) -> Result<Verified, HashError> {
        match &self.backend {
            Backend::Threads(tx) => self.run(tx, move || verify_blocking(&password, &phc)).await,
            Backend::Process(p, f) => {
                match self.call(p, f, worker::Op::Verify(password, phc)).await? {
                    worker::Reply::Verified(v) => Ok(v),
                    worker::Reply::Failed(e) => Err(HashError::Failed(e)),
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    /// Spends the same work as a real verification, for a user that does not exist; always
    /// "no match".
    pub async fn verify_dummy(&self, password: Password) -> Result<(), HashError> {
        self.verify(password, String::clone(&self.dummy))
            .await
            .map(|_| ())
    }
}

/// Runs a worker's job on the fallback threads, counted in `busy` while it runs.
async fn run_in_fallback(
    fallback: &Fallback,
    busy: &Arc<AtomicUsize>,
    op: worker::Op,
) -> Result<worker::Reply, HashError> {
    let tx = fallback.sender()?;
    let (done, result) = oneshot::channel();
    busy.fetch_add(1, Ordering::AcqRel);
    let counted = Arc::clone(busy);
    let job: Job = Box::new(move || {
        let reply = match op {
            worker::Op::Hash(p) => match hash_blocking(&p) {
                Ok(h) => worker::Reply::Hashed(h),
                Err(e) => worker::Reply::Failed(e.to_string()),
            },
            worker::Op::Verify(p, phc) => worker::Reply::Verified(verify_blocking(&p, &phc)),
        };
        let _ = done.send(reply);
        counted.fetch_sub(1, Ordering::AcqRel);
    });
    if let Err(e) = tx.try_send(job) {
        busy.fetch_sub(1, Ordering::AcqRel);
        return Err(match e {
            TrySendError::Full(_) => HashError::Overloaded,
            TrySendError::Disconnected(_) => HashError::Failed("hashing pool stopped".into()),
        });
    }
    result
        .await
        .map_err(|_| HashError::Failed("hashing thread died".into()))
}

/// One hashing thread per core, a queue of 16 per thread.
fn machine_size() -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores, cores * 16)
}

fn unexpected(reply: &worker::Reply) -> HashError {
    // Never the password: a reply carries none, but say only what kind it was.
    let kind = match reply {
        worker::Reply::Hello(_) => "hello",
        worker::Reply::Hashed(_) => "hash",
        worker::Reply::Verified(_) => "verification",
        worker::Reply::Failed(_) => "failure",
    };
    HashError::Failed(format!("hashing worker answered with an unexpected {kind}"))
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher as _;

    use super::*;

    fn pw(s: &str) -> Password {
        Password::new(s.to_owned()).unwrap()
    }

    #[test]
    fn our_hashes_verify_with_the_reference_implementation_and_back() {
        use argon2::password_hash::PasswordVerifier as _;
        let ours = hash_blocking(&pw("correct horse")).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::encode_b64(b"fedcba9876543210").unwrap();
        let reference = argon2_default_params()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            verify_blocking(&pw("correct horse"), &reference),
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
    }

    fn argon2_default_params() -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(M_KIB, T_COST, P_COST, None).unwrap(),
        )
    }

    #[test]
    fn hashes_are_argon2id_with_our_parameters() {
        let h = hash_blocking(&pw("correct horse")).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(
            verify_blocking(&pw("correct horse"), &h),
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
        assert!(!verify_blocking(&pw("wrong horse!"), &h).matches);
        assert_ne!(h, hash_blocking(&pw("correct horse")).unwrap(), "salted");
    }

    #[test]
    fn outdated_parameters_ask_for_a_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let h = weak
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            verify_blocking(&pw("correct horse"), &h),
            Verified {
                matches: true,
                needs_rehash: true
            }
        );
    }

    #[test]
    fn hostile_stored_hashes_never_match() {
        for h in [
            "",
            "plain",
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$argon2id$v=19$m=19456,t=1000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(!verify_blocking(&pw("whatever1"), h).matches, "{h}");
        }
    }

    /// Issue 15 #3: one owner (an account, address or session) flooding the pool must not
    /// get every place: once the pool is half full it gets no more, and another owner's job
    /// still gets in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_owner_never_crowds_out_another() {
        // Room 16: half is 8, a small share 2.
        let hasher = Hasher::start(1, 15).unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let h = hasher.clone();
                let owners = Owners::new(["i:203.0.113.9".to_owned(), "a:mallory".to_owned()]);
                tokio::spawn(with_owners(owners, async move {
                    h.hash(pw("correct horse")).await
                }))
            })
            .collect();
        // Every flood job submitted (taken or refused) before the other owner's.
        for _ in 0..500 {
            if hasher.busy.load(Ordering::Acquire) >= 8 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let other = with_owners(
            Owners::new(["i:198.51.100.1".to_owned(), "a:admin".to_owned()]),
            hasher.hash(pw("correct horse")),
        )
        .await;
        assert!(other.is_ok(), "another owner's job: {other:?}");
        let mut refused = 0;
        for t in tasks {
            if let Err(HashError::Overloaded) = t.await.unwrap() {
                refused += 1;
            }
        }
        assert_eq!(refused, 8, "the flood's owner gets half the pool, no more");
        // Shares are given back when the jobs are done.
        assert!(hasher.shares.0.lock().unwrap().is_empty());
    }

    /// The hint a login takes before its throttle reservation says what `admit` would:
    /// below half full an owner may hold half the pool; from half full only its small share;
    /// a full pool refuses everyone. Set on the pool's own counts (no jobs), so no timing.
    #[tokio::test]
    async fn the_early_refusal_follows_the_admission_rule() {
        // Room 16: half is 8, a small share 2.
        let hasher = Hasher::start(1, 15).unwrap();
        let flood = Owners::new(["i:203.0.113.9".to_owned(), "a:mallory".to_owned()]);
        let other = Owners::new(["i:198.51.100.1".to_owned(), "a:admin".to_owned()]);
        let set = |busy: usize, mallory: usize| {
            hasher.busy.store(busy, Ordering::Release);
            let mut m = hasher.shares.0.lock().unwrap();
            m.clear();
            if mallory > 0 {
                m.insert("a:mallory".to_owned(), mallory);
            }
        };
        set(7, 7);
        assert!(
            !hasher.would_refuse(&flood),
            "below half full: up to half the pool"
        );
        set(8, 8);
        assert!(
            hasher.would_refuse(&flood),
            "half the pool is an owner's most"
        );
        set(8, 2);
        assert!(hasher.would_refuse(&flood), "half full: the small share");
        set(8, 1);
        assert!(!hasher.would_refuse(&flood));
        assert!(!hasher.would_refuse(&other), "another owner still gets in");
        set(16, 0);
        assert!(hasher.would_refuse(&other), "a full pool refuses everyone");
        // What the hint says, the submission does.
        set(8, 2);
        let r = with_owners(flood.clone(), hasher.hash(pw("correct horse"))).await;
        assert!(matches!(r, Err(HashError::Overloaded)), "{r:?}");
        set(0, 0);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let hasher = Hasher::start(1, 1).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let h = hasher.clone();
            tasks.push(tokio::spawn(
                async move { h.hash(pw("correct horse")).await },
            ));
        }
        let mut overloaded = 0;
        for t in tasks {
            if let Err(HashError::Overloaded) = t.await.unwrap() {
                overloaded += 1;
            }
        }
        assert!(
            overloaded >= 1,
            "six jobs on one worker with a queue of one must overflow"
        );
    }
}
