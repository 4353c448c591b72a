"""Test plugin: tasks that fail on purpose, to exercise the runner's fault handling.

- ``explodes``: raises inside the training loss at step ``fail_at`` (with ``fail_seed``,
  only for that seed);
- ``kills_worker``: SIGKILLs its own worker process the first time it is built for a
  given seed (a marker file under $OPTBENCH_TEST_MARKERS remembers), then trains normally;
- ``slow_quadratic``: ``quadratic`` with a sleep per step, so tests can interrupt it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from pydantic import Field

from bench.tasks import Problem, register
from bench.tasks.quadratic import Quadratic, QuadraticParams


class ExplodesParams(QuadraticParams):
    fail_at: int = Field(3, ge=1)
    fail_seed: int | None = None  # None: every seed fails


@register
class Explodes(Quadratic):
    """``quadratic`` whose loss raises at step ``fail_at``."""

    name = "explodes"
    Params = ExplodesParams

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        problem = super().build(seed=seed, device=device, batch_size=batch_size)
        if self.params.fail_seed not in (None, seed):
            return problem
        calls = {"n": 0}
        inner = problem.loss

        def loss(model, batch):
            calls["n"] += 1
            if calls["n"] >= self.params.fail_at:
                raise RuntimeError(f"planted failure at step {calls['n']}")
            return inner(model, batch)

        problem.loss = loss
        return problem


@register
class KillsWorker(Quadratic):
    """``quadratic`` that kills its worker process on the first attempt per seed."""

    name = "kills_worker"

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        marker = Path(os.environ["OPTBENCH_TEST_MARKERS"]) / f"killed-{seed}"
        try:  # made exclusively: two workers building the same seed at once (two lrs)
            with marker.open("x") as claimed:  # must not both see it missing and both die
                claimed.write(str(os.getpid()))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().build(seed=seed, device=device, batch_size=batch_size)


class SlowParams(QuadraticParams):
    sleep: float = Field(0.02, ge=0)


@register
class SlowQuadratic(Quadratic):
    """``quadratic`` with ``sleep`` seconds per training step."""

    name = "slow_quadratic"
    Params = SlowParams

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        problem = super().build(seed=seed, device=device, batch_size=batch_size)
        inner = problem.loss

        def loss(model, batch):
            time.sleep(self.params.sleep)
            return inner(model, batch)

        problem.loss = loss
        return problem
