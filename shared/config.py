"""All configuration, in one place: environment variables with the ``SKUFORGE_`` prefix.

Every setting has a documented default; ``skuforge config`` prints the table that README.md
carries. An invalid value stops the service at start-up with a message naming the variable; a
``SKUFORGE_*`` variable that is no setting is named with the closest one (``unknown_variables``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, Union, get_args, get_origin, overload
from urllib.parse import urlsplit

import annotated_types
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUseDefault
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from schemas.common import check_one_line, text_check
from schemas.events import MAX_PHOTOS_PER_EVENT, ModelId
from schemas.topics import DLQ_SUFFIX, KAFKA_TOPIC_NAME_MAX_LEN, Topic, longest_topic_name

ENV_PREFIX = "SKUFORGE_"
# Kafka's protocol carries the group's timeouts as 32-bit ints: a larger value passed start-up, then the
# client could not encode its JoinGroup request and the stage never joined its group, saying nothing.
KAFKA_MAX_INT32 = 2**31 - 1
# CreateTopics carries a topic's replication factor as an int16: past it (and the partitions past an int32),
# `skuforge topics create` died in kafka-python's encoder with a struct.error traceback.
KAFKA_MAX_INT16 = 2**15 - 1
# Shortest retry back-off, and shortest interval between group lag reads (0 turns those off): a tiny
# positive value (1e-300) passed "> 0" and made a busy loop, of retries or of admin requests to the broker.
MIN_BACKOFF_S = 0.01
MIN_GROUP_LAG_INTERVAL_S = 1.0
# The captioner masks and measures a photo at most this long on its longer side (``shared.photos``).
# U2-Net sees 320 px whatever it is given, so nothing is lost; ten 40-megapixel photos of one SKU,
# decoded and matted at full size at once, took 2.7 GB (over the stage's 2 GiB pod limit: an OOM crash
# loop on redelivery). A stored mask is scaled back to its photo's own size. It bounds
# SKUFORGE_MIN_PHOTO_SIDE_PX: no photo's shorter side is longer there.
WORKING_SIDE_PX = 2048
# Longest wait a seconds setting may ask for: threads wait on each (a retry's back-off, a lag read, a send's
# acknowledgement), and past threading.TIMEOUT_MAX (about 292 years) the wait raised OverflowError and the
# thread died after a clean start. A day is far above any sane value and says the unit is seconds.
MAX_WAIT_S = 86400.0
# `skuforge up`'s working folder by default (``--workdir``; `make up`, `make demo`), and where in one the
# stack keeps its object store and the console's task table unless SKUFORGE_STORE_URI /
# SKUFORGE_CONSOLE_DB_PATH say otherwise. Here, below devstack/, so a command can name them to its user:
# no service imports devstack.
UP_WORKDIR = Path("var/up")
UP_STORE = Path("store")
UP_CONSOLE_DB = Path("console") / "tasks.sqlite3"
# The file in that folder that describes a running stack (its addresses, store, task table).
UP_STACK_STATE = Path("stack.json")
# Every settings model's: SKUFORGE_* variables, others ignored, read-only, no inf or NaN (a number that
# passes its bounds as inf crashes later, far from the variable that set it), and an empty variable is
# unset: Compose and Helm pass an unset one as empty, and an empty JSON setting (or number, or name)
# stopped every service reading it at start-up, for a variable the deployment never meant to set.
SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False, env_ignore_empty=True
)


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ConfigError(Exception):
    """A setting, an option, or a file one of them names cannot be used. The message says what to fix:
    each offending environment variable or option, or the file and what is wrong with it (a subclass,
    ``shared.matting.official.OfficialWeightsError``: the weights file missing or not the expected one).
    ``run_command`` ends a command on it with status 2, as on a bad option."""


class Settings(BaseSettings):
    """Settings shared by every skuforge service."""

    model_config = SETTINGS_CONFIG

    # Bus
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers, comma-separated"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="how clients talk to Kafka: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT, or SASL_SSL (SASL over "
        "TLS, as Amazon MSK and Confluent Cloud ask)",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism of the SASL_* protocols"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user of the SASL_* protocols")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password of the SASL_* protocols (keep it in a secret)"
    )
    kafka_ssl_cafile: str | None = Field(
        default=None,
        description="PEM file of the CA certificates the brokers' certificates are checked against "
        "(SSL, SASL_SSL); unset = the system's",
    )
    consumer_group_prefix: str = Field(
        default="skuforge", min_length=1, description="consumer group of a stage is '<prefix>.<stage>'"
    )
    topic_namespace: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="prefix of every topic name, to share one cluster between environments (e.g. 'staging.')",
    )
    topic_partitions: int = Field(
        default=6, ge=1, le=KAFKA_MAX_INT32, description="partitions of topics created by skuforge"
    )
    topic_replication: int = Field(
        default=1, ge=1, le=KAFKA_MAX_INT16, description="replication factor of created topics"
    )
    max_poll_records: int = Field(
        default=16,
        ge=1,
        description="records per poll; small, so slow model steps never exceed the poll interval",
    )
    max_poll_interval_ms: int = Field(
        default=600_000,
        ge=10_000,
        le=KAFKA_MAX_INT32,
        description="time a poll batch may take before the group rebalances",
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=6_000,
        le=KAFKA_MAX_INT32,
        description=(
            "consumer group session timeout: how long the partitions of a member that died (or of a static "
            "member that stopped) wait before the group hands them to the others; within the broker's "
            "group.min/max.session.timeout.ms (6 s to 30 min by default), or the stage stops at its join"
        ),
    )
    group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        description=(
            "static group membership: this member's stable id within its stage's group (the replica "
            "index, the pod name); a restart within the session timeout gets its partitions back "
            "without a rebalance; unset = a dynamic member"
        ),
    )
    flush_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=MAX_WAIT_S,
        description="time to wait for outputs to be acknowledged (and for a topic's metadata on send)",
    )
    # Retries. A back-off of 1e-300 s passed as positive and retried a failing dependency in a busy loop.
    retry_backoff_initial_s: float = Field(
        default=0.5,
        ge=MIN_BACKOFF_S,
        le=MAX_WAIT_S,
        description="first back-off after a transient fault (at least 0.01)",
    )
    retry_backoff_max_s: float = Field(
        default=30.0,
        ge=MIN_BACKOFF_S,
        le=MAX_WAIT_S,
        description="longest back-off between retries (at least 0.01)",
    )
    handler_max_attempts: int = Field(
        default=5,
        ge=1,
        description="attempts on an unexpected handler error before the message goes to the DLQ",
    )
    # Object store
    store_uri: str = Field(
        default="file://./var/store", description="object store root: file://DIR or s3://BUCKET/PREFIX"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="endpoint of an S3-compatible store (MinIO, moto...); unset for AWS"
    )
    s3_region: str = Field(default="us-east-1", description="S3 region")
    model_cache_unused_days: float = Field(
        default=30.0,
        ge=0,
        description="model copies in the local model cache (<system temp>/skuforge-models or a *_CACHE_DIR) "
        "not used for this many days are deleted when a stage fetches a model; copies a running process uses "
        "are kept (0 = keep all, else at least 1); docs/ops.md",
    )
    # Input limits
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="images with more pixels are refused, except baseline JPEGs: those are decoded at 1/2, "
        "1/4 or 1/8 of their size, the largest that fits (refused if even 1/8 does not)",
    )
    max_image_bytes: int = Field(default=50 * 2**20, ge=1, description="images larger than this are refused")
    # Matting works at 320 px: a 64 px side is already blown up 5x there; a 2x2 or 8x8 "photo" went
    # through as flat quads of colour, captioned, composited and accepted.
    # Above WORKING_SIDE_PX every photo was refused: as too small, or, once its longer side was brought
    # to that, with the advice to crop it.
    min_photo_side_px: int = Field(
        default=64,
        ge=1,
        le=WORKING_SIDE_PX,
        description="reference photos whose shorter side is shorter, as taken or once the longer side is "
        "brought to 2048 px, are refused by ingest and unusable to the captioner: matting works at 320 px, "
        "and below 64 px a product is a few blocks of colour",
    )
    # At most what one sku.ingested event may carry: more would pass start-up and fail every ingest.
    max_photos_per_sku: int = Field(
        default=10, ge=1, le=MAX_PHOTOS_PER_EVENT, description="reference photos accepted per SKU"
    )
    # Observability
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,  # empty would bind every interface; write 0.0.0.0 for that
        description="address the /metrics, /healthz, /readyz server binds "
        "(the generator server's: SKUFORGE_GENERATION_SERVER_ADDRESS)",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of that server; unset = the service's own default port (skuforge flow)",
    )
    group_lag_interval_s: float = Field(
        default=10.0,
        ge=0,
        le=MAX_WAIT_S,
        description="seconds between reads of consumer-group lag from the broker (0 = off, else at least 1); "
        "docs/ops.md",
    )
    log_level: LogLevel = Field(default="INFO", description="log level")
    log_format: Literal["json", "text"] = Field(default="json", description="json lines, or text for humans")

    def topic_name(self, topic: Topic[Any]) -> str:
        """The Kafka name of ``topic`` in this environment (namespace + versioned name)."""
        return self.topic_namespace + topic.name

    def dlq_name(self, topic: Topic[Any]) -> str:
        """The Kafka name of ``topic``'s dead-letter topic in this environment."""
        return self.topic_name(topic) + DLQ_SUFFIX

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_ports(cls, value: str) -> str:
        # kafka-python fails on a bad entry only when it connects, with a traceback from its own code.
        for entry in value.split(","):
            if not is_host_port(entry.strip()):
                raise ValueError(f"{entry.strip()!r} is not host:port (a port from 1 to 65535)")
        return value

    @field_validator("min_photo_side_px", mode="wrap")
    @classmethod
    def _min_side_fits_the_working_size(cls, value: object, handler: ValidatorFunctionWrapHandler) -> int:
        # The bound stays on the Field (the README's table and the chart read it); its refusal said
        # only "less than or equal to 2048", not why 2048.
        try:
            side_px: int = handler(value)
        except ValidationError as exc:
            if any(error["type"] == "less_than_equal" for error in exc.errors()):
                raise PydanticCustomError(
                    "less_than_equal",
                    "must be at most {le}: the captioner brings a photo's longer side to {le} px, so no "
                    "photo's shorter side is longer there, and every photo would be refused",
                    {"le": WORKING_SIDE_PX},
                ) from None
            raise
        return side_px

    @field_validator("group_lag_interval_s")
    @classmethod
    def _lag_interval_is_off_or_sane(cls, value: float) -> float:
        if 0 < value < MIN_GROUP_LAG_INTERVAL_S:
            raise ValueError(f"must be 0 (off) or at least {MIN_GROUP_LAG_INTERVAL_S:g} s")
        return value

    @field_validator("model_cache_unused_days")
    @classmethod
    def _unused_days_is_off_or_sane(cls, value: float) -> float:
        # A download in progress looks unused for as long as it takes: minutes ago is not "unused".
        if 0 < value < 1:
            raise ValueError("must be 0 (keep every copy) or at least 1 day")
        return value

    @field_validator("topic_namespace")
    @classmethod
    def _namespace_leaves_room_for_the_names(cls, value: str) -> str:
        # Kafka refuses the longer names: `topics create` failed on the broker's refusal, far from the cause.
        longest = longest_topic_name()
        room = KAFKA_TOPIC_NAME_MAX_LEN - len(longest)
        if len(value) > room:
            raise ValueError(
                f"is {len(value)} characters long; at most {room} are allowed: Kafka refuses topic names "
                f"over {KAFKA_TOPIC_NAME_MAX_LEN} characters, and with it {longest!r} would be "
                f"{len(value) + len(longest)}"
            )
        return value

    @field_validator(
        "kafka_bootstrap",
        "kafka_ssl_cafile",
        "consumer_group_prefix",
        "topic_namespace",
        "group_instance_id",
        "store_uri",
        "s3_endpoint_url",
        "s3_region",
        "metrics_host",
        mode="before",
    )
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> Settings:
        # kafka-python would only fail at connect time, as "no brokers available", far from the cause.
        sasl = self.kafka_security_protocol.startswith("SASL_")
        given = self.kafka_sasl_username is not None or self.kafka_sasl_password is not None
        if sasl and (self.kafka_sasl_username is None or self.kafka_sasl_password is None):
            raise ValueError(
                f"SKUFORGE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "SKUFORGE_KAFKA_SASL_USERNAME and SKUFORGE_KAFKA_SASL_PASSWORD"
            )
        if given and not sasl:
            raise ValueError(
                "SKUFORGE_KAFKA_SASL_USERNAME/PASSWORD are set but SKUFORGE_KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol}: set it to SASL_SSL (or SASL_PLAINTEXT)"
            )
        if self.kafka_ssl_cafile is not None:
            if not self.kafka_security_protocol.endswith("SSL"):
                raise ValueError(
                    "SKUFORGE_KAFKA_SSL_CAFILE is set but SKUFORGE_KAFKA_SECURITY_PROTOCOL is "
                    f"{self.kafka_security_protocol}: set it to SSL or SASL_SSL"
                )
            if not Path(self.kafka_ssl_cafile).is_file():
                raise ValueError(
                    f"SKUFORGE_KAFKA_SSL_CAFILE {self.kafka_ssl_cafile!r} is not a readable file"
                )
        return self

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        # boto3 refused "minio:9000" with a ValueError traceback when the store opened: for ingest, after
        # the whole batch was checked.
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{value!r} is not an http:// or https:// URL (e.g. http://minio:9000)")
        return value

    @field_validator("s3_region")
    @classmethod
    def _region_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", value):
            raise ValueError(f"{value!r} is not a region name (letters, digits and '-', e.g. eu-west-1)")
        return value

    @field_validator("store_uri")
    @classmethod
    def _store_uri_opens(cls, value: str) -> str:
        from shared.store import check_store_uri  # shared.store imports this module's errors

        check_store_uri(value)
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.retry_backoff_max_s < self.retry_backoff_initial_s:
            raise ValueError("retry_backoff_max_s must be at least retry_backoff_initial_s")
        return self

    @model_validator(mode="after")
    def _some_photo_fits(self) -> Settings:
        # Otherwise every photo is refused, one too small, the next too many pixels, found only at ingest.
        if self.min_photo_side_px**2 > self.max_image_pixels:
            raise ValueError(
                f"SKUFORGE_MIN_PHOTO_SIDE_PX ({self.min_photo_side_px}) squared exceeds "
                f"SKUFORGE_MAX_IMAGE_PIXELS ({self.max_image_pixels}): no photo could pass both"
            )
        return self


SettingsModel = TypeVar("SettingsModel", bound=BaseSettings)
_SECRET_WORDS = ("secret", "password", "users", "token")


def name_or_unset(value: Any) -> Any:
    """The "before" validator of a text setting that names something (a URI, a path, a model, a host, an
    id): blank is unset (its default), as an empty variable is, and spaces around a name are refused.
    ``SKUFORGE_STORE_URI=' '`` was a store folder named ' ', and 's3://bucket/prefix ' a prefix ending in
    a space: typos found far from the variable, if at all."""
    if isinstance(value, str) and value != value.strip():  # not '': a default may be that
        if not value.strip():
            raise PydanticUseDefault
        raise ValueError("has spaces around it: remove them")
    return value


def json_setting(value: object, *, default: str) -> object:
    """The "before" validator of a JSON setting read with ``NoDecode``: the variable's text decoded, a key
    given twice in any of its objects refused (``json.loads``, as pydantic-settings decodes, keeps the last
    of two without a word: ``{"composite": 3, "composite": 0}`` was a mix of no composite), and text that
    is no JSON refused as ``describe_settings_error`` words it, ``default`` as what to write. A mapping (a
    ``load_settings`` override, the default) is left as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value, object_pairs_hook=_pairs_once)
    except _GivenTwice as exc:
        raise ValueError(str(exc)) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PydanticCustomError(
            "json_invalid",
            "not JSON ({error}); write it as JSON, e.g. {default} (the default)",
            {"error": str(exc), "default": default},
        ) from None


class _GivenTwice(ValueError):
    """A key given twice in one JSON object of a setting."""


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; ``_GivenTwice`` naming a key that is given more than once."""
    given = Counter(key for key, _ in pairs)
    for key, times in given.items():
        if times > 1:
            raise _GivenTwice(f"{key!r} given {times} times in one JSON object; keep one")
    return dict(pairs)


def model_uri_opens(value: str | None) -> str | None:
    """The "after" validator of a model setting (a path, a registered name, or a URI the model cache
    fetches): a URI no store opens (a bucket name S3 refuses, a scheme none serves) is refused as the
    settings load, as the other URI settings are, not once the stage fetches its model. Only read: an S3
    folder need not leave the flow's keys room."""
    from shared.store import check_store_uri  # shared.store imports this module's errors

    if value is not None:
        check_store_uri(value, writes=False, what="model")
    return value


# The contract's rule for a model id (an event's captioner, model_id, matting_model_id, base_model).
_MODEL_ID = text_check(ModelId)


def model_id_setting(value: str | None) -> str | None:
    """The "after" validator of a setting an event's model id is taken from as it is (a base model's name):
    refused as the contract refuses that field (a control character, a line separator or a bidi control,
    named and not echoed; over ``MAX_MODEL_ID_CHARS``). Passed at start-up, it refused every event the
    stage built from it, one by one."""
    return value if value is None else _MODEL_ID(value)


def one_line_setting(value: str | None) -> str | None:
    """The "after" validator of a path setting whose folder's name becomes an event's model id (the LoRA
    trainer's model, whose name its adapters are registered under): one line, as ``model_id_setting``
    has it, without the length (a path may be longer than the name taken from it)."""
    return value if value is None else check_one_line(value)


def is_host_port(text: str) -> bool:
    """Whether ``text`` is host:port with a port from 1 to 65535 (ASCII digits)."""
    host, _, port = text.rpartition(":")
    return bool(host) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


@overload
def load_settings(**overrides: object) -> Settings: ...
@overload
def load_settings(model: type[SettingsModel], /, **overrides: object) -> SettingsModel: ...
def load_settings(model: type[BaseSettings] = Settings, /, **overrides: Any) -> BaseSettings:
    """Read one settings model (default: the shared ``Settings``) from the environment and ``overrides``.

    The one loader of every ``SKUFORGE_*`` model (``load_settings(GateSettings, gate_iou_min=0.8)``);
    an invalid value is a ``ConfigError`` naming the variable. An override replaces the environment's
    value whole, a JSON one too: those are ``NoDecode`` (read as text by their validator), since
    pydantic-settings deep-merges a dict it decoded with one given here (the override could not drop a key).
    """
    try:
        return model(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        # A JSON setting is decoded before validation, and its error is no ValidationError: every
        # service reading it died with a traceback naming the field, not the variable, nor the fault.
        raise ConfigError(describe_settings_error(model, exc)) from None


def describe_settings_error(model: type[BaseSettings], exc: SettingsError) -> str:
    """``exc``, pydantic-settings' refusal of a value it could not decode (JSON), as ``ConfigError``'s
    lines: the variable, why, and what to write (the value itself is not echoed: it may be a secret)."""
    found = re.search(r'field "([^"]+)"', str(exc))
    field = model.model_fields.get(found.group(1)) if found else None
    if found is None or field is None:
        return f"invalid configuration:\n  (settings): {exc}"
    default = f", e.g. {json.dumps(field.default)} (the default)" if field.default is not None else ""
    return (
        f"invalid configuration:\n  {ENV_PREFIX}{found.group(1).upper()}: not JSON ({exc.__cause__}); "
        f"write it as JSON{default}"
    )


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the environment variable and what is wrong."""
    lines = ["invalid configuration:"]
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        variable = ENV_PREFIX + location[0].upper() if location else "(settings)"
        if len(location) > 1:  # inside a JSON setting: say where
            variable += f" ({'.'.join(location[1:])})"
        given = error.get("input")
        shown = f" (got {_echo(given)})" if location and not isinstance(given, dict) else ""
        if location and any(word in location[0] for word in _SECRET_WORDS):
            shown = ""  # a password or a signing key is never echoed to a log or a terminal
        lines.append(f"  {variable}: {error['msg']}{shown}")
    return "\n".join(lines)


# How much of a refused value is echoed: a JSON setting of 100 KB that was no JSON was a 100 KB log line.
_ECHO_MAX_CHARS = 80


def _echo(given: object) -> str:
    """``given`` as a refusal shows it: its repr, cut to a short prefix when long, saying how long."""
    shown = repr(given)
    if len(shown) <= _ECHO_MAX_CHARS:
        return shown
    size = f"{len(given)} characters" if isinstance(given, str) else f"{len(shown)} characters as text"
    return f"{shown[:_ECHO_MAX_CHARS]}... ({size})"


def secret_variables(models: Sequence[type[BaseSettings]]) -> frozenset[str]:
    """The ``SKUFORGE_*`` variables of ``models`` that hold secrets: their fields are ``SecretStr``
    (what ``skuforge config`` never prints)."""
    return frozenset(
        ENV_PREFIX + name.upper()
        for model in models
        for name, field in model.model_fields.items()
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    )


# The SKUFORGE_* variables read outside the settings models: the tools' (README's second table), the
# mark the local stack's supervisor sets on the processes it starts, and the tests' own knobs (CI exports
# SKUFORGE_REQUIRE_HELM). Known, so a service never calls them misspelt.
OTHER_VARIABLES = frozenset(
    {
        "SKUFORGE_KAFKA_DATA_DIR",
        "SKUFORGE_KAFKA_PORT",
        "SKUFORGE_KAFKA_CONTROLLER_PORT",
        "SKUFORGE_KAFKA_HEAP_MB",
        "SKUFORGE_OFFICIAL_U2NETP",
        "SKUFORGE_PROMETHEUS_BIN",
        "SKUFORGE_PROMTOOL_BIN",
        "SKUFORGE_GROCERY_DATASET",
        "SKUFORGE_IMAGE",
        "SKUFORGE_CUDA_IMAGE",
        "SKUFORGE_SUPERVISOR_ID",
        "SKUFORGE_HELM",
        "SKUFORGE_REQUIRE_HELM",
        "SKUFORGE_DASHBOARD_PNG",
        "SKUFORGE_UPDATE_SCREENSHOTS",
        "SKUFORGE_TEST_BROKER_START_S",
    }
)


def settings_variables(models: Sequence[type[BaseSettings]]) -> frozenset[str]:
    """The ``SKUFORGE_*`` variable of every field of ``models``."""
    return frozenset(ENV_PREFIX + name.upper() for model in models for name in model.model_fields)


class UnknownVariable(NamedTuple):
    """A ``SKUFORGE_*`` variable in the environment that skuforge does not read, and the known name
    closest to it (None when none is close)."""

    name: str
    closest: str | None

    def __str__(self) -> str:
        if self.closest is None:
            return f"{self.name} is not a skuforge setting (ignored; `skuforge config --markdown` lists them)"
        return f"{self.name} is not a skuforge setting (ignored): did you mean {self.closest}?"


def unknown_variables(
    models: Sequence[type[BaseSettings]], environ: Mapping[str, str]
) -> list[UnknownVariable]:
    """The ``SKUFORGE_*`` variables of ``environ`` that neither ``models`` nor the tools read, each
    with its closest known name. Settings ignore variables they do not declare, so a misspelt one
    left its setting at the default without a word."""
    known = settings_variables(models) | OTHER_VARIABLES
    # The names are compared without the prefix they share, which would make any two look alike.
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    unknown = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads the variables whatever their case
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1)
        unknown.append(UnknownVariable(name, suffixes[close[0]] if close else None))
    return unknown


# How the settings table writes a number's declared bounds.
_BOUND_WORDS = {
    ("ge", "le"): "[{}, {}]",
    ("gt", "lt"): "({}, {})",
    ("ge", "lt"): "[{}, {})",
    ("gt", "le"): "({}, {}]",
    ("ge",): "at least {}",
    ("gt",): "above {}",
    ("le",): "at most {}",
    ("lt",): "below {}",
}


def _declared(metadata: Sequence[Any]) -> list[str]:
    """A field's (or an ``Annotated`` member's) constraints in words: bounds, a multiple, a length."""
    items = [part for item in metadata for part in (item.metadata if isinstance(item, FieldInfo) else [item])]
    bounds = {
        key: getattr(item, key)
        for item in items
        for key in ("ge", "gt", "le", "lt")
        if getattr(item, key, None) is not None
    }
    kinds = tuple(key for key in ("ge", "gt", "le", "lt") if key in bounds)  # the lower bound first
    said = []
    if words := _BOUND_WORDS.get(kinds):
        said.append(words.format(*(bounds[key] for key in kinds)))
    for item in items:
        if isinstance(item, annotated_types.MultipleOf):
            said.append(f"a multiple of {item.multiple_of}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length == 1:
            said.append("not empty")
        elif isinstance(item, annotated_types.MaxLen):
            said.append(f"at most {item.max_length} characters")
    return said


def allowed_values(field: FieldInfo) -> str:
    """What a setting declares it takes beyond its type: a number's bounds, the choices of a literal,
    a text's length; '' where nothing more is declared (a validator may still refuse a value, and the
    meaning says so)."""
    members = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else ()
    alternatives = []
    for member in members or (field.annotation,):
        if get_origin(member) is Literal:
            alternatives.append(", ".join(f"`{choice}`" for choice in get_args(member)))
        elif get_origin(member) is Annotated:
            alternatives.append(", ".join(_declared(member.__metadata__)))
        elif get_origin(member) is dict and get_origin(key := get_args(member)[0]) is Literal:
            alternatives.append("keys " + ", ".join(f"`{choice}`" for choice in get_args(key)))
    own = ", ".join(_declared(field.metadata))
    return " or ".join(part for part in (own, *alternatives) if part)


def settings_table_markdown(models: Sequence[type[BaseSettings]] = (Settings,)) -> str:
    """The configuration table for README.md, generated from the models so it cannot go stale."""
    rows = ["| variable | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    fields = [item for model in models for item in model.model_fields.items()]
    for name, field in fields:
        default = field.default
        shown = "(unset)" if default is None else f"`{default}`"
        variable = f"`{ENV_PREFIX}{name.upper()}`"
        rows.append(f"| {variable} | {shown} | {allowed_values(field)} | {field.description or ''} |")
    return "\n".join(rows)
