"""Protobuf messages <-> the OpenAI JSON the pipeline speaks, for the gRPC services.

The .proto field names are OpenAI's, so protobuf's JSON mapping converts one to the other; three things
it does differently are mended here: int64 fields come out as strings (OpenAI's are numbers), numbers in a
`google.protobuf.Value` or `Struct` come out as floats (a token-id prompt must stay integers), and `extra_body` is
merged into the request as the OpenAI SDK merges its `extra_body`.

json_format walks a message field by field in Python (about 19 µs for a one-token chat chunk here), so
the per-chunk path of a chat stream builds the message directly (about 3 µs) whenever the chunk has the
common shape (text deltas, a finish reason, usage), and so does a whole chat answer; anything else (tool
calls, logprobs, fields this file does not know) goes through json_format. Embedding vectors are set as whole lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from backends.contract.protocol import APIRequest, validate_request

M = TypeVar("M", bound=Message)
A = TypeVar("A", bound=APIRequest)

_INT64 = ("seed",)  # request fields that are int64 in the .proto files
# The Value and Struct fields of the requests (typed fields are already ints where they should be).
_FREE_FORM = ("prompt", "input", "messages", "stop", "logit_bias", "response_format", "tools", "tool_choice",
              "metadata")


def _integers(value: Any) -> Any:
    """Whole floats back to ints, through lists and objects: a JSON number in a Value or Struct is a
    double, so token ids, `top_k: 3` in `extra_body` or `"minimum": 1` in a tool's schema come out as
    3.0; JSON does not tell 3 from 3.0, and OpenAI's (and pydantic's) integer fields want 3."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, list):
        return [_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    return value


def request_dict(message: Message) -> dict[str, Any]:
    """The OpenAI JSON of a request message (fields left unset are absent, as in a JSON body)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    extra = data.pop("extra_body", None)
    for name in _INT64:
        if isinstance(data.get(name), str):
            data[name] = int(data[name])
    for name in _FREE_FORM:
        if name in data:
            data[name] = _integers(data[name])
    return {**_integers(extra), **data} if isinstance(extra, dict) else data


def request_of(message: Message, kind: type[A], stream: bool) -> A:
    """The validated pipeline request, streamed as the RPC says (for a kind that can stream)."""
    data = request_dict(message)
    if "stream" in kind.model_fields:
        data["stream"] = stream
    else:
        data.pop("stream", None)
    return validate_request(data, kind)


def message_of(data: dict[str, Any], cls: type[M]) -> M:
    """A response message from OpenAI JSON; fields this file does not know are dropped."""
    return json_format.ParseDict(data, cls(), ignore_unknown_fields=True)


_TOP = frozenset({"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"})
_TEXT = frozenset({"role", "content", "refusal"})  # a text message, or a stream's delta of one
_USAGE = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})
_NULL = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)  # `"logprobs": null`, as json_format keeps it


@dataclass(frozen=True)
class _Kind:
    """A chat answer or a chat stream chunk: the same outline, with its own names."""

    message: str  # the message class: ChatCompletion / ChatCompletionChunk
    choice: str  # its choice class
    text_field: str  # the choice's field holding the text: message / delta
    text_message: str  # that field's class
    choices_may_be_absent: bool  # a chunk may come without choices; an answer never does
    choice_keys: frozenset[str] = field(init=False)  # made once: it is checked for every chunk

    def __post_init__(self) -> None:
        object.__setattr__(self, "choice_keys", frozenset({"index", "finish_reason", "logprobs", self.text_field}))


_CHUNK = _Kind("ChatCompletionChunk", "ChunkChoice", "delta", "Delta", True)
_ANSWER = _Kind("ChatCompletion", "Choice", "message", "AssistantMessage", False)


def _plain(data: dict[str, Any], kind: _Kind) -> bool:
    """Text only (no tool calls, logprobs or fields this file does not know): built directly."""
    if not _TOP.issuperset(data):
        return False
    usage = data.get("usage")
    if usage is not None and not (isinstance(usage, dict) and _USAGE.issuperset(usage)):
        return False
    choices = data.get("choices")
    if not isinstance(choices, list):
        return choices is None and kind.choices_may_be_absent
    keys = kind.choice_keys
    for choice in choices:
        if not isinstance(choice, dict) or not keys.issuperset(choice) or choice.get("logprobs") is not None:
            return False
        text = choice.get(kind.text_field)
        if text is not None and not (isinstance(text, dict) and _TEXT.issuperset(text)):
            return False
    return True


def _set(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _built(data: dict[str, Any], pb2: Any, kind: _Kind) -> Any:
    """The message json_format would build (tests/gateway hold them equal), directly when `_plain`.
    A message constructor takes None as "not set", so the fields go in as they are."""
    if not _plain(data, kind):
        return message_of(data, getattr(pb2, kind.message))
    Text, Choice = getattr(pb2, kind.text_message), getattr(pb2, kind.choice)
    choices = [Choice(index=c.get("index"), finish_reason=c.get("finish_reason"),
                      logprobs=_NULL if "logprobs" in c else None,
                      **{kind.text_field: None if (t := c.get(kind.text_field)) is None else Text(**t)})
               for c in data.get("choices") or ()]
    usage = data.get("usage")
    return getattr(pb2, kind.message)(
        id=data.get("id"), object=data.get("object"), created=data.get("created"), model=data.get("model"),
        choices=choices, system_fingerprint=data.get("system_fingerprint"), service_tier=data.get("service_tier"),
        usage=None if usage is None else pb2.Usage(**usage))


def chat_chunk(chunk: dict[str, Any], pb2: Any) -> Any:
    """A ChatCompletionChunk message (the per-chunk path of a stream)."""
    return _built(chunk, pb2, _CHUNK)


def chat_completion(data: dict[str, Any], pb2: Any) -> Any:
    """A ChatCompletion message (a unary answer)."""
    return _built(data, pb2, _ANSWER)


def embeddings(data: dict[str, Any], pb2: Any) -> Any:
    """A CreateEmbeddingResponse: each vector set as one list (json_format would take it float by float);
    a base64 vector (a string) goes to `embedding_base64`."""
    items = []
    for item in data.get("data") or ():
        vector = item.get("embedding")
        as_text = isinstance(vector, str)
        items.append(pb2.Embedding(**_set(object=item.get("object"), index=item.get("index"),
                                          embedding=None if as_text else vector,
                                          embedding_base64=vector if as_text else None)))
    usage = data.get("usage") or {}
    return pb2.CreateEmbeddingResponse(data=items, **_set(
        object=data.get("object"), model=data.get("model"),
        usage=pb2.EmbeddingUsage(**_set(prompt_tokens=usage.get("prompt_tokens"),
                                        total_tokens=usage.get("total_tokens")))))
