"""The ``skuforge`` command: one entry point, a subcommand per job.

Each command's code lives with what it serves: a service's operator commands in its
``services/<name>/cli.py``, the local stack's in ``devstack/``, and the two that belong to no one
service here (``synth.py``, ``dlq.py``); this module only dispatches. ``skuforge run`` and
``skuforge serve`` find their module in the flow (``schemas/flow.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic_settings import BaseSettings

from schemas.flow import SERVERS, STAGES, flow_document, flow_table_markdown
from services.captioner.config import CaptionerSettings
from services.console.config import ConsoleSettings
from services.gate.config import GateSettings
from services.lora_trainer.config import LoraTrainerSettings
from services.matting.config import MattingSettings
from shared.argtypes import CommandParser, one_of, whole_number
from shared.commands import run_command
from shared.config import (
    KAFKA_MAX_INT32,
    ConfigError,
    Settings,
    load_settings,
    settings_table_markdown,
    unknown_variables,
)
from shared.generation.diffusion import DiffusionSettings
from shared.generation.settings import GenerationSettings, check_images_fit
from shared.observability import configure_command_logging, configure_logging
from shared.store import open_settings_store
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.settings import TrainstoreSettings

if TYPE_CHECKING:  # shared.bus imports kafka: loaded only by the commands that talk to it
    from shared.bus import TopicShortfall

# Every settings model, shared first; `skuforge config --markdown` prints them as README's table.
SETTINGS_MODELS: tuple[type[BaseSettings], ...] = (
    Settings,
    MattingSettings,
    CaptionerSettings,
    GenerationSettings,
    DiffusionSettings,
    LoraTrainerSettings,
    GateSettings,
    TrainstoreSettings,
    ConsoleSettings,
)


def load_all_settings(**overrides: object) -> list[BaseSettings]:
    """Every settings model read from the environment, so one bad ``SKUFORGE_*`` variable of any
    service is found before anything starts; raises ConfigError naming every bad variable, one
    naming SKUFORGE_TRAINSTORE_PREFIX when it leaves the store no room for any event's keys, and one
    naming SKUFORGE_GENERATION_SIZE_PX when its images have more pixels than SKUFORGE_MAX_IMAGE_PIXELS.

    ``overrides`` (settings by field name) replace the environment's in the models that have them:
    what ``skuforge up`` gives its services in place of the shell's."""
    loaded: list[BaseSettings] = []
    problems: list[str] = []
    for model in SETTINGS_MODELS:
        own = {name: value for name, value in overrides.items() if name in model.model_fields}
        try:
            loaded.append(load_settings(model, **own))
        except ConfigError as exc:
            problems.extend(line for line in str(exc).splitlines()[1:] if line not in problems)
    if problems:
        raise ConfigError("\n".join(["invalid configuration:", *problems]))
    # The room depends on the store (an S3 store's prefix counts), so no settings model can check it:
    # the trainstore's own check at its start, made here before anything starts.
    shared = next(settings for settings in loaded if isinstance(settings, Settings))
    trainstore = next(settings for settings in loaded if isinstance(settings, TrainstoreSettings))
    ManifestStore(open_settings_store(shared), trainstore.trainstore_prefix).check_prefix_room()
    # The generator's images against the pixels every later stage reads: the generator's own check at its
    # start, made here too.
    generation = next(settings for settings in loaded if isinstance(settings, GenerationSettings))
    check_images_fit(generation, shared)
    return loaded


def warn_of_unknown_variables() -> None:
    """Log one WARNING naming each ``SKUFORGE_*`` variable no service reads, with the setting it
    probably meant, in the service's log format: a misspelt setting is ignored, and its default runs.

    Not a refusal: a deployment may set variables of a newer version."""
    unknown = unknown_variables(SETTINGS_MODELS, os.environ)
    if not unknown:
        return
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
    except ConfigError:  # the service stops on it next, naming the variable: say this in the default format
        configure_logging()
    logging.getLogger("skuforge").warning(
        "; ".join(str(variable) for variable in unknown),
        extra={"variables": [variable.name for variable in unknown]},
    )


def _cmd_ingest(rest: list[str]) -> int:
    from services.ingest.ingest import main

    return main(rest)


def _cmd_synth(rest: list[str]) -> int:
    from skuforge_cli.synth import main

    return main(rest)


def _cmd_matting(rest: list[str]) -> int:
    from services.matting.cli import main

    return main(rest)


def _cmd_dataset(rest: list[str]) -> int:
    from services.trainstore.cli import main

    return main(rest)


def _cmd_evaluate(rest: list[str]) -> int:
    from services.trainstore.evaluate import main

    return main(rest)


def _cmd_adapters(rest: list[str]) -> int:
    from services.generator.cli import main

    return main(rest)


def _cmd_kafka(rest: list[str]) -> int:
    from devstack.broker import main

    return main(rest, prog="skuforge kafka")


def _cmd_topics(rest: list[str]) -> int:
    from kafka.errors import (
        KafkaConfigurationError,
        KafkaConnectionError,
        KafkaError,
        KafkaTimeoutError,
        NodeNotReadyError,
    )

    from schemas.topics import ALL_TOPICS, PASSTHROUGH_OUT
    from shared.bus import (
        ADMIN_CLIENT_ID,
        TopicsError,
        retriable_kafka_error,
        sync_topics,
        unchecked_topic_words,
        unreachable,
    )
    from shared.errors import TransientError

    parser = CommandParser(prog="skuforge topics", description="Manage skuforge's Kafka topics.")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser(
        "create",
        help="create every topic of the flow, and the passthrough stage's (the deployment smoke test), "
        "each with its .dlq (idempotent); an existing topic with fewer partitions or replicas than asked, "
        "or a min.insync.replicas below the one it sets (or not readable), is an error",
        description="Create every topic of the flow and its .dlq (idempotent).",
        epilog="exit status: 0 the topics are as the settings ask; 1 Kafka unreachable or not answering, "
        "or a retriable error (running again may help); 3 existing topics differ from the settings "
        "(fewer partitions without --grow, lower replication or min.insync.replicas), an existing topic's "
        "configs could not be read (no DescribeConfigs on it: its min.insync.replicas was not checked), or "
        "Kafka refused the request for good (replication above the brokers there are, not authorised, "
        "partitions the broker will not add): running again will not help",
    )
    create.add_argument(
        "--partitions", type=whole_number, default=None, help="partitions (default SKUFORGE_TOPIC_PARTITIONS)"
    )
    create.add_argument(
        "--grow",
        action="store_true",
        help="add partitions to existing topics that have fewer than asked (SKUs' keyed placement changes; "
        "replication is never raised by this command)",
    )
    sub.add_parser("list", help="print the topic names of this environment")
    args = parser.parse_args(rest)
    settings = load_settings()
    if args.action == "create":
        if args.partitions is not None and not 1 <= args.partitions <= KAFKA_MAX_INT32:
            parser.error(f"--partitions must be from 1 to {KAFKA_MAX_INT32} (Kafka's int32)")
        prog = "skuforge topics create"
        try:
            report = sync_topics(
                settings, (*ALL_TOPICS, PASSTHROUGH_OUT), partitions=args.partitions, grow=args.grow
            )
        except KafkaConfigurationError as exc:  # our own settings, before any broker was asked
            print(f"{prog}: the Kafka client settings are invalid: {exc}", file=sys.stderr)
            return TOPICS_DIFFER
        except KafkaError as exc:
            if isinstance(exc, (KafkaTimeoutError, KafkaConnectionError, NodeNotReadyError)):
                why = unreachable(settings, exc, client_id=ADMIN_CLIENT_ID)
                print(f"{prog}: cannot create the topics: {why}", file=sys.stderr)
                return 1
            if retriable_kafka_error(exc):  # the broker answered, with something that passes
                print(
                    f"{prog}: Kafka answered {type(exc).__name__}: {exc}; running again may help",
                    file=sys.stderr,
                )
                return 1
            # Refused for good (replication above the brokers there are, not authorised...).
            print(f"{prog}: Kafka refused to create the topics: {type(exc).__name__}: {exc}", file=sys.stderr)
            return TOPICS_DIFFER
        except TransientError as exc:  # metadata that never came
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        except TopicsError as exc:  # a grow refused
            print(f"{prog}: {exc}", file=sys.stderr)
            return TOPICS_DIFFER
        print(json.dumps({"created": report.created, "grown": report.grown}))
        if report.grown:
            # The default partitioner hashes the key over the partition count: most SKUs now land on
            # another partition, so a SKU's older events (old partition) and newer ones may be
            # handled by different members, out of order, until the old partitions are drained.
            grown = ", ".join(f"{name} {before} -> {after}" for name, (before, after) in report.grown.items())
            print(
                f"{prog}: warning: added partitions ({grown}); the keyed placement of SKUs changed, so a "
                "SKU's events produced before and after may be handled out of order until the older "
                "ones are consumed",
                file=sys.stderr,
            )
        if report.short:
            print(f"{prog}: {_topics_short_message(report.short, grow=args.grow)}", file=sys.stderr)
        # Before, only a warning and exit 0 ("the topics are as the settings ask"), that check not made.
        for name, error in report.unchecked.items():
            print(f"{prog}: {unchecked_topic_words(settings, name, error)}", file=sys.stderr)
        return TOPICS_DIFFER if report.short or report.unchecked else 0
    for topic in (*ALL_TOPICS, PASSTHROUGH_OUT):
        print(f"{settings.topic_name(topic)}\t{topic.payload.__name__}\t{settings.dlq_name(topic)}")
    return 0


# `skuforge topics create`'s exit status when topics exist but differ from the settings, or Kafka
# refused for good: unlike Kafka being away (1), running again does not help, so a script or the
# topics Job (its podFailurePolicy) can tell the two apart.
TOPICS_DIFFER = 3


def _topics_short_message(short: list[TopicShortfall], *, grow: bool) -> str:
    """One line: which topics are below the settings, and what can be done about each gap."""
    what = "; ".join(shortfall.describe() for shortfall in short)
    hints = []
    if any(shortfall.few_partitions for shortfall in short) and not grow:
        hints.append(
            "rerun with --grow to add partitions (the keyed placement of SKUs changes), or lower "
            "SKUFORGE_TOPIC_PARTITIONS / --partitions"
        )
    if any(shortfall.low_replication for shortfall in short):
        hints.append(
            "replication cannot be raised by this command: reassign the partitions with Kafka's "
            "kafka-reassign-partitions.sh, or lower SKUFORGE_TOPIC_REPLICATION"
        )
    low_configs = sorted({f"{config}={wanted}" for s in short for config, _, wanted in s.low_configs})
    if low_configs:
        hints.append(
            f"set {', '.join(low_configs)} on those topics with Kafka's kafka-configs.sh --alter "
            "(this command changes no config of an existing topic)"
        )
    return f"{len(short)} existing topics are below the settings: {what}; {'; '.join(hints)}"


def _cmd_dlq(rest: list[str]) -> int:
    from skuforge_cli.dlq import main

    return main(rest)


def _cmd_config(rest: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="skuforge config",
        description="Validate the configuration of every service and print it, or print the README table. "
        "A SKUFORGE_* variable that is no setting (misspelt: ignored) is named on stderr with the closest "
        "setting; a warning, the exit status is the values'.",
    )
    parser.add_argument("--markdown", action="store_true", help="print the documented settings table")
    args = parser.parse_args(rest)
    if args.markdown:
        print(settings_table_markdown(SETTINGS_MODELS))
        return 0
    # A warning, not a refusal: the exit status is the values' (a deployment may set a newer version's).
    for variable in unknown_variables(SETTINGS_MODELS, os.environ):
        print(f"skuforge config: warning: {variable}", file=sys.stderr)
    effective: dict[str, object] = {}
    for settings in load_all_settings():
        effective.update(settings.model_dump(mode="json"))
    print(json.dumps(effective, indent=2))
    return 0


def _cmd_run(rest: list[str]) -> int:
    from shared.runtime import stage_command

    parser = argparse.ArgumentParser(prog="skuforge run", description="Run one stage until SIGTERM.")
    parser.add_argument("stage", type=one_of(sorted(STAGES)), choices=sorted(STAGES), help="the stage to run")
    args = parser.parse_args(rest)
    warn_of_unknown_variables()
    module = importlib.import_module(STAGES[args.stage].module)
    return stage_command("skuforge run", module.main)


# The extra each server's own packages come from, and those packages' modules: `pip install
# 'skuforge[cpu]'` (README's Installing) has neither, and a server started without them ended in a
# traceback of its import rather than the line `skuforge evaluate` and `skuforge matting train` give.
SERVER_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "console": ("console", ("fastapi", "uvicorn", "jinja2", "multipart")),
    "generator": ("serve", ("pytriton", "tritonclient")),
}


def _cmd_serve(rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skuforge serve", description="Run one HTTP service until SIGTERM.")
    parser.add_argument(
        "server", type=one_of(sorted(SERVERS)), choices=sorted(SERVERS), help="the service to serve"
    )
    options = parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    # The server's own options, none needed: argparse marks every REMAINDER positional required, and
    # `skuforge serve` alone was told "required: server, args".
    options.required = False
    args = parser.parse_args(rest)
    warn_of_unknown_variables()
    extra, modules = SERVER_EXTRAS[args.server]
    try:
        module = importlib.import_module(SERVERS[args.server].module)
        return int(module.main(args.args))
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in modules:
            raise
        print(
            f"skuforge serve {args.server}: needs the {extra} extra ({exc.name} is not installed): "
            f"pip install 'skuforge[{extra}]'",
            file=sys.stderr,
        )
        return 2


def _cmd_flow(rest: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="skuforge flow",
        description="Print the flow: each service, the topics it consumes and produces, its metrics port.",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the table docs/architecture.md carries"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the flow as JSON, as the Helm chart carries it (deploy/helm/skuforge/files/flow.json)",
    )
    args = parser.parse_args(rest)
    if args.markdown:
        print(flow_table_markdown())
        return 0
    if args.json:
        print(json.dumps(flow_document(), indent=2))
        return 0
    settings = load_settings()
    for service in (*STAGES.values(), *SERVERS.values()):
        consumes = ",".join(settings.topic_name(topic) for topic in service.consumes) or "-"
        produces = ",".join(settings.topic_name(topic) for topic in service.produces) or "-"
        port = "-" if service.metrics_port is None else str(service.metrics_port)
        print(f"{service.command} {service.name}\t{consumes}\t{produces}\t{port}\t{service.module}")
    return 0


def _cmd_console(rest: list[str]) -> int:
    from services.console.cli import main

    return main(rest)


def _cmd_up(rest: list[str]) -> int:
    from devstack.up import main

    return main(rest)


def _cmd_prometheus(rest: list[str]) -> int:
    from devstack.prometheus import main

    return main(rest)


def _cmd_dashboard(rest: list[str]) -> int:
    from devstack.dashboard import main

    return main(rest)


def _cmd_demo(rest: list[str]) -> int:
    from devstack.demo.demo import main

    return main(rest)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "up": (_cmd_up, "start the whole local stack (Kafka, Triton, every stage, console); Ctrl-C stops it"),
    "demo": (_cmd_demo, "real sample SKUs (or --skus DIR, --synthetic) through the stack, then a report"),
    "ingest": (_cmd_ingest, "upload SKU folders (photos + metadata.json) and publish sku.ingested"),
    "synth": (_cmd_synth, "render synthetic SKU folders with exact masks (test and demo data)"),
    "matting": (
        _cmd_matting,
        "make (official, real-pairs, pairs, train, export), measure (eval) or shrink to int8 (tune-ranges, "
        "quantize) the U2-Net matting model",
    ),
    "dataset": (
        _cmd_dataset,
        "retraining store: per-SKU stats, export a training set, compact manifests, sweep orphans",
    ),
    "evaluate": (
        _cmd_evaluate,
        "does the store's synthetic data help a classifier? top-1 on held-out real photos",
    ),
    "run": (_cmd_run, "run one stage: " + ", ".join(sorted(STAGES))),
    "topics": (_cmd_topics, "create or list the Kafka topics"),
    "flow": (_cmd_flow, "the flow: what each service consumes and produces, its metrics port"),
    "dlq": (_cmd_dlq, "dead letters of a topic: list them by reason, replay them once each"),
    "kafka": (_cmd_kafka, "start, stop or ask the status of the local single-node Kafka broker"),
    "adapters": (_cmd_adapters, "list, register or remove LoRA adapters (diffusion backend)"),
    "config": (_cmd_config, "validate and print the configuration (SKUFORGE_* variables)"),
    "serve": (_cmd_serve, "serve an HTTP service: " + ", ".join(sorted(SERVERS))),
    "console": (
        _cmd_console,
        "correction console: export-labelstudio, import-labelstudio, refused, resend, discard, hash-password",
    ),
    "prometheus": (
        _cmd_prometheus,
        "the Prometheus scrape config for the documented ports; the metrics table",
    ),
    "dashboard": (_cmd_dashboard, "print or write the Grafana dashboard (deploy/grafana/); plot its panels"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``skuforge <command> ...``; each command has its own --help."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="skuforge",
        description="Turn a new product's few photos into a large, clean, labelled training set.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\nRun 'skuforge COMMAND --help' for a command's options. Ctrl-C interrupts a command with one "
        "line on stderr and exit status 130 (up, run and serve stop their services instead).",
    )
    parser.add_argument("command", type=one_of(sorted(COMMANDS)), choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv[:1])
    # `run` and `serve` log as their services do (their stage's main configures it again).
    configure_command_logging()
    handler = COMMANDS[args.command][0]
    return run_command(f"skuforge {args.command}", lambda: handler(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
