#!/usr/bin/env python3
"""Soak run: Portcullis under steady load while its config reloads and its keys rotate.

One server verifies every request (`cache: {max_ttl: 0s}`) against a remote JWKS served on
127.0.0.1 by this script. `openloop` (bench-load/) first measures the peak closed-loop, then
sends Authenticate at --load (default 80 %) of it for --minutes. Meanwhile:

- every --reload-every seconds the config file is rewritten (the realm changes), and the
  server must apply each one (portcullis_config_reloads_total{result="success"});
- every --rotate-every seconds a new ES256 key joins the JWKS, the generator switches to a
  token signed by it (a token file it watches), and the old key leaves the JWKS after
  --overlap seconds;
- every 10 s the server's RSS and open file descriptors are read.

It passes when the generator saw no error, no wrong answer (each answer is checked:
authenticated) and nothing shed, every reload was applied, and RSS and FDs stayed flat after warm-up: of the
readings after the first rotation, the second half's peak is within --max-growth of the
first half's. Report: Markdown on stdout and in OUT/soak.md, raw readings in OUT/soak.json.
Python 3 standard library and the openssl command only.
"""

import argparse
import base64
import datetime
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import REPO  # noqa: E402

ISSUER = "https://soak.portcullis.invalid"
AUDIENCE = "api://soak"

CONFIG = """\
# Written by scripts/soak.py (generation {generation}).
server:
  grpc_listen: 127.0.0.1:{grpc_port}
  admin_listen: 127.0.0.1:{admin_port}
issuers:
  - name: soak
    issuer: {issuer}
    jwks_uri: http://127.0.0.1:{jwks_port}/jwks
    jwks: {{refetch_cooldown: 5s}}
    audiences: [{audience}]
    algorithms: [ES256]
    required_claims: [exp, sub]
response:
  realm: soak-{generation}
cache: {{max_ttl: 0s}}
telemetry: {{log_level: warn}}
"""


def log(message):
    print(f"soak: {message}", file=sys.stderr, flush=True)


def die(message):
    raise SystemExit(f"soak: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/soak.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the loaded run")
    p.add_argument("--load", type=float, default=0.8, help="fraction of the measured peak to offer")
    p.add_argument("--reload-every", type=float, default=10.0, help="seconds between config reloads")
    p.add_argument("--rotate-every", type=float, default=60.0, help="seconds between key rotations")
    p.add_argument("--overlap", type=float, default=10.0, help="seconds both keys are published")
    p.add_argument("--max-growth", type=float, default=0.10,
                   help="allowed growth of RSS and FDs from the first reading after warm-up")
    p.add_argument("--skip-build", action="store_true", help="use target/release binaries as they are")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="pin the server to CPU 0 and the generator to CPU 1 (taskset)")
    p.add_argument("--out", default=os.path.join(REPO, "target", "bench"), help="output directory")
    return p.parse_args(argv)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(tmp, kid):
    """A fresh P-256 key: (private PEM path, public JWK)."""
    path = os.path.join(tmp, f"{kid}.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", path], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    point = der[-65:]  # SubjectPublicKeyInfo ends with the uncompressed point 04 || x || y
    if point[0] != 4:
        die("unexpected public key encoding from openssl")
    jwk = {"kty": "EC", "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:]),
           "kid": kid, "alg": "ES256", "use": "sig"}
    return path, jwk


class Jwks:
    """The key set served at /jwks; swapped whole."""

    def __init__(self):
        self.body = b'{"keys": []}'
        self.fetches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=60")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, jwks):
        self.body = json.dumps({"keys": jwks}).encode()


def sign(binary, key, kid, subject):
    return subprocess.check_output(
        [binary, "token", "sign", "--key", key, "--alg", "ES256", "--kid", kid, "--iss", ISSUER,
         "--sub", subject, "--aud", AUDIENCE, "--scope", "orders:read", "--ttl", "2h"],
        text=True, timeout=60).strip()


def metric(admin_port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        total = 0.0
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                total += float(line.rsplit(None, 1)[1])
        return total


def reading(pid, started):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"t": round(time.monotonic() - started), "rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def run(args):
    binary = os.path.join(REPO, "target", "release", "portcullis")
    openloop = os.path.join(REPO, "target", "release", "openloop")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "portcullis", "-p", "portcullis-load"], cwd=REPO,
                       stdout=sys.stderr, check=True)
    for path in (binary, openloop):
        if not os.access(path, os.X_OK):
            die(f"{path} missing")
    server_prefix = ["taskset", "-c", "0"] if args.pin else []
    client_prefix = ["taskset", "-c", "1"] if args.pin else []
    tmp = tempfile.mkdtemp(prefix="portcullis-soak.")
    processes = []
    try:
        jwks = Jwks()
        keys = [new_key(tmp, "soak-0")]
        jwks.publish([keys[0][1]])
        token_file = os.path.join(tmp, "token")
        with open(token_file, "w") as f:
            f.write(sign(binary, keys[0][0], "soak-0", "soak-0"))
        grpc_port, admin_port = benchlib.free_port(), benchlib.free_port()
        config = os.path.join(tmp, "soak.yaml")
        generation = 0

        def write_config():
            with open(config + ".new", "w") as f:
                f.write(CONFIG.format(generation=generation, grpc_port=grpc_port, admin_port=admin_port,
                                      issuer=ISSUER, jwks_port=jwks.port, audience=AUDIENCE))
            os.replace(config + ".new", config)

        write_config()
        log_file = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen(server_prefix + [binary, "serve", "--config", config], stdout=log_file,
                                  stderr=subprocess.STDOUT)
        processes.append(server)
        if not benchlib.wait_ready(server, admin_port, timeout=30):
            die("the server did not become ready")
        target = ["--target", f"127.0.0.1:{grpc_port}", "--rpc", "authenticate", "--token-file", token_file]
        peak = json.loads(subprocess.run(client_prefix + [openloop, *target, "--seconds", "5",
                                                          "--warmup-seconds", "1"],
                                         capture_output=True, text=True, check=True, timeout=120).stdout)
        rate = round(peak["throughput_rps"] * args.load)
        seconds = args.minutes * 60
        log(f"peak {peak['throughput_rps']:.0f} rps; soaking at {rate} rps for {seconds:.0f} s")
        generator = subprocess.Popen(client_prefix + [openloop, *target, "--rate", str(rate), "--seconds",
                                                      str(seconds), "--warmup-seconds", "5",
                                                      "--max-outstanding", "2000"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(generator)
        started = time.monotonic()
        reloads_before = metric(admin_port, 'portcullis_config_reloads_total{result="success"}')
        readings, rotations, reloads, retire = [reading(server.pid, started)], 0, 0, None
        next_reload, next_rotate, next_read = (started + args.reload_every, started + args.rotate_every,
                                               started + 10)
        end = started + seconds + 5
        while time.monotonic() < end and generator.poll() is None:
            now = time.monotonic()
            if now >= next_reload:
                generation += 1
                write_config()
                reloads += 1
                next_reload += args.reload_every
            if now >= next_rotate:
                rotations += 1
                kid = f"soak-{rotations}"
                keys.append(new_key(tmp, kid))
                jwks.publish([k[1] for k in keys[-2:]])
                with open(token_file + ".new", "w") as f:
                    f.write(sign(binary, keys[-1][0], kid, kid))
                os.replace(token_file + ".new", token_file)
                retire = now + args.overlap
                next_rotate += args.rotate_every
            if retire is not None and now >= retire:
                jwks.publish([keys[-1][1]])
                retire = None
            if now >= next_read:
                readings.append(reading(server.pid, started))
                next_read += 10
            time.sleep(0.2)
        out, err = generator.communicate(timeout=120)
        processes.remove(generator)
        if generator.returncode != 0:
            die(f"openloop failed: {err.strip()[-500:]}")
        result = json.loads(out)
        time.sleep(args.reload_every)  # the last rewrite's reload
        applied = metric(admin_port, 'portcullis_config_reloads_total{result="success"}') - reloads_before
        readings.append(reading(server.pid, started))
        return {"peak_rps": peak["throughput_rps"], "rate": rate, "seconds": seconds, "result": result,
                "reloads_written": reloads, "reloads_applied": applied, "rotations": rotations,
                "jwks_fetches": jwks.fetches, "readings": readings, "server_alive": server.poll() is None}
    finally:
        benchlib.stop(processes)
        shutil.rmtree(tmp, ignore_errors=True)


def verdict(args, soak):
    """The failed checks (empty: passed)."""
    failures = []
    r = soak["result"]
    if r["errors"] or r["wrong"] or r["shed"]:
        failures.append(f"{r['errors']} errors, {r['wrong']} wrong answers and {r['shed']} shed")
    if not soak["server_alive"]:
        failures.append("the server exited")
    if soak["reloads_applied"] < soak["reloads_written"]:
        failures.append(f"{soak['reloads_applied']:.0f} of {soak['reloads_written']} reloads applied")
    # Flat: after warm-up (the first rotation), the second half's peak is within
    # --max-growth of the first half's; a leak per reload or rotation would climb steadily.
    warm = [x for x in soak["readings"] if x["t"] >= args.rotate_every] or soak["readings"]
    first, second = warm[: max(len(warm) // 2, 1)], warm[len(warm) // 2:]
    for key in ("rss_kib", "fds"):
        before, after = max(x[key] for x in first), max(x[key] for x in second)
        if after > before * (1 + args.max_growth) + (2 if key == "fds" else 0):
            failures.append(f"{key} grew from {before} to {after}")
    return failures


def report(args, soak, failures):
    r, readings = soak["result"], soak["readings"]
    rss = [x["rss_kib"] / 1024 for x in readings]
    fds = [x["fds"] for x in readings]
    lines = [
        f"## Soak ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ})", "",
        f"- {soak['seconds'] / 60:g} min at {soak['rate']} Authenticate/s ({args.load:.0%} of the "
        f"{soak['peak_rps']:.0f} rps peak), every request verified (ES256, remote JWKS)",
        f"- config reloads: {soak['reloads_written']} written, {soak['reloads_applied']:.0f} applied; "
        f"key rotations: {soak['rotations']} (JWKS fetched {soak['jwks_fetches']} times)",
        f"- answers: {r['completed']} expected, {r['errors']} errors, {r['wrong']} wrong, {r['shed']} shed; "
        f"p50 {r['p50_us']} µs, p99 {r['p99_us']} µs, p99.9 {r['p999_us']} µs, max {r['max_us']} µs",
        f"- server RSS {min(rss):.1f}–{max(rss):.1f} MiB (first {rss[0]:.1f}, last {rss[-1]:.1f}); "
        f"open FDs {min(fds)}–{max(fds)} (last {fds[-1]})",
        f"- verdict: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    soak = run(args)
    failures = verdict(args, soak)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(soak, f, indent=1)
    text = report(args, soak, failures)
    sys.stdout.write(text)
    with open(os.path.join(args.out, "soak.md"), "w") as f:
        f.write(text)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
