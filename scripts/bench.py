#!/usr/bin/env python3
"""Load benchmark baseline for Portcullis (the load half; the per-signature cost comes from
criterion).

Builds the release binary, starts the servers the selected scenarios need on loopback (from
SERVERS below: the default verification cache, `cache: {max_ttl: 0s}` so every request pays
signature verification, and three telemetry settings), drives them with ghz and records, per
scenario: throughput, p50/p99 latency, server CPU per request (from /proc/PID/stat), the CPU
the rest of the machine used meanwhile and, for the scenarios marked `half`, p99 at half the
measured peak rate. With --sig-us-es256/--sig-us-rs256 (criterion's signature cost) the table
also shows the expected CPU per request (floor + signature) next to the measured one.

Output: a Markdown table on stdout and in OUT/results.md; raw ghz JSON in OUT/*.json (OUT is
target/bench by default). The whole run takes about 4 minutes on an idle 2-CPU machine once
the binary is built, plus up to --quiet-wait seconds if something else is using the CPUs.
--dry-run prints the plan and its duration without starting anything.

Adding a scenario is adding one entry to SCENARIOS; adding a server kind, one entry to
SERVERS. Python 3 standard library only; needs ghz and grpcurl (scripts/provision/
grpc-tools.sh), openssl, psql and a PostgreSQL server (scripts/provision/postgres.sh), the
test venv for the OTLP sink (scripts/provision/python.sh), and taskset unless --no-pin.
"""

import argparse
import datetime
import glob
import json
import os
import re
import resource
import shlex
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import QS_AUD, QS_ISSUER, QS_KID, QS_PUB, REPO  # noqa: E402

# ---------------------------------------------------------------- servers
# One `portcullis serve` per entry, derived from examples/quickstart.yaml (CONFIG below):
# `cache` and `telemetry` are the YAML of those sections ($otlp_port: the local OTLP sink,
# started when a server uses it); `note` describes the server in the report's header.
CACHE_ON = "{max_entries: 100000, max_ttl: 5m}"
SERVERS = {
    "cached": {"cache": CACHE_ON, "telemetry": "{log_level: warn}"},
    "uncached": {"cache": "{max_ttl: 0s}", "telemetry": "{log_level: warn}"},
    "telemetry-on": {
        "cache": CACHE_ON,
        "telemetry": "{log_format: json, log_level: info, metrics: true,"
                     " otlp_endpoint: 'http://127.0.0.1:$otlp_port'}",
        "note": "JSON logs at info, metrics, every trace exported over OTLP to a local sink",
    },
    "telemetry-sampled": {
        "cache": CACHE_ON,
        "telemetry": "{log_format: json, log_level: info, metrics: true, trace_sample_ratio: 0.1,"
                     " otlp_endpoint: 'http://127.0.0.1:$otlp_port'}",
        "note": "the same with trace_sample_ratio 0.1",
    },
    "telemetry-default": {
        "cache": CACHE_ON,
        "telemetry": "{}",
        "note": "the default telemetry: JSON logs at info, metrics, no trace export",
    },
    "telemetry-off": {
        "cache": CACHE_ON,
        "telemetry": "{log_level: 'off', metrics: false}",
        "note": "logs off, per-request metrics off",
    },
}

# ---------------------------------------------------------------- scenarios
HEALTH = "grpc.health.v1.Health/Check"
AUTHN = "portcullis.v1.Auth/Authenticate"
AUTHZ = "portcullis.v1.Auth/Authorize"
CHECK = "envoy.service.auth.v3.Authorization/Check"
METHODS = (HEALTH, AUTHN, AUTHZ, CHECK)

# Credentials minted for each run; requests name them as $token_es256 etc.
CREDENTIALS = ("token_es256", "token_rs256", "api_key_file", "api_key_postgres", "basic_password")

# What the response to a scenario's request must contain (a subset: {} matches any object),
# checked once with grpcurl before measuring, so the benchmark never measures denials.
# Per method unless the scenario has its own `expect`.
EXPECT = {HEALTH: {"status": "SERVING"}, AUTHN: {"authenticated": True}}


def _check(method, path):  # an ext_authz CheckRequest carrying the ES256 token
    return {"attributes": {"request": {"http": {
        "method": method, "path": path, "host": "bench.example",
        "headers": {"authorization": "Bearer $token_es256"}}}}}


ES256 = {"credential": {"bearer_token": "$token_es256"}}
RS256 = {"credential": {"bearer_token": "$token_rs256"}}

# name: row label and file name (OUT/NAME.json); server: a key of SERVERS; method: one of
# METHODS; request: the request as JSON ($credential placeholders); half: also run at half
# the peak rate and record p99 there; sig: es256|rs256, show floor + --sig-us-* as the
# expected CPU/request; expect: see EXPECT. Rows run and print in this order; the floor
# (the cheapest RPC) is the baseline of "vs floor" and "expected".
SCENARIOS = [
    {"name": "floor", "server": "uncached", "method": HEALTH, "request": {}},
    {"name": "uncached-es256", "server": "uncached", "method": AUTHN, "request": ES256,
     "half": True, "sig": "es256"},
    {"name": "uncached-rs256", "server": "uncached", "method": AUTHN, "request": RS256,
     "half": True, "sig": "rs256"},
    {"name": "cached-es256", "server": "cached", "method": AUTHN, "request": ES256},
    {"name": "apikey-file", "server": "cached", "method": AUTHN,
     "request": {"credential": {"api_key": "$api_key_file"}}},
    {"name": "apikey-postgres", "server": "cached", "method": AUTHN,
     "request": {"credential": {"api_key": "$api_key_postgres"}}},
    {"name": "basic-cached", "server": "cached", "method": AUTHN,
     "request": {"credential": {"basic": {"username": "bench", "password": "$basic_password"}}}},
    {"name": "check-allow", "server": "cached", "method": CHECK, "request": _check("GET", "/orders/1"),
     "expect": {"okResponse": {}}},
    {"name": "check-deny", "server": "cached", "method": CHECK, "request": _check("GET", "/admin/1"),
     "expect": {"deniedResponse": {"status": {"code": 403}}}},
    {"name": "authorize-cel", "server": "cached", "method": AUTHZ,
     "request": {"credential": {"bearer_token": "$token_es256"},
                 "resource": {"http_method": "GET", "path": "/reports/7"}},
     "expect": {"allowed": True, "rule": "reports-cel"}},
    {"name": "telemetry-off", "server": "telemetry-off", "method": AUTHN, "request": ES256},
    {"name": "telemetry-default", "server": "telemetry-default", "method": AUTHN, "request": ES256},
    {"name": "telemetry-on", "server": "telemetry-on", "method": AUTHN, "request": ES256},
    {"name": "telemetry-sampled", "server": "telemetry-sampled", "method": AUTHN, "request": ES256},
]
FLOOR = "floor"
SIG_ALGS = ("es256", "rs256")
SCENARIO_KEYS = {"name", "server", "method", "request", "half", "sig", "expect"}

RS_ISSUER = "https://bench-rs256.portcullis.invalid"
RS_KID = "bench-rs256"
BASIC_PASSWORD = "bench-throwaway-password"

CONFIG = string.Template("""\
# Derived from examples/quickstart.yaml by scripts/bench.py ($name).
server:
  grpc_listen: 127.0.0.1:$grpc_port
  admin_listen: 127.0.0.1:$admin_port
issuers:
  - name: quickstart
    issuer: $qs_issuer
    public_key_files:
      - path: $qs_pub
        kid: $qs_kid
        algorithm: ES256
    audiences: [$aud]
    algorithms: [ES256]
    leeway: 30s
    required_claims: [exp, sub]
  - name: bench-rs256
    issuer: $rs_issuer
    public_key_files:
      - path: $rs_pub
        kid: $rs_kid
        algorithm: RS256
    audiences: [$aud]
    algorithms: [RS256]
    leeway: 30s
    required_claims: [exp, sub]
api_keys:
  prefix: pcl
  file: $api_keys_file
  postgres: { url: env:BENCH_DATABASE_URL }
basic:
  htpasswd_file: $htpasswd
authorization:
  rules:
    - name: orders-read
      match: { http: { methods: [GET], paths: ["/orders/*"] } }
      require: { scopes_all: [orders:read] }
    - name: reports-cel
      match: { http: { paths: ["/reports/**"] } }
      require: { cel: "claims.sub == 'bench' && request.http.method == 'GET' && claims.aud == '$aud'" }
response:
  claims_to_headers: { sub: x-user-id, principal.issuer: x-auth-issuer }
cache: $cache
telemetry: $telemetry
""")


# ---------------------------------------------------------------- the scenario table
def expect_of(scenario):
    return scenario.get("expect", EXPECT.get(scenario["method"]))


def placeholders(value):
    """The $names in the strings of a JSON value."""
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value))
    if isinstance(value, str):
        return {m.group("named") or m.group("braced")
                for m in string.Template.pattern.finditer(value)
                if m.group("named") or m.group("braced")}
    return set()


def substitute(value, mapping):
    """The JSON value with $names in its strings replaced from `mapping`."""
    if isinstance(value, dict):
        return {k: substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, mapping) for v in value]
    if isinstance(value, str):
        return string.Template(value).substitute(mapping)
    return value


def validate(scenarios=SCENARIOS, servers=SERVERS):
    """Every problem with the scenario and server tables, as messages (empty: well-formed)."""
    problems, seen = [], set()
    for name, server in servers.items():
        for key in ("cache", "telemetry"):
            if not isinstance(server.get(key), str):
                problems.append(f"server {name}: `{key}` must be a YAML string")
        names = placeholders([server.get("cache", ""), server.get("telemetry", "")])
        if names - {"otlp_port"}:
            problems.append(f"server {name}: unknown placeholders {sorted(names - {'otlp_port'})}")
    for i, s in enumerate(scenarios):
        name = s.get("name")
        label = f"scenario {name or '#' + str(i)}"
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            problems.append(f"{label}: `name` must be lower-case letters, digits and '-'")
        elif name in seen:
            problems.append(f"{label}: duplicate name")
        seen.add(name)
        if set(s) - SCENARIO_KEYS:
            problems.append(f"{label}: unknown keys {sorted(set(s) - SCENARIO_KEYS)}")
        if s.get("server") not in servers:
            problems.append(f"{label}: server {s.get('server')!r} is not one of {sorted(servers)}")
        if s.get("method") not in METHODS:
            problems.append(f"{label}: method {s.get('method')!r} is not one of {list(METHODS)}")
        if not isinstance(s.get("request"), dict):
            problems.append(f"{label}: `request` must be a JSON object")
        else:
            unknown = placeholders(s["request"]) - set(CREDENTIALS)
            if unknown:
                problems.append(f"{label}: unknown credentials {sorted(unknown)} (known: {list(CREDENTIALS)})")
        if not isinstance(s.get("half", False), bool):
            problems.append(f"{label}: `half` must be true or false")
        if s.get("sig") not in (None, *SIG_ALGS):
            problems.append(f"{label}: sig {s.get('sig')!r} is not one of {list(SIG_ALGS)}")
        if s.get("method") in METHODS and not isinstance(expect_of(s), dict):
            problems.append(f"{label}: no `expect` (and none for its method in EXPECT)")
    if FLOOR not in seen:
        problems.append(f"no scenario named {FLOOR!r} (the baseline)")
    return problems


def matches(expected, actual):
    """True if `actual` contains `expected`: dicts as subsets, anything else by equality."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items())
    return expected == actual


# ---------------------------------------------------------------- command line
def env(name, default):
    return os.environ.get(name, default)


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def duration(text):
    try:
        benchlib.parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the docstring's layout; shows the defaults that say something."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return action.help + " (default: %(default)s)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="scripts/bench.py", formatter_class=Formatter, description=__doc__,
        epilog="Scenarios (--list) and server kinds are tables at the top of this file. Defaults "
               "in brackets come from the environment variable named there when it is set.\n"
               "Example: scripts/bench.py --sig-us-es256 35.7 --sig-us-rs256 14.3\n"
               "         scripts/bench.py --skip-build --only floor --only cached-es256 --duration 5s")
    run = p.add_argument_group("load")
    run.add_argument("--duration", type=duration, default=env("BENCH_DURATION", "10s"),
                     help="measured run per scenario (ghz -z, a Go duration) [BENCH_DURATION]")
    run.add_argument("--warmup", type=duration, default=env("BENCH_WARMUP", "2s"),
                     help="discarded warm-up run before each scenario [BENCH_WARMUP]")
    run.add_argument("--concurrency", type=positive_int, default=env("BENCH_CONCURRENCY", "64"),
                     help="ghz -c: requests in flight [BENCH_CONCURRENCY]")
    run.add_argument("--half-concurrency", type=positive_int, default=env("BENCH_HALF_CONCURRENCY", "16"),
                     help="ghz -c of the runs at half the peak rate (fewer workers at a fixed rate: same "
                          "offered load, less client-side burstiness) [BENCH_HALF_CONCURRENCY]")
    run.add_argument("--connections", type=positive_int, default=env("BENCH_CONNECTIONS", "4"),
                     help="ghz --connections: HTTP/2 connections the workers share [BENCH_CONNECTIONS]")
    run.add_argument("--pin", action=argparse.BooleanOptionalAction, default=env("BENCH_PIN", "1") == "1",
                     help="pin the servers to CPU 0 and ghz to the other CPUs (taskset; needs >= 2 "
                          "CPUs); --no-pin lets them share all CPUs [BENCH_PIN=1|0]")
    run.add_argument("--quiet-max-pct", type=int, default=env("BENCH_QUIET_MAX_PCT", "10"),
                     help="before each measured run, wait until the machine is idle: busy below this "
                          "%% of one CPU; rows above it get a ⚠ in the foreign CPU column "
                          "[BENCH_QUIET_MAX_PCT]")
    run.add_argument("--quiet-wait", type=float, default=env("BENCH_QUIET_WAIT", "120"),
                     help="seconds the whole run may spend waiting for an idle machine; then it "
                          "measures anyway (0: never wait) [BENCH_QUIET_WAIT]")
    run.add_argument("--sig-us-es256", type=float, default=env("SIG_US_ES256", None),
                     help="criterion's ES256 signature-verification cost in µs (cargo bench --bench "
                          "verify): the table shows floor + this as the expected CPU/request of the "
                          "sig=es256 scenarios [SIG_US_ES256]")
    run.add_argument("--sig-us-rs256", type=float, default=env("SIG_US_RS256", None),
                     help="the same for RS256 [SIG_US_RS256]")
    sel = p.add_argument_group("scenarios")
    sel.add_argument("--only", action="append", metavar="SCENARIO", default=[],
                     help="run only this scenario (repeatable; rows keep the table's order; "
                          "'vs floor' and 'expected' need the floor scenario too)")
    sel.add_argument("--list", action="store_true", help="print the scenarios and exit")
    sel.add_argument("--perf", action="store_true",
                     help="after each measured run, run the scenario once more under `perf record -g` "
                          "on the server and write the top of `perf report` to OUT/SCENARIO.perf.txt "
                          "(the measured figures stay free of perf's overhead)")
    sel.add_argument("--dry-run", action="store_true",
                     help="print what would be built, started and run, and for how long, then exit")
    where = p.add_argument_group("paths")
    where.add_argument("--skip-build", action="store_true", default=env("BENCH_SKIP_BUILD", "0") == "1",
                       help="do not run `cargo build --release --bin portcullis`; use --bin as it is "
                            "[BENCH_SKIP_BUILD=1]")
    where.add_argument("--bin", default=os.path.join(REPO, "target", "release", "portcullis"),
                       help="the portcullis binary to benchmark")
    where.add_argument("--tools-dir", default=benchlib.TOOLS_BIN,
                       help="directory with ghz and grpcurl; the OTLP sink's Python is ../venv/bin/python "
                            "from there. The default one is provisioned when something is missing "
                            "[PORTCULLIS_TOOLS]")
    where.add_argument("--database-url", default=env("PORTCULLIS_TEST_DATABASE_URL", None),
                       help="a PostgreSQL server (postgres://...) for the API key store; the run "
                            "(re)creates its own database portcullis_bench there. Default: "
                            "scripts/provision/postgres.sh [PORTCULLIS_TEST_DATABASE_URL]")
    where.add_argument("--out", default=env("BENCH_OUT", os.path.join(REPO, "target", "bench")),
                       help="output directory: results.md and the raw ghz JSON [BENCH_OUT]")
    args = p.parse_args(argv)
    if args.connections > min(args.concurrency, args.half_concurrency):
        p.error("--connections cannot exceed --concurrency or --half-concurrency (ghz refuses it)")
    known = [s["name"] for s in SCENARIOS]
    unknown = [n for n in args.only if n not in known]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return args


# ---------------------------------------------------------------- helpers
def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def die(message):
    raise SystemExit(f"bench: {message}")


def short(method):
    return method.rsplit("/", 1)[-1]


def compact(value):
    return json.dumps(value, separators=(",", ":"))


def run(cmd, **kwargs):
    """Runs a short helper command (bounded); its stdout as text."""
    kwargs.setdefault("timeout", 120)
    kwargs.setdefault("stdout", subprocess.PIPE)
    try:
        return subprocess.run(cmd, check=True, text=True, **kwargs).stdout
    except subprocess.CalledProcessError as err:
        die(f"{shlex.join(map(str, cmd))} failed (exit {err.returncode})")
    except subprocess.TimeoutExpired:
        die(f"{shlex.join(map(str, cmd))} timed out")


class Plan:
    """What a run does, derived from the arguments (shared by --dry-run and the real run)."""

    def __init__(self, args):
        self.args = args
        self.scenarios = [s for s in SCENARIOS if not args.only or s["name"] in args.only]
        self.servers = [name for name in SERVERS if any(s["server"] == name for s in self.scenarios)]
        self.otlp = any("$otlp_port" in SERVERS[name]["telemetry"] for name in self.servers)
        self.ghz = os.path.join(args.tools_dir, "ghz")
        self.grpcurl = os.path.join(args.tools_dir, "grpcurl")
        self.default_tools = os.path.abspath(args.tools_dir) == os.path.abspath(benchlib.DEFAULT_TOOLS_BIN)
        self.nproc = len(os.sched_getaffinity(0))
        if args.pin:
            self.server_prefix = ["taskset", "-c", "0"]
            self.client_prefix = ["taskset", "-c", f"1-{self.nproc - 1}"]
            self.server_ncpu, self.client_ncpu = 1, self.nproc - 1
            self.pin_desc = f"server pinned to CPU 0, ghz to CPU 1-{self.nproc - 1} (taskset)"
        else:
            self.server_prefix = self.client_prefix = []
            self.server_ncpu = self.client_ncpu = self.nproc
            self.pin_desc = f"no pinning (server and ghz share all {self.nproc} CPUs)"

    def seconds(self):
        """Roughly how long the scenarios take (without build, setup and waiting for quiet)."""
        warmup, run = (benchlib.parse_duration(self.args.warmup), benchlib.parse_duration(self.args.duration))
        runs = sum(2 if s.get("half") else 1 for s in self.scenarios)
        return len(self.scenarios) * warmup + runs * (run + 1)  # + the 1 s idle check per run

    def ghz_args(self, scenario, request, target, extra=(), concurrency=None):
        return benchlib.ghz_command(self.ghz, scenario["method"], request, target,
                                    concurrency or self.args.concurrency, self.args.connections,
                                    extra, self.client_prefix)


def print_list():
    rows = [("scenario", "server", "method", "half", "sig", "request")]
    for s in SCENARIOS:
        rows.append((s["name"], s["server"], short(s["method"]), "half" if s.get("half") else "",
                     s.get("sig") or "", compact(s["request"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def print_dry_run(plan):
    a = plan.args
    print("dry run: nothing is built, started or written")
    if a.skip_build:
        print("build: skipped (--skip-build)")
    else:
        print(f"build: (cd {REPO} && cargo build --release --bin portcullis)")
    print(f"binary: {a.bin}{'' if os.access(a.bin, os.X_OK) else ' (missing)'}")
    for tool in (plan.ghz, plan.grpcurl):
        print(f"tool: {tool}{'' if os.access(tool, os.X_OK) else ' (missing)'}")
    print(f"pinning: {plan.pin_desc}")
    print(f"postgres: {a.database_url or 'scripts/provision/postgres.sh'} (database portcullis_bench)")
    print(f"otlp sink: {'scripts/otlp-sink.py on 127.0.0.1' if plan.otlp else 'not needed'}")
    print("servers (127.0.0.1, free ports):")
    for name in plan.servers:
        print(f"  {name}: {' '.join(plan.server_prefix + [a.bin, 'serve', '--config', f'TMP/{name}.yaml'])}"
              f"  # cache: {SERVERS[name]['cache']}; telemetry: {SERVERS[name]['telemetry']}")
    print(f"scenarios ({len(plan.scenarios)}): warm-up {a.warmup}, then {a.duration} measured; "
          f"credentials are minted at run time")
    for s in plan.scenarios:
        target = f"127.0.0.1:<{s['server']}>"
        print(f"  {s['name']} on {s['server']}, expect {compact(expect_of(s))}:")
        cmd = plan.ghz_args(s, s["request"], target, ["-z", a.duration, "--output", f"{a.out}/{s['name']}.json"])
        print(f"    {shlex.join(cmd)}")
        if s.get("half"):
            cmd = plan.ghz_args(s, s["request"], target, ["-z", a.duration, "--rps", "<peak rps / 2>", "--output",
                                                          f"{a.out}/{s['name']}.half.json"], a.half_concurrency)
            print(f"    {shlex.join(cmd)}")
    print(f"output: {a.out}/results.md and {a.out}/*.json")
    print(f"scenario time: about {plan.seconds():.0f}s (plus setup, and up to {a.quiet_wait:g}s waiting "
          f"for an idle machine)")


# ---------------------------------------------------------------- the run
class Bench:
    def __init__(self, plan):
        self.plan = plan
        self.args = plan.args
        self.processes = []  # everything started in the background; stopped by PID at the end
        self.tmp = None
        self.grpc_port, self.admin_port, self.server = {}, {}, {}
        self.quiet_budget = self.args.quiet_wait

    # -- setup
    def prerequisites(self):
        a, plan = self.args, self.plan
        needed = ["openssl", "psql"] + (["taskset"] if a.pin else []) + (["perf"] if a.perf else [])
        missing = [t for t in needed if not shutil.which(t)]
        if missing:
            hint = " (taskset: util-linux; or --no-pin)" if "taskset" in missing else ""
            die(f"not found: {', '.join(missing)}{hint}")
        if a.pin and plan.nproc < 2:
            die("--pin needs at least 2 CPUs (or --no-pin)")
        if not (os.access(plan.ghz, os.X_OK) and os.access(plan.grpcurl, os.X_OK)):
            if not plan.default_tools:
                die(f"ghz or grpcurl missing in {a.tools_dir}")
            run([os.path.join(REPO, "scripts", "provision", "grpc-tools.sh")], stdout=sys.stderr, timeout=None)
        problem = benchlib.check_quickstart()
        if problem:
            die(problem)
        if not a.skip_build:
            log("cargo build --release --bin portcullis")
            subprocess.run(["cargo", "build", "--release", "--bin", "portcullis"], cwd=REPO,
                           stdout=sys.stderr, check=True)
        if not os.access(a.bin, os.X_OK):
            die(f"{a.bin} missing")

    def credentials(self):
        tmp, b = self.tmp, self.args.bin
        log(f"generating a throwaway RSA-2048 key in {tmp}")
        rs_key, self.rs_pub = os.path.join(tmp, "rs256.key.pem"), os.path.join(tmp, "rs256.pub.pem")
        run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rs_key],
            stderr=subprocess.DEVNULL)
        run(["openssl", "pkey", "-in", rs_key, "-pubout", "-out", self.rs_pub])

        def gen_key(subject):  # -> (key, api_keys.file YAML entry, INSERT statement)
            lines = run([b, "keys", "generate", "--subject", subject, "--scopes", "orders:read"]).splitlines()
            start = lines.index("keys:") + 1
            end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
            insert = next(line for line in lines if line.startswith("INSERT"))
            return lines[1].strip(), "\n".join(lines[start:end]), insert

        key_file, yaml_entry, _ = gen_key("bench-file")
        with open(os.path.join(tmp, "api-keys.yaml"), "w") as f:
            f.write(f"keys:\n{yaml_entry}\n")
        with open(os.path.join(tmp, "htpasswd"), "w") as f:
            f.write(run([b, "passwd", "bench"], input=BASIC_PASSWORD + "\n"))

        # PostgreSQL: its own database on the given (or the provisioned test) server.
        url = self.args.database_url
        if not url:
            out = run([os.path.join(REPO, "scripts", "provision", "postgres.sh")], timeout=600)
            found = re.search(r"PORTCULLIS_TEST_DATABASE_URL=(\S+)", out)
            if not found:
                die("scripts/provision/postgres.sh printed no PORTCULLIS_TEST_DATABASE_URL")
            url = found.group(1)
        self.pg_url = url.rsplit("/", 1)[0] + "/portcullis_bench"
        run(["psql", url, "-qc", "DROP DATABASE IF EXISTS portcullis_bench WITH (FORCE)"], stdout=sys.stderr)
        run(["psql", url, "-qc", "CREATE DATABASE portcullis_bench"], stdout=sys.stderr)
        run([b, "keys", "migrate", "--database-url", self.pg_url], stdout=sys.stderr)
        key_pg, _, insert = gen_key("bench-postgres")
        run(["psql", self.pg_url, "-qc", insert], stdout=sys.stderr)

        self.values = {
            "token_es256": benchlib.sign_token(b),
            "token_rs256": benchlib.sign_token(b, key=rs_key, alg="RS256", kid=RS_KID, iss=RS_ISSUER),
            "api_key_file": key_file,
            "api_key_postgres": key_pg,
            "basic_password": BASIC_PASSWORD,
        }

    def otlp_sink(self):
        python = os.path.join(os.path.dirname(os.path.abspath(self.args.tools_dir)), "venv", "bin", "python")
        if self.plan.default_tools:
            python = run([os.path.join(REPO, "scripts", "provision", "python.sh")], timeout=900).split()[-1]
        elif not os.access(python, os.X_OK):
            die(f"{python} missing (the OTLP sink needs the test venv: scripts/provision/python.sh)")
        port = benchlib.free_port()
        with open(os.path.join(self.tmp, "otlp-sink.log"), "w") as log_file:
            self.processes.append(subprocess.Popen(
                [python, os.path.join(REPO, "scripts", "otlp-sink.py"), str(port)],
                stdout=sys.stderr, stderr=log_file))
        return port

    def start_servers(self):
        otlp_port = self.otlp_sink() if self.plan.otlp else None
        environ = dict(os.environ, BENCH_DATABASE_URL=self.pg_url)
        for name in self.plan.servers:
            self.grpc_port[name], self.admin_port[name] = benchlib.free_port(), benchlib.free_port()
            server = SERVERS[name]
            config = CONFIG.substitute(
                name=name, grpc_port=self.grpc_port[name], admin_port=self.admin_port[name],
                qs_issuer=QS_ISSUER, qs_pub=QS_PUB, qs_kid=QS_KID, aud=QS_AUD, rs_issuer=RS_ISSUER,
                rs_pub=self.rs_pub, rs_kid=RS_KID, api_keys_file=os.path.join(self.tmp, "api-keys.yaml"),
                htpasswd=os.path.join(self.tmp, "htpasswd"), cache=server["cache"],
                telemetry=string.Template(server["telemetry"]).substitute(otlp_port=otlp_port))
            path = os.path.join(self.tmp, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(config)
            if subprocess.run([self.args.bin, "check-config", "--config", path], env=environ,
                              stdout=sys.stderr, timeout=60).returncode != 0:
                die(f"generated config {name} is invalid")
        for name in self.plan.servers:
            log_path, config = (os.path.join(self.tmp, f"{name}.{ext}") for ext in ("log", "yaml"))
            with open(log_path, "w") as log_file:
                process = subprocess.Popen(self.plan.server_prefix + [self.args.bin, "serve", "--config", config],
                                           env=environ, stdout=log_file, stderr=subprocess.STDOUT)
            self.processes.append(process)
            self.server[name] = process
            if not benchlib.wait_ready(process, self.admin_port[name], timeout=30):
                with open(log_path) as f:
                    sys.stderr.write("".join(f.readlines()[-30:]))
                die(f"server {name} did not become ready")
            log(f"server {name} ready (pid {process.pid}, grpc :{self.grpc_port[name]}, "
                f"admin :{self.admin_port[name]})")

    def preflight(self):
        """Every scenario's request must be answered as its `expect` says, or the benchmark
        would measure denials."""
        for s in self.plan.scenarios:
            out = run([self.plan.grpcurl, "-plaintext", "-max-time", "10", "-d", compact(self.request(s)),
                       f"127.0.0.1:{self.grpc_port[s['server']]}", s["method"]], timeout=30)
            response = json.loads(out)
            if not matches(expect_of(s), response):
                die(f"{s['name']}: {short(s['method'])} on {s['server']} did not answer as expected "
                    f"({compact(expect_of(s))}): {compact(response)}")

    def request(self, scenario):
        return substitute(scenario["request"], self.values)

    # -- measuring
    def run_ghz(self, scenario, out, extra, concurrency=None):
        """One ghz run writing its JSON report to `out`; returns its user+sys CPU seconds."""
        cmd = self.plan.ghz_args(scenario, self.request(scenario), f"127.0.0.1:{self.grpc_port[scenario['server']]}",
                                 [*extra, "--output", out], concurrency)
        limit = benchlib.parse_duration(extra[extra.index("-z") + 1]) + 60
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = subprocess.Popen(cmd, stdout=sys.stderr)  # taskset execs ghz: same PID
        self.processes.append(process)
        try:
            rc = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            die(f"ghz did not finish within {limit:.0f}s for {scenario['name']}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.processes.remove(process)
        if rc != 0:
            die(f"ghz failed for {scenario['method']} (see {out})")
        return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    def busy_pct(self, seconds):
        m0 = benchlib.machine_busy_ticks()
        time.sleep(seconds)
        return round((benchlib.machine_busy_ticks() - m0) / benchlib.CLK_TCK / seconds * 100)

    def wait_quiet(self):
        """Waits (within a budget shared by the whole run) until the machine is idle, so a
        cargo build or test run next door does not end up in the numbers."""
        start = time.monotonic()
        while True:
            quiet = self.busy_pct(1)
            if quiet <= self.args.quiet_max_pct:
                return
            if self.quiet_budget <= 0:
                log(f"machine busy ({quiet}% of a CPU outside the benchmark); measuring anyway")
                return
            log(f"machine busy ({quiet}% of a CPU outside the benchmark); waiting (budget {self.quiet_budget:.0f}s)")
            time.sleep(2)
            self.quiet_budget -= time.monotonic() - start
            start = time.monotonic()

    def measure(self, scenario, out, extra, concurrency=None):
        """One measured ghz run. CPU % figures are percent of one CPU over the run's wall
        time: server, ghz, and foreign (the rest of the machine: other processes, idle
        servers, kernel threads)."""
        pid = self.server[scenario["server"]].pid
        self.wait_quiet()
        t0, m0, w0 = benchlib.proc_ticks(pid), benchlib.machine_busy_ticks(), time.monotonic()
        ghz_cpu = self.run_ghz(scenario, out, extra, concurrency)
        t1, m1, w1 = benchlib.proc_ticks(pid), benchlib.machine_busy_ticks(), time.monotonic()
        wall, hz = w1 - w0, benchlib.CLK_TCK
        with open(out) as f:
            report = json.load(f)
        codes = report.get("statusCodeDistribution") or {}
        ok = codes.get("OK", 0)
        if ok <= 0:
            die(f"no successful requests (see {out})")
        # ghz -z ends by closing its connections under the requests in flight (<= -c of them).
        teardown = sum(n for e, n in (report.get("errorDistribution") or {}).items()
                       if re.search(r"closed network connection|client connection is closing|context canceled", e))
        m = {
            "teardown": teardown,
            "errors": sum(n for c, n in codes.items() if c != "OK") - teardown,
            "rps": round(ok / (report["total"] / 1e9)),
            "p50": benchlib.latency_ms(report, 50),
            "p99": benchlib.latency_ms(report, 99),
            "cpu_us": round((t1 - t0) / hz * 1e6 / ok, 1),
            "srv_pct": round((t1 - t0) / hz / wall * 100),
            "ghz_pct": round(ghz_cpu / wall * 100),
            "foreign_pct": round(max(((m1 - m0) - (t1 - t0)) / hz - ghz_cpu, 0) / wall * 100),
        }
        # What limited the run: a side that used >= 90% of the CPUs it may use, else the whole
        # machine (unpinned), else neither (then latency, e.g. Nagle/delayed-ACK stalls or
        # lock waits, is the limit).
        if m["srv_pct"] >= 90 * self.plan.server_ncpu:
            m["bound"] = "server"
        elif m["ghz_pct"] >= 90 * self.plan.client_ncpu:
            m["bound"] = "client"
        elif m["srv_pct"] + m["ghz_pct"] + m["foreign_pct"] >= 90 * self.plan.nproc:
            m["bound"] = "machine"
        else:
            m["bound"] = "neither"
        return m

    def histogram(self, server):
        return benchlib.decision_histogram(self.admin_port[server])

    def scenario(self, s):
        a, name, out = self.args, s["name"], self.args.out
        log(f"scenario {name}: {s['method']} on {s['server']} (warm-up {a.warmup}, run {a.duration})")
        self.run_ghz(s, os.path.join(out, f"{name}.warmup.json"), ["-z", a.warmup])
        r = self.measure(s, os.path.join(out, f"{name}.json"), ["-z", a.duration])
        if s.get("half"):
            rate = max(r["rps"] // 2, 1)  # --rps 0 would mean unlimited
            log(f"scenario {name}: at half peak, --rps {rate}")
            before = self.histogram(s["server"])
            h = self.measure(s, os.path.join(out, f"{name}.half.json"), ["-z", a.duration, "--rps", str(rate)],
                             a.half_concurrency)
            r["half_server_p99"] = benchlib.server_p99(before, self.histogram(s["server"]))
            r["half_rps"], r["half_p99"], r["half_cpu_us"] = h["rps"], h["p99"], h["cpu_us"]
            r["errors"] += h["errors"]
            r["teardown"] += h["teardown"]
            r["foreign_pct"] = max(r["foreign_pct"], h["foreign_pct"])
        if a.perf:
            self.profile(s)
        return r

    def profile(self, s):
        """One more run of scenario `s` while `perf record` samples the server's stacks; the
        top of the report (self time, 1 % and up) goes to OUT/NAME.perf.txt."""
        a, name = self.args, s["name"]
        data = os.path.join(a.out, f"{name}.perf.data")
        log(f"scenario {name}: profiling the server with perf ({a.duration})")
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", data,
                                 "-p", str(self.server[s["server"]].pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(perf)
        try:
            self.run_ghz(s, os.path.join(a.out, f"{name}.perf.json"), ["-z", a.duration])
        finally:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
            self.processes.remove(perf)
        sections = []
        for title, sort in (("by shared object", "dso"), ("by symbol (self time)", "symbol")):
            report = subprocess.run(["perf", "report", "--stdio", "--no-children", "-g", "none",
                                     "--percent-limit", "0.5", "--sort", sort, "-i", data],
                                    capture_output=True, text=True, timeout=300)
            rows = [re.sub(r"\s+", " ", line).strip() for line in report.stdout.splitlines()
                    if re.match(r"\s*\d+\.\d+%", line)]
            sections.append(f"## {name}: {title}\n" + "\n".join(r.removesuffix(" - -") for r in rows))
        with open(os.path.join(a.out, f"{name}.perf.txt"), "w") as f:
            f.write("\n\n".join(sections) + "\n")
        os.remove(data)

    def execute(self):
        a = self.args
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.prerequisites()
        os.makedirs(a.out, exist_ok=True)
        for path in glob.glob(os.path.join(a.out, "*.json")) + [os.path.join(a.out, "results.md")]:
            if os.path.exists(path):
                os.remove(path)
        self.tmp = tempfile.mkdtemp(prefix="portcullis-bench.")
        try:
            self.credentials()
            self.start_servers()
            self.preflight()
            start = time.monotonic()
            results = {s["name"]: self.scenario(s) for s in self.plan.scenarios}
            markdown = report(self.plan, results, time.monotonic() - start)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            benchlib.stop(self.processes)
            shutil.rmtree(self.tmp, ignore_errors=True)
        sys.stdout.write(markdown)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(markdown)
        for path in glob.glob(os.path.join(a.out, "*.warmup.json")):
            os.remove(path)


# ---------------------------------------------------------------- report
def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)


def machine_desc(nproc):
    model, mem = "unknown CPU", 0.0
    with open("/proc/cpuinfo") as f:
        model = next((line.split(": ", 1)[1].strip() for line in f if line.startswith("model name")), model)
    with open("/proc/meminfo") as f:
        mem = next((int(line.split()[1]) / 1048576 for line in f if line.startswith("MemTotal")), mem)
    return f"{nproc} CPUs, {model}, {mem:.1f} GiB RAM, kernel {os.uname().release}"


def ghz_version(ghz):
    try:
        out = subprocess.run(["go", "version", "-m", ghz], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return next((line.split()[2] for line in out.splitlines() if line.split()[:1] == ["mod"]), "")


def report(plan, results, seconds):
    a = plan.args
    head = git("rev-parse", "--short", "HEAD")
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"
    if git("diff", "--quiet", "HEAD", "--", "src", "Cargo.toml").returncode != 0:
        commit += " (+ uncommitted changes in src/ or Cargo.toml)"
    notes = "; ".join(f"{n}: {SERVERS[n]['note']}" for n in plan.servers if SERVERS[n].get("note"))
    caches = {}
    for n in plan.servers:
        caches.setdefault(SERVERS[n]["cache"], []).append(n)
    sig = {"es256": a.sig_us_es256, "rs256": a.sig_us_rs256}
    floor = results.get(FLOOR)
    quiet_max = a.quiet_max_pct
    lines = [
        f"## Portcullis load benchmark ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ})",
        "",
        f"- commit: {commit}",
        f"- machine: {machine_desc(plan.nproc)}",
        f"- ghz {ghz_version(plan.ghz)}: -c {a.concurrency}, --connections {a.connections}, warm-up {a.warmup} "
        f"then -z {a.duration}, reflection, plaintext loopback",
        f"- {plan.pin_desc}; server log level warn" + (f" ({notes})" if notes else ""),
        "- " + "; ".join(f"{', '.join(names)}: `cache: {cache}`" for cache, names in caches.items()),
        "",
        "| scenario | method | rps | bound | vs floor | p50 ms | p99 ms | server CPU µs/req | ≈ rps/server core "
        "| server CPU % | ghz CPU % | foreign CPU % | p99 ms @ half peak (achieved rps) "
        "| server-side p99 ms @ half (≤ bucket) | server CPU µs/req @ half | expected µs/req = floor + sig "
        "| errors |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in plan.scenarios:
        name, r = s["name"], results[s["name"]]
        ratio = f"{r['rps'] / floor['rps']:.2f}" if floor else "–"
        half = halfserver = halfcpu = expected = "–"
        if "half_p99" in r:
            half = f"{r['half_p99']:.2f} ({r['half_rps']})"
            halfserver, halfcpu = r["half_server_p99"], f"{r['half_cpu_us']:.1f}"
        if s.get("sig") and floor:
            fc, us = floor["cpu_us"], sig[s["sig"]]
            if us is not None:
                expected = f"{fc + us:.1f} = {fc:.1f} + {us:g} (measured/expected {r['cpu_us'] / (fc + us):.2f})"
            else:
                expected = f"{fc:.1f} + --sig-us-{s['sig']}"
        foreign = f"{r['foreign_pct']}" + (" ⚠" if r["foreign_pct"] > quiet_max else "")
        cells = [f"{name} ({s['server']})", short(s["method"]), r["rps"], r["bound"], ratio, f"{r['p50']:.2f}",
                 f"{r['p99']:.2f}", f"{r['cpu_us']:.1f}", f"{1e6 / r['cpu_us']:.0f}" if r["cpu_us"] else "–",
                 r["srv_pct"], r["ghz_pct"], foreign, half, halfserver, halfcpu, expected, r["errors"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    teardown = " ".join(f"{n}={r['teardown']}" for n, r in results.items())
    lines += [
        "",
        "rps counts OK responses over ghz's measured time. CPU % columns are percent of one CPU",
        "over the wall time of the run: server = utime+stime of the server PID (/proc/PID/stat),",
        "ghz = the load generator, foreign = everything else busy on the machine (should be ~0;",
        f"⚠ above {quiet_max}: the row is contaminated, rerun on a quiet machine). bound: the side",
        "that used >= 90% of the CPUs it may use (server, or client = ghz), else machine (all",
        "CPUs busy), else neither (latency-limited). In a client-bound row rps is ghz's ceiling,",
        "not the server's: compare server CPU µs/req (≈ rps/server core = 1e6 / that). vs floor",
        "= rps / floor rps (for cached-es256 it is the cached/floor ratio). errors excludes the",
        f"<= -c requests that ghz -z cuts off at the end of each run (teardown: {teardown}).",
        f"Scenario time: {seconds:.0f}s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    problems = validate()
    if problems:
        sys.exit("bench: the scenario table is malformed:\n  " + "\n  ".join(problems))
    args = parse_args(argv)
    if args.list:
        print_list()
        return
    plan = Plan(args)
    if args.dry_run:
        print_dry_run(plan)
        return
    if FLOOR not in [s["name"] for s in plan.scenarios]:
        log(f"'{FLOOR}' is not selected: the vs floor and expected columns stay empty")
    try:
        Bench(plan).execute()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
