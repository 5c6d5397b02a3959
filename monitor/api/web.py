"""What a browser loads: the review page at ``/``, its static files, and the API documentation at
``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), every asset served from the package, so that all of
it works without a network. The libraries are vendored by ``scripts/vendor-assets.sh``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"
# The page loads its own files only; API calls and tiles go to this server; images may be blob: URLs
# (map tiles fetched with the token). Inline scripts are refused, which blunts injected markup.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
# The documentation pages carry FastAPI's inline start-up script and the libraries' injected styles;
# images, fonts and connections stay on this server. ReDoc shows a logo from its CDN in the menu:
# this refuses it (the browser never asks), and ReDoc then leaves the logo out.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class _StaticFiles(StaticFiles):
    """Static files that browsers revalidate (a cheap 304) so that an upgraded daemon's page is
    picked up at once."""

    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def install(app: FastAPI) -> None:
    """Add the review page, ``/static``, ``/docs`` and ``/redoc`` to ``app`` (created with
    ``docs_url=None, redoc_url=None``)."""
    app.mount("/static", _StaticFiles(directory=STATIC), name="static")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={
            "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"})

    def docs_page(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = DOCS_CSP
        page.headers["Referrer-Policy"] = "no-referrer"
        return page

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return docs_page(get_swagger_ui_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url, title=f"{title} - API",
            swagger_js_url="static/vendor/swagger-ui-dist/swagger-ui-bundle.js",
            swagger_css_url="static/vendor/swagger-ui-dist/swagger-ui.css",
            swagger_favicon_url="static/favicon.svg",
            # the default would send the schema to validator.swagger.io for a badge
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False}))

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return docs_page(get_redoc_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url, title=f"{title} - API reference",
            redoc_js_url="static/vendor/redoc/redoc.standalone.js", redoc_favicon_url="static/favicon.svg",
            with_google_fonts=False))
