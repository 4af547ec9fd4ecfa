//! Servers under test as child processes: started on a free loopback port, waited for, read
//! for their memory, and stopped (with every process they started) when dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::load::{once_blocking, Req};

/// A free port on 127.0.0.1 (bound and released: another process could take it in between,
/// which on a quiet machine does not happen).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process in a process group of its own (so gunicorn's workers go with it).
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    pub addr: SocketAddr,
    pub started: Instant,
}

impl Process {
    /// Spawns `cmd` with its output in `log`, listening (once ready) on `addr`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        addr: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            addr,
            started: Instant::now(),
        })
    }

    /// Waits until `req` gets a status `ready` accepts; fails early if the process exits.
    pub fn wait_ready(
        &mut self,
        req: &Req,
        ready: impl Fn(u16) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited during start ({status}): {}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(a) = once_blocking(self.addr, req) {
                if ready(a.status) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not answer within {timeout:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (`VmRSS` of `/proc/PID/status`), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The last lines of the process's output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(no output)".to_owned()
        } else {
            tail
        }
    }

    /// SIGTERM to the group, then SIGKILL after a grace period.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let group = format!("-{}", self.child.id());
        signal("-TERM", &group);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // Leftover group members (a gunicorn worker) go too.
                signal("-KILL", &group);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL", &group);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `kill SIG -- TARGET` through the `kill` program: no `unsafe` libc call for one signal.
fn signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args([sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A `kB` field of `/proc/PID/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
