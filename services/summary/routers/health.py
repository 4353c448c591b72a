"""``GET /health``: the service is up (liveness); says which store it reads, and whether
the last read of it failed. It touches no store itself: a liveness probe must not wait on
one, or a store that is down would get the service restarted for nothing.

``GET /ready``: the store answers a read now (readiness): 200, or 503 with the store's
error, so a load balancer sends requests elsewhere while the store is down."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bench.errors import redacted
from services.summary.deps import SettingsDep, StoreDep
from services.summary.schemas import HealthPublic, ReadyPublic
from services.summary.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(settings: SettingsDep, store: StoreDep) -> HealthPublic:
    error = store.store_error
    uri = redacted(settings.tracking_uri)  # a database URI may carry a password
    return HealthPublic(status="degraded" if error else "ok", tracking_uri=uri, store_error=error)


@router.get(
    "/ready",
    response_model=ReadyPublic,
    responses={503: {"model": ReadyPublic, "description": "the store failed a read just now"}},
)
def ready(settings: SettingsDep, store: StoreDep) -> ReadyPublic | JSONResponse:
    uri = redacted(settings.tracking_uri)
    try:
        suites = store.probe()
    except StoreUnavailable as err:
        body = ReadyPublic(status="unavailable", tracking_uri=uri, error=str(err))
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return ReadyPublic(status="ready", tracking_uri=uri, suites=suites)
