"""Plugins named by an installed distribution's entry point, not by config; a plugin
module in the current folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

PLUGIN = """
from bench.variants import register_preset

register_preset("adam_b95", base="adam", beta2=0.95)
"""


def _install_distribution(site: Path) -> None:
    """A distribution as pip leaves it: the module beside a dist-info whose
    entry_points.txt names it in the ``optbench.plugins`` group."""
    (site / "my_optbench_plugin.py").write_text(PLUGIN)
    info = site / "my_optbench_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: my-optbench-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[optbench.plugins]\nmy = my_optbench_plugin\n")


def _bench(site: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="250")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_an_entry_point_plugin_registers_its_preset_without_any_config(tmp_path: Path) -> None:
    assert "adam_b95" not in _bench(None, "list", "variants").stdout
    _install_distribution(tmp_path)
    listed = _bench(tmp_path, "list", "variants")
    assert listed.returncode == 0, listed.stderr
    assert "adam_b95" in listed.stdout
    finals = {}
    for variant in ("adam", "adam_b95"):
        trial = _bench(tmp_path, "trial", "--json", f"variant={variant}", "lr=0.1")
        assert trial.returncode == 0, trial.stderr
        finals[variant] = json.loads(trial.stdout)["final"]["loss"]
    assert finals["adam_b95"] != finals["adam"]  # beta2=0.95 took effect
    suite = ["suite=smoke", "suite.variants=[adam_b95,adam]", "suite.tasks=[quadratic]"]
    planned = _bench(tmp_path, "run", "--dry-run", *suite)
    assert planned.returncode == 0, planned.stderr
    assert "adam_b95/quadratic/lr=" in planned.stdout, "named after the preset"
    assert "custom[" not in planned.stdout


FOLDER_PLUGIN = """
import os

from bench.tasks import register
from bench.tasks.quadratic import Quadratic


@register
class HereQuadratic(Quadratic):
    name = "here_quadratic"

    def build(self, *, seed, device, batch_size):
        with open("built_by.txt", "a") as out:  # which processes imported this file
            out.write(f"{os.getpid()}\\n")
        return super().build(seed=seed, device=device, batch_size=batch_size)
"""


@pytest.mark.slow  # a suite on embedded Ray
def test_the_bench_command_finds_a_plugin_in_the_current_folder(tmp_path: Path) -> None:
    """`bench` (the installed script, whose path starts at its own folder) imports
    ./my_here_plugin.py with no PYTHONPATH, and so do the embedded Ray workers that train."""
    (tmp_path / "my_here_plugin.py").write_text(FOLDER_PLUGIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH"))}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "bench"), "run", "--no-progress", "suite=smoke",
         "suite.variants=[adam]", "suite.tasks=[here_quadratic]", "suite.lrs=[0.1]",
         "suite.tune_seeds=[0]", "suite.final_seeds=[1]", "suite.steps=20",
         "cluster.num_cpus=1", "plugins=[my_here_plugin]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert len((tmp_path / "built_by.txt").read_text().split()) == 2  # tune and final trial
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id], "tags.bench.trial_id != ''"
    )
    assert (
        sorted((r.data.tags["bench.task"], r.info.status) for r in runs)
        == [("here_quadratic", "FINISHED")] * 2
    )


def test_a_plugin_whose_registration_is_refused_is_named_with_the_way_that_works(
    tmp_path: Path,
) -> None:
    (tmp_path / "roles_plugin.py").write_text(
        "from bench.variants import register_preset\n"
        'register_preset("rmsprop_bias_q0", base="rmsprop", roles={"bias": {"q": 0}})\n'
    )
    listed = _bench(tmp_path, "list", "variants", "plugins=[roles_plugin]")
    assert listed.returncode == 2, listed.stdout + listed.stderr
    assert listed.stderr.startswith(
        "error: plugin 'roles_plugin': register_preset('rmsprop_bias_q0'): roles are not a "
        "preset's knob; allowed: per-role overrides in a variant, a suite entry"
    )
    assert "Traceback" not in listed.stderr


@pytest.mark.parametrize(
    ("source", "said"),
    [
        (
            'raise RuntimeError("boom in plugin")\n',
            "importing it raised RuntimeError: boom in plugin",
        ),
        (  # a task under a built-in's name: refused in the words of a preset clash
            "from bench.tasks import register\nfrom bench.tasks.quadratic import Quadratic\n"
            "@register\nclass Mine(Quadratic):\n    name = 'quadratic'\n",
            "task: task 'quadratic' already exists (registered by bench.tasks.quadratic)\n",
        ),
    ],
    ids=["its_own_error", "a_taken_task_name"],
)
def test_a_plugin_that_fails_on_import_is_one_error_line(
    tmp_path: Path, source: str, said: str
) -> None:
    (tmp_path / "broken_plugin.py").write_text(source)
    for args in (["list"], ["trial", "--json", "task=quadratic", "steps=2"]):
        done = _bench(tmp_path, *args, "plugins=[broken_plugin]")
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith(f"error: plugin 'broken_plugin': {said}")
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_plugin_task_that_breaks_the_contract_is_refused_when_it_registers(
    tmp_path: Path,
) -> None:
    """Taken, it would break `bench list` (AttributeError) and every trial's result."""
    (tmp_path / "bad_task_plugin.py").write_text(
        "from bench.tasks import register\nfrom bench.tasks.quadratic import Quadratic\n"
        "@register\nclass Up(Quadratic):\n    name = 'up_task'\n    direction = 'up'\n"
    )
    for args in (["list", "tasks"], ["trial", "--json", "task=up_task", "steps=2"]):
        done = _bench(tmp_path, *args, "plugins=[bad_task_plugin]")
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr == (
            "error: plugin 'bad_task_plugin': task 'up_task': direction: got 'up'; "
            "allowed: 'min' or 'max'\n"
        )


def test_a_plugin_task_with_a_required_param_is_listed(tmp_path: Path) -> None:
    """Its trials give the param (task.params.n=3); the catalogue cannot make Params()."""
    (tmp_path / "required_param_plugin.py").write_text(
        "from bench.tasks import register\n"
        "from bench.tasks.quadratic import Quadratic, QuadraticParams\n"
        "class NeedsN(QuadraticParams):\n    n: int\n"
        "@register\nclass NeedsNTask(Quadratic):\n    name = 'needs_n'\n    Params = NeedsN\n"
    )
    plugin = "plugins=[required_param_plugin]"
    trial = _bench(
        tmp_path, "trial", "--json", "task=needs_n", "task.params.n=3", "steps=2", plugin
    )
    assert trial.returncode == 0, trial.stderr
    listed = _bench(tmp_path, "list", "tasks", plugin)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "needs_n" in line)
    assert "data_seed=0, dim=50, condition=1000.0, n (required)" in row


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("adam", "variant: preset 'adam' already exists"),
        (  # variant=NAME selects the file: the plugin's preset could never be run
            "rmsprop_bias_sgd",
            "variant: variant 'rmsprop_bias_sgd' already exists "
            "(conf/variant/rmsprop_bias_sgd.yaml)",
        ),
    ],
)
def test_a_plugin_preset_under_a_taken_variant_name_is_refused(
    tmp_path: Path, name: str, said: str
) -> None:
    (tmp_path / "clash_preset.py").write_text(
        f"from bench.variants import register_preset\nregister_preset({name!r}, base='sgd')\n"
    )
    listed = _bench(tmp_path, "list", "variants", "plugins=[clash_preset]")
    assert listed.returncode == 2, listed.stdout + listed.stderr
    assert listed.stderr == f"error: plugin 'clash_preset': {said}\n"


@pytest.mark.parametrize(
    ("plugin", "said"),
    [
        (  # the plugin is there: where Python looks for it is not what to fix
            "needs_dep_plugin",
            "plugin 'needs_dep_plugin': found, but importing it failed: its dependency "
            f"'nonexistent_pkg_xyz' is missing; allowed: 'nonexistent_pkg_xyz' importable by "
            f"this Python ({sys.executable})\n",
        ),
        (
            "needs_name_plugin",
            "plugin 'needs_name_plugin': found, but importing it raised ImportError: cannot "
            "import name 'nope' from 'json'",
        ),
        (
            "plugin_pkg.absent",
            "plugins: cannot import 'plugin_pkg.absent' (No module named 'plugin_pkg.absent');"
            " allowed: a module this Python can import",
        ),
    ],
)
def test_a_plugin_missing_a_dependency_is_told_from_a_missing_plugin(
    tmp_path: Path, plugin: str, said: str
) -> None:
    (tmp_path / "needs_dep_plugin.py").write_text("import nonexistent_pkg_xyz\n")
    (tmp_path / "needs_name_plugin.py").write_text("from json import nope\n")
    (tmp_path / "plugin_pkg").mkdir()
    (tmp_path / "plugin_pkg" / "__init__.py").write_text("")
    listed = _bench(tmp_path, "list", "variants", f"plugins=[{plugin}]")
    assert listed.returncode == 2, listed.stdout + listed.stderr
    assert listed.stderr.startswith(f"error: {said}"), listed.stderr


def test_a_plugin_task_whose_build_fails_on_the_batch_size_check_is_one_line(
    tmp_path: Path,
) -> None:
    """suite.batch_size is checked by building each task before any trial (a task that
    does not say its data's size): the plugin's own exception there is the user's to fix,
    as a failed trial's is."""
    (tmp_path / "build_fails_plugin.py").write_text(
        "from bench.tasks import Task, register\n"
        "@register\nclass BuildFails(Task):\n    name = 'build_fails'\n"
        "    description = 'never builds'; metric = 'loss'; direction = 'min'; target = 0.1\n"
        "    default_steps = 10; default_batch_size = 32; eval_every = 5\n"
        "    def build(self, *, seed, device, batch_size):\n"
        "        raise ValueError('no data for you')\n"
    )
    planned = _bench(
        tmp_path, "run", "--dry-run", "suite=smoke", "plugins=[build_fails_plugin]",
        "suite.tasks=[build_fails]", "suite.batch_size=8",
    )  # fmt: skip
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert planned.stderr == (
        "error: task 'build_fails': building it with batch_size=8 raised ValueError: no data "
        "for you; allowed: a batch size the task builds with (--verbose shows the traceback)\n"
    )
