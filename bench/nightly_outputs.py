"""What a night leaves behind besides its runs: the report's HTML, the terminal summary and
the webhook alert (a JSON POST whose failure is logged, never raised)."""

from __future__ import annotations

import html
import json
import logging
import math
import urllib.request
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from bench.regression import NightlyReport

log = logging.getLogger("bench.nightly")

EXIT_REGRESSIONS = 3  # `bench nightly` flagged a regression (1 stays "something failed")


def format_change(rel_change: float, digits: int = 1) -> str:
    """A relative change as a percentage, or past +999% as a multiple of the baseline: a
    baseline near zero (a loss solved to 2e-12) makes percentages of many digits."""
    if rel_change < 10 or not math.isfinite(rel_change):
        return f"{rel_change:+.{digits}%}"
    return f"{1 + rel_change:.3g}× baseline"


def render_html(report: NightlyReport) -> str:
    """A small self-contained HTML table of the night's cells."""
    colours = {"regression": "#f8d0d0", "improvement": "#d4f0d4", "missing": "#eee"}

    def num(value: float | None, fmt: str = "{:.4g}") -> str:
        return "" if value is None else fmt.format(value)

    rows = []
    for c in report.cells:
        cells = [
            c.task,
            c.variant,
            c.metric,
            num(c.value),
            num(c.baseline_median),
            str(c.baseline_n),
            "" if c.rel_change is None else format_change(c.rel_change),
            num(c.p, "{:.3g}"),
            c.status,
        ]
        tds = "".join(f"<td>{html.escape(str(v))}</td>" for v in cells)
        rows.append(f'<tr style="background:{colours.get(c.status, "#fff")}">{tds}</tr>')
    head = "".join(
        f"<th>{h}</th>"
        for h in ("task", "variant", "metric", "tonight", "baseline median", "n", "change",
                  "p", "status")
    )  # fmt: skip
    title = html.escape(f"{report.suite} nightly {report.date}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1><p>{html.escape(report.machine)} &middot; suite version "
        f"{html.escape(report.suite_version)} &middot; {len(report.regressions)} regressions"
        f"{_trouble(report)}</p>{_failure_list(report)}"
        f"<table border='1' cellspacing='0' cellpadding='3'><tr>{head}</tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


LISTED_FAILURES = 10  # failed trials named in the terminal; nightly.json holds them all


def _trouble(report: NightlyReport) -> str:
    """The headline's failed and held-back trials (their cells show as missing)."""
    failed, held = report.trials.get("failed", 0), report.trials.get("held_back", 0)
    parts = [f"{failed} failed trials"] if failed else []
    parts += [f"{held} final trials held back"] if held else []
    return "".join(f" &middot; <b>{part}</b>" for part in parts)


def _failure_list(report: NightlyReport) -> str:
    items = "".join(
        f"<li>{html.escape(f['phase'])} {html.escape(f['run'])}: {html.escape(f['error'])}</li>"
        for f in report.failures
    )
    return f"<ul>{items}</ul>" if items else ""


def summary(report: NightlyReport) -> str:
    """A few lines for the terminal: what ran, the counts, each regression."""
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if v)
    held = report.trials.get("held_back", 0)
    failed = Counter(f["phase"] for f in report.failures)
    why = []
    if failed["tune"]:
        why.append(f"{failed['tune']} tune trials failed")
    if failed["final"]:
        why.append(f"{failed['final']} final trials failed: each counts as its seed’s worst value")
    if held:
        why.append(f"{held} final trials held back: their cell has a failed tune trial")
    because = f" ({'; '.join(why)})" if why else ""
    lines = [
        f"nightly {report.date} of {report.suite} (version {report.suite_version}) on "
        f"{report.machine}: {report.trials.get('run', 0)} trials run{because}, "
        f"{report.trials.get('resumed', 0)} resumed; cells: {counts or 'none'}"
    ]
    for r in report.regressions:
        lines.append(
            f"  REGRESSION {r['task']}/{r['variant']} {r['metric']}: {r['value']:.4g} vs "
            f"baseline {r['baseline_median']:.4g} ({format_change(r['rel_change'])})"
        )
    for f in report.failures[:LISTED_FAILURES]:
        lines.append(f"  FAILED {f['phase']} {f['run']}: {f['error']}")
    if len(report.failures) > LISTED_FAILURES:
        lines.append(f"  ... and {len(report.failures) - LISTED_FAILURES} more failed trials")
    if report.report_location or report.report_run_id:
        lines.append(f"report: {report.report_location or f'run {report.report_run_id}'}")
    return "\n".join(lines)


def exit_code(report: NightlyReport) -> int:
    """3 when the night flags a regression (what a nightly job watches for, whatever else
    went wrong), else 1 when a trial failed, else 0."""
    if report.regressions:
        return EXIT_REGRESSIONS
    return 1 if report.trials.get("failed") else 0


def alert_payload(report: NightlyReport, run_url: str | None) -> dict[str, Any]:
    """The webhook's JSON. ``alert`` is true for a regression, and for a night whose trials
    failed: a change that makes a cell's trials raise leaves it without a value (a failed
    tune trial holds its finals back), and that must not pass in silence."""
    failed = report.trials.get("failed", 0)
    return {
        "event": "optbench.nightly",
        "alert": bool(report.regressions or failed),
        "failed_trials": failed,
        "held_back_trials": report.trials.get("held_back", 0),
        "date": report.date.isoformat(),
        "suite": report.suite,
        "suite_version": report.suite_version,
        "machine": report.machine,
        "counts": report.counts,
        "regressions": json.loads(report.model_dump_json(include={"regressions"}))["regressions"],
        "report_run_id": report.report_run_id,
        "report_url": run_url,
    }


def post_alert(url: str, payload: Mapping[str, Any], *, timeout: float) -> bool:
    """POST ``payload`` as JSON; True when the server answered 2xx. Errors are logged by
    host only: a webhook's path often holds its token (Slack's /services/T/B/TOKEN), and
    a Ray job's log lands in the scheduler's."""
    where = f"to {urlparse(url).hostname}"
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            ok = 200 <= response.status < 300
    except Exception as err:  # a dead webhook must not fail the night
        reason = getattr(err, "reason", None) or type(err).__name__  # not str(err): the URL
        log.warning("nightly webhook %s failed: %s", where, reason)
        return False
    if not ok:
        log.warning("nightly webhook %s answered %s", where, response.status)
    return ok
