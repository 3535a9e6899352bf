"""Turn the pipeline's chat answer (a JSON response or an SSE stream) into a surface's own, headers kept.

The gateway's headers (request id, deployment, attempts, cache, rate limits) stay as the pipeline set
them; only the body changes, so its length is recomputed.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from starlette.responses import Response, StreamingResponse

from backends.contract.assembler import parse_frame
from backends.contract.responses import split_frames
from routing.outcome import Outcome

ChunkReader = Callable[[bytes], list[dict[str, Any]]]

_BODY_HEADERS = ("content-length", "content-type")


def headers_of(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in _BODY_HEADERS}


async def reshape(response: Response, body: Callable[[dict[str, Any]], Awaitable[Any]],
            stream: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]) -> Response:
    """`body(chat_completion)` for a plain answer; `stream(chat_frames)` for a streamed one."""
    if isinstance(response, StreamingResponse):
        return StreamingResponse(stream(response.body_iterator), media_type="text/event-stream",  # type: ignore[arg-type]
                                 headers=headers_of(response), background=response.background)
    out = await body(orjson.loads(response.body))
    return Response(out if isinstance(out, bytes) else orjson.dumps(out), status_code=response.status_code,
                    media_type="application/json", headers=headers_of(response))


def parse_chunks(chunk: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a piece of an SSE stream ([DONE] and comments left out)."""
    return [parsed for frame in split_frames(chunk) if (parsed := parse_frame(frame)) is not None]


def chunk_reader(outcome: Outcome | None, relayed: bool) -> ChunkReader:
    """How a surface reads each piece of the chat stream it translates: a relayed stream's chunks were
    parsed already by the router's assembler (`Call.keep_chunks`: one parse per frame); a cache replay's
    (`relayed` false: the answer is not the router's stream) are parsed here."""
    if relayed and outcome is not None and outcome.assembler.keep:
        asm = outcome.assembler
        return lambda _chunk: asm.taken()
    return parse_chunks
