"""The demo report's pictures, the demo's bookkeeping and command line, without Kafka: outlines, histogram."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from devstack.demo import demo as demo_module
from devstack.demo.demo import main as demo_main
from devstack.demo.demo import print_summary, sku_views, this_runs_decisions
from devstack.demo.report import (
    CUTOUT_BACKGROUND_RGB,
    OWNED_MARKER,
    ReferenceView,
    SkuView,
    StageView,
    contact_sheet,
    iou_histogram_svg,
    outline,
    picture_stem,
    replace_owned_folder,
    with_outlines,
    write_report,
)
from devstack.demo.tracker import FlowState, Seen, item_key
from schemas.common import ImageRef, SkuMetadata
from schemas.events import CaptionedPhoto, ReferencePhoto, SkuCaptioned, SkuIngested
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED, IMAGE_GENERATED, SKU_CAPTIONED, SKU_INGESTED
from shared.config import load_settings
from shared.store import FileStore
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.settings import TrainstoreSettings


def square_mask(size: int = 40, lo: int = 10, hi: int = 30) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[lo:hi, lo:hi] = 255
    return mask


def test_outline_traces_the_border_of_the_mask_only() -> None:
    border = outline(square_mask(), width_px=1)
    assert border[10, 20] or border[9, 20]  # on the top edge
    assert not border[20, 20]  # not inside
    assert not border[2, 2]  # not far outside
    assert not outline(np.zeros((20, 20), dtype=np.uint8)).any()


def test_with_outlines_paints_the_colour_on_the_border() -> None:
    from PIL import Image

    image = Image.new("RGB", (40, 40), (0, 0, 0))
    painted = np.asarray(with_outlines(image, [(square_mask(), (40, 220, 90))]))
    assert (painted == (40, 220, 90)).all(axis=-1).sum() > 40
    assert tuple(painted[20, 20]) == (0, 0, 0)
    assert tuple(painted[0, 0]) == (0, 0, 0)


def test_histogram_counts_every_iou_and_marks_the_threshold() -> None:
    svg = iou_histogram_svg([0.2, 0.95, 0.96, 0.99, 1.0], threshold=0.9, bins=10)
    titles = [part.split("</title>")[0] for part in svg.split("<title>")[1:]]
    counts = [int(title.rsplit(": ", 1)[1]) for title in titles]
    assert len(counts) == 10 and sum(counts) == 5
    assert counts[0] == 1  # 0.2 falls in the first bar (everything at or below 0.5)
    assert counts[-1] == 4  # 0.95 up to 1.0: the last bar is [0.95, 1]
    assert "gate 0.90" in svg
    assert "#d9534f" in svg and "#2a9d4b" in svg  # below and above the gate


def test_contact_sheet_grows_by_rows() -> None:
    from PIL import Image

    tiles = [Image.new("RGB", (300, 200), (i * 20, 0, 0)) for i in range(7)]
    sheet = contact_sheet(tiles, columns=3)
    assert sheet.width == 3 * 164 and sheet.height == 3 * 164


def test_stage_throughput_and_item_keys() -> None:
    assert StageView("gate", 18, 3.0, 70).per_minute == pytest.approx(360)
    assert StageView("trainstore", 18, None, None).per_minute is None
    with pytest.raises(TypeError):
        item_key(SKU_INGESTED, object())
    state = FlowState()
    assert state.span_s("gate") is None
    state.records["image.matted.v1"]["a"] = Seen(None, 1_000)
    state.records["gate.accepted.v1"]["a"] = Seen(None, 3_500)
    assert state.span_s("gate") == pytest.approx(2.5)
    assert state.outputs("gate") == 1


def test_only_this_runs_decisions_count_in_the_store_and_the_console() -> None:
    # Item ids repeat across runs of the same SKUs: the store and the console still hold an
    # earlier run's a..d. This run generated a..d, accepted a, flagged c; b and d are undecided.
    state = FlowState()
    for item in "abcd":
        state.records[IMAGE_GENERATED.name][item] = Seen(None, 1)
    state.records[GATE_ACCEPTED.name]["a"] = Seen(None, 2)
    state.records[CORRECTION_PENDING.name]["c"] = Seen(None, 2)
    state.records[GATE_ACCEPTED.name]["z"] = Seen(None, 2)  # another run's item on the topic
    stored, queued = this_runs_decisions(state, stored={"a", "b", "z"}, queued={"b", "c", "d"})
    assert (stored, queued) == ({"a"}, {"c"})


def report_of(tmp_path: Path, store: FileStore, sku_id: str, photos: list[ReferenceView]) -> str:
    """The report page (in ``tmp_path / "out"``) of one SKU with these reference photos, nothing generated."""
    sku = SkuView(
        sku_id=sku_id,
        name="Product",
        category="box",
        photos=photos,
        generated=0,
        accepted=[],
        flagged=[],
        stored_real=1,
    )
    return write_report(
        tmp_path / "out", store, [sku], [], iou_threshold=0.9, console_lines=[], elapsed_s=1, complete=True
    ).read_text()


def test_report_shows_each_real_photo_at_its_aspect_with_its_mask_or_why_not(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    # A landscape phone photo: a dark product on a light background, and the captioner's mask of it.
    pixels = np.full((240, 348, 3), 230, dtype=np.uint8)
    pixels[60:180, 100:250] = (40, 20, 60)
    mask = np.zeros((240, 348), dtype=np.uint8)
    mask[60:180, 100:250] = 255
    photo = store.put_image("incoming/p.png", pixels)
    page = report_of(
        tmp_path,
        store,
        "GROCERY-TEST-001",
        [
            ReferenceView(
                "IMG_1.jpg", photo, store.put_image("masks/p.png", mask), None, "a photo of an aubergine"
            ),
            ReferenceView("IMG_2.jpg", photo, None, "no_product_found"),
        ],
    )

    assert "IMG_1.jpg (348x240), mask 22% of the photo" in page and "a photo of an aubergine" in page
    assert "IMG_2.jpg (348x240)" in page and "not used</b>: no_product_found" in page
    outlined = Image.open(tmp_path / "out" / "images" / f"{picture_stem('GROCERY-TEST-001')}-ref-0.jpg")
    cutout = np.asarray(
        Image.open(tmp_path / "out" / "images" / f"{picture_stem('GROCERY-TEST-001')}-ref-0-cutout.jpg")
    )
    assert outlined.size == (200, 138)  # shrunk, not squeezed into a square
    assert cutout.shape[:2] == (138, 200)
    assert np.abs(cutout[5, 5].astype(int) - CUTOUT_BACKGROUND_RGB).max() < 12  # background replaced
    assert np.abs(cutout[69, 100].astype(int) - (40, 20, 60)).max() < 24  # the product kept
    assert (tmp_path / "out" / "images" / f"{picture_stem('GROCERY-TEST-001')}-ref-1.jpg").is_file()
    # Nothing was flagged: the page does not ask to review flagged images that are not there.
    assert "Review the flagged images" not in page and "Nothing flagged" in page


def test_demo_refuses_a_wrong_sku_source_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where no folder named 3 is
    with pytest.raises(SystemExit) as exited:
        demo_main(["--skus", "3"])  # what --skus meant before it took a folder
    assert exited.value.code == 2
    err = capsys.readouterr().err
    # Both: it may be the old count, or a folder named 3 mistyped or not copied here.
    assert "--synthetic --synthetic-skus 3" in err and "(it does not exist)" in err
    with pytest.raises(SystemExit):
        demo_main(["--seed", "3"])
    assert "--seed: only with --synthetic" in capsys.readouterr().err
    assert demo_main(["--skus", str(tmp_path), "--workdir", str(tmp_path / "up")]) == 2
    assert "no SKU folders" in capsys.readouterr().err
    assert not (tmp_path / "up").exists(), "no stack may start for SKUs that cannot be ingested"


@pytest.fixture
def no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the demo gets as far as starting (or using) a stack."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the demo went on to the stack with arguments it should have refused")

    monkeypatch.setattr(demo_module, "stack", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--synthetic", "--synthetic-skus", "0"], "--synthetic-skus: must be at least 1"),
        (["--synthetic", "--photos-per-sku", "0"], "--photos-per-sku: must be at least 1"),
        (["--synthetic", "--seed", "-1"], "--seed: must be from 0 to 9223372036854775807"),
        # Before: SKU ids over 64 characters, a traceback after parsing (found in review).
        (["--synthetic", "--seed", "9" * 60], "--seed: must be from 0 to 9223372036854775807"),
        (["--synthetic", "--size", "10"], "--size: must be at least 64"),
        # Before: no top; 100000 was a MemoryError traceback after the stack had started.
        (["--synthetic", "--size", "100000"], "--size: must be at most 4096"),
        (["--variants", "0"], "--variants: must be at least 1"),
        # Before: the stack's `skuforge up` refused it (exit 2) once the SKUs were surveyed or rendered.
        (["--variants", "10001"], "--variants: must be at most 10000 (the generator's most per SKU)"),
        (["--timeout-s", "0"], "--timeout-s: must be a number above 0, got 0"),
        (["--timeout-s", "-5"], "--timeout-s: must be a number above 0, got -5"),
        (["--timeout-s", "nan"], "--timeout-s: must be a number above 0, got nan"),
    ],
)
def test_demo_refuses_a_bad_number_before_rendering_or_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_stack: None, argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        demo_main([*argv, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "up")])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing may be rendered for arguments that are refused"


def test_a_bad_setting_for_the_stack_the_demo_would_start_is_refused_before_rendering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_stack: None
) -> None:
    """The stack's `skuforge up` refused it (exit 2), but only after the SKUs were rendered and the
    stack's start had begun; the demo then said "skuforge up exited with 2" and exited 1."""
    monkeypatch.setenv("SKUFORGE_GENERATION_VARIANTS_PER_SKU", "abc")
    out = tmp_path / "out"
    argv = ["--synthetic", "--photos-per-sku", "1", "--size", "64", "--out", str(out)]
    assert demo_main([*argv, "--workdir", str(tmp_path / "up")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge demo: invalid configuration:")
    assert "SKUFORGE_GENERATION_VARIANTS_PER_SKU" in err
    assert not out.exists(), "nothing may be rendered for a setting the stack would refuse"


def test_a_kafka_login_of_the_shell_the_stack_does_not_use_does_not_stop_the_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack the demo starts runs its own PLAINTEXT broker, its services given its connection in
    place of the shell's: a half-configured SASL login for another cluster stopped the demo (exit 2)
    before it rendered a SKU, as it stopped `skuforge up`."""

    class ReachedTheStack(Exception):
        pass

    def reached(*_args: object, **_kwargs: object) -> None:
        raise ReachedTheStack

    monkeypatch.setattr(demo_module, "stack", reached)
    monkeypatch.setenv("SKUFORGE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")  # its login left out
    argv = ["--synthetic", "--synthetic-skus", "1", "--photos-per-sku", "1", "--size", "64"]
    with pytest.raises(ReachedTheStack):
        demo_main([*argv, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "up")])
    assert "invalid configuration" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "shell",
    [
        {"SKUFORGE_CONSOLE_PORT": "99999"},
        {"SKUFORGE_GENERATION_TRITON_PROTOCOL": "ftp"},
        {"SKUFORGE_GENERATION_SERVER_HTTP_PORT": "0"},
        {"SKUFORGE_STORE_URI": ""},  # the stack's own store
        {"SKUFORGE_CONSOLE_USERS": ""},  # the stack's own login
    ],
)
def test_a_setting_of_the_shell_the_stack_replaces_does_not_stop_the_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, shell: dict[str, str]
) -> None:
    """`skuforge up` gives its services its own console ports, Triton address and ports, store and login,
    and does not check the shell's: the demo did, and another deployment's SKUFORGE_CONSOLE_PORT=99999
    stopped it (exit 2) before it rendered a SKU, for a stack that would have started."""

    class ReachedTheStack(Exception):
        pass

    def reached(*_args: object, **_kwargs: object) -> None:
        raise ReachedTheStack

    monkeypatch.setattr(demo_module, "stack", reached)
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    argv = ["--synthetic", "--synthetic-skus", "1", "--photos-per-sku", "1", "--size", "64"]
    with pytest.raises(ReachedTheStack):
        demo_main([*argv, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "up")])
    assert "invalid configuration" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("in_shell", "option"), [("abc", ["--variants", "3"]), ("0", ["--variants", "3"]), ("", [])]
)
def test_a_variants_setting_of_the_shell_the_stack_does_not_get_does_not_stop_the_demo(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    in_shell: str,
    option: list[str],
) -> None:
    """A stack the demo starts makes --variants, else the shell's SKUFORGE_GENERATION_VARIANTS_PER_SKU
    when not empty, else 6: the demo checked the shell's value all the same, and stopped (exit 2) on one
    that --variants replaced, or on an empty one that it took as unset."""

    class ReachedTheStack(Exception):
        pass

    def reached(*_args: object, **_kwargs: object) -> None:
        raise ReachedTheStack

    monkeypatch.setattr(demo_module, "stack", reached)
    monkeypatch.setenv("SKUFORGE_GENERATION_VARIANTS_PER_SKU", in_shell)
    argv = ["--synthetic", "--synthetic-skus", "1", "--photos-per-sku", "1", "--size", "64", *option]
    with pytest.raises(ReachedTheStack):
        demo_main([*argv, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "up")])
    assert "invalid configuration" not in capsys.readouterr().err


def test_photo_scenes_in_the_shell_do_not_stop_a_real_photo_demo_whose_stack_gets_the_sample_scenes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack the demo starts for real photos composites them onto the sample scenes when the shell
    names none: the demo checked the shell's settings before it set them, and a shell's
    SKUFORGE_GENERATION_PARAMETERS='{"scene": "photo"}' stopped it (exit 2, "without a scene library")
    for a stack that would have had one."""
    given: dict[str, str | None] = {}

    class ReachedTheStack(Exception):
        pass

    def reached(*_args: object, **_kwargs: object) -> None:
        given["scenes"] = os.environ.get("SKUFORGE_SCENES_URI")
        raise ReachedTheStack

    monkeypatch.setattr(demo_module, "stack", reached)
    monkeypatch.setenv("SKUFORGE_GENERATION_PARAMETERS", '{"scene": "photo"}')
    monkeypatch.setenv("SKUFORGE_SCENES_URI", "")  # so that the demo's own setting is undone after
    monkeypatch.delenv("SKUFORGE_SCENES_URI")
    with pytest.raises(ReachedTheStack):
        demo_main(["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "up")])
    assert "invalid configuration" not in capsys.readouterr().err
    assert given["scenes"] == str(demo_module.SAMPLE_SCENES)


def test_photo_scenes_in_the_shell_stop_a_synthetic_demo_whose_stack_gets_no_scenes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_stack: None
) -> None:
    """Synthetic SKUs get no sample scenes: the stack would refuse the setting, so the demo does at once."""
    monkeypatch.setenv("SKUFORGE_GENERATION_PARAMETERS", '{"scene": "photo"}')
    monkeypatch.delenv("SKUFORGE_SCENES_URI", raising=False)
    out = tmp_path / "out"
    argv = ["--synthetic", "--synthetic-skus", "1", "--photos-per-sku", "1", "--size", "64"]
    assert demo_main([*argv, "--out", str(out), "--workdir", str(tmp_path / "up")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge demo: invalid configuration:") and "scene" in err
    assert "SKUFORGE_SCENES_URI" not in os.environ
    assert not out.exists()


@pytest.mark.parametrize("option", ["--out", "--workdir"])
def test_demo_refuses_a_file_where_its_folders_go_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_stack: None, option: str
) -> None:
    """Else --out fails only when the report is written, after the whole run; --workdir in a traceback."""
    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("mine\n")
    for path in (in_the_way, in_the_way / "sub"):
        with pytest.raises(SystemExit) as exited:
            demo_main([option, str(path)])
        assert exited.value.code == 2
        assert f"{option} {path}: {in_the_way} is a file, not a folder" in capsys.readouterr().err
    assert in_the_way.read_text() == "mine\n"


def test_a_synthetic_demo_runs_only_the_skus_it_just_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_stack: None
) -> None:
    """A second --synthetic run into the same --out must not ingest the first run's SKUs too."""
    out = tmp_path / "out"
    common = ["--synthetic", "--photos-per-sku", "1", "--size", "64", "--out", str(out)]
    for argv in (["--synthetic-skus", "3", "--seed", "7"], ["--synthetic-skus", "2", "--seed", "8"]):
        with pytest.raises(AssertionError, match="went on to the stack"):
            demo_main([*common, *argv, "--workdir", str(tmp_path / "up")])
    assert "2 SKUs, 2 photos" in capsys.readouterr().out
    rendered = sorted(path.name for path in (out / "catalogue" / "skus").iterdir())
    assert rendered == ["SYN-8-0001", "SYN-8-0002"]


def test_the_report_counts_only_this_runs_real_photos_in_the_store(tmp_path: Path) -> None:
    """The same SKU run before with other photos: the store keeps those, but they are not this run's."""
    store = FileStore(tmp_path / "store")
    image = ImageRef(uri="file:///x/p.png", sha256="0" * 64, bytes=1, width=8, height=8)
    sku = SkuMetadata(sku_id="SKU-1", name="Product", category="soda can")
    manifests = ManifestStore(store, load_settings(TrainstoreSettings).trainstore_prefix)
    manifests.append(
        "SKU-1",
        [
            ManifestRow(item_id=item_id, sku_id="SKU-1", category="can", source="real", status="reference")
            for item_id in ("earlier-1", "earlier-2", "now-1")
        ],
    )
    state = FlowState()
    photo = ReferencePhoto(photo_id="now-1", image=image, original_filename="a.png")
    state.records[SKU_INGESTED.name]["SKU-1"] = Seen(SkuIngested(sku=sku, photos=[photo]), 1_000)
    [view] = sku_views(state, store, ["SKU-1"])
    assert (len(view.photos), view.stored_real) == (1, 1)


# --------------------------------------------------------------------------------------------------
# Ctrl-C, and a stack that is already running; no real stack: `skuforge up` is a stand-in process
# --------------------------------------------------------------------------------------------------

SMALL_SYNTHETIC = ["--synthetic", "--synthetic-skus", "1", "--photos-per-sku", "1", "--size", "64"]


def write_running_stack(workdir: Path, env: dict[str, str] | None = None, **fields: Any) -> int:
    """A stack.json that read_state takes for a live stack (its supervisor: this test process), with
    the fields the demo reads as skuforge up writes them, and ``fields`` in their place."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = {
        "state": "ready",
        "supervisor_pid": os.getpid(),
        "started_at": time.time(),
        "workdir": str(workdir),
        "console_url": "http://127.0.0.1:8087",
        "console_user": "demo",
        "console_login_file": str(workdir / "console-login"),
        "console_db": str(workdir / "console" / "tasks.sqlite"),
        "env": env or {},
        "services": {
            stage: {"status": "ready", "metrics": None}
            for stage in ("captioner", "matting", "generator", "gate", "trainstore", "console")
        },
        **fields,
    }
    (workdir / "stack.json").write_text(json.dumps(state))
    return os.getpid()


class StandInUp:
    """What ``stack()`` starts as ``skuforge up``: ready at once; on SIGINT it stops (its stack.json
    goes), unless ``second_ctrl_c``, where the user's second Ctrl-C cuts the wait for it short."""

    second_ctrl_c = False

    def __init__(self, argv: list[str], **kwargs: object) -> None:
        self.env = kwargs.get("env")
        self.workdir = Path(argv[argv.index("--workdir") + 1])
        self.pid = write_running_stack(self.workdir)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if not self.second_ctrl_c:
            (self.workdir / "stack.json").unlink()
            self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int | None:
        # Never a TimeoutExpired: stack() would SIGKILL the process group of this pid, this test's.
        if self.second_ctrl_c:
            raise KeyboardInterrupt
        return self.returncode


@pytest.fixture
def stand_in_up(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[StandInUp]]:
    """``stack()`` starts a StandInUp instead of ``skuforge up``; the list holds the ones started.

    The demo copies the stack's environment into its own (``os.environ``): put back after the test.
    """
    environ = dict(os.environ)
    started: list[StandInUp] = []

    def popen(argv: list[str], **kwargs: object) -> StandInUp:
        started.append(StandInUp(argv, **kwargs))
        return started[-1]

    fake = SimpleNamespace(Popen=popen, STDOUT=subprocess.STDOUT, TimeoutExpired=subprocess.TimeoutExpired)
    monkeypatch.setattr(demo_module, "subprocess", fake)
    yield started
    os.environ.clear()
    os.environ.update(environ)


def ctrl_c(*_args: object, **_kwargs: object) -> Any:
    raise KeyboardInterrupt


def demo_after_ctrl_c(argv: list[str]) -> int:
    """``skuforge demo`` that gets a Ctrl-C; its exit code, or a failure when it ends in a traceback."""
    try:
        return demo_main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended skuforge demo in a KeyboardInterrupt traceback")


def test_ctrl_c_during_the_run_stops_the_stack_it_started_and_says_so_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
) -> None:
    monkeypatch.setattr(demo_module, "run_flow", ctrl_c)
    workdir = tmp_path / "up"
    code = demo_after_ctrl_c([*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(workdir)])
    assert code == 130
    [up] = stand_in_up
    assert up.signals == [signal.SIGINT] and up.returncode is not None  # stopped, not left behind
    assert capsys.readouterr().err == (
        f"skuforge demo: interrupted; the stack the demo started from {workdir} was stopped\n"
    )


def test_ctrl_c_twice_says_the_stack_it_started_was_left_running_and_how_to_stop_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
) -> None:
    monkeypatch.setattr(demo_module, "run_flow", ctrl_c)
    monkeypatch.setattr(StandInUp, "second_ctrl_c", True)
    workdir = tmp_path / "up"
    assert (
        demo_after_ctrl_c([*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(workdir)])
        == 130
    )
    assert capsys.readouterr().err == (
        f"skuforge demo: interrupted; the stack of {workdir} was left running; stop it with "
        f"Ctrl-C where skuforge up runs, or kill -INT {os.getpid()}\n"
    )


def test_a_stack_that_does_not_stop_in_time_gets_a_second_sigint_before_its_supervisor_is_killed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
) -> None:
    """A stack not stopped within STACK_STOP_TIMEOUT_S had its supervisor killed: the kernel then sends
    each service SIGTERM (its parent-death signal), which those still running had had already and did
    not heed, so they ran on, holding their ports. A second SIGINT makes `skuforge up` kill them."""
    killed: list[int] = []

    def wait(up: StandInUp, timeout: float | None = None) -> int | None:
        if up.returncode is not None:  # killed
            return up.returncode
        if up.signals.count(signal.SIGINT) < 2:  # a service deaf to SIGTERM holds the first stop up
            raise subprocess.TimeoutExpired("skuforge up", timeout or 0)
        (up.workdir / "stack.json").unlink(missing_ok=True)
        up.returncode = 0
        return up.returncode

    monkeypatch.setattr(StandInUp, "send_signal", lambda up, sig: up.signals.append(sig))
    monkeypatch.setattr(StandInUp, "wait", wait)

    def kill(up: StandInUp) -> None:
        killed.append(up.pid)
        up.returncode = -signal.SIGKILL

    monkeypatch.setattr(StandInUp, "kill", kill, raising=False)
    monkeypatch.setattr(demo_module, "run_flow", ctrl_c)
    workdir = tmp_path / "up"
    code = demo_after_ctrl_c([*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(workdir)])
    assert code == 130
    [up] = stand_in_up
    assert up.signals == [signal.SIGINT, signal.SIGINT] and killed == []
    assert "the stack did not stop within" in capsys.readouterr().out


def test_ctrl_c_before_any_stack_says_none_was_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_stack: None
) -> None:
    monkeypatch.setattr(demo_module, "survey_folders", ctrl_c)
    assert (
        demo_after_ctrl_c(
            [*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "up")]
        )
        == 130
    )
    assert capsys.readouterr().err == "skuforge demo: interrupted; no stack was started\n"


@pytest.mark.parametrize(
    ("stack_env", "argv", "note"),
    [
        ({"SKUFORGE_GENERATION_VARIANTS_PER_SKU": "8"}, ["--variants", "3"], "makes 8 images per SKU"),
        ({}, ["--variants", "3"], "makes 8 images per SKU"),  # the generator's default
        ({"SKUFORGE_GENERATION_VARIANTS_PER_SKU": "3"}, ["--variants", "3"], None),
        ({"SKUFORGE_GENERATION_VARIANTS_PER_SKU": "8"}, [], None),  # --variants not given: nothing ignored
    ],
)
def test_a_running_stack_keeps_its_variants_and_a_different_variants_option_is_said_to_be_ignored(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
    stack_env: dict[str, str],
    argv: list[str],
    note: str | None,
) -> None:
    """The generator's variants are a start-up setting: the demo cannot change a running stack's."""
    workdir = tmp_path / "up"
    pid = write_running_stack(workdir, stack_env)
    monkeypatch.setattr(demo_module, "run_flow", lambda *_args, **_kwargs: 0)
    assert (
        demo_main([*SMALL_SYNTHETIC, *argv, "--out", str(tmp_path / "out"), "--workdir", str(workdir)]) == 0
    )
    assert stand_in_up == [], "the running stack is used, none started"
    expected = (
        [
            f"skuforge demo: note: the running stack of {workdir} {note}; --variants 3 is ignored; to "
            f"change it, stop that stack (Ctrl-C where skuforge up runs, or kill -INT {pid}) and run the "
            "demo again"
        ]
        if note
        else []
    )
    assert capsys.readouterr().err.splitlines() == expected


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ({"env": "SKUFORGE_KAFKA_BOOTSTRAP=127.0.0.1:9092"}, "env is str, not an object of settings"),
        ({"env": ["SKUFORGE_KAFKA_BOOTSTRAP"]}, "env is list, not an object of settings"),
        (
            {"env": {"SKUFORGE_GENERATION_VARIANTS_PER_SKU": 8}},
            "env: SKUFORGE_GENERATION_VARIANTS_PER_SKU: not text",
        ),
        ({"services": None}, "services does not hold an object for each of captioner"),
        ({"services": {"gate": "ready"}}, "services does not hold an object for each of captioner"),
        ({"console_url": 8087}, "console_url: not text"),
    ],
    ids=["env-text", "env-list", "env-number", "no-services", "service-text", "console-url-number"],
)
def test_a_running_stacks_damaged_stack_json_is_one_line_naming_it_before_anything_runs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
    damage: dict[str, Any],
    problem: str,
) -> None:
    """A field of stack.json of the wrong type (hand-edited, damaged) was an AttributeError or
    TypeError traceback from the demo, or, for the services and the console's address, a KeyError
    once the SKUs had gone through the stack."""
    workdir = tmp_path / "up"
    pid = write_running_stack(workdir, **damage)
    monkeypatch.setattr(demo_module, "run_flow", lambda *_args, **_kwargs: pytest.fail("ran the flow"))
    code = demo_main([*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"skuforge demo: {workdir / 'stack.json'}: {problem}") and err.count("\n") == 1
    assert f"kill -INT {pid}" in err
    assert stand_in_up == [], "no stack was started beside the running one"
    assert not (tmp_path / "out" / "catalogue").exists(), "the SKUs were rendered before the check"


def test_a_stack_json_damaged_while_the_skus_render_is_one_line_naming_it_not_used(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
) -> None:
    """The stack was checked before the SKUs were rendered, then its stack.json read again unchecked
    when it was used: one restarted (or edited) in between went into the run, which failed once the
    SKUs had gone through it."""
    workdir = tmp_path / "up"
    write_running_stack(workdir)
    render = demo_module.render_synthetic

    def render_while_the_stack_restarts(catalogue: Path, args: Any) -> Path:
        skus = render(catalogue, args)
        write_running_stack(workdir, console_url=8087)
        return skus

    monkeypatch.setattr(demo_module, "render_synthetic", render_while_the_stack_restarts)
    monkeypatch.setattr(demo_module, "run_flow", lambda *_args, **_kwargs: pytest.fail("ran the flow"))
    code = demo_main([*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"skuforge demo: {workdir / 'stack.json'}: console_url: not text")
    assert err.count("\n") == 1 and f"kill -INT {os.getpid()}" in err
    assert stand_in_up == [], "no stack was started beside the running one"


@pytest.mark.parametrize("state", ["starting", "stopping"])
def test_a_read_only_workdir_whose_stack_is_not_ready_is_refused_before_anything_runs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
    state: str,
) -> None:
    """The demo starts its own stack where none is ready, but asked for a writable workdir only when
    stack.json named no live supervisor at all: beside a stack still starting (or stopping) in a
    read-only workdir, it rendered the SKUs and then tried to start a stack there. The refusal then
    said only that the workdir was not writable, though a stack runs there: it says why too."""
    import errno

    import shared.argtypes

    workdir = tmp_path / "up"
    write_running_stack(workdir, state=state)
    mkstemp = shared.argtypes.tempfile.mkstemp

    def read_only_workdir(*args: Any, **kwargs: Any) -> Any:
        if Path(kwargs["dir"]) == workdir:
            raise OSError(errno.EROFS, "Read-only file system")
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(shared.argtypes.tempfile, "mkstemp", read_only_workdir)
    monkeypatch.setattr(demo_module, "run_flow", lambda *_args, **_kwargs: pytest.fail("ran the flow"))
    with pytest.raises(SystemExit) as refused:
        demo_main([*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(workdir)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert f"--workdir {workdir}: " in err
    assert f"the stack there is not ready yet (it is {state}): run the demo again once" in err
    assert stand_in_up == [], "no stack was started in the read-only workdir"
    assert not (tmp_path / "out" / "catalogue").exists(), "the SKUs were rendered before the check"


def test_ctrl_c_leaves_a_stack_that_was_running_before_the_demo_running(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
) -> None:
    workdir = tmp_path / "up"
    pid = write_running_stack(workdir)
    monkeypatch.setattr(demo_module, "run_flow", ctrl_c)
    assert (
        demo_after_ctrl_c([*SMALL_SYNTHETIC, "--out", str(tmp_path / "out"), "--workdir", str(workdir)])
        == 130
    )
    assert stand_in_up == [] and (workdir / "stack.json").is_file()
    assert capsys.readouterr().err == (
        f"skuforge demo: interrupted; the stack of {workdir} keeps running, as before the demo "
        f"(Ctrl-C where skuforge up runs, or kill -INT {pid})\n"
    )


@pytest.mark.parametrize(
    ("option", "in_shell", "made"), [(["--variants", "3"], "9", "3"), ([], "9", "9"), ([], None, "6")]
)
def test_a_stack_the_demo_starts_makes_the_variants_asked_for_before_the_shells_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
    option: list[str],
    in_shell: str | None,
    made: str,
) -> None:
    """--variants beats SKUFORGE_GENERATION_VARIANTS_PER_SKU in the shell, which beats the demo's 6."""
    if in_shell is None:
        monkeypatch.delenv("SKUFORGE_GENERATION_VARIANTS_PER_SKU", raising=False)
    else:
        monkeypatch.setenv("SKUFORGE_GENERATION_VARIANTS_PER_SKU", in_shell)
    monkeypatch.setattr(demo_module, "run_flow", lambda *_args, **_kwargs: 0)
    argv = [*SMALL_SYNTHETIC, *option, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "up")]
    assert demo_main(argv) == 0
    [up] = stand_in_up
    assert isinstance(up.env, dict) and up.env["SKUFORGE_GENERATION_VARIANTS_PER_SKU"] == made


def test_the_demo_waits_for_what_the_running_stacks_generator_makes_not_the_shells_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SKUFORGE_GENERATION_VARIANTS_PER_SKU", "9")
    assert demo_module.images_per_sku({"env": {}}) == 8  # the generator's default: the stack had no setting
    assert demo_module.images_per_sku({"env": {"SKUFORGE_GENERATION_VARIANTS_PER_SKU": "4"}}) == 4


def test_a_demo_beside_an_up_still_starting_in_its_workdir_says_why_its_own_up_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said only "skuforge up exited with 1; see up.out": the reason, another `skuforge up` holding
    the workdir's lock, was in that file alone."""
    import fcntl

    from devstack.up import LOCK_FILE

    # Should that up start a whole stack after all, it is stopped within a minute.
    monkeypatch.setattr(demo_module, "STACK_START_TIMEOUT_S", 60.0)
    workdir = tmp_path / "up"
    workdir.mkdir()
    other_up = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT)  # what the starting `skuforge up` holds
    fcntl.flock(other_up, fcntl.LOCK_EX | fcntl.LOCK_NB)
    state = {"state": "starting", "supervisor_pid": os.getpid(), "started_at": time.time(), "env": {}}
    (workdir / "stack.json").write_text(json.dumps(state))
    try:
        with pytest.raises(SystemExit) as exited, demo_module.stack(workdir, variants=1, keep_running=False):
            pytest.fail("the demo used a stack that was not ready")
    finally:
        os.close(other_up)
    message = str(exited.value.code)
    assert message.startswith("skuforge up exited with 1: another skuforge up is starting")
    assert str(workdir / LOCK_FILE) in message and message.endswith(f"see {workdir / 'up.out'}")


def test_a_failure_after_the_checks_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, a file where --out's catalogue goes was a NotADirectoryError traceback (and so were
    # the stack's own ingest limits, or its broker away, met at ingest). A disk that fills up while
    # the catalogue is rendered is such a failure after the checks.
    import shared.synth

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shared.synth, "write_sku_folders", disk_full)
    code = demo_main(
        [
            "--synthetic",
            "--synthetic-skus",
            "1",
            "--photos-per-sku",
            "1",
            "--size",
            "64",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("skuforge demo: OSError: [Errno 28] No space left") and "Traceback" not in err


def test_the_demo_never_overwrites_a_report_html_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_stack: None
) -> None:
    """--out . in a folder with the user's own report.html: the demo replaced it at the end of its run."""
    mine = tmp_path / "report.html"
    mine.write_text("<html><title>Q3 sales</title></html>\n")
    with pytest.raises(SystemExit) as exited:
        demo_main(["--out", str(tmp_path), "--workdir", str(tmp_path / "up")])
    assert exited.value.code == 2
    assert f"{mine} is not a page the demo wrote" in capsys.readouterr().err
    assert mine.read_text() == "<html><title>Q3 sales</title></html>\n"
    assert not (tmp_path / "up").exists(), "refused before anything starts"
    # A page an earlier demo run wrote is the demo's to replace.
    from devstack.demo.report import report_problem

    mine.write_text('<!doctype html><html><head><meta charset="utf-8"><title>skuforge demo</title>')
    assert report_problem(tmp_path) is None


@pytest.mark.parametrize(("folder", "argv"), [("images", []), ("catalogue", ["--synthetic"])])
def test_the_demo_never_deletes_files_it_did_not_write_in_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_stack: None, folder: str, argv: list[str]
) -> None:
    """Each run replaces OUT/images (and OUT/catalogue): with --out . in a project whose images/ folder
    holds the user's files, the report used to delete them at the end of the run."""
    mine = tmp_path / folder / "mine.jpg"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's photo")
    with pytest.raises(SystemExit) as exited:
        demo_main([*argv, "--out", str(tmp_path), "--workdir", str(tmp_path / "up")])
    assert exited.value.code == 2
    assert f"{tmp_path / folder} holds files the demo did not write" in capsys.readouterr().err
    assert mine.read_bytes() == b"the user's photo"
    assert not (tmp_path / "up").exists(), "refused before anything starts"

    mine.unlink()
    mine.parent.rmdir()
    mine.parent.write_text("a file where the demo's folder goes\n")
    with pytest.raises(SystemExit):
        demo_main([*argv, "--out", str(tmp_path), "--workdir", str(tmp_path / "up")])
    assert f"{tmp_path / folder} is a file where the demo writes a folder" in capsys.readouterr().err


def test_a_large_reference_photo_is_outlined_on_a_preview(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outline filter's cost grows with the square of its width (1% of the height): on a 12 MP
    phone photo the report spent about 40 s per photo after the run; it draws on a preview now."""
    import devstack.demo.report as report_module

    store = FileStore(tmp_path / "store")
    big = np.full((3024, 4032, 3), 240, np.uint8)
    big[800:2200, 1200:2800] = (40, 20, 60)
    mask = np.zeros(big.shape[:2], np.uint8)
    mask[800:2200, 1200:2800] = 255
    photo = store.put_image("refs/big.png", big)
    outlined_sizes: list[tuple[int, int]] = []

    def recording(image: Image.Image, masks: object) -> Image.Image:
        outlined_sizes.append(image.size)
        return with_outlines(image, masks)  # type: ignore[arg-type]

    monkeypatch.setattr(report_module, "with_outlines", recording)
    mask_ref = store.put_image("masks/big.png", mask)
    page = report_of(
        tmp_path, store, "SKU-BIG", [ReferenceView("IMG_BIG.jpg", photo, mask_ref, None, "a box")]
    )
    assert "IMG_BIG.jpg (4032x3024)" in page
    assert outlined_sizes and max(max(size) for size in outlined_sizes) <= 400
    outlined = np.asarray(Image.open(tmp_path / "out" / "images" / f"{picture_stem('SKU-BIG')}-ref-0.jpg"))
    assert outlined.shape[:2] == (150, 200)
    assert (np.abs(outlined.astype(int) - (40, 220, 90)).max(axis=2) < 60).any(), "the outline is drawn"


def test_the_report_replaces_only_its_own_pictures(tmp_path: Path) -> None:
    """A second report into the same folder replaces the first one's pictures; someone else's it keeps."""
    replace_owned_folder(tmp_path / "images")
    (tmp_path / "images" / "old-run.jpg").write_bytes(b"x")
    replace_owned_folder(tmp_path / "images")
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == [OWNED_MARKER]
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "photo.jpg").write_bytes(b"y")
    with pytest.raises(FileExistsError, match="holds files the demo did not write"):
        replace_owned_folder(tmp_path / "theirs")
    assert (tmp_path / "theirs" / "photo.jpg").read_bytes() == b"y"


def _view(sku_id: str, generated: int) -> SkuView:
    return SkuView(
        sku_id=sku_id,
        name="Product",
        category="box",
        photos=[],
        generated=generated,
        accepted=[],
        flagged=[],
        stored_real=0,
    )


def test_a_demo_that_generated_nothing_does_not_exit_0() -> None:
    """Every SKU refused at ingest settles the flow at once: the demo exited 0 having made no image."""
    from devstack.demo.demo import flow_exit_code

    code, why = flow_exit_code([_view("A", 0), _view("B", 0)], complete=True)
    assert code == 1 and why is not None and "no image was generated" in why
    assert flow_exit_code([_view("A", 0), _view("B", 6)], complete=True) == (0, None)
    assert flow_exit_code([_view("A", 6)], complete=False) == (1, None)


@pytest.mark.parametrize(
    ("shell_scenes", "stack_env", "argv", "noted"),
    [
        ("", {}, [], "samples/grocerystore-scenes"),  # the real sample on a stack started without scenes
        ("", {"SKUFORGE_SCENES_URI": ""}, [], "samples/grocerystore-scenes"),  # set empty: none either
        ("/photos/mine", {}, [], "/photos/mine"),  # the shell's scenes do not reach a running stack
        ("", {"SKUFORGE_SCENES_URI": "/photos/store"}, [], None),
        ("", {}, SMALL_SYNTHETIC, None),  # renderer SKUs go on the renderer's scenes anyway
    ],
    ids=["unset", "empty", "shell-only", "scenes", "synthetic"],
)
def test_real_skus_on_a_running_stack_without_scenes_are_said_to_go_on_procedural_scenes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stand_in_up: list[StandInUp],
    stack_env: dict[str, str],
    shell_scenes: str,
    argv: list[str],
    noted: str | None,
) -> None:
    """A stack the demo starts puts real photos on the sample store photos; one `skuforge up` started
    without SKUFORGE_SCENES_URI composites them on the renderer's procedural scenes, which lowered a
    classifier's accuracy (docs/evaluation.md). The same `skuforge demo --skus DIR` silently made the
    other kind of training set depending on whether a stack was running."""
    monkeypatch.setenv("SKUFORGE_SCENES_URI", shell_scenes)
    workdir = tmp_path / "up"
    pid = write_running_stack(workdir, stack_env)
    monkeypatch.setattr(demo_module, "run_flow", lambda *_args, **_kwargs: 0)
    assert demo_main([*argv, "--out", str(tmp_path / "out"), "--workdir", str(workdir)]) == 0
    assert stand_in_up == [], "the running stack is used, none started"
    expected = (
        [
            f"skuforge demo: note: the running stack of {workdir} was started without SKUFORGE_SCENES_URI: "
            "it composites these real photos on procedural scenes, not on store photos as a stack the demo "
            f"starts does; for those, stop that stack (Ctrl-C where skuforge up runs, or kill -INT {pid}) "
            f"and run the demo again, or start it with SKUFORGE_SCENES_URI={noted}"
        ]
        if noted
        else []
    )
    assert capsys.readouterr().err.splitlines() == expected


@pytest.mark.parametrize(("plain_background", "said"), [(0.26, True), (0.95, False), (None, False)])
def test_a_sku_without_a_plain_background_photo_is_said_to_be_cut_from_in_store_photos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_background: float | None, said: bool
) -> None:
    """A SKU of in-store photos only (a crate of apples, a heap of peppers): the generator cut its
    products from them, the cut-outs were four apples and a price tag, and the gate accepted them
    (IoU 0.97 against that same cut-out). Nothing in the summary or the report said so, though
    docs/evaluation.md found such cut-outs lowered a classifier's accuracy."""

    store = FileStore(tmp_path / "store")
    pixels = np.full((96, 96, 3), 120, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    mask[20:70, 30:60] = 255
    image = store.put_image("incoming/SKU-1/p.png", pixels)
    mask_ref = store.put_image("masks/reference/SKU-1/p.png", mask)
    sku = SkuMetadata(sku_id="SKU-1", name="Granny Smith", category="apple")
    state = FlowState()
    photo = ReferencePhoto(photo_id="p1", image=image, original_filename="Granny-Smith_004.jpg")
    state.records[SKU_INGESTED.name]["SKU-1"] = Seen(SkuIngested(sku=sku, photos=[photo]), 1_000)
    captioned = SkuCaptioned(
        sku=sku,
        photos=[
            CaptionedPhoto(
                photo_id="p1", image=image, mask=mask_ref, usable=True, plain_background=plain_background
            )
        ],
        instance_token="tok",
        class_noun="apple",
        instance_prompt="a photo of tok apple",
        class_prompt="a photo of an apple",
        captioner="attributes",
    )
    state.records[SKU_CAPTIONED.name]["SKU-1"] = Seen(captioned, 1_001)
    [view] = sku_views(state, store, ["SKU-1"])
    page = write_report(
        tmp_path / "out", store, [view], [], iou_threshold=0.9, console_lines=[], elapsed_s=1, complete=True
    ).read_text()
    print_summary([view], [], [], 1.0)
    out = capsys.readouterr().out
    note = (
        "SKU-1: no photo on a plain background, so its products were cut out of in-store photos; such "
        "cut-outs are often not the product alone (a hand, several items, a price tag) and the gate "
        "cannot tell: check its accepted images, and add a product shot on a plain background"
    )
    assert (note in " ".join(out.split())) == said
    assert (note in " ".join(page.split())) == said
