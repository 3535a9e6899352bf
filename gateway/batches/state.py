"""The Files and Batch APIs' parts, built once per worker: the store, the blob store and the runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.batches.blobs import BlobStore, LocalBlobStore, default_dir
from gateway.batches.runner import BatchRunner
from gateway.batches.stores import BatchStore, batch_store
from gateway.services import Services
from routing.config import GatewayConfig
from routing.manager import RuntimeManager


@dataclass
class BatchesState:
    store: BatchStore
    blobs: BlobStore
    runner: BatchRunner

    @classmethod
    def build(cls, config: GatewayConfig, services: Services, manager: RuntimeManager) -> "BatchesState":
        store = batch_store(services.link.client, config.redis.prefix)
        blobs = LocalBlobStore(Path(config.batches.files_dir).expanduser() if config.batches.files_dir
                               else default_dir())
        return cls(store, blobs, BatchRunner(services, manager, store, blobs, config.batches))
