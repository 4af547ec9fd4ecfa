//! The peers of `shared/peers/` (what users would pick instead): axum-login over
//! tower-sessions, and Django's own sessions under gunicorn. Same machine, same load
//! generator, same run; each answers `GET /me` with a session cookie.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::load::{once_blocking, Req};
use crate::process::{free_port, Process};

/// The tower peer is built in a copy of its folder, since `shared/` may be read-only and
/// cargo writes a lock file beside the manifest.
pub fn build_tower(peers: &Path, target_dir: &Path) -> anyhow::Result<PathBuf> {
    let src = peers.join("tower");
    anyhow::ensure!(
        src.join("Cargo.toml").is_file(),
        "no peer at {}",
        src.display()
    );
    let copy = target_dir.join("tower-src");
    std::fs::create_dir_all(copy.join("src"))?;
    let manifest = std::fs::read_to_string(src.join("Cargo.toml"))?;
    // The copy lives under our target directory, inside our workspace: an empty
    // [workspace] table keeps it a project of its own.
    let manifest = if manifest.contains("[workspace]") {
        manifest
    } else {
        format!("{manifest}\n[workspace]\n")
    };
    write_if_changed(&copy.join("Cargo.toml"), &manifest)?;
    for entry in std::fs::read_dir(src.join("src"))? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        write_if_changed(&copy.join("src").join(entry.file_name()), &text)?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(copy.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .stdout(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    anyhow::ensure!(status.success(), "cargo build of the tower peer failed");
    let bin = target_dir.join("release").join("tower-peer");
    anyhow::ensure!(bin.is_file(), "no {} after the build", bin.display());
    Ok(bin)
}

fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// Whether Django, gunicorn and argon2-cffi import.
pub fn django_ready() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import django, gunicorn, argon2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match out {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err("not installed (pip install django gunicorn argon2-cffi)".into()),
        Err(e) => Err(format!("no python3 ({e})")),
    }
}

/// A running peer with a logged-in session.
#[derive(Debug)]
pub struct RunningPeer {
    pub process: Process,
    pub cookie: String,
    pub _dir: tempfile::TempDir,
}

/// Starts the tower peer on `store` ("sqlite" or "redis") and logs in as `user1`.
pub fn start_tower(bin: &Path, store: &str, redis_url: &str) -> anyhow::Result<RunningPeer> {
    let dir = tempfile::Builder::new()
        .prefix("sessiond-bench-tower-")
        .tempdir()?;
    let db = dir.path().join("t.db");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let setup = Command::new(bin)
        .arg(&db)
        .arg(addr.to_string())
        .arg("setup")
        .output()
        .context("tower peer setup")?;
    anyhow::ensure!(setup.status.success(), "tower peer setup failed");
    let mut cmd = Command::new(bin);
    cmd.arg(&db)
        .arg(addr.to_string())
        .env("PEER_EXPIRY", "session")
        .env("PEER_STORE", store)
        .env("PEER_REDIS", redis_base(redis_url));
    let mut process = Process::spawn("tower peer", cmd, addr, &dir.path().join("peer.log"))?;
    process.wait_ready(
        &Req::get(&addr.to_string(), "/healthz"),
        |s| s == 200,
        Duration::from_secs(20),
    )?;
    let cookie = form_login(&process, "id")?;
    Ok(RunningPeer {
        process,
        cookie,
        _dir: dir,
    })
}

/// Starts the Django peer under `gunicorn -w 2` and logs in as `user1`.
pub fn start_django(peers: &Path) -> anyhow::Result<RunningPeer> {
    let app = peers.join("django");
    anyhow::ensure!(
        app.join("peer.py").is_file(),
        "no peer at {}",
        app.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("sessiond-bench-django-")
        .tempdir()?;
    let db = dir.path().join("dj.sqlite3");
    let setup = Command::new("python3")
        .args(["peer.py", "setup"])
        .current_dir(&app)
        .env("PEER_DB", &db)
        .output()
        .context("django peer setup")?;
    anyhow::ensure!(
        setup.status.success(),
        "django peer setup failed: {}",
        String::from_utf8_lossy(&setup.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "gunicorn", "-w", "2", "-b"])
        .arg(addr.to_string())
        .args(["--log-level", "warning", "peer:app"])
        .current_dir(&app)
        .env("PEER_DB", &db)
        // Bytecode caches would be written into the (possibly read-only) peer folder.
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut process = Process::spawn("django peer", cmd, addr, &dir.path().join("peer.log"))?;
    process.wait_ready(
        &Req::get(&addr.to_string(), "/me"),
        |s| s == 401,
        Duration::from_secs(30),
    )?;
    let cookie = form_login(&process, "sessionid")?;
    Ok(RunningPeer {
        process,
        cookie,
        _dir: dir,
    })
}

fn form_login(p: &Process, cookie_name: &str) -> anyhow::Result<String> {
    let host = p.addr.to_string();
    let req = Req::post(
        &host,
        "/login",
        "application/x-www-form-urlencoded",
        "username=user1&password=pw-1-correct-horse",
    );
    let a = once_blocking(p.addr, &req)?;
    anyhow::ensure!(a.status == 200, "peer login answered {}", a.status);
    let value = a
        .set_cookie(cookie_name)
        .with_context(|| format!("peer login set no {cookie_name} cookie"))?;
    Ok(format!("{cookie_name}={value}"))
}

/// `redis://host:port[/db]` without our `?prefix=` and the like.
fn redis_base(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}
