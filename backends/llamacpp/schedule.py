"""Who goes first inside an engine: a job's class, the lines that wait by class, and who gives way.

The gateway decides each request's class (`backends.contract.priority`: interactive, near real time,
batch) and the backend sends it with the job. The engines serve the most urgent class first and in
arrival order within a class, so an interactive request never queues behind batch lines. In the batched
engine an urgent sequence that finds every slot taken takes the slot of the youngest sequence of a less
urgent class, which is preempted and resumed later by recompute (its output unchanged); its prompt is
read in one piece ahead of the others' decoding; and when the KV cache is short the least urgent,
youngest sequence gives way first.

Kept apart from the engines' threads and llama.cpp calls so that the policy is plain data, testable
without a model.
"""

from __future__ import annotations

import collections
import queue
from typing import Any, Iterator

from backends.contract.priority import PRIORITY_LABELS, Priority
from backends.llamacpp.seqs import Seq

N_CLASSES = len(Priority)


def class_of(value: Any) -> int:
    """A job's class as the wire carries it; a missing one is interactive, as a request without a
    scheduler above it is somebody waiting."""
    try:
        return min(N_CLASSES - 1, max(0, int(value)))
    except (TypeError, ValueError):
        return int(Priority.INTERACTIVE)


def waiting_stats(counts: list[int]) -> dict[str, int]:
    """Per-class waiting jobs as flat counters (engine stats are summed key by key over instances)."""
    return {f"waiting_{label.replace('-', '_')}": n for label, n in zip(PRIORITY_LABELS, counts)}


class ClassQueue(queue.Queue):
    """A thread-safe job queue that hands out the most urgent class first, FIFO within a class.

    The stop sentinel (`None`) comes out after every job (`EngineThread.stop` has drained them by
    then). It has no size of its own: the engine bounds it per class (`EngineThread.submit`), so batch
    jobs filling the queue never turn an interactive request away.
    """

    def _init(self, maxsize: int) -> None:
        self._lines: list[collections.deque[Any]] = [collections.deque() for _ in range(N_CLASSES)]
        self._sentinels: collections.deque[None] = collections.deque()

    def _qsize(self) -> int:
        return len(self._sentinels) + sum(len(line) for line in self._lines)

    def _put(self, item: Any) -> None:
        if item is None:
            self._sentinels.append(item)
        else:
            self._lines[item.priority].append(item)

    def _get(self) -> Any:
        line = next((line for line in self._lines if line), self._sentinels)
        return line.popleft()

    def counts(self) -> list[int]:
        """Jobs queued per class (from any thread)."""
        with self.mutex:
            return [len(line) for line in self._lines]


class Waiting:
    """The batched engine's sequences waiting for a slot: one FIFO line per class.

    Only the engine thread changes it; other threads read it through `list(...)` snapshots (each
    line's copy is one C call under the GIL, as the plain deque it replaces was read).
    """

    def __init__(self) -> None:
        self._lines: list[collections.deque[Seq]] = [collections.deque() for _ in range(N_CLASSES)]

    def add(self, seq: Seq) -> None:
        self._lines[seq.priority].append(seq)

    def put_back(self, seq: Seq) -> None:
        """A preempted sequence: first of its class again."""
        self._lines[seq.priority].appendleft(seq)

    def first(self) -> Seq | None:
        """The next to admit: the oldest of the most urgent class that waits."""
        for line in self._lines:
            if line:
                return line[0]
        return None

    def remove(self, seq: Seq) -> None:
        self._lines[seq.priority].remove(seq)

    def __contains__(self, seq: object) -> bool:
        return any(seq in line for line in self._lines)

    def __iter__(self) -> Iterator[Seq]:
        return iter([s for line in self._lines for s in list(line)])

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines)

    def __bool__(self) -> bool:
        return any(self._lines)

    def jobs(self) -> list[int]:
        """Jobs waiting per class (a job of n choices is one job)."""
        return [len({id(s.run) for s in list(line)}) for line in self._lines]


def least_urgent(active: list[Seq]) -> Seq | None:
    """The sequence that gives way first, to an urgent one or to KV pressure: the youngest of the least
    urgent class (the youngest has the fewest tokens to recompute)."""
    return max(active, key=lambda s: (s.priority, s.order), default=None)


def plan_step(feeding: list[Seq], last_was_prefill: bool, chunk: int, n_batch: int
              ) -> tuple[list[tuple[Seq, int]], bool]:
    """(sequence, tokens to feed) for one decode step, and whether it was a prefill turn.

    Prompt pieces and decode tokens take turns rather than share a step: a new request then waits for
    at most one decode step plus its own piece of prefill (measured: TTFT 2x idle instead of 3x when
    joined), and the others' decoding goes on between the pieces of a long prompt. The prompt budget
    goes to the most urgent class first, then the oldest. A prompt more urgent than every decoding
    sequence does not take turns: it is read in pieces as large as on an idle model while the less
    urgent ones pause, so its first token comes after its prefill alone.
    """
    decoding = [(s, 1) for s in feeding if s.pending == 1]
    prefilling = sorted((s for s in feeding if s.pending > 1), key=lambda s: (s.priority, s.order))
    urgent = bool(prefilling and decoding and prefilling[0].priority < min(s.priority for s, _ in decoding))
    if decoding and last_was_prefill and not urgent:
        return decoding, False
    # With nobody decoding (or nobody as urgent), a prompt goes in as large a piece as the serial engine uses.
    budget = chunk if decoding and not urgent else n_batch
    prefill: list[tuple[Seq, int]] = []
    for s in prefilling:
        if budget <= 0:
            break
        take = min(s.pending, budget)
        prefill.append((s, take))
        budget -= take
    if prefill and decoding:
        return prefill, True
    return prefill + decoding, False
