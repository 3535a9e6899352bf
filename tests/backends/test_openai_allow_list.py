"""The fields a `kind: openai` deployment passes on are exactly what the official SDK can send: a field
the SDK has and the list lacks would be dropped silently (it happened: `moderation`,
`prompt_cache_options`); one the SDK lacks would reach OpenAI and get a 400. Upgrading the `openai`
package in the test environment makes this fail until the list follows."""

from __future__ import annotations

import typing

import pytest
from openai.types import completion_create_params, embedding_create_params
from openai.types.chat import completion_create_params as chat_params

from backends.openai_compat import EMBEDDING_FIELDS, OPENAI_FIELDS

pytestmark = pytest.mark.unit


def fields(*typed_dicts: type) -> set[str]:
    return {name for td in typed_dicts for name in typing.get_type_hints(td, include_extras=True)}


def test_chat_and_completion_fields_are_the_sdks() -> None:
    sdk = fields(chat_params.CompletionCreateParamsStreaming, chat_params.CompletionCreateParamsNonStreaming,
                 completion_create_params.CompletionCreateParamsStreaming,
                 completion_create_params.CompletionCreateParamsNonStreaming)
    assert {"messages", "prompt", "stream", "stream_options"} <= sdk  # the SDK's types were read
    assert sorted(sdk - OPENAI_FIELDS) == [], "the SDK sends these; kind: openai would drop them"
    assert sorted(OPENAI_FIELDS - sdk) == [], "the SDK has no such field; OpenAI would answer 400"


def test_embedding_fields_are_the_sdks() -> None:
    assert fields(embedding_create_params.EmbeddingCreateParams) == EMBEDDING_FIELDS
