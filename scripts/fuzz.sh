#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for N seconds (default
# 600) and prints one line per target: executions, seconds, and whether it
# crashed (the input is then under fuzz/artifacts/<target>/). Not part of
# CI. New inputs go to a scratch directory: the committed corpus
# (fuzz/corpus/<target>/) is only read; minimize a crash and add it by hand.
#
#   scripts/fuzz.sh [SECONDS]        JOBS=2 scripts/fuzz.sh 600
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -u
cd "$(dirname "$0")/../fuzz" || exit 1
secs=${1:-600}
jobs=${JOBS:-1}
cargo +nightly fuzz build >/dev/null 2>&1 || {
    echo "cargo +nightly fuzz build failed" >&2
    cargo +nightly fuzz build
    exit 1
}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

run_one() {
    local t=$1 log="$scratch/$1.log" work="$scratch/$1.corpus" rc execs took
    mkdir -p "$work" "$scratch/$t.dir" "corpus/$t"
    CBDR_FUZZ_DIR="$scratch/$t.dir" nice -n 10 cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=512 -malloc_limit_mb=256 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
    if [ "$rc" -eq 0 ]; then
        echo "$t: ok, ${execs:-?} executions in ${took:-$secs} s"
    else
        local what
        what=$(grep -m1 -E 'ERROR: libFuzzer|panicked at|ERROR: AddressSanitizer|out-of-memory|malloc\(' "$log")
        echo "$t: CRASH after ${execs:-?} executions: ${what:-exit $rc} (log kept: fuzz/artifacts/$t.log)"
        mkdir -p artifacts && cp "$log" "artifacts/$t.log"
    fi
}

targets=$(cargo +nightly fuzz list)
running=0
for t in $targets; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait
