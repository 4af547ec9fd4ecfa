//! The hashing pool in a process of its own: its own scheduling group, at the lowest weight.
//!
//! Why a process: `SCHED_IDLE` (see `lower_priority` in `password.rs`) ranks the hashing
//! threads below sessiond's other threads only. Linux shares the cores between *groups* first
//! (an autogroup per session, with `kernel.sched_autogroup_enabled = 1`, Debian's default), so
//! hashing threads inside sessiond's group take that group's full share against a PostgreSQL
//! or Redis on the same host, whose answers to sessiond then wait for hashes, and the
//! verification cache's poll of the store lapses (docs/performance.md, "Hashing beside a store
//! on the same host"). Thread priorities cannot leave a group; a process can: the worker
//! starts a session of its own (a new autogroup) and sets that group's nice to 19, so the
//! kernel gives it the cores only when every other group is done, and inside it the threads
//! are still `SCHED_IDLE`.
//!
//! The worker is this same binary (`sessiond __hash-worker`), started by the server with an
//! empty environment and talking over its stdin/stdout in length-prefixed frames. The parent
//! bounds the jobs in flight (the pool's threads + queue), so the pipes never fill. If the
//! worker dies, its jobs run again on threads in the server's own process, and a new worker
//! starts on a thread of its own (never a request's); until it is up, or if it cannot start
//! (the program was deleted or replaced since the server started), jobs keep running on
//! those threads, and another start is tried every 30 s. Where no worker can be started at
//! all, the server uses threads in its own process from the start.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sessiond_core::Password;
use tokio::sync::oneshot;

use super::{hash_blocking, lower_priority, HashError, Verified};

/// The hidden subcommand that runs a worker.
pub const SUBCOMMAND: &str = "__hash-worker";
/// The first frame a worker sends: proof that the program started is one.
const HELLO: &str = "sessiond-hash-worker 1";
/// Longest frame either side accepts (a password is at most 1 KiB, a PHC string ~100 bytes).
const MAX_FRAME: usize = 16 * 1024;
/// How long a new worker may take to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// A job for the worker.
#[derive(Debug)]
pub(crate) enum Op {
    Hash(Password),
    Verify(Password, String),
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Hello(String),
    Hashed(String),
    Verified(Verified),
    Failed(String),
}

const OP_HASH: u8 = 1;
const OP_VERIFY: u8 = 2;
const R_HELLO: u8 = 0;
const R_HASHED: u8 = 1;
const R_VERIFIED: u8 = 2;
const R_FAILED: u8 = 3;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads a frame's fields in order; any shortfall is `None` (a malformed frame).
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.take(4)?;
        let n = u32::from_le_bytes(n.try_into().unwrap_or([0; 4]));
        self.take(usize::try_from(n).ok()?)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn end(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

pub(crate) fn encode_op(id: u64, op: &Op) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&id.to_le_bytes());
    match op {
        Op::Hash(p) => {
            body.push(OP_HASH);
            put_bytes(&mut body, p.expose().as_bytes());
        }
        Op::Verify(p, phc) => {
            body.push(OP_VERIFY);
            put_bytes(&mut body, p.expose().as_bytes());
            put_bytes(&mut body, phc.as_bytes());
        }
    }
    body
}

pub(crate) fn decode_op(body: &[u8]) -> Option<(u64, Op)> {
    let mut f = Fields(body);
    let id = f.u64()?;
    let password = |s: String| Password::presented(s).ok();
    let op = match f.u8()? {
        OP_HASH => Op::Hash(password(f.string()?)?),
        OP_VERIFY => Op::Verify(password(f.string()?)?, f.string()?),
        _ => return None,
    };
    f.end()?;
    Some((id, op))
}

pub(crate) fn encode_reply(id: u64, reply: &Reply) -> Vec<u8> {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(&id.to_le_bytes());
    match reply {
        Reply::Hello(s) => {
            body.push(R_HELLO);
            put_bytes(&mut body, s.as_bytes());
        }
        Reply::Hashed(s) => {
            body.push(R_HASHED);
            put_bytes(&mut body, s.as_bytes());
        }
        Reply::Verified(v) => {
            body.push(R_VERIFIED);
            body.push(u8::from(v.matches));
            body.push(u8::from(v.needs_rehash));
        }
        Reply::Failed(s) => {
            body.push(R_FAILED);
            put_bytes(&mut body, s.as_bytes());
        }
    }
    body
}

pub(crate) fn decode_reply(body: &[u8]) -> Option<(u64, Reply)> {
    let mut f = Fields(body);
    let id = f.u64()?;
    let reply = match f.u8()? {
        R_HELLO => Reply::Hello(f.string()?),
        R_HASHED => Reply::Hashed(f.string()?),
        R_VERIFIED => Reply::Verified(Verified {
            matches: f.u8()? == 1,
            needs_rehash: f.u8()? == 1,
        }),
        R_FAILED => Reply::Failed(f.string()?),
        _ => return None,
    };
    f.end()?;
    Some((id, reply))
}

fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// The next frame, `None` at a clean end of the stream.
fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// `sessiond __hash-worker --threads N`: leaves sessiond's scheduling group, then hashes what
/// arrives on stdin with `threads` threads until stdin closes (the server is gone).
pub fn serve(threads: usize) -> io::Result<()> {
    isolate();
    let out = Arc::new(Mutex::new(BufWriter::new(io::stdout())));
    write_frame(
        &mut *out.lock().unwrap_or_else(|e| e.into_inner()),
        &encode_reply(0, &Reply::Hello(HELLO.into())),
    )?;
    // The server keeps at most threads + queue jobs in flight; this bound only guards
    // against a misbehaving parent.
    let (tx, rx) = mpsc::sync_channel::<(u64, Op)>(1024);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let (rx, out) = (Arc::clone(&rx), Arc::clone(&out));
        std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                lower_priority();
                loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((id, op)) = job else { return };
                    let reply = match op {
                        Op::Hash(p) => match hash_blocking(&p) {
                            Ok(h) => Reply::Hashed(h),
                            Err(e) => Reply::Failed(e.to_string()),
                        },
                        Op::Verify(p, phc) => Reply::Verified(super::verify_blocking(&p, &phc)),
                    };
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    if write_frame(&mut *out, &encode_reply(id, &reply)).is_err() {
                        std::process::exit(0); // the server is gone
                    }
                }
            })?;
    }
    let mut input = BufReader::new(io::stdin().lock());
    while let Some(body) = read_frame(&mut input)? {
        let Some(job) = decode_op(&body) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed job"));
        };
        if tx.send(job).is_err() {
            break;
        }
    }
    Ok(())
}

/// A session of our own (a new autogroup on Linux), with the lowest weight there is.
fn isolate() {
    #[cfg(target_os = "linux")]
    {
        if let Err(e) = rustix::process::setsid() {
            tracing::debug!(error = %e, "hash worker: setsid refused");
        }
        // Raising an autogroup's nice needs no privilege; absent without CONFIG_SCHED_AUTOGROUP.
        if let Err(e) = std::fs::write("/proc/self/autogroup", "19") {
            tracing::debug!(error = %e, "hash worker: cannot lower the autogroup's weight");
        }
    }
}

/// One running worker, as the server sees it.
struct Link {
    child: Mutex<Child>,
    stdin: Mutex<ChildStdin>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    alive: AtomicBool,
}

impl Link {
    /// Fails every job in flight (their receivers see the sender dropped).
    fn die(&self, busy: &AtomicUsize) {
        self.alive.store(false, Ordering::Release);
        let orphans: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        busy.fetch_sub(orphans.len(), Ordering::AcqRel);
        let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).kill();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// How long after a failed restart the next one is tried (jobs meanwhile run on the
/// in-process fallback threads).
const RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// The server's handle on its worker process (started again after a crash).
pub(crate) struct WorkerProcess {
    exe: PathBuf,
    threads: usize,
    link: Mutex<Option<Arc<Link>>>,
    next_id: AtomicU64,
    /// The pool's jobs in flight, shared with [`super::Hasher`]: a job counts until the
    /// worker answered it or died.
    busy: Arc<AtomicUsize>,
    /// A restart is running (on a thread of its own, never a request's).
    restarting: AtomicBool,
    /// No restart before this (after one failed: the program may be gone).
    next_restart: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("exe", &self.exe)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// The pool is gone: so is its worker (its reader thread then sees the end of the stream and
/// reaps it).
impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let link = self
            .link
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(link) = link {
            link.die(&self.busy);
        }
    }
}

impl WorkerProcess {
    /// Starts a worker from `exe` and waits for its hello.
    pub(crate) fn start(
        exe: &Path,
        threads: usize,
        busy: Arc<AtomicUsize>,
    ) -> Result<Self, HashError> {
        let w = Self {
            exe: exe.to_path_buf(),
            threads: threads.max(1),
            link: Mutex::new(None),
            next_id: AtomicU64::new(1),
            busy,
            restarting: AtomicBool::new(false),
            next_restart: Mutex::new(None),
        };
        let link = w.spawn()?;
        *w.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
        Ok(w)
    }

    /// The worker's process id (tests, diagnostics).
    pub(crate) fn pid(&self) -> Option<u32> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.as_ref()
            .filter(|l| l.alive.load(Ordering::Acquire))
            .map(|l| l.child.lock().unwrap_or_else(|e| e.into_inner()).id())
    }

    fn spawn(&self) -> Result<Arc<Link>, HashError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            HashError::Failed(format!("hash worker {}: {what}: {e}", self.exe.display()))
        };
        // An empty environment: the worker needs none, and the server's may hold secrets
        // (SESSIOND_ADMIN_PASSWORD). Its stderr is ours, for its rare log lines.
        let mut child = Command::new(&self.exe)
            .arg(SUBCOMMAND)
            .arg("--threads")
            .arg(self.threads.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed("cannot start", &e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(HashError::Failed("hash worker without pipes".into()));
        };
        let link = Arc::new(Link {
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
        });
        let (hello_tx, hello_rx) = mpsc::channel::<bool>();
        let reader = Arc::clone(&link);
        let busy = Arc::clone(&self.busy);
        std::thread::Builder::new()
            .name("hash-worker-reader".into())
            .spawn(move || {
                let mut out = BufReader::new(stdout);
                let hello = matches!(
                    read_frame(&mut out).ok().flatten().and_then(|b| decode_reply(&b)),
                    Some((0, Reply::Hello(h))) if h == HELLO
                );
                let _ = hello_tx.send(hello);
                if hello {
                    while let Ok(Some(body)) = read_frame(&mut out) {
                        let Some((id, reply)) = decode_reply(&body) else {
                            break;
                        };
                        let waiting = reader
                            .pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        if let Some(tx) = waiting {
                            busy.fetch_sub(1, Ordering::AcqRel);
                            let _ = tx.send(reply);
                        }
                    }
                    // `die` clears `alive` before it kills: a worker stopped on purpose
                    // (the pool dropped, e.g. at exit) ends quietly.
                    if reader.alive.load(Ordering::Acquire) {
                        tracing::warn!(
                            "the password hashing worker stopped; a new one starts with the next job"
                        );
                    }
                }
                reader.die(&busy);
            })
            .map_err(|e| failed("no reader thread", &e))?;
        match hello_rx.recv_timeout(HELLO_WITHIN) {
            Ok(true) => Ok(link),
            _ => {
                link.die(&self.busy);
                Err(HashError::Failed(format!(
                    "{} {SUBCOMMAND} did not start as a hash worker",
                    self.exe.display()
                )))
            }
        }
    }

    /// The running worker; if the last one died, `None`, and a restart begins on a thread of
    /// its own (unless one is running, or the last failed less than [`RESTART_BACKOFF`] ago).
    ///
    /// Never on the request's thread: starting a worker is fork, exec and its hello (a few
    /// milliseconds, but up to [`HELLO_WITHIN`] on a struggling machine), and it fails for
    /// good when the program was deleted or replaced since the server started (an upgrade
    /// in place): then every job until a restart works runs on the in-process threads
    /// instead (see `Hasher`), never a `500` or a request held for seconds.
    fn link(self: &Arc<Self>) -> Option<Arc<Link>> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = link.as_ref().filter(|l| l.alive.load(Ordering::Acquire)) {
            return Some(Arc::clone(l));
        }
        drop(link);
        self.restart_in_background();
        None
    }

    fn restart_in_background(self: &Arc<Self>) {
        let backing_off = self
            .next_restart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| Instant::now() < t);
        if backing_off || self.restarting.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("hash-worker-restart".into())
            .spawn(move || {
                match me.spawn() {
                    Ok(link) => {
                        *me.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
                        *me.next_restart.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            "the password hashing worker cannot start again; hashing in the server's own threads meanwhile"
                        );
                        *me.next_restart.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now() + RESTART_BACKOFF);
                    }
                }
                me.restarting.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.restarting.store(false, Ordering::Release);
        }
    }

    /// Sends `op` (the caller has counted it in `busy`) and waits for the answer. An error
    /// means the worker did not answer (none running, or it died): the job may be run
    /// elsewhere.
    pub(crate) async fn call(self: &Arc<Self>, op: &Op) -> Result<Reply, HashError> {
        let died = || HashError::Failed("hashing worker died".into());
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_op(id, op);
        let Some(link) = self.link() else {
            self.busy.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Failed("no hashing worker running".into()));
        };
        link.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        // A write of a few hundred bytes into a pipe the worker drains at once (jobs in
        // flight are bounded, so the pipe never fills): it does not block the runtime.
        let written = write_frame(
            &mut *link.stdin.lock().unwrap_or_else(|e| e.into_inner()),
            &frame,
        );
        if written.is_err() {
            if link
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
                .is_some()
            {
                self.busy.fetch_sub(1, Ordering::AcqRel);
            }
            link.die(&self.busy);
            return Err(died());
        }
        rx.await.map_err(|_| died())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Password {
        Password::presented(s.to_owned()).unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let (id, op) = decode_op(&encode_op(7, &Op::Hash(pw("correct horse")))).unwrap();
        assert_eq!(id, 7);
        assert!(matches!(op, Op::Hash(p) if p.expose() == "correct horse"));
        let (id, op) = decode_op(&encode_op(
            u64::MAX,
            &Op::Verify(pw("pässwörd"), "$argon2id$x".into()),
        ))
        .unwrap();
        assert_eq!(id, u64::MAX);
        assert!(matches!(op, Op::Verify(p, h) if p.expose() == "pässwörd" && h == "$argon2id$x"));
        for reply in [
            Reply::Hello(HELLO.into()),
            Reply::Hashed("$argon2id$v=19$…".into()),
            Reply::Verified(Verified {
                matches: true,
                needs_rehash: false,
            }),
            Reply::Verified(Verified {
                matches: false,
                needs_rehash: true,
            }),
            Reply::Failed("no".into()),
        ] {
            assert_eq!(decode_reply(&encode_reply(3, &reply)), Some((3, reply)));
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let good = encode_op(1, &Op::Verify(pw("correct horse"), "h".into()));
        for cut in 0..good.len() {
            assert!(decode_op(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode_op(&long).is_none(), "trailing bytes");
        let mut bad_op = good;
        bad_op[8] = 9;
        assert!(decode_op(&bad_op).is_none(), "unknown op");
        // A NUL in a password is refused here as everywhere else.
        assert!(decode_op(&encode_op(
            1,
            &Op::Hash(Password::presented("ab".into()).unwrap())
        ))
        .is_some());
        let mut nul = encode_op(1, &Op::Hash(pw("abcdefgh")));
        let last = nul.len() - 1;
        nul[last] = 0;
        assert!(decode_op(&nul).is_none(), "NUL in a password");
        let reply = encode_reply(1, &Reply::Hashed("x".into()));
        for cut in 0..reply.len() {
            assert!(decode_reply(&reply[..cut]).is_none(), "reply cut at {cut}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut stream: &[u8] = &u32::MAX.to_le_bytes();
        assert!(read_frame(&mut stream).is_err());
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).unwrap().is_none());
    }
}
