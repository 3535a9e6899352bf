"""The embedding engine: an encoder model (all-MiniLM-L6-v2, say) in an engine process, batching across requests.

Same surface as the generation engines (start, submit, stop, `snapshot`, `llm`), so the engine process
(`host`) hosts it and the supervisor restarts it like any other. One worker thread owns the context.

Batching: every `llama_decode` carries as many inputs as fit its token budget (`settings.n_batch`, and
llama.cpp's sequence limit), one sequence each, from as many jobs as it takes: the inputs of the jobs
taken so far, then more jobs from the queue while there is room. Inputs go in strict arrival order
(FIFO chunking): a job's inputs that do not fit wait for the next decode, ahead of every later job, so a
huge request is cut into budget-sized decodes and a small one behind it waits at most for those, never
for ever; jobs stay in the queue (and count against `max_queue`) until a decode has room for them.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import time
from dataclasses import dataclass
from typing import Any

from backends.contract.embeddings import normalised
from backends.llamacpp.engine_thread import EngineThread
from backends.llamacpp.jobs import END, ERROR, VECTORS, EmbedJob, EngineSettings, default_threads
from backends.llamacpp.sysinfo import extra_bufts

log = logging.getLogger("llm_gateway.llamacpp")

# For tests: a file whose presence holds the engine after it took a job and before it fills a decode, so
# a test can have requests queued together, or a request in the engine when it kills it.
STALL_ENV = "LLM_GATEWAY_EMBED_STALL"


@dataclass(slots=True)
class _Work:
    """A job taken from the queue: its vectors so far, and the next input to decode."""

    job: EmbedJob
    vectors: list[Any]
    next: int = 0


class EmbedEngine(EngineThread):
    def __init__(self, settings: EngineSettings, name: str = "embed") -> None:
        super().__init__(settings, name)
        self._taken: collections.deque[_Work] = collections.deque()  # off the queue, not finished, FIFO
        self._stopping = False
        self._avg_decode_s = 0.05
        self.busy = False
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.inputs = 0
        self.tokens = 0
        self.decodes = 0  # llama_decode calls
        self.shared_decodes = 0  # ... that carried inputs of more than one job
        self.max_jobs_per_decode = 0
        self._stall = os.environ.get(STALL_ENV)

    # -- counters ------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs not answered yet: queued, or taken and waiting for (the rest of) their decodes."""
        return self._queue.qsize() + len(self._taken)

    @property
    def load(self) -> int:
        return self.depth

    @property
    def n_ctx(self) -> int:
        """The longest input, in tokens."""
        return int(self.settings.n_ctx)

    def retry_after(self) -> float:
        return min(60.0, max(1.0, self._avg_decode_s * (self.load + 1)))

    def extra_info(self) -> dict[str, Any]:
        return {"kind": "embed", "n_embd": int(self.llm.n_embd()), "batch_tokens": int(self.llm.n_batch),
                "n_seq_max": int(self.llm.context_params.n_seq_max)}

    def snapshot(self) -> dict[str, Any]:
        return {"queue_depth": self.depth, "busy": int(self.busy), "load": self.load, "completed": self.completed,
                "cancelled": self.cancelled, "failed": self.failed, "inputs": self.inputs, "tokens": self.tokens,
                "decodes": self.decodes, "shared_decodes": self.shared_decodes,
                "max_jobs_per_decode": self.max_jobs_per_decode, "retry_after": round(self.retry_after(), 2)}

    def _cancel_running(self) -> None:
        self._stopping = True
        for work in list(self._taken):
            work.job.cancelled.set()

    # -- the thread ----------------------------------------------------------------

    def _load(self) -> None:
        from llama_cpp import Llama

        s = self.settings
        threads = s.n_threads or default_threads()
        budget = max(s.n_batch, s.n_ctx)  # one input always fits one decode
        with extra_bufts(s.use_extra_bufts):
            self.llm = Llama(s.model_path, embedding=True, n_ctx=budget, n_batch=budget, n_ubatch=budget,
                             n_threads=threads, n_threads_batch=threads, verbose=False)
        if s.warmup:
            self._warmup()

    def _warmup(self) -> None:
        """One decode, so the first request doesn't pay for page faults and graph setup."""
        self._decode([self.llm.tokenize(b"warm up")])

    def _serve(self) -> None:
        while True:
            self.after_step()  # what the last decode answered goes out now
            if not self._taken:
                job = self._queue.get()
                if job is None:
                    return
                self._taken.append(_Work(job, []))
            while self._stall and os.path.exists(self._stall) and not self._stopping:
                time.sleep(0.01)
            batch = self._fill()
            if batch:
                self._embed_batch(batch)
            if self._stopping:
                self._end_all()
                return

    def _fill(self) -> list[tuple[_Work, list[int]]]:
        """The next decode's inputs: the taken jobs' first, then more jobs from the queue, in order."""
        budget, n_seq_max = self.llm.n_batch, self.llm.context_params.n_seq_max
        batch: list[tuple[_Work, list[int]]] = []
        used = i = 0
        while len(batch) < n_seq_max and (i < len(self._taken) or self._take()):
            work = self._taken[i]
            inputs = work.job.inputs
            if work.job.cancelled.is_set() or work.next == len(inputs):  # abandoned, or nothing to embed
                del self._taken[i]
                if work.job.cancelled.is_set():
                    self.cancelled += 1
                    work.job.post((END,))
                else:
                    self._finish(work)
                continue
            k = work.next
            while k < len(inputs) and len(batch) < n_seq_max and (not batch or used + len(inputs[k]) <= budget):
                batch.append((work, inputs[k]))
                used += len(inputs[k])
                k += 1
            if k < len(inputs):
                break  # the decode is full: the rest of this job opens the next one
            i += 1
        return batch

    def _take(self) -> bool:
        """One more job from the queue, if one waits (False at the stop sentinel, too)."""
        try:
            job = self._queue.get_nowait()
        except queue.Empty:
            return False
        if job is None:
            self._stopping = True
            return False
        self._taken.append(_Work(job, []))
        return True

    def _embed_batch(self, batch: list[tuple[_Work, list[int]]]) -> None:
        self.busy = True
        started = time.monotonic()
        try:
            vectors = self._decode([tokens for _, tokens in batch])
        except Exception as exc:  # the jobs in this decode fail; the engine serves on
            log.exception("embedding failed on %s", self.name)
            for work in {id(w): w for w, _ in batch}.values():
                self._taken.remove(work)
                self.failed += 1
                work.job.post((ERROR, exc))
            return
        finally:
            self.busy = False
        self._avg_decode_s = 0.8 * self._avg_decode_s + 0.2 * (time.monotonic() - started)
        jobs = len({id(w) for w, _ in batch})
        self.decodes += 1
        self.shared_decodes += jobs > 1
        self.max_jobs_per_decode = max(self.max_jobs_per_decode, jobs)
        self.inputs += len(batch)
        self.tokens += sum(len(t) for _, t in batch)
        for (work, _), vector in zip(batch, vectors):
            work.vectors.append(normalised(vector) if work.job.normalize else vector)
            work.next += 1
        while self._taken and self._taken[0].next == len(self._taken[0].job.inputs):  # FIFO: done ones lead
            self._finish(self._taken.popleft())

    def _finish(self, work: _Work) -> None:
        self.completed += 1
        work.job.post((VECTORS, work.vectors))
        work.job.post((END,))

    def _end_all(self) -> None:
        while self._taken:
            work = self._taken.popleft()
            self.cancelled += 1
            work.job.post((END,))

    def _decode(self, seqs: list[list[int]]) -> list[list[float]]:
        """One `llama_decode` of these sequences (they fit the budget); their pooled vectors."""
        import llama_cpp

        llm = self.llm
        n_embd, batch, ctx = llm.n_embd(), llm._batch, llm._ctx
        batch.reset()
        for s, tokens in enumerate(seqs):
            batch.add_sequence(tokens, s, True)
        ctx.kv_cache_clear()
        try:
            ctx.decode(batch)
            return [llama_cpp.llama_get_embeddings_seq(ctx.ctx, s)[:n_embd] for s in range(len(seqs))]
        finally:
            batch.reset()
            ctx.kv_cache_clear()
