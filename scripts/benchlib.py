"""Shared helpers of the load benchmarks (scripts/bench.py, scripts/bench-ab.py).

Python 3 standard library only. Everything here binds or talks to 127.0.0.1 only.
"""

import json
import os
import re
import socket
import subprocess
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ghz and grpcurl (scripts/provision/grpc-tools.sh installs them here); PORTCULLIS_TOOLS
# points elsewhere, e.g. at the main checkout's from a git worktree.
DEFAULT_TOOLS_BIN = os.path.join(REPO, ".tools", "bin")
TOOLS_BIN = os.environ.get("PORTCULLIS_TOOLS") or DEFAULT_TOOLS_BIN
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The quickstart issuer (examples/quickstart.yaml); check_quickstart() fails loudly on drift.
QS_CONFIG = os.path.join(REPO, "examples", "quickstart.yaml")
QS_ISSUER = "https://quickstart.portcullis.invalid"
QS_KID = "quickstart-es256"
QS_AUD = "api://quickstart"
QS_PUB = os.path.join(REPO, "examples", "keys", "quickstart-es256.pub.pem")
QS_KEY = os.path.join(REPO, "examples", "keys", "quickstart-es256.key.pem")


def check_quickstart():
    """An error message if examples/quickstart.yaml no longer matches the QS_* constants."""
    with open(QS_CONFIG) as f:
        text = f.read()
    if QS_ISSUER not in text or f"kid: {QS_KID}" not in text:
        return f"{QS_CONFIG} no longer matches the QS_* constants in {__file__}"
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_ticks(pid):
    """utime+stime of PID in clock ticks (fields 14 and 15 of /proc/PID/stat; the command
    name in field 2 may contain spaces and parentheses, so split after the last ')')."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks():
    """Busy ticks of all CPUs (total - idle - iowait) from the `cpu` line of /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                values = [int(v) for v in line.split()[1:]]
                return sum(values) - values[3] - values[4]
    raise RuntimeError("no cpu line in /proc/stat")


def wait_until(process, probe, timeout=30.0, interval=0.2):
    """Calls `probe()` until it returns True (True), the process exits or `timeout` seconds
    pass (False). An OSError from the probe counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return True
        except OSError:
            pass
        if process.poll() is not None:
            return False
        time.sleep(interval)
    return False


def wait_http(process, url, timeout=30.0):
    """Waits until URL answers 200 (see wait_until)."""
    def answers():
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    return wait_until(process, answers, timeout)


def wait_tcp(process, port, timeout=30.0):
    """Waits until 127.0.0.1:PORT accepts connections (see wait_until)."""
    def accepts():
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    return wait_until(process, accepts, timeout, interval=0.1)


def wait_ready(process, admin_port, timeout=30.0):
    """Polls http://127.0.0.1:ADMIN_PORT/readyz until it answers 200 (True), the process
    exits or `timeout` seconds pass (False)."""
    return wait_http(process, f"http://127.0.0.1:{admin_port}/readyz", timeout)


def sign_token(binary, key=QS_KEY, alg="ES256", kid=QS_KID, iss=QS_ISSUER, aud=QS_AUD,
               sub="bench", scope="orders:read", ttl="1h"):
    """A JWT from `portcullis token sign` (by default the quickstart issuer's ES256 key)."""
    return subprocess.check_output(
        [binary, "token", "sign", "--key", key, "--alg", alg, "--kid", kid, "--iss", iss,
         "--sub", sub, "--aud", aud, "--scope", scope, "--ttl", ttl],
        text=True, timeout=60,
    ).strip()


def ghz_command(ghz, call, data, target, concurrency, connections, extra=(), prefix=()):
    """A ghz command line: plaintext, reflection, JSON report (on stdout unless `extra` has
    --output). `data` is the request as a JSON string or a JSON-serialisable value."""
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"))
    return [*prefix, ghz, "--insecure", "--call", call, "-d", data, "-c", str(concurrency),
            "--connections", str(connections), "--format", "json", *extra, target]


def latency_ms(report, percentage):
    """The latency (ms) at `percentage` from a ghz JSON report's latencyDistribution."""
    for entry in report.get("latencyDistribution") or []:
        if entry.get("percentage") == percentage:
            return entry["latency"] / 1e6
    raise KeyError(f"no p{percentage} in the ghz report")


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text):
    """Seconds in a Go duration string as ghz -z takes it ("10s", "1m30s", "500ms")."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (e.g. 10s, 1m30s, 500ms)")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def stop(processes, grace=5.0):
    """Stops each process (subprocess.Popen) by its PID: SIGTERM, then SIGKILL after
    `grace` seconds, and reaps it."""
    for process in processes:
        if process.poll() is None:
            try:
                process.terminate()
            except ProcessLookupError:
                pass
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def decision_histogram(admin_port):
    """The server's decision-latency histogram (portcullis_request_duration_seconds, all
    surfaces summed) from its admin port: {le: cumulative count}; {} without metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    buckets = {}
    for line in text.splitlines():
        if line.startswith("portcullis_request_duration_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                buckets[le.group(1)] = buckets.get(le.group(1), 0) + float(line.rsplit(None, 1)[1])
    return buckets


def server_p99(before, after):
    """The upper bound (ms, as text) of the bucket holding the 99th percentile of the
    requests decided between two histogram snapshots; "–" when none were."""
    les = sorted(set(before) & set(after), key=float)
    deltas = [after[le] - before[le] for le in les]
    if not deltas or deltas[-1] <= 0:
        return "–"
    le = next(le for le, d in zip(les, deltas) if d >= 0.99 * deltas[-1])
    return f"{float(le) * 1000:.3f}"
