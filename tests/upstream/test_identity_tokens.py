"""Identity tokens, verified the way an upstream would: PyJWT and its ``PyJWKClient``.

Starts the real ``portcullis serve`` with ``response.identity_token`` and the forward-auth
listener, gets tokens minted for quickstart credentials (Envoy ``http_service`` route),
and has an upstream find the keys through OpenID discovery on the admin listener. Then
rotates the keys by rewriting the config file (hot reload), the way an operator would:

1. current A, next B: tokens are signed by A; the JWKS already holds B.
2. current B, next C, previous A: new tokens are signed by B, and the upstream that
   fetched the JWKS before the rotation verifies them without fetching again (B was
   published before it signed); tokens signed by A still verify.
3. current C, no previous: A and B are no longer published, so their tokens fail.

Also: a wrong audience, a tampered payload, and a client's own identity header.

Needs the portcullis binary ($PORTCULLIS_BIN); skips without it, fails under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = REPO / "tests" / "testdata" / "identity"
QUICKSTART_KEYS = REPO / "examples" / "keys"
IN_CI = os.environ.get("CI") == "true"
AUDIENCE = "orders-api"


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true, so this is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def portcullis_bin() -> str:
    path = Path(os.environ.get("PORTCULLIS_BIN", "target/debug/portcullis"))
    if not path.is_absolute():
        path = REPO / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        unavailable(f"portcullis binary not found at {path} (set PORTCULLIS_BIN or run `cargo build`)")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.05)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, {}, b""


class Portcullis:
    """The server binary on loopback ports, its config file rewritten to rotate keys."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.config = workdir / "portcullis.yaml"
        self.grpc, self.admin, self.http = free_port(), free_port(), free_port()
        self.issuer = f"http://127.0.0.1:{self.admin}"
        for name in ("ed25519-a", "ed25519-b", "ed25519-c"):
            shutil.copy(KEYS / f"{name}.pem", workdir / f"{name}.pem")
        self.workdir = workdir
        self.write(current="ed25519-a", next_key="ed25519-b", previous=[])
        self.process = subprocess.Popen(
            [binary, "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: get(f"{self.issuer}/readyz")[0] == 200, 30, "portcullis is ready")

    def write(self, current: str, next_key: str | None, previous: list[str]) -> None:
        identity = {
            "issuer": self.issuer,
            "signing_key": f"file:{self.workdir}/{current}.pem",
            "previous_signing_keys": [f"file:{self.workdir}/{p}.pem" for p in previous],
            "audience": "upstream",
            "audience_by_rule": {"orders-read": AUDIENCE},
            "claims": {"email": "email"},
            "ttl": "10m",
        }
        if next_key:
            identity["next_signing_key"] = f"file:{self.workdir}/{next_key}.pem"
        config = {
            "server": {
                "grpc_listen": f"127.0.0.1:{self.grpc}",
                "admin_listen": f"127.0.0.1:{self.admin}",
                "http_listen": f"127.0.0.1:{self.http}",
            },
            "issuers": [
                {
                    "name": "quickstart",
                    "issuer": "https://quickstart.portcullis.invalid",
                    "public_key_files": [
                        {
                            "path": str(QUICKSTART_KEYS / "quickstart-es256.pub.pem"),
                            "kid": "quickstart-es256",
                            "algorithm": "ES256",
                        }
                    ],
                    "audiences": ["api://quickstart"],
                    "algorithms": ["ES256"],
                }
            ],
            "authorization": {
                "default": "deny",
                "rules": [
                    {
                        "name": "orders-read",
                        "match": {"http": {"methods": ["GET"], "paths": ["/orders/**"]}},
                        "require": {"scopes_all": ["orders:read"]},
                    }
                ],
            },
            "response": {"identity_token": identity},
        }
        # JSON is YAML; written whole and renamed, as a ConfigMap update lands.
        staged = self.config.with_suffix(".tmp")
        staged.write_text(json.dumps(config))
        staged.replace(self.config)

    def credential(self, scope: str = "orders:read") -> str:
        return subprocess.run(
            [
                self.binary, "token", "sign",
                "--key", str(QUICKSTART_KEYS / "quickstart-es256.key.pem"),
                "--alg", "ES256", "--kid", "quickstart-es256",
                "--iss", "https://quickstart.portcullis.invalid",
                "--sub", "alice", "--aud", "api://quickstart", "--scope", scope,
                "--claim", "email=alice@example.com", "--claim", "salary=100000",
            ],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def identity_token(self, credential: str, path: str = "/orders/1") -> str:
        """What Envoy's http_service (or any forward-auth proxy) passes upstream."""
        status, headers, body = get(
            f"http://127.0.0.1:{self.http}/envoy{path}",
            {"Authorization": f"Bearer {credential}"},
        )
        assert status == 200, (status, body)
        return headers["x-identity-token"]

    def published_kids(self) -> set[str]:
        status, _, body = get(f"{self.issuer}/.well-known/jwks.json")
        return {key["kid"] for key in json.loads(body)["keys"]} if status == 200 else set()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Upstream:
    """A service behind the proxy: discovers the issuer's keys once, as a real one would."""

    def __init__(self, issuer: str):
        status, _, body = get(f"{issuer}/.well-known/openid-configuration")
        assert status == 200, status
        discovery = json.loads(body)
        assert discovery["issuer"] == issuer
        self.issuer = issuer
        self.algorithms = discovery["id_token_signing_alg_values_supported"]
        self.fetches = 0
        upstream = self

        class CountingClient(jwt.PyJWKClient):
            def fetch_data(self):
                upstream.fetches += 1
                return super().fetch_data()

        self.keys = CountingClient(discovery["jwks_uri"], cache_jwk_set=True, lifespan=3600)

    def verify(self, token: str, audience: str = AUDIENCE) -> dict:
        key = self.keys.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key.key,
            algorithms=self.algorithms,
            audience=audience,
            issuer=self.issuer,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
        )


@pytest.fixture()
def portcullis(portcullis_bin, tmp_path):
    server = Portcullis(portcullis_bin, tmp_path)
    yield server
    server.stop()


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def test_an_upstream_verifies_identity_tokens_through_discovery_across_a_key_rotation(portcullis):
    credential = portcullis.credential()
    kids = portcullis.published_kids()
    assert len(kids) == 2, "current and next are published"

    upstream = Upstream(portcullis.issuer)
    first = portcullis.identity_token(credential)
    claims = upstream.verify(first)
    assert claims["sub"] == "alice"
    assert claims["aud"] == AUDIENCE, "the audience of the rule that allowed"
    assert claims["credential_type"] == "JWT"
    assert claims["original_issuer"] == "quickstart"
    assert claims["scope"] == "orders:read"
    assert claims["email"] == "alice@example.com"
    assert "salary" not in claims, "only configured claims are copied"
    assert claims["exp"] - claims["iat"] <= 600
    assert upstream.fetches == 1
    assert portcullis.identity_token(credential, "/orders/2") == first, "a cached request does not sign again"

    # Rotation: B (published since the start) signs; A stays published as previous.
    old_kid = kid_of(first)
    portcullis.write(current="ed25519-b", next_key="ed25519-c", previous=["ed25519-a"])
    wait_until(lambda: len(portcullis.published_kids()) == 3, 15, "the rotation is served")
    second = portcullis.identity_token(credential)
    assert kid_of(second) != old_kid and kid_of(second) in kids, "the former next key signs"
    assert upstream.verify(second)["sub"] == "alice"
    assert upstream.fetches == 1, "the new signing key was already in the upstream's key set"
    fresh = Upstream(portcullis.issuer)
    assert fresh.verify(first)["sub"] == "alice", "tokens signed before the rotation still verify"

    # Retiring A and B: their tokens no longer verify for an upstream that fetches now.
    portcullis.write(current="ed25519-c", next_key=None, previous=[])
    wait_until(lambda: len(portcullis.published_kids()) == 1, 15, "the retirement is served")
    later = Upstream(portcullis.issuer)
    assert later.verify(portcullis.identity_token(credential))["sub"] == "alice"
    for retired in (first, second):
        with pytest.raises(jwt.PyJWKClientError):
            later.verify(retired)


def test_a_wrong_audience_or_a_tampered_token_is_refused(portcullis):
    upstream = Upstream(portcullis.issuer)
    token = portcullis.identity_token(portcullis.credential())
    with pytest.raises(jwt.InvalidAudienceError):
        upstream.verify(token, audience="billing-api")
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["sub"] = "mallory"
    forged = ".".join([header, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), signature])
    with pytest.raises(jwt.InvalidSignatureError):
        upstream.verify(forged)


def test_a_clients_own_identity_header_is_refused_not_passed_on(portcullis):
    upstream = Upstream(portcullis.issuer)
    credential = portcullis.credential()
    genuine = portcullis.identity_token(credential)
    status, headers, body = get(
        f"http://127.0.0.1:{portcullis.http}/envoy/orders/1",
        {"Authorization": f"Bearer {credential}", "X-Identity-Token": genuine},
    )
    assert status == 400, (status, body)
    assert "x-identity-token" not in headers
    assert upstream.verify(genuine)["sub"] == "alice"


def test_a_denied_request_gets_no_identity_token(portcullis):
    status, headers, _ = get(
        f"http://127.0.0.1:{portcullis.http}/envoy/orders/1",
        {"Authorization": f"Bearer {portcullis.credential(scope='profile')}"},
    )
    assert status == 403
    assert "x-identity-token" not in headers
