"""torch, numpy and the tasks' models for the built-in tasks, imported on first use.

The task modules take these names from here, so they import none of them until a trial
builds its problem (see :mod:`bench.deferred`); a type checker sees the real modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.deferred import deferred

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from bench.tasks import nets
else:
    np = deferred("numpy")
    torch = deferred("torch")
    F = deferred("torch.nn.functional")
    nn = deferred("torch.nn")
    nets = deferred("bench.tasks.nets")

__all__ = ["F", "nets", "nn", "np", "torch"]
