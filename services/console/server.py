"""``skuforge serve console``: the web application, the intake thread and the decision relay.

One process, four threads besides the web server's:

* **intake** (``intake.py``, unless ``SKUFORGE_CONSOLE_INTAKE=false``): the shared stage runtime
  consuming ``correction.pending`` into the SQLite task table (and ``gate.accepted``, which closes
  the tasks of items the gate accepts on a replay); restarted with back-off if it fails
  (for example when the broker is unreachable at start), while the pages keep working.
* **relay** (``relay.py``): publishes recorded decisions to ``correction.resolved``.
* **withdrawn** (``withdrawn.py``): closes the waiting tasks of photos their owner withdrew.
* **health**: ``/metrics`` (the intake's runtime metrics, its store-write metrics alone when it is off,
  and the console's), ``/healthz``,
  ``/readyz`` (the intake joined its group) on ``SKUFORGE_CONSOLE_METRICS_PORT`` (default 9107).
* **web** (uvicorn): the pages and API of ``app.py``, on ``SKUFORGE_CONSOLE_HOST:PORT``.

SIGTERM stops uvicorn (it finishes open requests, for up to ``HTTP_DRAIN_S``), then the intake
commits and stops (``INTAKE_STOP_S``) and the relay publishes what is left: ``stop_timeout_s`` in
all, which the deployments' grace periods cover.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import uvicorn
from fastapi import FastAPI
from kafka.errors import KafkaError

from schemas.flow import CONSOLE, CONSOLE_INTAKE
from services.console.app import create_app
from services.console.config import ConsoleSettings
from services.console.context import Console, make_signer
from services.console.intake import build_intake_stage, open_task_table
from services.console.metrics import ConsoleMetrics
from services.console.relay import DecisionRelay
from services.console.relay import stop_timeout_s as relay_stop_timeout_s
from services.console.slowheaders import headers_deadline
from services.console.tasks import TaskStore
from services.console.withdrawn import WithdrawalSweep
from shared.argtypes import int_between
from shared.bus import retriable_kafka_error
from shared.commands import run_command
from shared.config import ConfigError, Settings, load_settings
from shared.errors import TransientError
from shared.observability import HealthServer, StageMetrics, configure_logging
from shared.runtime import Stage
from shared.signals import hang_up_as_sigterm
from shared.store import ObjectStore, open_settings_store
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from shared.trainstore.withdrawals import Withdrawals

log = logging.getLogger("skuforge.console")

# At SIGTERM, open requests get this long to finish before uvicorn closes their connections.
HTTP_DRAIN_S = 15.0
# Then the intake gets this long to commit what it consumed and leave its group.
INTAKE_STOP_S = 60.0
# A request's headers must all arrive this long after the wait for them began (``slowheaders.py``).
HEADERS_TIMEOUT_S = 30.0


def expected_outage(exc: Exception) -> bool:
    """Whether ``exc`` is a fault the intake's restart is for (no broker answered, a connection lost),
    not a bug whose traceback is wanted."""
    return isinstance(exc, TransientError) or (isinstance(exc, KafkaError) and retriable_kafka_error(exc))


def stop_timeout_s(settings: Settings) -> float:
    """The longest ``serve console`` takes to stop after SIGTERM: web, intake, then relay."""
    return HTTP_DRAIN_S + INTAKE_STOP_S + relay_stop_timeout_s(settings)


class ConsoleService:
    """The console's parts, started and stopped together (``serve console`` and the browser tests)."""

    def __init__(
        self,
        settings: Settings,
        console: ConsoleSettings,
        *,
        store: ObjectStore | None = None,
        tasks: TaskStore | None = None,
        trainstore: TrainstoreSettings | None = None,
    ) -> None:
        if not console.users():
            raise ConfigError(
                "SKUFORGE_CONSOLE_USERS is unset: set it to 'name:password[,name:password...]' "
                "so reviewers can log in"
            )
        self.settings = settings
        self.console_settings = console
        self.store = store or open_settings_store(settings)
        self.store.note_relative_root()
        # Logged when made new: a mistyped SKUFORGE_CONSOLE_DB_PATH served an empty queue without a word.
        self.tasks = tasks or open_task_table(
            console.console_db_path,
            if_another="if the tasks are in another, stop the console and set SKUFORGE_CONSOLE_DB_PATH to it",
        )
        metrics_port = console.console_metrics_port
        if metrics_port is None:
            metrics_port = (
                CONSOLE.default_metrics_port if settings.metrics_port is None else settings.metrics_port
            )
        self.intake: Stage | None = None
        if console.console_intake:
            self.intake = build_intake_stage(
                self.tasks,
                max_clock_ahead_s=console.console_max_clock_ahead_s,
                settings=settings,
                store=self.store,
            )
            stage_metrics = self.intake.metrics  # its runtime sets the store's write hook
        else:
            # The console's own writes (edited masks) still count under the intake's name, where
            # SkuforgeStoreWriteFailures reads them: only the intake's runtime set the hook, and with it
            # off no /metrics counted them.
            stage_metrics = StageMetrics(CONSOLE_INTAKE.name)
            self.store.on_write = stage_metrics.observe_store_write
        # One /metrics for both: the intake's runtime metrics and the console's.
        self.metrics = ConsoleMetrics(self.tasks, stage_metrics.registry)
        self.health = HealthServer(
            self.metrics.registry,
            host=settings.metrics_host,
            port=metrics_port,
            ready=self._ready,
            port_setting="SKUFORGE_CONSOLE_METRICS_PORT",
        )
        self.relay = DecisionRelay(self.tasks, settings, self.metrics, heartbeat=self.health.beat)
        prefix = (trainstore or load_settings(TrainstoreSettings)).trainstore_prefix
        self.withdrawn = WithdrawalSweep(
            self.tasks, Withdrawals(ManifestStore(self.store, prefix)), self.metrics
        )
        self.console = Console(
            tasks=self.tasks,
            store=self.store,
            settings=settings,
            console=console,
            metrics=self.metrics,
            signer=make_signer(console),
            relay=self.relay,
        )
        self.app: FastAPI = create_app(self.console)
        self._intake_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def _ready(self) -> bool:
        return self.intake is None or self.intake.ready()

    def _run_intake(self, stage: Stage) -> None:
        """Run the intake; if it fails (broker unreachable at start...), log and start it again."""
        backoff_s = self.settings.retry_backoff_initial_s
        while not self._stopping.is_set():
            try:
                stage.run(install_signal_handlers=False, serve_health=False)
                return
            except Exception as exc:
                if expected_outage(exc):
                    # Kafka down or restarting is retried, and a traceback each restart said nothing more.
                    log.warning(
                        "console intake cannot run (%s); restarting in %s s",
                        exc,
                        backoff_s,
                        extra={"retry_in_s": backoff_s},
                    )
                else:
                    log.exception("console intake failed; restarting", extra={"retry_in_s": backoff_s})
            self._stopping.wait(backoff_s)
            backoff_s = min(self.settings.retry_backoff_max_s, backoff_s * 2)

    def start_background(self) -> None:
        """Start the metrics server, the intake (if enabled) and the relay."""
        self.health.start()
        if self.intake is not None:
            stage = self.intake
            self._intake_thread = threading.Thread(
                target=self._run_intake, args=(stage,), name="console-intake", daemon=True
            )
            self._intake_thread.start()
        self.relay.start()
        self.withdrawn.start()

    def stop_background(self) -> None:
        """Stop the intake (it commits what it consumed), then the relay (it publishes what is left)."""
        self._stopping.set()
        if self.intake is not None:
            self.intake.stop()
        if self._intake_thread is not None:
            self._intake_thread.join(timeout=INTAKE_STOP_S)
        self.relay.stop()
        self.withdrawn.stop()
        self.health.stop()

    def uvicorn_server(self, host: str | None = None, port: int | None = None) -> uvicorn.Server:
        """A uvicorn server for the app (``run()`` blocks; signals are handled in the main thread)."""
        host = host or self.console_settings.console_host
        return uvicorn.Server(
            web_config(self.app, host, self.console_settings.console_port if port is None else port)
        )


def web_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    """How uvicorn serves the console's ``app`` (``serve console`` and the browser tests alike)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # h11 (not httptools, were it installed): the deadline on a request's headers is h11's protocol's.
        http=headers_deadline(HEADERS_TIMEOUT_S),
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(HTTP_DRAIN_S),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the console until SIGTERM/SIGINT/SIGHUP."""
    parser = argparse.ArgumentParser(
        prog="skuforge serve console",
        description="Serve the correction console (pages, API) with its intake of correction.pending "
        "(and of gate.accepted, closing the tasks of items the gate accepts on a replay) and its "
        "publisher of correction.resolved. Settings: SKUFORGE_CONSOLE_*.",
    )
    parser.add_argument("--host", default=None, help="bind address (default SKUFORGE_CONSOLE_HOST)")
    parser.add_argument(
        "--port", type=int_between(0, 65535), default=None, help="port (default SKUFORGE_CONSOLE_PORT)"
    )
    args = parser.parse_args(argv)
    if args.host == "":
        parser.error("--host is empty; write 0.0.0.0 to bind every interface")
    settings = load_settings()
    console = load_settings(ConsoleSettings)
    # Before the store and the task table are opened, so what opening them says (a table made new) is
    # in the console's log format, and said at all: set up after, it went nowhere.
    configure_logging(settings.log_level, settings.log_format)
    try:
        service = ConsoleService(settings, console)
    except TransientError as exc:  # the task table cannot be opened: a folder, no permission
        print(f"skuforge serve console: {exc} (SKUFORGE_CONSOLE_DB_PATH)", file=sys.stderr)
        return 2
    server = service.uvicorn_server(args.host, args.port)
    service.start_background()
    log.info(
        "console serving",
        extra={"host": server.config.host, "port": server.config.port, "db": console.console_db_path},
    )
    # uvicorn handles SIGTERM while it runs, then puts back the handler it found and raises the
    # signal again: with Python's default handler that killed the process before the intake and the
    # relay stopped. This one lets the stop below run; the deployment's grace period bounds it. It is
    # uvicorn's own: one that did nothing dropped a SIGTERM that came before uvicorn set its handler,
    # and the console served on.
    signal.signal(signal.SIGTERM, server.handle_exit)
    hang_up_as_sigterm()  # a closed terminal: uvicorn hears only SIGINT and SIGTERM
    try:
        server.run()
    finally:
        service.stop_background()
    log.info("console stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("python -m services.console.server", main))
