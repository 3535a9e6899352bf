"""`/docs` (Swagger UI) and `/redoc`, when `server.docs` is on: pages that work with no internet.

FastAPI's own pages load their JavaScript and CSS from a CDN, which a gateway on a closed network cannot
reach (and which would tell a third party who reads the docs). The assets here come from the
`fastapi-offline` package, installed with the gateway, and are served by the gateway itself under
`/docs/assets/`; the pages name no other host (no Google fonts, no Swagger validator badge).

The pages are static and hold nothing secret, so anyone may load them; what they show comes from
`/openapi.json`, which with keys on needs the admin key unless `server.public_openapi` (a browser cannot
send a key when the page loads the document, so `/docs` with keys on wants `public_openapi: true`).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse

from backends.contract.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS = {  # name -> media type; nothing else is served from the package's folder
    "swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript", "favicon.png": "image/png",
}


def _asset_url(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}/docs/assets/{name}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_asset_url(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset_url(request, "swagger-ui.css"), swagger_favicon_url=_asset_url(request, "favicon.png"),
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False})


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=f"{request.app.title} - ReDoc",
        redoc_js_url=_asset_url(request, "redoc.standalone.js"), redoc_favicon_url=_asset_url(request, "favicon.png"),
        with_google_fonts=False)


@router.get("/docs/assets/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"No documentation asset '{name}'.")
    return FileResponse(str(files("fastapi_offline") / "static" / name), media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})
