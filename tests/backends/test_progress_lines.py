"""Assembling the default model's 253 MB takes a while on a first start: on a terminal a bar, and where
stderr is a log (Docker, systemd, CI) a few plain lines, never silence."""

from __future__ import annotations

import io

import pytest

from backends.weights import progress_bar

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_quarter() -> None:
    log = io.StringIO()
    update = progress_bar("assembling m", log)
    for done in range(0, 101):
        update(done * 2_000_000, 200_000_000)
    assert log.getvalue().splitlines() == [f"assembling m: {p}% ({p * 2}/200 MB)" for p in (0, 25, 50, 75, 100)]


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    tty = Terminal()
    update = progress_bar("assembling m", tty)
    update(50, 100)
    update(100, 100)
    out = tty.getvalue()
    assert out.startswith("\rassembling m [") and out.count("\r") == 2 and out.endswith("100% 0/0 MB\n")
