"""Requests that arrived in another API's shape, and answers that carry that API's own output.

A surface of the gateway (Anthropic's Messages API) translates its request to chat and attaches the
original (`ChatCompletionRequest.with_native`). A deployment that speaks that API natively sends the
original upstream as it is, and puts the upstream's own output beside its chat translation: the whole
message in the chat body's `ANTHROPIC_FIELD`, and in a stream every upstream event on the chat chunk it
produced (an empty-delta chunk for an event that produced none; `[]` on the other chunks of the same
event). Routing, continuation and accounting read the chat translation as always; the surface sends the
native output as it came, byte for byte in content, and translates only what other deployments sent.
"""

from __future__ import annotations

ANTHROPIC_MESSAGES = "anthropic.messages"  # the API name a request's native body is filed under
ANTHROPIC_FIELD = "x_anthropic"  # where an answer carries Anthropic's own message or events
