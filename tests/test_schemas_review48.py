"""What review 48 found left out of the contract's character rules: model ids and object URIs, the
options of `skuforge adapters register`, and a manifest row's caption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from schemas.topics import ADAPTER_PUBLISHED, IMAGE_GENERATED, IMAGE_MATTED, SKU_CAPTIONED, SKU_INGESTED
from shared.bus import make_envelope, read_envelope
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from shared.trainstore.manifest import ManifestRow, decode_rows, encode_rows
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri
from tests.support.gate import captioned, matted_item
from tests.support.lora import lora_weights
from tests.support.schemas import (
    adapter_envelope,
    committed_schema,
    ingested_envelope,
    refused_then_read_escaped,
)

_REFUSED = [
    ("sd15\u202einpaint", "bidirectional control character (U+202E at character 5)"),
    ("sd15\x1b[2J", "control character (U+001B at character 5)"),
    ("sd15\nforged line", "control character (U+000A at character 5)"),
    ("sd15\u2028second line", "line separator (U+2028 at character 5)"),
]
_REFUSED_IDS = ["override", "escape", "newline", "line_separator"]


def _envelope(topic: Any, payload: Any) -> dict[str, Any]:
    """``payload`` as its producer writes it into ``topic``, as JSON."""
    return make_envelope(
        topic, payload, event_id="e" * 32, sku_id="SKU-001", trace_id="t", producer="x"
    ).model_dump(mode="json")


def _written(tmp_path: Path, topic: str) -> dict[str, Any]:
    """A valid envelope, as JSON, of the topic named ``topic``."""
    store = FileStore(tmp_path / "store")
    if topic == SKU_CAPTIONED.name:
        return _envelope(SKU_CAPTIONED, captioned(store, 1))
    if topic == ADAPTER_PUBLISHED.name:
        return adapter_envelope()
    matted = matted_item(store, 1, 0)
    if topic == IMAGE_MATTED.name:
        return _envelope(IMAGE_MATTED, matted)
    return _envelope(IMAGE_GENERATED, matted.generated)


# -- model ids: one line that reads as written, escaped where an event already holds one ----------------

_MODEL_IDS: list[tuple[Any, list[str | int]]] = [
    (SKU_CAPTIONED, ["captioner"]),
    (IMAGE_GENERATED, ["model_id"]),
    (IMAGE_GENERATED, ["adapter_id"]),
    (IMAGE_MATTED, ["matting_model_id"]),
    (ADAPTER_PUBLISHED, ["base_model"]),
    (ADAPTER_PUBLISHED, ["registry_uri"]),
]


@pytest.mark.parametrize(("topic", "path"), _MODEL_IDS, ids=[str(p[0]) for _, p in _MODEL_IDS])
@pytest.mark.parametrize(("text", "named"), _REFUSED, ids=_REFUSED_IDS)
def test_a_model_id_with_one_is_refused_to_a_producer_and_read_escaped_from_a_topic(
    tmp_path: Path, topic: Any, path: list[str | int], text: str, named: str
) -> None:
    # They took any text: another producer's U+202E, terminal escape or newline went on to the console's
    # pages (a matting model id is Label Studio's model_version), the trainstore's rows and log lines.
    written = _written(tmp_path, topic.name)
    field = str(path[0])
    written["payload"][field] = text

    read = refused_then_read_escaped(topic, written, path, text, named)

    assert getattr(read, field) == text.encode("unicode_escape").decode("ascii")


def test_a_model_id_may_hold_a_space_as_a_model_file_path_does(tmp_path: Path) -> None:
    # A matting model id is its file's name, a registry URI a store's folder: either may hold a space.
    written = _written(tmp_path, IMAGE_MATTED.name)
    written["payload"]["matting_model_id"] = "u2net portable@sha256:0123456789ab"
    jsonschema.Draft202012Validator(committed_schema(IMAGE_MATTED)).validate(written)
    read = read_envelope(IMAGE_MATTED, json.dumps(written)).payload
    assert read.matting_model_id == "u2net portable@sha256:0123456789ab"


# -- an object's URI: refused, never escaped, as an escaped one would name another object --------------


@pytest.mark.parametrize(("text", "named"), _REFUSED, ids=_REFUSED_IDS)
def test_an_object_uri_with_one_is_refused_to_a_producer_and_to_a_reader(text: str, named: str) -> None:
    # A uri took any text: a newline or a U+202E in it went on to log lines and the console's pages. Read
    # escaped it would name an object that is not there, so a reader refuses it too (schema_invalid).
    written = ingested_envelope()
    written["payload"]["photos"][0]["image"]["uri"] = f"file:///store/{text}.png"
    uri = written["payload"]["photos"][0]["image"]["uri"]

    with pytest.raises(ValidationError) as refused_model:
        SKU_INGESTED.payload.model_validate(written["payload"])
    assert named.replace("character 5", "character 19") in str(refused_model.value)
    assert uri not in str(refused_model.value)
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    assert list(refused.value.absolute_path) == ["payload", "photos", 0, "image", "uri"]
    with pytest.raises(ValidationError) as refused_read:
        read_envelope(SKU_INGESTED, json.dumps(written))
    assert "uri" in str(refused_read.value)


def test_an_object_uri_may_hold_a_space_as_a_file_store_root_does(tmp_path: Path) -> None:
    # A FileStore's URIs are its root's path as it is: one under "My Drive" holds a space.
    store = FileStore(tmp_path / "My Drive")
    written = _envelope(IMAGE_GENERATED, matted_item(store, 1, 0).generated)
    assert " " in written["payload"]["image"]["uri"]
    jsonschema.Draft202012Validator(committed_schema(IMAGE_GENERATED)).validate(written)
    assert read_envelope(IMAGE_GENERATED, json.dumps(written)).payload.image.uri.startswith("file://")


# -- skuforge adapters register: its text is refused as the event refuses it, naming the option ---------


@pytest.mark.parametrize(
    ("option", "text", "named"),
    [
        ("--series", "Cola\nforged line", "control character (U+000A at character 5)"),
        ("--series", "Cola\u202eenil", "bidirectional control character (U+202E at character 5)"),
        ("--series", "C" * 201, "at most 200 characters"),
        ("--prompt", "a photo of shs can\x1b[2J", "control character (U+001B at character 19)"),
        ("--prompt", "a photo of\u2028shs can", "line separator (U+2028 at character 11)"),
        ("--base-model", "sd15\u202einpaint", "bidirectional control character (U+202E at character 5)"),
    ],
    ids=[
        "series-newline",
        "series-override",
        "series-long",
        "prompt-escape",
        "prompt-separator",
        "base-model",
    ],
)
def test_adapters_register_refuses_text_the_event_refuses_naming_the_option(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    text: str,
    named: str,
) -> None:
    # The options went into the registry's metadata.json as typed: a series with a newline or a U+202E was
    # stored silently and went on to `skuforge adapters list` and the generator's choice of adapter.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    weights = tmp_path / "cola.safetensors"
    weights.write_bytes(lora_weights(1))
    given = {"--series": "Cola", "--prompt": "a photo of shs can", "--base-model": "sd15", option: text}
    arguments = [word for pair in given.items() for word in pair]

    with pytest.raises(SystemExit) as exited:
        cli_main(["adapters", "register", "cola-v1", str(weights), "--kind", "specialized", *arguments])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and named in err and text not in err
    assert AdapterRegistry(FileStore(tmp_path / "store" / "adapters")).list() == []


def test_adapters_register_takes_the_text_an_event_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A series is plain text as a SKU's is (a line separator, accents and spaces stay), a base model a
    # model id that may hold a space.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    weights = tmp_path / "cola.safetensors"
    weights.write_bytes(lora_weights(1))
    series = "Cola Zéro\u2028light"
    arguments = ["--kind", "specialized", "--series", series, "--base-model", "sd15 inpaint"]

    assert cli_main(["adapters", "register", "cola-v1", str(weights), *arguments, "--prompt", "a can"]) == 0

    [registered] = AdapterRegistry(FileStore(tmp_path / "store" / "adapters")).list()
    assert (registered.series, registered.base_model, registered.training_prompts) == (
        series,
        "sd15 inpaint",
        ["a can"],
    )
    assert json.loads(capsys.readouterr().out)["series"] == series


# -- a manifest row's caption: one line, as the caption and prompt it is copied from --------------------


def _row(**fields: Any) -> ManifestRow:
    return ManifestRow(
        item_id="gen-001-00",
        sku_id="SKU-001",
        category="soda can",
        source="synthetic",
        status="accepted",
        **fields,
    )


@pytest.mark.parametrize(("text", "named"), _REFUSED, ids=_REFUSED_IDS)
def test_a_manifest_caption_with_one_is_refused_when_built_and_read_escaped_from_the_store(
    text: str, named: str
) -> None:
    # A row's caption is a photo's caption or a generated image's prompt, which refuse these since review
    # 47, but a row took any: another writer's U+202E or newline went on to `skuforge dataset export` and
    # the training captions.
    with pytest.raises(ValidationError) as refused:
        _row(caption=text)
    assert named in str(refused.value) and text not in str(refused.value)

    # A row stored before (from an event read before the caption was ruled) still reads, escaped: refused,
    # its whole manifest part would no longer read.
    stored = _row(caption="a photo of sku1 soda can").model_dump(mode="json") | {"caption": text}
    [read] = decode_rows(json.dumps(stored).encode() + b"\n")
    assert read.caption == text.encode("unicode_escape").decode("ascii")
    assert decode_rows(encode_rows([read])) == [read]


def test_a_stored_manifest_caption_longer_than_any_event_carries_still_reads() -> None:
    # Rows were written before the events' text was bounded: a bound here would leave their part unreadable.
    stored = _row().model_dump(mode="json") | {"caption": "a red can, " * 1000 + "\n"}
    [read] = decode_rows(json.dumps(stored).encode())
    assert read.caption == "a red can, " * 1000 + "\\n"
