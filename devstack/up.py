"""``skuforge up``: the whole local stack in the foreground, one command, one Ctrl-C to stop it.

What it starts, in this order, each as a child process of :class:`devstack.supervisor.Supervisor` with
its log in ``<workdir>/logs/<name>.log``; each must be ready before the next starts:

====================  =====================================  ========================================
service               command                                ready when
====================  =====================================  ========================================
kafka                 ``python -m devstack.broker start``    the broker of ``<workdir>/kafka`` runs
                      ``--foreground`` (data in              and an admin client lists the topics
                      ``<workdir>/kafka``; skipped with      (another broker on the port does not
                      ``--kafka-bootstrap``)                 count)
topics                ``skuforge topics create``             it exited 0 (a set-up step)
triton                ``skuforge serve generator``           ``/v2/models/<model>/ready`` answers 200
                      (``SKUFORGE_METRICS_PORT`` = its own
                      Python /metrics, beside Triton's)
each stage of the     ``skuforge run <stage>``               its ``/readyz`` answers 200 and it
pipeline, in flow     (``SKUFORGE_METRICS_PORT`` = its own   holds partitions of every topic it
order (``PIPELINE``   port in the flow)                      consumes
in schemas/flow.py),
then lora-trainer
(GPU + model, or
``--with-trainer``)
console               ``skuforge serve console``             ``/readyz`` (intake joined, holding
                                                             its partitions) and the login page
                                                             answer 200
====================  =====================================  ========================================

``--replicas matting=2,generator=2`` runs several members of a stage's consumer group: ``matting``
(the documented port) and ``matting-2`` (a free port, log ``matting-2.log``), each a static member
(``SKUFORGE_GROUP_INSTANCE_ID=matting-1``, ``matting-2``), so they share the partitions and a restarted
one takes its own back without a rebalance (docs/deploy.md, "Scaling").

A stage that dies is reported and restarted with back-off; Ctrl-C, SIGTERM or SIGHUP (the terminal
closed, unless ``nohup`` ignores it) stops everything, console first, Kafka last (a second one kills
what is left at once); if ``skuforge up`` is killed outright, each service gets SIGTERM from the
kernel (a parent-death signal).
``--ports default`` refuses to start, naming them, when any of the documented ports is taken.
``--with-prometheus`` starts a real Prometheus last (``devstack/prometheus.py``, the Debian package's
binary) scraping every stage, the console and Triton, with ``deploy/prometheus/alerts.yml``, and prints
its address. ``<workdir>/stack.json`` describes the
running stack (ports, pids, console and Prometheus addresses) for ``skuforge demo`` and for people; the
object store defaults to ``<workdir>/store`` and the console's task table to ``<workdir>/console``, unless
``SKUFORGE_STORE_URI`` / ``SKUFORGE_CONSOLE_DB_PATH`` say otherwise. Without
``SKUFORGE_CONSOLE_USERS`` a login ``demo:<random>`` is made once, kept in
``<workdir>/console-login`` (mode 600) and printed; a damaged one stops ``skuforge up`` (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import logging
import os
import secrets
import shlex
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydantic_settings import BaseSettings

from devstack.broker import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    BrokerError,
    LocalKafka,
    free_port,
    port_in_use,
)
from devstack.prometheus import (
    ALERTS_FILE,
    DEFAULT_PROMETHEUS_PORT,
    GENERATOR_SERVER_JOB,
    PrometheusMissing,
    PrometheusServer,
    config_problem,
    stack_prometheus,
    stack_prometheus_port,
    stack_scrape_config,
)
from devstack.supervisor import ServiceSpec, StartRefused, Supervisor, SupervisorError, http_ok
from schemas.flow import CONSOLE, LORA_TRAINER, PIPELINE, TRITON, Service
from services.console.config import ConsoleSettings, parse_users
from services.generator.protocol import model_name
from shared.argtypes import float_between, folder_problem, path_argument
from shared.config import (
    ENV_PREFIX,
    UP_CONSOLE_DB,
    UP_STACK_STATE,
    UP_STORE,
    UP_WORKDIR,
    ConfigError,
    is_host_port,
    load_settings,
    secret_variables,
)
from shared.generation.backend import BACKEND_NAMES
from shared.generation.settings import GenerationSettings
from shared.observability import topics_held

DEFAULT_WORKDIR = UP_WORKDIR
STATE_FILE = str(UP_STACK_STATE)
# Store photos (GroceryStoreDataset, other classes) real products are composited onto: the demo's
# default, and what the ready summary suggests when SKUFORGE_SCENES_URI is unset.
SAMPLE_SCENES = Path(__file__).resolve().parents[1] / "samples" / "grocerystore-scenes"
PORTS_FILE = "ports.json"
LOGIN_FILE = "console-login"
# How much later than a stack's started_at its supervisor's pid may have started and still be it
# (process start times are read to the second; wall clocks get nudged).
STALE_PID_SLACK_S = 60.0
CONSOLE_USER = "demo"
# The most members of one stage's group `--replicas` runs: each is a process (its model loaded) and a
# port on this one machine, and members beyond a topic's partitions (6 by default) only wait idle.
MAX_REPLICAS = 32
# --grace-s's bounds: under a second no service can commit and close its Kafka clients (SIGKILL all but
# follows SIGTERM); past an hour a service deaf to SIGTERM holds the stop, and its ports, all but for ever.
MIN_GRACE_S = 1.0
MAX_GRACE_S = 3600.0
# --scrape-interval-s: the interval of the Prometheus --with-prometheus runs, and its bounds.
DEFAULT_SCRAPE_INTERVAL_S = 5.0
MIN_SCRAPE_INTERVAL_S = 0.5
MAX_SCRAPE_INTERVAL_S = 3600.0


def _default(model: type[BaseSettings], field: str) -> int:
    """A port's documented default, read from the settings model that owns it."""
    return int(model.model_fields[field].default)


# Every port of the stack, each read from where it is declared: the broker launcher, the generation
# and console settings, and the flow (each stage, and the generator server, serves /metrics on its own
# port, so a Prometheus config written for `skuforge run` works for `skuforge up` too).
DEFAULT_PORTS: dict[str, int] = {
    "kafka": DEFAULT_PORT,
    "kafka_controller": DEFAULT_CONTROLLER_PORT,
    "triton_http": _default(GenerationSettings, "generation_server_http_port"),
    "triton_grpc": _default(GenerationSettings, "generation_server_grpc_port"),
    "triton_metrics": _default(GenerationSettings, "generation_server_metrics_port"),
    "generator_server_metrics": TRITON.default_metrics_port,
    **{stage.name: stage.default_metrics_port for stage in PIPELINE},
    LORA_TRAINER.name: LORA_TRAINER.default_metrics_port,
    "console_metrics": CONSOLE.default_metrics_port,
    "console": _default(ConsoleSettings, "console_port"),
}


def stack_stages(with_trainer: bool) -> list[Service]:
    """The stages a stack runs, in start order: the pipeline's, then the lora-trainer if it runs."""
    return [*PIPELINE, *([LORA_TRAINER] if with_trainer else [])]


def replica_names(stage: str, count: int) -> list[str]:
    """Service names of ``count`` replicas of ``stage``: its own name, then ``<stage>-2``, ``-3``..."""
    return [stage] + [f"{stage}-{index}" for index in range(2, count + 1)]


@dataclass
class StackConfig:
    """Everything that differs between two stacks on one machine."""

    workdir: Path
    ports: dict[str, int]
    store_uri: str
    console_db: str
    console_users: str
    kafka_bootstrap: str
    start_kafka: bool = True
    backends: list[str] = field(default_factory=lambda: ["composite"])
    extra_env: dict[str, str] = field(default_factory=dict)
    prometheus_url: str | None = None  # set by --with-prometheus
    with_trainer: bool = False  # the lora-trainer stage, after the pipeline's stages

    @property
    def stages(self) -> list[Service]:
        """The stages this stack runs, in start order."""
        return stack_stages(self.with_trainer)

    # Stage -> how many members of its consumer group to run (1 when absent).
    replicas: dict[str, int] = field(default_factory=dict)
    # When this stack started (epoch seconds): `skuforge demo` follows only what this stack did.
    started_at: float = field(default_factory=time.time)
    # Service -> (its last run's or documented port, the free one --ports auto gave it as that was taken).
    moved_ports: dict[str, tuple[int, int]] = field(default_factory=dict)
    # How the ports were chosen (--ports): all but "default" may move a port taken as its service starts.
    ports_mode: str = "auto"
    # Called after a stage's metrics port moved as the stage (re)started: --with-prometheus's targets follow.
    on_metrics_port_moved: list[Callable[[], None]] = field(default_factory=list)

    def replica_names(self, stage: str) -> list[str]:
        """Service names of ``stage``'s replicas: the stage's own name, then ``<stage>-2``, ``-3``..."""
        return replica_names(stage, self.replicas.get(stage, 1))

    @property
    def logs(self) -> Path:
        """Where every service's log goes."""
        return self.workdir / "logs"

    @property
    def console_url(self) -> str:
        """The console's address in a browser."""
        return f"http://127.0.0.1:{self.ports['console']}/"

    def kafka_settings(self) -> dict[str, Any]:
        """The Kafka settings (by field name) services get in place of the caller's:
        :func:`stack_kafka_settings` of this stack's broker."""
        if not self.start_kafka:
            return stack_kafka_settings(self.workdir, self.kafka_bootstrap)
        return stack_kafka_settings(
            self.workdir, None, port=self.ports["kafka"], controller_port=self.ports["kafka_controller"]
        )

    def settings(self) -> dict[str, Any]:
        """The settings (by field name) every service gets in place of the caller's: the stack's Kafka
        (:meth:`kafka_settings`), store, Triton (:func:`triton_settings`), console and login, and the
        backend when Triton serves one. What ``skuforge up`` checks, not the caller's values of them."""
        ports = self.ports
        return {
            **self.kafka_settings(),
            "store_uri": self.store_uri,
            **triton_settings(ports),
            "console_db_path": self.console_db,
            "console_port": ports["console"],
            "console_metrics_port": ports["console_metrics"],
            "console_users": self.console_users or None,  # None: not read yet (stack_settings_before_start)
            # The generator stage asks Triton for the backend the server was started with.
            **({"generation_backend": self.backends[0]} if len(self.backends) == 1 else {}),
        }

    def env(self) -> dict[str, str]:
        """Environment every service gets (on top of the caller's): :meth:`settings` as variables (an
        empty one is unset), and ``extra_env``."""
        return {
            **{
                ENV_PREFIX + name.upper(): "" if value is None else str(value)
                for name, value in self.settings().items()
            },
            **self.extra_env,
        }


def stack_kafka_settings(
    workdir: Path,
    kafka_bootstrap: str | None,
    *,
    port: int = DEFAULT_PORT,
    controller_port: int = DEFAULT_CONTROLLER_PORT,
) -> dict[str, Any]:
    """The Kafka settings (by field name) a stack's services get in place of the caller's: the
    bootstrap of ``--kafka-bootstrap``'s cluster, with the caller's protocol and login for it; or,
    with no ``kafka_bootstrap``, the PLAINTEXT connection of the stack's own broker, every protocol,
    SASL and CA setting of the caller's overridden, since they are for another cluster: with only the
    bootstrap replaced, every stage failed to reach it. ``port`` only changes the bootstrap."""
    if kafka_bootstrap is not None:
        return {"kafka_bootstrap": kafka_bootstrap}
    return LocalKafka(workdir / "kafka", port=port, controller_port=controller_port).connection


def triton_settings(ports: Mapping[str, int]) -> dict[str, Any]:
    """The Triton settings (by field name) a stack's services get in place of the caller's: the gRPC
    address of the stack's own server, and the ports it serves on."""
    return {
        "generation_triton_url": f"127.0.0.1:{ports['triton_grpc']}",
        "generation_triton_protocol": "grpc",
        "generation_server_http_port": ports["triton_http"],
        "generation_server_grpc_port": ports["triton_grpc"],
        "generation_server_metrics_port": ports["triton_metrics"],
    }


# --------------------------------------------------------------------------------------------------
# configuration: ports, store, login
# --------------------------------------------------------------------------------------------------


class PortsInUse(RuntimeError):
    """``--ports default`` was asked for and some of the documented ports are taken."""


def resolve_ports(
    workdir: Path, mode: str, *, with_kafka: bool = True, moved: dict[str, tuple[int, int]] | None = None
) -> dict[str, int]:
    """The stack's ports: ``default`` (the documented ones), ``free`` (any free ones) or ``auto``.

    ``auto`` gives each service the port it had in the last run from this workdir, else its documented
    one, and a free port only where that is taken (another stack, another user's broker...): one taken
    port moves that service alone, and the console keeps the port its users have bookmarked. Each
    service ``auto`` moves is put in ``moved`` (name: its wanted port, the one chosen), for ``up`` to say,
    and for :func:`save_ports` to keep the wanted one for the next run.

    Raises:
        PortsInUse: ``default``, and one or more of the documented ports are taken (all are named).
    """
    names = [name for name in DEFAULT_PORTS if with_kafka or not name.startswith("kafka")]
    if mode == "default":
        ports = {name: DEFAULT_PORTS[name] for name in names}
        # Checked here, all at once: a service that finds its port taken only fails in its log, and
        # a Kafka port answered by another broker would even pass for ours.
        busy = {name: port for name, port in ports.items() if port_in_use(port)}
        if busy:
            raise PortsInUse(
                "--ports default: already in use on 127.0.0.1: "
                + ", ".join(f"{name} {port}" for name, port in busy.items())
                + "; run with --ports auto (free ports for the taken ones) or --ports free, or stop what "
                f"holds them (ss -ltnp 'sport = :{next(iter(busy.values()))}' shows the process)"
            )
        return ports
    chosen: dict[str, int] = {}
    if mode == "auto":
        saved = saved_ports(workdir / PORTS_FILE)
        # Before, one taken port moved every port (the saved ones and the console's bookmarked one too).
        wanted = {name: saved.get(name, DEFAULT_PORTS[name]) for name in names}
        for name in names:
            if wanted[name] not in chosen.values() and not port_in_use(wanted[name]):
                chosen[name] = wanted[name]
    for name in names:
        while name not in chosen:
            port = free_port()
            if port not in chosen.values():
                chosen[name] = port
                if mode == "auto" and moved is not None:
                    moved[name] = (wanted[name], port)
    return {name: chosen[name] for name in names}


def saved_ports(path: Path) -> dict[str, int]:
    """The ports of the last run, from ``path`` (``<workdir>/ports.json``); {} when there is none.

    A hand-edited file may be damaged: what cannot be used (the whole file, or a port outside
    1-65535) is left out with a warning on stderr, and those services get ports chosen afresh. A port
    out of range was an OverflowError traceback from the check whether it is taken, and 0 was taken
    as it stood (the kernel's "any port").
    """
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            raise ValueError(f"expected an object of service: port, got {type(document).__name__}")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        print(f"skuforge up: warning: {path}: {exc}; choosing the ports afresh", file=sys.stderr)
        return {}
    saved: dict[str, int] = {}
    for name, port in document.items():
        # "9092" as ever, in ASCII digits: int() reads any script's ("٩٠٩٢" is 9092), and "²" is a
        # digit to isdigit() that int() refuses (a traceback).
        text = port.strip() if isinstance(port, str) else ""
        number = int(text) if text.isascii() and text.isdecimal() else port
        if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
            saved[name] = number
        else:
            print(
                f"skuforge up: warning: {path}: {name} {port!r} is not a port (1-65535); choosing it afresh",
                file=sys.stderr,
            )
    return saved


def console_login(workdir: Path) -> tuple[str, bool]:
    """``name:password`` for the console: SKUFORGE_CONSOLE_USERS, else the one made for this workdir.

    Returns the users string and whether it was generated here (and so should be printed).

    Raises:
        ConfigError: the saved login cannot be read or is not what SKUFORGE_CONSOLE_USERS would accept.
    """
    configured = os.environ.get("SKUFORGE_CONSOLE_USERS", "").strip()
    if configured:
        return configured, False
    path = workdir / LOGIN_FILE
    # Checked as SKUFORGE_CONSOLE_USERS is: a damaged file passed, and stack.json's first user was a
    # traceback after the ports were chosen. Not replaced: its password may be all someone has.
    try:
        saved = path.read_text().strip()
        if saved and not parse_users(saved):
            raise ValueError("names no reviewer")
    except FileNotFoundError:
        saved = ""
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(
            f"{path}: {exc}; fix it, delete it for a new login, or set SKUFORGE_CONSOLE_USERS"
        ) from None
    if saved:
        return saved, True
    users = f"{CONSOLE_USER}:{secrets.token_urlsafe(12)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(users + "\n")
    return users, True


def _cuda_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def mix_backends(backend_options: list[str] | None = None) -> list[str]:
    """The backends of SKUFORGE_GENERATION_BACKEND_MIX with a share above 0 (empty when no mix is set):
    the generator asks each of them, and SKUFORGE_GENERATION_BACKEND then not at all.

    Read with what a stack gives its services in place of the caller's: its Triton (at the documented
    ports: which ports does not change the mix) and the backend of ``backend_options`` given once.
    The caller's values of those may be another deployment's, which the stack's services never see;
    so is the caller's SKUFORGE_GENERATION_BACKEND where the mix has one backend, which up gives every
    service in its place (:meth:`StackConfig.settings`).

    Raises:
        ConfigError: a SKUFORGE_GENERATION_* setting the stack's services would get and refuse.
    """
    backends = list(dict.fromkeys(backend_options or []))
    replaced = {
        **triton_settings(DEFAULT_PORTS),
        **({"generation_backend": backends[0]} if len(backends) == 1 else {}),
    }
    try:
        shares = load_settings(GenerationSettings, **replaced).generation_backend_mix
    except ConfigError as refused:
        if "generation_backend" in replaced:
            raise
        # Read again with a backend that stands in for the caller's: with a mix set, the backend takes
        # no part in any other setting's check. Refused only when the caller's one reaches the services.
        try:
            stand_in = load_settings(GenerationSettings, **replaced, generation_backend=BACKEND_NAMES[0])
        except ConfigError:
            raise refused from None
        shares = stand_in.generation_backend_mix
        if sum(share > 0 for share in shares.values()) != 1:
            raise refused from None
    return [backend for backend in BACKEND_NAMES if shares.get(backend, 0) > 0]  # type: ignore[call-overload]


def default_backends() -> list[str]:
    """The backends of SKUFORGE_GENERATION_BACKEND_MIX if one is set (Triton must serve every model the
    generator asks for); else SKUFORGE_GENERATION_BACKEND if set; else diffusion + LoRA when a model is
    configured and a GPU is present (diffusion on a CPU takes minutes per image); else composite."""
    if mixed := mix_backends():
        return mixed
    configured = os.environ.get("SKUFORGE_GENERATION_BACKEND")
    if configured:
        return [configured]
    if os.environ.get("SKUFORGE_DIFFUSION_MODEL") and _cuda_available():
        return ["diffusion"]
    return ["composite"]


def default_with_trainer() -> bool:
    """The LoRA trainer runs when a GPU is present and a base model is configured; on a CPU a real
    training job takes days, so it is off unless ``--with-trainer`` asks for it."""
    model = os.environ.get("SKUFORGE_LORA_MODEL") or os.environ.get("SKUFORGE_DIFFUSION_MODEL")
    return bool(model) and _cuda_available()


def model_problem(backend_options: list[str] | None, with_trainer: bool) -> str | None:
    """What model the stack would run without, in one line; None when none is missing.

    Triton's diffusion backend without SKUFORGE_DIFFUSION_MODEL, or the lora-trainer without that or
    SKUFORGE_LORA_MODEL, failed only in its log, once every service before it had started (minutes),
    and the whole stack was stopped again. Whether the model is usable is the service's to say.
    """
    backends = backend_options or default_backends()
    if "diffusion" in backends and not os.environ.get("SKUFORGE_DIFFUSION_MODEL", "").strip():
        if backend_options:
            source = "--backend diffusion"
        elif mix_backends():
            source = "SKUFORGE_GENERATION_BACKEND_MIX's diffusion share"
        else:
            source = "SKUFORGE_GENERATION_BACKEND=diffusion"
        return (
            f"{source} needs SKUFORGE_DIFFUSION_MODEL: a save_pretrained inpainting pipeline folder, or an "
            "s3:// or file:// URI of one; set it, or use the composite backend"
        )
    models = (
        os.environ.get(name, "").strip() for name in ("SKUFORGE_LORA_MODEL", "SKUFORGE_DIFFUSION_MODEL")
    )
    if with_trainer and not any(models):
        return (
            "--with-trainer: the lora-trainer needs SKUFORGE_LORA_MODEL or SKUFORGE_DIFFUSION_MODEL, a local "
            "save_pretrained inpainting folder; set one, or leave --with-trainer out"
        )
    return None


def parse_replicas(text: str) -> dict[str, int]:
    """``"matting=2,generator=2"`` -> ``{"matting": 2, "generator": 2}``; names must be pipeline stages,
    counts 1 to ``MAX_REPLICAS``."""
    known = [stage.name for stage in PIPELINE]
    replicas: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        # ASCII decimal: "matting=²" was int()'s message, not this one, and "matting=٣" (a decimal to
        # Python and int()) ran 3 members.
        if not sep or name not in known or not (count.isascii() and count.isdecimal()) or int(count) < 1:
            raise ValueError(
                f"--replicas: {item!r} is not STAGE=COUNT with STAGE one of {', '.join(known)} and COUNT >= 1"
            )
        if int(count) > MAX_REPLICAS:  # 100000 chose as many ports and started as many processes
            raise ValueError(
                f"--replicas: {item} is more than {MAX_REPLICAS} members of {name}, the most up runs "
                "of one stage (each is a process and a port on this machine)"
            )
        if name in replicas:  # else the last count silently beat the first
            raise ValueError(f"--replicas: {name} is named twice ({text!r}); give each stage once")
        replicas[name] = int(count)
    return replicas


def build_config(
    workdir: Path,
    *,
    ports_mode: str = "auto",
    kafka_bootstrap: str | None = None,
    backends: list[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    with_trainer: bool | None = None,
    replicas: Mapping[str, int] | None = None,
) -> StackConfig:
    """The stack for ``workdir``: ports, store, console database and login decided once, here.

    Replicas after a stage's first serve their /metrics on free ports, chosen here. The ports are
    not saved: :func:`save_ports` does that once the run is not refused.

    Raises:
        PortsInUse: ``ports_mode`` is ``default`` and a documented port is taken.
        ConfigError: the workdir's saved console login is damaged (:func:`console_login`), or
            SKUFORGE_GENERATION_BACKEND_MIX cannot be read (:func:`mix_backends`).
    """
    workdir = workdir.resolve()
    moved: dict[str, tuple[int, int]] = {}
    ports = resolve_ports(workdir, ports_mode, with_kafka=kafka_bootstrap is None, moved=moved)
    users, _ = console_login(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for stage, count in (replicas or {}).items():
        for index in range(2, count + 1):
            port = free_port()
            while port in ports.values():
                port = free_port()
            ports[f"{stage}-{index}"] = port
    config = _stack_config(
        workdir,
        ports,
        users,
        kafka_bootstrap=kafka_bootstrap,
        backends=backends,
        extra_env=extra_env,
        with_trainer=default_with_trainer() if with_trainer is None else with_trainer,
        replicas=replicas,
    )
    config.moved_ports = moved
    config.ports_mode = ports_mode
    return config


def _stack_config(
    workdir: Path,
    ports: dict[str, int],
    users: str,
    *,
    kafka_bootstrap: str | None,
    backends: list[str] | None,
    extra_env: Mapping[str, str] | None = None,
    with_trainer: bool = False,
    replicas: Mapping[str, int] | None = None,
) -> StackConfig:
    """The stack of ``workdir`` on ``ports`` with console login ``users``: the rest from the caller's
    settings, as :func:`build_config` decides it."""
    return StackConfig(
        workdir=workdir,
        ports=ports,
        store_uri=os.environ.get("SKUFORGE_STORE_URI") or f"file://{workdir / UP_STORE}",
        console_db=os.environ.get("SKUFORGE_CONSOLE_DB_PATH") or str(workdir / UP_CONSOLE_DB),
        console_users=users,
        kafka_bootstrap=kafka_bootstrap or f"127.0.0.1:{ports['kafka']}",
        start_kafka=kafka_bootstrap is None,
        # Once each: `--backend composite --backend composite` was two backends, so the generator was
        # left asking the shell's SKUFORGE_GENERATION_BACKEND, which Triton may not serve.
        backends=list(dict.fromkeys(backends or default_backends())),
        extra_env=dict(extra_env or {}),
        with_trainer=with_trainer,
        replicas=dict(replicas or {}),
    )


def stack_settings_before_start(
    workdir: Path, *, kafka_bootstrap: str | None = None, backends: list[str] | None = None
) -> dict[str, Any]:
    """:meth:`StackConfig.settings` of the stack ``skuforge up --workdir workdir`` (``--kafka-bootstrap``,
    ``--backend``) would start, as far as is known before it chooses its ports and reads its login: for
    checking the caller's settings before then (``skuforge up`` before it makes, locks or stops anything;
    ``skuforge demo``, before it renders the SKUs). The documented ports stand in for the ones up will
    choose (free ones in their place change no setting's validity), and a login that is not the caller's
    is left unset (up checks the one it keeps itself, :func:`console_login`).

    Raises:
        ConfigError: SKUFORGE_GENERATION_BACKEND_MIX cannot be read (:func:`mix_backends`).
    """
    users = os.environ.get("SKUFORGE_CONSOLE_USERS", "").strip()
    ports = dict(DEFAULT_PORTS)
    return _stack_config(
        workdir.resolve(), ports, users, kafka_bootstrap=kafka_bootstrap, backends=backends
    ).settings()


def save_ports(config: StackConfig) -> None:
    """Keep the stack's ports in ``<workdir>/ports.json`` for ``--ports auto``'s next run (a stage's
    replicas after its first get fresh ones each run). A service ``--ports auto`` moved off a taken port
    keeps the port it wanted there, not the one it moved to: the console moved off its bookmarked port
    while something held that briefly never came back to it."""
    ports = {
        name: config.moved_ports[name][0] if name in config.moved_ports else port
        for name, port in config.ports.items()
        if name in DEFAULT_PORTS
    }
    # Replaced, not rewritten in place: a write cut short (a full disk, a crash) left a damaged file, and
    # the next run moved every service, the console's bookmarked port too.
    _replace_file(config.workdir / PORTS_FILE, json.dumps(ports, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# the services
# --------------------------------------------------------------------------------------------------


def kafka_ready(bootstrap: str) -> bool:
    """The broker answers an admin client (it lists topics).

    Only once one of its addresses accepts a connection: while the JVM boots nothing listens, and an
    admin client then logs kafka-python's ``Connection failed ... ECONNREFUSED`` at ERROR, a dozen
    lines on up's terminal before ``kafka: ready``. Nor are kafka-python's own errors logged while it
    asks (a broker that listens but is not serving yet, and each restart): not ready yet is this
    check's whole answer.
    """
    from kafka import KafkaAdminClient

    if not any(_accepts_connections(address) for address in bootstrap.split(",")):
        return False
    # Not left to the command's filter (shared.observability): it hides refused connections only, and a
    # broker that takes a connection and drops it (booting, restarting) made the probe log "Connection
    # lost: ... socket disconnected" at ERROR, a dozen lines a probe (tests/test_up_review46.py).
    client_logger = logging.getLogger("kafka")
    level = client_logger.level
    client_logger.setLevel(logging.CRITICAL)
    try:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap.split(","),
                client_id="skuforge-up-probe",
                request_timeout_ms=3_000,
                bootstrap_timeout_ms=3_000,
            )
        except Exception:  # kafka-python raises many kinds while a broker boots
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()
    finally:
        client_logger.setLevel(level)


def _accepts_connections(address: str, timeout_s: float = 0.5) -> bool:
    """Something listens on ``host:port`` (a port that is no number accepts nothing)."""
    host, _, port = address.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def holds_partitions(metrics_url: str, topics: list[str]) -> Callable[[], bool]:
    """A ready check: the service's consumer holds partitions of every one of ``topics``.

    ``/readyz`` turns green once the group is joined, even with nothing assigned; and kafka-python
    3.0 sometimes joins a group before it has the topic's metadata and stays with no partitions
    until its metadata next refreshes (minutes). The runtime's lag gauge names every partition it
    holds, so this check sees that; the supervisor restarts a service that never gets there.
    """

    def check() -> bool:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as response:
                text = response.read().decode()
            return set(topics) <= topics_held(text_string_to_metric_families(text))
        except (OSError, ValueError, http.client.HTTPException):  # not (yet) the stage's /metrics
            return False

    return check


def _skuforge(*args: str) -> list[str]:
    return [sys.executable, "-m", "skuforge_cli", *args]


def build_specs(config: StackConfig) -> list[ServiceSpec]:
    """The services of the stack, in start order."""
    env = config.env()
    ports = config.ports
    specs: list[ServiceSpec] = []

    def log(name: str) -> Path:
        return config.logs / f"{name}.log"

    if config.start_kafka:
        # Ready only while this stack's own broker (the JVM running <workdir>/kafka's config) runs: a
        # broker of someone else's on the same port also lists topics, and the topics would be created
        # there while ours restart-loops on the taken port.
        own_broker = LocalKafka.from_data_dir(config.workdir / "kafka")
        specs.append(
            ServiceSpec(
                name="kafka",
                argv=[
                    sys.executable,
                    "-m",
                    "devstack.broker",
                    "start",
                    "--foreground",
                    "--data-dir",
                    str(config.workdir / "kafka"),
                    "--port",
                    str(ports["kafka"]),
                    "--controller-port",
                    str(ports["kafka_controller"]),
                    "--timeout",
                    "170",
                ],
                log_path=log("kafka"),
                env=env,
                ready=lambda: own_broker.is_running() and kafka_ready(config.kafka_bootstrap),
                ready_timeout_s=180,
            )
        )
    specs.append(
        ServiceSpec(
            name="topics",
            argv=_skuforge("topics", "create"),
            log_path=log("topics"),
            env=env,
            oneshot=True,
            ready_timeout_s=60,
        )
    )
    model_ready = [
        http_ok(f"http://127.0.0.1:{ports['triton_http']}/v2/models/{model_name(backend)}/ready")
        for backend in config.backends
    ]
    specs.append(
        ServiceSpec(
            name="triton",
            argv=_skuforge("serve", "generator", *(arg for b in config.backends for arg in ("--backend", b))),
            log_path=log("triton"),
            env={**env, "SKUFORGE_METRICS_PORT": str(ports["generator_server_metrics"])},
            env_at_start=functools.partial(_ports_free_at_start, config, "triton", TRITON_PORTS),
            ready=lambda: all(check() for check in model_ready),
            ready_timeout_s=300,
        )
    )
    settings = load_settings(**config.settings())  # the services', not the shell's
    for stage in config.stages:
        names = config.replica_names(stage.name)
        for index, name in enumerate(names, start=1):
            inputs = [settings.topic_name(topic) for topic in stage.consumes]
            specs.append(
                ServiceSpec(
                    name=name,
                    argv=_skuforge("run", stage.name),
                    log_path=log(name),
                    env={
                        **env,
                        "SKUFORGE_METRICS_PORT": str(ports[name]),
                        # Static membership: a restarted replica takes its partitions back, no rebalance.
                        "SKUFORGE_GROUP_INSTANCE_ID": f"{stage.name}-{index}",
                    },
                    env_at_start=functools.partial(_metrics_port_at_start, config, name),
                    # A lone member holds every partition; one of several may rightly hold none of a topic.
                    ready=functools.partial(_stage_ready, config, name, inputs if len(names) == 1 else None),
                    ready_timeout_s=60,
                    start_attempts=3,
                )
            )
    intake_ready = http_ok(f"http://127.0.0.1:{ports['console_metrics']}/readyz")
    intake_holding = holds_partitions(
        f"http://127.0.0.1:{ports['console_metrics']}/metrics",
        [settings.topic_name(topic) for topic in CONSOLE.consumes],
    )
    login_page = http_ok(f"http://127.0.0.1:{ports['console']}/login")
    specs.append(
        ServiceSpec(
            name=CONSOLE.name,
            argv=_skuforge(CONSOLE.command, CONSOLE.name),
            log_path=log("console"),
            env=env,
            env_at_start=functools.partial(_ports_free_at_start, config, CONSOLE.name, CONSOLE_PORTS),
            ready=lambda: intake_ready() and intake_holding() and login_page(),
            ready_timeout_s=60,
            start_attempts=3,
        )
    )
    return specs


def _metrics_port_at_start(config: StackConfig, name: str) -> dict[str, str]:
    """``SKUFORGE_METRICS_PORT`` of stage member ``name`` as it starts: its port, checked again then.

    The ports are chosen as the stack starts, minutes before its last stage does: a port taken meanwhile
    made that stage exit "Address already in use" and stopped the whole start-up. Unless ``--ports
    default`` was asked for, a taken one is said and replaced by a free one (in ``config.ports``, which
    the ready check, stack.json and Prometheus's targets read); with it, the start is refused saying what
    to do (the stage was started anyway, to fail on the port in its log).

    Raises:
        StartRefused: ``--ports default``, and the port is taken.
    """
    port = config.ports[name]
    if port_in_use(port):
        if config.ports_mode == "default":
            raise StartRefused(
                f"{name}: its metrics port {port} was taken since the ports were checked, so it cannot "
                f"start; stop what holds it (ss -ltnp 'sport = :{port}') or run with --ports auto"
            )
        else:
            moved = next(p for p in iter(free_port, None) if p not in config.ports.values())
            config.ports[name] = moved
            _say(f"{name}: its metrics port {port} was taken since it was chosen; using {moved}")
            for follow in config.on_metrics_port_moved:
                follow()
    return {"SKUFORGE_METRICS_PORT": str(config.ports[name])}


# The ports Triton's service and the console serve on (names of StackConfig.ports), each as said.
TRITON_PORTS = {
    "triton_http": "its HTTP port",
    "triton_grpc": "its gRPC port",
    "triton_metrics": "its metrics port",
    "generator_server_metrics": "the generator server's metrics port",
}
CONSOLE_PORTS = {"console": "its port", "console_metrics": "its metrics port"}


def _ports_free_at_start(config: StackConfig, service: str, ports: Mapping[str, str]) -> dict[str, str]:
    """Nothing (no variable of its own): ``service``'s ``ports`` checked again as it starts.

    They are chosen as the stack starts, minutes before Triton and the console start: one taken meanwhile
    made the service exit "Address already in use" in its log (Triton after its models loaded), and the
    start-up failed naming only that. Unlike a stage's metrics port, these are not moved: every service's
    settings carry them (the generator stage's Triton address, the console's address). So the start is
    refused naming each taken port, its entry in ports.json and what to do.

    Raises:
        StartRefused: one or more of ``ports`` is taken.
    """
    taken = [name for name in ports if port_in_use(config.ports[name])]
    if not taken:
        return {}
    remedy = "run with --ports auto" if config.ports_mode == "default" else "start skuforge up again"
    raise StartRefused(
        f"{service}: "
        + ", ".join(f"{ports[name]} {config.ports[name]} ({name} in {PORTS_FILE})" for name in taken)
        + (" was" if len(taken) == 1 else " were")
        + " taken since the ports were chosen, so it cannot start; stop what holds it "
        f"(ss -ltnp 'sport = :{config.ports[taken[0]]}'), or {remedy}: it gives a taken port a free one"
    )


def _stage_ready(config: StackConfig, name: str, inputs: list[str] | None) -> bool:
    """Stage member ``name`` answers ``/readyz`` on its port of the moment, and holds partitions of
    every one of ``inputs`` (None: not asked, as of one of several members)."""
    address = f"http://127.0.0.1:{config.ports[name]}"
    return http_ok(f"{address}/readyz")() and (
        inputs is None or holds_partitions(f"{address}/metrics", inputs)()
    )


def prometheus_service(
    config: StackConfig,
    prometheus: PrometheusServer,
    *,
    report: Callable[[str], None],
    prefer_default_port: bool = True,
    scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S,
) -> ServiceSpec:
    """``--with-prometheus``'s Prometheus as the stack's last service; sets ``config.prometheus_url``.

    Its port was chosen before the stack started, and it starts last, minutes later: a port taken in
    between made it exit ("bind: address already in use") and failed the whole start-up. So the port is
    checked as Prometheus (re)starts, and a taken one is said and replaced (``stack_prometheus_port``);
    the address printed and written to stack.json follows it. Its targets are written again then too:
    a stage's metrics port may have moved as that stage started (:func:`_metrics_port_at_start`); and
    once it runs, a stage restarted on a moved port has them written again and Prometheus reloaded
    (they were written only as it started: the stage was scraped at its old port, down or another's).
    """
    config.prometheus_url = prometheus.url
    started = False

    def write_targets() -> None:
        prometheus.write_config(
            stack_scrape_config(
                config.ports,
                scrape_interval_s=scrape_interval_s,
                stage_members={stage.name: config.replica_names(stage.name) for stage in config.stages},
            )
        )

    def follow_moved_port() -> None:
        # Said, not raised: raised here, in the moved stage's start, it read as that stage's failure.
        try:
            write_targets()  # read as it (re)starts
            if started:
                prometheus.reload()
        except (OSError, RuntimeError) as exc:  # down, restarting: it reads the file as it starts again
            report(f"prometheus: its scrape targets were not reloaded ({exc}); it reads them as it restarts")

    config.on_metrics_port_moved.append(follow_moved_port)

    def argv_at_start() -> list[str]:
        nonlocal started
        started = True
        write_targets()
        if port_in_use(prometheus.port):
            taken = prometheus.port
            prometheus.port = stack_prometheus_port(config.ports, prefer_default_port=prefer_default_port)
            config.prometheus_url = prometheus.url
            report(f"prometheus: port {taken} was taken since it was chosen; using {prometheus.port}")
        return prometheus.argv()

    return ServiceSpec(
        name="prometheus",
        argv=prometheus.argv(),
        argv_at_start=argv_at_start,
        log_path=config.logs / "prometheus.log",
        ready=lambda: http_ok(f"{prometheus.url}/-/ready")(),  # at its address of the moment
        ready_timeout_s=60,
    )


# --------------------------------------------------------------------------------------------------
# the state file
# --------------------------------------------------------------------------------------------------


def metrics_urls(config: StackConfig) -> dict[str, str]:
    """Service → its Prometheus endpoint; the triton service has two: its own (``generator-server``) and
    Triton's (``triton``)."""
    urls = {
        name: f"http://127.0.0.1:{config.ports[name]}/metrics"
        for stage in config.stages
        for name in config.replica_names(stage.name)
    }
    urls["console"] = f"http://127.0.0.1:{config.ports['console_metrics']}/metrics"
    urls[GENERATOR_SERVER_JOB] = f"http://127.0.0.1:{config.ports['generator_server_metrics']}/metrics"
    urls["triton"] = f"http://127.0.0.1:{config.ports['triton_metrics']}/metrics"
    return urls


def scenes_said() -> str:
    """The scenes the composite backend places products on, as the ready summary says them: without
    SKUFORGE_SCENES_URI, the renderer's procedural ones, which lowered a classifier's accuracy on real
    products (docs/evaluation.md), so the sample store photos are named."""
    if scenes := os.environ.get("SKUFORGE_SCENES_URI", "").strip():
        return scenes
    try:
        sample: Path | str = SAMPLE_SCENES.relative_to(Path.cwd())
    except ValueError:
        sample = SAMPLE_SCENES
    return (
        "procedural (SKUFORGE_SCENES_URI unset): real products do better on store photos, "
        f"e.g. SKUFORGE_SCENES_URI={sample} (docs/evaluation.md)"
    )


def _inherited_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("SKUFORGE_")}


LOCK_FILE = ".lock"
_held_locks: list[int] = []  # open for the process's life: the lock goes with it, however it ends


@functools.cache
def _secrets() -> frozenset[str]:
    """The SKUFORGE_* variables that hold secrets, those of every service's settings."""
    from skuforge_cli.main import SETTINGS_MODELS

    return secret_variables(SETTINGS_MODELS)


def hold_workdir(workdir: Path) -> bool:
    """Take ``<workdir>/.lock`` for the rest of this process (False: another process holds it).

    stack.json alone could not keep two stacks out of one workdir: a stack still stopping counts as
    not running, and two starts could both read "no stack" before either wrote one; the second then
    stopped the first's broker and both wrote stack.json. Services do not inherit the lock.
    """
    import fcntl

    workdir.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, so the lock file of a stack another user started can be tested.
    fd = os.open(workdir / LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held_locks.append(fd)
    return True


def write_state(config: StackConfig, supervisor: Supervisor, state: str) -> None:
    """Rewrite ``<workdir>/stack.json`` (atomically) with the stack's addresses and each service's pid."""
    metrics = metrics_urls(config)
    document: dict[str, Any] = {
        "state": state,
        "supervisor_pid": os.getpid(),
        # Whose pid it is: in a container `up` may be pid 1, which only there names this stack.
        "pid_namespace": pid_namespace(),
        # And which process: a pid reused after a SIGKILL or a reboot names a later one.
        "supervisor_start_ticks": process_start_ticks(os.getpid()),
        "supervisor_id": supervisor.supervisor_id,
        "started_at": config.started_at,
        "workdir": str(config.workdir),
        "kafka_bootstrap": config.kafka_bootstrap,
        "store_uri": config.store_uri,
        "console_url": config.console_url,
        "console_db": config.console_db,
        "console_user": first_console_user(config.console_users)[0],
        "console_login_file": str(config.workdir / LOGIN_FILE),
        "ports": config.ports,
        "prometheus_url": config.prometheus_url,
        # What a client of this stack needs: the caller's SKUFORGE_* (variants, namespace...) and ours.
        "env": {
            k: v
            for k, v in {**_inherited_env(), **config.env()}.items()
            # Readable by whoever may use the stack (another user's demo reads it): no secret. A
            # client brings its own Kafka password, as it would to any cluster. An empty one is kept:
            # it unsets the client's own, which its stack's own PLAINTEXT broker would refuse.
            if k not in _secrets() or not v
        },
        "services": {
            s.spec.name: {
                "status": s.status,
                "pid": s.pid,
                "restarts": s.restarts,
                "last_exit_code": s.last_exit_code,
                "log": str(s.spec.log_path),
                "metrics": metrics.get(s.spec.name),
            }
            for s in supervisor.services
        },
        "updated_at": time.time(),
    }
    _replace_file(config.workdir / STATE_FILE, json.dumps(document, indent=2) + "\n")


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: to ``<name>.tmp`` beside it, renamed over it."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        # A file that cannot be replaced (a directory, another user's, a full disk) stops `up`: it
        # leaves no .tmp behind, nor a partial one.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc's starttime); None if unknown.

    Exact and never nudged by the wall clock: with the pid, it names one process for the machine's
    uptime (a pid reused by a later process has a later start)."""
    try:
        # "pid (comm) S ppid ...": comm may hold spaces, so count after the last ")"; starttime is the 22nd.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started, epoch seconds (to about a second), from /proc; None if unknown."""
    try:
        boot_s = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    ticks = process_start_ticks(pid)
    return None if ticks is None else boot_s + ticks / os.sysconf("SC_CLK_TCK")


def pid_namespace() -> str | None:
    """This process's pid namespace as /proc names it ("pid:[4026531836]"); None where it cannot tell."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def runs_skuforge_up(pid: int) -> bool:
    """Whether process ``pid`` was started as ``skuforge up`` (the console script, or
    ``python -m skuforge_cli up``), by its /proc/<pid>/cmdline."""
    try:
        argv = [os.fsdecode(word) for word in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if word]
    except OSError:
        return False
    for index, word in enumerate(argv):
        if Path(word).name == "skuforge" or (word == "skuforge_cli" and argv[index - 1 : index] == ["-m"]):
            return "up" in argv[index + 1 :]
    return False


def _supervises_a_stack(pid: int, state: Mapping[str, Any]) -> bool:
    """Whether ``pid`` may be the supervisor ``state`` names (``read_state`` asks /proc whether it runs).

    A damaged or hand-edited 0 or -1 passed kill(pid, 0) (which signals a group and succeeds), and the
    refusal of `up` then told the user to `kill 0`, their own group; JSON's true is 1 in Python, and
    int() made 1 of 1.9 and "1": `up` writes its pid as a JSON integer. 1 is init, started before any
    stack, so it passed the pid-reuse check too; but in a container `skuforge up` may be pid 1 itself.
    So 1 is the stack's only where the file was written in this pid namespace and pid 1 here is
    `skuforge up`: seen from the host (or another container), pid 1 is that machine's init. Any other
    pid is the stack's only where it was written in this namespace too (or the file does not say).
    """
    if type(pid) is not int or pid < 1:
        return False
    namespace = pid_namespace()
    if pid > 1:
        # Written in another pid namespace (a container's, seen from the host or another container):
        # the same number here names some other process. A file without the field is read as before.
        written_in = state.get("pid_namespace")
        return written_in is None or namespace is None or written_in == namespace
    return namespace is not None and state.get("pid_namespace") == namespace and runs_skuforge_up(1)


def read_state(workdir: Path) -> dict[str, Any] | None:
    """The state of the stack of ``workdir`` if its supervisor still runs, else None."""
    try:
        state: dict[str, Any] = json.loads((workdir / STATE_FILE).read_text())
        pid = state["supervisor_pid"]
        if not _supervises_a_stack(pid, state):  # checked before kill(pid, 0): 0 and -1 are groups
            raise ValueError(f"supervisor_pid {pid!r} is not a stack's supervisor")
        # PermissionError: alive, another user's; the stack runs (a demo only reads its state).
        with contextlib.suppress(PermissionError):
            os.kill(pid, 0)
        stack_started_at = float(state.get("started_at") or "inf")
    # Overflow: a pid past C's long. RecursionError: json.loads' refusal of a file nested deeper than
    # Python's stack, no ValueError: damaged, as any other.
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None
    # A stack killed with SIGKILL, or by a reboot, leaves its state behind; its pid may since name a
    # process started after the stack was. The supervisor's start in ticks tells exactly; a file
    # without it has the wall-clock started_at (written a moment after the supervisor starts), with slack.
    recorded_ticks = state.get("supervisor_start_ticks")
    if type(recorded_ticks) is int and (ticks := process_start_ticks(pid)) is not None:
        return state if ticks == recorded_ticks else None
    started_at = process_started_at(pid)
    if started_at is not None and started_at > stack_started_at + STALE_PID_SLACK_S:
        return None
    return state


def _stop_stale_broker(workdir: Path, say: Any) -> None:
    """A broker left running from this workdir by a killed ``skuforge up`` would block the start.

    Stopped before the ports are chosen: it holds the ports of the last run, which ``--ports auto``
    would otherwise find taken and move away from.
    """
    broker = LocalKafka.from_data_dir(workdir / "kafka")
    if broker.is_running():
        say(f"kafka: stopping a broker left running from {broker.data_dir} (pid {broker.pid})")
        broker.stop()


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------


def _say(line: str) -> None:
    # After SIGHUP the terminal is gone and printing to it fails (EIO): stopping matters more.
    with contextlib.suppress(OSError):
        print(f"{time.strftime('%H:%M:%S')} up  {line}", flush=True)


def first_console_user(users: str) -> tuple[str, str]:
    """The first (name, password) of ``SKUFORGE_CONSOLE_USERS`` as the console reads it (empty entries
    skipped: ``",alice:pw"`` is alice, where splitting on the first comma crashed a ready stack)."""
    return next(iter(parse_users(users).items()))


def prometheus_problem(
    rules_file: Path, scrape_interval_s: float, *, with_trainer: bool, replicas: Mapping[str, int]
) -> str | None:
    """What stops ``--with-prometheus``'s Prometheus (no binary, a rules file unreadable or refused by
    promtool), in one line for ``skuforge up``; None when it would run.

    Checked on its config as ``up`` writes it (the stages and replicas it runs, the documented ports),
    in a folder of its own, before the workdir is touched: a start refused here wrote ports.json and a
    console login first. Prometheus starts last: rules it cannot load were once found only after every
    service had started.
    """
    stages = stack_stages(with_trainer)
    members = {stage.name: replica_names(stage.name, replicas.get(stage.name, 1)) for stage in stages}
    # A replica's port is chosen only when the stack starts; any port makes the same config for promtool.
    ports = {**DEFAULT_PORTS, **{name: 1 for names in members.values() for name in names[1:]}}
    with tempfile.TemporaryDirectory(prefix="skuforge-up-prometheus-") as scratch:
        try:
            trial = stack_prometheus(
                Path(scratch),
                ports,
                port=DEFAULT_PROMETHEUS_PORT,
                rules_file=rules_file,
                scrape_interval_s=scrape_interval_s,
                stage_members=members,
            )
            trial.argv()  # finds the binary: PrometheusMissing
        except (PrometheusMissing, OSError) as exc:
            return f"--with-prometheus: {exc}"
        try:
            rules_problem = config_problem(trial.config_path)
        except PrometheusMissing:  # a prometheus without its promtool: it says so itself, when it starts
            return None
    if rules_problem is not None:
        return f"--prometheus-rules {rules_file}: promtool refuses it: {rules_problem}"
    return None


def _bootstrap(text: str) -> str:
    """An argparse type: a non-blank bootstrap list (``--kafka-bootstrap "$KAFKA"`` with KAFKA unset
    was a KeyError traceback: no broker started, none given) of host:port entries, as
    SKUFORGE_KAFKA_BOOTSTRAP is checked (``localhost`` started the stack, and its first service
    failed in its log)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give host:port of a running Kafka, or leave it out")
    for entry in text.split(","):
        if not is_host_port(entry.strip()):
            raise argparse.ArgumentTypeError(f"{entry.strip()!r} is not host:port (a port from 1 to 65535)")
    return text.strip()


def main(argv: list[str] | None = None) -> int:
    """``skuforge up``: run the stack until Ctrl-C / SIGTERM; 0 after a clean stop, 1 if start-up failed."""
    parser = argparse.ArgumentParser(
        prog="skuforge up",
        description="Start Kafka, the topics, Triton, every stage and the console in the foreground; "
        "Ctrl-C stops them all.",
    )
    parser.add_argument(
        "--workdir",
        type=path_argument("folder"),
        default=DEFAULT_WORKDIR,
        help="logs, Kafka data, store, console tasks and stack.json (default %(default)s)",
    )
    parser.add_argument(
        "--ports",
        choices=("auto", "default", "free"),
        default="auto",
        help="auto (the default): last run's or the documented ports of Kafka, Triton, every stage's "
        "/metrics and the console, a free one for each that is taken as up starts; one taken later, as "
        "its service starts, is moved too for a stage's /metrics, but for Triton or the console it stops "
        "the start-up, naming it (start up again); default: the documented ports, or fail at once naming "
        "the taken ones; free: any free ports",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        default=None,
        type=_bootstrap,
        metavar="HOST:PORT",
        help="use this running Kafka instead of starting one (host:port[,host:port...])",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=("composite", "diffusion"),
        help=(
            "a generation backend Triton serves; repeat it for several (--backend composite --backend "
            "diffusion). With SKUFORGE_GENERATION_BACKEND_MIX set it must name every backend of "
            "SKUFORGE_GENERATION_BACKEND_MIX with a share, or up stops (exit 2); given once, it is also "
            "the backend the generator stage asks for, in place of SKUFORGE_GENERATION_BACKEND. Default: "
            "the backends of SKUFORGE_GENERATION_BACKEND_MIX; else SKUFORGE_GENERATION_BACKEND; else "
            "diffusion when SKUFORGE_DIFFUSION_MODEL is set and a GPU is present; else composite. "
            "Diffusion without SKUFORGE_DIFFUSION_MODEL stops up (exit 2)"
        ),
    )
    parser.add_argument(
        "--with-trainer",
        action="store_true",
        default=None,
        help="also run the lora-trainer stage (default: only when a GPU and SKUFORGE_DIFFUSION_MODEL "
        "or SKUFORGE_LORA_MODEL are present); without either model up stops (exit 2)",
    )
    parser.add_argument(
        "--grace-s",
        type=float_between(MIN_GRACE_S, MAX_GRACE_S),
        default=20.0,
        help=f"seconds a service has to stop before SIGKILL, {MIN_GRACE_S:g} to {MAX_GRACE_S:g} "
        "(default %(default)g)",
    )
    parser.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run Prometheus (Debian package 'prometheus') scraping the stack, with the alert rules",
    )
    parser.add_argument(
        "--prometheus-rules",
        type=path_argument("file"),
        default=None,
        metavar="FILE",
        help="rules file for that Prometheus (default deploy/prometheus/alerts.yml)",
    )
    parser.add_argument(
        "--scrape-interval-s",
        type=float_between(MIN_SCRAPE_INTERVAL_S, MAX_SCRAPE_INTERVAL_S),
        default=None,
        help=f"that Prometheus's scrape interval in seconds, {MIN_SCRAPE_INTERVAL_S:g} to "
        f"{MAX_SCRAPE_INTERVAL_S:g} (default {DEFAULT_SCRAPE_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--replicas",
        default="",
        metavar="STAGE=N,...",
        help="run N members of a stage's consumer group, e.g. matting=2,generator=2 (default: one each); "
        f"they share its partitions. N is at most {MAX_REPLICAS}: each member is a process and a port on "
        "this machine, and members beyond a topic's partitions wait idle",
    )
    args = parser.parse_args(argv)
    # Without --with-prometheus these were ignored and the stack came up with no Prometheus at all.
    if not args.with_prometheus:
        for option, value in (
            ("--prometheus-rules", args.prometheus_rules),
            ("--scrape-interval-s", args.scrape_interval_s),
        ):
            if value is not None:
                parser.error(f"{option} is for --with-prometheus's Prometheus; add --with-prometheus")
    rules_file: Path = args.prometheus_rules or ALERTS_FILE
    scrape_interval_s: float = (
        DEFAULT_SCRAPE_INTERVAL_S if args.scrape_interval_s is None else args.scrape_interval_s
    )
    try:
        replicas = parse_replicas(args.replicas)
    except ValueError as exc:
        parser.error(str(exc))
    if problem := folder_problem(args.workdir):
        parser.error(f"--workdir {args.workdir}: {problem}")
    from skuforge_cli.main import load_all_settings

    try:
        # A model the generator asks for and Triton does not serve is "unknown model", a transient
        # error: the generator would hold its partitions retrying for ever.
        left_out = [b for b in mix_backends(args.backend) if b not in args.backend] if args.backend else []
        with_trainer = default_with_trainer() if args.with_trainer is None else args.with_trainer
        problem = model_problem(args.backend, with_trainer)
    except ConfigError as exc:  # SKUFORGE_GENERATION_* the services would refuse; the rest is checked below
        print(f"skuforge up: {exc}", file=sys.stderr)
        return 2
    if left_out:
        parser.error(
            f"--backend {' --backend '.join(args.backend)} leaves out {', '.join(left_out)}, which "
            "SKUFORGE_GENERATION_BACKEND_MIX asks the generator for; give --backend for each backend "
            "of the mix, or leave --backend out"
        )
    if problem:
        parser.error(problem)

    if args.with_prometheus and (
        problem := prometheus_problem(
            rules_file, scrape_interval_s, with_trainer=with_trainer, replicas=replicas
        )
    ):
        print(f"skuforge up: {problem}", file=sys.stderr)
        return 2

    try:
        # Before the workdir is made or locked and an old broker stopped: a setting the services would
        # refuse, as far as is known before the ports are chosen (checked again with them, below).
        known = stack_settings_before_start(
            args.workdir, kafka_bootstrap=args.kafka_bootstrap, backends=args.backend
        )
        load_all_settings(**known)
    except ConfigError as exc:
        print(f"skuforge up: {exc}", file=sys.stderr)
        return 2

    workdir = args.workdir.resolve()
    try:
        held = hold_workdir(workdir)
    except OSError as exc:
        print(f"skuforge up: cannot lock {workdir / LOCK_FILE}: {exc}", file=sys.stderr)
        return 1
    if not held:
        print(
            f"skuforge up: another skuforge up is starting, running or stopping from {workdir} "
            f"(it holds {workdir / LOCK_FILE}); wait for it to stop, or use another --workdir",
            file=sys.stderr,
        )
        return 1
    running = read_state(workdir)
    if running is not None and running.get("state") in ("starting", "ready"):
        print(
            f"skuforge up: a stack already runs from {workdir} (pid {running['supervisor_pid']}); "
            f"stop it with Ctrl-C in its terminal or 'kill {running['supervisor_pid']}'",
            file=sys.stderr,
        )
        return 1
    if args.kafka_bootstrap is None:  # this stack starts its own broker
        try:
            _stop_stale_broker(workdir, _say)
        except BrokerError as exc:  # a damaged <workdir>/kafka config: named in one line, not a traceback
            print(f"skuforge up: {exc}", file=sys.stderr)
            return 1
    try:
        config = build_config(
            workdir,
            ports_mode=args.ports,
            kafka_bootstrap=args.kafka_bootstrap,
            backends=args.backend,
            with_trainer=with_trainer,
            replicas=replicas,
        )
    except PortsInUse as exc:
        print(f"skuforge up: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a damaged <workdir>/console-login
        print(f"skuforge up: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the login cannot be written (a directory, not ours, disk full)
        print(f"skuforge up: cannot write the stack's files: {exc}", file=sys.stderr)
        return 1
    try:
        # A bad SKUFORGE_* variable of any service stops us here, not in its log file: checked as the
        # services get them, up's own ports, Triton, store and login in place of the shell's (another
        # deployment's SKUFORGE_CONSOLE_PORT or Triton protocol stopped a stack that never uses them).
        # Before the ports are saved, so a refused run leaves the last run's (the console's bookmarked one).
        load_all_settings(**config.settings())
    except ConfigError as exc:
        print(f"skuforge up: {exc}", file=sys.stderr)
        return 2
    try:
        save_ports(config)
    except OSError as exc:  # a directory, not ours, disk full
        print(f"skuforge up: cannot write the stack's files: {exc}", file=sys.stderr)
        return 1
    # Said: a moved console went unnoticed, and its users' bookmark opened whatever held the old port.
    for name, (wanted, chosen) in config.moved_ports.items():
        _say(
            f"{name}: port {wanted} is taken; using {chosen} for this run only "
            f"(ports.json keeps {wanted} for the next)"
        )
    _, generated_login = console_login(workdir)
    specs = build_specs(config)
    if args.with_prometheus:
        try:
            prometheus = stack_prometheus(
                config.workdir / "prometheus",
                config.ports,
                prefer_default_port=args.ports != "free",
                rules_file=rules_file,
                scrape_interval_s=scrape_interval_s,
                stage_members={stage.name: config.replica_names(stage.name) for stage in config.stages},
            )
            prometheus.argv()
        except (PrometheusMissing, OSError) as exc:  # checked above; here if gone or unwritable since
            print(f"skuforge up: --with-prometheus: {exc}", file=sys.stderr)
            return 2
        specs.append(
            prometheus_service(
                config,
                prometheus,
                report=_say,
                prefer_default_port=args.ports != "free",
                scrape_interval_s=scrape_interval_s,
            )
        )

    state = {"now": "starting"}

    def on_change(supervisor: Supervisor) -> None:
        write_state(config, supervisor, "stopping" if supervisor.stopping.is_set() else state["now"])

    supervisor = Supervisor(specs, grace_s=args.grace_s, report=_say, on_change=on_change)

    def record(now: str) -> None:
        # A disk full once the stack runs went out of Supervisor.run (stopping every service) and of
        # `up` as a traceback: said instead, and the stack runs on, as on_change's failures do.
        try:
            write_state(config, supervisor, now)
        except OSError as exc:
            _say(f"cannot record the stack's state: {exc}")

    def on_ready() -> None:
        name, password = first_console_user(config.console_users)
        login = f"login {name} / {password}" if generated_login else "login: SKUFORGE_CONSOLE_USERS"
        lines = [
            "the stack is ready:",
            f"  kafka      {config.kafka_bootstrap}",
            f"  store      {config.store_uri}",
            f"  triton     grpc 127.0.0.1:{config.ports['triton_grpc']}, "
            f"http 127.0.0.1:{config.ports['triton_http']}",
            f"  console    {config.console_url}  ({login})",
            *([f"  scenes     {scenes_said()}"] if "composite" in config.backends else []),
            "  metrics    "
            + ", ".join(f"{n} :{u.rsplit(':', 1)[1]}" for n, u in metrics_urls(config).items()),
            *(
                [f"  prometheus {config.prometheus_url}  (alerts: {config.prometheus_url}/alerts)"]
                if config.prometheus_url
                else []
            ),
            f"  logs       {config.logs}/",
            # The command itself: run with the defaults after --ports auto moved Kafka, ingest published
            # to whatever broker held 9092 (an old `make kafka-up`), exit 0, and the stack saw nothing.
            f"  feed it    SKUFORGE_KAFKA_BOOTSTRAP={shlex.quote(config.kafka_bootstrap)} "
            f"SKUFORGE_STORE_URI={shlex.quote(config.store_uri)} skuforge ingest DIR",
            "Ctrl-C stops everything.",
        ]
        for line in lines:
            _say(line)
        # Recorded once said: a tool that waits for "ready" and then reads up's output found no summary.
        state["now"] = "ready"
        record("ready")

    try:
        write_state(config, supervisor, "starting")
    except OSError as exc:  # checked before anything starts: a stack no client could find
        print(f"skuforge up: cannot write the stack's state: {exc}", file=sys.stderr)
        return 1
    try:
        code = supervisor.run(on_ready=on_ready)
    except SupervisorError as exc:  # pragma: no cover - run() reports start-up errors itself
        _say(str(exc))
        code = 1
    record("stopped")
    _say("stopped" if code == 0 else "start-up failed; everything started was stopped")
    return code
