"""A local embedding model (a model card with `capabilities: [embeddings]`) served by llama.cpp.

The model is loaded once, at start, into one dedicated thread: every llama.cpp call runs there, so the
event loop never waits on it and one context is never used by two threads. Several inputs share one
`llama_decode` (a sequence each, up to the batch's token budget), pooled as the GGUF says (its
`pooling_type`, mean for sentence-transformers models).

Why a thread and not an engine process like chat: an encoder of a few tens of MB answers in
milliseconds and holds no state between requests, so the process, socket and supervisor would cost
more than the work (see bench/embeddings.py). The trade: a native crash in it costs the gateway
process, not just this backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from backends.base import Backend, BackendStatus, CallContext, SSEStream
from backends.contract.embeddings import embedding_response, normalised, shortened
from backends.contract.errors import ContextLengthExceeded, InvalidRequest, NotReady, UpstreamTimeout
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from backends.llamacpp.settings import LlamaCppModelConfig
from backends.model_cards import ModelCard
from backends.weights import Progress, resolve_weights

log = logging.getLogger("llm_gateway.llamacpp")

BATCH_TOKENS = 2048  # tokens decoded together in one llama_decode (all of one input must fit in it)


class LlamaEmbeddingBackend(Backend):
    kind = "llamacpp"

    def __init__(self, name: str, card: ModelCard, config: LlamaCppModelConfig,
                 progress: Progress | None = None) -> None:
        super().__init__(name, card, required=config.required)
        self.config = config
        self._progress = progress
        self._llm: Any = None
        self._failed: str | None = None
        self._n_ctx = min(config.n_ctx, card.context_length)  # the longest input, in tokens
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{name}")
        self.model_path: Path | None = None
        facts = card.embedding
        self._dimensions = facts.dimensions if facts else None
        self._matryoshka = bool(facts and facts.matryoshka)
        self._normalize = facts.normalize if facts else True
        self.completed = 0
        self.inputs = 0

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        try:
            path = await asyncio.to_thread(resolve_weights, self.card, self.config.model_path, self._progress)
            self.model_path = path
            self._llm = await self._run(self._load, path)
        except Exception as exc:
            self._failed = str(exc)
            log.error("model %s failed to start: %s", self.name, exc)
            return
        log.info("embedding model %s ready (%d dimensions, inputs up to %d tokens)", self.name,
                 self._dimensions, self._n_ctx)

    def _load(self, path: Path) -> Any:
        from llama_cpp import Llama

        budget = max(BATCH_TOKENS, self._n_ctx)
        llm = Llama(str(path), embedding=True, n_ctx=budget, n_batch=budget, n_ubatch=budget,
                    n_threads=self.config.n_threads, verbose=False)
        native = llm.n_embd()
        if self._dimensions is not None and self._dimensions != native:
            raise ValueError(f"the card says {self._dimensions} dimensions, the GGUF has {native}")
        self._dimensions = native
        if self.config.warmup:
            _embed(llm, [llm.tokenize(b"warm up")])
        return llm

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await self._run(llm.close)
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def status(self) -> BackendStatus:
        state = "failed" if self._failed else "ready" if self._llm is not None else "loading"
        return BackendStatus(self.name, self.kind, state, self.required, self._failed,  # type: ignore[arg-type]
                             {"completed": self.completed, "inputs": self.inputs} if self._llm is not None else {})

    @property
    def available(self) -> bool:
        return self._llm is not None

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def model_id(self) -> str:
        return self.card.id if self.card else self.name

    def estimate_tokens(self, request: Any) -> int | None:
        if self._llm is None or not isinstance(request, EmbeddingRequest):
            return None
        try:
            return sum(len(self._llm.tokenize(x.encode())) if isinstance(x, str) else len(x)
                       for x in request.inputs())
        except Exception:
            return None

    # -- the endpoint ----------------------------------------------------------

    async def embeddings(self, request: EmbeddingRequest, ctx: CallContext) -> dict[str, Any]:
        if self._llm is None:
            raise NotReady(f"The model '{self.name}' is {self.status().state}; please retry shortly.")
        assert self._dimensions is not None
        dims = ctx.params.get("dimensions", request.dimensions)
        shortened([], dims, self._dimensions, self._matryoshka, request.model)  # a bad `dimensions` fails first
        work = self._run(self._compute, request.inputs())
        timeout = ctx.read_timeout or self.config.request_timeout_s
        try:
            vectors, n_tokens = await asyncio.wait_for(asyncio.shield(work), timeout)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"The model '{self.name}' did not answer within {timeout:g}s.") from None
        vectors = shortened(vectors, dims, self._dimensions, self._matryoshka, request.model)
        self.completed += 1
        self.inputs += len(vectors)
        return embedding_response(self.model_id, vectors, n_tokens, request.encoding_format)

    def _compute(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """On the model's thread: tokenize, check, embed in as few decodes as the budget allows."""
        llm = self._llm
        n_vocab = llm.n_vocab()
        seqs: list[list[int]] = []
        for i, item in enumerate(inputs):
            tokens = llm.tokenize(item.encode()) if isinstance(item, str) else item
            where = "input" if len(inputs) == 1 else f"input[{i}]"
            bad = next((t for t in tokens if t >= n_vocab), None)
            if bad is not None:
                raise InvalidRequest(f"Invalid token id {bad} in '{where}': this model's vocabulary has {n_vocab} "
                                     "tokens.", param=where, code="invalid_value")
            if len(tokens) > self._n_ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {self._n_ctx} tokens, however you requested "
                    f"{len(tokens)} tokens in '{where}'. Please reduce the length of the input.", param=where)
            seqs.append(tokens)
        vectors = _embed(llm, seqs)
        if self._normalize:
            vectors = [normalised(v) for v in vectors]
        return vectors, sum(len(s) for s in seqs)

    # -- not a chat model --------------------------------------------------------

    def _no_text(self) -> InvalidRequest:
        return InvalidRequest(f"The model '{self.model_id}' is an embedding model: use /v1/embeddings.",
                              param="model", code="unsupported_model")

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> dict[str, Any]:
        raise self._no_text()

    async def chat_stream(self, request: ChatCompletionRequest, ctx: CallContext) -> SSEStream:
        raise self._no_text()

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> dict[str, Any]:
        raise self._no_text()

    async def completion_stream(self, request: CompletionRequest, ctx: CallContext) -> SSEStream:
        raise self._no_text()


def _embed(llm: Any, seqs: list[list[int]]) -> list[list[float]]:
    """Pooled vectors of token sequences, as many per `llama_decode` as fit the batch (one sequence each)."""
    import llama_cpp

    n_embd, budget = llm.n_embd(), llm.n_batch
    n_seq_max = llm.context_params.n_seq_max
    batch, ctx = llm._batch, llm._ctx
    out: list[list[float]] = []

    def decode(count: int) -> None:
        ctx.kv_cache_clear()
        ctx.decode(batch)
        batch.reset()
        for s in range(count):
            out.append(llama_cpp.llama_get_embeddings_seq(ctx.ctx, s)[:n_embd])

    batch.reset()
    used = in_batch = 0
    started = time.monotonic()
    for tokens in seqs:
        if in_batch and (used + len(tokens) > budget or in_batch >= n_seq_max):
            decode(in_batch)
            used = in_batch = 0
        batch.add_sequence(tokens, in_batch, True)
        used += len(tokens)
        in_batch += 1
    if in_batch:
        decode(in_batch)
    ctx.kv_cache_clear()
    log.debug("embedded %d inputs in %.1f ms", len(seqs), (time.monotonic() - started) * 1000)
    return out
