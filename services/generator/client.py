"""The stage's side of the Triton contract: one request per variant, sent concurrently.

Triton down, a model not loaded yet, a model the server does not serve (``model_missing``: a deployment
fault, which no input cures), a full queue (overload) or a timeout raise ``GeneratorUnavailable``, a
``TransientError``: the runtime pauses the partition, backs off and
retries, and commits nothing meanwhile. Every variant drawn is kept until the stage hands it back
(``forget``, once the input it was drawn for is committed), and a retry sends only the others, in
every round of the batch (``CONCURRENCY_LIMIT``: more in flight than Triton holds is turned away),
whichever batch comes first: another partition's, or each SKU of a failed batch alone. Any error is
raised once every request of the call is answered, so the answers beside it are kept too. At most
``keep_at_most`` answers are kept: past that the oldest, of inputs never committed here (dead-lettered
after a handler error, or whose partition went to another replica), are let go first.
A variant the model refuses (its ``error`` output) comes back as a ``BadInput`` for its SKU, as does
one with an empty reference or mask, refused before it is sent (``NotSent``). A refusal the registry may lift
(``may_be_lifted``: an adapter not registered yet) is kept too, but asked again at the next call;
it stands only while Triton cannot answer. A malformed request (our bug) raises
``RuntimeError``. Once the stage is stopping, no new request is sent (``Stopping``, transient too).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.client import HTTPException
from typing import Any

import numpy as np

from services.generator.protocol import (
    ADAPTER_REFUSALS,
    BACKEND_ERROR_PREFIX,
    BACKEND_UNAVAILABLE_PREFIX,
    INPUTS,
    OPTIONAL_INPUTS,
    VariantRequest,
    VariantResult,
    model_name,
)
from shared.argtypes import loads_json
from shared.dlq import is_permanent
from shared.errors import BadInput, TransientError

log = logging.getLogger(__name__)

_TRITON_DTYPES = {np.uint8: "UINT8", np.int64: "INT64", np.int32: "INT32", bytes: "BYTES"}
# What a stage replica may keep in flight: more than Triton holds is turned away, and retried.
CONCURRENCY_LIMIT = (
    "SKUFORGE_GENERATION_TRITON_CONCURRENCY, summed over the stage's replicas, must not exceed what "
    "Triton holds per model (about SKUFORGE_GENERATION_MAX_QUEUE_SIZE + SKUFORGE_GENERATION_MAX_BATCH_SIZE "
    "x SKUFORGE_GENERATION_INSTANCES, the server's settings): lower it, or raise those"
)
# gRPC and HTTP status codes of a request Triton refused as malformed: not retried.
_CLIENT_ERRORS = ("StatusCode.INVALID_ARGUMENT", "400")
# ... of a model that raised: retried, counted apart from Triton being away.
_INTERNAL = ("StatusCode.INTERNAL", "500")
# ... of a model this server does not serve (not in its repository, not loaded): retried, counted apart.
_MODEL_MISSING = ("StatusCode.NOT_FOUND", "404")
# ... the words of that answer for a model in its repository with no version ready (loading, or failed).
_NO_VERSION_READY = "has no available versions"


class GeneratorUnavailable(TransientError):
    """Triton could not take the request now (down, loading, overloaded, slow); retry later.

    ``kind`` says which, for the metrics: ``overloaded`` (queue full), ``timeout``, ``internal`` (the model
    raised), ``model_missing`` (Triton is up but does not serve the model) or ``unavailable``.
    """

    def __init__(self, message: str, kind: str = "unavailable") -> None:
        super().__init__(message)
        self.kind = kind


class Stopping(TransientError):
    """The stage is stopping (``stopping``): a variant not sent yet is not sent. Its batch is given up
    uncommitted, and handled again by the next run or the partition's next owner: the stop waits for the
    requests in flight (up to the timeout), not for every wave of the batch."""


class GeneratorFailed(RuntimeError):
    """The model raised on a variant even when served alone (a backend bug or fault, not a refusal):
    not transient, so the stage retries it as a handler error and then dead-letters it."""


class NotSent(BadInput):
    """A variant refused before it is sent (``unsendable``): no Triton call was made, so the stage counts
    it as its own refusal (``skuforge_generator_variants_refused_total``), not as the model's."""


class TritonGenerator:
    """A tritonclient (gRPC or HTTP) for the generation models, one connection per worker thread.

    Each model has its own ``concurrency`` workers, and ``generate`` may be called for several models
    at once (the stage calls a round's backends together): one model's requests never wait behind
    another's in the queue of a shared pool. Once ``stopping()`` says so, no new request is sent:
    the call raises ``Stopping`` once those in flight are answered.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: str = "grpc",
        timeout_s: float = 300.0,
        concurrency: int = 8,
        keep_at_most: int = 256,
        metadata_max_age_s: float = 60.0,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if keep_at_most < 1:
            raise ValueError(f"keep_at_most must be at least 1, got {keep_at_most}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self._local = threading.local()
        self.concurrency = concurrency
        self._pools: dict[str, ThreadPoolExecutor] = {}  # by backend, made on its first call
        self._workers: dict[str, int] = {}  # the threads each pool started: each made its own client
        self._lock = threading.Lock()  # the pools and the answers kept: calls for several models at once
        # Readiness, by backend: whether its last call reached its model. One flag for all, the stage's
        # calls of a mix's models together left it to whichever ended last: a model that could not
        # serve for good (not loaded), beside one that served, read as ready.
        self._reached: dict[str, bool] = {}
        self._told_missing: set[str] = set()  # optional inputs an older model lacked, logged once
        # The optional inputs each backend's model declares, and when its metadata said so: asked before
        # every round, it cost a round trip, waited for before any variant was sent. Asked again once a
        # request to the model fails (Triton restarted, the model swapped or gone) or past
        # ``metadata_max_age_s``: a model upgraded in place keeps its version (1), and a client that
        # reconnects to its new server in the idle time between rounds sees no failure.
        self._declared: dict[str, tuple[float, frozenset[str]]] = {}
        self.metadata_max_age_s = metadata_max_age_s
        # Each asking of the metadata, and each forgetting of what it said, takes the next ticket; an answer
        # is kept only if newer than both the answer kept and the last forgetting. Answers land in any
        # order: a late one from the model swapped out overwrote the new model's, and its optional inputs
        # were left out of every round until a request failed.
        self._tickets = itertools.count()
        self._newest: dict[str, int] = {}  # by backend: the ticket of the answer kept or of its forgetting
        # Every answer by (backend, request digest), oldest first, until the stage hands it back
        # (``forget``): a retry sends only the rest. Before, one overload refusal threw away every variant
        # drawn, and with more requests in flight than Triton holds, every retry was refused again, for
        # ever; then answers were kept only until the model's next call: a batch's first round, sent
        # again on the retry, threw its redraw round's answers away (and was drawn again itself, GPU
        # time and all), and that round was refused again, for ever; then until the stage was done with
        # any batch: the first SKU of a failed batch, retried alone, threw away the answers of the next
        # one (and another partition's batch those of a partition backing off), which drew them again.
        self._kept: OrderedDict[tuple[str, str], VariantResult | BadInput] = OrderedDict()
        self._asked: Counter[tuple[str, str]] = Counter()  # the requests of the calls in hand
        self.keep_at_most = keep_at_most
        self._stopping = stopping

    @property
    def last_call_ok(self) -> bool:
        """Readiness: the last call for each model reached it (True before any call)."""
        with self._lock:
            return all(self._reached.values())

    def close(self) -> None:
        """Close each worker's Triton client, on its own thread, and stop the worker threads.

        Stopping the threads alone left their clients open: over HTTP each held gevent's hub and a
        connection (4 descriptors), for every worker of every client a process opened and closed."""
        with self._lock:  # taken, so a second close has nothing left to close
            pools = [(pool, self._workers.pop(backend, 0)) for backend, pool in self._pools.items()]
            self._pools.clear()
        for pool, workers in pools:
            if workers:
                # One task per worker, each held at the barrier until all are in: a worker that closed
                # its client cannot take another's task, so every worker runs exactly one.
                everyone = threading.Barrier(workers)
                for _ in range(workers):
                    pool.submit(self._close_own_client, everyone)
            pool.shutdown(wait=True)

    def _close_own_client(self, everyone: threading.Barrier) -> None:
        """Close this worker thread's Triton client, if it made one; then wait for the other workers."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        try:
            if client is not None:
                client.close()
                if self.protocol == "http":
                    # The HTTP client's gevent hub, one per thread, outlives the client and its thread:
                    # its event loop holds 2 descriptors. Destroyed here, on the thread it runs on.
                    import gevent

                    gevent.get_hub().destroy(destroy_loop=True)
        finally:
            try:
                # Bounded: a worker stuck on a call to Triton (its timeout is timeout_s) lets the others go.
                everyone.wait(timeout=self.timeout_s + 5)
            except threading.BrokenBarrierError:
                log.warning("a Triton worker did not close its client in time; the others are closed")

    def _count_worker(self, backend: str) -> None:
        """A worker thread of ``backend``'s pool started (its initializer): ``close`` closes its client."""
        with self._lock:
            self._workers[backend] = self._workers.get(backend, 0) + 1

    def forget(self, backend: str, variants: Sequence[VariantRequest]) -> None:
        """Let go of the answers kept for ``variants``: no retry will ask for them (their input is
        committed). Until then the same request is answered from what was kept, not drawn again."""
        with self._lock:
            for variant in variants:
                self._kept.pop((backend, variant.digest), None)

    def _pool(self, backend: str) -> ThreadPoolExecutor:
        """``backend``'s workers: ``concurrency`` requests in flight to its model."""
        with self._lock:
            pool = self._pools.get(backend)
            if pool is None:
                pool = ThreadPoolExecutor(
                    max_workers=self.concurrency,
                    thread_name_prefix=f"triton-{backend}",
                    initializer=self._count_worker,
                    initargs=(backend,),
                )
                self._pools[backend] = pool
            return pool

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        """All ``variants`` from ``backend``'s model, in order; GeneratorUnavailable if any was not served,
        and a variant's failure (``GeneratorFailed``, a malformed request's RuntimeError) before that,
        but ``Stopping`` once the stage is stopping. Each is raised once every request sent is answered,
        and the answers are kept for the retry."""
        self._refuse_if_stopping(backend)
        with self._lock:
            asked_at, optional = self._declared.get(backend, (-math.inf, frozenset()))
        if time.monotonic() - asked_at >= self.metadata_max_age_s:
            with self._lock:
                ticket = next(self._tickets)
            try:
                # On the backend's own workers, as the requests are: the stage calls from a new thread each
                # round, and a client made for each such thread stayed open (over HTTP, 4 descriptors each:
                # gevent's hub and a connection; the stage aborted once it had none left).
                optional = self._pool(backend).submit(self._optional_inputs, backend).result()
            except GeneratorUnavailable:
                with self._lock:
                    self._reached[backend] = False
                raise
            with self._lock:
                if ticket > self._newest.get(backend, -1):
                    self._declared[backend] = (time.monotonic(), optional)
                    self._newest[backend] = ticket
        keys = [variant.digest for variant in variants]
        asked = [(backend, key) for key in keys]
        answered: dict[str, VariantResult | BadInput] = {}
        lifted: dict[str, BadInput] = {}  # refusals the registry may have lifted since: asked again
        with self._lock:
            self._asked.update(asked)
            for key in keys:
                if (backend, key) in self._kept:
                    kept = self._kept[backend, key]
                    self._kept.move_to_end((backend, key))  # wanted still: let go last
                    if isinstance(kept, BadInput) and may_be_lifted(kept):
                        lifted[key] = kept
                    else:
                        answered[key] = kept
        try:
            return self._draw(backend, variants, keys, answered, optional, lifted)
        finally:
            with self._lock:
                self._asked -= Counter(asked)

    def _draw(
        self,
        backend: str,
        variants: Sequence[VariantRequest],
        keys: list[str],
        answered: dict[str, VariantResult | BadInput],
        optional: frozenset[str],
        lifted: dict[str, BadInput],
    ) -> list[VariantResult | BadInput]:
        """``generate`` once the answers kept are in ``answered``: the other variants drawn, and kept. A
        refusal of ``lifted`` that Triton cannot answer again now stands: asked again at every retry and
        turned away as overloaded, such refusals would hold their batch back for ever."""
        pool = self._pool(backend)
        futures = {
            key: pool.submit(self._infer_one, backend, variant, optional)
            for key, variant in zip(keys, variants, strict=True)
            if key not in answered
        }
        unavailable: GeneratorUnavailable | None = None
        failed: Exception | None = None
        refused = 0
        stood_in = False  # a refusal kept stood in for a model not reached: not ready
        changed = False  # the model may be another now: its metadata is asked again
        for key, future in futures.items():
            try:
                answered[key] = future.result()
            except GeneratorUnavailable as exc:
                # A full queue or a slow answer is the same model, busy: asking it then adds to its load.
                changed = changed or exc.kind not in ("overloaded", "timeout")
                if key in lifted:
                    answered[key], stood_in = lifted[key], True
                    continue
                unavailable = unavailable or exc
                refused += 1
            except Exception as exc:
                # Raised only once the others are in: before, the first failure left them drawing on,
                # their answers thrown away, and the stage's retry (each SKU alone) drew them again.
                failed = failed or exc
                changed = True
        with self._lock:
            if changed:
                self._forget_declared(backend)
            for key in futures:
                if key in answered:
                    self._kept[backend, key] = answered[key]
            self._let_go_past_bound()
            self._reached[backend] = unavailable is None and not stood_in
        if unavailable is not None and unavailable.kind == "overloaded":
            log.warning(
                "Triton turned %d of %d requests to %s away as overloaded; the %d answered are kept "
                "for the retry. %s",
                refused,
                len(futures),
                model_name(backend),
                len(answered),
                CONCURRENCY_LIMIT,
            )
        if failed is not None:
            # At a stop, the call is given up (the next owner draws the failed variant again): raised,
            # the failure made the stage retry each SKU alone, each given up at once.
            self._refuse_if_stopping(backend)
            raise failed
        if unavailable is not None:
            raise unavailable
        return [answered[key] for key in keys]

    def _forget_declared(self, backend: str) -> None:
        """Ask ``backend``'s metadata again at its next call; an answer asked before now is not kept.
        Under ``_lock``."""
        self._declared.pop(backend, None)
        self._newest[backend] = next(self._tickets)

    def _refuse_if_stopping(self, backend: str) -> None:
        """Raise ``Stopping`` if the stage is stopping: checked before each request, so a stop waits for
        the requests in flight, not for every variant queued behind them (up to 16 waves of the timeout)."""
        if self._stopping():
            raise Stopping(f"the stage is stopping: no new request is sent to {model_name(backend)}")

    def _let_go_past_bound(self) -> None:
        """Past ``keep_at_most`` answers, let go of the oldest, never those of a call in hand (its
        retry would draw them again, and could be refused again, for ever). Under ``_lock``."""
        excess = len(self._kept) - self.keep_at_most
        if excess <= 0:
            return
        oldest = [kept for kept in self._kept if kept not in self._asked][:excess]
        for kept in oldest:
            del self._kept[kept]
        log.info(
            "let go of %d answers kept for a retry: over %d kept, their inputs are drawn again if asked",
            len(oldest),
            self.keep_at_most,
        )

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
            kwargs: dict[str, Any] = {}
            if self.protocol == "http":
                kwargs = {"connection_timeout": self.timeout_s, "network_timeout": self.timeout_s}
            client = _built_whole(module.InferenceServerClient, self.url, **kwargs)
            self._local.client, self._local.module = client, module
        return client

    @contextmanager
    def _bounded(self) -> Iterator[dict[str, Any]]:
        """The keyword arguments that bound one request to ``timeout_s`` as a whole, and, over HTTP, the
        bound itself: tritonclient's ``network_timeout`` is per socket operation (geventhttpclient has no
        bound on a whole request, and the ``timeout`` of its ``infer`` is a hint to Triton's batcher), so
        an answer trickling in outlasted the timeout, and a stop its grace. gRPC's ``client_timeout`` is
        a deadline on the whole call."""
        if self.protocol == "grpc":
            yield {"client_timeout": self.timeout_s}
            return
        import gevent

        # An OSError, as a socket's own timeout is: geventhttpclient closes the connection it cuts off and
        # frees its place in the pool, and the stage counts it as a timeout (``_transport_failure``).
        with gevent.Timeout(self.timeout_s, TimeoutError(f"no whole answer within {self.timeout_s:g} s")):
            yield {}

    def _transport_failure(self, exc: OSError | HTTPException, backend: str) -> GeneratorUnavailable:
        """A network error on the way to Triton: the HTTP client's timeout (gRPC's is DEADLINE_EXCEEDED,
        an ``InferenceServerException``), or Triton unreachable (``HTTPException``: the HTTP client's
        "connection closed" when Triton dies or restarts mid-request)."""
        if isinstance(exc, TimeoutError):
            return GeneratorUnavailable(
                f"Triton at {self.url} timed out on {model_name(backend)}: {exc}", "timeout"
            )
        return GeneratorUnavailable(f"Triton at {self.url} unreachable: {type(exc).__name__}: {exc}")

    def _optional_inputs(self, backend: str) -> frozenset[str]:
        """The ``OPTIONAL_INPUTS`` ``backend``'s model declares now (asked by ``generate`` when what it
        learned may be out of date): a model served by an older server refuses an input it does not
        declare. A stop while it is asked sends no inference after it, so it adds no timeout to a stop."""
        from tritonclient.utils import InferenceServerException

        try:
            # The client first: over HTTP the bound makes the thread's gevent hub, which only ``close``
            # destroys, through the client; one that failed to build left its worker a hub for good.
            client = self._client()
            with self._bounded() as timeout:
                metadata = client.get_model_metadata(model_name(backend), **timeout)
        except InferenceServerException as exc:
            status, message = str(exc.status()), exc.message() or str(exc)
            raise GeneratorUnavailable(*_explain(status, message, self.url, backend)) from exc
        except (OSError, HTTPException) as exc:
            raise self._transport_failure(exc, backend) from exc
        declared = metadata["inputs"] if isinstance(metadata, dict) else metadata.inputs  # HTTP / gRPC
        names = {item["name"] if isinstance(item, dict) else item.name for item in declared}
        optional = frozenset(name for name, _, _ in OPTIONAL_INPUTS if name in names)
        missing = sorted({name for name, _, _ in OPTIONAL_INPUTS} - optional - self._told_missing)
        if missing:  # once per input: an older Triton; scenes named like the SKU are not left out
            self._told_missing.update(missing)
            log.warning(
                "Triton's %s does not declare %s: it runs an older skuforge, which leaves out only "
                "scenes tagged like a SKU's series",
                model_name(backend),
                ", ".join(missing),
            )
        return optional

    def _infer_one(
        self, backend: str, variant: VariantRequest, optional: frozenset[str] = frozenset()
    ) -> VariantResult | BadInput:
        from tritonclient.utils import InferenceServerException

        if (not_sent := unsendable(backend, variant)) is not None:
            return not_sent
        self._refuse_if_stopping(backend)
        client = self._client()
        module = self._local.module
        values = {
            "reference": variant.reference[None],
            "mask": variant.mask[None],
            "prompt": _bytes_cell(variant.prompt),
            "negative_prompt": _bytes_cell(variant.negative_prompt),
            "seed": np.array([[variant.seed]], dtype=np.int64),
            "parameters": _bytes_cell(variant.parameters_json),
            "adapter_id": _bytes_cell(variant.adapter_id or ""),
            "series": _bytes_cell(variant.series or ""),
            "size": np.array([[variant.size]], dtype=np.int32),
            "own_names": _bytes_cell(json.dumps(list(variant.own_names))),
        }
        inputs = []
        for name, dtype, _ in (*INPUTS, *(spec for spec in OPTIONAL_INPUTS if spec[0] in optional)):
            tensor = module.InferInput(name, list(values[name].shape), _TRITON_DTYPES[dtype])
            tensor.set_data_from_numpy(values[name])
            inputs.append(tensor)
        try:
            with self._bounded() as timeout:
                response = client.infer(model_name(backend), inputs, **timeout)
        except InferenceServerException as exc:
            status, message = str(exc.status()), exc.message() or str(exc)
            if status in _CLIENT_ERRORS and "queue" not in message.lower():
                sent = [name for name in optional if name in message]
                if sent:
                    # Several Triton pods behind one address mid-rollout: the metadata came from a
                    # new one, this request reached an old one, which knows no optional input.
                    log.warning(
                        "a Triton replica refused the optional inputs %s; sent again without them",
                        sent,
                        extra={"model": model_name(backend)},
                    )
                    with self._lock:  # the model may have been swapped for an older one: asked again
                        self._forget_declared(backend)
                    return self._infer_one(backend, variant, frozenset())
                raise RuntimeError(f"Triton refused the request as malformed ({status}): {message}") from exc
            raise GeneratorUnavailable(*_explain(status, message, self.url, backend)) from exc
        except (OSError, HTTPException) as exc:
            raise self._transport_failure(exc, backend) from exc
        return read_answer(response, variant, model_name(backend))


def read_answer(response: Any, variant: VariantRequest, model: str) -> VariantResult | BadInput:
    """What ``model``'s Triton ``response`` (``as_numpy`` by output name) to ``variant`` says: the variant
    drawn, or the backend's refusal; ``GeneratorUnavailable`` when its backend could not serve it now,
    ``GeneratorFailed`` when it failed on it or answered what skuforge cannot read."""
    error = _text(response, "error", model, variant)
    if error.startswith(BACKEND_UNAVAILABLE_PREFIX):
        # Its registry or store was away: retried like Triton being away, never dead-lettered.
        raise GeneratorUnavailable(
            f"{model} cannot serve variant seed {variant.seed} now: {error}", "unavailable"
        )
    if error.startswith(BACKEND_ERROR_PREFIX):
        # Not a refusal of the input and not Triton being away: the stage retries it as a handler
        # error a few times (SKUFORGE_HANDLER_MAX_ATTEMPTS), then dead-letters it (replayable).
        raise GeneratorFailed(f"{model} failed on variant seed {variant.seed}: {error}")
    if error:
        return refusal(error, f"{model} refused variant seed {variant.seed}")
    return variant_result(response, variant, model)


def unsendable(backend: str, variant: VariantRequest) -> NotSent | None:
    """The refusal of ``variant`` before it is sent to ``backend``'s model (an empty reference or mask),
    else None."""
    empty = [
        f"{name} is {'x'.join(map(str, array.shape))}"
        for name, array in (("reference", variant.reference), ("mask", variant.mask))
        if array.size == 0
    ]
    if not empty:
        return None
    # PyTriton fails on an empty tensor before the model sees it, and Triton answers INTERNAL: read as
    # Triton being away, the variant was retried for ever instead of refused.
    return NotSent(
        "generation_refused",
        f"{model_name(backend)} cannot be sent variant seed {variant.seed}: "
        f"{', '.join(empty)}, an empty image",
    )


def variant_result(response: Any, variant: VariantRequest, model: str) -> VariantResult:
    """The answer to ``variant`` in a Triton response (``as_numpy`` by output name) that holds no error;
    ``GeneratorFailed`` unless it holds one image of ``variant.size`` px square, RGB, its mask of that
    size, and the parameters used as a JSON object. skuforge's server checks its backend's answer so;
    another server may not, and its image of another size was stored and announced as the variant drawn."""
    image, mask = response.as_numpy("image"), response.as_numpy("expected_mask")
    size = variant.size
    shapes = ["none" if array is None else "x".join(map(str, array.shape)) for array in (image, mask)]
    if (
        image is None
        or mask is None
        or image.shape != (1, size, size, 3)
        or mask.shape != (1, size, size)
        or image.dtype != np.uint8
        or mask.dtype != np.uint8
    ):
        dtypes = ["none" if array is None else str(array.dtype) for array in (image, mask)]
        raise GeneratorFailed(
            f"{model} answered variant seed {variant.seed} with an image of {shapes[0]} ({dtypes[0]}) and "
            f"a mask of {shapes[1]} ({dtypes[1]}); asked for size {size}, it must answer 1x{size}x{size}x3 "
            f"and 1x{size}x{size} uint8"
        )
    parameters_json = _text(response, "parameters_used", model, variant) or "{}"
    try:
        # JSON's rules, as the server writes them (allow_nan=False): the stage announces them as an object.
        parameters = loads_json(parameters_json)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and NotJsonNumber are ValueErrors
        parameters = exc
    if not isinstance(parameters, dict):
        # Taken as drawn, the stage failed building the event (a list has no keys, NaN no JSON number):
        # retried as a handler error, its letter named neither the server nor its answer.
        raise GeneratorFailed(
            f"{model} answered variant seed {variant.seed} with parameters_used that are no JSON object "
            f"({parameters if isinstance(parameters, Exception) else type(parameters).__name__}): "
            f"{parameters_json[:200]!r}"
        )
    return VariantResult(
        image=image[0],
        expected_mask=mask[0],
        parameters_json=parameters_json,
        adapter_id=_text(response, "adapter_used", model, variant) or None,
        model_id=_text(response, "model_id", model, variant),
    )


def _built_whole(client_class: Any, url: str, **kwargs: Any) -> Any:
    """A tritonclient ``client_class`` for ``url``, or the error that building it raised, alone.

    Its ``__del__`` calls ``close``, which reads what ``__init__`` makes: of a client whose ``__init__``
    raised (a port that is no number), it raised AttributeError, which Python can only print ("Exception
    ignored in ... __del__"), once per worker that tried, beside the error the stage reports."""
    client = client_class.__new__(client_class)
    try:
        client.__init__(url, **kwargs)
    except BaseException:
        client.close = lambda: None  # ``__del__`` finds this one first; what was opened, gc closes
        raise
    return client


def _explain(status: str, message: str, url: str, backend: str) -> tuple[str, str]:
    """What went wrong, in a sentence, and its kind for the metrics."""
    lowered = message.lower()
    if "queue" in lowered:
        return (
            f"Triton at {url} is overloaded ({model_name(backend)} queue full): {message}; "
            f"{CONCURRENCY_LIMIT}",
            "overloaded",
        )
    if "deadline" in lowered or "timeout" in lowered or "DEADLINE" in status:
        return f"Triton at {url} timed out on {model_name(backend)}: {message}", "timeout"
    if status in _MODEL_MISSING and _NO_VERSION_READY in lowered:
        # In Triton's repository but not ready (Triton answers NOT_FOUND for it too): loading, or its load
        # failed. Sent to the backend settings, which were right, the operator looked in the wrong place.
        return (
            f"Triton at {url} has {model_name(backend)} but no version of it ready ({status}): {message}; "
            "it is still loading, or it failed to load: Triton's log says which, and why; retried meanwhile",
            "model_missing",
        )
    if status in _MODEL_MISSING:
        # Triton is up and answered: the model is not among those it serves. Counted "unavailable", it
        # read as Triton being down. Still retried: fixing the deployment must find the input uncommitted.
        return (
            f"Triton at {url} does not serve {model_name(backend)} ({status}): {message}; the model is not "
            "loaded on that server: check the backends it serves (skuforge serve generator --backend, "
            "SKUFORGE_GENERATION_BACKEND there) or its model repository against this stage's "
            "SKUFORGE_GENERATION_BACKEND_MIX / SKUFORGE_GENERATION_BACKEND and "
            "SKUFORGE_GENERATION_TRITON_URL; retried meanwhile",
            "model_missing",
        )
    if status in _INTERNAL:
        # The model raised. Today's server answers every refusal and failure in its error column and
        # raises for none, so this is a server fault, retried like Triton being away; an older server
        # raised on some inputs (one such variant then holds its partition) and is told apart here.
        return (
            f"Triton at {url}: {model_name(backend)} raised ({status}): {message}; retried. If it persists, "
            "the generator server may predate the one that answers refusals in its error column: upgrade it",
            "internal",
        )
    return f"Triton at {url} unavailable for {model_name(backend)} ({status}): {message}", "unavailable"


def _bytes_cell(text: str) -> np.ndarray:
    return np.array([[text.encode("utf-8")]], dtype=object)


def may_be_lifted(refusal: BadInput) -> bool:
    """Whether ``refusal`` may be lifted by the registry or store rather than by another input (an adapter
    not registered yet, ``unknown_adapter``; one that did not load, registered again): the client asks
    such a variant again at the next call instead of answering it from what it kept. Kept, a retry once
    the adapter was registered dead-lettered the SKU as ``unknown_adapter`` all the same."""
    return not is_permanent(refusal.reason) or refusal.reason in ADAPTER_REFUSALS


def refusal(error: str, what: str) -> BadInput:
    """The dead-letter reason of a row the backend refused: its own ``BadInput`` reason when it gave one
    (the server writes ``"BadInput: <reason>: <detail>"``), else ``generation_refused`` (a ValueError:
    the variant itself cannot be drawn). Before, every refusal was ``generation_refused``, so the letters
    of an adapter not registered yet (``unknown_adapter``, replayable once it is) read as permanent."""
    kind, _, rest = error.partition(": ")
    reason, _, detail = rest.partition(": ")
    if kind == BadInput.__name__ and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", reason):
        return BadInput(reason, f"{what}: {detail or reason}")
    return BadInput("generation_refused", f"{what}: {error}")


def _text(response: Any, output: str, model: str, variant: VariantRequest) -> str:
    """The text in ``output`` of ``response`` ("" when the answer has no such output); ``GeneratorFailed``
    when it holds no text (no element, bytes that are no UTF-8). Another server may answer so: it raised
    a bare IndexError / UnicodeDecodeError, not counted as Triton's error, its letter naming neither."""
    column = response.as_numpy(output)
    if column is None:
        return ""
    if column.size == 0:
        raise GeneratorFailed(
            f"{model} answered variant seed {variant.seed} with an empty {output} "
            f"({'x'.join(map(str, column.shape))}); it must hold one text"
        )
    value = column.reshape(-1)[0]
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GeneratorFailed(
            f"{model} answered variant seed {variant.seed} with an {output} that is no UTF-8 text "
            f"({exc.reason} at byte {exc.start}): {value[:200]!r}"
        ) from None
