"""Serialisation cost of one chat request, REST (JSON) against gRPC (protobuf), measured in-process with timeit.

Part of bench/grpc_vs_rest.py (it imports this module); runnable alone for the microbenchmark only:

    python bench/grpc_vs_rest_codec.py [--repeats 5]

Why separately: the load test says what a whole request costs through the gateway; this says how much of
that the encoding itself can be, with the same payloads. The costs timed, in µs per call:

- JSON: encode + decode of the request and of the response, with orjson (what the gateway and the lean
  client use) and the stdlib json (for reference); pydantic validation (`validate_request`, which both the
  HTTP route and the gRPC servicer run on every request).
- protobuf: SerializeToString + FromString of the request and of the response, and the gateway's conversion
  between protobuf and the OpenAI dict (the pipeline inside the gateway speaks JSON dicts): json_format's
  MessageToDict and ParseDict, and the gateway's own converters (gateway/grpc_api/convert.py: request_of,
  and chat_chunk, which builds a stream chunk directly).
- Streams: the same per chunk, for one chunk of the fake upstream's stream, and times the chunk count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

Row = tuple[str, float]  # (what, µs per call)


@dataclass(frozen=True)
class Budget:
    """How long to time each operation: `repeats` timeit runs of at least `min_s` seconds each."""
    repeats: int = 5
    min_s: float = 0.2


def per_call_us(fn: Callable[[], Any], budget: Budget) -> float:
    """Median over the budget's timeit runs, in µs per call (the loop count calibrated as timeit's autorange
    does, to the budget's `min_s`)."""
    timer = timeit.Timer(fn)
    for i in itertools.count():  # 1, 2, 5, 10, 20, 50, ... calls, as timeit's autorange counts
        number = (1, 2, 5)[i % 3] * 10 ** (i // 3)
        if number >= 10**8 or timer.timeit(number) >= budget.min_s:
            break
    return statistics.median(t / number for t in timer.repeat(repeat=budget.repeats, number=number)) * 1e6


def json_rows(req: dict[str, Any], resp_raw: bytes, budget: Budget) -> list[Row]:
    """JSON encode/decode of request and response with orjson and stdlib json."""
    resp = orjson.loads(resp_raw)
    req_raw = orjson.dumps(req)
    req_text, resp_text = req_raw.decode(), resp_raw.decode()
    return [
        ("orjson request encode (dumps)", per_call_us(lambda: orjson.dumps(req), budget)),
        ("orjson request decode (loads)", per_call_us(lambda: orjson.loads(req_raw), budget)),
        ("orjson response encode (dumps)", per_call_us(lambda: orjson.dumps(resp), budget)),
        ("orjson response decode (loads)", per_call_us(lambda: orjson.loads(resp_raw), budget)),
        ("json request encode (dumps)", per_call_us(lambda: json.dumps(req), budget)),
        ("json request decode (loads)", per_call_us(lambda: json.loads(req_text), budget)),
        ("json response encode (dumps)", per_call_us(lambda: json.dumps(resp), budget)),
        ("json response decode (loads)", per_call_us(lambda: json.loads(resp_text), budget)),
    ]


def pydantic_rows(req: dict[str, Any], budget: Budget) -> list[Row]:
    from backends.contract.protocol import ChatCompletionRequest, parse_request, validate_request

    raw = orjson.dumps(req)
    return [
        ("pydantic validate_request (ChatCompletionRequest)",
         per_call_us(lambda: validate_request(dict(req), ChatCompletionRequest), budget)),
        ("parse_request: orjson loads + depth check + validate (the HTTP route)",
         per_call_us(lambda: parse_request(raw, ChatCompletionRequest), budget)),
    ]


def proto_rows(pb2: Any, req: dict[str, Any], resp_raw: bytes, budget: Budget) -> list[Row]:
    """protobuf wire encode/decode, and the json_format conversion the servicer does around the pipeline."""
    from google.protobuf import json_format

    resp = orjson.loads(resp_raw)
    grpc_req = {k: v for k, v in req.items() if k != "stream"}
    msg = json_format.ParseDict(grpc_req, pb2.ChatCompletionRequest())
    reply = json_format.ParseDict(resp, pb2.ChatCompletion(), ignore_unknown_fields=True)
    msg_raw, reply_raw = msg.SerializeToString(), reply.SerializeToString()
    rows = [
        ("protobuf request SerializeToString", per_call_us(msg.SerializeToString, budget)),
        ("protobuf request FromString", per_call_us(lambda: pb2.ChatCompletionRequest.FromString(msg_raw), budget)),
        ("protobuf response SerializeToString", per_call_us(reply.SerializeToString, budget)),
        ("protobuf response FromString", per_call_us(lambda: pb2.ChatCompletion.FromString(reply_raw), budget)),
        ("json_format.MessageToDict(request)",
         per_call_us(lambda: json_format.MessageToDict(msg, preserving_proto_field_name=True), budget)),
        ("json_format.ParseDict(response dict)",
         per_call_us(lambda: json_format.ParseDict(resp, pb2.ChatCompletion(), ignore_unknown_fields=True), budget)),
        ("orjson.loads of the pipeline's response body (the servicer's first step)",
         per_call_us(lambda: orjson.loads(resp_raw), budget)),
    ]
    from backends.contract.protocol import ChatCompletionRequest
    from gateway.grpc_api import convert

    rows.append(("gateway convert.request_of(request): MessageToDict, integers mended, validate",
                 per_call_us(lambda: convert.request_of(msg, ChatCompletionRequest, False), budget)))
    from gateway.grpc_api.stubs import load as load_stubs

    pb = load_stubs().pb
    rows.append(("gateway convert.chat_completion(response dict): the answer built directly",
                 per_call_us(lambda: convert.chat_completion(resp, pb), budget)))
    return rows


def chunk_rows(pb2: Any, chunk_raw: bytes, budget: Budget) -> list[Row]:
    """One SSE chunk: what the REST path and the gRPC path each do with it, per chunk."""
    from google.protobuf import json_format

    from gateway.grpc_api import convert
    from gateway.grpc_api.stubs import load as load_stubs

    pb = load_stubs().pb
    chunk = orjson.loads(chunk_raw)
    msg = json_format.ParseDict(chunk, pb2.ChatCompletionChunk(), ignore_unknown_fields=True)
    msg_raw = msg.SerializeToString()
    return [
        ("chunk orjson loads", per_call_us(lambda: orjson.loads(chunk_raw), budget)),
        ("chunk orjson dumps", per_call_us(lambda: orjson.dumps(chunk), budget)),
        ("chunk json_format.ParseDict", per_call_us(
            lambda: json_format.ParseDict(chunk, pb2.ChatCompletionChunk(), ignore_unknown_fields=True), budget)),
        ("chunk gateway convert.chat_chunk (the servicer's builder)", per_call_us(
            lambda: convert.chat_chunk(chunk, pb), budget)),
        ("chunk protobuf SerializeToString", per_call_us(msg.SerializeToString, budget)),
        ("chunk protobuf FromString", per_call_us(lambda: pb2.ChatCompletionChunk.FromString(msg_raw), budget)),
    ]


def measure(pb2: Any, requests: dict[str, dict[str, Any]], resp_raw: bytes, chunk_raw: bytes,
            budget: Budget) -> dict[str, Any]:
    """{"per_size": {size: {what: µs}}, "chunk": {what: µs}}."""
    per_size = {}
    for size, req in requests.items():
        rows = json_rows(req, resp_raw, budget) + pydantic_rows(req, budget) + proto_rows(pb2, req, resp_raw, budget)
        per_size[size] = dict(rows)
    return {"per_size": per_size, "chunk": dict(chunk_rows(pb2, chunk_raw, budget))}


def totals(us: dict[str, float]) -> dict[str, float]:
    """Per request: the codec alone (request and response each encoded once and decoded once), and what the
    gateway's own process does for each API (the HTTP route forwards the upstream's bytes unchanged; both
    validate with pydantic and parse the upstream's body once for usage, which is left out as common)."""
    s = us.get
    return {
        "json_orjson": s("orjson request encode (dumps)") + s("orjson request decode (loads)")
        + s("orjson response encode (dumps)") + s("orjson response decode (loads)"),
        "json_stdlib": s("json request encode (dumps)") + s("json request decode (loads)")
        + s("json response encode (dumps)") + s("json response decode (loads)"),
        "protobuf": s("protobuf request SerializeToString") + s("protobuf request FromString")
        + s("protobuf response SerializeToString") + s("protobuf response FromString"),
        "protobuf_dict": s("json_format.MessageToDict(request)") + s("json_format.ParseDict(response dict)"),
        "pydantic": s("pydantic validate_request (ChatCompletionRequest)"),
        "gateway_rest": s("orjson request decode (loads)") + s("pydantic validate_request (ChatCompletionRequest)"),
        "gateway_grpc": s("protobuf request FromString")
        + s("gateway convert.request_of(request): MessageToDict, integers mended, validate")
        + s("orjson.loads of the pipeline's response body (the servicer's first step)")
        + s("gateway convert.chat_completion(response dict): the answer built directly")
        + s("protobuf response SerializeToString"),
        "gateway_convert": s("gateway convert.request_of(request): MessageToDict, integers mended, validate")
        - s("pydantic validate_request (ChatCompletionRequest)")
        + s("gateway convert.chat_completion(response dict): the answer built directly"),
    }


def demo_inputs() -> tuple[Any, dict[str, dict[str, Any]], bytes, bytes]:
    """The benchmark's payloads and the fake upstream's bodies (from the shared harness when present)."""
    from bench.grpc_vs_rest import fake_bodies, request_dicts
    from gateway.grpc_api.codegen import load

    pb2, _ = load()
    resp_raw, chunk_raw = fake_bodies()
    return pb2, request_dicts("unary", 16384), resp_raw, chunk_raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pb2, reqs, resp_raw, chunk_raw = demo_inputs()
    result = measure(pb2, reqs, resp_raw, chunk_raw, Budget(args.repeats))
    for size, us in result["per_size"].items():
        for what, v in us.items():
            print(f"{size:>6}  {v:9.2f} µs  {what}")
        print(f"{size:>6}  totals: " + ", ".join(f"{k} {v:.1f} µs" for k, v in totals(us).items()))
    for what, v in result["chunk"].items():
        print(f" chunk  {v:9.2f} µs  {what}")


if __name__ == "__main__":
    main()
