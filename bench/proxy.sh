#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The PROXY protocol's cost: samples/daemon behind a real HAProxy (Debian's haproxy), once with
# `send-proxy-v2` to a daemon started with `--proxy-protocol v2`, once with no header to a daemon
# without it: the same listener code, the same chain, only the header differs. Two loads each:
#   echo     bench/load echo --conns 50 --size 64: server CPU per message (the header is read
#            once per connection, so this should not move);
#   connect  bench/load connect --conns 16 --size 64 (connect, one echo, close): server CPU per
#            connection (one PROXY header read per connection: a peek and a recv).
# The daemon is pinned to CPU 0, HAProxy and the load to CPU 1 (nice -20 where allowed); modes alternate within each
# repeat. Server CPU is the daemon's on-CPU time from /proc/<pid>/task/*/schedstat over the
# window. Usage: bench/proxy.sh [build-dir] [repeats]   (prints one line per run)
# Every process it starts is stopped by PID; every wait is bounded.
set -euo pipefail
build=${1:-build-bench}
repeats=${2:-3}
haproxy=/usr/sbin/haproxy
[ -x "$haproxy" ] || {
    echo "bench/proxy.sh: needs $haproxy (apt-get install haproxy)" >&2
    exit 1
}
load=$build/bench/load
[ -x "$load" ] || load=$build/bench-direct/load
[ -x "$load" ] || {
    echo "bench/proxy.sh: no bench/load in $build (run bench/run once, or build with -Dbench=true)" >&2
    exit 1
}
# At nice -20 where allowed (root), like bench/run: other work on the machine then gets little of
# the two CPUs while a window runs.
prio=()
if nice -n -20 true 2>/dev/null; then prio=(nice -n -20); fi
dir=$(mktemp -d)
daemon_pid=
haproxy_pid=
stop() { # stop PID: SIGTERM, a bounded wait, SIGKILL past it
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    if [ -n "$haproxy_pid" ]; then stop "$haproxy_pid"; fi
    if [ -n "$daemon_pid" ]; then stop "$daemon_pid"; fi
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
for rep in $(seq "$repeats"); do
    for what in echo connect; do
        for mode in none v2; do
            daemon_flags=(--log-level off)
            send=
            if [ "$mode" = v2 ]; then
                daemon_flags+=(--proxy-protocol v2)
                send=send-proxy-v2
            fi
            "${prio[@]}" taskset -c 0 "$build/samples/daemon" 127.0.0.1:0 "${daemon_flags[@]}" \
                >"$dir/announce" 2>/dev/null </dev/null &
            daemon_pid=$!
            for _ in $(seq 100); do grep -q '^listening on' "$dir/announce" && break; sleep 0.05; done
            backend=$(sed -n 's/^listening on //p' "$dir/announce")
            front=127.0.0.1:$(free_port)
            cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend clients
    bind $front
    default_backend daemon
backend daemon
    server d1 $backend $send
EOF
            "${prio[@]}" taskset -c 1 "$haproxy" -db -f "$dir/haproxy.cfg" >/dev/null 2>"$dir/haproxy.err" \
                </dev/null &
            haproxy_pid=$!
            up=
            for _ in $(seq 100); do
                if python3 -c "import socket; socket.create_connection(('127.0.0.1', ${front#*:}), 1)" \
                    2>/dev/null; then
                    up=1
                    break
                fi
                kill -0 "$haproxy_pid" 2>/dev/null || break
                sleep 0.05
            done
            if [ -z "$up" ]; then
                echo "bench/proxy.sh: haproxy did not listen on $front:" >&2
                cat "$dir/haproxy.err" >&2
                exit 1
            fi
            if [ "$what" = echo ]; then
                args=(echo --conns 50 --size 64)
            else
                args=(connect --conns 16 --size 64)
            fi
            r=$("${prio[@]}" taskset -c 1 timeout 60 "$load" "${args[@]}" --addr "$front" --duration 3 \
                --warmup 0.5 --server-pid "$daemon_pid" 2>/dev/null | grep RESULT || true)
            echo "load=$what rep=$rep header=$mode" \
                "$(grep -o 'msgs_per_s=[0-9.]*' <<<"$r")" \
                "$(grep -o 'server_sched_us_per_msg=[0-9.]*' <<<"$r")" \
                "$(grep -o 'server_cpu_us_per_msg=[0-9.]*' <<<"$r")" \
                "$(grep -o 'errors=[0-9]*' <<<"$r")"
            stop "$haproxy_pid"
            haproxy_pid=
            stop "$daemon_pid"
            daemon_pid=
        done
    done
done
