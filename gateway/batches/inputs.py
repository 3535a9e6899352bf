"""Each batch's input lines, read and parsed once per replica: the work queue names a line by its index,
and every replica that runs lines of a batch (or coordinates it) looks the bodies up here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from gateway.batches.blobs import BlobStore
from gateway.batches.jsonl import parse_lines

Lines = list[dict[str, Any]]
_NO_LIMIT = 10 ** 9  # the file passed batches.max_lines at create; a lower limit since must not break it


class Inputs:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._parsed: dict[str, asyncio.Task[Lines | None]] = {}

    async def get(self, batch: dict[str, Any]) -> Lines | None:
        """The batch's lines in the input's order, or None when its input file is gone."""
        task = self._parsed.get(batch["id"])
        if task is None:  # one read and parse, however many ask at once
            task = self._parsed[batch["id"]] = asyncio.ensure_future(self._load(batch["input_file_id"]))
        try:
            lines = await asyncio.shield(task)
        except BaseException:
            if task.done():
                self._parsed.pop(batch["id"], None)
            raise
        if lines is None:
            self._parsed.pop(batch["id"], None)
        return lines

    async def _load(self, file_id: str) -> Lines | None:
        data = await self.blobs.get(file_id)
        if data is None:
            return None
        if len(data) > 1_000_000:  # parsing a large file takes a while: never on the event loop
            return await asyncio.to_thread(parse_lines, data, _NO_LIMIT)
        return parse_lines(data, _NO_LIMIT)

    def keep_only(self, batch_ids: Iterable[str]) -> None:
        """Forget the lines of batches that are over."""
        keep = set(batch_ids)
        for batch_id in [b for b in self._parsed if b not in keep]:
            self._parsed.pop(batch_id)  # a reader still waiting on it gets its lines all the same
