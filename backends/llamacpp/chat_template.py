"""Render OpenAI chat messages into a prompt with the model's jinja chat template.

The template comes from the GGUF (`tokenizer.chat_template`) when it carries
one, and from the model card otherwise. The environment is the one HF
transformers and llama-cpp-python's `Jinja2ChatFormatter` give templates
(sandboxed, trim/lstrip blocks, loop controls, `{% generation %}` as a no-op,
their `tojson`, `raise_exception`, `strftime_now`, `tools` as OpenAI tool
dicts), so a template renders here as it does there.

A template that knows tool calls (it mentions `tool_calls`) gets the messages
as they are, with `tool_calls` (arguments as objects, the HF convention) and
`tool` turns. Any other is given normalised messages, so that strict templates
(Gemma's insists on user/model alternation) accept every valid OpenAI
conversation: `developer` becomes `system`, `tool` results become user turns,
calls become the JSON the model is asked to answer in (see `tools`), and
consecutive turns of one role are merged.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import ChatMessage


class TemplateError(ValueError):
    """The template itself is broken (an admin problem, not a client one)."""


def _raise_exception(message: str) -> None:
    raise InvalidRequest(f"The conversation does not fit this model's chat template: {message}", param="messages")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlock(jinja2.ext.Extension):
    """HF's `{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering
    only needs its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[Any]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", _GenerationBlock],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
            names = jinja2.meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template does not parse: {exc}") from exc
        self.knows_tools = "tools" in names  # it renders tool definitions itself
        self.knows_tool_calls = "tool_calls" in source  # it renders assistant calls and tool results
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[ChatMessage], *, tools: list[dict[str, Any]] | None = None,
               tool_choice: Any = None, system: str | None = None) -> str:
        """The prompt; `tools` go to templates that know them, `system` is added to the system turn."""
        turns = pass_through(messages) if self.knows_tool_calls else normalise_messages(messages)
        if system:
            if turns and turns[0]["role"] == "system":
                turns[0] = {**turns[0], "content": f"{turns[0]['content']}\n\n{system}" if turns[0]["content"]
                            else system}
            else:
                turns.insert(0, {"role": "system", "content": system})
        extra: dict[str, Any] = {}
        if tools and self.knows_tools:
            extra = {"tools": tools, "tool_choice": tool_choice}
        try:
            return self._template.render(
                messages=turns,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=True,
                **extra,
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"The conversation does not fit this model's chat template: {exc}", param="messages") from None


def _arguments(text: str) -> Any:
    """A call's arguments as an object when they parse (what templates expect), else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def pass_through(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages as dicts for a template that knows tools (only `developer` is renamed)."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        turn: dict[str, Any] = {"role": "system" if msg.role == "developer" else msg.role, "content": msg.text()}
        if msg.name:
            turn["name"] = msg.name
        if msg.tool_calls:
            turn["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                  for c in msg.tool_calls]
        if msg.tool_call_id:
            turn["tool_call_id"] = msg.tool_call_id
        out.append(turn)
    return out


def normalise_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """OpenAI messages -> plain {role, content} turns that any simple template accepts."""
    turns: list[dict[str, str]] = []
    called: dict[str, str] = {}  # call id -> function name, to say whose result a tool turn holds
    for msg in messages:
        role = msg.role
        text = msg.text()
        if role == "developer":
            role = "system"
        elif role == "tool":
            role = "user"
            name = called.get(msg.tool_call_id or "")
            text = f"[tool result {msg.tool_call_id}{f' of {name}' if name else ''}]\n{text}"
        elif role == "assistant" and msg.tool_calls:
            called.update((c.id, c.function.name) for c in msg.tool_calls)
            calls = json.dumps({"tool_calls": [{"name": c.function.name, "arguments": _arguments(c.function.arguments)}
                                               for c in msg.tool_calls]}, ensure_ascii=False)
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
