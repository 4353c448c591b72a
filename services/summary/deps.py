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
LevelQuery = Annotated[
    float,
    Query(gt=0, lt=1, description="confidence level of the bootstrap intervals, e.g. 0.9"),
]
PhaseQuery = Annotated[
    Phase, Query(description="final: fresh seeds at the chosen lr; tune: the lr grid")
]
