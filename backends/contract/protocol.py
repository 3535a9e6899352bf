"""OpenAI request types, kept apart from serving logic (as vLLM does).

Unknown fields are accepted (`extra="allow"`) so new OpenAI parameters never
cause a 500 or a 400; backends read only what they understand. Responses are
built as plain dicts on the hot path, so only requests are modelled here.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from backends.contract.errors import InvalidRequest


class OpenAIModel(BaseModel):
    # Unknown fields pass (new OpenAI parameters must not be a 400), but known ones are strict: "10" is not
    # a max_tokens and "yes" is not a stream. Coercing them would make the gateway and the upstream (which
    # gets the raw body) disagree about the request.
    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class OtherPart(OpenAIModel):
    """Image, audio, file and refusal parts: accepted here, refused by backends that can't use them."""

    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[Union[TextPart, OtherPart], Field(discriminator="type")]
Content = Union[str, list[ContentPart]]


class FunctionCall(OpenAIModel):
    name: str
    arguments: str


class ToolCall(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        return self

    def text(self) -> str:
        """The message's text; only text parts can be flattened."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if not isinstance(part, TextPart):
                raise InvalidRequest(
                    f"Content parts of type '{part.type}' are not supported by this model.",
                    param="messages",
                    code="unsupported_content",
                )
            out.append(part.text)
        return "".join(out)


class JSONSchemaFormat(OpenAIModel):
    name: str = Field(max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(OpenAIModel):
    type: Literal["text"]


class ResponseFormatJSONObject(OpenAIModel):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(OpenAIModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    Union[ResponseFormatText, ResponseFormatJSONObject, ResponseFormatJSONSchema],
    Field(discriminator="type"),
]


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class APIRequest(OpenAIModel):
    """What every request the pipeline carries has: the endpoint it is for, its model, its body as sent.

    A request knows what it asks for: `endpoint` (which backend method answers it) and `stream`, so
    nothing downstream passes those facts beside it.
    """

    endpoint: ClassVar[str] = ""  # "chat", "completions" or "embeddings"
    prompt_field: ClassVar[str] = ""  # the field an error about the prompt names
    result_field: ClassVar[str] = "choices"  # the field a complete answer has (what may be cached)
    deterministic: ClassVar[bool] = False  # the same body always gets the same answer (cacheable by default)

    # The body exactly as the client sent it, for upstreams that take it (nearly) verbatim.
    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    model: str = Field(min_length=1)

    @property
    def is_chat(self) -> bool:
        return self.endpoint == "chat"

    def wire_body(self) -> dict[str, Any]:
        """A fresh dict of the request as sent (or as built, for requests made in code)."""
        if self._raw is not None:
            return dict(self._raw)
        return self.model_dump(exclude_unset=True, by_alias=True)


class SamplingFields(APIRequest):
    """Fields shared by chat and legacy completions."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Common non-OpenAI sampling extras (vLLM spells them the same way).
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops or None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def max_output_tokens(self) -> int | None:
        """The most tokens the answer may have, as the client asked (None: the backend's default)."""
        return self.max_tokens

    def with_usage_reported(self) -> "SamplingFields":
        """A copy that asks the backend for the stream's usage chunk (for accounting), raw body included."""
        copy = self.model_copy(update={"stream_options": StreamOptions(include_usage=True)})
        raw = self.wire_body()
        raw["stream_options"] = {**(raw.get("stream_options") or {}), "include_usage": True}
        copy._raw = raw
        return copy


class ChatCompletionRequest(SamplingFields):
    endpoint: ClassVar[str] = "chat"
    prompt_field: ClassVar[str] = "messages"

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None

    @field_validator("tools")
    @classmethod
    def _tools_shape(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(v or []):
            kind = tool.get("type", "function")
            if not isinstance(kind, str):
                raise ValueError(f"tools[{i}].type must be a string")
            if kind == "function":
                fn = tool.get("function")
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                    raise ValueError(f"tools[{i}].function must be an object with a non-empty 'name'")
                if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
                    raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, v: Any) -> Any:
        """'none', 'auto', 'required', or an object; a named function must be {"name": "..."}."""
        if v is None:
            return v
        if isinstance(v, str):
            if v not in ("none", "auto", "required"):
                raise ValueError("must be 'none', 'auto', 'required' or an object")
            return v
        if not isinstance(v, dict) or not isinstance(v.get("type"), str):
            raise ValueError("must be 'none', 'auto', 'required' or an object with a 'type'")
        if v["type"] == "function":
            fn = v.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise ValueError("a function tool_choice needs 'function': {\"name\": \"...\"}")
        return v

    # The request as another API's client sent it ((api, body), e.g. ("anthropic.messages", {...})), when it
    # arrived on that API's surface: a deployment that speaks that API natively takes it as it is, and says
    # so in its answer (see backends.anthropic.native); every other deployment answers the chat request.
    _native: tuple[str, dict[str, Any]] | None = PrivateAttr(default=None)
    _native_headers: dict[str, str] = PrivateAttr(default_factory=dict)  # e.g. anthropic-beta, to send along

    def native_body(self, api: str) -> dict[str, Any] | None:
        """The original body, if this request came in as `api` (a fresh copy of its top level)."""
        native = self._native
        return dict(native[1]) if native is not None and native[0] == api else None

    def native_headers(self, api: str) -> dict[str, str]:
        """The client's headers of that API that go upstream with its body (see `with_native`)."""
        return dict(self._native_headers) if self._native is not None and self._native[0] == api else {}

    def with_native(self, api: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> "ChatCompletionRequest":
        self._native = (api, body)
        self._native_headers = dict(headers or {})
        return self

    def with_messages_appended(self, extra: list[dict[str, Any]]) -> "ChatCompletionRequest":
        """A copy with more messages at the end, the raw body included (for upstreams that take it as is)."""
        raw = self.wire_body()
        raw["messages"] = [*(raw.get("messages") or []), *extra]
        copy = self.model_copy(update={"messages": [*self.messages, *(ChatMessage.model_validate(m) for m in extra)]})
        copy._raw = raw
        return copy

    @property
    def max_output_tokens(self) -> int | None:
        """`max_completion_tokens` wins over the deprecated `max_tokens`."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


Prompt = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(SamplingFields):
    endpoint: ClassVar[str] = "completions"
    prompt_field: ClassVar[str] = "prompt"

    prompt: Prompt
    max_tokens: int | None = Field(default=16, ge=1)  # the legacy endpoint's default
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: Prompt) -> Prompt:
        if isinstance(v, list) and len(v) == 0:
            raise ValueError("'prompt' must not be an empty list")
        return v

    def prompts(self) -> list[str | list[int]]:
        """Normalise the four prompt shapes to a list of single prompts."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


EmbeddingInput = Union[str, list[str], list[int], list[list[int]]]
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs in one request


class EmbeddingRequest(APIRequest):
    """`POST /v1/embeddings`. It never streams and generates nothing: `stream`, `n` and the output
    budget are constants, so the pipeline's limits and accounting read it like any other request."""

    endpoint: ClassVar[str] = "embeddings"
    prompt_field: ClassVar[str] = "input"
    result_field: ClassVar[str] = "data"
    deterministic: ClassVar[bool] = True
    stream: ClassVar[bool] = False
    include_usage: ClassVar[bool] = False
    n: ClassVar[int] = 1
    max_output_tokens: ClassVar[int] = 0

    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input_shape(cls, v: EmbeddingInput) -> EmbeddingInput:
        """OpenAI's rules: nothing empty, at most 2048 inputs, token ids are non-negative."""
        if isinstance(v, str):
            if not v:
                raise InvalidRequest("'input' must not be an empty string.", param="input", code="invalid_value")
            return v
        if not v:
            raise InvalidRequest("'input' must not be an empty list.", param="input", code="invalid_value")
        if len(v) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(f"'input' has {len(v)} items; at most {MAX_EMBEDDING_INPUTS} inputs are allowed in "
                                 "one request.", param="input", code="invalid_value")
        for i, item in enumerate(v):
            if isinstance(item, int):
                if item < 0:
                    raise InvalidRequest(f"Invalid token id {item} at 'input[{i}]': ids are non-negative.",
                                         param=f"input[{i}]", code="invalid_value")
            elif not item:
                what = "string" if isinstance(item, str) else "token array"
                raise InvalidRequest(f"'input[{i}]' must not be an empty {what}.", param=f"input[{i}]",
                                     code="invalid_value")
            elif isinstance(item, list) and any(t < 0 for t in item):
                raise InvalidRequest(f"'input[{i}]' holds a negative token id.", param=f"input[{i}]",
                                     code="invalid_value")
        return v

    def inputs(self) -> list[str | list[int]]:
        """The four input shapes as a list of single inputs (a text, or one token array)."""
        v = self.input
        if isinstance(v, str):
            return [v]
        if all(isinstance(x, int) for x in v):
            return [list(v)]  # type: ignore[arg-type]
        return list(v)  # type: ignore[arg-type]


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _param_of(loc: tuple[Any, ...]) -> str | None:
    """pydantic's loc -> OpenAI's param, e.g. ('messages', 0, 'role') -> 'messages[0].role'.

    Union branches ('str', 'list[...]') and discriminator tags (the 'json_schema'
    in ('response_format', 'json_schema', 'json_schema', 'name')) are not fields
    and are dropped.
    """
    parts = [p for p in loc if not (isinstance(p, str) and (p in _TYPE_NAMES or "[" in p or p.startswith("function-")))]
    parts = [p for i, p in enumerate(parts) if not (isinstance(p, str) and i + 1 < len(parts) and parts[i + 1] == p)]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


MAX_JSON_DEPTH = 64  # arrays and objects inside each other: a chat needs about 6, a nested JSON schema more


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Is anything nested deeper than `limit`? Iterative, so a hostile body cannot exhaust the stack.

    orjson parses up to 1,024 levels but serialises only 254, so a deeper value passes parsing and then
    breaks whatever writes it again (the cache key, the upstream body): it is refused here, at the door.
    """
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def parse_request(raw: bytes, model_cls: type[APIRequest], max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Bytes -> validated request, or an `InvalidRequest` naming the bad field."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if json_depth_exceeds(data, max_depth):
        raise InvalidRequest(f"The JSON body is nested too deeply: at most {max_depth} levels of arrays and "
                             "objects are accepted.", code="invalid_json")
    return validate_request(data, model_cls)


def validate_request(data: dict[str, Any], model_cls: type[APIRequest]) -> Any:
    """A parsed body -> validated request (its `_raw`), or an `InvalidRequest` naming the bad field. For
    bodies built in code (a surface's translation to chat), which need no second parse."""
    try:
        request = model_cls.model_validate(data)
        request._raw = data
        return request
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        param = _param_of(tuple(err["loc"]))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        where = f"'{param}'" if param else "the request"
        if err["type"] == "missing":
            text = f"Missing required parameter: {where}."
        else:
            text = f"Invalid value for {where}: {msg}."
        raise InvalidRequest(text, param=param, code="invalid_value" if err["type"] != "missing" else "missing_required_parameter") from None
