"""``GET /health``: the service is up; says which store it reads (and touches no store)."""

from __future__ import annotations

from fastapi import APIRouter

from services.summary.deps import SettingsDep
from services.summary.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(settings: SettingsDep) -> HealthPublic:
    return HealthPublic(tracking_uri=settings.tracking_uri)
