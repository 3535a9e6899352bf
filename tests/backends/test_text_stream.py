"""Stop strings never reach the client, however the tokens split them."""

from __future__ import annotations

import pytest

from backends.llamacpp.text_stream import StopTextStream


def run(pieces: list[bytes], stops: list[str] | None) -> tuple[str, bool]:
    s = StopTextStream(stops)
    out = "".join(s.feed(p) for p in pieces)
    if not s.stopped:
        out += s.flush()
    return out, s.stopped


def test_no_stops_passes_everything() -> None:
    assert run([b"Hel", b"lo"], None) == ("Hello", False)


def test_stop_inside_one_piece() -> None:
    assert run([b"abc. def"], ["."]) == ("abc", True)


def test_stop_split_across_pieces_is_held_back() -> None:
    s = StopTextStream(["END"])
    assert s.feed(b"hello E") == "hello "
    assert s.feed(b"N") == ""
    assert s.feed(b"D and more") == ""
    assert s.stopped and s.text == "hello "


def test_false_alarm_is_released() -> None:
    s = StopTextStream(["END"])
    assert s.feed(b"E") == ""
    assert s.feed(b"NX") == "ENX"
    assert s.flush() == ""


def test_held_back_prefix_flushed_at_end() -> None:
    assert run([b"the EN"], ["END"]) == ("the EN", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run([b"a;b.c"], [".", ";"]) == ("a", True)


@pytest.mark.parametrize("split", range(1, 4))
def test_multibyte_characters_split_across_tokens(split: int) -> None:
    data = "héllo 世界".encode()
    pieces = [data[:split], data[split:]]
    assert run(pieces, ["界"]) == ("héllo 世", True)
    assert run(pieces, None) == ("héllo 世界", False)
