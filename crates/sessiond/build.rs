//! The build's git revision, for `sessiond --version` (`SESSIOND_GIT_REVISION`).
//!
//! `git rev-parse --short HEAD` when the source is a git checkout and `git` is installed;
//! else `SESSIOND_BUILD_REVISION` from the environment (a packager building from a tarball can
//! name the revision), else `unknown`. Never fails the build: a source tarball without `.git`
//! or a machine without `git` builds the same binary, only its revision unknown.
//!
//! Rebuilt when HEAD moves: cargo watches the checkout's `HEAD` file (a checkout or a branch
//! switch), the branch's ref file and `packed-refs` (a commit on the branch), with the paths
//! git itself reports, so a worktree (whose `.git` is a file pointing elsewhere) works too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=SESSIOND_BUILD_REVISION");
    let revision = git_revision().or_else(|| {
        std::env::var("SESSIOND_BUILD_REVISION")
            .ok()
            .filter(|r| is_sane(r))
    });
    println!(
        "cargo::rustc-env=SESSIOND_GIT_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
}

/// The short hash of HEAD, and the files to watch for it to move; `None` outside a checkout
/// or without git.
fn git_revision() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let revision = git(&dir, &["rev-parse", "--short", "HEAD"]).filter(|r| is_sane(r))?;
    let mut watched = vec![git(&dir, &["rev-parse", "--git-path", "HEAD"])];
    // On a branch, its ref (loose, or in packed-refs once git packs it); detached: HEAD alone.
    if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&dir, &["rev-parse", "--git-path", &branch]));
        watched.push(git(&dir, &["rev-parse", "--git-path", "packed-refs"]));
    }
    for path in watched.into_iter().flatten() {
        // `--git-path` answers relative to the directory git ran in.
        let path = dir.join(Path::new(&path));
        // Watching a file that does not exist (an unpacked repository has no packed-refs)
        // makes cargo rerun this script on every build: watch only what is there.
        if path.exists() {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
    Some(revision)
}

/// One line of git's output, or `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// A revision fit for a version line: a short, plain token.
fn is_sane(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 40
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}
