"""Start the real gateway (`python -m gateway serve`) on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """A gateway subprocess; `base_url` ends in /v1 like the OpenAI SDK expects."""

    def __init__(self, config: dict[str, Any], *, ready_timeout: float = 180.0,
                 env: dict[str, str] | None = None, require_ready: bool = True,
                 extra_args: list[str] | None = None) -> None:
        self.config = config
        self.env = env or {}
        self.require_ready = require_ready
        self.extra_args = extra_args or []
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        self._dir = tempfile.TemporaryDirectory(prefix="gw-test-")
        self.log_path = Path(self._dir.name) / "gateway.log"
        self.config_path = Path(self._dir.name) / "gateway.yaml"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "GatewayProcess":
        cfg = self.config_path
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(self.port),
             *self.extra_args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=self._environment(),
        )
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _environment(self) -> dict[str, str]:
        """The test's environment, minus REDIS_URL: a gateway uses Redis only when its config says so,
        with a private key prefix, so runs never see each other's cache entries or limits."""
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        return {**env, "PYTHONUNBUFFERED": "1", **self.env}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                r = httpx.get(f"{self.root_url}/ready", timeout=2)
                if r.status_code == 200 or (not self.require_ready and r.status_code == 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway not ready after {self.ready_timeout}s:\n{self.logs()}")

    def ready_stats(self, model: str) -> dict[str, Any]:
        body = httpx.get(f"{self.root_url}/ready", timeout=5).json()
        return body["backends"][model]["stats"]

    def waiting(self, deployment: str) -> int:
        """Requests waiting for a slot of `deployment` in the gateway's scheduler (its /ready detail)."""
        body = httpx.get(f"{self.root_url}/ready", timeout=5).json()
        return sum(body["scheduling"][deployment]["waiting"].values())

    def logs(self, tail: int | None = 8000) -> str:
        """What the gateway wrote, its last `tail` characters (None: all of it)."""
        try:
            text = self.log_path.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        except OSError:
            return ""

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        self._dir.cleanup()
