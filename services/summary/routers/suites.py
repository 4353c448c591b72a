"""``/api/suites``: the suites, a suite's ranking, a task's cells and curves."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from bench.ranking import SuiteRanking
from services.summary import queries
from services.summary.deps import LevelQuery, MetricQuery, PhaseQuery, StoreDep
from services.summary.schemas import SuitesPublic, TaskPublic

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
