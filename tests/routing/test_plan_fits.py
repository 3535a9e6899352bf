"""Which deployments' context a prompt fits (routing/plan.fits): the rough estimate (4 characters a token)
where it cannot be wrong, the deployment's own count near the limit. A Chinese prompt is about one token a
character, four times the rough estimate: planned by characters alone it would go to a context it
overflows, and the client would get a 400 that a larger deployment would have served."""

from __future__ import annotations

from typing import Any

import pytest

from backends.base import Backend
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, validate_request
from routing.breaker import CircuitBreaker
from routing.config import BreakerConfig, DeploymentConfig
from routing.deployment import Deployment
from routing.plan import fits
from routing.prompt_tokens import PromptTokens

pytestmark = pytest.mark.unit


class Counting(Backend):
    """A backend with (or without) a tokenizer of its own, that counts how often it was asked."""

    kind = "fake"

    def __init__(self, name: str, tokens_per_char: float | None) -> None:
        super().__init__(name, None)
        self.tokens_per_char, self.asked = tokens_per_char, 0

    def estimate_tokens(self, request: Any) -> int | None:
        self.asked += 1
        if self.tokens_per_char is None:
            return None
        return int(sum(len(m.content) for m in request.messages) * self.tokens_per_char)

    async def start(self): ...
    async def aclose(self): ...
    def status(self): ...
    async def chat(self, request, ctx): ...
    async def chat_stream(self, request, ctx): ...
    async def completion(self, request, ctx): ...
    async def completion_stream(self, request, ctx): ...


def dep(context: int | None, tokens_per_char: float | None = None, model: str = "gpt-4o-mini") -> Deployment:
    return Deployment(DeploymentConfig(name="d", provider="p", model=model, context_length=context),
                      Counting("d", tokens_per_char), CircuitBreaker(BreakerConfig()))


def chat(text: str) -> ChatCompletionRequest:
    return validate_request({"model": "m", "messages": [{"role": "user", "content": text}]}, ChatCompletionRequest)


CHINESE = "我们的网关把每个请求送到能够处理它的模型上。" * 60  # 1,320 characters: about 1,300+ tokens


def test_a_dense_prompt_is_counted_near_the_limit_and_kept_off_a_context_it_overflows() -> None:
    tokens = PromptTokens(chat(CHINESE))
    assert tokens.rough < 400  # what 4 characters a token says: it would "fit" 1,000
    small, big = dep(1000), dep(8000)
    assert not fits(small, tokens), "tiktoken counts the real size for a remote deployment"
    assert fits(big, tokens) and big.backend.asked == 0, "far below the context: nothing counted"
    local = dep(1000, tokens_per_char=0.5)  # a local model whose own tokenizer says it fits
    assert fits(local, tokens) and local.backend.asked == 1
    assert fits(local, tokens) and local.backend.asked == 1, "counted once per backend"


def test_a_sparse_prompt_the_rough_estimate_refuses_may_fit_by_its_count() -> None:
    spaces = "word " * 900  # 4,500 characters: rough 1,129 tokens, really about 900
    tokens = PromptTokens(chat(spaces))
    assert tokens.rough > 1000 and fits(dep(1000), tokens)


def test_what_is_not_counted_keeps_the_rough_estimate() -> None:
    prompt = validate_request({"model": "m", "prompt": CHINESE}, CompletionRequest)  # not a chat: rough only
    assert fits(dep(1000), PromptTokens(prompt))
    huge = PromptTokens(chat("字" * 70_000))  # past EXACT_MAX_CHARS: no counting in the event loop
    d = dep(20_000, tokens_per_char=1.0)
    assert fits(d, huge) and d.backend.asked == 0
    assert fits(dep(None), PromptTokens(chat(CHINESE)))  # an unknown context takes anything
