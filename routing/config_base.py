"""The base of every config section: an unknown key is an error (a typo must not be silently ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    """A config object that refuses keys it does not define."""

    model_config = ConfigDict(extra="forbid")
