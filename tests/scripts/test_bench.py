"""scripts/bench.py, the load benchmark, without running any load: its scenario table is
well-formed (every scenario names a known server kind and a valid method, and its request
uses only the credentials a run mints), and --list and --dry-run work without starting or
writing anything."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_scenario_table_is_well_formed(bench):
    assert bench.validate() == []
    names = [s["name"] for s in bench.SCENARIOS]
    assert len(names) == len(set(names))
    assert bench.FLOOR in names
    for s in bench.SCENARIOS:
        assert s["server"] in bench.SERVERS, s
        assert s["method"] in bench.METHODS, s
        assert isinstance(bench.expect_of(s), dict), s
        request = bench.substitute(s["request"], {c: f"<{c}>" for c in bench.CREDENTIALS})
        assert "$" not in json.dumps(request), s
    assert any(s.get("half") for s in bench.SCENARIOS)
    assert {s.get("sig") for s in bench.SCENARIOS} >= set(bench.SIG_ALGS)


def test_validate_reports_mistakes(bench):
    bad = [
        {"name": "floor", "server": "cached", "method": bench.HEALTH, "request": {}},
        {"name": "floor", "server": "nope", "method": "x.Y/Z", "request": {"a": "$secret"},
         "half": "yes", "sig": "hs256", "typo": 1},
    ]
    problems = "\n".join(bench.validate(bad))
    for fragment in ("duplicate name", "server 'nope'", "method 'x.Y/Z'", "unknown credentials ['secret']",
                     "`half`", "sig 'hs256'", "unknown keys ['typo']"):
        assert fragment in problems


def test_list(bench):
    out = run("--list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["scenario", "server", "method"]
    assert [line.split()[0] for line in lines[1:]] == [s["name"] for s in bench.SCENARIOS]


def test_dry_run_starts_and_writes_nothing(bench, tmp_path):
    out_dir = tmp_path / "out"
    out = run("--dry-run", "--only", "uncached-es256", "--only", "floor", "--duration", "3s",
              "--warmup", "1s", "--out", str(out_dir), "--bin", str(tmp_path / "missing"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "cargo build --release --bin portcullis" in text
    assert "floor on uncached" in text and "uncached-es256 on uncached" in text
    assert "cached-es256 on cached" not in text
    assert text.count("--call portcullis.v1.Auth/Authenticate") == 2  # the run and its half-rate run
    assert "--rps" in text and "-c 16" in text
    assert "otlp sink: not needed" in text
    assert not out_dir.exists()
    full = run("--dry-run", "--skip-build", "--out", str(out_dir))
    assert full.returncode == 0, full.stderr
    assert "build: skipped" in full.stdout
    for s in bench.SCENARIOS:
        assert f"{s['name']} on {s['server']}" in full.stdout
    assert not out_dir.exists()


def test_bad_flags_are_refused():
    assert run("--only", "no-such-scenario", "--dry-run").returncode == 2
    assert run("--duration", "ten", "--dry-run").returncode == 2
    assert run("--concurrency", "2", "--dry-run").returncode == 2  # < --connections
