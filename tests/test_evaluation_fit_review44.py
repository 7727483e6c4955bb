"""The evaluation's classifiers (review 44): a fit whose loss or scores are not finite is an error that
says so, not a figure of every photo predicted as class 0."""

from __future__ import annotations

import numpy as np
import pytest

from shared.evaluation.backbone import BackboneSpec, open_backbone
from shared.evaluation.linear import FitDiverged, fit_predict
from shared.evaluation.tune import fit_predict_tuned
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    COLOURS,
    colour_photo,
    one_torch_thread,
)


def _features() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 8)).astype(np.float32)
    return features, np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)


def test_a_linear_fit_on_non_finite_features_says_so() -> None:
    # A NaN feature made every score NaN, and argmax of NaN scores is class 0: every held-out photo
    # predicted as the first SKU, a silently wrong top-1.
    features, labels = _features()
    broken = features.copy()
    broken[2, 3] = np.nan
    with pytest.raises(FitDiverged, match=r"1 of 6 training feature vectors hold non-finite values"):
        fit_predict(broken, labels, features, 3)
    with pytest.raises(FitDiverged, match=r"1 of 6 test feature vectors hold non-finite values"):
        fit_predict(features, labels, broken, 3)
    # Finite features: the same fit as ever.
    assert list(fit_predict(features, labels, features, 3)) == list(labels)


def test_a_fine_tuning_whose_loss_diverges_names_the_learning_rate() -> None:
    # An lr far too large drove the loss to inf/NaN, the tail's features to NaN, and every prediction
    # to class 0, with no word of it.
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=32))
    images = [colour_photo(rgb, seed) for seed, rgb in enumerate(COLOURS.values())] * 2
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    maps = backbone.trunk_maps(images, 1)
    with pytest.raises(FitDiverged, match=r"fine-tuning diverged .*: lower --tune-lr \(now 1e\+30\)"):
        fit_predict_tuned(maps, labels, maps, 3, backbone.tail(1), epochs=3, lr=1e30, batch=2, seed=1)
    predicted = fit_predict_tuned(maps, labels, maps, 3, backbone.tail(1), epochs=5, lr=1e-2, batch=2, seed=1)
    assert list(predicted) == list(labels)
