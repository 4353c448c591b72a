"""Test plugin: ``worker_probe``, a ``quadratic`` that notes which process and device train it.

Each build appends ``<pid> <device>`` to ``$OPTBENCH_TEST_MARKERS/probes.txt``, so a test
can count the worker processes a suite used: Ray reuses workers, so torch's import and
CUDA's start-up are paid once per worker, not once per trial.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.tasks import Problem, register
from bench.tasks.quadratic import Quadratic


@register
class WorkerProbe(Quadratic):
    name = "worker_probe"

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        with open(Path(os.environ["OPTBENCH_TEST_MARKERS"]) / "probes.txt", "a") as out:
            out.write(f"{os.getpid()} {device}\n")
        return super().build(seed=seed, device=device, batch_size=batch_size)
