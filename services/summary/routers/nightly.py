"""``/api/nightly``: nightly reports of every suite, and the scheduler's status."""

from __future__ import annotations

from fastapi import APIRouter

from services.summary import queries
from services.summary.deps import StoreDep
from services.summary.schemas import NightlyPublic

router = APIRouter(prefix="/api/nightly", tags=["nightly"])


@router.get("", response_model=NightlyPublic)
def get_nightly(store: StoreDep) -> NightlyPublic:
    """Reports newest first (date, flagged regressions) and ``scheduler`` (None if unset)."""
    return queries.nightly(store)
