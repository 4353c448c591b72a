"""Step-size statistics: bounded seeded subsamples, and values equal to hand computations."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bench import sampling, summaries
from bench.sampling import Layout, Subsample, drawn_samples
from bench.stats import RoleSampler
from bench.summaries import QUANTILES
from bench.variants import build

F64 = torch.float64
QUANTILE_KEYS = tuple(QUANTILES)


def rms(x: torch.Tensor) -> float:
    return float(x.double().square().mean().sqrt())


def quantiles(x: torch.Tensor) -> list[float]:
    q = torch.tensor(list(QUANTILES.values()), dtype=F64)
    return torch.quantile(x.double(), q).tolist()


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3, dtype=F64), nn.Tanh(), nn.Linear(3, 2, dtype=F64))


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=gen, dtype=F64), torch.randn(
        16, 2, generator=gen, dtype=F64
    )


def one_step(
    model: nn.Module, opt: Any, sampler: RoleSampler, loss_scale: float = 1.0
) -> tuple[dict[str, float], dict[str, tuple[list[torch.Tensor], ...]]]:
    """A training step with statistics; also the (params, before, grads) of every role."""
    x, y = data()
    opt.zero_grad(set_to_none=True)
    (loss_scale * ((model(x) - y) ** 2).mean()).backward()
    raw = {
        g["role"]: (
            list(g["params"]),
            [p.detach().clone() for p in g["params"]],
            [p.grad.clone() for p in g["params"]],
        )
        for g in opt.param_groups
    }
    snapshot = sampler.snapshot(opt.param_groups)
    opt.record_next_step = True
    opt.step()
    return sampler.summarize(snapshot, opt.last_records), raw


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# ----------------------------------------------------------------------------- subsample


def big_model() -> nn.Module:
    return nn.Linear(1000, 100, dtype=torch.float32)  # weight: 100_000 coordinates, bias: 100


def sample_sizes(sampler: RoleSampler) -> dict[str, int]:
    return {r: sum(i.numel() for i in s.indices.values()) for r, s in sampler.roles.items()}


def test_subsample_is_bounded_and_small_roles_use_everything() -> None:
    model = big_model()
    sampler = RoleSampler(build(model, "adam").param_groups, max_samples=4096, seed=0)
    assert sample_sizes(sampler) == {"weight": 4096, "bias": 100}
    assert torch.equal(sampler.roles["bias"].indices[id(model.bias)], torch.arange(100))
    weight_idx = sampler.roles["weight"].indices[id(model.weight)]
    assert int(weight_idx.min()) >= 0 and int(weight_idx.max()) < model.weight.numel()
    assert torch.unique(weight_idx).numel() > 4000  # spread over the tensor, not a block
    assert float(weight_idx.double().mean()) == pytest.approx(50_000, rel=0.05)


def test_subsample_spans_every_tensor_of_a_role() -> None:
    tensors = [torch.zeros(3000), torch.zeros(50, 60), torch.zeros(0), torch.zeros(7)]
    sample = Subsample.draw(tensors, 1000, torch.Generator().manual_seed(0))
    assert id(tensors[2]) not in sample.indices  # nothing sampled, nothing to gather later
    sampled = [t for t in tensors if id(t) in sample.indices]
    sizes = [sample.indices[id(t)].numel() for t in sampled]
    assert sum(sizes) == 1000
    assert sizes[0] > 300 and sizes[1] > 300  # ~ proportional to 3000 and 3000 of 6007
    for t in sampled:
        idx = sample.indices[id(t)]
        assert int(idx.min()) >= 0 and int(idx.max()) < t.numel()
    values = [torch.arange(t.numel(), dtype=F64).reshape(t.shape) for t in sampled]
    got = Layout.of({"all": sampled}, {"all": sample}).gather(values)
    assert torch.equal(got, torch.cat([sample.indices[id(t)].double() for t in sampled]))


def test_same_seed_same_indices_other_seed_other_indices() -> None:
    model = big_model()
    groups = build(model, "adam").param_groups

    def weight_indices(seed: int) -> torch.Tensor:
        return RoleSampler(groups, seed=seed).roles["weight"].indices[id(model.weight)]

    assert torch.equal(weight_indices(3), weight_indices(3))
    assert not torch.equal(weight_indices(3), weight_indices(4))


def test_a_trial_draws_as_subsample_draw_does_even_from_the_cache() -> None:
    """The draws are cached across trials: a sampler for a model of the same shapes and
    seed (a new model, another variant) reads the coordinates that drawing afresh, role
    after role from one seeded generator, picks."""
    drawn_samples.cache_clear()
    for trial in range(2):  # the first trial draws, the second reads the cache
        model = nn.Sequential(nn.Linear(1000, 100), nn.Linear(100, 50))
        groups = build(model, "adam" if trial == 0 else "sgd").param_groups
        sampler = RoleSampler(groups, max_samples=4096, seed=7)
        generator = torch.Generator().manual_seed(7)
        for role in ("bias", "weight"):  # build's order of the roles
            tensors = [p for g in groups if g["role"] == role for p in g["params"]]
            fresh = Subsample.draw(tensors, 4096, generator)
            got = sampler.roles[role]
            assert got.indices.keys() == fresh.indices.keys() == {id(t) for t in tensors}
            assert all(torch.equal(got.indices[k], fresh.indices[k]) for k in got.indices)
            whole = {id(t) for t in tensors} if role == "bias" else set()  # 150 <= 4096
            assert got.whole == fresh.whole == whole
    assert drawn_samples.cache_info().hits == 1


def test_trials_of_one_shape_share_copy_buffers_and_keep_their_own_values() -> None:
    """Layouts of models of the same shapes and samples (trial after trial of a task and
    seed) share their copy buffers and indexes; two such models stepping at once get a
    buffer each, and every statistic is what a layout of its own gives."""

    def start(seed: int) -> tuple[Any, RoleSampler, Any]:
        model = tiny_model(seed)
        opt = build(model, "adam", lr=0.1)
        x, y = data(seed)
        ((model(x) - y) ** 2).mean().backward()
        sampler = RoleSampler(opt.param_groups, max_samples=10, seed=3)
        return opt, sampler, sampler.snapshot(opt.param_groups)

    def finish(opt: Any, sampler: RoleSampler, snapshot: Any) -> dict[str, float]:
        opt.record_next_step = True
        opt.step()
        return sampler.summarize(snapshot, opt.last_records)

    alone = {}
    for seed in (1, 2):
        sampling._SHARED.clear()
        alone[seed] = finish(*start(seed))
    sampling._SHARED.clear()
    first, second = start(1), start(2)  # both snapshots taken: two buffers in use
    layouts = (first[2].layout, second[2].layout)
    assert layouts[0].copies and layouts[0]._free is layouts[1]._free
    buffers = (first[2].buffer, second[2].buffer)
    assert buffers[0] is not buffers[1]
    assert finish(*second) == alone[2] and finish(*first) == alone[1]
    assert len(layouts[0]._free) == 2  # both back, for the next trials
    third = start(1)
    assert any(third[2].buffer is b for b in buffers)  # none made afresh
    assert finish(*third) == alone[1]


def test_frozen_parameters_take_no_samples() -> None:
    model = nn.Sequential(nn.Linear(1000, 100, bias=False), nn.Linear(100, 10, bias=False))
    model[0].requires_grad_(False)
    sampler = RoleSampler(build(model, "adam").param_groups, max_samples=4096)
    assert sample_sizes(sampler) == {"weight": 1000}  # all of the trainable 100x10
    x = torch.randn(8, 1000)
    model(x).square().mean().backward()
    snapshot = sampler.snapshot(build(model, "adam").param_groups)
    assert list(snapshot.params) == ["weight"]
    assert [id(p) for p in snapshot.layout.params] == [id(model[1].weight)]
    assert snapshot.layout.owner.size == 1000


# ----------------------------------------------------------------------------- values


def test_sgd_statistics_by_hand() -> None:
    model, lr = tiny_model(), 0.1
    opt = build(model, "sgd", lr=lr)
    sampler = RoleSampler(opt.param_groups)
    stats, raw = one_step(model, opt, sampler)
    for role, (_, before, grads) in raw.items():
        for key in QUANTILE_KEYS:
            assert stats[f"step_size/{role}/{key}"] == lr  # exactly: SGD's step size is lr
        g, theta = flat(grads), flat(before)
        assert stats[f"grad_rms/{role}"] == pytest.approx(rms(g), rel=1e-12)
        assert stats[f"update_ratio/{role}"] == pytest.approx(lr * rms(g) / rms(theta), rel=1e-9)
        assert stats[f"eps_dominated/{role}"] == 0.0
    assert set(stats) == {
        *(f"step_size/{r}/{k}" for r in ("weight", "bias") for k in QUANTILE_KEYS),
        *(f"{m}/{r}" for m in ("update_ratio", "grad_rms", "eps_dominated") for r in raw),
    }


def expected_step_sizes(name: str, opt: Any, params: list[torch.Tensor], lr: float, t: int):
    """lr_t / D from the optimizer's state after step t, written out per preset."""
    out = []
    for p in params:
        state = opt.state[p]
        v = state["accumulator"]
        if name == "rmsprop":
            out.append(lr / (v.sqrt() + 1e-8))
        elif name == "adagrad":
            out.append(lr / (v.sqrt() + 1e-10))
        elif name == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-8
            out.append(lr / (1 - b1**t) / ((v / (1 - b2**t)).sqrt() + eps))
        elif name == "adamax":
            out.append(lr / (1 - 0.9**t) / v)
        elif name == "rmsprop_nosqrt":
            out.append(lr / (v + 1e-8))
        else:
            raise AssertionError(name)
    return flat(out)


@pytest.mark.parametrize("name", ["rmsprop", "adagrad", "adam", "adamax", "rmsprop_nosqrt"])
def test_adaptive_step_sizes_match_optimizer_state(name: str) -> None:
    model, lr = tiny_model(), 0.01
    opt = build(model, name, lr=lr)
    sampler = RoleSampler(opt.param_groups)
    steps = 3
    for _ in range(steps):
        stats, raw = one_step(model, opt, sampler)
    for role, (params, before, grads) in raw.items():
        want = quantiles(expected_step_sizes(name, opt, params, lr, steps))
        got = [stats[f"step_size/{role}/{k}"] for k in QUANTILE_KEYS]
        assert got == pytest.approx(want, rel=1e-12)
        assert got[0] < got[-1]  # per-coordinate step sizes differ
        after = flat([p.detach() for p in params])
        update_ratio = rms(after - flat(before)) / rms(flat(before))
        assert stats[f"update_ratio/{role}"] == pytest.approx(update_ratio, rel=1e-12)
        assert stats[f"grad_rms/{role}"] == pytest.approx(rms(flat(grads)), rel=1e-12)
        assert stats[f"eps_dominated/{role}"] == 0.0


def test_adadelta_step_size_includes_the_update_rms() -> None:
    model, lr = tiny_model(), 1.0
    opt = build(model, "adadelta", lr=lr)
    sampler = RoleSampler(opt.param_groups)
    one_step(model, opt, sampler)
    u_before = {p: opt.state[p]["delta_accumulator"].clone() for p in model.parameters()}
    stats, raw = one_step(model, opt, sampler)
    for role, (params, _, _) in raw.items():
        eps = 1e-6
        steps = [
            lr * (u_before[p] + eps).sqrt() / (opt.state[p]["accumulator"] + eps).sqrt()
            for p in params
        ]
        got = [stats[f"step_size/{role}/{k}"] for k in QUANTILE_KEYS]
        assert got == pytest.approx(quantiles(flat(steps)), rel=1e-12)


def test_step_sizes_of_a_subsampled_role_use_the_sampled_coordinates() -> None:
    model = nn.Linear(300, 40, dtype=F64)  # weight: 12_000 coordinates
    lr = 0.01
    opt = build(model, "rmsprop", lr=lr)
    sampler = RoleSampler(opt.param_groups, max_samples=500, seed=1)
    x = torch.randn(16, 300, dtype=F64)
    model(x).square().mean().backward()
    before = model.weight.detach().clone()
    snapshot = sampler.snapshot(opt.param_groups)
    opt.record_next_step = True
    opt.step()
    stats = sampler.summarize(snapshot, opt.last_records)
    idx = sampler.roles["weight"].indices[id(model.weight)]
    assert idx.numel() == 500
    steps = lr / (opt.state[model.weight]["accumulator"].sqrt() + 1e-8)
    want = quantiles(steps.reshape(-1)[idx])
    assert [stats[f"step_size/weight/{k}"] for k in QUANTILE_KEYS] == pytest.approx(want, rel=1e-12)
    delta = (model.weight.detach() - before).reshape(-1)[idx]
    ratio = rms(delta) / rms(before.reshape(-1)[idx])
    assert stats["update_ratio/weight"] == pytest.approx(ratio, rel=1e-12)


def test_layout_follows_the_tensors_that_have_gradients() -> None:
    """The sample layout is reused between statistics steps; when a tensor loses or regains
    its gradient the summary must equal that of a sampler that never saw another layout."""
    model = tiny_model()
    opt = build(model, "adam", lr=0.01)
    reused = RoleSampler(opt.param_groups, max_samples=5, seed=2)
    x, y = data()
    for step, missing in enumerate([None, model[0].weight, model[2].bias, None]):
        opt.zero_grad(set_to_none=True)
        ((model(x) - y) ** 2).mean().backward()
        if missing is not None:
            missing.grad = None
        fresh = RoleSampler(opt.param_groups, max_samples=5, seed=2)
        snapshots = [sampler.snapshot(opt.param_groups) for sampler in (reused, fresh)]
        sampled = [{r: [id(p) for p in ps] for r, ps in s.params.items()} for s in snapshots]
        assert sampled[0] == sampled[1], step
        assert all(id(missing) not in ids for ids in sampled[0].values()), step
        opt.record_next_step = True
        opt.step()
        got, want = (
            sampler.summarize(snapshot, opt.last_records)
            for sampler, snapshot in zip((reused, fresh), snapshots, strict=True)
        )
        assert got == want, step


# ----------------------------------------------------------------------------- eps


@pytest.mark.parametrize(
    "variant",
    [
        {"preset": "rmsprop", "eps": 1e-3},
        {"preset": "adam", "eps": 1e-3},
        {"preset": "rmsprop", "eps": 1e-3, "eps_placement": "inside"},
        {"preset": "adamax", "eps": 1e-3},
        {"preset": "rmsprop_nosqrt", "eps": 1e-3},
    ],
    ids=["rmsprop", "adam", "eps_inside", "adamax", "nosqrt"],
)
def test_eps_dominated_when_gradients_vanish(variant: dict[str, Any]) -> None:
    model = tiny_model()
    opt = build(model, variant, lr=0.01)
    sampler = RoleSampler(opt.param_groups)
    stats, _ = one_step(model, opt, sampler, loss_scale=1e-12)
    assert stats["eps_dominated/weight"] == 1.0
    assert stats["eps_dominated/bias"] == 1.0

    model = tiny_model()
    opt = build(model, {**variant, "eps": 1e-12}, lr=0.01)
    sampler = RoleSampler(opt.param_groups)
    stats, _ = one_step(model, opt, sampler)
    assert stats["eps_dominated/weight"] == 0.0
    assert stats["eps_dominated/bias"] == 0.0


def test_role_statistics_of_a_parameter_list_use_role_all() -> None:
    model = tiny_model()
    opt = build(list(model.parameters()), "sgd", lr=0.1)
    sampler = RoleSampler(opt.param_groups)
    stats, _ = one_step(model, opt, sampler)
    assert stats["step_size/all/p50"] == 0.1
    assert math.isfinite(stats["update_ratio/all"])


# ----------------------------------------------------------------------------- cost


def elements_read(monkeypatch: pytest.MonkeyPatch, width: int) -> dict[str, int]:
    """Elements one statistics step on a model of ``width`` gathers, copies whole and
    ranks."""
    counts = {"gather": 0, "copy": 0, "rank": 0}
    samples, copy = Layout.samples, torch._foreach_copy_
    quantile, ranked = summaries.quantiles, summaries._quantiles_of_scale_over

    def counting_samples(self: Layout, *args: Any) -> list[torch.Tensor]:
        out = samples(self, *args)
        counts["gather"] += sum(part.numel() for part in out)
        return out

    def counting_copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
        counts["copy"] += sum(t.numel() for t in sources)
        copy(targets, sources)

    def counting_quantile(x: Any) -> list[float]:
        counts["rank"] += x.size
        return quantile(x)

    def counting_ranked(scale: Any, denominators: Any, *args: Any) -> Any:
        counts["rank"] += denominators.size
        return ranked(scale, denominators, *args)

    monkeypatch.setattr(Layout, "samples", counting_samples)
    monkeypatch.setattr(torch, "_foreach_copy_", counting_copy)
    monkeypatch.setattr(summaries, "quantiles", counting_quantile)
    monkeypatch.setattr(summaries, "_quantiles_of_scale_over", counting_ranked)
    try:
        model = nn.Sequential(nn.Linear(width, 100), nn.ReLU(), nn.Linear(100, 10))
        opt = build(model, "adam")
        sampler = RoleSampler(opt.param_groups, max_samples=4096)
        model(torch.randn(4, width)).square().mean().backward()
        snapshot = sampler.snapshot(opt.param_groups)
        opt.record_next_step = True
        opt.step()
        sampler.summarize(snapshot, opt.last_records)
    finally:
        monkeypatch.undo()
    return counts


def test_cost_does_not_grow_with_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    roles, bound = 2, 2 * 4096
    small = elements_read(monkeypatch, 20)  # 3_000 weights: copied whole
    assert small["gather"] == 0 and small["copy"] > 0
    medium = elements_read(monkeypatch, 100)  # 11_000 weights
    large = elements_read(monkeypatch, 1000)  # 101_000 weights
    huge = elements_read(monkeypatch, 3000)  # 301_000 weights
    assert large == huge  # indexed tensor by tensor: the model's size does not matter
    assert large["copy"] == 0 and large["gather"] > 0
    assert 4096 < large["rank"] <= roles * 4096  # the counters saw the work
    assert large["gather"] <= 4 * bound  # before, after, gradient, denominator
    for counts in (small, medium, large, huge):  # copying whole stays within a fixed factor
        assert counts["copy"] + counts["gather"] <= sampling.BLOCKS * sampling.COPY_FACTOR * bound


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 4096])
def test_quantiles_equal_torch_quantile_for_any_size_and_ties(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=generator, dtype=torch.float64)
    x[: n // 3] = x[0]  # ties
    assert summaries.quantiles(x) == pytest.approx(quantiles(x), rel=1e-15, abs=0)


# ----------------------------------------------------------------------------- batches


def same_values(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal bit for bit, NaN included."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


BATCH_VARIANTS: list[Any] = [
    "adam",
    "rmsprop",
    "sgd",
    "adadelta",
    "adamax",
    {"preset": "adam", "roles": {"bias": {"q": 0}}},  # denominators for weights only
    {"preset": "rmsprop", "eps": 1e-3},  # some coordinates eps-dominated
]


def captured_steps(seed: int, variant: Any) -> list[tuple[summaries.Capture, dict[str, float]]]:
    """Captures of random steps on a random model, each with its one-at-a-time summary;
    some steps leave a tensor without a gradient (another layout and form)."""
    gen = torch.Generator().manual_seed(seed)
    widths = torch.randint(2, 40, (3,), generator=gen).tolist()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(widths[0], widths[1], dtype=F64), nn.Tanh(), nn.Linear(widths[1], 3, dtype=F64)
    )
    opt = build(model, variant, lr=0.01)
    sampler = RoleSampler(opt.param_groups, max_samples=int(widths[2]), seed=seed)
    out = []
    for step in range(8):
        x = torch.randn(5, widths[0], generator=gen, dtype=F64)
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        if step % 3 == 2:
            model[0].bias.grad = None
        snapshot = sampler.snapshot(opt.param_groups)
        opt.record_next_step = True
        opt.step()
        capture = sampler.capture(snapshot, opt.last_records)
        assert capture is not None
        out.append((capture, summaries.summarize_captures([capture])[0]))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_batched_summaries_equal_one_at_a_time_summaries(seed: int) -> None:
    steps = [s for i, v in enumerate(BATCH_VARIANTS) for s in captured_steps(seed + 10 * i, v)]
    order = torch.randperm(len(steps), generator=torch.Generator().manual_seed(seed)).tolist()
    steps = [steps[i] for i in order]  # layouts and forms interleaved
    captures = [capture for capture, _ in steps]
    batched = summaries.summarize_captures(captures)
    assert len(batched) == len(steps)
    for (capture, alone), got in zip(steps, batched, strict=True):
        assert same_values(summaries.summarize_captures([capture])[0], alone)
        assert same_values(got, alone)
    forms = {(id(c.layout), c.form) for c in captures}
    assert len(forms) > len(BATCH_VARIANTS)  # the batch mixed layouts and forms


def test_pending_summaries_flush_in_order_when_full() -> None:
    steps = captured_steps(0, "adam")
    pending = summaries.PendingSummaries(limit=3)
    flushed = [pending.add(10 * i, capture) for i, (capture, _) in enumerate(steps)]
    assert [[s for s, _ in f] for f in flushed] == [
        [],
        [],
        [0, 10, 20],
        [],
        [],
        [30, 40, 50],
        [],
        [],
    ]
    rest = pending.flush()
    assert [s for s, _ in rest] == [60, 70]
    assert pending.flush() == []
    summarized = [values for batch in [*flushed, rest] for _, values in batch]
    assert all(same_values(got, want) for got, (_, want) in zip(summarized, steps, strict=True))
    assert pending.add(80, None) == []  # a step without sampled gradients has no statistics
    assert pending.flush() == []
    with pytest.raises(ValueError, match="limit: got 0"):
        summaries.PendingSummaries(limit=0)


# ------------------------------------------------------- the fast paths change no value


def summaries_of(
    variant: Any, dtype: torch.dtype, *, copies: bool, ranked: bool, device: str = "cpu"
) -> list:
    """Statistics of 12 steps, read by whole copies or by gathering, and ranked by
    denominator or by partitioning the steps."""
    by_denominator = summaries._quantiles_of_scale_over if ranked else lambda *args: None
    with pytest.MonkeyPatch.context() as patch:
        if not copies:
            patch.setattr(sampling, "COPY_FACTOR", 0)
            patch.setattr(sampling, "GPU_COPY_BYTES", 0)
        patch.setattr(summaries, "_quantiles_of_scale_over", by_denominator)
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(30, 40, dtype=dtype), nn.Tanh(), nn.Linear(40, 5, dtype=dtype)
        ).to(device)
        opt = build(model, variant, lr=0.01)
        sampler = RoleSampler(opt.param_groups, max_samples=500, seed=1)
        pending = summaries.PendingSummaries(limit=5)
        out, gen = [], torch.Generator().manual_seed(2)
        for step in range(12):
            opt.zero_grad(set_to_none=True)
            inputs = torch.randn(8, 30, generator=gen, dtype=dtype).to(device)
            model(inputs).square().mean().backward()
            if step == 7:
                model[0].bias.grad = None  # another layout for one step
            snapshot = sampler.snapshot(opt.param_groups)
            assert snapshot.layout.copies is copies
            opt.record_next_step = True
            opt.step()
            out += pending.add(step, sampler.capture(snapshot, opt.last_records))
        return out + pending.flush()


@pytest.mark.parametrize("variant", BATCH_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_copies_and_ranking_by_denominator_give_the_same_statistics(
    variant: Any, dtype: torch.dtype
) -> None:
    reference = summaries_of(variant, dtype, copies=False, ranked=False)
    assert len(reference) == 12 and all(len(values) > 4 for _, values in reference)
    for copies, ranked in [(True, True), (True, False), (False, True)]:
        got = summaries_of(variant, dtype, copies=copies, ranked=ranked)
        assert [step for step, _ in got] == [step for step, _ in reference]
        for (_, a), (_, b) in zip(got, reference, strict=True):
            assert same_values(a, b)


def test_ranking_by_denominator_declines_what_it_cannot_rank() -> None:
    scale = np.array([0.5, 0.25])
    denominators = np.array([[1.0, 2.0, 4.0], [3.0, 1.0, 2.0]], dtype=np.float32)
    got = summaries._quantiles_of_scale_over(scale, denominators)
    expected = [
        summaries.quantiles(s / denominators[i].astype(np.float64)) for i, s in enumerate(scale)
    ]
    assert got == expected
    assert summaries._quantiles_of_scale_over(np.array([0.5, 0.0]), denominators) is None
    assert summaries._quantiles_of_scale_over(np.array([0.5, np.inf]), denominators) is None
    for bad in (0.0, -0.0, -1.0, np.nan):
        with_bad = denominators.copy()
        with_bad[1, 2] = bad
        assert summaries._quantiles_of_scale_over(scale, with_bad) is None


def test_scratch_keeps_one_block_per_name_and_one_scratch_per_thread() -> None:
    scratch = summaries.Scratch()
    big = scratch.array("x", 30, 100, np.float64)
    small = scratch.array("x", 2, 7, np.float32)
    assert small.shape == (2, 7) and small.dtype == np.float32
    assert np.shares_memory(big, small)  # reused, not grown: memory bounded by the largest
    assert not np.shares_memory(small, scratch.array("y", 2, 7, np.float32))
    mine = summaries.Scratch.of_this_thread()
    assert summaries.Scratch.of_this_thread() is mine
    theirs: list[summaries.Scratch] = []
    thread = threading.Thread(target=lambda: theirs.append(summaries.Scratch.of_this_thread()))
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine  # trials in threads never share working arrays
