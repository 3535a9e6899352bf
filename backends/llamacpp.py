"""The in-process llama.cpp backend: GGUF models on the CPU.

This module maps OpenAI requests onto engine jobs and engine events back onto
OpenAI bodies and SSE frames. The engines (threads, queue, token loop) live in
`llamacpp_engine` (serial, `parallel: 1`) and `llamacpp_batch` (continuous
batching); the wire shapes in `openai_format`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from backends import openai_format as fmt
from backends.base import Backend, BackendStatus, CallContext, SSEStream
from backends.chat_template import ChatTemplate
from backends.llamacpp_batch import BatchEngine
from backends.llamacpp_engine import DONE, END, ERROR, TEXT, EngineSettings, Job, LlamaEngine, Sampling
from gateway.aio import within
from gateway.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    NotReady,
    Overloaded,
    UpstreamTimeout,
)
from gateway.model_cards import ModelCard
from gateway.protocol import ChatCompletionRequest, CompletionRequest, ResponseFormatJSONObject, ResponseFormatJSONSchema, SamplingFields
from gateway.weights import Progress, resolve_weights
from routing.config import LlamaCppModelConfig

log = logging.getLogger("llm_gateway.llamacpp")

_LONG_TEXT = 16_000  # characters; longer prompts are tokenized off the event loop


class LlamaCppBackend(Backend):
    kind = "llamacpp"
    supports_continuation = True

    def __init__(self, name: str, card: ModelCard, config: LlamaCppModelConfig, progress: Progress | None = None) -> None:
        super().__init__(name, card, required=config.required)
        self.config = config
        self._progress = progress
        self.engines: list[LlamaEngine | BatchEngine] = []
        self._state = "loading"
        self._detail: str | None = None
        self._template: ChatTemplate | None = None
        self._fingerprint: str | None = None
        self._n_ctx = min(config.n_ctx, card.context_length)
        self.model_path: Path | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        try:
            path = await asyncio.to_thread(resolve_weights, self.card, self.config.model_path, self._progress)
            self.model_path = path
            engine_cls = BatchEngine if self.config.parallel > 1 else LlamaEngine
            for i in range(self.config.instances):
                engine = engine_cls(self._engine_settings(path), name=f"{self.name}#{i}")
                self.engines.append(engine)
                engine.start()
            await asyncio.gather(*(e.wait_loaded() for e in self.engines))
            llm = self.engines[0].llm
            self._n_ctx = llm.n_ctx()
            self._template = self._chat_template(llm)
            self._fingerprint = _fingerprint(path)
            self._state = "ready"
            log.info("model %s ready (n_ctx=%d, instances=%d)", self.name, self._n_ctx, len(self.engines))
        except Exception as exc:
            self._state = "failed"
            self._detail = str(exc)
            log.error("model %s failed to start: %s", self.name, exc)

    async def aclose(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(e.stop) for e in self.engines))
        self._state = "stopped"

    def _engine_settings(self, path: Path) -> EngineSettings:
        c = self.config
        return EngineSettings(
            model_path=str(path), n_ctx=self._n_ctx, n_threads=c.n_threads, n_batch=c.n_batch,
            flash_attn=c.flash_attn, max_queue=c.max_queue, warmup=c.warmup,
            reuse_prompt_prefix=c.reuse_prompt_prefix, parallel=c.parallel,
        )

    def _chat_template(self, llm: Any) -> ChatTemplate | None:
        """The GGUF's own template wins; the card's is the fallback."""
        source = llm.metadata.get("tokenizer.chat_template") or self.card.chat_template
        if not source:
            return None
        model = llm._model
        return ChatTemplate(source, bos_token=model.token_get_text(model.token_bos()),
                            eos_token=model.token_get_text(model.token_eos()))

    def status(self) -> BackendStatus:
        stats = {
            "instances": len(self.engines),
            "queue_depth": sum(e.depth for e in self.engines),
            "busy": sum(1 for e in self.engines if e.busy),
            "completed": sum(e.completed for e in self.engines),
            "cancelled": sum(e.cancelled for e in self.engines),
            "tokens_generated": sum(e.tokens_generated for e in self.engines),
        } if self.engines else {}
        batching = [e for e in self.engines if isinstance(e, BatchEngine)]
        if batching:
            stats["parallel"] = self.config.parallel
            for e in batching:
                for key, value in e.stats().items():
                    stats[key] = stats.get(key, 0) + value
        return BackendStatus(self.name, self.kind, self._state, self.required, self._detail, stats)  # type: ignore[arg-type]

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def model_id(self) -> str:
        """What responses call the model: the card's id, whatever the deployment is named."""
        return self.card.id if self.card else self.name

    # -- OpenAI endpoints ------------------------------------------------------

    def load_score(self) -> float:
        return float(sum(e.load for e in self.engines))

    def estimate_tokens(self, request: Any) -> int | None:
        """Exact prompt tokens with the model's own template and tokenizer (thread-safe in llama.cpp)."""
        if self._state != "ready":
            return None
        try:
            if isinstance(request, ChatCompletionRequest):
                if self._template is None:
                    return None
                text = self._template.render(request.messages)
                return len(self.engines[0].llm.tokenize(text.encode(), add_bos=False, special=True))
            return sum(len(self.engines[0].llm.tokenize(p.encode(), add_bos=True, special=True))
                       if isinstance(p, str) else len(p) for p in request.prompts())
        except Exception:  # a bad request is reported by the request path itself, not here
            return None

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> dict[str, Any]:
        request = _with_params(request, ctx)
        job, prompt_len = await self._chat_job(request, ctx.continue_from)
        texts, finishes, produced = await self._collect(job, request.n)
        return fmt.chat_response(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id, fingerprint=self._fingerprint,
            choices=list(zip(texts, finishes)), prompt_tokens=prompt_len, completion_tokens=produced,
        )

    async def chat_stream(self, request: ChatCompletionRequest, ctx: CallContext) -> SSEStream:
        request = _with_params(request, ctx)
        job, prompt_len = await self._chat_job(request, ctx.continue_from)
        events = self._events(job)
        first = await _first(events)
        chunks = fmt.ChatChunks(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id,
                                fingerprint=self._fingerprint, include_usage=request.include_usage)
        return self._chat_frames(first, events, chunks, prompt_len, request.include_usage)

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> dict[str, Any]:
        request = _with_params(request, ctx)
        self._check_completion_params(request)
        choices: list[tuple[str, str]] = []
        prompt_total = produced_total = 0
        for prompt in request.prompts():
            tokens, echo = await self._completion_prompt(prompt)
            job = self._job(request, tokens, self._max_tokens(request, len(tokens), "prompt"))
            self._submit(job)
            texts, finishes, produced = await self._collect(job, request.n)
            prefix = echo if request.echo else ""
            choices += [(prefix + t, f) for t, f in zip(texts, finishes)]
            prompt_total += len(tokens)
            produced_total += produced
        return fmt.completion_response(
            id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id, fingerprint=self._fingerprint,
            choices=choices, prompt_tokens=prompt_total, completion_tokens=produced_total,
        )

    async def completion_stream(self, request: CompletionRequest, ctx: CallContext) -> SSEStream:
        request = _with_params(request, ctx)
        self._check_completion_params(request)
        prompts = request.prompts()
        prepared = [await self._completion_prompt(p) for p in prompts]
        for tokens, _ in prepared:
            self._max_tokens(request, len(tokens), "prompt")  # refuse overflow before streaming
        tokens, _ = prepared[0]
        job = self._job(request, tokens, self._max_tokens(request, len(tokens), "prompt"))
        self._submit(job)
        events = self._events(job)
        first = await _first(events)
        chunks = fmt.CompletionChunks(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id,
                                      fingerprint=self._fingerprint)
        return self._completion_frames(request, prepared, first, events, chunks)

    # -- request preparation ---------------------------------------------------

    def _require_ready(self) -> None:
        if self._state != "ready":
            raise NotReady(f"The model '{self.name}' is {self._state}; try again shortly.")

    async def _chat_job(self, request: ChatCompletionRequest, continue_from: str | None = None) -> tuple[Job, int]:
        self._require_ready()
        if request.logprobs or request.top_logprobs:
            raise InvalidRequest("logprobs are not supported by the llama.cpp backend.", param="logprobs",
                                 code="unsupported_parameter")
        if request.tools and request.tool_choice != "none":  # OpenAI defaults to "auto" when tools are given
            raise InvalidRequest(f"The model '{self.name}' does not support tool calling.", param="tools",
                                 code="unsupported_parameter")
        if self._template is None:
            raise InvalidRequest(f"The model '{self.name}' has no chat template; use /v1/completions.",
                                 param="model", code="unsupported_model")
        prompt = self._template.render(request.messages)
        if continue_from:
            prompt += continue_from  # the answer picks up where a failed deployment's stream stopped
        tokens = await self._tokenize(prompt, add_bos=False)
        max_tokens = self._max_tokens(request, len(tokens), "messages")
        job = self._job(request, tokens, max_tokens)
        job.grammar = _grammar(request)
        self._submit(job)
        return job, len(tokens)

    def _check_completion_params(self, request: CompletionRequest) -> None:
        self._require_ready()
        if request.suffix:
            raise InvalidRequest("'suffix' is not supported by the llama.cpp backend.", param="suffix",
                                 code="unsupported_parameter")
        if request.logprobs:
            raise InvalidRequest("logprobs are not supported by the llama.cpp backend.", param="logprobs",
                                 code="unsupported_parameter")
        if request.best_of is not None and request.best_of != request.n:
            raise InvalidRequest("'best_of' other than 'n' is not supported by the llama.cpp backend.",
                                 param="best_of", code="unsupported_parameter")

    async def _completion_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        if isinstance(prompt, str):
            return await self._tokenize(prompt, add_bos=True), prompt
        n_vocab = self.engines[0].llm.n_vocab()
        if any(t < 0 or t >= n_vocab for t in prompt):
            raise InvalidRequest(f"Token ids must be between 0 and {n_vocab - 1}.", param="prompt")
        text = self.engines[0].llm.detokenize(prompt).decode("utf-8", errors="replace")
        return list(prompt), text

    async def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """llama.cpp's tokenizer is thread-safe; only long texts are worth a thread hop."""
        llm = self.engines[0].llm
        data = text.encode("utf-8")
        if len(text) > _LONG_TEXT:
            return await asyncio.to_thread(llm.tokenize, data, add_bos, True)
        return llm.tokenize(data, add_bos=add_bos, special=True)

    def _max_tokens(self, request: SamplingFields, prompt_len: int, what: str) -> int:
        asked = request.max_output_tokens  # type: ignore[attr-defined]
        room = self._n_ctx - prompt_len
        if asked is None:
            if room <= 0:
                raise self._overflow(prompt_len, 0, what)
            return min(room, self.config.default_max_tokens)
        if prompt_len + asked > self._n_ctx:
            raise self._overflow(prompt_len, asked, what)
        return asked

    def _overflow(self, prompt_len: int, asked: int, what: str) -> ContextLengthExceeded:
        return ContextLengthExceeded(
            f"This model's maximum context length is {self._n_ctx} tokens. However, you requested "
            f"{prompt_len + asked} tokens ({prompt_len} in the {what}, {asked} in the completion). "
            f"Please reduce the length of the {what} or completion.",
            param=what,
        )

    def _job(self, request: SamplingFields, tokens: list[int], max_tokens: int) -> Job:
        sampling = Sampling(
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            min_p=request.min_p or 0.0,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repeat_penalty=request.repetition_penalty or 1.0,
            seed=request.seed,
        )
        return Job(prompt_tokens=tokens, max_tokens=max_tokens, sampling=sampling, stop=request.stop or [],
                   n=request.n, ignore_eos=request.ignore_eos)

    def _submit(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple] = asyncio.Queue()
        job.post = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)
        job.events = events
        for engine in sorted(self.engines, key=lambda e: e.load):
            try:
                engine.submit(job)
                return
            except queue.Full:
                continue
        retry = min(e.retry_after() for e in self.engines)
        raise Overloaded(f"The model '{self.name}' is overloaded; retry after {retry:.0f}s.", retry_after=retry)

    # -- engine events -> OpenAI ---------------------------------------------

    async def _events(self, job: Job) -> AsyncIterator[tuple]:
        """Engine events until END, within the request timeout; cancels the job when abandoned."""
        events: asyncio.Queue[tuple] = job.events
        deadline = job.enqueued_at + self.config.request_timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout(f"The model '{self.name}' did not finish within "
                                          f"{self.config.request_timeout_s:g}s.")
                try:
                    ev = await within(events.get(), remaining)
                except asyncio.TimeoutError:
                    continue
                if ev[0] == END:
                    return
                if ev[0] == ERROR:
                    raise EngineError(f"The model '{self.name}' failed while generating.")
                yield ev
        finally:
            job.cancelled.set()

    async def _collect(self, job: Job, n: int) -> tuple[list[str], list[str], int]:
        texts = [[] for _ in range(n)]
        finishes = ["length"] * n
        produced = 0
        async for ev in self._events(job):
            if ev[0] == TEXT:
                texts[ev[1]].append(ev[2])
            elif ev[0] == DONE:
                finishes[ev[1]] = ev[2]
                produced += ev[3]
        return ["".join(t) for t in texts], finishes, produced

    async def _chat_frames(self, first: tuple | None, events: AsyncIterator[tuple], chunks: fmt.ChatChunks,
                           prompt_len: int, include_usage: bool) -> AsyncIterator[bytes]:
        started: set[int] = set()
        produced = 0
        try:
            async for ev in _prepend(first, events):
                index = ev[1]
                if index not in started:
                    started.add(index)
                    yield chunks.role(index)
                if ev[0] == TEXT:
                    yield chunks.content(index, ev[2])
                elif ev[0] == DONE:
                    produced += ev[3]
                    yield chunks.finish(index, ev[2])
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if include_usage:
            yield chunks.usage(prompt_len, produced)
        yield fmt.DONE

    async def _completion_frames(self, request: CompletionRequest, prepared: list[tuple[list[int], str]],
                                 first: tuple | None, events: AsyncIterator[tuple],
                                 chunks: fmt.CompletionChunks) -> AsyncIterator[bytes]:
        n = request.n
        prompt_total = produced = 0
        # Failures propagate: the router ends the stream with an in-band error.
        for p, (tokens, echo) in enumerate(prepared):
            if p > 0:
                job = self._job(request, tokens, self._max_tokens(request, len(tokens), "prompt"))
                self._submit(job)
                events = self._events(job)
                first = await _first(events)
            prompt_total += len(tokens)
            echoed: set[int] = set()
            try:
                async for ev in _prepend(first, events):
                    index = p * n + ev[1]
                    if request.echo and index not in echoed:
                        echoed.add(index)
                        yield chunks.text(index, echo)
                    if ev[0] == TEXT:
                        yield chunks.text(index, ev[2])
                    elif ev[0] == DONE:
                        produced += ev[3]
                        yield chunks.text(index, "", ev[2])
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        if request.include_usage:
            yield chunks.usage(prompt_total, produced)
        yield fmt.DONE


def _with_params(request: Any, ctx: CallContext) -> Any:
    """Apply a deployment's parameter overrides (e.g. a lower temperature) to the request."""
    return request.model_copy(update=ctx.params) if ctx.params else request


async def _first(events: AsyncIterator[tuple]) -> tuple | None:
    """Wait for the first engine event, so errors before any output stay HTTP errors."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise


async def _prepend(first: tuple | None, rest: AsyncIterator[tuple]) -> AsyncIterator[tuple]:
    if first is not None:
        yield first
        async for ev in rest:
            yield ev


def _grammar(request: ChatCompletionRequest) -> Any:
    """response_format -> a llama.cpp grammar that forces valid (schema-conforming) JSON."""
    rf = request.response_format
    if rf is None or rf.type == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

    if isinstance(rf, ResponseFormatJSONObject):
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    assert isinstance(rf, ResponseFormatJSONSchema)
    schema = rf.json_schema.schema_
    if not schema:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_string(json_schema_to_gbnf(json.dumps(schema)), verbose=False)
    except Exception as exc:
        raise InvalidRequest(f"This JSON schema cannot be enforced: {exc}", param="response_format.json_schema.schema",
                             code="invalid_json_schema") from None


def _fingerprint(path: Path) -> str:
    import llama_cpp

    stat = path.stat()
    raw = f"{path.name}:{stat.st_size}:{llama_cpp.__version__}".encode()
    return "fp_" + hashlib.sha256(raw).hexdigest()[:10]
