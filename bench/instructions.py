#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# bench/instructions.py: user-space instructions per message and per connection of each echo
# server, counted by callgrind (deterministic), side by side; the table goes into RESULTS.md.
"""usage: bench/instructions.py [options]

Each server runs under `valgrind --tool=callgrind` (started with 127.0.0.1:0). Per connection
count C (50 and 500 by default), on a fresh server:

  warm-up   `load echo --conns C --size 64 --inflight 1 --messages 5000`, then a dump (discarded)
  run 1     the same with N messages on C fresh connections, then a dump: I1
  run 2     the same with 3N messages on C fresh connections, then a dump: I2

Before each dump the script waits until the server has closed every connection of the run (its
open descriptors are back to what they were before), so a run's count holds its connections
whole: accept, first read, the messages, EOF, close. Then

  per message    = (I2 - I1) / 2N
  per connection = (I1 - N x per message) / C

Ir of the server process only (callgrind counts user-space instructions; the system calls are
the same for every server, bench/syscalls.sh counts them). Dumps are taken with
`callgrind_control -d PID`, which also zeroes the counters, so start-up and warm-up are not
counted. Each run's callgrind file stays in the output directory for callgrind_annotate.

options:
  --build DIR       build directory with samples/ and bench/ built (release) [build-bench]
  --servers LIST    comma-separated server names [all: epoll,asio,asio_coro,direct_coro,netloop,
                    netloop_lean]
  --conns LIST      comma-separated connection counts [50,500]
  --messages N      N of run 1 (run 2 sends 3N) [10000]
  --out DIR         where callgrind files and logs go [bench/out/instructions]
  --results         write the table into bench/RESULTS.md (its own section)
  --extra NAME=CMD  another server to measure, e.g. base=../old/build-bench/samples/echo
                    (repeatable; it gets a column in the ratios only if named in --ratio)
Every process it starts it stops by PID (SIGTERM, a bounded wait, SIGKILL past it); every wait
is bounded.
"""

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARMUP_MESSAGES = 5000
SIZE = 64

SERVERS = {
    # name: (path under the build dir, label in the table)
    "epoll": ("bench/epoll_echo", "raw epoll loop (`epoll_echo`)"),
    "asio": ("bench/asio_echo", "Asio callbacks (`asio_echo`)"),
    "asio_coro": ("bench/asio_coro_echo",
                  "Asio coroutines (`asio::awaitable`, 4 KiB buffer; `asio_coro_echo`)"),
    "direct_coro": ("bench/direct_coro_echo",
                    "coroutines resumed straight from the completion handler, on Asio's reactor "
                    "(`direct_coro_echo`)"),
    "netloop": ("samples/echo", "samples/echo"),
    "netloop_lean": ("bench/echo_lean", "bench/echo_lean"),
}

START_BOUND_S = 60
QUIET_BOUND_S = 300
STOP_BOUND_S = 30


def say(*args):
    print("instructions:", *args, file=sys.stderr, flush=True)


class Server:
    """One server under callgrind: started with 127.0.0.1:0, stopped by its PID."""

    def __init__(self, name, command, out_dir, conns):
        self.name = name
        self.cg_file = out_dir / f"callgrind.{name}.{conns}"
        for old in out_dir.glob(f"callgrind.{name}.{conns}*"):
            old.unlink()
        self.log = open(out_dir / f"server-{name}.{conns}.log", "w")
        argv = ["nice", "-n", "10", "valgrind", "--tool=callgrind",
                f"--callgrind-out-file={self.cg_file}", "--dump-instr=yes"]
        argv += command + ["127.0.0.1:0"]
        # nice execs valgrind, which runs the server in its own process: one PID throughout.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.dumps = 0
        self.addr = self._announce()

    def _announce(self):
        deadline = time.monotonic() + START_BOUND_S
        line = b""
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} did not announce its address")
            try:
                chunk = os.read(fd, 256)
            except BlockingIOError:
                chunk = None
            if chunk:
                line += chunk
            elif chunk is None:
                time.sleep(0.05)
            else:
                time.sleep(0.05)
        m = re.match(rb"listening on (\S+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"{self.name}: unexpected first line {line!r}")
        return m.group(1).decode()

    def descriptors(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_quiet(self, descriptors):
        """Waits until the server holds `descriptors` descriptors again (every connection of the
        run closed), then a little longer for what the close posted."""
        deadline = time.monotonic() + QUIET_BOUND_S
        while self.descriptors() > descriptors:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} kept {self.descriptors() - descriptors} "
                                   "connection(s) open")
            time.sleep(0.1)
        time.sleep(0.5)

    def dump(self):
        """Dumps and zeroes the counters; returns the instructions since the last dump."""
        self.dumps += 1
        path = Path(f"{self.cg_file}.{self.dumps}")
        subprocess.run(["callgrind_control", "-d", str(self.pid)], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        deadline = time.monotonic() + 120
        while True:
            text = path.read_text() if path.exists() else ""
            m = re.search(r"^totals: (\d+)", text, re.M)
            if m:
                return int(m.group(1)), path
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no dump in {path}")
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                say(f"warning: {self.name} (pid {self.pid}) still running: SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout=STOP_BOUND_S)
        self.log.close()


def run_load(load, addr, conns, messages):
    argv = [load, "echo", "--addr", addr, "--conns", str(conns), "--size", str(SIZE),
            "--inflight", "1", "--messages", str(messages), "--timeout", "600"]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=660)
    if r.returncode != 0 or "errors=0" not in r.stdout or "mismatches=0" not in r.stdout:
        raise RuntimeError(f"load failed ({r.returncode}): {r.stdout.strip()} "
                           f"{r.stderr.strip()}")


def measure(name, command, load, conns, n, out_dir):
    server = Server(name, command, out_dir, conns)
    try:
        base = server.descriptors()
        run_load(load, server.addr, conns, WARMUP_MESSAGES)
        server.wait_quiet(base)
        server.dump()
        run_load(load, server.addr, conns, n)
        server.wait_quiet(base)
        i1, _ = server.dump()
        run_load(load, server.addr, conns, 3 * n)
        server.wait_quiet(base)
        i2, _ = server.dump()
    finally:
        server.stop()
    per_message = (i2 - i1) / (2 * n)
    per_connection = (i1 - n * per_message) / conns
    return {"i1": i1, "i2": i2, "per_message": per_message, "per_connection": per_connection}


def fmt(x):
    return f"{x:,.0f}"


def table(results, names, labels, conns_list, n, command_line):
    big = max(conns_list)
    lines = []
    head = "| server |" + "".join(f" per message, {c} conns |" for c in conns_list)
    head += f" per connection ({big} conns) |"
    lines.append(head)
    lines.append("| --- |" + " ---: |" * (len(conns_list) + 1))
    for name in names:
        row = f"| {labels[name]} |"
        for c in conns_list:
            row += f" {fmt(results[(name, c)]['per_message'])} |"
        row += f" {fmt(results[(name, big)]['per_connection'])} |"
        lines.append(row)
    if "netloop" in names and "asio_coro" in names:
        row = "| **samples/echo ÷ Asio coroutines** (target ≤ 1.15 per message, ≤ 2 per connection) |"
        def ratio(c, key):
            return results[("netloop", c)][key] / results[("asio_coro", c)][key]
        for c in conns_list:
            row += f" **{ratio(c, 'per_message'):.2f}** |"
        row += f" **{ratio(big, 'per_connection'):.2f}** |"
        lines.append(row)
    lines.append("")
    lines.append(f"Instructions (callgrind Ir, user space, the server process) per 64-byte echoed "
                 f"message, one in flight per connection; per connection = accept, first read, EOF, "
                 f"close. N = {n:,} (run 1) and {3 * n:,} (run 2) messages after {WARMUP_MESSAGES:,} "
                 f"warm-up messages. Command: `{command_line}`.")
    return "\n".join(lines)


def machine_line():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    vg = subprocess.run(["valgrind", "--version"], stdout=subprocess.PIPE, text=True).stdout
    cxx = subprocess.run(["c++", "--version"], stdout=subprocess.PIPE, text=True).stdout
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            stdout=subprocess.PIPE, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "lib",
                            "include", "samples", "bench/baselines", "bench/echo_lean.cpp"],
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    if dirty:
        commit += "+changes"
    return (f"CPU: {cpu} · {vg.strip()} · compiler: {cxx.splitlines()[0] if cxx else '?'} "
            f"· netloop: {commit} · {time.strftime('%Y-%m-%d', time.gmtime())}")


BEGIN = "<!-- instructions:begin -->"
END = "<!-- instructions:end -->"


def write_results(text):
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else ""
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        before = old[:old.index(BEGIN)]
        after = old[old.index(END) + len(END):]
        new = before + section + after
    elif "\n## " in old:  # after the page's introduction, before the first (marked) section
        m = re.search(r"^(<!-- \w+:begin -->|## )", old, re.M)
        new = old[:m.start()] + section + "\n\n" + old[m.start():]
    else:
        new = old + "\n" + section + "\n"
    path.write_text(new)


def main():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--build", default="build-bench")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--conns", default="50,500")
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "instructions"))
    p.add_argument("--results", action="store_true")
    p.add_argument("--extra", action="append", default=[])
    a = p.parse_args()
    if a.help:
        print(__doc__)
        return 0
    build = Path(a.build)
    if not build.is_absolute():
        build = (Path.cwd() / build).resolve()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("valgrind", "callgrind_control"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], stdout=subprocess.DEVNULL).returncode:
            say(f"error: {tool} not found (apt-get install valgrind)")
            return 1
    load = build / "bench" / "load"
    names = [s for s in a.servers.split(",") if s]
    commands = {}
    labels = {}
    for name in names:
        if name not in SERVERS:
            say(f"error: unknown server {name} (known: {', '.join(SERVERS)})")
            return 2
        commands[name] = [str(build / SERVERS[name][0])]
        labels[name] = SERVERS[name][1]
    for extra in a.extra:
        name, _, cmd = extra.partition("=")
        names.append(name)
        commands[name] = shlex.split(cmd)
        labels[name] = name
    missing = [c[0] for c in commands.values() if not os.access(c[0], os.X_OK)]
    if not os.access(load, os.X_OK) or missing:
        say(f"error: not built: {' '.join(missing + ([str(load)] if not os.access(load, os.X_OK) else []))}"
            f" (meson setup {a.build} -Dbuildtype=release -Db_ndebug=if-release -Dtests=disabled"
            f" -Dbench=true, then ninja -C {a.build})")
        return 1
    conns_list = [int(c) for c in a.conns.split(",") if c]
    results = {}
    started = time.monotonic()
    for conns in conns_list:
        for name in names:
            t0 = time.monotonic()
            r = measure(name, commands[name], str(load), conns, a.messages, out_dir)
            results[(name, conns)] = r
            say(f"{name} conns={conns}: I1={r['i1']} I2={r['i2']} per_message="
                f"{r['per_message']:.1f} per_connection={r['per_connection']:.1f} "
                f"({time.monotonic() - t0:.0f} s)")
            print(f"INSTRUCTIONS server={name} conns={conns} n={a.messages} i1={r['i1']} "
                  f"i2={r['i2']} per_message={r['per_message']:.1f} "
                  f"per_connection={r['per_connection']:.1f}", flush=True)
    say(f"done in {time.monotonic() - started:.0f} s")
    argv = sys.argv[1:]
    command_line = "nice bench/instructions.py" + ("".join(" " + shlex.quote(x) for x in argv))
    text = "## Instructions per message and per connection (callgrind)\n\n" + \
        machine_line() + "\n\n" + table(results, names, {**labels}, conns_list, a.messages,
                                        command_line)
    print(text)
    if a.results:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
