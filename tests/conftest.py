"""Shared fixtures: the real GGUF model, a real gateway server, the OpenAI SDK clients, the spec."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from typing import Any, AsyncIterator, Iterator

import openai
import pytest
import pytest_asyncio

from tests import browser as browser_harness
from tests.openapi_schema import errors as schema_errors
from tests.openapi_schema import spec_path
from tests.server import GatewayProcess, free_port

MODEL = "gemma-3-270m"
# The session gateway's gRPC API (server.grpc), so gRPC is tested on the real model without a second one.
E2E_GRPC_PORT = free_port()

# Small context and bounded defaults keep the suite quick on 2 cores.
E2E_CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "max_body_bytes": 256 * 1024, "grpc": {"enabled": True, "port": E2E_GRPC_PORT}},
    "models": [{"card": MODEL, "n_ctx": 2048, "max_queue": 8, "default_max_tokens": 64, "request_timeout_s": 120}],
    "batches": {"files_dir": tempfile.mkdtemp(prefix="gw-e2e-files-")},  # batch files, not in the home directory
}


@pytest.fixture(scope="session")
def gateway() -> Iterator[GatewayProcess]:
    with GatewayProcess(E2E_CONFIG) as gw:
        yield gw


@pytest.fixture(scope="session")
def grpc_channel(gateway: GatewayProcess) -> Iterator[Any]:
    """A grpc.Channel to the session gateway's gRPC API (grpc is imported only by the tests that use it)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{E2E_GRPC_PORT}") as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        yield channel


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


# -- markers: the fast loop -------------------------------------------------------------------------------
# Every test is `unit` unless it is marked `process`: it starts a gateway, an engine, a CLI or a Redis
# process, or loads a model in-process (everything under tests/e2e/ is). `pytest -m unit` is the loop to
# run while editing (seconds). A unit test that starts a process or loads a model, in its own body or in
# a fixture it uses, fails at once and says to mark it.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("process") is None and ("e2e" in item.path.parts
                                                            or item.get_closest_marker("browser")):
            item.add_marker(pytest.mark.process)
        if item.get_closest_marker("process") is None:
            item.add_marker(pytest.mark.unit)


@contextlib.contextmanager
def _no_processes(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("unit") is None:
        yield
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{item.nodeid} starts a process or loads a model: "
                           "mark it @pytest.mark.process (or the module: pytestmark = pytest.mark.process)")

    patches = [(subprocess.Popen, "__init__")]
    if "llama_cpp" in sys.modules:
        patches.append((sys.modules["llama_cpp"].Llama, "__init__"))
    saved = [(owner, name, owner.__dict__[name]) for owner, name in patches]
    for owner, name in patches:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _no_processes(item):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    watch = item.stash.get(_PAGE_WATCH, None)
    try:
        with _no_processes(item):
            result = yield
    except BaseException:
        item.stash[_CALL_FAILED] = True
        if watch is not None and watch.problems:  # shown beside the failure, not again at teardown
            item.add_report_section("call", "page", watch.report())
            watch.take()
        raise
    if watch is not None and watch.problems:
        item.stash[_CALL_FAILED] = True
        problems = watch.report()
        watch.take()
        pytest.fail(problems, pytrace=False)
    return result


# -- real-browser tests (tests/browser.py): headless Chromium through Playwright ---------------------------
# A test module sets `pytestmark = tests.browser.MARKS` and asks for `page`; a JS error, a console error or a
# CSP violation on it fails the test (above: after the test body; events that arrive later, at teardown).

_PAGE_WATCH = pytest.StashKey[browser_harness.PageWatch]()
_CALL_FAILED = pytest.StashKey[bool]()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """Headless Debian Chromium, one for the session; skips, saying what is missing, when it cannot start."""
    reason = browser_harness.unavailable()
    if reason:
        pytest.skip(f"browser tests: {reason}")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await browser_harness.launch(playwright)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A new page (1280x800) in a fresh context, watched; a failed test leaves a `-failed` screenshot."""
    marker = request.node.get_closest_marker("asyncio")
    if marker is None or marker.kwargs.get("loop_scope") != "session":
        pytest.fail(f"{request.node.nodeid}: a browser test runs on the session's event loop, "
                    "where the browser lives: set `pytestmark = tests.browser.MARKS`", pytrace=False)
    context, watch = await browser_harness.new_watched_context(browser, request.node.name)
    request.node.stash[_PAGE_WATCH] = watch
    opened = await context.new_page()
    try:
        yield opened
        if request.node.stash.get(_CALL_FAILED, False):
            for n, each in enumerate(context.pages):
                with contextlib.suppress(Exception):  # a crashed page: the failure says enough
                    await browser_harness.shot(each, "failed" if n == 0 else f"failed-{n}")
        await browser_harness.settle(context)
    finally:
        await context.close()
    if watch.problems:
        pytest.fail(watch.report(), pytrace=False)
