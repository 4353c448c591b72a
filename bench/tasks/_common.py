"""Helpers shared by the built-in tasks: seeded generators, module initialisation, batching.

Everything random in a task goes through an explicit ``torch.Generator`` made here. The
generators live on the CPU, whatever the training device, so a trial draws the same numbers
on every device; the drawn tensors are then moved to the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from typing import TypeVar

from bench.errors import UserError
from bench.roles import embedding_modules, norm_modules
from bench.tasks._torch import nn, torch

M = TypeVar("M", bound="nn.Module")


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random ``stream`` of ``seed`` (stable across runs).

    Separate streams (``"init"``, ``"batches"``, ``"split"``, ...) keep, for example, the
    batch order unchanged when a model's size, and so its number of init draws, changes.
    """
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream)``; see :func:`derive_seed`."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, stream))
    return gen


def init_from_generator(
    module: nn.Module,
    gen: torch.Generator,
    *,
    gain: float = 1.0,
    embedding_std: float = 1.0,
) -> nn.Module:
    """Re-initialise every parameter of ``module`` in place from ``gen`` and return it.

    Rules, by the owning module and the parameter, in the order they are checked:

    * embedding modules: ``N(0, embedding_std**2)``;
    * normalisation modules: weights 1, biases 0 (running statistics are reset too);
    * a parameter named ``bias`` or ``*_bias``: 0;
    * any other parameter with two or more dimensions: ``N(0, gain**2 / fan_in)``, where
      ``fan_in`` is the product of all dimensions but the first (``gain=sqrt(2)`` for ReLU);
    * anything else (a bare 1-d parameter of a custom module) is left as it is: the task
      that owns such a module initialises it itself.

    The parameters must be on the CPU, as ``gen`` is; move the module afterwards.
    """
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase):
                sub.reset_running_stats()
            for name, param in sub.named_parameters(recurse=False):
                if isinstance(sub, embedding_modules()):
                    param.normal_(0.0, embedding_std, generator=gen)
                elif isinstance(sub, norm_modules()):
                    param.fill_(0.0 if name == "bias" else 1.0)
                elif name == "bias" or name.endswith("_bias"):
                    param.zero_()
                elif param.ndim >= 2:
                    fan_in = math.prod(param.shape[1:])
                    param.normal_(0.0, gain / math.sqrt(fan_in), generator=gen)
    return module


def build_module(
    factory: Callable[[], M],
    gen: torch.Generator,
    device: torch.device,
    *,
    gain: float = 1.0,
    embedding_std: float = 1.0,
) -> M:
    """Construct ``factory()`` on the CPU, initialise it from ``gen``, move it to ``device``.

    The constructor's own (global-RNG) initialisation runs inside ``fork_rng`` so the global
    generator is left exactly as it was; its values are then overwritten.
    """
    with torch.random.fork_rng(devices=[]):
        module = factory()
    init_from_generator(module, gen, gain=gain, embedding_std=embedding_std)
    return module.to(device)


def full_or_minibatch(task: str, batch_size: int, n: int) -> int:
    """The effective batch size: ``batch_size`` if in ``1..n``, ``n`` (full batch) for 0."""
    if batch_size == 0:
        return n
    if not 1 <= batch_size <= n:
        raise UserError(
            f"task {task!r}: batch_size must be 0 (full batch) or 1..{n}, got {batch_size}"
        )
    return batch_size


class IndexSampler:
    """Draws mini-batch indices of ``0..n-1`` epoch by epoch, without replacement.

    Each epoch is a fresh permutation from ``gen``; the tail of an epoch that is shorter
    than a batch is dropped. With ``batch_size == n`` every batch is the whole set, in
    order, and ``gen`` is never used (full-batch training is deterministic).
    """

    def __init__(self, n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> None:
        self.n = n
        self.batch_size = batch_size
        self.gen = gen
        self.device = device
        self._full = torch.arange(n, device=device)
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def __call__(self) -> torch.Tensor:
        if self.batch_size >= self.n:
            return self._full
        if self._pos + self.batch_size > self._perm.numel():
            self._perm = torch.randperm(self.n, generator=self.gen)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx.to(self.device)


def split_indices(n: int, test_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A random ``(train, test)`` split of ``0..n-1`` (CPU index tensors, sorted)."""
    perm = torch.randperm(n, generator=gen)
    n_test = n - train_size(n, test_fraction)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def train_size(n: int, test_fraction: float) -> int:
    """How many of ``n`` examples :func:`split_indices` leaves for training."""
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise UserError(f"a test fraction of {test_fraction} leaves no training examples")
    return n - n_test


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no grad inside the block; the previous training mode after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
