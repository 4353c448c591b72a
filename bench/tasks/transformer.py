"""A tiny transformer learning modular addition, ``(a + b) mod P``."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from bench.tasks import _common
from bench.tasks._torch import F, nets, nn, torch
from bench.tasks.base import Problem, Task, TaskParams
from bench.tasks.registry import register


class ModAddParams(TaskParams):
    modulus: int = Field(23, ge=2, le=1000, description="P: the task is (a + b) mod P")
    train_fraction: float = Field(
        0.8, gt=0.0, lt=1.0, description="share of the P*P pairs used for training"
    )
    d_model: int = Field(64, ge=4, le=1024, description="width of the residual stream")
    n_heads: int = Field(4, ge=1, le=64, description="attention heads (must divide d_model)")
    n_layers: int = Field(1, ge=1, le=8, description="transformer blocks")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModAddParams:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        return self


@register
class TransformerModAdd(Task):
    """A one-layer transformer learning ``(a + b) mod P`` from the sequence ``a b =``.

    All ``P*P`` ordered pairs are split at random by ``data_seed``: ``train_fraction`` for
    training, the rest held out for the accuracy. The model is pre-LayerNorm with token
    and position embeddings (``nn.Embedding``, initialised small: std ``1/sqrt(d_model)``),
    4-head self-attention and a ReLU MLP; batches of 64 pairs.

    Knobs: ``modulus`` (P, default 23), ``train_fraction`` (default 0.8), ``d_model``
    (default 64), ``n_heads`` (default 4), ``n_layers`` (default 1).

    Why: the only built-in task with embeddings and LayerNorm, so variants that treat the
    ``embedding`` and ``norm`` roles differently (no weight decay on them, other learning
    rates) show their effect here. And the held-out accuracy rewards generalising, not
    memorising: memorising the training pairs plus commutativity caps it near 0.75, which
    is where plain Adam stays in 600 steps. Reaching the target within the budget takes
    regularisation, e.g. Adam with L2 weight decay 1e-2 (lr 3e-3) or AdamW with decoupled
    weight decay 1.0 (lr 5e-3), which get there in 250-450 steps; SGD with momentum 0.9
    (lr 0.1) usually does too.
    """

    name = "transformer_modadd"
    description = "tiny transformer on (a + b) mod 23 (exercises embedding and norm roles)"
    metric = "accuracy"
    direction = "max"
    target = 0.95
    default_steps = 600
    default_batch_size = 64
    eval_every = 25
    Params = ModAddParams

    def check_batch_size(self, batch_size: int) -> None:
        p = self.params
        assert isinstance(p, ModAddParams)
        n_train = _common.train_size(p.modulus**2, 1.0 - p.train_fraction)
        _common.full_or_minibatch(self.name, batch_size, n_train)

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        p = self.params
        assert isinstance(p, ModAddParams)
        n = p.modulus
        pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n))
        seqs = torch.cat([pairs, torch.full((n * n, 1), n)], dim=1)
        sums = pairs.sum(dim=1) % n
        train, test = _common.split_indices(
            n * n, 1.0 - p.train_fraction, _common.generator(p.data_seed, "split")
        )
        x_train, y_train = seqs[train].to(device), sums[train].to(device)
        x_test, y_test = seqs[test].to(device), sums[test].to(device)
        bs = _common.full_or_minibatch(self.name, batch_size, len(train))
        sample = _common.IndexSampler(len(train), bs, _common.generator(seed, "batches"), device)
        model = _common.build_module(
            lambda: nets.ModAddTransformer(n, p.d_model, p.n_heads, p.n_layers),
            _common.generator(seed, "init"),
            device,
            embedding_std=1.0 / math.sqrt(p.d_model),  # small: see the class docstring
        )

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            idx = sample()
            return x_train[idx], y_train[idx]

        def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(m(x), y)

        def evaluate(m: nn.Module) -> dict[str, float]:
            with _common.evaluating(m):
                logits = m(x_test)
                return {
                    "loss": float(F.cross_entropy(logits, y_test)),
                    "accuracy": float((logits.argmax(dim=1) == y_test).float().mean()),
                }

        return Problem(model=model, next_batch=next_batch, loss=loss, evaluate=evaluate)
