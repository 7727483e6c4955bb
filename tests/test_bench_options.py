"""Benchmark command lines: options that would overwrite committed figures or fail only after the run
are refused up front. Cheap: no dataset, no model run (the long work is replaced by a stub that fails)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Main = Callable[[list[str]], int]


class _RunStarted(Exception):
    """The options were accepted and the long work began."""


def _refuse_to_run(*args: object, **kwargs: object) -> None:
    raise _RunStarted


def _refused(main: Main, argv: list[str], capsys: pytest.CaptureFixture[str], says: str = "") -> None:
    """``main(argv)`` stops with a usage error (exit 2) whose message holds ``says``."""
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and says in capsys.readouterr().err


def _goes_ahead(main: Main, argv: list[str]) -> None:
    """``main(argv)`` accepts the options: the long work (a stub) begins."""
    with pytest.raises(_RunStarted):
        main(argv)


def _needs_its_own_out(
    main: Main, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``argv`` is not the committed run: refused without ``--out`` (its figures would replace the
    committed file) and with a folder as ``--out`` (IsADirectoryError after the whole run); with a file
    of its own it goes ahead."""
    _refused(main, argv, capsys, "give --out")
    _refused(main, [*argv, "--out", str(tmp_path)], capsys)
    _goes_ahead(main, [*argv, "--out", str(tmp_path / "figures.json")])


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """``subprocess.run`` succeeds without running anything (bench.matting checks rembg's venv with it)."""
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0))


def test_an_edge_recolour_smoke_run_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --classes N (the docstring's smoke run) wrote a few classes' figures over the committed
    # bench/results/edge_recolour.json, which docs/evaluation.md cites.
    from bench import augment, edge_recolour

    (tmp_path / "train.txt").write_text("")
    monkeypatch.setattr(augment, "read_grocery", _refuse_to_run)
    argv = ["--dataset", str(tmp_path), "--classes", "2"]
    _refused(edge_recolour.main, argv, capsys, "give --out")
    _goes_ahead(edge_recolour.main, [*argv, "--out", str(tmp_path / "smoke.json")])  # its own --out


@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/in-the-way/edge_recolour.json"])
def test_the_edge_recolour_bench_checks_out_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    # A folder, or a file where its folder goes: IsADirectoryError / FileExistsError after every class
    # was composited, matted and gated twice, nothing written.
    from bench import augment, edge_recolour

    (tmp_path / "train.txt").write_text("")
    (tmp_path / "in-the-way").write_text("mine\n")
    monkeypatch.setattr(augment, "read_grocery", _refuse_to_run)
    argv = ["--dataset", str(tmp_path), "--out"]
    _refused(edge_recolour.main, [*argv, out.format(tmp=tmp_path)], capsys, "--out")
    _goes_ahead(edge_recolour.main, [*argv, str(tmp_path / "new" / "edge_recolour.json")])


@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/in-the-way/augment.json"])
def test_the_augment_bench_checks_out_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    # A folder, or a file where its folder goes: IsADirectoryError / FileNotFoundError when the results
    # were written, after the generation and every evaluation (an hour's run), nothing written.
    from bench import augment

    (tmp_path / "in-the-way").write_text("mine\n")
    monkeypatch.setattr(augment, "read_grocery", _refuse_to_run)
    argv = ["--dataset", str(tmp_path), "--split", "val", "--out"]
    _refused(augment.main, [*argv, out.format(tmp=tmp_path)], capsys, f"--out {out.format(tmp=tmp_path)}: ")
    _goes_ahead(augment.main, [*argv, str(tmp_path / "new" / "augment.json")])  # a folder yet to be made


@pytest.mark.parametrize("module", ["augment", "edge_recolour"])
@pytest.mark.parametrize("side_px", ["1", "63", "2049"])
def test_a_composite_bench_refuses_a_size_the_composite_backend_would_refuse(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    side_px: str,
) -> None:
    # --size took any positive number: 63 read the dataset and then every composite failed with
    # CompositeError "size must be at least 64 px"; 100000 asked the backend for a canvas of tens of GB.
    import importlib

    from bench import augment

    bench = importlib.import_module(f"bench.{module}")
    (tmp_path / "train.txt").write_text("")
    monkeypatch.setattr(augment, "read_grocery", _refuse_to_run)
    argv = (
        ["--dataset", str(tmp_path), "--split", "val"]
        if module == "augment"
        else ["--dataset", str(tmp_path)]
    )
    argv += ["--out", str(tmp_path / "new" / "out.json")]
    _refused(bench.main, [*argv, "--size", side_px], capsys, "--size: must be from 64 to 2048")
    _goes_ahead(bench.main, [*argv, "--size", "64"])


def _matting_real_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """bench.matting_real's arguments with a stand-in dataset and models, its checksum check off."""
    import shared.matting.official

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "val.txt").write_text("")
    models = []
    for option in ("--ours", "--ours-int8", "--official"):
        model = tmp_path / f"{option.strip('-')}.onnx"
        model.write_bytes(b"onnx")
        models += [option, str(model)]
    monkeypatch.setattr(shared.matting.official, "verify_md5", lambda *args, **kwargs: None)
    out = ["--out", str(tmp_path / "real.json")]
    return ["--dataset", str(tmp_path / "dataset"), *models, "--renderer", "0", *out]


@pytest.mark.parametrize(
    "options",
    [
        ["--out", "{tmp}"],  # a folder
        ["--out", "{tmp}/in-the-way/real.json"],  # a file where its folder goes
        ["--sheet", "{tmp}/sheet"],  # no suffix: Pillow cannot tell the format
        ["--sheet", "{tmp}/in-the-way/sheet.png"],
        ["--threads", "0"],
    ],
)
def test_matting_real_refuses_what_would_fail_only_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    # Each was a traceback after every model had scored every photo (the --threads one after the
    # photos were read): FileNotFoundError, IsADirectoryError, Pillow's "unknown file extension".
    from bench import matting_real

    (tmp_path / "in-the-way").write_text("mine\n")
    argv = _matting_real_argv(tmp_path, monkeypatch)
    monkeypatch.setattr(matting_real, "load_items", _refuse_to_run)
    _refused(matting_real.main, [*argv, *(option.format(tmp=tmp_path) for option in options)], capsys)


def test_matting_real_makes_a_missing_out_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `--out var/tries/real.json` scored everything, then ended in FileNotFoundError: nothing written.
    import json

    from bench import matting_real

    argv = _matting_real_argv(tmp_path, monkeypatch)
    items = [
        {"id": "a", "kind": "catalogue", "pristine": False},
        {"id": "b", "kind": "instore", "pristine": False},
    ]
    monkeypatch.setattr(matting_real, "load_items", lambda dataset: items)
    monkeypatch.setattr(matting_real, "score", lambda model, label, items, threads: [0.9, 0.8])
    out = tmp_path / "tries" / "real.json"
    assert matting_real.main([*argv, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["real_iou_ours"] == 0.85


def test_matting_real_scores_the_official_bytes_whose_md5_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The md5 was checked on the bytes read, then each model was opened by its path to be scored: an
    # official file replaced after the check was the baseline of the committed figures unchecked.
    import json
    from types import SimpleNamespace

    import shared.matting.official
    import shared.matting.train
    from bench import matting_real

    argv = _matting_real_argv(tmp_path, monkeypatch)
    official = tmp_path / "official.onnx"
    checked: list[bytes] = []

    def check_then_replace(data: bytes, **kwargs: object) -> None:
        checked.append(data)
        official.write_bytes(b"replaced after the check")

    monkeypatch.setattr(shared.matting.official, "verify_md5", check_then_replace)
    items = [
        {"id": "a", "kind": "catalogue", "pristine": False},
        {"id": "b", "kind": "instore", "pristine": False},
    ]
    monkeypatch.setattr(matting_real, "load_items", lambda dataset: items)
    scored: dict[str, Path | bytes] = {}
    held_out: list[Path | bytes] = []

    def score(model: Path | bytes, label: str, items: object, threads: int) -> list[float]:
        scored[label] = model
        return [0.9, 0.8]

    def evaluate(model: Path | bytes, n: int, seed: int, **kwargs: object) -> SimpleNamespace:
        held_out.append(model)
        return SimpleNamespace(mean_iou=0.9)

    monkeypatch.setattr(matting_real, "score", score)
    monkeypatch.setattr(shared.matting.train, "evaluate", evaluate)
    out = tmp_path / "real.json"
    assert matting_real.main([*argv[:-4], "--renderer", "1", "--out", str(out)]) == 0

    assert checked == [b"onnx"]
    assert scored["official"] == b"onnx"
    assert held_out[-1] == b"onnx"  # the official runs last, as it is listed
    assert json.loads(out.read_text())["models"]["official"] == "official.onnx (4 bytes)"


@pytest.mark.parametrize("options", [["--ours", "{tmp}/candidate.onnx"], ["--renderer", "0"]])
def test_a_matting_real_run_of_another_model_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    # `--ours var/matting/candidate.onnx` (how a candidate is scored) or `--renderer 0` scored every
    # photo, then wrote over the committed bench/results/matting_real.json that docs/matting.md cites.
    from bench import matting_real

    _matting_real_argv(tmp_path, monkeypatch)  # the stand-in dataset and official model
    (tmp_path / "candidate.onnx").write_bytes(b"onnx")
    monkeypatch.setattr(matting_real, "load_items", _refuse_to_run)
    documented = ["--dataset", str(tmp_path / "dataset"), "--official", str(tmp_path / "official.onnx")]
    _goes_ahead(matting_real.main, documented)  # the committed models, every figure: the committed file's run
    argv = [*documented, *(option.format(tmp=tmp_path) for option in options)]
    _needs_its_own_out(matting_real.main, argv, tmp_path, capsys)


@pytest.mark.parametrize(
    "options",
    [
        ["--seed", "-1"],  # numpy's "expected non-negative integer", after the good images were matted
        ["--size", "32"],  # the renderer's "size_px must be at least 64"
        ["--out", "{tmp}"],  # a folder: IsADirectoryError after the whole run
        ["--out", "{tmp}/in-the-way/gate.json"],
    ],
)
def test_the_gate_bench_refuses_what_would_fail_only_after_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    from bench import gate

    (tmp_path / "in-the-way").write_text("mine\n")
    monkeypatch.setattr(gate, "open_tool_session", _refuse_to_run)
    argv = ["--source", "renderer", "--out", str(tmp_path / "gate.json")]
    _refused(gate.main, [*argv, *(option.format(tmp=tmp_path) for option in options)], capsys)


@pytest.mark.parametrize(
    "options", [["--n", "3"], ["--model", "var/matting/candidate.onnx"], ["--source", "renderer"]]
)
def test_a_gate_bench_run_other_than_the_documented_one_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    # A smoke run (--n 3), another matting model or a renderer-only run wrote over the committed
    # bench/results/gate.json, whose 100-image composite figures docs/gate-and-trainstore.md cites.
    from bench import gate

    monkeypatch.setattr(gate, "open_tool_session", _refuse_to_run)
    _goes_ahead(gate.main, [])  # `python -m bench.gate`, as `make bench` runs it: the committed file
    _needs_its_own_out(gate.main, options, tmp_path, capsys)


@pytest.mark.usefixtures("no_subprocess")
def test_the_matting_bench_keeps_another_models_figures_apart_and_checks_its_files_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --fp32 var/matting/u2netp-trained.onnx ran every round, then wrote its figures over the
    # committed bench/results/matting.json, which named no model; a missing --weights failed in
    # round 1's torch worker, after the ONNX Runtime workers had run.
    from bench import matting

    monkeypatch.setattr(matting, "_run_worker", _refuse_to_run)
    trained = tmp_path / "trained.onnx"
    trained.write_bytes(b"onnx")
    _needs_its_own_out(matting.main, ["--fp32", str(trained)], tmp_path, capsys)
    missing_weights = ["--weights", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "m.json")]
    _refused(matting.main, missing_weights, capsys, "missing.pth is not a file")


@pytest.mark.parametrize(
    ("module", "long_work"),
    [("scale", "machine"), ("store", "build_store"), ("matting_memory", "_child")],
)
@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/in-the-way/figures.json"])
def test_scale_store_and_matting_memory_benches_check_out_before_they_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    long_work: str,
    out: str,
) -> None:
    # A folder, or a file where its folder goes: IsADirectoryError / FileExistsError after the whole
    # run (minutes of Kafka rounds, store loads or matting children), nothing written.
    import importlib

    bench = importlib.import_module(f"bench.{module}")
    (tmp_path / "in-the-way").write_text("mine\n")
    monkeypatch.setattr(bench, long_work, _refuse_to_run)
    _refused(bench.main, ["--out", out.format(tmp=tmp_path)], capsys)
    _goes_ahead(bench.main, ["--out", str(tmp_path / "new" / "figures.json")])  # a folder yet to be made


def test_a_plain_matting_memory_run_does_not_replace_the_committed_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The committed bench/results/matting_memory.json is a `--before DIR --speed-rounds 3` run: its
    # before/after figures and speed are what docs/matting.md cites. A plain run replaced it with
    # "after" figures alone.
    from bench import matting_memory

    monkeypatch.setattr(matting_memory, "_child", _refuse_to_run)
    before = tmp_path / "before"
    (before / "services" / "matting").mkdir(parents=True)
    (before / "services" / "matting" / "stage.py").write_text("")
    for other_kind in ([], ["--speed-rounds", "3"], ["--before", str(before), "--speed-rounds", "1"]):
        _needs_its_own_out(matting_memory.main, other_kind, tmp_path, capsys)
    # The committed run's kind: it may replace the committed file.
    _goes_ahead(matting_memory.main, ["--before", str(before), "--speed-rounds", "3"])


@pytest.mark.parametrize("before", ["{tmp}/missing", "{tmp}/empty", "{tmp}/a-file"])
def test_matting_memory_refuses_a_before_that_is_no_checkout_before_any_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], before: str
) -> None:
    # A missing folder was a FileNotFoundError as the first child started; an empty one ran, and its
    # "before" figures were those of whatever checkout the interpreter had installed.
    from bench import matting_memory

    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("mine\n")
    monkeypatch.setattr(matting_memory, "_child", _refuse_to_run)
    folder = before.format(tmp=tmp_path)
    argv = ["--before", folder, "--out", str(tmp_path / "memory.json")]
    _refused(matting_memory.main, argv, capsys, f"--before {folder}: no services/matting/stage.py there")


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_matting_memory_refuses_threads_below_one_before_any_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], threads: str
) -> None:
    # `--threads 0` started the first child, which failed in load_settings: a RuntimeError with the
    # child's traceback, not a usage error.
    from bench import matting_memory

    monkeypatch.setattr(matting_memory, "_child", _refuse_to_run)
    argv = ["--threads", threads, "--out", str(tmp_path / "memory.json")]
    _refused(matting_memory.main, argv, capsys, f"must be from 1 to 256, got {threads}")


@pytest.mark.usefixtures("no_subprocess")
def test_a_full_matting_run_refuses_a_batch_it_would_not_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `python -m bench.matting --batch 4` ran every configuration at batches 1 and 8, as without it.
    from bench import matting

    monkeypatch.setattr(matting, "_run_worker", _refuse_to_run)
    out = ["--out", str(tmp_path / "matting.json")]
    _refused(matting.main, ["--batch", "4", *out], capsys, "batches 1 and 8")
    _goes_ahead(matting.main, out)  # without it: the rounds go ahead


@pytest.mark.parametrize("timeout_ms", ["3000", "0", "-1"])
def test_the_scale_bench_refuses_a_session_timeout_its_members_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], timeout_ms: str
) -> None:
    # Only the kill round, the last, uses it: the members' settings refused it (at least 6000, the
    # broker's minimum) after minutes of throughput and join rounds, in a ConfigError traceback.
    from bench import scale

    monkeypatch.setattr(scale, "machine", _refuse_to_run)
    argv = ["--out", str(tmp_path / "scale.json"), "--session-timeout-ms"]
    _refused(scale.main, [*argv, timeout_ms], capsys, "--session-timeout-ms: must be from 6000")
    _goes_ahead(scale.main, [*argv, "6000"])  # the broker's minimum


@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/in-the-way/captioner.json"])
def test_the_captioner_bench_checks_its_out_before_it_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    # Its --out was never checked: a folder failed in IsADirectoryError after the scoring.
    import shared.matting.session
    from bench import captioner

    (tmp_path / "in-the-way").write_text("mine\n")
    monkeypatch.setattr(shared.matting.session, "open_session", _refuse_to_run)
    _refused(captioner.main, ["--out", out.format(tmp=tmp_path)], capsys, "--out")
    _goes_ahead(
        captioner.main, ["--out", str(tmp_path / "new" / "captioner.json")]
    )  # a folder yet to be made


def test_an_adapters_smoke_run_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # bench.adapters had no --out: `--rounds 1 --repeats 2` to try a change wrote over the committed
    # bench/results/adapters.json, whose three-round figures docs/diffusion.md cites.
    import bench.tiny_diffusion
    from bench import adapters

    monkeypatch.setattr(bench.tiny_diffusion, "build_tiny_inpaint_pipeline", _refuse_to_run)
    _needs_its_own_out(adapters.main, ["--rounds", "1", "--repeats", "2"], tmp_path, capsys)
    _goes_ahead(adapters.main, [])  # `python -m bench.adapters`, as `make bench` runs it


def test_a_composite_only_generation_run_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --no-diffusion wrote a file without the diffusion and LoRA-switch figures over the committed
    # bench/results/generation.json, which docs/diffusion.md cites.
    from bench import generation

    monkeypatch.setattr(generation, "bench_backend", _refuse_to_run)
    _needs_its_own_out(generation.main, ["--no-diffusion"], tmp_path, capsys)


def test_a_generation_smoke_run_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only --no-diffusion needed --out: `--images 2 --rounds 1` to try a change wrote over the committed
    # bench/results/generation.json, the three-round run of `make bench` that docs/diffusion.md cites.
    from bench import generation

    monkeypatch.setattr(generation, "bench_backend", _refuse_to_run)
    _needs_its_own_out(generation.main, ["--images", "2", "--rounds", "1"], tmp_path, capsys)
    _refused(generation.main, ["--diffusion-images", "2"], capsys, "--diffusion-images")
    _goes_ahead(generation.main, [])  # `python -m bench.generation`, as `make bench` runs it


def test_a_bus_smoke_run_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # bench.bus had no --out: `--events 1000` to try a change wrote over the committed
    # bench/results/bus.json, the 20,000-event, three-round run of `make bench`.
    from bench import bus

    monkeypatch.setattr(bus, "LocalKafka", _refuse_to_run)
    _needs_its_own_out(bus.main, ["--events", "1000", "--rounds", "1"], tmp_path, capsys)
    _goes_ahead(bus.main, [])  # `python -m bench.bus`, as `make bench` runs it


@pytest.mark.usefixtures("no_subprocess")
@pytest.mark.parametrize(
    ("module", "long_work", "smoke"),
    [
        ("matting", "_run_worker", ["--rounds", "1", "--images", "8"]),
        ("matting", "_run_worker", ["--heldout", "10"]),
        ("matting_memory", "_child", ["--config", "1mp_x1"]),
        ("matting_memory", "_child", ["--threads", "1"]),
        # bench/results/scale.json and store.json, which docs/deploy.md, docs/ops.md and
        # docs/gate-and-trainstore.md cite, were written over by any run.
        ("scale", "machine", ["--images", "4"]),
        ("store", "build_store", ["--items", "1000"]),
    ],
)
def test_a_smoke_run_does_not_replace_the_committed_figures(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    long_work: str,
    smoke: list[str],
) -> None:
    # Fewer rounds, images or configurations wrote over the committed bench/results/matting.json and
    # matting_memory.json, whose figures docs/matting.md cites; matting.py's --out a folder failed after
    # every round.
    import importlib

    bench = importlib.import_module(f"bench.{module}")
    monkeypatch.setattr(bench, long_work, _refuse_to_run)
    _needs_its_own_out(bench.main, smoke, tmp_path, capsys)


@pytest.mark.parametrize(
    ("option", "side_px", "says"),
    [
        ("--size", "0", "must be from 64 to 2048"),
        ("--size", "63", "must be from 64 to 2048"),
        ("--size", "4096", "must be from 64 to 2048"),
        ("--diffusion-size", "0", "must be a multiple of 8 from 64 to 2048"),
        ("--diffusion-size", "56", "must be a multiple of 8 from 64 to 2048"),
        ("--diffusion-size", "65", "must be a multiple of 8 from 64 to 2048"),
        ("--diffusion-size", "4096", "must be a multiple of 8 from 64 to 2048"),
    ],
)
def test_the_generation_bench_refuses_a_size_the_backend_would_refuse(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    side_px: str,
    says: str,
) -> None:
    # --diffusion-size 0 ran the composite rounds, then ended in RuntimeError "some variants were
    # refused" (size must be from 1 to 2048 px), nothing written. --size 63 passed the server's 1 to
    # 2048 but the composite backend refuses below 64, and --diffusion-size 65 the diffusion backend
    # (a multiple of 8, at least 64): the same RuntimeError, after the server had started.
    from bench import generation

    monkeypatch.setattr(generation, "bench_backend", _refuse_to_run)
    argv = ["--out", str(tmp_path / "generation.json")]
    _refused(generation.main, [*argv, option, side_px], capsys, says)
    _goes_ahead(generation.main, [*argv, option, "64"])  # the smallest side both backends draw
    _goes_ahead(generation.main, [*argv, option, "2048"])  # the largest side a request may ask for


def test_the_lora_switch_figures_time_requests_that_switch_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one adapter loaded, every "switch" request asked for the adapter already active: the
    # committed lora_switch_s "1" compared two timings of the same request (0.63 s against 0.73 s).
    import time

    import bench.tiny_diffusion
    import shared.generation.adapters
    import shared.generation.diffusion
    from bench import generation
    from shared.generation.backend import GenerationRequest

    switch_s = 0.05

    class SwitchingCostsTime:
        """A backend whose only cost is changing adapter: a switch takes ``switch_s``, a request on
        the adapter of the one before it nothing."""

        series: str | None = None

        def generate(self, request: GenerationRequest) -> None:
            if request.series != self.series:
                time.sleep(switch_s)
            self.series = request.series

    class Registry:
        def __init__(self, *args: object) -> None:
            pass

        def register(self, *args: object, **kwargs: object) -> None:
            pass

    for key in ("LORA_CACHE_SIZE", "ADAPTER_REFRESH_S"):  # restored after the test
        monkeypatch.setenv(f"SKUFORGE_DIFFUSION_{key}", "1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path}")
    monkeypatch.setattr(bench.tiny_diffusion, "make_tiny_lora", lambda *args, **kwargs: tmp_path)
    monkeypatch.setattr(shared.generation.adapters, "AdapterRegistry", Registry)
    monkeypatch.setattr(
        shared.generation.diffusion.DiffusionBackend,
        "from_settings",
        classmethod(lambda cls, *args: SwitchingCostsTime()),
    )
    figures = generation.lora_switch_seconds(tmp_path, tmp_path)
    assert figures  # by adapters loaded
    for count, timings in figures.items():
        assert timings["switch_request_s"] >= switch_s * 0.9, count
        assert timings["same_adapter_request_s"] < switch_s / 2, count


def test_matting_memory_refuses_figures_of_code_from_outside_the_tree_it_measures(tmp_path: Path) -> None:
    # A child measures the tree on its PYTHONPATH, but what that tree lacks was imported, silently, from
    # the installed checkout: the "before" figures of a partial checkout were partly the after code's,
    # and nothing said so (the memory worker's "code" was recorded, then dropped unread).
    import shutil

    from bench import matting_memory

    before = tmp_path / "before"
    (before / "bench").mkdir(parents=True)
    (before / "bench" / "__init__.py").write_text("")
    (before / "bench" / "matting.py").write_text(
        "from pathlib import Path\n\n"
        "import shared.argtypes\n\n"
        "FP32 = Path('u2netp.onnx')\n\n\n"
        "def worker(*args: object) -> dict[str, float]:\n"
        "    return {'images_per_s': 12.5}\n"
    )
    speed = ["--worker", "speed", "--threads", "1"]
    with pytest.raises(RuntimeError, match=rf"in {before} imported .*shared\.argtypes.* from outside it"):
        matting_memory._child(before, speed)

    shutil.copytree(
        matting_memory.ROOT / "shared", before / "shared", ignore=shutil.ignore_patterns("models")
    )
    assert matting_memory._child(before, speed) == {"images_per_s": 12.5}


def test_a_scale_run_on_the_shells_cluster_does_not_say_it_ran_on_a_broker_of_its_own() -> None:
    # machine() said "single-node Kafka (KRaft) on loopback" of every run, one on the cluster of
    # SKUFORGE_KAFKA_BOOTSTRAP too, whose figures then read as a loopback broker's.
    from bench import scale

    assert scale.machine(external=False)["broker"] == "single-node Kafka (KRaft) on loopback"
    assert scale.machine(external=True)["broker"] == "the cluster of SKUFORGE_KAFKA_BOOTSTRAP"


def test_the_scale_benchs_log_folder_changes_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import scale

    monkeypatch.setattr(scale, "machine", _refuse_to_run)
    _goes_ahead(scale.main, ["--workdir", "var/elsewhere"])  # the committed run's figures, its logs elsewhere


def _caption_colours_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A copy of the committed bench/results/caption_colours.json that bench.caption_colours files into,
    and the start of a command line over a dataset folder with nothing in it."""
    import shutil

    from bench import caption_colours

    results = tmp_path / "caption_colours.json"
    shutil.copy(caption_colours.RESULTS, results)
    monkeypatch.setattr(caption_colours, "RESULTS", results)
    (tmp_path / "dataset" / "train").mkdir(parents=True)
    return results, ["--grocery-dataset", str(tmp_path / "dataset")]


def test_a_partial_caption_colours_run_leaves_the_other_tables_stamped_with_their_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A --split val run filed under "after" gave the whole label its own measured_at: the train tables
    # and guards, measured earlier (perhaps of other code), read as measured then.
    import json
    from types import SimpleNamespace

    import shared.matting.session
    from bench import caption_colours

    results, argv = _caption_colours_argv(tmp_path, monkeypatch)
    held = json.loads(results.read_text())["runs"]["after"]
    table = {"n_photos": 43, "hits": 40, "colour_accuracy": 0.9302, "misses": []}
    monkeypatch.setattr(caption_colours, "score", lambda *args: dict(table))
    monkeypatch.setattr(
        shared.matting.session, "open_session", lambda *a, **k: SimpleNamespace(model_id="m@t")
    )
    assert caption_colours.main([*argv, "--split", "val", "--label", "after", "--replace"]) == 0

    after = json.loads(results.read_text())["runs"]["after"]
    for older in ("train_hand", "train_matted", "guards"):
        assert after[older] == {**held[older], "measured_at": held["measured_at"]}
    for measured in ("val_hand", "val_matted"):
        assert after[measured]["measured_at"] > held["measured_at"]
        assert after[measured]["matting_model"] == "m@t" and after[measured]["hits"] == 40
    assert "measured_at" not in after  # no one time for tables of several runs


def test_a_caption_colours_run_does_not_replace_a_labels_tables_of_another_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The file keeps one before and one after: the next change's `--label before` replaced the last
    # change's, which docs/captioner.md cites, and its figures were gone but for git history.
    import shared.matting.session
    from bench import caption_colours

    _, argv = _caption_colours_argv(tmp_path, monkeypatch)
    monkeypatch.setattr(shared.matting.session, "open_session", _refuse_to_run)
    _refused(caption_colours.main, [*argv, "--label", "before"], capsys, "--replace")
    _refused(caption_colours.main, [*argv, "--label", "after", "--split", "val"], capsys, "val_hand")
    _goes_ahead(caption_colours.main, [*argv, "--label", "lightness-before"])
    _goes_ahead(caption_colours.main, [*argv, "--label", "before", "--replace"])
    _goes_ahead(caption_colours.main, [*argv, "--label", "before", "--no-write"])


def _committed_model_tool(tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """``tool``'s run over an empty dataset, whose reading (and anything after it) is refused."""
    from bench import augment, caption_colours, edge_recolour

    monkeypatch.setattr(augment, "read_grocery", _refuse_to_run)
    if tool == "caption_colours":
        _, argv = _caption_colours_argv(tmp_path, monkeypatch)
        monkeypatch.setattr(caption_colours, "score", _refuse_to_run)
        return caption_colours.main([*argv, "--no-write"])
    (tmp_path / "train.txt").write_text("")
    return edge_recolour.main(["--dataset", str(tmp_path), "--out", str(tmp_path / "e.json")])


@pytest.mark.parametrize("tool", ["caption_colours", "edge_recolour"])
def test_a_bench_tool_of_the_committed_model_says_it_is_missing_in_a_line(
    tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # They opened it outside run_command: a MattingModelMissing traceback, edge_recolour's after the
    # dataset was read and its scene library written. Now one line, and before either.
    from shared.matting import session

    monkeypatch.setattr(session, "MODELS_DIR", tmp_path / "models")
    assert _committed_model_tool(tool, tmp_path, monkeypatch) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"python -m bench.{tool}: the matting model 'u2netp' is missing: ")
    assert "restore it with git" in said and said.count("\n") == 1


@pytest.mark.parametrize("tool", ["caption_colours", "edge_recolour"])
def test_a_bench_tool_of_the_committed_model_names_a_bad_setting_in_a_line(
    tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As the other bench tools: a bad setting is refused before the run, in a line, not met (or not) in it.
    monkeypatch.setenv("SKUFORGE_MODEL_CACHE_UNUSED_DAYS", "soon")
    assert _committed_model_tool(tool, tmp_path, monkeypatch) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"python -m bench.{tool}: ") and "SKUFORGE_MODEL_CACHE_UNUSED_DAYS" in said


def test_the_gate_bench_mats_with_the_session_it_is_given_and_opens_none_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without one, run_bench opened the committed model itself, outside run_command: where it was missing,
    # a MattingModelMissing traceback. Its command line opens the session (open_tool_session), in a line.
    from bench.gate import run_bench
    from shared.matting import session

    monkeypatch.setattr(session, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(TypeError, match="session"):
        run_bench(1, 0)  # type: ignore[call-arg]
