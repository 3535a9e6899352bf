"""Turn a stream of token pieces into text that never shows a stop string.

Kept apart from the engine so it can be tested without a model: bytes are
decoded incrementally (a multi-byte character may span tokens), and text that
could be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import codecs


class StopTextStream:
    def __init__(self, stops: list[str] | None) -> None:
        self._stops = [s for s in (stops or []) if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(piece)
        if not self._stops:
            return self._take(len(self._text))
        start = max(0, self._emitted - self._longest)
        hit = -1
        for stop in self._stops:
            pos = self._text.find(stop, start)
            if pos != -1 and (hit == -1 or pos < hit):
                hit = pos
        if hit != -1:
            self.stopped = True
            return self._take(hit)
        return self._take(len(self._text) - self._held_back())

    def flush(self) -> str:
        """End of generation: whatever is held back is real output after all."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(b"", final=True)
        return self._take(len(self._text))

    @property
    def decoded(self) -> int:
        """Characters decoded so far, emitted or held back (where the next token's text begins)."""
        return len(self._text)

    @property
    def emitted(self) -> int:
        """Characters let out so far."""
        return self._emitted

    @property
    def text(self) -> str:
        return self._text[: self._emitted]

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        tail = self._text[-self._longest:] if self._longest else ""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(tail)), best, -1):
                if tail.endswith(stop[:k]):
                    best = k
                    break
        return best

    def _take(self, upto: int) -> str:
        upto = max(upto, self._emitted)
        out = self._text[self._emitted:upto]
        self._emitted = upto
        return out
