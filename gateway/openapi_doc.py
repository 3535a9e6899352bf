"""The gateway's OpenAPI document, complete: clients, fuzzers and `/docs` see the real API.

FastAPI documents the routes it dispatches. The hot endpoints are plain Starlette routes that parse their
own bodies (`routes/openai.py`), and the admin key endpoints read raw bodies too, so FastAPI knows neither
their request schemas nor their error shape. `ENDPOINTS` below says, for each public endpoint, its request
model (the same pydantic model that validates the request), its answer and its summary; every error
response is OpenAI's `{"error": {...}}`, the only shape the gateway sends (FastAPI's 422 validation errors
never occur here and are taken out).

A new endpoint is one line in `ENDPOINTS` (tests/gateway/test_openapi_doc.py fails for a route the
document misses, or a POST without a request schema).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.routes.admin_keys import KeyFields
from gateway.routes.batches import BatchCreate, FileUpload
from gateway.surfaces.messages.protocol import CountTokensRequest, MessagesRequest
from gateway.surfaces.responses.protocol import ResponsesRequest

YAML = "application/yaml"
GENERATION = ("400", "401", "403", "404", "408", "413", "415", "429", "500", "502", "503", "504")


@dataclass(frozen=True)
class Endpoint:
    """One public operation, as the document shows it."""

    method: str  # "post", "get", "delete", "patch"
    path: str  # as clients write it: "/v1/responses/{response_id}" ({name} parts become path parameters)
    summary: str
    request: type[BaseModel] | None = None  # the model that validates the JSON body (POST/PATCH); None and media
    # YAML: the body is a config's text
    response: str | None = None  # a schema of RESPONSES (or of the request models' components); None: any object
    stream: bool = False  # with `"stream": true` the answer is server-sent events
    operation_id: str | None = None  # default: from method and path
    errors: tuple[str, ...] = ()  # error statuses beyond 400, 401, 403 and 500 (which every operation has)
    body_required: bool = True
    tag: str = "openai"
    media: str = "application/json"  # the request body's type (multipart/form-data for a file upload)


# The table: one line per public endpoint. Routes FastAPI already documents (GET /v1/models, admin) keep what
# it found, with the line's summary, body and answer on top.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("post", "/v1/chat/completions", "Create a chat completion", ChatCompletionRequest,
             "ChatCompletion", stream=True, operation_id="createChatCompletion", errors=GENERATION),
    Endpoint("post", "/v1/completions", "Create a (legacy) text completion", CompletionRequest,
             "TextCompletion", stream=True, operation_id="createCompletion", errors=GENERATION),
    Endpoint("post", "/v1/embeddings", "Create embeddings", EmbeddingRequest, "EmbeddingList",
             operation_id="createEmbedding", errors=GENERATION),
    Endpoint("get", "/v1/models", "List the models (routes and aliases) this key may use", response="ModelList",
             operation_id="listModels"),
    Endpoint("get", "/v1/models/{model_id}", "Retrieve a model", response="Model", operation_id="retrieveModel",
             errors=("404",)),
    Endpoint("post", "/v1/responses", "Create a response (the Responses API)", ResponsesRequest, "Response",
             stream=True, operation_id="createResponse", errors=GENERATION),
    Endpoint("get", "/v1/responses/{response_id}", "Retrieve a stored response", response="Response",
             operation_id="getResponse", errors=("404", "503")),
    Endpoint("get", "/v1/responses/{response_id}/input_items", "List a stored response's input items",
             response="ResponseItemList", operation_id="listInputItems", errors=("404", "503")),
    Endpoint("delete", "/v1/responses/{response_id}", "Delete a stored response", response="ResponseDeleted",
             operation_id="deleteResponse", errors=("404", "503")),
    Endpoint("post", "/v1/messages", "Create a message (Anthropic's Messages API; errors in Anthropic's shape)",
             MessagesRequest, "Message", stream=True, operation_id="createMessage", errors=GENERATION,
             tag="anthropic"),
    Endpoint("post", "/v1/messages/count_tokens", "Count a message's input tokens (Anthropic's Messages API)",
             CountTokensRequest, "MessageTokensCount", operation_id="countMessageTokens", errors=("404",),
             tag="anthropic"),
    Endpoint("post", "/v1/files", "Upload a file (purpose `batch`: JSONL, checked line by line)", FileUpload,
             "File", operation_id="createFile", media="multipart/form-data", errors=("413", "415", "503")),
    Endpoint("get", "/v1/files", "List this key's files", response="FileList", operation_id="listFiles"),
    Endpoint("get", "/v1/files/{file_id}", "Retrieve a file", response="File", operation_id="retrieveFile",
             errors=("404",)),
    Endpoint("delete", "/v1/files/{file_id}", "Delete a file", response="FileDeleted", operation_id="deleteFile",
             errors=("404",)),
    Endpoint("get", "/v1/files/{file_id}/content", "A file's content", operation_id="downloadFile",
             errors=("404",)),
    Endpoint("post", "/v1/batches", "Create a batch (its lines run through the gateway's routes)", BatchCreate,
             "Batch", operation_id="createBatch", errors=("404", "503")),
    Endpoint("get", "/v1/batches", "List this key's batches", response="BatchList", operation_id="listBatches"),
    Endpoint("get", "/v1/batches/{batch_id}", "Retrieve a batch", response="Batch", operation_id="retrieveBatch",
             errors=("404",)),
    Endpoint("post", "/v1/batches/{batch_id}/cancel", "Cancel a batch", response="Batch", operation_id="cancelBatch",
             errors=("404",), body_required=False),
    Endpoint("post", "/admin/keys", "Create an API key", KeyFields, tag="admin", errors=("409", "503")),
    Endpoint("post", "/admin/reload", "Reload the config file; with a YAML body, apply that config (written to the "
             "file); 400 with line-numbered problems when refused", tag="admin", media=YAML, body_required=False,
             errors=("409", "415")),
    Endpoint("post", "/admin/config/validate", "The line-numbered problems of a config (YAML body), as "
             "`llm-gateway check` finds them", tag="admin", media=YAML, errors=("415",)),
    Endpoint("patch", "/admin/keys/{key_id}", "Change an API key", KeyFields, tag="admin", body_required=False,
             errors=("404", "503")),
)

# Answers, as far as clients rely on them (OpenAI's full schemas are in its own spec; extra fields are allowed).
_CHOICES = {"type": "array", "items": {"type": "object", "required": ["index", "finish_reason"]}}
_USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
          "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}
RESPONSES: dict[str, dict[str, Any]] = {
    "ChatCompletion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices"],
        "properties": {"id": {"type": "string"}, "object": {"const": "chat.completion"},
                       "created": {"type": "integer"}, "model": {"type": "string"}, "choices": _CHOICES,
                       "usage": {"anyOf": [_USAGE, {"type": "null"}]}}},
    "TextCompletion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices"],
        "properties": {"id": {"type": "string"}, "object": {"const": "text_completion"},
                       "created": {"type": "integer"}, "model": {"type": "string"}, "choices": _CHOICES,
                       "usage": {"anyOf": [_USAGE, {"type": "null"}]}}},
    "Model": {
        "type": "object", "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                       "owned_by": {"type": "string"}, "context_length": {"type": ["integer", "null"]},
                       "aliases": {"type": "array", "items": {"type": "string"}}}},
    "Response": {
        "type": "object", "required": ["id", "object", "created_at", "status", "model", "output"],
        "properties": {"id": {"type": "string"}, "object": {"const": "response"}, "created_at": {"type": "integer"},
                       "status": {"type": "string"}, "model": {"type": "string"},
                       "output": {"type": "array", "items": {"type": "object"}}}},
    "ResponseItemList": {
        "type": "object", "required": ["object", "data", "has_more", "first_id", "last_id"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object"}},
                       "has_more": {"type": "boolean"}, "first_id": {"type": ["string", "null"]},
                       "last_id": {"type": ["string", "null"]}}},
    "ResponseDeleted": {
        "type": "object", "required": ["id", "object", "deleted"],
        "properties": {"id": {"type": "string"}, "object": {"const": "response"}, "deleted": {"const": True}}},
    "Message": {
        "type": "object", "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
        "properties": {"id": {"type": "string"}, "type": {"const": "message"}, "role": {"const": "assistant"},
                       "model": {"type": "string"}, "content": {"type": "array", "items": {"type": "object"}},
                       "stop_reason": {"type": ["string", "null"]}, "usage": {"type": "object"}}},
    "MessageTokensCount": {
        "type": "object", "required": ["input_tokens"], "properties": {"input_tokens": {"type": "integer"}}},
    "EmbeddingList": {
        "type": "object", "required": ["object", "data", "model", "usage"],
        "properties": {"object": {"const": "list"}, "model": {"type": "string"},
                       "data": {"type": "array", "items": {"type": "object", "required": ["object", "index",
                                                                                          "embedding"]}},
                       "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"]}}},
    "File": {
        "type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
        "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "bytes": {"type": "integer"},
                       "created_at": {"type": "integer"}, "filename": {"type": "string"},
                       "purpose": {"type": "string"}}},
    "FileList": {"type": "object", "required": ["object", "data"],
                 "properties": {"object": {"const": "list"},
                                "data": {"type": "array", "items": {"$ref": "#/components/schemas/File"}}}},
    "FileDeleted": {"type": "object", "required": ["id", "object", "deleted"],
                    "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "deleted": {"const": True}}},
    "Batch": {
        "type": "object", "required": ["id", "object", "endpoint", "input_file_id", "status", "created_at"],
        "properties": {"id": {"type": "string"}, "object": {"const": "batch"}, "endpoint": {"type": "string"},
                       "input_file_id": {"type": "string"}, "status": {"type": "string"},
                       "created_at": {"type": "integer"}, "request_counts": {"type": "object"}}},
    "BatchList": {"type": "object", "required": ["object", "data", "has_more"],
                  "properties": {"object": {"const": "list"}, "has_more": {"type": "boolean"},
                                 "data": {"type": "array", "items": {"$ref": "#/components/schemas/Batch"}}}},
    "ModelList": {
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"},
                       "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}},
}

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
_ERRORS = {
    "400": "invalid request (the message and `param` say what)", "401": "no key, or a key that is not valid",
    "403": "a key that may not use this", "404": "not found (an unknown model, key or object)",
    "408": "the request arrived too slowly", "409": "it exists already",
    "413": "body too large", "415": "not JSON (while the gateway has no keys)",
    "429": "rate limit or budget", "500": "an error of the gateway's own", "502": "an upstream failed",
    "503": "overloaded, loading, or nothing available (see Retry-After)", "504": "timed out",
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "An API key (`/admin/keys`) or the master key; the admin API takes the admin key. "
                              "A gateway without a master key needs none."},
    "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key",
                  "description": "The same key in Anthropic's header, as Anthropic's SDKs send it."},
}
# Operations that answer without a key; /ready shows its detail to the admin key only.
_OPEN = {("get", "/health"): [], ("get", "/ready"): [{}, {"bearer": []}]}


def _errors(*codes: str) -> dict[str, Any]:
    return {c: {"description": _ERRORS[c], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for c in codes}


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    """Put `model` (and the models it uses) into the components; a reference to it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path) if w]
    return method + "".join(w[:1].upper() + w[1:] for w in words)


def _apply(endpoint: Endpoint, paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    op = paths.setdefault(endpoint.path, {}).setdefault(endpoint.method, {})
    op["summary"] = endpoint.summary
    op["operationId"] = (endpoint.operation_id or op.get("operationId")
                         or _operation_id(endpoint.method, endpoint.path))
    op["tags"] = [endpoint.tag]
    known = {p.get("name") for p in op.get("parameters", []) if p.get("in") == "path"}
    for name in re.findall(r"\{([^}:]+)\}", endpoint.path):
        if name not in known:
            op.setdefault("parameters", []).append({"name": name, "in": "path", "required": True,
                                                    "schema": {"type": "string"}})
    if endpoint.request is not None:
        op["requestBody"] = {"required": endpoint.body_required,
                             "content": {endpoint.media: {"schema": _schema(endpoint.request, schemas)}}}
    elif endpoint.media == YAML:
        op["requestBody"] = {"required": endpoint.body_required,
                             "content": {YAML: {"schema": {"type": "string", "description": "a config file's text"}}}}
    if endpoint.response is not None or endpoint.stream:
        schema = {"$ref": f"#/components/schemas/{endpoint.response}"} if endpoint.response else {"type": "object"}
        content: dict[str, Any] = {"application/json": {"schema": schema}}
        description = "the answer"
        if endpoint.stream:
            content["text/event-stream"] = {"schema": {"type": "string"}}
            description += "; with `stream: true`, server-sent events (the API's own)"
        ok = "201" if "201" in op.get("responses", {}) else "200"
        op.setdefault("responses", {})[ok] = {"description": description, "content": content}
    op.setdefault("responses", {}).update(_errors(*endpoint.errors))


def openapi_document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="An OpenAI-compatible LLM gateway. Errors are always OpenAI's "
                                  "`{\"error\": {message, type, param, code}}`.")
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR
    schemas.update(RESPONSES)
    components["securitySchemes"] = SECURITY_SCHEMES
    doc["security"] = [{"bearer": []}, {"x-api-key": []}]
    paths = doc.setdefault("paths", {})
    for endpoint in ENDPOINTS:
        _apply(endpoint, paths, schemas)
    for path, item in paths.items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for code, entry in _errors("400", "401", "403", "500").items():
                responses.setdefault(code, entry)
            if (method, path) in _OPEN:
                op["security"] = _OPEN[(method, path)]
    app.openapi_schema = doc
    return doc
