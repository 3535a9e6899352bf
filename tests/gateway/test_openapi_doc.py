"""README, "API": the OpenAPI document lists every route the app serves (a POST with its request schema, the
same pydantic model that validates it), its answers and the bearer scheme; `/docs` and `/redoc` are off by
default and, when on, load nothing from another host."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.routing import iter_route_contexts

from backends.contract import responses
from backends.model_cards import load_cards
from gateway import openapi_doc
from gateway.app import create_app
from gateway.settings import Settings
from routing.config import GatewayConfig

MASTER = "sk-master-openapi-00000"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
CONFIG = {"models": [], "providers": {"up": {"kind": "vllm", "base_url": "http://127.0.0.1:1/v1"}},
          "deployments": [{"name": "d", "provider": "up", "model": "m"}],
          "routes": [{"name": "r", "aliases": ["r-alias"], "deployments": ["d"]}]}


def make_app(server: dict[str, Any] | None = None, master: str | None = MASTER) -> Any:
    config = GatewayConfig.model_validate({**CONFIG, "server": server or {}})
    return create_app(config, load_cards(), settings=Settings(master_key=master))


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def served_operations(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app dispatches and documents, as OpenAPI writes paths."""
    out = set()
    for route in iter_route_contexts(app.routes):
        if not getattr(route, "include_in_schema", True) or not route.methods:
            continue
        path = re.sub(r"\{([^}:]+):[^}]+\}", r"{\1}", route.path)  # {model_id:path} -> {model_id}
        out |= {(m.lower(), path) for m in route.methods if m != "HEAD"}
    return out


def validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


async def test_every_served_route_is_in_the_document_and_every_body_has_its_schema() -> None:
    app = make_app()
    async with client(app) as c:
        doc = (await c.get("/openapi.json", headers=ADMIN)).json()
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    served = served_operations(app)
    assert {("post", "/v1/chat/completions"), ("post", "/v1/completions"), ("get", "/v1/models")} <= served
    assert served <= documented, f"served but not documented: {served - documented}"
    assert {(e.method, e.path) for e in openapi_doc.ENDPOINTS} <= documented
    for method, path in served:
        op = doc["paths"][path][method]
        assert op.get("summary") and op.get("operationId"), (method, path)
        for code in ("400", "401", "500"):
            error = op["responses"][code]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}, (method, path, code)
        assert "422" not in op["responses"]
        if method in ("post", "patch") and path != "/v1/batches/{batch_id}/cancel":  # no body
            content = op["requestBody"]["content"]
            if "application/yaml" in content:  # a config's text: /admin/reload, /admin/config/validate
                assert content["application/yaml"]["schema"]["type"] == "string", (method, path)
                continue
            ref = (content.get("application/json") or content["multipart/form-data"])["schema"]["$ref"]
            assert ref.split("/")[-1] in doc["components"]["schemas"], (method, path, ref)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operation ids are unique"
    jsonschema.Draft202012Validator.check_schema({"components": doc["components"]})


async def test_request_schemas_are_the_validating_models_and_reject_what_they_reject() -> None:
    app = make_app()
    doc = app.openapi()
    for endpoint in openapi_doc.ENDPOINTS:
        if endpoint.request is None:
            continue
        generated = endpoint.request.model_json_schema(ref_template="#/components/schemas/{model}")
        generated.pop("$defs", None)
        assert doc["components"]["schemas"][endpoint.request.__name__] == generated, endpoint.path
    chat = validator(doc, "ChatCompletionRequest")
    chat.validate({"model": "r", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert not chat.is_valid({"model": "r"}), "messages are required"
    assert not chat.is_valid({"model": "r", "messages": [{"role": "user", "content": "hi"}], "temperature": 9})


async def test_answers_are_referenced_and_real_answers_fit_them() -> None:
    app = make_app()
    async with client(app) as c:
        doc = (await c.get("/openapi.json", headers=ADMIN)).json()
        models = (await c.get("/v1/models", headers=ADMIN)).json()
        model = (await c.get("/v1/models/r-alias", headers=ADMIN)).json()
    chat_op = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat_op["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "text/event-stream" in chat_op
    bodies = {
        "ChatCompletion": responses.chat_response(id="chatcmpl-1", created=1, model="r", fingerprint=None,
                                                  choices=[("hello", "stop")], prompt_tokens=3, completion_tokens=1),
        "TextCompletion": responses.completion_response(id="cmpl-1", created=1, model="r", fingerprint=None,
                                                        choices=[("hello", "length")], prompt_tokens=3,
                                                        completion_tokens=1),
        "ModelList": models, "Model": model,
    }
    for name, body in bodies.items():
        validator(doc, name).validate(body)
    assert not validator(doc, "ChatCompletion").is_valid(bodies["TextCompletion"]), "the schemas tell them apart"
    assert doc["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ModelList"}


async def test_the_security_scheme_is_bearer_and_probes_need_no_key() -> None:
    doc = make_app().openapi()
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}, {"x-api-key": []}], "either header carries the key"
    assert doc["components"]["securitySchemes"]["x-api-key"]["in"] == "header"
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert {} in doc["paths"]["/ready"]["get"]["security"]
    assert "security" not in doc["paths"]["/v1/chat/completions"]["post"], "the document's default: bearer"


def test_a_new_endpoint_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a developer adding a GET /v1/widgets/{widget_id} writes: one `Endpoint`."""
    line = openapi_doc.Endpoint("get", "/v1/widgets/{widget_id}", "Retrieve a widget", errors=("404",))
    monkeypatch.setattr(openapi_doc, "ENDPOINTS", (*openapi_doc.ENDPOINTS, line))
    op = make_app().openapi()["paths"]["/v1/widgets/{widget_id}"]["get"]
    assert op["summary"] == "Retrieve a widget" and op["operationId"] == "getV1WidgetsWidgetId"
    assert op["parameters"] == [{"name": "widget_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert set(op["responses"]) >= {"400", "401", "403", "404", "500"}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js"])
async def test_docs_are_off_by_default(path: str) -> None:
    async with client(make_app()) as c:
        r = await c.get(path, headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error", r.text


@pytest.mark.parametrize("page, marker", [("/docs", "SwaggerUIBundle"), ("/redoc", "<redoc spec-url")])
async def test_docs_when_on_load_everything_from_the_gateway(page: str, marker: str) -> None:
    app = make_app({"docs": True, "public_openapi": True})
    async with client(app) as c:
        r = await c.get(page)  # no key: the page is static
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and marker in r.text
        assert not re.search(r"https?://|//[a-z]", r.text), "the page names no other host"
        parser = _Refs()
        parser.feed(r.text)
        assert len(parser.refs) >= 2, parser.refs
        for ref in parser.refs:
            assert ref.startswith("/docs/assets/"), ref
            asset = await c.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 1000, ref
        spec = re.search(r"(?:url: '|spec-url=\")([^'\"]+)", r.text).group(1)
        assert spec == "/openapi.json" and (await c.get(spec)).json()["paths"]["/v1/chat/completions"]
        assert (await c.get("/docs/assets/..%2Fcore.py")).status_code == 404, "only the listed assets"
        assert (await c.get("/docs/assets/core.py")).status_code == 404
        js = await c.get("/docs/assets/swagger-ui-bundle.js")
        assert js.headers["content-type"].startswith("text/javascript")
    assert "/docs" not in app.openapi()["paths"], "the pages are not part of the API"
