"""The matting model: training plumbing, int8 quantisation, and the committed models' held-out quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.matting.cli import main as matting_cli
from shared.arith.masks import mask_iou
from shared.matting import MODELS_DIR
from shared.matting.session import U2NetPSession
from shared.matting.train import evaluate
from tests.support.matting import stand_in_onnx_bytes

FP32 = MODELS_DIR / "u2netp-skuforge.onnx"
INT8 = MODELS_DIR / "u2netp-skuforge-int8.onnx"


def test_iou_on_hand_made_masks() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    assert mask_iou(a, b) == 1.0  # both empty: nothing to disagree about
    a[:2] = 255
    assert mask_iou(a, b) == 0.0
    b[1:3] = 255
    assert mask_iou(a, b) == pytest.approx(4 / 12)


# A training run small enough for a test: 2-image batches of 64 px photos, 2 held-out photos.
TINY_TRAINING = [
    "--batch",
    "2",
    "--train-images",
    "4",
    "--heldout",
    "2",
    "--low-res-px",
    "64",
    "--threads",
    "1",
]


def test_kept_checkpoints_are_each_steps_weights_and_export_averages_them(tmp_path: Path) -> None:
    """Checkpoint averaging (the committed recipe) needs the weights of several steps; the checkpoint
    itself is overwritten each time. --keep-checkpoints keeps each step's weights beside it."""
    from shared.matting.u2net import read_weights

    out, checkpoint = tmp_path / "tiny.onnx", tmp_path / "ck.pt"
    code = matting_cli(
        ["train", "--steps", "4", "--checkpoint-every", "2", "--keep-checkpoints", *TINY_TRAINING,
         "--low-res-fraction", "1", "--out", str(out), "--checkpoint", str(checkpoint)]
    )  # fmt: skip
    assert code == 0
    kept = sorted(path.name for path in tmp_path.glob("ck-step*.pth"))
    assert kept == ["ck-step00002.pth", "ck-step00004.pth"]
    key = "stage1.rebnconvin.conv_s1.weight"
    second, fourth = (read_weights(tmp_path / name)[key] for name in kept)
    assert not second.equal(fourth)  # two steps of training apart
    assert fourth.equal(read_weights(out.with_suffix(".pth"))[key])  # the last is what was exported
    averaged = tmp_path / "mean.onnx"
    assert matting_cli(["export", *(str(tmp_path / name) for name in kept), "--out", str(averaged)]) == 0


def test_train_on_cuda_without_a_gpu_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit) as exited:
        matting_cli(["train", "--device", "cuda", *TINY_TRAINING, "--out", str(tmp_path / "m.onnx")])
    assert exited.value.code == 2
    assert "--device cuda: torch sees no CUDA device here" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_train_cli_writes_onnx_weights_and_card(tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    code = matting_cli(
        ["train", "--steps", "2", *TINY_TRAINING, "--out", str(out), "--checkpoint", str(tmp_path / "ck.pt")]
    )
    assert code == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert {"heldout_mean_iou", "heldout_mae", "timings_s", "data", "config"} <= set(card)
    assert card["config"]["steps"] == 2 and card["heldout_images"] == 2
    assert out.with_suffix(".pth").is_file()
    session = U2NetPSession(out, threads=1, use_gpu=False)
    assert session.input_name == "input"


@pytest.mark.slow
def test_train_stops_when_the_time_budget_is_spent(tmp_path: Path) -> None:
    out = tmp_path / "budget.onnx"
    code = matting_cli(
        [
            "train",
            "--steps",
            "50",
            "--max-minutes",
            "0",
            *TINY_TRAINING,
            "--out",
            str(out),
            "--checkpoint",
            str(tmp_path / "ck"),
        ]
    )
    assert code == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["timings_s"]["steps_done"] == 1  # the budget (0 minutes) is spent after the first step
    assert out.is_file() and out.with_suffix(".pth").is_file()


def test_train_cli_refuses_bad_extra_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        matting_cli(["train", "--extra", str(tmp_path)])
    assert "expected" in capsys.readouterr().err
    # A missing --init is named before the training set is rendered (minutes), not after.
    with pytest.raises(SystemExit):
        matting_cli(["train", "--init", str(tmp_path / "gone.pth")])
    assert "--init" in (err := capsys.readouterr().err) and "gone.pth: no such file" in err


def test_init_weights_that_do_not_fit_the_model_are_refused_before_the_training_set_is_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only "is it a mapping torch can load" was checked up front; the load itself came after the
    training set was rendered (minutes), as a ValueError traceback."""
    import torch

    from shared.matting.u2net import build_model

    state = build_model("u2netp").state_dict()
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(SystemExit) as exited:
        matting_cli(["train", "--init", str(tmp_path / "short.pth"), "--checkpoint", str(tmp_path / "ck")])
    assert exited.value.code == 2
    assert "--init state dict does not fit U2NETP: missing keys (1)" in capsys.readouterr().err


def test_folded_batchnorm_weights_are_refused_without_freeze_batchnorm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The official U2-NetP and every model fine-tuned from it (the committed .pth) have their BatchNorms
    folded into the convolutions: identity statistics. Trained without --freeze-batchnorm (as in
    `train --init shared/matting/models/u2netp-skuforge.pth --extra corrected/`), the BatchNorms
    re-normalised every activation by its batch's statistics: a fused BCE of 7 instead of 0.005 from
    the first step, and three steps at lr 1e-9 took the held-out IoU from 0.89 to 0.80, silently."""
    import torch

    from shared.matting.train import TrainConfig, start_state
    from shared.matting.u2net import build_model

    folded = build_model("u2netp").state_dict()
    for key, value in folded.items():
        if key.endswith("running_var"):
            value.fill_(1.0 - 1e-5)  # as shared.matting.official writes them
        elif key.endswith(".weight"):
            value.normal_(0.0, 0.1)  # learnt weights; only the statistics are the identity
    init = tmp_path / "folded.pth"
    torch.save(folded, init)
    with pytest.raises(ValueError, match=r"folded into the convolutions .* --freeze-batchnorm"):
        start_state(TrainConfig(init_weights=init), None)
    start_state(TrainConfig(init_weights=init, freeze_batchnorm=True), None)
    with pytest.raises(SystemExit) as exited:
        matting_cli(
            [
                "train",
                "--init",
                str(init),
                "--checkpoint",
                str(tmp_path / "ck"),
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
    assert exited.value.code == 2
    assert f"--init {init}: its BatchNorms are folded" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    # Weights whose BatchNorms learnt statistics (trained without freezing) train as they were.
    trained = dict(folded)
    trained["stage1.rebnconvin.bn_s1.running_mean"] = torch.full_like(
        folded["stage1.rebnconvin.bn_s1.running_mean"], 0.3
    )
    torch.save(trained, init)
    start_state(TrainConfig(init_weights=init), None)


@pytest.mark.parametrize("action", ["train", "pairs"])
def test_the_held_out_products_cannot_be_trained_on(
    action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every held-out figure (train's model card, eval, quantize's acceptance) is measured on catalogue
    seed 9001's products. `train --seed 9001` rendered exactly those products to train on (and `pairs
    --catalogue-seed 9001` put them in composites for --extra): the "held-out" IoU was a training one."""
    from shared.matting import RENDERER_HELDOUT_SEED

    argv = {
        "train": ["train", "--seed", str(RENDERER_HELDOUT_SEED), "--out", str(tmp_path / "m.onnx"),
                  "--checkpoint", str(tmp_path / "ck.pt"), *TINY_TRAINING, "--steps", "1"],
        "pairs": ["pairs", "--n", "1", "--catalogue-seed", str(RENDERER_HELDOUT_SEED),
                  "--out", str(tmp_path / "pairs")],
    }[action]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        matting_cli(argv)
    assert exited.value.code == 2
    assert f"{RENDERER_HELDOUT_SEED} is the held-out renderer catalogue" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_resumes_only_its_own_run_and_only_when_steps_are_left(tmp_path: Path) -> None:
    """The default checkpoint path is shared: a second run (other --extra, --seed or --init) resumed the
    first at its last step, trained nothing and exported the first run's weights under its own card."""
    import torch

    from shared.matting.train import TrainConfig, _fingerprint, start_state

    first = TrainConfig(steps=10, seed=1, train_images=4, batch=2)
    model, saved = start_state(first, tmp_path / "none.pt")
    assert saved is None
    checkpoint = tmp_path / "ck.pt"
    torch.save(
        {"model": model.state_dict(), "optimiser": {}, "step": 9, "config": _fingerprint(first)}, checkpoint
    )
    with pytest.raises(ValueError, match=r"is of another run \(its seed, extra_pairs differ\)"):
        start_state(
            TrainConfig(steps=10, seed=2, train_images=4, batch=2, extra_pairs=[tmp_path]), checkpoint
        )
    with pytest.raises(ValueError, match="has already trained 10 steps of --steps 10: nothing to train"):
        start_state(first, checkpoint)
    resumed, saved = start_state(TrainConfig(steps=20, seed=1, train_images=4, batch=2), checkpoint)
    assert saved is not None and saved["step"] == 9
    loaded, written = resumed.state_dict(), model.state_dict()
    assert all(torch.equal(loaded[key], written[key]) for key in written)
    with pytest.raises(ValueError, match=r"its freeze_batchnorm differ"):
        start_state(TrainConfig(steps=20, seed=1, train_images=4, batch=2, freeze_batchnorm=True), checkpoint)

    # The same --extra folder with corrected masks dropped into it is another run's data.
    extra = tmp_path / "extra"
    (extra / "masks").mkdir(parents=True)
    with_extra = TrainConfig(steps=10, seed=1, train_images=4, batch=2, extra_pairs=[extra])
    state = {"model": model.state_dict(), "optimiser": {}, "step": 3, "config": _fingerprint(with_extra)}
    torch.save(state, checkpoint)
    start_state(with_extra, checkpoint)
    (extra / "masks" / "corrected.png").write_bytes(b"mask")
    with pytest.raises(ValueError, match=r"its extra_pairs differ"):
        start_state(with_extra, checkpoint)


def test_a_resume_is_not_refused_for_files_training_does_not_read(tmp_path: Path) -> None:
    """A ``.partial-*`` file an interrupted atomic write left in an --extra folder (``matting pairs``,
    ``real-pairs``), or macOS's ``._NAME`` and ``__MACOSX``, changed the folder's fingerprint: the run
    resumed after they were cleaned away (or after one appeared) was refused as another run's."""
    import torch

    from shared.matting.train import TrainConfig, _fingerprint, start_state

    extra = tmp_path / "extra"
    (extra / "images").mkdir(parents=True)
    (extra / "masks").mkdir()
    (extra / "images" / "a.png").write_bytes(b"image")
    (extra / "masks" / "a.png").write_bytes(b"mask")
    config = TrainConfig(steps=10, seed=1, train_images=4, batch=2, extra_pairs=[extra])
    model, _ = start_state(config, None)
    checkpoint = tmp_path / "ck.pt"
    torch.save(
        {"model": model.state_dict(), "optimiser": {}, "step": 3, "config": _fingerprint(config)}, checkpoint
    )

    (extra / "masks" / ".partial-k2j4x9").write_bytes(b"half a mask")
    (extra / "images" / "._a.png").write_bytes(b"Finder's")
    (extra / "images" / "__MACOSX").mkdir()
    (extra / "images" / "__MACOSX" / "a.png").write_bytes(b"Finder's")
    _, saved = start_state(config, checkpoint)
    assert saved is not None and saved["step"] == 3
    # What training reads still counts.
    (extra / "masks" / "a.png").write_bytes(b"a corrected mask")
    with pytest.raises(ValueError, match=r"its extra_pairs differ"):
        start_state(config, checkpoint)


def test_the_matting_commands_refuse_bad_files_and_numbers_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: tracebacks for a file that is no model (MattingModelError, UnpicklingError with torch's
    # advice to load it unsafely, InvalidProtobuf), for --out under a file, for a malformed --held-out,
    # and `eval --n 0` printed a NaN mean IoU with exit 0.
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["eval", str(junk), "--n", "2"], "ONNX Runtime cannot load junk.onnx"),
        (["quantize", str(junk), "--out", str(tmp_path / "q.onnx")], "ONNX Runtime cannot load junk.onnx"),
        (
            ["export", str(junk), "--out", str(tmp_path / "e.onnx")],
            "not a weights file torch can load safely",
        ),
        (["train", "--init", str(junk)], "not a weights file torch can load safely"),
        (["pairs", "--n", "1", "--out", str(tmp_path / "a-file" / "x")], "is a file, not a folder"),
        (["eval", str(junk), "--n", "0"], "--n: must be at least 1, got 0"),
        (["train", "--lr", "inf"], "--lr: must be a number from 1e-09 to 1, got inf"),
        (["train", "--low-res-fraction", "1.5"], "--low-res-fraction: must be a number from 0 to 1"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exited:
            matting_cli(argv)
        assert exited.value.code == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "weights_only" not in err, (argv, err)


@pytest.mark.slow
def test_quantised_model_is_qdq_and_keeps_the_io(random_u2netp_onnx: Path, tmp_path: Path) -> None:
    import onnx

    from shared.matting.quantize import quantize_u2net

    int8 = quantize_u2net(random_u2netp_onnx, tmp_path / "int8.onnx", calibration_images=2)
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = U2NetPSession(int8, threads=1, use_gpu=False, max_batch=2)
    from PIL import Image

    results = session.predict([Image.new("RGB", (100, 80), "white"), Image.new("RGB", (64, 64), "red")])
    assert [r.mask.shape for r in results] == [(80, 100), (64, 64)]


def test_a_model_of_an_old_opset_is_quantised_into_one_that_runs(tmp_path: Path) -> None:
    """The official U2-NetP (and rembg's u2net.onnx) are opset 11: per-channel QDQ wrote
    DequantizeLinear nodes with an axis that opset does not have, and `matting quantize` ended, after
    calibrating, in a traceback: ONNX Runtime could not load the int8 model it had just made."""
    import onnxruntime as ort

    from shared.matting.quantize import quantize_u2net

    fp32 = tmp_path / "opset11.onnx"
    fp32.write_bytes(stand_in_onnx_bytes(size_px=320, opset=11, ir_version=6))  # as the official file
    int8 = quantize_u2net(fp32, tmp_path / "int8.onnx", calibration_images=2)
    from shared.matting.session import u2net_preprocess
    from shared.synth import render_dataset

    (photo,) = render_dataset(1, 7, size_px=128)  # another photo of the kind calibrated on
    inputs = {"input": u2net_preprocess([photo.image])}
    (expected,) = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(["d0"], inputs)
    (got,) = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(["d0"], inputs)
    assert got.shape == expected.shape and float(np.abs(got - expected).mean()) < 0.03


@pytest.mark.parametrize(("int8_iou", "code", "kept"), [(0.5, 1, b"int8 in service"), (0.9, 0, b"new int8")])
def test_quantize_replaces_the_model_at_out_only_when_the_new_one_is_accepted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    random_u2netp_onnx: Path,
    int8_iou: float,
    code: int,
    kept: bytes,
) -> None:
    """--out defaults to the committed int8 model: a rejected run must leave that model in place.

    Quantisation and the held-out evaluation take minutes (their own tests are above), so here they
    are stand-ins: the new model's bytes, and an IoU per file.
    """
    import shared.matting.quantize
    import shared.matting.train
    from shared.matting.train import Evaluation

    fp32, out = tmp_path / "fp32.onnx", tmp_path / "models" / "int8.onnx"
    fp32.write_bytes(random_u2netp_onnx.read_bytes())  # a model that opens: the command checks it first
    out.parent.mkdir()
    out.write_bytes(b"int8 in service")

    def quantize(fp32_path: Path, int8_path: Path, **_: object) -> Path:
        int8_path.write_bytes(b"new int8")
        return int8_path

    def evaluate(onnx_path: Path, n: int, seed: int, **_: object) -> Evaluation:
        iou = 0.9 if onnx_path == fp32 else int8_iou
        return Evaluation(mean_iou=iou, median_iou=iou, mae=0.1, n_images=n, ious=(iou,) * n)

    monkeypatch.setattr(shared.matting.quantize, "quantize_u2net", quantize)
    monkeypatch.setattr(shared.matting.train, "evaluate", evaluate)
    assert matting_cli(["quantize", str(fp32), "--out", str(out), "--heldout", "2"]) == code
    assert out.read_bytes() == kept
    assert list(out.parent.iterdir()) == [out]  # no candidate file left beside it


def test_quantize_refuses_an_int8_model_that_is_fine_on_average_but_breaks_a_photo(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    random_u2netp_onnx: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One held-out photo in 200 falling from IoU 0.95 to 0.3 costs the mean 0.003, within the half point
    the mean may lose: the int8 model was accepted, and served a cut-apart product for that photo's kind.
    The evaluation is a stand-in (a minute per model, tested above): an IoU per photo."""
    import shared.matting.quantize
    import shared.matting.train
    from shared.matting.train import Evaluation

    fp32, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    fp32.write_bytes(random_u2netp_onnx.read_bytes())
    out.write_bytes(b"int8 in service")

    def quantize(fp32_path: Path, int8_path: Path, **_: object) -> Path:
        int8_path.write_bytes(b"new int8")
        return int8_path

    def evaluate(onnx_path: Path, n: int, seed: int, **_: object) -> Evaluation:
        ious = [0.95] * n
        if onnx_path != fp32:
            ious[17] = 0.3
        mean = round(sum(ious) / n, 4)
        return Evaluation(mean_iou=mean, median_iou=0.95, mae=0.1, n_images=n, ious=tuple(ious))

    monkeypatch.setattr(shared.matting.quantize, "quantize_u2net", quantize)
    monkeypatch.setattr(shared.matting.train, "evaluate", evaluate)
    assert matting_cli(["quantize", str(fp32), "--out", str(out), "--heldout", "200"]) == 1
    assert out.read_bytes() == b"int8 in service"
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["accepted"] is False
    assert report["heldout_worst_iou_drop"] == 0.65 and report["heldout_worst_image"] == 17
    assert "1 of 200 photos lost more than 0.1 IoU (worst: photo 17, 0.950 to 0.300)" in captured.err
    # The limit is the operator's to set: a looser one keeps the model.
    args = ["quantize", str(fp32), "--out", str(out), "--heldout", "200", "--image-drop-max", "0.7"]
    assert matting_cli(args) == 0
    assert out.read_bytes() == b"new int8"


def test_the_committed_int8_model_is_only_replaced_by_the_int8_copy_of_the_committed_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    random_u2netp_onnx: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--out defaults to the committed int8 model, served as u2netp-int8 beside u2netp (the committed
    fp32 model it is the int8 copy of). `quantize var/matting/u2netp-trained.onnx`, or the official
    model, replaced it with another model's int8 copy, accepted against that other model's fp32."""
    import onnx

    import services.matting.cli
    import shared.matting.quantize
    import shared.matting.train
    from shared.matting.train import Evaluation

    models = tmp_path / "models"
    models.mkdir()
    committed, served = models / "u2netp-skuforge.onnx", models / "u2netp-skuforge-int8.onnx"
    committed.write_bytes(random_u2netp_onnx.read_bytes())
    served.write_bytes(b"int8 in service")
    other = tmp_path / "u2netp-trained.onnx"
    another = onnx.load_from_string(random_u2netp_onnx.read_bytes())
    another.doc_string = "another model"
    other.write_bytes(another.SerializeToString())

    def quantize(fp32_path: Path, int8_path: Path, **_: object) -> Path:
        int8_path.write_bytes(b"int8 of " + fp32_path.name.encode())
        return int8_path

    def evaluate(onnx_path: Path, n: int, seed: int, **_: object) -> Evaluation:
        return Evaluation(mean_iou=0.9, median_iou=0.9, mae=0.1, n_images=n, ious=(0.9,) * n)

    monkeypatch.setattr(services.matting.cli, "MODELS_DIR", models)
    monkeypatch.setattr(shared.matting.quantize, "quantize_u2net", quantize)
    monkeypatch.setattr(shared.matting.train, "evaluate", evaluate)
    with pytest.raises(SystemExit) as exited:
        matting_cli(["quantize", str(other), "--heldout", "2"])
    assert exited.value.code == 2
    assert "is the committed int8 model, the int8 copy of" in capsys.readouterr().err
    assert served.read_bytes() == b"int8 in service"
    # The committed model itself, or elsewhere: as before.
    assert matting_cli(["quantize", str(committed), "--heldout", "2"]) == 0
    assert served.read_bytes() == b"int8 of u2netp-skuforge.onnx"
    assert matting_cli(["quantize", str(other), "--out", str(tmp_path / "int8.onnx"), "--heldout", "2"]) == 0


@pytest.mark.parametrize("action", ["eval", "quantize"])
def test_an_onnx_model_that_is_not_u2net_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    """The check only opened the session: a model with other inputs passed, rendered or calibrated for
    minutes, and ended in a traceback. It runs one blank image now."""
    import onnx
    from onnx import TensorProto, helper

    # An image in (3 channels second, as the input check wants since 18adab8), a number out.
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        "not-u2net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    argv = (
        ["eval", str(model), "--n", "1"]
        if action == "eval"
        else ["quantize", str(model), "--out", str(tmp_path / "q.onnx")]
    )
    with pytest.raises(SystemExit) as exited:
        matting_cli(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "does not run as" in err and "Traceback" not in err
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.slow
def test_committed_u2netp_reaches_the_heldout_iou() -> None:
    """The committed model on held-out renderer photos (other products than training), seeded subset."""
    evaluation = evaluate(FP32, n=60, seed=9001)
    assert evaluation.mean_iou >= 0.93, evaluation


@pytest.mark.slow
def test_committed_int8_model_keeps_the_iou_of_fp32() -> None:
    fp32 = evaluate(FP32, n=40, seed=9002)
    int8 = evaluate(INT8, n=40, seed=9002)
    assert int8.mean_iou >= fp32.mean_iou - 0.01, (fp32, int8)
    card = json.loads(FP32.with_suffix(".json").read_text())
    assert card["heldout_mean_iou"] >= 0.95 and card["heldout_images"] >= 200


def test_export_cli_turns_reference_weights_into_a_servable_onnx(tmp_path: Path) -> None:
    import torch

    from shared.matting.u2net import U2NETP

    weights = tmp_path / "u2netp.pth"
    # As the official checkpoints may be saved: from a DataParallel wrapper, keys prefixed "module.".
    torch.save({f"module.{k}": v for k, v in U2NETP().state_dict().items()}, weights)
    out = tmp_path / "u2netp.onnx"
    assert matting_cli(["export", str(weights), "--model", "u2netp", "--out", str(out)]) == 0
    from PIL import Image

    result = U2NetPSession(out, threads=1, use_gpu=False).predict([Image.new("RGB", (50, 40), "blue")])[0]
    assert result.mask.shape == (40, 50)


def test_export_cli_averages_checkpoints(tmp_path: Path) -> None:
    import torch

    from shared.matting.u2net import U2NETP, average_weights, read_weights

    torch.manual_seed(0)
    first, second = U2NETP().state_dict(), U2NETP().state_dict()
    # One as a plain state dict, one as a 'matting train' checkpoint.
    torch.save(first, tmp_path / "a.pth")
    torch.save({"model": second, "optimiser": {}, "step": 9}, tmp_path / "b.pt")
    mean = average_weights([tmp_path / "a.pth", tmp_path / "b.pt"])
    key = "stage1.rebnconvin.conv_s1.weight"
    assert torch.allclose(mean[key], (first[key] + second[key]) / 2)
    assert not torch.equal(first[key], second[key])
    assert torch.equal(
        mean["stage1.rebnconvin.bn_s1.num_batches_tracked"],
        second["stage1.rebnconvin.bn_s1.num_batches_tracked"],
    )

    out, pth = tmp_path / "mean.onnx", tmp_path / "mean.pth"
    code = matting_cli(
        ["export", str(tmp_path / "a.pth"), str(tmp_path / "b.pt"), "--out", str(out), "--pth", str(pth)]
    )
    assert code == 0 and out.is_file()
    assert torch.equal(read_weights(pth)[key], mean[key])

    torch.save({"other": torch.zeros(1)}, tmp_path / "c.pth")
    with pytest.raises(SystemExit):
        matting_cli(["export", str(tmp_path / "a.pth"), str(tmp_path / "c.pth"), "--out", str(out)])


def test_calibration_photos_are_the_folders_photos_decoded_as_inference_decodes_them(tmp_path: Path) -> None:
    """Every file went through Image.open(...).convert("RGB"): a pairs.json or .DS_Store beside the
    photos crashed the run after the renderer photos were made, and a cut-out's transparent pixels
    were calibrated as their hidden colour (black) where inference sees white."""
    from PIL import Image

    from shared.matting.quantize import CalibrationPhotoError, calibration_photos

    folder = tmp_path / "photos"
    (folder / "masks").mkdir(parents=True)
    cutout = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    cutout.paste((200, 30, 30, 255), (10, 5, 30, 25))
    cutout.save(folder / "cutout.png")
    (folder / "pairs.json").write_text("{}")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    photos = calibration_photos(0, 1, [folder], n_real=8)
    assert len(photos) == 1 and photos[0].mode == "RGB"
    assert photos[0].getpixel((0, 0)) == (255, 255, 255) and photos[0].getpixel((20, 15)) == (200, 30, 30)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(CalibrationPhotoError, match=r"broken\.jpg cannot be used"):
        calibration_photos(0, 1, [folder], n_real=8)


def test_calibration_reads_the_photos_ingest_reads_and_names_the_heic_it_cannot(tmp_path: Path) -> None:
    """.jfif and .jpe (JPEG as Chrome and Windows save it), photos ingest takes, and an iPhone's .heic
    were all skipped without a word: the int8 model was calibrated on fewer real photos than asked."""
    from PIL import Image

    from shared.matting.quantize import CalibrationPhotoError, calibration_photos

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chrome.jfif", "windows.jpe"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / name, "JPEG")
    assert len(calibration_photos(0, 1, [folder], n_real=8)) == 2
    (folder / "iphone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(CalibrationPhotoError, match=r"iphone\.HEIC: HEIC/HEIF is not read here; export it"):
        calibration_photos(0, 1, [folder], n_real=8)


def test_a_torn_or_foreign_checkpoint_is_a_clear_refusal(tmp_path: Path) -> None:
    """A run killed mid-save left a torn file (torch.save wrote in place), and a plain .pth given as
    --checkpoint: both were tracebacks (RuntimeError, KeyError 'step'), the CLI catching only ValueError."""
    import torch

    from shared.matting.train import TrainConfig, start_state
    from shared.matting.u2net import build_model

    config = TrainConfig(steps=10, seed=1, train_images=4, batch=2)
    whole = tmp_path / "whole.pt"
    torch.save({"model": build_model("u2netp").state_dict(), "optimiser": {}, "step": 3}, whole)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"--checkpoint {torn} cannot be read"):
        start_state(config, torn)
    plain = tmp_path / "plain.pth"
    torch.save(build_model("u2netp").state_dict(), plain)
    with pytest.raises(ValueError, match="is not a checkpoint of `matting train`"):
        start_state(config, plain)


def test_matting_tools_refuse_what_would_overwrite_or_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from shared.matting import MODELS_DIR
    from shared.matting.quantize import CalibrationPhotoError, calibration_photos
    from shared.matting.u2net import build_model

    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exited:
            matting_cli(argv)
        assert exited.value.code == 2
        return capsys.readouterr().err

    # The model card and weights are written beside --out: m.pth or m.json was overwritten by them.
    assert "name the ONNX model" in refused(["train", "--out", str(tmp_path / "m.pth")])
    # The default once: a bare `matting train --extra DIR` replaced the served model and its card.
    # (--extra names no folder: should the check go, the run stops there instead of training.)
    assert "that is the committed models folder" in refused(
        ["train", "--out", str(MODELS_DIR / "u2netp-skuforge.onnx"), "--extra", str(tmp_path / "none")]
    )
    # Pairs are named by index: a second, smaller run left the first one's extra pairs to train on.
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.txt").write_text("")
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "images" / "composite-0000.png").write_bytes(b"x")
    assert "holds pairs of an earlier run" in refused(
        ["real-pairs", "--dataset", str(dataset), "--out", str(pairs)]
    )
    # The pseudo-labeller is the official model: another file is refused as set-up refuses it.
    fake = tmp_path / "fake-official.onnx"
    fake.write_bytes(b"not the official weights")
    assert "is not the official U2-NetP's" in refused(
        ["real-pairs", "--dataset", str(dataset), "--official", str(fake), "--out", str(tmp_path / "new")]
    )
    # Accepted, the int8 model replaced the fp32 one it was made from.
    model = MODELS_DIR / "u2netp-skuforge.onnx"
    assert "is the model being quantised" in refused(["quantize", str(model), "--out", str(model)])
    # A wrapper with more than tensors: export crashed with an AttributeError.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": build_model("u2netp").state_dict(), "epoch": 3}, wrapped)
    assert matting_cli(["export", str(wrapped), "--out", str(tmp_path / "w.onnx")]) == 0
    capsys.readouterr()
    odd = tmp_path / "odd.pth"
    torch.save({**build_model("u2netp").state_dict(), "epoch": 3}, odd)
    assert "not a state dict of tensors (these entries are not: epoch)" in refused(
        ["export", str(odd), "--out", str(tmp_path / "o.onnx")]
    )
    # The folder `train --extra` takes holds its photos under images/: none were calibrated on.
    (tmp_path / "real-pairs" / "images").mkdir(parents=True)
    with pytest.raises(CalibrationPhotoError, match="no photo directly in"):
        calibration_photos(0, 1, [tmp_path / "real-pairs"], 4)


def test_int8_is_judged_on_the_mean_and_on_each_photo() -> None:
    from shared.matting.quantize import judge_int8

    fp32 = [0.95] * 200
    assert judge_int8(fp32, [0.946] * 200).accepted  # 0.4 points lost everywhere: within both limits
    mean_only = judge_int8(fp32, [0.94] * 200)
    assert (mean_only.accepted, mean_only.images_over_drop_max) == (False, 0)
    assert mean_only.reason == "mean IoU fell 0.0100 (at most 0.005)"
    one_broken = judge_int8(fp32, [0.95] * 199 + [0.3])
    assert (one_broken.accepted, one_broken.worst_image, one_broken.images_over_drop_max) == (False, 199, 1)
    with pytest.raises(ValueError, match="same held-out photos"):
        judge_int8(fp32, [0.95] * 199)


def test_eval_tells_how_far_it_is_on_stderr_and_keeps_its_result_line_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`eval --n 200` printed nothing for minutes, as if it hung."""
    assert matting_cli(["eval", str(FP32), "--n", "3"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_images"] == 3  # stdout: the one JSON line, as before
    assert "skuforge matting eval: 3/3 photos, mean IoU so far " in captured.err


@pytest.mark.slow
def test_train_tells_how_far_its_held_out_eval_is_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After its last step, train evaluated its model on --heldout photos (200 by default) for minutes
    without a word, as `eval` did before it told how far it was."""
    out = tmp_path / "tiny.onnx"
    argv = [
        "train",
        "--steps",
        "1",
        *TINY_TRAINING,
        "--out",
        str(out),
        "--checkpoint",
        str(tmp_path / "ck.pt"),
    ]
    assert matting_cli(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["onnx"] == str(out)  # stdout: the one JSON line, as before
    assert "skuforge matting train held-out eval: 2/2 photos, mean IoU so far " in captured.err


def test_quantize_tells_how_far_its_fp32_and_int8_evals_are_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """quantize evaluates the fp32 model and then its int8 copy on --heldout photos (200 each by default):
    minutes without a word after calibrating."""
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(stand_in_onnx_bytes(size_px=320))
    argv = [
        "quantize",
        str(fp32),
        "--out",
        str(tmp_path / "int8.onnx"),
        "--calibration",
        "2",
        "--heldout",
        "2",
    ]
    matting_cli(argv)  # kept or not: either way both models were evaluated
    captured = capsys.readouterr()
    assert "heldout_iou_int8" in json.loads(captured.out)  # stdout: the one JSON line, as before
    assert "skuforge matting quantize fp32 eval: 2/2 photos, mean IoU so far " in captured.err
    assert "skuforge matting quantize int8 eval: 2/2 photos, mean IoU so far " in captured.err
