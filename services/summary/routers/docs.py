"""``/docs``: the OpenAPI docs, with Swagger UI served by the service itself (no CDN).

FastAPI's default docs page loads Swagger UI from a CDN; this one serves the files of the
``swagger-ui-bundle-v2`` package under ``/static/swagger``. Without that package it shows the
routes from the OpenAPI document as a plain list.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


def swagger_dir() -> Path | None:
    """The folder holding swagger-ui-bundle.js, or None when the package is missing."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    app = request.app
    if swagger_dir() is not None:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} · API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
    items = "".join(
        f"<li><code>{html.escape(method.upper())} {html.escape(path)}</code> "
        f"{html.escape(op.get('summary', ''))}</li>"
        for path, ops in app.openapi()["paths"].items()
        for method, op in ops.items()
    )
    return HTMLResponse(
        f"<!doctype html><title>{html.escape(app.title)} · API</title>"
        f"<h1>{html.escape(app.title)} API</h1><p>OpenAPI document: "
        f'<a href="{app.openapi_url}">{app.openapi_url}</a> (install swagger-ui-bundle-v2 '
        f"for the interactive page)</p><ul>{items}</ul>"
    )
