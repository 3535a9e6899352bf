"""Reading processes from /proc (Linux): a process tree, command lines, CPU time and memory."""

from __future__ import annotations

import os


def children(pid: int) -> list[int]:
    """Children of every thread of `pid` (a supervisor may start processes from any of its threads)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    return [pid] + [p for c in children(pid) for p in tree(c)]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far (0 for a process that is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kib(pid: int, path: str, key: str) -> int:
    """A `Key:   N kB` line of /proc/PID/PATH (status: VmRSS; smaps_rollup: Pss), in KiB."""
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
