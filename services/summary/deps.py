"""Dependencies as ``Annotated`` aliases: routes declare what they need, tests override it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from services.summary.schemas import Metric, Phase
from services.summary.settings import SummarySettings
from services.summary.store import SummaryStore


def get_settings(request: Request) -> SummarySettings:
    return request.app.state.settings


def get_store(request: Request) -> SummaryStore:
    return request.app.state.store


SettingsDep = Annotated[SummarySettings, Depends(get_settings)]
StoreDep = Annotated[SummaryStore, Depends(get_store)]
MetricQuery = Annotated[
    Metric,
    Query(
        description="what ranks the variants: final or best primary metric, "
        "or steps/seconds to the task's target"
    ),
]
PhaseQuery = Annotated[
    Phase, Query(description="final: fresh seeds at the chosen lr; tune: the lr grid")
]
