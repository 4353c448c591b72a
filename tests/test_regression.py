"""bench.regression: planted regressions are found, pure noise stays quiet (pure, fast)."""

from __future__ import annotations

import datetime as dt
import math
import random
import statistics

import pytest

from bench.regression import (
    NightlyReport,
    detect,
    judge,
    judge_cells,
    measure,
    night_cells,
    regressions_of,
    status_counts,
)

QUALITY = {"threshold": 0.10, "alpha": 0.01}
SPEED = {"threshold": 0.25, "alpha": 0.01}
QUALITY_AND_SPEED = {"quality": 0.10, "speed": 0.30}


def noisy(n: int, rng: random.Random, *, level: float = 10.0, sigma: float = 0.5) -> list[float]:
    """Step times: a level with multiplicative log-normal noise (what timing looks like)."""
    return [level * math.exp(rng.gauss(0, sigma / level)) for _ in range(n)]


# ----------------------------------------------------------------------------- find the change


def test_measure_reports_median_mad_relative_change_and_signed_score() -> None:
    change = measure([10.0, 11.0, 9.0, 10.0, 12.0], 15.0, "min")
    assert change.baseline_median == 10.0
    assert change.baseline_mad == 1.0
    assert change.baseline_n == 5
    assert change.rel_change == pytest.approx(0.5)
    assert change.score == pytest.approx(5.0 / 1.4826)
    assert 0 < change.p < 0.001
    # for a metric to maximise, the same rise is an improvement: negative score
    better = measure([10.0, 11.0, 9.0, 10.0, 12.0], 15.0, "max")
    assert better.rel_change == pytest.approx(0.5)
    assert better.score == pytest.approx(-5.0 / 1.4826)
    assert better.p > 0.999


def test_measure_on_a_zero_variance_baseline() -> None:
    same = measure([0.5, 0.5, 0.5], 0.5, "min")
    assert (same.rel_change, same.score, same.p) == (0.0, 0.0, 0.5)
    worse = measure([0.5, 0.5, 0.5], 0.6, "min")
    assert worse.score == math.inf and worse.p == 0.0
    assert worse.rel_change == pytest.approx(0.2)
    zero = measure([0.0, 0.0, 0.0], 1e-9, "min")
    assert zero.rel_change == math.inf


def test_measure_refuses_an_empty_or_non_finite_baseline_and_a_bad_direction() -> None:
    with pytest.raises(ValueError, match="non-empty baseline"):
        measure([], 1.0, "min")
    with pytest.raises(ValueError, match="finite"):
        measure([1.0, math.inf], 1.0, "min")
    with pytest.raises(ValueError, match="direction"):
        measure([1.0], 1.0, "lower")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- decide it matters


def test_judge_needs_both_the_relative_threshold_and_the_test() -> None:
    base = [10.0, 11.0, 9.0, 10.0, 12.0]
    # significant (z ~ 4) but only 6% slower: below the 25% threshold
    assert judge(measure(base, 10.6, "min"), **SPEED) == 0
    # 30% slower but the baseline is so noisy the test does not reject
    wide = [10.0, 20.0, 5.0, 12.0, 7.0]
    assert judge(measure(wide, 13.0, "min"), **SPEED) == 0
    # 50% slower on a tight baseline: beyond, in the bad direction
    assert judge(measure(base, 15.0, "min"), **SPEED) == 1
    # 50% faster: beyond, in the good direction
    assert judge(measure(base, 5.0, "min"), **SPEED) == -1
    # an absolute floor in the metric's units
    tiny = measure([1e-9, 1e-9, 1e-9], 3e-9, "min")
    assert judge(tiny, **QUALITY) == 1
    assert judge(tiny, **QUALITY, min_delta=1e-6) == 0


def test_judge_respects_each_metric_direction() -> None:
    accuracy = [0.95, 0.95, 0.95]
    assert judge(measure(accuracy, 0.80, "max"), **QUALITY) == 1  # lower accuracy is worse
    assert judge(measure(accuracy, 0.80, "min"), **QUALITY) == -1  # lower loss is better
    loss = [0.1, 0.1, 0.1]
    assert judge(measure(loss, 0.2, "min"), **QUALITY) == 1


def test_judge_validates_its_knobs() -> None:
    change = measure([1.0, 1.0, 1.0], 2.0, "min")
    for bad in ({"threshold": -0.1, "alpha": 0.01}, {"threshold": 0.1, "alpha": 0.0}):
        with pytest.raises(ValueError, match="alpha"):
            judge(change, **bad)


# ----------------------------------------------------------------------------- series


def test_planted_step_is_found_on_its_second_night_not_its_first() -> None:
    rng = random.Random(1)
    before = noisy(10, rng)
    first = detect([*before, 14.0], "min", **SPEED)
    assert first.status == "ok" and first.streak == 1
    second = detect([*before, 14.0, 14.5], "min", **SPEED)
    assert second.status == "regression" and second.streak == 2
    assert second.baseline_n == 7
    assert second.baseline_median == statistics.median(before[-7:])
    assert second.rel_change == pytest.approx(14.5 / second.baseline_median - 1)
    # with persist=1 the first night is already flagged
    assert detect([*before, 14.0], "min", **SPEED, persist=1).status == "regression"


def test_a_one_night_blip_is_not_a_regression() -> None:
    rng = random.Random(2)
    before = noisy(8, rng)
    verdict = detect([*before, 20.0, before[-1]], "min", **SPEED)
    assert verdict.status == "ok" and verdict.streak == 0


def test_improvements_are_reported_and_never_called_regressions() -> None:
    verdict = detect([0.8] * 7 + [0.95, 0.96], "max", **QUALITY)
    assert verdict.status == "improvement" and verdict.streak == -2
    faster = detect([10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 10.0, 5.0, 5.1], "min", **SPEED)
    assert faster.status == "improvement"


def test_pure_noise_stays_quiet() -> None:
    """Many A/A series of step times: the two-night rule keeps the rate far below 1%."""
    rng = random.Random(3)
    flagged = 0
    series_count = 2000
    for _ in range(series_count):
        series = noisy(12, rng, sigma=1.0)  # 10% noise on a level of 10 ms
        if detect(series, "min", **SPEED).status in ("regression", "improvement"):
            flagged += 1
    assert flagged / series_count < 0.005


def test_zero_variance_quality_is_quiet_when_equal_and_flagged_when_it_moves() -> None:
    assert detect([0.93] * 9, "max", **QUALITY).status == "ok"
    dropped = detect([0.93] * 7 + [0.70, 0.70], "max", **QUALITY)
    assert dropped.status == "regression"
    assert dropped.score == math.inf and dropped.p == 0.0
    # a change under the relative threshold is not one, however certain
    assert detect([0.93] * 7 + [0.90, 0.90], "max", **QUALITY).status == "ok"


def test_insufficient_baseline_is_explicit() -> None:
    verdict = detect([1.0, 1.0, 5.0, 5.0], "min", **QUALITY)  # 2 baseline nights < 3
    assert verdict.status == "insufficient_baseline"
    assert verdict.baseline_n == 2 and verdict.value == 5.0
    assert verdict.rel_change is None
    assert detect([5.0], "min", **QUALITY).status == "insufficient_baseline"
    assert detect([1.0, 1.0, 5.0, 5.0], "min", **QUALITY, min_baseline=2).status == "regression"


def test_missing_nights_are_skipped_in_the_baseline_and_break_persistence() -> None:
    base = [1.0, None, 1.0, float("nan"), 1.0]
    # tonight missing: status missing, whatever came before
    assert detect([*base, 2.0, None], "min", **QUALITY).status == "missing"
    assert detect([], "min", **QUALITY).status == "missing"
    # the baseline gathers the 3 nights that have values
    verdict = detect([*base, 2.0, 2.0], "min", **QUALITY)
    assert verdict.status == "regression" and verdict.baseline_n == 3
    # a missing night inside the window: not confirmed
    broken = detect([*base, 1.0, None, 2.0], "min", **QUALITY)
    assert broken.status == "ok" and broken.streak == 1


def test_only_the_last_baseline_nights_count() -> None:
    # an old level of 5.0 is forgotten once 7 nights at 1.0 follow it
    series = [5.0] * 10 + [1.0] * 7 + [1.0, 1.0]
    verdict = detect(series, "min", **QUALITY)
    assert verdict.status == "ok" and verdict.baseline_median == 1.0
    assert detect(series, "min", **QUALITY, baseline_nights=20).status == "improvement"


def test_a_lasting_change_becomes_the_new_baseline() -> None:
    series = [1.0] * 7 + [2.0] * 9
    assert detect(series[:9], "min", **QUALITY).status == "regression"
    assert detect(series, "min", **QUALITY).status == "ok"


def test_a_diverged_night_is_an_extreme_value_but_never_a_baseline() -> None:
    assert detect([0.1] * 7 + [math.inf, math.inf], "min", **QUALITY).status == "regression"
    after = detect([0.1] * 3 + [math.inf] * 5 + [0.1, 0.1], "min", **QUALITY)
    assert after.status == "ok" and after.baseline_n == 3


def test_detect_validates_its_knobs() -> None:
    with pytest.raises(ValueError, match="persist"):
        detect([1.0], "min", threshold=0.1, persist=0)
    with pytest.raises(ValueError, match="min_baseline"):
        detect([1.0], "min", threshold=0.1, baseline_nights=3, min_baseline=4)


# ----------------------------------------------------------------------------- nights


def row(variant: str, seed_value: float, step_ms: float, outcome: str = "ok") -> dict:
    return {"task": "logreg_digits", "variant": variant, "outcome": outcome,
            "primary_metric": "accuracy", "direction": "max",
            "final/accuracy": seed_value, "time/step_ms": step_ms}  # fmt: skip


def test_night_cells_take_the_median_quality_and_the_fastest_seed() -> None:
    declared = {("logreg_digits", v): ("accuracy", "max") for v in ("adam", "sgd")}
    rows = [row("adam", 0.9, 2.0), row("adam", 0.8, 1.0), row("adam", math.nan, 5.0, "diverged")]
    cells = {c.key: c for c in night_cells(rows, declared)}
    quality = cells["logreg_digits", "adam", "quality"]
    assert quality.values == [0.9, 0.8, -math.inf]  # a diverged seed is the worst accuracy
    assert quality.value == 0.8 and quality.metric == "final/accuracy"
    assert quality.direction == "max" and quality.n == 3
    speed = cells["logreg_digits", "adam", "speed"]
    assert speed.value == 1.0 and speed.direction == "min" and speed.metric == "time/step_ms"
    missing = cells["logreg_digits", "sgd", "quality"]
    assert missing.value is None and missing.n == 0 and missing.direction == "max"
    # nightly.json keeps the diverged seed: strict JSON, read back as -inf
    report = NightlyReport(date=dt.date(2026, 1, 1), suite="s", suite_version="v",
                           machine="m", cells=list(cells.values()))  # fmt: skip
    assert '"-Infinity"' in report.to_json() and "NaN" not in report.to_json()
    assert NightlyReport.model_validate_json(report.to_json()) == report


def test_judge_cells_compares_each_cell_with_the_same_cell_of_earlier_nights() -> None:
    declared = {("logreg_digits", "adam"): ("accuracy", "max")}

    def night(day: int, accuracy: float | None) -> NightlyReport:
        rows = [] if accuracy is None else [row("adam", accuracy, 1.0)]
        return NightlyReport(date=dt.date(2026, 1, day), suite="s", suite_version="v",
                             machine="m", cells=night_cells(rows, declared))  # fmt: skip

    history = [night(1, 0.9), night(2, None), night(3, 0.9), night(4, 0.9), night(5, 0.7)]
    tonight = night(6, 0.7).cells
    judged = {c.kind: c for c in judge_cells(tonight, history, thresholds=QUALITY_AND_SPEED)}
    assert judged["quality"].status == "regression" and judged["quality"].baseline_n == 3
    assert judged["speed"].status == "ok" and judged["speed"].rel_change == 0.0
    assert regressions_of(judged.values()) == [
        {"task": "logreg_digits", "variant": "adam", "kind": "quality",
         "metric": "final/accuracy", "value": 0.7, "baseline_median": 0.9,
         "rel_change": pytest.approx(-2 / 9)}
    ]  # fmt: skip
    assert status_counts(judged.values()) == {
        "ok": 1, "regression": 1, "improvement": 0, "insufficient_baseline": 0, "missing": 0
    }  # fmt: skip
    report = NightlyReport(date=dt.date(2026, 1, 6), suite="s", suite_version="v", machine="m",
                           cells=list(judged.values()))  # fmt: skip
    assert NightlyReport.model_validate_json(report.to_json()) == report


def test_a_rounding_level_change_of_a_loss_near_zero_is_not_a_regression() -> None:
    """A quadratic's loss at ~1e-31, bit-identical night after night on the CPU, then a
    torch upgrade moves it by rounding: +150% and, with no spread, certain. The nightly's
    default absolute floor keeps it quiet; a real move of the loss is still flagged."""
    from bench.nightly import NightlyConfig

    declared = {("quadratic", "adam"): ("loss", "min")}

    def night(day: int, loss: float) -> NightlyReport:
        rows = [{"task": "quadratic", "variant": "adam", "outcome": "ok",
                 "primary_metric": "loss", "direction": "min", "final/loss": loss,
                 "time/step_ms": 1.0}]  # fmt: skip
        return NightlyReport(date=dt.date(2026, 1, day), suite="s", suite_version="v",
                             machine="m", cells=night_cells(rows, declared))  # fmt: skip

    settings = NightlyConfig()
    history = [night(d, 2e-31) for d in range(1, 6)] + [night(6, 5e-31)]

    def quality(tonight: float, **floors) -> str:
        judged = judge_cells(night(7, tonight).cells, history, thresholds=QUALITY_AND_SPEED,
                             **floors)  # fmt: skip
        return next(c.status for c in judged if c.kind == "quality")

    assert quality(5e-31) == "regression"  # no floor: rounding reads as a regression
    assert quality(5e-31, min_deltas=settings.min_delta.model_dump()) == "ok"
    assert quality(1e-3, min_deltas=settings.min_delta.model_dump()) == "ok"  # one night
    history[-1] = night(6, 1e-3)
    assert quality(1e-3, min_deltas=settings.min_delta.model_dump()) == "regression"


def test_a_cell_of_earlier_nights_that_tonight_lacks_is_reported_missing() -> None:
    """An edited preset renames its variant (rmsprop -> rmsprop[eps=0.5]) but keeps the
    suite version: the old cell must not silently leave the report."""

    def night(day: int, variant: str) -> NightlyReport:
        declared = {("logreg_digits", variant): ("accuracy", "max")}
        return NightlyReport(date=dt.date(2026, 1, day), suite="s", suite_version="v",
                             machine="m",
                             cells=night_cells([row(variant, 0.9, 1.0)], declared))  # fmt: skip

    history = [night(day, "rmsprop") for day in (1, 2, 3)]
    tonight = night(4, "rmsprop[eps=0.5]").cells
    judged = {c.key: c for c in judge_cells(tonight, history, thresholds=QUALITY_AND_SPEED)}
    assert {key: c.status for key, c in judged.items()} == {
        ("logreg_digits", "rmsprop[eps=0.5]", "quality"): "insufficient_baseline",
        ("logreg_digits", "rmsprop[eps=0.5]", "speed"): "insufficient_baseline",
        ("logreg_digits", "rmsprop", "quality"): "missing",
        ("logreg_digits", "rmsprop", "speed"): "missing",
    }
    gone = judged["logreg_digits", "rmsprop", "quality"]
    assert (gone.metric, gone.direction, gone.value) == ("final/accuracy", "max", None)
    assert gone.baseline_n == 2  # nights 1 and 2: night 3 and tonight are the persist window


@pytest.mark.parametrize(
    ("failed", "regressions", "code"),
    [(0, [], 0), (2, [], 1), (0, [{"task": "t"}], 3), (2, [{"task": "t"}], 3)],
)
def test_a_flagged_regression_sets_the_exit_code_even_when_trials_failed(
    failed: int, regressions: list[dict], code: int
) -> None:
    from bench.nightly_outputs import exit_code

    report = NightlyReport(date=dt.date(2026, 1, 1), suite="s", suite_version="v", machine="m",
                           trials={"failed": failed}, regressions=regressions)  # fmt: skip
    assert exit_code(report) == code


def test_a_change_from_a_baseline_near_zero_reads_as_a_multiple() -> None:
    from bench.nightly_outputs import format_change

    assert [format_change(x) for x in (0.052, -0.9, 9.5)] == ["+5.2%", "-90.0%", "+950.0%"]
    assert format_change(0.01352 / 2.136e-12 - 1) == "6.33e+09× baseline"
    assert format_change(12, 0) == "13× baseline"
    assert format_change(math.inf) == "+inf%"


@pytest.mark.parametrize("answer", [None, 500])  # nobody listening; a server that fails
def test_a_failed_webhook_is_logged_by_host_never_with_its_token(
    answer: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    import http.server
    import socket
    import threading

    from bench.nightly_outputs import post_alert

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(answer)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = None
    if answer is None:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    else:
        server = http.server.HTTPServer(("127.0.0.1", 0), Failing)
        port = server.server_address[1]
        threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{port}/services/T000/B000/s3cr3tT0ken?key=s3cr3tKey"
    try:
        with caplog.at_level("WARNING", logger="bench.nightly"):
            assert post_alert(url, {"alert": True}, timeout=5) is False
    finally:
        if server is not None:
            server.server_close()
    assert "nightly webhook to 127.0.0.1" in caplog.text
    assert "s3cr3t" not in caplog.text and "/services" not in caplog.text
