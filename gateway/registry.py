"""Which backend serves which model name (ids and aliases)."""

from __future__ import annotations

import time
from typing import Any

from backends.base import Backend
from gateway.errors import ModelNotFound


class ModelRegistry:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self.created = int(time.time())
        self._by_name: dict[str, Backend] = {}
        for backend in backends:
            for name in [backend.name, *backend.card.aliases]:
                self._by_name[name] = backend

    def resolve(self, model: str) -> Backend:
        try:
            return self._by_name[model]
        except KeyError:
            raise ModelNotFound(model) from None

    def model_object(self, backend: Backend) -> dict[str, Any]:
        """OpenAI's Model object plus the card's facts, which clients may ignore."""
        card = backend.card
        return {
            "id": backend.name,
            "object": "model",
            "created": self.created,
            "owned_by": card.owned_by,
            "aliases": card.aliases,
            "backend": card.backend,
            "format": card.format,
            "quantization": card.quantization,
            "context_length": backend.context_length,
            "max_model_len": backend.context_length,
            "family": card.family,
            "parameters": card.parameters,
            "license": card.license,
            "ready": backend.status().state == "ready",
        }
