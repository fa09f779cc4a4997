"""The GitHub Actions workflows (.github/workflows/) cannot run here; these tests hold them
to what the project promises:

* actionlint (scripts/provision/actionlint.sh; shellcheck on the `run:` scripts) passes;
* CI runs the project's test command, .ci/run;
* the release builds amd64 and arm64 images, pushes them to ghcr.io/<owner>/portcullis
  tagged with the chart's appVersion, attaches an SBOM, signs with cosign keyless, and
  pushes the chart as an OCI artifact, and what it publishes is the chart's default image.

Missing actionlint skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
CHART = REPO / "helm" / "portcullis"
IN_CI = os.environ.get("CI", "").lower() == "true"


def load(name: str) -> dict:
    # PyYAML reads the `on:` key as True (YAML 1.1); put it back.
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def run_scripts(workflow: dict) -> str:
    return "\n".join(step.get("run", "") for _, step in steps(workflow))


def uses(workflow: dict) -> list[str]:
    return [step["uses"] for _, step in steps(workflow) if "uses" in step]


def test_actionlint():
    candidates = [os.environ.get("ACTIONLINT", ""), str(REPO / ".tools" / "bin" / "actionlint"),
                  shutil.which("actionlint") or ""]
    actionlint = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if actionlint is None:
        message = "actionlint not found; run scripts/provision/actionlint.sh"
        if IN_CI:
            pytest.fail(message + " (CI=true, so this is a failure, not a skip)")
        pytest.skip(message)
    if IN_CI and not shutil.which("shellcheck"):
        pytest.fail("shellcheck not found: actionlint would skip the run: scripts "
                    "(scripts/provision/actionlint.sh installs it)")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files, "no workflows"
    proc = subprocess.run([actionlint, "-no-color", *files], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, f"actionlint:\n{proc.stdout}\n{proc.stderr}"


def test_ci_runs_the_project_test_command():
    ci = load("ci.yml")
    assert "pull_request" in ci["on"] and ci["on"]["push"]["branches"] == ["main"]
    (job,) = ci["jobs"].values()
    assert job["env"]["CI"] == "true"
    assert re.search(r"(^|\s)bash \.ci/run$", run_scripts(ci), re.M), "CI does not run .ci/run"
    assert ci["permissions"] == {"contents": "read"}


def test_release_publishes_multi_arch_signed_images_with_sbom_and_the_chart():
    release = load("release.yml")
    assert release["on"] == {"push": {"tags": ["v*.*.*"]}}
    assert release["permissions"] == {"contents": "read"}, "least privilege at the top; jobs widen it"
    jobs = release["jobs"]

    # Both architectures, each on a native runner.
    matrix = jobs["image"]["strategy"]["matrix"]["include"]
    assert {m["platform"] for m in matrix} == {"linux/amd64", "linux/arm64"}
    build = next(s for _, s in steps({"jobs": {"image": jobs["image"]}}) if s.get("uses", "").startswith(
        "docker/build-push-action@"))
    assert "push-by-digest=true" in build["with"]["outputs"]

    scripts = run_scripts(release)
    # One tag, the chart's appVersion, checked against the git tag.
    assert "appVersion" in scripts and 'echo "image=ghcr.io/$owner/portcullis"' in scripts
    assert 'imagetools create --tag "$IMAGE:$VERSION"' in scripts
    # SBOM, attached as a signed attestation; keyless signatures for image and chart.
    assert any(u.startswith("anchore/sbom-action@") for u in uses(release))
    assert "cosign attest --yes --type spdxjson" in scripts
    assert 'cosign sign --yes "$IMAGE@$DIGEST"' in scripts
    assert 'cosign sign --yes "$repo@$digest"' in scripts
    assert "--key" not in scripts, "keyless signing only"
    for job in ("publish-image", "chart"):
        assert jobs[job]["permissions"]["id-token"] == "write", f"{job}: cosign keyless needs id-token: write"
        assert any(u.startswith("sigstore/cosign-installer@") for _, s in steps({"jobs": {job: jobs[job]}})
                   for u in [s.get("uses", "")])
    # The chart as an OCI artifact next to the image.
    assert 'echo "charts=oci://ghcr.io/$owner/charts"' in scripts
    assert 'helm push dist/portcullis-*.tgz "$CHARTS"' in scripts


def test_chart_default_image_is_what_the_release_publishes():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    # The repository owner, from the chart's source URL (github.com/<owner>/portcullis).
    (source,) = [s for s in chart["sources"] if s.startswith("https://github.com/")]
    owner = source.removeprefix("https://github.com/").split("/")[0].lower()
    assert values["image"]["repository"] == f"ghcr.io/{owner}/portcullis"
    # The tag defaults to appVersion, the version the release workflow requires as git tag.
    assert values["image"]["tag"] == "" and values["image"]["digest"] == ""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert '(default .Chart.AppVersion .Values.image.tag)' in helpers
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(chart["appVersion"])), "the release tag is v<appVersion>"


def test_base_images_are_pinned_by_digest_and_overridable():
    dockerfile = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile, re.M))
    assert set(args) == {"RUST_IMAGE", "RUNTIME_IMAGE"}, args
    for name, reference in args.items():
        assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}", reference), (
            f"{name} must be a tag pinned by digest, not {reference}")
    # Every stage starts from one of those arguments, never from a literal image.
    for base in re.findall(r"^FROM (\S+)", dockerfile, re.M):
        assert base in ("${RUST_IMAGE}", "${RUNTIME_IMAGE}"), base
    # Dependabot proposes digest updates for the Dockerfile.
    dependabot = yaml.safe_load((REPO / ".github" / "dependabot.yml").read_text())
    assert {"package-ecosystem": "docker", "directory": "/"}.items() <= next(
        u for u in dependabot["updates"] if u["package-ecosystem"] == "docker").items()
