"""The llama.cpp backend: GGUF models on the CPU, each instance in an engine process of its own.

This module maps OpenAI requests onto engine jobs and engine events back onto
OpenAI bodies and SSE frames; it is the one place where what an engine says
becomes a gateway error. Tool calling (prompt, grammar, parsing) is in `tools`,
logprobs (computed in the engine) in `logprobs`. The engines (threads, queue, token loop) run in
their own processes (`host`), started and restarted by a supervisor; this
worker reaches them through `instances.EngineSet`. Tokenizing and the chat
template stay here, with a vocab-only copy of the model, so routing can count
a prompt's tokens even while the engine is restarting. The wire shapes are in
`backends.contract.responses`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from backends.aio import within
from backends.base import BackendStatus, CallContext, Capacity, SSEStream
from backends.contract import priority as scheduling
from backends.contract import responses as fmt
from backends.contract.errors import ContextLengthExceeded, EngineError, InvalidRequest, UpstreamTimeout
from backends.contract.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    SamplingFields,
)
from backends.llamacpp import logprobs as lp_fmt
from backends.llamacpp import wire
from backends.llamacpp.chat_template import ChatTemplate
from backends.llamacpp.client import LOST, JobHandle
from backends.llamacpp.control import EngineControl, LocalControl
from backends.llamacpp.engine_backend import EngineBackend, vocab_only
from backends.llamacpp.instances import EngineSet
from backends.llamacpp.jobs import EngineSettings
from backends.llamacpp.settings import LlamaCppModelConfig
from backends.llamacpp.tools import ToolPlan, ToolStream, plan_tools
from backends.model_cards import ModelCard
from backends.weights import Progress, resolve_weights

log = logging.getLogger("llm_gateway.llamacpp")

_LONG_TEXT = 16_000  # characters; longer prompts are tokenized off the event loop
_SEED_MASK = 0x7FFFFFFF  # llama.cpp seeds are 31-bit; (seed + i) & mask is unchanged by masking first


class LlamaCppBackend(EngineBackend):
    supports_continuation = True

    def __init__(self, name: str, card: ModelCard, config: LlamaCppModelConfig, progress: Progress | None = None,
                 control: EngineControl | None = None) -> None:
        super().__init__(name, card, config, progress, control)
        self._template: ChatTemplate | None = None
        self._fingerprint: str | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        try:
            path = await asyncio.to_thread(resolve_weights, self.card, self.config.model_path, self._progress)
            self.model_path = path
            self.tokenizer = await asyncio.to_thread(vocab_only, path)
            self._template = self._chat_template(self.tokenizer)
            self._fingerprint = _fingerprint(path)
            control = self._control or LocalControl()
            self._control = control
            self.engines = EngineSet(self.name, self.key, control, self._engine_settings(path), self.config.instances,
                                     listeners=self.listeners)
            await self.engines.start()
        except Exception as exc:
            self._failed = str(exc)
            log.error("model %s failed to start: %s", self.name, exc)
            return
        n_ctx = next((c.info.get("n_ctx") for c in self.engines.clients if c.info.get("n_ctx")), None)
        if n_ctx:
            self._n_ctx = int(n_ctx)
        if self.engines.ready:
            log.info("model %s ready (n_ctx=%d, instances=%d)", self.name, self._n_ctx, len(self.engines.clients))
        else:
            log.error("model %s failed to start: %s", self.name, self.engines.detail())

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

    def capacity(self) -> Capacity:
        """Its engines' sequences (`parallel` per instance) for the router's scheduler, whose waiting room
        is `max_queue` as the engine's own is; the engines take batch sequences' slots for urgent ones."""
        c = self.config
        return Capacity(slots=c.parallel * c.instances, queue=c.max_queue, preempts_batch=True)

    def status(self) -> BackendStatus:
        engines = self.engines
        if self._failed is not None or engines is None:
            return BackendStatus(self.name, self.kind, self._state(), self.required, self._failed)  # type: ignore[arg-type]
        stats: dict[str, Any] = {"instances": len(engines.clients), "queue_depth": 0, "busy": 0, "completed": 0,
                                 "cancelled": 0, "tokens_generated": 0}
        if self.config.parallel > 1:
            stats["parallel"] = self.config.parallel
        stats.update(engines.stats())
        return BackendStatus(self.name, self.kind, engines.state, self.required, engines.detail(),  # type: ignore[arg-type]
                             stats, engines.supervision())

    # -- OpenAI endpoints ------------------------------------------------------

    def estimate_tokens(self, request: Any) -> int | None:
        """Exact prompt tokens with the model's own template and tokenizer (thread-safe in llama.cpp)."""
        if self.tokenizer is None:
            return None
        try:
            if isinstance(request, ChatCompletionRequest):
                if self._template is None:
                    return None
                text, _ = self._chat_prompt(request)
                return len(self.tokenizer.tokenize(text.encode(), add_bos=False, special=True))
            return sum(len(self.tokenizer.tokenize(p.encode(), add_bos=True, special=True))
                       if isinstance(p, str) else len(p) for p in request.prompts())
        except Exception:  # a bad request is reported by the request path itself, not here
            return None

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> dict[str, Any]:
        request = _with_params(request, ctx)
        events, prompt_len, plan = await self._chat_events(request, ctx.continue_from)
        texts, finishes, entries, produced = await _collect(events, request.n)
        choices = []
        for i, (text, finish) in enumerate(zip(texts, finishes)):
            content, calls = text, None
            if plan is not None:
                answer = ToolStream()
                answer.feed(text)
                content, calls = answer.message()
                finish = "tool_calls" if calls and finish == "stop" else finish
            logprobs = lp_fmt.chat_logprobs(entries[i]) if entries is not None else None
            choices.append(fmt.chat_choice(i, content, finish, tool_calls=calls, logprobs=logprobs))
        return fmt.chat_completion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id,
                                   fingerprint=self._fingerprint, choices=choices,
                                   usage=fmt.usage(prompt_len, produced))

    async def chat_stream(self, request: ChatCompletionRequest, ctx: CallContext) -> SSEStream:
        request = _with_params(request, ctx)
        events, prompt_len, plan = await self._chat_events(request, ctx.continue_from)
        first = await _first(events)
        chunks = fmt.ChatChunks(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id,
                                fingerprint=self._fingerprint, include_usage=request.include_usage)
        return self._chat_frames(first, events, chunks, prompt_len, request.include_usage, plan)

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> dict[str, Any]:
        request = _with_params(request, ctx)
        self._check_completion_params(request)
        choices: list[dict[str, Any]] = []
        prompt_total = produced_total = 0
        for prompt in request.prompts():
            tokens, echo = await self._completion_prompt(prompt)
            events = await self._open(self._spec(request, tokens, self._max_tokens(request, len(tokens), "prompt"),
                                                 logprobs=request.logprobs))
            texts, finishes, entries, produced = await _collect(events, request.n)
            prefix = echo if request.echo else ""
            for i, (t, f) in enumerate(zip(texts, finishes)):
                logprobs = lp_fmt.completion_logprobs(entries[i], 0)[0] if entries is not None else None
                choices.append(fmt.completion_choice(len(choices), prefix + t, f, logprobs))
            prompt_total += len(tokens)
            produced_total += produced
        return fmt.text_completion(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id,
                                   fingerprint=self._fingerprint, choices=choices,
                                   usage=fmt.usage(prompt_total, produced_total))

    async def completion_stream(self, request: CompletionRequest, ctx: CallContext) -> SSEStream:
        request = _with_params(request, ctx)
        self._check_completion_params(request)
        prompts = request.prompts()
        prepared = [await self._completion_prompt(p) for p in prompts]
        for tokens, _ in prepared:
            self._max_tokens(request, len(tokens), "prompt")  # refuse overflow before streaming
        tokens, _ = prepared[0]
        events = await self._open(self._spec(request, tokens, self._max_tokens(request, len(tokens), "prompt"),
                                             logprobs=request.logprobs))
        first = await _first(events)
        chunks = fmt.CompletionChunks(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_id,
                                      fingerprint=self._fingerprint)
        return self._completion_frames(request, prepared, first, events, chunks)

    # -- request preparation ---------------------------------------------------

    def _chat_prompt(self, request: ChatCompletionRequest) -> tuple[str, ToolPlan | None]:
        """The rendered prompt, and the tool plan when tools play a part (see `tools`)."""
        assert self._template is not None
        plan = plan_tools(request.tools, request.tool_choice, (request.model_extra or {}).get("parallel_tool_calls"))
        if plan is None:
            return self._template.render(request.messages), None
        prompt = self._template.render(request.messages, tools=plan.tools, tool_choice=request.tool_choice,
                                       system=plan.instruction(describe=not self._template.knows_tools))
        return prompt, plan

    async def _chat_events(self, request: ChatCompletionRequest, continue_from: str | None = None
                           ) -> tuple[AsyncIterator[list[Any]], int, ToolPlan | None]:
        self._require_ready()
        if request.top_logprobs and not request.logprobs:
            raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs", code="invalid_value")
        if self._template is None:
            raise InvalidRequest(f"The model '{self.name}' has no chat template; use /v1/completions.",
                                 param="model", code="unsupported_model")
        prompt, plan = self._chat_prompt(request)
        grammar = _grammar(request)
        if plan is not None:
            if grammar is not None:
                raise InvalidRequest("'response_format' together with tools is not supported by local models.",
                                     param="response_format", code="unsupported_parameter")
            if request.logprobs:
                raise InvalidRequest("logprobs together with tools are not supported by local models.",
                                     param="logprobs", code="unsupported_parameter")
            if continue_from:  # the relayed text is decoded content, not the JSON the model wrote
                raise InvalidRequest("A tool-calling stream cannot be continued on a local model.", param="tools",
                                     code="unsupported_parameter")
            grammar = plan.grammar
        if continue_from:
            prompt += continue_from  # the answer picks up where a failed deployment's stream stopped
        tokens = await self._tokenize(prompt, add_bos=False)
        max_tokens = self._max_tokens(request, len(tokens), "messages")
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        events = await self._open(self._spec(request, tokens, max_tokens, grammar, logprobs))
        return events, len(tokens), plan

    def _check_completion_params(self, request: CompletionRequest) -> None:
        self._require_ready()
        if request.suffix:
            raise InvalidRequest("'suffix' is not supported by the llama.cpp backend.", param="suffix",
                                 code="unsupported_parameter")
        if request.logprobs is not None and request.echo:
            raise InvalidRequest("logprobs with 'echo' (the prompt's logprobs) are not supported by the llama.cpp "
                                 "backend.", param="echo", code="unsupported_parameter")
        if request.best_of is not None and request.best_of != request.n:
            raise InvalidRequest("'best_of' other than 'n' is not supported by the llama.cpp backend.",
                                 param="best_of", code="unsupported_parameter")

    async def _completion_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        if isinstance(prompt, str):
            return await self._tokenize(prompt, add_bos=True), prompt
        n_vocab = self.tokenizer.n_vocab()
        if any(t < 0 or t >= n_vocab for t in prompt):
            raise InvalidRequest(f"Token ids must be between 0 and {n_vocab - 1}.", param="prompt")
        text = self.tokenizer.detokenize(prompt).decode("utf-8", errors="replace")
        return list(prompt), text

    async def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """llama.cpp's tokenizer is thread-safe; only long texts are worth a thread hop."""
        data = text.encode("utf-8")
        if len(text) > _LONG_TEXT:
            return await asyncio.to_thread(self.tokenizer.tokenize, data, add_bos, True)
        return self.tokenizer.tokenize(data, add_bos=add_bos, special=True)

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

    @staticmethod
    def _spec(request: SamplingFields, tokens: list[int], max_tokens: int, grammar: str | None = None,
              logprobs: int | None = None) -> dict[str, Any]:
        sampling = {
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "top_k": request.top_k or 0,
            "min_p": request.min_p or 0.0,
            "presence_penalty": request.presence_penalty or 0.0,
            "frequency_penalty": request.frequency_penalty or 0.0,
            "repeat_penalty": request.repetition_penalty or 1.0,
            "seed": None if request.seed is None else request.seed & _SEED_MASK,
        }
        # The class the gateway gave this request at admission: the engine serves the urgent ones first.
        return wire.job_spec(prompt=tokens, max_tokens=max_tokens, sampling=sampling, stop=request.stop or [],
                             n=request.n, grammar=grammar, ignore_eos=request.ignore_eos, logprobs=logprobs,
                             priority=int(scheduling.current.get().priority))

    # -- engine events -> OpenAI ---------------------------------------------

    async def _open(self, spec: dict[str, Any]) -> AsyncIterator[list[Any]]:
        """Submit a job; its events, within the request timeout. Every engine error becomes a gateway
        error here, and only here."""
        deadline = time.monotonic() + self.config.request_timeout_s
        handle, first = await self._submit(spec, deadline, self._timeout())
        return self._events(handle, first, deadline)

    async def _events(self, handle: JobHandle, ev: list[Any], deadline: float) -> AsyncIterator[list[Any]]:
        """TEXT and DONE events until END; cancels the job when abandoned."""
        try:
            while True:
                op = ev[0]
                if op == wire.END:
                    return
                if op == wire.ERROR:
                    log.error("generation failed on %s: %s", self.name, ev[2])
                    raise EngineError(f"The model '{self.name}' failed while generating.")
                if op == LOST:
                    log.error("model %s lost a request: %s", self.name, ev[2])
                    raise self._lost("generating")
                yield ev
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout()
                try:
                    ev = await within(handle.events.get(), remaining)
                except asyncio.TimeoutError:
                    raise self._timeout() from None
        finally:
            handle.cancel()

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"The model '{self.name}' did not finish within {self.config.request_timeout_s:g}s.")

    async def _chat_frames(self, first: list[Any] | None, events: AsyncIterator[list[Any]], chunks: fmt.ChatChunks,
                           prompt_len: int, include_usage: bool, plan: ToolPlan | None) -> AsyncIterator[bytes]:
        started: set[int] = set()
        answers: dict[int, ToolStream] = {}  # with tools: each choice's answer, read as it comes
        produced = 0
        try:
            async for ev in _prepend(first, events):
                index = ev[2]
                if index not in started:
                    started.add(index)
                    yield chunks.role(index)
                if ev[0] == wire.TEXT:
                    if plan is None:
                        yield chunks.content(index, ev[3], lp_fmt.chat_logprobs(ev[4]) if ev[4] is not None else None)
                        continue
                    for out in answers.setdefault(index, ToolStream()).feed(ev[3]):
                        if out[0] == "text":
                            yield chunks.content(index, out[1])
                        elif out[0] == "call":
                            yield chunks.tool_call_start(index, out[1], out[2], out[3])
                        else:
                            yield chunks.tool_call_arguments(index, out[1], out[2])
                elif ev[0] == wire.DONE:
                    produced += ev[4]
                    answer = answers.get(index)
                    called = answer is not None and answer.kind == "calls" and answer.calls
                    yield chunks.finish(index, "tool_calls" if called and ev[3] == "stop" else ev[3])
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if include_usage:
            yield chunks.usage(prompt_len, produced)
        yield fmt.DONE

    async def _completion_frames(self, request: CompletionRequest, prepared: list[tuple[list[int], str]],
                                 first: list[Any] | None, events: AsyncIterator[list[Any]],
                                 chunks: fmt.CompletionChunks) -> AsyncIterator[bytes]:
        n = request.n
        prompt_total = produced = 0
        offsets: dict[int, int] = {}  # with logprobs: each choice's text offset so far
        # Failures propagate: the router ends the stream with an in-band error.
        for p, (tokens, echo) in enumerate(prepared):
            if p > 0:
                events = await self._open(self._spec(request, tokens, self._max_tokens(request, len(tokens), "prompt"),
                                                     logprobs=request.logprobs))
                first = await _first(events)
            prompt_total += len(tokens)
            echoed: set[int] = set()
            try:
                async for ev in _prepend(first, events):
                    index = p * n + ev[2]
                    if request.echo and index not in echoed:
                        echoed.add(index)
                        yield chunks.text(index, echo)
                    if ev[0] == wire.TEXT:
                        logprobs = None
                        if ev[4] is not None:
                            logprobs, offsets[index] = lp_fmt.completion_logprobs(ev[4], offsets.get(index, 0))
                        yield chunks.text(index, ev[3], logprobs=logprobs)
                    elif ev[0] == wire.DONE:
                        produced += ev[4]
                        yield chunks.text(index, "", ev[3])
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        if request.include_usage:
            yield chunks.usage(prompt_total, produced)
        yield fmt.DONE


async def _collect(events: AsyncIterator[list[Any]], n: int
                   ) -> tuple[list[str], list[str], list[list[Any]] | None, int]:
    """Each choice's text and finish reason, its logprob entries (None when not asked for), the tokens made."""
    texts: list[list[str]] = [[] for _ in range(n)]
    entries: list[list[Any]] | None = None
    finishes = ["length"] * n
    produced = 0
    async for ev in events:
        if ev[0] == wire.TEXT:
            texts[ev[2]].append(ev[3])
            if ev[4] is not None:
                if entries is None:
                    entries = [[] for _ in range(n)]
                entries[ev[2]].extend(ev[4])
        elif ev[0] == wire.DONE:
            finishes[ev[2]] = ev[3]
            produced += ev[4]
    return ["".join(t) for t in texts], finishes, entries, produced


def _with_params(request: Any, ctx: CallContext) -> Any:
    """Apply a deployment's parameter overrides (e.g. a lower temperature) to the request."""
    return request.model_copy(update=ctx.params) if ctx.params else request


async def _first(events: AsyncIterator[list[Any]]) -> list[Any] | None:
    """Wait for the first engine event, so errors before any output stay HTTP errors."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise


async def _prepend(first: list[Any] | None, rest: AsyncIterator[list[Any]]) -> AsyncIterator[list[Any]]:
    if first is not None:
        yield first
        async for ev in rest:
            yield ev


def _grammar(request: ChatCompletionRequest) -> str | None:
    """response_format -> the GBNF text of a llama.cpp grammar that forces valid (schema-conforming) JSON.

    The grammar is parsed here once, so a schema llama.cpp cannot enforce is the client's 400, not an
    engine error; the engine process parses the text again for itself.
    """
    rf = request.response_format
    if rf is None or rf.type == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

    if isinstance(rf, ResponseFormatJSONObject):
        return JSON_GBNF
    assert isinstance(rf, ResponseFormatJSONSchema)
    schema = rf.json_schema.schema_
    if not schema:
        return JSON_GBNF
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
        LlamaGrammar.from_string(gbnf, verbose=False)
    except Exception as exc:
        raise InvalidRequest(f"This JSON schema cannot be enforced: {exc}", param="response_format.json_schema.schema",
                             code="invalid_json_schema") from None
    return gbnf


def _fingerprint(path: Path) -> str:
    import llama_cpp

    stat = path.stat()
    raw = f"{path.name}:{stat.st_size}:{llama_cpp.__version__}".encode()
    return "fp_" + hashlib.sha256(raw).hexdigest()[:10]
