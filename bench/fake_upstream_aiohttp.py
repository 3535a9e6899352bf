"""A fallback for the shared harness's nginx fake upstream, for machines without nginx: the same bodies
(imported from the harness's make_upstream_conf.py) served by aiohttp. It is much slower than nginx
(one Python process, on the load core), so a run that uses it says so in its report; prefer nginx
(`apt-get install -y nginx`, as ../shared/bench/run_gateway_bench.sh does).

    python bench/fake_upstream_aiohttp.py PORT HARNESS_DIR
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from aiohttp import web


def harness_module(harness: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_upstream_conf", harness / "make_upstream_conf.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no make_upstream_conf.py in {harness}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def app(harness: Path) -> web.Application:
    conf = harness_module(harness)
    body_json = json.dumps(conf.chat_completion(), separators=(",", ":")).encode()
    body_sse = conf.sse_stream().encode()
    body_models = json.dumps(conf.models(), separators=(",", ":")).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body_json, content_type="application/json")

    async def stream(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body_sse, headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                    "Cache-Control": "no-cache"})

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=body_models, content_type="application/json")

    a = web.Application(client_max_size=8 * 1024 * 1024)
    a.router.add_post("/v1/chat/completions", chat)
    a.router.add_post("/stream/v1/chat/completions", stream)
    a.router.add_get("/v1/models", models)
    a.router.add_get("/stream/v1/models", models)
    return a


if __name__ == "__main__":
    web.run_app(app(Path(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
