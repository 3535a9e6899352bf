"""Continuous batching: many sequences of one llama.cpp model in each `llama_decode` call.

Same surface as `LlamaEngine` (start, submit, stop, counters, `llm`), so the
backend drives either. One worker thread owns the context; each loop it takes
new jobs while it has free slots, drops cancelled sequences, and runs one
decode step: one token for every decoding sequence, plus a bounded chunk of
prompt for sequences still prefilling, so a long prompt never stalls the
others and a new request never waits for them to finish. Each sequence has its
own `seq_id`, its own sampler chain and its own KV cells, freed when it leaves.
The KV cache is unified, so one long request may use the whole context; when a
step finds no room, idle cached prefixes are dropped first, then the youngest
sequence of the least urgent class is preempted and later resumed by
recomputing its tokens. Jobs are served by class (`schedule`): every queued job
is taken into its class's waiting line at once, an urgent sequence that finds
no free slot takes a less urgent one's (preempted the same way), and its prompt
is read ahead of their decoding.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from backends.llamacpp.engine_thread import EngineThread
from backends.llamacpp.jobs import DONE, END, ERROR, TEXT, EngineSettings, Job, Sampling, default_threads
from backends.llamacpp.logprobs import Pending, entry
from backends.llamacpp.sampler import SamplerChain, choice_seed
from backends.llamacpp.schedule import ClassQueue, Waiting, least_urgent, plan_step, waiting_stats
from backends.llamacpp.seqs import Run, Seq, Slot, reusable
from backends.llamacpp.sysinfo import model_params
from backends.llamacpp.text_stream import StopTextStream

log = logging.getLogger("llm_gateway.llamacpp")

_NO_ROOM = 1  # llama_decode: no KV slot for the batch (nothing was changed)


class BatchEngine(EngineThread):
    """One llama.cpp context serving up to `settings.parallel` sequences at once."""

    def __init__(self, settings: EngineSettings, name: str = "llamacpp") -> None:
        super().__init__(settings, name)  # self.llm: a vocab-only `Llama`, tokenizer and metadata
        self._stopping = False
        self._model: Any = None
        self._ctx: Any = None
        self._mem: Any = None
        self._batch: Any = None
        self._vocab: Any = None
        # Every decoding sequence needs a row in the batch, so never more sequences than rows.
        self._slots = [Slot(i) for i in range(max(1, min(settings.parallel, settings.n_batch)))]
        self._active: list[Seq] = []
        self._waiting = Waiting()
        self._admit_blocked = False  # after a preemption, admit nothing until a sequence leaves
        self._last_was_prefill = False
        self._clock = 0
        self._avg_job_s = 2.0
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.tokens_generated = 0
        self.prefix_tokens_reused = 0
        self.preemptions = 0
        self.preemptions_by = {"kv": 0, "priority": 0}  # no KV room; a slot taken for a more urgent class

    def _cancel_running(self) -> None:
        self._stopping = True
        for seq in list(self._active) + list(self._waiting):
            seq.job.cancelled.set()

    # -- submission and counters ---------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs waiting for a slot."""
        return self._queue.qsize() + len({id(s.run) for s in list(self._waiting)})

    def waiting_by_class(self) -> list[int]:
        """Jobs waiting per class, from any thread. The queue is read first: a job the engine thread
        moves meanwhile is counted twice rather than not at all, so the bound on submit holds."""
        queued = self._queue.counts()  # type: ignore[attr-defined]
        return [q + w for q, w in zip(queued, self._waiting.jobs())]

    def _new_queue(self) -> queue.Queue[Any]:
        return ClassQueue()

    def _ahead(self, job: Job) -> int:
        return sum(self.waiting_by_class()[: job.priority + 1])

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def busy(self) -> bool:
        return bool(self._active)

    @property
    def load(self) -> int:
        return self.depth + len({id(s.run) for s in list(self._active)})

    def retry_after(self) -> float:
        waves = (self.depth + 1) / max(1, self.settings.parallel)
        return min(60.0, max(1.0, self._avg_job_s * waves))

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def kv_tokens(self) -> int:
        """Positions held in the KV cache, summed over slots (shared cells counted once per slot)."""
        import llama_cpp

        if self._mem is None:
            return 0
        return sum(int(llama_cpp.llama_memory_seq_pos_max(self._mem, s.seq_id)) + 1 for s in self._slots)

    def stats(self) -> dict[str, int]:
        return {"active_sequences": len(self._active), "prefix_tokens_reused": self.prefix_tokens_reused,
                "preemptions": self.preemptions, "preemptions_kv": self.preemptions_by["kv"],
                "preemptions_priority": self.preemptions_by["priority"], "failed": self.failed,
                **waiting_stats(self.waiting_by_class())}

    # -- loading -------------------------------------------------------------

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp import Llama

        s = self.settings
        # Tokenizer and metadata only: the weights are loaded once, below.
        self.llm = Llama(model_path=s.model_path, vocab_only=True, n_ctx=s.n_ctx, verbose=False)
        self._model = llama_cpp.llama_model_load_from_file(s.model_path.encode(), model_params(s.use_extra_bufts))
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {s.model_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        threads = s.n_threads or default_threads()
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = s.n_ctx
        cp.n_batch = min(s.n_ctx, s.n_batch)
        cp.n_ubatch = min(cp.n_batch, 512)  # as `Llama` does
        cp.n_seq_max = len(self._slots)
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = True  # one pool of cells: a lone long request may use the whole context
        # The low-level default is "auto" (on for CPUs); `Llama(flash_attn=False)` sets 0. Match it.
        cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if s.flash_attn
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if s.reuse_prompt_prefix:
            # Sliding-window layers prune cells outside their window; a full-size window cache keeps
            # every position, so any cached prefix can be cut and continued.
            cp.swa_full = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_batch = int(cp.n_batch)
        self._n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        if s.warmup:
            self._warmup()

    def _warmup(self) -> None:
        """One short generation, so the first real request pays for neither page faults nor graph setup."""
        import llama_cpp

        job = Job(prompt_tokens=self.llm.tokenize(b"Hello", add_bos=True, special=False), max_tokens=4,
                  sampling=Sampling(temperature=0.0), stop=[])
        self._start_job(job)
        while self._active or self._waiting:
            self._admit()
            self._step()
        self.completed = 0  # warm-up tokens still count, as in the serial engine
        llama_cpp.llama_memory_clear(self._mem, True)
        for slot in self._slots:
            slot.cached = []

    # -- the loop ----------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            if not self._intake():
                break
            try:
                self._drop_cancelled()
                self._admit()
                self._step()
            except Exception as exc:  # never let the worker die: fail what was running, keep serving
                log.exception("decode step failed on %s", self.name)
                for seq in list(self._active):
                    self._fail(seq.run, exc)
            self.after_step()
        for seq in list(self._active) + list(self._waiting):
            seq.job.cancelled.set()
            self._finish(seq, "cancelled")
        self.after_step()

    def _intake(self) -> bool:
        """Move every queued job into its class's waiting line, so that an urgent job behind batch jobs
        is seen at once; block only when there is nothing to do."""
        while True:
            idle = not self._active and not self._waiting
            if idle:
                self.after_step()  # nothing left to decode: send what the last step produced before waiting
            try:
                job = self._queue.get() if idle else self._queue.get_nowait()
            except queue.Empty:
                return True
            if job is None or self._stopping:
                return False
            self._start_job(job)

    def _start_job(self, job: Job) -> None:
        run = Run(job, remaining=job.n)
        if job.cancelled.is_set():
            self.cancelled += 1
            job.post((END,))
            return
        if not job.prompt_tokens:
            self._fail(run, ValueError("empty prompt"))
            return
        budget = min(job.max_tokens, self._n_ctx - len(job.prompt_tokens))
        for choice in range(job.n):
            chain = SamplerChain(self.llm._model, self.llm.n_vocab(), job.sampling, choice_seed(job.sampling, choice),
                                 job.grammar)
            seq = Seq(run, choice, list(job.prompt_tokens), len(job.prompt_tokens), budget, chain,
                      StopTextStream(job.stop), logprobs=None if job.logprobs is None else Pending())
            if budget <= 0:
                self._finish(seq, "length")
            else:
                self._waiting.add(seq)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in list(self._active) + list(self._waiting) if s.job.cancelled.is_set()]:
            self._finish(seq, "cancelled")

    # -- admission ---------------------------------------------------------------

    def _admit(self) -> None:
        """The most urgent class first, FIFO within a class: the next waiting sequence takes the free slot
        that holds most of its prefix; with none free, the slot of a less urgent sequence, preempted.

        After a preemption for KV room nothing is admitted until a sequence leaves, except a sequence
        more urgent than one still running: the room it needs is then taken from that one.
        """
        while (seq := self._waiting.first()) is not None:
            victim = least_urgent(self._active)
            outranks = victim is not None and victim.priority > seq.priority
            if self._admit_blocked and not outranks:
                return
            free = [s for s in self._slots if s.seq is None]
            if not free:
                if not outranks:
                    return
                self._preempt(victim, "priority")  # type: ignore[arg-type]
                free = [s for s in self._slots if s.seq is None]
            self._waiting.remove(seq)
            slot = max(free, key=lambda s: (reusable(s.cached, seq.tokens), -s.last_used))
            self._bind(seq, slot)

    def _bind(self, seq: Seq, slot: Slot) -> None:
        import llama_cpp

        keep = reusable(slot.cached, seq.tokens) if self.settings.reuse_prompt_prefix else 0
        if keep and not llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):
            keep = 0
        if not keep:
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        slot.cached = []
        slot.seq, seq.slot = seq, slot
        seq.n_past = keep
        if not seq.run.started:
            seq.run.started = time.monotonic()  # service time, for retry_after: from its first slot
        self.prefix_tokens_reused += keep
        self._clock += 1
        seq.order = self._clock
        # A sibling choice still prefilling the same prompt: copy its KV instead of prefilling again.
        seq.leader = next((s for s in self._active if s.run is seq.run and s.leader is None
                           and s.n_past < s.prompt_len and seq.n_past == 0
                           and s.tokens[:s.prompt_len] == seq.tokens), None)
        self._active.append(seq)

    # -- one decode step ---------------------------------------------------------

    def _plan(self) -> list[tuple[Seq, int]]:
        """(sequence, tokens to feed) for this step: see `schedule.plan_step`."""
        feeding = [s for s in self._active if s.leader is None]
        plan, self._last_was_prefill = plan_step(feeding, self._last_was_prefill, self.settings.prefill_chunk,
                                                 self._n_batch)
        return plan

    def _step(self) -> None:
        import llama_cpp

        plan = self._plan()
        if not plan:
            return
        b = self._batch
        rows: list[tuple[Seq, int]] = []  # (sequence, batch row of its logits)
        i = 0
        for seq, take in plan:
            last = seq.n_past + take == len(seq.tokens)
            for k in range(take):
                pos = seq.n_past + k
                b.token[i] = seq.tokens[pos]
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq.slot.seq_id  # type: ignore[union-attr]
                b.logits[i] = 1 if last and k == take - 1 else 0
                i += 1
            if last:
                rows.append((seq, i - 1))
        b.n_tokens = i
        rc = llama_cpp.llama_decode(self._ctx, b)
        if rc == _NO_ROOM:
            self._make_room(plan)
            return
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for seq, take in plan:
            seq.n_past += take
        for seq, row in rows:
            # Siblings copy the leader's prompt cells before the leader may finish and free them.
            followers = [s for s in self._active if s.leader is seq]
            for f in followers:
                self._follow(f, seq)
            for s in [seq, *followers]:
                if s.slot is not None:  # not failed or finished meanwhile
                    self._sample(s, row)

    def _follow(self, seq: Seq, leader: Seq) -> None:
        """The leader's prompt is in the cache: share its cells (its logits row is shared too)."""
        import llama_cpp

        sid = seq.slot.seq_id  # type: ignore[union-attr]
        llama_cpp.llama_memory_seq_rm(self._mem, sid, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._mem, leader.slot.seq_id, sid, 0, leader.prompt_len)  # type: ignore[union-attr]
        seq.leader = None
        seq.n_past = leader.prompt_len

    def _sample(self, seq: Seq, row: int) -> None:
        from llama_cpp import llama_vocab_is_eog

        try:
            token = seq.chain.sample(self._ctx, row)
        except Exception as exc:  # a bad grammar, say: only this job fails
            self._fail(seq.run, exc)
            return
        if not seq.job.ignore_eos and llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.produced += 1
        self.tokens_generated += 1
        seq.tokens.append(token)
        piece = self.llm.detokenize([token])
        start = seq.stream.decoded
        text = seq.stream.feed(piece)
        if seq.logprobs is not None:
            import llama_cpp

            logits = llama_cpp.llama_get_logits_ith(self._ctx, row)
            seq.logprobs.add(start, seq.stream.decoded, entry(logits, self.llm.n_vocab(), token, seq.job.logprobs or 0,
                                                              piece, self._piece))
            entries = seq.logprobs.take(seq.stream, final=seq.stream.stopped)
            if text or entries:
                seq.job.post((TEXT, seq.choice, text, entries))
        elif text:
            seq.job.post((TEXT, seq.choice, text))
        if seq.stream.stopped:
            self._finish(seq, "stop")
        elif seq.produced >= seq.budget:
            self._finish(seq, "length")

    def _piece(self, token: int) -> bytes:
        """An alternative's text, special tokens spelled out (the sampled token's is its output text)."""
        return self.llm.detokenize([token], special=True)

    # -- KV pressure -----------------------------------------------------------------

    def _make_room(self, plan: list[tuple[Seq, int]]) -> None:
        """No KV cells for this step: drop an idle cached prefix, else preempt the youngest sequence of the
        least urgent class."""
        import llama_cpp

        idle = [s for s in self._slots if s.seq is None and s.cached]
        if idle:
            slot = min(idle, key=lambda s: s.last_used)
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            slot.cached = []
            return
        if len(self._active) <= 1:
            # Alone and still no room: the request itself is too large for this context.
            for seq, _ in plan:
                self._fail(seq.run, RuntimeError("the KV cache is full"))
            return
        self._preempt(least_urgent(self._active), "kv")  # type: ignore[arg-type]
        self._admit_blocked = True

    def _preempt(self, victim: Seq, reason: str) -> None:
        """Free a running sequence's slot and cells; it waits first in its class's line and resumes by
        recomputing its prompt and generated tokens, its sampler state intact (so its output is the same)."""
        self.preemptions += 1
        self.preemptions_by[reason] += 1
        self._release(victim, keep_cache=False)
        for f in [s for s in self._active if s.leader is victim]:
            f.leader = None  # it prefills on its own when the step comes
        victim.n_past = 0
        self._waiting.put_back(victim)

    # -- leaving -----------------------------------------------------------------------

    def _release(self, seq: Seq, keep_cache: bool) -> None:
        import llama_cpp

        slot = seq.slot
        if seq in self._active:
            self._active.remove(seq)
        if slot is None:
            return
        slot.seq, seq.slot = None, None
        self._clock += 1
        slot.last_used = self._clock
        if keep_cache and seq.n_past > 0:
            slot.cached = seq.tokens[: seq.n_past]
        else:
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            slot.cached = []
        self._admit_blocked = False

    def _finish(self, seq: Seq, reason: str) -> None:
        job = seq.job
        if seq in self._waiting:
            self._waiting.remove(seq)
        keep = self.settings.reuse_prompt_prefix and reason in ("stop", "length")
        self._release(seq, keep_cache=keep)
        seq.chain.close()
        if reason != "cancelled" and not seq.run.failed:
            tail = "" if seq.stream.stopped else seq.stream.flush()
            entries = seq.logprobs.take(seq.stream, final=True) if seq.logprobs is not None else None
            if tail or entries:
                job.post((TEXT, seq.choice, tail, entries))
            job.post((DONE, seq.choice, reason, seq.produced))
        seq.run.remaining -= 1
        if seq.run.remaining == 0 and not seq.run.failed:
            if job.cancelled.is_set():
                self.cancelled += 1
            else:
                self.completed += 1
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (time.monotonic() - seq.run.started)
            job.post((END,))

    def _fail(self, run: Run, exc: BaseException) -> None:
        """Fail one job: an ERROR event, and its sequences leave without a word more."""
        if run.failed:
            return
        log.error("generation failed on %s: %s", self.name, exc)
        run.failed = True
        self.failed += 1
        self.cancelled += 1  # as the serial engine counts a failed job
        run.job.post((ERROR, exc))
        for seq in [s for s in list(self._active) + list(self._waiting) if s.run is run]:
            self._finish(seq, "error")
