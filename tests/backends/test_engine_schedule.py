"""The engines' priority policy without a model: queues by class, admission, preemption, the step plan.

`FakeDecode` is the batched engine with its llama.cpp calls replaced: a step feeds the planned tokens
and "samples" a token made from the sequence's length, so the scheduling (intake, admission, priority
and KV preemption, resume by recompute, the prefill budget) runs as it does on a model, step by step.
The real model's side (time to first token under load, outputs after preemption) is in
test_llamacpp_priority.py.
"""

from __future__ import annotations

import queue
from types import SimpleNamespace
from typing import Any

import pytest

from backends.contract.priority import Priority
from backends.llamacpp import batch
from backends.llamacpp.batch import BatchEngine
from backends.llamacpp.jobs import DONE, TEXT, EngineSettings, Job, Sampling
from backends.llamacpp.schedule import ClassQueue, Waiting, class_of, least_urgent, plan_step
from backends.llamacpp.seqs import Run, Seq
from backends.llamacpp.serial import LlamaEngine

I, N, B = int(Priority.INTERACTIVE), int(Priority.NEAR_REAL_TIME), int(Priority.BATCH)


def job(priority: int, prompt: int = 8, max_tokens: int = 20, n: int = 1) -> Job:
    events: list[tuple] = []  # read back with `events(job)`
    return Job(prompt_tokens=list(range(1, prompt + 1)), max_tokens=max_tokens, sampling=Sampling(temperature=0.0),
               stop=[], n=n, priority=priority, post=events.append)


def events(j: Job) -> list[tuple]:
    return j.post.__self__


def seq(priority: int, order: int, tokens: int = 8, n_past: int = 0) -> Seq:
    s = Seq(Run(job(priority), 1), 0, list(range(tokens)), tokens, 16, None, None)  # type: ignore[arg-type]
    s.order, s.n_past = order, n_past
    return s


# -- the queues ------------------------------------------------------------------------------------------


def test_class_queue_serves_the_most_urgent_class_first_fifo_within() -> None:
    q = ClassQueue()
    jobs = [job(B), job(B), job(N), job(I), job(I)]
    for j in jobs:
        q.put_nowait(j)
    assert q.qsize() == 5 and q.counts() == [2, 1, 2]
    assert [q.get_nowait() for _ in range(5)] == [jobs[3], jobs[4], jobs[2], jobs[0], jobs[1]]
    last = job(B)
    q.put_nowait(None)
    q.put_nowait(last)
    assert q.get_nowait() is last and q.get_nowait() is None, "the stop sentinel comes after every job"


def test_waiting_lines_and_put_back() -> None:
    w = Waiting()
    b1, b2, i1 = seq(B, 1), seq(B, 2), seq(I, 3)
    for s in (b1, b2, i1):
        w.add(s)
    assert w.first() is i1 and len(w) == 3 and list(w) == [i1, b1, b2]
    w.remove(i1)
    victim = seq(B, 9)
    w.put_back(victim)
    assert w.first() is victim and i1 not in w and victim in w
    assert w.jobs() == [0, 0, 3]


def test_class_of_the_wire_value() -> None:
    assert [class_of(v) for v in (0, 1, 2, None, "x", 7, -1)] == [I, N, B, I, I, B, I]


def test_the_queue_bound_is_per_class_so_batch_never_turns_interactive_away() -> None:
    for cls in (LlamaEngine, BatchEngine):
        engine = cls(EngineSettings(model_path="unused", max_queue=2, parallel=2))  # not started: no model
        engine.submit(job(B))
        engine.submit(job(B))
        with pytest.raises(queue.Full):
            engine.submit(job(B))
        engine.submit(job(I))  # two batch jobs ahead do not count against it
        engine.submit(job(N))
        with pytest.raises(queue.Full):
            engine.submit(job(N))  # one interactive and one near-real-time job would go first
        assert engine.stats()["waiting_batch"] == 2 and engine.stats()["waiting_interactive"] == 1
        assert engine.stats()["waiting_near_real_time"] == 1 and engine.depth == 4


def test_the_serial_engine_serves_its_queue_by_class(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = LlamaEngine(EngineSettings(model_path="unused", max_queue=4))  # not started: no model
    served: list[Job] = []
    monkeypatch.setattr(engine, "_generate", lambda j: served.append(j) or True)
    jobs = [job(B), job(N), job(B), job(I), job(N), job(I)]
    for j in jobs:
        engine.submit(j)
    engine._queue.put(None)
    engine._serve()  # in this thread: serves what is queued, then the sentinel ends it
    assert served == [jobs[3], jobs[5], jobs[1], jobs[4], jobs[0], jobs[2]] and engine.completed == 6


# -- the policy's pieces ---------------------------------------------------------------------------------


def test_least_urgent_is_the_youngest_of_the_least_urgent_class() -> None:
    old_batch, young_batch, young_inter = seq(B, 1), seq(B, 2), seq(I, 3)
    assert least_urgent([old_batch, young_inter, young_batch]) is young_batch
    assert least_urgent([seq(I, 5), seq(N, 1)]).priority == N
    assert least_urgent([]) is None


def test_an_urgent_prompt_is_read_whole_while_batch_decoding_pauses() -> None:
    decoding = [seq(B, 1, tokens=50, n_past=49), seq(B, 2, tokens=50, n_past=49)]
    urgent = seq(I, 3, tokens=300)
    plan, turn = plan_step([*decoding, urgent], last_was_prefill=True, chunk=128, n_batch=512)
    assert plan == [(urgent, 300)] and turn, "not a decode turn, and not a 128-token piece"
    # A batch prompt among batch decoders takes turns in pieces, as before.
    late = seq(B, 4, tokens=300)
    assert plan_step([*decoding, late], True, 128, 512) == ([(d, 1) for d in decoding], False)
    assert plan_step([*decoding, late], False, 128, 512) == ([(late, 128)], True)
    # An interactive decoder among them: turns as before (an interactive stream must not stall either).
    inter = seq(I, 5, tokens=50, n_past=49)
    assert plan_step([inter, urgent], True, 128, 512) == ([(inter, 1)], False)


def test_the_prefill_budget_goes_to_the_most_urgent_class_first() -> None:
    old_batch, near, inter = seq(B, 1, tokens=100), seq(N, 2, tokens=100), seq(I, 3, tokens=100)
    plan, _ = plan_step([old_batch, near, inter], False, 128, 150)
    assert plan == [(inter, 100), (near, 50)]
    plan, _ = plan_step([seq(B, 1, tokens=100), seq(B, 2, tokens=100)], False, 128, 150)
    assert [(s.order, n) for s, n in plan] == [(1, 100), (2, 50)], "the oldest first within a class"


# -- the batched engine with a fake decode ---------------------------------------------------------------


class FakeChain:
    def __init__(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


class FakeDecode(BatchEngine):
    """BatchEngine's loop with `_step` feeding the planned tokens and sampling `len(tokens) % 97`."""

    def __init__(self, parallel: int, kv_cells: int = 10_000, **kw: Any) -> None:
        super().__init__(EngineSettings(model_path="unused", parallel=parallel, max_queue=16, **kw))
        self.llm = SimpleNamespace(_model=None, n_vocab=lambda: 100, detokenize=lambda toks: b"x")
        self._n_ctx, self._n_batch, self._vocab = 4096, 512, None
        self.kv_cells = kv_cells  # more positions than this in one step: no room
        self.steps = 0
        self.plans: list[list[tuple[Seq, int]]] = []

    def _step(self) -> None:
        plan = self._plan()
        if not plan:
            return
        self.steps += 1
        if sum(s.n_past + take for s, take in plan) + self._others(plan) > self.kv_cells:
            self._make_room(plan)
            return
        self.plans.append(plan)
        for s, take in plan:
            s.n_past += take
            if s.pending == 0:
                s.tokens.append(len(s.tokens) % 97)
                s.produced += 1
                s.job.post((TEXT, s.choice, "x"))
                if s.produced >= s.budget:
                    self._finish(s, "length")

    def _others(self, plan: list[tuple[Seq, int]]) -> int:
        planned = {id(s) for s, _ in plan}
        return sum(s.n_past for s in self._active if id(s) not in planned)

    def loop(self, until: Any, limit: int = 500) -> None:
        for _ in range(limit):
            if until():
                return
            assert self._active or self._waiting or self._queue.qsize(), "idle, and the condition not reached"
            assert self._intake()
            self._drop_cancelled()
            self._admit()
            self._step()
        raise AssertionError("not reached within the step limit")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    import llama_cpp

    monkeypatch.setattr(batch, "SamplerChain", FakeChain)
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", lambda *a: True)
    return FakeDecode


def done(j: Job) -> bool:
    return any(ev[0] == DONE for ev in events(j))


def texts(j: Job) -> int:
    return sum(1 for ev in events(j) if ev[0] == TEXT)


def test_an_interactive_job_behind_queued_batch_jobs_takes_the_next_slot(fake: Any) -> None:
    engine = fake(parallel=2)
    batch_jobs = [job(B, max_tokens=30) for _ in range(4)]
    for j in batch_jobs:
        engine.submit(j)
    engine.loop(lambda: texts(batch_jobs[1]) >= 3)
    inter = job(I, max_tokens=5)
    engine.submit(inter)  # behind two queued batch jobs
    engine.loop(lambda: done(inter))
    assert engine.preemptions_by == {"kv": 0, "priority": 1}
    assert not any(done(j) for j in batch_jobs[2:]), "the queued batch jobs waited"
    engine.loop(lambda: len(engine._active) == 2)
    assert {id(s.job) for s in engine._active} == {id(j) for j in batch_jobs[:2]}, "the preempted one went first"
    engine.loop(lambda: all(done(j) for j in batch_jobs))


def test_the_interactive_sequence_starts_at_the_next_step_and_the_batch_one_resumes(fake: Any) -> None:
    engine = fake(parallel=2)
    b1, b2 = job(B, max_tokens=40), job(B, max_tokens=40)
    engine.submit(b1)
    engine.loop(lambda: texts(b1) >= 5)
    engine.submit(b2)
    engine.loop(lambda: texts(b2) >= 5)
    young = next(s for s in engine._active if s.job is b2)
    inter = job(I, prompt=300, max_tokens=3)
    engine.submit(inter)
    before = engine.steps
    engine.loop(lambda: texts(inter) >= 1)
    assert engine.steps == before + 1, "one step: its whole prompt, ahead of the batch decoding"
    assert young.slot is None and young in engine._waiting and young.n_past == 0, "the youngest batch gave way"
    assert engine.stats()["preemptions_priority"] == 1 and engine.stats()["waiting_batch"] == 1
    engine.loop(lambda: done(inter) and done(b1) and done(b2))
    assert young.tokens[young.prompt_len:] == [k % 97 for k in range(8, 48)]
    assert texts(b2) == 40 and engine.preemptions == 1


def test_near_real_time_preempts_batch_but_interactive_does_not_preempt_interactive(fake: Any) -> None:
    engine = fake(parallel=2)
    i1, i2 = job(I, max_tokens=30), job(I, max_tokens=30)
    engine.submit(i1)
    engine.submit(i2)
    engine.loop(lambda: texts(i2) >= 2)
    i3 = job(I, max_tokens=3)
    engine.submit(i3)
    engine.loop(lambda: texts(i1) >= 10)
    assert texts(i3) == 0 and engine.preemptions == 0, "same class: it waits its turn"
    engine.loop(lambda: done(i3))
    b1, b2 = job(B, max_tokens=30), job(B, max_tokens=30)
    engine.submit(b1)
    engine.submit(b2)
    engine.loop(lambda: texts(b2) >= 2)
    nrt = job(N, max_tokens=3)
    engine.submit(nrt)
    engine.loop(lambda: texts(nrt) >= 1, limit=3)
    assert engine.preemptions_by["priority"] == 1


def test_kv_pressure_preempts_a_batch_sequence_before_an_interactive_one(fake: Any) -> None:
    engine = fake(parallel=3, kv_cells=70)
    b = job(B, max_tokens=40)
    engine.submit(b)
    engine.loop(lambda: texts(b) >= 2)
    inter = [job(I, max_tokens=40) for _ in range(2)]  # younger: the youngest-first rule alone would pick one
    for j in inter:
        engine.submit(j)
    engine.loop(lambda: engine.preemptions_by["kv"] >= 1)
    assert [s.job for s in engine._waiting] == [b], "the batch sequence gave way"
    assert engine.preemptions_by["priority"] == 0
    engine.loop(lambda: all(done(j) for j in inter))
    assert not done(b)
    engine.loop(lambda: done(b))
    assert texts(b) == 40


def test_after_a_kv_preemption_an_urgent_sequence_is_still_admitted(fake: Any) -> None:
    """Admission pauses after a preemption for KV room, but not for a class that can take room from a
    less urgent sequence."""
    engine = fake(parallel=3, kv_cells=100)
    b1, b2 = job(B, max_tokens=60), job(B, max_tokens=60)
    engine.submit(b1)
    engine.submit(b2)
    engine.loop(lambda: engine.preemptions_by["kv"] == 1)
    assert engine._admit_blocked and [s.job for s in engine._waiting] == [b2]
    inter = job(I, max_tokens=5)
    engine.submit(inter)
    engine.loop(lambda: texts(inter) >= 1, limit=3)
    engine.loop(lambda: done(b1) and done(b2) and done(inter))
    assert texts(b1) == texts(b2) == 60
