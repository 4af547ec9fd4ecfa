//! Real services for tests: a `redis-server` of the test's own on a spare port, ports, and
//! names that no other test uses.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A prefix no other test (or run) uses.
pub fn fresh_prefix() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!(
        "sessiond_t_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

pub fn redis_server_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && crate::services_required() {
        panic!("redis-server is required (SESSIOND_REQUIRE_SERVICES=1) but not installed");
    }
    if !found {
        eprintln!("SKIP: redis-server not installed");
    }
    found
}

/// A port that is free now, and whose Cluster bus port (+10000) is free too, for a child
/// process (a server, a proxy) to bind later.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, from 32768 by default),
/// together with its bus port: a listener bound to port 0 meanwhile (a test's own server, an
/// upstream) is always handed a port from that range, so it can never take this one between
/// our check and the child's bind (which made a proxy test talk to sessiond itself). Each call
/// in a process takes the next candidate; the start depends on the process id.
pub fn spare_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    // Candidates 20000..(ephemeral_from - 10000): port and port + 10000 both below the range.
    let span = ephemeral_from.saturating_sub(10_000).saturating_sub(20_000);
    if span >= 1_000 {
        let offset = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = 20_000 + (offset + n) % span;
            let free = |p: u32| TcpListener::bind(("127.0.0.1", p as u16)).is_ok();
            if free(port) && free(port + 10_000) {
                return port as u16;
            }
        }
    }
    // A kernel configured otherwise: any free port (a race with port-0 binds is possible).
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A `redis-server` child on its own port and directory, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start(port: u16, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sessiond-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(port, &dir, &extra);
        let s = Self {
            child,
            port,
            dir,
            extra,
        };
        s.wait_up();
        s
    }

    fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts")
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ok = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG");
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on {} did not come up", self.port);
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.port, &self.dir, &self.extra);
        self.wait_up();
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
