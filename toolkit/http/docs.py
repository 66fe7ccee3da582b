"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from assets installed with the package.

FastAPI's own pages load their scripts and styles from a CDN, so they are blank on a
machine without the internet, and every reader's browser tells a third party it opened
them. The files come from the ``fastapi-offline`` wheel (Swagger UI's bundle and style,
ReDoc's standalone bundle and a favicon) and are served under ``/docs/assets``; the pages
are FastAPI's, pointed at them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
"""Where the pages' scripts, style and icon are served."""


def assets_directory() -> Path:
    """The installed Swagger UI and ReDoc files."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def install(app: FastAPI, *, docs: str = "/docs", redoc: str = "/redoc") -> None:
    """Serve ``app``'s documentation pages from local assets (create ``app`` with
    ``docs_url=None, redoc_url=None`` so that FastAPI's CDN pages are not routed)."""
    app.mount(ASSETS, StaticFiles(directory=assets_directory()), name="docs-assets")

    def local(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get(docs, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=local(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=None,
            swagger_js_url=local(request, f"{ASSETS}/swagger-ui-bundle.js"),
            swagger_css_url=local(request, f"{ASSETS}/swagger-ui.css"),
            swagger_favicon_url=local(request, f"{ASSETS}/favicon.png"),
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(redoc, include_in_schema=False)
    async def redoc_page(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=local(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} - ReDoc",
            redoc_js_url=local(request, f"{ASSETS}/redoc.standalone.js"),
            redoc_favicon_url=local(request, f"{ASSETS}/favicon.png"),
            with_google_fonts=False,
        )
