"""Review 48 of deploy/: compose reads images under the limits the chart sets once; the chart renders
no null for a value left unset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.helm import render, render_error, require_helm, values_file

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


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def _nulls(node: object, where: str = "") -> list[str]:
    """Where ``node`` (a rendered manifest) holds a null."""
    if node is None:
        return [where]
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in _nulls(value, f"{where}.{key}")]
    if isinstance(node, list):
        return [found for index, value in enumerate(node) for found in _nulls(value, f"{where}[{index}]")]
    return []


# The values a pod's manifest renders as given: left empty, each rendered a field as null.
POD_VALUES = [
    "stageDefaults.resources",
    "console.resources",
    "securityContext",
    "podSecurityContext",
    "image.pullPolicy",
]


@pytest.mark.parametrize("key", POD_VALUES)
def test_a_pod_setting_left_unset_renders_no_null(helm: str, tmp_path: Path, key: str) -> None:
    """A values file that leaves one of these empty (`resources:`) rendered `resources: null` in every
    stage's (or the console's) container: a manifest field the chart wrote as null for a value it means
    to leave out. It renders as an empty map now, what Kubernetes takes for none."""
    values = values_file(tmp_path, key, None)
    docs = render(helm, files=[values])
    found = [f"{doc['kind']}/{doc['metadata']['name']}{where}" for doc in docs for where in _nulls(doc)]
    assert not found, found


@pytest.mark.parametrize("given", [None, ""])
def test_an_unset_image_repository_is_refused_naming_it(helm: str, tmp_path: Path, given: str | None) -> None:
    """`image.repository:` left empty in a values file rendered every pod's image as
    "%!s(<nil>):0.1.0", and helm stopped on a YAML parse error in console.yaml that named neither the
    value nor the image; given "" every pod ran ":0.1.0". The render refuses it, naming the value."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"image": {"repository": given}}))
    message = render_error(helm, files=[values])
    assert "image.repository is unset" in message, message
    assert "<nil>" not in message, message


def test_the_consoles_claim_without_access_modes_is_refused_naming_it(helm: str, tmp_path: Path) -> None:
    """`accessModes:` left empty rendered the console's PersistentVolumeClaim with `accessModes: null`,
    which the API server refuses at install (a claim needs at least one access mode)."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"console": {"persistence": {"accessModes": None}}}))
    message = render_error(helm, files=[values])
    assert "console.persistence.accessModes" in message, message
