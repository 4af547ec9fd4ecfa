"""Writes docs/migrating-from-tower-sessions.md from guide.md.in, before.rs and the example.

Run from the repository root: python3 docs/migration/render.py
"""
import re
import subprocess

BEFORE = "docs/migration/before.rs"
AFTER = "crates/sessiond-axum/examples/migrated.rs"

diff = subprocess.run(
    ["diff", "-u", "--label", "before.rs", "--label", "after.rs", BEFORE, AFTER],
    capture_output=True, text=True,
).stdout.rstrip("\n")
body = [l for l in diff.splitlines() if not l.startswith(("--- ", "+++ ", "@@"))]
plus = sum(1 for l in body if l.startswith("+"))
minus = sum(1 for l in body if l.startswith("-"))

# The parts of the app, by the line of the "after" file (or "before" file for removals) in
# which each changed line falls: the first marker at or above it names the part.
PARTS = [
    (r"^use ", "Imports", "the crates' names; `Arc` and `SocketAddr` from std"),
    (r"^impl AuthUser", "`AuthUser`", "`id` is a `UserId`; `username` instead of `session_auth_hash`"),
    (r"^(impl AuthnBackend|#\[async_trait\])", "Backend", "`by_username` returns the hash instead of checking the password (the library checks it)"),
    (r"^type AuthSession", "`AuthSession` alias", "the crate's name"),
    (r"^async fn main", "Setup", "the store and `Auth` (`Auth::for_store`); `login_required`; the client address"),
    (r"^async fn login\(", "Login handler", "one `log_in` call; its errors answer themselves; `next` checked"),
    (r"^async fn logout", "Logout handler", "`log_out`"),
    (r"^async fn private", "Private page", "`SessionMap` for `Session`, `user()` for `user`"),
]
counts = {name: [0, 0] for _, name, _ in PARTS}
part = {"-": None, "+": None}
old_no = new_no = 0
for line in diff.splitlines():
    if line.startswith(("--- ", "+++ ")):
        continue
    m = re.match(r"@@ -(\d+),?\d* \+(\d+),?\d* @@", line)
    if m:
        old_no, new_no = int(m.group(1)), int(m.group(2))
        # Find the part each side is in at the hunk's start.
        for side, path, no in (("-", BEFORE, old_no), ("+", AFTER, new_no)):
            lines = open(path).read().splitlines()[:no]
            part[side] = None
            for l in lines:
                for pat, name, _ in PARTS:
                    if re.match(pat, l):
                        part[side] = name
        continue
    text = line[1:]
    for pat, name, _ in PARTS:
        if re.match(pat, text):
            if line[0] in " -":
                part["-"] = name
            if line[0] in " +":
                part["+"] = name
    if line[0] == "-":
        counts[part["-"]][0] += 1
    elif line[0] == "+":
        counts[part["+"]][1] += 1

rows = "\n".join(
    f"| {name} | {counts[name][0]} | {counts[name][1]} | {what} |" for _, name, what in PARTS
)
rows += f"\n| **Total** | **{minus}** | **{plus}** | **{minus + plus} changed lines** |"
assert sum(a for a, _ in counts.values()) == minus and sum(b for _, b in counts.values()) == plus

before_len = len(open(BEFORE).read().splitlines())
after_len = len(open(AFTER).read().splitlines())
stats = (
    f"**{minus + plus} changed lines: {minus} removed, {plus} added** (of {before_len} lines "
    f"before, {after_len} after). Counted as the lines of the unified diff below that start "
    f"with `-` or `+`, without the `---`/`+++` file headers and `@@` hunk headers; a modified "
    f"line counts twice (once removed, once added). The goal was under 20: the backend trait "
    f"and the setup account for most of the rest (see the table below).\n\n"
    f"Five of the added lines are protection the app did not have: the CSRF layer (and its "
    f"import), the check of `next` (the app before redirects to any URL it is given: an open "
    f"redirect), and the client address for the login throttle (and its import)."
)

guide = open("docs/migration/guide.md.in").read()
guide = guide.replace("@@DIFF_STATS@@", stats).replace("@@DIFF@@", diff)
guide = guide.replace("@@BREAKDOWN@@", rows)
open("docs/migrating-from-tower-sessions.md", "w").write(guide)
print(f"{minus + plus} changed lines ({minus} -, {plus} +)")
print(rows)
