#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time, one after the other.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Prints the executions of each target (libFuzzer's stat::number_of_executed_units) and
# whether it left a crash artifact; exits 1 if any target crashed (or a saved reproducer
# under regressions/ still fails), 2 if the build failed. Logs: fuzz/logs/TARGET.log;
# crashes: fuzz/artifacts/TARGET/. See fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")"

secs=${1:-60}
shift || true
all=(cookie_header forwarded_headers redirect login_request)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

# Build with the dependency versions the workspace uses (Cargo adds what only the fuzz
# crate needs on top).
cp ../Cargo.lock Cargo.lock

# What `cargo fuzz build --sanitizer none` passes (release, debug assertions, overflow
# checks, libFuzzer's coverage instrumentation): stable Rust takes all of it; only the
# sanitizers need nightly. Without cargo-fuzz installed, the same build with plain cargo.
triple=$(rustc -vV | sed -n 's/^host: //p')
bin=target/$triple/release
if cargo fuzz --version >/dev/null 2>&1; then
    build=(cargo fuzz build --sanitizer none)
else
    echo "run.sh: cargo-fuzz not installed (cargo install cargo-fuzz); building with plain cargo" >&2
    export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Ccodegen-units=1"
    build=(cargo build --release --target "$triple" --bins)
fi
echo "run.sh: ${build[*]}" >&2
if ! "${build[@]}"; then
    echo "run.sh: build failed" >&2
    exit 2
fi

mkdir -p logs
failed=0
summary=()
for t in "${targets[@]}"; do
    if [ ! -x "$bin/$t" ]; then
        echo "run.sh: no fuzz target $t (have: ${all[*]})" >&2
        exit 2
    fi
    mkdir -p "corpus/$t" "artifacts/$t"
    args=("corpus/$t" "-max_total_time=$secs" -print_final_stats=1 -timeout=10
          "-artifact_prefix=artifacts/$t/")
    [ -f "dict/$t.dict" ] && args+=("-dict=dict/$t.dict")
    # A temporary directory of our own for the login target's SQLite database (a static,
    # so never dropped): emptied before each run.
    export TMPDIR="$PWD/target/tmp"
    rm -rf "$TMPDIR" && mkdir -p "$TMPDIR"
    [ "$t" = login_request ] && args+=(-max_len=4096)

    # Saved reproducers first: each must pass now.
    regress="ok"
    shopt -s nullglob
    saved=(regressions/"$t"/*)
    shopt -u nullglob
    if [ ${#saved[@]} -gt 0 ]; then
        mkdir -p target/regression-artifacts
        if "$bin/$t" -artifact_prefix=target/regression-artifacts/ "${saved[@]}" \
            >"logs/$t.regressions.log" 2>&1; then
            regress="${#saved[@]} pass"
        else
            regress="FAIL (logs/$t.regressions.log)"
            failed=1
        fi
    else
        regress="none"
    fi

    before=$(find "artifacts/$t" -type f | wc -l)
    echo "run.sh: fuzzing $t for ${secs}s" >&2
    "$bin/$t" "${args[@]}" >"logs/$t.log" 2>&1
    rc=$?
    after=$(find "artifacts/$t" -type f | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    [ -z "$execs" ] && execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "logs/$t.log" | tail -1)
    new=$((after - before))
    if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
        failed=1
        status="CRASH (exit $rc; $new new artifact(s) in fuzz/artifacts/$t/; log fuzz/logs/$t.log)"
        grep -m1 -E "panicked at|ERROR: libFuzzer" "logs/$t.log" >&2 || true
    else
        status="no crash"
    fi
    summary+=("$(printf '%-18s %12s execs  %s  regressions: %s' "$t" "${execs:-?}" "$status" "$regress")")
done

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
