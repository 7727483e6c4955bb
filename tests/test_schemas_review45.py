"""A SKU's text takes no bidirectional control, and its name and category are not only spaces.

Before, ``PlainText`` refused control characters only: a name holding U+202E (RIGHT-TO-LEFT OVERRIDE)
was shown on the console's pages reordered, reading as another product (Trojan Source), and a name of
spaces or invisible characters only was taken from any producer but ``skuforge ingest``, naming
nothing in captions, prompts and the console. The joiners (ZWJ in emoji, ZWNJ in Indic scripts) and
the zero-width space (Thai word breaks) stay text within a name.
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from schemas.common import INVISIBLE_CHARACTERS, SkuMetadata, shows_nothing
from schemas.topics import SKU_INGESTED
from tests.support.runtime import dead_letter_for
from tests.support.schemas import committed_schema, ingested_envelope

# What the contract refuses in any text: control characters and the bidirectional controls.
REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
BIDI_CONTROLS = [0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069]


@pytest.mark.parametrize("code_point", BIDI_CONTROLS, ids=[f"U+{c:04X}" for c in BIDI_CONTROLS])
def test_a_bidirectional_control_is_refused_naming_its_code_point(code_point: int) -> None:
    with pytest.raises(ValidationError) as refused:
        SkuMetadata(sku_id="SKU-1", name=f"Cola{chr(code_point)}oreZ", category="soda can")
    message = str(refused.value)
    assert f"bidirectional control character (U+{code_point:04X} at character 5)" in message


@pytest.mark.parametrize("field", ["name", "category", "brand", "series"])
def test_a_bidirectional_override_in_sku_metadata_is_dead_lettered_naming_the_field(
    tmp_path: Path, field: str
) -> None:
    written = ingested_envelope()
    written["payload"]["sku"][field] = "Cola \u202eoreZ\u202c"

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid" and letter.detail.startswith(f"payload.sku.{field}: ")
    assert "U+202E" in letter.detail and "\u202e" not in letter.detail

    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    assert list(refused.value.absolute_path) == ["payload", "sku", field]


def test_a_bidirectional_isolate_in_a_photos_file_name_is_dead_lettered(tmp_path: Path) -> None:
    written = ingested_envelope()
    written["payload"]["photos"][0]["original_filename"] = "p\u2067gnp.exe\u2069.png"

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid"
    assert letter.detail.startswith("payload.photos.0.original_filename: ") and "U+2067" in letter.detail


@pytest.mark.parametrize("field", ["name", "category"])
@pytest.mark.parametrize(
    "value",
    [" ", "   ", "\u00a0", "\u3000 ", "\u200b", "\ufeff", " \u2060\u200d "],
    ids=["space", "spaces", "nbsp", "ideographic", "zwsp", "bom", "joiners"],
)
def test_a_name_that_shows_nothing_is_dead_lettered(tmp_path: Path, field: str, value: str) -> None:
    """``skuforge ingest`` refused such a name or category itself; any other producer's was taken."""
    written = ingested_envelope()
    written["payload"]["sku"][field] = value

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid" and letter.detail.startswith(f"payload.sku.{field}: ")
    assert f"is only whitespace or invisible characters; give the product's {field}" in letter.detail

    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    assert list(refused.value.absolute_path) == ["payload", "sku", field]


@pytest.mark.parametrize(
    "name",
    [
        "Family \U0001f468\u200d\U0001f469\u200d\U0001f467 pack",  # ZWJ joins the emoji
        "\u0915\u094d\u200c\u0937",  # ZWNJ keeps a Devanagari conjunct apart
        "\u0e19\u0e21\u200b\u0e2a\u0e14",  # ZWSP: a Thai word break
        "\u05d7\u05dc\u05d1 \u200fMilk",  # RLM: a mark, not an override
        " Cola ",
    ],
    ids=["zwj", "zwnj", "zwsp", "rlm", "spaces_around"],
)
def test_joiners_marks_and_spaces_around_a_name_are_text(name: str) -> None:
    sku = SkuMetadata(sku_id="SKU-1", name=name, category=name, brand=" ", series="")
    assert sku.name == name
    written = ingested_envelope()
    written["payload"]["sku"] = sku.model_dump(mode="json")
    jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)


def test_the_schemas_invisible_characters_are_this_pythons_blank_characters_of_the_bmp() -> None:
    """The committed pattern's class is written out; it is the BMP's whitespace and format characters
    (those ``shows_nothing`` reads as showing nothing) less the refused ones, for the running Python."""
    invisible = re.compile(f"[{INVISIBLE_CHARACTERS}]")
    expected = {char for char in map(chr, range(0x10000)) if shows_nothing(char) and not REFUSED.match(char)}
    assert {char for char in map(chr, range(0x10000)) if invisible.match(char)} == expected
