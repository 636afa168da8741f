#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Two kv builds side by side, paired: server CPU per request of OLD and NEW under
# `redis-benchmark -t TEST -c 50 -n 200000 -P 1`, alternating, each after a 20,000-request
# warm-up; the server pinned to CPU 0, redis-benchmark to CPU 1 (nice -20 where allowed). CPU is
# the server's on-CPU time from /proc/<pid>/task/*/schedstat over the measured run. Tells a
# change in kv (or the netloop under it) from a change in the machine, which a comparison
# against redis-server cannot.
# Usage: bench/kv_pair.sh OLD_KV NEW_KV [repeats] [tests...]   (one line per pair)
set -euo pipefail
old=$1
new=$2
repeats=${3:-4}
shift 3 2>/dev/null || shift $#
tests=("${@:-ping_mbulk get}")
read -r -a tests <<<"${tests[*]}"
prio=()
if nice -n -20 true 2>/dev/null; then prio=(nice -n -20); fi
dir=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
cpu_ns() { awk '{s += $1} END {printf "%d\n", s}' /proc/"$1"/task/*/schedstat; }
run() { # run KV TEST: prints the server's CPU µs per request
    local kv=$1 test=$2 port a b i
    : >"$dir/announce"
    "${prio[@]}" taskset -c 0 "$kv" 127.0.0.1:0 >"$dir/announce" 2>/dev/null </dev/null &
    pid=$!
    for ((i = 0; i < 100; i++)); do grep -q '^listening on' "$dir/announce" && break; sleep 0.05; done
    port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$dir/announce")
    "${prio[@]}" taskset -c 1 timeout 60 redis-benchmark -p "$port" -t "$test" -c 50 -n 20000 \
        -P 1 -q >/dev/null 2>&1
    a=$(cpu_ns "$pid")
    "${prio[@]}" taskset -c 1 timeout 120 redis-benchmark -p "$port" -t "$test" -c 50 -n 200000 \
        -P 1 -q >/dev/null 2>&1
    b=$(cpu_ns "$pid")
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    python3 -c "print(f'{($b - $a) / 1000 / 200000:.3f}')"
}
for test in "${tests[@]}"; do
    for ((rep = 1; rep <= repeats; rep++)); do
        o=$(run "$old" "$test")
        n=$(run "$new" "$test")
        echo "$test rep=$rep old_us=$o new_us=$n new/old=$(python3 -c "print(f'{$n / $o:.3f}')")"
    done
done
