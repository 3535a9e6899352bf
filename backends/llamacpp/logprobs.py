"""Token logprobs for local models: computed in the engine, shaped into OpenAI's two formats here.

In the engine, only for a job that asks (`Job.logprobs` is the number of alternatives, None for none):
each sampled token's logprob and the top N alternatives come from the log-softmax of that step's raw
logits (before penalties, temperature or grammar, as OpenAI and vLLM report them). An entry crosses
the process boundary with the TEXT event that carries its token's text, as
`[token_bytes, logprob, [[bytes, logprob], ...]]`.

TEXT events may merge tokens, or hold text back while it could still be a stop string
(`text_stream`), so `Pending` releases an entry only once its token's text has been emitted: the
entries of a choice then line up with its text. When a stop string cuts the text, the tokens that
only formed the stop string get no entry (a token straddling the cut keeps its).
"""

from __future__ import annotations

from typing import Any, Callable

from backends.llamacpp.text_stream import StopTextStream

Entry = list[Any]  # [token bytes, logprob, [[bytes, logprob], ...]]


def entry(logits: Any, n_vocab: int, token: int, top: int, piece: bytes,
          piece_of: Callable[[int], bytes]) -> Entry:
    """One token's entry from a logits row (a ctypes float pointer): log-softmax, then the top `top`."""
    import numpy as np

    x = np.ctypeslib.as_array(logits, shape=(n_vocab,))
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m, dtype=np.float64).sum()))
    alts: list[list[Any]] = []
    if top:
        idx = np.argpartition(x, -top)[-top:]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        alts = [[piece_of(int(t)), float(x[t]) - lse] for t in idx]
    return [piece, float(x[token]) - lse, alts]


class Pending:
    """One choice's entries whose text the stop-string stream has not let out yet."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[tuple[int, int, Entry]] = []  # (start, end) of the token's text, entry

    def add(self, start: int, end: int, e: Entry) -> None:
        self._held.append((start, end, e))

    def take(self, stream: StopTextStream, final: bool = False) -> list[Entry]:
        """Entries whose text is out; at the end, every entry (or, after a stop, those it reached)."""
        emitted = stream.emitted
        if final:
            out = [e for s, _, e in self._held if not stream.stopped or s < emitted]
            self._held = []
            return out
        k = 0
        while k < len(self._held) and self._held[k][1] <= emitted:
            k += 1
        out = [e for _, _, e in self._held[:k]]
        del self._held[:k]
        return out


# -- OpenAI shapes (gateway side) ---------------------------------------------------------------------


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def chat_content(entries: list[Entry]) -> list[dict[str, Any]]:
    """Entries -> chat `logprobs.content` items."""
    return [{"token": _text(b), "logprob": lp, "bytes": list(b),
             "top_logprobs": [{"token": _text(ab), "logprob": alp, "bytes": list(ab)} for ab, alp in alts]}
            for b, lp, alts in entries]


def chat_logprobs(entries: list[Entry]) -> dict[str, Any]:
    return {"content": chat_content(entries), "refusal": None}


def completion_logprobs(entries: list[Entry], offset: int) -> tuple[dict[str, Any], int]:
    """Entries -> legacy completions' logprobs, with text offsets from `offset`; and the next offset."""
    tokens, offsets = [], []
    for b, _, _ in entries:
        tokens.append(_text(b))
        offsets.append(offset)
        offset += len(tokens[-1])
    body = {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{_text(ab): alp for ab, alp in alts} for _, _, alts in entries],
            "text_offset": offsets}
    return body, offset
