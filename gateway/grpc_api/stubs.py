"""Every generated module of protos/, as one namespace: the message classes by name (they are unique in
the package), and each service with its descriptor and its `add_...Servicer_to_server`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

from gateway.grpc_api import codegen


@dataclass(frozen=True)
class Service:
    full_name: str  # e.g. llm_gateway.v1.ChatService, for reflection and health
    add_to_server: Callable[[Any, Any], None]


@dataclass(frozen=True)
class Stubs:
    pb: SimpleNamespace  # ChatCompletionRequest, Completion, Usage, ...
    services: dict[str, Service]  # by short name: ChatService, CompletionService, EmbeddingService


def load() -> Stubs:
    codegen.load()  # generated when missing or stale, and put on sys.path
    messages: dict[str, Any] = {}
    services: dict[str, Service] = {}
    for proto in codegen.proto_files():
        name = ".".join(proto.relative_to(codegen.PROTOS).with_suffix("").parts)
        pb2: ModuleType = importlib.import_module(f"{name}_pb2")
        grpc_mod: ModuleType = importlib.import_module(f"{name}_pb2_grpc")
        messages.update({m: getattr(pb2, m) for m in pb2.DESCRIPTOR.message_types_by_name})
        for short, desc in pb2.DESCRIPTOR.services_by_name.items():
            services[short] = Service(desc.full_name, getattr(grpc_mod, f"add_{short}Servicer_to_server"))
    return Stubs(SimpleNamespace(**messages), services)
