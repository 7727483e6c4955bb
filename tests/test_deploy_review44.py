"""deploy/constraints.py pins what the venv holds only where pyproject and the pinned packages allow it:
a pin outside a requirement's bounds is a constraints file the image's pip cannot resolve."""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.requirements import Requirement

from deploy.constraints import ConstraintsError, installed_closure


def test_an_installed_version_outside_a_requirements_bounds_is_refused_naming_both() -> None:
    # `pip install -U NAME` past pyproject's bound, then `make constraints`: the file pinned the venv's
    # version, and `pip install -c constraints.txt .[cpu]` in the Docker build found no solution.
    installed = metadata.version("packaging")
    with pytest.raises(ConstraintsError) as refusal:
        installed_closure([Requirement("packaging<1")])
    message = str(refusal.value)
    assert f"packaging {installed}" in message and "packaging<1" in message and "pyproject.toml" in message


def test_an_installed_version_inside_the_bounds_is_pinned() -> None:
    installed = metadata.version("packaging")
    versions, absent = installed_closure([Requirement(f"packaging=={installed}")])
    assert versions == {"packaging": installed} and not absent
