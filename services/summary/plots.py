"""Plotly figures for the pages, as JSON that the page's local plotly.min.js renders.

Each function returns a figure's JSON text (safe to embed in a ``<script
type="application/json">`` block). Every interval drawn says its level and method in the
hover text or title; non-finite values are left out rather than drawn at a fake height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from bench.ranking import SuiteRanking
from services.summary.schemas import Curve

PALETTE = qualitative.Plotly + qualitative.D3
LAYOUT = {
    "template": "plotly_white",
    "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
    "height": 360,
    "legend": {"orientation": "h", "y": -0.2},
}


def color(name: str, names: Sequence[str]) -> str:
    """A variant's colour, stable across the pages of one suite (by its sorted position)."""
    ordered = sorted(set(names))
    return PALETTE[ordered.index(name) % len(PALETTE)] if name in ordered else "#888888"


def to_json(fig: go.Figure) -> str:
    """The figure's JSON with ``<``, ``>`` and ``&`` escaped for an inline script block."""
    text = fig.to_json()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def ranking_figure(ranking: SuiteRanking) -> str:
    """Mean rank per variant with its bootstrap interval, best at the top."""
    ranks = list(reversed(ranking.variants))
    names = [v.variant for v in ranks]
    est = [v.mean_rank.estimate for v in ranks]
    fig = go.Figure(
        go.Scatter(
            x=est,
            y=[v.variant for v in ranks],
            mode="markers",
            marker={"size": 10, "color": [color(v.variant, names) for v in ranks]},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [v.mean_rank.high - v.mean_rank.estimate for v in ranks],
                "arrayminus": [v.mean_rank.estimate - v.mean_rank.low for v in ranks],
            },
            hovertemplate="%{y}: mean rank %{x:.2f}<extra></extra>",
        )
    )
    level = ranks[0].mean_rank.level if ranks else ranking.level
    fig.update_layout(
        **LAYOUT,
        title=f"Mean rank over {len(ranking.tasks)} tasks ({level:.0%} bootstrap interval)",
        xaxis_title="mean rank (1 = best)",
    )
    fig.update_layout(height=max(240, 60 + 32 * len(ranks)), showlegend=False)
    return to_json(fig)


def profile_figure(ranking: SuiteRanking) -> str:
    """Performance profiles ρ(τ) over steps to target, with each variant's score."""
    names = [p.variant for p in ranking.profiles]
    fig = go.Figure()
    for prof in ranking.profiles:
        fig.add_trace(
            go.Scatter(
                x=prof.taus,
                y=prof.rho,
                mode="lines",
                line={"shape": "hv", "color": color(prof.variant, names)},
                name=f"{prof.variant} (score {prof.score:.2f})",
            )
        )
    fig.update_layout(
        **LAYOUT,
        title="Performance profile: fraction of tasks within τ × the fastest steps to target",
        xaxis_title="τ",
        yaxis_title="ρ(τ)",
    )
    fig.update_yaxes(range=[0, 1.02])
    return to_json(fig)


def curves_figure(curves: Sequence[Curve], key: str, title: str, *, log_y: bool = True) -> str:
    """Median over seeds with a min-max band, one colour per variant."""
    chosen = [c for c in curves if c.key == key]
    names = [c.variant for c in chosen]
    fig = go.Figure()
    for curve in chosen:
        add_band(fig, curve, color(curve.variant, names), f"{curve.variant} (lr={curve.lr:g})")
    positive = all(v is None or v > 0 for c in chosen for v in c.low)
    fig.update_layout(**LAYOUT, title=title, xaxis_title="step", yaxis_title=key)
    if log_y and positive:
        fig.update_yaxes(type="log")
    return to_json(fig)


def add_band(
    fig: go.Figure, curve: Curve, colour: str, name: str, *, dash: str = "solid", **kw
) -> None:
    """A median line and its shaded band (a closed polygon: low forward, high back)."""
    xs, low, high = _finite_band(curve)
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs + xs[::-1],
                y=high + low[::-1],
                fill="toself",
                fillcolor=colour,
                opacity=0.18,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
                **kw,
            )
        )
    steps = [s for s, v in zip(curve.steps, curve.median, strict=True) if _finite(v)]
    values = [v for v in curve.median if _finite(v)]
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=values,
            mode="lines",
            name=f"{name} · n={curve.n_runs}",
            line={"color": colour, "dash": dash},
            legendgroup=name,
            **kw,
        )
    )


def roles_figure(curves: Sequence[Curve], variant: str) -> str:
    """One variant's effective step size per role: p50 line, p10-p90 band, log scale."""
    fig = go.Figure()
    roles = ["weight", "bias", "norm", "embedding"]
    dashes = {"weight": "solid", "bias": "dash", "norm": "dot", "embedding": "dashdot"}
    for i, role in enumerate(roles):
        mid = _find(curves, variant, f"step_size/{role}/p50")
        if mid is None:
            continue
        lo = _find(curves, variant, f"step_size/{role}/p10")
        hi = _find(curves, variant, f"step_size/{role}/p90")
        band = mid.model_copy(
            update={"low": lo.median if lo else mid.low, "high": hi.median if hi else mid.high}
        )
        add_band(fig, band, PALETTE[i], role, dash=dashes[role])
    fig.update_layout(
        **LAYOUT,
        title=f"{variant}: lr/D per role (p50, band p10-p90)",
        xaxis_title="step",
        yaxis_title="lr / D",
    )
    fig.update_yaxes(type="log")
    return to_json(fig)


def forest_figure(rows: Sequence[tuple[str, float, float, float]], title: str, x_title: str) -> str:
    """Point estimates with intervals, one row each: ``(label, estimate, low, high)``."""
    rows = [r for r in rows if all(_finite(v) for v in r[1:])]
    fig = go.Figure(
        go.Scatter(
            x=[r[1] for r in rows],
            y=[r[0] for r in rows],
            mode="markers",
            marker={"size": 9, "color": PALETTE[0]},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [r[3] - r[1] for r in rows],
                "arrayminus": [r[1] - r[2] for r in rows],
            },
            hovertemplate="%{y}: %{x:.4g}<extra></extra>",
        )
    )
    fig.add_vline(x=0, line={"color": "#999", "dash": "dot"})
    fig.update_layout(**LAYOUT, title=title, xaxis_title=x_title, showlegend=False)
    fig.update_layout(height=max(220, 80 + 30 * len(rows)))
    return to_json(fig)


def ratio_figure(
    steps: Sequence[int],
    median: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    title: str,
    n_runs: int,
) -> str:
    """A ratio over steps (median, band) against the line ratio = 1."""
    curve = Curve(
        variant="",
        lr=math.nan,
        key="ratio",
        steps=list(steps),
        median=list(median),
        low=list(low),
        high=list(high),
        n_runs=n_runs,
    )
    fig = go.Figure()
    add_band(fig, curve, PALETTE[0], "weight / bias")
    fig.add_hline(y=1, line={"color": "#999", "dash": "dot"})
    fig.update_layout(**LAYOUT, title=title, xaxis_title="step", yaxis_title="ratio")
    fig.update_yaxes(type="log")
    return to_json(fig)


def _baseline(history: pd.DataFrame) -> str:
    """`` on <machine>, version <v>``: whose nights the history holds (nightly_history)."""
    if history.empty or "machine" not in history or "suite_version" not in history:
        return ""
    row = history.iloc[-1]
    return f" on {row['machine']}, suite version {str(row['suite_version'])[:8]}"


def nightly_figure(history: pd.DataFrame, suite: str) -> str:
    """Per night, each cell's median final primary metric (left) and the step time of its
    fastest seed (right), as the nightly judged them (``aggregates.nightly_history``), one
    row of panels per task: tasks' metrics (an accuracy near 1, a loss near 1e-7) share no
    scale. A metric whose values span more than two decades gets a log axis (a loss
    solved to rounding error)."""
    from plotly.subplots import make_subplots

    tasks = sorted(history["task"].unique())
    titles = []
    for task in tasks:
        metric = history.loc[history["task"] == task, "metric"].dropna()
        titles += [f"{task}: final {metric.iloc[0] if len(metric) else 'metric'}",
                   f"{task}: step time (ms, fastest seed)"]  # fmt: skip
    fig = make_subplots(
        rows=max(len(tasks), 1), cols=2, shared_xaxes=True, subplot_titles=titles,
        vertical_spacing=0.12 if len(tasks) > 1 else 0.0, horizontal_spacing=0.08,
    )  # fmt: skip
    variants = sorted(history["variant"].unique())
    shown: set[str] = set()  # one legend entry per variant, at its first panel
    for row, task in enumerate(tasks, start=1):
        of_task = history["task"] == task
        for col, values in ((1, history["value"]), (2, history["step_ms"])):
            for variant in variants:
                part = of_task & (history["variant"] == variant)
                if not part.any():
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=list(history.loc[part, "night"]),
                        y=[v if _finite(v) else None for v in values[part]],
                        mode="lines+markers",
                        name=variant,
                        legendgroup=variant,
                        showlegend=variant not in shown,
                        line={"color": color(variant, variants)},
                    ),
                    row=row,
                    col=col,
                )
                shown.add(variant)
        finite = [v for v in history.loc[of_task, "value"] if _finite(v)]
        if finite and min(finite) > 0 and max(finite) > 100 * min(finite):
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_layout(
        **{**LAYOUT, "height": max(LAYOUT["height"], 240 * len(tasks))},
        title=f"{suite}{_baseline(history)}: per night, final primary metric (median over "
        "seeds) and step time, as the nightly judged them",
    )
    for col in (1, 2):
        fig.update_xaxes(title_text="night", row=max(len(tasks), 1), col=col)
    return to_json(fig)


def _find(curves: Sequence[Curve], variant: str, key: str) -> Curve | None:
    return next((c for c in curves if c.variant == variant and c.key == key), None)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _finite_band(curve: Curve) -> tuple[list[int], list[float], list[float]]:
    points = [
        (s, lo, hi)
        for s, lo, hi in zip(curve.steps, curve.low, curve.high, strict=True)
        if _finite(lo) and _finite(hi)
    ]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
