"""What every backend whose model runs in supervised engine processes shares, whatever the model does.

A chat model (`backend.LlamaCppBackend`) and an embedding model (`embeddings.LlamaEmbeddingBackend`)
each keep a vocab-only tokenizer here and reach their engines through an `instances.EngineSet`: the
same key for the same config in every worker (so `--workers N` share the engines), the same state,
readiness and load, and the same mapping of what an engine set says (no engine, all full, a lost job)
to gateway errors. Each subclass says how its engines are set up and what its jobs are.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any, Callable

import orjson

from backends.base import Backend
from backends.contract.errors import EngineUnavailable, NotReady, Overloaded, UpstreamTimeout
from backends.llamacpp.client import JobHandle
from backends.llamacpp.control import EngineControl
from backends.llamacpp.instances import AllFull, EngineSet, NoEngine
from backends.llamacpp.settings import LlamaCppModelConfig
from backends.model_cards import ModelCard
from backends.weights import Progress


class EngineBackend(Backend):
    kind = "llamacpp"
    key_tag = ""  # told apart in the engine key, so a chat and an embedding engine never share one

    def __init__(self, name: str, card: ModelCard, config: LlamaCppModelConfig, progress: Progress | None = None,
                 control: EngineControl | None = None) -> None:
        super().__init__(name, card, required=config.required)
        self.config = config
        self._progress = progress
        self._control = control  # None: this backend supervises its own engines (tests, benchmarks)
        self._own_control = control is None
        self.engines: EngineSet | None = None
        self.tokenizer: Any = None  # a vocab-only `Llama`: tokenizer and metadata, no weights
        self.listeners: list[Callable[[], None]] = []  # told when an engine starts or stops serving
        self._failed: str | None = None
        self._n_ctx = min(config.n_ctx, card.context_length)
        self.model_path: Path | None = None
        # Every worker computes the same key for the same model config, so they share its engines.
        raw = orjson.dumps(config.model_dump(), option=orjson.OPT_SORT_KEYS)
        self.key = f"{name}-{self.key_tag}{hashlib.sha256(raw).hexdigest()[:16]}"

    async def aclose(self) -> None:
        if self.engines is not None:
            await self.engines.aclose()
        if self._own_control and self._control is not None:
            await self._control.aclose()

    def _state(self) -> str:
        if self._failed is not None:
            return "failed"
        return self.engines.state if self.engines is not None else "loading"

    @property
    def available(self) -> bool:
        return self._failed is None and self.engines is not None and self.engines.ready

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def model_id(self) -> str:
        """What responses call the model: the card's id, whatever the deployment is named."""
        return self.card.id if self.card else self.name

    def load_score(self) -> float:
        return self.engines.load() if self.engines is not None else 0.0

    def _require_ready(self) -> None:
        state = self._state()
        if state != "ready":
            retry = self.engines.retry_after() if self.engines is not None else 2.0
            raise NotReady(f"The model '{self.name}' is {state}; try again shortly.", retry_after=retry)

    async def _submit(self, spec: dict[str, Any], deadline: float,
                      timeout: UpstreamTimeout) -> tuple[JobHandle, list[Any]]:
        """A job on the least loaded engine, and its first event; `timeout` is raised past `deadline`."""
        assert self.engines is not None
        try:
            return await self.engines.open(spec, deadline)
        except NoEngine as exc:
            raise NotReady(f"The model '{self.name}' is {exc.state}; try again shortly.",
                           retry_after=exc.retry_after) from None
        except AllFull as exc:
            raise Overloaded(f"The model '{self.name}' is overloaded; retry after {exc.retry_after:.0f}s.",
                             retry_after=exc.retry_after) from None
        except asyncio.TimeoutError:
            raise timeout from None

    def _lost(self, doing: str) -> EngineUnavailable:
        """The engine process died with the job in it: retryable, the supervisor is restarting it."""
        return EngineUnavailable(f"The model '{self.name}' stopped while {doing} (its engine process died and is "
                                 "being restarted); try again.",
                                 retry_after=self.engines.retry_after() if self.engines else 2.0)


def vocab_only(path: Path) -> Any:
    """The model's tokenizer and metadata, without its weights."""
    from llama_cpp import Llama

    from backends.llamacpp.sysinfo import relay_llama_log

    relay_llama_log()
    return Llama(model_path=str(path), vocab_only=True, verbose=False)
