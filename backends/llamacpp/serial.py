"""The serial llama.cpp engine (`parallel: 1`): one high-level `Llama`, one request at a time.

`Llama` objects are not thread-safe and every call blocks, so the engine owns
one worker thread (`EngineThread`) and serves its queue by class (`schedule`:
interactive first, then near real time, then batch), in arrival order within
a class; a running job is never interrupted. A job is
cancelled by setting its flag; the worker checks it after every token, so an
abandoned stream frees the model within one token.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from typing import Any

from backends.llamacpp.engine_thread import EngineThread
from backends.llamacpp.jobs import DONE, END, ERROR, TEXT, EngineSettings, Job, Sampling, default_threads
from backends.llamacpp.logprobs import Pending, entry
from backends.llamacpp.schedule import ClassQueue, waiting_stats
from backends.llamacpp.sysinfo import extra_bufts
from backends.llamacpp.text_stream import StopTextStream

log = logging.getLogger("llm_gateway.llamacpp")

class LlamaEngine(EngineThread):
    """One `Llama` instance, one thread, one bounded queue."""

    def __init__(self, settings: EngineSettings, name: str = "llamacpp") -> None:
        super().__init__(settings, name)
        self._current: Job | None = None
        self._avg_job_s = 2.0
        self.busy = False
        self.completed = 0
        self.cancelled = 0
        self.tokens_generated = 0

    def _cancel_running(self) -> None:
        job = self._current
        if job is not None:
            job.cancelled.set()

    # -- submission ------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def load(self) -> int:
        return self.depth + (1 if self.busy else 0)

    def retry_after(self) -> float:
        return min(60.0, max(1.0, self._avg_job_s * (self.depth + 1)))

    def _new_queue(self) -> queue.Queue[Any]:
        return ClassQueue()

    def _ahead(self, job: Job) -> int:
        return sum(self._queue.counts()[: job.priority + 1])  # type: ignore[attr-defined]

    def stats(self) -> dict[str, int]:
        return waiting_stats(self._queue.counts())  # type: ignore[attr-defined]

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    # -- worker thread ---------------------------------------------------

    def _serve(self) -> None:
        while True:
            self.after_step()
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                self.cancelled += 1
                job.post((END,))
                continue
            self._current = job
            self.busy = True
            started = time.monotonic()
            try:
                finished = self._generate(job)
            except Exception as exc:  # the request fails, the worker lives on
                log.exception("generation failed on %s", self.name)
                finished = False
                job.post((ERROR, exc))
            finally:
                self.busy = False
                self._current = None
                self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (time.monotonic() - started)
            if finished:
                self.completed += 1
            else:
                self.cancelled += 1

    def _load(self) -> None:
        from llama_cpp import Llama

        s = self.settings
        threads = s.n_threads or default_threads()
        with extra_bufts(s.use_extra_bufts):
            self.llm = Llama(
                model_path=s.model_path,
                n_ctx=s.n_ctx,
                n_batch=s.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=s.flash_attn,
                verbose=False,
            )
        if s.warmup:
            self._warmup()

    def _warmup(self) -> None:
        """One short generation so the first real request doesn't pay for page faults and graph setup."""
        tokens = self.llm.tokenize(b"Hello", add_bos=True, special=False)
        job = Job(prompt_tokens=tokens, max_tokens=4, sampling=Sampling(temperature=0.0), stop=[])
        self._generate(job)
        self.llm.reset()

    def _piece(self, token: int) -> bytes:
        """An alternative's text, special tokens spelled out (the sampled token's is its output text)."""
        return self.llm.detokenize([token], special=True)

    def _generate(self, job: Job) -> bool:
        """Run every choice of the job; False if it was cancelled part-way."""
        for choice in range(job.n):
            if job.cancelled.is_set():
                break
            self._generate_one(job, choice)
        finished = not job.cancelled.is_set()
        job.post((END,))
        return finished

    def _generate_one(self, job: Job, choice: int) -> None:
        from llama_cpp import llama_get_logits_ith, llama_vocab_is_eog

        llm = self.llm
        pending = None if job.logprobs is None else Pending()
        sp = job.sampling
        seed = (sp.seed + choice) if sp.seed is not None else random.getrandbits(31)
        llm.set_seed(seed & 0x7FFFFFFF)
        vocab = llm._model.vocab
        stream = StopTextStream(job.stop)
        n_ctx = llm.n_ctx()
        budget = min(job.max_tokens, n_ctx - len(job.prompt_tokens))
        produced = 0
        finish = "length"
        if budget > 0:
            if not self.settings.reuse_prompt_prefix:
                # Evaluate the whole prompt afresh: reusing a cached prefix changes the batch shape of
                # the prefill, hence the logits' last bits, and so the output of a seeded request.
                llm.reset()
            gen = llm.generate(
                job.prompt_tokens,
                top_k=sp.top_k,
                top_p=sp.top_p,
                min_p=sp.min_p,
                typical_p=1.0,
                temp=sp.temperature,
                repeat_penalty=sp.repeat_penalty,
                frequency_penalty=sp.frequency_penalty,
                presence_penalty=sp.presence_penalty,
                reset=True,
                grammar=job.grammar,
            )
            try:
                for token in gen:
                    if job.cancelled.is_set():
                        finish = "cancelled"
                        break
                    if not job.ignore_eos and llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    produced += 1
                    self.tokens_generated += 1
                    piece = llm.detokenize([token])
                    start = stream.decoded
                    text = stream.feed(piece)
                    if pending is not None:
                        logits = llama_get_logits_ith(llm.ctx, -1)  # this step's row: `generate` decodes later
                        pending.add(start, stream.decoded, entry(logits, llm.n_vocab(), token, job.logprobs or 0,
                                                                 piece, self._piece))
                        entries = pending.take(stream, final=stream.stopped)
                        if text or entries:
                            job.post((TEXT, choice, text, entries))
                            self.after_step()
                    elif text:
                        job.post((TEXT, choice, text))
                        self.after_step()
                    if stream.stopped:
                        finish = "stop"
                        break
                    if produced >= budget:
                        break
            finally:
                gen.close()
        tail = "" if stream.stopped else stream.flush()
        entries = pending.take(stream, final=True) if pending is not None else None
        if (tail or entries) and finish != "cancelled":
            job.post((TEXT, choice, tail, entries))
        if finish != "cancelled":
            job.post((DONE, choice, finish, produced))
