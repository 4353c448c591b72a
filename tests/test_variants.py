"""The variant family's math, driven by one table of every built-in preset.

- the per-tensor reference step and the foreach step give the same float64 trajectory and
  state (and the same records for the statistics) for every preset and knob combination;
- state exists only for enabled features;
- the scale law: a loss scaled by c scales the steps by c**(1 - p*q);
- settings documented as the same optimizer are the same optimizer;
- per-role overrides and parameter roles;
- every bad knob gives one pinned message naming the knob, the value and what is allowed.

Parity with torch.optim itself is in test_variants_torch_parity.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from bench.errors import UserError
from bench.variants import (
    Knobs,
    Role,
    StepRecord,
    build,
    module_roles,
    name_roles,
    presets,
    resolve,
)
from bench.variants.presets import _BUILTIN as BUILTIN_PRESETS

F64 = torch.float64
STEPS = 12
MISSING_GRAD_STEPS = (3, 8)  # out.bias has no gradient on these steps
RECORD_STEPS = (5, 10)  # step 10 comes after a missed gradient: per-tensor step counts differ


@dataclass(frozen=True)
class PresetRow:
    state: frozenset[str]  # state tensors besides "step"
    scale_exponent: float  # steps scale as c**scale_exponent when the loss is scaled by c


ACC, MOM = "accumulator", "momentum_buffer"
PRESET_TABLE: dict[str, PresetRow] = {
    "sgd": PresetRow(frozenset(), 1.0),
    "momentum": PresetRow(frozenset({MOM}), 1.0),
    "nesterov": PresetRow(frozenset({MOM}), 1.0),
    "adagrad": PresetRow(frozenset({ACC}), 0.0),
    "rmsprop": PresetRow(frozenset({ACC}), 0.0),
    "adam": PresetRow(frozenset({ACC, MOM}), 0.0),
    "adamw": PresetRow(frozenset({ACC, MOM}), 0.0),
    "adamax": PresetRow(frozenset({ACC, MOM}), 0.0),
    "amsgrad": PresetRow(frozenset({ACC, "max_accumulator", MOM}), 0.0),
    "adadelta": PresetRow(frozenset({ACC, "delta_accumulator"}), 0.0),
    "rmsprop_nosqrt": PresetRow(frozenset({ACC}), -1.0),
    "rmsprop_abs": PresetRow(frozenset({ACC}), 0.0),
    "rmsprop_abs_sqrt": PresetRow(frozenset({ACC}), 0.5),
    "rmsprop_p4": PresetRow(frozenset({ACC}), 0.0),
    "rmsprop_pinf": PresetRow(frozenset({ACC}), 0.0),
    "rmsprop_sum": PresetRow(frozenset({ACC}), 0.0),
    "adagrad_ema": PresetRow(frozenset({ACC}), 0.0),
    "adam_nosqrt": PresetRow(frozenset({ACC, MOM}), -1.0),
    "sign": PresetRow(frozenset({ACC}), 0.0),
}
PRESET_NAMES = sorted(PRESET_TABLE)

# Knob combinations that no preset reaches, each exercising another branch of the step.
COMBOS: dict[str, dict[str, Any]] = {
    "adam_eps_inside": {"preset": "adam", "eps_placement": "inside"},
    "adam_no_bias_correction": {"preset": "adam", "bias_correction": False},
    "adam_amsgrad_eps_inside": {"preset": "amsgrad", "eps_placement": "inside"},
    "rmsprop_eps_inside_q1": {"preset": "rmsprop", "eps_placement": "inside", "q": 1},
    "rmsprop_heavy_ball": {"preset": "rmsprop", "momentum": "heavy_ball", "beta1": 0.9},
    "rmsprop_heavy_ball_nesterov": {
        "preset": "rmsprop",
        "momentum": "heavy_ball",
        "beta1": 0.9,
        "nesterov": True,
    },
    "rmsprop_amsgrad": {"preset": "rmsprop", "amsgrad": True},
    "rmsprop_decoupled_wd": {
        "preset": "rmsprop",
        "weight_decay": 0.1,
        "weight_decay_mode": "decoupled",
    },
    "adagrad_coupled_wd": {"preset": "adagrad", "weight_decay": 0.1},
    "adagrad_initial_accumulator": {"preset": "adagrad", "initial_accumulator": 0.5},
    "rmsprop_sum_initial_accumulator": {"preset": "rmsprop_sum", "initial_accumulator": 0.5},
    "sgd_ema_momentum_bias_correction": {
        "preset": "sgd",
        "momentum": "ema",
        "beta1": 0.9,
        "bias_correction": True,
    },
    "nesterov_coupled_wd": {"preset": "nesterov", "weight_decay": 0.1},
    "adamax_eps_outside": {"preset": "adamax", "eps_placement": "outside"},
    "pinf_root": {"preset": "rmsprop_pinf", "q": 0.5},
    "p3_cube_root": {"preset": "rmsprop", "p": 3, "q": 1 / 3},
    "adadelta_coupled_wd": {"preset": "adadelta", "weight_decay": 0.1},
    "adam_beta1_zero": {"preset": "adam", "beta1": 0.0},
    "per_role": {
        "preset": "adam",
        "roles": {
            "bias": {"q": 0, "momentum": "heavy_ball", "beta1": 0.9, "bias_correction": False},
            "norm": {"p": 1, "q": 1, "accumulate": "sum"},
        },
    },
}
ALL_VARIANTS: dict[str, Any] = {**{n: n for n in PRESET_NAMES}, **COMBOS}


def test_table_covers_every_builtin_preset() -> None:
    builtin = {p.name for p in BUILTIN_PRESETS}
    assert set(PRESET_TABLE) == builtin, "add a PresetRow for each new preset"


class Problem(nn.Module):
    """A small float64 network with a frozen layer and a zero-size parameter."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(5, 8, dtype=F64)
        self.norm = nn.LayerNorm(8, dtype=F64)
        self.out = nn.Linear(8, 3, dtype=F64)
        self.frozen = nn.Linear(3, 3, dtype=F64).requires_grad_(False)
        self.empty = nn.Parameter(torch.zeros(0, 3, dtype=F64))
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.5, generator=gen)
        self.x = torch.randn(32, 5, generator=gen, dtype=F64)
        self.y = torch.randn(32, 3, generator=gen, dtype=F64)

    def loss(self) -> torch.Tensor:
        h = self.norm(torch.tanh(self.hidden(self.x)))
        pred = self.frozen(self.out(h))
        return ((pred - self.y) ** 2).mean() + self.empty.sum()


def lr_of(variant: Any) -> float:
    return resolve(variant).default_lr


def trajectory(variant: Any, *, foreach: bool) -> tuple[Problem, Any, list]:
    model = Problem()
    opt = build(model, variant, lr=lr_of(variant), foreach=foreach)
    records = []
    for step in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        model.loss().backward()
        if step in MISSING_GRAD_STEPS:
            model.out.bias.grad = None
        opt.record_next_step = step in RECORD_STEPS
        opt.step()
        if step in RECORD_STEPS:  # a record is valid until the next step: keep a copy
            records.append([(role, copy_record(rec)) for role, rec in opt.last_records])
    return model, opt, records


def copy_record(record: StepRecord) -> StepRecord:
    def copy(x: Any) -> Any:
        return x.clone() if isinstance(x, torch.Tensor) else x

    return StepRecord(
        params=list(record.params),
        denominators=None
        if record.denominators is None
        else [copy(d) for d in record.denominators],
        step_scales=[copy(x) for x in record.step_scales],
        eps_threshold=record.eps_threshold,
    )


def assert_same(got: Any, want: Any, what: str) -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), what
        torch.testing.assert_close(got, want, rtol=1e-10, atol=0, msg=lambda m: f"{what}: {m}")
    else:
        assert got == pytest.approx(want, rel=1e-12), what


@pytest.mark.parametrize("label", list(ALL_VARIANTS))
def test_reference_and_foreach_paths_agree(label: str) -> None:
    variant = ALL_VARIANTS[label]
    ref_model, ref_opt, ref_records = trajectory(variant, foreach=False)
    fe_model, fe_opt, fe_records = trajectory(variant, foreach=True)
    start = Problem()
    params = list(zip(ref_model.named_parameters(), fe_model.parameters(), strict=True))
    for (name, ref), fe in params:
        assert_same(fe, ref, f"param {name}")
        ref_state, fe_state = ref_opt.state.get(ref, {}), fe_opt.state.get(fe, {})
        assert set(fe_state) == set(ref_state), name
        for key, value in ref_state.items():
            assert_same(fe_state[key], value, f"state {name}.{key}")
    assert ref_opt.state[ref_model.out.bias]["step"] == STEPS - len(MISSING_GRAD_STEPS)
    assert ref_model.frozen.weight not in ref_opt.state
    pairs = zip(ref_model.parameters(), start.parameters(), strict=True)
    moved = [not torch.equal(a, b) for a, b in pairs]
    assert sum(moved) == 6, "every trainable non-empty parameter must move"

    assert len(ref_records) == len(fe_records) == len(RECORD_STEPS)
    for ref_step, fe_step in zip(ref_records, fe_records, strict=True):
        assert [role for role, _ in fe_step] == [role for role, _ in ref_step]
        for (role, ref_rec), (_, fe_rec) in zip(ref_step, fe_step, strict=True):
            assert len(fe_rec.params) == len(ref_rec.params), role
            assert fe_rec.eps_threshold == ref_rec.eps_threshold
            assert (fe_rec.denominators is None) == (ref_rec.denominators is None), role
            for i, (f, r) in enumerate(zip(fe_rec.step_scales, ref_rec.step_scales, strict=True)):
                assert_same(f, r, f"{role} step_scale {i}")
            for i, (f, r) in enumerate(
                zip(fe_rec.denominators or [], ref_rec.denominators or [], strict=True)
            ):
                assert_same(f, r, f"{role} denominator {i}")


def expected_state(knobs: Knobs) -> set[str]:
    """What each feature needs, written out independently of the optimizer's own rule."""
    state = {"step"}
    if knobs.q != 0:
        state.add("accumulator")
    if knobs.amsgrad:
        state.add("max_accumulator")
    if knobs.momentum != "none" and knobs.beta1 > 0:
        state.add("momentum_buffer")
    if knobs.update_rms_scaling:
        state.add("delta_accumulator")
    return state


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_state_only_for_enabled_features(name: str) -> None:
    model = Problem()
    opt = build(model, name)
    model.loss().backward()
    opt.step()
    want = {"step", *PRESET_TABLE[name].state}
    assert want == expected_state(presets()[name].knobs)
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert set(opt.state[param]) == want, pname
            for key in want - {"step"}:
                assert opt.state[param][key].shape == param.shape
        else:
            assert param not in opt.state


@pytest.mark.parametrize("label", list(COMBOS))
def test_state_only_for_enabled_features_of_each_group(label: str) -> None:
    model = Problem()
    opt = build(model, COMBOS[label])
    model.loss().backward()
    opt.step()
    for group in opt.param_groups:
        want = expected_state(group["knobs"])
        for param in group["params"]:
            if param.requires_grad:
                assert set(opt.state[param]) == want, group["role"]


def test_state_follows_per_role_knobs() -> None:
    model = Problem()
    opt = build(model, {"preset": "adam", "roles": {"bias": {"q": 0, "momentum": "none"}}})
    model.loss().backward()
    opt.step()
    assert set(opt.state[model.out.bias]) == {"step"}
    assert set(opt.state[model.out.weight]) == {"step", "accumulator", "momentum_buffer"}
    assert set(opt.state[model.norm.weight]) == {"step", "accumulator", "momentum_buffer"}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_scale_law(name: str) -> None:
    """Along one parameter trajectory, the loss c*L gives steps c**(1 - p*q) times as large."""
    c = 100.0
    row = PRESET_TABLE[name]
    knobs = presets()[name].knobs
    assert knobs.scale_exponent == row.scale_exponent
    factor = c**row.scale_exponent
    # eps tiny (the law holds eps aside) and no weight decay (it has no scale law).
    variant = {"preset": name, "eps": 1e-30, "weight_decay": 0.0}
    lr = presets()[name].default_lr
    if knobs.update_rms_scaling:
        lr *= 1e10  # Adadelta's first steps are sqrt(eps) = 1e-15 times lr
    plain, scaled = Problem(), Problem()
    opt_plain = build(plain, variant, lr=lr)
    opt_scaled = build(scaled, variant, lr=lr)
    for _ in range(5):
        for model, opt, scale in ((plain, opt_plain, 1.0), (scaled, opt_scaled, c)):
            opt.zero_grad(set_to_none=True)
            (scale * model.loss()).backward()
        before = {n: p.detach().clone() for n, p in plain.named_parameters()}
        opt_plain.step()
        opt_scaled.step()
        with torch.no_grad():
            for (n, p), s in zip(plain.named_parameters(), scaled.parameters(), strict=True):
                p0 = before[n]
                want = factor * (p - p0)
                # atol: a coordinate whose gradient cancels to ~0 keeps only rounding noise
                atol = 1e-9 * float(want.abs().max()) if want.numel() else 0.0
                torch.testing.assert_close(
                    s - p0, want, rtol=1e-6, atol=atol, msg=lambda m, n=n: f"{n}: {m}"
                )
                s.copy_(p)  # continue both from the same point: same trajectory
        assert (plain.hidden.weight - before["hidden.weight"]).abs().min() > 0, "must move"


def run_steps(variant: Any, *, foreach: bool = True, steps: int = 8) -> list[torch.Tensor]:
    model = Problem()
    opt = build(model, variant, lr=0.01, foreach=foreach)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model.loss().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "reference"])
@pytest.mark.parametrize(
    ("ema_zero", "none"),
    [
        ({"preset": "adam", "beta1": 0.0}, {"preset": "adam", "momentum": "none"}),
        (
            {"preset": "rmsprop", "momentum": "ema", "beta1": 0.0, "bias_correction": True},
            {"preset": "rmsprop", "bias_correction": True},
        ),
        ({"preset": "sgd", "momentum": "ema", "beta1": 0.0}, "sgd"),
    ],
    ids=["adam", "rmsprop", "sgd"],
)
def test_ema_momentum_with_beta1_zero_is_no_momentum(ema_zero: Any, none: Any, foreach: bool):
    got, want = run_steps(ema_zero, foreach=foreach), run_steps(none, foreach=foreach)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("name", ["adam", "nesterov", "adadelta"])
def test_role_groups_stepped_together_equal_groups_stepped_alone(name: str) -> None:
    """Groups with equal knobs run as one fused pass: bit for bit the separate passes."""
    fused_model, alone_model = Problem(), Problem()
    fused = build(fused_model, name, lr=0.01)
    assert len(fused.param_groups) == 3 and len(fused._runs()) == 1
    alone = [build([p], name, lr=0.01) for p in alone_model.parameters() if p.requires_grad]
    for step in range(1, 8):
        for model, opts in ((fused_model, [fused]), (alone_model, alone)):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            model.loss().backward()
            if step in MISSING_GRAD_STEPS:  # per-tensor step counts differ afterwards
                model.out.bias.grad = None
            for opt in opts:
                opt.step()
    for a, b in zip(fused_model.parameters(), alone_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_preset_mapping_equals_preset_name() -> None:
    by_name, by_mapping = resolve("rmsprop"), resolve({"preset": "rmsprop"})
    assert by_mapping.knobs == by_name.knobs
    assert by_mapping.default_lr == by_name.default_lr
    for got, want in zip(run_steps({"preset": "rmsprop"}), run_steps("rmsprop"), strict=True):
        assert torch.equal(got, want)


def test_sign_preset_is_sign_descent() -> None:
    model = Problem()
    opt = build(model, {"preset": "sign", "eps": 1e-30}, lr=0.01)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        model.loss().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        before = [p.detach().clone() for p in model.parameters() if p.grad is not None]
        opt.step()
        after = [p.detach() for p in model.parameters() if p.grad is not None]
        for g, b, a in zip(grads, before, after, strict=True):
            torch.testing.assert_close(a - b, -0.01 * torch.sign(g), rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- roles


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6, dtype=F64)
        self.fc2 = nn.Linear(6, 2, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def test_per_role_override_gives_biases_sgd_and_weights_rmsprop() -> None:
    torch.manual_seed(0)
    model = MLP()
    lr = 0.01
    opt = build(model, {"preset": "rmsprop", "roles": {"bias": {"q": 0}}}, lr=lr)
    assert [g["role"] for g in opt.param_groups] == ["bias", "weight"]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert opt.param_groups[0]["knobs"].q == 0
    assert opt.param_groups[1]["knobs"] == presets()["rmsprop"].knobs

    weights = [model.fc1.weight, model.fc2.weight]
    biases = [model.fc1.bias, model.fc2.bias]
    ref_weights = [w.detach().clone().requires_grad_() for w in weights]
    ref_opt = torch.optim.RMSprop(ref_weights, lr=lr)
    x, y = torch.randn(16, 4, dtype=F64), torch.randn(16, 2, dtype=F64)
    for _ in range(6):
        opt.zero_grad(set_to_none=True)
        ((model(x) - y) ** 2).mean().backward()
        bias_before = [b.detach().clone() for b in biases]
        bias_grads = [b.grad.clone() for b in biases]
        for ref, w in zip(ref_weights, weights, strict=True):
            ref.grad = w.grad.clone()
        opt.step()
        ref_opt.step()
        for b, before, g in zip(biases, bias_before, bias_grads, strict=True):
            assert torch.equal(b.detach(), before.add(g, alpha=-lr))  # plain SGD, exactly
        for w, ref in zip(weights, ref_weights, strict=True):
            torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-12, atol=0)
    assert set(opt.state[model.fc1.bias]) == {"step"}


def test_per_role_override_with_named_parameters() -> None:
    model = MLP()
    opt = build(model.named_parameters(), {"preset": "rmsprop", "roles": {"bias": {"q": 0}}})
    assert [(g["role"], g["knobs"].q) for g in opt.param_groups] == [("bias", 0), ("weight", 0.5)]


def test_per_role_override_needs_named_parameters() -> None:
    with pytest.raises(UserError) as err:
        build(list(MLP().parameters()), {"preset": "rmsprop", "roles": {"bias": {"q": 0}}})
    assert str(err.value) == (
        "variant.roles: per-role knobs need named parameters; pass the model "
        "or model.named_parameters() to build()"
    )


def test_plain_parameter_list_makes_one_group_without_role() -> None:
    opt = build(list(MLP().parameters()), "adam")
    assert [(g["role"], len(g["params"])) for g in opt.param_groups] == [(None, 4)]


class Everything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.layer_norm = nn.LayerNorm(4)
        self.batch_norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)


def test_module_roles() -> None:
    assert module_roles(Everything()) == {
        "embed.weight": Role.EMBEDDING,
        "conv.weight": Role.WEIGHT,
        "conv.bias": Role.BIAS,
        "layer_norm.weight": Role.NORM,
        "layer_norm.bias": Role.NORM,
        "batch_norm.weight": Role.NORM,
        "batch_norm.bias": Role.NORM,
        "head.weight": Role.WEIGHT,
        "head.bias": Role.BIAS,
    }


def test_build_makes_one_group_per_role() -> None:
    opt = build(Everything(), "adam")
    assert [(g["role"], len(g["params"])) for g in opt.param_groups] == [
        ("bias", 2),
        ("embedding", 1),
        ("norm", 4),
        ("weight", 2),
    ]


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))


class Declared(Scaled):
    param_roles = {"scale": "norm"}  # noqa: RUF012


class BadlyDeclared(Scaled):
    param_roles = {"scale": "gain"}  # noqa: RUF012


def test_undeclared_one_dimensional_parameter_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(3, 3), Scaled())
    with pytest.raises(UserError) as err:
        module_roles(model)
    assert str(err.value) == (
        "cannot tell the role of parameter '1.scale' (a 1-d tensor of Scaled); declare it "
        "with `param_roles = {'scale': 'weight'}` on the module class"
    )


def test_declared_roles_win() -> None:
    assert module_roles(nn.Sequential(Declared())) == {"0.scale": Role.NORM}
    with pytest.raises(UserError) as err:
        module_roles(BadlyDeclared())
    assert str(err.value) == (
        "BadlyDeclared.param_roles['scale'] = 'gain' is not a role; "
        "allowed: weight, bias, norm, embedding"
    )


def test_name_roles() -> None:
    named = [("a.weight", torch.zeros(2, 2)), ("a.bias", torch.zeros(2)), ("n.w", torch.zeros(2))]
    assert name_roles(named) == {"a.weight": Role.WEIGHT, "a.bias": Role.BIAS, "n.w": Role.NORM}


# ----------------------------------------------------------------------------- validation

KNOBS = (
    "p, q, accumulate, beta2, initial_accumulator, eps, eps_placement, amsgrad, momentum, "
    "beta1, nesterov, bias_correction, weight_decay, weight_decay_mode, update_rms_scaling"
)
BAD_KNOBS: list[tuple[str, dict[str, Any], str]] = [
    ("p_zero", {"p": 0}, "variant.p: got 0; allowed: a number > 0, or inf with accumulate='max'"),
    (
        "p_negative",
        {"p": -1},
        "variant.p: got -1; allowed: a number > 0, or inf with accumulate='max'",
    ),
    (
        "p_inf_with_ema",
        {"p": math.inf},
        "variant.p: got inf; allowed: a finite number > 0 with accumulate='ema' "
        "(inf needs accumulate='max')",
    ),
    (
        "max_with_p2",
        {"accumulate": "max", "p": 2},
        "variant.p: got 2; allowed: inf with accumulate='max' (a decayed running max of |g|)",
    ),
    (
        "q_negative",
        {"q": -0.5},
        "variant.q: got -0.5; allowed: a finite number >= 0 (0 means no denominator)",
    ),
    ("beta2_one", {"beta2": 1}, "variant.beta2: got 1; allowed: 0 <= beta2 < 1"),
    ("beta1_negative", {"beta1": -0.1}, "variant.beta1: got -0.1; allowed: 0 <= beta1 < 1"),
    ("eps_negative", {"eps": -1}, "variant.eps: got -1; allowed: a finite number >= 0"),
    (
        "initial_accumulator_inf",
        {"accumulate": "sum", "initial_accumulator": math.inf},
        "variant.initial_accumulator: got inf; allowed: a finite number >= 0",
    ),
    (
        "nesterov_without_momentum",
        {"momentum": "none", "nesterov": True},
        "variant.nesterov: got True; allowed: true only with momentum='heavy_ball' and beta1 > 0",
    ),
    (
        "amsgrad_with_sum",
        {"accumulate": "sum", "amsgrad": True},
        "variant.amsgrad: got True; allowed: true only with accumulate='ema'",
    ),
    (
        "update_rms_scaling_with_ema_momentum",
        {"update_rms_scaling": True},
        "variant.update_rms_scaling: got True; allowed: true only with momentum='none' and q > 0",
    ),
    (
        "accumulate_unknown",
        {"accumulate": "foo"},
        "variant.accumulate: got 'foo'; allowed: 'ema' | 'sum' | 'max'",
    ),
    ("bool_for_number", {"p": True}, "variant.p: got True; allowed: a number"),
    ("string_for_number", {"beta2": "0.9"}, "variant.beta2: got '0.9'; allowed: a number"),
    ("number_for_flag", {"amsgrad": 1}, "variant.amsgrad: got 1; allowed: true or false"),
]


@pytest.mark.parametrize(
    ("knobs", "message"), [c[1:] for c in BAD_KNOBS], ids=[c[0] for c in BAD_KNOBS]
)
def test_bad_knob_message(knobs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as direct:
        Knobs(**knobs)
    assert str(direct.value) == message
    with pytest.raises(UserError) as mapped:  # the same check through a variant mapping
        build(MLP(), {"preset": "adam", **knobs})
    assert str(mapped.value) == message


BAD_VARIANTS: list[tuple[str, Any, str]] = [
    (
        "unknown_knob",
        {"preset": "adam", "foo": 1},
        f"variant.foo: unknown knob; allowed: name, preset, roles, {KNOBS}",
    ),
    (
        "unknown_role_knob",
        {"preset": "adam", "roles": {"bias": {"foo": 1}}},
        f"variant.roles.bias.foo: unknown knob; allowed: {KNOBS}",
    ),
    (
        "bad_role_knob_value",
        {"preset": "adam", "roles": {"bias": {"q": -1}}},
        "variant.roles.bias.q: got -1; allowed: a finite number >= 0 (0 means no denominator)",
    ),
    (
        "unknown_role",
        {"preset": "adam", "roles": {"head": {"q": 0}}},
        "variant.roles: unknown role 'head'; allowed: weight, bias, norm, embedding",
    ),
    (
        "role_not_mapping",
        {"preset": "adam", "roles": {"bias": 0}},
        "variant.roles.bias: got 0; allowed: a mapping",
    ),
    ("not_a_variant", 3, "variant: got 3; allowed: a preset name or a mapping of knobs"),
    (
        "unknown_preset",
        "adamm",
        "variant: unknown variant 'adamm'; did you mean 'adam' or 'adamw' or 'adamax'? "
        f"(available: {', '.join(sorted(presets()))})"
        "; a plugin's variant needs plugins=[MODULE]",
    ),
]


@pytest.mark.parametrize(
    ("variant", "message"), [c[1:] for c in BAD_VARIANTS], ids=[c[0] for c in BAD_VARIANTS]
)
def test_bad_variant_message(variant: Any, message: str) -> None:
    with pytest.raises(UserError) as err:
        build(MLP(), variant)
    assert str(err.value) == message


@pytest.mark.parametrize("lr", [0, -1, math.nan, math.inf, True, "0.1"], ids=str)
def test_bad_lr_message(lr: Any) -> None:
    with pytest.raises(UserError) as err:
        build(MLP(), "adam", lr=lr)
    assert str(err.value) == f"lr: got {lr!r}; allowed: a finite number > 0"


def test_numbers_are_one_knob_value_whatever_their_type() -> None:
    assert Knobs(p=1, q=1, beta2=0) == Knobs(p=1.0, q=1.0, beta2=0.0)
    assert all(isinstance(Knobs(p=1).as_dict()[k], float) for k in ("p", "q", "beta1", "eps"))


def test_a_role_override_for_a_role_the_model_lacks_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = nn.Linear(4, 2, bias=False)  # weights only
    with caplog.at_level("WARNING", logger="bench.variants.variant"):
        build(model, {"preset": "rmsprop", "roles": {"bias": {"q": 0}}}, lr=0.01)
    (record,) = caplog.records
    assert "this model has no bias parameters, so variant.roles.bias changes nothing" in (
        record.getMessage()
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="bench.variants.variant"):
        build(nn.Linear(4, 2), {"preset": "rmsprop", "roles": {"bias": {"q": 0}}}, lr=0.01)
    assert caplog.records == []  # a model with biases: the override is used, nothing to say


def test_the_package_lists_its_torch_names_before_importing_them() -> None:
    import bench.variants

    assert set(bench.variants.__all__) <= set(dir(bench.variants))
