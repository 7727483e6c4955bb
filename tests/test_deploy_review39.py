"""Review 39 of the deploy surface: values the Helm chart rendered that leak a secret or cannot run."""

from __future__ import annotations

import pytest

from schemas.flow import CONSOLE
from shared.config import secret_variables
from skuforge_cli.main import SETTINGS_MODELS
from tests.support.helm import render, render_error, require_helm

# Every place the chart writes a value into a ConfigMap or a pod spec in plain text.
PLAIN_SOURCES = ("settings", "stageDefaults.env", "stages.generator.env", "console.env", "triton.env")


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


@pytest.mark.parametrize("name", sorted(secret_variables(SETTINGS_MODELS)))
def test_a_secret_setting_is_refused_outside_the_secret(helm: str, name: str) -> None:
    """settings.SKUFORGE_KAFKA_SASL_PASSWORD rendered into the ConfigMap and the topics Job's env, and
    any secret in a pod's env map into its Deployment, readable by whoever can read the namespace; only
    the console's two secrets were refused, and only under `settings`."""
    for source in PLAIN_SOURCES:
        message = render_error(helm, f"{source}.{name}=x")
        assert f"{source}.{name} is a secret" in message, message
        assert "secret.values or secret.existingSecret" in message
    docs = render(helm, f"secret.values.{name}=x")
    assert any(doc["kind"] == "Secret" and name in doc.get("stringData", {}) for doc in docs)


def test_the_console_port_is_not_its_metrics_port(helm: str) -> None:
    """console.port at the console's /metrics port (files/flow.json) rendered one container port twice:
    the web server and /metrics cannot both listen there, so the pod exited at start, for ever."""
    message = render_error(helm, f"console.port={CONSOLE.metrics_port}")
    assert f"console.port={CONSOLE.metrics_port}" in message and "/metrics" in message
    # Port 0 binds a port nobody knows: the probes and the Service miss it.
    assert "console.port=0" in render_error(helm, "console.port=0")
    render(helm, "console.port=8080")
