#!/usr/bin/env bash
# The API contract, tested: schemathesis generates requests for every operation of
# GET /api/openapi.json (valid and invalid ones) against a live server and fails on a 5xx,
# an answer that breaks its schema, or a status the description does not list.
#
# The server runs on a fresh SQLite database (second factors on: the key file beside it) with
# a known admin password; .ci/schemathesis_hooks.py logs in anew for every case, so the
# operations that end a session (logout, revocations, password change, a factor's
# rotation) are all covered without spoiling the cases after them.
#
# Usage: .ci/schemathesis.sh [extra schemathesis flags]; SCHEMATHESIS_EXAMPLES sets the
# cases per operation (default 30). Needs schemathesis for python3 (.ci/run installs it);
# builds the server in the dev profile.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p sessiond
bin=target/debug/sessiond

tmp=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free port: bind to 0, read it, release it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')

# `localhost`: passkeys need a public URL with a host name (not an IP address). The access
# rules give forward auth every answer to give (the hooks aim targets at these paths).
cat >"$tmp/sessiond.toml" <<TOML
listen = "127.0.0.1:$port"
public_url = "http://localhost:$port"
database = "sqlite://$tmp/sessiond.db"

[[access.rules]]
path_prefix = "/open"
policy = "bypass"

[[access.rules]]
path_prefix = "/closed"
policy = "deny"

[[access.rules]]
path_prefix = "/staff"
policy = "authenticated"
groups = ["staff"]

[[access.rules]]
path_prefix = "/secure"
policy = "two_factor"
TOML

SESSIOND_ADMIN_PASSWORD=$password RUST_LOG=warn "$bin" serve --config "$tmp/sessiond.toml" \
  >"$tmp/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/server.log"; exit 1; }
  sleep 0.1
done

# Every check but positive_data_acceptance, which wants every request the schema allows to
# be accepted: here many `400`s depend on the server's state (no TOTP setup pending, no
# passkey registered), its configuration (trusted proxies, the public URL's host for forward
# auth) or on values a client cannot make up (a passkey ceremony is sealed by the server), so
# no schema can describe them. The schema still rules out what it can (cursors, ids,
# forwarded schemes) and negative_data_rejection holds the server to refusing it.
#
# Run from the temporary folder: schemathesis keeps a cache in the working directory.
status=0
(cd "$tmp" && SESSIOND_BASE=$base SESSIOND_ADMIN_PASSWORD=$password SESSIOND_COOKIE=__Host-sessiond \
  SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$OLDPWD/.ci" \
  python3 -m schemathesis.cli run "$base/api/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" --seed "${SCHEMATHESIS_SEED:-1}" --workers 1 \
  --suppress-health-check all --generation-database none --no-color "$@") || status=$?

if ((status)); then
  echo "schemathesis failed; the server's log:"
  tail -n 50 "$tmp/server.log"
fi
exit "$status"
