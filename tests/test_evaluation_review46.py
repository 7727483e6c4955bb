"""The evaluation library (review 46): the accuracy-against-real-photos curve reaches as far as the SKUs
it scores have real photos, and the report and evaluation.json say when --curve-max stopped it short.
Tiny synthetic inputs and the tiny backbone only."""

from __future__ import annotations

import json
from dataclasses import asdict

from shared.evaluation.backbone import BackboneSpec, FeatureCache, open_backbone
from shared.evaluation.experiment import (
    EvaluationConfig,
    Featurizer,
    Photo,
    Source,
    photo_from_bytes,
    run_evaluation,
)
from shared.evaluation.report import render_report
from shared.images import encode_png
from tests.support.evaluation import COLOURS, colour_photo, one_torch_thread  # noqa: F401 (autouse)


def _colour_photos(sku_id: str, source: Source, count: int, seed: int) -> list[Photo]:
    return [
        photo_from_bytes(
            sku_id,
            source,
            f"{sku_id}-{source}-{seed + n}.png",
            encode_png(colour_photo(COLOURS[sku_id], seed + n)),
        )
        for n in range(count)
    ]


def _featurizer() -> Featurizer:
    return Featurizer(open_backbone(BackboneSpec(name="tiny", image_px=32)), FeatureCache(None))


def _training(real_of: dict[str, int]) -> list[Photo]:
    training: list[Photo] = []
    for index, (sku_id, count) in enumerate(real_of.items()):
        training += _colour_photos(sku_id, "real", count, 10 * index)
        training += _colour_photos(sku_id, "synthetic", 2, 100 + 10 * index)
    return training


def _heldout(*sku_ids: str) -> list[Photo]:
    return [photo for i, sku in enumerate(sku_ids) for photo in _colour_photos(sku, "real", 1, 200 + 10 * i)]


def test_the_curve_reaches_as_far_as_the_scored_skus_real_photos() -> None:
    # SKU-BLUE, trained on but not scored, has 5 real photos, the scored SKUs 2: the curve went to 5, its
    # points past 2 six fits that moved no scored SKU's training (all of its 2 photos from j = 2 on).
    training = _training({"SKU-RED": 2, "SKU-GREEN": 2, "SKU-BLUE": 5})
    config = EvaluationConfig(seed=3, classic_px=32)
    result = run_evaluation(training, _heldout("SKU-RED", "SKU-GREEN"), _featurizer(), config)
    assert result.not_scored == {"SKU-BLUE": "no held-out photo"}
    assert result.curve["real_per_sku"] == [1.0, 2.0]
    assert result.curve_cut is None  # not cut: the scored SKUs have no more


def test_the_report_and_the_json_say_when_curve_max_cut_the_curve() -> None:
    # --curve-max 2 of SKUs with 4 real photos drew a curve to 2 that read as the whole of it.
    training = _training(dict.fromkeys(COLOURS, 4))
    heldout = _heldout(*COLOURS)
    featurizer = _featurizer()

    def evaluate(curve_max: int | None) -> tuple[dict[str, object], str]:
        result = run_evaluation(
            training, heldout, featurizer, EvaluationConfig(seed=3, classic_px=32, curve_max=curve_max)
        )
        document = json.loads(json.dumps(asdict(result), allow_nan=False))
        return document, render_report(result, lambda name: None)

    cut, page = evaluate(2)
    assert cut["curve"]["real_per_sku"] == [1.0, 2.0]  # type: ignore[index]
    assert cut["curve_cut"] == {"curve_max": 2, "most_real_per_sku": 4}
    assert "The curve stops at 2 real photos per SKU (--curve-max 2); the scored SKUs have up to 4." in page

    left_out, page = evaluate(1)
    assert left_out["curve"]["real_per_sku"] == []  # type: ignore[index]
    assert left_out["curve_cut"] == {"curve_max": 1, "most_real_per_sku": 4}
    assert "No curve: --curve-max 1 left it out (the scored SKUs have up to 4 real photos)." in page

    for whole in (None, 4, 9):
        document, page = evaluate(whole)
        assert document["curve"]["real_per_sku"] == [1.0, 2.0, 3.0, 4.0]  # type: ignore[index]
        assert document["curve_cut"] is None
        assert "--curve-max" not in page
