"""The captioner id (each caption's lineage) tells apart captioners that caption differently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from schemas.events import MAX_MODEL_ID_CHARS
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels
from shared.captioning.vlm import VlmCaptioner, VlmModelError
from shared.config import load_settings
from shared.matting.session import U2NetPSession
from tests.support.captioning import tiny_blip_dir
from tests.support.matting import stand_in_onnx_bytes


def test_the_captioner_id_names_every_setting_that_changes_a_caption(tmp_path: Path) -> None:
    """BLIP's prompt and longest sentence, and the mask threshold and colour settings, were left out of
    the id: captioners writing other captions signed them alike, and a changed captioner was not seen
    downstream. Defaults add nothing: the id of a captioner as shipped stays as it was."""
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    blip = tiny_blip_dir(tmp_path / "blip")
    beams = shutil.copytree(blip, tmp_path / "beams" / "blip")
    (beams / "generation_config.json").write_text(json.dumps({"num_beams": 3}), encoding="utf-8")

    def captioner_id(vlm: VlmCaptioner | None, **options: object) -> str:
        settings = load_settings(CaptionerSettings, captioner_use_gpu=False, **options)
        return CaptionerModels(session=session, vlm=vlm, options=settings).captioner_id

    default = captioner_id(VlmCaptioner(blip, threads=1))
    assert default == f"vlm:{VlmCaptioner(blip, threads=1).model_id} + {captioner_id(None)}"
    others = {
        captioner_id(VlmCaptioner(blip, threads=1, prompt="a close-up of")),
        captioner_id(VlmCaptioner(blip, threads=1, prompt=" ")),
        captioner_id(VlmCaptioner(blip, threads=1, max_new_tokens=12)),
        captioner_id(VlmCaptioner(beams, threads=1)),
        captioner_id(None),
        captioner_id(None, captioner_mask_threshold=0.3),
        captioner_id(None, captioner_colours=3),
        captioner_id(None, captioner_max_colour_names=1),
        captioner_id(None, captioner_min_colour_share=0.2),
        captioner_id(None, captioner_blank_spread=6.0),
        captioner_id(None, captioner_min_mask_fraction=0.05),
        captioner_id(None, captioner_max_mask_fraction=0.8),
    }
    assert default not in others and len(others) == 12
    # A prompt written with spaces around it is the same prompt: the same captions, the same id.
    assert captioner_id(VlmCaptioner(blip, threads=1, prompt=" a photo of ")) == default


def test_num_beams_written_as_a_float_is_refused_saying_to_write_an_integer(tmp_path: Path) -> None:
    """``num_beams: 4.0`` was told to be 'set to a whole number', which 4.0 is: the message did not say
    what to change. Refused before any weights are read, so the folder needs no weights."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip"}), encoding="utf-8")
    generation = tmp_path / "generation_config.json"
    generation.write_text(json.dumps({"num_beams": 4.0}), encoding="utf-8")
    with pytest.raises(VlmModelError) as refused:
        VlmCaptioner(tmp_path, threads=1)
    assert str(refused.value) == (
        f"{generation}: num_beams is 4.0; write it as an integer, 4 (not 4.0), or remove it"
    )


def test_a_long_prompt_keeps_the_captioner_id_within_an_event_s_limit(tmp_path: Path) -> None:
    """A prompt written out whole in the id would make every ``sku.captioned`` too long to send."""
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    blip = tiny_blip_dir(tmp_path / "blip")
    options = load_settings(CaptionerSettings, captioner_use_gpu=False)
    ids = {
        CaptionerModels(
            session=session, vlm=VlmCaptioner(blip, threads=1, prompt=word * 2000), options=options
        ).captioner_id
        for word in "xy"
    }
    assert len(ids) == 2
    assert all(len(captioner_id) <= MAX_MODEL_ID_CHARS for captioner_id in ids)
