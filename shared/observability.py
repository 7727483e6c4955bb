"""Metrics, health endpoints and JSON logs shared by every service.

Each service serves ``/metrics`` (Prometheus text format), ``/healthz`` (the process is alive
and its loop is turning) and ``/readyz`` (it can do its job: connected, model loaded) on its
own port. Names follow Prometheus conventions: base units, ``_total`` for counters.
"""

from __future__ import annotations

import contextvars
import errno
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from pydantic_settings import BaseSettings

from schemas.common import BIDI_CONTROLS, escaped_within
from shared.config import SETTINGS_CONFIG, ConfigError, LogLevel, load_settings
from shared.kafka_words import no_broker_there

log = logging.getLogger("skuforge.observability")

# Seconds-long model steps (diffusion, U2-Net on CPU) need buckets well past the defaults' 10 s, up to
# the default SKUFORGE_MAX_POLL_INTERVAL_MS (600 s), how long a batch may take before the group drops the
# member: past the top bucket, histogram_quantile answers the top bucket's bound.
HANDLER_SECONDS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# Inputs per model call: a stage's micro-batch, Triton's dynamic batch.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# How often the runtime logs its warnings per input topic, here with the metrics that count what they warn
# of, whose help texts state them. A producer that never keys its events would log one warning per record.
KEYLESS_WARNING_INTERVAL_S = 60.0
# A batch handler that fails on every batch (a model that cannot take batches) would log one per batch;
# so would a stage model that fails on every call of several inputs (``Context.note_model_batch_failure``).
BATCH_FAILURE_WARNING_INTERVAL_S = 60.0
# An object write is milliseconds on a local disk and up to seconds on S3 under load.
STORE_WRITE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The outcomes of skuforge_messages_total, each created at 0 for every input topic (declare_input_topic).
MESSAGE_OUTCOMES = ("ok", "dlq", "duplicate", "retry", "replay_for_other_stage")


class StageMetrics:
    """The runtime's standard metrics, in a registry of the service's own."""

    def __init__(self, stage: str, registry: CollectorRegistry | None = None) -> None:
        self.stage = stage
        self.registry = registry or CollectorRegistry()
        self.messages = Counter(
            "skuforge_messages_total",
            "Input messages by outcome: ok, dlq, duplicate, replay_for_other_stage (a DLQ replay another "
            "stage dead-lettered; committed unhandled) (when committed); retry (at each back-off).",
            ["stage", "topic", "outcome"],
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "skuforge_handler_seconds",
            "Seconds the stage's handler spent per input message (per batch for batch handlers).",
            ["stage"],
            buckets=HANDLER_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.unkeyed = Counter(
            "skuforge_unkeyed_messages_total",
            "Input messages with no Kafka key (when committed; a DLQ replay for another stage is not "
            "counted): a producer that does not key its events by sku_id, so one SKU's events may be "
            "handled out of order; the log warns of them at most once every "
            f"{KEYLESS_WARNING_INTERVAL_S:g} s per topic.",
            ["stage", "topic"],
            registry=self.registry,
        )
        self.batch_handler_failures = Counter(
            "skuforge_batch_handler_failures_total",
            "Micro-batches whose batch handler raised an unexpected error, by error class: each of their "
            "events was then run alone, so one that fails on every batch (a model that cannot take "
            "batches) is slow, not wrong; the log warns of them at most once every "
            f"{BATCH_FAILURE_WARNING_INTERVAL_S:g} s per topic.",
            ["stage", "topic", "error"],
            registry=self.registry,
        )
        self.dlq = Counter(
            "skuforge_dlq_total",
            "Messages sent to a dead-letter topic, by reason.",
            ["stage", "topic", "reason"],
            registry=self.registry,
        )
        self.dlq_refused = Counter(
            "skuforge_dlq_refused_total",
            "Dead letters a dead-letter topic refused for good (over its max.message.bytes), once per "
            "letter, by what followed: sent_small (sent again with its original key and value in the "
            "object store), waiting (refused even so: its input's partition waits until the topic's "
            "max.message.bytes is raised).",
            ["stage", "topic", "outcome"],
            registry=self.registry,
        )
        self.dlq_waiting = Gauge(
            "skuforge_dlq_letters_waiting",
            "Dead letters a dead-letter topic refuses for good even with their original in the object "
            "store, waiting now: each holds its input's partition until the topic's max.message.bytes is "
            "raised.",
            ["stage", "topic"],
            registry=self.registry,
        )
        self.produced = Counter(
            "skuforge_produced_total",
            "Output events produced, by topic.",
            ["stage", "topic"],
            registry=self.registry,
        )
        self.retries = Counter(
            "skuforge_retries_total",
            "Retries after a transient fault, by error class (none at a stop: a batch given up as the "
            "stage stops is left uncommitted, not retried).",
            ["stage", "error"],
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "skuforge_consumer_lag_messages",
            "Messages behind the end of each assigned partition, as of the partition's last fetch: it stands "
            "still while the partition is paused for back-off (alerts read the group lag).",
            ["stage", "topic", "partition"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "skuforge_batch_seconds",
            "Seconds from poll to commit of one batch (handle, write, produce, flush, commit).",
            ["stage"],
            buckets=HANDLER_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.rebalances = Counter(
            "skuforge_rebalances_total",
            "Times the group took partitions away from this consumer while it ran (0 in steady state).",
            ["stage"],
            registry=self.registry,
        )
        self.paused_partitions = Gauge(
            "skuforge_paused_partitions",
            "Partitions paused while backing off after a transient fault.",
            ["stage"],
            registry=self.registry,
        )
        self.uncommitted_inputs = Gauge(
            "skuforge_uncommitted_inputs",
            "Inputs handled and delivered whose offset commit failed, held for the next (the group's "
            "coordinator away); past a limit (docs/delivery.md) the stage takes no input until a commit "
            "goes through.",
            ["stage"],
            registry=self.registry,
        )
        self.group_lag = Gauge(
            "skuforge_consumer_group_lag_messages",
            "Messages a consumer group has not committed yet, summed over every partition of the topic "
            "(from the group's committed offsets, so it is reported while the group's members are down; "
            "several stages report a group, take max by (group, topic)).",
            ["group", "topic"],
            registry=self.registry,
        )
        self.group_lag_read_failures = Counter(
            "skuforge_consumer_group_lag_read_failures",
            "Reads of a group's lag that failed (broker away or timing out, group refused under ACLs); its "
            "skuforge_consumer_group_lag_messages samples are dropped until a read succeeds.",
            ["group"],
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "skuforge_model_seconds",
            "Seconds per model call (one batch of inputs, as skuforge_model_batch_size counts them), by "
            "model; a call that raised counts too.",
            ["stage", "model"],
            buckets=HANDLER_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.model_batch_size = Histogram(
            "skuforge_model_batch_size",
            # The matting stage's call is its chunk, several ONNX Runtime calls on the CPU: the help
            # said "per model call" and left it to be read as the latter.
            "Inputs per model call, by model: what a stage hands its model at once (the generator's "
            "variants sent in one go, the matting stage's chunk of up to SKUFORGE_MATTING_MAX_BATCH "
            "images, the captioner's photos of one SKU; ONNX Runtime on the CPU runs images at most 4 "
            "at a time).",
            ["stage", "model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.model_batch_failures = Counter(
            "skuforge_model_batch_failures",
            "Model calls on several inputs at once that raised, by model: each input was then run in a "
            "call of its own (the matting stage's chunk of images; the captioner's matting and vlm models "
            "on a SKU's photos), so a model that fails on every such call (an export that folded or fixed "
            "its batch) is slow, not wrong; the "
            f"log warns of them at most once every {BATCH_FAILURE_WARNING_INTERVAL_S:g} s per model.",
            ["stage", "model"],
            registry=self.registry,
        )
        self.store_write_seconds = Histogram(
            "skuforge_store_write_seconds",
            "Seconds per object written to the store (successful writes).",
            ["stage"],
            buckets=STORE_WRITE_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.store_write_failures = Counter(
            "skuforge_store_write_failures_total",
            "Object writes to the store that raised.",
            ["stage"],
            registry=self.registry,
        )
        self.images = Counter(
            "skuforge_images_total",
            "Images the stage finished (generated, matted or gated), by generation backend.",
            ["stage", "backend"],
            registry=self.registry,
        )
        # Counters and histograms with known labels start at zero, so rate() and absent() see them.
        self.store_write_failures.labels(stage)
        self.store_write_seconds.labels(stage)

    def declare_input_topic(self, topic: str) -> None:
        """Create ``topic``'s message counts at 0, one per outcome, before its first message.

        increase() and rate() take a series' first sample as its start: a count born at 1 on the first
        message after a restart hides that message (SkuforgeNoImagesStored paged one SKU late).
        """
        for outcome in MESSAGE_OUTCOMES:
            self.messages.labels(self.stage, topic, outcome)
        self.unkeyed.labels(self.stage, topic)

    def declare_model(self, model: str) -> None:
        """Create ``model``'s call latency, batch size and batch failures at 0, before its first call
        (see above)."""
        self.model_seconds.labels(self.stage, model)
        self.model_batch_size.labels(self.stage, model)
        self.model_batch_failures.labels(self.stage, model)

    @contextmanager
    def model_call(self, model: str, batch_size: int) -> Iterator[None]:
        """Time one model call of ``batch_size`` inputs (``model`` is a short, bounded name)."""
        self.model_batch_size.labels(self.stage, model).observe(batch_size)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.model_seconds.labels(self.stage, model).observe(time.perf_counter() - started)

    def observe_store_write(self, seconds: float, ok: bool) -> None:
        """An object store write finished (the store's ``on_write`` hook)."""
        if ok:
            self.store_write_seconds.labels(self.stage).observe(seconds)
        else:
            self.store_write_failures.labels(self.stage).inc()


def topics_held(families: Iterable[Metric]) -> set[str]:
    """Topics of which a stage's consumer holds partitions, from its metric families.

    The runtime's lag gauge has one sample per partition the consumer holds. Works on a registry's
    ``collect()`` and on ``/metrics`` text parsed with ``text_string_to_metric_families``.
    """
    return {
        sample.labels["topic"]
        for family in families
        if family.name == "skuforge_consumer_lag_messages"
        for sample in family.samples
        if "topic" in sample.labels
    }


class HealthServer:
    """Serves /metrics, /healthz and /readyz from a background thread.

    ``ready`` is a callable so each service decides what ready means; ``alive`` is bumped by
    the service's loop so a stuck loop turns /healthz red after ``stale_after_s``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        ready: Callable[[], bool] = lambda: True,
        stale_after_s: float = 900.0,
        port_setting: str = "SKUFORGE_METRICS_PORT",
        host_setting: str = "SKUFORGE_METRICS_HOST",
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.stale_after_s = stale_after_s
        self._last_beat = time.monotonic()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    self._answer(self.path.split("?", 1)[0])
                except Exception as exc:
                    # A collector that raises (the console's reads its database) must still get the
                    # scraper an answer, and the traceback a JSON log line, not raw lines on stderr.
                    log.exception("health server could not answer", extra={"path": self.path})
                    self._reply(500, f"{type(exc).__name__}: {exc}\n".encode())

            def _answer(self, path: str) -> None:
                if path == "/metrics":
                    self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    healthy = time.monotonic() - server._last_beat < server.stale_after_s
                    self._reply(200 if healthy else 503, b"ok\n" if healthy else b"loop stalled\n")
                elif path == "/readyz":
                    try:
                        ready = bool(server.ready())
                    except Exception:  # a readiness probe must answer, whatever the check raised
                        ready = False
                    self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _reply(
                self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The scraper gave up waiting (its timeout is below a busy machine's answer time).
                    return

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                return

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            # A traceback out of socketserver before: a second copy of one stage on a machine, or another
            # program on the port, said "Address already in use" and nothing of which setting to change.
            where = f"cannot serve /metrics, /healthz and /readyz on {host}:{port} ({exc.strerror or exc})"
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ConfigError(
                    f"{where}: another process may hold the port; set {port_setting} to a free one (0: any)"
                ) from None
            # Not the port: a host that is no address here ("0.0.0.0:9100", a URL) was blamed on the port.
            raise ConfigError(
                f"{where}: {host!r} is no address of this machine; set {host_setting} to one "
                "(0.0.0.0: every interface)"
            ) from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health-server", daemon=True)
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        return int(self._httpd.server_address[1])

    def beat(self) -> None:
        """Record that the service's loop is alive."""
        self._last_beat = time.monotonic()

    def start(self) -> HealthServer:
        """Start serving in the background; one already serving is left as it is. One stopped cannot
        serve again (its port is released): ``RuntimeError`` saying to make a new one."""
        if self._stopped:
            # A second start raised the thread's "threads can only be started once"; one after a stop()
            # that came first returned, and its thread died on the closed socket: nothing served.
            raise RuntimeError(
                f"this health server was stopped (its port {self.port} released); "
                "make a new HealthServer to serve again"
            )
        if self._thread.ident is None:  # never started
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe before start() and when called twice."""
        self._stopped = True
        # shutdown() waits for serve_forever to acknowledge: before start() it never runs, and a
        # service that failed between binding and starting (a bad setting) hung on its way out.
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()


# Log context: set once per message by the runtime, read by every log line made meanwhile.
trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
sku_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("sku_id", default=None)


@contextmanager
def log_context(trace_id: str | None, sku_id: str | None) -> Iterator[None]:
    """Attach trace_id and sku_id to every log line within the block."""
    trace_token = trace_id_var.set(trace_id)
    sku_token = sku_id_var.set(sku_id)
    try:
        yield
    finally:
        trace_id_var.reset(trace_token)
        sku_id_var.reset(sku_token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace_id, sku_id, extras."""

    _standard = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id, sku_id = trace_id_var.get(), sku_id_var.get()
        if trace_id:
            entry["trace_id"] = trace_id
        if sku_id:
            entry["sku_id"] = sku_id
        for key, value in record.__dict__.items():
            if key not in self._standard and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Characters that end a line for some reader (a terminal, `less`, a log shipper splitting on \r or U+2028),
# and the bidirectional controls, which make the text after them read as other text (Trojan Source).
_NOT_SHOWN_AS_IS = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{BIDI_CONTROLS}]")


def escape_control_characters(value: object) -> str:
    """``value`` as text, its control characters and bidirectional controls escaped (``\\n``,
    ``\\u202e``): a value read from input (a file name, an error's detail) must not start a line of its
    own, which a reader takes for another record, nor reach a terminal as an escape sequence, nor reorder
    what is shown after it. The directional marks (U+200E, U+200F) and the zero-width joiners stay text."""
    return _NOT_SHOWN_AS_IS.sub(
        lambda match: match.group().encode("unicode_escape").decode("ascii"), str(value)
    )


def escape_control_characters_within(value: object, limit: int) -> str:
    """``escape_control_characters(value)``, cut to at most ``limit`` characters between two characters:
    an escape is several characters for one (``\\u202e`` six), so text within a limit may escape past
    it, and cut after the escaping, it ended in half an escape (``\\x1`` of ``\\x1b``)."""
    return escaped_within(str(value), limit, _NOT_SHOWN_AS_IS)


class TextFormatter(logging.Formatter):
    """Human-readable lines that still show the structured fields (``key=value``) and the trace; one line
    per record, but for a traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line before its fields, the message's control characters escaped (not a traceback's)."""
        return escape_control_characters(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            key: value
            for key, value in record.__dict__.items()
            if key not in JsonFormatter._standard and not key.startswith("_")
        }
        for name, var in (("trace_id", trace_id_var), ("sku_id", sku_id_var)):
            if var.get():
                fields[name] = var.get()
        line = super().format(record)
        return line + "".join(f" {key}={escape_control_characters(value)}" for key, value in fields.items())


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send logs to stderr as JSON lines (or text), replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty at INFO about every connection.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))


# The loggers of this repository (``skuforge`` is the CLI's own): a command shows their lines at its
# level, and other libraries' only from WARNING (botocore's "Found credentials" at INFO is noise there).
OWN_LOGGERS = ("skuforge", "skuforge_cli", "shared", "services", "schemas", "devstack", "bench")


# Libraries whose lines a command shows from a higher level: kafka-python gives its logger a NullHandler
# (its lines are not for a command's user), and shown from WARNING, its "Task ... ran for 0.659s ...
# blocking the event loop" on a loaded machine reached `skuforge topics create`'s stderr. Its errors show,
# but for its connection retries (``kafka_connection_retry``).
QUIETER_LIBRARIES = {"kafka": logging.ERROR}


def kafka_connection_retry(record: logging.LogRecord) -> bool:
    """Whether ``record`` is kafka-python saying no broker took a connection (its "Connection failed",
    "Connection lost" and "Bootstrap failed" lines, each retry of its 30 s bootstrap): what a command's
    own refusal ("cannot reach Kafka at ...; is it running?") says in one line. A broker that refuses a
    SASL login (kafka-python reads its answer, or sees the connection it then closes), a TLS handshake
    that fails, or an error kafka-python words otherwise is not: the refusal does not say it."""
    if record.name.split(".")[0] != "kafka" or not isinstance(record.args, tuple):
        return False
    return any(
        isinstance(arg, KafkaConnectionError | KafkaTimeoutError)
        and type(arg) in (KafkaConnectionError, KafkaTimeoutError)  # not a subclass: another cause
        and len(arg.args) == 1
        and no_broker_there(str(arg.args[0]))  # shared.kafka_words: kafka-python's words for it
        for arg in record.args
    )


class _OwnLinesFilter(logging.Filter):
    """Let through records of ``OWN_LOGGERS`` (and their children) at any level, others from WARNING
    (``QUIETER_LIBRARIES`` from their level), and kafka-python's connection retries only at DEBUG:
    against a Kafka that is down, a command's stderr was eight of them over 30 s before its own line,
    which a user read as a crash."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        if top in OWN_LOGGERS:
            return True
        if kafka_connection_retry(record):
            return self.level <= logging.DEBUG
        return record.levelno >= QUIETER_LIBRARIES.get(top, logging.WARNING)


class _CommandLogLevel(BaseSettings):
    """``SKUFORGE_LOG_LEVEL`` alone, as ``Settings`` reads it. Read with every shared setting, one bad
    setting of another kind (which the command may never read) set a command's level back to INFO."""

    model_config = SETTINGS_CONFIG
    log_level: LogLevel = "INFO"


def configure_command_logging(level: str | None = None) -> None:
    """Send a command's log lines to stderr as text, from ``level`` (default ``SKUFORGE_LOG_LEVEL``):
    what the library code it runs says (a table it changed, a file it left out and why) reaches its
    user, and stdout keeps only the command's result. Other libraries' lines only from WARNING,
    kafka-python's from ERROR and its connection retries only at DEBUG (``kafka_connection_retry``).
    Replaces the handler an earlier ``configure_*`` set, leaving others (a test's capture) in place."""
    if level is None:
        try:
            level = load_settings(_CommandLogLevel).log_level
        except ConfigError:  # the command names the bad variable when it loads the settings itself
            level = "INFO"
    root = logging.getLogger()
    root.setLevel(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    handler.addFilter(_OwnLinesFilter(root.level))
    root.handlers[:] = [
        kept for kept in root.handlers if not isinstance(kept.formatter, JsonFormatter | TextFormatter)
    ]
    root.addHandler(handler)
