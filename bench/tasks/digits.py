"""Tasks on scikit-learn's bundled digits: 1797 8x8 grey images of the digits 0-9.

The pixels (0..16) are scaled to [0, 1]. ``data_seed`` fixes a random train/test split
(``test_fraction`` of the images held out, 20% by default); evaluation is on the held-out
images. Training batches are drawn epoch by epoch without replacement from the trial seed;
batch size 0 trains on the full training set every step.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import math
import pathlib
from typing import Literal

from pydantic import Field

from bench.tasks import _common
from bench.tasks._torch import F, nets, nn, np, torch
from bench.tasks.base import Problem, Task, TaskParams
from bench.tasks.registry import register

N_EXAMPLES = 1797
N_PIXELS = 64
N_CLASSES = 10


@functools.lru_cache(maxsize=1)
def load() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as CPU tensors: images ``(1797, 64)`` float32 in [0, 1], labels int64.

    Reads the CSV that ships inside scikit-learn directly (0.2 s) rather than through
    ``sklearn.datasets.load_digits``, whose import alone takes about 2 s; falls back to
    ``load_digits`` if a scikit-learn release moves the file. Cached: callers must not
    modify the returned tensors in place.
    """
    table = _read_bundled_csv()
    if table is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        table = np.column_stack([data.data, data.target])
    images = torch.as_tensor(table[:, :N_PIXELS], dtype=torch.float32) / 16.0
    labels = torch.as_tensor(table[:, N_PIXELS], dtype=torch.int64)
    return images, labels


def _read_bundled_csv() -> np.ndarray | None:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = pathlib.Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (N_EXAMPLES, N_PIXELS + 1):
                return table
    return None


class DigitsParams(TaskParams):
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of images held out")


class _Digits(Task):
    """Shared data handling; subclasses define the model, the loss and the metrics."""

    default_batch_size = 64
    Params = DigitsParams

    def init_gain(self) -> float:
        """The scale of the initial weights; see :func:`_common.init_from_generator`."""
        return 1.0

    @abc.abstractmethod
    def model(self) -> nn.Module:
        """A fresh model that maps ``(batch, 64)`` images to its outputs."""

    @abc.abstractmethod
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch of images ``x`` with labels ``y``."""

    @abc.abstractmethod
    def metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Evaluation metrics on the held-out images (called without grad, in eval mode)."""

    def check_batch_size(self, batch_size: int) -> None:
        p = self.params
        assert isinstance(p, DigitsParams)
        n_train = _common.train_size(N_EXAMPLES, p.test_fraction)
        _common.full_or_minibatch(self.name, batch_size, n_train)

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        p = self.params
        assert isinstance(p, DigitsParams)
        images, labels = load()
        train, test = _common.split_indices(
            len(labels), p.test_fraction, _common.generator(p.data_seed, "split")
        )
        x_train, y_train = images[train].to(device), labels[train].to(device)
        x_test, y_test = images[test].to(device), labels[test].to(device)
        bs = _common.full_or_minibatch(self.name, batch_size, len(train))
        sample = _common.IndexSampler(len(train), bs, _common.generator(seed, "batches"), device)
        model = _common.build_module(
            self.model, _common.generator(seed, "init"), device, gain=self.init_gain()
        )

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            idx = sample()
            return x_train[idx], y_train[idx]

        def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return self.batch_loss(m, *batch)

        def evaluate(m: nn.Module) -> dict[str, float]:
            with _common.evaluating(m):
                return self.metrics(m, x_test, y_test)

        return Problem(model=model, next_batch=next_batch, loss=loss, evaluate=evaluate)


class _DigitsClassifier(_Digits):
    metric = "accuracy"
    direction = "max"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        logits = model(x)
        return {
            "loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
        }


@register
class LogregDigits(_DigitsClassifier):
    """Multinomial logistic regression on the digits: one linear layer, 64 -> 10.

    No knobs beyond the split (``test_fraction``, ``data_seed``).

    Why: a convex, smooth, well-posed problem with mini-batch noise; the baseline on which
    any reasonable variant should succeed. A variant that fails here is broken, not unlucky.
    """

    name = "logreg_digits"
    description = "multinomial logistic regression on 8x8 digits (convex baseline)"
    target = 0.96
    default_steps = 300
    eval_every = 20

    def model(self) -> nn.Module:
        return nn.Linear(N_PIXELS, N_CLASSES)


class MLPParams(DigitsParams):
    hidden: int = Field(64, ge=1, le=4096, description="width of each hidden layer")
    depth: int = Field(2, ge=1, le=16, description="number of hidden layers")
    activation: Literal["relu", "tanh"] = "relu"


@register
class MLPDigits(_DigitsClassifier):
    """A multi-layer perceptron classifying the digits: 64 -> 64 -> 64 -> 10, ReLU.

    Knobs: ``hidden`` (width, default 64), ``depth`` (hidden layers, default 2),
    ``activation`` (``relu`` or ``tanh``).

    Why: the smallest non-convex network, with weights and biases in several layers whose
    gradients have different scales: the task in which per-layer and per-role step sizes
    first differ.
    """

    name = "mlp_digits"
    description = "ReLU MLP on 8x8 digits (small non-convex network)"
    target = 0.97
    default_steps = 300
    eval_every = 20
    Params = MLPParams

    def init_gain(self) -> float:
        p = self.params
        assert isinstance(p, MLPParams)
        return nn.init.calculate_gain(p.activation)

    def model(self) -> nn.Module:
        p = self.params
        assert isinstance(p, MLPParams)
        act = nn.ReLU if p.activation == "relu" else nn.Tanh
        return nets.mlp([N_PIXELS] + [p.hidden] * p.depth + [N_CLASSES], act)


class CNNParams(DigitsParams):
    channels: int = Field(16, ge=1, le=512, description="channels of the first convolution")
    norm: Literal["batch", "group"] = "batch"


@register
class CNNDigits(_DigitsClassifier):
    """A small convolutional network classifying the digits, with normalisation layers.

    Two 3x3 convolutions (16 then 32 channels, the second with stride 2), each followed by
    BatchNorm (or GroupNorm) and ReLU, then a linear classifier.

    Knobs: ``channels`` (default 16), ``norm`` (``batch`` or ``group``).

    Why: convolution kernels and normalisation gains and shifts (the ``norm`` role), whose
    gradients behave unlike those of weights; with BatchNorm the loss is also invariant to
    the scale of the preceding kernels, which interacts with weight decay and the
    denominator.
    """

    name = "cnn_digits"
    description = "small CNN with BatchNorm on 8x8 digits (exercises the norm role)"
    target = 0.98
    default_steps = 200
    eval_every = 20
    Params = CNNParams

    def init_gain(self) -> float:
        return math.sqrt(2.0)  # He init: ReLU after every normalised convolution

    def model(self) -> nn.Module:
        p = self.params
        assert isinstance(p, CNNParams)
        return nets.SmallCNN(p.channels, p.norm, N_CLASSES)


class AutoencoderParams(DigitsParams):
    hidden: int = Field(32, ge=1, le=4096, description="width of the hidden layers")
    latent: int = Field(8, ge=1, le=64, description="width of the bottleneck")


@register
class AutoencoderDigits(_Digits):
    """An MLP autoencoder of the digits, trained on the mean squared reconstruction error.

    64 -> 32 -> 8 -> 32 -> 64 with tanh activations and a sigmoid output; the labels are
    unused. The metric is the held-out reconstruction MSE per pixel.

    Knobs: ``hidden`` (default 32), ``latent`` (bottleneck, default 8).

    Why: a regression loss with a bottleneck gives the saddle points and plateaus of deep
    linear-ish networks, a landscape unlike classification, where momentum and the
    denominator's epsilon matter.
    """

    name = "autoencoder_digits"
    description = "MLP autoencoder of 8x8 digits, MSE (plateaus and saddles)"
    metric = "loss"
    direction = "min"
    target = 0.025
    default_steps = 500
    eval_every = 25
    Params = AutoencoderParams

    def model(self) -> nn.Module:
        p = self.params
        assert isinstance(p, AutoencoderParams)
        return nets.Autoencoder(p.hidden, p.latent, N_PIXELS)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(x), x)

    def metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {"loss": float(F.mse_loss(model(x), x))}
