"""The bookkeeping of continuous batching: sequences, the KV slots they run in, and their jobs.

Kept apart from the thread loop so the scheduling state is plain data. One
`Seq` is one choice of one job. Its `tokens` are every position it needs in
the KV cache (prompt, then each generated token), and `n_past` says how many
are already there. Prefill, decoding, resuming after preemption and prefix
reuse are then the same thing: feed `tokens[n_past:]`, sample after the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.llamacpp.jobs import Job
from backends.llamacpp.logprobs import Pending
from backends.llamacpp.sampler import SamplerChain
from backends.llamacpp.text_stream import StopTextStream


@dataclass(eq=False, slots=True)
class Run:
    """A job in flight: it ends (END) when its last choice has finished."""

    job: Job
    remaining: int
    failed: bool = False
    started: float = 0.0


@dataclass(eq=False, slots=True)
class Seq:
    run: Run
    choice: int
    tokens: list[int]
    prompt_len: int
    budget: int  # most tokens it may generate
    chain: SamplerChain
    stream: StopTextStream
    order: int = 0  # admission order: the youngest (of the least urgent class) is preempted first
    slot: Slot | None = None
    n_past: int = 0  # tokens[:n_past] are in the KV cache
    produced: int = 0
    leader: Seq | None = None  # a sibling choice whose prompt KV this one will copy instead of prefilling
    logprobs: Pending | None = None  # when the job asked for logprobs: entries whose text is not out yet

    @property
    def job(self) -> Job:
        return self.run.job

    @property
    def priority(self) -> int:
        """Its job's class (`schedule`): lower is served first."""
        return self.run.job.priority

    @property
    def pending(self) -> int:
        """Tokens still to feed before the next sample."""
        return len(self.tokens) - self.n_past


@dataclass(eq=False, slots=True)
class Slot:
    """One llama.cpp `seq_id`. An idle slot may keep the KV of its last sequence for prefix reuse."""

    seq_id: int
    seq: Seq | None = None
    cached: list[int] = field(default_factory=list)  # tokens whose KV an idle slot still holds
    last_used: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(cached: list[int], tokens: list[int]) -> int:
    """How many cached tokens a new sequence may keep.

    At least the last prompt token is always decoded again, since its logits are
    needed to sample. The length is rounded down to a multiple of 4 so that the
    rest of the prompt meets the 4-row matmul kernel on the same row boundaries
    as a fresh prefill would.
    """
    keep = min(common_prefix(cached, tokens), len(tokens) - 1)
    return keep - keep % 4
