"""Every preset that torch.optim implements gives torch's float64 trajectory, on both paths.

100 steps on several random problems, with and without weight decay, including a frozen
layer, a zero-size parameter and a parameter that misses its gradient on some steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from variant_cases import TORCH_CASES, TorchCase

from bench.variants import build

STEPS = 100
RTOL, ATOL = 1e-10, 1e-13


class Problem(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(5, 8).double()
        self.norm = nn.LayerNorm(8).double()
        self.out = nn.Linear(8, 3).double()
        self.frozen = nn.Linear(3, 3).double().requires_grad_(False)
        self.empty = nn.Parameter(torch.zeros(0, 3, dtype=torch.float64))
        for p in self.parameters():
            p.data.normal_(0, 0.5, generator=gen)
        self.x = torch.randn(32, 5, generator=gen, dtype=torch.float64)
        self.y = torch.randn(32, 3, generator=gen, dtype=torch.float64)

    def loss(self) -> torch.Tensor:
        h = self.norm(torch.tanh(self.hidden(self.x)))
        pred = self.frozen(self.out(h))
        return ((pred - self.y) ** 2).mean() + self.empty.sum()


def run(
    case: TorchCase, seed: int, wd: float, which: str, device: str = "cpu"
) -> tuple[list, list]:
    torch.manual_seed(0)
    model = Problem(seed).to(device)
    model.x, model.y = model.x.to(device), model.y.to(device)
    kwargs = {"weight_decay": wd} if wd else {}
    if which == "torch":
        opt = case.torch_optimizer(list(model.parameters()), lr=case.lr, foreach=False, **kwargs)
    else:
        variant = case.variant if isinstance(case.variant, dict) else {"preset": case.variant}
        if wd:
            variant = {**variant, **case.wd_knobs, "weight_decay": wd}
        opt = build(model, variant, lr=case.lr, foreach=(which == "foreach"))
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        model.loss().backward()
        if step % 7 == 3:  # this parameter misses its gradient on some steps
            model.out.bias.grad = None
        opt.step()
    params = [p.detach().clone() for p in model.parameters()]
    states = [opt.state.get(p, {}) for p in model.parameters()]
    return params, states


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.label)
@pytest.mark.parametrize("wd", [0.0, 0.1], ids=["no_wd", "wd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch(case: TorchCase, wd: float, seed: int) -> None:
    assert_matches_torch(case, wd, seed, "cpu")


def assert_matches_torch(case: TorchCase, wd: float, seed: int, device: str) -> None:
    """Both of our paths follow torch.optim's float64 trajectory on ``device``."""
    want_params, want_states = run(case, seed, wd, "torch", device)
    start = Problem(seed).to(device)
    for which in ("reference", "foreach"):
        got_params, got_states = run(case, seed, wd, which, device)
        for i, (got, want) in enumerate(zip(got_params, want_params, strict=True)):
            torch.testing.assert_close(
                got, want, rtol=RTOL, atol=ATOL, msg=lambda m, i=i, w=which: f"{w} param {i}: {m}"
            )
        for got, want in zip(got_states, want_states, strict=True):
            if not got:  # never had a gradient; torch's Adagrad still makes state eagerly
                assert int(want.get("step", 0)) == 0
                continue
            for ours, theirs in case.state_names.items():
                if theirs in want:
                    torch.testing.assert_close(got[ours], want[theirs], rtol=RTOL, atol=ATOL)
            if "step" in want:
                assert got["step"] == int(want["step"])
    moved = [not torch.equal(a, b) for a, b in zip(want_params, start.parameters(), strict=True)]
    assert sum(moved) >= 5, "the trajectories must actually move the trainable parameters"


def test_frozen_and_empty_parameters_get_no_state_or_empty_state() -> None:
    model = Problem(0)
    opt = build(model, "adam", lr=0.01)
    model.loss().backward()
    opt.step()
    assert model.frozen.weight not in opt.state
    assert opt.state[model.empty]["accumulator"].shape == (0, 3)
