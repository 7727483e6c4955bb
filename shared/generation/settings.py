"""Settings of generation: environment variables ``SKUFORGE_GENERATION_*`` (and ``SKUFORGE_SCENES_*``).

Three processes read them: the Triton server (``skuforge serve generator``: which backend it runs,
its ports, dynamic batching and queue limits), the generator stage (``skuforge run generator``:
where Triton is, how many variants per SKU, which backend serves what share of them) and the LoRA
trainer (the cut-out rule, so it trains on the photos the generator pastes); so they live here,
beside the backends, not in one service's folder. Like the stages' settings they sit beside the
shared ``Settings``, field names prefixed ``generation_`` so ``describe_validation_error`` names the
variables correctly. Settings of the diffusion backend itself (weights, adapters) belong to that
backend (``shared/generation/diffusion.py``).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

from shared.config import (
    ENV_PREFIX,
    MAX_WAIT_S,
    SETTINGS_CONFIG,
    ConfigError,
    Settings,
    is_host_port,
    json_setting,
    name_or_unset,
)
from shared.generation.adapters import ADAPTER_ID_PATTERN, NO_ADAPTER
from shared.generation.backend import (
    BACKEND_NAMES,
    COLOUR_GAIN_KEY,
    MAX_SIZE_PX,
    ONE_OBJECT_MIN_SOLIDITY,
    PLAIN_BACKGROUND_FROM,
)
from shared.store import check_store_uri

BackendName = Literal["composite", "diffusion"]
# The smallest image side either backend draws (their own MIN_SIZE_PX).
MIN_GENERATION_SIZE_PX = 64


class GenerationSettings(BaseSettings):
    """What the generation model serves and how the stage asks it for variants."""

    model_config = SETTINGS_CONFIG

    generation_backend: BackendName = Field(
        default="composite",
        description="backend of 'skuforge serve generator' and of every variant unless a mix is set: "
        "'composite' (CPU, no weights) or 'diffusion' (inpainting + LoRA)",
    )
    # NoDecode (both JSON settings): read by ``_decoded``, where a key given twice is refused; JSON keeps
    # the last, and '{"composite": 3, "diffusion": 1, "composite": 0}' ran every variant on diffusion.
    generation_backend_mix: Annotated[dict[BackendName, float], NoDecode] = Field(
        default={},
        description='JSON share of variants per backend, e.g. {"composite": 3, "diffusion": 1}; '
        "empty = all from SKUFORGE_GENERATION_BACKEND (each backend needs its Triton model served)",
    )
    generation_variants_per_sku: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="images generated per SKU, spread over its usable photos; the SKU gets them all while "
        "one photo can be drawn from (a photo refused or unreadable, the others draw its variants)",
    )
    generation_min_plain_background: float = Field(
        default=PLAIN_BACKGROUND_FROM,
        ge=0.0,
        le=1.0,
        description="photos whose background is at least this plain (the captioner's plain_background) "
        "are the cut-out sources; a SKU with none is cut from its usable photos, each mask's largest blob, "
        f"and only from those whose blob is one solid object when any is (convex hull solidity "
        f">= {ONE_OBJECT_MIN_SOLIDITY}; the others for a variant refused from all of those)",
    )
    generation_pile_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share of the photo-scene composites of loose produce (the captioner's shape 'produce') "
        "that heap copies of the product over the frame, as produce is seen in a store (0: measured to "
        "add nothing on val, docs/evaluation.md)",
    )
    generation_size_px: int = Field(
        default=512, ge=MIN_GENERATION_SIZE_PX, le=MAX_SIZE_PX, description="side of each generated image"
    )
    generation_seed: int = Field(
        default=0, ge=0, description="mixed into every variant's seed; change it to get a different set"
    )
    generation_parameters: Annotated[dict[str, JsonValue], NoDecode] = Field(
        default={},
        description='JSON parameters sent with every variant (backend knobs, e.g. {"occluders": 0})',
    )
    generation_adapter_id: str | None = Field(
        default=None,
        min_length=1,
        description="LoRA adapter for every diffusion variant; unset = the model picks by the SKU's series",
    )
    generation_max_reference_px: int = Field(
        default=1024,
        ge=64,
        le=8192,
        description="reference photos are shrunk to this longer side before sending",
    )
    # The stage as a Triton client
    generation_triton_url: str = Field(
        default="127.0.0.1:8001",
        min_length=1,
        description="Triton address the stage calls: host:port, no scheme (HTTP also host:port/base-path)",
    )
    generation_triton_protocol: Literal["grpc", "http"] = Field(
        default="grpc", description="protocol of SKUFORGE_GENERATION_TRITON_URL"
    )
    generation_triton_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=MAX_WAIT_S,
        description="per-request timeout; a timeout is transient (retried, not committed)",
    )
    generation_triton_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="requests the stage keeps in flight per model (one request per variant); over all "
        "replicas at most what Triton holds per model, about SKUFORGE_GENERATION_MAX_QUEUE_SIZE + "
        "SKUFORGE_GENERATION_MAX_BATCH_SIZE x SKUFORGE_GENERATION_INSTANCES: beyond it the rest is "
        "turned away as overloaded and retried",
    )
    generation_triton_metadata_max_age_s: float = Field(
        default=60.0,
        ge=0,
        le=MAX_WAIT_S,
        description="how long the stage trusts which optional inputs a model declares before asking it "
        "again (asked again at once when a request to it fails); a model upgraded in place is seen this late",
    )
    # The Triton server
    generation_server_address: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address Triton's HTTP, gRPC and metrics ports and the server's own /metrics bind",
    )
    generation_server_http_port: int = Field(default=8000, ge=1, le=65535, description="Triton HTTP port")
    generation_server_grpc_port: int = Field(default=8001, ge=1, le=65535, description="Triton gRPC port")
    generation_server_metrics_port: int = Field(
        default=8002,
        ge=1,
        le=65535,
        description="Triton's own Prometheus metrics port (nv_*); the server's own: SKUFORGE_METRICS_PORT",
    )
    generation_max_batch_size: int = Field(
        default=8, ge=1, le=256, description="largest batch Triton's dynamic batcher hands the model"
    )
    # Triton's model config holds the delay as a uint64 and the queue size as a uint32: beyond them the
    # server died in PyTriton's config writer, a protobuf traceback naming no setting.
    generation_batch_delay_us: int = Field(
        default=5_000,
        ge=0,
        le=int(MAX_WAIT_S * 1_000_000),
        description="how long Triton holds a request to form a bigger batch (microseconds)",
    )
    generation_max_queue_size: int = Field(
        default=64,
        ge=1,
        le=2**32 - 1,
        description="requests queued per model; beyond it Triton refuses (overload error)",
    )
    # Real scenes for the composite backend (docs/evaluation.md: what they were measured to do)
    scenes_uri: str | None = Field(
        default=None,
        min_length=1,
        description="folder or s3:// prefix of background photos for the composite backend; "
        "a photo's first folder is its tag, never used for a SKU of that series, category or product name; "
        "unset = procedural only",
    )
    scenes_photo_share: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of composite variants placed on scene photos when SKUFORGE_SCENES_URI is set",
    )
    scenes_max_side_px: int = Field(
        default=512, ge=64, le=4096, description="scene photos are shrunk to this longer side at load"
    )
    generation_instances: int = Field(
        default=1, ge=1, le=64, description="model instances Triton runs in parallel (CPU: ~1 per 2 cores)"
    )

    @field_validator(
        "generation_triton_url",
        "generation_server_address",
        "scenes_uri",
        "generation_adapter_id",
        mode="before",
    )
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @field_validator("generation_backend_mix", "generation_parameters", mode="before")
    @classmethod
    def _decoded(cls, value: object) -> object:
        return json_setting(value, default="{}")

    @field_validator("generation_backend_mix")
    @classmethod
    def _mix_is_a_share(cls, mix: dict[str, float]) -> dict[str, float]:
        if any(share < 0 for share in mix.values()):
            raise ValueError("shares must be >= 0")
        if mix and sum(mix.values()) <= 0:
            raise ValueError(f"at least one share must be > 0 (backends: {', '.join(BACKEND_NAMES)})")
        return mix

    @field_validator("generation_parameters")
    @classmethod
    def _known_parameters(
        cls, parameters: dict[str, JsonValue], info: ValidationInfo
    ) -> dict[str, JsonValue]:
        # A misspelt knob reached the composite backend in every request, which refused each: every
        # SKU dead-lettered. (Imported here: the backends' modules are heavy, and import the settings'.)
        from shared.generation.composite import COMPOSITE_PARAMETERS, CompositeError, check_parameters
        from shared.generation.diffusion import DIFFUSION_PARAMETERS, DiffusionParameters

        if COLOUR_GAIN_KEY in parameters:
            # Measured on each composite and reported for the gate (a replayed parameter set may carry
            # it); as a setting the diffusion backend echoed it into its events, a gain nobody applied.
            raise ValueError(
                f"{COLOUR_GAIN_KEY} is measured by the composite backend, not a knob: leave it out"
            )
        unknown = sorted(set(parameters) - COMPOSITE_PARAMETERS - DIFFUSION_PARAMETERS)
        if unknown:
            composite = ", ".join(sorted(COMPOSITE_PARAMETERS))
            diffusion = ", ".join(sorted(DIFFUSION_PARAMETERS))
            raise ValueError(
                f"no backend knows {', '.join(unknown)}; composite: {composite}; diffusion: {diffusion}"
            )
        # A known knob with a value its backend refuses ({"occluders": 9}) did the same, one SKU at a
        # time; each backend in use checks its own knobs (rotation_deg is both's, with other bounds).
        if _uses(info, "composite"):
            knobs = {k: v for k, v in parameters.items() if k in COMPOSITE_PARAMETERS}
            try:
                check_parameters(knobs, size_px=info.data.get("generation_size_px"))
            except CompositeError as exc:
                raise ValueError(f"the composite backend refuses it: {exc}") from None
            # The stage asks for piles on top of these ({"occluders": 1} with a pile share): a pile
            # refuses a placement of its own, and those SKUs' variants were refused one by one.
            if info.data.get("generation_pile_share", 0.0) > 0 and "arrangement" not in knobs:
                try:
                    check_parameters(
                        {**knobs, "arrangement": "pile"}, size_px=info.data.get("generation_size_px")
                    )
                except CompositeError as exc:
                    raise ValueError(
                        f"SKUFORGE_GENERATION_PILE_SHARE asks for piles, and the composite backend "
                        f"refuses one with these: {exc}; or set the share to 0"
                    ) from None
        if _uses(info, "diffusion"):
            try:
                DiffusionParameters.model_validate(parameters)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
                )
                raise ValueError(f"the diffusion backend refuses it: {problems}") from None
        return parameters

    @field_validator("scenes_uri")
    @classmethod
    def _scenes_uri_opens(cls, uri: str | None) -> str | None:
        # As the store's and the adapters' URIs: a scheme no store serves passed start-up, and
        # `skuforge serve generator` died in open_store with a traceback naming no variable. Only read:
        # its prefix need not leave the flow's keys room.
        if uri is not None:
            check_store_uri(uri, writes=False)
        return uri

    @field_validator("generation_triton_url")
    @classmethod
    def _triton_url_is_host_port(cls, url: str) -> str:
        # tritonclient takes host:port: "http://triton:8000" was accepted at start-up, and then every
        # call failed as "unavailable" and was retried forever.
        scheme, has_scheme, rest = url.partition("://")
        if has_scheme:
            protocol = "http" if scheme.lower() in ("http", "https") else "grpc"
            raise ValueError(
                f"host:port without a scheme: use {rest.split('/')[0]!r} "
                f"with SKUFORGE_GENERATION_TRITON_PROTOCOL={protocol}"
            )
        if not is_host_port(url.partition("/")[0]):
            raise ValueError("not host:port (a port from 1 to 65535), e.g. triton:8001")
        return url

    @field_validator("generation_triton_protocol")
    @classmethod
    def _base_path_is_http_only(cls, protocol: str, info: ValidationInfo) -> str:
        # Only the HTTP client takes host:port/base-path (Triton behind a proxy); gRPC never connects.
        url = info.data.get("generation_triton_url")
        if protocol == "grpc" and url is not None and "/" in url:
            raise ValueError(
                f"gRPC takes host:port, but SKUFORGE_GENERATION_TRITON_URL {url!r} has a path: "
                "drop it, or set http"
            )
        return protocol

    @field_validator("generation_server_grpc_port", "generation_server_metrics_port")
    @classmethod
    def _server_ports_differ(cls, port: int, info: ValidationInfo) -> int:
        # Two the same were accepted: Triton then printed its 400-line usage with the reason buried in
        # it, and `skuforge serve generator` said "serving" and waited minutes for a server gone.
        taken = [
            ENV_PREFIX + name.upper()
            for name in ("generation_server_http_port", "generation_server_grpc_port")
            if name != info.field_name and info.data.get(name) == port
        ]
        if taken:
            raise ValueError(
                f"port {port} is also {' and '.join(taken)}: "
                "Triton's HTTP, gRPC and metrics ports must differ"
            )
        return port

    @field_validator("generation_size_px")
    @classmethod
    def _size_fits_the_backends(cls, size: int, info: ValidationInfo) -> int:
        # The diffusion backend refuses any other size per variant: every SKU would go to the DLQ.
        if _uses(info, "diffusion") and size % 8:
            below, above = size - size % 8, size + 8 - size % 8
            raise ValueError(f"the diffusion backend paints multiples of 8 px: use {below} or {above}")
        return size

    @field_validator("generation_adapter_id")
    @classmethod
    def _adapter_id_is_an_id(cls, adapter_id: str | None) -> str | None:
        # An id the registry cannot hold would refuse every diffusion variant, one SKU at a time.
        is_base_model = adapter_id is not None and adapter_id.lower() == NO_ADAPTER
        # fullmatch: with re.match, the pattern's '$' also matches before a trailing newline.
        if adapter_id is not None and not is_base_model and not re.fullmatch(ADAPTER_ID_PATTERN, adapter_id):
            raise ValueError(
                f"not an adapter id: letters, digits, '_' and '-', at most 64 (or {NO_ADAPTER!r} "
                "for the base model)"
            )
        return adapter_id

    @model_validator(mode="after")
    def _photo_scenes_need_the_library(self) -> GenerationSettings:
        # Checked once every field is read (scenes_uri comes after the parameters): {"scene": "photo"}
        # without a scene library loaded, and then every composite variant was refused.
        if self.scenes_uri is None and "composite" in self.shares():
            from shared.generation.composite import COMPOSITE_PARAMETERS, CompositeError, check_parameters

            composite = {k: v for k, v in self.generation_parameters.items() if k in COMPOSITE_PARAMETERS}
            try:
                check_parameters(composite, scene_library=False, size_px=self.generation_size_px)
            except CompositeError as exc:
                raise ValueError(f"generation_parameters: the composite backend refuses it: {exc}") from None
        return self

    def shares(self) -> dict[str, float]:
        """Backend → share of variants (sums to 1)."""
        mix = {name: share for name, share in self.generation_backend_mix.items() if share > 0}
        if not mix:
            return {self.generation_backend: 1.0}
        # Scaled to the largest first: {"composite": 1e308, "diffusion": 1e308} summed to inf, every
        # share came out 0, and every SKU failed in the stage (IndexError) after a clean start.
        largest = max(mix.values())
        total = sum(share / largest for share in mix.values())
        return {name: share / largest / total for name, share in mix.items()}


def check_images_fit(generation: GenerationSettings, shared: Settings) -> None:
    """``ConfigError`` when the images the generator draws have more pixels than
    ``SKUFORGE_MAX_IMAGE_PIXELS``, which every later stage reads them under: the stage drew and stored
    every variant, and the matting dead-lettered each (``too_many_pixels``), a stage late and naming
    neither setting. Checked by the stage at start and by ``skuforge config`` (and ``skuforge up``)."""
    side, limit = generation.generation_size_px, shared.max_image_pixels
    if side * side <= limit:
        return
    largest = math.isqrt(limit)
    if "diffusion" in generation.shares():  # it paints multiples of 8 px (``_size_fits_the_backends``)
        largest -= largest % 8
    lower = f"lower it to at most {largest}, or " if largest >= MIN_GENERATION_SIZE_PX else ""
    raise ConfigError(
        f"SKUFORGE_GENERATION_SIZE_PX={side} draws images of {side * side} pixels, more than "
        f"SKUFORGE_MAX_IMAGE_PIXELS ({limit}) that every later stage reads images under: each would be "
        f"dead-lettered by the matting (too_many_pixels); {lower}raise the limit for every stage"
    )


def _uses(info: ValidationInfo, backend: str) -> bool:
    """Whether the settings validated so far (``generation_backend`` and its mix) use ``backend``."""
    mix: dict[str, float] = info.data.get("generation_backend_mix") or {}
    if any(share > 0 for share in mix.values()):
        return mix.get(backend, 0) > 0
    return bool(info.data.get("generation_backend") == backend)
