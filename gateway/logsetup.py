"""Logging: readable lines for events, one bare JSON line per request on `llm_gateway.requests`."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "info", json_requests: bool = True) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    requests = logging.getLogger("llm_gateway.requests")
    requests.propagate = False
    if not requests.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        requests.addHandler(handler)
    requests.setLevel(logging.INFO if json_requests else logging.WARNING)
