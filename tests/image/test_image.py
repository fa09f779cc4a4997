"""The container image, built and run on this machine without any registry.

Builds `images/local.Containerfile` (FROM scratch) with buildah from the locally compiled,
stripped binary and the libraries it links, then runs the image's entrypoint with buildah's
chroot isolation (no OCI runtime needed) on the quickstart config: gRPC health is SERVING,
one Authenticate is allowed and one denied (checked with the host's `portcullis
authenticate`), the process runs as UID 65532, and SIGTERM ends it with exit code 0.

Needs buildah (scripts/provision/buildah.sh) and root. Under CI=true a missing tool fails.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"
IMAGE = f"localhost/portcullis-test:{uuid.uuid4().hex[:12]}"


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true, so this is a failure, not a skip)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> Path:
    path = Path(os.environ.get("PORTCULLIS_BIN", REPO / "target" / "debug" / "portcullis"))
    if not path.is_file():
        unavailable(f"portcullis binary not found at {path} (set PORTCULLIS_BIN or run `cargo build`)")
    return path


def linked_libraries(path: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
    libraries = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libraries.append(Path(parts[2]))
        elif parts and parts[0].startswith("/"):
            libraries.append(Path(parts[0]))  # the dynamic loader
    return libraries


def prepare_rootfs(context: Path, grpc_port: int, admin_port: int) -> None:
    rootfs = context / "rootfs"
    target = rootfs / "usr/local/bin/portcullis"
    target.parent.mkdir(parents=True)
    subprocess.run(["strip", "--strip-all", "-o", str(target), str(binary())], check=True)
    for library in linked_libraries(binary()):
        destination = rootfs / library.relative_to("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library.resolve(), destination)
    certificates = rootfs / "etc/ssl/certs/ca-certificates.crt"
    certificates.parent.mkdir(parents=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", certificates)
    config_dir = rootfs / "etc/portcullis/config"
    config_dir.mkdir(parents=True)
    shutil.copy(REPO / "examples/keys/quickstart-es256.pub.pem", config_dir)
    config = (REPO / "examples/quickstart.yaml").read_text()
    config = (
        config.replace("path: keys/", "path: /etc/portcullis/config/")
        .replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
        .replace("127.0.0.1:9090", f"127.0.0.1:{admin_port}")
    )
    (config_dir / "config.yaml").write_text(config)
    shutil.copy(REPO / "images/local.Containerfile", context / "Containerfile")


def buildah(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=300, **kwargs)


def health_status(port: int) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        return check(b"", timeout=5)  # HealthCheckRequest{service: ""}


def token(*extra: str) -> str:
    return subprocess.run(
        [str(binary()), "token", "sign", "--key", str(REPO / "examples/keys/quickstart-es256.key.pem"),
         "--alg", "ES256", "--kid", "quickstart-es256", "--iss", "https://quickstart.portcullis.invalid",
         "--sub", "alice", "--aud", "api://quickstart", "--scope", "orders:read", *extra],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def authenticate(port: int, credential: str) -> int:
    return subprocess.run(
        [str(binary()), "authenticate", "--addr", f"127.0.0.1:{port}", "--token", credential],
        capture_output=True, text=True, timeout=30,
    ).returncode


def test_the_image_builds_and_serves(tmp_path):
    if shutil.which("buildah") is None:
        unavailable("buildah not found; run scripts/provision/buildah.sh")
    if os.geteuid() != 0:
        unavailable("building and running the image here needs root")
    grpc_port, admin_port = free_port(), free_port()
    prepare_rootfs(tmp_path, grpc_port, admin_port)
    built = buildah("bud", "--isolation", "chroot", "--quiet", "-t", IMAGE, "-f", "Containerfile", ".", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    container = None
    server = None
    try:
        size = buildah("images", "--format", "{{.Size}}", IMAGE).stdout.strip()
        print(f"image {IMAGE}: {size}")
        inspect = buildah("inspect", "--format", "{{.OCIv1.Config.User}}", IMAGE)
        assert inspect.stdout.strip() == "65532:65532", inspect.stdout
        created = buildah("from", IMAGE)
        assert created.returncode == 0, created.stderr
        container = created.stdout.strip()
        server = subprocess.Popen(
            ["buildah", "run", "--isolation", "chroot", "--network", "host", container, "--",
             "/usr/local/bin/portcullis", "serve", "--config", "/etc/portcullis/config/config.yaml"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, f"the image's server exited:\n{server.stdout.read()}"
            assert time.monotonic() < deadline, "the image's server did not become ready"
            time.sleep(0.2)

        assert health_status(grpc_port) == b"\x08\x01", "grpc.health.v1 reports SERVING"
        valid = token()
        assert authenticate(grpc_port, valid) == 0, "a valid token is authenticated"
        assert authenticate(grpc_port, valid + "x") == 1, "a damaged token is denied"

        inner = subprocess.run(
            ["pgrep", "-f", "^/usr/local/bin/portcullis serve --config /etc/portcullis/config/config.yaml"],
            capture_output=True, text=True,
        ).stdout.split()
        assert len(inner) == 1, inner
        status = Path(f"/proc/{inner[0]}/status").read_text()
        assert any(line.split()[1:2] == ["65532"] for line in status.splitlines() if line.startswith("Uid:")), status
        os.kill(int(inner[0]), signal.SIGTERM)
        assert server.wait(timeout=20) == 0, "SIGTERM ends the server with exit code 0"
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        if container:
            buildah("rm", container)
        buildah("rmi", "-f", IMAGE)
