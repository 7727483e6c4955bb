"""`skuforge matting` as a user meets it: bad paths and numbers refused up front, in one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.matting.cli import main as matting_cli
from shared.matting.official import default_official_onnx

needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line usage error of ``skuforge matting argv`` (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exited:
        matting_cli(argv)
    assert exited.value.code == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_official_without_pth_checks_the_official_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --wheel, --onnx or --pth: check the file set-up put there (and that it converts).
    missing = tmp_path / "u2netp-official.onnx"
    assert matting_cli(["official", "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"skuforge matting official: no official U2-NetP at {missing}: `make setup` fetches it" in err
    assert "Traceback" not in err
    official = default_official_onnx()
    if not official.is_file():
        pytest.fail(f"{official} is missing: `make setup` fetches and checks the official U2-NetP")
    assert matting_cli(["official", "--out", str(official)]) == 0
    assert json.loads(capsys.readouterr().out) == {"onnx": str(official), "pth": None}


@pytest.mark.parametrize("action", ["export", "quantize", "train"])
def test_an_out_that_is_a_folder_is_refused_before_any_work(
    action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    weights = tmp_path / "junk.pth"
    weights.write_bytes(b"not read: the --out check comes first")
    argv = {
        "export": ["export", str(weights)],
        "quantize": ["quantize", str(tmp_path / "model.onnx")],
        "train": ["train", "--checkpoint", str(tmp_path / "checkpoint.pt")],
    }[action]
    line = _refused([*argv, "--out", str(folder)], capsys)
    assert line.endswith(f"--out {folder}: is a folder; name the file to write, e.g. {folder / 'model.onnx'}")
    assert list(folder.iterdir()) == []


def test_a_checkpoint_that_is_a_folder_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(["train", "--out", str(tmp_path / "m.onnx"), "--checkpoint", str(tmp_path)], capsys)
    assert line.endswith(
        f"--checkpoint {tmp_path}: is a folder; name the file to write, e.g. {tmp_path / 'checkpoint.pt'}"
    )


def test_a_thread_count_past_the_stages_bound_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--threads took any positive number: after torch.set_num_threads(100000) the process ended in a
    segmentation fault, and 99999999999 was a traceback ("Overflow when unpacking long").
    SKUFORGE_MATTING_THREADS, the stage's thread count, is at most 256. (The checkpoint folder, refused
    after parsing, shows the thread count is refused first.)"""
    argv = ["train", "--out", str(tmp_path / "m.onnx"), "--checkpoint", str(tmp_path)]
    line = _refused([*argv, "--threads", "100000"], capsys)
    assert "--threads" in line and "from 1 to 256, got 100000" in line


@pytest.mark.parametrize("action", ["export", "official"])
def test_a_pth_that_cannot_be_written_is_refused_up_front(
    action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    weights = tmp_path / "junk.pth"
    weights.write_bytes(b"junk")
    argv = {
        "export": ["export", str(weights), "--out", str(tmp_path / "e.onnx")],
        "official": ["official", "--out", str(tmp_path / "o.onnx")],
    }[action]
    line = _refused([*argv, "--pth", str(a_file / "u2netp.pth")], capsys)
    assert line.endswith(f"--pth {a_file / 'u2netp.pth'}: {a_file} is a file, not a folder")
    line = _refused([*argv, "--pth", str(tmp_path)], capsys)
    assert line.endswith(
        f"--pth {tmp_path}: is a folder; name the file to write, e.g. {tmp_path / 'model.pth'}"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "junk.pth"]


@needs_proc
def test_a_pth_under_proc_is_refused_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As root, os.access says /proc is writable; a file cannot be made there all the same.
    weights = tmp_path / "junk.pth"
    weights.write_bytes(b"junk")
    argv = ["export", str(weights), "--out", str(tmp_path / "e.onnx"), "--pth", "/proc/skuforge-x.pth"]
    assert "--pth /proc/skuforge-x.pth: cannot write in /proc" in _refused(argv, capsys)


def test_pairs_refuses_a_negative_catalogue_seed_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pairs"
    line = _refused(["pairs", "--n", "1", "--out", str(out), "--catalogue-seed", "-5"], capsys)
    assert line.endswith("argument --catalogue-seed: must be from 0 to 9223372036854775807, got -5")
    assert not out.exists()


def test_export_of_a_text_file_says_it_is_not_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hello = tmp_path / "hello.pth"
    hello.write_text("hello world\n")  # torch's unpickler raises KeyError on these bytes
    line = _refused(["export", str(hello), "--out", str(tmp_path / "e.onnx")], capsys)
    assert line.endswith(f"{hello}: not a weights file torch can load safely (KeyError)")


def test_real_pairs_on_a_folder_without_photos_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rng.integers(0) raised a bare ValueError traceback after the (empty) in-store pass."""
    (tmp_path / "train.txt").write_text("")
    assert matting_cli(["real-pairs", "--dataset", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no catalogue or in-store cut-out to draw composites from" in err and "Traceback" not in err
    assert "in-store pseudo-labels" not in err  # refused before any work, not after the in-store pass
    assert not list((tmp_path / "out").rglob("*.png"))


def test_the_vlm_captioner_without_transformers_is_a_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU install asked for SKUFORGE_CAPTIONER_BACKEND=vlm crashed at start-up with an ImportError."""
    import builtins

    from shared.captioning.vlm import VlmCaptioner, VlmModelError

    real_import = builtins.__import__

    def no_transformers(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("transformers"):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(
        VlmModelError, match=r"needs torch and transformers: pip install 'skuforge\[diffusion\]'"
    ):
        VlmCaptioner(tmp_path)


@pytest.mark.parametrize("clash", ["out_is_the_weights", "pth_is_the_weights", "pth_is_the_out"])
def test_export_refuses_to_write_over_its_own_input_or_output(
    clash: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export W --out W`` wrote the ONNX model over the weights it was made from, and ``--pth W`` the
    (averaged) weights over a checkpoint it averaged, both reported as a success; ``--pth`` naming the
    ``--out`` file replaced the ONNX model with a state dict, and the line printed called it the model.
    Refused up front, as quantize and tune-ranges refuse an output that is their input."""
    torch = pytest.importorskip("torch")
    from shared.matting.u2net import build_model

    weights = tmp_path / "u2netp.pth"
    torch.save(build_model("u2netp").state_dict(), weights)
    before = weights.read_bytes()
    onnx_out = tmp_path / "u2netp.onnx"
    argv = {
        "out_is_the_weights": ["export", str(weights), "--out", str(weights)],
        "pth_is_the_weights": ["export", str(weights), "--out", str(onnx_out), "--pth", str(weights)],
        "pth_is_the_out": ["export", str(weights), "--out", str(onnx_out), "--pth", str(onnx_out)],
    }[clash]

    line = _refused(argv, capsys)

    assert f"error: {argv[-2]} {argv[-1]} is " in line and line.endswith("own file"), line
    assert weights.read_bytes() == before
    assert not onnx_out.exists()


@pytest.mark.parametrize("clash", ["init", "checkpoint"])
def test_train_refuses_an_init_or_checkpoint_that_its_output_weights_would_replace(
    clash: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train writes its weights beside --out (OUT.pth) and its card (OUT.json) once the run is done. An
    --init there (fine-tuning var/matting/u2netp-trained.pth with the default --out) lost the weights
    the run started from; a --checkpoint there was replaced by a plain state dict, and the rerun that
    was to resume an interrupted run was refused as "not a checkpoint". Refused before any work."""
    torch = pytest.importorskip("torch")
    from shared.matting.u2net import build_model

    out = tmp_path / "trained.onnx"
    beside = out.with_suffix(".pth")  # where the run's own weights go
    if clash == "init":
        init, checkpoint = beside, tmp_path / "checkpoint.pt"
    else:
        init, checkpoint = tmp_path / "official.pth", beside
    torch.save(build_model("u2netp").state_dict(), init)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    argv = [
        "train", "--out", str(out), "--checkpoint", str(checkpoint), "--init", str(init),
        "--freeze-batchnorm", "--steps", "1", "--batch", "1", "--train-images", "1", "--heldout", "1",
        "--low-res-px", "32", "--checkpoint-every", "1", "--threads", "1",
    ]  # fmt: skip

    line = _refused(argv, capsys)

    assert f"error: --{clash} {beside}: train writes " in line, line
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.parametrize("clash", ["out", "onnx"])
def test_official_refuses_a_pth_that_is_its_onnx_file(
    clash: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``official --pth`` naming the --out file (set-up's checked official model, by default) replaced
    the ONNX model it had just checked with the converted state dict, and naming the --onnx source
    replaced that: the next open of u2netp-official failed its md5 check. Refused before any work."""
    pytest.importorskip("torch")
    official = default_official_onnx()
    if not official.is_file():
        pytest.fail(f"{official} is missing: `make setup` fetches and checks the official U2-NetP")
    source, out = tmp_path / "u2netp.onnx", tmp_path / "checked.onnx"
    source.write_bytes(official.read_bytes())
    pth = out if clash == "out" else source

    line = _refused(["official", "--onnx", str(source), "--out", str(out), "--pth", str(pth)], capsys)

    assert f"error: --pth {pth} is the --{clash} file" in line, line
    assert source.read_bytes() == official.read_bytes()
    assert not out.exists()


@pytest.mark.parametrize("clash", ["model_is_the_candidate", "out_is_the_ranges", "candidate_is_the_ranges"])
def test_quantize_refuses_an_out_that_would_replace_its_model_or_ranges(
    clash: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """quantize writes its int8 model to OUT.candidate.onnx and deletes that file when it is done: a
    model named so was written over and then deleted. An --out (or its candidate) that is the --ranges
    file replaced the ranges JSON. Refused before any work: neither file is read (nor a model), and
    both are left as they were."""
    model, out, ranges = tmp_path / "u2netp.onnx", tmp_path / "u2netp-int8.onnx", tmp_path / "ranges.json"
    if clash == "model_is_the_candidate":
        model = tmp_path / "u2netp-int8.candidate.onnx"
    elif clash == "out_is_the_ranges":
        ranges = out
    else:
        ranges = tmp_path / "u2netp-int8.candidate.onnx"
    model.write_bytes(b"not read: the --out check comes first")
    ranges.write_text("not read either")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    line = _refused(["quantize", str(model), "--out", str(out), "--ranges", str(ranges)], capsys)

    expected = "the model being quantised" if clash == "model_is_the_candidate" else "the --ranges file"
    assert f"error: --out {out} " in line and expected in line, line
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def _one_iconic_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A GroceryStoreDataset-shaped folder holding one iconic photo (the committed Oatly sample) and
    no in-store photo, and a held-out split that keeps nothing back: (dataset, split file)."""
    import shutil

    sample = Path(__file__).resolve().parents[1] / "samples" / "grocerystore" / "GROCERY-OATLY-001"
    dataset = tmp_path / "dataset"
    iconic = dataset / "iconic-images-and-descriptions" / "Packages" / "Oat-Milk"
    iconic.mkdir(parents=True)
    shutil.copy(sample / "Oatly-Oat-Milk_Iconic.jpg", iconic / "Oatly-Oat-Milk_Iconic.jpg")
    (dataset / "train.txt").write_text("")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"bench_catalogue": [], "reserved_train": []}))
    return dataset, split


def test_train_refuses_an_unfinished_real_pairs_folder_and_real_pairs_finishes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted `real-pairs` left whole pairs and no pairs.json: `train --extra` trained on that
    part of the set without a word, and `real-pairs` refused the folder, so it had to be deleted."""
    from PIL import Image

    from tests.support.matting import stop_at_png

    dataset, split = _one_iconic_dataset(tmp_path)
    pairs = tmp_path / "pairs"
    argv = ["real-pairs", "--dataset", str(dataset), "--held-out", str(split), "--composites", "0"]

    with monkeypatch.context() as patched:
        patched.setitem(Image.SAVE, "PNG", stop_at_png(5))  # two pairs whole, then Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            matting_cli([*argv, "--out", str(pairs)])
    assert len(list((pairs / "masks").glob("*.png"))) == 2
    capsys.readouterr()

    # A quick run, should it start: one step on two photos, nothing written outside tmp_path.
    quick = ["--steps", "1", "--batch", "2", "--train-images", "2", "--heldout", "1"]
    train = [
        "train",
        *quick,
        "--checkpoint",
        str(tmp_path / "checkpoint.pt"),
        "--out",
        str(tmp_path / "m.onnx"),
    ]
    line = _refused([*train, "--extra", str(pairs)], capsys)
    assert f"--extra {pairs}: a `skuforge matting real-pairs` run stopped before it finished" in line
    assert f"--out {pairs}" in line
    assert not (tmp_path / "m.onnx").exists()

    # A rerun with other options would mix two sets of pairs: refused, the folder as it was.
    assert matting_cli([*argv, "--seed", "13", "--out", str(pairs)]) == 2
    assert "(seed 12, not 13); rerun with its options to finish it" in capsys.readouterr().err
    assert len(list((pairs / "masks").glob("*.png"))) == 2

    assert matting_cli([*argv, "--out", str(pairs)]) == 0
    assert json.loads(capsys.readouterr().out)["catalogue_pairs"] == 6
    assert len(list((pairs / "masks").glob("*.png"))) == 6
    assert (pairs / "pairs.json").is_file()
    # Finished, the folder is an earlier run's again: a second run into it is refused as before.
    assert "holds pairs of an earlier run" in _refused([*argv, "--out", str(pairs)], capsys)


def test_real_pairs_labels_with_the_official_bytes_its_md5_was_checked_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The md5 of --official was checked on one read, and the pseudo-labeller opened from the path
    later: a file replaced in between labelled the in-store pairs unchecked (here: ended the run in
    a traceback, the file being no model at all)."""
    import shared.matting.official as official_module

    dataset, split = _one_iconic_dataset(tmp_path)
    official = tmp_path / "u2netp.onnx"
    official.write_bytes(default_official_onnx().read_bytes())
    checked = official_module.verify_md5

    def check_then_replace(data: bytes, **kwargs: str) -> None:
        checked(data, **kwargs)
        official.write_bytes(b"replaced after the check")

    monkeypatch.setattr(official_module, "verify_md5", check_then_replace)
    argv = ["real-pairs", "--dataset", str(dataset), "--held-out", str(split), "--composites", "0"]
    assert matting_cli([*argv, "--official", str(official), "--out", str(tmp_path / "pairs")]) == 0
    assert json.loads(capsys.readouterr().out)["catalogue_pairs"] == 6


def test_eval_help_says_its_figures_are_on_renderer_photos_and_where_real_ones_come_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """'held-out mean IoU and MAE' read as a figure on held-out real photos; it is measured on renderer
    photos only (STYLE: a renderer figure says little alone), and --n and --seed said nothing."""
    with pytest.raises(SystemExit) as exited:
        matting_cli(["eval", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "renderer photos" in text and "make bench-real" in text
    assert "--n N renderer photos" in text and "--seed SEED catalogue seed of the renderer photos" in text
