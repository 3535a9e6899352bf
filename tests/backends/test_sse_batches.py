"""Frames that arrive in one read travel together; every consumer still sees each frame."""

from __future__ import annotations

from typing import AsyncIterator

import orjson
import pytest

from backends.contract import responses as fmt
from backends.contract.assembler import StreamAssembler
from backends.http import sse_batches
from routing.relay import rewritten


class _Reads:
    """What aiohttp's StreamReader.iter_any() yields: arbitrary slices of the body."""

    def __init__(self, *reads: bytes) -> None:
        self.reads = reads

    async def iter_any(self) -> AsyncIterator[bytes]:
        for r in self.reads:
            yield r


def _frame(content: str, finish: str | None = None) -> bytes:
    return fmt.sse({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]})


async def _collect(*reads: bytes) -> list[list[bytes]]:
    return [batch async for batch in sse_batches(_Reads(*reads))]  # type: ignore[arg-type]


async def test_one_read_is_one_batch_and_split_events_wait_for_their_end() -> None:
    a, b, c = _frame("a"), _frame("b"), _frame("c")
    batches = await _collect(a + b + c[:10], c[10:] + b": ping\r\n\r\n" + fmt.DONE)
    assert batches == [[a, b], [c, b": ping\n\n", fmt.DONE]]


async def test_a_body_without_a_final_terminator_still_yields_its_last_event() -> None:
    assert await _collect(b"data: [DONE]\n") == [[b"data: [DONE]\n\n"]]


async def test_a_crlf_terminator_split_across_two_reads_still_ends_its_event() -> None:
    a, b = _frame("a"), _frame("b")
    crlf = [f.replace(b"\n", b"\r\n") for f in (a, b)]
    for cut in range(1, len(crlf[0]) + len(crlf[1])):  # every place the network could split the body
        body = crlf[0] + crlf[1]
        events = [e for batch in await _collect(body[:cut], body[cut:]) for e in batch]
        assert events == [a, b], cut


async def test_bare_cr_line_endings_split_events() -> None:
    a, b = _frame("a"), _frame("b")
    cr = a.replace(b"\n", b"\r") + b": ping\r\r" + b.replace(b"\n", b"\r")
    assert [e for batch in await _collect(cr) for e in batch] == [a, b": ping\n\n", b]
    assert [e for batch in await _collect(cr[:-1], cr[-1:]) for e in batch] == [a, b": ping\n\n", b]
    assert await _collect(b"data: [DONE]\r") == [[b"data: [DONE]\n\n"]]  # a held CR at the very end


def test_split_frames_is_the_inverse_of_joining() -> None:
    frames = [_frame("x"), _frame("y", "stop"), fmt.DONE]
    assert fmt.split_frames(b"".join(frames)) == frames


@pytest.mark.parametrize("continuation", [False, True])
def test_the_assembler_sees_every_frame_of_a_multi_frame_chunk(continuation: bool) -> None:
    asm = StreamAssembler()
    role = fmt.sse({"id": "c2", "object": "chat.completion.chunk", "created": 2, "model": "m2",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    chunk = role + _frame("Hel") + _frame("lo", "stop")
    if continuation:  # the original stream's head is known; the continuation's frames take it over
        asm.feed(_frame(""))
        out = rewritten(chunk, asm)
    else:  # what the router does with an original stream's chunk: every frame fed, the chunk relayed as is
        for frame in fmt.split_frames(chunk):
            asm.feed(frame)
        out = chunk
    assert asm.text == "Hello" and asm.finished and asm.content_frames == 2
    frames = fmt.split_frames(out)
    ids = {orjson.loads(f[6:])["id"] for f in frames}
    if continuation:
        assert len(frames) == 2 and ids == {"c1"}  # the continuation's role chunk is dropped
    else:
        assert len(frames) == 3 and out.startswith(role)
