# SPDX-License-Identifier: MIT
"""The bench_tls_smoke Meson test: keeps bench/tls.sh's servers from rotting.

Makes a throw-away P-256 certificate with the openssl CLI, starts bench/tls_return (with and
without TLS) and bench/baselines/tls_return_epoll on 127.0.0.1 port 0, and runs the exchange
tls.sh measures against each: TLS 1.3 and 1.2, full and resumed handshakes, and plain TCP. Every
connection must read the byte "x"; every resumed one must be reported as reused. Each wait is
bounded; the servers are stopped by PID.

Usage: tls_smoke.py TLS_RETURN TLS_RETURN_EPOLL
"""
import os
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import time


def start(argv):
    """Starts a server; its PID and port once it says "listening on HOST:PORT" (10 s at most)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 10
    line = ""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, int(line.rsplit(":", 1)[1])
        if line == "":  # EOF: it exited
            break
    proc.kill()
    proc.wait(timeout=10)
    raise SystemExit(f"{argv[0]} did not announce its port: {line!r}")


def exchange(port, version, resume, count):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    session = None
    reused = 0
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        t = ctx.wrap_socket(raw, session=session if resume else None)
        if t.recv(1) != b"x":
            raise SystemExit(f"port {port} TLS {version}: no 'x'")
        reused += 1 if t.session_reused else 0
        session = t.session
        t.close()
    return reused


def plain(port, count):
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if s.recv(1) != b"x":
                raise SystemExit(f"port {port} plain: no 'x'")


def main():
    tls_return, tls_return_epoll = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                        "/CN=smoke", "-keyout", key, "-out", cert], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        tls = ["127.0.0.1:0", "--tls-cert", cert, "--tls-key", key]
        servers = []
        try:
            for argv in ([tls_return] + tls, [tls_return_epoll] + tls,
                         [tls_return, "127.0.0.1:0"]):
                servers.append(start(argv))
            for proc, port in servers[:2]:
                for version in ("1.3", "1.2"):
                    exchange(port, version, False, 3)
                    reused = exchange(port, version, True, 4)
                    if reused != 3:  # the first has no session to offer
                        raise SystemExit(f"{proc.args[0]} TLS {version}: {reused} of 3 resumed")
            plain(servers[2][1], 3)
        finally:
            for proc, _ in servers:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    print("ok")


if __name__ == "__main__":
    main()
