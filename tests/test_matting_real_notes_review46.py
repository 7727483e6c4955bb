"""The catalogue masks' manifest says why each hand-drawn carton polygon was drawn (as its README says)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parents[1] / "bench" / "data" / "matting_real"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_catalogue_masks", HERE / "make_catalogue_masks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_drawn_polygon_gets_the_carton_note_unless_the_photo_has_its_own() -> None:
    script = _script()
    assert script.note("iconic/Juice/X_Iconic.jpg", "hand-checked polygon") == script.CARTON_NOTE
    assert script.note("iconic/Juice/X_Iconic.jpg", "border flood fill (Lab tol 12) + hole fill") == ""
    own = next(iter(script.NOTES))
    assert script.note(f"iconic/Any/{own}.jpg", "hand-checked polygon") == script.NOTES[own]


def test_the_committed_manifest_holds_the_note_the_script_writes() -> None:
    script = _script()
    entries = json.loads((HERE / "catalogue.json").read_text())
    drawn = [e for e in entries if e["method"] == "hand-checked polygon"]
    assert len(drawn) == 17  # the README's "17 cartons ... drawn as polygons"
    assert [e["note"] for e in entries] == [script.note(e["path"], e["method"]) for e in entries]
    assert all(e["note"] for e in drawn)
