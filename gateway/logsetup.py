"""Logging: readable lines for events; the JSON request lines have their own writer (gateway.request_log)."""

from __future__ import annotations

import logging

from gateway import request_log


def configure(level: str = "info", json_requests: bool = True) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request_log.configure(json_requests)
