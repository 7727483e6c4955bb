"""Review 40 of the deploy surface: defaults written once, and the generator's grace under compose."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.flow import TRAINSTORE
from services.console.config import ConsoleSettings
from shared.config import ENV_PREFIX, Settings, load_settings
from shared.generation.settings import GenerationSettings
from tests.support.compose import compose_duration_s, interpolated
from tests.support.helm import CHART, REPO, pod_env, render, render_error, require_helm

TIMEOUT = "SKUFORGE_GENERATION_TRITON_TIMEOUT_S"
# A chart value (its path in values.yaml) and the setting it gives the pods: the same default, so an
# install with the chart's values runs as the README's settings table says.
CHART_DEFAULTS: dict[tuple[str, ...], tuple[type[Any], str]] = {
    ("consumerGroupPrefix",): (Settings, "consumer_group_prefix"),
    ("topicNamespace",): (Settings, "topic_namespace"),
    ("topicPartitions",): (Settings, "topic_partitions"),
    ("sessionTimeoutMs",): (Settings, "session_timeout_ms"),
    ("triton", "ports", "http"): (GenerationSettings, "generation_server_http_port"),
    ("triton", "ports", "grpc"): (GenerationSettings, "generation_server_grpc_port"),
    ("triton", "ports", "metrics"): (GenerationSettings, "generation_server_metrics_port"),
    ("console", "port"): (ConsoleSettings, "console_port"),
    ("settings", TIMEOUT): (GenerationSettings, "generation_triton_timeout_s"),
}


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def chart_values(chart: Path = CHART) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text())
    return values


@pytest.mark.parametrize("path", list(CHART_DEFAULTS), ids=".".join)
def test_the_charts_defaults_are_the_settings_defaults(path: tuple[str, ...]) -> None:
    """The chart's helpers kept their own copies of the Triton timeout (300 s) and ports beside
    values.yaml and the settings: a default changed in one place left the render checking, and naming,
    another. values.yaml holds the chart's, and here they meet the settings'."""
    value: Any = chart_values()
    for key in path:
        assert key in value, f"values.yaml has no {'.'.join(path)}"
        value = value[key]
    model, field = CHART_DEFAULTS[path]
    assert value == model.model_fields[field].default, (path, value)


def test_the_render_checks_and_names_the_defaults_values_yaml_gives(helm: str, tmp_path: Path) -> None:
    """A chart whose values.yaml gives other defaults is checked by those, and its messages name
    no stale copy of the old ones (the helpers said "8000 by default", "8087 by default", and told a
    chart without Triton to call "host:8001")."""
    chart = tmp_path / "skuforge"
    shutil.copytree(CHART, chart)
    values = chart_values(chart)
    old = [str(port) for port in (*values["triton"]["ports"].values(), values["console"]["port"])]
    values["triton"]["ports"] = {"http": 9000, "grpc": 9001, "metrics": 9002}
    values["console"]["port"] = 8080
    values["settings"][TIMEOUT] = 600
    values["stages"]["generator"]["terminationGracePeriodSeconds"] = 630
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    render(helm, chart=chart)
    message = render_error(helm, "stages.generator.terminationGracePeriodSeconds=629", chart=chart)
    assert f"settings.{TIMEOUT}=600 does not fit" in message and "at least 630" in message, message
    for value in ("triton.ports.http=0", "triton.ports.metrics=70000", "console.port=0"):
        message = render_error(helm, value, chart=chart)
        assert "from 1 to 65535" in message and not any(port in message for port in old), message
    message = render_error(helm, "triton.enabled=false", chart=chart, model=False)
    assert "host:9001 over gRPC" in message and "host:9000 with" in message, message
    assert not any(port in message for port in old), message


def test_a_timeout_taken_out_of_the_values_leaves_the_stages_own(helm: str) -> None:
    """Without the value (null), the generator stage runs with its own default, which the render cannot
    check against the grace: it renders, and no pod gets the variable."""
    docs = render(helm, f"settings.{TIMEOUT}=null")
    (config,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert TIMEOUT not in config["data"]


@pytest.mark.parametrize("timeout", [None, "600", "450.5"])
def test_compose_gives_the_generator_the_time_its_triton_timeout_takes(timeout: str | None) -> None:
    """Compose's generator had a fixed stop_grace_period of 330 s for the 300 s default: an override
    raising SKUFORGE_GENERATION_TRITON_TIMEOUT_S left it, and `docker compose stop` killed a generator
    mid-request, its batch never committed. Both now come from the shell's (or --env-file's) one
    variable: the generator's timeout, and its grace of that and 30 s."""
    generator = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["generator"]
    shell = {TIMEOUT: timeout} if timeout else {}
    default_s = GenerationSettings.model_fields["generation_triton_timeout_s"].default
    given = interpolated(str(generator["environment"][TIMEOUT]), shell)
    assert float(given) == (float(timeout) if timeout else default_s)
    grace_s = compose_duration_s(interpolated(generator["stop_grace_period"], shell))
    assert grace_s >= float(given) + 30, (given, grace_s)


def test_a_stage_of_several_topics_may_run_a_member_per_partition_it_consumes(helm: str) -> None:
    """With autoscaling off, replicas above topicPartitions were refused for every stage, but the
    trainstore consumes four topics: its group's cooperative-sticky assignor spreads their 24 partitions
    over up to 24 members, none idle. The limit is the partitions the stage consumes."""
    partitions = 6 * len(TRAINSTORE.consumes)
    off = "stages.trainstore.autoscaling.enabled=false"
    docs = render(helm, off, f"stages.trainstore.replicas={partitions}")
    (trainstore,) = [
        doc
        for doc in docs
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "rel-skuforge-trainstore"
    ]
    assert trainstore["spec"]["replicas"] == partitions
    message = render_error(helm, off, f"stages.trainstore.replicas={partitions + 1}")
    assert (
        f"stages.trainstore.replicas ({partitions + 1}) is more than the {partitions} partitions" in message
    )


@pytest.mark.parametrize(
    ("values", "key"),
    [
        (["stageDefaults.autoscaling.enabled=false", "stageDefaults.replicas=7"], "stageDefaults.replicas"),
        (["stageDefaults.autoscaling.maxReplicas=7"], "stageDefaults.autoscaling.maxReplicas"),
        (
            ["stageDefaults.autoscaling.minReplicas=3", "stageDefaults.autoscaling.maxReplicas=2"],
            "stageDefaults.autoscaling.minReplicas",
        ),
    ],
    ids=["replicas", "maxReplicas", "minReplicas"],
)
def test_a_stage_default_refused_is_named_where_the_values_set_it(
    helm: str, values: list[str], key: str
) -> None:
    """A stageDefaults value every stage got was refused as "stages.captioner.<key>", a key the values
    never set: the message sent users to add one more override instead of fixing the default."""
    message = render_error(helm, *values)
    assert f"{key} (" in message and "stages.captioner." not in message, message


def test_photo_scene_parameters_are_refused_only_where_the_generator_stage_uses_composite(
    helm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 39 refused triton.env.SKUFORGE_SCENES_URI with photo-scene parameters as "the generator
    stage refuses at start", but the stage checks them only for the composite backend: on the chart's
    own diffusion-only Triton the stage starts with them, and the render refused values that run."""
    scenes = "triton.env.SKUFORGE_SCENES_URI=s3://acme-skuforge/scenes"
    photo = r"settings.SKUFORGE_GENERATION_PARAMETERS=\{\"scene\": \"photo\"\}"
    docs = render(helm, scenes, photo)
    for name in [name for name in os.environ if name.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in pod_env(docs, "rel-skuforge-generator").items():
        monkeypatch.setenv(name, value)
    assert load_settings(GenerationSettings).shares() == {"diffusion": 1.0}  # a ConfigError: refused
    # Where the stage asks for composite variants (the only backend, a mix's share), it is refused.
    composite = ["triton.backends={composite}"]
    mix = [
        "triton.backends={composite,diffusion}",
        r"settings.SKUFORGE_GENERATION_BACKEND_MIX=\{\"composite\": 1\, \"diffusion\": 1\}",
    ]
    for values in (composite, mix):
        assert "triton.env.SKUFORGE_SCENES_URI reaches the Triton pod alone" in render_error(
            helm, scenes, photo, *values
        )


def test_a_null_value_leaves_its_key_out_of_every_pod(helm: str, tmp_path: Path) -> None:
    """`KEY: null` (or --set KEY=null) is how Helm takes a value out, but for a key values.yaml lacks
    it stayed, as nil, and every reader printed it: the ConfigMap, the Secrets and the env maps gave
    the pods the text "<nil>". A stage's null also takes stageDefaults.env's value out of that stage."""
    nulls = {
        "settings": {"SKUFORGE_UNSET_SETTING": None},
        "secret": {"values": {"SKUFORGE_UNSET_SECRET": None}},
        "stageDefaults": {"env": {"SKUFORGE_UNSET_DEFAULT": None, "SKUFORGE_LOG_LEVEL": "DEBUG"}},
        "stages": {"captioner": {"env": {"SKUFORGE_UNSET_STAGE": None, "SKUFORGE_LOG_LEVEL": None}}},
        "console": {"env": {"SKUFORGE_UNSET_CONSOLE": None}},
        "triton": {"env": {"SKUFORGE_UNSET_TRITON": None}},
    }
    values = tmp_path / "nulls.yaml"
    values.write_text(yaml.safe_dump(nulls))
    docs = render(helm, "stages.gate.env.SKUFORGE_UNSET_SET=null", files=[values])
    rendered = yaml.safe_dump_all(docs)
    assert "<nil>" not in rendered and "SKUFORGE_UNSET_" not in rendered
    assert "SKUFORGE_LOG_LEVEL" not in pod_env(docs, "rel-skuforge-captioner")
    assert pod_env(docs, "rel-skuforge-matting")["SKUFORGE_LOG_LEVEL"] == "DEBUG"


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (
            [f"stages.generator.env.{TIMEOUT}=null", "stages.generator.terminationGracePeriodSeconds=40"],
            f"settings.{TIMEOUT}=300 does not fit",
        ),
        (["secret.values.SKUFORGE_CONSOLE_USERS=null"], "console.enabled needs reviewers"),
        (["triton.env.SKUFORGE_DIFFUSION_MODEL=null"], "no model is named"),
        (
            ["triton.enabled=false", "settings.SKUFORGE_GENERATION_TRITON_URL=null"],
            "triton.enabled=false, but the generator stage calls Triton",
        ),
    ],
    ids=["grace", "reviewers", "model", "triton-url"],
)
def test_the_checks_take_a_null_value_as_unset(helm: str, values: list[str], refusal: str) -> None:
    """The checks asked whether a key was there, so a null one counted as set: a null timeout in the
    generator's env was read as 0 s and passed any grace, and a null reviewer list, model or Triton
    address let through the pods that exit (or retry for ever) at start without them."""
    assert refusal in render_error(helm, *values)


@pytest.mark.parametrize(
    "value",
    [
        "settings.SKUFORGE_KAFKA_SASL_PASSWORD=null",
        "stages.matting.env.SKUFORGE_METRICS_PORT=null",
        "settings.SKUFORGE_GENERATION_BACKEND=null",
        "settings.SKUFORGE_GENERATION_BACKEND_MIX=null",
    ],
)
def test_a_null_value_is_nothing_to_refuse(helm: str, value: str) -> None:
    """A secret or a variable the chart sets, given null, puts nothing where it must not be, and a null
    backend or mix asks for none; the render refused them as set to "<nil>"."""
    docs = render(helm, value)
    assert "<nil>" not in yaml.safe_dump_all(docs)
    assert pod_env(docs, "rel-skuforge-generator")["SKUFORGE_GENERATION_BACKEND"] == "diffusion"


@pytest.mark.parametrize("stage", ["matting", "trainstore"])
def test_a_max_replicas_refusal_gives_the_reason_for_a_stage_of_several_topics_too(
    helm: str, stage: str
) -> None:
    """maxReplicas above topicPartitions was refused because "the extra members would hold no
    partition", but the trainstore's 7 members would share its four topics' 24 partitions: the reason
    is that KEDA scales on each input topic's lag to at most that topic's partitions, so the stage
    never runs more members than topicPartitions, however many topics it reads."""
    message = render_error(helm, f"stages.{stage}.autoscaling.maxReplicas=7")
    assert f"stages.{stage}.autoscaling.maxReplicas (7) is more than topicPartitions (6)" in message
    assert "hold no partition" not in message and "never scales past 6" in message, message


@pytest.mark.parametrize(
    "source",
    ["settings", "secret.values", "stageDefaults.env", "stages.matting.env", "console.env", "triton.env"],
)
@pytest.mark.parametrize(
    "value", ["SKUFORGE_LOG_FORMAT.a=1", "SKUFORGE_LOG_FORMAT[0]=1"], ids=["map", "list"]
)
def test_a_map_or_list_where_a_value_belongs_is_refused_naming_its_key(
    helm: str, source: str, value: str
) -> None:
    """`--set settings.SKUFORGE_X.a=1` (or a list, or a nested map in a values file) reached the pods
    as the text "map[a:1]" (or "[1]"), which no setting takes: refused at render instead."""
    message = render_error(helm, f"{source}.{value}")
    assert f"{source}.SKUFORGE_LOG_FORMAT is a " in message, message
    assert "must be a string, number or boolean" in message, message


def test_the_grace_refusal_names_the_key_the_grace_came_from(helm: str) -> None:
    """Without the generator's own grace, stageDefaults' applies; the refusal named
    stages.generator.terminationGracePeriodSeconds, a key the values did not set."""
    message = render_error(
        helm,
        "stages.generator.terminationGracePeriodSeconds=null",
        "stageDefaults.terminationGracePeriodSeconds=100",
    )
    assert "does not fit stageDefaults.terminationGracePeriodSeconds (100)" in message, message


SEED = "SKUFORGE_GENERATION_SEED"


@pytest.mark.parametrize("source", ["settings", "secret.values", "stages.generator.env"])
def test_a_large_whole_number_given_with_set_reaches_the_pods_as_given(helm: str, source: str) -> None:
    """A seed has no upper bound, and --set reads 9007199254740993 as an int64; the helpers passed
    every variable through JSON, a float64, and the pods got 9007199254740992: another seed, unseen."""
    docs = render(helm, f"{source}.{SEED}=9007199254740993")
    assert pod_env(docs, "rel-skuforge-generator")[SEED] == "9007199254740993"


@pytest.mark.parametrize("number", ["9007199254740993", "1e21", "-12345678901234567890"])
def test_a_number_a_values_file_cannot_keep_is_refused(helm: str, tmp_path: Path, number: str) -> None:
    """Helm reads a values file's numbers as float64: 9007199254740993 became 9007199254740992 and 1e21
    the text "1e+21" (which no integer setting takes). Past 2^53 a number may have lost digits before
    the chart sees it, so it is refused, naming the key and the way round (quote it)."""
    values = tmp_path / "seed.yaml"
    values.write_text(f"stages:\n  generator:\n    env:\n      {SEED}: {number}\n")
    message = render_error(helm, files=[values])
    assert f"stages.generator.env.{SEED}" in message and "quote it" in message, message
    # Quoted, it is a string, and reaches the pod as written.
    values.write_text(f"stages:\n  generator:\n    env:\n      {SEED}: '{number}'\n")
    assert pod_env(render(helm, files=[values]), "rel-skuforge-generator")[SEED] == number


def test_the_docs_give_the_generators_stop_its_true_bound(helm: str) -> None:
    """The grace (the timeout and 30 s) was said to cover the generator's stop, but the stop finishes
    the whole batch in hand: every variant of up to SKUFORGE_MAX_POLL_RECORDS SKUs, sent in waves of
    SKUFORGE_GENERATION_TRITON_CONCURRENCY, each wave up to the timeout. Now a stopping stage sends no
    new request (test_generator_stop.py): the docs give the batch's waves with the default settings as
    what the stop no longer waits for, the stop's bound (one timeout), and the render's refusal says the
    grace covers the requests in flight."""
    fields = GenerationSettings.model_fields
    variants = (
        Settings.model_fields["max_poll_records"].default * fields["generation_variants_per_sku"].default
    )
    waves = -(-variants // fields["generation_triton_concurrency"].default)
    bound_s = waves * fields["generation_triton_timeout_s"].default
    deploy = " ".join((REPO / "docs" / "deploy.md").read_text().split())
    assert f"up to {waves} waves" in deploy and f"{bound_s:g} s" in deploy
    assert "sends Triton no new request" in deploy and "a stop takes up to one timeout" in deploy
    message = render_error(helm, "stages.generator.terminationGracePeriodSeconds=100")
    assert "requests in flight" in message and "its batch is committed" not in message, message


# The chart's own whole numbers, each with the least it may be and, where it has one, the most: a
# Kubernetes or KEDA int32 field's (replicas, the autoscaling counts) at most INT32_MAX, and a setting
# the pods read as the setting's range (test_a_chart_number_the_pods_read_has_the_settings_range).
INT32_MAX = 2**31 - 1
# A stage's GPUs, a key with a dot of its own (escaped for --set); null or none is no GPU.
GPUS = r"resources.limits.nvidia\.com/gpu"
WHOLE_NUMBERS: dict[str, tuple[int, int | None]] = {
    "topicPartitions": (1, INT32_MAX),
    "sessionTimeoutMs": (6000, INT32_MAX),
    "stageDefaults.replicas": (0, INT32_MAX),
    "stages.matting.replicas": (0, INT32_MAX),
    "stageDefaults.terminationGracePeriodSeconds": (0, None),
    "stageDefaults.autoscaling.minReplicas": (0, INT32_MAX),
    "stages.matting.autoscaling.minReplicas": (0, INT32_MAX),
    "stageDefaults.autoscaling.maxReplicas": (1, INT32_MAX),
    "stageDefaults.autoscaling.pollingInterval": (1, INT32_MAX),
    "stageDefaults.autoscaling.cooldownPeriod": (0, INT32_MAX),
    "stageDefaults.autoscaling.scaleDownStabilizationSeconds": (0, 3600),
    "stageDefaults.autoscaling.lagThreshold": (1, None),
    "stages.matting.autoscaling.lagThreshold": (1, None),
    "stageDefaults.autoscaling.activationLagThreshold": (0, None),
    f"stageDefaults.{GPUS}": (0, INT32_MAX),
    f"stages.matting.{GPUS}": (0, INT32_MAX),
    f"triton.{GPUS}": (0, INT32_MAX),
    "triton.replicas": (0, INT32_MAX),
    "triton.terminationGracePeriodSeconds": (0, None),
    "triton.startupSeconds": (0, INT32_MAX),
    "triton.ports.http": (1, 65535),
    "triton.ports.grpc": (1, 65535),
    "triton.ports.metrics": (1, 65535),
    "console.port": (1, 65535),
    "console.terminationGracePeriodSeconds": (0, None),
    "topicsJob.activeDeadlineSeconds": (1, None),
}
NUMBERS = list(WHOLE_NUMBERS)


def named(key: str) -> str:
    """A --set key as the chart's messages name it (an escaped dot is a dot of the name)."""
    return key.replace("\\.", ".")


def values_file(folder: Path, key: str, number: str) -> Path:
    """A values file giving key (key.sub.leaf, as nested YAML maps) the number as written."""
    values = folder / "number.yaml"
    parts = [named(part) for part in re.split(r"(?<!\\)\.", key)]
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parts)]
    values.write_text("\n".join(lines) + f" {number}\n")
    return values


@pytest.mark.parametrize("key", NUMBERS)
@pytest.mark.parametrize("given", [".a=1", "[0]=1"], ids=["map", "list"])
def test_a_map_or_list_where_a_chart_number_belongs_is_refused_naming_its_key(
    helm: str, key: str, given: str
) -> None:
    """sessionTimeoutMs or a lag threshold given a map reached the ConfigMap or the ScaledObject as the
    text "map[a:1]", which neither the pods nor KEDA take; topicPartitions' was refused as less than
    maxReplicas ("never scales past map[a:1]"), or rendered with autoscaling off."""
    for off in ([], ["stageDefaults.autoscaling.enabled=false"]):
        message = render_error(helm, *off, f"{key}{given}")
        assert f"{named(key)} is a " in message and "give one number" in message, message


@pytest.mark.parametrize("key", NUMBERS)
def test_a_chart_number_a_values_file_cannot_keep_is_refused(helm: str, tmp_path: Path, key: str) -> None:
    """A values file's 9007199254740993 reached the pods or KEDA as ...992, and 1e21 as "1e+21"."""
    for number in ("9007199254740993", "1e21"):
        message = render_error(helm, files=[values_file(tmp_path, key, number)])
        assert f"{named(key)}=" in message and "quote it" in message, message


def test_a_large_lag_threshold_given_with_set_reaches_keda_as_given(helm: str) -> None:
    """--set reads 9007199254740993 as an int64, and a stage's settings passed through JSON (a float64):
    KEDA got 9007199254740992."""
    docs = render(helm, "stages.matting.autoscaling.lagThreshold=9007199254740993")
    (scaled,) = [
        doc
        for doc in docs
        if doc["kind"] == "ScaledObject" and doc["metadata"]["name"] == "rel-skuforge-matting"
    ]
    assert {trigger["metadata"]["lagThreshold"] for trigger in scaled["spec"]["triggers"]} == {
        "9007199254740993"
    }


@pytest.mark.parametrize("key", NUMBERS)
def test_a_chart_number_that_is_no_whole_number_in_its_range_is_refused_naming_it(
    helm: str, tmp_path: Path, key: str
) -> None:
    """minReplicas, pollingInterval, cooldownPeriod, scaleDownStabilizationSeconds and Triton's and the
    console's grace and startupSeconds went through `| int`: a map, "1.5", "soon" or true rendered as 0
    (`--set stages.matting.autoscaling.minReplicas[0]=1` gave minReplicaCount 0), and a negative number
    as given; a stage's replicas and grace and Triton's replicas were rendered as given ("map[a:1]",
    1.5, -1), and the lag thresholds reached KEDA as "-1" or "soon", which it refuses."""
    least, most = WHOLE_NUMBERS[key]
    wrong = [str(least - 1), "1.5", "soon", "true"] + ([str(most + 1)] if most is not None else [])
    # A stage's null gives it stageDefaults' number; a null GPU limit is none.
    wrong += ["null"] * (not key.startswith("stages.") and not key.endswith(GPUS))
    span = f"from {least} to {most}" if most is not None else f"of at least {least}"
    for given in wrong:
        for off in ([], ["stageDefaults.autoscaling.enabled=false"]):
            message = render_error(helm, *off, f"{key}={given}")
            assert f"{named(key)}={given} is no " in message and span in message, message
    message = render_error(helm, files=[values_file(tmp_path, key, "1.5")])
    assert f"{named(key)}=1.5 is no " in message and span in message, message


def test_the_whole_numbers_tested_and_documented_are_those_the_chart_checks() -> None:
    """skuforge.wholeNumbers is the chart's list: a number added there is tested above and named in
    docs/deploy.md, with its range."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    table = re.search(r'define "skuforge\.wholeNumbers" -\}\}\n(.*?)\{\{- end', helpers, re.S)
    assert table, "_helpers.tpl has no skuforge.wholeNumbers"
    specs = yaml.safe_load(table.group(1))
    checked = dict(specs["chart"])
    checked |= {f"stageDefaults.{field}": spec for field, spec in specs["stage"].items()}
    checked[f"stageDefaults.{named(GPUS)}"] = specs["gpus"]
    checked[f"triton.{named(GPUS)}"] = specs["gpus"]
    tested = {named(key): span for key, span in WHOLE_NUMBERS.items() if not key.startswith("stages.")}
    assert tested == {key: (spec["least"], spec.get("most")) for key, spec in checked.items()}
    deploy = " ".join((REPO / "docs" / "deploy.md").read_text().split())
    assert [key for key in checked if f"{key.split('.')[-1]}`" not in deploy] == []


# A chart number the pods read as a setting may be what that setting takes, no more and no less, but
# console.port: its setting's 0 (any free port) would leave the Service and probes no port to reach.
NARROWER = {("console", "port")}


@pytest.mark.parametrize(
    "path", [path for path in CHART_DEFAULTS if ".".join(path) in WHOLE_NUMBERS], ids=".".join
)
def test_a_chart_number_the_pods_read_has_the_settings_range(path: tuple[str, ...]) -> None:
    """sessionTimeoutMs took 1 to any number, and the pods only 6000 to 2^31-1: a release with 5000
    rendered and installed, and every stage stopped at start (CrashLoopBackOff); topicPartitions
    likewise past 2^31-1. The chart's range is the setting's (shared/config.py)."""
    model, field = CHART_DEFAULTS[path]
    bounds = {type(rule).__name__: rule for rule in model.model_fields[field].metadata}
    least, most = WHOLE_NUMBERS[".".join(path)]
    if path in NARROWER:
        assert least >= bounds["Ge"].ge and most is not None and most <= bounds["Le"].le
    else:
        assert (least, most) == (bounds["Ge"].ge, bounds["Le"].le)


# The chart's sizes (Kubernetes quantities) and durations (Prometheus'): values their readers take, and
# values they refuse; a size or duration left out (null) is none where its reader has a default.
SIZES = (["1.5Gi", "512M", "20Gi", "20"], ["soon", "20 Gi", "-1Gi", "1.5.1Gi", "true", "20GB"])
DURATIONS = (["1m30s", "15s", "0", "1h"], ["soon", "30", "1.5m", "-1s", "true", "30S"])
TEXTS: dict[str, tuple[list[str], list[str]]] = {
    "triton.shmSize": SIZES,
    "triton.modelCache.sizeLimit": SIZES,
    "console.persistence.size": SIZES,
    "monitoring.interval": DURATIONS,
}
OPTIONAL_TEXTS = {"triton.shmSize", "monitoring.interval"}


@pytest.mark.parametrize("key", list(TEXTS))
def test_a_size_or_duration_is_checked_at_render_naming_its_key(helm: str, key: str) -> None:
    """Triton's /dev/shm and model cache sizes, the console's volume size and the PodMonitors' interval
    were rendered as given: a map as "map[a:1]", "soon" or "20GB" as written, which the API server (or
    the operator) refused only at install, naming a field of a manifest, not the chart's key; a null
    volume size made a claim with no storage."""
    right, wrong = TEXTS[key]
    for given in right:
        render(helm, f"{key}={given}")
    for given in wrong + ["null"] * (key not in OPTIONAL_TEXTS):
        message = render_error(helm, f"{key}={given}")
        assert f"{key}={given} is no " in message and "give one" in message, message
    for given in (".a=1", "[0]=1"):
        message = render_error(helm, f"{key}{given}")
        assert f"{key} is a " in message and "give one" in message, message
    if key in OPTIONAL_TEXTS:
        render(helm, f"{key}=null")


def test_the_sizes_and_durations_tested_are_those_the_chart_checks() -> None:
    """skuforge.texts is the chart's list: a size or duration added there is tested above and named
    in docs/deploy.md."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    table = re.search(r'define "skuforge\.texts" -\}\}\n(.*?)\{\{- end', helpers, re.S)
    assert table, "_helpers.tpl has no skuforge.texts"
    specs = yaml.safe_load(table.group(1))["values"]
    assert set(specs) == set(TEXTS)
    assert {key for key, spec in specs.items() if spec.get("optional")} == OPTIONAL_TEXTS
    deploy = " ".join((REPO / "docs" / "deploy.md").read_text().split())
    assert [key for key in specs if f"`{key}`" not in deploy] == []
