"""Priorities on the real model, through the backend and an engine process: an interactive request does
not wait behind batch lines, and the batch lines it preempted still give their own answers.

The class travels as it does in the gateway: the request's `Scheduling` context variable, read by the
backend when it submits the job and carried over the wire to the engine.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Awaitable, Callable, TypeVar

import pytest

from backends.base import CallContext
from backends.contract import priority as scheduling
from backends.contract.priority import Priority, Scheduling
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.settings import LlamaCppModelConfig
from backends.model_cards import load_cards

pytestmark = [pytest.mark.e2e, pytest.mark.process]

GEMMA = "gemma-3-270m"
# Counting: every token wins by a wide margin, so a batch of two computes the same tokens as a lone
# sequence (open prose has near ties that the order of summation in a batch may flip; see
# test_llamacpp_batching), and a resumed sequence that lost or repeated a token shows at once.
BATCH_PROMPTS = ["1, 2, 3, 4, 5, 6, 7, 8,", "200, 201, 202, 203, 204,"]
BATCH_TOKENS = 64
T = TypeVar("T")


def chat(prompt: str, max_tokens: int) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "gemma", "max_tokens": max_tokens, "temperature": 0,
                                                 "ignore_eos": True,
                                                 "messages": [{"role": "user", "content": prompt}]})


def count(prompt: str) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "gemma", "prompt": prompt, "max_tokens": BATCH_TOKENS,
                                             "temperature": 0, "ignore_eos": True})


async def as_class(priority: Priority, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call` in a task of that class, as the gateway's admission would set it."""
    async def task() -> T:
        scheduling.current.set(Scheduling(priority=priority, tenant="test"))
        return await call()

    return await asyncio.create_task(task())


async def stream_text(backend: LlamaCppBackend, request: CompletionRequest, chunks: list[str]) -> str:
    """The streamed text, each piece appended to `chunks` as it comes."""
    import orjson

    stream = await backend.completion_stream(request, CallContext())
    async for frame in stream:
        for line in frame.split(b"\n"):
            if line.startswith(b"data: {"):
                choices = orjson.loads(line[6:])["choices"]
                if choices and choices[0]["text"]:
                    chunks.append(choices[0]["text"])
    return "".join(chunks)


async def ttft(backend: LlamaCppBackend, priority: Priority) -> float:
    """Seconds to the first token of a short interactive answer (the stream opens at its first event)."""
    async def call() -> float:
        started = time.monotonic()
        stream = await backend.chat_stream(chat("Say hello.", 4), CallContext())
        took = time.monotonic() - started
        async for _ in stream:
            pass
        return took

    return await as_class(priority, call)


async def stat(backend: LlamaCppBackend, key: str, want: Any, timeout: float = 5.0) -> Any:
    """The engine's counters arrive every 0.1 s: wait for `key` to reach `want`, return what it is."""
    deadline = time.monotonic() + timeout
    while backend.status().stats.get(key) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return backend.status().stats.get(key)


def test_an_interactive_request_preempts_batch_lines_that_then_finish_unchanged() -> None:
    async def scenario() -> None:
        config = LlamaCppModelConfig(card=GEMMA, parallel=2, n_ctx=1024, max_queue=4, request_timeout_s=120)
        backend = LlamaCppBackend("gemma", load_cards()[GEMMA], config)
        await backend.start()
        try:
            assert backend.status().state == "ready", backend.status()
            alone = [await as_class(Priority.BATCH, lambda p=p: stream_text(backend, count(p), []))
                     for p in BATCH_PROMPTS]
            idle = statistics.median([await ttft(backend, Priority.INTERACTIVE) for _ in range(3)])

            chunks: list[list[str]] = [[] for _ in BATCH_PROMPTS]
            lines = [asyncio.create_task(as_class(Priority.BATCH, lambda p=p, c=c: stream_text(backend, count(p), c))) for p, c in zip(BATCH_PROMPTS, chunks)]
            while min(len(c) for c in chunks) < 5:  # both slots taken, both lines decoding
                await asyncio.sleep(0.01)
            loaded = await ttft(backend, Priority.INTERACTIVE)
            assert loaded < 3 * idle + 0.5, f"TTFT {loaded:.3f}s behind two batch lines, {idle:.3f}s idle"
            assert all(len(c) < BATCH_TOKENS - 20 for c in chunks), "the batch lines were still running"
            together = await asyncio.gather(*lines)

            assert await stat(backend, "preemptions_priority", 1) == 1
            assert backend.status().stats["preemptions_kv"] == 0
            assert together == alone, "the preempted line resumed with the tokens it would have had"
            assert await stat(backend, "waiting_batch", 0) == 0
            print(f"TTFT idle {idle * 1000:.0f} ms, behind two batch lines {loaded * 1000:.0f} ms")
        finally:
            await backend.aclose()

    asyncio.run(scenario())
