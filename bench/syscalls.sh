#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/syscalls.sh: system calls per accepted connection of each echo server, under strace -c.
#
# Usage: bench/syscalls.sh BUILD_DIR [CYCLES] [SERVER...]
#   BUILD_DIR  a build with bench/ (load, asio_echo, epoll_echo) and samples/echo
#   CYCLES     connect cycles measured [2000]; SERVER: asio netloop epoll asio_coro [asio netloop epoll]
# For each server, two runs under `strace -f -c`: WARM cycles, then WARM + CYCLES cycles, each a
# fresh server; `load connect --conns 1` does one cycle at a time (connect, one 64-byte echo,
# close). Per connection = (calls of the long run - calls of the short run) / CYCLES, so the
# server's start-up and shutdown cancel out. Prints one line per server:
#   SYSCALLS server=NAME cycles=N per_conn=X top=name:x,name:x,...
# and keeps strace's tables in $BENCH_OUT (default: bench/out). Every process it starts it stops
# by PID (SIGTERM to the server, a bounded wait); every wait is bounded.
set -euo pipefail

build=${1:?usage: bench/syscalls.sh BUILD_DIR [CYCLES] [SERVER...]}
cycles=${2:-2000}
shift $(($# >= 2 ? 2 : 1))
servers=("$@")
((${#servers[@]})) || servers=(asio netloop epoll)
warm=200
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${BENCH_OUT:-$root/bench/out}
mkdir -p "$out"
bin=$build/bench
load=$bin/load
command -v strace >/dev/null || {
    echo "bench/syscalls.sh: strace not found (Debian: apt-get install strace)" >&2
    exit 1
}

server_cmd() {
    case $1 in
    epoll) echo "$bin/epoll_echo" ;;
    asio) echo "$bin/asio_echo" ;;
    asio_coro) echo "$bin/asio_coro_echo" ;;
    netloop) echo "$build/samples/echo" ;;
    *)
        echo "bench/syscalls.sh: unknown server $1" >&2
        return 1
        ;;
    esac
}

strace_pid=
cleanup() {
    if [[ -n $strace_pid ]]; then
        local child
        # the server is strace's only child; SIGTERM it by PID, then let strace finish
        # shellcheck disable=SC2013
        for child in $(cat /proc/"$strace_pid"/task/*/children 2>/dev/null); do
            kill -TERM "$child" 2>/dev/null || true
        done
        sleep 0.5
        kill -TERM "$strace_pid" 2>/dev/null || true
        wait "$strace_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# traced_run NAME N TABLE: one fresh server under strace -f -c -o TABLE, N connect cycles.
traced_run() {
    local name=$1 n=$2 table=$3 announce=$out/syscalls-announce.txt i addr='' server=''
    : >"$announce"
    # shellcheck disable=SC2046
    strace -f -c -o "$table" $(server_cmd "$name") 127.0.0.1:0 >"$announce" \
        2>>"$out/syscalls-$name.log" </dev/null &
    strace_pid=$!
    for ((i = 0; i < 400; i++)); do
        addr=$(sed -n 's/^listening on //p' "$announce" | head -n 1)
        [[ -n $addr ]] && break
        sleep 0.025
    done
    server=$(cat /proc/"$strace_pid"/task/*/children 2>/dev/null | head -n 1)
    if [[ -z $addr || -z $server ]]; then
        echo "bench/syscalls.sh: $name did not start under strace within 10 s" >&2
        return 1
    fi
    local status=0
    "$load" connect --addr "$addr" --conns 1 --size 64 --messages "$n" --timeout 120 \
        >/dev/null 2>>"$out/syscalls-$name.log" || status=$?
    kill -TERM "$server" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$strace_pid" 2>/dev/null || break
        [[ $(cut -d' ' -f3 /proc/"$strace_pid"/stat 2>/dev/null) == Z ]] && break
        sleep 0.05
    done
    if kill -0 "$strace_pid" 2>/dev/null &&
        [[ $(cut -d' ' -f3 /proc/"$strace_pid"/stat 2>/dev/null) != Z ]]; then
        echo "bench/syscalls.sh: $name still traced 10 s after SIGTERM: stopping strace" >&2
        kill -TERM "$strace_pid" 2>/dev/null || true
    fi
    wait "$strace_pid" 2>/dev/null || true
    strace_pid=
    if ((status != 0)); then
        echo "bench/syscalls.sh: load connect against $name failed ($status)" >&2
        return 1
    fi
}

for name in "${servers[@]}"; do
    short=$out/strace-$name-short.txt long=$out/strace-$name-long.txt
    if ! traced_run "$name" "$warm" "$short" || ! traced_run "$name" $((warm + cycles)) "$long"; then
        echo "SYSCALLS server=$name cycles=$cycles rc=failed"
        continue
    fi
    python3 - "$name" "$cycles" "$short" "$long" <<'PY'
import re, sys
name, cycles, short, long_ = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def calls(path):
    counts = {}
    for line in open(path, encoding="utf-8"):
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(f) >= 5 and re.fullmatch(r"[\d.]+", f[0]) and f[3].isdigit() and f[-1] != "total":
            counts[f[-1]] = int(f[3])
    return counts
a, b = calls(short), calls(long_)
delta = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
delta = {k: v for k, v in delta.items() if v > 0}
total = sum(delta.values())
top = sorted(delta.items(), key=lambda kv: -kv[1])
print(f"SYSCALLS server={name} cycles={cycles} rc=0 per_conn={total / cycles:.2f} top="
      + ",".join(f"{k}:{v / cycles:.2f}" for k, v in top if v / cycles >= 0.05))
PY
done
