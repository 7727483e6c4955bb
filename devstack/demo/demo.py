"""``skuforge demo`` (what ``make demo`` runs): a few SKUs through the whole running system.

1. takes its SKUs from one of three places: the committed sample of real photos
   (``samples/grocerystore/``, three GroceryStoreDataset products, the default), your own SKU folders
   (``--skus DIR``, the layout ``skuforge ingest`` reads), or ``--synthetic`` products from the
   renderer (``--synthetic-skus``, ``--photos-per-sku``, ``--seed``, ``--size``); every folder is
   checked before anything starts;
2. uses the stack of ``--workdir`` if ``skuforge up`` runs there (it keeps its own scenes and images per
   SKU; a ``--variants`` that differs is noted on stderr), else starts one (and stops it at the end,
   unless ``--keep-running``, which keeps it up after the report until Ctrl-C, and then exits with the
   run's own code, or 1 when the stack ended by itself with a failure meanwhile; on Ctrl-C during the
   run too, then says so in one line and exits 130);
3. ingests the SKUs, then shows per stage how far they got, until every generated image is decided:
   accepted into the retraining store or queued in the correction console (or dead-lettered);
4. prints a summary (per SKU: real photos, generated, accepted, flagged, mean IoU; per stage:
   throughput) and writes ``<out>/report.html`` with the pictures: the real photos with the masks
   the captioner cut, and the generated images with theirs.

CPU defaults: the composite generation backend and the committed U2-NetP; real SKUs are composited
onto the sample store photos of ``samples/grocerystore-scenes/`` unless ``SKUFORGE_SCENES_URI`` is set. With
``SKUFORGE_DIFFUSION_MODEL`` set and a GPU present, the stack it starts serves diffusion + LoRA
instead, same command (``SKUFORGE_GENERATION_BACKEND`` forces either).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import annotated_types
from prometheus_client.parser import text_string_to_metric_families

from devstack.demo.report import (
    ItemView,
    ReferenceView,
    SkuView,
    StageView,
    not_owned_problem,
    replace_owned_folder,
    report_problem,
    write_report,
)
from devstack.demo.tracker import FOLLOWED, FlowState, FlowTracker
from devstack.supervisor import exit_reason, open_log
from devstack.up import (
    DEFAULT_WORKDIR,
    SAMPLE_SCENES,
    STATE_FILE,
    read_state,
    stack_kafka_settings,
    stack_settings_before_start,
)
from schemas.events import CorrectionPending, GateAccepted, ImageGenerated, SkuCaptioned, SkuIngested
from schemas.topics import (
    CORRECTION_PENDING,
    GATE_ACCEPTED,
    IMAGE_GENERATED,
    IMAGE_MATTED,
    SKU_CAPTIONED,
    SKU_INGESTED,
)
from services.ingest.ingest import IngestError, not_a_folder_hint, survey_folders
from shared.argtypes import folder_problem, path_argument, positive_float, positive_int
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput, TransientError
from shared.generation.settings import GenerationSettings
from shared.signals import stopped_as_interrupt
from shared.store import ObjectStore, open_settings_store
from shared.synth.photo import MIN_SIZE
from skuforge_cli.synth import CATALOGUE_SEED, MAX_SIZE, catalogue_id_problem, photo_size_px

STACK_START_TIMEOUT_S = 600.0
# How long a stack started here gets to stop after SIGINT before its supervisor is killed.
STACK_STOP_TIMEOUT_S = 180.0
# And how long after a second SIGINT (which has it kill what is left) before it is killed itself.
STACK_KILL_TIMEOUT_S = 30.0
DEFAULT_VARIANTS = 6  # generated images per SKU of a stack the demo starts
# The most the generator takes (SKUFORGE_GENERATION_VARIANTS_PER_SKU's bound), so --variants is refused
# before anything is rendered.
MOST_VARIANTS = next(
    bound.le
    for bound in GenerationSettings.model_fields["generation_variants_per_sku"].metadata
    if isinstance(bound, annotated_types.Le) and isinstance(bound.le, int)
)
# Text fields of a running stack's stack.json that the demo reads (skuforge up writes them all).
STACK_TEXT_FIELDS = ("workdir", "console_url", "console_user", "console_login_file", "console_db")
# The exit status of a command ended by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT
# The real photos the demo runs on by default; where each comes from: samples/grocerystore/README.md.
SAMPLE_SKUS = Path(__file__).resolve().parents[2] / "samples" / "grocerystore"
# The scenes real SKUs are composited onto unless SKUFORGE_SCENES_URI names others (not --synthetic):
# SAMPLE_SCENES, from devstack.up.
# --synthetic's options: flag, default, type (the checks `skuforge synth` makes), placeholder, help.
SYNTHETIC_OPTIONS: tuple[tuple[str, int, Callable[[str], int], str, str], ...] = (
    ("--synthetic-skus", 3, positive_int, "N", "synthetic SKUs"),
    ("--photos-per-sku", 3, positive_int, "N", "photos per synthetic SKU"),
    ("--seed", 7, CATALOGUE_SEED, "N", "catalogue seed, 0 to 2^63-1"),
    ("--size", 384, photo_size_px, "PX", f"side of the rendered photos, px, {MIN_SIZE} to {MAX_SIZE}"),
)


def _say(line: str) -> None:
    # After SIGHUP the terminal is gone and printing to it fails (EIO); stopping the stack matters more.
    with contextlib.suppress(OSError):
        print(f"{time.strftime('%H:%M:%S')} demo  {line}", flush=True)


# --------------------------------------------------------------------------------------------------
# the stack
# --------------------------------------------------------------------------------------------------


class DamagedStack(Exception):
    """A running stack's stack.json the demo cannot use (``stack_problem``); the message says what to do."""


def running_stack(workdir: Path) -> dict[str, Any] | None:
    """The state of the stack ready in ``workdir``, checked (``stack_problem``); None when none is ready.

    Raises:
        DamagedStack: its stack.json is damaged or hand-edited.
    """
    state = read_state(workdir)
    if state is None or state.get("state") != "ready":
        return None
    if problem := stack_problem(state):
        raise DamagedStack(
            f"{workdir / STATE_FILE}: {problem}; the file is damaged: stop that stack "
            f"({how_to_stop(state)}) and start it again, which writes it afresh"
        )
    return state


@contextlib.contextmanager
def stack(
    workdir: Path, *, variants: int | None, keep_running: bool, running: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """``running`` (the stack ready in ``workdir``, as ``running_stack`` read and checked it), or one
    started in ``workdir`` for the duration of the block.

    A stack started here makes ``variants`` images per SKU when given (``--variants``), else what
    ``SKUFORGE_GENERATION_VARIANTS_PER_SKU`` says, else ``DEFAULT_VARIANTS``. It is stopped at the end
    of the block, and on Ctrl-C, SIGTERM or SIGHUP within it (those two raise KeyboardInterrupt there);
    its supervisor gets SIGINT, and another if it has not stopped after ``STACK_STOP_TIMEOUT_S``.
    """
    if running is not None:
        _say(f"using the stack already running from {workdir} (pid {running['supervisor_pid']})")
        yield running
        return
    env = {**os.environ, "SKUFORGE_GENERATION_VARIANTS_PER_SKU": started_stack_variants(variants)}
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "up.out"
    process: subprocess.Popen[bytes] | None = None
    # From before the stack starts until it has stopped: a SIGTERM or SIGHUP that simply ended this
    # process would leave the whole stack running.
    with stopped_as_interrupt():
        try:
            _say(f"starting the stack: skuforge up --workdir {workdir}   (its output: {log_path})")
            with open_log(log_path) as log:  # moved to up.out.1 first when it has grown too big
                shown = first_line = len(log_path.read_text(errors="replace").splitlines())
                process = subprocess.Popen(
                    [sys.executable, "-m", "skuforge_cli", "up", "--workdir", str(workdir)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # our Ctrl-C is forwarded below, once, in order
                )
            deadline = time.monotonic() + STACK_START_TIMEOUT_S
            while True:
                lines = log_path.read_text(errors="replace").splitlines()
                for line in lines[shown:]:
                    if ": ready" in line or "failed" in line or "login" in line:
                        print("   " + line, flush=True)
                shown = len(lines)
                state = read_state(workdir)
                if (
                    state is not None
                    and state.get("state") == "ready"
                    and state["supervisor_pid"] == process.pid
                ):
                    break
                if process.poll() is not None:
                    # Its last line says why (another `skuforge up` starting from this workdir holds
                    # its lock, a bad setting): the exit code alone sent everyone to read up.out.
                    written = log_path.read_text(errors="replace").splitlines()[first_line:]
                    why = next((line.strip() for line in reversed(written) if line.strip()), "")
                    raise SystemExit(
                        f"skuforge up exited with {process.returncode}"
                        + (f": {why.removeprefix('skuforge up: ')}" if why else "")
                        + f"; see {log_path}"
                    )
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"the stack was not ready within {STACK_START_TIMEOUT_S:.0f}s; see {log_path}"
                    )
                time.sleep(1)
            yield state
            if keep_running:
                _say("the stack keeps running (--keep-running): Ctrl-C stops it")
                with contextlib.suppress(KeyboardInterrupt):
                    process.wait()
                _stack_ended_by_itself(process, log_path)
        finally:
            if process is not None and process.poll() is None:
                _stop_stack(process)


def started_stack_variants(variants: int | None) -> str:
    """SKUFORGE_GENERATION_VARIANTS_PER_SKU of a stack the demo starts: ``variants`` (``--variants``)
    when given, else the shell's when set and not empty, else ``DEFAULT_VARIANTS``."""
    if variants is not None:
        return str(variants)
    return os.environ.get("SKUFORGE_GENERATION_VARIANTS_PER_SKU") or str(DEFAULT_VARIANTS)


def started_stack_scenes(synthetic: bool) -> dict[str, str]:
    """What a stack the demo starts gets in place of the shell's SKUFORGE_SCENES_URI: for real photos,
    when the shell names no scenes, the sample store photos (docs/evaluation.md: what real scenes do
    for a classifier); else nothing (the shell's, or none)."""
    if synthetic or os.environ.get("SKUFORGE_SCENES_URI") or not SAMPLE_SCENES.is_dir():
        return {}
    return {"SKUFORGE_SCENES_URI": str(SAMPLE_SCENES)}


@contextlib.contextmanager
def _environ_with(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set within the block, and as it was after it."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stack_ended_by_itself(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """After ``--keep-running``'s wait: a stack that ended with a failure (killed, crashed) fails the
    demo, where it exited with the run's code as if the user had stopped it; one stopped by a request
    of its own (``kill``: it exits 0) is said. A stack still running was stopped by Ctrl-C here."""
    code = process.poll()
    if code is None:
        return
    if code != 0:
        raise SystemExit(
            f"the stack kept running for --keep-running ended by itself: skuforge up {exit_reason(code)}; "
            f"see {log_path}"
        )
    _say("the stack was stopped (skuforge up exited 0)")


def _stop_stack(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to the stack's supervisor (``skuforge up``), as Ctrl-C; a second SIGINT if it has not
    stopped within ``STACK_STOP_TIMEOUT_S``, or at once on the demo's own second Ctrl-C (SIGTERM,
    SIGHUP) meanwhile (it kills what is left), and SIGKILL to it alone if that has not ended it within
    ``STACK_KILL_TIMEOUT_S``."""
    _say("stopping the stack")
    try:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=STACK_STOP_TIMEOUT_S)
        return
    except subprocess.TimeoutExpired:
        # Killing the supervisor left the services still running as they were: the kernel sends them
        # SIGTERM (their parent-death signal), which they had had already and did not heed. Ctrl-C
        # again has it kill them.
        _say(f"the stack did not stop within {STACK_STOP_TIMEOUT_S:.0f}s; killing what is left of it")
    except KeyboardInterrupt:
        # Passed on, as `skuforge up` in a terminal would get it: it ended this wait and the demo, and
        # left the stack stopping in the background, each service waiting out its grace.
        _say("interrupted again; killing what is left of the stack")
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STACK_KILL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Killing its process group would reach no more: every service has a session of its own.
        _say(f"the stack's supervisor did not end within {STACK_KILL_TIMEOUT_S:.0f}s more; killing it")
        process.kill()
        process.wait()


def images_per_sku(running: Mapping[str, Any]) -> int:
    """What the running stack's generator makes per SKU (the demo waits for that many), not what this
    shell's SKUFORGE_GENERATION_VARIANTS_PER_SKU would say: the stack may have been started without it."""
    from shared.generation.settings import GenerationSettings

    return stack_variants(running) or load_settings(GenerationSettings).generation_variants_per_sku


def stack_variants(state: Mapping[str, Any]) -> int | None:
    """Images per SKU the generator of a running stack makes: the setting in its environment, else the
    default; None when its state says something that is not a number."""
    from shared.generation.settings import GenerationSettings

    configured = (state.get("env") or {}).get("SKUFORGE_GENERATION_VARIANTS_PER_SKU")
    if not configured:
        return int(GenerationSettings.model_fields["generation_variants_per_sku"].default)
    try:
        return int(configured)
    except ValueError:
        return None


def stack_problem(state: Mapping[str, Any]) -> str | None:
    """What keeps the demo from using a running stack's state (its stack.json), or None.

    Checked before the demo uses the stack: a damaged or hand-edited field was an AttributeError or
    TypeError traceback, some only after the SKUs had gone through the stack.
    """
    env = state.get("env")
    if not isinstance(env, dict):
        return f"env is {type(env).__name__}, not an object of settings"
    if not_text := [name for name, value in env.items() if not isinstance(value, str)]:
        return f"env: {', '.join(not_text)}: not text"
    services = state.get("services")
    stages = [*FOLLOWED, "trainstore"]
    if not isinstance(services, dict) or not all(
        isinstance(services.get(stage), dict) and isinstance(services[stage].get("metrics"), str | None)
        for stage in stages
    ):
        return f"services does not hold an object for each of {', '.join(stages)}"
    if not_text := [field for field in STACK_TEXT_FIELDS if not isinstance(state.get(field), str)]:
        return f"{', '.join(not_text)}: not text"
    return None


def how_to_stop(state: Mapping[str, Any]) -> str:
    """How a person stops the running stack of ``state``."""
    pid = state["supervisor_pid"]
    return f"Ctrl-C where skuforge up runs, or kill -INT {pid}"


def _not_ready_hint(workdir: Path) -> str:
    """Why a read-only ``workdir`` with a live stack must still be writable: that stack is not ready
    (still starting or stopping), so the demo would start its own there; empty when none runs."""
    state = read_state(workdir)
    if state is None:
        return ""
    return (
        f"; the stack there is not ready yet (it is {state.get('state')}): run the demo again once a "
        "stack there is ready, or give a --workdir you can write in"
    )


def interrupted_line(workdir: Path, *, stack_entered: bool, stack_was_running: bool) -> str:
    """What a Ctrl-C of the demo left behind, in one line: the stack stopped, still running, or none.

    Asked of the workdir, not assumed: a third Ctrl-C while the stack stops can leave it running.
    """
    state = read_state(workdir)
    if state is not None and stack_was_running:
        return f"interrupted; the stack of {workdir} keeps running, as before the demo ({how_to_stop(state)})"
    if state is not None:
        return f"interrupted; the stack of {workdir} was left running; stop it with {how_to_stop(state)}"
    if stack_was_running:
        return f"interrupted; the stack of {workdir} the demo used is no longer running"
    if stack_entered:
        return f"interrupted; the stack the demo started from {workdir} was stopped"
    return "interrupted; no stack was started"


# --------------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------------


def decided_items(
    state: FlowState, store: ObjectStore, console_db: str, sku_ids: list[str]
) -> tuple[set[str], set[str]]:
    """This run's decisions where they land: items its gate accepted that are in the retraining
    store, and items its gate flagged that are in the console's queue.

    Item ids are stable across runs of the same SKUs, so the store and the console can already
    hold the same ids from an earlier run; only this run's decisions count.
    """
    from services.console.tasks import TaskFilter, TaskStore
    from shared.trainstore.manifest import ManifestStore
    from shared.trainstore.settings import TrainstoreSettings

    manifests = ManifestStore(store, load_settings(TrainstoreSettings).trainstore_prefix)
    stored = {
        row.item_id
        for row in manifests.iter_rows(sku_ids)
        if row.source == "synthetic" and row.status in ("accepted", "approved", "rejected")
    }
    queued: set[str] = set()
    if Path(console_db).exists():
        queued = {task.item_id for task in TaskStore(console_db).query(TaskFilter(state=None), limit=100_000)}
    return this_runs_decisions(state, stored, queued)


def this_runs_decisions(state: FlowState, stored: set[str], queued: set[str]) -> tuple[set[str], set[str]]:
    """Of the item ids in the store and in the console, those this run's gate accepted / flagged."""
    generated = set(state.records[IMAGE_GENERATED.name])
    accepted = set(state.records[GATE_ACCEPTED.name]) & generated
    flagged = set(state.records[CORRECTION_PENDING.name]) & generated
    return stored & accepted, queued & flagged


def expected_generated(state: FlowState, variants: int) -> int:
    """Images the generator should make: ``variants`` per captioned SKU that has a usable photo, except
    SKUs whose ``sku.captioned`` it dead-lettered (it makes none of their images then)."""
    captioned: list[SkuCaptioned] = state.payloads(SKU_CAPTIONED)
    refused = {d.sku_id for d in state.dead if d.original_topic.endswith(SKU_CAPTIONED.name)}
    return variants * sum(
        1 for sku in captioned if sku.sku.sku_id not in refused and any(photo.usable for photo in sku.photos)
    )


def progress_line(state: FlowState, stored: set[str], queued: set[str], skus: int, expected: int) -> str:
    """One line: how far each stage got."""
    accepted, flagged = state.count(GATE_ACCEPTED), state.count(CORRECTION_PENDING)
    dead = f" · dead-lettered {len(state.dead)}" if state.dead else ""
    return (
        f"captioned {state.count(SKU_CAPTIONED)}/{skus} SKUs · "
        f"generated {state.count(IMAGE_GENERATED)}/{expected} · matted {state.count(IMAGE_MATTED)} · "
        f"gated {accepted + flagged} ({accepted} accepted, {flagged} flagged) · "
        f"in store {len(stored)} · in console {len(queued)}{dead}"
    )


def handler_ms(metrics_url: str | None, stage: str) -> float | None:
    """Mean handler time of the stage since its process started, from its /metrics; None where that is
    down, or answers with something other than Prometheus text (the table then shows "-")."""
    if not metrics_url:
        return None
    total = count = 0.0
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
        # Parsed lazily: a page that is not metrics (the port taken by another server) raises while
        # iterating. It ended the demo in a traceback after the run, before the report was written.
        for family in text_string_to_metric_families(text):
            if family.name == "skuforge_handler_seconds":
                for sample in family.samples:
                    if sample.labels.get("stage") == stage and sample.name.endswith("_sum"):
                        total += sample.value
                    elif sample.labels.get("stage") == stage and sample.name.endswith("_count"):
                        count += sample.value
    except (OSError, http.client.HTTPException, ValueError):
        return None
    return total / count * 1000 if count else None


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``skuforge demo``; 0 when every generated image was decided, 1 on time-out or when no image was
    generated at all, 2 on bad input, 130 on Ctrl-C (the stack it started is stopped first). With
    ``--keep-running``, a stop after the report is the run's own code; 1 if the stack failed meanwhile."""
    parser = argparse.ArgumentParser(
        prog="skuforge demo",
        description=(
            "SKUs through the whole stack; prints a summary and writes OUT/report.html. By default the "
            "SKUs are the real photos committed in samples/grocerystore (GroceryStoreDataset, MIT)."
        ),
    )
    parser.add_argument(
        "--out",
        type=path_argument("folder"),
        default=Path("demo-out"),
        help="report folder (default %(default)s): OUT/report.html, its pictures in OUT/images; "
        "--synthetic renders into OUT/catalogue. Each run replaces those two folders of an earlier "
        "run, and refuses to start where they hold files the demo did not write",
    )
    parser.add_argument(
        "--workdir",
        type=path_argument("folder"),
        default=DEFAULT_WORKDIR,
        help="the stack's workdir (default %(default)s)",
    )
    parser.add_argument(
        "--variants",
        type=positive_int,
        default=None,
        help=f"generated images per SKU of a stack the demo starts, at most {MOST_VARIANTS} (default: "
        f"SKUFORGE_GENERATION_VARIANTS_PER_SKU when set, else {DEFAULT_VARIANTS}); a stack already "
        "running keeps its own",
    )
    parser.add_argument(
        "--timeout-s",
        type=positive_float,
        default=600,
        help="give up waiting after this many seconds (default %(default)s)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep a stack started here up after the report (to look at the console), until Ctrl-C, "
        "SIGTERM or SIGHUP stops it; the exit status is then the run's own (0 when every image was "
        "decided), or 1 if the stack ended by itself with a failure meanwhile (killed, crashed)",
    )
    source = parser.add_argument_group(
        "which SKUs", "default: the real sample photos in samples/grocerystore (3 SKUs x 3 photos)"
    ).add_mutually_exclusive_group()
    source.add_argument(
        "--skus",
        type=path_argument("folder"),
        metavar="DIR",
        help="your own SKUs: a SKU folder (photos + metadata.json) or a folder of them, "
        "as 'skuforge ingest' reads",
    )
    source.add_argument(
        "--synthetic", action="store_true", help="render synthetic SKUs instead (options below)"
    )
    synthetic = parser.add_argument_group("synthetic SKUs (only with --synthetic)")
    for flag, default, number, placeholder, text in SYNTHETIC_OPTIONS:
        synthetic.add_argument(flag, type=number, metavar=placeholder, help=f"{text} (default {default})")
    args = parser.parse_args(argv)
    started = time.monotonic()

    if args.variants is not None and args.variants > MOST_VARIANTS:
        # Else the stack's `skuforge up` refused it (exit 2), once the SKUs were surveyed or rendered.
        parser.error(
            f"argument --variants: must be at most {MOST_VARIANTS} (the generator's most per SKU), "
            f"got {args.variants}"
        )
    given = [flag for flag, *_ in SYNTHETIC_OPTIONS if getattr(args, _dest(flag)) is not None]
    if given and not args.synthetic:
        parser.error(f"{', '.join(given)}: only with --synthetic")
    for flag, default, *_ in SYNTHETIC_OPTIONS:
        if getattr(args, _dest(flag)) is None:
            setattr(args, _dest(flag), default)
    problem = catalogue_id_problem(args.synthetic_skus, args.seed) if args.synthetic else None
    if problem:  # else a ValueError from the renderer, once the run had begun
        parser.error(f"--synthetic-skus {args.synthetic_skus} with --seed {args.seed}: {problem}")
    if args.skus is not None and not args.skus.is_dir():
        # A number may be the old --skus count, or a folder named so that is not here: both are said.
        hint = not_a_folder_hint(args.skus)
        if str(args.skus).isdigit():
            hint += f"; for {args.skus} synthetic SKUs: --synthetic --synthetic-skus {args.skus}"
        parser.error(f"--skus {args.skus}: not a directory of SKU folders{hint}")
    workdir = args.workdir.resolve()
    # A running stack's damaged stack.json is named now, before anything is rendered or ingested.
    try:
        running_before = running_stack(workdir)
    except DamagedStack as exc:
        print(f"skuforge demo: {exc}", file=sys.stderr)
        return 2
    # Found now, not in a traceback when the report is written at the end of the run.
    # The workdir may be a stack another user started, whose state the demo only reads; with no stack
    # ready there (one still starting or stopping included: stack() starts its own), the demo starts
    # one in it, so it must be writable.
    for option, folder, writable in (
        ("--out", args.out, True),
        ("--workdir", args.workdir, running_before is None),
    ):
        if problem := folder_problem(folder, writable=writable):
            hint = _not_ready_hint(workdir) if option == "--workdir" else ""
            parser.error(f"{option} {folder}: {problem}{hint}")
    # The report's pictures (and --synthetic's catalogue) replace an earlier run's: never someone's files.
    for owned in [args.out / "images", *([args.out / "catalogue"] if args.synthetic else [])]:
        if problem := not_owned_problem(owned):
            parser.error(f"--out {args.out}: {problem}")
    if problem := report_problem(args.out):
        parser.error(f"--out {args.out}: {problem}")
    # The stack the demo starts (`skuforge up`) gives its services its own broker's connection, Triton,
    # console ports, store and login in place of the shell's, and the demo takes them from stack.json:
    # the shell's values of those, for another deployment, are not checked here, as up does not check
    # them (a half-made SASL login or SKUFORGE_CONSOLE_PORT=99999 stopped the demo, not up).
    own_stack = stack_kafka_settings(workdir, None)
    if running_before is None:
        # The stack the demo starts would refuse a bad SKUFORGE_* variable (exit 2), but only once the
        # SKUs were rendered, and the demo then exited 1 with "skuforge up exited with 2".
        from skuforge_cli.main import load_all_settings

        try:
            # With the variants and scenes the stack is given: the shell's variants are replaced by
            # --variants, and empty ones by the demo's default, and those stopped the demo (exit 2) for a
            # stack that would run; so did a shell's {"scene": "photo"} for real photos, which the stack
            # composites onto the sample scenes.
            stack_gets = {
                "SKUFORGE_GENERATION_VARIANTS_PER_SKU": started_stack_variants(args.variants),
                **started_stack_scenes(args.synthetic),
            }
            with _environ_with(stack_gets):
                own_stack = stack_settings_before_start(workdir)
                load_all_settings(**own_stack)
        except ConfigError as exc:
            print(f"skuforge demo: {exc}", file=sys.stderr)
            return 2
    stack_entered = stack_was_running = False
    try:
        if args.synthetic:
            skus_dir = render_synthetic(args.out / "catalogue", args)
        else:
            skus_dir = args.skus if args.skus is not None else SAMPLE_SKUS
        try:
            surveyed = survey_folders(skus_dir, load_settings(**own_stack))  # it reads no Kafka setting
        except IngestError as exc:
            missing_samples = args.skus is None and not args.synthetic and not SAMPLE_SKUS.is_dir()
            hint = " (the sample photos ship with the repository; use --skus DIR or --synthetic)"
            print(f"skuforge demo: {exc}{hint if missing_samples else ''}", file=sys.stderr)
            return 2
        sku_ids = [sku_id for sku_id, _ in surveyed]
        photos = sum(count for _, count in surveyed)
        _say(f"{len(sku_ids)} SKUs, {photos} photos, from {_shown(skus_dir)}")

        # Read again (the stack may have stopped or restarted while the SKUs rendered) and checked again;
        # stack() uses this state as it was checked, not a read of its own.
        running_state = running_stack(workdir)
        if running_state is not None:
            stack_was_running = True
            # Variants and scenes are the generator's start-up settings: a running stack keeps its own.
            made = stack_variants(running_state)
            if args.variants is not None and made is not None and made != args.variants:
                print(
                    f"skuforge demo: note: the running stack of {workdir} makes {made} images per SKU; "
                    f"--variants {args.variants} is ignored; to change it, stop that stack "
                    f"({how_to_stop(running_state)}) and run the demo again",
                    file=sys.stderr,
                )
            if not args.synthetic and not (running_state.get("env") or {}).get("SKUFORGE_SCENES_URI"):
                # Said, as the variants are: the same command made the other kind of training set
                # depending on whether a stack was running (procedural scenes lowered top-1,
                # docs/evaluation.md).
                print(
                    f"skuforge demo: note: the running stack of {workdir} was started without "
                    "SKUFORGE_SCENES_URI: it composites these real photos on procedural scenes, not on "
                    "store photos as a stack the demo starts does; for those, stop that stack "
                    f"({how_to_stop(running_state)}) and run the demo again, or start it with "
                    f"SKUFORGE_SCENES_URI={os.environ.get('SKUFORGE_SCENES_URI') or _shown(SAMPLE_SCENES)}",
                    file=sys.stderr,
                )
        elif scenes := started_stack_scenes(args.synthetic):
            os.environ.update(scenes)  # real photos go on real scenes
            _say(
                f"scenes: the sample store photos in {_shown(SAMPLE_SCENES)} (SKUFORGE_SCENES_URI sets yours)"
            )
        stack_entered = True
        with stack(
            workdir, variants=args.variants, keep_running=args.keep_running, running=running_state
        ) as running:
            os.environ.update(running["env"])  # the stack's Kafka, store, topics, console database
            return run_flow(args, running, skus_dir, sku_ids, started, stack_was_running=stack_was_running)
    except DamagedStack as exc:
        print(f"skuforge demo: {exc}", file=sys.stderr)
        return 2
    except (IngestError, TransientError, BadInput) as exc:
        # The stack's own limits or its broker, met at ingest, or a stored object the report reads
        # gone or changed (the stack is stopped by then).
        print(f"skuforge demo: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # --out's catalogue, the workdir, the report: one line
        print(f"skuforge demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The stack this demo started is stopped by then (stack()'s finally); say so, not a traceback.
        line = interrupted_line(workdir, stack_entered=stack_entered, stack_was_running=stack_was_running)
        print(f"skuforge demo: {line}", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT_CODE


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is under it (shorter lines)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def render_synthetic(catalogue: Path, args: argparse.Namespace) -> Path:
    """Render ``--synthetic-skus`` renderer SKUs under ``catalogue``; returns their ``skus`` folder.

    The catalogue of an earlier run into the same ``--out`` goes first: its SKU folders (another
    seed, more SKUs) would be ingested beside this run's.
    """
    from shared.synth import write_sku_folders

    replace_owned_folder(catalogue)
    write_sku_folders(catalogue, args.synthetic_skus, args.photos_per_sku, args.seed, args.size)
    skus_dir = catalogue / "skus"
    _say(f"rendered {args.synthetic_skus} synthetic SKUs x {args.photos_per_sku} photos into {skus_dir}")
    return skus_dir


def run_flow(
    args: argparse.Namespace,
    running: dict[str, Any],
    skus_dir: Path,
    sku_ids: list[str],
    started: float,
    *,
    stack_was_running: bool = False,
) -> int:
    """Ingest, follow until decided, summarise, write the report; returns the exit code."""
    from services.gate.config import GateSettings
    from services.ingest.ingest import ingest_path

    settings = load_settings()
    store = open_settings_store(settings)
    since_ms = int(time.time() * 1000) - 2_000
    event_ids = ingest_path(skus_dir, settings, store=store)
    # A stack that already ran these very SKUs (same photos, same metadata: the same ingest event) skips
    # them this time; what its stages made of that event then is this run's result.
    stack_started_ms = int(float(running.get("started_at") or 0) * 1000) if stack_was_running else None
    state, stored, queued, complete = wait_until_decided(
        settings,
        store,
        running,
        sku_ids,
        since_ms,
        args.timeout_s,
        trace_ids=event_ids if stack_started_ms else (),
        trace_since_ms=stack_started_ms or None,
    )
    views = sku_views(state, store, sku_ids)
    stages = [
        StageView(
            stage,
            state.outputs(stage),
            state.span_s(stage),
            handler_ms(running["services"][stage].get("metrics"), stage),
        )
        for stage in FOLLOWED
    ]
    stages.append(
        StageView(
            "trainstore",
            len(stored) + len(queued),
            None,
            handler_ms(running["services"]["trainstore"].get("metrics"), "trainstore"),
        )
    )
    elapsed = time.monotonic() - started
    console_lines = console_help(running)
    print_summary(views, stages, console_lines, elapsed)
    report = write_report(
        args.out,
        store,
        views,
        stages,
        iou_threshold=load_settings(GateSettings).gate_iou_min,
        console_lines=console_lines,
        elapsed_s=elapsed,
        complete=complete,
        source=str(_shown(skus_dir)),
    )
    _say(f"report: {report.resolve()}")
    for letter in state.dead:
        _say(f"dead letter from {letter.stage}: {letter.reason}: {letter.detail}")
    for line in state.unreadable:
        _say(f"record skipped, unreadable: {line}")
    code, why = flow_exit_code(views, complete)
    if why:
        _say(why)
    return code


def flow_exit_code(views: Sequence[SkuView], complete: bool) -> tuple[int, str | None]:
    """The demo's exit code once the flow settled or timed out, and a line saying why it is not 0.

    Every SKU refused (at ingest, or every photo unusable) settles the flow at once with nothing
    generated: that exited 0, and a script running the demo took a run that made no image for a pass.
    """
    if not complete:
        return 1, None
    if not any(view.generated for view in views):
        return 1, "no image was generated: every SKU was refused (the dead letters above say why)"
    return 0, None


def wait_until_decided(
    settings: Settings,
    store: ObjectStore,
    running: dict[str, Any],
    sku_ids: list[str],
    since_ms: int,
    timeout_s: float,
    *,
    trace_ids: Iterable[str] = (),
    trace_since_ms: int | None = None,
) -> tuple[FlowState, set[str], set[str], bool]:
    """Follow the flow of ``sku_ids`` (ingested after ``since_ms``) until every image is decided.

    ``trace_ids`` (this run's ingest event ids) also follows what the stack did with those very
    events from ``trace_since_ms`` on (``FlowTracker``). Returns the flow state, the generated items in
    the store and in the console, and whether it completed (False: ``timeout_s`` passed first).
    """

    variants = images_per_sku(running)
    _say(f"ingested {len(sku_ids)} SKUs; waiting until all {variants} images per SKU are decided")
    tracker = FlowTracker(settings, sku_ids, since_ms, trace_ids=trace_ids, trace_since_ms=trace_since_ms)
    deadline = time.monotonic() + timeout_s
    last_line, last_shown = "", 0.0
    complete = False
    told_earlier = False
    try:
        while True:
            state = tracker.poll()
            if tracker.earlier_run_ms is not None and not told_earlier:
                told_earlier = True
                when = time.strftime("%H:%M:%S", time.localtime(tracker.earlier_run_ms / 1000))
                _say(
                    f"this stack already ran these SKUs, same photos and metadata, at {when}; a stage does "
                    "not handle the same ingest twice, so this shows that run (restart the stack to redo it)"
                )
            stored, queued = decided_items(state, store, running["console_db"], sku_ids)
            expected = expected_generated(state, variants)
            line = progress_line(state, stored, queued, len(sku_ids), expected)
            if line != last_line or time.monotonic() - last_shown > 15:
                _say(line)
                last_line, last_shown = line, time.monotonic()
            ingest_done = state.count(SKU_CAPTIONED) + len(
                {d.sku_id for d in state.dead if d.original_topic.endswith(SKU_INGESTED.name)}
            ) >= len(sku_ids)
            generated = state.count(IMAGE_GENERATED)
            item_letters = sum(
                1
                for d in state.dead
                if not d.original_topic.endswith(("sku.ingested.v1", "sku.captioned.v1"))
            )
            gated = state.count(GATE_ACCEPTED) + state.count(CORRECTION_PENDING)
            # Both: this run's gate decided every image (the report shows them), and each decision is
            # in the store or the console (a second run of the same SKUs finds the first run's there).
            settled = min(gated, len(stored | queued)) + item_letters >= generated
            if ingest_done and generated >= expected and settled:
                complete = True
                break
            if time.monotonic() > deadline:
                _say(f"timed out after {timeout_s:.0f}s; the report shows what was decided so far")
                break
            time.sleep(1)
    finally:
        tracker.close()

    return state, stored, queued, complete


def sku_views(state: FlowState, store: ObjectStore, sku_ids: list[str]) -> list[SkuView]:
    """What the report shows per SKU, from the events of this run and the retraining store."""
    from shared.trainstore.manifest import ManifestStore
    from shared.trainstore.settings import TrainstoreSettings

    manifests = ManifestStore(store, load_settings(TrainstoreSettings).trainstore_prefix)
    ingested: dict[str, SkuIngested] = {p.sku.sku_id: p for p in state.payloads(SKU_INGESTED)}
    captioned: dict[str, SkuCaptioned] = {p.sku.sku_id: p for p in state.payloads(SKU_CAPTIONED)}
    refused = {d.sku_id: d.reason for d in state.dead if d.original_topic.endswith(SKU_INGESTED.name)}
    generated: list[ImageGenerated] = state.payloads(IMAGE_GENERATED)
    accepted: list[GateAccepted] = state.payloads(GATE_ACCEPTED)
    flagged: list[CorrectionPending] = state.payloads(CORRECTION_PENDING)

    def view(event: GateAccepted | CorrectionPending) -> ItemView:
        matted = event.matted
        reasons = event.reasons if isinstance(event, CorrectionPending) else []
        return ItemView(
            matted.generated.item_id,
            matted.generated.image,
            matted.predicted_mask,
            matted.generated.expected_mask,
            event.iou,
            reasons,
        )

    def references(sku_id: str) -> list[ReferenceView]:
        sku = ingested.get(sku_id)
        if sku is None:
            return []
        found = {photo.photo_id: photo for photo in captioned[sku_id].photos} if sku_id in captioned else {}
        views = []
        for photo in sku.photos:
            masked = found.get(photo.photo_id)
            if masked is not None:
                reason = masked.unusable_reason if not masked.usable else None
            else:
                reason = refused.get(sku_id, "not captioned")
            views.append(
                ReferenceView(
                    photo.original_filename,
                    photo.image,
                    masked.mask if masked is not None else None,
                    reason,
                    masked.caption if masked is not None else "",
                )
            )
        return views

    views = []
    for sku_id in sku_ids:
        sku = ingested.get(sku_id)
        # The store keeps the photos of every earlier run of the SKU; only this run's are its result.
        photo_ids = {photo.photo_id for photo in sku.photos} if sku else set()
        real = sum(
            1
            for row in manifests.iter_rows([sku_id])
            if row.source == "real" and row.status == "reference" and row.item_id in photo_ids
        )
        views.append(
            SkuView(
                sku_id=sku_id,
                name=sku.sku.name if sku else sku_id,
                category=sku.sku.category if sku else "",
                photos=references(sku_id),
                generated=sum(1 for g in generated if g.sku.sku_id == sku_id),
                accepted=[view(a) for a in accepted if a.matted.generated.sku.sku_id == sku_id],
                flagged=[view(f) for f in flagged if f.matted.generated.sku.sku_id == sku_id],
                stored_real=real,
                cut_from_in_store=sku_id in captioned and cut_from_in_store(captioned[sku_id]),
            )
        )
    return views


def cut_from_in_store(captioned: SkuCaptioned) -> bool:
    """Whether the generator cuts this SKU's products out of in-store photos: it has usable photos,
    none of them on a plain background (``cutout_sources`` then takes them all)."""
    from shared.generation.backend import cut_from_cluttered_photos
    from shared.generation.settings import GenerationSettings

    least = load_settings(GenerationSettings).generation_min_plain_background
    usable = [photo for photo in captioned.photos if photo.usable and photo.mask is not None]
    return cut_from_cluttered_photos(usable, least)


def console_help(running: dict[str, Any]) -> list[str]:
    """How to open the console on the flagged images."""
    workdir = running["workdir"]
    return [
        f"1. keep (or start again) the stack:  skuforge up --workdir {workdir}",
        f"2. open {running['console_url']} and log in as '{running['console_user']}'",
        f"   (password: after the ':' in {running['console_login_file']}; or your SKUFORGE_CONSOLE_USERS)",
        "3. take the next flagged item, fix or approve its mask, or reject it; the decision goes to",
        "   correction.resolved and the trainstore stores approved items beside the accepted ones.",
    ]


def print_summary(
    views: list[SkuView], stages: list[StageView], console_lines: list[str], elapsed_s: float
) -> None:
    """The summary on the terminal."""
    print(flush=True)
    columns = ("real", "stored real", "generated", "accepted", "flagged", "mean IoU")
    width = max([14, *(len(sku.sku_id) for sku in views)])
    print(f"{'SKU':<{width}} " + " ".join(f"{name:>{max(5, len(name))}}" for name in columns))
    for sku in views:
        mean = f"{sku.mean_iou:.3f}" if sku.mean_iou is not None else "-"
        print(
            f"{sku.sku_id:<{width}} {len(sku.photos):>5} {sku.stored_real:>11} {sku.generated:>9} "
            f"{len(sku.accepted):>8} {len(sku.flagged):>7} {mean:>8}"
        )
    for note in [sku.in_store_note for sku in views if sku.in_store_note]:
        print("\n" + textwrap.fill(f"note: {note} (docs/evaluation.md)", width=100, subsequent_indent="  "))
    print()
    print(f"{'stage':<12} {'items out':>9} {'span s':>8} {'items/min':>10} {'handler ms':>11}")
    for stage in stages:
        span = f"{stage.span_s:.1f}" if stage.span_s else "-"
        rate = f"{stage.per_minute:.1f}" if stage.per_minute else "-"
        handler = f"{stage.handler_ms:.0f}" if stage.handler_ms is not None else "-"
        print(f"{stage.stage:<12} {stage.items:>9} {span:>8} {rate:>10} {handler:>11}")
    print()
    flagged = sum(len(sku.flagged) for sku in views)
    print(
        f"review the {flagged} flagged images in the console:"
        if flagged
        else "nothing was flagged; when an image is, review it in the console:"
    )
    for line in console_lines:
        print("  " + line)
    print(f"\ndemo took {elapsed_s:.0f}s", flush=True)
