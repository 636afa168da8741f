#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# TLS against plain TCP: samples/daemon with and without --tls-cert/--tls-key under
# bench/tls_load (one netloop client for both, so the runs differ only in TLS), echo 50
# connections x SIZE bytes, 4 in flight, 3 s windows, alternating, 3 repeats per size. A
# throw-away CA and certificate are made with the openssl CLI in a temporary directory.
# Unpinned: on a 2-core machine the client (which does TLS too) shares the cores with the
# server. Usage: bench/tls.sh [build-dir] [sizes...]   (prints one line per run)
set -euo pipefail
build=${1:-build}
shift || true
sizes=("${@:-1024 16384}")
read -r -a sizes <<<"${sizes[*]}"
dir=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=netloop-bench -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
for size in "${sizes[@]}"; do
    for rep in 1 2 3; do
        for mode in plain tls; do
            tls_flags=()
            load_flags=()
            if [ "$mode" = tls ]; then
                tls_flags=(--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
                load_flags=(--tls "$dir/cert.pem")
            fi
            "$build/samples/daemon" 127.0.0.1:0 --log-level off "${tls_flags[@]}" \
                >"$dir/out" 2>/dev/null &
            pid=$!
            for _ in $(seq 50); do grep -q listening "$dir/out" && break; sleep 0.1; done
            port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$dir/out")
            r=$(timeout 60 "$build/bench/tls_load" --addr "127.0.0.1:$port" "${load_flags[@]}" \
                --conns 50 --size "$size" --inflight 4 --duration 3 --warmup 0.5 \
                --server-pid "$pid" 2>/dev/null | grep RESULT || true)
            echo "size=$size rep=$rep mode=$mode $(grep -o 'msgs_per_s=[0-9.]*' <<<"$r") $(grep -o 'server_cpu_us_per_msg=[0-9.]*' <<<"$r") $(grep -o 'errors=[0-9]*' <<<"$r") $(grep -o 'corrupt=[0-9]*' <<<"$r")"
            kill -TERM "$pid"
            wait "$pid" || true
            pid=
        done
    done
done
