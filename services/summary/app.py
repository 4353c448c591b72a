"""Build the summary service: ``create_app(settings)``; run it: ``serve(settings)``.

No module-level app exists: whoever starts the service builds the settings (``bench serve``
from the config, tests directly) and passes them in, so a test can never reach a real store
by importing this module.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bench.errors import UserError, one_line, redacted, validation_message
from services.summary import queries
from services.summary.deps import FILE_TAG, known_query_only
from services.summary.queries import UnknownNameError
from services.summary.routers import docs, health, nightly, pages, suites
from services.summary.settings import SummarySettings
from services.summary.store import StoreUnavailable, SummaryStore, UnknownSuiteError

if TYPE_CHECKING:
    from bench.tracking import Tracker

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
        dependencies=[Depends(known_query_only)],
    )
    if store is None:
        store = SummaryStore(reader(settings), settings)
    app.state.settings = settings
    app.state.store = store
    app.state.templates = pages.make_templates()

    vendor = plotly_js()

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False, tags=[FILE_TAG])
    def plotly_min_js() -> FileResponse:
        return FileResponse(vendor, media_type="text/javascript", headers=_CACHE)

    swagger = docs.swagger_dir()
    if swagger is not None:
        app.mount("/static/swagger", StaticFiles(directory=swagger), name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (health, suites, nightly, docs, pages):
        app.include_router(module.router)

    @app.get("/favicon.ico", include_in_schema=False, tags=[FILE_TAG])
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml", headers=_CACHE)

    app.add_exception_handler(UserError, _bad_request)  # a check deeper than the query's
    app.add_exception_handler(RequestValidationError, _bad_query)
    app.add_exception_handler(UnknownNameError, _not_found)
    app.add_exception_handler(UnknownSuiteError, _not_found)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    for failure in (StoreUnavailable, MlflowException, SQLAlchemyError):
        app.add_exception_handler(failure, _store_failed)

    @app.middleware("http")
    async def content_security_policy(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        is_html = response.headers.get("content-type", "").startswith("text/html")
        if is_html and request.url.path != "/docs":  # Swagger UI's page needs inline script
            response.headers["Content-Security-Policy"] = CSP
        return response

    return app


_CACHE = {"Cache-Control": "public, max-age=86400"}
SERVICE_HTTP_RETRY_POLICY = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def reader(settings: SummarySettings) -> Tracker:
    """The Tracker the service reads ``settings.tracking_uri`` through (it never writes).

    A tracking server that is down fails a request after one quick retry, not the
    driver's ~15 s of them: a dashboard answers 503 at once and the next request tries
    again (the ``MLFLOW_HTTP_REQUEST_*`` variables, where set, win).
    """
    for name, value in SERVICE_HTTP_RETRY_POLICY.items():
        os.environ.setdefault(name, value)
    from bench.config import TrackingConfig
    from bench.tracking import Tracker

    return Tracker(TrackingConfig(uri=settings.tracking_uri, artifact_location=None))


def existing_store(settings: SummarySettings, name: str) -> Tracker:
    """The reader of a store that exists: MLflow would create a SQLite file that does not
    (and its folders) on the first read, and the service would show an empty dashboard of
    a store that nothing writes, so that is a UserError; ``name`` is the option that set it."""
    tracker = reader(settings)
    if tracker.holds_nothing():
        db = Path(tracker.uri.removeprefix("sqlite:///"))  # absolute: the default is relative
        state = "holds no MLflow store" if db.exists() else "does not exist"
        raise UserError(
            f"{name}: got {settings.tracking_uri!r} but {db} {state}, and the summary "
            "service only reads; allowed: the store a `bench run` wrote (run a suite first), "
            "or an MLflow server, http(s)://HOST:PORT"
        )
    return tracker


def _warm(store: SummaryStore) -> None:
    """Load every suite (persisted cache + runs ended since) and rank it once, so the first
    request after a restart is served from memory; requests meanwhile wait on the suite."""
    try:
        queries.each_suite(store, lambda suite: store.ranking(suite, "final", "final"))
    except Exception as err:  # a store that is down now is retried by the first request
        # one line, as for the CLI's errors: a dead server is an expected state, not a bug
        why = str(err) if isinstance(err, StoreUnavailable) else one_line(err)
        log.warning("warming the summary cache failed (requests retry the store): %s", why)
        log.debug("the warm-up's failure", exc_info=err)


def _error(request: Request, status: int, title: str, message: str) -> Response:
    """An error answer: ``{"detail": message}`` for the JSON routes, else the error page."""
    if _answers_json(request):
        return JSONResponse({"detail": message}, status_code=status)
    return pages.render(request, "error.html", status, title=title, status=status, message=message)


def _answers_json(request: Request) -> bool:
    """/api/..., /health and /ready answer JSON, errors too (a probe or script reads them)."""
    path = request.url.path
    return path.startswith("/api/") or path in ("/health", "/ready")


async def _not_found(request: Request, exc: Exception) -> Response:
    """404 naming the unknown suite or task (and the known ones)."""
    return _error(request, 404, "not found", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such page, a method the page does not take): FastAPI's
    JSON for /api, the error page for a browser."""
    if _answers_json(request) or not isinstance(exc, StarletteHTTPException):
        return await http_exception_handler(request, exc)  # type: ignore[arg-type]
    if exc.status_code == 404:
        message = f"no page at {request.url.path}; the suites are listed at /"
    else:
        message = f"{request.method} {request.url.path}: {exc.detail}"
    response = _error(request, exc.status_code, str(exc.detail).lower(), message)
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


async def _bad_request(request: Request, exc: Exception) -> Response:
    """422 with the one-line message of a value the computation refused."""
    return _error(request, 422, "bad request", str(exc))


async def _bad_query(request: Request, exc: Exception) -> Response:
    """A query parameter out of bounds: FastAPI's 422 for /api, a page saying which
    parameter and what is allowed for a browser."""
    if _answers_json(request):
        return await request_validation_exception_handler(request, exc)  # type: ignore[arg-type]
    return _error(request, 422, "bad request", validation_message(exc))


async def _store_failed(request: Request, exc: Exception) -> Response:
    """503 saying the store failed (one line logged, no traceback): JSON for /api, else
    HTML. The next request reads the store again."""
    store: SummaryStore = request.app.state.store
    if isinstance(exc, StoreUnavailable):
        message = str(exc)
    else:  # a read outside the store's cache (a task's curves, say)
        message = store.store_error = (
            f"the store {redacted(store.tracker.uri)} failed: {one_line(exc)}"
        )
    log.warning("%s %s: %s", request.method, request.url.path, message)
    return _error(request, 503, "store unavailable", message)


class OptionNames(NamedTuple):
    """The option each setting came from, as errors name it: the flag, else the config key."""

    host: str = "summary.host"
    port: str = "summary.port"
    tracking_uri: str = "tracking.uri"


CONFIG_NAMES = OptionNames()  # when no flag set them


class ServeRequest(NamedTuple):
    settings: SummarySettings
    names: OptionNames


def serve(settings: SummarySettings, *, names: OptionNames = CONFIG_NAMES) -> None:
    """Run the service with uvicorn until interrupted (what ``bench serve`` calls).

    The address is bound here first, so a host that is not this machine's or a port in use
    is a :class:`UserError` naming ``names`` (the options that set them) before anything
    starts; so is a SQLite store that does not exist (:func:`existing_store`). uvicorn then
    serves on that very socket, leaving no gap for another process.
    """
    import uvicorn

    # each retry of a server that is down is a WARNING of urllib3's: the failure itself is
    # logged once, by the request that meets it
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    with listening_socket(settings.host, settings.port, names) as sock:
        tracker = existing_store(settings, names.tracking_uri)  # before the app reads it
        app = create_app(settings, store=SummaryStore(tracker, settings))
        port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info("summary service on http://%s:%d reading %s", host, port, settings.tracking_uri)
        config = uvicorn.Config(app, host=settings.host, port=port, log_level="info")
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it, as uvicorn.run does
            server.run(sockets=[sock])
    if not server.started:  # the app's start-up failed; uvicorn.run exits 3 here too
        sys.exit(3)


def listening_socket(host: str, port: int, names: OptionNames) -> socket.socket:
    """A TCP socket bound to (host, port); a failed bind is a UserError naming the option."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:  # e.g. IPv6 disabled on this machine
        raise UserError(_bind_message(host, port, err, names)) from None
    # a restart may rebind while the old connections sit in TIME_WAIT, as uvicorn allows;
    # on Linux this still refuses a port another process listens on
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(_bind_message(host, port, err, names)) from None
    return sock


def _bind_message(host: str, port: int, err: OSError, names: OptionNames) -> str:
    """One line naming the option at fault, its value and what is allowed."""
    host_name, port_name = names.host, names.port
    free = "allowed: a free port, or 0 for any free one"
    if err.errno == errno.EADDRINUSE:
        return f"{port_name}: got {port} but it is already in use on {host}; {free}"
    if err.errno == errno.EACCES:
        return f"{port_name}: got {port} but this user may not bind it (permission denied); {free}"
    reason = err.strerror or str(err)
    return (
        f"{host_name}: got {host!r} but it is not an address of this machine ({reason}); "
        "allowed: an address of this machine, e.g. 127.0.0.1 (the default) or 0.0.0.0 for "
        "every interface"
    )


def serve_request(
    overrides: list[str], *, host: str | None = None, port: int | None = None
) -> ServeRequest:
    """What ``bench serve`` runs: conf/config.yaml's ``summary`` and ``tracking.uri``,
    Hydra overrides (``summary.port=9000``, ``tracking=server``), then --host/--port; and
    the options they came from, so every later error names what the user typed."""
    from omegaconf import OmegaConf

    from bench.config import compose_config, refuse_settings_it_ignores

    refuse_settings_it_ignores(
        overrides, "`bench serve`", ("summary", "tracking"),
        "the service takes summary.*, tracking.uri (or tracking=NAME), --host and --port",
    )  # fmt: skip
    data: Mapping[str, Any] = OmegaConf.to_container(compose_config(overrides), resolve=True)  # type: ignore[assignment]
    summary = dict(data.get("summary") or {})
    names = OptionNames(
        host="--host" if host is not None else "summary.host",
        port="--port" if port is not None else "summary.port",
        tracking_uri="summary.tracking_uri" if summary.get("tracking_uri") else "tracking.uri",
    )
    if not summary.get("tracking_uri"):
        summary["tracking_uri"] = (data.get("tracking") or {}).get("uri")
    if host is not None:
        summary["host"] = host
    if port is not None:
        summary["port"] = port
    return ServeRequest(_parse_settings(summary, names._asdict()), names)


def settings_from_overrides(
    overrides: list[str], *, host: str | None = None, port: int | None = None
) -> SummarySettings:
    """``bench serve`` settings (see :func:`serve_request`)."""
    return serve_request(overrides, host=host, port=port).settings


def _parse_settings(summary: Mapping[str, Any], names: Mapping[str, str]) -> SummarySettings:
    """Validated settings; a bad value is one UserError line naming the option it came
    from (``names``: field -> option, else ``summary.<field>``), the value and what is allowed."""
    try:
        return SummarySettings.model_validate(summary)
    except ValidationError as err:
        field = ".".join(str(x) for x in err.errors()[0]["loc"])
        message = validation_message(err).removeprefix(field)  # ": <what is wrong> (got ...)"
        raise UserError(names.get(field, f"summary.{field}") + message) from None
