"""The Files and Batch APIs' parts, built once per worker: the store, the work queue, the blob store and the
runner. With Redis, state and queue live in Redis; without, in this process, the state kept on local disk
(`state/` in the files directory) so that a restarted gateway resumes its batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.batches.blobs import BlobStore, LocalBlobStore, default_dir
from gateway.batches.disk import DiskBatchStore, StateDirBusy
from gateway.batches.queue import work_queue
from gateway.batches.runner import BatchRunner
from gateway.batches.stores import BatchStore, MemoryBatchStore, RedisBatchStore
from gateway.services import Services
from routing.config import GatewayConfig
from routing.manager import RuntimeManager

log = logging.getLogger("llm_gateway.batches")


@dataclass
class BatchesState:
    store: BatchStore
    blobs: BlobStore
    runner: BatchRunner

    @classmethod
    def build(cls, config: GatewayConfig, services: Services, manager: RuntimeManager) -> BatchesState:
        files_dir = Path(config.batches.files_dir).expanduser() if config.batches.files_dir else default_dir()
        store = batch_store(services, config.redis.prefix, files_dir / "state" if config.batches.enabled else None)
        blobs = LocalBlobStore(files_dir)
        queue = work_queue(services.link.client, config.redis.prefix)
        return cls(store, blobs, BatchRunner(services, manager, store, blobs, config.batches, queue))


def batch_store(services: Services, prefix: str, state_dir: Path | None) -> BatchStore:
    """Redis's; else the state on disk in `state_dir` (None: batches are off, nothing to keep); else, when that
    directory cannot be had, in memory (lost on restart) with a warning, rather than no gateway at all."""
    if services.link.client is not None:
        return RedisBatchStore(services.link.client, prefix)
    if state_dir is None:
        return MemoryBatchStore()
    try:
        return DiskBatchStore(state_dir)
    except StateDirBusy:
        log.warning("batches: %s is in use by another gateway process (serve --workers N without Redis?); this "
                    "one keeps its files and batches in memory, lost on restart. Use Redis for several workers.",
                    state_dir)
    except OSError as exc:
        log.warning("batches: cannot keep batch state in %s (%s); files and batches are kept in memory, lost on "
                    "restart. Set batches.files_dir to a writable directory.", state_dir, exc)
    return MemoryBatchStore()
