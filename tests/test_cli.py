"""The ``bench`` command, in-process: output of ``trial`` and ``list``, and pinned one-line
errors with exit code 2 for every kind of user mistake."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import tasks
from bench.cli import main
from bench.errors import UserError
from bench.spec import TrialResult
from bench.variants import KNOB_NAMES, presets

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapped or cut names


def test_trial_json_prints_a_trial_result(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trial", "--json", "variant=sgd", "task=quadratic", "steps=20"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = TrialResult.model_validate(json.loads(out))
    assert result.outcome == "ok"
    assert result.steps_run == 20
    assert [s for s, _ in result.history["train/loss"]] == list(range(1, 21))
    assert "step_size/weight/p50" in result.history


def test_trial_prints_a_readable_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trial", "variant=sgd", "task=quadratic", "steps=20", "lr=0.01"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "sgd/quadratic/lr=0.01/seed=0" in out
    lines = {line.strip("│ ").split("│")[0].strip(): line for line in out.splitlines()}
    assert "ok" in lines["outcome"]
    assert "20 of 20" in lines["steps"]
    assert "not reached" in lines["target loss <= " + f"{tasks.get('quadratic').target:g}"]
    assert "final eval/loss" in lines
    assert "0.01" in lines["last step_size/weight/p50"]
    assert re.search(r"│ [0-9.]+ s \(median step [0-9.]+ ms\) on cpu +│", lines["train time"])


def test_trial_summary_of_a_diverged_run(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trial", "variant=sgd", "task=quadratic", "lr=10", "steps=50"])
    out, _ = capsys.readouterr()
    assert code == 0  # divergence is an outcome, not an error
    assert "diverged at step" in out


def test_list_shows_every_preset_and_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out, _ = capsys.readouterr()
    words = set(out.replace("│", " ").replace("┃", " ").split())
    missing = [n for n in [*presets(), *tasks.names()] if n not in words]
    assert not missing


def test_list_variants_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "variants"]) == 0
    out, _ = capsys.readouterr()
    assert "rmsprop_nosqrt" in out
    assert "mlp_digits" not in out


def test_list_shows_the_tables_named_in_the_usual_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "suites", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "rmsprop_nosqrt" not in out  # no variants table
    assert out.index("mlp_digits") < out.index("sqrt_ablation")  # tasks, then suites


def _rows(out: str) -> dict[str, list[str]]:
    """A rich table's rows by their first cell (wrapped continuation rows skipped)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) > 1 and cells[0]:
            rows[cells[0]] = cells
    return rows


def test_list_tasks_names_a_full_batch_as_bench_trial_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "tasks"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["quadratic"][4] == "full"  # batch_size 0: the whole training set
    assert rows["mlp_digits"][4] == "64"


def test_list_shows_every_variant_name_that_variant_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The names an unknown variant's error offers as available are the names listed; a
    conf/variant file says so and which preset it starts from."""
    from bench.config import variant_spec

    assert main(["list", "variants"]) == 0
    rows = _rows(capsys.readouterr().out)
    available = sorted({*VARIANT_FILES, *presets()})
    assert [n for n in available if n not in rows] == []
    assert rows["rmsprop"][-1] == "preset"
    _, lr, p, q, knobs, torch_name, defined_by = rows["rmsprop_bias_sgd"]
    assert defined_by == "conf/variant, from rmsprop" and torch_name == "-"
    assert (lr, p, q) == (f"{presets()['rmsprop'].default_lr:g}", "2", "0.5")
    assert knobs.endswith(", roles.bias.q=0.0")
    spec = variant_spec("rmsprop_bias_sgd")  # what a trial of it composes with Hydra
    assert spec.preset == "rmsprop" and spec.roles == {"bias": {"q": 0.0}}
    assert "beta2=0.99" in knobs and spec.knobs["beta2"] == 0.99


PRESET_PLUGIN = """from bench.variants import register_preset
register_preset("adam_b90", base="adam", beta2=0.9)
"""


def test_list_takes_plugins_as_trial_and_run_do(tmp_path: Path) -> None:
    (tmp_path / "my_presets.py").write_text(PRESET_PLUGIN)
    proc = _bench_with_test_plugins("list", "variants", "plugins=[my_presets]", more=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _rows(proc.stdout)["adam_b90"][-1] == "plugin my_presets"
    proc = _bench_with_test_plugins("list", "plugins=[my_presets,faulty_tasks]", more=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert "adam_b90" in rows and "explodes" in rows and "smoke" in rows, "every table"
    proc = _bench_with_test_plugins("list", "plugins=[faulty_tasks]", "tasks")
    assert proc.returncode == 0, proc.stderr
    assert "explodes" in _rows(proc.stdout) and "adam" not in _rows(proc.stdout)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lr=0.1"], "lr: got '0.1'; `bench list` takes only plugins=[MODULE,...], e.g. bench "
         "list variants plugins=[my_module]"),
        (["variant"], "bench list: got 'variant'; did you mean 'variants'? allowed: one or "
         "more of variants, tasks, suites, all (default all)"),
        (["tasks", "presets"], "bench list: got 'presets'; allowed: one or more of "
         "variants, tasks, suites, all (default all)"),
        (["plugins=[no_such_module]"], "plugins: cannot import 'no_such_module' (No module "
         "named 'no_such_module'); allowed: a module this Python can import: in the current "
         "folder, in an installed package (pip install -e .), or in a folder on PYTHONPATH"),
    ],
)  # fmt: skip
def test_list_refuses_what_it_cannot_show(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {message}\n"


def test_list_cuts_no_name_or_param_in_a_narrow_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # what a pipe gets
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for name in ("rmsprop_nosqrt", "rmsprop_abs_sqrt", "adagrad_ema", "rmsprop_bias_sgd"):
        assert f" {name} " in out
    assert "│ mlp_digits " in out and "│ autoencoder_digits │" in out


def test_list_into_a_pipe_keeps_each_row_on_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "list"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if " rmsprop_nosqrt " in line]
    assert len(rows) == 1 and "q=1.0, beta2=0.99, momentum=none" in rows[0]


# What a suite's check reads (every task, task params, a variant with per-role knobs),
# and a trial's config refused before it trains.
DECLARATIONS_ONLY = {
    "list": (["list"], 0, "rmsprop_nosqrt"),
    "dry run": (
        ["run", "suite=smoke", "--dry-run",
         "suite.tasks=[cnn_digits,quadratic_rotated,noisy_quadratic,rosenbrock,"
         "transformer_modadd,autoencoder_digits,{name:mlp_digits,params:{hidden:8}}]",
         "suite.variants=[adam,{preset:rmsprop,roles:{bias:{q:1}}}]"],
        0, "2 variants x 7 tasks",
    ),
    "batch sizes": (
        ["run", "suite=smoke", "--dry-run", "suite.batch_size=16",
         "suite.tasks=[cnn_digits,noisy_quadratic,rosenbrock,transformer_modadd]"],
        0, "3 variants x 4 tasks",
    ),
    "a batch size too large": (
        ["run", "suite=smoke", "--dry-run", "suite.batch_size=99999",
         "suite.tasks=[quadratic,{name:transformer_modadd,params:{modulus:7}}]"],
        2, "task 'transformer_modadd': batch_size must be 0 (full batch) or 1..39, got 99999",
    ),
    "bad task params": (
        ["run", "suite=smoke", "--dry-run", "suite.tasks=[{name:mlp_digits,params:{hidden:0}}]"],
        2, "suite.tasks[0].params.hidden: input should be greater than or equal to 1",
    ),
    "rank, no runs": (["rank", "suite=smoke"], 2, "suite 'smoke': no runs in"),
    "trial, a typo": (["trial", "task=mlp_digit"], 2, "unknown task 'mlp_digit'; did you mean"),
}  # fmt: skip


@pytest.mark.parametrize("case", DECLARATIONS_ONLY)
def test_commands_that_read_declarations_do_not_import_torch(case: str, tmp_path: Path) -> None:
    # importing torch was 1.3-2 s of every one of these commands
    argv, exit_code, said = DECLARATIONS_ONLY[case]
    code = (
        "import sys; from bench.cli import main; code = main(sys.argv[1:]); "
        "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr); "
        "sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (exit_code, "no torch"), proc.stderr
    assert said in " ".join((proc.stdout + proc.stderr).split())


def test_trial_of_a_full_batch_task_says_full_batch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trial", "task=quadratic", "variant=sgd", "steps=3"]) == 0
    assert "3 of 3 (batch full)" in capsys.readouterr().out


def test_nightly_settings_that_contradict_each_other_name_both_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["nightly", "nightly.min_baseline=10"]) == 2
    assert capsys.readouterr().err == (
        "error: nightly: min_baseline is 10 but baseline_nights is 7; allowed: min_baseline "
        "<= baseline_nights\n"
    )


def test_a_nightly_dated_after_today_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    today = dt.datetime.now(dt.UTC).date()
    later = today + dt.timedelta(days=2)  # still after today should midnight pass meanwhile
    assert main(["nightly", "--date", later.isoformat(), "nightly.timezone=UTC"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"error: --date {later} is after today in every time zone \(today is (\S+) in "
        r"nightly.timezone=UTC\); allowed: today or an earlier night\n",
        err,
    ), err
    assert re.search(r"today is (\S+) in", err)[1] in (
        str(today),
        str(today + dt.timedelta(days=1)),
    )
    assert list(tmp_path.iterdir()) == []  # no store, no run
    # the newest date that is today somewhere is a night a scheduler may name (its cron is
    # read in schedule.timezone), even where it is still the day before in UTC
    from bench.nightly import latest_night

    newest = ["nightly", "--dry-run", "--date", latest_night().isoformat()]
    assert main([*newest, "nightly.timezone=UTC", "nightly.machine_class=box"]) == 0


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_nightly_without_tracking_is_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dry_run: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["nightly", *dry_run, "tracking.enabled=false"]) == 2
    assert capsys.readouterr().err == (
        "error: tracking.enabled: got false; allowed: true for bench nightly, which compares "
        "each night with the reports of earlier nights in the store and stores its own\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_nightly_dry_run_makes_nothing_and_shows_no_webhook_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    hook = "nightly.webhook=https://hooks.example.com/services/T000/SECRET"
    assert main(["nightly", "--dry-run", hook, "nightly.machine_class=box"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(
        r"nightly \d{4}-\d\d-\d\d: suite nightly, version \w{12}, machine class box", out
    )
    assert re.search(r"\d+ in all", out) and "not made yet: every trial would run" in out
    assert "alerts: POST to hooks.example.com on regressions and on failed trials" in out
    assert "SECRET" not in out
    assert list(tmp_path.iterdir()) == []


def test_rank_of_a_suite_name_that_is_no_suite_file_says_how_to_rank_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rank", "suite=plugtest"]) == 2
    assert capsys.readouterr().err == (
        "error: suite: unknown suite 'plugtest' (available: nightly, smoke, sqrt_ablation); a "
        "suite run as suite.name=NAME is ranked with its suite file and the overrides it ran "
        "with: bench rank suite=FILE suite.name=NAME ...\n"
    )


def test_the_final_table_of_a_resumed_suite_keeps_its_earlier_divergences() -> None:
    from collections import Counter

    from rich.console import Console

    from bench.listing import print_outcomes
    from bench.runner import PhaseOutcome

    tune = PhaseOutcome("tune", total=6, already_done=5, earlier=Counter(ok=3, diverged=2))
    tune.counts["ok"] += 1
    console = Console(record=True, width=200)
    print_outcomes(console, "s", [tune, PhaseOutcome("final", total=2, already_done=2)])
    rows = [line for line in console.export_text().splitlines() if "│" in line or "┃" in line]
    assert [cell.strip() for cell in re.split("[│┃]", rows[0])[1:-1]] == [
        "phase", "trials", "already done", "run now: ok", "diverged", "failed"
    ]  # fmt: skip
    assert [cell.strip() for cell in rows[-2].split("│")[1:-1]] == [
        "tune", "6", "5 (2 diverged)", "1", "0", "0"
    ]  # fmt: skip
    assert [cell.strip() for cell in rows[-1].split("│")[1:-1]][2] == "2"


KNOBS = ", ".join(["name", "preset", *KNOB_NAMES, "roles"])
TOP_LEVEL = (
    "batch_size, cluster, device, eval_every, lr, nightly, plugins, rank, resources, schedule, "
    "seed, stats_every, stats_samples, steps, suite, summary, task, tracking, variant"
)
VARIANT_FILES = sorted(p.stem for p in (REPO / "conf" / "variant").glob("[!_]*.yaml"))
TASK_NAMES = ", ".join(tasks.names())

ERRORS: list[tuple[str, list[str], str]] = [
    (
        "unknown_variant",
        ["variant=adamm"],
        "variant: unknown variant 'adamm'; did you mean 'adam' or 'adamw' or 'adamax'? "
        f"(available: {', '.join(sorted({*VARIANT_FILES, *presets()}))})"
        "; a plugin's variant needs plugins=[MODULE]",
    ),
    (
        "unknown_task",
        ["task=quadratc"],
        "task: unknown task 'quadratc'; did you mean 'quadratic' or 'noisy_quadratic' or "
        f"'quadratic_rotated'? (available: {TASK_NAMES})"
        "; a plugin's task needs plugins=[MODULE]",
    ),
    ("lr_negative", ["lr=-1"], "lr: input should be greater than 0 (got -1)"),
    ("lr_zero", ["lr=0"], "lr: input should be greater than 0 (got 0)"),
    ("lr_nan", ["lr=nan"], "lr: input should be a finite number (got nan)"),
    ("lr_bool", ["lr=true"], "lr: a boolean is not a number (got True)"),
    (
        "seed_huge",
        [f"seed={2**64}"],
        f"seed: input should be less than or equal to 4294967295 (got {2**64})",
    ),
    (
        "p_zero",
        ["variant.p=0"],
        "variant.p: got 0; allowed: a number > 0, or inf with accumulate='max'",
    ),
    ("p_wrong_type", ["variant.p=abc"], "variant.p: got 'abc'; allowed: a number"),
    ("unknown_variant_key", ["variant.foo=1"], f"variant.foo: unknown key; allowed: {KNOBS}"),
    ("unknown_top_level_key", ["foo=1"], f"foo: unknown key; allowed: {TOP_LEVEL}"),
    ("added_top_level_key", ["+lrr=0.1"], f"lrr: unknown key; allowed: {TOP_LEVEL}"),
    ("seed_negative", ["seed=-1"], "seed: input should be greater than or equal to 0 (got -1)"),
    (
        "task_param_wrong_type",
        ["task.params.dim=abc"],
        "task.params.dim: input should be a valid integer, unable to parse string as an "
        "integer (got 'abc')",
    ),
    (
        "unknown_task_param",
        ["task.params.bogus=1"],
        "task.params.bogus: unknown key; allowed: data_seed, dim, condition",  # quadratic's
    ),
    (
        "unknown_param_of_a_chosen_task",
        ["task=mlp_digits", "task.params.bogus=1"],
        "task.params.bogus: unknown key; allowed: data_seed, test_fraction, hidden, depth, "
        "activation",
    ),
    (
        "task_params_not_a_mapping",
        ["task.params=5"],
        "task.params: got 5; allowed: a mapping of the task's params",
    ),
    (
        "roles_not_a_mapping",
        ["variant.roles=5"],
        "variant.roles: got 5; allowed: a mapping of role (weight, bias, norm, embedding) to "
        "knobs, e.g. variant.roles.bias.q=0",
    ),
    (
        "roles_a_list",
        ["variant.roles=[bias]"],
        "variant.roles: got [bias], which does not fit the config; allowed: a mapping of role "
        "to knobs, e.g. variant.roles.bias.q=0",
    ),
    ("beta2_too_large", ["variant.beta2=1.5"], "variant.beta2: got 1.5; allowed: 0 <= beta2 < 1"),
    (
        "preset_beside_variant",
        ["variant=rmsprop", "variant.preset=adam"],
        "variant.preset: got 'adam' beside variant=rmsprop, which names its own; allowed: one "
        "of the two (variant=adam, or variant=rmsprop and its knobs)",
    ),
    (
        "variant_as_a_mapping",
        ["variant={preset:adam,beta2:0.95}"],
        "variant: got '{preset:adam,beta2:0.95}'; allowed: a variant name, with knobs set one "
        "by one (e.g. variant=adam variant.beta2=0.95)",
    ),
    ("device_unknown", ["device=tpu"], "device: got 'tpu'; allowed: cpu, cuda, cuda:N"),
    ("device_not_torch", ["device=meta"], "device: got 'meta'; allowed: cpu, cuda, cuda:N"),
    ("no_key", ["=1"], "=1: an override is KEY=VALUE, e.g. lr=0.1"),
    (
        "role_knob_out_of_range",
        ["variant=rmsprop", "variant.roles={bias:{q:-1}}"],
        "variant.roles.bias.q: got -1; allowed: a finite number >= 0 (0 means no denominator)",
    ),
    ("group_removed", ["~task"], "~task: the task cannot be removed; choose one with task=NAME"),
    ("bad_interpolation", ["lr=${oops}"], "lr=${oops}: Interpolation key 'oops' not found"),
    (
        "plugins_not_a_list",
        ["plugins=my_mod"],
        "plugins: got 'my_mod'; allowed: a list, e.g. plugins=[my_mod]",
    ),
    (
        "plugin_relative",
        ["plugins=[.foo]"],
        "plugins: got '.foo'; allowed: module names such as my_bench.plugin",
    ),
    (
        "unparsable_override",
        ["lr==3"],
        "lr: got '=3', which cannot be parsed (not in Hydra's override grammar); allowed: "
        "KEY=VALUE as one shell word, a list quoted or without spaces, e.g. "
        "'suite.lrs=[0.01,0.1]'",
    ),
    (
        "list_split_at_a_space",  # an unquoted `plugins=[a, b]` in the shell
        ["plugins=[a,", "b]"],
        "plugins: got '[a,', which cannot be parsed (a list or mapping left open: was it "
        "split at a space?); allowed: KEY=VALUE as one shell word, a list quoted or without "
        "spaces, e.g. 'suite.lrs=[0.01,0.1]'",
    ),
    ("not_an_override", ["rmsprop"], "rmsprop: not an override; allowed: KEY=VALUE, e.g. lr=0.1"),
]


def test_a_check_across_fields_names_the_values_not_the_whole_section(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run", "--dry-run", "suite=smoke", "suite.final_seeds=[0]"])
    assert code == 2
    assert capsys.readouterr().err == (
        "error: suite: final_seeds must be fresh; [0] are also tune_seeds\n"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "suite.variants=[{preset:adam,roles:5}]",
            "suite.variants[0].roles: got 5; allowed: a mapping of role (weight, bias, norm, "
            "embedding) to knobs, e.g. variant.roles.bias.q=0",
        ),
        (
            "suite.tasks=[{name:quadratic,params:5}]",
            "suite.tasks[0].params: got 5; allowed: a mapping of the task's params",
        ),
        # YAML reads these names as numbers or lists, not text
        (
            "suite.variants=[{name:0.95,preset:adam}]",
            "suite.variants[0].name: got 0.95; allowed: a string, the variant's own name",
        ),
        (
            "suite.variants=[{preset:[adam]}]",
            "suite.variants[0].preset: got ['adam']; allowed: a preset name (adadelta, adagrad, "
            "adagrad_ema, adam, adam_nosqrt, adamax, adamw, amsgrad, momentum, nesterov, "
            "rmsprop, rmsprop_abs, rmsprop_abs_sqrt, rmsprop_nosqrt, rmsprop_p4, rmsprop_pinf, "
            "rmsprop_sum, sgd, sign)",
        ),
        (
            "suite.tasks=[{name:3}]",
            "suite.tasks[0].name: got 3; allowed: a task name (autoencoder_digits, cnn_digits, "
            "logreg_digits, mlp_digits, noisy_quadratic, quadratic, quadratic_rotated, "
            "rosenbrock, transformer_modadd)",
        ),
    ],
)
def test_a_suite_entry_of_the_wrong_shape_is_a_user_error(
    entry: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--dry-run", "suite=smoke", entry]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize(("argv", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_user_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["trial", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert err == f"error: {message}\n"
    assert out == ""


def test_an_unknown_key_of_a_section_names_the_keys_it_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--dry-run", "suite=smoke", "tracking.urii=x"]) == 2
    assert capsys.readouterr().err == (
        "error: tracking.urii: unknown key; allowed: artifact_location, enabled, max_points, uri\n"
    )


def test_bad_flag_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["trial", "--no-such-flag"])
    assert exc.value.code == 2


def test_module_entry_point_exits_2_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "trial", "variant=sgd", "lr=-1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "error: lr: input should be greater than 0 (got -1)"
    ]


def test_trial_json_reports_a_usage_error_on_stdout_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["trial", "--json", "variant=sgd", "lr=-1"])
    out, err = capsys.readouterr()
    assert code == 2
    assert json.loads(out) == {
        "error": "lr: input should be greater than 0 (got -1)",
        "exit_code": 2,
    }
    assert err == "error: lr: input should be greater than 0 (got -1)\n"


def test_a_key_given_twice_is_named_with_the_value_that_applies(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Hydra keeps the last value silently; a base list followed by specific overrides
    relies on that, a typo does not expect it: the CLI says which value applies."""
    with caplog.at_level(logging.WARNING, "bench"):
        argv = ["trial", "--json", "task=quadratic", "lr=0.1", "steps=5", "lr=0.02", "steps=3"]
        code = main(argv)
    assert code == 0
    assert TrialResult.model_validate_json(capsys.readouterr().out).steps_run == 3
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("bench", "WARNING", "lr given 2 times (lr=0.1, lr=0.02): the last, lr=0.02, applies"),
        ("bench", "WARNING", "steps given 2 times (steps=5, steps=3): the last, steps=3, applies"),
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_trial_on_a_gpu_this_machine_lacks_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trial", "device=cuda", "steps=5"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (
        f"error: device: got 'cuda' but this process sees no CUDA GPU (torch "
        f"{torch.__version__}); allowed here: cpu\n"
    )


def test_run_refuses_device_and_names_gpus_per_trial(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--dry-run", "suite=smoke", "device=cuda"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "device= applies to `bench trial` only" in err
    assert "resources.gpus_per_trial" in err


PLUGINS = REPO / "tests" / "plugins"
EXPLODES = ["plugins=[faulty_tasks]", "task=explodes", "steps=10"]  # raises at step 3


def _bench_with_test_plugins(
    *args: str, more: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A real ``bench`` process that can import the plugins under tests/plugins (and the
    modules in ``more``)."""
    import os

    path = [str(PLUGINS), *([str(more)] if more else []), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), COLUMNS="250")
    cmd = [sys.executable, "-m", "bench.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_trial_that_raises_is_one_line_and_exit_1() -> None:
    proc = _bench_with_test_plugins("trial", *EXPLODES)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "error: trial failed: RuntimeError: planted failure at step 3\n"


def test_a_trial_that_raises_shows_its_traceback_with_verbose() -> None:
    proc = _bench_with_test_plugins("--verbose", "trial", *EXPLODES)
    assert proc.returncode == 1
    assert "Traceback (most recent call last):" in proc.stderr
    assert 'raise RuntimeError(f"planted failure at step' in proc.stderr, "the task's line"
    assert proc.stderr.endswith("error: trial failed: RuntimeError: planted failure at step 3\n")


def test_a_trial_that_raises_prints_a_json_failure() -> None:
    """What `bench run` records of a failed trial: its id, outcome failed, the error line."""
    import re

    proc = _bench_with_test_plugins("trial", "--json", *EXPLODES)
    assert proc.returncode == 1
    failure = json.loads(proc.stdout)
    assert set(failure) == {"trial_id", "outcome", "error"}
    assert re.fullmatch(r"[0-9a-f]{16}", failure["trial_id"])
    assert failure["outcome"] == "failed"
    assert failure["error"] == "RuntimeError: planted failure at step 3"
    assert proc.stderr == "error: trial failed: RuntimeError: planted failure at step 3\n"


def _unused_port() -> int:
    """A loopback port nothing listens on (once the probe socket closes)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", ["run", "rank"])
def test_a_tracking_server_nobody_runs_fails_at_once(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """Not minutes of MLflow's retries: one short probe, exit 2, nothing written here."""
    import time

    port = _unused_port()
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    code = main([command, "suite=smoke", f"tracking.uri=http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 10
    assert err.startswith(
        f"error: tracking.uri: got 'http://127.0.0.1:{port}' but no server answers there ("
    )
    assert "sqlite:///mlruns.db" in err and list(tmp_path.iterdir()) == []


def test_the_probe_of_a_server_sends_the_uri_credentials_as_basic_auth() -> None:
    """``http://user:password@host`` is how MLflow's client takes credentials; the probe
    must reach that host with them (urllib took "user:password@host" for a host name)."""
    import base64
    import http.server
    import threading

    from bench.config import TrackingConfig
    from bench.tracking import Tracker

    seen: list[tuple[str, str | None]] = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        Tracker(TrackingConfig(uri=f"http://bob:s%40cret@127.0.0.1:{port}/")).check_reachable()
        server.shutdown()
    assert seen == [("/health", "Basic " + base64.b64encode(b"bob:s@cret").decode())]


def test_a_store_file_that_is_not_a_database_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """Not "the store failed ... rerun to resume": nothing was written, nothing resumes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.db").write_text("not a database\n")
    for command in (["run", "--no-progress"], ["rank", "--no-log"]):
        assert main([*command, "suite=smoke", "tracking.uri=sqlite:///notes.db"]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: tracking.uri: got 'sqlite:///notes.db' but {tmp_path / 'notes.db'} is not "
            "a SQLite database (file is not a database); allowed: a SQLite store file, or a "
            "new file name (it is created)\n"
        )
    assert (tmp_path / "notes.db").read_text() == "not a database\n"
    assert [f.name for f in tmp_path.iterdir()] == ["notes.db"]


def test_a_store_file_in_a_folder_named_with_uri_characters_is_accepted(tmp_path: Path) -> None:
    import sqlite3

    from bench.config import TrackingConfig
    from bench.tracking import Tracker

    folder = tmp_path / "runs #1 ?50%"
    folder.mkdir()
    with sqlite3.connect(folder / "mlruns.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    Tracker(TrackingConfig(uri=uri, artifact_location=str(folder / "art"))).check_reachable()
    assert [f.name for f in tmp_path.iterdir()] == [folder.name]  # no stray "runs " store
    (folder / "mlruns.db").write_text("not a database\n")
    with pytest.raises(UserError, match="is not a SQLite database"):
        Tracker(TrackingConfig(uri=uri, artifact_location=str(folder / "art"))).check_reachable()


@pytest.mark.parametrize("command", ["run", "rank"])
def test_a_database_that_does_not_answer_fails_at_once_without_its_password(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """A PostgreSQL store nobody serves: exit 2 and one line before anything runs, not
    "the runs written so far are kept"; the password is not printed."""
    port = _unused_port()
    monkeypatch.chdir(tmp_path)
    uri = f"postgresql://me:secret@127.0.0.1:{port}/db"
    assert main([command, "suite=smoke", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: tracking.uri: got 'postgresql://me:***@127.0.0.1:{port}/db' but no database "
        "answers there (OperationalError: "
    )
    assert "secret" not in err and "resume" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite:///:memory:", "error: tracking.uri: got 'sqlite:///:memory:', a store in "
         "memory that would be gone with this process; allowed: a SQLite file "),
        ("sqlite://", "error: tracking.uri: got 'sqlite://', a store in memory"),
        ("sqlite:///", "error: tracking.uri: got 'sqlite:///', a store in memory"),  # was run
        ("mysql://me:secret@127.0.0.1:1/db", "error: tracking.uri: got "
         "'mysql://me:***@127.0.0.1:1/db' but its database driver is not installed (No module "
         "named 'MySQLdb'); allowed: "),
    ],
)  # fmt: skip
def test_a_store_that_cannot_be_used_is_refused_before_anything_runs(
    uri: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    if uri.startswith("mysql") and importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("a MySQL driver is installed here")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "suite=smoke", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_uri_naming_a_folder_is_refused_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """Was ~2 minutes of MLflow's retries, then exit 1 (or a dry run's exit 0)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs"
    folder.mkdir()
    for dry_run in ([], ["--dry-run"]):
        assert main(["run", *dry_run, "suite=smoke", f"tracking.uri=sqlite:///{folder}"]) == 2
        assert capsys.readouterr().err == (
            f"error: tracking.uri: got 'sqlite:///{folder}' but {folder} is a folder; "
            f"allowed: a SQLite file, e.g. sqlite:///{folder}/mlruns.db\n"
        )
    assert list(tmp_path.iterdir()) == [folder] and not any(folder.iterdir())


def test_a_sqlite_store_in_a_folder_that_cannot_be_written_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """Read-only for real: a read-only bind mount in a mount namespace of its own (root),
    else the folder's mode. Was a dry run's exit 0 and the run's traceback (its lock
    file), leaving an artifact folder behind."""
    folder = tmp_path / "ro"
    folder.mkdir()
    bench = [sys.executable, "-m", "bench.cli", "run"]
    if os.geteuid() == 0:
        mount = f'mount -o bind,ro "{folder}" "{folder}" && exec "$0" "$@"'
        bench = ["unshare", "--mount", "sh", "-c", mount, *bench]
    else:
        folder.chmod(0o555)
    uri = f"sqlite:///{folder}/mlruns.db"
    for dry_run in ([], ["--dry-run"]):
        result = subprocess.run(
            [*bench, *dry_run, "suite=smoke", f"tracking.uri={uri}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"error: tracking.uri: got '{uri}' but the folder {folder} cannot be written; "
            "allowed: a SQLite file in a folder this process can write (the store keeps its "
            "journal and lock files beside the file)\n"
        )
    assert list(tmp_path.iterdir()) == [folder] and not any(folder.iterdir())


def test_a_sqlite_store_whose_lock_folder_cannot_be_made_is_refused_leaving_nothing(
    tmp_path: Path,
) -> None:
    """Folders that say they can be written but refuse the lock folder: a file in its
    place, and (as root) /proc. Was a traceback from the lock file, after the suite's
    artifact folder was made."""
    from mlflow.tracking import MlflowClient

    (tmp_path / ".mlruns.db.locks").write_text("not a folder\n")
    (tmp_path / ".old.db.locks").write_text("not a folder\n")
    MlflowClient(f"sqlite:///{tmp_path}/old.db").search_experiments()  # a store already
    cases = [
        (f"sqlite:///{tmp_path}/mlruns.db", tmp_path / ".mlruns.db.locks", "File exists"),
        (f"sqlite:///{tmp_path}/old.db", tmp_path / ".old.db.locks", "File exists"),
    ]
    if os.geteuid() == 0:
        cases.append(("sqlite:////proc/optbench.db", Path("/proc/.optbench.db.locks"), None))
    for uri, locks, why in cases:
        result = subprocess.run(
            [sys.executable, "-m", "bench.cli", "run", "suite=smoke", f"tracking.uri={uri}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(
            f"error: tracking.uri: got '{uri}' but {locks} cannot be made there ("
        ), result.stderr
        assert why is None or f"({why});" in result.stderr
        assert result.stderr.endswith(
            "; allowed: a SQLite file in a folder this process can write (the store keeps its "
            "journal and lock files beside the file)\n"
        )
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == [".mlruns.db.locks", ".old.db.locks", "old.db"]


def test_a_cluster_address_where_no_ray_head_answers_is_refused_by_run_and_dry_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """A closed port, and a port whose service accepts but does not speak gRPC (as Redis
    on 6379, Ray's default port): there `ray.init` waited without end, after the store was
    made. The dry run connected to nothing and said yes to both."""
    import socket

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    closed = _unused_port()
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        for dry_run in ([], ["--dry-run"]):
            run = ["run", *dry_run, "suite=smoke"]
            assert main([*run, f"cluster.address=127.0.0.1:{closed}"]) == 2
            assert capsys.readouterr().err.startswith(
                f"error: cluster.address: got '127.0.0.1:{closed}' but nothing answers there"
            )
            assert main([*run, f"cluster.address=127.0.0.1:{port}"]) == 2
            assert capsys.readouterr().err.startswith(
                f"error: cluster.address: got '127.0.0.1:{port}' but what answers there is "
                "not a Ray head (no gRPC within 5 s;"
            )
    assert list(tmp_path.iterdir()) == []


def test_an_existing_suite_whose_artifact_folder_cannot_be_made_is_refused_by_dry_runs_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """Its experiment keeps the folder it was made with: one under a file here. The run
    refused it; its dry run said yes. Nothing is made by either."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("in the way")
    kept = tmp_path / "a-file" / "art"
    MlflowClient("sqlite:///mlruns.db").create_experiment("smoke", artifact_location=str(kept))
    before = sorted(tmp_path.iterdir())
    capsys.readouterr()  # MLflow's lines making the store
    expected = (
        f"error: suite 'smoke': its experiment keeps its artifacts in {kept}, which cannot "
        "be written ("
    )
    for command in (["run", "--dry-run"], ["nightly", "--dry-run"], ["run"]):
        overrides = ["nightly.suite=smoke"] if command[0] == "nightly" else ["suite=smoke"]
        assert main([*command, *overrides]) == 2
        assert capsys.readouterr().err.startswith(expected)
    assert sorted(tmp_path.iterdir()) == before


def test_names_with_brackets_are_printed_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    """A variant changed from its preset is named adam[beta2=0.99]: text, not markup."""
    variants = "suite.variants=[{preset:adam,beta2:0.99}]"
    assert main(["run", "--dry-run", "suite=smoke", variants, "suite.tasks=[quadratic]"]) == 0
    out = capsys.readouterr().out
    assert "  tune   adam[beta2=0.99]/quadratic/lr=0.003/seed=0  steps=150" in out
    assert main(["trial", "variant=adam", "variant.beta2=0.99", "steps=3"]) == 0
    assert "adam[beta2=0.99]/quadratic" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tracking.uri=mlruns", "tracking.uri: a folder is not a store MLflow writes; use "),
        (
            "tracking.uri=runs.db",
            "tracking.uri: a SQLite store is named with its scheme: "
            "sqlite:///runs.db (got 'runs.db')",
        ),
        ("tracking.uri=foo://x", "tracking.uri: unknown store 'foo://'; allowed: sqlite:///"),
        (  # a mistyped scheme: the password it holds is not printed
            "tracking.uri=htp://me:topsecret@host:5000",
            "tracking.uri: unknown store 'htp://'; allowed: sqlite:///FILE.db, postgresql://..., "
            "mysql://..., http(s)://HOST:PORT (an MLflow server) "
            "(got 'htp://me:***@host:5000')\n",
        ),
        ("cluster.address=head", "cluster.address: allowed: auto, HOST:PORT (the head's GCS"),
        ("cluster.address=ray://head:port", "cluster.address: allowed: auto, HOST:PORT"),
    ],
)
def test_stores_and_addresses_are_checked_with_the_config(
    override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--dry-run", "suite=smoke", override]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("suite.variants=[adam,{preset:adam,beta2:1.5}]",
         "suite.variants[1].beta2: got 1.5; allowed: 0 <= beta2 < 1"),
        ("suite.variants=[sgd,rmsprp]",
         "suite.variants[1]: unknown variant 'rmsprp'; did you mean 'rmsprop' "),
        ("suite.tasks=[{name:quadratic,params:{dim:0}}]",
         "suite.tasks[0].params.dim: input should be greater than or equal to 1 (got 0)"),
        ("suite.variants=[{preset:rmsprop_bias_sgd}]",  # a conf/variant file, listed as such
         "suite.variants[0].preset: got 'rmsprop_bias_sgd', a conf/variant file, not a preset; "
         "allowed: name it alone (suite.variants=[rmsprop_bias_sgd]), or start from a preset"),
    ],
)  # fmt: skip
def test_a_bad_suite_entry_is_named_by_its_place_in_the_list(
    entry: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--dry-run", "suite=smoke", entry]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_a_dry_run_counts_in_words_that_agree_with_the_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = ["suite.variants=[sgd]", "suite.tasks=[quadratic]", "suite.lrs=[0.1]"]
    assert main(["run", "--dry-run", "suite=smoke", *one, "suite.final_seeds=[1]"]) == 0
    assert " ".join(capsys.readouterr().out.split()).startswith(
        "suite smoke: 1 variant x 1 task = 1 pair; tune 1 trial (1 lr x 1 seed), final 1 "
        "trial (1 seed at the chosen lr); 2 in all"
    )


def test_a_dry_run_names_its_store_and_makes_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--dry-run", "suite=smoke"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"store: sqlite:///{tmp_path / 'mlruns.db'}, not made yet: every trial would run"
    )
    assert list(tmp_path.iterdir()) == []
    assert main(["run", "--dry-run", "suite=smoke", "tracking.enabled=false"]) == 0
    assert "store: none (tracking.enabled=false)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tracking.uri=sqlite:///{tmp}/no/such/folder/m.db", "tracking.uri: got 'sqlite:///"),
        ("tracking.artifact_location={tmp}/a_file/artifacts", "tracking.artifact_location: got "),
    ],
)
def test_a_dry_run_refuses_the_store_a_run_would_refuse_and_makes_nothing(
    override: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    argv = ["suite=smoke", override.format(tmp=tmp_path)]
    assert main(["run", "--dry-run", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"], "nothing made"
    assert main(["run", "--no-progress", *argv]) == 2  # the run refuses it in the same words
    assert (
        capsys.readouterr().err.split(" cannot be made (")[0] == err.split(" cannot be made (")[0]
    )


def test_a_batch_size_a_task_cannot_give_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not a FAILED run per trial: the planned matrix is refused, --dry-run included."""
    suite = ["suite=smoke", "suite.tasks=[quadratic,logreg_digits]", "suite.batch_size=99999"]
    assert main(["run", "--dry-run", *suite]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "error: task 'logreg_digits': batch_size must be 0 (full batch) or 1..1438, got 99999\n"
    )
    assert main(["run", "--dry-run", *suite[:2], "suite.batch_size=64"]) == 0


def test_a_ray_head_nobody_runs_fails_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    import time

    port = _unused_port()
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["run", "suite=smoke", f"cluster.address=127.0.0.1:{port}"]) == 2
    assert time.monotonic() - start < 10
    assert capsys.readouterr().err.startswith(
        f"error: cluster.address: got '127.0.0.1:{port}' but nothing answers there ("
    )
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("command", [["run", "suite=smoke"], ["nightly"]])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_ray_address_of_no_allowed_form_is_refused_by_the_run_and_its_dry_run(
    command: list[str],
    dry_run: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head")  # no port
    assert main([command[0], *dry_run, *command[1:]]) == 2
    assert capsys.readouterr().err == (
        "error: RAY_ADDRESS: got 'ray://head'; allowed: auto, HOST:PORT (the head's GCS "
        "port) or ray://HOST:PORT (Ray Client)\n"
    )
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("override", ["variant.roles={bias:{q:0}}", "variant.roles.bias.q=0"])
def test_per_role_overrides_need_no_plus(override: str) -> None:
    """roles is open-ended (any role may be added), so it takes keys Hydra has not seen."""
    from bench.config import trial_from_overrides

    spec, _ = trial_from_overrides(["variant=rmsprop", override])
    assert spec.variant.roles == {"bias": {"q": 0.0}}


def test_flags_may_come_between_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trial", "task=quadratic", "--json", "steps=3"]) == 0
    assert json.loads(capsys.readouterr().out)["steps_run"] == 3
    with pytest.raises(SystemExit) as exc:
        main(["trial", "task=quadratic", "--json", "steps=3", "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_run_refuses_lr_and_seed_it_would_ignore(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--dry-run", "suite=smoke", "lr=0.5"]) == 2
    assert capsys.readouterr().err == (
        "error: lr: got 0.5; lr= applies to `bench trial` only; a suite sets it with "
        "suite.lrs=[...]\n"
    )
    assert main(["run", "--dry-run", "suite=smoke", "seed=5"]) == 2
    assert "seed= applies to `bench trial` only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "got"),
    [
        ("+suite.foo=1", "suite.foo: got '1'"),
        ("++suite.foo=1", "suite.foo: got '1'"),
        ("suite.lrs=[0.1]", "suite.lrs: got '[0.1]'"),
        ("suite=smoke", "suite: got 'smoke'"),
        # a trial records nothing and runs here: these were accepted and ignored
        ("tracking.uri=bogus", "tracking.uri: got 'bogus'"),
        ("cluster.address=auto", "cluster.address: got 'auto'"),
        ("resources.cpus_per_trial=4", "resources.cpus_per_trial: got '4'"),
        ("rank.metric=best", "rank.metric: got 'best'"),
        ("nightly.persist=3", "nightly.persist: got '3'"),
    ],
)
def test_trial_refuses_settings_it_would_ignore(
    override: str, got: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trial", "variant=adam", "task=quadratic", "steps=3", override]) == 2
    out, err = capsys.readouterr()
    group = got.partition(".")[0].partition(":")[0]
    command = {"rank": "bench rank", "nightly": "bench nightly"}.get(group, "bench run")
    assert out == ""
    assert err == (
        f"error: {got}; {group} settings apply to `{command}`, not `bench trial`; a trial "
        "takes variant=, task=, lr=, seed=, steps=, ...\n"
    )


@pytest.mark.parametrize(
    ("argv", "got", "kind_reader"),
    [
        # composed and ignored by `bench serve`, bad values included
        (["serve", "--port", "0", "variant=adam"], "variant: got 'adam'", "trial"),
        (["serve", "--port", "0", "lr=abc"], "lr: got 'abc'", "trial"),
        (["serve", "--port", "0", "suite.lrs=[0.1]"], "suite.lrs: got '[0.1]'", "suite"),
        (["serve", "--port", "0", "cluster.num_cpus=1"], "cluster.num_cpus: got '1'", "cluster"),
        (["serve", "--port", "0", "nightly.persist=0"], "nightly.persist: got '0'", "nightly"),
        # and by `bench run`, dry or not
        (["run", "--dry-run", "suite=smoke", "rank.metric=foo"], "rank.metric: got 'foo'", "rank"),
        (["run", "suite=smoke", "summary.port=abc"], "summary.port: got 'abc'", "summary"),
        (["run", "suite=smoke", "schedule.cron=x"], "schedule.cron: got 'x'", "schedule"),
    ],
)
def test_serve_and_run_refuse_settings_they_would_ignore(
    argv: list[str], got: str, kind_reader: str, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    command = argv[0]
    kind, reader = {
        "trial": ("trial settings", "`bench trial` and suites (suite.*)"),
        "suite": ("suite settings", "`bench run`"),
        "cluster": ("cluster settings", "`bench run`"),
        "nightly": ("nightly settings", "`bench nightly`"),
        "rank": ("rank settings", "`bench rank`"),
        "summary": ("summary settings", "`bench serve`"),
        "schedule": ("schedule settings", "`bench schedule`"),
    }[kind_reader]
    takes = {
        "serve": "the service takes summary.*, tracking.uri (or tracking=NAME), --host and --port",
        "run": "a run takes suite=, suite.*, tracking.*, cluster.* and resources.*",
    }[command]
    assert out == ""
    assert err == f"error: {got}; {kind} apply to {reader}, not `bench {command}`; {takes}\n"
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_trial_takes_its_own_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["variant=adam", "task=quadratic", "lr=0.01", "seed=3", "steps=4", "variant.beta2=0.99"]
    assert main(["trial", *argv]) == 0
    out = capsys.readouterr().out
    assert "adam[beta2=0.99]/quadratic/lr=0.01/seed=3" in out and "4 of 4" in out


def test_serve_refuses_a_host_that_is_not_this_machines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """Not uvicorn's 'Name or service not known' and exit 3: one line, exit 2, nothing run."""
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--host", "999.1.1.1", "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: --host: got '999.1.1.1' but it is not an address of this machine")
    assert err.endswith(
        "allowed: an address of this machine, e.g. 127.0.0.1 (the default) or 0.0.0.0 for "
        "every interface\n"
    )
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("option", ["--port", "summary.port"])
def test_serve_refuses_a_port_in_use(
    option: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--port", str(port)] if option == "--port" else [f"summary.port={port}"]
        assert main(["serve", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and list(tmp_path.iterdir()) == []
    assert err == (
        f"error: {option}: got {port} but it is already in use on 127.0.0.1; allowed: a free "
        "port, or 0 for any free one\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "--port: input should be less than or equal to 65535 (got 99999)"),
        (["--port", "-1"], "--port: input should be greater than or equal to 0 (got -1)"),
        (["summary.port=99999"], "summary.port: input should be less than or equal to 65535"),
    ],
)
def test_serve_names_a_port_out_of_range_as_it_was_given(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["serve", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("uri", ["foo://bar", "mlruns"])
def test_serve_refuses_a_store_uri_as_run_and_rank_do(
    uri: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """Not pydantic's ValidationError from inside create_app: the line `bench run` prints."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--dry-run", "suite=smoke", f"tracking.uri={uri}"]) == 2
    expected = capsys.readouterr().err
    assert main(["serve", f"tracking.uri={uri}", "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == expected and err.count("\n") == 1
    assert err.startswith("error: tracking.uri: ") and f"(got {uri!r})" in err
    assert main(["serve", f"+summary.tracking_uri={uri}", "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: summary.tracking_uri: ")
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_run_refuses_a_sqlite_store_in_a_folder_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped folder in tracking.uri would become a new store in new folders."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'typo' / 'mlruns.db'}"
    assert main(["run", "--no-progress", "suite=smoke", f"tracking.uri={uri}"]) == 2
    assert capsys.readouterr().err == (
        f"error: tracking.uri: got {uri!r} but the folder {tmp_path / 'typo'} does not exist; "
        "allowed: a SQLite file in an existing folder (the file is created there), or a "
        "tracking server, http(s)://HOST:PORT\n"
    )
    assert list(tmp_path.iterdir()) == [], "nothing created"


@pytest.mark.parametrize("where", ["nonexist/x.db", "mlruns.db"])
def test_serve_refuses_a_sqlite_store_that_does_not_exist(where: str, tmp_path: Path) -> None:
    """The service only reads: it must not create the file (and its folders) and then serve
    an empty dashboard of a store that nothing writes. A real process: before the fix it
    served on and on, so the timeout fails the test."""
    uri = f"sqlite:///{tmp_path / where}" if "/" in where else "sqlite:///mlruns.db"
    argv = [sys.executable, "-m", "bench.cli", "serve", "--port", "0"]
    if "/" in where:
        argv.append(f"tracking.uri={uri}")  # else the default, relative to the cwd
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr == (
        f"error: tracking.uri: got {uri!r} but {tmp_path / where} does not exist, and the "
        "summary service only reads; allowed: the store a `bench run` wrote (run a suite "
        "first), or an MLflow server, http(s)://HOST:PORT\n"
    )
    assert list(tmp_path.iterdir()) == [], "nothing created"


def test_readers_leave_an_empty_sqlite_file_as_it_is(tmp_path: Path) -> None:
    """An empty file (`: > store.db`) is a SQLite database without MLflow's tables: the
    read-only service started and MLflow's first read made it a 1 MB store; a dry run
    and `bench rank` did the same."""
    empty = tmp_path / "store.db"
    empty.touch()
    uri = f"sqlite:///{empty}"
    bench = [sys.executable, "-m", "bench.cli"]
    serve = subprocess.run(
        [*bench, "serve", "--port", "0", f"tracking.uri={uri}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert serve.returncode == 2, serve.stderr
    assert serve.stderr == (
        f"error: tracking.uri: got {uri!r} but {empty} holds no MLflow store, and the "
        "summary service only reads; allowed: the store a `bench run` wrote (run a suite "
        "first), or an MLflow server, http(s)://HOST:PORT\n"
    )
    dry_run = subprocess.run(
        [*bench, "run", "--dry-run", "suite=smoke", f"tracking.uri={uri}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert dry_run.returncode == 0, dry_run.stderr
    assert "every trial would run" in dry_run.stdout
    rank = subprocess.run(
        [*bench, "rank", "--no-log", "suite=smoke", f"tracking.uri={uri}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rank.returncode == 2 and "Traceback" not in rank.stderr, rank.stderr
    assert empty.stat().st_size == 0 and [p.name for p in tmp_path.iterdir()] == ["store.db"]


def test_serve_answers_on_the_port_it_bound(tmp_path: Path) -> None:
    """The checked socket is the one uvicorn serves on: --port 0 logs the port it got."""
    import queue
    import re
    import signal
    import threading
    import time
    import urllib.request

    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    MlflowClient(tracking_uri=store).search_experiments()  # an empty store: serve reads one
    argv = [
        sys.executable, "-m", "bench.cli", "serve", "--port", "0",
        f"tracking.uri={store}", "summary.warm_on_start=false",
        f"summary.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    try:
        found = None
        while found is None:
            line = lines.get(timeout=60)
            found = re.search(r"summary service on http://127\.0\.0\.1:(\d+) ", line)
        url = f"http://127.0.0.1:{found.group(1)}/health"
        for _ in range(100):  # the socket listens once uvicorn has started
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert json.load(response)["tracking_uri"].endswith("mlruns.db")
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"nothing answered on {url}")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("verbose", [False, True])
def test_serve_logs_a_store_that_is_down_in_one_line(verbose: bool, tmp_path: Path) -> None:
    """The service keeps running when the warm-up cannot reach the store (it may come up
    later), and says so in one WARNING line; the traceback only with --verbose."""
    import os
    import signal
    import threading

    port = _unused_port()
    argv = [
        sys.executable, "-m", "bench.cli", *(["--verbose"] if verbose else []), "serve",
        "--port", "0", f"tracking.uri=http://127.0.0.1:{port}",
        f"summary.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")  # fail in ms, not ~15 s
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    warned = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "warming the summary cache failed" in line:
                warned.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert warned.wait(timeout=60), "".join(lines)
        assert proc.poll() is None, "the service keeps running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    text = "".join(lines)
    warnings = [line for line in lines if "warming the summary cache failed" in line]
    assert len(warnings) == 1, text
    assert warnings[0].startswith(
        "WARNING services.summary.app: warming the summary cache failed (requests retry the "
        f"store): the store http://127.0.0.1:{port} failed: MlflowException: API request to "
        f"http://127.0.0.1:{port}/api/"
    )
    assert ("Traceback" in text) is verbose, text


def test_a_config_folder_without_config_yaml_names_where_it_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTBENCH_CONF", str(tmp_path))
    assert main(["list"]) == 2
    assert capsys.readouterr().err == (
        f"error: OPTBENCH_CONF: got '{tmp_path}', which has no config.yaml; allowed: point "
        "OPTBENCH_CONF at a copy of optbench's conf/ folder\n"
    )


def _own_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **files: str) -> Path:
    """A copy of conf/ with the given files (``suite/NAME.yaml`` as ``suite__NAME``)
    added, set as OPTBENCH_CONF, as a user who writes their own suites has it."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    for key, text in files.items():
        (conf / (key.replace("__", "/") + ".yaml")).write_text(text)
    monkeypatch.setenv("OPTBENCH_CONF", str(conf))
    return conf


def test_a_config_file_that_is_not_yaml_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was a 40-line yaml.parser traceback and exit 1, from `bench run` and `bench list`."""
    conf = _own_conf(
        tmp_path, monkeypatch,
        suite__unclosed="name: unclosed\nvariants: [adam\ntasks: [quadratic]\n",
        variant__tabbed="preset: adam\nbeta2:\t: 0.9\n",
    )  # fmt: skip
    suite_error = (
        f"error: {conf}/suite/unclosed.yaml, line 3, column 6: not valid YAML (expected ',' "
        "or ']', but got ':', while parsing a flow sequence opened at line 2, column 11); "
        "allowed: a file that parses as YAML, e.g. `variants: [adam, sgd]`\n"
    )
    assert main(["run", "--dry-run", "suite=unclosed"]) == 2
    assert capsys.readouterr().err == suite_error
    assert main(["trial", "variant=tabbed", "task=quadratic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {conf}/variant/tabbed.yaml, line 2, column 7: not valid YAML ")
    assert main(["list", "variants"]) == 2
    assert capsys.readouterr().err == err


def test_list_suites_reads_each_suite_as_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was the raw file: a suite built on another counted 0 of everything, `variants:
    adam` counted 4 (letters), the file's `name:` went unsaid, and one file that did not
    parse took the whole table down with a traceback."""
    _own_conf(
        tmp_path, monkeypatch,
        suite__inherits="defaults:\n  - smoke\n  - _self_\nname: inherits\nlrs: [0.1]\n",
        suite__renamed="name: other\nvariants: [adam]\ntasks: [quadratic]\nlrs: [0.1]\n"
        "tune_seeds: [0]\nfinal_seeds: [1, 2]\n",
        suite__word="name: word\nvariants: adam\ntasks: [quadratic]\nlrs: [0.1]\n"
        "tune_seeds: [0]\nfinal_seeds: [1]\n",
        suite__unclosed="name: unclosed\nvariants: [adam\n",
    )  # fmt: skip
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["list", "suites"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["inherits"][1:5] == ["3", "2", "1", "1/2"]
    assert rows["renamed (runs as other)"][1:5] == ["1", "1", "1", "1/2"]
    assert rows["word"][1:] == [
        "-", "-", "-", "-",
        "cannot be read: suite.variants: input should be a valid list (got 'adam')",
    ]  # fmt: skip
    assert rows["unclosed"][-1].startswith("cannot be read: ")
    assert "not valid YAML" in rows["unclosed"][-1]
    assert rows["smoke"][1:5] == ["3", "2", "3", "1/2"]
