"""README walked through as a new user: what `pip install 'skuforge[cpu]'` (README's Installing) leaves
out must be named when a command needs it, as `skuforge evaluate` and `skuforge matting train` name
theirs, not end in a traceback."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pytest

from skuforge_cli.main import SERVER_EXTRAS
from tests.support.docs import ROOT

# Runs `skuforge ARGS` in a Python where the modules named in argv[1] (comma-separated) do not import,
# as in an install without their extra.
WITHOUT_MODULES = """
import importlib.abc, sys
hidden = set(sys.argv[1].split(","))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from skuforge_cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def skuforge_without(modules: set[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MODULES, ",".join(sorted(modules)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("server", "args"),
    [("console", ["--help"]), ("console", []), ("generator", [])],
    ids=["console --help", "console", "generator"],
)
def test_serve_without_its_extra_names_the_extra(server: str, args: list[str]) -> None:
    extra, modules = SERVER_EXTRAS[server]
    done = skuforge_without(set(modules), "serve", server, *args)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert f"skuforge serve {server}: needs the {extra} extra" in done.stderr
    assert f"pip install 'skuforge[{extra}]'" in done.stderr


def test_a_server_with_its_extra_installed_is_not_refused() -> None:
    done = skuforge_without({"no_such_module_at_all"}, "serve", "console", "--help")
    assert done.returncode == 0, done.stderr
    assert "needs the" not in done.stderr


def _extra_distributions() -> dict[str, set[str]]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    return {
        name: {re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}
        for name, requirements in extras.items()
    }


@pytest.mark.parametrize("server", sorted(SERVER_EXTRAS))
def test_each_module_a_server_names_comes_from_the_extra_it_names(server: str) -> None:
    extra, modules = SERVER_EXTRAS[server]
    declared = _extra_distributions()[extra]
    providers = importlib.metadata.packages_distributions()
    for module in modules:
        given_by = {name.lower() for name in providers.get(module, [])}
        assert given_by & declared, f"{module} ({given_by or 'not installed'}) is not in [{extra}]"


def test_the_generator_stage_without_its_triton_client_names_the_extra_at_start() -> None:
    """Before, the stage started, and every SKU's first request to Triton raised ModuleNotFoundError,
    retried as a handler error and then dead-lettered: a setting-like fault no SKU could get past."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_MODULES, "tritonclient", "run", "generator"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        # Nothing listens on port 1: the stage must stop before it looks for Kafka.
        env={**os.environ, "SKUFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "SKUFORGE_METRICS_PORT": "0"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    said = "needs the serve extra (tritonclient is not installed): pip install 'skuforge[serve]'"
    assert said in done.stderr
