"""The browser harness itself (tests/browser.py, fixtures in tests/conftest.py): a CSP violation, an uncaught
error or a console error on the page fails a test that did not take it; a clean page passes; screenshots land
in tests/artifacts/screenshots at the viewport's width."""

from __future__ import annotations

import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tests import browser as harness
from tests.browser_probe import pages  # noqa: F401  (fixture)
from tests.paths import ROOT

pytestmark = harness.MARKS


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    return struct.unpack(">II", head[16:24])


async def test_a_blocked_inline_script_is_a_csp_violation_and_an_allowed_one_is_not(page: Any,
                                                                                    pages: str) -> None:  # noqa: F811
    await page.goto(pages + "/csp-inline")
    problems = await harness.take_problems(page)
    assert await page.title() == "inline", "the policy blocked the inline script"
    assert any(p.startswith("CSP violation (enforce): script-src-elem blocked inline") for p in problems), problems

    await page.goto(pages + "/csp-report-only")
    problems = await harness.take_problems(page)
    assert await page.title() == "ran", "report-only: the script ran"
    assert any(p.startswith("CSP violation (report): script-src-elem") for p in problems), problems

    await page.goto(pages + "/clean")  # the same policy, its script from 'self': nothing to report
    assert await page.text_content("#h") == "scripted"
    assert await harness.take_problems(page) == []
    path = await harness.shot(page, "clean")
    assert path == ROOT / "tests/artifacts/screenshots/test_a_blocked_inline_script_is_a_csp_violation_and_an_" \
                          "allowed_one_is_not-clean.png"
    assert png_size(path)[0] == 1280 and png_size(path)[1] >= 800


async def test_the_harness_fails_a_test_whose_page_misbehaves(browser: Any, tmp_path: Path) -> None:
    """tests/browser_probe.py in a pytest of its own: what each of its tests must come to."""
    junit = tmp_path / "probe.xml"
    failed = ROOT / "tests/artifacts/screenshots/test_fails_csp-inline-failed.png"
    failed.unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/browser_probe.py", f"--junitxml={junit}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert junit.is_file(), run.stdout + run.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}

    def outcome(name: str) -> tuple[str, str]:
        case = cases[name]
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                return kind, (found.get("message") or "") + (found.text or "")
        return "passed", ""

    expected = {
        "test_fails[/csp-inline]": ("failure", "CSP violation (enforce): script-src-elem blocked inline"),
        "test_fails[/csp-report-only]": ("failure", "CSP violation (report): script-src-elem blocked inline"),
        "test_fails[/throws]": ("failure", "uncaught TypeError: Cannot read properties of null (reading 'boom')"),
        "test_fails[/console-error]": ("failure", "console.error: harness says boom"),
        "test_errors_at_teardown": ("error", "uncaught Error: thrown after the test body"),
        "test_errors_at_setup_off_the_session_loop": ("error", "set `pytestmark = tests.browser.MARKS`"),
        "test_passes": ("passed", ""),
    }
    assert set(cases) == set(expected), run.stdout
    for name, (kind, text) in expected.items():
        got_kind, got_text = outcome(name)
        assert got_kind == kind and text in got_text, (name, got_kind, got_text, run.stdout[-3000:])
    assert run.returncode == 1, run.stdout
    assert failed.is_file() and png_size(failed)[0] == 1280, "a failed browser test leaves a screenshot"
