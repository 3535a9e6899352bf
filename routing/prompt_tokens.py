"""How long a request's prompt is: one estimate per request, owned by its plan.

`rough` is made at once from characters, for what must be decided before anything is counted (rules
on prompt size, the cost strategies). Which deployments' context a prompt fits starts from it too, and a
chat prompt too near a context to tell (`surely_fits`) is counted by that deployment's tokenizer
(`exact_for`): four characters a token is far off for Chinese or code. `counted()` is the number
to reserve against token limits and to bill when an answer reports no usage: by the first
deployment's own tokenizer where it has one here (a local model), else by tiktoken for its model
name. Counting costs time, so it runs only when first asked for, and then once.
"""

from __future__ import annotations

import orjson

from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SamplingFields
from routing import tokens
from routing.deployment import Deployment

CHARS_PER_TOKEN = 4  # a deliberately rough estimate; exact counts need the deployment's own tokenizer
# Text can be as dense as one character per token (Chinese, Japanese, some code): a prompt whose rough
# estimate times this still fits a context fits for sure; nearer than that, `exact_for` decides.
WORST_CHARS_PER_TOKEN = 1
# Counting runs in the event loop: above this many characters the plan keeps the rough estimate (the
# router still moves to a larger context when a deployment refuses the prompt as too long).
EXACT_MAX_CHARS = 64_000


def rough_estimate(request: SamplingFields) -> int:
    if isinstance(request, ChatCompletionRequest):
        chars = 0
        for m in request.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
            elif m.content:
                chars += sum(len(getattr(p, "text", "") or "") for p in m.content)
        return chars // CHARS_PER_TOKEN + 4 * len(request.messages)
    if isinstance(request, (CompletionRequest, EmbeddingRequest)):
        return sum(_item_sizes(request)) // CHARS_PER_TOKEN
    return 0


def _item_sizes(request: CompletionRequest | EmbeddingRequest) -> list[int]:
    """Characters (token ids count 4) of each prompt or input, which the deployment takes one at a time."""
    items = request.prompts() if isinstance(request, CompletionRequest) else request.inputs()
    return [len(p) if isinstance(p, str) else len(p) * CHARS_PER_TOKEN for p in items]


def rough_longest(request: SamplingFields, rough: int) -> int:
    """What must fit a deployment's context: the longest single prompt (or input) of a request that holds
    several, each of which the deployment takes on its own; the whole prompt of a chat."""
    if isinstance(request, (CompletionRequest, EmbeddingRequest)):
        sizes = _item_sizes(request)
        return max(sizes) // CHARS_PER_TOKEN if sizes else 0
    return rough


class PromptTokens:
    """The prompt of one request, measured roughly now and exactly on demand."""

    __slots__ = ("rough", "longest", "_request", "_first", "_o200k_path", "_counts")

    def __init__(self, request: SamplingFields, o200k_path: str | None = None) -> None:
        self.rough = rough_estimate(request)
        self.longest = rough_longest(request, self.rough)  # what must fit one deployment's context
        self._request = request
        self._first: Deployment | None = None
        self._o200k_path = o200k_path
        # The prompt counted by a deployment (its backend and model name; None: no deployment), once each:
        # the plan's context check and the billing count of the same deployment share one count.
        self._counts: dict[tuple[int, str] | None, int] = {}

    def count_for(self, first: Deployment | None) -> None:
        """Count with this deployment's tokenizer (the plan's first choice, once it is known)."""
        self._first = first

    def surely_fits(self, context_length: int) -> bool:
        """Even at one character per token the longest prompt leaves room in `context_length`."""
        return self.longest * CHARS_PER_TOKEN // WORST_CHARS_PER_TOKEN + 1 <= context_length

    def exact_for(self, dep: Deployment) -> int | None:
        """A chat prompt's tokens as `dep` will see them: by its own tokenizer where it has one here (a local
        model: its template too), else by tiktoken for its model name. None for what is not a chat, or too
        long to count in the event loop (`EXACT_MAX_CHARS`)."""
        if not isinstance(self._request, ChatCompletionRequest) or self.rough * CHARS_PER_TOKEN > EXACT_MAX_CHARS:
            return None
        return self._count_once(dep)

    def counted(self) -> int:
        return self._count_once(self._first)

    def _count_once(self, dep: Deployment | None) -> int:
        key = None if dep is None else (id(dep.backend), dep.config.model)
        if key not in self._counts:
            self._counts[key] = self._count(dep)
        return self._counts[key]

    def _count(self, dep: Deployment | None) -> int:
        request = self._request
        if dep is not None:
            exact = dep.backend.estimate_tokens(request)
            if exact is not None:
                return exact
        model = dep.config.model if dep else None
        body = request.wire_body()
        if isinstance(request, ChatCompletionRequest):
            counted = tokens.estimate_chat(body.get("messages") or [], model, self._o200k_path)
            if body.get("tools"):  # the tool definitions are in the prompt too (as JSON, roughly)
                counted += tokens.count_text(orjson.dumps(body["tools"]).decode(), model, self._o200k_path)
            return counted
        return tokens.estimate_prompt(body.get(request.prompt_field) or "", model, self._o200k_path)
