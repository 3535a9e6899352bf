"""What the browser tests stand on: tests/install-chromium.sh installs Debian's chromium once (apt-get update
only when the install fails without it) and, when it cannot, says why; without Chromium or the playwright
package the browser tests skip with a reason that names what to install."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests import browser as harness
from tests.paths import ROOT

SCRIPT = ROOT / "tests" / "install-chromium.sh"

# A stand-in for apt-get on PATH: it logs its arguments; `install` fails until `update` has run (a machine with
# no package lists), or always with FAKE_APT_MODE=broken, and otherwise puts an executable at FAKE_CHROMIUM.
FAKE_APT = """#!/bin/bash
echo "$*" >> "$FAKE_APT_LOG"
case " $* " in
  *" update "*) touch "$FAKE_APT_LISTS"; exit 0 ;;
  *" install "*)
    if [ "$FAKE_APT_MODE" = broken ] || [ ! -e "$FAKE_APT_LISTS" ]; then
      echo "E: Unable to locate package chromium"; exit 100
    fi
    printf '#!/bin/sh\\n' > "$FAKE_CHROMIUM"; chmod +x "$FAKE_CHROMIUM"; exit 0 ;;
esac
exit 1
"""


def fake_tools(tmp_path: Path, *, uid: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {"apt-get": FAKE_APT, "id": f"#!/bin/sh\necho {uid}\n", "sudo": "#!/bin/sh\nexit 1\n"}
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def install(tmp_path: Path, *, uid: int = 0, lists: bool = True, mode: str = "ok",
            chromium: Path | None = None) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = fake_tools(tmp_path, uid=uid)
    log, marker = tmp_path / "apt.log", tmp_path / "lists"
    if lists:
        marker.touch()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_APT_LOG": str(log),
           "FAKE_APT_LISTS": str(marker), "FAKE_APT_MODE": mode,
           "FAKE_CHROMIUM": str(tmp_path / "chromium"), "CHROMIUM_PATH": str(chromium or tmp_path / "chromium")}
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return run, calls


@pytest.mark.process
def test_an_installed_browser_is_left_alone(tmp_path: Path) -> None:
    run, calls = install(tmp_path, chromium=Path(sys.executable))
    assert (run.returncode, run.stdout, calls) == (0, "", [])


@pytest.mark.process
def test_it_installs_chromium_quietly_without_recommends(tmp_path: Path) -> None:
    run, calls = install(tmp_path)
    assert run.returncode == 0 and run.stdout == "", run.stdout + run.stderr
    assert [c.split()[-4:] for c in calls] == [["install", "-y", "--no-install-recommends", "chromium"]]
    assert "-q" in calls[0].split()
    assert os.access(tmp_path / "chromium", os.X_OK)


@pytest.mark.process
def test_without_package_lists_it_updates_them_and_tries_again(tmp_path: Path) -> None:
    run, calls = install(tmp_path, lists=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [c.split()[-1] for c in calls] == ["chromium", "update", "chromium"]


@pytest.mark.process
def test_when_apt_cannot_install_it_it_says_why(tmp_path: Path) -> None:
    run, calls = install(tmp_path, mode="broken")
    assert run.returncode == 1 and len(calls) == 3, calls
    assert "'apt-get install chromium' did not give" in run.stdout
    assert "E: Unable to locate package chromium" in run.stdout


@pytest.mark.process
def test_without_root_or_sudo_it_installs_nothing_and_says_so(tmp_path: Path) -> None:
    run, calls = install(tmp_path, uid=1000)
    assert run.returncode == 1 and calls == []
    assert "not root, no passwordless sudo" in run.stdout and "apt-get install chromium" in run.stdout


def test_the_skip_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    package = types.ModuleType("playwright")  # the pip package as if installed, whether it is here or not
    package.async_api = types.ModuleType("playwright.async_api")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "playwright", package)
    monkeypatch.setitem(sys.modules, "playwright.async_api", package.async_api)  # type: ignore[attr-defined]
    monkeypatch.delenv(harness.INSTALL_FAILED_ENV, raising=False)
    monkeypatch.setattr(harness, "CHROMIUM", sys.executable)  # an executable: the browser counts as there
    assert harness.unavailable() is None
    monkeypatch.setattr(harness, "CHROMIUM", "/nonexistent/chromium")
    assert "no Chromium at /nonexistent/chromium: install the Debian package `chromium`" in harness.unavailable()
    monkeypatch.setenv(harness.INSTALL_FAILED_ENV, "E: Unable to locate package chromium")
    assert harness.unavailable() == "Chromium could not be installed: E: Unable to locate package chromium"
    monkeypatch.setitem(sys.modules, "playwright.async_api", None)  # the pip package not installed
    assert "the pip package `playwright` is not installed" in harness.unavailable()
