"""scripts/bench_tail.py, the open-loop tail-latency and cache-memory benchmark, without
running any load: its arithmetic (the least-squares slope, the server-side p99 bucket), its
report, and its command line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_tail.py"


@pytest.fixture(scope="module")
def tail():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_tail", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_slope_is_the_least_squares_fit(tail):
    assert tail.slope([(0, 100), (1, 102), (2, 104)]) == pytest.approx(2.0)
    # Noise around a line of slope 2500 bytes per token.
    points = [(0, 16_000_000), (50_000, 141_000_000), (100_000, 266_500_000), (150_000, 391_000_000)]
    assert tail.slope(points) == pytest.approx(2500, rel=0.01)
    assert tail.slope([(5, 1), (5, 2)]) == 0.0


def test_server_p99_is_the_bucket_holding_the_99th_percentile(tail):
    before = {"0.000025": 0, "0.0001": 0, "0.001": 0, "+Inf": 0}
    after = {"0.000025": 90, "0.0001": 99, "0.001": 100, "+Inf": 100}
    assert tail.benchlib.server_p99(before, after) == "0.100"
    assert tail.benchlib.server_p99(after, after) == "–"


def test_report_has_a_row_per_run_and_the_memory_slope(tail):
    args = tail.parse_args(["--seconds", "3"])
    scenario = tail.SCENARIOS[0]
    peak = {"throughput_rps": 1000.0}
    run = {"offered_rps": 500.0, "p50_us": 90, "p99_us": 400, "p999_us": 900, "max_us": 1200,
           "server_p99_ms": "0.025", "server_cpu_us": 20.5, "late_sends": 0, "shed": 7, "shed_p99_us": 80,
           "rss_mib": 21.5}
    readings = [(0, 10 * 2**20, 0), (1000, 10 * 2**20 + 2_000_000, 1000)]
    text = tail.report(args, [(scenario, peak, 0.5, run)], readings, 426)
    assert (f"| {scenario['name']} | 1000 | 50% | 500 | 90 | 400 | 900 | 1200 | 0.025 | 20.5 | 0 | 7 (80) "
            "| 21.5 |") in text
    assert "**2000 bytes per cached verification**" in text
    assert "426 characters" in text


def test_scenarios_name_known_servers_and_rpcs(tail):
    for scenario in tail.SCENARIOS:
        assert scenario["server"] in tail.SERVERS
        assert scenario["rpc"] in ("check", "authenticate", "health")
        assert scenario["token"] in ("es256", "rs256")


def test_help_describes_the_run():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    assert "open-loop" in out.stdout and "--tokens" in out.stdout
