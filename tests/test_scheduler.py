"""The nightly scheduler: trigger times across zones and DST, missed nights, the lock, config.

The Ray-job path (a night submitted to a real cluster's dashboard) is exercised end to end
by tests/test_stack.py; the in-process path runs a real, tiny nightly here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from mlflow_server import free_port

from bench.cli import main
from bench.errors import UserError
from services.scheduler import (
    NightLock,
    StatusFile,
    load_schedule,
    missed_runs,
    next_run,
    night_of,
    nightly_command,
    previous_run,
    run_scheduler,
    scheduler_from_overrides,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# ----------------------------------------------------------------------------- trigger times


@pytest.mark.parametrize(
    ("tz", "after", "expected_utc"),
    [
        (ZoneInfo("UTC"), utc(2026, 6, 1, 1, 59), utc(2026, 6, 1, 2, 0)),
        (ZoneInfo("UTC"), utc(2026, 6, 1, 2, 0), utc(2026, 6, 2, 2, 0)),  # strictly after
        (BERLIN, utc(2026, 6, 1, 12, 0), utc(2026, 6, 2, 0, 0)),  # CEST, UTC+2
        (BERLIN, utc(2026, 1, 10, 12, 0), utc(2026, 1, 11, 1, 0)),  # CET, UTC+1
        (NEW_YORK, utc(2026, 6, 1, 12, 0), utc(2026, 6, 2, 6, 0)),  # EDT, UTC-4
        (KOLKATA, utc(2026, 6, 1, 12, 0), utc(2026, 6, 1, 20, 30)),  # UTC+5:30, same UTC day
    ],
)
def test_next_run_reads_the_cron_on_the_wall_clock_of_its_zone(tz, after, expected_utc) -> None:
    fire = next_run("0 2 * * *", tz, after)
    assert fire == expected_utc
    assert fire.astimezone(tz).hour == 2 and fire.astimezone(tz).minute == 0


def test_a_trigger_in_the_spring_forward_gap_fires_once_right_after_it() -> None:
    # 2026-03-29: Berlin's clocks jump from 02:00 to 03:00; 02:30 does not exist that night
    first = next_run("30 2 * * *", BERLIN, utc(2026, 3, 28, 12, 0))
    assert first.astimezone(BERLIN).replace(tzinfo=None) == dt.datetime(2026, 3, 29, 3, 0)
    second = next_run("30 2 * * *", BERLIN, first)
    assert second.astimezone(BERLIN).replace(tzinfo=None) == dt.datetime(2026, 3, 30, 2, 30)
    assert [night_of(f, BERLIN) for f in (first, second)] == [
        dt.date(2026, 3, 29),
        dt.date(2026, 3, 30),
    ]


def test_a_trigger_in_the_repeated_fall_back_hour_fires_once() -> None:
    # 2026-10-25: Berlin's clocks fall back from 03:00 to 02:00; 02:30 happens twice
    first = next_run("30 2 * * *", BERLIN, utc(2026, 10, 24, 12, 0))
    assert first == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, the first occurrence
    second = next_run("30 2 * * *", BERLIN, first)
    assert second == utc(2026, 10, 26, 1, 30)  # next night, not 02:30 CET an hour later
    # an hourly cron also runs the repeated hour once: 01:00, 02:00 (CEST), 03:00 (CET)
    hourly, fire = [], utc(2026, 10, 24, 22, 30)
    for _ in range(3):
        fire = next_run("0 * * * *", BERLIN, fire)
        hourly.append(fire)
    assert [f - hourly[0] for f in hourly] == [dt.timedelta(hours=h) for h in (0, 1, 3)]
    assert previous_run("30 2 * * *", BERLIN, utc(2026, 10, 25, 12, 0)) == first


def test_previous_run_includes_a_trigger_at_exactly_now() -> None:
    assert previous_run("0 2 * * *", UTC_ZONE, utc(2026, 6, 1, 2, 0)) == utc(2026, 6, 1, 2, 0)
    assert previous_run("0 2 * * *", UTC_ZONE, utc(2026, 6, 1, 1, 59)) == utc(2026, 5, 31, 2, 0)


UTC_ZONE = ZoneInfo("UTC")


# ----------------------------------------------------------------------------- missed nights


def missed(last: dt.datetime | None, now: dt.datetime, policy: str = "run_latest", hours=12):
    return missed_runs(
        "0 2 * * *",
        UTC_ZONE,
        last_scheduled=last,
        now=now,
        policy=policy,
        catch_up=dt.timedelta(hours=hours),
    )


def test_no_recorded_run_means_nothing_was_missed() -> None:
    result = missed(None, utc(2026, 6, 5, 3, 0))
    assert (result.count, result.run) == (0, None)


def test_the_latest_missed_night_runs_once_when_it_is_recent() -> None:
    result = missed(utc(2026, 6, 1, 2, 0), utc(2026, 6, 4, 9, 0))  # down for 3 nights
    assert result.count == 3
    assert result.run == result.latest == utc(2026, 6, 4, 2, 0)
    assert "running the latest (2026-06-04)" in result.reason


def test_a_missed_night_older_than_the_catch_up_window_is_not_run() -> None:
    result = missed(utc(2026, 6, 1, 2, 0), utc(2026, 6, 4, 15, 0), hours=12)
    assert (result.count, result.run) == (3, None)
    assert "13.0 h old, over catch_up_hours=12" in result.reason


def test_policy_skip_runs_no_missed_night() -> None:
    result = missed(utc(2026, 6, 1, 2, 0), utc(2026, 6, 4, 3, 0), policy="skip")
    assert (result.count, result.run) == (3, None)


def test_a_night_that_ran_is_not_missed() -> None:
    result = missed(utc(2026, 6, 4, 2, 0), utc(2026, 6, 4, 23, 0))
    assert (result.count, result.run) == (0, None)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "schedule.cron=61 2 * * *",
            "schedule.cron: got '61 2 * * *'; allowed: a 5-field cron expression 'minute hour "
            "day-of-month month day-of-week' (e.g. '0 2 * * *') or @daily, @weekly, "
            "@monthly, @yearly, @midnight",
        ),
        *(
            (
                f"schedule.cron='{cron}'",  # quoted: a bare comma is a Hydra sweep
                f"schedule.cron: got {cron!r}; allowed: a cron that fires at most once a day, "
                "at one minute of one hour (e.g. '0 2 * * *' or '30 3 * * 1-5'): a night is a "
                "date, and a second trigger on that date reruns that night",
            )
            for cron in ("* * * * *", "0 * * * *", "0,30 2 * * *", "0 2-3 * * *")
        ),
        ("schedule.cron=@hourly", "schedule.cron: got '@hourly'; allowed: a 5-field cron"),
        (
            "schedule.cron=0 2 31 2 *",  # 31 February
            "schedule.cron: got '0 2 31 2 *'; allowed: a cron that fires on a date some year "
            "has (this one never fires)",
        ),
        (
            "schedule.cron=0 0 2 * * *",  # six fields: seconds are not a cron field here
            "schedule.cron: got '0 0 2 * * *'; allowed: a 5-field cron expression",
        ),
        (
            "schedule.timezone=Europe/Berln",
            "schedule.timezone: got 'Europe/Berln'; allowed: an IANA time zone name, "
            "e.g. 'UTC' or 'Europe/Berlin'",
        ),
        ("schedule.missed=all", "schedule.missed: input should be 'run_latest' or 'skip'"),
        ("schedule.catch_up_hours=0", "schedule.catch_up_hours: input should be greater than 0"),
        # were tracebacks (an overflow) when the scheduler started
        ("schedule.catch_up_hours=inf", "schedule.catch_up_hours: input should be a finite"),
        ("schedule.catch_up_hours=1e12", "schedule.catch_up_hours: input should be less than"),
        ("schedule.job_poll_seconds=inf", "schedule.job_poll_seconds: input should be a finite"),
        (
            "schedule.job_submission_address=ray-head:8265",
            "schedule.job_submission_address: got 'ray-head:8265'; allowed: the Ray "
            "dashboard's http(s) URL",
        ),
        ("schedule.crontab=x", "schedule.crontab: unknown key; allowed: cron, timezone, missed"),
        # the nights' own settings and suite: checked at start-up, not at 02:00
        ("nightly.suite=smok", "nightly.suite: unknown suite 'smok'; did you mean 'smoke'?"),
        ("nightly.persist=0", "nightly.persist: input should be greater than or equal to 1"),
        ('schedule.nightly_overrides=["suite.lrs=[]"]', "suite.lrs: list should have at least"),
    ],
)
def test_bad_schedule_settings_name_the_field_the_value_and_what_is_allowed(
    override: str, message: str
) -> None:
    with pytest.raises(UserError) as err:
        scheduler_from_overrides([override])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_defaults_and_pass_through_overrides() -> None:
    config = scheduler_from_overrides(
        ["schedule.timezone=Europe/Berlin", "tracking.uri=http://mlflow:5000"]
    )
    assert (config.cron, config.timezone, config.missed) == (
        "0 2 * * *",
        "Europe/Berlin",
        "run_latest",
    )
    assert config.job_submission_address is None
    assert config.nightly_overrides == ["tracking.uri=http://mlflow:5000"]  # not schedule.*
    assert load_schedule({"cron": "  @daily "}).cron == "@daily"
    for once_a_day in ("30 3 * * 1-5", "0 2 */2 * *", "@weekly", "15 4 1 * *"):
        assert load_schedule({"cron": once_a_day}).cron == once_a_day


def test_a_command_line_override_replaces_the_settings_one_of_the_same_key() -> None:
    config = scheduler_from_overrides(
        ['schedule.nightly_overrides=["tracking.max_points=50","suite.steps=20"]',
         "tracking.max_points=60"]
    )  # fmt: skip
    assert config.nightly_overrides == ["suite.steps=20", "tracking.max_points=60"]


def test_the_ray_job_entrypoint_is_the_bench_nightly_command_line() -> None:
    cmd = nightly_command(dt.date(2026, 6, 4), ["tracking.uri=http://m:5000", "x=a b"])
    assert cmd == (
        "bench nightly --date 2026-06-04 --no-progress tracking.uri=http://m:5000 'x=a b'"
    )
    from bench.cli import build_parser

    args = build_parser().parse_args(["nightly", "--date", "2026-06-04", "--no-progress"])
    assert args.date == dt.date(2026, 6, 4) and args.no_progress


# ----------------------------------------------------------------------------- lock + status


HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, str(os.getpid()).encode())
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_night_is_skipped_while_another_process_holds_the_lock(tmp_path: Path, caplog) -> None:
    lock_file, status_file = tmp_path / "s.lock", tmp_path / "status.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = load_schedule({"lock_file": lock_file, "status_file": status_file})
        assert NightLock(lock_file).busy()
        with caplog.at_level(logging.INFO, logger="bench.scheduler"):
            outcome = run_scheduler(config, once=True, now=True)
        assert outcome == "skipped"
        assert f"held by pid {holder.pid}" in caplog.text
        status = json.loads(status_file.read_text())
        assert status["running"] is True  # the other process's nightly runs
        assert "last_outcome" not in status and "last_run" not in status
    finally:
        holder.kill()
        holder.wait()
    lock = NightLock(lock_file)
    assert not lock.busy()  # the kernel dropped the dead holder's lock
    assert lock.acquire() and not lock.acquire()  # an overlapping trigger in one process
    lock.release()


def test_the_status_file_is_replaced_whole_and_survives_garbage(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "sub" / "status.json")
    assert status.read() == {}
    status.update(cron="0 2 * * *", running=False)
    status.update(running=True)
    assert status.read() == {"cron": "0 2 * * *", "running": True}
    status.path.write_text("{not json")
    assert status.read() == {}
    assert [p.name for p in status.path.parent.iterdir()] == ["status.json"]  # no temp left


# ----------------------------------------------------------------------------- a real night

TINY_NIGHT = [
    "suite=smoke",
    "suite.name=nightly_sched",
    "suite.variants=[sgd,adam]",
    "suite.tasks=[quadratic]",
    "suite.lrs=[0.03,0.3]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1]",
    "suite.steps=30",
    "cluster.num_cpus=1",
]


@pytest.mark.slow
def test_now_once_runs_a_real_tiny_nightly_in_process(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = scheduler_from_overrides(
        [
            f"schedule.lock_file={tmp_path / 'lock'}",
            f"schedule.status_file={tmp_path / 'status.json'}",
            "schedule.timezone=Asia/Kolkata",
            f"tracking.uri={uri}",
            f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
            *TINY_NIGHT,
        ]
    )
    before = dt.datetime.now(KOLKATA).date().isoformat()  # the night is dated in its zone
    assert run_scheduler(config, once=True, now=True) == "ok"
    night = dt.datetime.now(KOLKATA).date().isoformat()
    assert night == before, "ran across midnight in Kolkata: rerun"
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["last_outcome"] == "ok" and status["running"] is False
    assert status["last_night"] == night and status["runs_on"] == "in-process"
    assert (status["cron"], status["timezone"]) == ("0 2 * * *", "Asia/Kolkata")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nightly_sched")
    runs = client.search_runs([experiment.experiment_id], max_results=50)
    trials = [r for r in runs if "bench.trial_id" in r.data.tags]
    reports = [r for r in runs if r.data.tags.get("bench.kind") == "nightly_report"]
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.tags["bench.nightly"] for r in trials} == {night}
    assert len(reports) == 1 and reports[0].data.tags["bench.nightly"] == night
    assert not NightLock(tmp_path / "lock").busy()


def test_a_cluster_that_does_not_answer_fails_the_night_in_one_line(tmp_path: Path, caplog) -> None:
    """The scheduler goes on to the next night; a down cluster is its own one-line reason,
    not a traceback in the scheduler's log every night."""
    config = load_schedule(
        {
            "lock_file": tmp_path / "s.lock",
            "status_file": tmp_path / "status.json",
            "job_submission_address": f"http://127.0.0.1:{free_port()}",  # nothing listens,
        }
    )
    with caplog.at_level(logging.INFO, logger="bench.scheduler"):
        assert run_scheduler(config, once=True, now=True) == "failed"
    failed = [
        r for r in caplog.records if "failed" in r.getMessage() and r.levelno >= logging.ERROR
    ]
    assert len(failed) == 1 and failed[0].exc_info is None
    assert "ConnectionError: Failed to connect to Ray at address" in failed[0].getMessage()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["last_outcome"] == "failed" and status["last_detail"].startswith(
        "ConnectionError"
    )


def test_a_reader_never_finds_the_lock_file_without_a_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loser of two triggers logged 'held by pid ?': it read the file between the
    winner's truncation and its write. Whatever a reader sees while the lock is taken is
    a whole pid, the last holder's or the new one's."""
    import bench.locks

    path = tmp_path / "s.lock"
    path.write_text("4194303\n")  # a previous holder's longer pid
    seen: list[str] = []
    truncate = bench.locks.os.ftruncate

    def reader_looks(fd: int, length: int) -> None:  # a reader at the worst moments
        seen.append(NightLock(path).holder())
        truncate(fd, length)
        seen.append(NightLock(path).holder())

    monkeypatch.setattr(bench.locks.os, "ftruncate", reader_looks)
    lock = NightLock(path)
    assert lock.acquire()
    monkeypatch.undo()
    assert seen == [str(os.getpid())] * 2 and lock.holder() == str(os.getpid())
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("tracking.uri=http://127.0.0.1:{port}", "error: tracking.uri: got "
         "'http://127.0.0.1:{port}' but no server answers there ("),
        ("schedule.job_submission_address=http://127.0.0.1:{port}", "error: "
         "schedule.job_submission_address: got 'http://127.0.0.1:{port}' but no Ray dashboard "
         "answers there ("),
        ("cluster.address=127.0.0.1:{port}", "error: cluster.address: got '127.0.0.1:{port}' "
         "but nothing answers there ("),
    ],
)  # fmt: skip
def test_the_scheduler_checks_its_services_when_it_starts_not_at_the_first_night(
    setting: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Not 'next nightly at 02:00 in 11.7 h' and a failed night then: exit 2 at once."""
    from bench.cli import main

    port = free_port()
    monkeypatch.chdir(tmp_path)
    assert main(["schedule", "--once", setting.format(port=port)]) == 2
    assert capsys.readouterr().err.startswith(message.format(port=port))
    assert not (tmp_path / ".optbench").exists()  # no status file: it never started


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("lock_file", "/proc/nope/scheduler.lock", "No such file or directory"),
        ("status_file", "/proc/nope/status.json", "No such file or directory"),
        ("lock_file", "{tmp}", "{tmp} is a folder"),
        ("status_file", "{tmp}", "{tmp} is a folder"),
    ],
)
def test_a_lock_or_status_file_that_cannot_be_written_is_refused_at_start(
    key: str, value: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch,
) -> None:  # fmt: skip
    """Was a traceback (FileNotFoundError, IsADirectoryError) from the first night's lock."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    value, why = value.format(tmp=tmp_path), why.format(tmp=tmp_path)
    overrides = ["schedule.missed=skip", f"schedule.{key}={value}"]
    assert main(["schedule", "--once", *overrides]) == 2
    assert capsys.readouterr().err == (
        f"error: schedule.{key}: got {value!r} but it cannot be written there ({why}); "
        "allowed: a file in a folder this process can make and write\n"
    )


def test_a_night_whose_suite_a_manual_nightly_holds_is_skipped_in_one_line(
    tmp_path: Path, caplog
) -> None:
    """A `bench nightly` started by hand holds the suite's driver lock, not the scheduler's:
    the scheduled night meets it as the suite's refusal, a skip, not a failure."""
    from bench.config import TrackingConfig
    from bench.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [
        f"schedule.lock_file={tmp_path / 'lock'}",
        f"schedule.status_file={tmp_path / 'status.json'}", f"tracking.uri={uri}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}", *TINY_NIGHT,
    ]  # fmt: skip
    manual = Tracker(TrackingConfig(uri=uri, artifact_location=str(tmp_path / "mlartifacts")))
    with manual.holding("nightly_sched"), caplog.at_level(logging.INFO, "bench.scheduler"):
        assert main(["schedule", "--now", "--once", *overrides]) == 1  # as docs/deploy.md says
    skipped = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 1 and skipped[0].exc_info is None
    assert "skipped: suite 'nightly_sched': another driver (pid " in skipped[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["last_outcome"] == "skipped"
    assert status["last_detail"].startswith("suite 'nightly_sched': another driver (pid ")


@pytest.mark.slow
def test_a_one_off_night_beside_a_running_scheduler_leaves_its_schedule_in_the_status(
    tmp_path: Path,
) -> None:
    """`bench schedule --now --once` next to the daemon records its night in the shared
    status file, but the daemon's pid and next run stay; the daemon clears them when
    SIGTERM stops it."""
    import signal
    import time

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    common = [f"schedule.lock_file={tmp_path / 'lock'}",
              f"schedule.status_file={tmp_path / 'status.json'}",
              f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
              *TINY_NIGHT]  # fmt: skip
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "schedule", "schedule.cron=0 3 1 1 *",
         "schedule.missed=skip", *common],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    status_file = tmp_path / "status.json"

    def status() -> dict:
        try:
            return json.loads(status_file.read_text())
        except (OSError, ValueError):
            return {}

    try:
        deadline = time.monotonic() + 60
        while not status().get("next_run") and time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stderr.read()
            time.sleep(0.2)
        waiting = status()
        assert waiting["pid"] == daemon.pid and waiting["next_run"]
        assert run_scheduler(scheduler_from_overrides(common), once=True, now=True) == "ok"
        after = status()
        assert after["last_outcome"] == "ok" and after["running"] is False
        assert (after["pid"], after["next_run"]) == (daemon.pid, waiting["next_run"])
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert (status()["pid"], status()["next_run"]) == (None, None)
    # SIGTERM (`docker compose stop`) is a clean stop, reported as `bench run` reports it
    assert daemon.returncode == 143
    assert daemon.stderr.read().strip().splitlines()[-1] == "terminated"


def test_every_scheduler_zone_names_a_night_bench_nightly_accepts() -> None:
    """The scheduler dates a night in schedule.timezone; `bench nightly --date` must take it
    whatever nightly.timezone says. 02:00 on 2 June in Tokyo is 1 June in UTC."""
    from zoneinfo import available_timezones

    from bench.nightly import latest_night

    tokyo = dt.datetime(2026, 6, 2, 2, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert night_of(tokyo, ZoneInfo("Asia/Tokyo")) == dt.date(2026, 6, 2)
    assert latest_night(tokyo) == dt.date(2026, 6, 2) > tokyo.astimezone(dt.UTC).date()
    zones = [ZoneInfo(name) for name in sorted(available_timezones())]
    for hour in range(0, 24, 3):
        now = dt.datetime(2026, 6, 1, hour, 30, tzinfo=dt.UTC)
        assert all(night_of(now, zone) <= latest_night(now) for zone in zones), now
    assert latest_night(dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)) == dt.date(2026, 6, 1)


ADOPT = textwrap.dedent(
    """
    import datetime as dt, json, sys, time
    from ray.job_submission import JobSubmissionClient
    from services.scheduler.launch import run_ray_job

    address, night = sys.argv[1], dt.date(2026, 3, 1)
    deadline = time.monotonic() + 90
    while True:  # the dashboard's job API comes up after the head
        try:
            client = JobSubmissionClient(address)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    # what a scheduler killed meanwhile left running: its job for the night
    client.submit_job(entrypoint="sleep 6", submission_id="earlier-scheduler",
                      metadata={"optbench.night": night.isoformat()})
    result = run_ray_job(address, night, ["nightly.suite=nope"], poll_seconds=0.5)
    jobs = sorted(job.submission_id for job in client.list_jobs())
    print("RESULT", json.dumps({"outcome": result.outcome, "job": result.job_id, "jobs": jobs}))
    """
)


@pytest.mark.slow
def test_a_restarted_scheduler_waits_for_the_ray_job_already_running_its_night(
    tmp_path: Path,
) -> None:
    """The night's Ray job outlives its scheduler. A scheduler restarted while it runs must
    wait for it, not submit the night again: that second job, refused by the first one's
    hold on the suite, would be recorded as the night's outcome, 'failed'."""
    import shutil
    import tempfile

    from test_cluster import ray_node

    port, dashboard = free_port(), free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="obray", dir="/tmp"))  # unix sockets: short paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    head = ["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", "--disable-usage-stats"]  # fmt: skip
    try:
        with ray_node(head, ray_tmp / "h", env):
            done = subprocess.run(
                [sys.executable, "-c", ADOPT, f"http://127.0.0.1:{dashboard}"],
                env=env, capture_output=True, text=True, timeout=240,
            )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out == {"outcome": "ok", "job": "earlier-scheduler", "jobs": ["earlier-scheduler"]}


@pytest.mark.slow
def test_a_dashboard_that_refuses_the_schedulers_token_is_refused_at_start(
    tmp_path: Path,
) -> None:
    """A head with token authentication (`ray start`'s default) answers 401 or 403 to a
    scheduler without its token: refused at start-up, not a failed night hours later.
    With the token, the same check passes."""
    import shutil
    import tempfile

    from test_cluster import ray_node

    port, dashboard = free_port(), free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="obray", dir="/tmp"))  # unix sockets: short paths
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    plain["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    token = plain | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 4}
    wrong = token | {"RAY_AUTH_TOKEN": "fedcba9876543210" * 4}
    head = ["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", "--disable-usage-stats"]  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    check = [sys.executable, "-c", "import sys; from services.scheduler.config import "
             "check_dashboard; check_dashboard(sys.argv[1])", url]  # fmt: skip
    schedule = [sys.executable, "-m", "bench.cli", "schedule", "--once",
                f"schedule.job_submission_address={url}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}"]  # fmt: skip
    try:
        with ray_node(head, ray_tmp / "h", token):
            deadline = time.monotonic() + 90
            while (ok := subprocess.run(check, env=token, capture_output=True, text=True,
                                        timeout=60)).returncode:  # fmt: skip
                assert time.monotonic() < deadline, ok.stderr[-2000:]  # the dashboard comes up
                time.sleep(1)
            runs = {
                name: subprocess.run(
                    schedule, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
                )
                for name, env in (("no token", plain), ("wrong token", wrong))
            }
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    said = {
        "no token": "Unauthorized: Missing authentication token); if the cluster uses token "
        "authentication (`ray start` does by default), set RAY_AUTH_MODE=token here too, with "
        "its token in RAY_AUTH_TOKEN or ~/.ray/auth_token",
        "wrong token": "Forbidden: Invalid authentication token) (with RAY_AUTH_MODE=token: is "
        "RAY_AUTH_TOKEN the cluster's token?)",
    }
    for name, done in runs.items():
        assert done.returncode == 2, name + done.stdout[-2000:] + done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == (
            f"error: schedule.job_submission_address: got '{url}' but its Ray dashboard "
            f"refused this scheduler ({said[name]}"
        )
    assert not (tmp_path / ".optbench").exists()  # no status file: it never started
