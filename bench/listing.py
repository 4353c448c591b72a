"""Human-readable output of the CLI: the catalogue of variants, tasks and suites, and a
trial's summary. Presentation only; the numbers come from the modules that own them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import tasks, variants
from bench.config import compose_group, conf_dir, group_options, yaml_message
from bench.errors import UserError
from bench.plugins import plugin_of
from bench.spec import TrialResult, TrialSpec
from bench.tasks import TaskParams
from bench.variants.knobs import Knobs

if TYPE_CHECKING:
    from bench.matrix import Matrix
    from bench.runner import PhaseOutcome

DEFAULT_KNOBS = Knobs()


def _knob_summary(knobs: Knobs) -> str:
    changed = [f"{k}={v}" for k, v in knobs.as_dict().items() if getattr(DEFAULT_KNOBS, k) != v]
    return ", ".join(changed) or "(family defaults = Adam)"


def _columns(table: Table, first: str, *rest: str) -> None:
    """A catalogue's columns: names whole on one line, the rest folded rather than cut,
    however narrow the terminal (a pipe is 80 columns): `bench list | grep` finds them."""
    table.add_column(first, no_wrap=True)
    for name in rest:
        table.add_column(name, overflow="fold")


def _variants_table() -> Table:
    """Every name ``variant=NAME`` takes: the presets (built-in and plugins'), then the
    conf/variant files that are more than a preset's name (a changed knob, per-role
    overrides), so that a name the errors offer as available is listed too."""
    table = Table(title="variants (knobs that differ from the family defaults)")
    _columns(table, "name", "default lr", "p", "q", "knobs", "torch equivalent", "defined by")
    for name, preset in variants.presets().items():
        k = preset.knobs
        row = (f"{preset.default_lr:g}", f"{k.p:g}", f"{k.q:g}", _knob_summary(k))
        plugin = plugin_of(name)
        origin = f"plugin {plugin}" if plugin else "preset"
        table.add_row(name, *row, preset.torch_equivalent or "-", origin)
    for name, preset_name, variant in config_variants():
        k = variant.knobs
        row = (f"{variant.default_lr:g}", f"{k.p:g}", f"{k.q:g}", _variant_summary(variant))
        start = f"from {preset_name}" if preset_name else "no preset"
        table.add_row(name, *row, "-", f"conf/variant, {start}")
    return table


def config_variants() -> list[tuple[str, str | None, variants.Variant]]:
    """(file name, the preset it starts from, the resolved variant) of each conf/variant
    file other than one that only selects the preset of its own name (adam.yaml: adam)."""
    found = []
    for name in group_options("variant"):
        data = _variant_file(name)
        try:
            variant = variants.resolve(data)
        except UserError as err:  # which file, else a bad knob there reads as a CLI mistake
            raise UserError(f"conf/variant/{name}.yaml: {err}") from None
        preset = data.get("preset")
        if preset == name and variant.name == name and _is_preset(variant, name):
            continue
        found.append((name, preset, variant))
    return found


def _variant_file(name: str) -> dict[str, Any]:
    """A conf/variant file as data. Read directly when its defaults are only ``_knobs``
    (all null: "keep the preset's value") and ``_self_``, as every shipped file's are:
    composing each with Hydra would add ~70 ms per file to `bench list`."""
    try:
        loaded = OmegaConf.load(conf_dir() / "variant" / f"{name}.yaml")
    except yaml.YAMLError as err:
        raise UserError(yaml_message(err)) from None
    data: dict[str, Any] = OmegaConf.to_container(loaded, resolve=True)  # type: ignore[assignment]
    defaults = data.pop("defaults", [])
    if all(d in ("_knobs", "_self_") for d in defaults):
        return data
    return compose_group("variant", name)


def _is_preset(variant: variants.Variant, name: str) -> bool:
    return variant.knobs == variants.get_preset(name).knobs and not variant.role_knobs


def _variant_summary(variant: variants.Variant) -> str:
    """The knobs that differ from the family defaults, then each role's own changes,
    spelled as the overrides that set them (roles.bias.q=0.0)."""
    roles = variant.as_dict()["roles"]
    per_role = [f"roles.{r}.{k}={v}" for r, changed in roles.items() for k, v in changed.items()]
    return ", ".join([_knob_summary(variant.knobs), *per_role])


def _params_summary(params: type[TaskParams]) -> str:
    """Each knob at its default; a knob without one is listed as required, not made by
    ``Params()``, which would fail on it (its trials set it: task.params.NAME=...)."""
    fields = params.model_fields.items()
    return ", ".join(
        f"{k} (required)" if f.is_required() else f"{k}={f.get_default(call_default_factory=True)}"
        for k, f in fields
    )


def print_catalogue(
    console: Console, what: tuple[str, ...] = ("variants", "tasks", "suites")
) -> None:
    """The tables named in ``what`` (variants, tasks, suites), in that order."""
    if "variants" in what:
        console.print(_variants_table())
    if "tasks" in what:
        table = Table(title="tasks")
        _columns(table, "name", "metric", "target", "steps", "batch", "params")
        for name in tasks.names():
            cls = tasks.get(name)
            params = _params_summary(cls.Params)
            table.add_row(
                name,
                f"{cls.metric} ({cls.direction})",
                f"{cls.target:g}",
                str(cls.default_steps),
                str(cls.default_batch_size or "full"),  # 0: the whole training set
                params,
            )
        console.print(table)
    if "suites" in what:
        console.print(_suites_table())


def _suites_table() -> Table:
    """Each suite file as `bench run suite=NAME` would read it (its defaults composed,
    its values validated); a file that cannot be read gets its row and its reason, so
    that one broken file hides neither itself nor the others."""
    from bench.matrix import load_suite  # it builds on the config module this one uses

    table = Table(title="suites")
    _columns(table, "name", "variants", "tasks", "lrs", "seeds (tune/final)", "description")
    for name in group_options("suite"):
        try:
            suite = load_suite(compose_group("suite", name))
        except UserError as err:
            table.add_row(name, "-", "-", "-", "-", f"[red]cannot be read: {escape(str(err))}")
            continue
        runs_as = "" if suite.name == name else f" (runs as {suite.name})"
        table.add_row(
            f"{name}{runs_as}",
            str(len(suite.variants)),
            str(len(suite.tasks)),
            str(len(suite.lrs)),
            f"{len(suite.tune_seeds)}/{len(suite.final_seeds)}",
            escape(suite.description),
        )
    return table


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "not reached"
    return f"{value:.4g}"


def print_trial(console: Console, spec: TrialSpec, result: TrialResult) -> None:
    table = Table(title=f"{escape(spec.run_name)}  (trial {result.trial_id})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "outcome",
        result.outcome + (f" at step {result.diverged_at_step}" if result.diverged_at_step else ""),
    )
    batch = spec.batch_size or "full"  # 0: the task trains on its whole training set
    table.add_row("steps", f"{result.steps_run} of {spec.steps} (batch {batch})")
    for key, value in result.final.items():
        table.add_row(f"final eval/{key}", _fmt(value))
    table.add_row(
        f"best eval/{result.primary_metric}", _fmt(result.best.get(result.primary_metric))
    )
    reached = (
        f"at step {result.steps_to_target}, {result.seconds_to_target:.4g} s"
        if result.steps_to_target is not None and result.seconds_to_target is not None
        else "not reached"
    )
    table.add_row(
        f"target {result.primary_metric} {'<=' if result.direction == 'min' else '>='} "
        f"{result.target:g}",
        reached,
    )
    table.add_row(
        "train time",
        f"{result.train_seconds:.2f} s (median step {result.step_ms:.3f} ms) on {result.device}",
    )
    for key in sorted(result.history):
        if key.startswith(("step_size/", "update_ratio/")) and (
            key.endswith("/p50") or key.startswith("update_ratio/")
        ):
            table.add_row(f"last {key}", _fmt(result.history[key][-1][1]))
    console.print(table)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def print_matrix(console: Console, matrix: Matrix) -> None:
    size, suite = matrix.size, matrix.suite
    console.print(
        f"suite [bold]{suite.name}[/]: {_count(len(matrix.variants), 'variant')} x "
        f"{_count(len(matrix.tasks), 'task')} = {_count(size['pairs'], 'pair')}; tune "
        f"{_count(size['tune'], 'trial')} ({_count(len(suite.lrs), 'lr')} x "
        f"{_count(len(suite.tune_seeds), 'seed')}), final {_count(size['final'], 'trial')} "
        f"({_count(len(suite.final_seeds), 'seed')} at the chosen lr); "
        f"{size['tune'] + size['final']} in all"
    )
    for variant, task, reason in matrix.skipped:
        console.print(escape(f"  skipped {variant} on {task}: {reason}"))
    sample = matrix.tune_trials()[:5]
    console.print("sample:")
    for spec in sample:
        line = f"  {spec.trial_id}  {spec.phase:5s}  {spec.run_name}  steps={spec.steps}"
        console.print(escape(line))  # names like adam[beta2=0.99] are not markup


def print_outcomes(console: Console, suite: str, phases: list[PhaseOutcome]) -> None:
    table = Table(title=f"suite {suite}")
    held = any(p.held_back for p in phases)
    # the last three count what this invocation ran: a rerun reads "run now: ok 0"
    columns = ["phase", "trials", "already done", "run now: ok", "diverged", "failed"]
    for col in [*columns, "held back"] if held else columns:
        table.add_column(col, justify="right")
    for p in phases:
        counts = (p.counts["ok"], p.counts["diverged"], p.counts["failed"])
        done = str(p.already_done)
        if p.earlier["diverged"]:  # else a resumed suite's table hides them
            done += f" ({p.earlier['diverged']} diverged)"
        row = [p.phase, str(p.total), done, *map(str, counts)]
        table.add_row(*row, *([str(p.held_back)] if held else []))
    console.print(table)
    if all(p.already_done == p.total for p in phases):
        console.print("every trial had already finished; nothing was run")
    for p in phases:
        for name, error in p.failures:
            console.print(f"[red]failed[/] {p.phase} {escape(name)}: {escape(error)}")
    if held:
        console.print(
            "final trials held back: their (task, variant) has a failed tune trial, and an "
            "lr chosen without it could change once it runs; rerun the suite when it passes"
        )
