"""Named server-sent events (the Responses and Messages APIs' framing), as a test reads them off the wire."""

from __future__ import annotations

import json
from typing import Any


def named_events(text: str | bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each `event: ...` / `data: ...` block, in order."""
    if isinstance(text, bytes):
        text = text.decode()
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((lines["event"], json.loads(lines["data"])))
    return out
