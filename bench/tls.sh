#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# TLS costs, two parts (TLS_BENCH=throughput|handshakes|all, default all):
#
# throughput: TLS against plain TCP. samples/daemon with and without --tls-cert/--tls-key under
# bench/tls_load (one netloop client for both, so the runs differ only in TLS), echo 50
# connections x SIZE bytes, 4 in flight, 3 s windows, alternating, 3 repeats per size.
#
# handshakes: the server CPU of one TLS handshake, full and resumed, netloop side by side with
# nginx (Debian's, its stream module terminating TLS, one worker, `return "x"` after the
# handshake). Both servers do the same exchange: accept, handshake, write one byte, close
# (bench/tls_return is netloop's `return`; it sends close_notify and waits for the client's close
# as nginx does). Both use the same TLS 1.2 cipher order, server preference, so they negotiate
# the same suite. A third server, bench/baselines/tls_return_epoll (the same exchange as a
# hand-written epoll loop on OpenSSL, set up like netloop's context), is the floor: what the
# handshake costs with no layer at all. The client (Python's ssl, one connection at a time) connects, completes the
# handshake, reads the byte (so that TLS 1.3's session tickets have arrived), and closes. "full"
# uses no session; "resumed" offers the last session it got and counts the handshakes the server
# resumed; "plain" is the same exchange over plain TCP (tls_return without TLS, an nginx server
# block without ssl; nginx closes a plain connection without waiting for the client). The
# server's on-CPU time (/proc/PID/task/*/schedstat, nanoseconds; nginx's worker) over HANDSHAKES
# connections, divided by their count: microseconds per handshake. The server runs on CPU 1 and
# the client on CPU 0 (with 2 CPUs or more), so the client's work does not evict the server's
# caches. Alternating netloop/nginx, REPEATS (5) repeats, TLS 1.3 and 1.2; the medians and their
# ratio at the end. nginx and libnginx-mod-stream are installed from Debian if missing (apt-get;
# the package's service is kept from starting); without them this part says why and stops.
#
# A throw-away self-signed ECDSA P-256 certificate is made with the openssl CLI in a temporary
# directory. Unpinned: on a 2-core machine the client shares the cores with the server (CPU
# time is per process, so this costs figures little). Usage:
#   bench/tls.sh [build-dir] [sizes...]   (prints one line per run)
#   TLS_BENCH=handshakes HANDSHAKES=2000 REPEATS=5 bench/tls.sh build-bench
set -euo pipefail
build=${1:-build}
shift || true
sizes=("${@:-1024 16384}")
read -r -a sizes <<<"${sizes[*]}"
parts=${TLS_BENCH:-all}
handshakes=${HANDSHAKES:-2000}
repeats=${REPEATS:-5}
dir=$(mktemp -d)
pid=
plain_pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    if [ -n "$plain_pid" ]; then kill -TERM "$plain_pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=netloop-bench -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

if [ "$parts" = all ] || [ "$parts" = throughput ]; then
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
fi

[ "$parts" = all ] || [ "$parts" = handshakes ] || exit 0

# --- handshakes -------------------------------------------------------------------------------
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
if ! command -v nginx >/dev/null || [ ! -e "$stream_module" ]; then
    echo "installing nginx and libnginx-mod-stream from Debian" >&2
    # Keep the package's service from starting (and taking port 80) while it installs.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx libnginx-mod-stream \
        >"$dir/apt.log" 2>&1 || true
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
fi
if ! command -v nginx >/dev/null || [ ! -e "$stream_module" ]; then
    echo "handshakes: nginx with its stream module is not available (apt-get install nginx" \
        "libnginx-mod-stream failed:" "$(tail -1 "$dir/apt.log" 2>/dev/null)"")"
    exit 1
fi

cat >"$dir/client.py" <<'PY'
import socket, ssl, sys
host, port, mode, count, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
ctx.minimum_version = v
ctx.maximum_version = v
session = None
full = resumed = errors = 0
for _ in range(count):
    try:
        raw = socket.create_connection((host, port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mode == "plain":
            if raw.recv(1) != b"x":
                errors += 1
            raw.close()
            continue
        t = ctx.wrap_socket(raw, session=session if mode == "resumed" else None)
        if t.recv(1) != b"x":
            errors += 1
        if t.session_reused:
            resumed += 1
        else:
            full += 1
        if mode == "resumed":
            session = t.session
        t.close()
    except (OSError, ssl.SSLError):
        errors += 1
print(f"full={full} resumed={resumed} errors={errors}")
PY

# On-CPU nanoseconds of every thread of process $1.
cpu_ns() {
    if [ ! -d "/proc/$1" ]; then
        echo "handshakes: server process $1 is gone" >&2
        exit 1
    fi
    cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%d", s }'
}
server_cpu=()
client_cpu=()
if [ "$(nproc)" -ge 2 ]; then
    server_cpu=(taskset -c 1)
    client_cpu=(taskset -c 0)
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_netloop() {
    "${server_cpu[@]}" "$build/bench/tls_return" 127.0.0.1:0 --tls-cert "$dir/cert.pem" \
        --tls-key "$dir/key.pem" >"$dir/out" 2>/dev/null &
    pid=$!
    "${server_cpu[@]}" "$build/bench/tls_return" 127.0.0.1:0 >"$dir/out-plain" 2>/dev/null &
    plain_pid=$!
    for _ in $(seq 50); do
        grep -q listening "$dir/out" && grep -q listening "$dir/out-plain" && break
        sleep 0.1
    done
    port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$dir/out")
    plain_port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$dir/out-plain")
    worker=$pid
    plain_worker=$plain_pid
}

# The floor: the same exchange as a hand-written epoll loop on OpenSSL (no plain mode).
start_epoll() {
    "${server_cpu[@]}" "$build/bench/tls_return_epoll" 127.0.0.1:0 --tls-cert "$dir/cert.pem" \
        --tls-key "$dir/key.pem" >"$dir/out" 2>/dev/null &
    pid=$!
    for _ in $(seq 50); do grep -q listening "$dir/out" && break; sleep 0.1; done
    port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$dir/out")
    worker=$pid
    plain_pid=
}

start_nginx() {
    port=$(free_port)
    plain_port=$(free_port)
    cat >"$dir/nginx.conf" <<NGINX
load_module $stream_module;
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 1024; }
stream {
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        # netloop's TLS 1.2 suites in its order (lib/tls.cpp), chosen by the server as netloop
        # does: both servers negotiate the same suite.
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
        ssl_prefer_server_ciphers on;
        return "x";
    }
    server {
        listen 127.0.0.1:$plain_port;
        return "x";
    }
}
NGINX
    "${server_cpu[@]}" nginx -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" &
    pid=$!
    worker=
    for _ in $(seq 50); do
        worker=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')
        if [ -n "$worker" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then break; fi
        sleep 0.1
    done
    plain_pid=
    plain_worker=$worker
}

stop_server() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    if [ -n "$plain_pid" ]; then
        kill -TERM "$plain_pid" 2>/dev/null || true
        wait "$plain_pid" 2>/dev/null || true
        plain_pid=
    fi
}

echo "handshakes: $handshakes per run, server CPU in microseconds per handshake ($(nginx -v 2>&1))"
: >"$dir/runs"
for version in 1.3 1.2; do
    for rep in $(seq "$repeats"); do
        for server in netloop epoll nginx; do
            "start_$server"
            modes=(full resumed)
            if [ "$version" = 1.3 ] && [ "$server" != epoll ]; then modes+=(plain); fi
            for mode in "${modes[@]}"; do
                p=$port w=$worker
                if [ "$mode" = plain ]; then p=$plain_port w=$plain_worker; fi
                "${client_cpu[@]}" python3 "$dir/client.py" 127.0.0.1 "$p" "$mode" 20 "$version" \
                    >/dev/null
                before=$(cpu_ns "$w")
                counts=$(timeout 300 "${client_cpu[@]}" python3 "$dir/client.py" 127.0.0.1 "$p" \
                    "$mode" "$handshakes" "$version")
                after=$(cpu_ns "$w")
                us=$(awk -v t=$((after - before)) -v n="$handshakes" \
                    'BEGIN { printf "%.1f", t / 1000 / n }')
                echo "tls=$version rep=$rep server=$server mode=$mode cpu_us_per_handshake=$us $counts" |
                    tee -a "$dir/runs"
            done
            stop_server
        done
    done
done
# The median of the repeats, and netloop's over nginx's (target: <= 1.1).
awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    key = f["tls"] " " f["mode"]; v[key, f["server"], ++n[key, f["server"]]] = f["cpu_us_per_handshake"]
    keys[key] = 1
}
function median(key, server,   m, i, j, t, a) {
    m = n[key, server]
    for (i = 1; i <= m; i++) a[i] = v[key, server, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
END {
    for (key in keys) {
        split(key, k, " ")
        a = median(key, "netloop"); b = median(key, "nginx"); e = median(key, "epoll")
        printf "median tls=%s mode=%s netloop_us=%.1f nginx_us=%.1f ratio=%.2f", k[1], k[2], a, b, a / b
        if (e > 0) printf " epoll_us=%.1f netloop_over_epoll=%.2f", e, a / e
        printf "\n"
    }
}' "$dir/runs" | sort -r
