#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# 1 loop against 2 loops: samples/daemon --threads 1|2 (hand_off) under bench/load, echo
# 50 connections x 64 B, 4 in flight, 3 s windows, alternating, 3 repeats. Unpinned: on a
# 2-core machine the load generator shares the cores with the server's loops, so the speed-up
# is bounded by it. Usage: bench/threads.sh [build-dir]   (prints one line per run)
set -euo pipefail
build=${1:-build}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for rep in 1 2 3; do
    for t in 1 2; do
        "$build/samples/daemon" 127.0.0.1:0 --threads "$t" --log-level off >"$out" 2>/dev/null &
        pid=$!
        for _ in $(seq 50); do grep -q listening "$out" && break; sleep 0.1; done
        port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$out")
        r=$("$build/bench/load" echo --addr "127.0.0.1:$port" --conns 50 --size 64 --inflight 4 \
            --duration 3 --warmup 0.5 --server-pid "$pid" 2>/dev/null | grep RESULT || true)
        echo "threads=$t rep=$rep $(grep -o 'msgs_per_s=[0-9.]*' <<<"$r") $(grep -o 'server_cpu_us_per_msg=[0-9.]*' <<<"$r") $(grep -o 'p99_us=[0-9.]*' <<<"$r")"
        kill -TERM "$pid"
        wait "$pid" || true
    done
done
