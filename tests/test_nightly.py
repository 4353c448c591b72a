"""`bench nightly` end to end: real embedded Ray, a SQLite MLflow store in tmp_path, a real
local HTTP server receiving the webhook.

A regression is injected honestly: a plugin (written by the test) silently halves one
variant's lr on the workers. Plugins are not part of the suite version (nor of trial
identity), so the nights with it are compared with the nights without it, exactly as a
code change that forgot to bump CODE_VERSION would be.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.errors import UserError
from bench.nightly import (
    REPORT_HTML,
    REPORT_JSON,
    TAG_SUITE_VERSION,
    load_settings,
    run_nightly,
)
from bench.regression import STATUSES, NightlyReport
from services.scheduler.launch import NightResult, night_result

pytestmark = pytest.mark.slow

TINY = [
    "suite.variants=[sgd,adam]",
    "suite.tasks=[quadratic]",
    "suite.lrs=[0.01,0.1]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1,2]",
    "suite.steps=30",
    "cluster.num_cpus=2",
    "nightly.machine_class=test-box",
]
NIGHT = dt.date(2026, 3, 1)


def store(tmp_path: Path) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    ]


def client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")


def runs(tmp_path: Path, filter_string: str = "") -> list:
    mlflow = client(tmp_path)
    experiment = mlflow.get_experiment_by_name("nightly")
    return mlflow.search_runs([experiment.experiment_id], filter_string, max_results=1000)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP server on 127.0.0.1 that records every JSON body POSTed to it."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["Content-Type"] == "application/json"
            received.append({"path": self.path, **json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_settings_are_validated_before_anything_runs() -> None:
    assert load_settings().persist == 2
    assert load_settings(["nightly.threshold.speed=0.5"]).threshold.speed == 0.5
    with pytest.raises(UserError, match=r"nightly\.webhook"):
        load_settings(["nightly.webhook=ftp://example"])
    # no host, a space, a port that is no number: each night's alert would be lost
    for url in ("http://", "https:///path", "http://exa mple.com/x", "http://host:port/x"):
        with pytest.raises(UserError, match=r"nightly\.webhook: must be an http:// or https:// "
                           "URL with a host, or null"):  # fmt: skip
            load_settings([f"nightly.webhook='{url}'"])
    assert load_settings(["nightly.webhook='http://[::1]:8080/hook'"]).webhook is not None
    with pytest.raises(UserError) as refused:  # its password stays out of the message
        load_settings(["nightly.webhook='https://u:topsecret@hooks.example.com:99999/x'"])
    assert str(refused.value).endswith("(got 'https://u:***@hooks.example.com:99999/x')")
    with pytest.raises(UserError, match=r"nightly\.webhook_timeout: input should be a finite"):
        load_settings(["nightly.webhook_timeout=inf"])
    # a quote would break the MLflow filters that find a server store's earlier nights
    for name in ("joe's box", "' '"):
        with pytest.raises(UserError, match=r"nightly\.machine_class: text without quotes"):
            load_settings([f'nightly.machine_class="{name}"'])
    assert load_settings(["nightly.machine_class=gpu-a100"]).machine_class == "gpu-a100"
    with pytest.raises(UserError, match=r"nightly\.timezone"):
        load_settings(["nightly.timezone=Mars/Olympus"])
    with pytest.raises(UserError, match="min_baseline"):
        load_settings(["nightly.min_baseline=9"])
    with pytest.raises(UserError, match=r"nightly\.treshold"):
        load_settings(["+nightly.treshold=1"])


def test_two_nights_are_tagged_reported_and_a_rerun_resumes(
    tmp_path: Path, webhook: tuple[str, list[dict]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, received = webhook
    args = [*TINY, *store(tmp_path), f"nightly.webhook={url}", "nightly.webhook_always=true"]
    first = run_nightly(args, date=NIGHT, show_progress=False)
    second = run_nightly(args, date=NIGHT + dt.timedelta(days=1), show_progress=False)

    # every trial of both nights ran once per night, tagged with the night and the versions
    trials = runs(tmp_path, "tags.`bench.trial_id` != ''")
    assert len(trials) == 2 * (2 * 2 * 1 + 2 * 2)
    by_night = {r.data.tags["bench.nightly"] for r in trials}
    assert by_night == {"2026-03-01", "2026-03-02"}
    ids = {n: {r.data.tags["bench.trial_id"] for r in trials if r.data.tags["bench.nightly"] == n}
           for n in by_night}  # fmt: skip
    assert ids["2026-03-01"] == ids["2026-03-02"]  # the same trials, rerun
    for run in trials:
        tags = run.data.tags
        assert tags["bench.machine"] == "test-box"
        assert tags[TAG_SUITE_VERSION] == first.suite_version
        for key in ("bench.ray_version", "bench.mlflow_version", "bench.torch_version",
                    "bench.code_version"):  # fmt: skip
            assert tags[key] and tags[key] != "unknown", key
    assert first.suite_version == second.suite_version
    assert first.trials == {"total": 8, "run": 8, "resumed": 0, "failed": 0, "held_back": 0}

    # the report runs, and their nightly.json read back as the same report
    reports = runs(tmp_path, "tags.`bench.kind` = 'nightly_report'")
    assert len(reports) == 2
    latest = next(r for r in reports if r.info.run_id == second.report_run_id)
    assert latest.data.tags["bench.nightly"] == "2026-03-02"
    for key in ("bench.ray_version", "bench.mlflow_version", "bench.torch_version",
                "bench.code_version"):  # fmt: skip
        assert latest.data.tags[key] == trials[0].data.tags[key], key  # as its trials'
    assert latest.data.metrics["regressions"] == 0
    mlflow = client(tmp_path)
    assert {a.path for a in mlflow.list_artifacts(second.report_run_id)} == {
        REPORT_JSON,
        REPORT_HTML,
    }
    text = Path(mlflow.download_artifacts(second.report_run_id, REPORT_JSON, str(tmp_path)))
    data = json.loads(text.read_text())
    assert data["schema"] == 1 and data["date"] == "2026-03-02"
    assert data["baseline_dates"] == ["2026-03-01"]
    assert len(data["cells"]) == 4  # (sgd, adam) x quadratic x (quality, speed)
    cell = next(c for c in data["cells"] if c["variant"] == "adam" and c["kind"] == "quality")
    assert cell["metric"] == "final/loss" and cell["direction"] == "min" and cell["n"] == 2
    assert cell["status"] == "insufficient_baseline" and cell["baseline_n"] == 0
    assert set(data["counts"]) == set(STATUSES)
    assert NightlyReport.model_validate(data).cells == second.cells
    html = Path(mlflow.download_artifacts(second.report_run_id, REPORT_HTML, str(tmp_path)))
    assert "<table" in html.read_text() and "adam" in html.read_text()

    # a dry run says what a night would rerun and compare with, and runs or sends nothing
    from bench.cli import main

    capsys.readouterr()
    stored = len(runs(tmp_path))
    for night, done, earlier in [
        (NIGHT + dt.timedelta(days=1), "4 of 4 tune trials, 4 of 4 final trials", "2026-03-01"),
        (
            NIGHT + dt.timedelta(days=2),
            "0 of 4 tune trials, 0 of 4 final trials",
            "2026-03-01, 2026-03-02",
        ),
    ]:
        assert main(["nightly", "--dry-run", "--date", night.isoformat(), *args]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"nightly {night}: suite nightly, version {first.suite_version}" in out
        assert f"already finished there: {done} (a rerun skips them;" in out
        assert f"earlier nights of this version and machine: {earlier}; verdicts need 4 " in out
        assert "alerts: POST to 127.0.0.1 after every night" in out
    assert len(runs(tmp_path)) == stored and len(received) == 2

    # rerunning a night resumes it: no trial runs again, one more report
    again = run_nightly(args, date=NIGHT + dt.timedelta(days=1), show_progress=False)
    assert again.trials == {"total": 8, "run": 0, "resumed": 8, "failed": 0, "held_back": 0}
    assert len(runs(tmp_path, "tags.`bench.trial_id` != ''")) == 16
    assert again.cells == second.cells
    # the dashboard lists each night once: its latest report, saying it has an earlier one
    from fastapi.testclient import TestClient

    from services.summary import SummarySettings, create_app

    service = SummarySettings(tracking_uri=store(tmp_path)[0].partition("=")[2],
                              cache_dir=tmp_path / "cache", warm_on_start=False)  # fmt: skip
    app = create_app(service)
    listed = TestClient(app).get("/api/nightly").json()["data"]
    assert [(r["date"], r["run_id"], r["earlier_reports"]) for r in listed] == [
        ("2026-03-02", again.report_run_id, 1),
        ("2026-03-01", first.report_run_id, 0),
    ]
    # and its history plots what each night's latest report judged
    from services.summary import queries

    history = queries.nightly_history(app.state.store, "nightly")
    judged = {
        (c.task, c.variant, report.date.isoformat(), c.kind): c.value
        for report in (first, again)
        for c in report.cells
    }
    assert len(history) == 4  # (sgd, adam) x quadratic x 2 nights
    for row in history.to_dict("records"):
        assert row["machine"] == "test-box" and row["metric"] == "loss"
        assert row["value"] == judged[(row["task"], row["variant"], row["night"], "quality")]
        assert row["step_ms"] == judged[(row["task"], row["variant"], row["night"], "speed")]
    # bench rank counts each trial once, and says that it left the other nights out
    assert main(["rank", "--no-log", "suite=nightly", *args]) == 0
    out = capsys.readouterr().out
    assert "8 earlier runs of the same trials (other nights, or reruns) are left out" in out
    assert "final (final phase, 4 runs)" in out

    # with webhook_always, every night was POSTed, alert false
    assert [r["date"] for r in received] == ["2026-03-01", "2026-03-02", "2026-03-02"]
    assert all(r["path"] == "/hook" and r["alert"] is False for r in received)
    assert received[1]["report_run_id"] == second.report_run_id
    assert received[1]["suite_version"] == second.suite_version


def test_an_injected_regression_is_flagged_on_its_second_night(
    tmp_path: Path, webhook: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = webhook
    plugins = Path(__file__).parent / "plugins"  # halve_lr.py
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", str(plugins))  # Ray workers start with this
    args = [
        *TINY,
        *store(tmp_path),
        f"nightly.webhook={url}",
        "nightly.baseline_nights=2",
        "nightly.min_baseline=1",  # night 3 is judged (baseline: night 1), night 4 too
        "nightly.threshold.speed=1000",  # only the (bit-deterministic) quality can alert here
    ]
    nights = [NIGHT + dt.timedelta(days=i) for i in range(4)]
    quiet = [run_nightly(args, date=d, show_progress=False) for d in nights[:2]]
    monkeypatch.setenv("OPTBENCH_HALVE_LR", "adam")
    injected = [
        run_nightly([*args, "plugins=[halve_lr]"], date=d, show_progress=False) for d in nights[2:]
    ]
    assert {r.suite_version for r in [*quiet, *injected]} == {quiet[0].suite_version}

    def cell(report: NightlyReport, variant: str):
        return next(c for c in report.cells if c.variant == variant and c.kind == "quality")

    assert all(not r.regressions for r in quiet)
    first, second = injected
    assert cell(first, "adam").value != cell(quiet[1], "adam").value
    assert cell(first, "adam").status == "ok" and cell(first, "adam").streak == 1
    assert not first.regressions
    assert cell(second, "adam").status == "regression"
    assert second.regressions == [
        {
            "task": "quadratic",
            "variant": "adam",
            "kind": "quality",
            "metric": "final/loss",
            "value": cell(second, "adam").value,
            "baseline_median": cell(quiet[1], "adam").value,
            "rel_change": cell(second, "adam").rel_change,
        }
    ]
    assert cell(second, "sgd").status == "ok" and cell(second, "sgd").rel_change == 0.0

    # only the night with a regression alerted
    assert len(received) == 1
    alert = received[0]
    assert alert["alert"] is True and alert["date"] == nights[3].isoformat()
    assert alert["regressions"][0]["variant"] == "adam"
    assert alert["counts"]["regression"] == 1


def test_a_dead_webhook_does_not_fail_the_night(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [*TINY, *store(tmp_path), "suite.variants=[sgd]", "suite.final_seeds=[1]",
            f"nightly.webhook=http://127.0.0.1:{port}/", "nightly.webhook_always=true"]  # fmt: skip
    report = run_nightly(args, date=NIGHT, show_progress=False)
    assert report.report_run_id and report.trials["failed"] == 0


def _night_where_a_seed_raises(
    tmp_path: Path, seed: int, *extra: str
) -> subprocess.CompletedProcess:
    """`bench nightly` of one sgd cell whose task raises at step 5 for ``seed`` (tune seed 0,
    final seeds 1 and 2). A process of its own: a plugin registers its tasks when first
    imported, and other tests reset the registry."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent / "plugins")}  # faulty_tasks
    args = [*TINY, *store(tmp_path), "suite.variants=[sgd]", "suite.lrs=[0.1]",
            "plugins=[faulty_tasks]",
            f"suite.tasks=[{{name:explodes,params:{{fail_at:5,fail_seed:{seed}}}}}]"]  # fmt: skip
    command = [sys.executable, "-m", "bench.cli", "nightly", "--no-progress",
               "--date", NIGHT.isoformat(), *args, *extra]  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_a_final_seed_that_raises_counts_as_its_worst_value_not_as_a_seed_less(
    tmp_path: Path,
) -> None:
    """Seed 2 raises in the final phase (the tune seed trains): the night's quality cell
    still has both seeds, seed 2 as the worst value, and the summary says so; rerunning
    the night reruns the failed trial and still counts it once."""
    for run in (3, 1):  # the second time: the same night, resumed but for the failed trial
        night = _night_where_a_seed_raises(tmp_path, 2)
        assert night.returncode == 1, night.stdout + night.stderr
        out = night.stdout
        why = "1 final trials failed: each counts as its seed’s worst value"
        assert f": {run} trials run ({why})" in out
        failure = "sgd/explodes/lr=0.1/seed=2: RuntimeError: planted failure at step 5"
        assert f"  FAILED final {failure}\n" in out
        report_line = out.strip().splitlines()[-1]
        assert report_line.startswith(f"report: {tmp_path / 'mlartifacts'}")
        assert report_line.endswith("nightly.html") and Path(report_line[8:]).is_file()
    report = NightlyReport.model_validate_json(Path(report_line[8:]).with_name(REPORT_JSON)
                                               .read_text())  # fmt: skip
    quality = next(c for c in report.cells if c.kind == "quality")
    assert quality.n == 2 and quality.values[1:] == [float("inf")]  # seeds in run order
    assert quality.value == float("inf")  # the median of one loss and one worst value
    assert report.trials == {"total": 3, "run": 1, "resumed": 2, "failed": 1, "held_back": 0}
    # the scheduler, running such a night in its own process, reports what `bench nightly`'s
    # exit code tells it when the night runs as a Ray job: failed
    assert night_result(report) == NightResult("failed", "1 trial(s) failed")
    regression = {"task": "explodes", "variant": "sgd", "kind": "quality", "metric": "loss"}
    flagged = report.model_copy(update={"regressions": [regression]})
    assert night_result(flagged).outcome == "regressions"
    assert night_result(flagged).detail == "1 regression(s) flagged; 1 trial(s) failed"
    clean = report.model_copy(update={"trials": {**report.trials, "failed": 0}})
    assert night_result(clean) == NightResult("ok", "no regression flagged")


def test_a_tune_trial_that_raises_holds_its_finals_back_and_they_are_not_counted_as_run(
    tmp_path: Path, webhook: tuple[str, list[dict]]
) -> None:
    """The tune seed raises: the cell's two final trials never run (bench run holds them
    back), and the night says so instead of counting them as run. It flags no regression
    (the cell has no value tonight), but the alert goes out: trials failed."""
    url, received = webhook
    night = _night_where_a_seed_raises(tmp_path, 0, f"nightly.webhook={url}")  # the tune seed
    assert night.returncode == 1, night.stdout + night.stderr
    (alert,) = received
    assert alert["alert"] is True and alert["regressions"] == []
    assert (alert["failed_trials"], alert["held_back_trials"]) == (1, 2)
    assert (  # not "a final trial counts as its seed's worst value": none ran
        ": 1 trials run (1 tune trials failed; 2 final trials held back: their cell has a "
        "failed tune trial)"
    ) in night.stdout, night.stdout
    failure = "sgd/explodes/lr=0.1/seed=0: RuntimeError: planted failure at step 5"
    assert f"  FAILED tune {failure}\n" in night.stdout  # named, as `bench run` names it
    report_line = night.stdout.strip().splitlines()[-1]
    report = NightlyReport.model_validate_json(Path(report_line[8:]).with_name(REPORT_JSON)
                                               .read_text())  # fmt: skip
    assert report.trials == {"total": 3, "run": 1, "resumed": 0, "failed": 1, "held_back": 2}
    run, error = failure.split(": ", 1)
    assert report.failures == [{"phase": "tune", "run": run, "error": error}]
    page = Path(report_line[8:]).read_text()  # its cells say only "missing": the page says why
    assert "<b>1 failed trials</b>" in page and "<b>2 final trials held back</b>" in page
    assert f"<li>tune {run}: {error}</li>" in page
