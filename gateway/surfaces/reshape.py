"""Turn the pipeline's chat answer (a JSON response or an SSE stream) into a surface's own, headers kept.

The gateway's headers (request id, deployment, attempts, cache, rate limits) stay as the pipeline set
them; only the body changes, so its length is recomputed.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from starlette.responses import Response, StreamingResponse

_BODY_HEADERS = ("content-length", "content-type")


def headers_of(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in _BODY_HEADERS}


async def reshape(response: Response, body: Callable[[dict[str, Any]], Awaitable[Any]],
            stream: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]) -> Response:
    """`body(chat_completion)` for a plain answer; `stream(chat_frames)` for a streamed one."""
    if isinstance(response, StreamingResponse):
        return StreamingResponse(stream(response.body_iterator), media_type="text/event-stream",  # type: ignore[arg-type]
                                 headers=headers_of(response))
    out = await body(orjson.loads(response.body))
    return Response(out if isinstance(out, bytes) else orjson.dumps(out), status_code=response.status_code,
                    media_type="application/json", headers=headers_of(response))
