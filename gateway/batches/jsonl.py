"""A batch input file, checked line by line as OpenAI checks it, so that a bad file fails at upload (and a
file that does not fit its batch at create) with the line that is wrong, before anything runs."""

from __future__ import annotations

from typing import Any

import orjson

from backends.contract.errors import InvalidRequest

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")  # what a line may call


def _bad(line_no: int, message: str, code: str) -> InvalidRequest:
    return InvalidRequest(f"Line {line_no}: {message}", param="file", code=code)


def parse_lines(data: bytes, max_lines: int) -> list[dict[str, Any]]:
    """Every request of a batch file: one JSON object a line, `custom_id` unique, `method` POST, `url` one
    of the endpoints a batch runs, a `body` object. Blank lines are skipped, as OpenAI does."""
    if not data.strip():
        raise InvalidRequest("The file is empty; a batch file has one request per line.", param="file",
                             code="empty_file")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(out) >= max_lines:
            raise _bad(line_no, f"a batch file has at most {max_lines} requests.", "too_many_requests")
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _bad(line_no, "not valid JSON; the file must be JSONL, one JSON object per line.",
                       "invalid_json_line") from None
        if not isinstance(line, dict):
            raise _bad(line_no, "each line must be a JSON object.", "invalid_json_line")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise _bad(line_no, "'custom_id' must be a non-empty string.", "missing_custom_id")
        if custom_id in seen:
            raise _bad(line_no, f"the custom_id {custom_id!r} is used twice; each must be unique.",
                       "duplicate_custom_id")
        seen.add(custom_id)
        if line.get("method") != "POST":
            raise _bad(line_no, "'method' must be \"POST\".", "invalid_method")
        if line.get("url") not in ENDPOINTS:
            raise _bad(line_no, f"'url' must be one of {', '.join(ENDPOINTS)}.", "invalid_url")
        if not isinstance(line.get("body"), dict):
            raise _bad(line_no, "'body' must be a JSON object (the request).", "missing_body")
        if line["body"].get("stream"):
            raise _bad(line_no, "batch requests cannot stream ('stream' must be false or absent).",
                       "invalid_stream")
        out.append({"custom_id": custom_id, "url": line["url"], "body": line["body"], "line": line_no})
    return out


def check_endpoint(lines: list[dict[str, Any]], endpoint: str) -> None:
    """Every line calls the batch's endpoint (checked at create: the file may be older than the batch)."""
    for line in lines:
        if line["url"] != endpoint:
            raise InvalidRequest(f"Line {line['line']}: its url {line['url']} is not the batch's endpoint "
                                 f"{endpoint}; every line of a batch calls the same endpoint.",
                                 param="input_file_id", code="mismatched_endpoint")
