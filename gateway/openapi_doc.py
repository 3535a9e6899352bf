"""The gateway's OpenAPI document, complete: clients, fuzzers and `/docs` see the real API.

FastAPI documents the routes it dispatches. The two hot endpoints are plain Starlette routes that parse
their own bodies (`routes/openai.py`), and the admin key endpoints read raw bodies too, so FastAPI knows
neither their request schemas nor their error shape. They are added here from the same pydantic models
that validate the requests, and every error response is OpenAI's `{"error": {...}}`, the only shape the
gateway sends (FastAPI's 422 validation errors never occur here and are taken out).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from backends.contract.protocol import ChatCompletionRequest, CompletionRequest
from gateway.routes.admin_keys import KeyFields

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
_ERRORS = {
    "400": "invalid request (the message and `param` say what)", "401": "no key, or a key that is not valid",
    "403": "a key that may not use this", "404": "unknown model", "408": "the request arrived too slowly",
    "413": "body too large", "415": "not JSON (while the gateway has no keys)",
    "429": "rate limit or budget", "500": "an error of the gateway's own", "502": "an upstream failed",
    "503": "overloaded, loading, or nothing available (see Retry-After)", "504": "timed out",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {c: {"description": _ERRORS[c], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for c in codes}


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    """Put `model` (and the models it uses) into the components; a reference to it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _generation(summary: str, op_id: str, model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "operationId": op_id, "tags": ["openai"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _schema(model, schemas)}}},
        "responses": {
            "200": {"description": "the answer; with `stream: true`, server-sent events ending in `data: [DONE]`",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_errors("400", "401", "403", "404", "408", "413", "415", "429", "500", "502", "503", "504")},
    }}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="An OpenAI-compatible LLM gateway. Errors are always OpenAI's "
                                  "`{\"error\": {message, type, param, code}}`.")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR
    paths = doc.setdefault("paths", {})
    paths["/v1/chat/completions"] = _generation("Create a chat completion", "createChatCompletion",
                                                ChatCompletionRequest, schemas)
    paths["/v1/completions"] = _generation("Create a (legacy) text completion", "createCompletion",
                                           CompletionRequest, schemas)
    keys = _schema(KeyFields, schemas)
    for path, method in (("/admin/keys", "post"), ("/admin/keys/{key_id}", "patch")):
        op = paths.get(path, {}).get(method)
        if op is not None:
            op["requestBody"] = {"required": method == "post", "content": {"application/json": {"schema": keys}}}
    for item in paths.values():
        for op in item.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for code, entry in _errors("400", "401", "403", "500").items():
                responses.setdefault(code, entry)
    app.openapi_schema = doc
    return doc
