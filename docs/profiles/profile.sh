#!/bin/sh
# Flame graphs of sessiond under the benchmark's load shape (wrk -t2 -c32, keep-alive), SQLite.
# usage: profile.sh SESSIOND_BINARY OUT_DIR [SECONDS]   (HEALTHZ_ONLY=1: /healthz alone)
# Needs perf (linux-perf), wrk, inferno (cargo install inferno), curl.
set -eu
bin=$1; out=$2; secs=${3:-10}
mkdir -p "$out"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pw='profile admin password'
# As the benchmark starts it: metrics on a listener of their own, no per-user session cap,
# RUST_LOG=warn.
printf 'metrics_listen = "127.0.0.1:%s"\n[session]\nmax_per_user = 0\n' "$mport" >"$dir/c.toml"
SESSIOND_ADMIN_PASSWORD="$pw" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" \
    --config "$dir/c.toml" --database "sqlite://$dir/s.db" 2>"$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.2; done
cookie=$(curl -s -D - -o /dev/null -H 'content-type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$pw\"}" "http://127.0.0.1:$port/api/login" |
    sed -n 's/^[Ss]et-[Cc]ookie: \(__Host-sessiond=[^;]*\).*/\1/p')
[ -n "$cookie" ] || { echo "no session cookie" >&2; exit 1; }
host="127.0.0.1:$port"
run() { # name path [headers...]
    name=$1; path=$2; shift 2
    wrk -t2 -c32 -d"$((secs + 3))s" "$@" "http://$host$path" >"$out/$name.wrk.txt" &
    w=$!
    sleep 2
    perf record -q -F 499 -g --call-graph dwarf,16384 -p "$pid" -o "$dir/$name.data" -- sleep "$secs" 2>/dev/null
    wait $w
    perf script -i "$dir/$name.data" 2>/dev/null | inferno-collapse-perf >"$out/$name.folded"
    inferno-flamegraph --title "sessiond $name ($path), SQLite, wrk -t2 -c32" <"$out/$name.folded" >"$out/$name.svg"
}
run healthz /healthz
[ -n "${HEALTHZ_ONLY:-}" ] && exit 0
run verify /api/session -H "Cookie: $cookie"
run forward-auth /api/authz/forward-auth -H "Cookie: $cookie" -H 'X-Forwarded-Proto: http' \
    -H "X-Forwarded-Host: $host" -H 'X-Forwarded-Uri: /'
