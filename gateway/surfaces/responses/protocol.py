"""The Responses API request (`POST /v1/responses`), as OpenAI defines it, kept apart from serving code.

Only the top level is modelled with pydantic; input items are checked one by one in `translate`, where
each error can name its item (`input[2].content`). Unknown fields pass, as on chat completions; fields
that would change the answer but that the gateway cannot honour are refused by name, never ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator

from backends.contract.protocol import OpenAIModel

# Tools that OpenAI runs on its side: a gateway in front of other models has none of them.
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11", "file_search",
    "code_interpreter", "computer_use_preview", "computer_use", "image_generation", "mcp", "local_shell", "shell",
    "apply_patch", "custom",
})


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextParam(OpenAIModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(OpenAIModel):
    _raw: dict[str, Any] | None = PrivateAttr(default=None)  # set by parse_request; unused here

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    metadata: dict[str, str] | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    background: bool | None = None
    conversation: Any = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    seed: int | None = None  # not an OpenAI field; kept for deterministic (cacheable) local answers

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, list) and not v:
            raise ValueError("'input' must not be an empty list")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        """OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512."""
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("at most 16 metadata pairs are allowed")
        for key, value in v.items():
            if len(key) > 64:
                raise ValueError("metadata keys are at most 64 characters")
            if len(value) > 512:
                raise ValueError("metadata values are at most 512 characters")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, str) and v not in ("none", "auto", "required"):
            raise ValueError("must be 'none', 'auto', 'required' or an object")
        if isinstance(v, dict) and not isinstance(v.get("type"), str):
            raise ValueError("an object tool_choice needs a 'type'")
        return v
