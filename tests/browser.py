"""Real-browser tests: headless Debian Chromium driven by Playwright's async API (fixtures in tests/conftest.py).

Playwright's own browser download cannot reach its host on a closed network, so the tests drive the Debian
package `chromium` at its executable path (tests/install-chromium.sh, run by tests/run.sh, installs it). Without
the browser or the `playwright` pip package the browser tests skip, saying which is missing; they never pass
quietly.

Writing one::

    from tests import browser as harness

    pytestmark = harness.MARKS  # process + browser, and the session's event loop, where the browser lives

    async def test_it(page, some_gateway):  # page: a fresh context and 1280x800 page, watched
        await page.goto(f"{some_gateway.root_url}/console")
        await harness.shot(page, "login")  # tests/artifacts/screenshots/test_it-login.png
        # only where an error is expected: take it, so that it does not fail the test, and assert on it
        assert any("401" in p for p in await harness.take_problems(page))

An uncaught error, a `console.error` (a failed resource load included) or a Content-Security-Policy violation
(enforced or report-only) on any page of the test's context fails the test, with the page's console in the
report; one that arrives after the test body fails it at teardown. A failed test leaves a `-failed` screenshot
of each page. Every wait and action times out after TIMEOUT_MS.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.paths import ROOT

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 15_000  # each wait and action (Playwright's own default, 30 s, makes a broken page slow to fail)
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
# Playwright already passes --no-sandbox (root), --disable-background-networking, --disable-component-update,
# --disable-sync and --no-first-run; these two keep Chromium off the GPU and off UDP on a closed network.
ARGS = ["--disable-gpu", "--disable-quic"]
# Set by tests/run.sh when tests/install-chromium.sh could not install the browser: its reason.
INSTALL_FAILED_ENV = "BROWSER_TESTS_NO_CHROMIUM"

MARKS = [pytest.mark.process, pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

# Records each `securitypolicyviolation` (enforced or report-only) in every frame, before the page's own scripts
# run. An init script and a binding are injected by the DevTools protocol, so the page's CSP does not block them.
_CSP_LISTENER = """
document.addEventListener('securitypolicyviolation', (e) => {
  window.__gatewayTestCspViolation({directive: e.effectiveDirective, blocked: e.blockedURI,
    disposition: e.disposition, source: e.sourceFile, line: e.lineNumber, sample: e.sample});
}, true);
"""


def unavailable() -> str | None:
    """Why the browser tests cannot run here, naming the package to install; None when they can."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the pip package `playwright` is not installed (pip install -e '.[test]')"
    if os.environ.get(INSTALL_FAILED_ENV):
        return f"Chromium could not be installed: {os.environ[INSTALL_FAILED_ENV]}"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return (f"no Chromium at {CHROMIUM}: install the Debian package `chromium` "
                "(apt-get install chromium; tests/run.sh does it as root) or set CHROMIUM_PATH")
    return None


@dataclass
class PageWatch:
    """What a page reported that a test did not ask for: console errors, uncaught errors, CSP violations."""

    test: str  # the test's name, for screenshots and the report
    console: list[str] = field(default_factory=list)  # every console message, for the failure report
    problems: list[str] = field(default_factory=list)

    def on_console(self, msg: Any) -> None:
        where = msg.location.get("url", "") if msg.location else ""
        line = f"console.{msg.type}: {msg.text}" + (f" ({where})" if where else "")
        self.console.append(line)
        # Chromium asks for /favicon.ico by itself, some time after the load, when a page names no icon: its 404
        # is no fault of the page's code (and would fail a test or not by timing alone).
        if msg.type in ("error", "assert") and urlsplit(where).path != "/favicon.ico":
            self.problems.append(line)

    def on_pageerror(self, error: Any) -> None:
        self.problems.append(f"uncaught {getattr(error, 'name', 'Error')}: {getattr(error, 'message', error)}"
                             f"\n{getattr(error, 'stack', '') or ''}".rstrip())

    def on_csp(self, source: Any, v: dict[str, Any]) -> None:
        if v.get("flush"):  # settle()'s marker: every violation before it is in
            return
        self.problems.append(f"CSP violation ({v.get('disposition')}): {v.get('directive')} blocked "
                             f"{v.get('blocked') or 'inline'} at {v.get('source')}:{v.get('line')}"
                             f" {v.get('sample') or ''}".rstrip())

    def take(self) -> list[str]:
        """The problems so far, cleared: for a test that expects an error and asserts on it."""
        taken, self.problems[:] = list(self.problems), []
        return taken

    def report(self) -> str:
        text = f"{self.test}: the page reported {len(self.problems)} problem(s):\n  " + "\n  ".join(self.problems)
        rest = [line for line in self.console if line not in self.problems]
        return text + ("\nthe rest of its console:\n  " + "\n  ".join(rest) if rest else "")


_watches: weakref.WeakKeyDictionary[Any, PageWatch] = weakref.WeakKeyDictionary()  # context -> its watch


def watch_of(page: Any) -> PageWatch:
    """The watch of a page's context (made by the `page` fixture, or by `new_watched_context`)."""
    return _watches[page.context]


async def launch(playwright: Any) -> Any:
    path = CHROMIUM if os.sep in CHROMIUM else shutil.which(CHROMIUM) or CHROMIUM
    return await playwright.chromium.launch(executable_path=path, headless=True, args=ARGS)


def _watch_page(watch: PageWatch, page: Any) -> None:
    page.on("console", watch.on_console)
    page.on("pageerror", watch.on_pageerror)


async def new_watched_context(browser: Any, test: str) -> tuple[Any, PageWatch]:
    """A fresh context, 1280x800, every page of which (a popup or a second tab too) is watched."""
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    watch = PageWatch(test)
    _watches[context] = watch
    await context.expose_binding("__gatewayTestCspViolation", watch.on_csp)
    await context.add_init_script(_CSP_LISTENER)
    context.on("page", lambda page: _watch_page(watch, page))
    return context, watch


async def settle(context: Any) -> None:
    """Let what the context's pages have already reported reach its watch: timers due within 50 ms run, and a
    last call through the violation binding returns only once every earlier one was recorded (calls are
    answered in order), so a CSP violation is never missed by timing."""
    for page in context.pages:
        try:
            await page.evaluate("async () => { await new Promise((done) => setTimeout(done, 50));"
                                " await window.__gatewayTestCspViolation({flush: true}); }")
        except Exception:  # a page that navigated or crashed mid-call: what it reported is already in
            pass
    await asyncio.sleep(0)


async def take_problems(page: Any) -> list[str]:
    """What the page's context reported so far, once its events are in, and cleared: for a test that expects
    an error (a refused login logs a 401, say) and asserts on it instead of failing."""
    await settle(page.context)
    return watch_of(page).take()


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


async def shot(page: Any, step: str, *, full_page: bool = True) -> Path:
    """Save a screenshot as tests/artifacts/screenshots/<test name>-<step>.png (git-ignored) and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{_file_part(watch_of(page).test)}-{_file_part(step)}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path
