"""bench/grpc_vs_rest.py runs end to end at its smallest settings (a few seconds): a real gateway with gRPC on,
the fake upstream (nginx when installed, else the aiohttp fallback), both clients, both modes, the wire-byte
relay and the serialisation microbenchmark, and a report whose cells are all filled and error-free."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT
from tests.server import free_port

CELLS = [(mode, "small", conc) for mode in ("unary", "stream") for conc in ("1", "4")]


def table(report: str, heading: str) -> dict[tuple[str, ...], list[str]]:
    """The rows of the table under `## heading`, by (mode, request, callers)."""
    section = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()
            if line.startswith("| unary |") or line.startswith("| stream |")]
    return {tuple(r[:3]): r[3:] for r in rows}


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


# The shared load harness lives beside the checkout, not in it: a clone elsewhere has none to run against.
HARNESS = Path(os.environ.get("BENCH_HARNESS") or ROOT.parent / "shared" / "bench")


@pytest.mark.process
@pytest.mark.skipif(not (HARNESS / "make_upstream_conf.py").exists(),
                    reason=f"the shared bench harness is not at {HARNESS} (set BENCH_HARNESS)")
def test_the_benchmark_runs_end_to_end_and_reports_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    cmd = [sys.executable, str(ROOT / "bench" / "grpc_vs_rest.py"), "--duration", "0.2", "--repeats", "1",
           "--warmup", "0", "--first-warmup", "0.1", "--concurrency", "1 4", "--sizes", "small",
           "--micro-repeats", "1", "--micro-min-s", "0.001", "--port", str(free_port()),
           "--grpc-port", str(free_port()), "--upstream-port", str(free_port()), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert report in done.stdout

    load = table(report, "Throughput and latency (medians)")
    cost = table(report, "Cost per request and noise")
    assert sorted(load) == sorted(CELLS) == sorted(cost), report
    for mode, size, conc in CELLS:
        rest_rps, grpc_rps, ratio = load[mode, size, conc][:3]
        assert number(rest_rps) > 0 and number(grpc_rps) > 0 and ratio != "–"
        ttft = load[mode, size, conc][9:11]
        assert (ttft == ["–", "–"]) == (mode == "unary"), (mode, ttft)  # only streams have a first token
        row = cost[mode, size, conc]
        assert row[-1] == "0", f"errors in {mode} c={conc}: {row}"
        chunks = [number(c) for c in row[9:11]]
        assert chunks == [1.0, 1.0] if mode == "unary" else min(chunks) > 1, (mode, chunks)
    assert "| protobuf request SerializeToString |" in report and "| chunk json_format.ParseDict |" in report
