"""The counts of the lists events carry are bounded far above what skuforge's producers write.

Before, a gate decision with a million checks, an adapter with a million SKU ids or a generated image
with a million parameters was read into memory whole, handled, and forwarded (a decision embeds its
item). Now the longest events the producers write pass, and one item more is a ``schema_invalid``
dead letter naming the field, refused by the committed JSON Schema too where it can say the bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from schemas.events import (
    MAX_ADAPTER_SKUS,
    MAX_CHECKS,
    MAX_MESSAGE_CHARS,
    MAX_MODEL_ID_CHARS,
    MAX_PARAMETER_VALUES,
    MAX_PARAMETERS,
    MAX_TRAINING_PROMPT_CHARS,
    AdapterPublished,
    CorrectionPending,
    GateAccepted,
    GateCheck,
    ImageGenerated,
    subject_sku_id,
)
from schemas.topics import ADAPTER_PUBLISHED, CORRECTION_PENDING, GATE_ACCEPTED, IMAGE_GENERATED, Topic
from services.lora_trainer.config import LoraTrainerSettings
from shared.bus import make_envelope, read_envelope
from shared.gate.checks import CHECK_CODES
from shared.generation.composite import COMPOSITE_PARAMETERS
from shared.generation.diffusion import DIFFUSION_PARAMETERS
from shared.store import open_store
from tests.support import gate
from tests.support.runtime import dead_letter_for
from tests.support.schemas import committed_schema

ADAPTER_ID = "general-0123456789ab"


def _failed_checks() -> list[GateCheck]:
    """Every check the gate runs, failed, each with the longest message allowed."""
    return [
        GateCheck(code=code, passed=False, value=0.5, threshold=0.9, message="m" * MAX_MESSAGE_CHARS)
        for code in CHECK_CODES
    ]


def _adapter(sku_ids: list[str]) -> AdapterPublished:
    return AdapterPublished(
        adapter_id=ADAPTER_ID,
        kind="general",
        base_model="sd-inpainting",
        registry_uri=f"file:///registry/{ADAPTER_ID}",
        weights_sha256="0" * 64,
        training_set_sha256="1" * 64,
        sku_ids=sku_ids,
        instance_images=len(sku_ids),
        class_images=8,
        steps=800,
        training_prompts=[f"{index:03d}" + "p" * (MAX_TRAINING_PROMPT_CHARS - 3) for index in range(50)],
    )


def _written(topic: Topic[Any], payload: BaseModel) -> dict[str, Any]:
    sku_id = subject_sku_id(payload) or ADAPTER_ID
    envelope = make_envelope(topic, payload, event_id="c" * 32, sku_id=sku_id, trace_id="t", producer="test")
    return envelope.model_dump(mode="json")


def _payloads(tmp_path: Path) -> dict[str, tuple[Topic[Any], BaseModel]]:
    """The longest event of each bounded list that skuforge's producers write, by field."""
    matted = gate.matted_item(open_store(f"file://{tmp_path}/in", uri_from="the test"), 1, 0)
    checks = _failed_checks()
    # A general adapter trains on at most lora_general_max_images images, each of one SKU at most.
    most_skus = LoraTrainerSettings.model_fields["lora_general_max_images"].default
    # Every knob either backend knows, each a list of three (as a colour gain), strings as long as allowed.
    knobs: dict[str, Any] = {name: [1.0, 2.0, 3.0] for name in COMPOSITE_PARAMETERS | DIFFUSION_PARAMETERS}
    knobs["model_id"] = "m" * MAX_MODEL_ID_CHARS
    return {
        "pending": (
            CORRECTION_PENDING,
            CorrectionPending(matted=matted, iou=0.5, checks=checks, reasons=[c.code for c in checks]),
        ),
        "accepted": (GATE_ACCEPTED, GateAccepted(matted=matted, iou=0.95, checks=checks)),
        "adapter": (ADAPTER_PUBLISHED, _adapter([f"{index:06d}" + "S" * 58 for index in range(most_skus)])),
        "generated": (
            IMAGE_GENERATED,
            ImageGenerated.model_validate(matted.generated.model_dump() | {"parameters": knobs}),
        ),
    }


def test_the_longest_lists_skuforge_writes_pass_well_within_the_bounds(tmp_path: Path) -> None:
    assert len(CHECK_CODES) <= MAX_CHECKS // 4
    assert len(COMPOSITE_PARAMETERS | DIFFUSION_PARAMETERS) * 3 <= MAX_PARAMETERS
    assert LoraTrainerSettings.model_fields["lora_general_max_images"].default * 10 <= MAX_ADAPTER_SKUS
    for topic, payload in _payloads(tmp_path).values():
        written = _written(topic, payload)
        assert read_envelope(topic, json.dumps(written)).payload == payload
        jsonschema.Draft202012Validator(committed_schema(topic)).validate(written)


def _one_over(event: str, written: dict[str, Any]) -> tuple[str, ...]:
    """Make ``written`` (an event of kind ``event``) one item over a bound; returns the field's path."""
    payload = written["payload"]
    if event in ("pending", "accepted"):
        payload["checks"] = payload["checks"] * (MAX_CHECKS // len(payload["checks"]) + 1)
        return ("payload", "checks")
    if event == "pending_reasons":
        payload["reasons"] = [f"code_{index}" for index in range(MAX_CHECKS + 1)]
        return ("payload", "reasons")
    if event == "adapter":
        payload["sku_ids"] = [f"SKU-{index}" for index in range(MAX_ADAPTER_SKUS + 1)]
        return ("payload", "sku_ids")
    if event == "generated":
        payload["parameters"] = {f"knob_{index}": 1 for index in range(MAX_PARAMETERS + 1)}
        return ("payload", "parameters")
    if event == "generated_values":  # one knob, but a list of more values than all knobs may hold
        payload["parameters"] = {"scale": [1.0] * MAX_PARAMETER_VALUES}
        return ("payload", "parameters")
    assert event == "generated_string"
    payload["parameters"] = {"scene_key": "k" * (MAX_MODEL_ID_CHARS + 1)}
    return ("payload", "parameters")


@pytest.mark.parametrize(
    "event",
    [
        "pending",
        "pending_reasons",
        "accepted",
        "adapter",
        "generated",
        "generated_values",
        "generated_string",
    ],
)
def test_one_item_over_a_lists_bound_is_dead_lettered_naming_the_field(tmp_path: Path, event: str) -> None:
    topic, payload = _payloads(tmp_path)[event.split("_")[0]]
    written = _written(topic, payload)
    path = _one_over(event, written)

    letter = dead_letter_for(tmp_path / "stage", written, topic)
    assert letter.reason == "schema_invalid" and letter.detail.startswith(".".join(path))

    if event in ("generated_values", "generated_string"):
        return  # a count or a length inside free-form JSON: the JSON Schema cannot say it
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(topic)).validate(written)
    assert tuple(refused.value.absolute_path) == path
