//! Finding the binaries under test: cargo builds them (or finds them fresh) and says where
//! they are, so no path is guessed and no stale binary is measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs `cargo ARGS --message-format=json-render-diagnostics` in the workspace and returns
/// the executable of the (non-test) binary target `bin`.
pub fn cargo_executable(args: &[&str], bin: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new(cargo())
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    anyhow::ensure!(out.status.success(), "cargo {} failed", args.join(" "));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == bin && m["profile"]["test"] == false)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no binary named {bin}"))
}

/// `sessiond`, built in release (the real benchmark).
pub fn release_sessiond() -> anyhow::Result<PathBuf> {
    cargo_executable(
        &["build", "--release", "--quiet", "-p", "sessiond"],
        "sessiond",
    )
}

/// `sessiond` as the test suite builds it (smoke mode): `SESSIOND_BENCH_BIN` if set, else the
/// binary of `cargo test --workspace --no-run`. Under the README's `cargo test --workspace`
/// that build has just happened, so this only checks it (about a second); under
/// `cargo test -p sessiond-bench` it builds what is missing. Asking for the same build as
/// the suite's matters: `cargo build -p sessiond` would unify features differently and link
/// a second, slowly built, copy of the server.
pub fn test_sessiond() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SESSIOND_BENCH_BIN") {
        return Ok(PathBuf::from(p));
    }
    cargo_executable(&["test", "--workspace", "--no-run", "--quiet"], "sessiond")
}

/// `example-app` (`examples/example-app`), built in release like the server.
pub fn release_example_app() -> anyhow::Result<PathBuf> {
    cargo_executable(
        &["build", "--release", "--quiet", "-p", "example-app"],
        "example-app",
    )
}

/// `example-app` as the test suite builds it (smoke mode), found like [`test_sessiond`]:
/// `SESSIOND_BENCH_EXAMPLE_BIN` if set, else the binary of `cargo test --workspace --no-run`.
pub fn test_example_app() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SESSIOND_BENCH_EXAMPLE_BIN") {
        return Ok(PathBuf::from(p));
    }
    cargo_executable(
        &["test", "--workspace", "--no-run", "--quiet"],
        "example-app",
    )
}
