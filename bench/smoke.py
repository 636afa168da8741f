#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Smoke run of bench/load against echo servers: verified echoes, a few connect cycles, idle holds.
"""usage: smoke.py LOAD SERVER [SERVER...]

Starts each SERVER with 127.0.0.1:0, reads its `listening on <addr>` line, runs LOAD against it
(echo: a few hundred verified messages; connect: a few dozen cycles; idle: a short hold), sends
SIGTERM to the server by PID and waits, bounded. Every step has a time bound; any error fails.
Prints the failures, if any, and one closing line "N passed, N failed" (one count per server).
"""

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

START_BOUND_S = 10
LOAD_BOUND_S = 30
STOP_BOUND_S = 10

LOAD_RUNS = [
    ["echo", "--conns", "4", "--size", "100", "--inflight", "2", "--messages", "400",
     "--timeout", "20"],
    ["echo", "--conns", "2", "--size", "20000", "--inflight", "3", "--messages", "60",
     "--timeout", "20"],
    ["connect", "--conns", "4", "--size", "64", "--messages", "40", "--timeout", "20"],
    ["idle", "--conns", "50", "--size", "8", "--duration", "0.2", "--timeout", "20"],
]


def start(server, errors):
    proc = subprocess.Popen([server, "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=errors,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_BOUND_S
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        if not ready:
            stop(proc)
            raise RuntimeError(f"{server}: no 'listening on' line within {START_BOUND_S} s")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            stop(proc)
            raise RuntimeError(f"{server}: exited before announcing ({proc.returncode})")
        line += chunk
    match = re.match(rb"listening on (127\.0\.0\.1:(\d+))\n$", line)
    if not match:
        stop(proc)
        raise RuntimeError(f"{server}: unexpected first line {line!r}")
    return proc, match.group(1).decode()


def stop(proc):
    """SIGTERM by PID, bounded wait; SIGKILL only if the bound passes. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_BOUND_S)
        return None


def smoke(load, server):
    failures = []
    errors = tempfile.TemporaryFile()
    proc, addr = start(server, errors)
    try:
        for args in LOAD_RUNS:
            cmd = [load] + args[:1] + ["--addr", addr, "--server-pid", str(proc.pid)] + args[1:]
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=LOAD_BOUND_S)
            except subprocess.TimeoutExpired:
                failures.append(f"{' '.join(cmd)}: did not stop within {LOAD_BOUND_S} s")
                continue
            result = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
            if run.returncode != 0 or len(result) != 1 or " errors=0" not in result[0] \
                    or " mismatches=0" not in result[0]:
                failures.append(f"{' '.join(cmd)}: status {run.returncode}\n"
                                f"  stdout: {run.stdout.strip()}\n  stderr: {run.stderr.strip()}")
    finally:
        status = stop(proc)
    if status != 0:
        errors.seek(0)
        err = errors.read().decode(errors="replace").strip()
        failures.append(f"{server}: exit status {status} after SIGTERM (want 0) {err}")
    return failures


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    load, servers = sys.argv[1], sys.argv[2:]
    failed = 0
    for server in servers:
        try:
            failures = smoke(load, server)
        except RuntimeError as e:
            failures = [str(e)]
        for f in failures:
            print("FAIL", f)
        failed += 1 if failures else 0
    print(f"{len(servers) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
