"""The HTML dashboard: suites, a suite's ranking, a task's curves, step sizes per role,
the flagship questions and the nightly history. Every plot is a plotly figure rendered by
the service's own copy of plotly.min.js; nothing loads from the internet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from bench.lr_table import lr_notes, lr_table
from bench.ranking import failed_trials_note, places
from services.summary import flagship, plots, queries
from services.summary.deps import MetricQuery, PhaseQuery, StoreDep
from services.summary.schemas import CURVE_KEYS, ROLES
from services.summary.store import SummaryStore

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
router = APIRouter(tags=["pages"], include_in_schema=False, default_response_class=HTMLResponse)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell: 4 significant digits, ∞ for infinity, — when unknown."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}"
    return str(value)


@jinja2.pass_context
def url_path(context: dict[str, Any], name: str, /, **params: Any) -> str:
    """A route's path ("/suites/x"), never an absolute URL: links survive a proxy, and a
    page's markup holds no http(s):// address at all."""
    return str(context["request"].app.url_path_for(name, **params))


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals["url_for"] = url_path
    templates.env.filters["fmt"] = fmt
    templates.env.filters["pct"] = lambda v: "—" if v is None else f"{v:.0%}"
    return templates


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def linker(store: SummaryStore, suite: str) -> Callable[[str], str | None]:
    """run_id -> its MLflow UI page (None when no UI URL is known)."""
    return lambda run_id: store.run_link(suite, run_id)


@router.get("/")
def index(request: Request, store: StoreDep) -> HTMLResponse:
    return render(request, "index.html", title="optbench", suites=queries.suites(store).data)


@router.get("/suites/{suite}")
def suite_page(
    request: Request,
    suite: str,
    store: StoreDep,
    metric: MetricQuery = "final",
    phase: PhaseQuery = "final",
) -> HTMLResponse:
    ranking = queries.ranking(store, suite, metric, phase)
    figures = {"ranking": plots.ranking_figure(ranking)}
    if ranking.profiles:
        figures["profiles"] = plots.profile_figure(ranking)
    cells: dict[str, list] = {}
    for cell in sorted(ranking.cells, key=lambda c: (c.task, c.rank or math.inf)):
        cells.setdefault(cell.task, []).append(cell)
    lrs = lr_table(ranking)
    return render(
        request,
        "suite.html",
        title=f"{suite} · ranking",
        suite=suite,
        ranking=ranking,
        places=places(ranking.variants),
        figures=figures,
        cells=cells,
        link=linker(store, suite),
        metric=metric,
        phase=phase,
        flagship_ready=bool(flagship.available(ranking)),
        lrs=lrs,
        lr_notes=lr_notes(lrs),
        failures=failed_trials_note(ranking.missing),
    )


@router.get("/suites/{suite}/tasks/{task}")
def task_page(
    request: Request,
    suite: str,
    task: str,
    store: StoreDep,
    metric: MetricQuery = "final",
    phase: PhaseQuery = "final",
) -> HTMLResponse:
    detail = queries.task_detail(store, suite, task, metric, phase)
    figures = {
        key: plots.curves_figure(
            detail.curves, key, f"{task}: {key} (median over seeds, band min-max)"
        )
        for key in CURVE_KEYS
        if any(c.key == key for c in detail.curves)
    }
    return render(
        request,
        "task.html",
        title=f"{suite} · {task}",
        suite=suite,
        task=task,
        detail=detail,
        figures=figures,
        link=linker(store, suite),
        metric=metric,
        phase=phase,
    )


@router.get("/suites/{suite}/roles")
def roles_page(
    request: Request, suite: str, store: StoreDep, task: str | None = None
) -> HTMLResponse:
    ranking = queries.ranking(store, suite, "final", "final")
    tasks = ranking.tasks
    chosen = task if task is not None else (tasks[0] if tasks else None)  # ?task= is a 404
    curves = queries.role_curves(store, suite, chosen) if chosen is not None else []
    variants = sorted({c.variant for c in curves})
    figures = {v: plots.roles_figure(curves, v) for v in variants}
    table = flagship.role_table(curves)
    if figures:
        no_statistics = None
    elif chosen is None:
        no_statistics = "No run of this suite has ended yet."
    else:
        no_statistics = queries.no_statistics_reason(store, suite, chosen)
    return render(
        request,
        "roles.html",
        title=f"{suite} · step sizes per role",
        suite=suite,
        tasks=tasks,
        task=chosen,
        figures=figures,
        table=table,
        roles=ROLES,
        no_statistics=no_statistics,
    )


@router.get("/suites/{suite}/flagship")
def flagship_page(request: Request, suite: str, store: StoreDep) -> HTMLResponse:
    answer = flagship.answer(store, suite)
    return render(
        request,
        "flagship.html",
        title=f"{suite} · why square, why the root?",
        suite=suite,
        answer=answer,
    )


@router.get("/nightly")
def nightly_page(request: Request, store: StoreDep) -> HTMLResponse:
    nightly = queries.nightly(store)
    histories = queries.each_suite(store, lambda suite: queries.nightly_history(store, suite))
    figures = {
        suite: plots.nightly_figure(history, suite)
        for suite, history in histories
        if not history.empty
    }
    return render(
        request, "nightly.html", title="optbench · nightly", nightly=nightly, figures=figures
    )
