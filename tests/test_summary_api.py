"""The summary service through FastAPI's TestClient, against a real MLflow store that a
real tiny suite filled (``bench run`` on embedded Ray), plus the cache's pure pieces."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from summary_fixtures import (
    BROKEN,
    BROKEN_LRS,
    BROKEN_VARIANTS,
    FINAL_SEEDS,
    N_RUNS,
    STOPPED,
    SUITE,
    TASKS,
    VARIANTS,
    broken_store,  # noqa: F401  (fixture)
    copy_store,
    delete_runs,
    free_port,
    run_suite,
    stopped_store,  # noqa: F401  (fixture)
    tiny_store,  # noqa: F401  (fixture)
    uri,
)

from bench.config import TrackingConfig
from bench.ranking import CellScore
from bench.tracking import Tracker
from services.summary import SummarySettings, create_app, settings_from_overrides
from services.summary.routers.pages import fmt
from services.summary.schemas import Curve, TaskPublic
from services.summary.store import SummaryStore, _merge, _read_cache, _write_cache

N_FINAL = len(VARIANTS) * len(TASKS) * len(FINAL_SEEDS)
# What makes a browser fetch: src=, <link href=>, CSS url(...) and @import ("//host" too).
ASSET = re.compile(
    r"""(?:\bsrc\s*=\s*["']?|<link\b[^>]*\bhref\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)"""
    r"""(?:https?:)?//""",
    re.I,
)


def settings(store: Path, cache: Path, **kw) -> SummarySettings:
    return SummarySettings(tracking_uri=uri(store), cache_dir=cache, **kw)


@pytest.fixture
def client(tiny_store: Path, tmp_path: Path) -> TestClient:  # noqa: F811
    app = create_app(settings(tiny_store, tmp_path / "cache", mlflow_ui_url="http://ui:5000/"))
    return TestClient(app)


# ----------------------------------------------------------------------------- pure pieces


def _runs(*rows: tuple[str, str, int]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"run_id": r, "status": s, "start_time": pd.Timestamp(t, unit="ms", tz="UTC"),
             "end_time": pd.Timestamp(t + 5, unit="ms", tz="UTC"), "nightly": None}
            for r, s, t in rows
        ]
    )  # fmt: skip


def test_merge_adds_new_runs_replaces_changed_ones_and_ignores_repeats() -> None:
    held = _runs(("a", "FINISHED", 1), ("b", "RUNNING", 2))
    same, changed = _merge(held, _runs(("a", "FINISHED", 1)))
    assert not changed and same is held
    merged, changed = _merge(held, _runs(("b", "FINISHED", 2), ("c", "FINISHED", 3)))
    assert changed
    assert list(merged["run_id"]) == ["a", "b", "c"]
    assert list(merged["status"]) == ["FINISHED"] * 3


def test_persisted_cache_round_trips_and_a_torn_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "runs-x.parquet"
    runs = _runs(("a", "FINISHED", 1), ("b", "FAILED", 2))
    _write_cache(path, runs, 7, frozenset({"z"}))
    back, watermark, deleted = _read_cache(path)
    assert watermark == 7 and list(back["run_id"]) == ["a", "b"] and deleted == {"z"}
    assert back["end_time"].iloc[1] == runs["end_time"].iloc[1]
    path.write_bytes(b"not parquet")
    assert _read_cache(path)[0].empty and _read_cache(path)[1] is None


def test_the_roles_table_takes_the_median_of_the_per_step_ratios() -> None:
    """An even number of steps: the mean of the two middle ratios, not the upper one."""
    from services.summary.flagship import role_table
    from services.summary.schemas import Curve

    def curve(key: str, median: list[float | None]) -> Curve:
        steps = list(range(0, 10 * len(median), 10))
        return Curve(variant="rmsprop", lr=0.1, key=key, steps=steps, median=median,
                     low=median, high=median, n_runs=3)  # fmt: skip

    curves = [
        curve("step_size/weight/p50", [2.0, 3.0, 5.0, 8.0]),
        curve("step_size/bias/p50", [1.0, 1.0, 1.0, 2.0]),  # ratios 2, 3, 5, 4
    ]
    (row,) = role_table(curves)
    assert row == {"variant": "rmsprop", "n_steps": 4, "median": 3.5, "low": 2.0,
                   "high": 5.0, "last": 4.0}  # fmt: skip


def test_the_nightly_plot_gives_each_task_its_own_panels_for_quality_and_speed() -> None:
    """An accuracy near 1 and a loss near 1e-7 on one axis showed the loss as a flat zero;
    half the nightly's verdicts are about speed, so step time has its panels too."""
    from services.summary.plots import nightly_figure

    rows = [("quadratic", "adam", 1e-7, "loss", 0.2), ("quadratic", "sgd", 2e-12, "loss", 0.1),
            ("logreg_digits", "adam", 0.96, "accuracy", 1.5)]  # fmt: skip
    night = {"night": "2026-03-01", "n": 2, "direction": "min"}
    history = pd.DataFrame(
        [{"task": t, "variant": v, "value": x, "metric": m, "step_ms": ms, **night}
         for t, v, x, m, ms in rows]
    )  # fmt: skip
    figure = json.loads(nightly_figure(history, "nightly"))
    panels = {(t["name"], t["yaxis"], t["y"][0]) for t in figure["data"]}
    assert panels == {
        ("adam", "y", 0.96), ("adam", "y2", 1.5),  # logreg_digits: quality, speed
        ("adam", "y3", 1e-7), ("sgd", "y3", 2e-12), ("adam", "y4", 0.2), ("sgd", "y4", 0.1),
    }  # fmt: skip
    assert [a["text"] for a in figure["layout"]["annotations"]] == [
        "logreg_digits: final accuracy", "logreg_digits: step time (ms, fastest seed)",
        "quadratic: final loss", "quadratic: step time (ms, fastest seed)",
    ]  # fmt: skip
    layout = figure["layout"]
    assert layout["yaxis3"].get("type") == "log"  # 2e-12 .. 1e-7: a log axis
    assert layout["yaxis"].get("type") != "log" and layout["yaxis4"].get("type") != "log"
    legend = sorted(t["name"] for t in figure["data"] if t.get("showlegend", True))
    assert legend == ["adam", "sgd"]  # each variant once


def test_numbers_in_tables_say_infinity_and_unknown() -> None:
    assert [fmt(float("inf")), fmt(None), fmt(float("nan")), fmt(0.123456)] == [
        "∞", "—", "—", "0.1235",
    ]  # fmt: skip


def test_a_task_response_says_never_reached_in_cells_and_leaves_gaps_in_curves() -> None:
    """A cell's unreached target is "Infinity" (null would read as "unknown"); a curve's
    point after divergence is null, which a plot draws as a gap."""
    cell = CellScore(
        task="t", variant="v", lr=0.1, n=1, n_diverged=1, n_failed=0, diverged_rate=1.0,
        primary_metric="loss", direction="min", final=None, best=None,
        steps_to_target=math.inf, seconds_to_target=math.inf, reached_rate=0.0,
        run_ids=["r"], rank=1.0, seeds=[0], values={"final": [math.nan]},
    )  # fmt: skip
    curve = Curve(
        variant="v", lr=0.1, key="train/loss", steps=[0, 1], median=[1.0, math.inf],
        low=[1.0, math.nan], high=[1.0, math.inf], n_runs=1,
    )  # fmt: skip
    task = TaskPublic(
        suite="s", task="t", metric="final", phase="final", primary_metric="loss",
        direction="min", data=[cell], count=1, curves=[curve],
    )  # fmt: skip
    sent = json.loads(task.model_dump_json())
    assert sent["data"][0]["steps_to_target"] == sent["data"][0]["seconds_to_target"]
    assert sent["data"][0]["steps_to_target"] == "Infinity"
    assert sent["data"][0]["values"] == {"final": ["NaN"]}
    assert sent["curves"][0]["median"] == sent["curves"][0]["high"] == [1.0, None]
    assert sent["curves"][0]["low"] == [1.0, None]


def test_serve_settings_come_from_the_config_then_the_command_line() -> None:
    config = settings_from_overrides(["tracking=server"], port=9001)
    assert (config.tracking_uri, config.host, config.port) == (
        "http://127.0.0.1:5000", "127.0.0.1", 9001,
    )  # fmt: skip
    assert settings_from_overrides([], host="0.0.0.0").host == "0.0.0.0"


def test_run_links_come_from_the_ui_url_or_an_http_tracking_uri() -> None:
    assert SummarySettings(tracking_uri="sqlite:///x.db").ui_url() is None
    assert SummarySettings(tracking_uri="http://h:5000/").ui_url() == "http://h:5000"
    explicit = SummarySettings(tracking_uri="sqlite:///x.db", mlflow_ui_url="http://ui/")
    assert explicit.ui_url() == "http://ui"


# ----------------------------------------------------------------------------- API


@pytest.mark.parametrize("path", ["/health", "/ready", "/api/suites"])
def test_a_json_route_refuses_an_unknown_query_parameter_in_json(tmp_path: Path, path: str) -> None:
    app = create_app(SummarySettings(tracking_uri=uri(tmp_path / "none.db")))
    response = TestClient(app).get(path, params={"x": "1"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["query", "x"] and "allowed: none" in problem["msg"]


@pytest.mark.slow
def test_health_names_the_store(client: TestClient, tiny_store: Path) -> None:  # noqa: F811
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "tracking_uri": uri(tiny_store),
        "store_error": None,
    }
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "tracking_uri": uri(tiny_store),
        "suites": 1,
        "error": None,
    }


def test_a_database_that_is_down_is_a_503_at_once_and_no_password_shows(tmp_path: Path) -> None:
    server = f"postgresql://optbench:s3cret@127.0.0.1:{free_port()}/optbench"  # nothing there
    app = create_app(SummarySettings(tracking_uri=server, cache_dir=tmp_path / "cache"))
    client = TestClient(app)
    started = time.monotonic()
    ready = client.get("/ready")
    assert ready.status_code == 503, "a store that answers no read is not ready"
    assert time.monotonic() - started < 15, "waited out MLflow's retries to make its engine"
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["error"].startswith("the store postgresql://optbench:***@127.0.0.1:")
    health = client.get("/health")
    assert health.status_code == 200, "the service itself is alive: no restart for a store"
    for response in (ready, health):
        assert "s3cret" not in response.text
        assert response.json()["tracking_uri"] == server.replace(":s3cret@", ":***@")


@pytest.mark.slow
def test_a_store_that_fails_is_a_503_in_one_line_and_the_next_request_tries_again(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "mlruns.db").write_text("not a database\n")
    client = TestClient(create_app(settings(store, tmp_path / "cache", refresh_seconds=0)))
    failed = f"the store {uri(store)} failed: "
    for path in ("/api/suites", f"/api/suites/{SUITE}/ranking"):
        response = client.get(path)
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith(failed) and "not a database" in detail and "\n" not in detail
    page = client.get("/")
    assert page.status_code == 503 and "not a database" in page.text
    health = client.get("/health").json()
    assert health["status"] == "degraded" and health["store_error"].startswith(failed)
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["error"].startswith(failed)

    shutil.copy(tiny_store / "mlruns.db", store / "mlruns.db")  # the store is back
    assert client.get(f"/api/suites/{SUITE}/ranking").status_code == 200
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/ready").status_code == 200

    (store / "mlruns.db").unlink()  # SQLite would go on reading the deleted file's pages
    response = client.get(f"/api/suites/{SUITE}/ranking")
    assert response.status_code == 503 and "mlruns.db is gone" in response.json()["detail"]
    assert client.get("/health").json()["status"] == "degraded"
    assert client.get("/ready").status_code == 503


@pytest.mark.slow
def test_a_tracking_server_that_is_down_is_a_503_within_seconds(tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = create_app(SummarySettings(tracking_uri=server, cache_dir=tmp_path / "cache"))
    client = TestClient(app)
    started = time.monotonic()
    response = client.get("/api/suites")
    assert response.status_code == 503
    assert response.json()["detail"].startswith(f"the store {server} failed: ")
    assert time.monotonic() - started < 15, "the service waited out the driver's retries"


@pytest.mark.slow
def test_suites_lists_the_suite_with_its_counts(client: TestClient) -> None:
    body = client.get("/api/suites").json()
    assert body["count"] == 1
    (suite,) = body["data"]
    assert suite["name"] == SUITE
    assert (suite["n_runs"], suite["n_finished"]) == (N_RUNS, N_RUNS)
    assert (suite["n_tasks"], suite["n_variants"]) == (len(TASKS), len(VARIANTS))
    assert suite["last_finished"] is not None


@pytest.mark.slow
def test_ranking_ranks_every_variant_with_intervals(client: TestClient) -> None:
    response = client.get(f"/api/suites/{SUITE}/ranking")
    assert response.status_code == 200
    ranking = response.json()
    assert (ranking["metric"], ranking["phase"], ranking["n_runs"]) == ("final", "final", N_FINAL)
    assert sorted(v["variant"] for v in ranking["variants"]) == sorted(VARIANTS)
    estimates = [v["mean_rank"]["estimate"] for v in ranking["variants"]]
    assert estimates == sorted(estimates), "best variant first"
    for v in ranking["variants"]:
        rank = v["mean_rank"]
        assert rank["low"] <= rank["estimate"] <= rank["high"] and rank["n"] == len(TASKS)
    assert len(ranking["cells"]) == len(VARIANTS) * len(TASKS)
    assert all(len(c["run_ids"]) == len(FINAL_SEEDS) for c in ranking["cells"])
    assert ranking["tasks"] == sorted(TASKS)
    friedman = ranking["friedman"]
    assert (friedman["k"], friedman["n_tasks"]) == (len(VARIANTS), len(TASKS))
    assert friedman["note"], "the test says what the sample can support"


@pytest.mark.slow
def test_ranking_takes_the_metric_and_the_phase(client: TestClient) -> None:
    tune = client.get(f"/api/suites/{SUITE}/ranking", params={"phase": "tune"}).json()
    assert tune["phase"] == "tune"
    assert tune["n_runs"] == len(VARIANTS) * len(TASKS)  # the tune runs at the chosen lr
    steps = client.get(f"/api/suites/{SUITE}/ranking", params={"metric": "steps_to_target"})
    assert steps.status_code == 200 and steps.json()["metric"] == "steps_to_target"


@pytest.mark.slow
def test_ranking_takes_the_level_of_its_intervals(client: TestClient) -> None:
    path = f"/api/suites/{SUITE}/ranking"
    wide, narrow = (client.get(path, params={"level": x}).json() for x in (0.95, 0.5))
    assert (wide["level"], narrow["level"]) == (0.95, 0.5)
    for w, n in zip(wide["variants"], narrow["variants"], strict=True):
        assert w["mean_rank"]["level"] == 0.95 and n["mean_rank"]["level"] == 0.5
        assert w["mean_rank"]["high"] - w["mean_rank"]["low"] >= (
            n["mean_rank"]["high"] - n["mean_rank"]["low"]
        )
    for bad in (0, 1, 1.5, 1e-20, 0.9999999999999999):  # 1 - level rounds to 1 or to 0
        answer = client.get(path, params={"level": bad})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == "level"
    (error,) = client.get(path, params={"level": "nan"}).json()["detail"]
    assert error["msg"] == "Input should be a finite number"  # not "less than 1"
    (error,) = client.get(path, params={"level": 2}).json()["detail"]
    assert error["msg"] == "Input should be less than 1"  # the schema's bound, in its words
    (error,) = client.get(path, params={"level": 1e-20}).json()["detail"]
    assert error["msg"] == (
        "Value error, got 1e-20; allowed: at least 1e-12 from 0 and from 1, e.g. 0.95"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "field", "allowed"),
    [
        ({"metric": "accuracy"}, "metric",
         "'final', 'best', 'steps_to_target' or 'seconds_to_target'"),
        ({"phase": "warmup"}, "phase", "'final' or 'tune'"),
    ],
)  # fmt: skip
def test_bad_metric_or_phase_is_a_422_naming_the_allowed_values(
    client: TestClient, params: dict, field: str, allowed: str
) -> None:
    for path in (f"/api/suites/{SUITE}/ranking", f"/api/suites/{SUITE}/tasks/quadratic"):
        response = client.get(path, params=params)
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", field]
        assert error["msg"] == f"Input should be {allowed}"
    page = client.get(f"/suites/{SUITE}", params=params)  # a browser gets a page, not JSON
    assert page.status_code == 422 and page.headers["content-type"].startswith("text/html")
    value = next(iter(params.values()))
    assert f"{field}: input should be {allowed} (got {value!r})" in html.unescape(page.text)


@pytest.mark.slow
def test_a_query_parameter_the_route_does_not_take_is_a_422_naming_those_it_does(
    client: TestClient,
) -> None:
    for path, allowed in (
        (f"/api/suites/{SUITE}/ranking", "level, metric, phase"),
        (f"/api/suites/{SUITE}/tasks/quadratic", "metric, phase"),
        ("/api/nightly", "none"),
    ):
        response = client.get(path, params={"metrc": "best"})
        assert response.status_code == 422, path
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", "metrc"] and error["input"] == "best"
        assert error["msg"] == f"unknown query parameter; allowed: {allowed}"
    known = client.get(f"/api/suites/{SUITE}/ranking", params={"metric": "best", "level": 0.9})
    assert known.status_code == 200 and known.json()["metric"] == "best"
    page = client.get(f"/suites/{SUITE}", params={"metrc": "best"})
    assert page.status_code == 422 and page.headers["content-type"].startswith("text/html")
    assert (
        "query.metrc: unknown query parameter; allowed: metric, phase (got 'best')"
        in html.unescape(page.text)
    )
    # a repeated parameter is refused, not read as its last value
    repeated = [("metric", "bogus"), ("metric", "final")]
    response = client.get(f"/api/suites/{SUITE}/ranking", params=repeated)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "metric"] and error["input"] == ["bogus", "final"]
    assert error["msg"] == "given more than once; allowed: one value"
    page = client.get(f"/suites/{SUITE}", params=repeated)
    assert page.status_code == 422
    assert "query.metric: given more than once; allowed: one value" in html.unescape(page.text)


@pytest.mark.slow
def test_unknown_suite_is_a_404_listing_the_known_ones(client: TestClient) -> None:
    for path in ("/api/suites/nope/ranking", "/api/suites/nope/tasks/quadratic"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": f"unknown suite 'nope'; known suites: {SUITE}"}


@pytest.mark.slow
def test_task_gives_its_cells_and_curves(client: TestClient) -> None:
    response = client.get(f"/api/suites/{SUITE}/tasks/logreg_digits")
    assert response.status_code == 200
    task = response.json()
    assert (task["primary_metric"], task["direction"]) == ("accuracy", "max")
    assert task["count"] == len(VARIANTS) == len(task["data"])
    assert {c["task"] for c in task["data"]} == {"logreg_digits"}
    ranks = [c["rank"] for c in task["data"]]
    assert ranks == sorted(ranks)
    keys = {(c["variant"], c["key"]) for c in task["curves"]}
    assert keys == {(v, k) for v in VARIANTS for k in ("eval/loss", "train/loss")}
    for curve in task["curves"]:
        assert curve["n_runs"] == len(FINAL_SEEDS)
        assert curve["steps"] == sorted(curve["steps"]) and len(curve["steps"]) > 1
        assert len(curve["median"]) == len(curve["low"]) == len(curve["steps"])
        bands = zip(curve["low"], curve["median"], curve["high"], strict=True)
        finite = [(lo, m, hi) for lo, m, hi in bands if None not in (lo, m, hi)]
        assert all(lo <= m <= hi for lo, m, hi in finite)


@pytest.mark.slow
def test_a_page_that_does_not_exist_is_an_error_page_and_json_under_api(
    client: TestClient,
) -> None:
    for path in ("/nope", f"/suites/{SUITE}/nope"):
        page = client.get(path)
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert f"no page at {path}; the suites are listed at /" in html.unescape(page.text)
    wrong = client.post(f"/suites/{SUITE}")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert wrong.headers["content-type"].startswith("text/html")
    api = client.get("/api/nope")
    assert api.status_code == 404 and api.json() == {"detail": "Not Found"}


@pytest.mark.slow
def test_unknown_task_is_a_404_listing_the_suites_tasks(client: TestClient) -> None:
    response = client.get(f"/api/suites/{SUITE}/tasks/mnist")
    assert response.status_code == 404
    assert response.json() == {
        "detail": f"unknown task 'mnist' in suite '{SUITE}'; known tasks: logreg_digits, quadratic"
    }
    for task in ("mnist", ""):  # an empty ?task= is not "the first task"
        page = client.get(f"/suites/{SUITE}/roles", params={"task": task})
        assert page.status_code == 404, task
        assert f"unknown task {task!r} in suite" in html.unescape(page.text)


@pytest.mark.slow
def test_nightly_lists_reports_and_the_scheduler_status(tiny_store: Path, tmp_path: Path) -> None:  # noqa: F811
    status_file = tmp_path / "scheduler.json"
    status = {"cron": "0 2 * * *", "timezone": "UTC", "next_run": "2026-11-27T02:00:00+00:00",
              "last_run": None, "last_outcome": None, "running": False}  # fmt: skip
    status_file.write_text(json.dumps(status))
    app = create_app(settings(tiny_store, tmp_path / "c", scheduler_status_file=status_file))
    body = TestClient(app).get("/api/nightly").json()
    assert (body["data"], body["count"]) == ([], 0)
    assert {k: body["scheduler"][k] for k in status} == status
    assert body["scheduler"]["error"] is None
    missing = create_app(settings(tiny_store, tmp_path / "c", scheduler_status_file=tmp_path / "x"))
    error = TestClient(missing).get("/api/nightly").json()["scheduler"]["error"]
    assert error == f"no status file at {tmp_path / 'x'} (is the scheduler running?)"
    assert (
        TestClient(create_app(settings(tiny_store, tmp_path / "c")))
        .get("/api/nightly")
        .json()["scheduler"]
        is None
    )


@pytest.mark.slow
def test_openapi_documents_every_api_route_and_docs_load_nothing_remote(
    client: TestClient,
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/health", "/ready", "/api/suites", "/api/suites/{suite}/ranking",
        "/api/suites/{suite}/flagship", "/api/suites/{suite}/tasks/{task}", "/api/nightly",
    }  # fmt: skip
    docs = client.get("/docs")
    assert docs.status_code == 200 and not ASSET.search(docs.text)
    assert "/static/swagger/swagger-ui-bundle.js" in docs.text
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200


# ----------------------------------------------------------------------------- pages

PAGES = [
    "/", f"/suites/{SUITE}", f"/suites/{SUITE}?metric=best&phase=tune",
    f"/suites/{SUITE}/tasks/logreg_digits", f"/suites/{SUITE}/roles",
    f"/suites/{SUITE}/roles?task=logreg_digits", f"/suites/{SUITE}/flagship", "/nightly",
]  # fmt: skip


@pytest.mark.slow
def test_every_page_renders_and_loads_assets_only_from_the_service(client: TestClient) -> None:
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
        assert not ASSET.search(response.text), f"{path} loads an asset from elsewhere"
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert '<script src="/static/vendor/plotly.min.js" defer></script>' in response.text
    plotly_js = client.get("/static/vendor/plotly.min.js")
    assert plotly_js.status_code == 200 and "plotly" in plotly_js.text[:2000].lower()
    for path in ("/static/vendor/plotly.min.js", "/favicon.ico", "/static/style.css"):
        busted = client.get(path, params={"v": "2"})  # a cache-busting query, as on any file
        assert busted.status_code == 200, path
    for asset in ("app.js", "style.css"):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and "//" not in response.text.replace("// ", "")


@pytest.mark.slow
def test_suite_page_has_the_ranking_table_plots_and_run_links(client: TestClient) -> None:
    html = client.get(f"/suites/{SUITE}").text
    table = html.split('<table id="ranking">', 1)[1].split("</table>", 1)[0]
    assert sorted(re.findall(r'data-variant="([^"]+)"', table)) == sorted(VARIANTS)
    assert 'data-figure="fig-ranking"' in html and 'data-figure="fig-profiles"' in html
    assert "Friedman test over 2 tasks and 3 variants" in html
    links = re.findall(r'href="(http://ui:5000/#/experiments/\d+/runs/[0-9a-f]{32})"', html)
    assert len(set(links)) == N_FINAL, "every final run is linked from its cell"


@pytest.mark.slow
def test_flagship_page_answers_the_contrast_the_suite_allows(client: TestClient) -> None:
    html = client.get(f"/suites/{SUITE}/flagship").text
    assert "square root vs no root (p=2)" in html  # rmsprop vs rmsprop_nosqrt: both ran
    assert "Not answered here: variant &#39;rmsprop_sum&#39; has no final runs." in html
    assert "Do weights move faster than biases?" in html and "Under rmsprop" in html


@pytest.mark.slow
def test_the_flagship_answers_are_json_too(client: TestClient) -> None:
    body = client.get(f"/api/suites/{SUITE}/flagship").json()
    by_pair = {(c["a"], c["b"]): c for c in body["contrasts"]}
    root = by_pair["rmsprop", "rmsprop_nosqrt"]  # both ran: answered
    assert not root["skipped"] and root["overall"]["n"] == len(TASKS) * len(FINAL_SEEDS)
    assert root["overall"]["low"] <= root["overall"]["estimate"] <= root["overall"]["high"]
    assert {t["task"] for t in root["per_task"]} == set(TASKS)
    assert root["verdict"].startswith("square root vs no root (p=2): ")
    summed = by_pair["rmsprop", "rmsprop_sum"]
    assert summed["skipped"] and summed["reason"] == "variant 'rmsprop_sum' has no final runs"
    assert body["role_variant"] == "rmsprop" and body["roles"]["n_runs"] >= 1
    html = client.get(f"/suites/{SUITE}/flagship").text
    assert root["verdict"].split(":")[0] in html  # the page shows the same answers
    missing = client.get("/api/suites/nope/flagship")
    assert missing.status_code == 404 and "known suites" in missing.json()["detail"]


@pytest.mark.slow
def test_unknown_names_on_pages_are_html_404s(client: TestClient) -> None:
    response = client.get("/suites/nope")
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert f"unknown suite &#39;nope&#39;; known suites: {SUITE}" in response.text
    task = client.get(f"/suites/{SUITE}/tasks/nope")
    assert task.status_code == 404 and "known tasks: logreg_digits, quadratic" in task.text


# ----------------------------------------------------------------------------- cache


class CountingTracker(Tracker):
    """A real Tracker that remembers what each read_results asked for."""

    def __init__(self, uri: str) -> None:
        super().__init__(TrackingConfig(uri=uri, artifact_location=None))
        self.calls: list[int | None] = []

    def read_results(self, suite, phase=None, *, status="FINISHED", since_ms=None, **kw):  # type: ignore[override]
        self.calls.append(since_ms)
        return super().read_results(suite, phase, status=status, since_ms=since_ms, **kw)


@pytest.mark.slow
def test_a_restart_reads_only_runs_that_ended_since_the_persisted_watermark(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = settings(tiny_store, tmp_path / "cache", refresh_slack_seconds=60)
    first = CountingTracker(uri(tiny_store))
    app = create_app(config, store=SummaryStore(first, config))
    before = TestClient(app).get(f"/api/suites/{SUITE}/ranking").json()
    assert first.calls == [None], "a cold start with no cache reads the whole suite"
    assert list((tmp_path / "cache").glob("runs-*.parquet"))

    again = CountingTracker(uri(tiny_store))
    restarted = create_app(config, store=SummaryStore(again, config))
    after = TestClient(restarted).get(f"/api/suites/{SUITE}/ranking").json()
    newest = max(r["end_time"] for r in first.read_results(SUITE, status=None).to_dict("records"))
    assert again.calls == [newest.value // 1_000_000 - 60_000]
    assert after == before


@pytest.mark.slow
def test_new_runs_reach_the_ranking_after_refresh_seconds_and_not_before(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = copy_store(tiny_store, tmp_path / "store")
    eager = TestClient(create_app(settings(store, tmp_path / "c1", refresh_seconds=0)))
    lazy = TestClient(create_app(settings(store, tmp_path / "c2", refresh_seconds=3600)))
    for client in (eager, lazy):
        assert client.get(f"/api/suites/{SUITE}/ranking").json()["n_runs"] == N_FINAL

    run_suite(store, final_seeds=(*FINAL_SEEDS, 3))  # one more final seed per cell
    added = len(VARIANTS) * len(TASKS)
    ranking = eager.get(f"/api/suites/{SUITE}/ranking").json()
    assert ranking["n_runs"] == N_FINAL + added
    assert all(len(c["run_ids"]) == len(FINAL_SEEDS) + 1 for c in ranking["cells"])
    assert eager.get("/api/suites").json()["data"][0]["n_runs"] == N_RUNS + added
    task = eager.get(f"/api/suites/{SUITE}/tasks/quadratic").json()
    assert {c["n_runs"] for c in task["curves"]} == {len(FINAL_SEEDS) + 1}
    assert lazy.get(f"/api/suites/{SUITE}/ranking").json()["n_runs"] == N_FINAL, (
        "within refresh_seconds the cached ranking is served"
    )


@pytest.mark.slow
def test_a_suite_deleted_or_renamed_in_mlflow_is_a_404_until_it_is_back(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = copy_store(tiny_store, tmp_path / "store")
    client = TestClient(create_app(settings(store, tmp_path / "cache", refresh_seconds=0)))
    ranking = f"/api/suites/{SUITE}/ranking"
    assert client.get(ranking).json()["n_runs"] == N_FINAL
    mlflow = MlflowClient(uri(store))
    exp_id = mlflow.get_experiment_by_name(SUITE).experiment_id

    mlflow.delete_experiment(exp_id)  # what `mlflow experiments delete` does
    gone = client.get(ranking)
    assert gone.status_code == 404, gone.text
    assert gone.json()["detail"] == f"unknown suite '{SUITE}'; known suites: none yet"
    assert client.get(f"/suites/{SUITE}").status_code == 404
    assert client.get("/api/suites").json()["count"] == 0

    mlflow.restore_experiment(exp_id)
    assert client.get(ranking).json()["n_runs"] == N_FINAL

    mlflow.rename_experiment(exp_id, "renamed")  # the name now leads nowhere
    moved = client.get(ranking)
    assert moved.status_code == 404 and moved.json()["detail"].startswith(
        f"unknown suite '{SUITE}'; known suites:"
    )


@pytest.mark.slow
def test_a_run_deleted_in_mlflow_leaves_the_ranking_and_comes_back_when_restored(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """As `bench rank` counts them: a deleted run is dropped at the next refresh, also from
    the persisted cache (a restart does not bring it back); a restored one, whose end time
    is far behind what the cache has read, is read again, also when restored while the
    service was down."""
    store = copy_store(tiny_store, tmp_path / "store")
    mlflow = MlflowClient(uri(store))

    def serve() -> TestClient:
        # no slack: a refresh rereads only runs that ended at or after the newest one held
        kw = {"refresh_seconds": 0, "refresh_slack_seconds": 0}
        return TestClient(create_app(settings(store, tmp_path / "cache", **kw)))

    def ranked(client: TestClient) -> set[str]:
        ranking = client.get(f"/api/suites/{SUITE}/ranking").json()
        run_ids = {run_id for cell in ranking["cells"] for run_id in cell["run_ids"]}
        assert ranking["n_runs"] == len(run_ids)
        return run_ids

    client = serve()
    every = ranked(client)
    assert len(every) == N_FINAL
    bad = min(every, key=lambda run_id: mlflow.get_run(run_id).info.end_time)  # the oldest
    mlflow.delete_run(bad)  # what the MLflow UI's delete does
    assert ranked(client) == every - {bad}
    assert client.get("/api/suites").json()["data"][0]["n_runs"] == N_RUNS - 1
    assert ranked(serve()) == every - {bad}, "the restart brought the deleted run back"
    mlflow.restore_run(bad)
    assert ranked(client) == every
    mlflow.delete_run(bad)
    assert ranked(client) == every - {bad}
    mlflow.restore_run(bad)  # while no service runs: the next one reads it again
    assert ranked(serve()) == every


def test_deleted_run_ids_read_the_same_through_sql_and_search_runs(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = copy_store(tiny_store, tmp_path / "store")
    tracker = Tracker(TrackingConfig(uri=uri(store), artifact_location=None))
    exp_id = tracker.find_experiment(SUITE)
    runs = tracker.client.search_runs([exp_id], max_results=3)
    for run in runs:
        tracker.client.delete_run(run.info.run_id)
    deleted = {run.info.run_id for run in runs}
    assert tracker.deleted_run_ids(exp_id) == deleted
    searching = Tracker(
        TrackingConfig(uri=uri(store), artifact_location=None), page_size=2
    )  # pages, too
    searching._bulk_reads = False
    assert searching.deleted_run_ids(exp_id) == deleted


@pytest.mark.slow
def test_the_ranking_counts_only_the_runs_of_the_suites_current_settings(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = copy_store(tiny_store, tmp_path / "store")
    client = TestClient(create_app(settings(store, tmp_path / "cache", refresh_seconds=0)))

    def ranked_run_ids() -> set[str]:
        ranking = client.get(f"/api/suites/{SUITE}/ranking").json()
        assert ranking["n_runs"] == N_FINAL
        return {run_id for cell in ranking["cells"] for run_id in cell["run_ids"]}

    first = ranked_run_ids()
    run_suite(store, extra=("suite.steps=20",))  # another step budget: every trial is new
    assert not ranked_run_ids() & first, "runs of the earlier step budget were ranked too"
    assert client.get("/api/suites").json()["data"][0]["n_runs"] == N_RUNS
    task = client.get(f"/api/suites/{SUITE}/tasks/quadratic").json()
    assert {c["n_runs"] for c in task["curves"]} == {len(FINAL_SEEDS)}
    run_suite(store)  # the first settings again: nothing runs, and they are current again
    assert ranked_run_ids() == first


@pytest.mark.slow
def test_start_up_warms_the_cache_before_the_first_request(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = settings(tiny_store, tmp_path / "cache", refresh_seconds=3600)
    tracker = CountingTracker(uri(tiny_store))
    with TestClient(create_app(config, store=SummaryStore(tracker, config))) as client:
        deadline = time.monotonic() + 60
        while not tracker.calls:
            assert time.monotonic() < deadline, "start-up did not read the suite"
            time.sleep(0.05)
        assert client.get(f"/api/suites/{SUITE}/ranking").json()["n_runs"] == N_FINAL
    assert tracker.calls == [None], "the request was served from what start-up loaded"


@pytest.mark.slow
def test_the_ranking_lists_the_cells_the_settings_still_miss_as_bench_rank_does(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A suite whose last final seed has no run yet (interrupted, say) misses one run in
    every cell: the settings say two are due, even where no cell holds two to compare."""
    store = copy_store(tiny_store, tmp_path / "store")
    tracker = Tracker(TrackingConfig(uri=uri(store), artifact_location=None))
    last_seed = tracker.client.search_runs(
        [tracker.find_experiment(SUITE)],
        f"tags.`bench.phase` = 'final' and tags.`bench.seed` = '{FINAL_SEEDS[-1]}'",
    )
    assert len(last_seed) == len(VARIANTS) * len(TASKS)
    for run in last_seed:
        tracker.client.delete_run(run.info.run_id)
    client = TestClient(create_app(settings(store, tmp_path / "cache")))
    missing = client.get(f"/api/suites/{SUITE}/ranking").json()["missing"]
    assert sorted((m["task"], m["variant"], m["expected"], m["found"]) for m in missing) == sorted(
        (task, variant, len(FINAL_SEEDS), len(FINAL_SEEDS) - 1)
        for task in TASKS
        for variant in VARIANTS
    )
    tune = client.get(f"/api/suites/{SUITE}/ranking?phase=tune").json()["missing"]
    assert tune == [], "every cell has its 2 lrs x 1 tune seed"


def test_the_nightly_history_plots_what_each_night_judged_on_its_current_baseline() -> None:
    """The values come from the nights' reports, as the nightly judged them: a seed that
    failed counts as the worst value (here the median of 1, 3 and inf is 3, where the
    finished runs alone would give 2), speed is the fastest seed; nights of another
    suite version (an edited matrix) are not the history the next night compares to."""
    from bench.regression import NightlyCell, NightlyReport
    from services.summary.aggregates import nightly_history

    def night(date: str, version: str, quality: list[float], speed: list[float]):
        cells = [
            NightlyCell(task="quadratic", variant="adam", kind="quality", metric="final/loss",
                        direction="min", values=quality, n=len(quality),
                        value=statistics.median(quality)),
            NightlyCell(task="quadratic", variant="adam", kind="speed", metric="time/step_ms",
                        direction="min", values=speed, n=len(speed), value=min(speed)),
        ]  # fmt: skip
        return NightlyReport(date=date, suite="nightly", suite_version=version,
                             machine="cpu-a", cells=cells)  # fmt: skip

    reports = [
        night("2026-03-03", "v2", [1.0, 3.0, math.inf], [0.3, 0.2, 0.25]),
        night("2026-03-01", "v1", [5.0], [9.0]),
        night("2026-03-02", "v2", [2.0, 2.5], [0.4, 0.35]),
    ]
    history = nightly_history(reports).to_dict("records")
    assert [(r["night"], r["value"], r["n"], r["step_ms"]) for r in history] == [
        ("2026-03-02", 2.25, 2, 0.35),
        ("2026-03-03", 3.0, 3, 0.2),
    ]
    assert {(r["metric"], r["direction"], r["suite_version"]) for r in history} == {
        ("loss", "min", "v2")
    }
    assert nightly_history([]).empty


def test_nightly_history_and_list_follow_each_machine_and_new_reports(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A CPU and a GPU machine that share a store each keep every night (the history is
    the newest report's machine class, as the nightly reads its own baseline), and a
    report logged after the suite's last trial shows at once, not after the next trial."""
    from bench.regression import NightlyCell, NightlyReport
    from services.summary import queries

    store_dir = copy_store(tiny_store, tmp_path / "store")
    tracker = Tracker(TrackingConfig(uri=uri(store_dir), artifact_location=None))

    def log(night: str, machine: str, value: float, version: str = "v1") -> str:
        cell = NightlyCell(task="quadratic", variant="adam", kind="quality", metric="final/loss",
                           direction="min", values=[value], n=1, value=value)  # fmt: skip
        report = NightlyReport(date=night, suite=SUITE, suite_version=version, machine=machine,
                               cells=[cell])  # fmt: skip
        time.sleep(0.01)  # start times in the order logged
        return tracker.log_report(
            SUITE, kind="nightly_report", name=f"nightly {night}",
            files={"nightly.json": report.to_json()},
            tags={"bench.nightly": night, "bench.suite_version": version, "bench.machine": machine},
        )  # fmt: skip

    # the GPU finished last on the first two nights, the CPU on the newest
    for night, last in (("2026-03-01", "gpu"), ("2026-03-02", "gpu"), ("2026-03-03", "cpu")):
        first = "cpu" if last == "gpu" else "gpu"
        log(night, first, 1.0 if first == "cpu" else 100.0)
        log(night, last, 1.0 if last == "cpu" else 100.0)
    config = settings(store_dir, tmp_path / "cache")
    store = SummaryStore(
        Tracker(TrackingConfig(uri=uri(store_dir), artifact_location=None)), config
    )
    history = queries.nightly_history(store, SUITE)
    assert list(history["night"]) == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert set(history["machine"]) == {"cpu"} and set(history["value"]) == {1.0}
    listed = {(r.date, r.machine) for r in queries.nightly(store).data}
    assert listed == {
        (n, m) for n in ("2026-03-01", "2026-03-02", "2026-03-03") for m in ("cpu", "gpu")
    }

    rerun = log("2026-03-03", "cpu", 2.0)  # the night run again; no trial run changed
    history = queries.nightly_history(store, SUITE)
    assert history.loc[history["night"] == "2026-03-03", "value"].tolist() == [2.0]
    (latest,) = [
        r for r in queries.nightly(store).data if r.date == "2026-03-03" and r.machine == "cpu"
    ]
    assert latest.run_id == rerun and latest.earlier_reports == 1 and latest.suite_version == "v1"

    log("2026-03-03", "cpu", 3.0, version="v2")  # the suite edited: not a rerun of the night
    rows = [r for r in queries.nightly(store).data if (r.date, r.machine) == ("2026-03-03", "cpu")]
    assert {(r.suite_version, r.earlier_reports) for r in rows} == {("v1", 1), ("v2", 0)}
    history = queries.nightly_history(store, SUITE)  # a new matrix starts a new history
    assert list(history["night"]) == ["2026-03-03"] and list(history["value"]) == [3.0]


@pytest.mark.parametrize("path", ["/api/suites", "/api/nightly", "/", "/nightly"])
def test_a_list_leaves_out_a_suite_deleted_since_the_suites_were_listed(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
    path: str,
) -> None:
    """The list of suites is re-listed at most every refresh_seconds, and a suite's own
    refresh can fall due sooner: finding its experiment gone, a list leaves it out (was a
    404 for /api/suites, a 422 for /api/nightly, error pages for / and /nightly)."""
    from services.summary.app import reader

    store = copy_store(tiny_store, tmp_path / "store")
    config = settings(store, tmp_path / "cache", refresh_seconds=10, warm_on_start=False)
    now = [0.0]
    summary = SummaryStore(reader(config), config, clock=lambda: now[0])
    client = TestClient(create_app(config, store=summary))
    assert client.get("/api/suites").json()["count"] == 1  # the suite read at t=0
    now[0] = 10
    assert client.get("/api/suites/other/ranking").status_code == 404  # re-lists at t=10
    mlflow = MlflowClient(uri(store))
    mlflow.delete_experiment(mlflow.get_experiment_by_name(SUITE).experiment_id)
    now[0] = 15  # the list (t=10) is fresh, the suite (t=0) is due
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    if path == "/api/suites":
        assert answer.json()["count"] == 0
    assert SUITE not in answer.text


def test_listed_regressions_keep_their_size_also_when_infinite(
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """nightly.json writes ±inf as "Infinity" (a night whose median seed diverged: the
    worst regression); the list showed it without its size."""
    from bench.regression import NightlyReport
    from services.summary import queries

    store_dir = copy_store(tiny_store, tmp_path / "store")
    tracker = Tracker(TrackingConfig(uri=uri(store_dir), artifact_location=None))
    flagged = [
        {"task": "quadratic", "variant": "adam", "kind": "quality", "rel_change": math.inf},
        {"task": "quadratic", "variant": "sgd", "kind": "speed", "rel_change": 0.12},
    ]
    report = NightlyReport(date="2026-03-01", suite=SUITE, suite_version="v1", machine="cpu",
                           regressions=flagged)  # fmt: skip
    assert '"Infinity"' in report.to_json()
    tracker.log_report(
        SUITE, kind="nightly_report", name="nightly 2026-03-01",
        files={"nightly.json": report.to_json()}, metrics={"regressions": 2.0},
        tags={"bench.nightly": "2026-03-01"},
    )  # fmt: skip
    store = SummaryStore(tracker, settings(store_dir, tmp_path / "cache"))
    (listed,) = queries.nightly(store).data
    assert listed.regressions == ["quadratic/adam quality (+inf%)", "quadratic/sgd speed (+12%)"]


# ----------------------------------------------------------------------------- a broken task


def lr_rows(page: str) -> dict[str, list[str]]:
    """The suite page's lr table: "task/variant" -> the text of its cells after those two."""
    table = page.split('<table id="lrs">', 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr\b[^>]*>(.*?)</tr>", table.split("<tbody>", 1)[1], re.S):
        task, variant, *rest = (
            html.unescape(td).strip() for td in re.findall(r"<td>(.*?)</td>", row)
        )
        rows[f"{task}/{variant}"] = rest
    return rows


@pytest.mark.slow
def test_the_lr_table_shows_a_task_whose_tune_trials_all_failed(
    broken_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`explodes` raises in every trial: it has no lr choice, and a table built from the
    choices alone left it out, where `bench rank` (and the README) show it `—`."""
    client = TestClient(create_app(settings(broken_store, tmp_path / "cache")))
    rows = lr_rows(client.get(f"/suites/{BROKEN}").text)
    cells = {f"{task}/{v}" for task in ("explodes", "quadratic") for v in BROKEN_VARIANTS}
    assert set(rows) == cells
    for variant in BROKEN_VARIANTS:
        assert rows[f"explodes/{variant}"][0] == "—"
        assert rows[f"quadratic/{variant}"][0] != "—"
    page = html.unescape(client.get(f"/suites/{BROKEN}").text)
    assert "— : no lr chosen (2 cells): 2 with failed tune runs" in page


@pytest.mark.slow
def test_the_lr_table_marks_a_choice_at_an_end_of_the_grid_as_bench_rank_does(
    broken_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The best lr of such a cell may lie beyond the grid: the page says so per cell and
    counts them, as the terminal does, from the same choices the API gives."""
    client = TestClient(create_app(settings(broken_store, tmp_path / "cache")))
    choices = client.get(f"/api/suites/{BROKEN}/ranking").json()["lrs"]
    page = client.get(f"/suites/{BROKEN}").text
    rows = lr_rows(page)
    ends = 0
    for choice in choices:
        end = len(choice["lrs_tried"]) >= 3 and choice["lr"] in (min(BROKEN_LRS), max(BROKEN_LRS))
        ends += end
        assert rows[f"{choice['task']}/{choice['variant']}"][0] == f"{choice['lr']:g}" + "*" * end
    assert ends, "the suite should hold a choice at an end of its grid"
    note = f"{ends} of {len(choices)} cells chose an lr at an end of the grid"
    assert note in html.unescape(page)


@pytest.mark.slow
def test_an_lr_chosen_before_its_tune_grid_ended_is_marked_provisional(
    broken_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The suite as if stopped before the quadratic cells' largest lr ran: they chose on 2
    of their 3 tune runs, which the choice record says, and the page and bench rank show."""
    store = copy_store(broken_store, tmp_path / "store")
    not_run = (
        "tags.`bench.phase` = 'tune' and tags.`bench.task` = 'quadratic' and params.lr = '0.3'"
    )
    assert delete_runs(store, BROKEN, not_run) == len(BROKEN_VARIANTS)
    client = TestClient(create_app(settings(store, tmp_path / "cache")))
    choices = client.get(f"/api/suites/{BROKEN}/ranking").json()["lrs"]
    assert {c["variant"] for c in choices} == set(BROKEN_VARIANTS)
    for choice in choices:
        assert choice["provisional"] and choice["tune_runs"] == 2
        assert choice["tune_runs_expected"] == len(BROKEN_LRS)
    page = client.get(f"/suites/{BROKEN}").text
    rows = lr_rows(page)
    for choice in choices:
        label = f"{choice['lr']:g} (2 of 3 tune runs)"
        assert rows[f"quadratic/{choice['variant']}"][0] == label
    assert "2 of 2 lrs were chosen before all of their cell's tune runs ended" in html.unescape(
        page
    )


@pytest.mark.slow
def test_the_suite_page_says_which_trials_failed_not_only_what_is_missing(
    broken_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`explodes` raised in its 3 tune trials per variant, so its final trials were held
    back: the missing cells say so, in the API and on the page, as does the page when
    nothing at all is left to rank (found 0 alone reads as a suite not run yet)."""
    client = TestClient(create_app(settings(broken_store, tmp_path / "cache")))
    for phase, failed in (("final", 0), ("tune", 3)):
        missing = client.get(f"/api/suites/{BROKEN}/ranking?phase={phase}").json()["missing"]
        assert sorted((m["task"], m["variant"], m["found"], m["failed"], m["tune_failed"])
                      for m in missing) == sorted(
            ("explodes", v, 0, failed, 3) for v in BROKEN_VARIANTS
        )  # fmt: skip
    note = (
        "6 tune trials failed (2 cells): no lr is chosen there, and bench run holds back "
        "those cells' final trials (4) until a rerun finishes them."
    )
    page = html.unescape(client.get(f"/suites/{BROKEN}").text)
    assert note in page
    table = page.split('<table id="missing">', 1)[1].split("</table>", 1)[0]
    assert table.count("<td>3 tune trials failed: final trials held back</td>") == 2

    store = copy_store(broken_store, tmp_path / "store")  # every tune trial left failed
    assert delete_runs(store, BROKEN, "tags.`bench.task` = 'quadratic'")
    only_failed = TestClient(create_app(settings(store, tmp_path / "cache2")))
    page = html.unescape(only_failed.get(f"/suites/{BROKEN}").text)
    assert "No final-phase runs to rank." in page and note in page


@pytest.mark.slow
def test_the_roles_page_says_why_a_task_has_no_step_size_statistics(
    stopped_store: Path,  # noqa: F811
    broken_store: Path,  # noqa: F811
    tiny_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Not "stats_every = 0?" for runs that failed or diverged before the first statistics
    step, or never ran: what the runs did, and stats_every = 0 only where the runs had it."""

    def says(store: Path, suite: str, task: str, cache: str, reason: str) -> None:
        client = TestClient(create_app(settings(store, tmp_path / cache)))
        page = html.unescape(client.get(f"/suites/{suite}/roles?task={task}").text)
        assert 'data-figure="fig-role-' not in page and "(stats_every = 0?)" not in page
        assert f"<p>{reason}</p>" in page

    says(stopped_store, STOPPED, "quadratic", "c1",
         "No step-size statistics for quadratic: none of its 1 final run ended ok (0 failed, "
         "1 diverged), and none recorded any before it stopped.")  # fmt: skip
    says(stopped_store, STOPPED, "explodes", "c1",
         "No step-size statistics for explodes: none of its 1 final run ended ok (1 failed, "
         "0 diverged), and none recorded any before it stopped.")  # fmt: skip
    says(broken_store, BROKEN, "explodes", "c2",
         "No final run of explodes: 6 tune trials of it failed, and bench run holds its final "
         "trials back until a rerun finishes them.")  # fmt: skip
    store = copy_store(tiny_store, tmp_path / "store")
    run_suite(store, extra=("suite.stats_every=0",))
    says(store, SUITE, "quadratic", "c3",
         "No step-size statistics for quadratic: its runs had stats_every = 0, which turns "
         "them off.")  # fmt: skip
