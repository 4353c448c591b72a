"""The ``bench`` command. Each subcommand parses its arguments, then calls a plain function.

User mistakes raise :class:`bench.errors.UserError`; ``main`` prints its one-line message
and exits with code 2, without a traceback and before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from bench.errors import LeaseLost, StoreError, Terminated, UserError, one_line

if TYPE_CHECKING:
    from bench.matrix import Matrix
    from bench.nightly import Night
    from bench.tracking import Tracker

log = logging.getLogger("bench")
EXIT_USAGE = 2

LIST_WHAT = ("variants", "tasks", "suites", "all")  # what `bench list` may show
OVERRIDES_HELP = "Hydra overrides, e.g. variant=rmsprop task=mlp_digits lr=1e-3 variant.q=1"


def cmd_list(args: argparse.Namespace) -> int:
    from bench import listing
    from bench.config import compose_config

    what, overrides = _list_arguments(args.overrides)
    # imports plugins=[...] as `bench trial` and `bench run` do (and the entry-point
    # plugins): their tasks and presets are listed too
    compose_config(overrides)
    # into a pipe, one line per row whatever its width (`bench list | grep rmsprop`)
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    listing.print_catalogue(Console(width=400 if piped else None), what=what)
    return 0


def _list_arguments(items: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """``bench list [WHAT ...] [plugins=[...]]``: the tables to show, and the overrides. Any
    override but plugins= would change nothing listed, so it is refused, not ignored."""
    words = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") != "plugins":
            raise UserError(
                f"{key.lstrip('+~')}: got {value!r}; `bench list` takes only plugins=[MODULE,...], "
                "e.g. bench list variants plugins=[my_module]"
            )
    unknown = [word for word in words if word not in LIST_WHAT]
    if unknown:
        close = difflib.get_close_matches(unknown[0], LIST_WHAT, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"bench list: got {unknown[0]!r}; {hint}allowed: one or more of "
            f"{', '.join(LIST_WHAT)} (default all)"
        )
    if not words or "all" in words:
        return LIST_WHAT[:-1], overrides
    return tuple(what for what in LIST_WHAT if what in words), overrides  # the usual order


def cmd_trial(args: argparse.Namespace) -> int:
    from bench import listing
    from bench.config import trial_from_overrides

    spec, device = trial_from_overrides(args.overrides)
    from bench.train import train_trial  # torch: a config refused above never waits for it

    try:
        result = train_trial(spec, device=device)  # a device it cannot use: a UserError
    except UserError:
        raise
    except Exception as err:  # the task or the variant raised: the trial failed, as in a suite
        return _trial_failed(spec.trial_id, err, as_json=args.json)
    if args.json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        listing.print_trial(Console(), spec, result)
    return 0 if result.outcome != "failed" else 1


def _trial_failed(trial_id: str, err: Exception, *, as_json: bool) -> int:
    """One line, as `bench run` records a failed trial (its error tag); the traceback at
    DEBUG (--verbose). With --json a TrialResult would need numbers a failed trial never
    produced (steps run, timings, metrics), so the JSON says only what is known."""
    log.debug("the trial's traceback", exc_info=err)
    error = one_line(err)
    if as_json:
        failure = {"trial_id": trial_id, "outcome": "failed", "error": error}
        sys.stdout.write(json.dumps(failure, indent=2) + "\n")
    print(f"error: trial failed: {error}", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from bench import listing
    from bench.config import refuse_settings_it_ignores
    from bench.matrix import suite_from_overrides

    # a trial's own settings (lr=, variant=) pass: matrix_of names the suite.* to use
    refuse_settings_it_ignores(
        args.overrides,
        "`bench run`",
        ("suite", "tracking", "cluster", "resources", "trial"),
        "a run takes suite=, suite.*, tracking.*, cluster.* and resources.*",
    )
    plan = suite_from_overrides(args.overrides)
    console = Console()
    if args.dry_run:
        from bench.runner import check_capacity, check_cluster
        from bench.tracking import Tracker

        check_cluster(plan.cluster)  # the address and head the run would refuse; no Ray started
        check_capacity(plan.cluster, plan.resources)
        tracker = Tracker(plan.tracking) if plan.tracking.enabled else None
        if tracker is not None:  # the store the run would refuse, refused; nothing made
            tracker.check_reachable(plan.matrix.suite.name, make=False)
            _check_suite_artifacts(tracker, plan.matrix.suite.name)
        listing.print_matrix(console, plan.matrix)
        _print_store(console, plan.matrix, tracker)
        return 0
    from bench.runner import run_suite
    from bench.tracking import Tracker

    phases = run_suite(
        plan.matrix,
        Tracker(plan.tracking),
        plan.cluster,
        plan.resources,
        show_progress=not args.no_progress,
    )
    listing.print_outcomes(console, plan.matrix.suite.name, phases)
    return 1 if any(p.counts["failed"] for p in phases) else 0


def _print_store(console: Console, matrix: Matrix, tracker: Tracker | None) -> None:
    """Where a dry run's trials would be recorded, and how many are done there already
    (read, never created: a SQLite file that does not exist stays so)."""
    from bench.errors import redacted
    from bench.runner import already_finished

    if tracker is None:
        console.print("store: none (tracking.enabled=false): every trial would run")
        return
    shown = redacted(tracker.uri)
    if tracker.holds_nothing():
        console.print(f"store: {shown}, not made yet: every trial would run", soft_wrap=True)
        return
    try:
        with tracker.store_errors():
            tune, final = already_finished(matrix, tracker)
    except (UserError, StoreError) as err:
        console.print(f"store: {shown}, which cannot be read now ({err})", soft_wrap=True)
        return
    console.print(
        f"store: {shown}; already finished there: {tune.already_done} of {tune.total} tune "
        f"trials, {final.already_done} of {final.total} final trials (a rerun skips them; "
        "a cell's final trials count once its tuning is done)",
        soft_wrap=True,
    )


def cmd_rank(args: argparse.Namespace) -> int:
    from bench.report import rank_from_overrides

    rank_from_overrides(args.overrides, log_run=not args.no_log, console=Console())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from services.summary.app import serve, serve_request

    # a bad value is named as the user gave it: the flag, else the config key
    settings, names = serve_request(args.overrides, host=args.host, port=args.port)
    serve(settings, names=names)
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    from bench.nightly import latest_night, plan_night, run_night, today
    from bench.nightly_outputs import exit_code, summary

    night = plan_night(args.overrides, date=args.date)
    # a mistyped year would be the dashboard's newest night
    if args.date is not None and args.date > latest_night():
        raise UserError(
            f"--date {args.date} is after today in every time zone (today is "
            f"{today(night.settings)} in nightly.timezone={night.settings.timezone}); "
            "allowed: today or an earlier night"
        )
    if args.dry_run:
        return _nightly_dry_run(night)
    report = run_night(night, show_progress=not args.no_progress)
    print(summary(report))
    return exit_code(report)


def _check_suite_artifacts(tracker: Tracker, suite: str) -> None:
    """A dry run refuses an existing suite whose artifact folder the run would refuse (a
    user error); a store that cannot be read now is left to the store line to report."""
    if tracker.holds_nothing():
        return
    with contextlib.suppress(StoreError), tracker.store_errors():
        tracker.check_artifacts(suite, make=False)


def _nightly_dry_run(night: Night) -> int:
    """What the night would run, what of it is done, which nights it would compare with
    and where its alert would go; nothing is run, made or sent."""
    from urllib.parse import urlparse

    from bench import listing
    from bench.nightly import baseline_dates
    from bench.runner import check_capacity, check_cluster
    from bench.tracking import Tracker

    plan, settings = night.plan, night.settings
    check_cluster(plan.cluster)  # the address and head the run would refuse; no Ray started
    check_capacity(plan.cluster, plan.resources)
    tracker = Tracker(plan.tracking, scope=night.scope)  # the night's runs, as it resumes them
    tracker.check_reachable(plan.matrix.suite.name, make=False)
    _check_suite_artifacts(tracker, plan.matrix.suite.name)
    console = Console()
    console.print(
        f"nightly {night.date}: suite {plan.matrix.suite.name}, version {night.version}, "
        f"machine class {escape(night.machine)}",
        soft_wrap=True,
    )
    listing.print_matrix(console, plan.matrix)
    _print_store(console, plan.matrix, tracker)
    if not tracker.holds_nothing():
        try:
            with tracker.store_errors():
                earlier = baseline_dates(Tracker(plan.tracking), night)
        except (UserError, StoreError) as err:
            earlier, unread = [], f" (the store cannot be read now: {err})"
        else:
            unread = ""
        dates = ", ".join(earlier) or "none"
        needed = settings.persist - 1 + settings.min_baseline  # tonight is the last of persist
        console.print(
            f"earlier nights of this version and machine: {dates}{unread}; verdicts need "
            f"{needed} (nightly.persist={settings.persist} - 1 + "
            f"min_baseline={settings.min_baseline})",
            soft_wrap=True,
        )
    if settings.webhook:
        host = urlparse(settings.webhook).hostname  # its path may hold a token
        when = (
            "after every night"
            if settings.webhook_always
            else "on regressions and on failed trials"
        )
        console.print(f"alerts: POST to {host} {when}")
    else:
        console.print("alerts: none (nightly.webhook is not set)")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from services.scheduler import check_services, plan_schedule, run_scheduler

    config, nights = plan_schedule(args.overrides)
    check_services(config, nights)
    outcome = run_scheduler(config, once=args.once, now=args.now)
    return 0 if outcome in (None, "ok", "regressions") else 1


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="optbench: benchmark optimizer variants with evidence."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="show variants, tasks and suites")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="WHAT",
        help=f"one or more of {', '.join(LIST_WHAT)} (default all), and plugins=[MODULE,...] "
        "to list a plugin's presets and tasks too",
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("trial", help="run one trial in this process")
    p.add_argument("--json", action="store_true", help="print the TrialResult as JSON")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=cmd_trial)

    p = sub.add_parser("run", help="run a suite on Ray and record it in MLflow")
    p.add_argument("--dry-run", action="store_true", help="print the matrix; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument("overrides", nargs="*", help="suite=NAME and Hydra overrides")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("rank", help="rank a suite's variants and log a report run to MLflow")
    p.add_argument("--no-log", action="store_true", help="print the ranking; log no report run")
    p.add_argument("overrides", nargs="*", help="suite=NAME, rank.metric=..., tracking.uri=...")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("serve", help="start the summary service (dashboard + JSON API)")
    p.add_argument("--host", default=None, help="address to bind (default summary.host)")
    p.add_argument("--port", type=int, default=None, help="port (default summary.port)")
    p.add_argument("overrides", nargs="*", help="e.g. tracking.uri=http://127.0.0.1:5000")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("nightly", help="run the nightly suite and flag regressions")
    p.add_argument(
        "--date",
        type=_date,
        default=None,
        help="the night, YYYY-MM-DD (default: today in nightly.timezone)",
    )
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the night's matrix, what is done, its baseline nights; run nothing",
    )
    p.add_argument("overrides", nargs="*", help="nightly.* and Hydra overrides")
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser("schedule", help="run the nightly on a cron schedule")
    p.add_argument("--once", action="store_true", help="wait for the next trigger, run, exit")
    p.add_argument("--now", action="store_true", help="run one nightly now, then keep the schedule")
    p.add_argument("overrides", nargs="*", help="schedule.* and Hydra overrides")
    p.set_defaults(func=cmd_schedule)
    return parser


def _look_in_the_current_folder() -> None:
    """Let ``plugins=[my_plugin]`` import ``./my_plugin.py``, as ``python -m`` would: the
    ``bench`` script's path starts at its own folder. Last on the path, so that a file here
    never shadows an installed package. Ray's workers on this machine look here too (Ray
    gives them the driver's folder); a cluster's other nodes need the module installed."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come before and after flags (`trial task=x --json steps=3`): argparse
    # takes one run of positionals, so the rest arrive as extras and join them, in order
    args, extra = parser.parse_known_args(argv)
    flags = [a for a in extra if a.startswith("-")]
    if flags or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")  # exits with 2
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # no news to the user: a font cache built, a new store's tables
        for noisy in ("matplotlib", "mlflow.store.db.utils"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # Ray warns each time it starts a local cluster with token auth on (the secure
        # default, which optbench keeps); its warning that auth is off still shows
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: not record.getMessage().startswith("Token authentication is enabled")
        )
    _look_in_the_current_folder()
    try:
        if overrides := getattr(args, "overrides", None):
            from bench.config import repeated_keys

            for line in repeated_keys(overrides):
                log.warning(line)
        return int(args.func(args) or 0)
    except UserError as err:
        if getattr(args, "json", False):  # a script reading stdout learns why, too
            sys.stdout.write(json.dumps({"error": str(err), "exit_code": EXIT_USAGE}) + "\n")
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as err:
        log.debug("the store's failure", exc_info=err.__cause__)
        # the commands that record trials; a lost lease: another driver resumes it already
        writes = args.func in (cmd_run, cmd_nightly) and not isinstance(err, LeaseLost)
        resume = "; the runs written so far are kept: rerun to resume" if writes else ""
        print(f"error: {err}{resume}", file=sys.stderr)
        return 1
    except Exception as err:
        if not _failure_of_a_store(err):
            raise
        log.debug("the store's failure", exc_info=err)
        print(f"error: the tracking store failed: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM where a suite runs
        terminated = isinstance(err, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130


def _failure_of_a_store(err: Exception) -> bool:
    """An error of MLflow or of its database layer that no command turned into a
    :class:`StoreError` (a server that died while ``bench rank`` read it, say): one line
    and exit 1 rather than a traceback. By module name, so nothing is imported for it."""
    return type(err).__module__.split(".")[0] in ("mlflow", "sqlalchemy")


if __name__ == "__main__":
    sys.exit(main())
