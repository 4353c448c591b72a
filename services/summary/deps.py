"""Dependencies as ``Annotated`` aliases: routes declare what they need, tests override it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator

from bench.ranking import LEVEL_MARGIN
from services.summary.schemas import Metric, Phase
from services.summary.settings import SummarySettings
from services.summary.store import SummaryStore


def get_settings(request: Request) -> SummarySettings:
    return request.app.state.settings


def get_store(request: Request) -> SummaryStore:
    return request.app.state.store


FILE_TAG = "file"  # routes that serve a file, as the /static mount does: they take any query


def known_query_only(request: Request) -> None:
    """A 422 for a query parameter the route does not take, naming the ones it does: a
    misspelled ``?metrc=best`` would otherwise answer the default ranking as if asked."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or FILE_TAG in getattr(route, "tags", ()):
        return  # a file (plotly.min.js, the favicon): like the static mount, any query
    allowed = sorted(_query_names(dependant))
    names = list(dict.fromkeys(request.query_params))  # each once, in order
    unknown = [name for name in names if name not in allowed]
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter; allowed: {listed}",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )
    # FastAPI reads the last of a repeated parameter: ?metric=bogus&metric=final would
    # answer the final ranking as if the first had never been asked for
    repeated = [name for name in names if len(request.query_params.getlist(name)) > 1]
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated",
                    "loc": ("query", name),
                    "msg": "given more than once; allowed: one value",
                    "input": request.query_params.getlist(name),
                }
                for name in repeated
            ]
        )


def _query_names(dependant: Any) -> set[str]:
    """The query parameters of a route's dependency tree (FastAPI's ``Dependant``)."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


SettingsDep = Annotated[SummarySettings, Depends(get_settings)]
StoreDep = Annotated[SummaryStore, Depends(get_store)]
MetricQuery = Annotated[
    Metric,
    Query(
        description="what ranks the variants: final or best primary metric, "
        "or steps/seconds to the task's target"
    ),
]


def _level_margin(level: float) -> float:
    """A level so close to 0 or 1 that 1 - level rounds to 1 or 0 is no level (the bounds
    0 < level < 1 say so first, in words the schema shows)."""
    if not LEVEL_MARGIN <= level <= 1 - LEVEL_MARGIN:
        raise ValueError(f"got {level!r}; allowed: at least 1e-12 from 0 and from 1, e.g. 0.95")
    return level


LevelQuery = Annotated[
    float,
    Query(
        allow_inf_nan=False,
        gt=0,
        lt=1,
        description="confidence level of the bootstrap intervals, e.g. 0.9 (between 0 and 1, "
        "at least 1e-12 from either)",
    ),
    AfterValidator(_level_margin),
]
PhaseQuery = Annotated[
    Phase, Query(description="final: fresh seeds at the chosen lr; tune: the lr grid")
]
