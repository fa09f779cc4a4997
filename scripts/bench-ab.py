#!/usr/bin/env python3
"""A/B load comparison of two portcullis binaries at a fixed request rate.

Server CPU per request depends on the request rate (fewer requests per wake-up at lower
rates), so comparing two builds is fair only at the same offered rate. This starts each
binary on the quickstart config with the verification cache on (server pinned to CPU 0,
ghz to CPU 1), drives cached Authenticate, Check (allow) and the health floor at a fixed
rate, alternating the binaries for several rounds, and prints server CPU microseconds per
request (utime+stime from /proc/PID/stat) for each.

Usage: scripts/bench-ab.py OLD_BINARY NEW_BINARY [--rps 5000] [--seconds 8] [--rounds 3]
Needs ghz in .tools/bin (scripts/provision/grpc-tools.sh).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GHZ = os.path.join(REPO, ".tools", "bin", "ghz")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start(binary, directory):
    grpc, admin = free_port(), free_port()
    config = open(os.path.join(REPO, "examples", "quickstart.yaml")).read()
    config = (
        config.replace("127.0.0.1:50051", f"127.0.0.1:{grpc}")
        .replace("127.0.0.1:9090", f"127.0.0.1:{admin}")
        .replace("path: keys/", "path: " + os.path.join(REPO, "examples", "keys") + "/")
    )
    config += "\ntelemetry: {log_level: warn}\n" if "telemetry:" not in config else ""
    path = os.path.join(directory, f"config-{grpc}.yaml")
    with open(path, "w") as f:
        f.write(config)
    process = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--config", path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    return process, grpc
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit(f"{binary} did not become ready")


def token(binary):
    return subprocess.check_output(
        [binary, "token", "sign", "--key", os.path.join(REPO, "examples/keys/quickstart-es256.key.pem"),
         "--alg", "ES256", "--kid", "quickstart-es256", "--iss", "https://quickstart.portcullis.invalid",
         "--sub", "bench", "--aud", "api://quickstart", "--scope", "orders:read", "--ttl", "1h"],
        text=True,
    ).strip()


def scenarios(tok):
    bearer = {"authorization": f"Bearer {tok}"}
    check = {"attributes": {"request": {"http": {"method": "GET", "host": "api.example.com",
                                                  "path": "/orders/42", "headers": bearer}}}}
    return [
        ("floor", "grpc.health.v1.Health/Check", {}),
        ("cached Authenticate", "portcullis.v1.Auth/Authenticate", {"credential": {"bearer_token": tok}}),
        ("Check allow", "envoy.service.auth.v3.Authorization/Check", check),
    ]


def run(pid, grpc, call, data, rps, seconds):
    before = cpu_ticks(pid)
    out = subprocess.run(
        ["taskset", "-c", "1", GHZ, "--insecure", "--call", call, "-d", json.dumps(data),
         "--rps", str(rps), "-c", "32", "--connections", "4", "-z", f"{seconds}s",
         "--format", "json", f"127.0.0.1:{grpc}"],
        capture_output=True, text=True, check=True,
    )
    spent = (cpu_ticks(pid) - before) / TICKS
    report = json.loads(out.stdout)
    ok = report.get("statusCodeDistribution", {}).get("OK", 0)
    return spent * 1e6 / max(ok, 1), ok / seconds, report["latencyDistribution"][-2]["latency"] / 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rps", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        servers = {name: start(binary, directory) for name, binary in (("old", args.old), ("new", args.new))}
        tok = token(args.new)
        results = {}
        try:
            for _ in range(args.rounds):
                for label, call, data in scenarios(tok):
                    for name in ("old", "new"):
                        process, grpc = servers[name]
                        run(process.pid, grpc, call, data, args.rps, 2)  # warm-up
                        results.setdefault((label, name), []).append(
                            run(process.pid, grpc, call, data, args.rps, args.seconds))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait()
    print(f"| scenario (fixed {args.rps} rps, {args.rounds} rounds of {args.seconds}s, medians) "
          "| old µs/req | new µs/req | new/old | old p99 ms | new p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _, _ in scenarios("x"):
        median = lambda xs: sorted(xs)[len(xs) // 2]
        old = [r[0] for r in results[(label, "old")]]
        new = [r[0] for r in results[(label, "new")]]
        old_p99 = median([r[2] for r in results[(label, "old")]])
        new_p99 = median([r[2] for r in results[(label, "new")]])
        print(f"| {label} | {median(old):.1f} | {median(new):.1f} | {median(new) / median(old):.2f} "
              f"| {old_p99:.2f} | {new_p99:.2f} |")


if __name__ == "__main__":
    main()
