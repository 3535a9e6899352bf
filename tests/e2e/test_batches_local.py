"""A batch on the local Gemma model, with the official `openai` SDK: 200 lines, each answered once, and live
requests served first (no batch line starts while one is in flight)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import MODEL
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

LINES = 200


def test_a_200_line_batch_on_the_local_model(client: openai.OpenAI, conforms) -> None:
    data = b"".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": MODEL, "max_tokens": 2, "temperature": 0,
                                         "messages": [{"role": "user", "content": f"Count to {i}."}]}}).encode()
                    + b"\n" for i in range(LINES))
    upload = client.files.create(file=("local.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5, timeout=60,
               what="the batch under way")
    # A live request in flight (a stream, read to its first chunk and held open): lines already running may
    # finish, but no new line starts until it ends.
    concurrency = 2  # batches.concurrency's default
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell a long story."}], max_tokens=48, temperature=0,
        stream=True, extra_body={"ignore_eos": True}, extra_headers={"Cache-Control": "no-cache"})
    chunks = iter(stream)
    next(chunks)
    at_start = client.batches.retrieve(batch.id).request_counts.completed
    for _ in range(40):
        next(chunks)
    at_end = client.batches.retrieve(batch.id).request_counts.completed
    for _ in chunks:
        pass
    assert at_end - at_start <= concurrency, (at_start, at_end, "lines started while a live request was in flight")
    done = wait_until(lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, timeout=180,
                      what="the batch to complete")
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
    lines = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"q{i}" for i in range(LINES)]
    for line in lines[:20]:
        conforms("CreateChatCompletionResponse", line["response"]["body"])
        assert line["response"]["body"]["usage"]["completion_tokens"] <= 2
