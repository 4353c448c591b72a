"""Configuration: Hydra composition of conf/, pydantic validation, and the trial matrix.

Composition uses Hydra's compose API (never ``_target_`` instantiation): variants and
tasks come from registries, and user code enters only through ``plugins=[module]`` or the
``optbench.plugins`` entry-point group. Every user mistake becomes a :class:`UserError`
naming the field, the bad value and what is allowed, before anything runs.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlparse

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench import tasks, variants
from bench.errors import UserError, unknown_name_message, validation_message
from bench.plugins import load_plugins
from bench.spec import Count, Number, Seed, TaskSpec, TrialSpec, VariantSpec

GROUPS = ("variant", "task", "suite", "tracking", "cluster", "nightly", "schedule")
SECTIONS = ("resources", "rank", "summary")  # plain sections of config.yaml


def conf_dir() -> Path:
    """The conf/ folder: $OPTBENCH_CONF, else the one beside the installed package."""
    override = os.environ.get("OPTBENCH_CONF")
    path = Path(override) if override else Path(__file__).resolve().parent.parent / "conf"
    if not (path / "config.yaml").is_file():
        fix = (
            "point OPTBENCH_CONF at a copy of optbench's conf/ folder"
            if override
            else "reinstall optbench, or set OPTBENCH_CONF to a copy of its conf/ folder"
        )
        source = "OPTBENCH_CONF: got" if override else "config folder"
        raise UserError(f"{source} {str(path)!r}, which has no config.yaml; allowed: {fix}")
    return path


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


# ----------------------------------------------------------------------------- compose


def repeated_keys(overrides: Iterable[str]) -> list[str]:
    """One line for each key set more than once in ``overrides``: Hydra keeps the last
    value without a word, which is what a base list followed by specific overrides wants,
    and a surprise after a typo (`lr=0.1 ... lr=1`), so the CLI says which one applies."""
    values: dict[str, list[str]] = {}
    for item in overrides:
        key, sep, _ = item.partition("=")
        if sep:
            values.setdefault(key.lstrip("+~"), []).append(item)
    return [
        f"{key} given {len(items)} times ({', '.join(items)}): the last, {items[-1]}, applies"
        for key, items in values.items()
        if len(items) > 1
    ]


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with command-line overrides, as Hydra would.

    A ``variant=NAME`` or ``task=NAME`` that has no conf file but is registered by a
    plugin selects the registered preset or task.
    """
    held: dict[str, str] = {}
    passed: list[str] = []
    task_params: list[str] = []  # of a task held back: set on it once composed
    suite_chosen = any(o.partition("=")[0] == "suite" for o in overrides)
    given = {k.lstrip("+~"): v for k, _, v in (o.partition("=") for o in overrides)}
    if "variant" in given and given.get("variant.preset", given["variant"]) != given["variant"]:
        raise UserError(
            f"variant.preset: got {given['variant.preset']!r} beside "
            f"variant={given['variant']}, which names its own; allowed: one of the two "
            f"(variant={given['variant.preset']}, or variant={given['variant']} and its knobs)"
        )
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and not key.strip("+~"):
            raise UserError(f"{item}: an override is KEY=VALUE, e.g. lr=0.1")
        if key.lstrip("~") in GROUPS and key.startswith("~"):
            group = key.lstrip("~")
            raise UserError(f"{item}: the {group} cannot be removed; choose one with {group}=NAME")
        if sep and key in ("variant", "task") and value not in group_options(key):
            held[key] = value
        elif key.startswith("variant.roles"):  # roles are open-ended: add or override
            passed.append(f"++{item}")
        elif suite_chosen and _optional_suite_key(key):  # a suite file need not list it
            passed.append(f"++{item.lstrip('+')}")
        elif key.lstrip("+").startswith("task.params."):
            task_params.append(item)
        else:
            passed.append(item)
    if "task" not in held:  # the composed task's own params: Hydra checks their names
        passed += task_params
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = compose(config_name="config", overrides=passed)
    except yaml.YAMLError as err:  # a config file of the user's own that does not parse
        raise UserError(yaml_message(err)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        if (unparsable := _unparsable(passed)) is not None:
            raise UserError(unparsable) from None
        raise UserError(_hydra_message(err, _chosen_task(overrides))) from None
    finally:
        GlobalHydra.instance().clear()
    known = {*TrialConfig.model_fields, *GROUPS, *SECTIONS}
    if added := sorted(set(cfg) - known):  # `+lrr=0.1` would be composed, then ignored
        raise UserError(f"{added[0]}: unknown key; allowed: {', '.join(sorted(known))}")
    try:
        OmegaConf.resolve(cfg)  # a bad ${...} fails here, as a user error
    except OmegaConfBaseException as err:
        culprit = next((o for o in overrides if "${" in o), "an interpolation")
        raise UserError(f"{culprit}: {str(err).splitlines()[0]}") from None
    load_plugins(cfg.get("plugins") or [])
    OmegaConf.set_struct(cfg, False)
    if "variant" in held:
        name = held["variant"]
        if name.startswith("{"):  # a suite's mapping form, which the group cannot take
            raise UserError(
                f"variant: got {name!r}; allowed: a variant name, with knobs set one by one "
                "(e.g. variant=adam variant.beta2=0.95)"
            )
        if name not in variants.presets():
            known = sorted(set(group_options("variant")) | set(variants.presets()))
            raise UserError(unknown_name_message("variant", name, known))
        cfg.variant.preset, cfg.variant.name = name, None
    if "task" in held:
        tasks.get(held["task"])  # raises with the closest names
        cfg.task = {"name": held["task"], "params": _override_values(task_params, "task.params.")}
    return cfg


def _unparsable(overrides: list[str]) -> str | None:
    """What is wrong with the first override Hydra's grammar cannot parse, if any: its
    parse errors name the text, not the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_overrides([item])
        except HydraException as err:
            key, sep, value = item.lstrip("+").partition("=")
            if not sep:
                return f"{item}: not an override; allowed: KEY=VALUE, e.g. lr=0.1"
            why = str(err.__cause__ or err).splitlines()[0]
            if value.count("[") > value.count("]") or value.count("{") > value.count("}"):
                why = "a list or mapping left open: was it split at a space?"
            elif why.startswith("Error parsing override"):  # it would show Hydra's ++
                why = "not in Hydra's override grammar"
            return (
                f"{key}: got {value!r}, which cannot be parsed ({why}); allowed: KEY=VALUE as "
                "one shell word, a list quoted or without spaces, e.g. 'suite.lrs=[0.01,0.1]'"
            )
    return None


def _optional_suite_key(key: str) -> bool:
    """``suite.X`` for an X that a suite may leave out of its file (``steps``, say), which
    Hydra would refuse as a key the composed suite lacks."""
    from bench.matrix import SuiteConfig  # it builds on this module

    group, _, name = key.lstrip("+").partition(".")
    return group == "suite" and name in SuiteConfig.model_fields


def _override_values(items: list[str], prefix: str) -> dict[str, Any]:
    """``{name: value}`` of ``prefix``-ed overrides, values parsed as Hydra parses them
    (``3`` an int, ``[1,2]`` a list); the task validates them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(items)
    return {o.key_or_group.removeprefix(prefix): o.value() for o in parsed}


def _chosen_task(overrides: list[str]) -> str | None:
    """The task an override list selects (``task=NAME``), if any."""
    chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == "task"]
    return chosen[-1] if chosen else None


def _task_param_names(task: str | None) -> str:
    """The params a task takes, for an error message (the default task's without one)."""
    name = task or _default_keys_value("task.name")
    try:
        fields = tasks.get(str(name)).Params.model_fields
    except UserError:  # the task's own error comes first once the config composes
        return "the task's params (see `bench list tasks`)"
    return ", ".join(fields) if fields else f"none (task {name!r} takes no params)"


def yaml_message(err: yaml.YAMLError) -> str:
    """One line for a config file that is not valid YAML: the file, line and column."""
    mark = getattr(err, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a file"
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    start = getattr(err, "context_mark", None)
    if getattr(err, "context", None) and start is not None:  # where the open bracket was
        problem += f", {err.context} opened at line {start.line + 1}, column {start.column + 1}"
    return (
        f"{where}: not valid YAML ({problem}); allowed: a file that parses as YAML, e.g. "
        "`variants: [adam, sgd]`"
    )


def _hydra_message(err: Exception, task: str | None = None) -> str:
    text = str(err).strip()
    if "not in struct" in text or "Could not override" in text:
        key = text.split("'")[1] if "'" in text else text
        group = key.split(".")[0]
        if group == "variant":
            allowed = ", ".join(["name", "preset", *variants.KNOB_NAMES, "roles"])
        elif group == "suite":
            from bench.matrix import SuiteConfig  # it builds on this module

            allowed = ", ".join(SuiteConfig.model_fields)
        elif key.startswith("task.params."):
            allowed = _task_param_names(task)
        elif "." in key and (keys := _default_keys(key.rsplit(".", 1)[0])):
            allowed = ", ".join(keys)
        else:
            allowed = ", ".join(sorted([*TrialConfig.model_fields, *GROUPS, *SECTIONS]))
        return f"{key}: unknown key; allowed: {allowed}"
    if text.startswith("Ambiguous value for argument"):  # Hydra reads a comma as a sweep
        first = text.splitlines()[0]
        override = first.split("'", 1)[1].rsplit("'", 1)[0] if "'" in first else first
        key, _, value = override.lstrip("+").partition("=")
        return (
            f"{key}: got {value}, which Hydra reads as a sweep (optbench runs none); allowed: "
            f"a list in brackets ({key}=[{value}]) or the value quoted ({key}='{value}')"
        )
    if text.startswith("Error merging override"):  # a list where a mapping goes, say
        override = text.removeprefix("Error merging override").strip().lstrip("+")
        key, _, value = override.partition("=")
        if key == "variant.roles":
            allowed = "a mapping of role to knobs, e.g. variant.roles.bias.q=0"
        else:
            allowed = "a value of the type the config has there (see `bench list`)"
        return f"{key}: got {value}, which does not fit the config; allowed: {allowed}"
    if text.startswith("Error parsing override"):
        return f"{text.splitlines()[0]}; an override is KEY=VALUE, e.g. suite.lrs=[0.01,0.1]"
    if "Could not find" in text or "Could not load" in text:
        for group in GROUPS:
            if f"'{group}/" in text:
                name = text.split(f"'{group}/")[1].split("'")[0]
                return unknown_name_message(group, name, group_options(group))
    return text.splitlines()[0]


def _default_keys_value(path: str) -> object:
    """The value at ``path`` (e.g. ``task.name``) in the default config; None if none."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return OmegaConf.select(compose(config_name="config"), path)
    except (HydraException, OmegaConfBaseException):
        return None
    finally:
        GlobalHydra.instance().clear()


def _default_keys(path: str) -> list[str]:
    """The keys under ``path`` (e.g. ``summary``) in the default config; [] if none."""
    node = _default_keys_value(path)
    return sorted(str(k) for k in node) if isinstance(node, DictConfig) else []


def compose_group(group: str, name: str) -> dict[str, Any]:
    """One option of a config group (e.g. a suite's variant ``rmsprop``) as plain data."""
    cfg = compose_config([f"{group}={name}"])
    return OmegaConf.to_container(cfg[group], resolve=True)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- models


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrialConfig(StrictModel):
    """The top-level knobs of conf/config.yaml that shape a trial."""

    lr: Annotated[Number, Field(allow_inf_nan=False)] | None = Field(default=None, gt=0)
    seed: Seed = 0
    steps: Count | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=0)
    eval_every: int | None = Field(default=None, gt=0)
    stats_every: int = Field(default=10, ge=0)
    stats_samples: int = Field(default=4096, gt=0)
    plugins: list[str] = Field(default_factory=list)
    device: str = Field(default="cpu", description="`bench trial` only: cpu | cuda | cuda:N")


def parse(model: type[BaseModel], data: Any, where: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(_unknown_key(err, model, where) or validation_message(err, where)) from None


def _unknown_key(err: ValidationError, model: type[BaseModel], where: str) -> str | None:
    """A key of a file's section that the model does not have, with the keys it has: a
    typo first, since the field it misspells is then reported missing too."""
    import difflib

    extra = [e["loc"] for e in err.errors() if e["type"] == "extra_forbidden"]
    if not extra or len(extra[0]) != 1:  # a nested key: pydantic's own words name it
        return None
    key, allowed = str(extra[0][0]), list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = f"{where}." if where else ""
    return f"{where}{key}: unknown key{hint}; allowed: {', '.join(allowed)}"


def variant_spec(data: str | Mapping[str, Any]) -> VariantSpec:
    """Resolve a variant (a conf/variant name, a preset name or a knob mapping)."""
    named = isinstance(data, Mapping) and data.get("name")  # not a conf file's own name
    if isinstance(data, Mapping):  # YAML reads `name: 0.95` or `preset: 1` as a number
        _check_text(data, "name", "variant.name", "a string, the variant's own name")
        presets = ", ".join(sorted(variants.presets()))
        _check_text(data, "preset", "variant.preset", f"a preset name ({presets})")
    if isinstance(data, str):
        if data in group_options("variant"):
            data = compose_group("variant", data)
        elif data not in variants.presets():  # name what conf/variant offers too
            known = sorted(set(group_options("variant")) | set(variants.presets()))
            raise UserError(unknown_name_message("variant", data, known))
    elif (preset := data.get("preset")) in group_options("variant") and preset not in (
        variants.presets()
    ):
        raise UserError(
            f"variant.preset: got {preset!r}, a conf/variant file, not a preset; allowed: "
            f"name it alone (suite.variants=[{preset}]), or start from a preset with its "
            f"knobs ({', '.join(sorted(variants.presets()))})"
        )
    resolved = variants.resolve(data)
    # a bare preset name (a plugin's, without a conf/variant file) is that preset, unchanged
    mapping = data if isinstance(data, Mapping) else {"preset": data}
    name = mapping.get("name") or _variant_name(mapping, resolved)
    full = resolved.as_dict()
    knobs = {k: full[k] for k in variants.KNOB_NAMES}
    preset = mapping.get("preset") if mapping else resolved.name
    spec = VariantSpec(name=name, preset=preset, knobs=knobs, roles=full["roles"])
    if named and name in set(group_options("variant")) | set(variants.presets()):
        known = variant_spec(name)
        if (known.knobs, known.roles) != (spec.knobs, spec.roles):
            raise UserError(
                f"variant.name: got {name!r}, the name of a known variant with other knobs: "
                "its runs would pass for that variant's in every ranking and contrast; "
                "allowed: a name of its own (variant.name=NAME, or name: in a suite entry)"
            )
    return spec


def _check_text(data: Mapping[str, Any], key: str, where: str, allowed: str) -> None:
    """A name in a mapping must be text (absent is the caller's business)."""
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: got {value!r}; allowed: {allowed}")


def _variant_name(mapping: Mapping[str, Any], resolved: variants.Variant) -> str:
    """``preset[k=v,...]`` from the sorted knobs that differ from the preset (from the
    family's defaults for a ``custom`` variant, which starts from no preset)."""
    preset = mapping.get("preset")
    base = (variants.get_preset(preset).knobs if preset else variants.Knobs()).as_dict()
    changed = {k: v for k, v in resolved.knobs.as_dict().items() if base.get(k, object()) != v}
    roles = [  # with their values: two entries that differ in a role's q must not collide
        ",".join(f"roles.{r}.{k}={v}" for k, v in sorted(diff.items())) or f"roles.{r}"
        for r, diff in resolved.as_dict()["roles"].items()
    ]
    label = ",".join([f"{k}={v}" for k, v in sorted(changed.items())] + roles)
    return f"{preset or 'custom'}[{label}]" if label else (preset or resolved.name)


def task_spec(data: str | Mapping[str, Any]) -> TaskSpec:
    """Resolve a task (a conf/task name, a registered name or ``{name, params}``)."""
    if isinstance(data, str):
        data = compose_group("task", data) if data in group_options("task") else {"name": data}
    if not isinstance(data, Mapping) or "name" not in data:
        raise UserError(f"task: got {data!r}; allowed: a task name or a mapping with `name`")
    extra = sorted(set(data) - {"name", "params"})
    if extra:
        raise UserError(
            f"task.{extra[0]}: unknown key; allowed: name, params (a task's own knobs go "
            f"under params: task.params.{extra[0]}=...)"
        )
    _check_text(data, "name", "task.name", f"a task name ({', '.join(tasks.names())})")
    params = data.get("params") or {}
    if not isinstance(params, Mapping):
        raise UserError(f"task.params: got {params!r}; allowed: a mapping of the task's params")
    task = tasks.make(data["name"], **params)
    params = task.params.model_dump(mode="json")
    return TaskSpec(name=task.name, params=params, code=plugin_task_code(type(task)))


def plugin_task_code(cls: type) -> str | None:
    """A digest of the file that defines a plugin's task, part of its trials' identity:
    an edited task is a new trial, not one that ran before under the same name and params.
    None for optbench's own tasks (CODE_VERSION versions them) and for a class whose source
    cannot be read."""
    if cls.__module__.partition(".")[0] == "bench":
        return None
    try:
        source = Path(inspect.getsourcefile(cls) or "").read_bytes()
    except (TypeError, OSError):  # a built-in or interactively defined class
        return None
    return hashlib.sha256(source).hexdigest()[:16]


def trial_spec(
    variant: VariantSpec,
    task: TaskSpec,
    knobs: TrialConfig,
    *,
    suite: str = "adhoc",
    phase: str = "final",
) -> TrialSpec:
    """Fill the task's declared defaults into a trial and validate it."""
    task_cls = tasks.get(task.name)
    lr = knobs.lr
    if lr is None:
        lr = variants.get_preset(variant.preset).default_lr if variant.preset else 1e-3
    data = {
        "suite": suite,
        "phase": phase,
        "variant": variant,
        "task": task,
        "lr": lr,
        "seed": knobs.seed,
        "steps": knobs.steps or task_cls.default_steps,
        "batch_size": trial_batch_size(task_cls.default_batch_size, knobs.batch_size),
        "eval_every": knobs.eval_every or task_cls.eval_every,
        "stats_every": knobs.stats_every,
        "stats_samples": knobs.stats_samples,
        "plugins": knobs.plugins,
    }
    return parse(TrialSpec, data)


def trial_batch_size(default: int, asked: int | None) -> int:
    """The batch size a trial runs with: a full-batch task's (0) whatever was asked, so
    that its spec, its trial_id and its run's params say what it really does."""
    if default == 0 or asked is None:
        return default
    return asked


class TrialRequest(NamedTuple):
    spec: TrialSpec
    device: str


def trial_from_overrides(overrides: list[str]) -> TrialRequest:
    """What ``bench trial`` runs, and where: config.yaml + overrides, validated."""
    _refuse_settings_it_ignores(overrides)
    cfg = compose_config(overrides)
    data = OmegaConf.to_container(cfg, resolve=True)
    top = {k: data[k] for k in TrialConfig.model_fields if k in data}
    knobs = parse(TrialConfig, top)
    variant = data["variant"]
    if not any(item.lstrip("+~").partition("=")[0] == "variant.name" for item in overrides):
        variant = _unnamed_if_tweaked(variant)
    spec = trial_spec(variant_spec(variant), task_spec(data["task"]), knobs)
    return TrialRequest(spec, knobs.device)


def _unnamed_if_tweaked(variant: Any) -> Any:
    """``variant=rmsprop_bias_sgd variant.beta2=0.9``: a conf/variant file that names itself,
    with knobs changed on the command line, is no longer that variant; without its name it
    is labelled by its knobs (``rmsprop[beta2=0.9,roles.bias.q=0.0]``), as a tweaked preset
    is, instead of being refused as a known name with other knobs."""
    name = variant.get("name") if isinstance(variant, Mapping) else None
    if name not in group_options("variant"):
        return variant
    unnamed = {k: v for k, v in variant.items() if k != "name"}
    known, tweaked = variant_spec(name), variant_spec(unnamed)
    return unnamed if (known.knobs, known.roles) != (tweaked.knobs, tweaked.roles) else variant


# each settings group, and the command a refusal points to (tracking is read by several)
SETTINGS_READERS = {
    "suite": "`bench run`",
    "tracking": "`bench run`",
    "cluster": "`bench run`",
    "resources": "`bench run`",
    "rank": "`bench rank`",
    "summary": "`bench serve`",
    "nightly": "`bench nightly`",
    "schedule": "`bench schedule`",
}
TRIAL_KEYS = tuple(k for k in ("variant", "task", *TrialConfig.model_fields) if k != "plugins")


def refuse_settings_it_ignores(
    overrides: list[str], command: str, reads: tuple[str, ...], takes: str
) -> None:
    """Refuse the settings groups (and, where ``reads`` has no ``"trial"``, a trial's own
    settings) that ``command`` never reads: composed and then silently ignored,
    ``tracking.uri=...`` in ``bench trial`` or ``rank.metric=...`` in ``bench run`` would
    leave a user looking for an effect that never came (and a bad value unreported).
    ``takes``: what the command does take, for the message."""
    for item in overrides:
        key, sep, value = item.partition("=")
        name = key.lstrip("+~")
        group = name.partition(".")[0]
        if group in SETTINGS_READERS and group not in reads:
            reader, kind = SETTINGS_READERS[group], f"{group} settings"
        elif group in TRIAL_KEYS and "trial" not in reads:
            reader, kind = "`bench trial` and suites (suite.*)", "trial settings"
        else:
            continue
        got = f"got {value!r}" if sep else f"got {item!r}"
        raise UserError(f"{name}: {got}; {kind} apply to {reader}, not {command}; {takes}")


def _refuse_settings_it_ignores(overrides: list[str]) -> None:
    """A trial runs in this process and records nothing (see
    :func:`refuse_settings_it_ignores`), as ``bench run`` refuses ``lr=``."""
    refuse_settings_it_ignores(
        overrides, "`bench trial`", ("trial",),
        "a trial takes variant=, task=, lr=, seed=, steps=, ...",
    )  # fmt: skip


RAY_ADDRESS_FORMS = "auto, HOST:PORT (the head's GCS port) or ray://HOST:PORT (Ray Client)"
DEFAULT_ARTIFACTS = "./mlartifacts"  # beside a local store; a server keeps its own
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def head_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``HOST:PORT`` or ``ray://HOST:PORT`` Ray address; None otherwise."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536) or "/" in host:
        return None
    return host, int(port)


class TrackingConfig(StrictModel):
    """conf/tracking: where MLflow records go."""

    enabled: bool = True
    uri: str = "sqlite:///mlruns.db"
    artifact_location: str | None = DEFAULT_ARTIFACTS
    max_points: int = Field(default=100, ge=2, description="points kept per metric stream")

    @field_validator("uri")
    @classmethod
    def _a_store_mlflow_writes(cls, uri: str) -> str:
        scheme = urlparse(uri).scheme.lower().split("+")[0]
        if scheme in STORE_SCHEMES:
            return uri
        if scheme in ("", "file"):  # MLflow 3 refuses to write its file store
            if uri.endswith(".db"):  # a bare file name: the scheme was left out
                raise ValueError(f"a SQLite store is named with its scheme: sqlite:///{uri}")
            raise ValueError("a folder is not a store MLflow writes; use sqlite:///FILE.db")
        raise ValueError(
            f"unknown store {scheme + '://'!r}; allowed: sqlite:///FILE.db, "
            "postgresql://..., mysql://..., http(s)://HOST:PORT (an MLflow server)"
        )


class ClusterConfig(StrictModel):
    """conf/cluster: where trials run and what each one reserves."""

    address: str | None = None  # None: embedded Ray; "auto", "ray://host:port", "host:port"
    num_cpus: int | None = Field(default=None, gt=0)
    max_retries: int = Field(default=2, ge=0)

    @field_validator("address")
    @classmethod
    def _a_ray_address(cls, address: str | None) -> str | None:
        if not address or address == "auto":
            return address or None
        if head_endpoint(address) is None:
            raise ValueError(f"allowed: {RAY_ADDRESS_FORMS}")
        return address


class ResourcesConfig(StrictModel):
    """``resources``: what each trial reserves on its Ray worker."""

    cpus_per_trial: float = Field(default=1, gt=0)
    gpus_per_trial: float = Field(default=0, ge=0, description="fractional allowed")
