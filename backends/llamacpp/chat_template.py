"""Render OpenAI chat messages into a prompt with the model's jinja chat template.

The template comes from the GGUF (`tokenizer.chat_template`) when it carries
one, and from the model card otherwise. Messages are normalised first so that
strict templates (Gemma's insists on user/model alternation) accept every
valid OpenAI conversation: `developer` becomes `system`, `tool` results become
user turns, and consecutive turns of one role are merged.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import ChatMessage


class TemplateError(ValueError):
    """The template itself is broken (an admin problem, not a client one)."""


def _raise_exception(message: str) -> None:
    raise InvalidRequest(f"The conversation does not fit this model's chat template: {message}", param="messages")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template does not parse: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[ChatMessage]) -> str:
        plain = normalise_messages(messages)
        try:
            return self._template.render(
                messages=plain,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=True,
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"The conversation does not fit this model's chat template: {exc}", param="messages") from None


def normalise_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """OpenAI messages -> plain {role, content} turns that any simple template accepts."""
    turns: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        role = msg.role
        text = msg.text()
        if role == "developer":
            role = "system"
        elif role == "tool":
            role = "user"
            text = f"[tool result {msg.tool_call_id}]\n{text}"
        elif role == "assistant" and msg.tool_calls:
            calls = "\n".join(
                json.dumps({"name": c.function.name, "arguments": c.function.arguments}, ensure_ascii=False)
                for c in msg.tool_calls
            )
            text = f"{text}\n{calls}" if text else calls
        if role == "system" and turns and turns[-1]["role"] != "system":
            # A late system message can't go first without reordering history; keep it in place as a user turn.
            role = "user"
            text = f"[system]\n{text}"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": ""})
    if len(turns) >= 2 and turns[0]["role"] == "system" and turns[1]["role"] == "assistant":
        turns.insert(1, {"role": "user", "content": ""})
    return turns
