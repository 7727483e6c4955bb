"""Commands that read a store say so when it holds nothing, instead of an empty answer and exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from skuforge_cli.main import main as cli_main


@pytest.mark.parametrize(
    "argv", [["stats"], ["stats", "--json"], ["compact"], ["sweep"], ["sweep", "--delete"]], ids=" ".join
)
@pytest.mark.parametrize("created", [True, False], ids=["empty-store", "no-store"])
def test_dataset_stats_and_compact_on_a_store_with_no_skus_say_so_and_exit_1(
    argv: list[str],
    created: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "store"
    if created:
        store.mkdir()
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{store}")
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", "trainstore")
    assert cli_main(["dataset", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"skuforge dataset {argv[0]}: the retraining store file://{store}/trainstore has no SKUs; is "
        "SKUFORGE_STORE_URI (and SKUFORGE_TRAINSTORE_PREFIX) the store the trainstore service writes?\n"
    )


def test_adapters_list_of_an_empty_registry_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    # Nothing registered yet is a normal state of a new deployment: exit 0, but not a silent one.
    assert cli_main(["adapters", "list"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f"skuforge adapters list: no adapters registered in file://{tmp_path / 'store'}/adapters\n"
    )


@pytest.mark.parametrize("argv", [["dataset", "stats"], ["adapters", "list"]], ids=" ".join)
def test_a_store_that_cannot_be_reached_is_a_message_not_a_traceback(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the store's TransientError reached the user as a traceback."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", "s3://skuforge-test/p")
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"skuforge {argv[0]}: S3 unreachable for s3://skuforge-test/p/"), err
    assert "SKUFORGE_STORE_URI" in err and "Traceback" not in err
