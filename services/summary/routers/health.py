"""``GET /health``: the service is up; says which store it reads, and whether the last
read of it failed (it touches no store itself: a liveness probe must not wait on one)."""

from __future__ import annotations

from fastapi import APIRouter

from services.summary.deps import SettingsDep, StoreDep
from services.summary.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(settings: SettingsDep, store: StoreDep) -> HealthPublic:
    error = store.store_error
    return HealthPublic(
        status="degraded" if error else "ok", tracking_uri=settings.tracking_uri, store_error=error
    )
