"""The generation model on NVIDIA Triton, served with PyTriton: ``skuforge serve generator``.

Each configured backend (``SKUFORGE_GENERATION_BACKEND``, or ``--backend`` given several times)
becomes one Triton model, ``skuforge_generator_<backend>``, with the tensors of
``services/generator/protocol.py``. Triton's dynamic batcher merges concurrent requests into
batches of up to ``SKUFORGE_GENERATION_MAX_BATCH_SIZE`` rows, waiting at most
``SKUFORGE_GENERATION_BATCH_DELAY_US`` for a batch to fill, and its queue policy refuses requests
beyond ``SKUFORGE_GENERATION_MAX_QUEUE_SIZE`` at once, so overload is an immediate, clear error
to the caller (the stage backs off) rather than an ever-growing queue.

The process serves two sets of metrics: Triton's own (``nv_*``: queue time, batch sizes) on
``SKUFORGE_GENERATION_SERVER_METRICS_PORT``, and its own Python ones (prometheus_client's default
registry: scene-library files skipped at load...) with ``/healthz`` and ``/readyz`` on
``SKUFORGE_METRICS_PORT`` (default: its port in ``schemas/flow.py``), both on
``SKUFORGE_GENERATION_SERVER_ADDRESS``.

The same ``GenerationModel`` callable is what a production Triton on GPU serves; see
``deploy/triton/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import REGISTRY

from schemas.flow import TRITON
from services.generator.protocol import (
    BACKEND_ERROR_PREFIX,
    BACKEND_UNAVAILABLE_PREFIX,
    INPUTS,
    MAX_TEXT_BYTES,
    OPTIONAL_INPUTS,
    OUTPUTS,
    model_name,
)
from shared.argtypes import NotJsonNumber, loads_json
from shared.commands import run_command
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput, TransientError
from shared.generation.backend import (
    MAX_SIZE_PX,
    GenerationBackend,
    GenerationRequest,
    RowOutcome,
    open_backend,
)
from shared.generation.diffusion import (
    OTHERS_HOLD_SHARE,
    DiffusionModelError,
    DiffusionSettings,
    gpu_memory_held_by_others,
    is_out_of_memory,
    release_memory,
)
from shared.generation.scenes import NoScenePhotos, SceneLibrary
from shared.generation.settings import GenerationSettings
from shared.observability import HealthServer, configure_logging
from shared.signals import stopped_as_interrupt
from shared.store import open_store

log = logging.getLogger("skuforge.generator.server")


class BackendFailed(Exception):
    """What the backend raised on one row served alone (not a refusal): reported in its ``error``."""


class BackendUnavailable(BackendFailed):
    """The backend could not serve the row now (a ``TransientError``: its registry or store away, or the
    model cache refusing or unable to hold an adapter's copy)."""


class GenerationModel:
    """The Triton callable: a list of requests (each a batch of variant rows) → one output dict each.

    A row the backend refuses (bad mask, unknown parameter...) gets its message in ``error`` and
    zero images; the rest of the batch is served. All rows of all requests in a batch reach the
    backend together (``generate_many``), so the diffusion backend can paint them in one call.
    A backend that raises on the batch gets its rows again one at a time, so a row it cannot serve
    (a bug on that input) fails alone, its ``error`` prefixed ``backend_error:``; so does a row the
    backend answers wrongly (not a list of one sample, one of another size than asked, parameters no
    JSON holds), and a batch answered with another number of outcomes than it has rows is served again
    one row at a time. Nothing the backend answers is raised: Triton answers that INTERNAL for the
    whole batch, which the client reads as Triton away and retries for ever.
    Only a ``BadInput`` the backend raises is the row's own fault (a ``ValueError`` from inside torch
    or diffusers is the backend's); a store away, or an adapter's copy the model cache refuses or
    cannot hold (``TransientError``), is ``backend_unavailable:``, logged in a line without a traceback, which
    the stage retries without dead-lettering. The GPU out of memory even for one row is
    ``backend_unavailable:`` while other processes hold ``OTHERS_HOLD_SHARE`` of its memory more than
    they did when the backend had loaded (the LoRA trainer beside it: wait for it), else
    ``backend_error:``: a row too big for the GPU on its own would hold its partition forever, so
    the stage retries it a few times and then dead-letters it, replayable once the settings allow.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        max_pixels: int = Settings.model_fields["max_image_pixels"].default,
    ) -> None:
        self.backend = backend
        # SKUFORGE_MAX_IMAGE_PIXELS: the stage shrinks its references well below; another client's
        # larger one (any size gRPC carries) took seconds and gigabytes a row to paint.
        self.max_pixels = max_pixels
        # What other processes held once the backend was loaded (CUDA contexts, Triton's own pool, an
        # idle trainer's context): a row waits only for what they took beyond it.
        self.others_at_start = gpu_memory_held_by_others()

    def __call__(
        self, requests: Sequence[Mapping[str, npt.NDArray[Any]]]
    ) -> list[dict[str, npt.NDArray[Any]]]:
        """Serve one batch Triton formed (several requests, rows stacked per request).

        Every row of every request goes to the backend in one ``generate_many`` call, so a backend
        that batches (diffusion) paints rows sharing an adapter and a size in one pipeline call.
        """
        parsed = [self._parse_request(request) for request in requests]
        valid = [row for _, rows in parsed for row in rows if isinstance(row, GenerationRequest)]
        served: list[RowOutcome | BackendFailed] | None = None
        try:
            served = list(self._generated(valid))
        except TransientError as exc:  # a store or cache the operator must see to: a line, no traceback
            log.warning(
                "the %s backend cannot serve a batch of %d rows now (%s); serving them one by one",
                self.backend.name,
                len(valid),
                exc,
            )
        except Exception as exc:
            # One row the backend cannot serve (a bug on some input) would fail every request of
            # every batch it lands in, and the stage would retry it forever: serve the rows alone.
            if is_out_of_memory(exc):
                log.warning(
                    "the %s backend ran out of memory on a batch of %d rows; serving them one by one",
                    self.backend.name,
                    len(valid),
                )
            else:
                log.exception(
                    "the %s backend failed on a batch of %d rows; serving them one by one",
                    self.backend.name,
                    len(valid),
                )
        if served is None:
            # Out of the except block: the failed batch's frames (and their GPU tensors) are gone.
            release_memory()
            served = [self._serve_alone(row) for row in valid]
        outcomes = iter(served)
        answers = []
        for size, rows in parsed:
            answers.append(
                self._answer(
                    size, [next(outcomes) if isinstance(row, GenerationRequest) else row for row in rows]
                )
            )
        return answers

    def _generated(self, rows: list[GenerationRequest]) -> list[RowOutcome]:
        """The backend's outcomes for ``rows``, one each; ``RuntimeError`` when it answers another number
        (its bug: one too few ended the batch in a ``StopIteration``, answered INTERNAL)."""
        outcomes = list(self.backend.generate_many(rows))
        if len(outcomes) != len(rows):
            raise RuntimeError(
                f"the {self.backend.name} backend answered {len(outcomes)} outcomes for {len(rows)} rows"
            )
        return outcomes

    def _serve_alone(self, row: GenerationRequest) -> RowOutcome | BackendFailed:
        """One row on its own: its outcome, or what the backend raised on it."""
        failure: BackendFailed
        out_of_memory = False
        try:
            (outcome,) = self._generated([row])
            return outcome
        except BadInput as exc:
            return exc  # the project's own refusal: the row's fault
        except TransientError as exc:
            log.warning(
                "the %s backend cannot serve variant seed %d now: %s", self.backend.name, row.seed, exc
            )
            return BackendUnavailable(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            if is_out_of_memory(exc):
                log.warning(
                    "the %s backend ran out of memory on variant seed %d alone: %s",
                    self.backend.name,
                    row.seed,
                    exc,
                )
                out_of_memory = True
                failure = BackendFailed(f"out of GPU memory even alone: {type(exc).__name__}: {exc}")
            else:
                log.exception("the %s backend failed on variant seed %d", self.backend.name, row.seed)
                failure = BackendFailed(f"{type(exc).__name__}: {exc}")
        release_memory()  # out of the except block, before the next row
        taken = gpu_memory_held_by_others() - self.others_at_start if out_of_memory else 0.0
        if taken >= OTHERS_HOLD_SHARE:
            # Another process took the memory since start-up (the LoRA trainer on the same GPU): wait.
            return BackendUnavailable(
                f"{failure}; other processes took {taken:.0%} of the GPU's memory since start-up"
            )
        return failure

    def _parse_request(
        self, request: Mapping[str, npt.NDArray[Any]]
    ) -> tuple[int, list[GenerationRequest | ValueError]]:
        """The request's size and its rows as backend requests (or why a row cannot be one).

        A request without a required input, or with a size it cannot have (its rows asking for different
        sizes, or one out of 1 to ``MAX_SIZE_PX``), refuses each of its rows, answered with 1 x 1 images;
        so does a reference of more than ``max_pixels`` pixels (its images are of the size asked).
        Raised, it failed every request Triton had batched with this one, as did the 0 x 0 images of
        size 0 (PyTriton cannot send an empty tensor: "memoryview: cannot cast view with zeros in
        shape"); and a huge size allocated its zero images first.
        """
        rows = int(next(iter(request.values())).shape[0])  # Triton checked every input has as many
        missing = [name for name, _, _ in INPUTS if name not in request]
        if missing:
            # Triton counts the inputs, not their names: an optional one sent in place of a required
            # one got here, and its KeyError was answered INTERNAL, which clients retry for ever.
            refused = ValueError(
                f"the request has no {', '.join(missing)} input: send every input of the model"
            )
            return 1, [refused] * rows
        sizes = sorted({int(s) for s in np.asarray(request["size"]).reshape(-1)})
        if len(sizes) != 1:
            refused = ValueError(f"every row of one request must ask for the same size, got {sizes}")
            return 1, [refused] * rows
        (size,) = sizes
        if not 1 <= size <= MAX_SIZE_PX:
            return 1, [ValueError(f"size must be from 1 to {MAX_SIZE_PX} px, got {size}")] * rows
        height, width = request["reference"].shape[1:3]
        if height * width > self.max_pixels:
            refused = ValueError(
                f"reference is {width}x{height} px, more than SKUFORGE_MAX_IMAGE_PIXELS "
                f"({self.max_pixels}): shrink it first"
            )
            return size, [refused] * rows
        parsed: list[GenerationRequest | ValueError] = []
        for row in range(rows):
            try:
                parsed.append(_row_request(request, row, size))
            except ValueError as exc:
                parsed.append(exc)
        return size, parsed

    def _answer(self, size: int, outcomes: list[RowOutcome | BackendFailed]) -> dict[str, npt.NDArray[Any]]:
        """The output tensors of one request; a refused row gets its message and zero images."""
        rows = len(outcomes)
        images = np.zeros((rows, size, size, 3), dtype=np.uint8)
        masks = np.zeros((rows, size, size), dtype=np.uint8)
        used, adapters, errors = [b"{}"] * rows, [b""] * rows, [b""] * rows
        model_ids = [self.backend.model_id.encode()] * rows
        for row, outcome in enumerate(outcomes):
            if isinstance(outcome, BackendFailed):
                prefix = (
                    BACKEND_UNAVAILABLE_PREFIX
                    if isinstance(outcome, BackendUnavailable)
                    else BACKEND_ERROR_PREFIX
                )
                errors[row] = f"{prefix}{outcome}".encode()
                continue
            if isinstance(outcome, (ValueError, BadInput)):  # refused: report it, serve the others
                # A BadInput by its base name, subclasses too (ObjectMissing, ChecksumMismatch): the
                # client reads its reason only after "BadInput: ", and object_missing is replayable.
                kind = BadInput.__name__ if isinstance(outcome, BadInput) else type(outcome).__name__
                errors[row] = f"{kind}: {outcome}".encode()
                continue
            misshapen = _misshapen(outcome, size)
            if misshapen is not None:
                # The backend's bug, on this row: raised, it failed every request of the batch as
                # INTERNAL, which the client reads as Triton away and retries for ever.
                log.error("the %s backend %s", self.backend.name, misshapen)
                errors[row] = f"{BACKEND_ERROR_PREFIX}the {self.backend.name} backend {misshapen}".encode()
                continue
            sample = outcome[0]
            try:
                used[row] = json.dumps(sample.parameters, sort_keys=True, allow_nan=False).encode()
                adapters[row] = (sample.adapter_id or "").encode()
                images[row], masks[row] = sample.image, sample.expected_mask
            except Exception as exc:
                # As above: parameters no JSON holds (a numpy number), an adapter id that is no text...
                log.exception("the %s backend's answer to a row cannot be sent", self.backend.name)
                used[row], adapters[row], images[row], masks[row] = b"{}", b"", 0, 0
                errors[row] = (
                    f"{BACKEND_ERROR_PREFIX}the {self.backend.name} backend's answer cannot be sent: "
                    f"{type(exc).__name__}: {exc}"
                ).encode()
        return {
            "image": images,
            "expected_mask": masks,
            "parameters_used": _bytes_column(used),
            "adapter_used": _bytes_column(adapters),
            "model_id": _bytes_column(model_ids),
            "error": _bytes_column(errors),
        }


def _misshapen(samples: object, size: int) -> str | None:
    """What is wrong with a backend's answer to one row of ``size`` px (one sample, its image and mask
    that size); None when nothing is."""
    if not isinstance(samples, list):  # a bare sample, an exception other than a refusal
        return f"returned {type(samples).__name__} instead of a list of samples"
    if len(samples) != 1:
        return f"returned {len(samples)} samples for n=1"
    image, mask = samples[0].image.shape, samples[0].expected_mask.shape
    if image != (size, size, 3) or mask != (size, size):
        return f"returned an image of {image} and a mask of {mask} for size {size}"
    return None


def _row_request(request: Mapping[str, npt.NDArray[Any]], row: int, size: int) -> GenerationRequest:
    """Row ``row`` of a Triton request as one variant (n=1) for the backend."""
    try:
        # JSON's rules, not Python's looser json: a backend echoing an unknown key into parameters_used
        # answered NaN, Infinity or a number no float holds (1e400 read as inf), which no strict parser reads.
        parameters = loads_json(_text(request, "parameters", row) or "{}")
    except (json.JSONDecodeError, NotJsonNumber) as exc:
        raise ValueError(f"parameters are not JSON: {exc}") from None
    except RecursionError:  # '[[[[...' deeper than the parser recurses: raised, it failed the whole batch
        raise ValueError("parameters are nested too deeply to read") from None
    if not isinstance(parameters, dict):
        raise ValueError("parameters must be a JSON object")
    return GenerationRequest(
        reference=np.ascontiguousarray(request["reference"][row]),
        mask=np.ascontiguousarray(request["mask"][row]),
        prompt=_text(request, "prompt", row),
        negative_prompt=_text(request, "negative_prompt", row),
        seed=int(np.asarray(request["seed"][row]).reshape(-1)[0]),
        n=1,
        parameters=parameters,
        adapter_id=_text(request, "adapter_id", row) or None,
        series=_text(request, "series", row) or None,
        own_names=_own_names(request, row),
        size=size,
    )


def _own_names(request: Mapping[str, npt.NDArray[Any]], row: int) -> tuple[str, ...]:
    """The row's optional ``own_names`` (a JSON list of strings); () when the request has none."""
    if "own_names" not in request:
        return ()
    text = _text(request, "own_names", row) or "[]"
    try:
        names = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"own_names is not JSON: {exc}") from None
    except RecursionError:  # as for parameters
        raise ValueError("own_names is nested too deeply to read") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("own_names must be a JSON list of strings")
    return tuple(names)


def _text(request: Mapping[str, npt.NDArray[Any]], name: str, row: int) -> str:
    """Row ``row`` of the BYTES input ``name`` as text; a ``ValueError`` naming it when not UTF-8
    (another client's bytes: a bare ``UnicodeDecodeError`` left it to guess which input was wrong)
    or longer than ``MAX_TEXT_BYTES``."""
    value = np.asarray(request[name][row]).reshape(-1)[0]
    if not isinstance(value, bytes):
        value = str(value).encode()
    if len(value) > MAX_TEXT_BYTES:
        raise ValueError(f"{name} is {len(value)} bytes, more than {MAX_TEXT_BYTES}: shorten it")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def _bytes_column(values: list[bytes]) -> npt.NDArray[Any]:
    return np.array(values, dtype=object).reshape(-1, 1)


def put_libpython_first() -> None:
    """Triton's Python backend stub links libpython3.11.so: it must find this interpreter's first.

    The server inherits this process's environment when PyTriton starts it, so this must run
    before the ``Triton`` object starts.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = [part for part in os.environ.get("LD_LIBRARY_PATH", "").split(":") if part and part != libdir]
    os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *current])


def load_scenes(generation: GenerationSettings, shared: Settings) -> SceneLibrary | None:
    """The scene library of ``SKUFORGE_SCENES_URI``, loaded once per server; None when unset.
    ``ConfigError`` when its folder is missing or holds no usable photo."""
    if generation.scenes_uri is None:
        return None
    store = open_store(
        generation.scenes_uri,
        s3_endpoint_url=shared.s3_endpoint_url,
        s3_region=shared.s3_region,
        uri_from="SKUFORGE_SCENES_URI",
        writes=False,
    )
    try:
        return SceneLibrary.load(
            store,
            max_side_px=generation.scenes_max_side_px,
            max_pixels=shared.max_image_pixels,
            max_bytes=shared.max_image_bytes,
        )
    except NoScenePhotos as exc:  # the operator's to fix: one line from `skuforge serve`, not a traceback
        raise ConfigError(str(exc)) from None


def metrics_server(
    generation: GenerationSettings, shared: Settings, *, ready: Callable[[], bool]
) -> HealthServer:
    """The process's own ``/metrics`` (prometheus_client's default registry, where the scene library
    counts skipped files), ``/healthz`` and ``/readyz``: on ``SKUFORGE_METRICS_PORT`` (default: the
    server's port in ``schemas/flow.py``), bound where Triton's ports are. Not started.
    """
    port = TRITON.default_metrics_port if shared.metrics_port is None else shared.metrics_port
    triton_ports = {
        "SKUFORGE_GENERATION_SERVER_HTTP_PORT": generation.generation_server_http_port,
        "SKUFORGE_GENERATION_SERVER_GRPC_PORT": generation.generation_server_grpc_port,
        "SKUFORGE_GENERATION_SERVER_METRICS_PORT": generation.generation_server_metrics_port,
    }
    taken = [name for name, triton_port in triton_ports.items() if triton_port == port]
    if taken:  # bound before Triton starts, it would take the port Triton needs
        raise ConfigError(
            f"SKUFORGE_METRICS_PORT {port} is also {taken[0]}: "
            "the server's own /metrics needs a port of its own"
        )
    # No loop beats here: /healthz answers while the process does; Triton's own health is on its HTTP port.
    return HealthServer(
        REGISTRY,
        host=generation.generation_server_address,
        port=port,
        ready=ready,
        stale_after_s=math.inf,
        host_setting="SKUFORGE_GENERATION_SERVER_ADDRESS",
    )


def build_triton(
    generation: GenerationSettings,
    backends: Sequence[str],
    *,
    shared: Settings,
    diffusion: DiffusionSettings | None = None,
    workspace: str | None = None,
) -> Any:
    """A PyTriton ``Triton`` with one model per backend bound (not started: call ``run()``/``serve()``).

    ``diffusion`` is needed when ``backends`` has ``diffusion``. A scene folder or diffusion model
    that is missing or unusable is a ``ConfigError``.
    """
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
    from pytriton.model_config.common import TimeoutAction
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    # Scenes before Triton: a wrong SKUFORGE_SCENES_URI fails before any server is set up.
    scenes = load_scenes(generation, shared) if "composite" in backends else None
    put_libpython_first()
    config = TritonConfig(
        http_address=generation.generation_server_address,
        http_port=generation.generation_server_http_port,
        grpc_address=generation.generation_server_address,
        grpc_port=generation.generation_server_grpc_port,
        metrics_address=generation.generation_server_address,
        metrics_port=generation.generation_server_metrics_port,
        exit_on_error=True,
    )
    # Statistics stay readable (batch sizes executed: how dynamic batching is verified);
    # repository, shared memory, trace and logging controls keep PyTriton's token.
    security = TritonSecurityConfig(
        restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"]
    )
    triton = Triton(config=config, security_config=security, workspace=workspace)
    model_config = ModelConfig(
        max_batch_size=generation.generation_max_batch_size,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=generation.generation_batch_delay_us,
            default_queue_policy=QueuePolicy(
                max_queue_size=generation.generation_max_queue_size,
                timeout_action=TimeoutAction.REJECT,
            ),
        ),
    )
    for name in dict.fromkeys(backends):
        try:
            instances = [
                GenerationModel(
                    open_backend(
                        name,
                        diffusion=diffusion,
                        shared=shared,
                        scenes=scenes,
                        photo_share=generation.scenes_photo_share,
                    ),
                    max_pixels=shared.max_image_pixels,
                )
                for _ in range(generation.generation_instances)
            ]
        except DiffusionModelError as exc:  # the model or its cache unusable: one line, not a traceback
            raise ConfigError(str(exc)) from None
        triton.bind(
            model_name=model_name(name),
            infer_func=instances,
            inputs=[
                *(Tensor(name=n, dtype=dtype, shape=shape) for n, dtype, shape in INPUTS),
                *(
                    Tensor(name=n, dtype=dtype, shape=shape, optional=True)
                    for n, dtype, shape in OPTIONAL_INPUTS
                ),
            ],
            outputs=[Tensor(name=n, dtype=dtype, shape=shape) for n, dtype, shape in OUTPUTS],
            config=model_config,
            strict=True,
        )
        log.info(
            "model bound",
            extra={
                "model": model_name(name),
                "model_id": instances[0].backend.model_id,
                "instances": len(instances),
            },
        )
    return triton


def served_backends(requested: Sequence[str] | None, generation: GenerationSettings) -> list[str]:
    """The backends ``serve generator`` serves: those ``--backend`` names, else every backend the
    stage asks for (``SKUFORGE_GENERATION_BACKEND_MIX``'s with a share, or ``SKUFORGE_GENERATION_BACKEND``
    without a mix). Serving only ``SKUFORGE_GENERATION_BACKEND`` under a mix left the other backend's
    share refused as an unknown model at every SKU."""
    return list(requested) if requested else list(generation.shares())


def main(argv: list[str] | None = None) -> int:
    """``skuforge serve generator``: run Triton with the generation model(s) until SIGTERM/SIGINT/SIGHUP."""
    parser = argparse.ArgumentParser(
        prog="skuforge serve generator",
        description="Serve the generation model on Triton (PyTriton). Settings: SKUFORGE_GENERATION_*, the "
        "composite backend's scene library SKUFORGE_SCENES_*, the diffusion backend's SKUFORGE_DIFFUSION_*.",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=("composite", "diffusion"),
        help=(
            "backend to serve (repeat for several); default: those SKUFORGE_GENERATION_BACKEND_MIX gives a"
            " share, else SKUFORGE_GENERATION_BACKEND"
        ),
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    generation = load_settings(GenerationSettings)
    backends = served_backends(args.backend, generation)
    diffusion = load_settings(DiffusionSettings) if "diffusion" in backends else None
    # SIGTERM and SIGHUP raise KeyboardInterrupt from here on, as Ctrl-C does, and PyTriton's serve()
    # stops Triton on one. Set before the models load: by default a stop meanwhile (a diffusion model's
    # copy into the cache takes minutes) killed the process, its half-copied model left in the cache.
    with stopped_as_interrupt():
        return _serve(generation, backends, shared=settings, diffusion=diffusion)


def _serve(
    generation: GenerationSettings,
    backends: Sequence[str],
    *,
    shared: Settings,
    diffusion: DiffusionSettings | None,
) -> int:
    """``main`` once its settings are read: load the models, start Triton and serve until stopped (0)."""
    triton: Any = None
    # Bound before the models load, so a taken port fails at once; ready once Triton serves the models.
    health = metrics_server(
        generation, shared, ready=lambda: triton is not None and bool(triton.is_connected())
    ).start()
    try:
        try:
            triton = build_triton(generation, backends, shared=shared, diffusion=diffusion)
            triton.run()  # Triton started, its models ready
        except KeyboardInterrupt:
            # A stop before serving is a stop all the same: PyTriton's serve() stops Triton on one only
            # while it serves, and one before left the command with exit 130 (Triton stopped at exit).
            log.info("stopped while starting")
            if triton is not None:
                triton.stop()
            return 0
        address = generation.generation_server_address
        log.info(
            "serving",
            extra={
                "models": [model_name(b) for b in backends],
                "grpc": f"{address}:{generation.generation_server_grpc_port}",
                "http": f"{address}:{generation.generation_server_http_port}",
                "triton_metrics": f"{address}:{generation.generation_server_metrics_port}",
                "metrics": f"{address}:{health.port}",
            },
        )
        triton.serve()
    finally:
        health.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("python -m services.generator.server", main))
