"""The types every llama.cpp engine shares: settings, sampling, a job and the events it posts.

Kept below the engines (serial, batched) and the engine process that hosts
them, so none of those imports another to learn a name. A `Job` lives inside
the engine process; the gateway side only ever sees its events, which cross
the process boundary as the messages of `wire`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# Events an engine posts for a job, in this order: TEXT and DONE per choice, then END (or ERROR).
TEXT = "text"  # (TEXT, choice, text, logprob entries or None): see `logprobs`
DONE = "done"  # (DONE, choice, finish_reason, completion_tokens)
END = "end"  # (END,)
ERROR = "error"  # (ERROR, exception)
VECTORS = "vectors"  # (VECTORS, [vector per input]): an embedding job's answer, before its END

GENERATE = "generate"  # an engine's kind: a chat/completion model (`LlamaEngine`, `BatchEngine`)
EMBED = "embed"  # an embedding model (`embed_engine.EmbedEngine`)


@dataclass(slots=True)
class Sampling:
    """Explicit sampling values: llama.cpp's own defaults differ from OpenAI's."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None


@dataclass(slots=True)
class Job:
    prompt_tokens: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    n: int = 1
    grammar: Any = None  # llama_cpp.LlamaGrammar
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives per token when the client asked for logprobs (see `logprobs`)
    priority: int = 0  # its class, `backends.contract.priority.Priority` (0 interactive): see `schedule`
    post: Callable[[tuple], None] = lambda ev: None  # called on the engine thread, once per event
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class EmbedJob:
    """Token sequences to embed, one vector each (pooled as the GGUF says; unit length if `normalize`)."""

    inputs: list[list[int]]
    normalize: bool = True
    post: Callable[[tuple], None] = lambda ev: None  # called on the engine thread, once per event
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class EngineSettings:
    model_path: str
    kind: str = GENERATE  # GENERATE or EMBED: which engine the process hosts
    n_ctx: int = 8192
    n_threads: int | None = None
    n_batch: int = 512
    flash_attn: bool = False
    max_queue: int = 16
    warmup: bool = True
    reuse_prompt_prefix: bool = False
    # GENERATE: sequences decoded together; above 1 `BatchEngine` serves the model. EMBED: n_batch is the
    # token budget of one llama_decode, shared by every queued job's inputs; n_ctx the longest input.
    parallel: int = 1
    prefill_chunk: int = 128  # prompt tokens per decode step while other sequences are decoding
    # Extra buffer types (repacked weights, AMX): fast, and the part of llama.cpp most tied to the CPU.
    # Safe mode turns them off after a crash while loading.
    use_extra_bufts: bool = True


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
