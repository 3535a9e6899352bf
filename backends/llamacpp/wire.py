"""Every message between the gateway and its engine processes, in one place.

Two channels, both Unix stream sockets in a private (0700) run directory,
both a plain stream of msgpack arrays (msgpack frames itself: no length
prefix, one C-level parse per message). The first element of each array is
its opcode.

**Engine channel**: an HTTP worker (`client.EngineClient`) and one engine
process (`host`). Any number of workers may connect to one engine; job ids
are the worker's own, scoped to its connection.

| op | direction | fields | meaning |
|---|---|---|---|
| `HELLO` | engine → worker | info | sent once on connect: pid, n_ctx, n_vocab, safe_mode, system info |
| `SUBMIT` | worker → engine | job_id, spec | a job (`spec`: see `job_spec`) |
| `CANCEL` | worker → engine | job_id | stop the job within one token; it ends with `END` |
| `TEXT` | engine → worker | job_id, choice, text, logprobs | a piece of a choice's text; its tokens' logprob entries when asked for (else nil) |
| `DONE` | engine → worker | job_id, choice, finish_reason, tokens | a choice finished |
| `END` | engine → worker | job_id | the job is over (after every `DONE`, or after a cancel) |
| `ERROR` | engine → worker | job_id, message | the job failed; the engine serves on |
| `FULL` | engine → worker | job_id, retry_after_s | the engine's queue is full: the job was not taken |
| `STATS` | engine → worker | stats | counters, pushed at most every 0.1 s while they change |
| `VECTORS` | engine → worker | job_id, vectors | an embedding job's vectors, one per input (then `END`) |

An embedding engine (settings `kind: embed`) takes jobs whose spec is
`embed_spec` and answers each with `VECTORS` and `END` (or `ERROR`, `FULL`).

A closed connection means the other side is gone: the engine cancels that
worker's jobs; the worker fails them at once (the engine died) and waits for
the supervisor to say the engine is back.

**Control channel** (only with `--workers N`): each worker and the process
that supervises the engines (`control.ControlServer`).

| op | direction | fields | meaning |
|---|---|---|---|
| `ENSURE` | worker → supervisor | key, name, settings, instances | run these engines (started once, shared) |
| `RELEASE` | worker → supervisor | key | this worker no longer needs them |
| `INSTANCES` | supervisor → worker | key, [instance status] | the engines' state, pushed on every change |

Every worker holds the same view of every engine, so `/ready` answers the
same whichever worker serves it.

**Start-up** (engine process → supervisor, on its stdout): one JSON line per
phase, `{"event": "loading", "pid": N}`, then `{"event": "ready", "info":
{...}}` once the model is loaded and warm and the socket listens, or
`{"event": "failed", "error": "..."}` followed by exit code `LOAD_FAILED`.
"""

from __future__ import annotations

from typing import Any, Iterator

import msgpack

LOAD_FAILED = 3  # the engine process's exit code when its model cannot be loaded (no restart helps)

# engine channel
HELLO = 1
SUBMIT = 2
CANCEL = 3
TEXT = 4
DONE = 5
END = 6
ERROR = 7
FULL = 8
STATS = 9
VECTORS = 10
# control channel
ENSURE = 20
RELEASE = 21
INSTANCES = 22

def pack(*fields: Any) -> bytes:
    """One message, from any thread (the engine thread packs its events itself)."""
    return msgpack.packb(fields)


class Reader:
    """Turns the bytes of a stream into messages; feed it whatever one read returned."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(use_list=True, raw=False, max_buffer_size=64 * 1024 * 1024)

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        self._unpacker.feed(data)
        return iter(self._unpacker)


def job_spec(*, prompt: list[int], max_tokens: int, sampling: dict[str, Any], stop: list[str], n: int,
             grammar: str | None, ignore_eos: bool, logprobs: int | None = None, priority: int = 0
             ) -> dict[str, Any]:
    """`SUBMIT`'s spec: prompt token ids, the sampling values (`jobs.Sampling` fields), stop strings,
    choices, a GBNF grammar (text) or None, whether to run past end-of-generation tokens, how many
    alternatives each token's logprob entry lists (None: no logprobs), and the request's class
    (`backends.contract.priority.Priority`: 0 interactive, 1 near real time, 2 batch; see `schedule`)."""
    return {"prompt": prompt, "max_tokens": max_tokens, "sampling": sampling, "stop": stop, "n": n,
            "grammar": grammar, "ignore_eos": ignore_eos, "logprobs": logprobs, "priority": priority}


def embed_spec(*, inputs: list[list[int]], normalize: bool) -> dict[str, Any]:
    """`SUBMIT`'s spec for an embedding engine: the inputs' token ids (checked by the gateway: in the
    vocabulary, none longer than the engine's n_ctx), and whether to scale the vectors to unit length."""
    return {"inputs": inputs, "normalize": normalize}
