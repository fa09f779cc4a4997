#!/usr/bin/env python3
"""A/B load comparison of two portcullis binaries at a fixed request rate.

Server CPU per request depends on the request rate (fewer requests per wake-up at lower
rates), so comparing two builds is fair only at the same offered rate. This starts each
binary on the quickstart config with the verification cache on (server pinned to CPU 0,
ghz to CPU 1), drives cached Authenticate, Check (allow) and the health floor at a fixed
rate, alternating the binaries for several rounds, and prints server CPU microseconds per
request (utime+stime from /proc/PID/stat) for each.

Usage: scripts/bench-ab.py OLD_BINARY NEW_BINARY [--rps 5000] [--seconds 8] [--rounds 3]
                           [--new-identity-token]

--new-identity-token turns `response.identity_token` on for NEW only (EdDSA, the throwaway
keys under tests/testdata/identity): with the same binary twice, it measures what minting,
keeping and setting the identity token costs a cached request.

--new-rate-limit local|redis gives NEW a per-subject rate limit too high to be reached, so
every request is counted: in the process (local), or in a redis-server this script starts
on 127.0.0.1 (pinned to CPU 1 with ghz; $PORTCULLIS_REDIS_SERVER or redis-server).
Needs ghz in .tools/bin (scripts/provision/grpc-tools.sh) or $PORTCULLIS_TOOLS; shares its helpers with
scripts/bench.py (scripts/benchlib.py).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

from benchlib import (CLK_TCK, REPO, TOOLS_BIN, free_port, ghz_command, latency_ms, proc_ticks, sign_token,
                      stop, wait_ready, wait_tcp)

GHZ = os.path.join(TOOLS_BIN, "ghz")


IDENTITY_KEYS = os.path.join(REPO, "tests", "testdata", "identity")


def identity_token_config(admin):
    return (
        "response:\n"
        "  identity_token:\n"
        f"    issuer: http://127.0.0.1:{admin}\n"
        f"    signing_key: file:{IDENTITY_KEYS}/ed25519-a.pem\n"
        f"    next_signing_key: file:{IDENTITY_KEYS}/ed25519-b.pem\n"
        "    audience: upstream\n"
        "    claims: {email: email}\n"
    )


def rate_limit_config(mode, redis_port):
    config = "rate_limits:\n  per_subject: {rate: 1000000/s, burst: 1000000}\n"
    if mode == "redis":
        config += f"  redis: {{url: 'redis://127.0.0.1:{redis_port}/', timeout: 100ms}}\n"
    return config


def start_redis():
    port = free_port()
    binary = os.environ.get("PORTCULLIS_REDIS_SERVER", "redis-server")
    process = subprocess.Popen(
        ["taskset", "-c", "1", binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    if not wait_tcp(process, port, timeout=10):
        stop([process])
        sys.exit("redis-server did not start")
    return process, port


def start(binary, directory, identity_token=False, extra=""):
    grpc, admin = free_port(), free_port()
    config = open(os.path.join(REPO, "examples", "quickstart.yaml")).read()
    config = (
        config.replace("127.0.0.1:50051", f"127.0.0.1:{grpc}")
        .replace("127.0.0.1:9090", f"127.0.0.1:{admin}")
        .replace("path: keys/", "path: " + os.path.join(REPO, "examples", "keys") + "/")
    )
    if identity_token:
        config = config.replace("response:\n", identity_token_config(admin), 1)
    config += extra
    config += "\ntelemetry: {log_level: warn}\n" if "telemetry:" not in config else ""
    path = os.path.join(directory, f"config-{grpc}.yaml")
    with open(path, "w") as f:
        f.write(config)
    process = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--config", path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if wait_ready(process, admin, timeout=10):
        if identity_token:
            # The keys are published only when identity tokens are on: proof the config took.
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/.well-known/jwks.json", timeout=5) as jwks:
                assert len(json.load(jwks)["keys"]) == 2, "identity tokens are on"
        return process, grpc
    stop([process])
    sys.exit(f"{binary} did not become ready")


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
    before = proc_ticks(pid)
    out = subprocess.run(
        ghz_command(GHZ, call, data, f"127.0.0.1:{grpc}", 32, 4, ["--rps", str(rps), "-z", f"{seconds}s"],
                    ["taskset", "-c", "1"]),
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )
    spent = (proc_ticks(pid) - before) / CLK_TCK
    report = json.loads(out.stdout)
    ok = report.get("statusCodeDistribution", {}).get("OK", 0)
    return spent * 1e6 / max(ok, 1), ok / seconds, latency_ms(report, 99)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rps", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-identity-token", action="store_true",
                        help="response.identity_token on for NEW only")
    parser.add_argument("--new-rate-limit", choices=["local", "redis"],
                        help="a per-subject rate limit (never reached) for NEW only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        servers = {}
        results = {}
        helpers = []
        try:
            extra = ""
            if args.new_rate_limit:
                redis_port = None
                if args.new_rate_limit == "redis":
                    redis, redis_port = start_redis()
                    helpers.append(redis)
                extra = rate_limit_config(args.new_rate_limit, redis_port)
            for name, binary in (("old", args.old), ("new", args.new)):
                servers[name] = start(binary, directory, name == "new" and args.new_identity_token,
                                      extra if name == "new" else "")
            tok = sign_token(args.new)
            for _ in range(args.rounds):
                for label, call, data in scenarios(tok):
                    for name in ("old", "new"):
                        process, grpc = servers[name]
                        run(process.pid, grpc, call, data, args.rps, 2)  # warm-up
                        results.setdefault((label, name), []).append(
                            run(process.pid, grpc, call, data, args.rps, args.seconds))
        finally:
            stop([process for process, _ in servers.values()] + helpers)
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
