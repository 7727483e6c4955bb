"""Review 48 of deploy/: compose reads images under the limits the chart sets once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deploy" / "compose.yaml"
GPU_OVERLAY = REPO / "deploy" / "compose.gpu.yaml"
# The chart takes these under `settings` alone, which every pod reads (its _helpers.tpl, $imageLimits).
IMAGE_LIMITS = ["SKUFORGE_MAX_IMAGE_PIXELS", "SKUFORGE_MAX_IMAGE_BYTES"]


def _skuforge_services(*files: Path) -> dict[str, dict[str, object]]:
    """The skuforge services (all but Kafka) of compose ``files`` merged as ``docker compose -f ... -f``
    does for ``environment``: a later file's keys beside, and over, the earlier's."""
    merged: dict[str, dict[str, object]] = {}
    for file in files:
        for name, service in yaml.safe_load(file.read_text())["services"].items():
            if name == "kafka":
                continue
            env = {**(merged.get(name, {}).get("environment") or {}), **(service.get("environment") or {})}  # type: ignore[dict-item]
            merged[name] = {**merged.get(name, {}), **service, "environment": env}
    return merged


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, GPU_OVERLAY)], ids=["cpu", "gpu"])
def test_compose_gives_every_container_the_shells_image_limits(files: tuple[Path, ...]) -> None:
    """The chart sets the image limits once, for every pod; compose passed none on: set in the shell or
    --env-file, no container read them, and the one way left was an edit of one service's environment,
    the split the chart refuses (a lower limit for the matting dead-letters, too_many_pixels, what the
    generator drew and stored). Each is now passed from the shell to every container, none its own."""
    services = _skuforge_services(*files)
    assert {"triton", "generator", "matting", "console", "topics"} <= set(services)
    for name, service in services.items():
        env = service["environment"]
        assert isinstance(env, dict)
        for variable in IMAGE_LIMITS:
            # No value: the shell's (or --env-file's), and unset (the default) otherwise.
            assert variable in env and env[variable] is None, (name, variable)
