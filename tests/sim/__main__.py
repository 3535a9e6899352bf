"""Run one simulator in the foreground: ``python -m tests.sim {openai|vllm|anthropic|azure} --port N``.

For tests that need an upstream in another process (to SIGKILL it, for example).
The URL is printed on stdout, flushed, once the socket is listening.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tests.sim.anthropic_sim import AnthropicSim
from tests.sim.azure_sim import AzureSim
from tests.sim.base import SimServer
from tests.sim.openai_sim import OpenAISim
from tests.sim.vllm_sim import VLLMSim


def build(kind: str, port: int, model: str | None, api_key: str | None) -> SimServer:
    """The simulator for ``kind``, with the default model name unless ``model`` is given."""
    if kind == "anthropic":
        return AnthropicSim(port=port, model_name=model, api_key=api_key)
    if kind == "azure":  # `model` names its one deployment
        return AzureSim(port=port, api_key=api_key, **({"deployments": (model,)} if model else {}))
    cls = VLLMSim if kind == "vllm" else OpenAISim
    return cls(port=port, api_key=api_key, **({"model_name": model} if model else {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("kind", choices=["openai", "vllm", "anthropic", "azure"])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the printed URL)")
    parser.add_argument("--model", default=None, help="model name the simulator reports")
    parser.add_argument("--api-key", default=None, help="require this key")
    args = parser.parse_args(argv)
    sim = build(args.kind, args.port, args.model, args.api_key).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(sim.url, flush=True)
    while not done.wait(1.0):
        pass
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
