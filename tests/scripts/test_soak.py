"""scripts/soak.py, the soak run, without running it: the pass/fail verdict, the report, and
the JWK it derives from an openssl key."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("soak", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def run_of(errors=0, wrong=0, applied=60, rss_last=20_000, fds_last=30, alive=True, shed=0):
    readings = [{"t": 0, "rss_kib": 15_000, "fds": 20}, {"t": 60, "rss_kib": 19_000, "fds": 30},
                {"t": 300, "rss_kib": 19_500, "fds": 30}, {"t": 610, "rss_kib": rss_last, "fds": fds_last}]
    return {"peak_rps": 10000.0, "rate": 8000, "seconds": 600.0, "reloads_written": 60,
            "reloads_applied": applied, "rotations": 10, "jwks_fetches": 11, "server_alive": alive,
            "readings": readings,
            "result": {"completed": 4_800_000, "errors": errors, "wrong": wrong, "shed": shed, "p50_us": 150,
                       "p99_us": 900, "p999_us": 5000, "max_us": 9000}}


def test_a_clean_run_passes_and_says_so(soak):
    args = soak.parse_args([])
    run = run_of()
    assert soak.verdict(args, run) == []
    text = soak.report(args, run, [])
    assert "verdict: PASS" in text
    assert "60 written, 60 applied" in text


@pytest.mark.parametrize("change, failure", [
    ({"errors": 3}, "3 errors"),
    ({"wrong": 1}, "1 wrong"),
    ({"shed": 5}, "5 shed"),
    ({"applied": 59}, "59 of 60 reloads applied"),
    ({"rss_last": 40_000}, "rss_kib grew"),
    ({"fds_last": 80}, "fds grew"),
    ({"alive": False}, "the server exited"),
])
def test_each_failure_is_named(soak, change, failure):
    args = soak.parse_args([])
    failures = soak.verdict(args, run_of(**change))
    assert any(failure in f for f in failures), failures
    assert "FAIL" in soak.report(args, run_of(**change), failures)


def test_the_jwk_is_the_keys_public_point(soak, tmp_path):
    path, jwk = soak.new_key(str(tmp_path), "k1")
    assert Path(path).read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["kid"]) == ("EC", "P-256", "ES256", "k1")
    for coordinate in ("x", "y"):
        raw = base64.urlsafe_b64decode(jwk[coordinate] + "=" * (-len(jwk[coordinate]) % 4))
        assert len(raw) == 32
    assert "d" not in jwk, "never the private part"
