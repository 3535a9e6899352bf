"""GET /console (the page) and GET /console/assets/{name} (its scripts, stylesheet and icon).

The files are the package's own (`static/`), read once; only the names found there are served, each with
its media type. The page's URLs carry the app's root path (a gateway behind a path prefix), and the scripts
find the admin API relative to themselves.
"""

from __future__ import annotations

import functools
import hashlib
import html
from importlib.resources import files

from fastapi import APIRouter, Request
from starlette.responses import Response

from backends.contract.errors import NotFound
from gateway.console.headers import security_headers

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".svg": "image/svg+xml"}
ROOT_MARK = "{{root}}"  # in index.html: where the root path goes


@functools.cache
def assets() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, media type, ETag) of every file under static/assets with a known type."""
    out = {}
    for entry in (files("gateway.console") / "static" / "assets").iterdir():
        media = MEDIA_TYPES.get("." + entry.name.rsplit(".", 1)[-1])
        if media is not None and entry.is_file():
            body = entry.read_bytes()
            out[entry.name] = (body, media, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return out


@functools.cache
def _page_template() -> str:
    return (files("gateway.console") / "static" / "index.html").read_text(encoding="utf-8")


def _not_found(what: str) -> Response:
    body = NotFound(f"No console asset '{what}'.").to_json()
    return Response(body, status_code=404, media_type="application/json", headers=security_headers(page=False))


@router.get("/console")
async def page(request: Request) -> Response:
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    return Response(_page_template().replace(ROOT_MARK, root), media_type="text/html; charset=utf-8",
                    headers=security_headers(page=True))


@router.get("/console/assets/{name}")
async def asset(name: str, request: Request) -> Response:
    found = assets().get(name)
    if found is None:
        return _not_found(name)
    body, media, etag = found
    headers = {**security_headers(page=False), "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media, headers=headers)
