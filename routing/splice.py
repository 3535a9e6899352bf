"""Splice a restarted answer onto a broken stream: relay only what the client does not have yet.

A deployment that cannot continue a partial message (an OpenAI-compatible API, or one whose prefill
was refused) is asked for the whole answer again. A deterministic request gets the same text back, so
its first characters repeat what the client already received: they are swallowed, and the rest is
relayed. Any other character, a tool call, or a finish before the client's text is covered means the
new answer is not the one the client was reading: `Diverged`, never a contradicting or truncated end.
Plain code on parsed chunks (the router parses each frame once), so it is tested without processes.
"""

from __future__ import annotations

from typing import Any

from backends.contract.errors import GatewayError


class Diverged(GatewayError):
    """The restarted answer is not the one the client was reading: the stream ends with this in-band."""

    status_code = 502
    error_type = "server_error"
    code = "stream_interrupted"


class Splice:
    """Fed a restarted stream's chunks in order; returns each chunk to relay (None: nothing to relay)."""

    def __init__(self, sent: str) -> None:
        self.sent = sent
        self._at = 0  # characters of `sent` matched so far
        self.swallowed = 0  # content pieces wholly inside `sent` (generated, never relayed: for the leg's count)

    @property
    def covered(self) -> bool:
        """Has the restarted answer repeated everything the client has? From then on chunks pass as they are."""
        return self._at >= len(self.sent)

    def take(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """`chunk` with the already-sent text cut off its content (modified in place), or None when nothing is
        left to relay; raises `Diverged` when it contradicts the client's text or finishes short of it."""
        if self.covered or "error" in chunk:
            return chunk
        choices = chunk.get("choices")
        if not choices:  # usage or an empty chunk before the text is covered: end() will tell
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        if delta.get("tool_calls") or delta.get("function_call"):
            raise self._diverged("a tool call where the client has text")
        content = delta.get("content") or ""
        if content:
            content = self._match(content)
        if choice.get("finish_reason") and not self.covered:
            raise self._diverged(f"it finished after {self._at} of the {len(self.sent)} characters already sent")
        if not content and not choice.get("finish_reason"):
            return None
        choice["delta"] = {"content": content} if content else {}  # role and reasoning were the first leg's
        return chunk

    def end(self) -> None:
        """The restarted stream ended ([DONE] or its close): fine only if it covered the client's text."""
        if not self.covered:
            raise self._diverged(f"it ended after {self._at} of the {len(self.sent)} characters already sent")

    def _match(self, content: str) -> str:
        """What of `content` goes beyond the text already sent; raises when the overlap differs."""
        want = self.sent[self._at:self._at + len(content)]
        if not content.startswith(want):
            at = self._at + _common(content, want)
            raise self._diverged(f"it differs from the text already sent at character {at}")
        self._at += len(want)
        rest = content[len(want):]
        if not rest:
            self.swallowed += 1
        return rest

    def _diverged(self, why: str) -> Diverged:
        return Diverged(f"The stream broke and the fallback's fresh answer does not match the text already sent "
                        f"({why}); the answer is incomplete.")


def _common(a: str, b: str) -> int:
    """Length of the common prefix of `a` and `b`."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
