//! Password hashing in a worker process of its own (`hashing.worker`, `password::worker`),
//! with the real `sessiond` binary as the worker.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sessiond::{HashError, Hasher};
use sessiond_core::Password;

fn pw(s: &str) -> Password {
    Password::new(s.to_owned()).unwrap()
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sessiond"))
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are counted from its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3)?.parse().ok()
}

fn session_of(pid: u32) -> Option<u32> {
    stat_field(pid, 6)
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_worker_hashes_in_a_session_of_its_own_and_comes_back_after_a_crash() {
    let hasher = Hasher::start_isolated(exe(), 1, 4).unwrap();
    let pid = hasher.worker_pid().expect("a worker process");
    // A session (so an autogroup) of its own, at the lowest weight where the kernel has them.
    assert_eq!(session_of(pid), Some(pid), "the worker leads a new session");
    assert_ne!(session_of(pid), session_of(std::process::id()));
    if let Ok(group) = std::fs::read_to_string(format!("/proc/{pid}/autogroup")) {
        assert!(group.trim_end().ends_with("nice 19"), "{group}");
    }
    // Nothing of the server's environment (it may hold the admin password).
    assert_eq!(std::fs::read(format!("/proc/{pid}/environ")).unwrap(), b"");

    let phc = hasher.hash(pw("correct horse")).await.unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(
        hasher
            .verify(pw("correct horse"), phc.clone())
            .await
            .unwrap()
            .matches
    );
    assert!(
        !hasher
            .verify(pw("wrong horse"), phc.clone())
            .await
            .unwrap()
            .matches
    );
    hasher.verify_dummy(pw("whatever1")).await.unwrap();

    // A crash: the next job starts a new worker and gets its answer.
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    until("the crash is noticed", || hasher.worker_pid() != Some(pid));
    // Answered at once (by the server's own threads while a new worker starts, off the
    // request's thread), then a new worker takes over.
    let again = hasher
        .verify(pw("correct horse"), phc.clone())
        .await
        .unwrap();
    assert!(again.matches);
    until("a new worker is up", || hasher.worker_pid().is_some());
    assert!(
        hasher
            .verify(pw("correct horse"), phc)
            .await
            .unwrap()
            .matches
    );
    let new = hasher.worker_pid().expect("a new worker");
    assert_ne!(new, pid);
    assert_eq!(session_of(new), Some(new));

    // The pool dropped, its worker ends (and is reaped).
    drop(hasher);
    until("the dropped pool's worker ends", || {
        !Path::new(&format!("/proc/{new}")).exists()
    });
}

#[tokio::test]
async fn the_worker_refuses_work_past_its_queue() {
    let hasher = Hasher::start_isolated(exe(), 1, 1).unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let h = hasher.clone();
            tokio::spawn(async move { h.hash(pw("correct horse")).await })
        })
        .collect();
    let mut overloaded = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(HashError::Overloaded) => overloaded += 1,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(overloaded >= 1, "six jobs for one thread and one place");
    // Refused work is not counted as in flight: the pool takes jobs again.
    hasher.hash(pw("correct horse")).await.unwrap();
}

#[test]
fn a_program_that_is_no_worker_is_refused() {
    let started = Instant::now();
    let e = Hasher::start_isolated(Path::new("/bin/cat"), 1, 1).unwrap_err();
    assert!(
        e.to_string().contains("did not start as a hash worker"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    assert!(Hasher::start_isolated(Path::new("/nonexistent/sessiond"), 1, 1).is_err());
}

/// `sessiond serve` with `hashing.worker = "process"`: logins are hashed by a child in a
/// session of its own, which ends with the server.
#[tokio::test]
async fn serve_hashes_in_its_worker_and_leaves_none_behind() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(exe())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("SESSIOND_DATABASE", crate::helpers::db_url(dir.path()))
        .env("SESSIOND_ADMIN_PASSWORD", "admin password 1")
        .env("SESSIOND_HASH_WORKER", "process")
        .env_remove("SESSIOND_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let login = |password: &'static str| {
        client
            .post(format!("{base}/api/login"))
            .json(&serde_json::json!({"username": "admin", "password": password}))
            .send()
    };
    assert_eq!(login("admin password 1").await.unwrap().status(), 200);
    assert_eq!(login("wrong password 1").await.unwrap().status(), 401);

    let server_pid = server.id();
    let workers: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat_field(p, 4) == Some(server_pid))
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__hash-worker"))
        })
        .collect();
    assert_eq!(workers.len(), 1, "one worker, a child of the server");
    let worker = workers[0];
    assert_eq!(session_of(worker), Some(worker));

    // Even a server killed outright leaves no worker: it ends when its stdin closes.
    server.kill().unwrap();
    server.wait().unwrap();
    until("the worker ends with the server", || {
        !Path::new(&format!("/proc/{worker}")).exists()
            || std::fs::read_to_string(format!("/proc/{worker}/stat"))
                .is_ok_and(|s| s[s.rfind(')').unwrap_or(0)..].starts_with(") Z"))
    });
}

/// Issue 15 (smaller finding): with the program deleted (or replaced) after the server
/// started, a worker that died could not start again, and every login answered `500` until
/// a restart, each one after a synchronous attempt on the request's thread. Now the jobs run
/// on the server's own threads while no worker can start, and answers stay quick.
#[tokio::test]
async fn logins_keep_working_when_the_worker_dies_and_the_program_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    // Our own copy of the program, to delete.
    let copy = dir.path().join("sessiond-copy");
    std::fs::copy(exe(), &copy).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(&copy)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("SESSIOND_DATABASE", crate::helpers::db_url(dir.path()))
        .env("SESSIOND_ADMIN_PASSWORD", "admin password 1")
        .env("SESSIOND_HASH_WORKER", "process")
        .env_remove("SESSIOND_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server_pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        assert!(server.try_wait().unwrap().is_none(), "server exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = Kill(server);
    let login = |password: &'static str| {
        client
            .post(format!("{base}/api/login"))
            .header("x-forwarded-for", "198.51.100.70")
            .json(&serde_json::json!({"username": "admin", "password": password}))
            .send()
    };
    // How long a right and a wrong login take here with the worker (hashing runs at the
    // lowest priority, so a busy machine makes this slow; the rounds below are compared
    // with it).
    let t = Instant::now();
    assert_eq!(login("admin password 1").await.unwrap().status(), 200);
    assert_eq!(login("wrong password 1").await.unwrap().status(), 401);
    let baseline = t.elapsed();
    let worker = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&p| {
            stat_field(p, 4) == Some(server_pid)
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__hash-worker"))
        })
        .expect("a worker process");
    // The program goes (an upgrade in place, a cleanup), then the worker dies.
    std::fs::remove_file(&copy).unwrap();
    assert!(Command::new("kill")
        .args(["-9", &worker.to_string()])
        .status()
        .unwrap()
        .success());
    until("the worker is gone", || {
        !Path::new(&format!("/proc/{worker}")).exists()
            || std::fs::read_to_string(format!("/proc/{worker}/stat"))
                .is_ok_and(|s| s[s.rfind(')').unwrap_or(0)..].starts_with(") Z"))
    });
    for round in 0..3 {
        let t = Instant::now();
        let right = login("admin password 1").await.unwrap().status();
        let wrong = login("wrong password 1").await.unwrap().status();
        assert_eq!(
            (right.as_u16(), wrong.as_u16()),
            (200, 401),
            "round {round}"
        );
        // Never a wait for a worker start on top of the hashing (main: a synchronous
        // attempt, then 500).
        assert!(
            t.elapsed() < baseline * 3 + Duration::from_secs(2),
            "round {round} took {:?} (with the worker: {baseline:?})",
            t.elapsed()
        );
    }
    drop(server);
}
