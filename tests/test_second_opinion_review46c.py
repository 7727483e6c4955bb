"""Found in the third second-opinion review of review 46's changes: the export's refusal to write named
the file asked for only when writing its temporary failed, not when renaming it into place failed; a
BLIP sentence cut to the caption limit could end on a glue word ("... in a")."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from schemas.events import MAX_CAPTION_CHARS
from shared.captioning.prompts import merge_sentence
from skuforge_cli.main import main as cli_main
from tests.support.console import build_console, use_cli_on, with_flagged


def test_export_whose_rename_into_place_fails_names_the_file_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: "cannot write Operation not permitted", naming no file at all (the rename's error has its
    # paths in its filename fields, which the message left out once it printed only strerror).
    parts = with_flagged(build_console(tmp_path), 1)
    use_cli_on(parts, monkeypatch)
    out = tmp_path / "tasks.json"

    def refused(self: Path, target: Path) -> Path:  # as a file system refuses the rename (EPERM)
        raise PermissionError(errno.EPERM, "Operation not permitted", str(self), None, str(target))

    monkeypatch.setattr(Path, "replace", refused)

    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 2

    err = capsys.readouterr().err
    assert f"cannot write {out}: Operation not permitted" in err, err
    assert not out.exists() and not list(tmp_path.glob(".tasks.json.*.partial"))


def test_a_sentence_cut_to_the_caption_limit_does_not_end_on_a_glue_word() -> None:
    # Before: cut at the last word that fit, the prompt ended "... beside it in a" or "... a kitchen with",
    # a dangling phrase handed to the generator as the product's caption.
    sentence = "a red box on a wooden table with a label and a spoon beside it in a kitchen with a window"
    base = "a photo of a " + "x" * MAX_CAPTION_CHARS
    glue = {"a", "an", "the", "of", "with", "and", "on", "in"}
    for room in range(20, len(sentence) + 2):
        caption = base[: MAX_CAPTION_CHARS - len(", ") - room]
        merged = merge_sentence(caption, sentence, ["red"], "box")
        assert len(merged) <= MAX_CAPTION_CHARS
        assert merged.split()[-1] not in glue, (room, merged[len(caption) :])
