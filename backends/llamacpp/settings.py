"""The settings of one llama.cpp model: what an admin may set, with its bounds and defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LlamaCppModelConfig(BaseModel):
    """One model served by llama.cpp, as the routing config spells it (`models:` entries).

    Owned here, beside the engine that reads it, so the backend never imports the routing layer;
    `routing.config` composes it into the whole config.
    """

    model_config = ConfigDict(extra="forbid")

    card: str  # id of a model card
    backend: Literal["llamacpp"] = "llamacpp"
    model_path: str | None = None  # overrides the card's weight source
    n_ctx: int = Field(default=8192, gt=0)
    n_threads: int | None = Field(default=None, gt=0)
    n_batch: int = Field(default=512, gt=0)
    flash_attn: bool = False
    instances: int = Field(default=1, ge=1, le=16)
    max_queue: int = Field(default=16, ge=1)
    request_timeout_s: float = Field(default=300.0, gt=0)
    default_max_tokens: int = Field(default=2048, gt=0)
    warmup: bool = True
    # Sequences decoded together in one llama_decode call (continuous batching); 1 = the serial engine.
    parallel: int = Field(default=8, ge=1, le=64)
    # Reuse the KV cache of a shared prompt prefix: faster multi-turn chats, but outputs then
    # depend on what ran before, so seeded and temperature-0 requests are no longer reproducible.
    reuse_prompt_prefix: bool = False
    required: bool = True  # counts towards /ready
