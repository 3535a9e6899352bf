"""Whether this install can start a config's local models: llama.cpp (the `local` extra) and the weights.

One answer for the three places that must agree: `llm-gateway check` reports it, `serve` stops on it, and a
hot reload refuses a config that adds a model this install cannot run (the old config keeps serving), each
with the model's line in the file.
"""

from __future__ import annotations

from backends.llamacpp.installed import engine_problem
from backends.model_cards import ModelCard
from backends.weights import weights_problem
from routing.config import GatewayConfig
from routing.yaml_lines import compose, line_of


def local_model_problems(config: GatewayConfig, cards: dict[str, ModelCard], text: str | None,
                         source: str, model_index: list[int] | None = None) -> list[str]:
    """A `source:line: models[i]: ...` line per local model that could not start here: no llama.cpp in this
    install, else weights it could not find (found without building anything). `model_index`: the file's
    index of each of `config`'s models, when some were left out (ConfigError.model_index)."""
    found = []
    for n, model in enumerate(config.models):
        card = cards.get(model.card)
        problem = engine_problem(model.card)
        if problem is None and card is not None:
            problem = weights_problem(card, model.model_path)
        if problem:
            found.append((model_index[n] if model_index else n, problem))
    # The file is composed again only to number a problem's line: a reload without one pays nothing for it.
    root = compose(text) if found and text else None
    return [f"{source}:{line_of(root, ('models', i)) or '?'}: models[{i}]: {problem}" for i, problem in found]
