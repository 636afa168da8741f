#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# report.py: turns bench/run's raw RUN lines into bench/RESULTS.md (one section per suite) and a chart.
"""Aggregates the raw lines of one bench/run suite: the median of the repeats with their min-max,
and every netloop figure as a ratio to the raw epoll and Asio baselines (ratio of the medians,
with the min-max of the per-repeat ratios, repeat i of one server against repeat i of the other:
they ran next to each other). Rewrites only its own suite's section of RESULTS.md."""

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys

CONFIGS = {
    "e1x64": "1 conn × 64 B",
    "e50x64": "50 × 64 B",
    "e500x64": "500 × 64 B",
    "e50x64_shared": "50 × 64 B, shared core",
    "e500x64_shared": "500 × 64 B, shared core",
    "e50x16k": "50 × 16 KiB",
    "e50x16k_nodelay": "50 × 16 KiB, TCP_NODELAY",
    "e50x64_k16": "50 × 64 B, 16 in flight",
    "connect": "connect rate (16 at once)",
    "idle1k": "1,000 idle",
    "idle10k": "10,000 idle",
}
SERVERS = {
    "epoll": "raw epoll (C)",
    "asio": "Asio callbacks",
    "asio_coro": "raw Asio C++20 coroutines (use_awaitable)",
    "netloop": "netloop: samples/echo (30 s timeouts)",
    "netloop_nt": "netloop: no timeouts",
    "netloop_lean": "netloop: read(max_bytes), 30 s",
    "base": "samples/echo of the BENCH_BASE build (another netloop commit), paired with netloop",
    "base_lean": "echo_lean of the BENCH_BASE build, paired with netloop_lean",
}
NETLOOP = ("netloop", "netloop_nt", "netloop_lean", "base", "base_lean")

# id, text, config, server, reference (None: absolute), metric, comparison, goal, kind
# kind: "target" (issue 12's bound), "aim" (the goal beyond it), "report" (shown, no bound).
ECHO_TARGETS = [
    ("cpu_50x64_coro", "Echo 50 × 64 B, CPU µs/msg: samples/echo ≤ raw Asio coroutines",
     "e50x64", "netloop", "asio_coro", "cpu", "<=", 1.00, "target"),
    ("cpu_50x64_epoll", "Echo 50 × 64 B, CPU µs/msg: samples/echo ≤ 1.10 × raw epoll",
     "e50x64", "netloop", "epoll", "cpu", "<=", 1.10, "target"),
    ("aim_50x64_epoll", "Echo 50 × 64 B, CPU µs/msg: samples/echo ≤ 1.05 × raw epoll "
     "(Asio callbacks' level)", "e50x64", "netloop", "epoll", "cpu", "<=", 1.05, "aim"),
    ("cpu_500x64_coro", "Echo 500 × 64 B, CPU µs/msg: samples/echo ≤ raw Asio coroutines",
     "e500x64", "netloop", "asio_coro", "cpu", "<=", 1.00, "target"),
    ("cpu_500x64_epoll", "Echo 500 × 64 B, CPU µs/msg: samples/echo ≤ 1.10 × raw epoll",
     "e500x64", "netloop", "epoll", "cpu", "<=", 1.10, "target"),
    ("aim_500x64_epoll", "Echo 500 × 64 B, CPU µs/msg: samples/echo ≤ 1.05 × raw epoll "
     "(Asio callbacks' level)", "e500x64", "netloop", "epoll", "cpu", "<=", 1.05, "aim"),
    ("shared_50x64_coro", "Shared core, echo 50 × 64 B, CPU µs/msg: samples/echo ≤ raw Asio "
     "coroutines", "e50x64_shared", "netloop", "asio_coro", "cpu", "<=", 1.00, "target"),
    ("shared_50x64_epoll", "Shared core, echo 50 × 64 B, CPU µs/msg: samples/echo ÷ raw epoll",
     "e50x64_shared", "netloop", "epoll", "cpu", None, None, "report"),
    ("shared_500x64_coro", "Shared core, echo 500 × 64 B, CPU µs/msg: samples/echo ≤ raw Asio "
     "coroutines", "e500x64_shared", "netloop", "asio_coro", "cpu", "<=", 1.00, "target"),
    ("shared_500x64_epoll", "Shared core, echo 500 × 64 B, CPU µs/msg: samples/echo ÷ raw epoll",
     "e500x64_shared", "netloop", "epoll", "cpu", None, None, "report"),
    ("idle_lean", "RSS per idle connection at 10,000, read(max_bytes) echo: ≤ 1.5 KiB",
     "idle10k", "netloop_lean", None, "rss", "<=", 1536, "target"),
    ("aim_idle_lean", "RSS per idle connection at 10,000, read(max_bytes) echo: ≤ 1 KiB",
     "idle10k", "netloop_lean", None, "rss", "<=", 1024, "aim"),
    ("idle_array", "RSS per idle connection at 10,000, samples/echo (4 KiB array)",
     "idle10k", "netloop", None, "rss", None, None, "report"),
    ("connect_rate", "Connect rate (connect + echo + close per s): samples/echo ≥ 0.95 × Asio "
     "callbacks", "connect", "netloop", "asio", "rate", ">=", 0.95, "target"),
]
# The syscall target: per accepted connection (bench/syscalls.sh), netloop ≤ Asio callbacks.
SYSCALLS_TARGET = ("syscalls_per_conn",
                   "System calls per accepted connection (strace -c): samples/echo ≤ Asio callbacks",
                   "netloop", "asio")

KV_TESTS = ["ping_inline", "ping_mbulk", "set", "get", "incr"]
KV_TARGET_TESTS = ["ping_inline", "ping_mbulk", "set", "get"]


def parse_raw(path, prefix="RUN "):
    runs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith(prefix):
                continue
            runs.append(dict(re.findall(r"(\w+)=(\S+)", line)))
    return runs


def ok(run):
    return run.get("rc") == "0" and run.get("errors", "0") == "0" \
        and run.get("mismatches", "0") == "0"


def number(run, key):
    try:
        return float(run[key])
    except (KeyError, ValueError):
        return None


def cpu_per_msg(run):
    """Server CPU per message: schedstat (ns resolution) if there, else utime+stime (10 ms ticks)."""
    v = number(run, "server_sched_us_per_msg")
    return v if v else number(run, "server_cpu_us_per_msg")


METRICS = {
    "rate": lambda r: number(r, "msgs_per_s"),
    "p99": lambda r: number(r, "p99_us"),
    "cpu": cpu_per_msg,
    "cpu_ticks": lambda r: number(r, "server_cpu_us_per_msg"),
    "util": lambda r: number(r, "server_cpu_util"),
    "rss": lambda r: number(r, "rss_per_conn_b"),
    "open": lambda r: number(r, "open_s"),
    "rps": lambda r: number(r, "rps"),
    "kv_cpu": lambda r: (number(r, "server_sched_us") or number(r, "server_cpu_us") or 0)
    / number(r, "requests"),
    "kv_cpu_ticks": lambda r: number(r, "server_cpu_us") / number(r, "requests"),
}


class table:
    """Valid runs indexed by (config, server) -> {rep: run}."""

    def __init__(self, runs):
        self.runs = {}
        self.failed = {}
        for r in runs:
            key = (r.get("config"), r.get("server"))
            if ok(r):
                self.runs.setdefault(key, {})[int(r.get("rep", 0))] = r
            else:
                self.failed[key] = self.failed.get(key, 0) + 1

    def values(self, config, server, metric):
        reps = self.runs.get((config, server), {})
        return {rep: METRICS[metric](r) for rep, r in reps.items()
                if METRICS[metric](r) is not None}

    def stat(self, config, server, metric):
        v = list(self.values(config, server, metric).values())
        if not v:
            return None
        return statistics.median(v), min(v), max(v)

    def ratio(self, config, server, reference, metric):
        a = self.values(config, server, metric)
        b = self.values(config, reference, metric)
        if not a or not b:
            return None
        mb = statistics.median(b.values())
        if not mb:
            return None
        paired = [a[k] / b[k] for k in a if k in b and b[k]]
        med = statistics.median(a.values()) / mb
        return med, (min(paired) if paired else med), (max(paired) if paired else med)


def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    return f"{v:,.{decimals}f}"


def fmt_stat(s, digits=3):
    if s is None:
        return "–"
    med, lo, hi = s
    return f"{fmt(med, digits)} <sub>({fmt(lo, digits)}–{fmt(hi, digits)})</sub>"


def fmt_ratio(r):
    if r is None:
        return "–"
    med, lo, hi = r
    return f"{med:.2f} <sub>({lo:.2f}–{hi:.2f})</sub>"


def met(value, op, goal):
    return {"<=": value <= goal, "<": value < goal, ">=": value >= goal}[op]


def goal_text(op, goal, absolute=False, kind="target"):
    if op is None:
        return "report"
    sym = {"<=": "≤", "<": "<", ">=": "≥"}[op]
    text = f"{sym} {fmt(goal)} B" if absolute else f"{sym} {goal:.2f}×"
    return f"aim: {text}" if kind == "aim" else text


def skipped_text(args):
    if not args.skipped:
        return ""
    return f" ({args.skipped} configuration-repeat(s) skipped to keep the run under 10 minutes)"


def read_notes(path):
    notes = {}
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and ":" in line:
                    key, text = line.split(":", 1)
                    notes[key.strip()] = text.strip()
    return notes


def unmet_note(notes, target_id):
    return notes.get(target_id, "no explanation recorded yet (bench/target_notes.txt)")


# ---- echo suite ----------------------------------------------------------------------------------

def syscalls_per_conn(syscalls):
    """server -> syscalls per accepted connection, from bench/syscalls.sh's SYSCALLS lines."""
    return {r["server"]: float(r["per_conn"]) for r in syscalls
            if r.get("rc") == "0" and "per_conn" in r}


def syscalls_table(syscalls, args):
    out = ["### Syscalls per accepted connection\n"]
    if not syscalls:
        out.append("Not measured in this run (`bench/syscalls.sh`, called at the end of "
                   "`bench/run`).\n")
        return out
    cycles = syscalls[0].get("cycles", "?")
    out.append(f"`bench/syscalls.sh`: each server under `strace -f -c`, `bench/load connect "
               f"--conns 1` (connect, one 64-byte echo, close, one at a time); calls of a run of "
               f"200 + {cycles} cycles minus those of a run of 200, ÷ {cycles}, so start-up and "
               f"shutdown cancel out. Target: netloop ≤ Asio callbacks. Unpinned; strace's "
               f"tables are in `bench/out/strace-*.txt`.\n")
    out.append("| server | syscalls per connection | ÷ asio | per connection, by call (≥ 0.05) |")
    out.append("| --- | ---: | ---: | --- |")
    sc = syscalls_per_conn(syscalls)
    for r in syscalls:
        server = r.get("server", "?")
        if r.get("rc") != "0":
            out.append(f"| {server} | failed | – | |")
            continue
        ratio = f"{sc[server] / sc['asio']:.2f}" if sc.get("asio") else "–"
        top = ", ".join(item.replace(":", " ") for item in r.get("top", "").split(",") if item)
        out.append(f"| {server} | {sc[server]:.2f} | {ratio} | {top} |")
    out.append("")
    return out


def repeats_text(t, args):
    """Configurations that ran fewer repeats than asked (flag "once" in bench/run)."""
    counts = {}
    for (config, _), reps in t.runs.items():
        counts[config] = max(counts.get(config, 0), len(reps))
    fewer = [f"{c} {n}" for c, n in counts.items() if str(n) != str(args.repeats)]
    return (" Repeats that ran, where fewer: " + ", ".join(sorted(fewer)) + ".") if fewer else ""


def echo_section(args, runs, notes, syscalls=()):
    t = table(runs)
    configs = [c for c in CONFIGS if any(k[0] == c for k in list(t.runs) + list(t.failed))]
    out = []
    out.append("## Echo servers: netloop against raw epoll and Asio\n")
    out.append(f"Command: `{args.command}` — {args.elapsed} s in all, build included.  ")
    out.append(f"Machine: {args.machine}  ")
    out.append(f"Each run: a fresh server pinned to one CPU, `bench/load` pinned to the other; "
               f"{args.warmup} s warm-up, then a {args.seconds} s window (idle: open, one echo each, "
               f"hold 0.5 s). {args.repeats} repeats{skipped_text(args)}: repeat 1 runs every "
               f"configuration, then repeat 2 …; within a configuration the servers run one after "
               f"the other (A B C, A B C, …), so repeat i of netloop and of a baseline are "
               f"neighbours in time.{repeats_text(t, args)}  ")
    out.append(f"Other processes kept {args.busy_before} CPUs busy just before the run (0 on a "
               "quiet machine).  ")
    out.append("Cells: median of the repeats <sub>(min–max)</sub>. Ratios: ratio of the medians "
               "<sub>(min–max of the per-repeat ratios)</sub>; below 1 means netloop uses less / "
               "answers sooner.  ")
    out.append("Server CPU: on-CPU time of all the server's threads over the window from "
               "`/proc/<pid>/task/*/schedstat` (ns resolution); utime+stime from "
               "`/proc/<pid>/stat` (10 ms ticks) is shown beside it as a cross-check. "
               "“busy”: server CPU ÷ window (1.00 = its core saturated).\n")
    out.append("Servers: " + "; ".join(f"**{k}** = {v}" for k, v in SERVERS.items()) +
               ". All echo through a 4 KiB buffer, as samples/echo does; none sets TCP_NODELAY "
               "unless the configuration says so (netloop does not set it).\n")

    # targets first: the point of the page
    out.append("### Targets (issue 12)\n")
    out.append("Rows with goal “aim” are the goal beyond the target; “report” rows have no bound. "
               "Shared core: a `cache_hog` streaming through 64 MiB runs pinned to the server's "
               "CPU at the server's priority during the window, the same for every server.\n")
    out.append("| target | measured (median) | ratio <sub>(spread)</sub> | goal | met | why not |")
    out.append("| --- | --- | --- | --- | --- | --- |")

    def verdict_of(value, tid, op, goal):
        if value is None:
            return "not measured", ""
        if op is None:
            return "–", ""
        return ("yes", "") if met(value, op, goal) else ("**no**", unmet_note(notes, tid))

    for tid, text, config, server, ref, metric, op, goal, kind in ECHO_TARGETS:
        unit = {"cpu": "µs/msg", "p99": "µs", "rate": "/s", "rss": "B/conn"}[metric]
        s = t.stat(config, server, metric)
        if ref is None:
            measured = f"{server} {fmt_stat(s)} {unit}"
            verdict, why = verdict_of(s[0] if s else None, tid, op, goal)
            out.append(f"| {text} | {measured} | – | {goal_text(op, goal, True, kind)} | "
                       f"{verdict} | {why} |")
            continue
        rs = t.stat(config, ref, metric)
        r = t.ratio(config, server, ref, metric)
        measured = f"{server} {fmt(s[0] if s else None)} vs {ref} {fmt(rs[0] if rs else None)} {unit}"
        verdict, why = verdict_of(r[0] if r else None, tid, op, goal)
        out.append(f"| {text} | {measured} | {fmt_ratio(r)} | {goal_text(op, goal, kind=kind)} | "
                   f"{verdict} | {why} |")
    tid, text, server, ref = SYSCALLS_TARGET
    sc = syscalls_per_conn(syscalls)
    a, b = sc.get(server), sc.get(ref)
    if a is None or b is None:
        out.append(f"| {text} | – | – | ≤ 1.00× | not measured | |")
    else:
        verdict, why = verdict_of(a / b if b else None, tid, "<=", 1.0)
        out.append(f"| {text} | {server} {a:.2f} vs {ref} {b:.2f} per connection | "
                   f"{(a / b if b else float('nan')):.2f} | ≤ 1.00× | {verdict} | {why} |")
    out.append("")

    pairs = [(c, "netloop", "base", "cpu") for c in configs if not c.startswith("idle")] + \
        [(c, "netloop_lean", "base_lean", "rss") for c in configs if c.startswith("idle")]
    pairs = [p for p in pairs if (p[0], p[1]) in t.runs and (p[0], p[2]) in t.runs]
    if pairs:
        out.append("### Side by side: this build against the BENCH_BASE build\n")
        out.append("The same configuration, the two builds one after the other in every repeat. "
                   "Ratio this ÷ base: below 1 means this build uses less.\n")
        out.append("| configuration | metric | this build | base build | this ÷ base | "
                   "this ÷ epoll | base ÷ epoll |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for config, mine, base, metric in pairs:
            unit = "CPU µs/msg" if metric == "cpu" else "RSS B/conn"
            out.append("| " + " | ".join([
                CONFIGS[config], unit,
                f"{mine} {fmt_stat(t.stat(config, mine, metric))}",
                f"{base} {fmt_stat(t.stat(config, base, metric))}",
                fmt_ratio(t.ratio(config, mine, base, metric)),
                fmt_ratio(t.ratio(config, mine, "epoll", metric)),
                fmt_ratio(t.ratio(config, base, "epoll", metric))]) + " |")
        out.append("")

    out.append("### Throughput, latency and server CPU per message\n")
    out.append("| configuration | server | msgs/s | p99 µs | CPU µs/msg | CPU µs/msg (utime+stime) "
               "| busy | CPU/msg ÷ epoll | CPU/msg ÷ asio | CPU/msg ÷ asio_coro | p99 ÷ epoll "
               "| msgs/s ÷ epoll |")
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in configs:
        if config.startswith("idle"):
            continue
        for server in SERVERS:
            key = (config, server)
            if key not in t.runs and key not in t.failed:
                continue
            failed = t.failed.get(key, 0)
            util = t.stat(config, server, "util")
            row = [CONFIGS[config] + (" (cycles)" if config == "connect" else ""),
                   f"{server}" + (f" ({failed} failed)" if failed else ""),
                   fmt_stat(t.stat(config, server, "rate")),
                   fmt_stat(t.stat(config, server, "p99")),
                   fmt_stat(t.stat(config, server, "cpu")),
                   fmt(t.stat(config, server, "cpu_ticks")[0]) if t.stat(config, server, "cpu_ticks") else "–",
                   f"{util[0]:.2f}" if util else "–"]
            if server == "epoll":
                row += ["1", "–", "–", "1", "1"]
            else:
                row += [fmt_ratio(t.ratio(config, server, "epoll", "cpu")),
                        fmt_ratio(t.ratio(config, server, "asio", "cpu")) if server in NETLOOP else "–",
                        fmt_ratio(t.ratio(config, server, "asio_coro", "cpu"))
                        if server in NETLOOP else "–",
                        fmt_ratio(t.ratio(config, server, "epoll", "p99")),
                        fmt_ratio(t.ratio(config, server, "epoll", "rate"))]
            out.append("| " + " | ".join(row) + " |")
    out.append("")

    out.append("### Idle connections: server RSS per connection\n")
    out.append("`bench/load idle` reads the server's VmRSS before opening and after holding; the "
               "delta over the connections (kernel socket buffers are not in RSS).\n")
    out.append("| connections | server | RSS B/conn | ÷ epoll | ÷ asio | ÷ asio_coro "
               "| time to open all (s) |")
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for config in configs:
        if not config.startswith("idle"):
            continue
        for server in SERVERS:
            key = (config, server)
            if key not in t.runs and key not in t.failed:
                continue
            failed = t.failed.get(key, 0)
            out.append("| " + " | ".join([
                CONFIGS[config], server + (f" ({failed} failed)" if failed else ""),
                fmt_stat(t.stat(config, server, "rss")),
                "1" if server == "epoll" else fmt_ratio(t.ratio(config, server, "epoll", "rss")),
                fmt_ratio(t.ratio(config, server, "asio", "rss")) if server in NETLOOP else "–",
                fmt_ratio(t.ratio(config, server, "asio_coro", "rss")) if server in NETLOOP else "–",
                fmt_stat(t.stat(config, server, "open"))]) + " |")
    out.append("")
    out += syscalls_table(syscalls, args)
    if args.chart_written:
        out.append(f"![server CPU per message and p99 per configuration]"
                   f"({os.path.basename(args.chart)})\n")
    others = [number(r, "other_cpus") for r in runs if ok(r) and number(r, "other_cpus") is not None]
    steal = [number(r, "steal_cpus") for r in runs if ok(r) and number(r, "steal_cpus") is not None]
    if others:
        busy = sum(1 for o in others if o > 0.25)
        out.append(f"Interference: besides the server and the load generator, the machine was busy "
                   f"with {statistics.median(others):.2f} CPUs (median over the windows; max "
                   f"{max(others):.2f}; {busy} of {len(others)} windows above 0.25 CPU), hypervisor "
                   f"steal {statistics.median(steal):.2f} CPUs (median). Figures from windows with "
                   f"other work running are noisier; the ratios of adjacent repeats less so.\n")
    bad = sum(t.failed.values())
    out.append(f"Runs: {sum(len(v) for v in t.runs.values())} valid, {bad} failed or with errors "
               "(excluded). Raw lines: `bench/out/raw-echo.txt` (not committed).")
    return "\n".join(out) + "\n", t


def echo_chart(args, t):
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("report.py: gnuplot not found, no chart", file=sys.stderr)
        return False
    configs = [c for c in CONFIGS if not c.startswith("idle")
               and any(k[0] == c for k in t.runs)]
    servers = [s for s in SERVERS if any(k[1] == s and k[0] in configs for k in t.runs)]
    dat = os.path.join(args.workdir, "chart.dat")
    with open(dat, "w", encoding="utf-8") as f:
        for config in configs:
            cells = [f'"{CONFIGS[config]}"']
            for metric in ("cpu", "p99"):
                for s in servers:
                    st = t.stat(config, s, metric)
                    cells.append(f"{st[0]:.4f}" if st else "NaN")
            f.write(" ".join(cells) + "\n")
    n = len(servers)
    plots_cpu = ", ".join(
        f"'{dat}' using {2 + i}:xtic(1) title '{s}'" for i, s in enumerate(servers))
    plots_p99 = ", ".join(
        f"'{dat}' using {2 + n + i}:xtic(1) title '{s}'" for i, s in enumerate(servers))
    terminal = "pngcairo noenhanced size 1400,1000 font ',10'"
    probe = subprocess.run([gnuplot, "-e", "set terminal pngcairo"], capture_output=True)
    if probe.returncode != 0:
        terminal = "png noenhanced size 1400,1000"
    script = f"""
set terminal {terminal}
set output '{args.chart}'
set multiplot layout 2,1 title "netloop vs raw epoll vs Asio: medians of {args.repeats} run(s), servers on one CPU, load on the other"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key outside right top vertical
set grid ytics
set logscale y
set xtics rotate by -15 scale 0
set ylabel 'server CPU µs per message (log)'
set title 'Server CPU per message (connect: per connect + echo + close)'
plot {plots_cpu}
set ylabel 'p99 latency µs (log)'
set title 'p99 latency (connect: whole cycle)'
plot {plots_p99}
unset multiplot
"""
    gp = os.path.join(args.workdir, "chart.gp")
    with open(gp, "w", encoding="utf-8") as f:
        f.write(script)
    run = subprocess.run([gnuplot, gp], capture_output=True, text=True)
    if run.returncode != 0:
        print(f"report.py: gnuplot failed: {run.stderr}", file=sys.stderr)
        return False
    return True


# ---- kv suite ------------------------------------------------------------------------------------

def kv_section(args, runs, notes):
    t = table(runs)
    out = ["## kv against redis-server\n"]
    out.append(f"Command: `{args.command}` — {args.elapsed} s in all, build included.  ")
    out.append(f"Machine: {args.machine}  ")
    out.append("Both servers pinned to one CPU, `redis-benchmark -t TEST -c 50 -n 200000 -P N "
               "--csv` pinned to the other, one test at a time, servers alternating, "
               f"{args.repeats} repeats{skipped_text(args)}. redis-server runs with "
               "`--save '' --appendonly no` on a loopback port. Server CPU per request: on-CPU time "
               "(`/proc/<pid>/task/*/schedstat`) over the benchmark run ÷ 200,000 (utime+stime from "
               "`/proc/<pid>/stat` is in the raw lines). Cells: median <sub>(min–max)</sub>.  ")
    out.append(f"Other processes kept {args.busy_before} CPUs busy just before the run (0 on a quiet "
               "machine).\n")
    if not args.have_kv:
        out.append("**samples/kv was not built** (`build-bench/samples/kv` missing): only "
                   "redis-server's reference figures below; the kv targets are not measured.\n")
    out.append("| test | -P | redis req/s | kv req/s | req/s kv ÷ redis | redis CPU µs/req | "
               "kv CPU µs/req | CPU kv ÷ redis | redis p99 ms | kv p99 ms |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    t_p99 = {}
    for r in runs:
        if ok(r):
            t_p99.setdefault((r["config"], r["server"]), []).append(float(r.get("p99_ms", 0)))
    for p in (1, 16):
        for test in KV_TESTS:
            config = f"{test}_P{p}"
            cells = [test.upper(), str(p),
                     fmt_stat(t.stat(config, "redis", "rps")),
                     fmt_stat(t.stat(config, "kv", "rps")),
                     fmt_ratio(t.ratio(config, "kv", "redis", "rps")),
                     fmt_stat(t.stat(config, "redis", "kv_cpu")),
                     fmt_stat(t.stat(config, "kv", "kv_cpu")),
                     fmt_ratio(t.ratio(config, "kv", "redis", "kv_cpu"))]
            for s in ("redis", "kv"):
                v = t_p99.get((config, s))
                cells.append(fmt(statistics.median(v)) if v else "–")
            out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("### Targets (issue 5)\n")
    out.append("| target | ratio kv ÷ redis <sub>(spread)</sub> | goal | met | why not |")
    out.append("| --- | --- | --- | --- | --- |")
    for p in (1, 16):
        for test in KV_TARGET_TESTS:
            config = f"{test}_P{p}"
            for metric, op, goal, what in (("kv_cpu", "<=", 1.0, "server CPU µs per request"),
                                           ("rps", ">=", 1.0, "requests/s")):
                tid = f"kv_{metric}_{test}_P{p}"
                r = t.ratio(config, "kv", "redis", metric)
                if r is None:
                    verdict, why = "not measured", ("samples/kv missing" if not args.have_kv else "")
                else:
                    good = met(r[0], op, goal)
                    verdict, why = ("yes", "") if good else ("**no**", unmet_note(notes, tid))
                out.append(f"| {test.upper()} -P {p}: {what} | {fmt_ratio(r)} | "
                           f"{goal_text(op, goal)} | {verdict} | {why} |")
    out.append("")
    out.append("Raw lines: `bench/out/raw-kv.txt` (not committed).")
    return "\n".join(out) + "\n"


# ---- RESULTS.md ----------------------------------------------------------------------------------

HEADER = """# netloop benchmark results

Written by `bench/run` (echo section) and `bench/run kv` (kv section); each run rewrites only its own
section. What the tools do and how to read the figures: [README.md](README.md). These are figures
from a shared 2-CPU virtual machine: read the ratios, not the absolute numbers.
"""


def write_section(path, suite, body):
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    begin, end = f"<!-- {suite}:begin -->", f"<!-- {suite}:end -->"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        if not text.strip():
            text = HEADER
            for s, placeholder in (("echo", "Not run yet: `bench/run`.\n"),
                                   ("kv", "Not run yet: `bench/run kv`.\n")):
                text += f"\n<!-- {s}:begin -->\n{placeholder}<!-- {s}:end -->\n"
        if begin in text:
            text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--suite", choices=["echo", "kv"], required=True)
    p.add_argument("--raw", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--chart", required=True)
    p.add_argument("--notes", default="")
    p.add_argument("--command", default="bench/run")
    p.add_argument("--machine", default="")
    p.add_argument("--elapsed", default="?")
    p.add_argument("--seconds", default="3")
    p.add_argument("--warmup", default="0.5")
    p.add_argument("--repeats", default="3")
    p.add_argument("--have-kv", type=int, default=1)
    p.add_argument("--workdir", default=".")
    p.add_argument("--busy-before", default="?")
    p.add_argument("--skipped", type=int, default=0)
    args = p.parse_args()
    runs = [r for r in parse_raw(args.raw) if r.get("suite") == args.suite]
    notes = read_notes(args.notes)
    if args.suite == "echo":
        args.chart_written = echo_chart(args, table(runs))
        syscalls = parse_raw(args.raw, "SYSCALLS ")
        body, _ = echo_section(args, runs, notes, syscalls)
    else:
        body = kv_section(args, runs, notes)
    write_section(args.results, args.suite, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
