"""The chart's probes, exercised against the real binary during an identity provider outage.

Renders the chart (ci/minimal-values.yaml: one OpenID Connect issuer with discovery),
starts ``portcullis serve`` on the rendered config.yaml, with the listen addresses moved
to free 127.0.0.1 ports and the issuer moved to a loopback discovery endpoint that is not
listening yet, and calls each probe of the rendered Deployment the way the kubelet would
(handler, path and port taken from the manifest):

* while the IdP is unreachable, startup and liveness succeed (no restart loop) and
  readiness fails (no traffic);
* once the IdP answers (a loopback HTTP server with OpenID discovery and a JWKS holding
  the throwaway public key from examples/keys), readiness succeeds and a token signed
  with the matching private key authenticates;
* when the IdP goes away again, the pod stays ready and keeps verifying new tokens with
  its cached keys (up to jwks.max_stale), while the failed fetches are counted.

Needs helm and the portcullis binary ($PORTCULLIS_BIN); skips without them, fails under
CI=true.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from test_chart import (  # noqa: F401  (helm and portcullis_bin are fixtures)
    FULLNAME,
    REPO,
    helm,
    one,
    portcullis_bin,
    render,
    server_container,
)

KEY_DIR = REPO / "examples" / "keys"
KID = "quickstart-es256"
SCENARIO = "minimal"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting until {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# A loopback identity provider: OpenID discovery and a JWKS.


def ec_public_jwk(pem_path: Path, kid: str) -> dict:
    """JWK of a P-256 SubjectPublicKeyInfo PEM: its last 65 bytes are 0x04 || X || Y."""
    der = base64.b64decode("".join(l for l in pem_path.read_text().splitlines() if not l.startswith("-----")))
    point = der[-65:]
    assert point[0] == 4 and len(der) == 91, "not an uncompressed P-256 public key"

    def b64url(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {"kty": "EC", "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:]),
            "kid": kid, "alg": "ES256", "use": "sig"}


class IdP:
    """Serves discovery and the JWKS on a fixed loopback port once started."""

    def __init__(self, port: int, jwk: dict):
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.jwks = {"keys": [jwk]}
        self.server: ThreadingHTTPServer | None = None
        self.requests = 0

    def start(self) -> None:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                idp.requests += 1
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": idp.issuer, "jwks_uri": f"{idp.issuer}/jwks.json"}
                elif self.path == "/jwks.json":
                    body = idp.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# --------------------------------------------------------------------------------------
# Probes, run as the kubelet runs them.


def grpc_health_status(port: int, service: str = "") -> int | None:
    """grpc.health.v1.Health/Check; the ServingStatus (1 SERVING, 2 NOT_SERVING), or None
    when the call fails. The messages are encoded by hand (one string, one enum field)."""
    import grpc  # noqa: PLC0415  (in requirements-test.txt)

    request = b""
    if service:
        raw = service.encode()
        request = b"\x0a" + bytes([len(raw)]) + raw
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            response = check(request, timeout=2)
        except grpc.RpcError:
            return None
    if not response:
        return 0
    assert response[0] == 0x08, response
    return response[1]


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


class Probes:
    """The rendered container's probes, aimed at the locally running server."""

    def __init__(self, container: dict, local_ports: dict[int, int]):
        self.container = container
        self.named = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.local_ports = local_ports

    def _port(self, port) -> int:
        container_port = self.named[port] if isinstance(port, str) else port
        return self.local_ports[container_port]

    def describe(self, name: str) -> str:
        probe = self.container[name]
        if "httpGet" in probe:
            return f"{name}: HTTP GET {probe['httpGet']['path']} on port {probe['httpGet']['port']}"
        return f"{name}: gRPC health on port {probe['grpc']['port']}"

    def succeeds(self, name: str) -> bool:
        probe = self.container[name]
        if "httpGet" in probe:
            code = http_status(self._port(probe["httpGet"]["port"]), probe["httpGet"]["path"])
            return code is not None and 200 <= code < 400
        if "grpc" in probe:
            grpc = probe["grpc"]
            return grpc_health_status(self._port(grpc["port"]), grpc.get("service", "")) == 1
        raise AssertionError(f"{name}: unsupported probe handler {probe}")


# --------------------------------------------------------------------------------------


class Server:
    def __init__(self, binary: str, config_path: Path, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([binary, "serve", "--config", str(config_path)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def sign_token(binary: str, issuer: str, audience: str, nonce: str) -> str:
    proc = subprocess.run([
        binary, "token", "sign", "--key", str(KEY_DIR / "quickstart-es256.key.pem"), "--alg", "ES256",
        "--kid", KID, "--iss", issuer, "--sub", "alice", "--aud", audience, "--claim", f"nonce={json.dumps(nonce)}",
    ], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def authenticate(binary: str, grpc_port: int, token: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "authenticate", "--addr", f"http://127.0.0.1:{grpc_port}", "--token", token],
                          capture_output=True, text=True, timeout=30)


def metric_value(admin_port: int, name: str, labels: dict[str, str]) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_probes_during_an_idp_outage(helm, portcullis_bin, tmp_path):
    docs = render(helm, SCENARIO)
    container = server_container(docs)
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])

    # The rendered config, moved to loopback: free listener ports, the issuer at a
    # discovery endpoint that is not listening yet, and short JWKS retry settings
    # (docs/configuration.md, issuers[].jwks) so the test takes seconds.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    local = {ports["grpc"]: free_port(), ports["admin"]: free_port()}
    config["server"]["grpc_listen"] = f"127.0.0.1:{local[ports['grpc']]}"
    config["server"]["admin_listen"] = f"127.0.0.1:{local[ports['admin']]}"
    (issuer,) = config["issuers"]
    assert issuer.get("discovery") is True, "the scenario's issuer should use OpenID discovery"
    idp = IdP(free_port(), ec_public_jwk(KEY_DIR / "quickstart-es256.pub.pem", KID))
    issuer["issuer"] = idp.issuer
    issuer["algorithms"] = ["ES256"]
    issuer["jwks"] = {"min_refresh": "1s", "max_refresh": "2s", "timeout": "1s"}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    probes = Probes(container, local)
    grpc_port, admin_port = local[ports["grpc"]], local[ports["admin"]]
    server = Server(portcullis_bin, config_path, tmp_path / "portcullis.log")
    try:
        # Startup: the kubelet allows periodSeconds x failureThreshold for the first success.
        startup = container["startupProbe"]
        window = startup["periodSeconds"] * startup["failureThreshold"]
        wait_until(lambda: not server.alive() or probes.succeeds("startupProbe"), min(window, 30),
                   "the startup probe succeeds")
        assert server.alive(), f"portcullis exited:\n{server.logs()}"

        # The IdP is down: for several probe periods the pod is alive but not ready.
        deadline = time.monotonic() + 4
        checks = 0
        while time.monotonic() < deadline:
            for name in ("startupProbe", "livenessProbe"):
                assert probes.succeeds(name), f"{probes.describe(name)} failed while the IdP was down " \
                                              f"(the kubelet would restart the container):\n{server.logs()}"
            assert not probes.succeeds("readinessProbe"), \
                f"{probes.describe('readinessProbe')} succeeded with no keys loaded"
            checks += 1
            time.sleep(0.3)
        assert checks >= 5
        assert server.alive()
        # Both readiness handlers agree.
        assert http_status(admin_port, "/readyz") == 503
        assert grpc_health_status(grpc_port) == 2
        assert metric_value(admin_port, "portcullis_jwks_fetches_total", {"result": "failure"}) >= 1

        # The IdP comes up: the fetcher's retry loads the keys and the pod becomes ready.
        idp.start()
        wait_until(lambda: probes.succeeds("readinessProbe"), 20, "readiness succeeds once the keys load")
        assert probes.succeeds("livenessProbe")
        assert http_status(admin_port, "/readyz") == 200
        audience = issuer["audiences"][0]
        ok = authenticate(portcullis_bin, grpc_port, sign_token(portcullis_bin, idp.issuer, audience, "first"))
        assert ok.returncode == 0, f"{ok.stdout}\n{ok.stderr}"
        assert json.loads(ok.stdout)["principal"]["issuer"] == issuer["name"]

        # The IdP goes away again: the pod stays ready and verifies new tokens with its
        # cached keys (stale-if-error, bounded by jwks.max_stale); failures are counted.
        idp.stop()
        failures = metric_value(admin_port, "portcullis_jwks_fetches_total", {"result": "failure"})
        wait_until(lambda: metric_value(admin_port, "portcullis_jwks_fetches_total", {"result": "failure"})
                   > failures, 15, "a refresh fails")
        for name in ("livenessProbe", "readinessProbe"):
            assert probes.succeeds(name), f"{probes.describe(name)} failed during the outage"
        ok = authenticate(portcullis_bin, grpc_port, sign_token(portcullis_bin, idp.issuer, audience, "second"))
        assert ok.returncode == 0, f"a new token was not verified from cached keys:\n{ok.stdout}\n{ok.stderr}"
    finally:
        idp.stop()
        server.stop()
