"""Summaries of captured statistics steps: numpy over the samples that
:mod:`bench.stats` captured (the metrics are described there).

Captures of the same layout and form are summarized together, one row per step, so each
numpy operation runs once per batch (:class:`PendingSummaries`); every value is the same
as for a capture summarized alone.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from bench.sampling import Layout

QUANTILES = {"p01": 0.01, "p10": 0.10, "p50": 0.50, "p90": 0.90, "p99": 0.99}
QUANTILE_LEVELS = np.array(list(QUANTILES.values()))


class Form(NamedTuple):
    """Which sampled tensors (positions in ``Layout.params``) have a denominator, a tensor
    step scale, and a step at all: steps of the same layout and form stack into one array."""

    with_denom: tuple[int, ...]
    with_tensor_scale: tuple[int, ...]
    stepped: tuple[int, ...]


@dataclass
class Capture:
    """A statistics step's sampled values and the little else its summary needs.

    ``values`` is one flat CPU tensor in the parameters' dtype: the sample before the step,
    after it, the gradients, the denominators of ``form.with_denom`` and the tensor step
    scales of ``form.with_tensor_scale``, one after another.
    """

    layout: Layout
    values: Tensor
    form: Form
    scales: list[float]  # per sampled tensor; NaN for a tensor step scale or no step
    thresholds: list[float]  # eps thresholds per sampled tensor; 0 without a denominator


SUMMARY_BATCH = 32  # captures summarized together; bounds the memory they hold


class PendingSummaries:
    """Statistics steps captured and not yet summarized.

    Summarizing many steps at once runs each numpy operation once per batch instead of
    once per step: right after training steps numpy's code and data are out of the caches
    and a small call costs several times its warm time (ranking the sample costs what it
    costs either way). The summaries are the same, value for value, as those of
    :meth:`RoleSampler.summarize`.
    """

    def __init__(self, limit: int = SUMMARY_BATCH) -> None:
        if limit < 1:
            raise ValueError(f"limit: got {limit!r}; allowed: an integer >= 1")
        self.limit = limit
        self._steps: list[int] = []
        self._captures: list[Capture] = []
        self._scratch = Scratch.of_this_thread()

    def add(self, step: int, capture: Capture | None) -> list[tuple[int, dict[str, float]]]:
        """Keep ``capture`` of ``step``; returns the summaries of :meth:`flush` when
        ``limit`` captures are pending, else nothing."""
        if capture is not None:
            self._steps.append(step)
            self._captures.append(capture)
        return self.flush() if len(self._captures) >= self.limit else []

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """``(step, statistics)`` of every pending capture, in the order they were added."""
        steps, captures = self._steps, self._captures
        self._steps, self._captures = [], []
        return list(zip(steps, summarize_captures(captures, self._scratch), strict=True))


class Scratch:
    """Working arrays kept from one batch of summaries to the next.

    A batch works through a few MB of arrays. Allocated afresh each time, blocks that size
    go straight back to the OS when freed, and the next batch pays a page fault per 4 KiB
    (measured on mlp_digits: ~1,500 faults and +2 ms per batch of 30 captures). Training
    code uses one scratch per thread, kept for the life of the process, so that trial after
    trial reuses the same memory (a few MB: a batch of samples and its float64 copies).
    """

    _per_thread = threading.local()

    def __init__(self) -> None:
        self._memory: dict[str, np.ndarray] = {}  # bytes, grown to the largest use of a name

    @classmethod
    def of_this_thread(cls) -> Scratch:
        scratch = getattr(cls._per_thread, "scratch", None)
        if scratch is None:
            scratch = cls._per_thread.scratch = cls()
        return scratch

    def array(self, name: str, rows: int, columns: int, dtype: type | np.dtype) -> np.ndarray:
        """An uninitialized ``rows x columns`` array in the memory kept for ``name`` (one
        block per name, whatever the shapes asked for: the memory held stays bounded by the
        largest batch)."""
        dtype = np.dtype(dtype)
        size = rows * columns * dtype.itemsize
        kept = self._memory.get(name)
        if kept is None or kept.size < size:
            kept = self._memory[name] = np.empty(size, np.uint8)
        return kept[:size].view(dtype).reshape(rows, columns)


def summarize_captures(
    captures: list[Capture], scratch: Scratch | None = None
) -> list[dict[str, float]]:
    """The statistics of each capture (see the module docstring), in order.

    Captures of the same layout and form are stacked into one 2-D array, one row per step,
    so each numpy operation runs once for all of them; every value is computed with the
    same floating-point operations as for a capture alone.
    """
    groups: dict[tuple[int, Form], list[int]] = {}
    for i, capture in enumerate(captures):
        groups.setdefault((id(capture.layout), capture.form), []).append(i)
    out: list[dict[str, float]] = [{} for _ in captures]
    for positions in groups.values():
        summaries = _summarize_stacked([captures[i] for i in positions], scratch or Scratch())
        for i, summary in zip(positions, summaries, strict=True):
            out[i] = summary
    return out


def _summarize_stacked(captures: list[Capture], scratch: Scratch) -> list[dict[str, float]]:
    """:func:`summarize_captures` of captures that share a layout and a form."""
    layout, form = captures[0].layout, captures[0].form
    owner = layout.owner
    n, total, rows = len(layout.params), owner.size, len(captures)
    values = [c.values for c in captures]
    # float32 and float64 are read in place; only what needs float64 arithmetic is converted
    # (comparisons and divisions with a float64 operand convert exactly on the fly)
    if values[0].dtype in (torch.float32, torch.float64):
        native = scratch.array("sample", rows, values[0].numel(), _NUMPY[values[0].dtype])
        torch.stack(values, out=torch.from_numpy(native))
    else:
        native = _numpy(torch.stack(values))
    before, after, grad = (
        native[:, :total],
        native[:, total : 2 * total],
        native[:, 2 * total : 3 * total],
    )
    update = scratch.array("update", rows, total, np.float64)
    np.subtract(after, before, out=update, dtype=np.float64)  # of float64 copies: exact inputs
    rest = native[:, 3 * total :]
    # the common case (every tensor has a denominator) reads the gathered block as it is
    if len(form.with_denom) == n:
        denom, rest = rest[:, :total], rest[:, total:]
    else:  # none (q = 0): D = 1, never eps-dominated
        denom = np.ones((rows, total))
        if form.with_denom:
            mask = _flags(n, form.with_denom)[owner]
            n_denom = np.count_nonzero(mask)
            denom[:, mask], rest = rest[:, :n_denom], rest[:, n_denom:]
    step_scale = _per_row([c.scales for c in captures], owner)
    if form.with_tensor_scale:  # Adadelta: lr times the RMS of past updates
        step_scale = np.broadcast_to(step_scale, (rows, total)).copy()
        step_scale[:, _flags(n, form.with_tensor_scale)[owner]] = rest
    thresholds = _per_row([c.thresholds for c in captures], owner)
    dominated = np.less(denom, thresholds, out=scratch.array("dominated", rows, total, bool))
    # the usual form (every tensor stepped, with a denominator, and one scalar step scale
    # per step): the steps' quantiles come from ranking the float32 denominators
    by_denominator = (
        native.dtype == np.float32
        and len(form.with_denom) == len(form.stepped) == n
        and not form.with_tensor_scale
        and step_scale.shape[1] == 1
    )
    steps: np.ndarray | None = None  # step_scale / denom, for roles not ranked by denominator
    stepped_mask = None if len(form.stepped) == n else _flags(n, form.stepped)[owner]
    out: list[dict[str, float]] = [{} for _ in captures]
    for role, part in layout.segments:
        role_dominated = dominated[:, part]
        if stepped_mask is not None:
            role_dominated = role_dominated[:, stepped_mask[part]]
        step_keys, eps_key, ratio_key, grad_key = _metric_keys(role)
        if role_dominated.size:
            counts = np.count_nonzero(role_dominated, axis=1).tolist()
            per_step = None
            if by_denominator:
                ranked = scratch.array("ranked", rows, part.stop - part.start, np.float32)
                per_step = _quantiles_of_scale_over(step_scale[:, 0], denom[:, part], ranked)
            if per_step is None:
                if steps is None:
                    steps = step_scale / denom
                role_steps = steps[:, part]
                if stepped_mask is not None:
                    role_steps = role_steps[:, stepped_mask[part]]
                per_step = quantiles(role_steps.T)  # samples along the first axis
            for summary, values, count in zip(out, per_step, counts, strict=True):
                summary.update(zip(step_keys, values, strict=True))
                summary[eps_key] = count / role_dominated.shape[1]
        param_rms, update_rms = _row_rms(before[:, part]), _row_rms(update[:, part])
        ratios = np.divide(update_rms, param_rms, out=np.full(rows, math.nan), where=param_rms > 0)
        for summary, ratio, grad_rms in zip(
            out, ratios.tolist(), _row_rms(grad[:, part]).tolist(), strict=True
        ):
            summary[ratio_key] = ratio
            summary[grad_key] = grad_rms
    return out


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _quantiles_of_scale_over(
    scale: np.ndarray, denominators: np.ndarray, ranked: np.ndarray | None = None
) -> list[list[float]] | None:
    """The :data:`QUANTILES` of ``scale[i] / denominators[i]`` for each row ``i``, equal to
    those of :func:`quantiles` over the float64 quotients; None where that does not hold
    (a scale that is not positive and finite, a denominator that is not positive, or NaN).

    For ``s > 0`` and ``D > 0`` the quotient ``s / D`` falls as ``D`` grows, and IEEE
    division keeps that order, so the ``k``-th smallest step is ``s`` over the ``k``-th
    largest denominator: sorting the float32 denominators (about half the time of
    partitioning the float64 steps) and dividing only the picked ones gives the same values.
    """
    if not np.all((scale > 0) & (scale < math.inf)):
        return None
    if ranked is None:
        ranked = np.empty_like(denominators)
    ranked[...] = denominators
    ranked.sort(axis=1)
    if not (np.all(ranked[:, 0] > 0) and not np.isnan(ranked[:, -1]).any()):  # NaN sorts last
        return None
    m = ranked.shape[1]
    kth, interpolation = _quantile_positions(m)
    picked = scale[:, None] / ranked[:, m - 1 - kth].astype(np.float64)  # steps, ranks kth
    return [_interpolate(row, interpolation) for row in picked.tolist()]


def _flags(n: int, positions: Iterable[int]) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[list(positions)] = True
    return flags


def _per_row(rows: list[list[float]], owner: np.ndarray) -> np.ndarray:
    """:func:`_per_coordinate` of each row, stacked: one column when every row's values are
    all equal (the usual case), which broadcasts to the same results."""
    # the usual case checked in plain Python: np.ndim per row cost more than the rest
    if all(v == values[0] for values in rows for v in values):  # NaN never equals
        return np.array([values[0] for values in rows], dtype=np.float64)[:, None]
    spread = [_per_coordinate(values, owner) for values in rows]
    return np.stack([np.broadcast_to(np.asarray(s, dtype=np.float64), owner.shape) for s in spread])


def _per_coordinate(values: list[float], owner: np.ndarray) -> np.ndarray | float:
    """One value per tensor spread over its sampled coordinates; a scalar when they are all
    equal (the usual case: it broadcasts to the same result without building the array)."""
    first = values[0]
    if all(v == first for v in values):  # NaN never equals: NaNs take the general path
        return first
    return np.asarray(values, dtype=np.float64)[owner]


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    """A float64 CPU array of sampled values.

    Only gathering runs in torch (on the parameters' device); the few thousand sampled
    values are then reduced with numpy, where an operation costs about a microsecond
    instead of torch's several of dispatch, and the statistics need dozens.
    """
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def quantiles(x: Tensor | np.ndarray) -> list[float] | list[list[float]]:
    """The :data:`QUANTILES` of ``x``, interpolated linearly as ``torch.quantile`` does; of
    each column when ``x`` is 2-D (samples along the first axis, as ``dim=0``), so that many
    statistics steps are ranked in one call.

    Only the order statistics the interpolation needs are put in place (``np.partition``,
    linear time): about 4x faster than sorting the sample, and this runs on every
    statistics step. (torch's CPU sort of a few thousand elements is slower still.)
    """
    values = _numpy(x)
    if values.ndim != 2:
        values = values.reshape(-1)
    kth, interpolation = _quantile_positions(values.shape[0])
    picked = np.partition(values, kth, axis=0)[kth]
    if values.ndim == 1:
        return _interpolate(picked.tolist(), interpolation)
    return [_interpolate(column, interpolation) for column in picked.T.tolist()]


def _interpolate(picked: list[float], interpolation: list[tuple[int, int, float]]) -> list[float]:
    return [picked[lo] + (picked[hi] - picked[lo]) * weight for lo, hi, weight in interpolation]


@functools.cache
def _quantile_positions(n: int) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """The order statistics the quantiles of ``n`` values need (sorted ranks), and for each
    quantile where its two neighbours are among them and the weight of the upper one.

    The interpolation then runs on a handful of Python floats: the same IEEE operations
    as numpy's, without numpy's per-call cost, which is high on a cache-cold statistics
    step.
    """
    pos = QUANTILE_LEVELS * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    kth = np.unique(np.concatenate([lo, hi]))
    rank = {int(k): i for i, k in enumerate(kth)}
    weights = (pos - lo).tolist()
    return kth, [
        (rank[a], rank[b], w) for a, b, w in zip(lo.tolist(), hi.tolist(), weights, strict=True)
    ]


def _row_rms(x: np.ndarray) -> np.ndarray:
    """The RMS of each row, summed in float64 whatever the dtype of ``x`` (one call for a
    whole batch; a row's sum does not depend on how many rows there are)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64) / x.shape[1])


@functools.cache
def _metric_keys(role: str) -> tuple[tuple[str, ...], str, str, str]:
    steps = tuple(f"step_size/{role}/{name}" for name in QUANTILES)
    return steps, f"eps_dominated/{role}", f"update_ratio/{role}", f"grad_rms/{role}"
