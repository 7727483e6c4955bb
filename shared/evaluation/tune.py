"""Fine-tuning the last stages of the backbone with the head: the optional, stronger classifier.

Trained on the frozen trunk's feature maps (``Backbone.trunk_maps``), so the frozen part runs once
per image, not once per epoch. Two steps, as "linear probe, then fine-tune" (LP-FT) does: first the
linear head is fitted on the tail's features as they are (``linear.fit_linear``), then tail and
head are trained together with AdamW on the weighted cross-entropy (real photos weigh more), the
tail at ``lr`` and the head at ten times that. Starting from a fitted head keeps the first steps
from tearing the pretrained features apart. No data augmentation happens here: classic
augmentation is its own set of images (A', B'), so every condition sees exactly its images.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from shared.evaluation.linear import FitDiverged, fit_linear


@torch.no_grad()
def tail_features(
    tail: nn.Module, maps: npt.NDArray[np.float32], batch: int = 256
) -> npt.NDArray[np.float32]:
    """The tail's feature vectors of trunk maps (eval mode, no gradients)."""
    device = next(tail.parameters()).device
    out = []
    for first in range(0, len(maps), batch):
        out.append(tail(torch.from_numpy(maps[first : first + batch]).to(device)).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


def fit_predict_tuned(
    train_maps: npt.NDArray[np.float32],
    train_y: npt.NDArray[np.int64],
    test_maps: npt.NDArray[np.float32],
    n_classes: int,
    tail: nn.Module,
    *,
    weights: npt.NDArray[np.float32] | None = None,
    l2: float = 1e-2,
    epochs: int = 8,
    lr: float = 1e-4,
    batch: int = 64,
    seed: int = 0,
) -> npt.NDArray[np.int64]:
    """Fine-tune ``tail`` (trained in place) and a linear head on the maps; predict every test map."""
    if len(train_maps) == 0:
        raise ValueError("no training images")
    if epochs < 0 or lr <= 0 or batch < 1:
        raise ValueError(f"need epochs >= 0, lr > 0, batch >= 1; got {epochs}, {lr}, {batch}")
    w = np.ones(len(train_y), dtype=np.float32) if weights is None else weights.astype(np.float32)
    head = fit_linear(tail_features(tail, train_maps), train_y, n_classes, weights=w, l2=l2, seed=seed)
    device = next(tail.parameters()).device
    head.linear.to(device)
    optimiser = torch.optim.AdamW(
        [
            {"params": list(tail.parameters()), "lr": lr},
            {"params": list(head.linear.parameters()), "lr": lr * 10},
        ],
        weight_decay=0.0,  # the head's L2 is in the loss, as in the linear fit; the tail stays near its start
    )
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    generator = torch.Generator().manual_seed(seed)
    x_all, y_all, w_all = torch.from_numpy(train_maps), torch.from_numpy(train_y), torch.from_numpy(w)
    for epoch in range(epochs):
        order = torch.randperm(len(train_y), generator=generator)
        # A diverged loss (lr too large) left the tail's features NaN and every prediction class 0.
        # Checked once an epoch, on the device: no host sync per step.
        finite = torch.ones((), dtype=torch.bool, device=device)
        for first in range(0, len(order), batch):
            rows = order[first : first + batch]
            x, y, wb = x_all[rows].to(device), y_all[rows].to(device), w_all[rows].to(device)
            loss = (loss_fn(head.scores(tail(x)), y) * wb).sum() / wb.sum()
            loss = loss + l2 * head.linear.weight.pow(2).sum()
            finite &= torch.isfinite(loss.detach())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if not bool(finite):
            raise FitDiverged(
                f"fine-tuning diverged in epoch {epoch + 1} of {epochs} (its loss is not finite): "
                f"lower --tune-lr (now {lr:g})"
            )
    head.linear.cpu()
    return head.predict(tail_features(tail.cpu(), test_maps))
