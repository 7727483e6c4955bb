"""Write ``constraints.txt``: every distribution the Docker image installs, pinned to the version CI tests.

The image installs skuforge with the extras its Dockerfile names (``extras=...``). This walks those
requirements, from ``pyproject.toml`` down through the installed metadata of the venv that
``make setup`` builds and CI tests with, and pins each distribution it reaches to the version installed
there. Run it with that venv's Python (``make constraints``); ``--check`` only compares and prints the
difference.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import sysconfig
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = REPO / "pyproject.toml"
# The image's platform: markers (torch's nvidia-* wheels, triton) are evaluated as pip evaluates them there.
IMAGE_PLATFORM = "linux-x86_64"
# The CUDA image's onnxruntime-gpu cannot sit beside onnxruntime in the CPU venv CI tests with, so the
# venv has no version of it to pin: it follows pyproject's bounds.
GPU_EXTRA = "gpu"
# The Dockerfile upgrades pip before it installs skuforge; that upgrade is pinned too.
ALSO_PINNED = ("pip",)


class ConstraintsError(Exception):
    """The venv cannot say what the image installs; the message says what to do."""


def image_extras(dockerfile: str) -> list[str]:
    """The extras any image variant installs, from the Dockerfile's ``extras=a,b,c`` assignments."""
    found = re.findall(r"\bextras=([a-z0-9,-]+)", dockerfile)
    if not found:
        raise ConstraintsError("the Dockerfile has no `extras=...`: which extras does the image install?")
    return sorted({extra for group in found for extra in group.split(",")})


def root_requirements(pyproject: dict[str, Any], extras: Iterable[str]) -> list[Requirement]:
    """pyproject's main dependencies and those of each of ``extras``."""
    project = pyproject["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        if extra not in project["optional-dependencies"]:
            raise ConstraintsError(
                f"the Dockerfile installs extra {extra!r}, which pyproject does not define"
            )
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether ``requirement`` is installed here when its dependent is installed with ``extras``."""
    marker = requirement.marker
    return marker is None or any(marker.evaluate({"extra": extra}) for extra in {"", *extras})


def installed_closure(
    roots: Iterable[Requirement],
) -> tuple[dict[NormalizedName, str], set[NormalizedName]]:
    """({name: installed public version}, names not installed) of everything ``roots`` pull in.

    Raises ``ConstraintsError`` when an installed version is outside a requirement's bounds
    (pyproject's, or a pulled-in distribution's): pinned, it is a file the image's pip cannot resolve.
    """
    asked_extras: dict[NormalizedName, set[str]] = {}
    versions: dict[NormalizedName, str] = {}
    absent: set[NormalizedName] = set()
    outside: list[str] = []
    # Each requirement with what asked for it, so a version outside its bounds names both.
    pending = [(requirement, "pyproject.toml") for requirement in roots if _applies(requirement, set())]
    while pending:
        requirement, required_by = pending.pop()
        name = canonicalize_name(requirement.name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            absent.add(name)
            continue
        # Every edge is checked, not only the first that reaches a distribution: a second dependent's
        # bound is as binding for the image's pip.
        if not requirement.specifier.contains(Version(distribution.version), prereleases=True):
            outside.append(
                f"{name} {distribution.version} is installed, {required_by} requires {requirement}"
            )
        if name in asked_extras and set(requirement.extras) <= asked_extras[name]:
            continue
        extras = asked_extras.setdefault(name, set())
        extras.update(requirement.extras)
        # A local label (torch's +cpu) names a build of one index; ==public matches it and PyPI's wheel alike.
        versions[name] = Version(distribution.version).public
        dependent = f"{name} {distribution.version}"
        pending += [
            (dep, dependent) for dep in map(Requirement, distribution.requires or []) if _applies(dep, extras)
        ]
    if outside:
        raise ConstraintsError(
            f"installed versions outside their requirements' bounds: {'; '.join(sorted(set(outside)))}. "
            "Install versions that fit (`make setup`) or change the bound in pyproject.toml"
        )
    return versions, absent


def render() -> str:
    """The constraints file for the image the Dockerfile builds, from this environment's versions."""
    if sysconfig.get_platform() != IMAGE_PLATFORM:
        raise ConstraintsError(
            f"the image is {IMAGE_PLATFORM}, this Python is {sysconfig.get_platform()}: "
            "write constraints.txt from the linux/amd64 venv CI tests with"
        )
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    extras = image_extras(DOCKERFILE.read_text(encoding="utf-8"))
    versions, absent = installed_closure(root_requirements(pyproject, extras))
    gpu_only = {
        canonicalize_name(Requirement(line).name)
        for line in pyproject["project"]["optional-dependencies"].get(GPU_EXTRA, [])
    }
    missing = sorted(absent - gpu_only)
    if missing:
        raise ConstraintsError(
            f"not installed in {sys.prefix}: {', '.join(missing)}; the image installs them "
            f"(extras {','.join(extras)}): `make setup` installs what CI tests with"
        )
    for name in ALSO_PINNED:
        versions[canonicalize_name(name)] = Version(metadata.version(name)).public
    header = [
        "# Every distribution the Docker image installs (`pip install -c constraints.txt`), pinned to",
        "# the version CI tests with: `make constraints` (deploy/constraints.py) writes it from the venv",
        "# `make setup` builds, for linux/amd64 and Python 3.11; tests/test_constraints.py fails when",
        "# the two disagree. Not edited by hand: change pyproject.toml, `make setup`, `make constraints`.",
        f"# The image's extras (Dockerfile): {', '.join(extras)}.",
    ]
    if absent:
        header.append(
            f"# Not pinned, absent from the CPU venv CI tests with ({GPU_EXTRA} extra; pyproject's bounds "
            f"apply): {', '.join(sorted(absent))}."
        )
    return "\n".join([*header, *(f"{name}=={versions[name]}" for name in sorted(versions))]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write constraints.txt, or with ``--check`` say whether it is what would be written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the file differs")
    args = parser.parse_args(argv)
    try:
        wanted = render()
    except ConstraintsError as error:
        print(f"constraints: {error}", file=sys.stderr)
        return 2
    if not args.check:
        CONSTRAINTS.write_text(wanted, encoding="utf-8")
        return 0
    current = CONSTRAINTS.read_text(encoding="utf-8") if CONSTRAINTS.exists() else ""
    if current == wanted:
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            "constraints.txt",
            "what `make constraints` writes",
        )
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
