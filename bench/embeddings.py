"""Embeddings per second from the local embedding model: through the gateway vs llama-cpp-python directly.

Same model file, same inputs, batch sizes 1 and 16; each figure is the median of `--reps` runs of
`--requests` requests, interleaved (direct, gateway, direct, ...) so machine noise hits both alike. The
gateway runs with its cache off (every request reaches the model) and no keys; requests are sent one at
a time over one kept-alive connection, so the ratio is the gateway's overhead per request (HTTP, routing,
tokenizing in the worker, and the hop to the embedding engine process and back).

    python bench/embeddings.py --reps 5 --requests 40
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.model_cards import load_cards  # noqa: E402
from backends.weights import resolve_weights  # noqa: E402
from tests.server import GatewayProcess  # noqa: E402

CARD = "all-minilm-l6-v2"
SENTENCES = [f"Sentence number {i} talks about {topic} in a few plain words."
             for i, topic in enumerate(["the weather", "a football match", "interest rates", "a new phone",
                                        "cooking pasta", "a mountain hike", "the stock market", "a jazz concert"] * 2)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def direct_rate(llm, batch: list[str], requests: int) -> float:
    t0 = time.perf_counter()
    for _ in range(requests):
        llm.embed(batch if len(batch) > 1 else batch[0], normalize=True)
    return requests * len(batch) / (time.perf_counter() - t0)


def gateway_rate(client: httpx.Client, batch: list[str], requests: int) -> float:
    body = {"model": CARD, "input": batch if len(batch) > 1 else batch[0], "encoding_format": "float"}
    t0 = time.perf_counter()
    for _ in range(requests):
        r = client.post("/embeddings", json=body)
        r.raise_for_status()
    return requests * len(batch) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from llama_cpp import Llama

    path = resolve_weights(load_cards()[CARD])
    llm = Llama(str(path), embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=args.threads,
                verbose=False)
    model = {"card": CARD, **({"n_threads": args.threads} if args.threads else {})}
    cfg = {"models": [model], "cache": {"enabled": False}, "logging": {"json_requests": False}}
    results = {}
    with GatewayProcess(cfg) as gw, httpx.Client(base_url=gw.base_url, timeout=60) as client:
        for size in (1, 16):
            batch = SENTENCES[:size]
            direct_rate(llm, batch, 5), gateway_rate(client, batch, 5)  # warm both
            d, g = [], []
            for _ in range(args.reps):
                d.append(direct_rate(llm, batch, args.requests))
                g.append(gateway_rate(client, batch, args.requests))
            dm, gm = statistics.median(d), statistics.median(g)
            results[size] = {"direct_per_s": round(dm, 1), "gateway_per_s": round(gm, 1),
                             "ratio": round(gm / dm, 3)}
            print(f"batch {size:2d}: direct {dm:8.1f} embeddings/s, gateway {gm:8.1f} embeddings/s, "
                  f"gateway/direct {gm / dm:.3f}")
    print(json.dumps({"cpu": cpu_name(), "reps": args.reps, "requests": args.requests, "results": results}))


if __name__ == "__main__":
    main()
