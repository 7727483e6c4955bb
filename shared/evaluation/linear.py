"""A linear classifier on frozen features: multinomial logistic regression, L2-regularised, full batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


class FitDiverged(ValueError):
    """A classifier's features, loss or scores are not finite: its predictions would mean nothing."""


def check_finite(features: npt.NDArray[np.float32], which: str) -> None:
    """Refuse feature vectors holding NaN or inf: every score of such a row is NaN, and argmax of NaN
    scores is class 0, a silently wrong prediction."""
    bad = int((~np.isfinite(features)).any(axis=1).sum()) if features.size else 0
    if bad:
        raise FitDiverged(
            f"{bad} of {len(features)} {which} feature vectors hold non-finite values (NaN or inf): "
            "the backbone gave them, or a fine-tuned tail whose training diverged"
        )


@dataclass
class LinearHead:
    """Features in, scores out: unit length, minus ``mean``, divided by ``spread``, then ``linear``."""

    mean: npt.NDArray[np.float32]
    spread: float
    linear: nn.Linear

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Differentiable in ``features`` and in the linear layer (fine-tuning trains through it)."""
        unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return self.linear((unit - torch.from_numpy(self.mean).to(unit.device)) / self.spread)

    @torch.no_grad()
    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        check_finite(features, "test")
        scores = self.linear(torch.from_numpy((_unit(features) - self.mean) / self.spread))
        return scores.argmax(dim=1).numpy().astype(np.int64)


def fit_linear(
    train_x: npt.NDArray[np.float32],
    train_y: npt.NDArray[np.int64],
    n_classes: int,
    *,
    weights: npt.NDArray[np.float32] | None = None,
    l2: float = 1e-2,
    max_iter: int = 200,
    seed: int = 0,
) -> LinearHead:
    """Fit the head on (train_x, train_y).

    Every feature vector is scaled to unit length, then centred on the training mean and divided by
    one global spread. Not per-feature standardisation: with one catalogue photo per class, features
    that happen not to vary across the training photos (the white studio background) would be blown
    up by their tiny spread and decide every in-store test photo (val, iconic only: 9% top-1 with
    per-feature scaling, 36% with this). L-BFGS on the whole set is deterministic for a fixed seed.
    """
    if len(train_x) == 0:
        raise ValueError("no training images")
    # NaN features: L-BFGS stopped in a bare RuntimeError ("cannot be converted to type float").
    check_finite(train_x, "training")
    torch.manual_seed(seed)
    train_unit = _unit(train_x)
    mean = train_unit.mean(axis=0)
    spread = float(train_unit.std()) + 1e-6
    x = torch.from_numpy((train_unit - mean) / spread)
    y = torch.from_numpy(train_y)
    w = torch.ones(len(train_y)) if weights is None else torch.from_numpy(weights.astype(np.float32))
    linear = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss(reduction="none")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (loss_fn(linear(x), y) * w).sum() / w.sum() + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    if not all(torch.isfinite(parameter).all() for parameter in linear.parameters()):
        raise FitDiverged(f"the linear fit diverged (its weights are not finite): raise --l2 (now {l2:g})")
    return LinearHead(mean, spread, linear)


def fit_predict(
    train_x: npt.NDArray[np.float32],
    train_y: npt.NDArray[np.int64],
    test_x: npt.NDArray[np.float32],
    n_classes: int,
    *,
    weights: npt.NDArray[np.float32] | None = None,
    l2: float = 1e-2,
    max_iter: int = 200,
    seed: int = 0,
) -> npt.NDArray[np.int64]:
    """Fit on (train_x, train_y) (``fit_linear``) and return the predicted class of every row of test_x."""
    head = fit_linear(train_x, train_y, n_classes, weights=weights, l2=l2, max_iter=max_iter, seed=seed)
    return head.predict(test_x)


def _unit(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)
