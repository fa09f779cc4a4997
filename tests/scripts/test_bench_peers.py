"""scripts/bench_peers.py, the peers-side-by-side benchmark, without building or running any
system: the answer check (it rejects a system that allows what it must deny), the report, the
command line, and the three systems' configs in bench-peers/ (same issuer, audience, key,
algorithm and rule)."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_peers.py"
PEERS = REPO / "bench-peers"


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def right_answers(peers):
    """What a correct system answers to every case (denial statuses vary between systems)."""
    answers = []
    for case in peers.CASES:
        if case["allow"]:
            answers.append({"name": case["name"], "rpc_error": "", "grpc_code": 0, "allowed": True,
                            "http_status": 0, "headers": {"X-User-Id": peers.SUBJECT}})
        else:
            answers.append({"name": case["name"], "rpc_error": "", "grpc_code": 16, "allowed": False,
                            "http_status": 401, "headers": {}})
    return answers


def answer(answers, name):
    return next(a for a in answers if a["name"] == name)


# ---------------------------------------------------------------- the answer check
def test_the_cases_cover_the_required_denials(peers):
    names = {c["name"] for c in peers.CASES}
    assert {"allowed", "missing-scope", "expired", "tampered-signature", "no-token"} <= names
    assert [c["name"] for c in peers.CASES if c["allow"]] == ["allowed"]
    assert next(c for c in peers.CASES if c["name"] == "no-token")["token"] is None


def test_right_answers_pass(peers):
    assert peers.check_answers(peers.CASES, right_answers(peers)) == []


@pytest.mark.parametrize("case", ["missing-scope", "expired", "tampered-signature", "no-token",
                                  "other-audience", "other-method"])
def test_a_system_that_allows_a_denied_request_is_rejected(peers, case):
    answers = right_answers(peers)
    answer(answers, case).update(allowed=True, grpc_code=0, http_status=0)
    problems = peers.check_answers(peers.CASES, answers)
    assert len(problems) == 1 and problems[0].startswith(f"{case}: ALLOWED")


def test_a_system_that_denies_the_allowed_request_is_rejected(peers):
    answers = right_answers(peers)
    answer(answers, "allowed").update(allowed=False, grpc_code=7, http_status=403, headers={})
    assert peers.check_answers(peers.CASES, answers) == [
        "allowed: denied (gRPC status 7, HTTP 403), expected an allow"]


def test_an_allow_must_forward_the_subject(peers):
    answers = right_answers(peers)
    answer(answers, "allowed")["headers"] = {"x-user-id": "someone-else"}
    assert "without x-user-id" in peers.check_answers(peers.CASES, answers)[0]
    answer(answers, "allowed")["headers"] = {"x-user-id": peers.SUBJECT}  # any case of the name
    assert peers.check_answers(peers.CASES, answers) == []


def test_rpc_errors_and_missing_answers_are_not_denials(peers):
    answers = right_answers(peers)
    answer(answers, "expired").update(rpc_error="rpc error: code = Internal", grpc_code=13)
    answers = [a for a in answers if a["name"] != "no-token"]
    problems = peers.check_answers(peers.CASES, answers)
    assert problems == ["expired: RPC error instead of an answer: rpc error: code = Internal",
                        "no-token: no answer"]


def test_tamper_changes_one_signature_character(peers):
    token = "aGVhZA.Ym9keQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    tampered = peers.tamper(token)
    assert tampered != token and len(tampered) == len(token)
    assert tampered.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]
    assert sum(a != b for a, b in zip(tampered, token)) == 1
    assert peers.tamper("a.b.AAAA") == "a.b.AABA"


def test_cpu_per_request(peers):
    assert peers.cpu_per_request(250, 100_000, clk_tck=100) == 25.0
    assert peers.cpu_per_request(5, 0, clk_tck=100) == 50000.0  # no division by zero


# ---------------------------------------------------------------- the report
def run_result(rps, cpu, p99):
    return {"throughput_rps": rps, "server_cpu_us": cpu, "server_busy_pct": 99, "offered_rps": rps / 2,
            "p50_us": 150, "p99_us": p99, "p999_us": p99 * 2, "max_us": p99 * 3, "late_sends": 3,
            "foreign_pct": 1}


META = {"when": "2026-12-01T00:00Z", "commit": "abc1234", "machine": "2 vCPUs", "pinning": "pinned",
        "load": "10 s", "versions": "heimdall v0.17.18; OPA v1.22.3", "quiet": "off", "quiet_max_pct": 10}


def test_report_has_a_row_per_system_and_the_answers(peers):
    good = {"answers": right_answers(peers), "answers_ok": "7/7 right", "peak": run_result(40000, 20.0, 900),
            "distinct": run_result(9000, 98.5, 0), "half": run_result(20000, 19.0, 1200),
            "common": run_result(2000, 50.0, 800), "rss_idle_mib": 17.0, "rss_peak_mib": 19.5,
            "rss_distinct_mib": 25.0, "vmhwm_mib": 25.5, "foreign_pct_max": 12}
    bad_answers = right_answers(peers)
    answer(bad_answers, "expired").update(allowed=True)
    bad = {"answers": bad_answers, "problems": peers.check_answers(peers.CASES, bad_answers),
           "error": "wrong answers, not timed: expired: ALLOWED, expected a denial", "answers_ok": "6/7 right"}
    text = peers.report(META, {"portcullis": good, "opa": bad})
    assert "| portcullis | 7/7 right | 40000 | 20.0 | 99 | 9000 | 98.5 | 17.0 / 19.5 / 25.0 | 25.5 | 12 ⚠ |" in text
    assert "| portcullis | 50 % of its peak | 10000 | 150 | 1200 | 2400 | 3600 | 3 | 99 | 19.0 |" in text
    assert "| portcullis | common rate | 1000 | 150 | 800 | 1600 | 2400 | 3 | 99 | 50.0 |" in text
    assert "| opa | **wrong answers, not timed: expired: ALLOWED, expected a denial** |" in text
    assert "| portcullis | allow | deny 401 | deny 401 | deny 401 | deny 401 | deny 401 | deny 401 |" in text
    assert "| opa | allow | deny 401 | allow |" in text
    assert "- opa: wrong answer: expired: ALLOWED, expected a denial" in text
    assert "`bench-peers/portcullis.yaml`" in text and "`bench-peers/opa/policy.rego`" in text
    # Every table row has as many cells as its header.
    for table in re.findall(r"(?:^\|.*\|\n)+", text, re.M):
        rows = table.strip().splitlines()
        assert len({row.count("|") for row in rows}) == 1, rows


# ---------------------------------------------------------------- command line
def test_quick_and_default_arguments(peers):
    full = peers.parse_args([])
    assert (full.seconds, full.warmup_seconds, full.distinct_tokens, full.quiet_wait) == (10.0, 2.0, 20000, 600.0)
    assert full.system == list(peers.SYSTEMS)
    quick = peers.parse_args(["--quick"])
    assert (quick.seconds, quick.warmup_seconds, quick.distinct_tokens, quick.quiet_wait) == (2.0, 1.0, 2000, 0.0)
    assert peers.parse_args(["--quick", "--seconds", "5", "--system", "opa"]).seconds == 5.0
    assert peers.parse_args(["--system", "opa", "--system", "heimdall"]).system == ["opa", "heimdall"]


def test_render_prints_a_saved_run(peers, tmp_path):
    saved = tmp_path / "results.json"
    result = {"answers": right_answers(peers), "answers_ok": "7/7 right", "peak": run_result(5000, 160.0, 900)}
    saved.write_text(json.dumps({"meta": META, "results": {"heimdall": result}}))
    out = subprocess.run([sys.executable, str(SCRIPT), "--render", str(saved)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == peers.report(META, {"heimdall": result})
    assert "| heimdall | 7/7 right | 5000 | 160.0 | 99 | – | – | – / – / – | – | – |" in out.stdout


def test_dry_run_starts_nothing():
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dry run: nothing is built, started or written")
    for name in ("portcullis", "heimdall", "opa", "opa-jwt-cache", "tampered-signature"):
        assert name in out.stdout


# ---------------------------------------------------------------- the configs agree
def qs_constants(peers):
    return peers.benchlib.QS_ISSUER, peers.benchlib.QS_AUD, peers.benchlib.QS_KID


def test_jwks_is_the_quickstart_public_key(peers):
    _, _, kid = qs_constants(peers)
    jwks = json.loads((PEERS / "jwks.json").read_text())
    [key] = jwks["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["kid"], key["use"]) == ("EC", "P-256", "ES256", kid, "sig")
    assert "d" not in key  # public only
    pem = Path(peers.benchlib.QS_PUB).read_text()
    der = base64.b64decode("".join(line for line in pem.splitlines() if not line.startswith("-----")))
    point = der[-65:]
    assert point[0] == 4

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert (key["x"], key["y"]) == (b64(point[1:33]), b64(point[33:]))


def rendered(peers, path, **mapping):
    return yaml.safe_load(peers.render((PEERS / path).read_text(), mapping))


def test_portcullis_config(peers):
    issuer, audience, _ = qs_constants(peers)
    config = rendered(peers, "portcullis.yaml", grpc_port=1, admin_port=2, jwks_file="/x/jwks.json")
    assert config["server"]["grpc_listen"].startswith("127.0.0.1:")
    assert config["server"]["admin_listen"].startswith("127.0.0.1:")
    [iss] = config["issuers"]
    assert (iss["issuer"], iss["audiences"], iss["algorithms"], iss["jwks_file"]) == (
        issuer, [audience], ["ES256"], "/x/jwks.json")
    [rule] = config["authorization"]["rules"]
    assert rule["match"] == {"http": {"methods": ["GET"], "paths": ["/orders/*"]}}
    assert rule["require"] == {"scopes_all": ["orders:read"]}
    assert config["authorization"]["default"] == "deny"
    assert config["response"]["claims_to_headers"] == {"sub": "x-user-id"}


def test_heimdall_config_and_rules(peers):
    issuer, audience, _ = qs_constants(peers)
    config = rendered(peers, "heimdall/heimdall.yaml", grpc_port=1, management_port=2, metrics_port=3,
                      jwks_url="http://127.0.0.1:4/jwks.json", rules_file="/x/rules.yaml")
    assert config["serve"]["host"] == config["management"]["host"] == "127.0.0.1"
    assert config["log"]["access_log_enabled"] is False and config["tracing"]["enabled"] is False
    [jwt] = config["mechanisms"]["authenticators"]
    assert jwt["type"] == "jwt"
    assertions = jwt["config"]["assertions"]
    assert (assertions["issuers"], assertions["audience"], assertions["allowed_algorithms"]) == (
        [issuer], [audience], ["ES256"])
    assert jwt["config"]["jwks_endpoint"]["url"].startswith("http://127.0.0.1:")
    [finalizer] = config["mechanisms"]["finalizers"]
    assert finalizer["config"]["headers"] == {"X-User-Id": "{{ .Subject.ID }}"}
    assert config["providers"]["file_system"]["src"] == "/x/rules.yaml"
    rules = yaml.safe_load((PEERS / "heimdall" / "rules.yaml").read_text())
    assert "default_rule" not in config  # no match: denied
    [rule] = rules["rules"]
    assert rule["match"] == {"routes": [{"path": "/orders/:id"}], "methods": ["GET"]}
    assert rule["execute"][0] == {"authenticator": jwt["id"],
                                  "config": {"assertions": {"scopes": ["orders:read"]}}}
    assert rule["execute"][1] == {"finalizer": finalizer["id"]}


def test_opa_policy(peers):
    issuer, audience, _ = qs_constants(peers)
    policy = (PEERS / "opa" / "policy.rego").read_text()
    assert re.search(r"^package envoy\.authz$", policy, re.M)
    assert f'issuer := "{issuer}"' in policy and f'audience := "{audience}"' in policy
    for fragment in ('"cert": data.jwks', '"alg": "ES256"', '"iss": issuer', '"aud": audience',
                     'http_request.method == "GET"', 'glob.match("/orders/*", ["/"], http_request.path)',
                     '"orders:read" in split(claims.scope, " ")', 'default allow := false',
                     '{"x-user-id": claims.sub}'):
        assert fragment in policy, fragment
    # The server's default decision path is the policy's result object.
    main = (PEERS / "opa-extauthz" / "main.go").read_text()
    assert '"envoy/authz/result"' in main and "result[" in policy


def test_every_template_renders_with_what_the_script_fills_in(peers):
    source = SCRIPT.read_text()
    for template, names in (("portcullis.yaml", {"grpc_port", "admin_port", "jwks_file"}),
                            ("heimdall/heimdall.yaml", {"grpc_port", "management_port", "metrics_port",
                                                        "jwks_url", "rules_file"})):
        text = (PEERS / template).read_text()
        found = {m.group("named") or m.group("braced") for m in peers.string.Template.pattern.finditer(text)
                 if m.group("named") or m.group("braced")}
        assert found == names, template
        for name in names:
            assert f"{name}=" in source, name


def test_versions_are_pinned(peers):
    assert peers.HEIMDALL_VERSION == "v0.17.18"
    assert peers.OPA_VERSION == "v1.22.3"
    go_mod = PEERS / "opa-extauthz" / "go.mod"
    assert peers.go_mod_version(go_mod, "github.com/envoyproxy/go-control-plane/envoy") == "v1.40.0"
    probe_mod = PEERS / "probe" / "go.mod"
    assert peers.go_mod_version(probe_mod, "github.com/envoyproxy/go-control-plane/envoy") == "v1.40.0"
    for module_dir in ("opa-extauthz", "probe"):
        assert (PEERS / module_dir / "go.sum").is_file()


def test_build_output_is_ignored_by_git(peers):
    for path in (peers.BIN_DIR, peers.BUILD_DIR):
        out = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, timeout=30)
        assert out.returncode == 0, path
