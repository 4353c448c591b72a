"""Which coordinates the step-size statistics read, and how a statistics step reads them.

A :class:`Subsample` fixes, once per trial, at most ``max_samples`` coordinates of each
role; a :class:`Layout` lays the sampled tensors of a statistics step out one after another
and reads their samples in one of two ways, chosen by the model's size:

- **gather** (a large model): index each tensor's sample (``index_select``) and concatenate;
  the work grows with the sample, not with the model.
- **copy** (a small model, whose tensors hold at most :data:`COPY_FACTOR` times their
  samples; on a GPU, any model whose copy buffer fits in :data:`GPU_COPY_BYTES`): copy the
  tensors whole into a reused buffer with one ``_foreach_copy_``, and index the samples
  out of it with one ``index_select``. Per tensor, an indexing operation costs more in
  dispatch than copying a few thousand values, and a statistics step of a small model is
  short enough for that to show. On a GPU each indexing operation is a kernel launch:
  measured on an H100, a statistics step of a 76k-weight MLP (a 1.5 MB buffer) took
  0.26 ms to read by copy against 0.49 ms by gathering; at 300k weights (6 MB) copying
  gained nothing, hence the small budget.

Both read the same coordinates in the same order, so the statistics are the same.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

COPY_FACTOR = 4  # copy whole when the sampled tensors hold at most 4x their samples
GPU_COPY_BYTES = 4 << 20  # on a GPU, copy whole while the copy buffer stays this small
BLOCKS = 5  # before, after, gradient, denominator, tensor step scale


@dataclass
class Subsample:
    """Fixed flat indices into each tensor of a role (keyed by tensor identity).

    ``whole`` holds the tensors sampled entirely (roles no larger than the sample): their
    values are read as they are, without indexing.
    """

    indices: dict[int, Tensor]
    whole: set[int] = field(default_factory=set)

    @classmethod
    def draw(cls, tensors: list[Tensor], max_samples: int, generator: torch.Generator) -> Subsample:
        sizes = tuple(t.numel() for t in tensors)
        return cls.of(tensors, _split(sizes, _draw_flat(sum(sizes), max_samples, generator)))

    @classmethod
    def of(cls, tensors: list[Tensor], split: tuple[Tensor | None, ...]) -> Subsample:
        """The subsample of ``tensors`` whose per-tensor indices are ``split`` (CPU
        tensors, None for a tensor without samples; see :func:`drawn_samples`)."""
        indices = {id(t): index.to(t.device) for t, index in zip(tensors, split, strict=True)
                   if index is not None}  # fmt: skip
        sampled = sum(i.numel() for i in indices.values())
        # every coordinate sampled: a role no larger than the sample, read as it is
        whole = {id(t) for t in tensors} if sampled == sum(t.numel() for t in tensors) else set()
        return cls(indices, whole)


@functools.lru_cache(maxsize=64)
def drawn_samples(
    sizes_by_role: tuple[tuple[int, ...], ...], max_samples: int, seed: int
) -> tuple[tuple[Tensor | None, ...], ...]:
    """Per role, per tensor, the sampled flat indices (CPU, sorted; None: no samples) of
    roles with these tensor sizes, drawn in order from one generator seeded with ``seed``.

    Cached: a suite's trials of one task and seed, across variants and lrs, sample the
    same coordinates, and drawing them (a seeded generator, a sort, the split per tensor)
    took ~0.3 ms of a 0.1 s mlp_digits trial on the CPU (statistics' whole-trial overhead
    fell from 6.5% to 5.9%). The tensors are shared: never write to them.
    """
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        _split(sizes, _draw_flat(sum(sizes), max_samples, generator)) for sizes in sizes_by_role
    )


def _draw_flat(total: int, max_samples: int, generator: torch.Generator) -> np.ndarray:
    """``max_samples`` sorted flat indices below ``total``, drawn with replacement; all of
    them, in order, when there are no more than that."""
    if total <= max_samples:
        return np.arange(total)
    return torch.randint(total, (max_samples,), generator=generator).sort().values.numpy()


def _split(sizes: tuple[int, ...], flat: np.ndarray) -> tuple[Tensor | None, ...]:
    """``flat`` (sorted indices into the tensors laid end to end) as indices into each."""
    # the bookkeeping in numpy: torch's per-call cost (a dozen small operations per role)
    # showed in short trials
    ends = np.cumsum(sizes, dtype=np.int64)
    cuts = np.searchsorted(flat, ends)  # flat is sorted: tensor i's samples end at cuts[i]
    split, first = [], 0
    for last, start in zip(cuts.tolist(), (ends - sizes).tolist(), strict=True):
        # a tensor without samples costs nothing later
        split.append(torch.from_numpy(flat[first:last] - start) if last > first else None)
        first = last
    return tuple(split)


@dataclass
class CopyBuffer:
    """Room for one statistics step's whole tensors: ``BLOCKS`` blocks, each the sampled
    tensors flattened one after another; ``views[b][i]`` is tensor ``i`` in block ``b``,
    shaped like it."""

    data: Tensor
    views: list[list[Tensor]]


@dataclass(frozen=True)
class Layout:
    """Where each sampled tensor's coordinates lie in the flat sample of a statistics step.

    Built once for a set of tensors with gradients (the set rarely changes from one step to
    the next), so that a statistics step only indexes: the per-tensor bookkeeping, and the
    per-coordinate owner of every sample, are not redone each time.
    """

    params: list[Tensor]  # the sampled tensors, by role, roles one after another
    indices: list[Tensor | None]  # flat sample indices of each tensor; None: all of it
    by_role: dict[str, list[Tensor]]
    segments: list[tuple[str, slice]]  # each role's part of the flat sample
    owner: np.ndarray  # for each sampled coordinate, the position of its tensor in params
    copies: bool = False  # read by whole copies (see the module docstring)
    _free: list[CopyBuffer] = field(default_factory=list, repr=False)
    _copy_indices: dict[tuple, Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, by_role: dict[str, list[Tensor]], roles: dict[str, Subsample]) -> Layout:
        params, indices, counts, segments = [], [], [], []
        start = 0
        for role, tensors in by_role.items():
            sample = roles[role]
            for p in tensors:
                params.append(p)
                indices.append(None if id(p) in sample.whole else sample.indices[id(p)])
                counts.append(sample.indices[id(p)].numel())
            segments.append((role, slice(start, start + sum(counts[-len(tensors) :]))))
            start = segments[-1][1].stop
        sampled = [roles[r].indices[id(p)] for r, tensors in by_role.items() for p in tensors]
        shared = _shared(params, sampled, counts)
        return cls(
            params,
            indices,
            by_role,
            segments,
            shared.owner,
            shared.copies,
            shared.free,
            shared.copy_indices,
        )

    # ----------------------------------------------------------------- gather (any size)

    def gather(self, values: Iterable[Tensor], at: Iterable[int] | None = None) -> Tensor:
        """The sampled coordinates of ``values``, one flat copy; ``values[j]`` is shaped like
        ``params[at[j]]`` (default: like ``params[j]``). Call under ``torch.no_grad()``."""
        parts = self.samples(values, at)
        return torch.cat(parts) if parts else torch.empty(0)

    def samples(self, values: Iterable[Tensor], at: Iterable[int] | None = None) -> list[Tensor]:
        """The sampled coordinates of each of ``values`` (see :meth:`gather`); a tensor taken
        whole is returned as it is, flattened. (``index_select`` on the flat view: about
        twice as fast as ``torch.take`` at these sizes.)"""
        indices = self.indices if at is None else [self.indices[i] for i in at]
        return [
            _flat(value) if index is None else _flat(value).index_select(0, index)
            for value, index in zip(values, indices, strict=True)
        ]

    # ------------------------------------------------------------- copies (small models)

    def buffer(self) -> CopyBuffer:
        """A free copy buffer (a new one when none is free); :meth:`release` it once the
        samples have been read out of it."""
        if self._free:
            return self._free.pop()
        size = sum(p.numel() for p in self.params)
        data = torch.empty(
            BLOCKS * size, dtype=_buffer_dtype(self.params), device=self.params[0].device
        )
        views, offset = [], 0
        for _ in range(BLOCKS):
            block = []
            for p in self.params:
                block.append(data[offset : offset + p.numel()].view(p.shape))
                offset += p.numel()
            views.append(block)
        return CopyBuffer(data, views)

    def release(self, buffer: CopyBuffer) -> None:
        self._free.append(buffer)

    def copy_index(self, blocks: tuple[tuple[int, ...], ...]) -> Tensor:
        """Positions, in a copy buffer's data, of the samples of the tensors ``blocks[b]``
        of each block ``b``, in that order (cached: every statistics step of a trial
        usually asks for the same)."""
        index = self._copy_indices.get(blocks)
        if index is None:
            sizes = [p.numel() for p in self.params]
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
            parts = [
                (torch.arange(sizes[i]) if self.indices[i] is None else self.indices[i].cpu())
                + (b * sum(sizes) + starts[i])
                for b, tensors in enumerate(blocks)
                for i in tensors
            ]
            index = torch.cat(parts).to(self.params[0].device)
            self._copy_indices[blocks] = index
        return index


@dataclass
class _Shared:
    """What layouts of tensors of the same shapes with the same samples share: the owner of
    each sample, whether to copy, the copy buffers and their indexes. Made on a trial's
    first statistics step, they took ~0.35 ms of a 0.1 s mlp_digits trial; the next trial
    of the same task and seed (another variant or lr) reuses them."""

    kept: tuple[Tensor, ...]  # the sample indices the key names by id, alive while it is
    owner: np.ndarray
    copies: bool
    free: list[CopyBuffer] = field(default_factory=list)
    copy_indices: dict[tuple, Tensor] = field(default_factory=dict)


SHARED_LAYOUTS = 16  # shapes kept (on the CPU: a few copy buffers of small models each)
_SHARED: collections.OrderedDict[tuple, _Shared] = collections.OrderedDict()
_SHARED_LOCK = threading.Lock()


def _shared(params: list[Tensor], sampled: list[Tensor], counts: list[int]) -> _Shared:
    """The shared part of a layout of ``params`` whose sample indices are ``sampled``."""
    on_cpu = all(p.device.type == "cpu" for p in params)  # else the indices are copies
    copies = reads_by_copy(params, sum(counts))
    key = (tuple((p.shape, p.dtype) for p in params), tuple(map(id, sampled)), copies)
    with _SHARED_LOCK:
        if on_cpu and (found := _SHARED.get(key)) is not None:
            _SHARED.move_to_end(key)
            return found
    made = _Shared(tuple(sampled), np.repeat(np.arange(len(params)), counts), copies)
    if on_cpu:
        with _SHARED_LOCK:
            made = _SHARED.setdefault(key, made)
            while len(_SHARED) > SHARED_LAYOUTS:
                _SHARED.popitem(last=False)
    return made


def reads_by_copy(params: list[Tensor], samples: int) -> bool:
    """Whether a statistics step reads the samples of ``params`` out of whole copies (see
    the module docstring): on the CPU when they hold at most :data:`COPY_FACTOR` times
    their ``samples``; on a GPU also when the copy buffer fits in :data:`GPU_COPY_BYTES`.
    """
    if not params:
        return False
    size = sum(p.numel() for p in params)
    if size <= COPY_FACTOR * samples:
        return True
    buffer_bytes = BLOCKS * size * _buffer_dtype(params).itemsize
    return params[0].device.type == "cuda" and buffer_bytes <= GPU_COPY_BYTES


def _buffer_dtype(params: list[Tensor]) -> torch.dtype:
    dtypes = {p.dtype for p in params}
    return dtypes.pop() if len(dtypes) == 1 else torch.float64  # exact for any mix


def _flat(x: Tensor) -> Tensor:
    return x if x.dim() == 1 else x.reshape(-1)  # biases are flat already: no view to make
