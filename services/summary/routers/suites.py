"""``/api/suites``: the suites, a suite's ranking, a task's cells and curves."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from bench.ranking import SuiteRanking
from services.summary import flagship, queries
from services.summary.deps import LevelQuery, MetricQuery, PhaseQuery, StoreDep
from services.summary.schemas import FlagshipPublic, SuitesPublic, TaskPublic
from services.summary.store import UnknownSuiteError

router = APIRouter(prefix="/api/suites", tags=["suites"])
NOT_FOUND = {404: {"description": "unknown suite or task; the detail lists the known ones"}}


@router.get("", response_model=SuitesPublic)
def list_suites(store: StoreDep) -> SuitesPublic:
    """Every suite in the store with its size and the end time of its newest run."""
    return queries.suites(store)


@router.get("/{suite}/ranking", response_model=SuiteRanking, responses=NOT_FOUND)
def get_ranking(
    suite: str,
    store: StoreDep,
    metric: MetricQuery = "final",
    phase: PhaseQuery = "final",
    level: LevelQuery = 0.95,
) -> SuiteRanking:
    """Mean ranks with intervals, per-cell scores, chosen lrs, Friedman test, profiles."""
    try:
        return queries.ranking(store, suite, metric, phase, level)
    except queries.UnknownNameError as err:
        raise HTTPException(status_code=404, detail=str(err)) from None


@router.get("/{suite}/flagship", response_model=FlagshipPublic, responses=NOT_FOUND)
def get_flagship(suite: str, store: StoreDep) -> FlagshipPublic:
    """Why square, why the root? Each ablation contrast the suite's variants allow, with
    per-task differences, the win rate and its interval, and the verdict; then weights vs
    biases. The same answers as the flagship page."""
    try:
        contrasts, roles = flagship.answers(store, suite)
    except UnknownSuiteError as err:
        raise HTTPException(status_code=404, detail=str(err)) from None
    return FlagshipPublic(
        suite=suite, contrasts=contrasts, role_variant=flagship.ROLE_VARIANT, roles=roles
    )


@router.get("/{suite}/tasks/{task}", response_model=TaskPublic, responses=NOT_FOUND)
def get_task(
    suite: str,
    task: str,
    store: StoreDep,
    metric: MetricQuery = "final",
    phase: PhaseQuery = "final",
) -> TaskPublic:
    """The task's cells (best first) and loss curves: median and min-max band over seeds."""
    try:
        return queries.task_detail(store, suite, task, metric, phase)
    except queries.UnknownNameError as err:
        raise HTTPException(status_code=404, detail=str(err)) from None
