"""The Docker image installs what CI tests: ``constraints.txt`` pins every distribution the image
installs, and the Dockerfile's ``pip install`` reads it.

Without it two builds a month apart get whatever torch, diffusers and onnxruntime the index has that
day. ``make constraints`` writes the file from the venv ``make setup`` builds; these tests fail when it
misses a dependency, when the Dockerfile stops using it, or when a pin differs from the version this
suite runs with. No network: they read files and this environment's installed metadata.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# The CPU venv CI tests with cannot hold onnxruntime-gpu beside onnxruntime: the file names it, unpinned.
GPU_EXTRA = "gpu"


def pins(text: str) -> dict[NormalizedName, str]:
    """{name: version} of a constraints file whose every line is ``name==version`` or a comment."""
    pinned: dict[NormalizedName, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"line {number}: {line!r} is not a pin"
        )
        assert not requirement.extras and requirement.marker is None, f"line {number}: {line!r} is not a pin"
        pinned[canonicalize_name(requirement.name)] = specifiers[0].version
    return pinned


def names(requirements: list[str]) -> set[NormalizedName]:
    return {canonicalize_name(Requirement(line).name) for line in requirements}


@pytest.fixture(scope="module")
def constraints() -> str:
    assert CONSTRAINTS.exists(), "constraints.txt is missing: `make constraints` writes it"
    return CONSTRAINTS.read_text(encoding="utf-8")


def test_every_main_dependency_is_pinned(constraints: str) -> None:
    missing = sorted(names(PROJECT["dependencies"]) - set(pins(constraints)))
    assert not missing, f"constraints.txt does not pin {missing}, which pyproject's dependencies name"


def test_every_package_the_image_extras_name_is_pinned_or_named_as_gpu_only(constraints: str) -> None:
    extras = {
        extra for found in re.findall(r"\bextras=([a-z0-9,-]+)", DOCKERFILE) for extra in found.split(",")
    }
    assert {"cpu", "gpu"} <= extras, f"the Dockerfile's image variants install {extras}"
    optional = PROJECT["optional-dependencies"]
    gpu_only = names(optional[GPU_EXTRA])
    named = names([line for extra in extras - {GPU_EXTRA} for line in optional[extra]])
    missing = sorted(named - gpu_only - set(pins(constraints)))
    assert not missing, (
        f"constraints.txt does not pin {missing}, which the image's extras {sorted(extras)} name"
    )
    unexplained = sorted(name for name in gpu_only if name not in constraints)
    assert not unexplained, f"constraints.txt neither pins nor names {unexplained} (the {GPU_EXTRA} extra)"


def test_the_dockerfile_installs_with_the_constraints() -> None:
    copied = re.search(r"^COPY [^\n]*\bconstraints\.txt\b[^\n]* \./$", DOCKERFILE, re.MULTILINE)
    assert copied, "the Dockerfile does not copy constraints.txt into its build folder"
    installs = re.findall(r"pip install [^\n]*", DOCKERFILE)
    assert installs, "the Dockerfile has no `pip install`"
    unconstrained = [line for line in installs if "-c constraints.txt" not in line]
    assert not unconstrained, f"these installs ignore constraints.txt: {unconstrained}"
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(fnmatch.fnmatch("constraints.txt", pattern) for pattern in ignored), ignored


def test_every_pin_is_the_version_this_suite_runs_with(constraints: str) -> None:
    drifted = []
    for name, pinned in pins(constraints).items():
        try:
            installed = Version(metadata.version(name)).public
        except metadata.PackageNotFoundError:
            continue
        if installed != pinned:
            drifted.append(f"{name}: pinned {pinned}, installed {installed}")
    assert not drifted, f"constraints.txt is not what CI tests (`make constraints` rewrites it): {drifted}"


@pytest.mark.skipif(
    sysconfig.get_platform() != "linux-x86_64",
    reason="the image is linux/amd64; its pins come from such a venv",
)
def test_the_file_is_what_make_constraints_writes() -> None:
    # Beyond the checks above: a new dependency of a dependency, or an extra the image starts to install.
    check = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "constraints.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, (
        f"`make constraints` would change constraints.txt:\n{check.stdout}{check.stderr}"
    )
