"""Deterministic "model output" shared by every simulator.

Every upstream kind answers the same conversation with the same text, so a test
can assert on the exact reply whichever backend the gateway picked, and on the
exact remainder after a failover that continues a partial answer.

Rules (documented because tests rely on them):

* chat: the reply is built from the *last* user turn (a trailing assistant turn
  is ignored): ``"Reply to: <text>. The quick brown fox jumps over the lazy dog."``
  where ``<text>`` is the message's string content or its text parts joined by
  one space. If that last turn is a tool result (OpenAI ``role: "tool"`` or an
  Anthropic user turn holding ``tool_result`` blocks) ``<text>`` is
  ``"tool result <content>"``.
* completions: the reply is always ``" and the quick brown fox jumps over the lazy dog."``.
* a "token" is one piece of :func:`words` (a word with its leading whitespace);
  prompt tokens are whitespace-separated words over all message text (system included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

TAIL = "The quick brown fox jumps over the lazy dog."
COMPLETION_REPLY = " and the quick brown fox jumps over the lazy dog."
_PIECE = re.compile(r"\s*\S+|\s+")


def words(text: str) -> list[str]:
    """Split into streaming pieces that keep their leading whitespace ("".join == text)."""
    return _PIECE.findall(text)


def content_text(content: Any) -> str:
    """Text of an OpenAI/Anthropic content value: a string or a list of parts/blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            elif isinstance(part, dict) and part.get("type") == "tool_result":
                out.append(content_text(part.get("content")))
        return " ".join(out)
    return str(content)


def _tool_results(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") == "tool_result"]


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text the reply is built from (see module docstring)."""
    for msg in reversed(messages):
        role = msg.get("role")
        if role == "tool":
            return "tool result " + content_text(msg.get("content"))
        if role == "user":
            results = _tool_results(msg.get("content"))
            if results:
                return "tool result " + " ".join(content_text(r.get("content")) for r in results)
            return content_text(msg.get("content"))
    return ""


def canonical_reply(messages_or_prompt: Any) -> str:
    """The full reply for a chat ``messages`` list, or for a completion prompt (str / list of str)."""
    if isinstance(messages_or_prompt, list) and any(isinstance(m, dict) for m in messages_or_prompt):
        return f"Reply to: {last_user_text(messages_or_prompt)}. {TAIL}"
    return COMPLETION_REPLY


def continuation(messages: list[dict[str, Any]], partial: str) -> str:
    """What follows ``partial`` in the canonical reply (the whole reply if it isn't a prefix)."""
    full = canonical_reply(messages)
    return full[len(partial):] if full.startswith(partial) else full


def count_words(*texts: str) -> int:
    """Whitespace-separated word count: the simulators' prompt-token measure."""
    return sum(len(t.split()) for t in texts)


def prompt_tokens(messages: Iterable[dict[str, Any]], system: Any = None) -> int:
    """Prompt tokens for a chat request: words over every message's text (plus ``system``)."""
    return count_words(content_text(system), *(content_text(m.get("content")) for m in messages))


@dataclass(frozen=True)
class Plan:
    """What to send: the pieces, why generation ended, and the stop string that ended it."""

    pieces: list[str]
    finish: str  # "stop" | "length"
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def plan_reply(text: str, max_tokens: int | None = None, stop: str | list[str] | None = None) -> Plan:
    """Apply stop strings (cut before the earliest match) and then the ``max_tokens`` piece limit."""
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str) and s]
    hit: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (hit is None or i < hit[0]):
            hit = (i, s)
    if hit is not None:
        text = text[: hit[0]]
    pieces = words(text)
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 <= max_tokens < len(pieces):
        return Plan(pieces[:max_tokens], "length")
    return Plan(pieces, "stop", hit[1] if hit else None)
