"""Anthropic's Messages API request (`POST /v1/messages`, `/v1/messages/count_tokens`), kept apart from serving.

The top level is modelled; content blocks are checked one by one in `translate`, where each error can
name its block (`messages[1].content[0].tool_use_id`). As Anthropic requires, `max_tokens` is required
on `/v1/messages` (and not on `count_tokens`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class InputMessage(_Model):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Model):
    user_id: str | None = None


class CountTokensRequest(_Model):
    _raw: dict[str, Any] | None = PrivateAttr(default=None)  # set by parse_request; unused here

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: Metadata | None = None
    service_tier: str | None = None
    output_config: dict[str, Any] | None = None  # {"format": {"type": "json_schema", "schema": ...}, "effort": ...}
