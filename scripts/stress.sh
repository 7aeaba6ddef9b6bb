#!/usr/bin/env bash
# Runs the test binaries most exposed to timing (the cluster, the agents,
# WAL archiving and streaming, recovery under faults) N times in a row (default 5)
# and prints how many runs of each failed. Not part of CI: a check that the
# suite is stable on this machine. Usage: scripts/stress.sh [N] [test ...]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
shift || true
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(cluster agent agent_hostile wal_archive wal_errors wal_receive recovery_faults)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo test --features fault-injection --no-run "${args[@]}" >/dev/null 2>&1 || { echo "build failed"; exit 2; }
declare -A failures
logdir="$(mktemp -d)"
for i in $(seq 1 "$runs"); do
    for t in "${tests[@]}"; do
        if cargo test --features fault-injection --test "$t" >"$logdir/$t.$i.log" 2>&1; then
            echo "run $i: $t passed"
        else
            failures[$t]=$(( ${failures[$t]:-0} + 1 ))
            echo "run $i: $t FAILED (log: $logdir/$t.$i.log)"
        fi
    done
done
total=0
for t in "${tests[@]}"; do
    n=${failures[$t]:-0}
    total=$((total + n))
    echo "$t: $n of $runs runs failed"
done
[ "$total" -eq 0 ]
