"""One stream through the gateway vs llama-cpp-python called directly, same model, prompt and length.

Prints decode tokens/s for each, their ratio, and time to first token for
each, as medians over interleaved repetitions (direct, gateway, direct, ...)
so that machine noise hits both sides alike. Both sides decode greedily with
EOS ignored, so both produce exactly `--tokens` tokens.

    python bench/llamacpp_stream.py --tokens 128 --reps 7
"""

from __future__ import annotations

import argparse
import json
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

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def direct_run(llm, prompt_tokens: list[int], n: int) -> tuple[float, float, int]:
    """(ttft_s, decode_tok_s, tokens) for one greedy stream straight from llama-cpp-python."""
    llm.reset()
    t0 = time.perf_counter()
    first = last = t0
    count = 0
    for token in llm.generate(prompt_tokens, top_k=0, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        llm.detokenize([token])
        count += 1
        now = time.perf_counter()
        if count == 1:
            first = now
        last = now
        if count >= n:
            break
    return first - t0, (count - 1) / (last - first), count


def gateway_run(client: httpx.Client, model: str, n: int) -> tuple[float, float, int]:
    """The same through the gateway's /v1/completions SSE stream, as a client sees it."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    # no-store: the same greedy request again would be a response-cache hit, replayed without the model.
    with client.stream("POST", "/completions", json=body, headers={"Cache-Control": "no-store"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                now = time.perf_counter()
                first = first or now
                last = now
    assert first is not None and last is not None
    # Text chunks can be fewer than tokens (a UTF-8 character split over tokens); rate by tokens.
    return first - t0, (tokens - 1) / (last - first), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=None, help="the model's `parallel` (default: the config's)")
    args = ap.parse_args()

    from llama_cpp import Llama

    card = load_cards()[args.model]
    path = resolve_weights(card)
    llm = Llama(model_path=str(path), n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                flash_attn=False, verbose=False)
    prompt_tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    model_cfg = {"card": args.model, "n_ctx": args.n_ctx, "n_threads": args.threads}
    if args.parallel is not None:
        model_cfg["parallel"] = args.parallel
    config = {"models": [model_cfg]}
    direct, through = [], []
    with GatewayProcess(config) as gw, httpx.Client(base_url=gw.base_url, timeout=120) as client:
        direct_run(llm, prompt_tokens, 8)  # warm both sides once
        gateway_run(client, args.model, 8)
        for _ in range(args.reps):
            direct.append(direct_run(llm, prompt_tokens, args.tokens))
            through.append(gateway_run(client, args.model, args.tokens))

    def med(rows: list[tuple[float, float, int]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    d_tps, g_tps = med(direct, 1), med(through, 1)
    d_ttft, g_ttft = med(direct, 0) * 1000, med(through, 0) * 1000
    print(f"model {args.model}, {args.tokens} greedy tokens, {len(prompt_tokens)}-token prompt, "
          f"{args.threads} threads, medians of {args.reps} interleaved runs")
    print(f"{'':10}{'decode tok/s':>14}{'TTFT ms':>10}")
    print(f"{'direct':10}{d_tps:14.1f}{d_ttft:10.1f}")
    print(f"{'gateway':10}{g_tps:14.1f}{g_ttft:10.1f}")
    print(f"ratio gateway/direct tokens/s: {g_tps / d_tps:.3f}   (target >= 0.95)")
    print(f"TTFT added by the gateway: {g_ttft - d_ttft:+.1f} ms   (target <= 5 ms)")
    print("per-run (direct tok/s, gateway tok/s): " +
          ", ".join(f"{d[1]:.1f}/{g[1]:.1f}" for d, g in zip(direct, through)))


if __name__ == "__main__":
    main()
