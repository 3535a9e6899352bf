"""Tool calling on local models: what the prompt says, the grammar that forces the answer, and its parsing.

Small models (Gemma 3) know no tool-calling format of their own, so every local model answers in one
"generic" format (the idea of llama.cpp server's generic handler), a single JSON object:

    {"tool_calls": [{"name": "<tool>", "arguments": {...}}, ...]}   to call tools
    {"response": "<text>"}                                           to answer in words (`auto` only)

A GBNF grammar built from the tools' JSON schemas (`json_schema_to_gbnf`) forces that object, so the
name is always one of the tools offered and the arguments always parse and match that tool's schema.
`required` and a named function allow only the first shape (a named function: a name enum of one);
`parallel_tool_calls: false` allows exactly one call, true or unset one or more.

`ToolStream` reads the answer as it is generated. A response's JSON string is decoded as it comes and
passed on as plain content, so the wrapper never reaches the client; a call is announced (id, name)
once its name is complete, and its arguments go on raw, as the model writes them, ending with a JSON
text that is valid by construction. The system turn always says which shape to answer in; templates
that know tools (they reference `tools`) also get the tools as OpenAI tool dicts, the others get a
concise description of each tool in the system turn instead.

A tool-call stream is not continued on another deployment (`continue_from`): the backend refuses it.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from backends.contract.errors import InvalidRequest

_RESPONSE = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]}
_CALL_SHAPE = '{"tool_calls": [{"name": <tool name>, "arguments": <its arguments as a JSON object>}]}'


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a request's tools mean for one generation."""

    tools: list[dict[str, Any]]  # the function tools the model may call (OpenAI tool dicts)
    mode: str  # "auto" or "required"
    forced: str | None  # the one function a named tool_choice asks for
    parallel: bool
    grammar: str  # GBNF

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def instruction(self, describe: bool) -> str:
        """The system turn's part: the tools (unless the template shows them itself) and how to answer."""
        lines: list[str] = []
        if describe:
            lines.append("You can call these tools:")
            for t in self.tools:
                fn = t["function"]
                entry = {"name": fn["name"], "description": fn.get("description") or "",
                         "parameters": fn.get("parameters") or {"type": "object"}}
                lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
        many = "one or more tools" if self.parallel else "one tool"
        if self.forced:
            lines.append(f'Call the tool "{self.forced}". Answer with JSON only: '
                         f'{{"tool_calls": [{{"name": "{self.forced}", "arguments": <its arguments as a JSON object>}}]}}')
        elif self.mode == "required":
            lines.append(f"Call {many}. Answer with JSON only: {_CALL_SHAPE}")
        else:
            lines.append(f"To call {many}, answer with JSON only: {_CALL_SHAPE}. To answer the user directly "
                         'instead, answer with JSON only: {"response": "<your answer>"}')
        return "\n".join(lines)


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: Any, parallel: bool | None) -> ToolPlan | None:
    """The request's tools, checked; None when they play no part (none given, or tool_choice "none")."""
    if not tools or tool_choice == "none":
        return None
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("Invalid value for 'parallel_tool_calls': must be a boolean.", param="parallel_tool_calls",
                             code="invalid_value")
    for i, tool in enumerate(tools):
        if tool.get("type", "function") != "function":
            raise InvalidRequest(f"Tools of type '{tool.get('type')}' are not supported by local models; "
                                 "only 'function'.", param=f"tools[{i}].type", code="unsupported_parameter")
        params = tool["function"].get("parameters")
        if params is not None and params.get("type", "object") != "object":
            raise InvalidRequest("A function's parameters must be a JSON schema of type 'object'.",
                                 param=f"tools[{i}].function.parameters", code="invalid_value")
    mode, forced = "auto", None
    if tool_choice == "required":
        mode = "required"
    elif isinstance(tool_choice, dict):
        if tool_choice.get("type") != "function":
            raise InvalidRequest(f"tool_choice of type '{tool_choice.get('type')}' is not supported by local "
                                 "models.", param="tool_choice", code="unsupported_parameter")
        forced = tool_choice["function"]["name"]
        mode = "required"
        if forced not in [t["function"]["name"] for t in tools]:
            raise InvalidRequest(f"tool_choice names the function '{forced}', which is not among the tools.",
                                 param="tool_choice.function.name", code="invalid_value")
    offered = [t for t in tools if forced is None or t["function"]["name"] == forced]
    parallel = parallel is not False and forced is None or parallel is True
    key = json.dumps([offered, mode, parallel], sort_keys=True)
    return ToolPlan(offered, mode, forced, parallel, _grammar(key))


@functools.lru_cache(maxsize=64)
def _grammar(key: str) -> str:
    """The GBNF text for (tools, mode, parallel), checked by llama.cpp's own parser (cached: agents send
    the same tools every turn)."""
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    tools, mode, parallel = json.loads(key)
    defs: dict[str, Any] = {}
    items = []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object"}
        try:  # each tool alone first, so an error names the tool
            LlamaGrammar.from_string(json_schema_to_gbnf(json.dumps(params)), verbose=False)
        except Exception as exc:
            raise InvalidRequest(f"This JSON schema cannot be enforced: {exc}", param=f"tools[{i}].function.parameters",
                                 code="invalid_json_schema") from None
        items.append({"type": "object", "required": ["name", "arguments"],
                      "properties": {"name": {"const": fn["name"]}, "arguments": _hoist(params, i, defs)}})
    calls: dict[str, Any] = {"type": "array", "items": items[0] if len(items) == 1 else {"anyOf": items},
                             "minItems": 1}
    if not parallel:
        calls["maxItems"] = 1
    root: dict[str, Any] = {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"]}
    if mode == "auto":
        root = {"anyOf": [root, _RESPONSE]}
    if defs:
        root["$defs"] = defs
    try:
        gbnf = json_schema_to_gbnf(json.dumps(root), prop_order=["name", "arguments"])
        LlamaGrammar.from_string(gbnf, verbose=False)
    except Exception as exc:
        raise InvalidRequest(f"These tools cannot be enforced together: {exc}", param="tools",
                             code="invalid_json_schema") from None
    return gbnf


def _hoist(params: dict[str, Any], i: int, defs: dict[str, Any]) -> dict[str, Any]:
    """Move a tool's own `$defs`/`definitions` to the combined schema's root (renamed per tool), since
    `#/...` references resolve against the root."""
    local = {**(params.get("definitions") or {}), **(params.get("$defs") or {})}
    if not local:
        return params

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items() if k not in ("$defs", "definitions")}
            ref = node.get("$ref")
            if isinstance(ref, str):
                for prefix in ("#/$defs/", "#/definitions/"):
                    if ref.startswith(prefix):
                        out["$ref"] = f"#/$defs/t{i}_{ref[len(prefix):]}"
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for name, schema in local.items():
        defs[f"t{i}_{name}"] = rewrite(schema)
    return rewrite(params)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- reading the answer ---------------------------------------------------------------------------------

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WS = " \t\r\n"


@dataclass(slots=True)
class Call:
    id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class ToolStream:
    """Follows the generic-format JSON character by character (it is valid: the grammar made it).

    `feed` returns events: ("text", s) for a response's decoded text, ("call", n, id, name) when the
    nth call's name is complete, ("args", n, s) for raw text of its arguments.
    """

    kind: str | None = None  # "text" or "calls", once the answer's key is read
    text: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    _stack: list[list[Any]] = field(default_factory=list)  # [kind '{' or '[', key or index, expecting]
    _in_str: bool = False
    _str_key: bool = False
    _str_path: tuple[Any, ...] = ()
    _buf: list[str] = field(default_factory=list)
    _esc: str | None = None  # None, "" after a backslash, "u..." in a \u escape
    _high: int = 0  # a UTF-16 high surrogate waiting for its pair
    _scalar: bool = False
    _capture: int | None = None  # depth at which the arguments value being copied began
    _out: list[Any] = field(default_factory=list)

    def feed(self, chunk: str) -> list[tuple[Any, ...]]:
        self._out = []
        for c in chunk:
            self._char(c)
        out, merged = self._out, []
        for ev in out:  # one event per kind and call per chunk
            if merged and ev[0] in ("text", "args") and merged[-1][0] == ev[0] and merged[-1][:-1] == ev[:-1]:
                merged[-1] = (*ev[:-1], merged[-1][-1] + ev[-1])
            else:
                merged.append(ev)
        return merged

    def message(self) -> tuple[str | None, list[dict[str, Any]] | None]:
        """(content, tool_calls) of the whole answer, as a chat message has them."""
        if self.kind == "calls" and self.calls:
            return None, [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                          for c in self.calls]
        return "".join(self.text), None

    # -- the walk ---------------------------------------------------------------------------------------

    def _char(self, c: str) -> None:
        if self._scalar and (c in _WS or c in ",}]"):
            self._scalar = False
            self._value_done()
        copying = self._capture is not None
        if self._in_str:
            self._str_char(c)
        elif self._scalar or c in _WS:
            pass
        else:
            self._structural(c)
        if copying or self._capture is not None:
            self._emit("args", len(self.calls) - 1, c)

    def _structural(self, c: str) -> None:
        top = self._stack[-1] if self._stack else None
        if top is not None and top[0] == "{" and top[2] == "key":
            if c == '"':
                self._in_str, self._str_key, self._buf = True, True, []
            elif c == "}":
                self._close()
            return
        if c == ":":
            top[2] = "value"  # type: ignore[index]
        elif c == ",":
            if top[0] == "{":  # type: ignore[index]
                top[2] = "key"  # type: ignore[index]
            else:
                top[1] += 1  # type: ignore[index]
                top[2] = "value"  # type: ignore[index]
        elif c in "}]":
            self._close()
        else:
            self._begin(c)

    def _path(self) -> tuple[Any, ...]:
        return tuple(f[1] for f in self._stack)

    def _begin(self, c: str) -> None:
        """A value begins with `c` at the current path."""
        path = self._path()
        if path == ("response",):
            self.kind = "text"
        elif path == ("tool_calls",):
            self.kind = "calls"
        elif len(path) == 3 and path[0] == "tool_calls" and path[2] == "arguments" and self.calls:
            self._capture = len(self._stack)
        if c == "{":
            self._stack.append(["{", None, "key"])
        elif c == "[":
            self._stack.append(["[", 0, "value"])
        elif c == '"':
            self._in_str, self._str_key, self._str_path, self._buf = True, False, path, []
        else:
            self._scalar = True

    def _close(self) -> None:
        self._stack.pop()
        self._value_done()

    def _value_done(self) -> None:
        if self._stack:
            self._stack[-1][2] = "comma"
        if self._capture is not None and len(self._stack) == self._capture:
            self._capture = None

    def _str_char(self, c: str) -> None:
        if self._esc is None:
            if c == "\\":
                self._esc = ""
            elif c == '"':
                self._in_str = False
                self._str_done()
            else:
                self._str_out(c)
        elif self._esc == "":
            if c == "u":
                self._esc = "u"
            else:
                self._esc = None
                self._str_out(_ESCAPES.get(c, c))
        else:
            self._esc += c
            if len(self._esc) == 5:
                code, self._esc = int(self._esc[1:], 16), None
                if 0xD800 <= code < 0xDC00:
                    self._high = code
                    return
                if 0xDC00 <= code < 0xE000:
                    ch = chr(0x10000 + ((self._high - 0xD800) << 10) + (code - 0xDC00)) if self._high else "\ufffd"
                else:
                    ch = chr(code)
                self._high = 0
                self._str_out(ch)

    def _str_out(self, ch: str) -> None:
        if not self._str_key and self._str_path == ("response",):
            self.text.append(ch)
            self._emit("text", ch)
        else:
            self._buf.append(ch)

    def _str_done(self) -> None:
        top = self._stack[-1] if self._stack else None
        if self._str_key:
            top[1], top[2] = "".join(self._buf), "colon"  # type: ignore[index]
            return
        path = self._str_path
        if len(path) == 3 and path[0] == "tool_calls" and path[2] == "name":
            call = Call(call_id(), "".join(self._buf))
            self.calls.append(call)
            self._emit("call", len(self.calls) - 1, call.id, call.name)
        self._value_done()

    def _emit(self, kind: str, *fields: Any) -> None:
        if kind == "args":
            n, s = fields
            self.calls[n].arguments += s
        self._out.append((kind, *fields))
