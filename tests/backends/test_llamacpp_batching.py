"""Continuous batching on the real models: the batched engine against the serial one, token for token.

Correctness only, no timing. Gemma's repacked 4-row kernel may flip near-tie
tokens once several sequences share a decode, so Gemma is compared with the
serial engine only where the batch holds one sequence (or two, which stay on
the one-row kernel). SmolLM2 (Q4_1, no such kernel) must match at any width;
it runs with flash attention on both paths, because without it the attention
matmuls of a multi-row batch take a tiled kernel that sums in another order.

One more source of last-bit differences: the KV cache is unified, so when a
sequence leaves while others go on, its freed cells are reused by the others
and their cells are no longer in position order, which changes the order in
which attention sums. Where the batch changes shape like that (joining,
cancelling, preemption) the streams are checked by teacher forcing: every
generated token must be the serial model's greedy choice, or within a hair of
it (0.5 logits: reordered sums, compounded through quantized activations,
move logits by up to ~0.15 here). A corrupted sequence (another sequence's
cells, wrong positions) picks tokens whole logits below the best at once.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from typing import Any, Iterator

import pytest

from backends.llamacpp.batch import BatchEngine
from backends.llamacpp.jobs import DONE, END, ERROR, TEXT, EngineSettings, Job, Sampling
from backends.llamacpp.serial import LlamaEngine
from backends.model_cards import load_cards
from backends.weights import resolve_weights

pytestmark = [pytest.mark.e2e, pytest.mark.process]

GEMMA = "gemma-3-270m"
SMOL = "smollm2-135m-instruct"
PROMPTS = ["Once upon a time", "The capital of France is", "List three fruits:", "def fibonacci(n):",
           "Water boils at", "My favourite colour is", "The quick brown fox", "In 1969, astronauts"]
SEEDED = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, seed=1234)


class Outcome:
    """Collects one job's events the way the backend's queue would."""

    def __init__(self, n: int = 1) -> None:
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.finish: list[tuple[str, int] | None] = [None] * n
        self.end = threading.Event()
        self.error: BaseException | None = None
        self.ended_at = 0.0

    def __call__(self, ev: tuple) -> None:
        if ev[0] == TEXT:
            self.texts[ev[1]].append(ev[2])
        elif ev[0] == DONE:
            self.finish[ev[1]] = (ev[2], ev[3])
        elif ev[0] in (END, ERROR):
            self.error = ev[1] if ev[0] == ERROR else None
            self.ended_at = time.monotonic()
            self.end.set()

    def text(self, choice: int = 0) -> str:
        return "".join(self.texts[choice])

    def wait(self, timeout: float = 120) -> Outcome:
        assert self.end.wait(timeout), "the job never ended"
        assert self.error is None, repr(self.error)
        return self


class Recorder:
    """Token ids each finished choice generated, read off the batched engine's sequences."""

    def __init__(self, engine: BatchEngine) -> None:
        self.tokens: dict[tuple[int, int], list[int]] = {}
        real = engine._finish

        def finish(seq: Any, reason: str) -> None:
            self.tokens[(id(seq.job), seq.choice)] = list(seq.tokens[seq.prompt_len:])
            real(seq, reason)

        engine._finish = finish  # type: ignore[method-assign]

    def of(self, job: Job, choice: int = 0) -> list[int]:
        return self.tokens[(id(job), choice)]


@pytest.fixture(scope="module")
def smol_teacher() -> Iterator[Any]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(resolve_weights(load_cards()[SMOL])), n_ctx=2048, n_threads=2, logits_all=True,
                flash_attn=True, verbose=False)
    yield llm
    llm.close()


def assert_greedy(teacher: Any, prompt: list[int], generated: list[int], margin: float = 0.5) -> None:
    """Each generated token is the serial argmax, or within `margin` logits of it (a near tie)."""
    import numpy as np

    assert generated
    teacher.reset()
    teacher.eval(prompt + generated[:-1])
    scores = np.asarray(teacher.scores[len(prompt) - 1: len(prompt) - 1 + len(generated)])
    for i, token in enumerate(generated):
        best = float(scores[i].max())
        assert float(scores[i][token]) >= best - margin, f"token {i} ({token}) is not the greedy choice"


def make_job(engine: Any, prompt: str, max_tokens: int = 24, n: int = 1, stop: list[str] | None = None,
             grammar: Any = None, ignore_eos: bool = False, **sampling: Any) -> tuple[Job, Outcome]:
    tokens = engine.llm.tokenize(prompt.encode(), add_bos=True, special=True)
    out = Outcome(n)
    job = Job(prompt_tokens=tokens, max_tokens=max_tokens, sampling=Sampling(**{"temperature": 0.0, **sampling}),
              stop=stop or [], n=n, grammar=grammar, ignore_eos=ignore_eos, post=out)
    return job, out


def run(engine: Any, prompt: str, **kw: Any) -> Outcome:
    job, out = make_job(engine, prompt, **kw)
    engine.submit(job)
    return out.wait()


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def start(engine_cls: type, card: str, **kw: Any) -> Any:
    path = str(resolve_weights(load_cards()[card]))
    settings = EngineSettings(model_path=path, **{"n_ctx": 2048, "n_threads": 2, "max_queue": 16, **kw})
    engine = engine_cls(settings, name=f"{card}-{engine_cls.__name__}")
    engine.start()
    engine._loaded.wait(120)
    assert engine.load_error is None, engine.load_error
    return engine


@pytest.fixture(scope="module")
def gemma_serial() -> Iterator[LlamaEngine]:
    e = start(LlamaEngine, GEMMA)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def gemma_batch() -> Iterator[BatchEngine]:
    e = start(BatchEngine, GEMMA, parallel=4)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def smol_serial() -> Iterator[LlamaEngine]:
    e = start(LlamaEngine, SMOL, flash_attn=True)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def smol_batch() -> Iterator[BatchEngine]:
    e = start(BatchEngine, SMOL, parallel=8, flash_attn=True)
    yield e
    e.stop()


def idle(engine: BatchEngine) -> bool:
    return engine.active == 0 and engine.depth == 0


# -- a batch of one is the serial engine -------------------------------------------------------------


@pytest.mark.parametrize("sampling", [{}, SEEDED], ids=["greedy", "seeded"])
def test_lone_request_gives_the_serial_tokens_on_gemma(gemma_serial: LlamaEngine, gemma_batch: BatchEngine,
                                                        sampling: dict) -> None:
    long_prompt = "Summarise this: " + " ".join(f"item {i} is {i * 7 % 13}." for i in range(120))
    for prompt in [*PROMPTS[:3], long_prompt]:  # the long one (~900 tokens) is prefilled in two pieces
        a = run(gemma_serial, prompt, max_tokens=32, **sampling)
        b = run(gemma_batch, prompt, max_tokens=32, **sampling)
        assert b.text() == a.text() and b.finish == a.finish, prompt
        assert len(b.texts[0]) > 0


# -- batch members never corrupt each other ------------------------------------------------------------


@pytest.mark.parametrize("width", [4, 8])
def test_smollm2_concurrent_streams_match_serial_decoding(smol_serial: LlamaEngine, smol_batch: BatchEngine,
                                                          width: int) -> None:
    prompts = PROMPTS[:width]
    alone = [run(smol_serial, p, max_tokens=32, ignore_eos=True).text() for p in prompts]
    jobs = [make_job(smol_batch, p, max_tokens=32, ignore_eos=True) for p in prompts]
    for job, _ in jobs:
        smol_batch.submit(job)
    together = [out.wait().text() for _, out in jobs]
    assert together == alone
    assert len(set(alone)) == width


def test_requests_joining_mid_flight_stay_greedy(smol_serial: LlamaEngine, smol_batch: BatchEngine,
                                                 smol_teacher: Any) -> None:
    rec = Recorder(smol_batch)
    first = [make_job(smol_batch, p, max_tokens=48, ignore_eos=True) for p in PROMPTS[:3]]
    for job, _ in first:
        smol_batch.submit(job)
    wait_for(lambda: all(len(out.texts[0]) >= 8 for _, out in first))
    later = [make_job(smol_batch, p, max_tokens=24, ignore_eos=True) for p in PROMPTS[3:6]]
    for job, _ in later:
        smol_batch.submit(job)
    assert all(len(out.texts[0]) < 48 for _, out in first), "the first ones were still decoding"
    for job, out in first + later:
        out.wait()
        assert len(rec.of(job)) == job.max_tokens
        assert_greedy(smol_teacher, job.prompt_tokens, rec.of(job))
    # Until the first sequence left, the batch was exactly the serial computation.
    for (job, out), p in zip(later, PROMPTS[3:6]):
        assert out.text()[:20] == run(smol_serial, p, max_tokens=24, ignore_eos=True).text()[:20]


# -- cancellation, fairness, overload ---------------------------------------------------------------------


def test_cancellation_frees_the_sequence_kv_cells(smol_batch: BatchEngine, smol_teacher: Any) -> None:
    wait_for(lambda: idle(smol_batch))
    rec = Recorder(smol_batch)
    before = smol_batch.cancelled
    doomed, d_out = make_job(smol_batch, "Write a very long story.", max_tokens=1500, ignore_eos=True)
    kept, k_out = make_job(smol_batch, PROMPTS[0], max_tokens=40, ignore_eos=True)
    smol_batch.submit(doomed)
    smol_batch.submit(kept)
    wait_for(lambda: len(d_out.texts[0]) >= 5)
    assert smol_batch.kv_tokens() > 0
    doomed.cancelled.set()
    assert d_out.end.wait(30)
    assert d_out.finish == [None], "a cancelled choice reports no finish"
    # The survivor is unharmed by its neighbour's removal.
    k_out.wait()
    assert_greedy(smol_teacher, kept.prompt_tokens, rec.of(kept))
    wait_for(lambda: idle(smol_batch))
    assert smol_batch.cancelled == before + 1
    assert smol_batch.kv_tokens() == 0, "every slot's cells were freed (llama_memory_seq_pos_max == -1)"


def test_a_long_request_does_not_starve_short_ones(gemma_batch: BatchEngine) -> None:
    wait_for(lambda: idle(gemma_batch))
    long_job, long_out = make_job(gemma_batch, "Write a very long story.", max_tokens=400, ignore_eos=True)
    gemma_batch.submit(long_job)
    wait_for(lambda: len(long_out.texts[0]) >= 3)
    shorts = [make_job(gemma_batch, p, max_tokens=8, ignore_eos=True) for p in PROMPTS[:6]]  # more than the slots
    for job, _ in shorts:
        gemma_batch.submit(job)
    for _, out in shorts:
        out.wait()
    assert not long_out.end.is_set(), "every short request finished while the long one was still running"
    long_out.wait()
    assert long_out.finish == [("length", 400)]
    assert max(out.ended_at for _, out in shorts) < long_out.ended_at


def test_full_queue_raises_and_the_backend_says_overloaded() -> None:
    engine = start(BatchEngine, SMOL, parallel=2, max_queue=1, warmup=False)
    try:
        running = [make_job(engine, p, max_tokens=400, ignore_eos=True) for p in PROMPTS[:2]]
        for i, (job, _) in enumerate(running):
            engine.submit(job)
            wait_for(lambda: engine.active == i + 1)
        waiting, _ = make_job(engine, PROMPTS[2], max_tokens=4)
        engine.submit(waiting)  # the one queue place
        assert engine.depth == 1
        with pytest.raises(queue.Full):
            engine.submit(make_job(engine, PROMPTS[3], max_tokens=4)[0])
        for job, _ in running:
            job.cancelled.set()
        wait_for(lambda: idle(engine))
    finally:
        engine.stop()


def test_a_full_engine_process_is_a_503_with_retry_after() -> None:
    """Across the process boundary: the engine process answers FULL, the backend raises Overloaded."""
    from backends.base import CallContext
    from backends.contract.errors import Overloaded
    from backends.contract.protocol import ChatCompletionRequest
    from backends.llamacpp.backend import LlamaCppBackend
    from backends.model_cards import load_cards as cards
    from routing.config import LlamaCppModelConfig

    def chat(prompt: str, max_tokens: int) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({"model": "smol", "max_tokens": max_tokens, "ignore_eos": True,
                                                     "messages": [{"role": "user", "content": prompt}]})

    async def scenario() -> None:
        backend = LlamaCppBackend("smol", cards()[SMOL], LlamaCppModelConfig(card=SMOL, parallel=2, max_queue=1,
                                                                             warmup=False))
        await backend.start()
        try:
            assert backend.status().state == "ready", backend.status()
            streams = [await backend.chat_stream(chat(p, 400), CallContext()) for p in PROMPTS[:2]]
            queued = asyncio.create_task(backend.chat(chat(PROMPTS[2], 4), CallContext()))
            for _ in range(100):  # the engine's counters arrive every 0.1 s
                if backend.status().stats.get("queue_depth") == 1:
                    break
                await asyncio.sleep(0.05)
            assert backend.status().stats["queue_depth"] == 1
            with pytest.raises(Overloaded) as err:
                await backend.chat(chat(PROMPTS[3], 4), CallContext())
            assert int(err.value.headers["Retry-After"]) >= 1 and err.value.status_code == 503
            for stream in streams:
                await stream.aclose()  # cancels both: the queued request gets a slot and finishes
            body = await asyncio.wait_for(queued, 60)
            assert body["choices"][0]["finish_reason"] == "length"
        finally:
            await backend.aclose()

    asyncio.run(scenario())


# -- what a request can ask for ---------------------------------------------------------------------------


def test_stop_strings_and_grammar_match_serial(gemma_serial: LlamaEngine, gemma_batch: BatchEngine) -> None:
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
    a = run(gemma_serial, prompt, max_tokens=12, stop=[" 14"])
    b = run(gemma_batch, prompt, max_tokens=12, stop=[" 14"])
    assert (b.text(), b.finish) == (a.text(), a.finish)
    assert b.finish[0][0] == "stop" and " 14" not in b.text()

    json_prompt = '<start_of_turn>user\n{"ok": true}<end_of_turn>\n<start_of_turn>model\n'
    a = run(gemma_serial, json_prompt, max_tokens=60, grammar=LlamaGrammar.from_string(JSON_GBNF, verbose=False))
    b = run(gemma_batch, json_prompt, max_tokens=60, grammar=LlamaGrammar.from_string(JSON_GBNF, verbose=False))
    assert b.text() == a.text()
    assert b.finish[0][0] == "stop" and isinstance(json.loads(b.text()), dict)

    # n=2 runs as two sequences sharing the prompt's KV cells: two distinct seeded answers.
    b = run(gemma_batch, PROMPTS[0], max_tokens=16, n=2, **SEEDED)
    assert b.text(0) != b.text(1) and all(f is not None for f in b.finish)


def test_n_choices_share_the_prompt_and_match_serial(smol_serial: LlamaEngine, smol_batch: BatchEngine) -> None:
    """Choice i uses seed + i, as in the serial engine, which runs the choices one after another."""
    a = run(smol_serial, PROMPTS[0], max_tokens=24, n=3, ignore_eos=True, **SEEDED)
    b = run(smol_batch, PROMPTS[0], max_tokens=24, n=3, ignore_eos=True, **SEEDED)
    assert [b.text(i) for i in range(3)] == [a.text(i) for i in range(3)]
    assert len({b.text(i) for i in range(3)}) == 3 and b.finish == a.finish


# -- KV pressure and prefix reuse -------------------------------------------------------------------------


def test_preempted_sequences_resume_seamlessly(smol_teacher: Any) -> None:
    """Four sequences that together need ~3x the context: the youngest are preempted and recomputed."""
    engine = start(BatchEngine, SMOL, parallel=4, n_ctx=256, warmup=False, flash_attn=True)
    rec = Recorder(engine)
    try:
        jobs = [make_job(engine, p, max_tokens=180, ignore_eos=True) for p in PROMPTS[:4]]
        for job, _ in jobs:
            engine.submit(job)
        got = [out.wait(180).text() for _, out in jobs]
        assert engine.preemptions > 0
        assert all(out.finish == [("length", 180)] for _, out in jobs)
        for job, _ in jobs:  # resumed where they stopped: no token lost, repeated or garbled
            assert_greedy(smol_teacher, job.prompt_tokens, rec.of(job))
        assert all(got)
        wait_for(lambda: idle(engine))
        assert engine.kv_tokens() == 0
    finally:
        engine.stop()


def test_prefix_reuse_skips_the_shared_system_prompt(smol_serial: LlamaEngine) -> None:
    system = "You are a helpful assistant. " + " ".join(f"Rule {i}: answer in at most {i + 3} words." for i in range(30))
    engine = start(BatchEngine, SMOL, parallel=2, reuse_prompt_prefix=True, warmup=False, flash_attn=True)
    try:
        first = run(engine, f"{system}\nQ: {PROMPTS[1]}\nA:", max_tokens=16)
        assert engine.prefix_tokens_reused == 0
        second = run(engine, f"{system}\nQ: {PROMPTS[4]}\nA:", max_tokens=16)
        shared = len(engine.llm.tokenize(system.encode(), add_bos=True, special=True))
        assert shared - 8 <= engine.prefix_tokens_reused <= shared + 8
        assert engine.stats()["prefix_tokens_reused"] == engine.prefix_tokens_reused
        # The same prompt again reuses all but its last token (rounded down to the 4-row boundary).
        again = run(engine, f"{system}\nQ: {PROMPTS[4]}\nA:", max_tokens=16)
        assert again.text() == second.text()
        for out, q in ((first, PROMPTS[1]), (second, PROMPTS[4])):
            assert out.text() == run(smol_serial, f"{system}\nQ: {q}\nA:", max_tokens=16).text()
    finally:
        engine.stop()
