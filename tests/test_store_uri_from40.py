"""An S3 failure names where its URI came from (review 40, after 715978a and 660aaf4): a setting or a
tool's option, not always SKUFORGE_STORE_URI. The bench and fitting tools read an s3:// matting model as
the services do, from SKUFORGE_S3_ENDPOINT_URL: they asked AWS whatever that setting said, and a refusal
blamed SKUFORGE_STORE_URI, which they never read."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bench.augment import main as augment_bench
from bench.captioner import main as captioner_bench
from bench.gate import main as gate_bench
from shared.captioning.fit_shape import main as fit_shape
from shared.captioning.vlm import fetch_model_dir, open_vlm
from shared.errors import StoreMisconfigured, TransientError
from shared.matting.session import open_session
from shared.model_cache import fetch_directory, fetch_file
from shared.store import S3Store, open_store
from shared.trainstore.loader import load_manifest
from tests.support.bus import file_store_uri
from tests.support.model_cache import publish_folder


def _augment(model: str, tmp: Path) -> int:
    # In-process, its model is opened before the dataset (none here) is read and the backbone loaded.
    argv = ["--mode", "in-process", "--split", "val", "--dataset", str(tmp / "no-dataset")]
    return augment_bench(
        [*argv, "--matting-model", model, "--workdir", str(tmp / "w"), "--out", str(tmp / "a.json")]
    )


# Each tool with its model option at ``model``, and the option's name.
TOOLS: dict[str, tuple[str, Callable[[str, Path], int]]] = {
    "bench.augment": ("--matting-model", _augment),
    "bench.captioner": (
        "--matting-model",
        lambda model, tmp: captioner_bench(["--matting-model", model, "--out", str(tmp / "c.json")]),
    ),
    "bench.gate": (
        "--model",
        lambda model, tmp: gate_bench(["--model", model, "--out", str(tmp / "g.json")]),
    ),
    "shared.captioning.fit_shape": (
        "--matting-model",
        lambda model, tmp: fit_shape(["--matting-model", model, "--out", str(tmp / "tree.py")]),
    ),
}


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tools_matting_model_in_a_refusing_bucket_names_its_option(
    tool: str,
    tmp_path: Path,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The bucket is missing at the endpoint set: the tool asked AWS instead, and any refusal said to
    # check "the bucket name in SKUFORGE_STORE_URI", a file store here. Said in a line, not a traceback.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    option, run = TOOLS[tool]
    assert run(f"s3://missing-{uuid.uuid4().hex[:12]}/models/m.onnx", tmp_path) == 1
    said = capsys.readouterr().err
    assert f"the bucket name in {option} " in said and "SKUFORGE_STORE_URI" not in said


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_whose_matting_model_does_not_open_says_why_in_a_line(
    tool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file that is no ONNX model ended the tool in a MattingModelError traceback.
    model = tmp_path / "m.onnx"
    model.write_text("not a model\n")
    assert TOOLS[tool][1](str(model), tmp_path) == 2
    assert "cannot load m.onnx" in capsys.readouterr().err


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tools_missing_matting_model_names_its_option_not_the_services_settings(
    tool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The help said to set SKUFORGE_MATTING_MODEL or SKUFORGE_CAPTIONER_MATTING_MODEL, which the tool
    # never reads, after its own option's name.
    option, run = TOOLS[tool]
    assert run(str(tmp_path / "nope.onnx"), tmp_path) == 2
    said = capsys.readouterr().err
    assert f"{option} takes a registered name" in said and "SKUFORGE_" not in said


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_with_a_bad_setting_names_it_in_a_line(
    tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tools read SKUFORGE_S3_* for an s3:// model: an invalid one ended them in a ConfigError traceback.
    monkeypatch.setenv("SKUFORGE_S3_REGION", "not a region")
    assert TOOLS[tool][1]("s3://models/m.onnx", tmp_path) == 2
    assert "SKUFORGE_S3_REGION" in capsys.readouterr().err


def test_s3_answering_5xx_names_where_the_uri_came_from() -> None:
    # The only S3 failure of the store whose message did not: a scene library's or a model's outage
    # read as one of SKUFORGE_STORE_URI. moto cannot be made to answer 500: botocore's error after its
    # own retries is raised into the mapping, as tests/test_store.py does.
    store = S3Store("scenes", endpoint_url="http://127.0.0.1:1", uri_from="--scenes")
    answer: Any = {"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}
    with pytest.raises(TransientError) as info, store._mapped_errors("s3://scenes/a.jpg"):
        raise ClientError(answer, "GetObject")
    assert str(info.value) == "S3 answered InternalError for s3://scenes/a.jpg (from --scenes)"


def test_s3_answering_what_the_store_does_not_know_is_a_refusal_naming_where_the_uri_came_from() -> None:
    # An S3-compatible server that takes no conditional headers answers 400: raised bare, a caller
    # other than the replay lock got a botocore traceback.
    store = S3Store("scenes", endpoint_url="http://127.0.0.1:1", uri_from="--scenes")
    answer: Any = {
        "Error": {"Code": "InvalidArgument", "Message": "If-None-Match is not supported"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    with pytest.raises(StoreMisconfigured) as info, store._mapped_errors("s3://scenes/a.jpg"):
        raise ClientError(answer, "PutObject")
    assert str(info.value) == (
        "S3 refused s3://scenes/a.jpg: InvalidArgument (HTTP 400: If-None-Match is not supported), an "
        "answer this store does not know; check that the server at SKUFORGE_S3_ENDPOINT_URL is an S3 "
        "this store works with (conditional writes: If-None-Match, If-Match) and the bucket name in --scenes"
    )


# The store openers, each with an s3:// URI's parts and uri_from left out.
STORE_OPENERS: dict[str, Callable[[], Any]] = {
    "open_store": lambda: open_store(  # type: ignore[call-arg]
        "s3://scenes/shelves", s3_endpoint_url="http://127.0.0.1:1"
    ),
    "S3Store": lambda: S3Store("scenes", "shelves", endpoint_url="http://127.0.0.1:1"),  # type: ignore[call-arg]
}


@pytest.mark.parametrize("opener", STORE_OPENERS)
def test_a_store_open_must_say_where_its_uri_came_from(opener: str) -> None:
    # uri_from defaulted to SKUFORGE_STORE_URI, as the model fetches' did before c6596da: a caller that
    # left it out for a scene library's or a registry's bucket had an S3 refusal blame that setting.
    with pytest.raises(TypeError, match="uri_from"):
        STORE_OPENERS[opener]()


@pytest.mark.parametrize("fetch", [fetch_file, fetch_directory])
def test_a_model_fetch_must_say_where_its_uri_came_from(fetch: Callable[..., Path], tmp_path: Path) -> None:
    # uri_from defaulted to SKUFORGE_STORE_URI: the bench tools left it out, and an S3 refusal of their
    # --matting-model blamed that setting. Left out, it is refused before anything is fetched.
    folder = publish_folder(tmp_path / "store", "blip")
    with pytest.raises(TypeError, match="uri_from"):
        fetch(folder if fetch is fetch_directory else f"{folder}/config.json", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# The model openers over those fetches, each with a model folder's URI and a cache, uri_from left out.
OPENERS: dict[str, Callable[[str, Path], Any]] = {
    "open_session": lambda folder, tmp: open_session(  # type: ignore[call-arg]
        f"{folder}/m.onnx", threads=1, use_gpu=False, store=None
    ),
    "open_vlm": lambda folder, tmp: open_vlm(  # type: ignore[call-arg]
        folder, cache_dir=tmp / "cache", threads=1, use_gpu=False
    ),
    "fetch_model_dir": lambda folder, tmp: fetch_model_dir(folder, tmp / "cache"),  # type: ignore[call-arg]
}


@pytest.mark.parametrize("opener", OPENERS)
def test_a_model_open_must_say_where_its_uri_came_from(opener: str, tmp_path: Path) -> None:
    # The openers over fetch_file and fetch_directory kept the SKUFORGE_STORE_URI default those lost:
    # a caller that left it out still had an S3 refusal of its model blame that setting.
    folder = publish_folder(tmp_path / "store", "blip", {"m.onnx": b"onnx", "config.json": b"{}"})
    with pytest.raises(TypeError, match="uri_from"):
        OPENERS[opener](folder, tmp_path)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("opener", ["open_session", "open_vlm"])
def test_a_model_uri_said_to_come_from_no_setting_is_refused(opener: str, tmp_path: Path) -> None:
    # uri_from=None is for a model no setting chose (a path, the committed model): a URI needs a name.
    folder = publish_folder(tmp_path / "store", "blip", {"m.onnx": b"onnx", "config.json": b"{}"})
    with pytest.raises(ValueError, match="uri_from"):
        if opener == "open_session":
            open_session(f"{folder}/m.onnx", threads=1, use_gpu=False, store=None, uri_from=None)
        else:
            open_vlm(folder, cache_dir=tmp_path / "cache", threads=1, use_gpu=False, uri_from=None)
    assert not (tmp_path / "cache").exists()


def test_a_manifest_uri_is_opened_as_the_services_open_theirs_and_a_refusal_names_it(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_manifest("s3://...") asked AWS, whatever SKUFORGE_S3_ENDPOINT_URL said, and a refusal blamed
    # SKUFORGE_STORE_URI, which the training code calling it never set.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    with pytest.raises(StoreMisconfigured, match="the bucket name in --store ") as info:
        load_manifest(f"s3://missing-{uuid.uuid4().hex[:12]}/skus", uri_from="--store")
    assert "SKUFORGE_STORE_URI" not in str(info.value)
