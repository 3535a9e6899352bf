"""Shared fixtures: the real GGUF model, a real gateway server, the OpenAI SDK clients, the spec."""

from __future__ import annotations

from typing import Any, Iterator

import openai
import pytest

from tests.openapi_schema import errors as schema_errors
from tests.openapi_schema import spec_path
from tests.server import GatewayProcess

MODEL = "gemma-3-270m"

# Small context and bounded defaults keep the suite quick on 2 cores.
E2E_CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "max_body_bytes": 256 * 1024},
    "models": [{"card": MODEL, "n_ctx": 2048, "max_queue": 8, "default_max_tokens": 64, "request_timeout_s": 120}],
}


@pytest.fixture(scope="session")
def gateway() -> Iterator[GatewayProcess]:
    with GatewayProcess(E2E_CONFIG) as gw:
        yield gw


@pytest.fixture(scope="session")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def aclient(gateway: GatewayProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def openapi_spec() -> str:
    path = spec_path()
    if not path.is_file():
        pytest.fail(f"OpenAI's OpenAPI spec is missing at {path} (the vendored subset, or $OPENAI_OPENAPI_SPEC): "
                    f"regenerate it with tests/vendor/openai/make_subset.py")
    return str(path)


@pytest.fixture(scope="session")
def conforms(openapi_spec: str):
    """conforms(schema_name, body) fails the test with every violation listed."""

    def check(name: str, body: Any) -> None:
        problems = schema_errors(openapi_spec, name, body)
        assert not problems, f"{name} violations:\n" + "\n".join(problems) + f"\nbody: {body}"

    return check
