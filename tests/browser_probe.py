"""Pages that misbehave on purpose, for the browser harness's own tests (tests/test_browser_harness.py).

`pages` serves them from 127.0.0.1. The tests below are run only by that file, in a pytest of their own (the
name does not match test_*.py, so the suite never collects them): each one opens a bad page and does not take
its problem, and the harness must fail it; one page is clean and must pass.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from tests import browser as harness

STRICT = "default-src 'self'; script-src 'self'; style-src 'self'"
INLINE = "<!doctype html><title>inline</title><h1>inline</h1><script>document.title = 'ran';</script>"
PAGES: dict[str, tuple[str, dict[str, str]]] = {  # path -> (body, headers)
    "/csp-inline": (INLINE, {"Content-Security-Policy": STRICT}),
    "/csp-report-only": (INLINE, {"Content-Security-Policy-Report-Only": STRICT}),
    "/clean": ("<!doctype html><title>clean</title><h1 id=h>clean</h1><script src=/app.js></script>",
               {"Content-Security-Policy": STRICT}),
    "/app.js": ("document.getElementById('h').textContent = 'scripted';", {"Content-Type": "text/javascript"}),
    "/throws": ("<!doctype html><title>throws</title><script>null.boom();</script>", {}),
    "/console-error": ("<!doctype html><title>logs</title><script>console.error('harness says boom')</script>", {}),
    # After the load that page.goto waits for, and within the 50 ms that settle() gives timers: only settle()
    # at teardown makes its report certain (without it, a context closed sooner never reports it).
    "/late-error": ("<!doctype html><title>late</title><script>window.addEventListener('load', () => "
                    "setTimeout(() => { throw new Error('thrown after the test body') }, 45))</script>", {}),
}


def _handler(body: str, headers: dict[str, str]) -> Any:
    async def handle(request: web.Request) -> web.Response:
        content_type = headers.get("Content-Type", "text/html")
        return web.Response(text=body, content_type=content_type.split(";")[0],
                            headers={k: v for k, v in headers.items() if k != "Content-Type"})
    return handle


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pages() -> AsyncIterator[str]:
    """The base URL of a server on 127.0.0.1 that serves PAGES, on the browser's loop."""
    app = web.Application()
    for path, (body, headers) in PAGES.items():
        app.router.add_get(path, _handler(body, headers))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# -- run by tests/test_browser_harness.py only: what each must come to is in its name ----------------------

pytestmark = harness.MARKS


@pytest.mark.parametrize("path", ["/csp-inline", "/csp-report-only", "/throws", "/console-error"])
async def test_fails(page: Any, pages: str, path: str) -> None:
    await page.goto(pages + path)
    await harness.settle(page.context)


async def test_errors_at_teardown(page: Any, pages: str) -> None:
    await page.goto(pages + "/late-error")  # returns before the timer throws


async def test_passes(page: Any, pages: str) -> None:
    await page.goto(pages + "/clean")
    assert await page.text_content("#h") == "scripted"
    await harness.settle(page.context)


@pytest.mark.asyncio(loop_scope="function")
async def test_errors_at_setup_off_the_session_loop(page: Any) -> None:  # MARKS forgotten: refused, not hung
    await page.goto("about:blank")
