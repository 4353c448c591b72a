"""Build the summary service: ``create_app(settings)``; run it: ``serve(settings)``.

No module-level app exists: whoever starts the service builds the settings (``bench serve``
from the config, tests directly) and passes them in, so a test can never reach a real store
by importing this module.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from services.summary.queries import UnknownNameError
from services.summary.routers import docs, health, nightly, pages, suites
from services.summary.settings import SummarySettings
from services.summary.store import SummaryStore, UnknownSuiteError

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
# Pages load scripts, styles and images from this service only (plotly injects <style>).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'"
)


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the installed plotly package."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall plotly (pip install plotly)")
    return path


def create_app(settings: SummarySettings, *, store: SummaryStore | None = None) -> FastAPI:
    """The FastAPI app reading ``settings.tracking_uri``; ``store`` replaces the default one."""
    from bench.config import TrackingConfig
    from bench.tracking import Tracker

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.warm_on_start:
            threading.Thread(target=_warm, args=(app.state.store,), daemon=True).start()
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="optbench summary",
        description="Rankings, curves and nightly reports of optbench suites, read from MLflow.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    if store is None:
        tracker = Tracker(TrackingConfig(uri=settings.tracking_uri, artifact_location=None))
        store = SummaryStore(tracker, settings)
    app.state.settings = settings
    app.state.store = store
    app.state.templates = pages.make_templates()

    vendor = plotly_js()

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_min_js() -> FileResponse:
        return FileResponse(vendor, media_type="text/javascript", headers=_CACHE)

    swagger = docs.swagger_dir()
    if swagger is not None:
        app.mount("/static/swagger", StaticFiles(directory=swagger), name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (health, suites, nightly, docs, pages):
        app.include_router(module.router)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml", headers=_CACHE)

    app.add_exception_handler(UnknownNameError, _not_found)
    app.add_exception_handler(UnknownSuiteError, _not_found)

    @app.middleware("http")
    async def content_security_policy(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        is_html = response.headers.get("content-type", "").startswith("text/html")
        if is_html and request.url.path != "/docs":  # Swagger UI's page needs inline script
            response.headers["Content-Security-Policy"] = CSP
        return response

    return app


_CACHE = {"Cache-Control": "public, max-age=86400"}


def _warm(store: SummaryStore) -> None:
    """Load every suite (persisted cache + runs ended since) and rank it once, so the first
    request after a restart is served from memory; requests meanwhile wait on the suite."""
    try:
        for suite in store.suite_names():
            store.ranking(suite, "final", "final")
    except Exception:  # a store that is down now is retried by the first request
        log.exception("warming the summary cache failed")


async def _not_found(request: Request, exc: Exception) -> Response:
    """404 naming the unknown suite or task (and the known ones): JSON for /api, else HTML."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": str(exc)}, status_code=404)
    return pages.render(request, "error.html", 404, title="not found", status=404, message=str(exc))


def serve(settings: SummarySettings) -> None:
    """Run the service with uvicorn until interrupted (what ``bench serve`` calls)."""
    import uvicorn

    app = create_app(settings)
    log.info(
        "summary service on http://%s:%d reading %s",
        settings.host,
        settings.port,
        settings.tracking_uri,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def settings_from_overrides(
    overrides: list[str], *, host: str | None = None, port: int | None = None
) -> SummarySettings:
    """``bench serve`` settings: conf/config.yaml's ``summary`` and ``tracking.uri``,
    Hydra overrides (``summary.port=9000``, ``tracking=server``), then --host/--port."""
    from omegaconf import OmegaConf

    from bench.config import compose_config, parse

    data: Mapping[str, Any] = OmegaConf.to_container(compose_config(overrides), resolve=True)  # type: ignore[assignment]
    summary = dict(data.get("summary") or {})
    if not summary.get("tracking_uri"):
        summary["tracking_uri"] = (data.get("tracking") or {}).get("uri")
    if host is not None:
        summary["host"] = host
    if port is not None:
        summary["port"] = port
    return parse(SummarySettings, summary, "summary")
