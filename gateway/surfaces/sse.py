"""Named server-sent events, as the Responses and Messages APIs frame them."""

from __future__ import annotations

from typing import Any

import orjson


def event(name: str, data: dict[str, Any]) -> bytes:
    """`event: <name>` plus one `data:` line; both APIs repeat the name inside the data as `type`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
