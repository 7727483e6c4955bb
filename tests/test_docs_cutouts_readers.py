"""The docs (review 43): docs/ops.md's storage table names as readers of ``cutouts/`` the stages whose
code reads a cut-out, and no other."""

from __future__ import annotations

import re

from tests.support.docs import ROOT


def test_the_storage_table_names_the_stages_that_read_cutouts_and_no_other() -> None:
    # The table said gate, console and trainstore read `cutouts/<sku>/`, sharing a row with
    # `masks/predicted/`, which they do read; no stage reads a cut-out, so an operator told they were
    # needed kept them as long as the masks.
    readers = {
        folder.name.replace("_", "-")
        for folder in (ROOT / "services").iterdir()
        if folder.is_dir()
        and folder.name != "matting"
        and any(
            re.search(r"\.cutout\b|cutout_key", py.read_text(encoding="utf-8")) for py in folder.rglob("*.py")
        )
    }
    ops = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    (row,) = (
        line for line in ops.splitlines() if line.startswith("|") and "`cutouts/<sku>/`" in line.split("|")[1]
    )
    read_by = row.split("|")[3]
    stages = [folder.name.replace("_", "-") for folder in (ROOT / "services").iterdir() if folder.is_dir()]
    assert {stage for stage in stages if re.search(rf"\b{stage}\b", read_by)} == readers
    assert readers or "nobody" in read_by
