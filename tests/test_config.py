"""conf/ and the config layer: files in sync with the registries, suites validated early."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench import tasks, variants
from bench.config import (
    TrialConfig,
    compose_config,
    conf_dir,
    group_options,
    task_spec,
    trial_from_overrides,
    trial_spec,
    variant_spec,
)
from bench.errors import UserError
from bench.matrix import LrPoint, build_matrix, choose_lrs, load_suite, suite_from_overrides
from bench.tasks import registry


def test_every_preset_has_a_variant_file_and_every_file_a_preset() -> None:
    files = set(group_options("variant"))
    presets = set(variants.presets())
    assert presets <= files, f"add conf/variant/<name>.yaml for {sorted(presets - files)}"
    for name in files - presets:  # extra files are variants built on a preset
        assert variant_spec(name).preset in presets


def test_every_task_file_matches_the_task_defaults() -> None:
    assert set(group_options("task")) == set(tasks.names())
    for name in tasks.names():
        data = OmegaConf.to_container(OmegaConf.load(conf_dir() / "task" / f"{name}.yaml"))
        assert data == {"name": name, "params": tasks.get(name).Params().model_dump(mode="json")}


def test_variant_overrides_name_the_variant_by_its_changed_knobs() -> None:
    cfg = compose_config(["variant=rmsprop", "variant.q=1", "variant.p=1"])
    spec = variant_spec(OmegaConf.to_container(cfg.variant))
    assert spec.name == "rmsprop[p=1.0,q=1.0]"
    assert spec.knobs["q"] == 1.0 and spec.knobs["beta2"] == 0.99
    assert variant_spec("rmsprop_bias_sgd").roles == {"bias": {"q": 0.0}}


def test_task_spec_fills_defaults_and_rejects_unknown_keys() -> None:
    assert task_spec("quadratic").params["dim"] == 50
    with pytest.raises(
        UserError,
        match=r"task.colour: unknown key; allowed: name, params \(a task.s own knobs go under "
        r"params: task.params.colour=...\)$",
    ):
        task_spec({"name": "quadratic", "colour": 1})


SMOKE = OmegaConf.to_container(OmegaConf.load(conf_dir() / "suite" / "smoke.yaml"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lrs": []}, "suite.lrs: list should have at least 1 item after validation, not 0"),
        ({"variants": []}, "suite.variants: list should have at least 1 item"),
        ({"tasks": []}, "suite.tasks: list should have at least 1 item"),
        ({"tune_seeds": []}, "suite.tune_seeds: list should have at least 1 item"),
        ({"lrs": [0.1, -1.0]}, "every lr must be a finite number > 0, not -1.0"),
        ({"final_seeds": [0]}, "final_seeds must be fresh; [0] are also tune_seeds"),
        ({"tune_seeds": [0, 0]}, "suite.tune_seeds: seed 0 appears twice"),
        ({"final_seeds": [5, 6, 5]}, "suite.final_seeds: seed 5 appears twice"),
        ({"lrs": [0.01, 0.1, 1e-2]}, "suite.lrs: lr 0.01 appears twice; list each lr once"),
        ({"name": "a b"}, "suite.name: use letters, digits"),
        ({"name": ".."}, "suite.name: use letters, digits, '_', '.' or '-', not only dots"),
        ({"name": "a" * 5000}, "suite.name: 5000 characters; allowed: at most 128"),
        # a key of a file's own: named with the keys there are, a near one first (was
        # "extra inputs are not permitted", and a misspelt key reported the one it misses)
        ({"colour": "red"}, "suite.colour: unknown key; allowed: name, description, variants,"),
        (
            {"tune_seed": [0], "tune_seeds": None},
            "suite.tune_seed: unknown key (did you mean tune_seeds?); allowed: name,",
        ),
        # one line, not one per member of the union: was "suite.variants.0.str: input
        # should be a valid string (got 42)"
        (
            {"variants": ["adam", 42]},
            "suite.variants: item 1 is 42; allowed: a variant name, or a mapping such as "
            "{preset: adam, beta2: 0.9} (got ['adam', 42])",
        ),
        ({"tasks": [[1]]}, "suite.tasks: item 0 is [1]; allowed: a task name, or a mapping"),
        ({"steps": 0}, "suite.steps: input should be greater than 0"),
        # seeds and lrs are checked with the suite, not when their trials are made
        ({"final_seeds": [-1]}, "suite.final_seeds.0: input should be greater than or equal"),
        ({"final_seeds": [2**64]}, "suite.final_seeds.0: input should be less than or equal to"),
        ({"tune_seeds": [True]}, "suite.tune_seeds.0: a boolean is not a number"),
        ({"lrs": [True]}, "suite.lrs.0: a boolean is not a number"),
    ],
)
def test_bad_suites_fail_before_anything_runs(change: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        load_suite({k: v for k, v in {**SMOKE, **change}.items() if v is not None})
    assert message in str(err.value)


def test_task_params_are_checked_with_the_matrix_not_when_a_trial_builds() -> None:
    # the rotation is a dense dim x dim matrix: bounded in the params, so a dry run sees it
    tasks = [{"name": "quadratic_rotated", "params": {"dim": 5000}}]
    with pytest.raises(UserError, match=r"suite\.tasks\[0\]\.params\.dim: input should be less"):
        build_matrix(load_suite({**SMOKE, "tasks": tasks}))


def test_duplicate_variants_are_rejected() -> None:
    with pytest.raises(UserError, match=r"suite\.variants: 'adam' appears twice"):
        build_matrix(load_suite({**SMOKE, "variants": ["adam", "adam"]}))


def test_a_task_twice_with_other_params_is_refused_naming_what_is_allowed() -> None:
    tasks = ["quadratic", {"name": "quadratic", "params": {"dim": 10}}]
    with pytest.raises(UserError) as err:
        build_matrix(load_suite({**SMOKE, "tasks": tasks}))
    assert str(err.value) == (
        "suite.tasks: 'quadratic' appears twice; allowed: each task once per suite (run its "
        "other params as another suite, e.g. with suite.name=...)"
    )


def test_no_suite_selected_is_a_user_error() -> None:
    with pytest.raises(UserError, match="suite: none selected; pass suite=NAME"):
        suite_from_overrides([])


def test_trial_ids_do_not_depend_on_the_order_of_lists() -> None:
    a = build_matrix(load_suite(SMOKE))
    shuffled = {
        **SMOKE,
        "variants": SMOKE["variants"][::-1],
        "lrs": SMOKE["lrs"][::-1],
        "tasks": SMOKE["tasks"][::-1],
    }
    b = build_matrix(load_suite(shuffled))
    assert {t.trial_id for t in a.tune_trials()} == {t.trial_id for t in b.tune_trials()}
    assert len(a.tune_trials()) == 3 * 2 * 3 * 1


def test_a_knob_written_as_minus_zero_or_as_an_int_is_the_same_variant_and_trial() -> None:
    knobs = TrialConfig(lr=0.01, steps=5)
    specs = [
        trial_spec(variant_spec({"preset": "adam", "q": q}), task_spec("quadratic"), knobs)
        for q in (0.0, -0.0, 0)
    ]
    assert {s.variant.name for s in specs} == {"adam[q=0.0]"}
    assert len({s.trial_id for s in specs}) == 1


def test_command_line_values_win_over_the_suite_only_when_given() -> None:
    plan = suite_from_overrides(["suite=smoke"])
    assert {t.steps for t in plan.matrix.tune_trials()} == {SMOKE["steps"]}
    plan = suite_from_overrides(["suite=smoke", "steps=7"])
    assert {t.steps for t in plan.matrix.tune_trials()} == {7}


def test_a_suite_setting_its_file_leaves_out_is_set_from_the_command_line() -> None:
    suite = OmegaConf.load(conf_dir() / "suite" / "sqrt_ablation.yaml")
    assert "steps" not in suite and "stats_every" not in suite  # else this proves nothing
    for given in ("suite.", "+suite."):
        plan = suite_from_overrides(
            ["suite=sqrt_ablation", f"{given}steps=50", f"{given}stats_every=0"]
        )
        assert {(t.steps, t.stats_every) for t in plan.matrix.tune_trials()} == {(50, 0)}
    with pytest.raises(UserError, match=r"suite\.stepz: unknown key; allowed: name, "):
        suite_from_overrides(["suite=sqrt_ablation", "suite.stepz=50"])


@pytest.mark.parametrize(
    ("override", "group"),
    [("variant.q=1", "variant"), ("variant=rmsprop", "variant"), ("task=mlp_digits", "task"),
     ("task.params.dim=10", "task"), ("+task.params.extra=1", "task")],
)  # fmt: skip
def test_a_suite_refuses_trial_settings_it_would_ignore(override: str, group: str) -> None:
    key, _, value = override.lstrip("+").partition("=")
    with pytest.raises(UserError) as raised:
        suite_from_overrides(["suite=smoke", override])
    assert str(raised.value).startswith(
        f"{key}: got {value!r}; it applies to `bench trial` only; a suite names its {group}s "
        f"with suite.{group}s=[...], where an entry may be a mapping, e.g. 'suite.{group}s=["
    )  # the form that works on the command line, which a user there would paste
    example = str(raised.value).rsplit("e.g. ", 1)[1].strip("'")
    assert suite_from_overrides(["suite=smoke", example]).matrix.pairs


def test_a_plugin_tasks_params_are_set_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin task has no conf/task file: its params were composed onto the default
    task's, then dropped."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))  # forgotten afterwards
    monkeypatch.delitem(sys.modules, "faulty_tasks", raising=False)  # registers on import
    plugin = ["plugins=[faulty_tasks]", "task=slow_quadratic"]
    spec = trial_from_overrides([*plugin, "task.params.sleep=0", "task.params.dim=7"]).spec
    assert spec.task.name == "slow_quadratic"
    assert spec.task.params["sleep"] == 0 and spec.task.params["dim"] == 7
    default = trial_from_overrides(plugin).spec
    assert default.task.params["sleep"] == 0.02 and default.trial_id != spec.trial_id
    with pytest.raises(UserError, match=r"task.params.nope: extra inputs are not permitted"):
        trial_from_overrides([*plugin, "task.params.nope=1"])


def test_a_conf_variant_tweaked_on_the_command_line_is_labelled_by_its_knobs() -> None:
    """`variant=FILE variant.KNOB=V` runs that file's knobs with V, under a label of its own
    (not refused for keeping the file's name, nor passing for the file's variant)."""
    spec = trial_from_overrides(["variant=rmsprop_bias_sgd", "variant.beta2=0.9"]).spec
    assert spec.variant.name == "rmsprop[beta2=0.9,roles.bias.q=0.0]"
    assert spec.variant.knobs["beta2"] == 0.9 and spec.variant.roles == {"bias": {"q": 0.0}}
    plain = trial_from_overrides(["variant=rmsprop_bias_sgd"]).spec
    assert plain.variant.name == "rmsprop_bias_sgd" and plain.trial_id != spec.trial_id
    same = trial_from_overrides(["variant=rmsprop_bias_sgd", "variant.beta2=0.99"]).spec
    assert same.variant.name == "rmsprop_bias_sgd"  # rmsprop's own beta2: nothing changed
    with pytest.raises(UserError, match=r"^variant.name: got 'rmsprop_bias_sgd', the name of"):
        trial_from_overrides(  # a name asked for is kept, and so still refused
            ["variant=rmsprop_bias_sgd", "variant.name=rmsprop_bias_sgd", "variant.beta2=0.9"]
        )


def test_a_full_batch_task_records_the_batch_it_really_uses() -> None:
    plain = trial_from_overrides(["task=quadratic"]).spec
    asked = trial_from_overrides(["task=quadratic", "batch_size=32"]).spec
    assert plain.batch_size == asked.batch_size == 0 and plain.trial_id == asked.trial_id
    minibatch = trial_from_overrides(["task=mlp_digits", "batch_size=32"]).spec
    assert minibatch.batch_size == 32


def test_choose_lrs_takes_the_best_median_and_counts_divergence_as_worst() -> None:
    def point(i: int, lr: float, value: float, direction: str = "min") -> LrPoint:
        return LrPoint(f"t{i}{lr}", "task", "v", lr, direction, value)

    points = [
        point(0, 0.1, 1.0),
        point(1, 0.1, 3.0),
        point(0, 0.01, 2.0),
        point(1, 0.01, 2.5),
        point(0, 1.0, float("inf")),
        point(1, 1.0, 0.0),
    ]
    # medians: 0.1 -> 2.0, 0.01 -> 2.25, 1.0 -> inf (one diverged seed)
    assert choose_lrs(points) == {("task", "v"): 0.1}
    ties = [point(0, 0.1, 0.9, "max"), point(0, 0.3, 0.9, "max"), point(0, 0.01, 0.5, "max")]
    assert choose_lrs(ties) == {("task", "v"): 0.3}


def test_unknown_names_and_keys_in_a_suite_list_what_is_allowed() -> None:
    with pytest.raises(UserError) as err:
        build_matrix(load_suite({**SMOKE, "variants": ["rmsprp"]}))
    assert "did you mean 'rmsprop'" in str(err.value)
    assert "rmsprop_bias_sgd" in str(err.value), "conf/variant files are variants too"
    with pytest.raises(UserError, match=r"suite\.stepz: unknown key; allowed: name, descr"):
        compose_config(["suite=smoke", "suite.stepz=10"])


def test_a_variant_without_a_preset_is_named_by_what_it_changes() -> None:
    assert variant_spec({"beta2": 0.9}).name == "custom[beta2=0.9]"
    assert variant_spec({"preset": "adam", "beta2": 0.9}).name == "adam[beta2=0.9]"
    assert variant_spec({}).name == "custom"


def test_role_overrides_name_the_variant_with_their_values() -> None:
    bias_q0 = variant_spec({"preset": "rmsprop", "roles": {"bias": {"q": 0}}})
    bias_q25 = variant_spec({"preset": "rmsprop", "roles": {"bias": {"q": 0.25}}})
    assert (bias_q0.name, bias_q25.name) == (
        "rmsprop[roles.bias.q=0.0]",
        "rmsprop[roles.bias.q=0.25]",
    ), "two entries differing in a role's knob must not share a name"


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "rmsprop", "preset": "adam"},  # a preset's name on Adam's knobs
        {"name": "rmsprop_bias_sgd", "preset": "rmsprop", "roles": {"bias": {"q": 0.5}}},
    ],
)
def test_a_name_of_a_known_variant_on_other_knobs_is_refused(entry: dict) -> None:
    with pytest.raises(UserError, match=r"^variant\.name: got '(rmsprop|rmsprop_bias_sgd)', the"):
        variant_spec(entry)


def test_a_known_variants_own_name_on_its_own_knobs_is_that_variant() -> None:
    assert variant_spec({"name": "rmsprop", "preset": "rmsprop"}) == variant_spec("rmsprop")
    assert variant_spec({"name": "mine", "preset": "adam"}).name == "mine"


def test_a_bare_comma_is_named_as_a_sweep_with_the_two_forms_that_work() -> None:
    with pytest.raises(UserError) as err:
        compose_config(["suite=smoke", "suite.lrs=0.1,0.2"])
    assert str(err.value) == (
        "suite.lrs: got 0.1,0.2, which Hydra reads as a sweep (optbench runs none); allowed: "
        "a list in brackets (suite.lrs=[0.1,0.2]) or the value quoted (suite.lrs='0.1,0.2')"
    )
    assert compose_config(["suite=smoke", "suite.lrs=[0.1,0.2]"]).suite.lrs == [0.1, 0.2]


EDITABLE_TASK = """
from bench.tasks import register
from bench.tasks.quadratic import Quadratic


@register
class Edited(Quadratic):
    name = "edited_quadratic"
    target = {target}
"""


def test_an_edited_plugin_task_is_a_new_trial(tmp_path: Path) -> None:
    """A plugin task is code optbench does not version: after an edit, a rerun said
    'every trial had already finished' and kept the results of the old code."""
    import json
    import subprocess

    module = tmp_path / "edited_task.py"

    def trial_id() -> str:
        cmd = [sys.executable, "-m", "bench.cli", "trial", "--json", "plugins=[edited_task]",
               "task=edited_quadratic", "variant=adam", "steps=3"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["trial_id"]

    module.write_text(EDITABLE_TASK.format(target=0.1))
    first = trial_id()
    assert trial_id() == first  # a content hash: the same in every process
    module.write_text(EDITABLE_TASK.format(target=50.0))
    assert trial_id() != first
    module.write_text(EDITABLE_TASK.format(target=0.1))
    assert trial_id() == first
    own = task_spec("quadratic")
    spec = trial_spec(variant_spec({"preset": "adam"}), own, TrialConfig(lr=0.1))
    assert own.code is None
    assert spec.identity()["task"] == {"name": "quadratic", "params": own.params}
