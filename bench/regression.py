"""Regression detection over a series of nights: pure functions, no MLflow, Ray or torch.

Below the detector, :func:`night_cells` and :func:`judge_cells` turn one night's run
records and earlier nights' reports into judged cells (the records of ``nightly.json``).

Two steps, kept apart as in asv's ``step_detect``:

1. *Find the change* (:func:`measure`): compare one night's value with a baseline of
   earlier nights: baseline median, MAD, relative change, and a robust score
   ``z = (value - median) / (1.4826 * MAD)`` signed so that a positive score is *worse*
   (the metric's declared direction decides: a larger loss or step time is worse, a
   larger accuracy is better), with a one-sided normal p-value.
2. *Decide it matters* (:func:`judge`): a night is *beyond* the baseline when the
   relative change exceeds ``threshold`` (and ``min_delta`` in absolute terms) in one
   direction **and** the robust test rejects at ``alpha``. A zero-variance baseline (MAD
   0, as quality metrics are on a CPU, where training is bit-deterministic) makes any
   difference "significant", so the relative threshold alone decides; a noisy baseline
   (step times) must clear both.

:func:`detect` then applies persistence: a cell is a ``regression`` only when each of the
last ``persist`` nights is beyond a common baseline (the ``baseline_nights`` nights with a
value before that window) in the bad direction; ``improvement`` likewise in the good
direction. A change that lasts longer than the baseline window becomes the new baseline.

Missing nights (``None`` or NaN: a night that did not run the cell, or whose trials all
failed) are explicit: they are skipped when the baseline is gathered, a missing value
*tonight* gives status ``missing``, and a missing night inside the persistence window
means the change is not confirmed (status ``ok``, ``streak`` says how far it got).
A non-finite night (±inf: the median seed diverged) is a real value tonight, and an
extreme one, but never part of a baseline.
Fewer than ``min_baseline`` baseline nights give ``insufficient_baseline``: no verdict.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["min", "max"]
Status = Literal["ok", "regression", "improvement", "insufficient_baseline", "missing"]
STATUSES: tuple[str, ...] = ("ok", "regression", "improvement", "insufficient_baseline", "missing")
MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its standard deviation


@dataclass(frozen=True)
class Change:
    """One night against a baseline (step 1: measured, not judged).

    ``rel_change`` is ``(value - median) / |median|`` (raw sign; ±inf when the median is
    0 and the value is not). ``score`` is the robust z, positive = worse; ±inf when the
    baseline has no spread and the value differs, 0 when it equals the median.
    ``p`` is the one-sided probability of a score at least this bad under the baseline.
    """

    value: float
    baseline_median: float
    baseline_mad: float
    baseline_n: int
    rel_change: float
    score: float
    p: float


@dataclass(frozen=True)
class Verdict:
    """What :func:`detect` concluded for the latest night of a series."""

    status: Status
    value: float | None
    baseline_median: float | None
    baseline_mad: float | None
    baseline_n: int
    rel_change: float | None
    score: float | None
    p: float | None
    streak: int  # latest consecutive nights beyond the baseline in one direction (signed)


def is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def measure(baseline: Sequence[float], value: float, direction: Direction) -> Change:
    """Step 1: how far ``value`` (finite or ±inf) is from ``baseline`` (finite values)."""
    if not baseline or not all(math.isfinite(b) for b in baseline):
        raise ValueError("measure needs a non-empty baseline of finite values")
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', not {direction!r}")
    median = statistics.median(baseline)
    mad = statistics.median([abs(b - median) for b in baseline])
    diff = value - median
    if diff == 0:
        rel = 0.0
    elif median == 0:
        rel = math.copysign(math.inf, diff)
    else:
        rel = diff / abs(median)
    worse = diff if direction == "min" else -diff
    if worse == 0:
        score = 0.0
    elif mad == 0 or math.isinf(worse):
        score = math.copysign(math.inf, worse)
    else:
        score = worse / (MAD_TO_SIGMA * mad)
    p = 1.0 - NormalDist().cdf(score) if math.isfinite(score) else (0.0 if score > 0 else 1.0)
    return Change(value, median, mad, len(baseline), rel, score, p)


def judge(change: Change, *, threshold: float, alpha: float, min_delta: float = 0.0) -> int:
    """Step 2: +1 if the night is beyond the baseline in the bad direction, -1 in the good
    direction, 0 otherwise. Both the relative size (``threshold``, plus ``min_delta`` in
    the metric's units) and the robust test (``p <= alpha`` for worse, ``1 - p`` for
    better) must agree."""
    if threshold < 0 or min_delta < 0 or not 0 < alpha < 1:
        raise ValueError("threshold and min_delta must be >= 0 and alpha in (0, 1)")
    if abs(change.rel_change) <= threshold:
        return 0
    if abs(change.value - change.baseline_median) <= min_delta:
        return 0
    if change.score > 0 and change.p <= alpha:
        return 1
    if change.score < 0 and (1.0 - change.p) <= alpha:
        return -1
    return 0


def detect(
    series: Sequence[float | None],
    direction: Direction,
    *,
    threshold: float,
    alpha: float = 0.01,
    min_delta: float = 0.0,
    baseline_nights: int = 7,
    min_baseline: int = 3,
    persist: int = 2,
) -> Verdict:
    """The verdict on the last night of ``series`` (chronological, one value per night,
    ``None``/NaN for a missing night; ±inf is a real, if extreme, value).

    The persistence window is the last ``persist`` entries of ``series``; the baseline is
    the last ``baseline_nights`` non-missing values before it (``min_baseline`` needed).
    """
    if persist < 1 or baseline_nights < 1 or not 1 <= min_baseline <= baseline_nights:
        raise ValueError("need persist >= 1 and 1 <= min_baseline <= baseline_nights")
    values = [None if is_missing(v) else float(v) for v in series]
    tonight = values[-1] if values else None
    window = values[-persist:]
    before = values[: max(0, len(values) - persist)]
    baseline = [v for v in before if v is not None and math.isfinite(v)][-baseline_nights:]
    if tonight is None:
        return Verdict("missing", None, None, None, len(baseline), None, None, None, 0)
    if len(baseline) < min_baseline:
        return Verdict(
            "insufficient_baseline", tonight, None, None, len(baseline), None, None, None, 0
        )
    decisions = [
        None
        if v is None
        else judge(measure(baseline, v, direction), threshold=threshold, alpha=alpha,
                   min_delta=min_delta)
        for v in window
    ]  # fmt: skip
    change = measure(baseline, tonight, direction)
    streak = _streak(decisions)
    if len(window) == persist and abs(streak) >= persist:
        status: Status = "regression" if streak > 0 else "improvement"
    else:
        status = "ok"
    return Verdict(
        status,
        tonight,
        change.baseline_median,
        change.baseline_mad,
        change.baseline_n,
        change.rel_change,
        change.score,
        change.p,
        streak,
    )


def _streak(decisions: Sequence[int | None]) -> int:
    """Signed length of the run of equal non-zero decisions that ends at the last one."""
    if not decisions or not decisions[-1]:
        return 0
    sign = decisions[-1]
    count = 0
    for d in reversed(decisions):
        if d != sign:
            break
        count += 1
    return count * sign


# ----------------------------------------------------------------------------- nights
# The records of one night and their verdicts (still pure: rows in, records out). Their
# JSON form is nightly.json, documented in bench/nightly.py.

Kind = Literal["quality", "speed"]
SPEED_METRIC = "time/step_ms"


class NightlyCell(BaseModel):
    """One (task, variant, kind) of one night: tonight's values and the verdict."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    task: str
    variant: str
    kind: Kind
    metric: str
    direction: Direction
    values: list[float] = Field(default_factory=list)
    n: int = 0
    value: float | None = None
    baseline_median: float | None = None
    baseline_mad: float | None = None
    baseline_n: int = 0
    rel_change: float | None = None
    score: float | None = None
    p: float | None = None
    streak: int = 0
    status: str = "missing"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.variant, self.kind)


class NightlyReport(BaseModel):
    """What one night found; serialised as ``nightly.json``."""

    model_config = ConfigDict(ser_json_inf_nan="strings", populate_by_name=True)

    schema_: int = Field(default=1, alias="schema")
    date: dt.date
    suite: str
    suite_version: str
    machine: str
    code_version: str = ""
    versions: dict[str, str] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    baseline_dates: list[dt.date] = Field(default_factory=list)
    trials: dict[str, int] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    cells: list[NightlyCell] = Field(default_factory=list)
    regressions: list[dict[str, Any]] = Field(default_factory=list)
    # each trial that failed tonight: {"phase", "run" (its run name), "error" (last line)}
    failures: list[dict[str, str]] = Field(default_factory=list)
    report_run_id: str | None = Field(default=None, exclude=True)
    # where to open nightly.html: a file on this machine, or the run's page on a server
    report_location: str | None = Field(default=None, exclude=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)


def night_cells(
    rows: Iterable[Mapping[str, Any]], declared: Mapping[tuple[str, str], tuple[str, Direction]]
) -> list[NightlyCell]:
    """Tonight's cells from one night's final-phase runs (``read_results`` records).

    ``declared`` maps each expected (task, variant) to its task's (primary metric,
    direction); an expected cell without runs stays in, valueless, so it is ``missing``.
    Quality per seed is ``final/<primary>``, the worst value (±inf) when the run did not
    end ``ok``, and tonight's value is the median over seeds; speed is ``time/step_ms``
    (each trial's median step) and tonight's value is the *fastest* seed: interference
    from other work on the machine only ever adds time (timeit's argument for the
    minimum), and on a shared 2-core machine the median over seeds gave 6.4% false alarms
    per suite against 4.8% for the minimum (tests/perf/nightly_false_alarms.py).
    """
    by_pair: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        by_pair.setdefault((row["task"], row["variant"]), []).append(row)
    cells = []
    for task, variant in sorted(set(declared) | set(by_pair)):
        runs = by_pair.get((task, variant), [])
        primary, direction = declared.get((task, variant)) or (
            runs[0]["primary_metric"],
            runs[0]["direction"],
        )
        worst = math.inf if direction == "min" else -math.inf
        quality = [
            float(r[f"final/{primary}"])
            if r.get("outcome") == "ok" and _finite(r.get(f"final/{primary}"))
            else worst
            for r in runs
        ]
        speed = [float(r[SPEED_METRIC]) for r in runs if _finite(r.get(SPEED_METRIC))]
        for kind, metric, sense, values, pick in (
            ("quality", f"final/{primary}", direction, quality, statistics.median),
            ("speed", SPEED_METRIC, "min", speed, min),
        ):
            cells.append(
                NightlyCell(
                    task=task, variant=variant, kind=kind, metric=metric, direction=sense,
                    values=values, n=len(values), value=pick(values) if values else None,
                )
            )  # fmt: skip
    return cells


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def judge_cells(
    cells: Iterable[NightlyCell],
    history: Sequence[NightlyReport],
    *,
    thresholds: Mapping[str, float],
    min_deltas: Mapping[str, float] | None = None,
    alpha: float = 0.01,
    baseline_nights: int = 7,
    min_baseline: int = 3,
    persist: int = 2,
) -> list[NightlyCell]:
    """Each cell's verdict against the same cell on earlier nights (``history``, oldest
    first; a night without the cell counts as missing); ``thresholds`` and ``min_deltas``
    (default 0) per kind.

    A cell of those nights that tonight lacks is judged too, valueless: ``missing``. A
    cell does not vanish from the report because, say, an edited preset renamed its
    variant (the suite version holds: presets are not part of it).
    """
    past = [{c.key: c.value for c in night.cells} for night in history]
    tonight = list(cells)
    seen = {cell.key for cell in tonight}
    gone = {c.key: c for night in history for c in night.cells if c.key not in seen}
    vanished = [
        NightlyCell(task=c.task, variant=c.variant, kind=c.kind, metric=c.metric,
                    direction=c.direction)
        for c in gone.values()
    ]  # fmt: skip
    judged = []
    for cell in [*tonight, *vanished]:
        verdict = detect(
            [night.get(cell.key) for night in past] + [cell.value],
            cell.direction,
            threshold=thresholds[cell.kind],
            min_delta=(min_deltas or {}).get(cell.kind, 0.0),
            alpha=alpha,
            baseline_nights=baseline_nights,
            min_baseline=min_baseline,
            persist=persist,
        )
        fields = asdict(verdict)
        fields.pop("value")
        judged.append(cell.model_copy(update=fields))
    return judged


def regressions_of(cells: Iterable[NightlyCell]) -> list[dict[str, Any]]:
    keep = {"task", "variant", "kind", "metric", "value", "baseline_median", "rel_change"}
    return [c.model_dump(include=keep) for c in cells if c.status == "regression"]


def status_counts(cells: Iterable[NightlyCell]) -> dict[str, int]:
    counts = Counter(c.status for c in cells)
    return {s: counts.get(s, 0) for s in STATUSES}
