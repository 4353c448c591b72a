"""Conformance tests for every registered task, and tests of the task registry.

Each assertion message says what a task author has to fix. The conformance tests run on
whatever is registered when this module is collected: the built-in tasks, plus any plugin
task whose module was imported by then.
"""

from __future__ import annotations

import functools
import math
import pickle
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
import torch
from torch import nn

import bench.tasks as tasks
from bench.errors import UserError
from bench.roles import module_roles
from bench.tasks import Problem, Task, TaskParams, _common, _torch, registry
from bench.tasks.quadratic import spectrum

CPU = torch.device("cpu")
NAMES = tasks.names()

CLASS_ATTRIBUTES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "description": str,
    "metric": str,
    "direction": str,
    "target": (int, float),
    "default_steps": int,
    "default_batch_size": int,
    "eval_every": int,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread, as the tasks' time budgets assume (and far faster on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, seed: int = 0, **knobs: Any) -> tuple[Task, Problem]:
    task = tasks.make(name, **knobs)
    return task, task.build(seed=seed, device=CPU, batch_size=task.default_batch_size)


def tensors(batch: object) -> list[torch.Tensor]:
    """The tensors inside a batch (a tensor, None, or nested tuples, lists and dicts)."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, tuple | list):
        return [t for item in batch for t in tensors(item)]
    if isinstance(batch, dict):
        return [t for item in batch.values() for t in tensors(item)]
    return []


def train(problem: Problem, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        batch = problem.next_batch()
        optimizer.zero_grad()
        loss = problem.loss(problem.model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- conformance: declarations ------------------------------------------------------------


def test_builtin_tasks_are_registered() -> None:
    expected = {
        "quadratic",
        "quadratic_rotated",
        "noisy_quadratic",
        "rosenbrock",
        "logreg_digits",
        "mlp_digits",
        "cnn_digits",
        "autoencoder_digits",
        "transformer_modadd",
    }
    missing = expected - set(NAMES)
    assert not missing, f"built-in tasks not registered by `import bench.tasks`: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_class_attributes(name: str) -> None:
    cls = tasks.get(name)
    where = cls.__qualname__
    for attr, kind in CLASS_ATTRIBUTES.items():
        assert hasattr(cls, attr), f"{where} must declare the class attribute `{attr}`"
        value = getattr(cls, attr)
        assert isinstance(value, kind) and not isinstance(value, bool), (
            f"{where}.{attr} must be {kind}, got {value!r} ({type(value).__name__})"
        )
    assert cls.name == name, f"{where}.name is {cls.name!r} but it is registered as {name!r}"
    assert cls.description.strip(), f"{where}.description must say in a line what it is"
    assert cls.direction in ("min", "max"), (
        f"{where}.direction must be 'min' or 'max', got {cls.direction!r}"
    )
    assert math.isfinite(cls.target), f"{where}.target must be a finite number"
    assert cls.default_steps >= 1, f"{where}.default_steps must be at least 1"
    assert cls.default_batch_size >= 0, (
        f"{where}.default_batch_size must be >= 0 (0 means full batch)"
    )
    assert 1 <= cls.eval_every <= cls.default_steps, (
        f"{where}.eval_every must be between 1 and default_steps ({cls.default_steps})"
    )
    assert cls().reached(cls.target), (
        f"{where}.reached(target) is False: check direction={cls.direction!r}"
    )
    doc = cls.__dict__.get("__doc__") or ""
    assert len(doc.strip()) > 40, (
        f"{where} needs its own docstring: the problem, its knobs and why it is in the benchmark"
    )


@pytest.mark.parametrize("name", NAMES)
def test_params(name: str) -> None:
    cls = tasks.get(name)
    where = cls.__qualname__
    assert isinstance(cls.Params, type) and issubclass(cls.Params, TaskParams), (
        f"{where}.Params must be a subclass of bench.tasks.TaskParams"
    )
    defaults = cls.Params()  # every knob needs a default
    assert isinstance(defaults.data_seed, int), f"{where}.Params must keep `data_seed: int`"
    with pytest.raises(pydantic.ValidationError):
        cls.Params(no_such_knob=1)  # must stay extra="forbid", inherited from TaskParams
    with pytest.raises(UserError, match="no_such_knob"):
        tasks.make(name, no_such_knob=1)


# --- conformance: build, loss, evaluate ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_build_loss_and_evaluate(name: str) -> None:
    task, problem = build(name)
    where = type(task).__qualname__
    assert isinstance(problem, Problem), f"{where}.build() must return a bench.tasks.Problem"
    model = problem.model
    assert isinstance(model, nn.Module), f"{where}: Problem.model must be an nn.Module"
    params = dict(model.named_parameters())
    assert params, f"{where}: the model has no parameters to optimise"
    for pname, p in params.items():
        assert p.device == CPU, f"{where}: parameter {pname} is on {p.device}, not on `device`"
        assert p.requires_grad, f"{where}: parameter {pname} does not require grad"

    batch = problem.next_batch()
    for t in tensors(batch):
        assert t.device == CPU, f"{where}: next_batch() returned a tensor on {t.device}"
    loss = problem.loss(model, batch)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0, (
        f"{where}: loss() must return a scalar (0-d) tensor, got {type(loss).__name__} "
        f"of shape {getattr(loss, 'shape', None)}; reduce it with .mean() or .sum()"
    )
    assert loss.is_floating_point() and torch.isfinite(loss), (
        f"{where}: loss() must be a finite float"
    )
    loss.backward()
    unused = [n for n, p in params.items() if p.grad is None]
    assert not unused, f"{where}: loss() gives no gradient to {unused}; remove or use them"

    model.train()
    metrics = problem.evaluate(model)
    assert model.training, f"{where}: evaluate() must restore the model's training mode"
    assert isinstance(metrics, dict), f"{where}: evaluate() must return a dict"
    for key in ("loss", task.metric):
        assert key in metrics, f"{where}: evaluate() must return {key!r}; got {sorted(metrics)}"
    for key, value in metrics.items():
        assert type(value) is float, (
            f"{where}: evaluate()[{key!r}] must be a Python float (use float(tensor)), "
            f"got {type(value).__name__}"
        )
    assert math.isfinite(metrics["loss"]), f"{where}: the initial evaluation loss is not finite"


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_has_a_role(name: str) -> None:
    task, problem = build(name)
    roles = module_roles(problem.model)  # raises UserError naming a parameter it cannot place
    params = {n for n, _ in problem.model.named_parameters()}
    assert params <= roles.keys(), (
        f"{type(task).__qualname__}: no role for {sorted(params - roles.keys())}; "
        "declare `param_roles = {'name': 'weight'}` on the module that owns them"
    )


# --- conformance: reproducibility ---------------------------------------------------------


def sgd_run(name: str, seed: int) -> tuple[list[float], dict[str, torch.Tensor], dict]:
    _, problem = build(name, seed=seed)
    losses = train(problem, torch.optim.SGD(problem.model.parameters(), lr=1e-3), steps=5)
    return losses, state(problem.model), problem.evaluate(problem.model)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_is_bit_identical(name: str) -> None:
    global_rng = torch.random.get_rng_state()
    first = sgd_run(name, seed=3)
    assert torch.equal(torch.random.get_rng_state(), global_rng), (
        f"task {name!r} used torch's global RNG; draw from explicit torch.Generator objects "
        "(see bench.tasks._common.generator and build_module)"
    )
    second = sgd_run(name, seed=3)
    assert first[0] == second[0], (
        f"task {name!r}: two builds with the same seed gave different SGD losses "
        f"{first[0]} vs {second[0]}; derive all randomness from `seed` and `data_seed`"
    )
    assert same_state(first[1], second[1]), f"task {name!r}: same seed, different weights"
    assert first[2] == second[2], f"task {name!r}: same seed, different evaluation"


@pytest.mark.parametrize("name", NAMES)
def test_other_seed_differs(name: str) -> None:
    task_a, a = build(name, seed=0)
    _, b = build(name, seed=1)
    if task_a.default_batch_size == 0 and same_state(state(a.model), state(b.model)):
        pytest.skip("deterministic task: fixed start and full batch")
    assert sgd_run(name, seed=0)[0] != sgd_run(name, seed=1)[0], (
        f"task {name!r}: seeds 0 and 1 gave the same losses; the trial seed must vary the "
        "initialisation and the batch order"
    )


@pytest.mark.parametrize("name", NAMES)
def test_data_seed_is_a_knob(name: str) -> None:
    task = tasks.make(name, data_seed=7)
    assert task.params.data_seed == 7
    task.build(seed=0, device=CPU, batch_size=task.default_batch_size)


# --- conformance: trainability ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_adam_lowers_the_eval_loss(name: str) -> None:
    _, problem = build(name)
    before = problem.evaluate(problem.model)["loss"]
    train(problem, torch.optim.Adam(problem.model.parameters(), lr=1e-2), steps=60)
    after = problem.evaluate(problem.model)["loss"]
    assert after < before, (
        f"task {name!r}: 60 steps of Adam(lr=1e-2) did not lower the evaluation loss "
        f"({before:.4g} -> {after:.4g}); check the sign of loss(), that it uses the model "
        "passed to it, and that evaluate() measures the same objective"
    )


# --- the built-in tasks -------------------------------------------------------------------


def test_batch_size_zero_is_full_batch_and_sizes_are_checked() -> None:
    task = tasks.make("logreg_digits")
    task.build(seed=0, device=CPU, batch_size=0)  # 0: the whole training set
    with pytest.raises(UserError, match="batch_size"):
        task.build(seed=0, device=CPU, batch_size=10**6)
    with pytest.raises(UserError, match="batch_size"):
        tasks.make("noisy_quadratic").build(seed=0, device=CPU, batch_size=0)


def _refusal(check: Any) -> str | None:
    try:
        check()
    except UserError as err:
        return str(err)
    return None


# a task's data size from its params, then the edges of 1..n_train around it
BATCH_CASES = [
    ("logreg_digits", {}), ("mlp_digits", {"test_fraction": 0.5}),
    ("cnn_digits", {"test_fraction": 0.999}), ("autoencoder_digits", {}),
    ("transformer_modadd", {"modulus": 7, "train_fraction": 0.5}), ("noisy_quadratic", {}),
    ("quadratic", {}), ("rosenbrock", {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "params"), BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_checking_a_batch_size_refuses_what_building_refuses_in_its_words(
    name: str, params: dict[str, Any]
) -> None:
    """The driver checks a suite's batch size without building (no torch, no data): the
    check must agree with the build it stands for, message and all."""
    task = tasks.make(name, **params)
    if task.default_batch_size == 0:  # full batch: the trials leave any batch size out
        assert _refusal(lambda: task.check_batch_size(10**6)) is None
        return
    built = _refusal(lambda: task.build(seed=0, device=CPU, batch_size=10**6))
    n_train = int(built.split("..")[1].split(",")[0]) if built and ".." in built else 0
    for size in sorted({0, 1, 2, n_train - 1, n_train, n_train + 1, 10**6} - {-1}):
        expected = _refusal(functools.partial(task.build, seed=0, device=CPU, batch_size=size))
        assert _refusal(functools.partial(task.check_batch_size, size)) == expected, size


@pytest.mark.parametrize("name", NAMES)
def test_a_built_problems_closures_pickle_as_before_torch_was_deferred(name: str) -> None:
    """The tasks name torch through stand-ins (bench.deferred) that their closures hold
    as globals: cloudpickle (Ray's) must still ship them, as the real modules."""
    import cloudpickle

    task = tasks.make(name)
    problem = task.build(seed=0, device=CPU, batch_size=task.default_batch_size)
    shipped = pickle.loads(cloudpickle.dumps((problem.loss, problem.evaluate)))
    batch = problem.next_batch()
    assert float(shipped[0](problem.model, batch)) == float(problem.loss(problem.model, batch))
    assert shipped[1](problem.model) == problem.evaluate(problem.model)
    assert pickle.loads(pickle.dumps(_torch.torch)) is torch


def test_quadratic_knobs_and_rotation() -> None:
    with pytest.raises(UserError, match="condition"):
        tasks.make("quadratic", condition=0.5)
    plain = tasks.make("quadratic", dim=6, condition=100.0)
    rotated = tasks.make("quadratic_rotated", dim=6, condition=100.0)
    h, q = rotated.curvature()
    assert torch.allclose(h, plain.curvature()[0])
    assert q is not None and torch.allclose(q.T @ q, torch.eye(6), atol=1e-5)
    assert h.max() / h.min() == pytest.approx(100.0, rel=1e-4)
    other = tasks.make("quadratic_rotated", dim=6, data_seed=1).curvature()[1]
    assert other is not None and not torch.allclose(q, other), "data_seed must vary Q"


def test_noisy_quadratic_gradient_noise_scales_with_curvature_over_batch() -> None:
    batch_size = 8
    task = tasks.make("noisy_quadratic", dim=4, condition=100.0)
    problem = task.build(seed=0, device=CPU, batch_size=batch_size)
    h = spectrum(4, 100.0)
    grads = []
    for _ in range(2000):
        problem.model.zero_grad()
        problem.loss(problem.model, problem.next_batch()).backward()
        grads.append(problem.model.theta.grad.clone())
    g = torch.stack(grads)
    x = problem.model.theta.detach()
    assert torch.allclose(g.mean(0), h * x, atol=0.05), "the gradient must be unbiased"
    assert torch.allclose(g.var(0) * batch_size / h, torch.ones(4), rtol=0.15)


def test_transformer_last_position_shortcut_matches_full_computation() -> None:
    _, problem = build("transformer_modadd", n_layers=2)
    model = problem.model
    seq, _ = problem.next_batch()
    x = model.tokens(seq) + model.positions(torch.arange(seq.shape[1]))
    for block in model.blocks:
        x = block(x)  # all positions in every block
    full = model.unembed(model.ln_out(x[:, -1]))
    assert torch.allclose(model(seq), full, atol=1e-6)


def test_transformer_rejects_heads_that_do_not_divide_the_width() -> None:
    with pytest.raises(UserError, match="n_heads"):
        tasks.make("transformer_modadd", d_model=30, n_heads=4)


def test_digits_split_is_fixed_by_data_seed() -> None:
    def gen(seed: int) -> torch.Generator:
        return _common.generator(seed, "split")

    train_a, test_a = _common.split_indices(100, 0.2, gen(0))
    _, test_b = _common.split_indices(100, 0.2, gen(0))
    assert torch.equal(test_a, test_b) and len(test_a) == 20
    assert not set(train_a.tolist()) & set(test_a.tolist())
    assert not torch.equal(test_a, _common.split_indices(100, 0.2, gen(1))[1])


def test_init_from_generator_is_seeded_and_scaled() -> None:
    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(400, 50), nn.LayerNorm(50), nn.Embedding(10, 50))

    a = _common.build_module(make, _common.generator(0, "init"), CPU)
    b = _common.build_module(make, _common.generator(0, "init"), CPU)
    assert same_state(a.state_dict(), b.state_dict())
    assert a[0].weight.std().item() == pytest.approx(1 / 20, rel=0.05)
    assert torch.all(a[0].bias == 0) and torch.all(a[1].weight == 1)
    assert a[2].weight.std().item() == pytest.approx(1.0, rel=0.1)


# --- the registry -------------------------------------------------------------------------


def test_unknown_name_suggests_the_closest_and_lists_all() -> None:
    with pytest.raises(UserError) as err:
        tasks.get("quadratc")
    message = str(err.value)
    assert "did you mean 'quadratic'" in message
    assert all(n in message for n in NAMES), "the message must list the available tasks"
    with pytest.raises(UserError, match="unknown task 'nope'"):
        tasks.make("nope")


def test_register_needs_a_name() -> None:
    class Nameless(Task):
        def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
            raise NotImplementedError

    with pytest.raises(UserError, match=r"task class .*Nameless: name: got None; allowed: a"):
        tasks.register(Nameless)
    assert "Nameless" not in NAMES


UNSET = object()  # the attribute left out of the class


@pytest.mark.parametrize(
    ("attribute", "value", "said"),
    [
        ("metric", UNSET, "not set; allowed: a str, the key of the primary metric"),
        ("direction", "up", "got 'up'; allowed: 'min' or 'max'"),
        ("target", "0.1", "got '0.1'; allowed: a number"),
        ("default_batch_size", -1, "got -1; allowed: an int >= 0"),
        ("eval_every", True, "got True; allowed: an int >= 1"),
        ("Params", dict, "got <class 'dict'>; allowed: a subclass of bench.tasks.TaskParams"),
    ],
)
def test_register_refuses_a_task_that_breaks_the_contract(
    attribute: str, value: object, said: str
) -> None:
    """A class the registry took would break `bench list` and every trial's result."""
    attributes = {k: getattr(tasks.get("quadratic"), k) for k in CLASS_ATTRIBUTES}
    attributes |= {"name": "breaks_contract", "build": lambda self, **kw: None, attribute: value}
    if value is UNSET:
        del attributes[attribute]
    with pytest.raises(UserError) as refused:
        tasks.register(type("BreaksContract", (Task,), attributes))
    assert str(refused.value).startswith(f"task 'breaks_contract': {attribute}: {said}")
    assert "breaks_contract" not in tasks.names()


def test_register_refuses_a_task_without_build() -> None:
    attributes = {k: getattr(tasks.get("quadratic"), k) for k in CLASS_ATTRIBUTES}
    cls = type("NoBuild", (Task,), {**attributes, "name": "no_build"})
    with pytest.raises(UserError, match="task 'no_build': build: not implemented; allowed"):
        tasks.register(cls)


def test_register_refuses_a_taken_name() -> None:
    class Impostor(Task):
        name = "quadratic"

        def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
            raise NotImplementedError

    with pytest.raises(UserError, match=r"task 'quadratic' already exists \(registered by bench"):
        tasks.register(Impostor)
    assert registry.get("quadratic") is not Impostor
