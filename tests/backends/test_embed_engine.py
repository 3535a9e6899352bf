"""The embedding engine's batching: inputs of several queued jobs share one `llama_decode`, in FIFO order.

Checked on the engine's own loop with a stand-in for the decode (no model). That two concurrent requests
are decoded together on the real model, into the vectors each gets alone, is in
tests/gateway/test_embeddings.py (through a gateway and its engine process).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from backends.llamacpp.embed_engine import EmbedEngine
from backends.llamacpp.jobs import EMBED, END, ERROR, VECTORS, EmbedJob, EngineSettings


class Answer:
    """One job's events, as the engine process's connection would get them."""

    def __init__(self, order: list[str], name: str) -> None:
        self.name, self.order = name, order
        self.vectors: list[Any] | None = None
        self.error: Any = None
        self.end = threading.Event()

    def __call__(self, ev: tuple) -> None:
        if ev[0] == VECTORS:
            self.vectors = ev[1]
        elif ev[0] == ERROR:
            self.error = ev[1]
        elif ev[0] == END:
            self.order.append(self.name)
            self.end.set()


def job(inputs: list[list[int]], answer: Answer, normalize: bool = False) -> EmbedJob:
    return EmbedJob(inputs=inputs, normalize=normalize, post=answer)


def test_fifo_chunking_splits_a_big_job_and_lets_the_next_ones_share_its_last_decode() -> None:
    """Budget 10 tokens: a job of five 4-token inputs takes three decodes (2, 2, 1 inputs); the small jobs
    queued behind it fill the rest of its last decode and the next, in arrival order (one that does not fit
    opens the next decode); a cancelled job is dropped without a decode; a vector is the input's own (here: its tokens), whatever shares its decode."""
    engine = EmbedEngine(EngineSettings(model_path="-", kind=EMBED, n_ctx=10, n_batch=10, max_queue=16))
    engine.llm = SimpleNamespace(n_batch=10, context_params=SimpleNamespace(n_seq_max=4))
    decodes: list[list[list[int]]] = []

    def fake_decode(seqs: list[list[int]]) -> list[list[float]]:
        decodes.append(seqs)
        return [[float(t) for t in s] for s in seqs]

    engine._decode = fake_decode  # type: ignore[method-assign]
    order: list[str] = []
    big, small, gone, last = (Answer(order, n) for n in ("big", "small", "gone", "last"))
    big_inputs = [[i] * 4 for i in range(5)]
    engine.submit(job(big_inputs, big))
    engine.submit(job([[7, 7]], small))
    cancelled = job([[8]], gone)
    cancelled.cancelled.set()
    engine.submit(cancelled)
    engine.submit(job([[9] * 5, [6]], last))
    engine.submit(None)  # the stop sentinel: the engine finishes what it took, then its thread ends
    engine._serve()
    assert [[len(s) for s in d] for d in decodes] == [[4, 4], [4, 4], [4, 2], [5, 1]], decodes
    assert order == ["gone", "big", "small", "last"]  # a cancelled job ends at once, the others in order
    assert big.vectors == [[float(t) for t in s] for s in big_inputs]
    assert small.vectors == [[7.0, 7.0]] and gone.vectors is None and last.vectors == [[9.0] * 5, [6.0]]
    stats = engine.snapshot()
    assert stats["decodes"] == len(decodes) and stats["completed"] == 3 and stats["cancelled"] == 1
    assert (stats["inputs"], stats["shared_decodes"], stats["max_jobs_per_decode"]) == (8, 1, 2), stats
