"""The chart's matting memory limit holds the benchmark's worst case at the default settings.

``deploy/helm/skuforge/values.yaml`` says its 3Gi rests on ``bench/results/matting_memory.json``
(a chunk of SKUFORGE_MATTING_MAX_BATCH images of SKUFORGE_MAX_IMAGE_PIXELS): a benchmark peak that
grows past the limit, or a limit lowered under it, fails here, not as an OOM-killed pod.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from services.matting.config import MattingSettings
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
MIB = {"Mi": 1, "Gi": 1024}


def test_the_matting_limit_holds_a_default_chunk_of_the_largest_images() -> None:
    measured = json.loads((ROOT / "bench" / "results" / "matting_memory.json").read_text())["after"]
    worst = measured["limit_xbatch"]
    assert worst["images"] == MattingSettings.model_fields["matting_max_batch"].default
    assert worst["width"] * worst["height"] == Settings.model_fields["max_image_pixels"].default
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "skuforge" / "values.yaml").read_text())
    limit = values["stages"]["matting"]["resources"]["limits"]["memory"]
    limit_mib = int(limit[:-2]) * MIB[limit[-2:]]
    assert worst["peak_rss_mb"] < limit_mib, (limit, worst["peak_rss_mb"])
