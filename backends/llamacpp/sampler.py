"""One llama.cpp sampler chain per sequence, built exactly like the high-level `Llama` builds its own.

Why a chain per sequence: in a batch every sequence has its own temperature,
seed, penalties and grammar, and the penalty and grammar samplers keep state
(the tokens seen so far). Why the same order as `Llama._init_sampler`: a lone
request must give the tokens of the serial engine, greedy and seeded alike.
`llama_sampler_sample` applies the chain to one output row of the last decode
and then accepts the chosen token, which advances the penalties and grammar.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from backends.llamacpp.jobs import Sampling

PENALTY_LAST_N = 64  # `Llama(last_n_tokens_size=64)`, the serial engine's value


def choice_seed(sampling: Sampling, choice: int) -> int:
    """The serial engine's rule: choice i of a seeded request uses seed + i."""
    seed = (sampling.seed + choice) if sampling.seed is not None else random.getrandbits(31)
    return seed & 0x7FFFFFFF


class SamplerChain:
    """Owns a `llama_sampler` chain; `sample` picks the next token from one row of the batch's logits."""

    def __init__(self, model: Any, n_vocab: int, sampling: Sampling, seed: int, grammar: Any = None) -> None:
        from llama_cpp._internals import LlamaSampler

        sp = sampling
        chain = LlamaSampler()
        chain.add_penalties(n_vocab=n_vocab, penalty_last_n=PENALTY_LAST_N, penalty_repeat=sp.repeat_penalty,
                            penalty_freq=sp.frequency_penalty, penalty_present=sp.presence_penalty)
        if grammar is not None:
            chain.add_grammar(model, grammar)  # a fresh grammar state per chain, so per sequence
        if sp.temperature < 0.0:
            chain.add_dist(seed)
        elif sp.temperature == 0.0:
            chain.add_greedy()
        else:
            chain.add_top_k(sp.top_k)
            chain.add_typical(1.0, 1)
            chain.add_top_p(sp.top_p, 1)
            chain.add_min_p(sp.min_p, 1)
            chain.add_temp(sp.temperature)
            chain.add_dist(seed)
        self._chain = chain
        self._n_vocab = n_vocab
        # Plain greedy (neutral penalties, no grammar) is an argmax: the chain would first copy the
        # whole vocabulary (262k entries on Gemma) into a candidate array, once per sequence per step.
        self._argmax = (sp.temperature == 0.0 and grammar is None and sp.repeat_penalty == 1.0
                        and sp.frequency_penalty == 0.0 and sp.presence_penalty == 0.0)

    def sample(self, ctx: Any, batch_index: int) -> int:
        import llama_cpp

        if self._argmax:  # the first maximum, as llama.cpp's greedy sampler picks
            logits = llama_cpp.llama_get_logits_ith(ctx, batch_index)
            return int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        return int(llama_cpp.llama_sampler_sample(self._chain.sampler, ctx, batch_index))

    def close(self) -> None:
        self._chain.close()
