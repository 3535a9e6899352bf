"""The splice of a restarted answer onto a broken stream, on parsed chunks and through the router's rewriting."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from backends.contract.assembler import StreamAssembler, parse_frame
from backends.contract.responses import split_frames
from routing.config import DeploymentConfig
from routing.continuation import continuation_ways, refused
from routing.relay import rewritten
from routing.splice import Diverged, Splice

SENT = "Reply to: foxes. The quick"


def piece(text: str | None = None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if text is not None:
        delta["content"] = text
    return {"id": "chatcmpl-new", "object": "chat.completion.chunk", "created": 2, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def relayed(splice: Splice, chunks: list[dict[str, Any]]) -> str:
    """The text the client would get from `chunks`, through `splice`."""
    out = []
    for c in chunks:
        kept = splice.take(c)
        if kept is not None:
            out.append(kept["choices"][0]["delta"].get("content") or "" if kept.get("choices") else "")
    return "".join(out)


def test_a_prefix_split_across_frames_is_swallowed_and_the_rest_relayed() -> None:
    s = Splice(SENT)
    chunks = [piece(role=True), piece("Reply"), piece(" to:"), piece(" foxes."), piece(" The"), piece(" quick brown"),
              piece(" fox."), piece(finish="stop")]
    assert relayed(s, chunks) == " brown fox."
    assert s.covered and s.swallowed == 4  # "Reply", " to:", " foxes.", " The" (" quick brown" was cut, relayed)
    s.end()


def test_the_text_sent_ending_exactly_at_a_frame_boundary() -> None:
    s = Splice("Reply to:")
    assert s.take(piece("Reply")) is None
    assert s.take(piece(" to:")) is None
    assert s.covered
    nxt = piece(" foxes.")
    assert s.take(nxt) is nxt, "once covered, chunks pass as they are"
    fin = piece(finish="stop")
    assert s.take(fin) is fin
    s.end()


def test_covering_and_finishing_in_one_chunk_keeps_the_finish() -> None:
    s = Splice("Reply to:")
    assert s.take(piece("Reply")) is None
    kept = s.take(piece(" to:", finish="stop"))
    assert kept is not None and kept["choices"][0]["finish_reason"] == "stop" and kept["choices"][0]["delta"] == {}


@pytest.mark.parametrize("chunks", [
    [piece("Reply"), piece(" to: cats")],  # a different character
    [piece("Answer")],  # from the start
    [piece("Reply to: foxes. The quack")],  # inside one long piece
], ids=["later", "first", "inside"])
def test_a_different_character_diverges(chunks: list[dict[str, Any]]) -> None:
    s = Splice(SENT)
    with pytest.raises(Diverged, match="differs"):
        relayed(s, chunks)


def test_finishing_before_covering_the_text_sent_diverges() -> None:
    s = Splice(SENT)
    assert s.take(piece("Reply to:")) is None
    with pytest.raises(Diverged, match="finished after 9 of"):
        s.take(piece(finish="length"))
    short = Splice(SENT)
    short.take(piece("Reply"))
    with pytest.raises(Diverged, match="ended after 5 of"):
        short.end()  # [DONE] or the close, without a finish


def test_a_tool_call_where_the_client_has_text_diverges() -> None:
    s = Splice(SENT)
    call = piece()
    call["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}
    with pytest.raises(Diverged, match="tool call"):
        s.take(call)


def test_role_usage_and_empty_chunks_before_covering_are_swallowed() -> None:
    s = Splice(SENT)
    assert s.take(piece(role=True)) is None
    assert s.take({"id": "x", "choices": [], "usage": {"prompt_tokens": 1}}) is None
    assert s.take({"id": "x", "choices": []}) is None
    reasoning = piece()
    reasoning["choices"][0]["delta"] = {"reasoning_content": "hm"}
    assert s.take(reasoning) is None, "the first leg had its reasoning sent already"
    assert s.swallowed == 0 and not s.covered


def frames(*chunks: dict[str, Any] | bytes) -> bytes:
    return b"".join(c if isinstance(c, bytes) else b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)


def first_leg(text: str) -> StreamAssembler:
    asm = StreamAssembler()
    head = {"id": "chatcmpl-orig", "created": 1}
    for f in split_frames(frames(piece(role=True) | head, piece(text) | head)):
        asm.feed(f)
    return asm


def test_through_the_rewriting_one_id_no_role_keep_alives_kept_and_done_checked() -> None:
    asm = first_leg("Reply to:")
    s = Splice(asm.text)
    got = rewritten(frames(piece(role=True), b": keep-alive\n\n", piece("Reply to: fo"), piece("xes.")), asm, (), s)
    parsed = [parse_frame(f) for f in split_frames(got)]
    assert parsed[0] is None, "the keep-alive passes"
    assert [p["choices"][0]["delta"] for p in parsed[1:]] == [{"content": " fo"}, {"content": "xes."}]
    assert {p["id"] for p in parsed[1:]} == {"chatcmpl-orig"}
    assert asm.text == "Reply to: foxes."
    got = rewritten(frames(piece(finish="stop"), b"data: [DONE]\n\n"), asm, (), s)
    assert got.endswith(b"data: [DONE]\n\n") and asm.complete


def test_through_the_rewriting_done_before_covering_raises_and_relays_nothing() -> None:
    asm = first_leg("Reply to: foxes.")
    with pytest.raises(Diverged):
        rewritten(frames(piece("Reply"), piece(finish="stop"), b"data: [DONE]\n\n"), asm, (), Splice(asm.text))
    assert asm.text == "Reply to: foxes." and not asm.finished and not asm.done


class _Backend:
    def __init__(self, prefill: bool) -> None:
        self.supports_continuation = prefill


class _Dep:
    def __init__(self, mode: str, prefill: bool) -> None:
        self.config = DeploymentConfig(name="d", provider="p", model="m", continuation=mode)
        self.backend = _Backend(prefill)


@pytest.mark.parametrize("mode, prefill, ways", [
    ("auto", True, ["prefill", "restart"]), ("auto", False, ["restart"]), ("prefill", True, ["prefill"]),
    ("prefill", False, []), ("restart", True, ["restart"]), ("none", True, []), ("none", False, []),
    ("instruction", True, ["instruction", "restart"]), ("instruction", False, ["instruction", "restart"]),
])
def test_the_ways_a_deployment_continues(mode: str, prefill: bool, ways: list[str]) -> None:
    assert continuation_ways(_Dep(mode, prefill)) == ways  # type: ignore[arg-type]


def test_only_a_client_error_is_a_refusal() -> None:
    from backends.contract.errors import UpstreamError
    assert refused(UpstreamError("no prefill", status_code=400))
    assert refused(UpstreamError("unprocessable", status_code=422))
    assert not refused(UpstreamError("busy", status_code=429))
    assert not refused(UpstreamError("down", status_code=503))
    with pytest.raises(ValueError):
        DeploymentConfig(name="d", provider="p", model="m", continuation="sometimes")


def test_through_the_rewriting_done_without_a_finish_before_covering_raises() -> None:
    asm = first_leg("Reply to: foxes.")
    with pytest.raises(Diverged, match="ended after 5 of"):
        rewritten(frames(piece("Reply"), b"data: [DONE]\n\n"), asm, (), Splice(asm.text))
    assert not asm.done, "the [DONE] is not relayed: the relay ends the stream with its error first"
