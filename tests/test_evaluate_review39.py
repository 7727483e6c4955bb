"""``skuforge evaluate`` with odd input (review 39): an empty path argument."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    COLOURS,
    colour_photo,
    evaluate_args,
    fill_colour_store,
    one_torch_thread,
)
from tests.support.trainstore import PREFIX


@pytest.fixture
def colour_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManifestStore:
    """``fill_colour_store`` in a file store, which SKUFORGE_STORE_URI points at."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    return fill_colour_store(ManifestStore(FileStore(tmp_path / "store"), PREFIX))


@pytest.fixture
def heldout(tmp_path: Path) -> Path:
    """Two PNG photos per colour SKU."""
    root = tmp_path / "heldout"
    for index, (sku_id, rgb) in enumerate(COLOURS.items()):
        (root / sku_id).mkdir(parents=True)
        for n in range(2):
            colour_photo(rgb, 700 + 10 * index + n).save(root / sku_id / f"test-{n}.png")
    return root


@pytest.mark.parametrize("option", ["--heldout", "--out", "--cache-dir"])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
) -> None:
    # `--out "$EVAL"` with the variable unset is Path(""), the current folder: the run wrote its
    # evaluation.json and report.html wherever the user stood, --cache-dir filled it with cache
    # folders, and --heldout took its folders for SKU folders.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    argv = evaluate_args(heldout, tmp_path / "eval", tmp_path)
    argv[argv.index(option) + 1] = ""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    assert f"argument {option}: the path is empty (an unset shell variable?)" in capsys.readouterr().err
    assert list((tmp_path / "cwd").iterdir()) == []
