#!/usr/bin/env python3
"""Peers side by side ("bench peers"): Portcullis, heimdall and OPA answering Envoy's ext_authz
Check with the same JWKS, tokens, rule and requests, measured in one run.

    scripts/bench_peers.py                 # the whole run (about 3 minutes on a quiet machine)
    scripts/bench_peers.py --quick         # smoke run, under a minute
    scripts/bench_peers.py --dry-run       # what would be built, started and run
    scripts/bench_peers.py --render target/bench/peers/results.json   # a saved run's report again

The systems and their configs (all in the repository, bench-peers/):
- portcullis: target/release/portcullis with bench-peers/portcullis.yaml (verified-token cache on).
- heimdall v0.17.18 (a real release, built from the Go module proxy's source) in decision mode
  with Envoy's gRPC ext_authz: bench-peers/heimdall/heimdall.yaml and rules.yaml. It fetches
  bench-peers/jwks.json from a static HTTP server the script runs on 127.0.0.1.
- opa: OPA v1.22.3 through its Go API (bench-peers/opa-extauthz/, the way opa-envoy-plugin
  evaluates; that module is not available here, see bench-peers/README.md) with
  bench-peers/opa/policy.rego; opa-jwt-cache: the same with OPA's io_jwt verified-token cache on.
The rule: GET /orders/<id> needs a quickstart JWT (issuer, audience, ES256, unexpired) with
scope orders:read; the subject goes upstream as x-user-id; everything else is denied.

For each system, one at a time: start it pinned to CPU 0 (taskset; the generator, openloop,
on CPU 1), CHECK ITS ANSWERS (an allowed request, a missing scope, an expired token, a tampered
signature, no token, another audience, another method: any wrong answer skips the system's
timing with a message), then measure with openloop (bench-load/):
1. peak: closed loop, 64 requests in flight, the same token every time (each system's own
   caching applies: Portcullis caches verified tokens, heimdall and OPA by default do not);
   server CPU per request from /proc/PID/stat; RSS (VmRSS, VmHWM) from /proc/PID/status;
2. distinct tokens: --distinct-tokens N quickstart tokens, each sent once (nothing can be
   cached), closed loop; throughput over the sending time (openloop's signing time, measured
   against a closed port, is subtracted);
3. after a restart, latency open loop (from each request's scheduled send time) at 50 % of the
   system's own peak, and at one common rate for all: 50 % of the lowest peak.
Before each measured run the script waits until the machine is idle, and repeats a run (up to
3 times) during which something else kept the machine busy, within a --quiet-wait budget for
the whole run (10 minutes); then it measures anyway and the report flags the rows (⚠).

Output: a Markdown report on stdout and in OUT/results.md, raw JSON in OUT/results.json
(OUT: target/bench/peers). heimdall, the OPA server and the answer probe are built with Go into
target/peers/ when missing (or when their sources changed); `portcullis` and `openloop` are
taken from target/release (never built here: cargo build --release -p portcullis -p
portcullis-load) and copied to a private directory first. Python 3 standard library only;
needs go, taskset (unless --no-pin) and 2 CPUs. Everything binds 127.0.0.1.
"""

import argparse
import datetime
import http.server
import json
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import string
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import QS_AUD, QS_ISSUER, QS_KEY, QS_KID, REPO  # noqa: E402

PEERS = os.path.join(REPO, "bench-peers")
JWKS_FILE = os.path.join(PEERS, "jwks.json")
BUILD_DIR = os.path.join(REPO, "target", "peers")
BIN_DIR = os.path.join(BUILD_DIR, "bin")
HEIMDALL_MODULE = "github.com/dadrus/heimdall"
HEIMDALL_VERSION = "v0.17.18"
OPA_MODULE = "github.com/open-policy-agent/opa"
OPA_SERVER_DIR = os.path.join(PEERS, "opa-extauthz")
PROBE_DIR = os.path.join(PEERS, "probe")
JWT_CACHE_ENTRIES = 100_000
# Runs made at most for one measurement when something else kept the machine busy.
ATTEMPTS = 3

# name: label, what it is, its config files (repository paths), what caches verified tokens.
SYSTEMS = {
    "portcullis": {
        "configs": ["bench-peers/portcullis.yaml"],
        "caching": "verified-token cache (cache.max_entries 100000, max_ttl 5m)",
    },
    "heimdall": {
        "configs": ["bench-peers/heimdall/heimdall.yaml", "bench-peers/heimdall/rules.yaml"],
        "caching": "JWK cached (10 min); no verified-token cache: every request verifies the signature",
    },
    "opa": {
        "configs": ["bench-peers/opa/policy.rego", "bench-peers/opa-extauthz/main.go"],
        "caching": "OPA defaults: parsed JWKS cached (io_jwt_keys), io_jwt verified-token cache off",
    },
    "opa-jwt-cache": {
        "configs": ["bench-peers/opa/policy.rego", "bench-peers/opa-extauthz/main.go"],
        "caching": f"io_jwt verified-token cache on ({JWT_CACHE_ENTRIES} entries; "
                   "caching.inter_query_builtin_value_cache.named.io_jwt)",
    },
}

# The answer check: every system must give these answers before it is timed.
CASES = [
    {"name": "allowed", "method": "GET", "path": "/orders/1", "token": "good", "allow": True},
    {"name": "missing-scope", "method": "GET", "path": "/orders/1", "token": "no_scope", "allow": False},
    {"name": "expired", "method": "GET", "path": "/orders/1", "token": "expired", "allow": False},
    {"name": "tampered-signature", "method": "GET", "path": "/orders/1", "token": "tampered", "allow": False},
    {"name": "no-token", "method": "GET", "path": "/orders/1", "token": None, "allow": False},
    {"name": "other-audience", "method": "GET", "path": "/orders/1", "token": "other_aud", "allow": False},
    {"name": "other-method", "method": "POST", "path": "/orders/1", "token": "good", "allow": False},
]
SUBJECT = "bench"
USER_HEADER = "x-user-id"


def log(message):
    print(f"bench_peers: {message}", file=sys.stderr, flush=True)


def die(message):
    raise SystemExit(f"bench_peers: {message}")


# ---------------------------------------------------------------- pure helpers (tested)
def render(template_text, mapping):
    """A config template with its $names filled in (string.Template: every name must be given)."""
    return string.Template(template_text).substitute(mapping)


def tamper(token):
    """The token with one character in the middle of its signature changed."""
    head, _, sig = token.rpartition(".")
    i = len(sig) // 2
    return f"{head}.{sig[:i]}{'A' if sig[i] != 'A' else 'B'}{sig[i + 1:]}"


def check_answers(cases, answers):
    """Problems with a system's answers to CASES (empty: every answer is right). An allow must
    be an OK CheckResponse carrying x-user-id = the token's subject; a denial a CheckResponse
    with a non-OK status (an RPC error is not an answer Envoy can act on)."""
    problems = []
    by_name = {a.get("name"): a for a in answers}
    for case in cases:
        a = by_name.get(case["name"])
        if a is None:
            problems.append(f"{case['name']}: no answer")
        elif a.get("rpc_error"):
            problems.append(f"{case['name']}: RPC error instead of an answer: {a['rpc_error']}")
        elif case["allow"] and not a.get("allowed"):
            problems.append(f"{case['name']}: denied (gRPC status {a.get('grpc_code')}, HTTP "
                            f"{a.get('http_status')}), expected an allow")
        elif case["allow"]:
            headers = {k.lower(): v for k, v in (a.get("headers") or {}).items()}
            if headers.get(USER_HEADER) != SUBJECT:
                problems.append(f"{case['name']}: allowed without {USER_HEADER}: {SUBJECT} "
                                f"(upstream headers: {headers})")
        elif a.get("allowed"):
            problems.append(f"{case['name']}: ALLOWED, expected a denial")
    return problems


def answer_cell(answer):
    if answer is None:
        return "–"
    if answer.get("rpc_error"):
        return "RPC error"
    if answer.get("allowed"):
        return "allow"
    return f"deny {answer.get('http_status') or ''}".strip()


def cpu_per_request(ticks, requests, clk_tck=benchlib.CLK_TCK):
    """Server CPU µs per request from a tick delta."""
    return round(ticks / clk_tck * 1e6 / max(requests, 1), 1)


def fmt(value, spec="{:.0f}"):
    return "–" if value is None else spec.format(value)


def report(meta, results):
    """The Markdown report of a run: meta (dict) and results {system: result dict}."""
    lines = [
        f"## Peers side by side ({meta['when']})",
        "",
        f"- commit: {meta['commit']}; machine: {meta['machine']}",
        f"- {meta['pinning']}; openloop: {meta['load']}",
        f"- versions: {meta['versions']}",
        f"- quiet wait: {meta['quiet']}" + ("; **quick (smoke) run: short runs, not for comparison**"
                                              if meta.get("quick") else ""),
        "",
        "| system | answers | peak rps (closed loop) | server CPU µs/req at peak | server busy % at peak "
        "| distinct tokens rps | server CPU µs/req, distinct tokens | RSS MiB idle / after peak / after distinct "
        "| VmHWM MiB | foreign CPU % (max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    latency = []
    for name, r in results.items():
        if r.get("error") and not r.get("peak"):
            lines.append(f"| {name} | **{r['error']}** |" + " |" * 8)
            continue
        peak, distinct = r.get("peak") or {}, r.get("distinct") or {}
        rss = " / ".join(fmt(r.get(k), "{:.1f}") for k in ("rss_idle_mib", "rss_peak_mib", "rss_distinct_mib"))
        foreign = r.get("foreign_pct_max")
        contaminated = foreign is not None and foreign > meta.get("quiet_max_pct", 10)
        foreign_cell = fmt(foreign) + (" ⚠" if contaminated else "")
        lines.append(
            f"| {name} | {r.get('answers_ok', '–')} | {fmt(peak.get('throughput_rps'))} "
            f"| {fmt(peak.get('server_cpu_us'), '{:.1f}')} | {fmt(peak.get('server_busy_pct'))} "
            f"| {fmt(distinct.get('throughput_rps'))} | {fmt(distinct.get('server_cpu_us'), '{:.1f}')} "
            f"| {rss} | {fmt(r.get('vmhwm_mib'), '{:.1f}')} | {foreign_cell} |")
        for label, key in (("50 % of its peak", "half"), ("common rate", "common")):
            x = r.get(key)
            if x:
                latency.append(f"| {name} | {label} | {x['offered_rps']:.0f} | {x['p50_us']} | {x['p99_us']} "
                               f"| {x['p999_us']} | {x['max_us']} | {x['late_sends']} | {x['server_busy_pct']} "
                               f"| {x['server_cpu_us']:.1f} |")
    lines += [
        "",
        "Open loop, the same token (latency in µs from each request's scheduled send time):",
        "",
        "| system | load | offered rps | p50 | p99 | p99.9 | max | late sends | server busy % "
        "| server CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *latency,
        "",
        "Server CPU per request: utime+stime of the server's PID over the run (warm-up included) "
        "per request sent in it. server busy %: of its one CPU (below ~90 % at peak: the generator "
        "or the connection count, not the server, limited the peak). Late sends are requests "
        "openloop itself sent more than 1 ms late (many: the row measures the generator). The "
        "common rate is 50 % of the lowest peak, the same for every system. foreign CPU: the "
        "machine's busy time outside the server and openloop during the measured runs (⚠: above "
        "the quiet threshold, contaminated).",
        "",
        "Answers (checked before timing; HTTP status of the denial as the system sent it):",
        "",
        "| system | " + " | ".join(c["name"] for c in CASES) + " |",
        "|---|" + "---|" * len(CASES),
    ]
    for name, r in results.items():
        answers = {a.get("name"): a for a in r.get("answers") or []}
        lines.append(f"| {name} | " + " | ".join(answer_cell(answers.get(c["name"])) for c in CASES) + " |")
    lines += ["", "Caching and configs:", ""]
    for name in results:
        s = SYSTEMS[name]
        lines.append(f"- {name}: {s['caching']}; " + ", ".join(f"`{c}`" for c in s["configs"]))
    for name, r in results.items():
        for problem in r.get("problems") or []:
            lines.append(f"- {name}: wrong answer: {problem}")
        if r.get("error") and r.get("peak"):
            lines.append(f"- {name}: incomplete: {r['error']}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/bench_peers.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per run (default 10; --quick: 2)")
    p.add_argument("--warmup-seconds", type=float, default=None,
                   help="unrecorded seconds first (default 2; --quick: 1)")
    p.add_argument("--distinct-tokens", type=int, default=None,
                   help="tokens of the distinct-token run (default 20000; --quick: 2000; 0 skips it)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: short runs, few distinct tokens, no waiting for quiet (under a minute)")
    p.add_argument("--system", action="append", choices=list(SYSTEMS), default=[],
                   help="run only this system (repeatable; default: all)")
    p.add_argument("--in-flight", type=int, default=64, help="closed-loop requests in flight")
    p.add_argument("--quiet-max-pct", type=int, default=10,
                   help="before each measured run, wait until the machine's busy time is below this %% of one CPU")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="seconds the whole run may spend waiting for quiet, then it measures anyway "
                        "(default 600; --quick: 0)")
    p.add_argument("--rebuild", action="store_true", help="rebuild heimdall, the OPA server and the probe")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="pin each server to CPU 0 and openloop to CPU 1 (taskset)")
    p.add_argument("--release-dir", default=os.path.join(REPO, "target", "release"),
                   help="where portcullis and openloop are (copied to a private directory at the start)")
    p.add_argument("--out", default=os.path.join(REPO, "target", "bench", "peers"), help="output directory")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="print the report of an earlier run's results.json and exit (runs nothing)")
    args = p.parse_args(argv)
    quick = args.quick
    if args.seconds is None:
        args.seconds = 2.0 if quick else 10.0
    if args.warmup_seconds is None:
        args.warmup_seconds = 1.0 if quick else 2.0
    if args.distinct_tokens is None:
        args.distinct_tokens = 2000 if quick else 20000
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if quick else 600.0
    if not args.system:
        args.system = list(SYSTEMS)
    return args


# ---------------------------------------------------------------- building the peers
def go_mod_version(go_mod, module):
    """The version a go.mod requires of `module` (None if it does not)."""
    with open(go_mod) as f:
        found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", f.read(), re.M)
    return found.group(1) if found else None


OPA_VERSION = go_mod_version(os.path.join(OPA_SERVER_DIR, "go.mod"), OPA_MODULE)
HEIMDALL_BIN = os.path.join(BIN_DIR, f"heimdall-{HEIMDALL_VERSION}")
OPA_BIN = os.path.join(BIN_DIR, f"opa-extauthz-{OPA_VERSION}")
PROBE_BIN = os.path.join(BIN_DIR, "probe")


def newest_source(directory):
    return max(os.stat(os.path.join(directory, f)).st_mtime for f in os.listdir(directory)
               if f.endswith((".go", ".mod", ".sum")))


def needs_build(binary, source_dir=None, force=False):
    if force or not os.access(binary, os.X_OK):
        return True
    return source_dir is not None and newest_source(source_dir) > os.stat(binary).st_mtime


def go_build(directory, output, ldflags=""):
    cmd = ["go", "build", "-trimpath"] + (["-ldflags", ldflags] if ldflags else []) + ["-o", output, "."]
    log(f"(cd {os.path.relpath(directory, REPO)} && {shlex.join(cmd)})")
    try:
        subprocess.run(cmd, cwd=directory, env=dict(os.environ, CGO_ENABLED="0"), stdout=sys.stderr,
                       check=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        die(f"building {os.path.relpath(directory, REPO)} failed: {err}")


def build_peers(systems, force):
    os.makedirs(BIN_DIR, exist_ok=True)
    if needs_build(PROBE_BIN, PROBE_DIR, force):
        go_build(PROBE_DIR, PROBE_BIN)
    if any(s.startswith("opa") for s in systems) and needs_build(OPA_BIN, OPA_SERVER_DIR, force):
        go_build(OPA_SERVER_DIR, OPA_BIN)
    if "heimdall" in systems and needs_build(HEIMDALL_BIN, None, force):
        # heimdall's go.mod has replace directives, so `go install module@version` refuses it:
        # build in a writable copy of the module's source from the module proxy.
        out = subprocess.run(["go", "mod", "download", "-json", f"{HEIMDALL_MODULE}@{HEIMDALL_VERSION}"],
                             capture_output=True, text=True, timeout=600)
        info = json.loads(out.stdout or "{}")
        if out.returncode != 0 or "Dir" not in info:
            die(f"go mod download {HEIMDALL_MODULE}@{HEIMDALL_VERSION} failed: {info.get('Error') or out.stderr}")
        src = os.path.join(BUILD_DIR, "src", f"heimdall-{HEIMDALL_VERSION}")
        if not os.path.isdir(src):
            shutil.copytree(info["Dir"], src)
            for root, dirs, files in os.walk(src):
                for n in dirs + files:
                    path = os.path.join(root, n)
                    os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
        go_build(src, HEIMDALL_BIN, f"-w -s -X {HEIMDALL_MODULE}/version.Version={HEIMDALL_VERSION}")


def module_versions(binary):
    """{module: version} of the Go modules built into `binary` (go version -m)."""
    out = subprocess.run(["go", "version", "-m", binary], capture_output=True, text=True, timeout=60).stdout
    versions = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] in (["mod"], ["dep"]) and len(parts) >= 3:
            versions[parts[1]] = parts[2]
    return versions


# ---------------------------------------------------------------- the run
class JwksServer:
    """bench-peers/jwks.json over HTTP on 127.0.0.1 (heimdall's jwks_endpoint)."""

    def __init__(self):
        with open(JWKS_FILE, "rb") as f:
            body = f.read()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def rss_mib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def machine_desc():
    with open("/proc/cpuinfo") as f:
        model = next((line.split(": ", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} vCPUs ({model}), kernel {os.uname().release}"


class Peers:
    def __init__(self, args):
        self.args = args
        self.tmp = None
        self.processes = []
        self.quiet_budget = args.quiet_wait
        self.quiet_log = []
        self.first_token = 0
        self.server_prefix = ["taskset", "-c", "0"] if args.pin else []
        self.client_prefix = ["taskset", "-c", "1"] if args.pin else []

    # -- setup
    def prerequisites(self):
        a = self.args
        missing = [t for t in ["go"] + (["taskset"] if a.pin else []) if not shutil.which(t)]
        if missing:
            die(f"not found: {', '.join(missing)}")
        if a.pin and len(os.sched_getaffinity(0)) < 2:
            die("--pin needs 2 CPUs (or --no-pin)")
        problem = benchlib.check_quickstart()
        if problem:
            die(problem)
        for name in ("portcullis", "openloop"):
            if not os.access(os.path.join(a.release_dir, name), os.X_OK):
                die(f"{a.release_dir}/{name} missing: cargo build --release -p portcullis -p portcullis-load")
        # The release binaries may be rebuilt while this runs: use private copies.
        for name in ("portcullis", "openloop"):
            shutil.copy2(os.path.join(a.release_dir, name), os.path.join(self.tmp, name))
        self.portcullis = os.path.join(self.tmp, "portcullis")
        self.openloop_bin = os.path.join(self.tmp, "openloop")
        build_peers(a.system, a.rebuild)

    def tokens(self):
        def sign(scope="orders:read", aud=QS_AUD, claims=()):
            cmd = [self.portcullis, "token", "sign", "--key", QS_KEY, "--alg", "ES256", "--kid", QS_KID,
                   "--iss", QS_ISSUER, "--sub", SUBJECT, "--aud", aud, "--scope", scope, "--ttl", "1h"]
            for c in claims:
                cmd += ["--claim", c]
            return subprocess.check_output(cmd, text=True, timeout=60).strip()

        past = int(time.time()) - 3600
        good = sign()
        return {
            "good": good,
            "no_scope": sign(scope="orders:write"),
            "expired": sign(claims=(f"exp={past}", f"iat={past - 3600}")),
            "tampered": tamper(good),
            "other_aud": sign(aud="api://someone-else"),
        }

    # -- the systems
    def start(self, name):
        """Starts system `name` pinned to CPU 0; returns (process, grpc port)."""
        port = benchlib.free_port()
        log_path = os.path.join(self.tmp, f"{name}.log")
        env = dict(os.environ)
        ready_url = None
        if name == "portcullis":
            admin = benchlib.free_port()
            config = self.write_config(name, "portcullis.yaml", grpc_port=port, admin_port=admin, jwks_file=JWKS_FILE)
            check = subprocess.run([self.portcullis, "check-config", "--config", config], capture_output=True,
                                   text=True, timeout=60)
            if check.returncode != 0:
                die(f"bench-peers/portcullis.yaml is invalid: {check.stdout}{check.stderr}")
            cmd = [self.portcullis, "serve", "--config", config]
            ready_url = f"http://127.0.0.1:{admin}/readyz"
        elif name == "heimdall":
            management, metrics = benchlib.free_port(), benchlib.free_port()
            config = self.write_config(name, os.path.join("heimdall", "heimdall.yaml"), grpc_port=port,
                                       management_port=management, metrics_port=metrics, jwks_url=self.jwks.url,
                                       rules_file=os.path.join(PEERS, "heimdall", "rules.yaml"))
            env.update(OTEL_METRICS_EXPORTER="prometheus", OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
                       OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics), OTEL_TRACES_EXPORTER="none")
            cmd = [HEIMDALL_BIN, "serve", "decision", "--envoy-grpc", "--insecure-skip-all-tls-enforcement",
                   "-c", config]
            ready_url = f"http://127.0.0.1:{management}/.well-known/health"
        else:
            cmd = [OPA_BIN, "-addr", f"127.0.0.1:{port}", "-policy", os.path.join(PEERS, "opa", "policy.rego"),
                   "-jwks", JWKS_FILE]
            if name == "opa-jwt-cache":
                cmd += ["-jwt-cache-entries", str(JWT_CACHE_ENTRIES)]
        with open(log_path, "a") as log_file:
            process = subprocess.Popen(self.server_prefix + cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        self.processes.append(process)
        if not (benchlib.wait_tcp(process, port)
                and (ready_url is None or benchlib.wait_http(process, ready_url))):
            self.dump_log(log_path)
            die(f"{name} did not become ready")
        log(f"{name} started (pid {process.pid}, gRPC 127.0.0.1:{port})")
        return process, port

    def write_config(self, name, template, **mapping):
        with open(os.path.join(PEERS, template)) as f:
            text = render(f.read(), mapping)
        path = os.path.join(self.tmp, f"{name}-{os.path.basename(template)}")
        with open(path, "w") as f:
            f.write(text)
        return path

    @staticmethod
    def dump_log(path):
        with open(path) as f:
            sys.stderr.write("".join(f.readlines()[-30:]))

    def stop(self, process):
        benchlib.stop([process])
        self.processes.remove(process)

    def probe(self, port, tokens):
        cases = [{"name": c["name"], "method": c["method"], "path": c["path"],
                  "token": tokens[c["token"]] if c["token"] else None} for c in CASES]
        out = subprocess.run([PROBE_BIN, "-target", f"127.0.0.1:{port}", "-wait", "20s"], input=json.dumps(cases),
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            die(f"probe failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    # -- measuring
    def busy_pct(self, seconds):
        m0 = benchlib.machine_busy_ticks()
        time.sleep(seconds)
        return round((benchlib.machine_busy_ticks() - m0) / benchlib.CLK_TCK / seconds * 100)

    def wait_quiet(self):
        """Waits (within the run's --quiet-wait budget) until the machine is idle."""
        while True:
            busy = self.busy_pct(1)
            if busy <= self.args.quiet_max_pct:
                return
            if self.quiet_budget <= 0:
                if self.args.quiet_wait > 0 and "busy" not in self.quiet_log:
                    self.quiet_log.append("busy")
                    log(f"machine busy ({busy}% of a CPU); the quiet-wait budget is spent, measuring anyway")
                return
            log(f"machine busy ({busy}% of a CPU); waiting (budget {self.quiet_budget:.0f}s)")
            time.sleep(2)
            self.quiet_budget -= 3

    def openloop(self, process, port, make_args, expect_count=None):
        """An openloop run against `port` (arguments from make_args(), called per attempt): its
        JSON report plus server CPU, busy and foreign CPU. A run during which something else
        kept the machine busy (foreign CPU above --quiet-max-pct) is repeated, up to ATTEMPTS
        runs while the quiet-wait budget lasts; the least contaminated one is kept."""
        best = None
        for attempt in range(1, ATTEMPTS + 1):
            self.wait_quiet()
            r = self.openloop_once(process, port, *make_args(), expect_count=expect_count)
            r["attempt"] = attempt
            if best is None or r["foreign_pct"] < best["foreign_pct"]:
                best = r
            if r["foreign_pct"] <= self.args.quiet_max_pct or self.quiet_budget <= 0 or attempt == ATTEMPTS:
                break
            log(f"foreign CPU {r['foreign_pct']}% during the run (something else was busy): repeating it "
                f"({attempt + 1}/{ATTEMPTS})")
        return best

    def openloop_once(self, process, port, *extra, expect_count=None):
        a = self.args
        cmd = self.client_prefix + [self.openloop_bin, "--target", f"127.0.0.1:{port}", "--rpc", "check", *extra]
        seconds = a.seconds + a.warmup_seconds
        s0, m0, w0 = benchlib.proc_ticks(process.pid), benchlib.machine_busy_ticks(), time.monotonic()
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 900)
        s1, m1, w1 = benchlib.proc_ticks(process.pid), benchlib.machine_busy_ticks(), time.monotonic()
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            raise RunError(f"openloop failed: {out.stderr.strip()[-500:]}")
        r = json.loads(out.stdout)
        if r["errors"] or r["wrong"] or r.get("shed"):
            raise RunError(f"openloop counted {r['errors']} errors, {r['wrong']} wrong answers, "
                           f"{r.get('shed', 0)} shed ({shlex.join(extra)})")
        if expect_count is not None and r["completed"] != expect_count:
            raise RunError(f"openloop completed {r['completed']} of {expect_count} requests")
        wall, hz = w1 - w0, benchlib.CLK_TCK
        client_ticks = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * hz
        r["wall_seconds"] = round(wall, 3)
        r["server_ticks"] = s1 - s0
        r["server_busy_pct"] = round((s1 - s0) / hz / wall * 100)
        r["client_busy_pct"] = round(client_ticks / hz / wall * 100)
        r["foreign_pct"] = round(max((m1 - m0) - (s1 - s0) - client_ticks, 0) / hz / wall * 100)
        r["command"] = shlex.join(cmd)
        return r

    def timed(self, process, port, *extra):
        """A timed run (closed or open loop): server CPU per request sent, warm-up included."""
        a = self.args
        r = self.openloop(process, port, lambda: ["--seconds", str(a.seconds), "--warmup-seconds",
                                                  str(a.warmup_seconds), *extra])
        sent = r["completed"] * (a.seconds + a.warmup_seconds) / a.seconds
        r["server_cpu_us"] = cpu_per_request(r["server_ticks"], sent)
        return r

    def signing_seconds(self, count):
        """How long openloop takes to sign `count` distinct tokens: it signs them all, then
        fails to connect to a closed port and exits."""
        closed = benchlib.free_port()
        t0 = time.monotonic()
        subprocess.run(self.client_prefix + [self.openloop_bin, "--target", f"127.0.0.1:{closed}", "--rpc", "check",
                                             "--distinct-tokens", str(count)],
                       capture_output=True, text=True, timeout=600)
        return time.monotonic() - t0

    def distinct(self, process, port):
        n = self.args.distinct_tokens

        def make_args():  # never a token twice to one server, not even when a run is repeated
            first, self.first_token = self.first_token, self.first_token + n
            return ["--distinct-tokens", str(n), "--first-token", str(first), "--in-flight", str(self.args.in_flight)]

        r = self.openloop(process, port, make_args, expect_count=n)
        sending = max(r["wall_seconds"] - self.signing, 1e-3)
        r["signing_seconds"] = round(self.signing, 3)
        r["throughput_rps"] = round(n / sending, 1)
        r["server_cpu_us"] = cpu_per_request(r["server_ticks"], n)
        return r

    def phase1(self, name, tokens, result):
        """Start, check answers, peak, distinct tokens, RSS; stop."""
        process, port = self.start(name)
        try:
            result["rss_idle_mib"] = rss_mib(process.pid)
            result["answers"] = self.probe(port, tokens)
            problems = check_answers(CASES, result["answers"])
            result["answers_ok"] = f"{len(CASES) - len(problems)}/{len(CASES)} right"
            if problems:
                result["problems"] = problems
                result["error"] = f"wrong answers, not timed: {'; '.join(problems)}"
                log(f"{name}: WRONG ANSWERS, its timing is skipped:\n  " + "\n  ".join(problems))
                return False
            log(f"{name}: all {len(CASES)} answers right")
            peak = self.timed(process, port, "--token", tokens["good"], "--rate", "0", "--in-flight",
                              str(self.args.in_flight))
            result["peak"] = peak
            result["rss_peak_mib"] = rss_mib(process.pid)
            log(f"{name}: peak {peak['throughput_rps']:.0f} rps, {peak['server_cpu_us']} µs/req, "
                f"server {peak['server_busy_pct']}% busy, RSS {result['rss_peak_mib']} MiB")
            if self.args.distinct_tokens > 0:
                d = self.distinct(process, port)
                result["distinct"] = d
                result["rss_distinct_mib"] = rss_mib(process.pid)
                log(f"{name}: {self.args.distinct_tokens} distinct tokens: {d['throughput_rps']:.0f} rps, "
                    f"{d['server_cpu_us']} µs/req")
            result["vmhwm_mib"] = rss_mib(process.pid, "VmHWM")
            return True
        finally:
            self.stop(process)

    def phase2(self, name, tokens, result, common_rate):
        """Restart, check answers again, open loop at 50 % of the own peak and at the common rate."""
        process, port = self.start(name)
        try:
            problems = check_answers(CASES, self.probe(port, tokens))
            if problems:
                raise RunError(f"wrong answers after the restart: {'; '.join(problems)}")
            own = max(1, round(result["peak"]["throughput_rps"] * 0.5))
            result["half"] = self.timed(process, port, "--token", tokens["good"], "--rate", str(own))
            log(f"{name}: at {own} rps (50 % of its peak): p99 {result['half']['p99_us']} µs")
            if common_rate == own:
                result["common"] = result["half"]
            else:
                result["common"] = self.timed(process, port, "--token", tokens["good"], "--rate", str(common_rate))
                log(f"{name}: at {common_rate} rps (common rate): p99 {result['common']['p99_us']} µs")
        finally:
            self.stop(process)

    def run(self):
        a = self.args
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        os.makedirs(a.out, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="portcullis-peers.")
        self.jwks = None
        results = {name: {} for name in a.system}
        try:
            self.prerequisites()
            tokens = self.tokens()
            self.jwks = JwksServer()
            self.signing = self.signing_seconds(a.distinct_tokens) if a.distinct_tokens > 0 else 0.0
            for name in a.system:
                log(f"--- {name}: answers, peak, distinct tokens")
                try:
                    self.phase1(name, tokens, results[name])
                except RunError as err:
                    results[name]["error"] = str(err)
                    log(f"{name}: {err}")
            peaks = [r["peak"]["throughput_rps"] for r in results.values() if r.get("peak") and not r.get("error")]
            common = max(1, round(min(peaks) * 0.5)) if peaks else None
            for name in a.system:
                if results[name].get("error") or not results[name].get("peak"):
                    continue
                log(f"--- {name}: open loop")
                try:
                    self.phase2(name, tokens, results[name], common)
                except RunError as err:
                    results[name]["error"] = str(err)
                    log(f"{name}: {err}")
            for r in results.values():
                runs = [r.get(k) for k in ("peak", "distinct", "half", "common") if r.get(k)]
                r["foreign_pct_max"] = max((x["foreign_pct"] for x in runs), default=None)
            meta = self.meta(common)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            benchlib.stop(list(self.processes))
            if self.jwks:
                self.jwks.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        markdown = report(meta, results)
        sys.stdout.write(markdown)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(markdown)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        failed = [n for n, r in results.items() if r.get("error")]
        if failed:
            log(f"not timed or failed: {', '.join(failed)}")
        return 1 if failed else 0

    def meta(self, common):
        a = self.args
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        heimdall = "heimdall" in a.system
        opa = module_versions(OPA_BIN).get(OPA_MODULE) if any(s.startswith("opa") for s in a.system) else None
        go = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml"], cwd=REPO).returncode
        built = datetime.datetime.fromtimestamp(os.stat(self.portcullis).st_mtime, datetime.timezone.utc)
        versions = [f"portcullis {head.stdout.strip() or 'unknown'}"
                    + (" + uncommitted changes in src/ or Cargo.toml" if dirty else "")
                    + f" ({os.path.relpath(a.release_dir, REPO)}/portcullis built {built:%Y-%m-%dT%H:%MZ}, "
                      "copied at the start)"]
        if heimdall:
            out = subprocess.run(["go", "mod", "download", "-json", f"{HEIMDALL_MODULE}@{HEIMDALL_VERSION}"],
                                 capture_output=True, text=True, timeout=300).stdout
            total = json.loads(out or "{}").get("Sum", "sum unknown")
            versions.append(f"heimdall {HEIMDALL_VERSION} (the module proxy's source, {total}, built with "
                            f"version.Version={HEIMDALL_VERSION})")
        if opa:
            versions.append(f"OPA {opa} through bench-peers/opa-extauthz")
        versions.append(f"built with {go}")
        quiet = (f"up to {a.quiet_wait:g} s in all, busy below {a.quiet_max_pct} % of a CPU"
                 if a.quiet_wait > 0 else "off")
        if "busy" in self.quiet_log:
            quiet += "; THE MACHINE NEVER GOT QUIET within the budget: measured while busy"
        return {
            "when": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}",
            "commit": head.stdout.strip() or "unknown",
            "machine": machine_desc(),
            "pinning": "each server alone, pinned to CPU 0; openloop on CPU 1 (taskset)" if a.pin else "no pinning",
            "load": (f"{a.warmup_seconds:g} s warm-up then {a.seconds:g} s per run, 4 HTTP/2 connections, "
                     f"{a.in_flight} in flight (closed loop); {a.distinct_tokens} distinct tokens; "
                     f"common rate {common} rps (50 % of the lowest peak); openloop's signing of the "
                     f"distinct tokens, {self.signing:.2f} s, subtracted from their run"),
            "versions": "; ".join(versions),
            "quiet": quiet,
            "quiet_max_pct": a.quiet_max_pct,
            "quick": a.quick,
        }


class RunError(Exception):
    pass


def dry_run(args):
    print("dry run: nothing is built, started or written")
    for binary, what in ((PROBE_BIN, "probe"), (OPA_BIN, "OPA ext_authz server"), (HEIMDALL_BIN, "heimdall")):
        state = "present" if os.access(binary, os.X_OK) else "missing: built with go"
        print(f"{what}: {os.path.relpath(binary, REPO)} ({state})")
    for name in ("portcullis", "openloop"):
        path = os.path.join(args.release_dir, name)
        print(f"{name}: {path}{'' if os.access(path, os.X_OK) else ' (MISSING)'}, copied to a private directory")
    pin = "taskset -c 0 " if args.pin else ""
    commands = {
        "portcullis": "portcullis serve --config TMP/portcullis-portcullis.yaml",
        "heimdall": f"{os.path.relpath(HEIMDALL_BIN, REPO)} serve decision --envoy-grpc "
                    "--insecure-skip-all-tls-enforcement -c TMP/heimdall-heimdall.yaml",
        "opa": f"{os.path.relpath(OPA_BIN, REPO)} -addr 127.0.0.1:PORT -policy bench-peers/opa/policy.rego "
               "-jwks bench-peers/jwks.json",
        "opa-jwt-cache": f"{os.path.relpath(OPA_BIN, REPO)} ... -jwt-cache-entries {JWT_CACHE_ENTRIES}",
    }
    print("systems (one at a time, 127.0.0.1, free ports):")
    for name in args.system:
        print(f"  {name}: {pin}{commands[name]}  # configs: {', '.join(SYSTEMS[name]['configs'])}")
    print(f"answer check: {', '.join(c['name'] for c in CASES)}")
    per_run = args.seconds + args.warmup_seconds
    print(f"per system: peak (closed loop, {args.in_flight} in flight, {per_run:g} s), "
          f"{args.distinct_tokens} distinct tokens, then open loop at 50 % of its peak and at the common rate "
          f"({per_run:g} s each)")
    estimate = len(args.system) * (3 * per_run + 8) + (5 if args.distinct_tokens else 0)
    print(f"about {estimate:.0f} s plus the distinct-token runs, builds, and up to {args.quiet_wait:g} s waiting "
          "for quiet")
    print(f"output: {args.out}/results.md and results.json")


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        sys.stdout.write(report(saved["meta"], saved["results"]))
        return 0
    if args.dry_run:
        dry_run(args)
        return 0
    try:
        return Peers(args).run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
