"""Tests for the Helm chart helm/portcullis.

What they hold the chart to:

* ``helm lint --strict`` passes with the default values and every ``ci/*-values.yaml``;
* every manifest rendered from those values validates offline against the Kubernetes
  OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors) for the oldest
  Kubernetes the chart supports and a current one; the ServiceMonitor against a strict
  subset of its CRD schema (tests/helm/schemas/);
* the rendered objects have the properties the chart promises (hardened security
  context, probes that no upstream outage can fail except readiness, ports, the config mounted as a directory, secrets mounted as
  directories and every ``file:``/``env:`` reference in the config backed by a mount or a
  variable, no restart on a hot-reloadable config change, ...);
* values.schema.json is strict and rejects what it should, and values.yaml is commented;
* the rendered config.yaml passes ``portcullis check-config --offline``, and the rules of
  each scenario with a ``ci/policy-tests/SCENARIO.yaml`` pass ``portcullis policy test``;
* the bare defaults (no credential source) are refused with a clear message;
* the optional Certificate, PrometheusRule (only documented metrics), dashboard,
  extraObjects and NetworkPolicy presets render as promised;
* helm/portcullis/README.md is what helm-docs generates from values.yaml.

Run with the test venv: ``.tools/venv/bin/python -m pytest tests/helm``
(``scripts/provision/python.sh`` and ``scripts/provision/helm.sh`` install the tools).
When helm, kubernetes-validate or the portcullis binary is missing the affected tests
skip with a message, except under CI=true, where they fail.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "portcullis"
SCENARIOS_DIR = CHART / "ci"
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"

RELEASE = "pc"
NAMESPACE = "auth"
FULLNAME = "pc-portcullis"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion; native gRPC probes
# are GA from 1.27) and the newest that the pinned kubernetes-validate ships.
KUBE_VERSIONS = ["1.27.0", "1.37.0"]
RENDER_KUBE_VERSION = KUBE_VERSIONS[0]

# Kinds that are not in the Kubernetes schemas: validated against our subset schema.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager-v1.json",
}

CONFIG_DIR = "/etc/portcullis/config"
CONFIG_PATH = CONFIG_DIR + "/config.yaml"
SECRETS_ROOT = "/etc/portcullis/secrets"

# The top-level config keys of SPEC section 6.
SPEC_CONFIG_KEYS = {
    "server", "issuers", "api_keys", "basic", "credentials", "cache",
    "authorization", "response", "telemetry",
}
# Config keys whose values are secret: they must be env:NAME or file:/path references.
SECRET_VALUED_KEYS = {"hmac_secret", "client_secret", "password", "secret", "token"}

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    """A tool the tests need is missing: fail under CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true, so this is a failure, not a skip)")
    pytest.skip(message)


# --------------------------------------------------------------------------------------
# Tools


def _is_helm3(path: str) -> bool:
    try:
        out = subprocess.run([path, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip().startswith("v3.")


@functools.lru_cache(maxsize=None)
def find_helm() -> str | None:
    candidates = [os.environ.get("HELM", ""), shutil.which("helm") or "", str(REPO / ".tools" / "bin" / "helm")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and _is_helm3(candidate):
            return candidate
    return None


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if path is None:
        unavailable("helm v3 not found (HELM, PATH, .tools/bin/helm); run scripts/provision/helm.sh")
    return path


@pytest.fixture(scope="session")
def kubernetes_validate():
    try:
        import kubernetes_validate as kv  # noqa: PLC0415
    except ImportError:
        unavailable("kubernetes-validate not installed; run scripts/provision/python.sh "
                    "and use .tools/venv/bin/python")
    return kv


@pytest.fixture(scope="session")
def jsonschema_mod():
    try:
        import jsonschema  # noqa: PLC0415
    except ImportError:
        unavailable("jsonschema not installed (comes with kubernetes-validate); run scripts/provision/python.sh")
    return jsonschema


@pytest.fixture(scope="session")
def portcullis_bin() -> str:
    raw = os.environ.get("PORTCULLIS_BIN", "target/debug/portcullis")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        unavailable(f"portcullis binary not found at {path} (set PORTCULLIS_BIN or run `cargo build`)")
    return str(path)


# --------------------------------------------------------------------------------------
# Rendering


def scenario_files() -> list[Path]:
    return sorted(SCENARIOS_DIR.glob("*-values.yaml"))


# Every ci/*-values.yaml. The chart's bare defaults are not a scenario: they configure no
# credential source, and the chart refuses to install them (see test_no_credential_source).
SCENARIOS = [p.name.removesuffix("-values.yaml") for p in scenario_files()]
DEFAULT_SCENARIO = "minimal"


def scenario_args(scenario: str) -> list[str]:
    return [] if scenario == "default" else ["-f", str(SCENARIOS_DIR / f"{scenario}-values.yaml")]


def run_helm(helm: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


@functools.lru_cache(maxsize=None)
def _render(helm: str, scenario: str, extra: tuple[str, ...]) -> tuple[int, str, str]:
    proc = run_helm(helm, [
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--kube-version", RENDER_KUBE_VERSION, *scenario_args(scenario), *extra,
    ])
    return proc.returncode, proc.stdout, proc.stderr


def render(helm: str, scenario: str = DEFAULT_SCENARIO, *extra: str) -> list[dict]:
    """Render the chart and return its documents (empty documents dropped)."""
    code, out, err = _render(helm, scenario, tuple(extra))
    assert code == 0, f"helm template failed for {scenario} {extra}:\n{err}"
    return [d for d in yaml.safe_load_all(out) if d]


def render_error(helm: str, scenario: str = DEFAULT_SCENARIO, *extra: str) -> str:
    """Render the chart expecting failure; return helm's error output."""
    code, out, err = _render(helm, scenario, tuple(extra))
    assert code != 0, f"helm template unexpectedly succeeded for {scenario} {extra}:\n{out[:2000]}"
    return err


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def server_container(docs: list[dict]) -> dict:
    containers = server_pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["portcullis"]
    return containers[0]


def helm_test_pod(docs: list[dict]) -> dict:
    pods = [d for d in by_kind(docs, "Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(pods) == 1, "expected one helm test pod"
    return pods[0]


def rendered_config(docs: list[dict]) -> dict:
    cm = one(docs, "ConfigMap", f"{FULLNAME}-config")
    assert set(cm["data"]) == {"config.yaml"}
    return yaml.safe_load(cm["data"]["config.yaml"])


def load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


def coalesce(base: Any, override: Any) -> Any:
    """Helm's merge of user values over defaults: maps merge, null deletes, else replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = coalesce(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def scenario_values(scenario: str) -> dict:
    values = load_yaml(CHART / "values.yaml")
    if scenario != "default":
        values = coalesce(values, load_yaml(SCENARIOS_DIR / f"{scenario}-values.yaml") or {})
    return values


def walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Yield (path, value) for every scalar in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))
    else:
        yield path, node


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


# --------------------------------------------------------------------------------------
# helm lint and Kubernetes schema validation


def test_scenarios_exist():
    names = set(SCENARIOS)
    for expected in ("minimal", "tls", "cert-manager", "postgres", "existing-secrets", "identity-token", "autoscaling-off",
                     "monitoring", "api-keys-basic"):
        assert expected in names, f"missing ci/{expected}-values.yaml"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(helm, scenario):
    proc = run_helm(helm, ["lint", "--strict", str(CHART), "--kube-version", RENDER_KUBE_VERSION,
                           *scenario_args(scenario)])
    assert proc.returncode == 0, f"helm lint --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_validate_against_kubernetes_schemas(helm, kubernetes_validate, jsonschema_mod, scenario):
    docs = render(helm, scenario)
    assert docs, "nothing rendered"
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if crd:
            schema = json.loads((SCHEMAS_DIR / crd).read_text())
            errors = sorted(jsonschema_mod.Draft202012Validator(schema).iter_errors(doc), key=str)
            assert not errors, f"{where}: " + "; ".join(
                f"{dotted(tuple(e.absolute_path))}: {e.message}" for e in errors)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where} invalid for Kubernetes {version}: {dotted(tuple(e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                pytest.fail(f"{where}: {e.message} (add a schema for it to CRD_SCHEMAS)")
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds


def test_every_object_is_namespaced_and_labelled(helm):
    for scenario in SCENARIOS:
        for doc in render(helm, scenario):
            meta = doc["metadata"]
            assert meta.get("namespace") == NAMESPACE, f"{scenario}: {doc['kind']} has no namespace"
            labels = meta.get("labels", {})
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                        "app.kubernetes.io/version", "app.kubernetes.io/component", "helm.sh/chart"):
                assert key in labels, f"{scenario}: {doc['kind']}/{meta['name']} lacks label {key}"


# --------------------------------------------------------------------------------------
# The Deployment


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_context_is_hardened(helm, scenario):
    docs = render(helm, scenario)
    pod = server_pod_spec(docs)
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in [server_container(docs), helm_test_pod(docs)["spec"]["containers"][0]]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == 65532
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not sc.get("privileged", False)
    # The root filesystem is read-only: /tmp is a bounded emptyDir.
    tmp = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert tmp and "emptyDir" in tmp[0]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_serve_command_and_config_mounted_as_directory(helm, scenario):
    docs = render(helm, scenario)
    container = server_container(docs)
    assert container["command"] == ["portcullis"]
    assert container["args"][:3] == ["serve", "--config", CONFIG_PATH]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_mount = mounts[CONFIG_DIR]
    # A directory mount: the kubelet swaps ConfigMap contents atomically and the new file
    # reaches the pod; a subPath mount would never see an update (no hot reload).
    assert "subPath" not in config_mount and "subPathExpr" not in config_mount
    assert config_mount.get("readOnly") is True
    volume = next(v for v in server_pod_spec(docs)["volumes"] if v["name"] == config_mount["name"])
    assert volume["configMap"]["name"] == f"{FULLNAME}-config"
    assert "items" not in volume["configMap"]
    # No mount anywhere uses subPath: secrets hot-reload the same way.
    for m in container["volumeMounts"]:
        assert "subPath" not in m, f"{m['mountPath']} uses subPath; updates would never reach the pod"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_configmap_renders_values_config_verbatim(helm, scenario):
    docs = render(helm, scenario)
    assert rendered_config(docs) == scenario_values(scenario)["config"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ports(helm, scenario):
    docs = render(helm, scenario)
    ports = {p["name"]: p for p in server_container(docs)["ports"]}
    assert set(ports) == {"grpc", "admin"}
    assert ports["grpc"]["containerPort"] == 50051
    assert ports["admin"]["containerPort"] == 9090
    svc = one(docs, "Service", FULLNAME)
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["grpc"]["port"] == 50051 and svc_ports["grpc"]["targetPort"] == "grpc"
    assert svc_ports["admin"]["port"] == 9090 and svc_ports["admin"]["targetPort"] == "admin"
    assert svc_ports["grpc"]["appProtocol"] == "grpc"


def test_ports_follow_the_listen_addresses(helm):
    docs = render(helm, DEFAULT_SCENARIO, "--set", "config.server.grpc_listen=[::]:7000",
                  "--set", "config.server.admin_listen=0.0.0.0:7001")
    ports = {p["name"]: p["containerPort"] for p in server_container(docs)["ports"]}
    assert ports == {"grpc": 7000, "admin": 7001}
    assert server_container(docs)["readinessProbe"]["grpc"]["port"] == 7000
    # The Service keeps its own ports and targets the named container ports.
    svc_ports = {p["name"]: p["port"] for p in one(docs, "Service", FULLNAME)["spec"]["ports"]}
    assert svc_ports == {"grpc": 50051, "admin": 9090}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes(helm, scenario):
    docs = render(helm, scenario)
    container = server_container(docs)
    tls = bool((scenario_values(scenario)["config"].get("server") or {}).get("tls"))
    # Startup and liveness never depend on an upstream: /healthz answers as soon as the
    # process serves, so an unreachable IdP or database cannot get the container restarted.
    for name in ("startupProbe", "livenessProbe"):
        probe = container[name]
        assert probe["httpGet"] == {"path": "/healthz", "port": "admin"}, name
        assert "grpc" not in probe
    readiness = container["readinessProbe"]
    if tls:
        # The kubelet's gRPC probe has no TLS: readiness asks the admin port's /readyz.
        assert "grpc" not in readiness
        assert readiness["httpGet"] == {"path": "/readyz", "port": "admin"}
    else:
        # Native gRPC probe: grpc.health.v1 is SERVING only once keys are loaded.
        assert readiness["grpc"] == {"port": 50051}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 30


def test_probe_type_can_be_forced(helm):
    http = server_container(render(helm, DEFAULT_SCENARIO, "--set", "probes.type=http"))
    assert http["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    grpc = server_container(render(helm, "tls", "--set", "probes.type=grpc"))
    assert grpc["readinessProbe"]["grpc"] == {"port": 50051}
    # The probe type is readiness' only: startup and liveness stay on /healthz.
    for container in (http, grpc):
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_forward_auth_port_follows_http_listen(helm):
    """No forward-auth port unless config.server.http_listen is set; then the container port
    follows the address, the Service serves service.ports.http, and the NetworkPolicy opens it
    to networkPolicy.ingress.httpFrom."""
    docs = render(helm, DEFAULT_SCENARIO)
    assert "http" not in {p["name"] for p in server_container(docs)["ports"]}
    assert "http" not in {p["name"] for p in one(docs, "Service", FULLNAME)["spec"]["ports"]}
    proxies = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    docs = render(helm, DEFAULT_SCENARIO, "--set", "config.server.http_listen=0.0.0.0:7080",
                  "--set", "networkPolicy.enabled=true",
                  "--set-json", f"networkPolicy.ingress.httpFrom={json.dumps(proxies)}")
    ports = {p["name"]: p["containerPort"] for p in server_container(docs)["ports"]}
    assert ports["http"] == 7080
    svc = {p["name"]: p for p in one(docs, "Service", FULLNAME)["spec"]["ports"]}
    assert (svc["http"]["port"], svc["http"]["targetPort"]) == (8080, "http")
    rules = one(docs, "NetworkPolicy", FULLNAME)["spec"]["ingress"]
    http_rule = next(r for r in rules if r["ports"][0]["port"] == 7080)
    assert http_rule["from"] == proxies


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_resources_and_spread(helm, scenario):
    docs = render(helm, scenario)
    resources = server_container(docs)["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    pod = server_pod_spec(docs)
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    keys = set()
    for tsc in pod["topologySpreadConstraints"]:
        assert tsc["labelSelector"]["matchLabels"] == selector
        keys.add(tsc["topologyKey"])
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_selectors_pick_server_pods_only(helm):
    docs = render(helm, "monitoring")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    test_labels = helm_test_pod(docs)["metadata"]["labels"]

    def selects(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    selectors = {
        "Deployment": one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
        "Service": one(docs, "Service", FULLNAME)["spec"]["selector"],
        "PodDisruptionBudget": one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selects(selector, pod_labels), f"{kind} does not select the server pods"
        assert not selects(selector, test_labels), f"{kind} selects the helm test pod"
    sm_selector = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert selects(sm_selector, one(docs, "Service", FULLNAME)["metadata"]["labels"])


# --------------------------------------------------------------------------------------
# Hot reload versus restarts


def pod_template(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]


def test_hot_reloadable_config_change_does_not_restart_pods(helm):
    base = render(helm)
    annotations = pod_template(base)["metadata"]["annotations"]
    assert "checksum/config" not in annotations
    assert "checksum/server-config" in annotations
    changed = render(helm, DEFAULT_SCENARIO, "--set", "config.cache.max_ttl=10m",
                     "--set", "config.authorization.default=deny")
    assert rendered_config(changed)["cache"]["max_ttl"] == "10m"
    assert pod_template(changed) == pod_template(base), \
        "a hot-reloadable config change altered the pod template (it would restart every pod)"


def test_listener_or_tls_change_rolls_pods(helm):
    base = pod_template(render(helm))["metadata"]["annotations"]["checksum/server-config"]
    moved = render(helm, DEFAULT_SCENARIO, "--set", "config.server.admin_listen=0.0.0.0:9191")
    assert pod_template(moved)["metadata"]["annotations"]["checksum/server-config"] != base
    tls = pod_template(render(helm, "tls"))["metadata"]["annotations"]["checksum/server-config"]
    assert tls != base


def test_env_secret_change_rolls_pods(helm):
    # Environment variables are read at start, so a changed chart-created env Secret
    # must restart the pods.
    a = render(helm, DEFAULT_SCENARIO, "--set", "secrets.env.values.IDP_CLIENT_SECRET=one")
    b = render(helm, DEFAULT_SCENARIO, "--set", "secrets.env.values.IDP_CLIENT_SECRET=two")
    ca = pod_template(a)["metadata"]["annotations"]["checksum/env-secret"]
    cb = pod_template(b)["metadata"]["annotations"]["checksum/env-secret"]
    assert ca != cb


def test_rollout_on_config_change_opt_in(helm):
    a = render(helm, DEFAULT_SCENARIO, "--set", "rolloutOnConfigChange=true")
    b = render(helm, DEFAULT_SCENARIO, "--set", "rolloutOnConfigChange=true", "--set", "config.cache.max_ttl=10m")
    ca = pod_template(a)["metadata"]["annotations"]["checksum/config"]
    cb = pod_template(b)["metadata"]["annotations"]["checksum/config"]
    assert ca != cb


# --------------------------------------------------------------------------------------
# Secrets


def container_env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_config_references_are_backed_by_mounts_and_env(helm, scenario):
    """Every file the config names is in a mounted volume (and in the Secret, when the
    chart creates it); every env:NAME is provided to the container."""
    docs = render(helm, scenario)
    container = server_container(docs)
    pod = server_pod_spec(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    env_names = container_env_names(container)
    env_from = container.get("envFrom", [])

    for path, value in walk(rendered_config(docs)):
        if not isinstance(value, str):
            continue
        key = next((p for p in reversed(path) if isinstance(p, str)), "")
        file_path = None
        if value.startswith("file:"):
            file_path = value[len("file:"):]
        elif value.startswith("/") and ("file" in key):
            file_path = value
            assert file_path.startswith("/etc/portcullis/"), f"{dotted(path)}: {value} is outside /etc/portcullis"
        if file_path:
            mount = next((m for m in mounts if file_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
            assert mount, f"{scenario}: {dotted(path)} names {file_path}, which no volume mounts"
            rel = file_path[len(mount["mountPath"].rstrip("/")) + 1:]
            source = volumes[mount["name"]].get("secret")
            if source:
                assert mount["mountPath"].startswith(SECRETS_ROOT + "/")
                if source.get("items"):
                    assert rel in {i["path"] for i in source["items"]}, f"{dotted(path)}: {rel} not projected"
                created = secrets.get(source["secretName"])
                if created:
                    assert rel in created["data"], f"{dotted(path)}: {rel} missing from Secret {source['secretName']}"
        if value.startswith("env:"):
            name = value[len("env:"):]
            if name in env_names:
                continue
            providers = []
            for src in env_from:
                ref = src.get("secretRef") or src.get("configMapRef") or {}
                created = secrets.get(ref.get("name", ""))
                if created is None or name in created["data"]:
                    providers.append(ref.get("name"))
            assert providers, f"{scenario}: {dotted(path)} needs ${name}, which nothing provides"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_inline_secret_values_in_config(helm, scenario):
    for path, value in walk(rendered_config(render(helm, scenario))):
        key = next((p for p in reversed(path) if isinstance(p, str)), "")
        is_secret = key in SECRET_VALUED_KEYS or (key == "url" and "postgres" in path)
        if is_secret:
            assert isinstance(value, str) and value.startswith(("env:", "file:")), \
                f"{scenario}: {dotted(path)} holds a secret inline; use env:NAME or file:/path"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secrets_are_directory_mounts_under_secrets_root(helm, scenario):
    docs = render(helm, scenario)
    container = server_container(docs)
    volumes = {v["name"]: v for v in server_pod_spec(docs)["volumes"]}
    for m in container["volumeMounts"]:
        if "secret" in volumes[m["name"]]:
            assert m["mountPath"].startswith(SECRETS_ROOT + "/")
            assert m.get("readOnly") is True
            assert "subPath" not in m


def test_default_install_creates_no_secrets(helm):
    docs = render(helm)
    assert by_kind(docs, "Secret") == []
    assert not [m for m in server_container(docs)["volumeMounts"] if m["mountPath"].startswith(SECRETS_ROOT)]


def test_existing_secrets_are_referenced_not_created(helm):
    docs = render(helm, "existing-secrets")
    assert by_kind(docs, "Secret") == []
    pod = server_pod_spec(docs)
    secret_names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert {"portcullis-api-keys", "portcullis-htpasswd", "portcullis-jwt", "partner-idp-keys"} <= secret_names
    assert {"secretRef": {"name": "portcullis-env"}} in server_container(docs)["envFrom"]


def test_chart_created_secrets(helm):
    docs = render(helm, "api-keys-basic")
    names = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    assert set(names) == {f"{FULLNAME}-api-keys", f"{FULLNAME}-htpasswd", f"{FULLNAME}-jwt", f"{FULLNAME}-env"}
    assert "IDP_CLIENT_SECRET" in names[f"{FULLNAME}-env"]["data"]
    assert {"secretRef": {"name": f"{FULLNAME}-env"}} in server_container(docs)["envFrom"]


def test_tls_secret_mounted(helm):
    docs = render(helm, "tls")
    mounts = {m["mountPath"]: m for m in server_container(docs)["volumeMounts"]}
    assert f"{SECRETS_ROOT}/tls" in mounts


def test_existing_secret_and_files_conflict(helm):
    err = render_error(helm, DEFAULT_SCENARIO, "--set", "secrets.jwt.existingSecret=x",
                       "--set", "secrets.jwt.files.k=v")
    assert "existingSecret or files" in err


# --------------------------------------------------------------------------------------
# Scaling, disruption, monitoring, network


def test_hpa_owns_replicas_by_default(helm):
    docs = render(helm)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in one(docs, "Deployment")["spec"]


def test_autoscaling_off(helm):
    docs = render(helm, "autoscaling-off")
    assert by_kind(docs, "HorizontalPodAutoscaler") == []
    assert one(docs, "Deployment")["spec"]["replicas"] == 3
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    headless = one(docs, "Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]


def test_pdb_default(helm):
    pdb = one(render(helm), "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1


def test_optional_objects_off_by_default(helm):
    docs = render(helm)
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "NetworkPolicy", "PrometheusRule", "Certificate"}, kinds
    assert {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")} == {f"{FULLNAME}-config"}


def test_servicemonitor(helm):
    sm = one(render(helm, "monitoring"), "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_servicemonitor_relabelings_are_opt_in(helm):
    # The scenarios carry no relabeling: Portcullis exports only portcullis_* metrics, so
    # a drop rule for other families (go_*, process_*) would match nothing.
    for scenario in SCENARIOS:
        for sm in by_kind(render(helm, scenario), "ServiceMonitor"):
            for endpoint in sm["spec"]["endpoints"]:
                assert "metricRelabelings" not in endpoint and "relabelings" not in endpoint


def test_networkpolicy(helm):
    docs = render(helm, "monitoring")
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    rules = {r["ports"][0]["port"]: r for r in np["spec"]["ingress"]}
    assert set(rules) == {50051, 9090}
    grpc_from = rules[50051]["from"]
    # The helm test pod may still reach the gRPC port.
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "test"
               for p in grpc_from)
    egress = one(render(helm, "postgres"), "NetworkPolicy")
    assert "Egress" in egress["spec"]["policyTypes"]
    ports = {p["port"] for rule in egress["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 5432, 443} <= ports


# --------------------------------------------------------------------------------------
# helm test


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_test_pod(helm, scenario):
    docs = render(helm, scenario)
    pod = helm_test_pod(docs)
    assert pod["spec"]["restartPolicy"] == "Never"
    container = pod["spec"]["containers"][0]
    tls = bool((scenario_values(scenario)["config"].get("server") or {}).get("tls"))
    scheme = "https" if tls else "http"
    assert container["command"][:6] == [
        "portcullis", "authenticate", "--addr", f"{scheme}://{FULLNAME}:50051",
        "--expect-reason", "MISSING_CREDENTIAL",
    ]
    assert container["image"] == server_container(docs)["image"]
    if scenario == DEFAULT_SCENARIO:
        assert container["command"] == [
            "portcullis", "authenticate", "--addr", f"http://{FULLNAME}:50051",
            "--expect-reason", "MISSING_CREDENTIAL",
        ]


def test_helm_test_can_be_disabled(helm):
    docs = render(helm, DEFAULT_SCENARIO, "--set", "tests.enabled=false")
    assert not by_kind(docs, "Pod")


# --------------------------------------------------------------------------------------
# values.schema.json and values.yaml


def test_schema_rejects_unknown_and_mistyped_values(helm):
    for args, needle in [
        (["--set", "replicaCont=3"], "replicaCont"),
        (["--set", "service.portz.grpc=1"], "portz"),
        (["--set", "secrets.apiKeys.existingSecrett=x"], "existingSecrett"),
        (["--set", "probes.liveness.periodSecond=5"], "periodSecond"),
        (["--set-string", "replicaCount=two"], "replicaCount"),
        (["--set", "probes.type=exec"], "probes"),
        (["--set", "config.server.grpc_listen=0.0.0.0"], "grpc_listen"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "podDisruptionBudget.maxUnavailable=half"], "maxUnavailable"),
    ]:
        err = render_error(helm, DEFAULT_SCENARIO, *args)
        assert needle in err, f"{args}: error does not name {needle}:\n{err}"


def test_config_is_validated_by_the_generated_schema(helm):
    # `config` carries the schema Portcullis generates from its config types
    # (`portcullis config-schema`), so helm refuses misspelled or ill-typed config keys.
    for args, needle in [
        (["--set", "config.some_future_section.enabled=true"], "some_future_section"),
        (["--set", "config.cache.max_entriess=5"], "max_entriess"),
        (["--set-string", "config.cache.max_entries=many"], "max_entries"),
        (["--set", "config.server.limits.max_in_flight=-1"], "max_in_flight"),
        (["--set", "config.authorization.rules[0].name=r", "--set", "config.authorization.rules[0].anonymous=sometimes"], "anonymous"),
        (["--set", "config.authorization.rules[0].name=r", "--set", "config.authorization.rules[0].effect=maybe"], "effect"),
    ]:
        err = render_error(helm, DEFAULT_SCENARIO, *args)
        assert needle in err, f"{args}: error does not name {needle}:\n{err}"
    docs = render(helm, DEFAULT_SCENARIO, "--set", "config.cache.max_ttl=90s",
                  "--set", "config.authorization.rules[0].name=public", "--set", "config.authorization.rules[0].anonymous=allow_failed")
    assert rendered_config(docs)["cache"]["max_ttl"] == "90s"


def test_config_schema_is_in_sync_with_the_binary(portcullis_bin):
    # scripts/sync-config-schema.py writes it; this fails when the config types changed.
    schema = json.loads((CHART / "values.schema.json").read_text())
    generated = json.loads(subprocess.run([portcullis_bin, "config-schema"], capture_output=True, text=True, check=True).stdout)
    for key in ("$schema", "title"):
        generated.pop(key, None)
    assert schema["properties"]["config"]["allOf"] == [generated], \
        "values.schema.json is out of date: run scripts/sync-config-schema.py"


def test_schema_is_strict_and_described():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    problems = []

    def check(node: dict, where: str) -> None:
        if not isinstance(node, dict):
            return
        if where == "config":
            return  # open on purpose; the application validates it
        if "properties" in node:
            if node.get("additionalProperties") is not False and where != "":
                problems.append(f"{where or '<root>'}: additionalProperties is not false")
            for name, sub in node["properties"].items():
                path = f"{where}.{name}" if where else name
                if not sub.get("description"):
                    problems.append(f"{path}: no description")
                check(sub, path)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                check(node[key], f"{where}[]")
        for key in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(key, []):
                check(sub, where)

    assert schema.get("additionalProperties") is False
    check(schema, "")
    assert not problems, "\n".join(problems)


def test_schema_covers_every_value():
    """values.yaml and the schema describe the same keys (down to where a key is a
    passthrough Kubernetes object or the open config)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = load_yaml(CHART / "values.yaml")
    missing = []

    def check(vals: dict, node: dict, where: str) -> None:
        props = node.get("properties")
        if props is None:
            return
        for key, value in vals.items():
            if key not in props:
                missing.append(f"{where}{key}")
            elif isinstance(value, dict) and where + key != "config":
                check(value, props[key], f"{where}{key}.")

    check(values, schema, "")
    assert not missing, f"values without a schema entry: {missing}"


def test_values_yaml_is_commented():
    """Every key in values.yaml has a comment (on the line before or inline), except keys
    inside a value documented as a whole by a `# --` comment."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(\s*)(- )?([A-Za-z0-9_./-]+):(\s|$)")
    stack: list[tuple[int, bool]] = []  # (indent, documented as a whole)
    block_indent = None
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if stripped and indent <= block_indent:
                block_indent = None
            else:
                continue
        if not stripped or stripped.startswith("#"):
            continue
        m = key_re.match(line)
        if not m:
            continue
        key_indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= key_indent:
            stack.pop()
        # The comment block right above this line.
        j = i - 1
        comments = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comments.insert(0, lines[j].strip())
            j -= 1
        whole = bool(comments) and comments[0].startswith("# --")
        if not any(doc for _, doc in stack):
            inline = " #" in line.split(":", 1)[1]
            if not comments and not inline:
                undocumented.append(f"line {i + 1}: {stripped}")
        stack.append((key_indent, whole or any(doc for _, doc in stack)))
        if re.search(r":\s*[|>][-+]?\s*$", line):
            block_indent = indent
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


# --------------------------------------------------------------------------------------
# The default config


def test_default_config_shape():
    config = load_yaml(CHART / "values.yaml")["config"]
    assert set(config) <= SPEC_CONFIG_KEYS, set(config) - SPEC_CONFIG_KEYS
    assert config["server"]["grpc_listen"].endswith(":50051")
    assert config["server"]["admin_listen"].endswith(":9090")
    # No placeholder issuer whose keys could never load (pods that never become ready).
    assert config["issuers"] == []
    assert config["authorization"]["default"] == "deny"


NO_CREDENTIAL_SOURCE = "no credential source is configured"


def test_no_credential_source_refuses_to_install(helm):
    """The bare defaults configure no credential source: rendering (and so installing)
    fails with a message that says what to set."""
    err = render_error(helm, "default")
    assert NO_CREDENTIAL_SOURCE in err, err
    for needle in ("config.issuers", "config.api_keys", "config.basic.htpasswd_file",
                   "config.client_certificates.ca_files", "docs/deployment.md"):
        assert needle in err, f"the message does not mention {needle}:\n{err}"
    # (`helm install` renders through the same engine; `helm lint` reports a template
    # `fail` only as [INFO], so the bare chart still lints.)
    # An explicitly empty issuer list with nothing else is refused the same way.
    assert NO_CREDENTIAL_SOURCE in render_error(helm, "minimal", "--set", "config.issuers=null")


@pytest.mark.parametrize("source", [
    ["--set", "config.issuers[0].name=a", "--set", "config.issuers[0].issuer=https://a.example",
     "--set", "config.issuers[0].discovery=true"],
    ["--set", "config.api_keys.file=/etc/portcullis/secrets/api-keys/api-keys.yaml",
     "--set", "secrets.apiKeys.existingSecret=keys"],
    ["--set", "config.api_keys.postgres.url=env:DATABASE_URL"],
    ["--set", "config.basic.htpasswd_file=/etc/portcullis/secrets/htpasswd/htpasswd",
     "--set", "secrets.htpasswd.existingSecret=htpasswd"],
    ["--set", "config.client_certificates.ca_files[0]=/etc/portcullis/secrets/tls/ca.crt",
     "--set", "secrets.tls.existingSecret=tls"],
], ids=["issuer", "api-keys-file", "api-keys-postgres", "basic", "client-certificates"])
def test_any_credential_source_is_enough(helm, source):
    assert render(helm, "default", *source)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_config_uses_spec_keys(scenario):
    config = scenario_values(scenario)["config"]
    assert set(config) <= SPEC_CONFIG_KEYS, set(config) - SPEC_CONFIG_KEYS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_config_passes_check_config(helm, portcullis_bin, tmp_path, scenario):
    config = one(render(helm, scenario), "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(config)
    proc = subprocess.run([portcullis_bin, "check-config", "--offline", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (
        f"check-config --offline rejected the {scenario} config (exit {proc.returncode}):\n"
        f"{proc.stdout}\n{proc.stderr}\n--- config.yaml ---\n{config}")


POLICY_TESTS_DIR = SCENARIOS_DIR / "policy-tests"


def test_every_policy_test_file_names_a_scenario():
    files = sorted(POLICY_TESTS_DIR.glob("*.yaml"))
    assert files, "no policy tests"
    for path in files:
        assert path.stem in SCENARIOS, f"{path.name}: no scenario {path.stem}-values.yaml"


@pytest.mark.parametrize("scenario", [p.stem for p in sorted(POLICY_TESTS_DIR.glob("*.yaml"))])
def test_rendered_rules_pass_their_policy_tests(helm, portcullis_bin, tmp_path, scenario):
    """`portcullis policy test --offline` on the config the chart renders: the scenario's
    rules decide its cases as written (see docs/policy-tests.md)."""
    config = one(render(helm, scenario), "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(config)
    cases = POLICY_TESTS_DIR / f"{scenario}.yaml"
    proc = subprocess.run([portcullis_bin, "policy", "test", "--offline", "--config", str(path),
                           str(cases)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (
        f"policy test failed for {scenario} (exit {proc.returncode}):\n"
        f"{proc.stdout}\n{proc.stderr}\n--- config.yaml ---\n{config}")
    assert " 0 failed" in proc.stdout and "FAIL" not in proc.stdout, proc.stdout


# --------------------------------------------------------------------------------------
# cert-manager, PrometheusRule, Grafana dashboard, extraObjects, NetworkPolicy presets

OBSERVABILITY_DOC = REPO / "docs" / "observability.md"
# Metrics that the other half of issue 15 adds to the server (src/telemetry/metrics.rs);
# the chart may alert on them before docs/observability.md lists them. Drop this set
# once the docs list them.


def test_certificate(helm):
    docs = render(helm, "cert-manager")
    cert = one(docs, "Certificate")
    spec = cert["spec"]
    assert spec["secretName"] == "portcullis-tls"
    assert spec["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["duration"] == "2160h" and spec["renewBefore"] == "360h"
    assert "server auth" in spec["usages"]
    # Every name a client in the cluster dials, for both Services, plus the extra name.
    for svc in (FULLNAME, f"{FULLNAME}-headless"):
        for name in (svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local"):
            assert name in spec["dnsNames"]
    assert "portcullis.auth.example.com" in spec["dnsNames"]
    # The Secret is mounted where config.server.tls expects it.
    pod = server_pod_spec(docs)
    mounts = {m["mountPath"]: m for m in server_container(docs)["volumeMounts"]}
    tls_mount = mounts[f"{SECRETS_ROOT}/tls"]
    volume = next(v for v in pod["volumes"] if v["name"] == tls_mount["name"])
    assert volume["secret"]["secretName"] == spec["secretName"]
    tls = rendered_config(docs)["server"]["tls"]
    assert tls["cert_file"] == f"{SECRETS_ROOT}/tls/tls.crt" and tls["key_file"] == f"{SECRETS_ROOT}/tls/tls.key"
    # The default Secret name follows the release.
    default = one(render(helm, "cert-manager", "--set", "certificate.secretName="), "Certificate")
    assert default["spec"]["secretName"] == f"{FULLNAME}-tls"


def test_certificate_misconfigurations_fail_clearly(helm):
    err = render_error(helm, "cert-manager", "--set", "certificate.issuerRef.name=")
    assert "certificate.issuerRef.name" in err
    err = render_error(helm, "cert-manager", "--set", "config.server.tls=null")
    assert "config.server.tls does not use it" in err and "/etc/portcullis/secrets/tls/tls.crt" in err
    err = render_error(helm, "cert-manager", "--set", "secrets.tls.existingSecret=other")
    assert "leave secrets.tls.existingSecret" in err


def documented_metrics() -> set[str]:
    return set(re.findall(r"`(portcullis_[a-z0-9_]+)`", OBSERVABILITY_DOC.read_text()))


def promql_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(portcullis_[a-z0-9_]+)", expr))


def test_prometheus_rule(helm):
    docs = render(helm, "monitoring")
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "PortcullisDown", "PortcullisKeyFetchFailing", "PortcullisKeySetStale", "PortcullisConfigReloadRefused",
        "PortcullisDenyRatioHigh", "PortcullisOverloaded", "PortcullisUpstreamUnavailable", "PortcullisLatencyHigh",
    }
    known = documented_metrics()
    histograms = {m + suffix for m in known if m.endswith("_seconds") for suffix in ("_bucket", "_sum", "_count")}
    selector = f'namespace="{NAMESPACE}", service="{FULLNAME}"'
    for name, r in alerts.items():
        expr = r["expr"]
        # Only metrics that exist, scoped to this release's series.
        unknown = promql_metric_names(expr) - known - histograms
        assert not unknown, f"{name} uses metrics not in docs/observability.md: {unknown}"
        assert expr.count("{") == expr.count(selector), f"{name}: a selector without the release's labels: {expr}"
        assert expr.count("(") == expr.count(")"), f"{name}: unbalanced parentheses"
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["labels"]["team"] == "identity"
        assert r["annotations"]["summary"] and r["annotations"]["description"]
    assert 'reason="OVERLOADED"' in alerts["PortcullisOverloaded"]["expr"]
    assert 'reason="UPSTREAM_UNAVAILABLE"' in alerts["PortcullisUpstreamUnavailable"]["expr"]
    assert "portcullis_config_last_reload_successful" in alerts["PortcullisConfigReloadRefused"]["expr"]
    assert 'result="failure"' in alerts["PortcullisKeyFetchFailing"]["expr"]
    assert "portcullis_jwks_key_set_age_seconds" in alerts["PortcullisKeySetStale"]["expr"]
    assert re.search(r"\) > 0\.3\b", alerts["PortcullisDenyRatioHigh"]["expr"])
    latency = alerts["PortcullisLatencyHigh"]["expr"]
    assert "histogram_quantile(0.99" in latency and "portcullis_request_duration_seconds_bucket" in latency
    assert latency.rstrip().endswith("> 0.02")
    # Prometheus templates survive Helm: {{ $labels.x }} reaches Prometheus verbatim.
    assert "{{ $labels.issuer }}" in alerts["PortcullisKeyFetchFailing"]["annotations"]["summary"]


def test_prometheus_rule_alerts_can_be_tuned_and_disabled(helm):
    docs = render(helm, "monitoring", "--set", "prometheusRule.alerts.down.enabled=false",
                  "--set", 'prometheusRule.selector=job="portcullis"',
                  "--set-json", 'prometheusRule.extraRules=[{"record":"portcullis:deny_ratio","expr":"vector(1)"}]')
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    names = [r.get("alert") or r.get("record") for r in rules]
    assert "PortcullisDown" not in names and names[-1] == "portcullis:deny_ratio"
    assert all('job="portcullis"' in r["expr"] for r in rules if "alert" in r)


def test_grafana_dashboard_configmap(helm):
    docs = render(helm, "monitoring")
    cm = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Security"}
    (key,) = cm["data"]
    dashboard = json.loads(cm["data"][key])
    example = json.loads((REPO / "examples" / "grafana" / "portcullis-dashboard.json").read_text())
    assert dashboard == example


def test_chart_dashboard_is_the_example_dashboard():
    # Helm cannot read files outside the chart: the chart carries a copy, kept identical.
    chart_copy = CHART / "dashboards" / "portcullis-dashboard.json"
    example = REPO / "examples" / "grafana" / "portcullis-dashboard.json"
    assert chart_copy.read_bytes() == example.read_bytes(), \
        f"{chart_copy} differs from {example}: copy the example over the chart's copy"
    # Every metric the dashboard queries exists.
    unknown = promql_metric_names(example.read_text()) - documented_metrics() - {
        m + s for m in documented_metrics() for s in ("_bucket", "_sum", "_count")}
    assert not unknown, unknown


def test_extra_objects_are_templated(helm):
    docs = render(helm, "monitoring")
    obj = one(docs, "ConfigMap", f"{FULLNAME}-extra")
    assert obj["data"] == {"release": RELEASE}
    from_string = one(docs, "ConfigMap", f"{FULLNAME}-extra-from-string")
    assert from_string["data"] == {"grpc-port": "50051"}
    assert from_string["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def grpc_ingress_rule(docs: list[dict]) -> dict:
    np = one(docs, "NetworkPolicy")
    return next(r for r in np["spec"]["ingress"] if any(p["port"] == 50051 for p in r["ports"]))


def test_networkpolicy_data_plane_presets(helm):
    np_on = ["--set", "networkPolicy.enabled=true"]
    test_pod = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "portcullis",
                                                "app.kubernetes.io/instance": RELEASE,
                                                "app.kubernetes.io/component": "test"}}}

    # Istio sidecars: Check comes from each meshed workload's own namespace.
    rule = grpc_ingress_rule(render(helm, DEFAULT_SCENARIO, *np_on, "--set", "networkPolicy.dataPlane=istio-sidecar"))
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}}},
        {"namespaceSelector": {"matchExpressions": [{"key": "istio.io/rev", "operator": "Exists"}]}},
        test_pod,
    ]
    rule = grpc_ingress_rule(render(helm, DEFAULT_SCENARIO, *np_on, "--set", "networkPolicy.dataPlane=istio-sidecar",
                                    "--set", "networkPolicy.allowedNamespaces={orders,billing}"))
    assert rule["from"][:2] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "orders"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "billing"}}},
    ]

    # Istio ambient: the waypoints call Check; HBONE on 15008; probes via the SNAT address.
    docs = render(helm, DEFAULT_SCENARIO, *np_on, "--set", "networkPolicy.dataPlane=istio-ambient",
                  "--set", "networkPolicy.allowedNamespaces={orders}")
    rule = grpc_ingress_rule(docs)
    assert {p["port"] for p in rule["ports"]} == {50051, 15008}
    assert rule["from"][0] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "orders"}},
        "podSelector": {"matchLabels": {"gateway.istio.io/managed": "istio.io-mesh-controller"}},
    }
    assert {"ipBlock": {"cidr": "169.254.7.127/32"}} in rule["from"]

    # Envoy Gateway: its proxies' namespace.
    rule = grpc_ingress_rule(render(helm, DEFAULT_SCENARIO, *np_on, "--set", "networkPolicy.dataPlane=envoy-gateway"))
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}}}, test_pod]

    # No preset and no peers: any source (the previous behaviour).
    assert "from" not in grpc_ingress_rule(render(helm, DEFAULT_SCENARIO, *np_on))
    # Selectors and raw peers combine.
    rule = grpc_ingress_rule(render(helm, DEFAULT_SCENARIO, *np_on, "--set-json",
                                    'networkPolicy.namespaceSelectors=[{"matchLabels":{"team":"shop"}}]',
                                    "--set-json", 'networkPolicy.ingress.grpcFrom=[{"ipBlock":{"cidr":"10.0.0.0/8"}}]'))
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "shop"}}},
                            {"ipBlock": {"cidr": "10.0.0.0/8"}}, test_pod]
    assert "istio" in render_error(helm, DEFAULT_SCENARIO, *np_on, "--set", "networkPolicy.dataPlane=linkerd")


@pytest.mark.parametrize("preset", ["istio-sidecar", "istio-ambient", "envoy-gateway"])
def test_networkpolicy_presets_validate(helm, kubernetes_validate, preset):
    docs = render(helm, DEFAULT_SCENARIO, "--set", "networkPolicy.enabled=true",
                  "--set", f"networkPolicy.dataPlane={preset}",
                  "--set-json", 'networkPolicy.ingress.adminFrom=[{"namespaceSelector":{}}]')
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(one(docs, "NetworkPolicy"), version, strict=True)


# --------------------------------------------------------------------------------------
# The chart README's values table (helm-docs)

HELM_DOCS_ARGS = ["--chart-search-root", str(CHART), "--sort-values-order", "file", "--log-level", "warning"]


@pytest.fixture(scope="session")
def helm_docs() -> str:
    candidates = [os.environ.get("HELM_DOCS", ""), str(REPO / ".tools" / "bin" / "helm-docs"),
                  shutil.which("helm-docs") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    unavailable("helm-docs not found; run scripts/provision/helm-docs.sh")


def test_readme_values_table_is_up_to_date(helm_docs):
    proc = subprocess.run([helm_docs, "--dry-run", *HELM_DOCS_ARGS], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    committed = (CHART / "README.md").read_text()
    assert proc.stdout.strip() == committed.strip(), (
        "helm/portcullis/README.md is out of date with values.yaml / README.md.gotmpl; regenerate it with "
        "`.tools/bin/helm-docs --chart-search-root helm/portcullis --sort-values-order file`")
    # Every value with a `# --` comment has its description in the table.
    for key in ("probes.type", "certificate.issuerRef.name", "prometheusRule.alerts.latencyHigh.p99Seconds",
                "networkPolicy.dataPlane", "grafanaDashboard.labels", "extraObjects"):
        assert re.search(rf"^\| {re.escape(key)} \|.*\| \S.* \|$", committed, re.M), f"{key} missing or undescribed"
