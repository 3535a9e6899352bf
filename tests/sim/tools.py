"""Tool calls as the simulated upstreams make them: a model that calls a tool whenever it may.

When a request offers `tools`, does not say `tool_choice: "none"`, and its last message is the user's,
the reply is one call of the named (or first) tool, with arguments built from the tool's JSON schema
(every required property, by type), so a client can check them against that schema. After a `tool`
message the reply is text again, as a model answers once it has the result.
"""

from __future__ import annotations

import json
from typing import Any

SAMPLE = {"string": "Paris", "integer": 3, "number": 1.5, "boolean": True, "array": [], "object": {}}


def due_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function to call ({"name", "arguments"}) or None when the reply is text."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    messages = body.get("messages") or []
    if not tools or choice == "none" or not messages or messages[-1].get("role") != "user":
        return None
    fn = tools[0].get("function") or {}
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        fn = next((t.get("function") or {} for t in tools if (t.get("function") or {}).get("name") == wanted), fn)
    return {"name": fn.get("name", ""), "arguments": json.dumps(sample_arguments(fn.get("parameters") or {}))}


def sample_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or list(props):
        spec = props.get(name) or {}
        if spec.get("enum"):
            out[name] = spec["enum"][0]
        else:
            kind = spec.get("type", "string")
            out[name] = SAMPLE.get(kind if isinstance(kind, str) else kind[0], "x")
    return out


def argument_pieces(arguments: str, n: int = 3) -> list[str]:
    """The arguments cut into `n` fragments, as models stream them."""
    size = max(1, -(-len(arguments) // n))
    return [arguments[i:i + size] for i in range(0, len(arguments), size)]
