"""bench/augment.py's try of the export policy on val: the held-out set in two halves (choose on one,
measure on the other) and ``--drop-synthetic-from`` (leave out the synthetic images of the SKUs an
earlier result measured them to hurt). Cheap: a tiny dataset, a tiny backbone, stand-in composites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import augment
from shared.evaluation.backbone import BackboneSpec, open_backbone
from shared.evaluation.experiment import Photo, encode_jpeg, photo_from_bytes
from tests.support.evaluation import one_torch_thread, shelf_photo  # noqa: F401 (one_torch_thread: autouse)

CLASSES = ("Kiwi", "Lemon", "Lime")


def _photos(counts: dict[str, int]) -> list[Photo]:
    return [
        photo_from_bytes(sku, "real", f"/data/val/{sku}/{n}.jpg", f"{sku}{n}".encode())
        for sku, count in counts.items()
        for n in range(count)
    ]


def test_the_halves_split_every_class_in_two_disjoint_parts_the_same_way_each_time() -> None:
    heldout = _photos({"Kiwi": 5, "Lemon": 4, "Lime": 1, "Melon": 30})
    halves = augment.heldout_halves(heldout, seed=0)
    a, b = ({photo.name for photo in halves[half]} for half in augment.HALVES)
    assert not a & b and a | b == {photo.name for photo in heldout}
    for sku, count in {"Kiwi": 5, "Lemon": 4, "Lime": 1, "Melon": 30}.items():
        assert sum(photo.sku_id == sku for photo in halves["a"]) == (count + 1) // 2
        assert sum(photo.sku_id == sku for photo in halves["b"]) == count // 2
    # Each half keeps the held-out set's order (the classifier is scored the same way whatever the half).
    assert halves["a"] == [photo for photo in heldout if photo.name in a]
    assert augment.heldout_halves(heldout, seed=0) == halves  # the same draw every run
    # A class's half is drawn, not its first photos, and the seed draws another one.
    assert {photo.name for photo in halves["a"] if photo.sku_id == "Melon"} != {
        f"/data/val/Melon/{n}.jpg" for n in range(15)
    }
    assert augment.heldout_halves(heldout, seed=1)["a"] != halves["a"]


def _grocery(root: Path) -> Path:
    """A three-class GroceryStoreDataset folder: per class its iconic photo, 4 train photos (a
    reference, a scene and two spare) and 2 val photos, each a photo of its own."""
    rows, seed = [], 0
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for class_id, name in enumerate(CLASSES):
        iconic = f"iconic-images-and-descriptions/Fruit/{name}/{name}_Iconic.jpg"
        (root / iconic).parent.mkdir(parents=True)
        (root / iconic).write_bytes(encode_jpeg(shelf_photo(seed := seed + 1)))
        rows.append(f"{name},{class_id},{name},{class_id},/{iconic},/desc.txt\n")
        for split, count in (("train", 4), ("val", 2), ("test", 1)):
            (root / split / name).mkdir(parents=True)
            for n in range(count):
                (root / split / name / f"{n}.jpg").write_bytes(encode_jpeg(shelf_photo(seed := seed + 1)))
                lines[split].append(f"{split}/{name}/{n}.jpg, {class_id}, {class_id}\n")
    header = "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
    (root / "classes.csv").write_text(header + "Iconic Image Path (str),Product Description Path (str)\n")
    with (root / "classes.csv").open("a") as handle:
        handle.writelines(rows)
    for split, split_lines in lines.items():
        (root / f"{split}.txt").write_text("".join(split_lines))
    return root


@pytest.fixture
def tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """bench.augment's in-process val arguments on ``_grocery``, with a tiny backbone and three stand-in
    composites per class (the matting model and the composite backend are not what is tested here)."""

    def composites(
        refs: dict[str, list[Path]], scenes: Path, args: Any, out: Path, session: Any, *, k: int
    ) -> dict:
        made: dict[str, list[Path]] = {}
        for index, name in enumerate(refs):
            (out / name).mkdir(parents=True, exist_ok=True)
            made[name] = []
            for variant in range(3):
                path = out / name / f"{variant:03d}.png"
                shelf_photo(1_000 + 10 * index + variant).save(path)
                made[name].append(path)
        return made

    monkeypatch.setattr(augment, "generate_in_process", composites)
    monkeypatch.setattr(
        augment, "open_backbone", lambda spec: open_backbone(BackboneSpec("tiny", image_px=32))
    )
    dataset = _grocery(tmp_path / "dataset")
    return [
        *("--dataset", str(dataset), "--split", "val", "--with-spare-train", "--mode", "in-process"),
        *("--k", "1", "--scenes-per-class", "1", "--variants-per-sku", "3", "--workdir", str(tmp_path / "w")),
    ]


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    with pytest.raises(SystemExit) as exc:
        augment.main(argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_a_choice_made_on_one_half_leaves_out_synthetic_images_on_the_other(
    tiny_run: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert augment.main([*tiny_run, "--heldout-half", "a", "--out", str(tmp_path / "a.json")]) == 0
    chosen = json.loads((tmp_path / "a.json").read_text())
    # The result says which half it scored (2 of each class's 4 val + spare photos) and per SKU what
    # a choice reads.
    assert chosen["heldout"]["half"] == "a" and chosen["heldout"]["whole_set_photos"] == 12
    assert chosen["n_test"] == 6
    assert set(chosen["per_sku"]["k1"]["gain"]) == set(CLASSES)
    assert chosen["per_sku"]["k1"]["train_counts"]["Kiwi"] == {"real": 2, "synthetic": 3, "classic": 3}
    # The choice: Kiwi's synthetic images hurt on half a, the others' did not.
    chosen["per_sku"]["k1"]["gain"] = {"Kiwi": -0.5, "Lemon": 0.0, "Lime": 0.25}
    chosen["per_sku"]["k1"]["gain_over_classic"] = {"Kiwi": 0.5, "Lemon": -0.25, "Lime": -0.5}
    (tmp_path / "choice.json").write_text(json.dumps(chosen))

    policy = [*tiny_run, "--heldout-half", "b", "--drop-synthetic-from", str(tmp_path / "choice.json")]
    assert augment.main([*policy, "--min-gain", "0", "--out", str(tmp_path / "b.json")]) == 0
    measured = json.loads((tmp_path / "b.json").read_text())
    assert measured["heldout"] == {**chosen["heldout"], "half": "b"}
    assert measured["synthetic_left_out"]["skus"] == {"k1": {"Kiwi": -0.5}}
    assert measured["synthetic_left_out"]["by"] == "B - A"
    counts = measured["per_sku"]["k1"]["train_counts"]
    # Kiwi trains without its composites, and keeps its classic augmentation (A' is the same baseline).
    assert counts["Kiwi"] == {"real": 2, "synthetic": 0, "classic": 3}
    assert counts["Lemon"] == {"real": 2, "synthetic": 3, "classic": 3}

    # By B' - A' instead, at -0.3: Lime alone.
    by_classic = [*policy, "--drop-by", "gain-over-classic", "--min-gain", "-0.3"]
    assert augment.main([*by_classic, "--out", str(tmp_path / "b2.json")]) == 0
    measured = json.loads((tmp_path / "b2.json").read_text())
    assert measured["synthetic_left_out"]["skus"] == {"k1": {"Lime": -0.5}}
    assert measured["synthetic_left_out"]["by"] == "B' - A'"

    # Measured on the half it was chosen on: refused, before the backbone loads.
    same = [*tiny_run, "--heldout-half", "a", "--drop-synthetic-from", str(tmp_path / "choice.json")]
    code, said = _exit([*same, "--out", str(tmp_path / "c.json")], capsys)
    assert code == 2 and "measured on half a, the half this run scores" in said
    # So is a choice from another held-out set (another seed draws other references, scenes and halves).
    code, said = _exit([*policy, "--seed", "1", "--out", str(tmp_path / "c.json")], capsys)
    assert code == 2 and "another held-out set" in said
    # And a figure that is not a number.
    chosen["per_sku"]["k1"]["gain"]["Lime"] = "high"
    (tmp_path / "choice.json").write_text(json.dumps(chosen))
    code, said = _exit([*policy, "--out", str(tmp_path / "c.json")], capsys)
    assert code == 2 and "gain of 'Lime' is 'high', not a number" in said
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no such file"),
        ("{not json", "not a readable JSON file"),
        ("[1, 2]", "expected a JSON object of bench.augment results, got list"),
        ('{"k1": {}}', "does not say which held-out half it was measured on"),
        ('{"heldout": {"half": "a"}, "per_sku": {"k3": {"gain": {}}}}', "no per-SKU 'gain' at k=1"),
        ('{"heldout": {"half": "a"}, "per_sku": {"k1": {"gain": [0.1]}}}', "no per-SKU 'gain' at k=1"),
    ],
)
def test_a_result_that_cannot_choose_is_refused_before_the_run(
    content: str | None, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "result.json"
    if content is not None:
        result.write_text(content)
    argv = ["--dataset", str(tmp_path / "none"), "--split", "val", "--mode", "in-process", "--k", "1"]
    argv += ["--heldout-half", "b", "--drop-synthetic-from", str(result), "--out", str(tmp_path / "o.json")]
    code, line = _exit(argv, capsys)  # the dataset is not even read
    assert code == 2 and said in line and line.startswith("python -m bench.augment: error:")


@pytest.mark.parametrize(
    ("options", "said"),
    [
        # The test split is for the final figures only.
        (["--split", "test", "--heldout-half", "a"], "--heldout-half splits the held-out set"),
        # Nothing to choose from.
        (["--split", "val", "--min-gain", "0"], "need --drop-synthetic-from"),
        (["--split", "val", "--drop-by", "gain-over-classic"], "need --drop-synthetic-from"),
        # No half: chosen and measured on the same photos; or a stack run.
        (["--split", "val", "--drop-synthetic-from", "r.json"], "measured on one held-out half"),
        (["--split", "val", "--heldout-half", "b", "--drop-synthetic-from", "r.json"], "an in-process try"),
        # Points, not a fraction.
        (
            [
                *("--split", "val", "--mode", "in-process", "--heldout-half", "b"),
                *("--drop-synthetic-from", "r.json", "--min-gain", "-5"),
            ],
            "(-0.05 for -5 points)",
        ),
    ],
)
def test_options_of_the_policy_try_are_refused_where_they_would_mislead(
    options: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = _exit(["--dataset", str(tmp_path), *options, "--out", str(tmp_path / "o.json")], capsys)
    assert code == 2 and said in line
