"""The degraded last resort: a route's static answer when every deployment has failed.

It is always marked (`x-gateway-degraded` on the response, and the content
says so), never passed off as a model's answer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from backends.contract import responses as fmt
from backends.contract.protocol import SamplingFields


def degraded_body(route: str, message: str, request: SamplingFields) -> dict[str, Any]:
    chat = request.is_chat
    kw = dict(id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, created=int(time.time()), model=route,
              fingerprint="fp_degraded", choices=[(message, "stop")], prompt_tokens=0, completion_tokens=0)
    return fmt.chat_response(**kw) if chat else fmt.completion_response(**kw)  # type: ignore[arg-type]


async def degraded_stream(route: str, message: str, request: SamplingFields) -> AsyncIterator[bytes]:
    chat, include_usage = request.is_chat, request.include_usage
    head = dict(id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, created=int(time.time()), model=route,
                fingerprint="fp_degraded")
    if chat:
        chunks = fmt.ChatChunks(**head, include_usage=include_usage)  # type: ignore[arg-type]
        yield chunks.role(0)
        yield chunks.content(0, message)
        yield chunks.finish(0, "stop")
    else:
        text_chunks = fmt.CompletionChunks(**head)  # type: ignore[arg-type]
        chunks = text_chunks  # type: ignore[assignment]
        yield text_chunks.text(0, message)
        yield text_chunks.text(0, "", "stop")
    if include_usage:
        yield chunks.usage(0, 0)
    yield fmt.DONE
