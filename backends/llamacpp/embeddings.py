"""A local embedding model (a model card with `capabilities: [embeddings]`) served by llama.cpp.

Like a chat model, the model runs in an engine process of its own (`host` hosting an `embed_engine.
EmbedEngine`), started, watched and restarted by the same supervisor (`supervisor`), shared by every
worker of `--workers N` the same way (`control`). A native crash in the encoder then costs one backend
for the second or two of a restart, never the gateway: the requests in it fail with EngineUnavailable
(retryable: the router fails over, the client retries) and `/ready` shows `restarting`, then `ready`.

This side does what needs no model: it tokenizes with a vocab-only copy (so routing can count tokens
even while the engine restarts), checks the inputs (ids in the vocabulary, lengths) so a client's
mistake is its 400 here, and shortens vectors for `dimensions`. The engine pools each input as the GGUF
says (`pooling_type`, mean for sentence-transformers models), scales it to unit length when the card
says so, and decodes the inputs of every queued request together, up to BATCH_TOKENS per `llama_decode`
(see `embed_engine` for the order). The socket hop costs little next to the decode (bench/embeddings.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from backends.aio import within
from backends.base import BackendStatus, CallContext, SSEStream
from backends.contract.embeddings import embedding_response, shortened
from backends.contract.errors import (
    ContextLengthExceeded,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    UpstreamTimeout,
)
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from backends.llamacpp import wire
from backends.llamacpp.client import LOST
from backends.llamacpp.control import EngineControl, LocalControl
from backends.llamacpp.engine_backend import EngineBackend, vocab_only
from backends.llamacpp.instances import EngineSet
from backends.llamacpp.jobs import EMBED, EngineSettings
from backends.llamacpp.settings import LlamaCppModelConfig
from backends.model_cards import ModelCard
from backends.weights import Progress, resolve_weights

log = logging.getLogger("llm_gateway.llamacpp")

BATCH_TOKENS = 2048  # tokens decoded together in one llama_decode (all of one input must fit in it)
_LONG_TEXT = 16_000  # characters in a request; more are tokenized off the event loop


class LlamaEmbeddingBackend(EngineBackend):
    key_tag = "embed-"

    def __init__(self, name: str, card: ModelCard, config: LlamaCppModelConfig,
                 progress: Progress | None = None, control: EngineControl | None = None) -> None:
        super().__init__(name, card, config, progress, control)  # its n_ctx: the longest input, in tokens
        self._n_vocab = 0
        facts = card.embedding
        self._dimensions = facts.dimensions if facts else None
        self._matryoshka = bool(facts and facts.matryoshka)
        self._normalize = facts.normalize if facts else True

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        try:
            path = await asyncio.to_thread(resolve_weights, self.card, self.config.model_path, self._progress)
            self.model_path = path
            self.tokenizer = await asyncio.to_thread(vocab_only, path)
            self._n_vocab = self.tokenizer.n_vocab()
            self._check_dimensions(_gguf_dimensions(self.tokenizer.metadata))
            control = self._control or LocalControl()
            self._control = control
            self.engines = EngineSet(self.name, self.key, control, self._engine_settings(path), self.config.instances,
                                     listeners=self.listeners)
            await self.engines.start()
            info = next((c.info for c in self.engines.clients if c.info.get("n_embd")), None)
            if info is not None:
                self._check_dimensions(int(info["n_embd"]))
        except Exception as exc:
            self._failed = str(exc)
            log.error("model %s failed to start: %s", self.name, exc)
            return
        if self.engines.ready:
            log.info("embedding model %s ready (%s dimensions, inputs up to %d tokens, instances=%d)", self.name,
                     self._dimensions, self._n_ctx, len(self.engines.clients))
        else:
            log.error("model %s failed to start: %s", self.name, self.engines.detail())

    def _check_dimensions(self, native: int | None) -> None:
        if not native:
            return
        if self._dimensions is not None and self._dimensions != native:
            raise ValueError(f"the card says {self._dimensions} dimensions, the GGUF has {native}")
        self._dimensions = native

    def _engine_settings(self, path: Path) -> EngineSettings:
        c = self.config
        return EngineSettings(model_path=str(path), kind=EMBED, n_ctx=self._n_ctx, n_threads=c.n_threads,
                              n_batch=max(BATCH_TOKENS, self._n_ctx), max_queue=c.max_queue, warmup=c.warmup)

    def status(self) -> BackendStatus:
        engines = self.engines
        if self._failed is not None or engines is None:
            return BackendStatus(self.name, self.kind, self._state(), self.required, self._failed)  # type: ignore[arg-type]
        stats: dict[str, Any] = {"instances": len(engines.clients), "queue_depth": 0, "busy": 0, "completed": 0,
                                 "inputs": 0, "decodes": 0}
        stats.update(engines.stats())
        stats.pop("max_jobs_per_decode", None)  # a maximum, not a sum over engines
        return BackendStatus(self.name, self.kind, engines.state, self.required, engines.detail(),  # type: ignore[arg-type]
                             stats, engines.supervision())

    def estimate_tokens(self, request: Any) -> int | None:
        if self.tokenizer is None or not isinstance(request, EmbeddingRequest):
            return None
        try:
            return sum(len(self.tokenizer.tokenize(x.encode())) if isinstance(x, str) else len(x)
                       for x in request.inputs())
        except Exception:
            return None

    # -- the endpoint ----------------------------------------------------------

    async def embeddings(self, request: EmbeddingRequest, ctx: CallContext) -> dict[str, Any]:
        self._require_ready()
        assert self._dimensions is not None and self.engines is not None
        dims = ctx.params.get("dimensions", request.dimensions)
        shortened([], dims, self._dimensions, self._matryoshka, request.model)  # a bad `dimensions` fails first
        inputs = request.inputs()
        if sum(len(x) for x in inputs if isinstance(x, str)) > _LONG_TEXT:
            seqs = await asyncio.to_thread(self._tokens, inputs)
        else:
            seqs = self._tokens(inputs)
        timeout = ctx.read_timeout or self.config.request_timeout_s
        vectors = await self._embed(seqs, time.monotonic() + timeout, timeout)
        vectors = shortened(vectors, dims, self._dimensions, self._matryoshka, request.model)
        return embedding_response(self.model_id, vectors, sum(len(s) for s in seqs), request.encoding_format)

    def _tokens(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Each input's token ids, checked against the vocabulary and the longest input."""
        n_vocab = self._n_vocab
        seqs: list[list[int]] = []
        for i, item in enumerate(inputs):
            tokens = self.tokenizer.tokenize(item.encode()) if isinstance(item, str) else item
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
        return seqs

    async def _embed(self, seqs: list[list[int]], deadline: float, timeout: float) -> list[list[float]]:
        """One job on the least loaded engine: its vectors. Every engine error becomes a gateway error here."""
        timed_out = UpstreamTimeout(f"The model '{self.name}' did not answer within {timeout:g}s.")
        handle, ev = await self._submit(wire.embed_spec(inputs=seqs, normalize=self._normalize), deadline, timed_out)
        assert self.engines is not None
        vectors: list[list[float]] | None = None
        try:
            while True:
                op = ev[0]
                if op == wire.VECTORS:
                    vectors = ev[2]
                elif op == wire.END:
                    break
                elif op == wire.ERROR:
                    log.error("embedding failed on %s: %s", self.name, ev[2])
                    raise EngineError(f"The model '{self.name}' failed while embedding.")
                elif op == LOST:
                    log.error("model %s lost a request: %s", self.name, ev[2])
                    raise self._lost("embedding")
                try:
                    ev = await within(handle.events.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise timed_out from None
        finally:
            handle.cancel()
        if vectors is None:  # ended without an answer: the engine was stopping
            raise EngineUnavailable(f"The model '{self.name}' stopped while embedding; try again.",
                                    retry_after=self.engines.retry_after())
        return vectors

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


def _gguf_dimensions(metadata: dict[str, str]) -> int | None:
    """The vector size the GGUF declares (`<arch>.embedding_length`); a vocab-only model has no n_embd()."""
    raw = metadata.get(f"{metadata.get('general.architecture', '')}.embedding_length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
