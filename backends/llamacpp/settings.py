"""The settings of one llama.cpp model: what an admin may set, with its bounds and defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LlamaCppModelConfig(BaseModel):
    """A local model served by llama.cpp: its card, its context and threads, and how many requests it takes at
    once (`instances` engine processes, each decoding `parallel` sequences)."""

    # Owned here, beside the engine that reads it, so the backend never imports the routing layer;
    # `routing.config` composes it into the whole config.
    model_config = ConfigDict(extra="forbid")

    card: str = Field(description="Id of a model card (model-cards/ or server.model_cards_dir).")
    backend: Literal["llamacpp"] = Field(default="llamacpp", description="The engine; llama.cpp is the only one.")
    model_path: str | None = Field(default=None, description="Use this GGUF instead of the card's weight source.")
    n_ctx: int = Field(default=8192, gt=0, description="Context served, in tokens (capped at the card's "
                                                       "context_length).")
    n_threads: int | None = Field(default=None, gt=0, description="CPU threads (unset: every core this process "
                                                                  "may use).")
    n_batch: int = Field(default=512, gt=0, description="Tokens per llama_decode call (llama.cpp's n_batch).")
    flash_attn: bool = Field(default=False, description="Use llama.cpp's flash attention.")
    instances: int = Field(default=1, ge=1, le=16, description="Independent copies of the model, each an engine "
                                                               "process with its own queue.")
    max_queue: int = Field(default=16, ge=1, description="Requests waiting for a sequence slot, per instance and "
                                                         "class; beyond it, 503 with Retry-After.")
    request_timeout_s: float = Field(default=300.0, gt=0, description="Queue wait plus generation; then 504 (or "
                                                                      "an in-band error mid-stream).")
    default_max_tokens: int = Field(default=2048, gt=0, description="max_tokens when the request gives none "
                                                                    "(never more than the context left).")
    warmup: bool = Field(default=True, description="Run a short generation before /ready turns 200.")
    parallel: int = Field(default=8, ge=1, le=64, description="Sequences decoded together in one llama_decode "
                                                              "call (continuous batching), per instance; 1: the "
                                                              "serial engine.")
    reuse_prompt_prefix: bool = Field(
        default=False, description="Reuse the KV cache of a shared prompt prefix: faster multi-turn chats, but "
                                   "outputs then depend on what ran before, so seeded and temperature-0 requests "
                                   "are no longer reproducible.")
    required: bool = Field(default=True, description="Counts towards /ready, and /health once failed (false: only "
                                                     "reported).")
