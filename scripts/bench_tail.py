#!/usr/bin/env python3
"""Tail latency and cache memory of Portcullis, measured with an open-loop load generator.

Two measurements scripts/bench.py (closed-loop ghz) cannot make:

1. Tail latency. For each scenario, the peak rate is measured closed-loop with `openloop`
   (bench-load/), then the same request is sent at a constant arrival rate of 25 %, 50 % and
   75 % of that peak. Latency counts from each request's scheduled send time, so a server that
   falls behind shows its queueing (no coordinated omission). The server is pinned to CPU 0,
   the generator to CPU 1. Next to the client-side p50/p99/p99.9 the table shows the server's
   own p99 (its decision-latency histogram, upper bucket bound) and its CPU per request.
2. Cache memory. A server with room for every token is sent 0 to --tokens distinct
   quickstart tokens (Authenticate, each once); its RSS is read at each step and the least-
   squares slope is the memory one cached verification costs.

Output: a Markdown report on stdout and in OUT/tail.md, the raw openloop JSON in
OUT/tail-*.json (OUT is target/bench by default). About 3 minutes once built. Python 3
standard library only; needs taskset (unless --no-pin) and openssl.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import QS_AUD, QS_ISSUER, QS_KID, QS_PUB, REPO  # noqa: E402

RS_ISSUER = "https://bench-rs256.portcullis.invalid"
RS_KID = "bench-rs256"

CONFIG = """\
# Written by scripts/bench_tail.py ({name}).
server:
  grpc_listen: 127.0.0.1:{grpc_port}
  admin_listen: 127.0.0.1:{admin_port}
  limits: {limits}
issuers:
  - name: quickstart
    issuer: {qs_issuer}
    public_key_files: [{{path: {qs_pub}, kid: {qs_kid}, algorithm: ES256}}]
    audiences: [{aud}]
    algorithms: [ES256]
    required_claims: [exp, sub]
  - name: bench-rs256
    issuer: {rs_issuer}
    public_key_files: [{{path: {rs_pub}, kid: {rs_kid}, algorithm: RS256}}]
    audiences: [{aud}]
    algorithms: [RS256]
    required_claims: [exp, sub]
authorization:
  rules:
    - name: orders-read
      match: {{ http: {{ methods: [GET], paths: ["/orders/*"] }} }}
      require: {{ scopes_all: [orders:read] }}
response:
  claims_to_headers: {{ sub: x-user-id, principal.issuer: x-auth-issuer }}
cache: {cache}
telemetry: {{log_level: warn}}
"""

SERVERS = {
    "cached": "{max_entries: 100000, max_ttl: 5m}",
    "uncached": "{max_ttl: 0s}",
    "memory": "{max_entries: 1000000, max_bytes: 8589934592, max_ttl: 30m}",
}

# name: server kind, rpc (openloop --rpc), token placeholder.
SCENARIOS = [
    {"name": "floor", "server": "cached", "rpc": "health", "token": "es256"},
    {"name": "check-cached", "server": "cached", "rpc": "check", "token": "es256"},
    {"name": "authenticate-cached", "server": "cached", "rpc": "authenticate", "token": "es256"},
    {"name": "uncached-es256", "server": "uncached", "rpc": "authenticate", "token": "es256"},
    {"name": "uncached-rs256", "server": "uncached", "rpc": "authenticate", "token": "rs256"},
]
LOADS = (0.25, 0.50, 0.75)
# A fixed low rate most deployments see, where per-request wake-ups dominate (cached rows).
LOW_RATE = 2000
# Overload: this multiple of the peak is offered to the uncached rows (load shedding answers
# what the server cannot admit).
OVERLOAD = 2.0


def log(message):
    print(f"bench_tail: {message}", file=sys.stderr, flush=True)


def die(message):
    raise SystemExit(f"bench_tail: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/bench_tail.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="unrecorded seconds before each run")
    p.add_argument("--tokens", type=int, default=200_000,
                   help="distinct tokens of the cache-memory run (0: skip it)")
    p.add_argument("--steps", type=int, default=4, help="RSS readings after the first, evenly spaced")
    p.add_argument("--memory-rpc", choices=("authenticate", "check"), default="authenticate",
                   help="what the cache-memory run sends each token in (check: an Envoy Check, "
                        "whose allow also keeps its encoded answer)")
    p.add_argument("--only", action="append", default=[], metavar="SCENARIO",
                   help="run only this latency scenario (repeatable); --only none skips them")
    p.add_argument("--max-queue-delay", default=None,
                   help="the servers' server.limits.max_queue_delay (default: the server's own)")
    p.add_argument("--skip-build", action="store_true",
                   help="use target/release/{portcullis,openloop} as they are")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="pin the server to CPU 0 and the generator to CPU 1 (taskset)")
    p.add_argument("--out", default=os.path.join(REPO, "target", "bench"), help="output directory")
    return p.parse_args(argv)


class Tail:
    def __init__(self, args):
        self.args = args
        self.bin = os.path.join(REPO, "target", "release", "portcullis")
        self.openloop_bin = os.path.join(REPO, "target", "release", "openloop")
        self.server_prefix = ["taskset", "-c", "0"] if args.pin else []
        self.client_prefix = ["taskset", "-c", "1"] if args.pin else []
        self.processes, self.servers = [], {}

    def build(self):
        if not self.args.skip_build:
            log("cargo build --release -p portcullis -p portcullis-load")
            subprocess.run(["cargo", "build", "--release", "-p", "portcullis", "-p", "portcullis-load"],
                           cwd=REPO, stdout=sys.stderr, check=True)
        for path in (self.bin, self.openloop_bin):
            if not os.access(path, os.X_OK):
                die(f"{path} missing (build it, or drop --skip-build)")

    def start(self, name, tmp, rs_pub):
        grpc_port, admin_port = benchlib.free_port(), benchlib.free_port()
        config = os.path.join(tmp, f"{name}.yaml")
        with open(config, "w") as f:
            f.write(CONFIG.format(name=name, grpc_port=grpc_port, admin_port=admin_port, qs_issuer=QS_ISSUER,
                                  qs_pub=QS_PUB, qs_kid=QS_KID, aud=QS_AUD, rs_issuer=RS_ISSUER, rs_pub=rs_pub,
                                  rs_kid=RS_KID, cache=SERVERS[name], limits=self.limits()))
        log_file = open(os.path.join(tmp, f"{name}.log"), "w")
        process = subprocess.Popen(self.server_prefix + [self.bin, "serve", "--config", config],
                                   stdout=log_file, stderr=subprocess.STDOUT)
        self.processes.append(process)
        if not benchlib.wait_ready(process, admin_port, timeout=30):
            die(f"server {name} did not become ready (log: {log_file.name})")
        self.servers[name] = (process, grpc_port, admin_port)
        log(f"server {name} ready (pid {process.pid})")

    def limits(self):
        delay = self.args.max_queue_delay
        return "{}" if delay is None else f"{{max_queue_delay: {delay}}}"

    def openloop(self, scenario, token, *extra, seconds=None):
        _, grpc_port, _ = self.servers[scenario["server"]]
        seconds = self.args.seconds if seconds is None else seconds
        cmd = self.client_prefix + [self.openloop_bin, "--target", f"127.0.0.1:{grpc_port}", "--rpc", scenario["rpc"],
                                    "--token", token, "--seconds", str(seconds),
                                    "--warmup-seconds", str(self.args.warmup_seconds), *extra]
        pid = self.servers[scenario["server"]][0].pid
        before = self.histogram(scenario["server"])
        t0 = benchlib.proc_ticks(pid)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + self.args.warmup_seconds + 120)
        t1 = benchlib.proc_ticks(pid)
        if out.returncode != 0:
            die(f"openloop failed: {out.stderr.strip()[-500:]}")
        result = json.loads(out.stdout)
        result["rss_mib"] = round(rss_bytes(pid) / 2**20, 1)
        if result["errors"] or result["wrong"]:
            die(f"{scenario['name']}: {result['errors']} errors, {result['wrong']} wrong answers")
        # Server CPU over the whole run (warm-up included) per request sent in it.
        answered = result["completed"] + result.get("shed", 0)
        sent = answered * (seconds + self.args.warmup_seconds) / seconds
        result["server_cpu_us"] = round((t1 - t0) / benchlib.CLK_TCK * 1e6 / max(sent, 1), 1)
        result["server_p99_ms"] = benchlib.server_p99(before, self.histogram(scenario["server"]))
        return result

    def histogram(self, server):
        return benchlib.decision_histogram(self.servers[server][2])

    def latency(self, tokens):
        rows = []
        selected = [s for s in SCENARIOS if not self.args.only or s["name"] in self.args.only]
        for s in selected:
            token = tokens[s["token"]]
            peak = self.openloop(s, token, "--rate", "0", "--in-flight", "64")
            self.save(f"{s['name']}.peak", peak)
            log(f"{s['name']}: peak {peak['throughput_rps']:.0f} rps (closed loop, 64 in flight)")
            loads = [(load, max(1, round(peak["throughput_rps"] * load))) for load in LOADS]
            if s["server"] == "cached" and s["name"] != "floor":
                loads.append((LOW_RATE / peak["throughput_rps"], LOW_RATE))
            if s["server"] == "uncached":
                loads.append((OVERLOAD, round(peak["throughput_rps"] * OVERLOAD)))
            for load, rate in loads:
                r = self.openloop(s, token, "--rate", str(rate))
                self.save(f"{s['name']}.{rate}", r)
                log(f"{s['name']} at {load:.0%} ({rate} rps): p99 {r['p99_us']} µs, "
                    f"server {r['server_cpu_us']} µs/req")
                rows.append((s, peak, load, r))
        return rows

    def memory(self):
        total, steps = self.args.tokens, self.args.steps
        process, grpc_port, admin_port = self.servers["memory"]
        readings = [(0, rss_bytes(process.pid), cached_entries(admin_port))]
        self.token_chars = 0
        step = total // steps
        for i in range(steps):
            cmd = self.client_prefix + [self.openloop_bin, "--target", f"127.0.0.1:{grpc_port}", "--rpc",
                                        self.args.memory_rpc, "--distinct-tokens", str(step), "--first-token",
                                        str(i * step), "--in-flight", "64"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                die(f"openloop failed: {out.stderr.strip()[-500:]}")
            result = json.loads(out.stdout)
            if result["errors"] or result["wrong"] or result["completed"] != step:
                die(f"cache fill: {result}")
            self.token_chars = result.get("token_chars", 0)
            time.sleep(1)
            readings.append(((i + 1) * step, rss_bytes(process.pid), cached_entries(admin_port)))
            log(f"memory: {(i + 1) * step} tokens, RSS {readings[-1][1] / 2**20:.1f} MiB, "
                f"{readings[-1][2]} cached")
        return readings

    def save(self, name, result):
        with open(os.path.join(self.args.out, f"tail-{name}.json"), "w") as f:
            json.dump(result, f, indent=1)

    def run(self):
        self.build()
        os.makedirs(self.args.out, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="portcullis-tail.")
        try:
            rs_key, rs_pub = os.path.join(tmp, "rs.key.pem"), os.path.join(tmp, "rs.pub.pem")
            subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                            "-out", rs_key], check=True, capture_output=True)
            subprocess.run(["openssl", "pkey", "-in", rs_key, "-pubout", "-out", rs_pub], check=True,
                           capture_output=True)
            tokens = {"es256": benchlib.sign_token(self.bin),
                      "rs256": benchlib.sign_token(self.bin, key=rs_key, alg="RS256", kid=RS_KID, iss=RS_ISSUER)}
            rows, readings = [], []
            if self.args.only != ["none"]:
                for name in ("cached", "uncached"):
                    self.start(name, tmp, rs_pub)
                rows = self.latency(tokens)
            if self.args.tokens > 0:
                self.start("memory", tmp, rs_pub)
                readings = self.memory()
        finally:
            benchlib.stop(self.processes)
            shutil.rmtree(tmp, ignore_errors=True)
        markdown = report(self.args, rows, readings, getattr(self, "token_chars", 0))
        sys.stdout.write(markdown)
        with open(os.path.join(self.args.out, "tail.md"), "w") as f:
            f.write(markdown)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib * 1024


def cached_entries(admin_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("portcullis_jwt_cache_entries "):
                return int(float(line.rsplit(None, 1)[1]))
    return None


def slope(points):
    """Least-squares slope of (x, y) points."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def report(args, rows, readings, token_chars):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    lines = [f"## Tail latency and cache memory ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ})",
             "", f"- commit: {head.stdout.strip() or 'unknown'}",
             f"- {'server on CPU 0, openloop on CPU 1 (taskset)' if args.pin else 'no pinning'}; "
             f"{args.warmup_seconds:g} s warm-up, then {args.seconds:g} s measured per run; 4 HTTP/2 connections; "
             f"cached rows also at a fixed {LOW_RATE} rps; server.limits: "
             f"{'defaults' if args.max_queue_delay is None else 'max_queue_delay ' + args.max_queue_delay}",
             ""]
    if rows:
        lines += ["| scenario | peak rps (closed loop) | load | offered rps | p50 µs | p99 µs | p99.9 µs | max µs "
                  "| server p99 ms (≤ bucket) | server CPU µs/req | late sends | shed (p99 µs) | RSS MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s, peak, load, r in rows:
            shed = f"{r.get('shed', 0)} ({r.get('shed_p99_us', 0)})" if r.get("shed") else "0"
            lines.append(f"| {s['name']} | {peak['throughput_rps']:.0f} | {load:.0%} | {r['offered_rps']:.0f} "
                         f"| {r['p50_us']} | {r['p99_us']} | {r['p999_us']} | {r['max_us']} | {r['server_p99_ms']} "
                         f"| {r['server_cpu_us']} | {r['late_sends']} | {shed} | {r.get('rss_mib', '–')} |")
        lines += ["", "Latency counts from each request's scheduled send time (admitted requests; shed ones "
                      "are counted apart with their own p99). late sends: requests the generator sent more "
                      "than 1 ms after their scheduled time (its own lag; their delay is in the latency). "
                      "Server CPU counts the warm-up too, per request sent. RSS: the server's, after the run.",
                      ""]
    if readings:
        per = slope([(n, rss) for n, rss, _ in readings])
        lines += ["| distinct tokens | RSS MiB | cached entries |", "|---:|---:|---:|"]
        lines += [f"| {n} | {rss / 2**20:.1f} | {cached} |" for n, rss, cached in readings]
        lines += ["", f"RSS slope: **{per:.0f} bytes per cached verification** (least squares over the "
                      f"{len(readings)} readings; quickstart tokens of about {token_chars} characters, each in one "
                      f"{args.memory_rpc} request).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    Tail(args).run()


if __name__ == "__main__":
    main()
