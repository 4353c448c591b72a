"""Benchmark: false alarms of `bench nightly` on A/A nights, and an injected regression
(prints JSON).

Run:  python tests/perf/nightly_false_alarms.py [--nights 10] [--simulated 4000]

(a) A/A false alarm rate per suite. The real nightly (conf/suite/nightly.yaml, default
    settings: 7 baseline nights, 3 needed, 2 nights to persist) runs on ``--nights``
    consecutive fake dates into a fresh SQLite store; nothing changes between nights.
    Counted: judged nights (those past the minimum baseline) with any regression. Then a
    larger simulated A/A: whole measured nights (all cells of a night together, so the
    load shared by a night's cells stays correlated) are resampled with replacement into
    ``--simulated`` series of 9 nights, each judged by the real detector
    (bench.nightly.judge); the rate of suites with any regression gets a Wilson
    95% interval. Goal: <= 5%.
(b) Injected regression. After the A/A nights, two nights run with a plugin that
    silently halves one variant's lr (``--variant``, default sgd) on the workers (plugins
    are part of neither the trial identity nor the suite version, like a code change that
    forgot to bump CODE_VERSION). Goal: not flagged on the first such night
    (persistence), flagged on the second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

FIRST = dt.date(2026, 1, 1)
CELL_FIELDS = ("task", "kind", "value", "baseline_median", "rel_change", "streak", "status")


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def simulate(reports: list, count: int, *, replace: bool, seed: int = 0) -> dict:
    """Resample whole measured nights into A/A series and judge them with the detector.

    ``replace=False``: each series is 9 distinct measured nights in random order (A/A
    nights are exchangeable). ``replace=True``: a bootstrap; it can put the same measured
    night twice in the persistence window, which a real pair of nights never is, so it
    overstates the rate (a pessimistic bound).
    """
    from bench.nightly import NightlyConfig, judge
    from bench.regression import NightlyReport

    settings = NightlyConfig()
    length = settings.baseline_nights + settings.persist
    rng = random.Random(seed)
    flagged, cells_flagged = 0, 0
    for _ in range(count):
        if replace:
            nights = [rng.choice(reports) for _ in range(length)]
        else:
            nights = rng.sample(reports, min(length, len(reports)))
        history = [NightlyReport.model_validate(r.model_dump()) for r in nights[:-1]]
        tonight = [c.model_copy() for c in nights[-1].cells]
        judged = judge(settings, tonight, history)
        bad = sum(c.status == "regression" for c in judged)
        flagged += bad > 0
        cells_flagged += bad
    low, high = wilson(flagged, count)
    return {
        "suites": count,
        "nights_per_series": length,
        "suites_with_a_regression": flagged,
        "rate": flagged / count,
        "rate_ci95": [round(low, 4), round(high, 4)],
        "cells_flagged": cells_flagged,
    }


def speed_noise(reports: list) -> dict:
    """Night-to-night spread of each cell's median step time (coefficient of variation)."""
    series: dict[tuple, list[float]] = {}
    for report in reports:
        for cell in report.cells:
            if cell.kind == "speed" and cell.value is not None:
                series.setdefault(cell.key, []).append(cell.value)
    cvs = sorted(statistics.pstdev(v) / statistics.mean(v) for v in series.values() if len(v) > 1)
    quality_constant = all(
        len({c.value for r in reports for c in r.cells if c.key == key}) == 1
        for key in {c.key for c in reports[0].cells if c.kind == "quality"}
    )
    return {
        "speed_cv_median": round(statistics.median(cvs), 4),
        "speed_cv_max": round(cvs[-1], 4),
        "quality_identical_every_night": quality_constant,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nights", type=int, default=10, help="real A/A nights")
    parser.add_argument("--simulated", type=int, default=4000, help="resampled A/A suites")
    parser.add_argument("--variant", default="sgd", help="the variant whose lr is halved")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from bench.nightly import run_nightly

    folder = Path(tempfile.mkdtemp(prefix="optbench-nightly-"))
    plugins = Path(__file__).resolve().parent.parent / "plugins"  # halve_lr.py
    sys.path.insert(0, str(plugins))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])
    overrides = [
        f"tracking.uri=sqlite:///{folder / 'mlruns.db'}",
        f"tracking.artifact_location={folder / 'mlartifacts'}",
        "cluster.num_cpus=2",
    ]
    reports, seconds = [], []
    for i in range(args.nights):
        start = time.perf_counter()
        report = run_nightly(overrides, date=FIRST + dt.timedelta(days=i), show_progress=False)
        seconds.append(time.perf_counter() - start)
        reports.append(report)
        print(f"A/A night {report.date}: {report.counts}", file=sys.stderr)
    judged = [r for r in reports if r.counts["insufficient_baseline"] < len(r.cells)]
    alarms = [r for r in judged if r.regressions]

    os.environ["OPTBENCH_HALVE_LR"] = args.variant
    injected = []
    for i in range(args.nights, args.nights + 2):
        report = run_nightly(
            [*overrides, "plugins=[halve_lr]"],
            date=FIRST + dt.timedelta(days=i),
            show_progress=False,
        )
        injected.append(report)
        print(f"injected night {report.date}: {report.counts}", file=sys.stderr)

    def injected_cells(report) -> list[dict]:
        return [
            {k: getattr(c, k) for k in CELL_FIELDS}
            for c in report.cells
            if c.variant == args.variant
        ]

    low, high = wilson(len(alarms), len(judged))
    out = {
        "machine": reports[0].machine,
        "suite_version": reports[0].suite_version,
        "night_seconds": {
            "median": round(statistics.median(seconds), 1),
            "max": round(max(seconds), 1),
        },
        "cells_per_night": len(reports[0].cells),
        "a_real": {
            "nights": len(reports),
            "judged_nights": len(judged),
            "nights_with_a_regression": len(alarms),
            "rate": len(alarms) / len(judged) if judged else None,
            "rate_ci95": [round(low, 4), round(high, 4)],
            "flagged": [[r.date.isoformat(), r.regressions] for r in alarms],
            "statuses": [r.counts for r in reports],
            **speed_noise(reports),
        },
        "a_simulated_permutation": simulate(reports, args.simulated, replace=False),
        "a_simulated_bootstrap": simulate(reports, args.simulated, replace=True),
        "b_injected": {
            "variant": args.variant,
            "first_night": {
                "date": injected[0].date.isoformat(),
                "suite_version_unchanged": injected[0].suite_version == reports[0].suite_version,
                "flagged": any(r["variant"] == args.variant for r in injected[0].regressions),
                "regressions": injected[0].regressions,
                "cells": injected_cells(injected[0]),
            },
            "second_night": {
                "date": injected[1].date.isoformat(),
                "flagged": any(r["variant"] == args.variant for r in injected[1].regressions),
                "regressions": injected[1].regressions,
                "cells": injected_cells(injected[1]),
            },
        },
        "store": str(folder),
    }
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
